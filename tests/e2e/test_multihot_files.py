"""The multi-hot text formats end to end: the planted multi-hot rows written as CSV and libFM by
`tools/make_multihot_files.py`, read through the example configs, give back the generator's bags; a
search on the CSV runs as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO
from torchrec_aes.architecture import Architecture
from torchrec_aes.config import load_config
from torchrec_aes.data.load import load_data
from torchrec_aes.data.planted import generate

pytestmark = pytest.mark.e2e

ROWS = 3000


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    out = tmp_path_factory.mktemp("multihot")
    tool = [sys.executable, str(REPO / "tools" / "make_multihot_files.py")]
    subprocess.run([*tool, "--out", str(out), "--rows", str(ROWS)], check=True, capture_output=True)
    return out


def _lengths(splits) -> torch.Tensor:
    """[F] ids per field over all splits."""
    parts = (splits.train, splits.val, splits.test)
    return torch.stack([sum(p.field_lengths(f).sum() for p in parts) for f in range(parts[0].num_fields)])


@pytest.mark.parametrize("fmt", ["tabular", "libfm"])
def test_example_configs_read_back_the_generators_bags(files, fmt):
    suffix = "csv" if fmt == "tabular" else "libfm"
    cfg = load_config(str(REPO / "configs" / f"multihot_{fmt}.yaml"), [f"data.path={files}/planted.{suffix}"])
    splits = load_data(cfg.data)
    planted = load_config(str(REPO / "configs" / "multihot_synthetic.yaml")).data.synthetic
    planted.num_examples = ROWS
    schema, data, _ = generate(planted, seed=0)
    expected = torch.stack([data.field_lengths(f).sum() for f in range(data.num_fields)])
    multi = set(planted.multi_hot_fields)
    # bags longer than max_ids_per_row (32, tabular) are cut; Poisson(10) bags of 3000 rows never are
    assert _lengths(splits).tolist() == expected.tolist()
    assert [f.pooling for f in splits.schema.sparse] == [
        "mean" if f in multi else "sum" for f in range(len(schema.sparse))
    ]
    assert len(splits.schema.dense_names) == (13 if fmt == "tabular" else 0)


def _search_csv(files, run, *overrides: str) -> None:
    """A short AdaS&S search of `configs/multihot_tabular.yaml` on the planted CSV, as a user runs it."""
    cmd = [
        str(REPO / ".venv" / "bin" / "torchrec-aes"),
        "search",
        str(REPO / "configs" / "multihot_tabular.yaml"),
        "--run-dir",
        str(run),
        f"data.path={files}/planted.csv",
        "train.epochs=1",
        "train.progress=false",
        "search.adass.supernet_epochs=1",
        "search.adass.rl_updates=10",
        *overrides,
    ]
    subprocess.run(cmd, check=True, capture_output=True, cwd=REPO)


def test_search_on_the_multi_hot_csv_runs_and_reports(files, tmp_path):
    run = tmp_path / "run"
    _search_csv(files, run, "search.baselines=[uniform]")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["auc"] > 0.5
    arch = Architecture.load(str(run / "architecture.yaml"))
    multi = {"c2", "c4", "c5", "c7", "c12", "c13", "c15", "c16"}
    assert arch.kind == "tables" and arch.method in ("adass", "uniform")
    assert {t.feature_names[0]: t.pooling for t in arch.tables} == {
        f"c{i}": "mean" if f"c{i}" in multi else "sum" for i in range(20)
    }


def test_search_with_a_shared_table_plans_it_once(files, tmp_path):
    run = tmp_path / "run"
    _search_csv(files, run, "data.shared_tables={c2c12: [c2, c12]}")
    arch = Architecture.load(str(run / "architecture.yaml"))
    shared = [t for t in arch.tables if t.name == "t_c2c12"]
    assert len(arch.tables) == 19 and shared[0].feature_names == ["c2", "c12"] and shared[0].pooling == "mean"
    plan = (run / "plan.json").read_text()
    assert plan.count('"t_c2c12"') == 1 and '"t_c2"' not in plan and '"t_c12"' not in plan
