"""iHAS through the CLI as a user runs it: `torchrec-aes search` writes the grouped run directory (kind
`grouped` architecture, router, centroids, per-test-row groups, the report's groups section), and the
result feeds `torchrec-aes train arch=RUN` and `torchrec-aes plan RUN`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tests.conftest import REPO, cli
from torchrec_aes.architecture import Architecture, kind_of
from torchrec_aes.cli import main as cli_main
from torchrec_aes.config import load_config
from torchrec_aes.data.synthetic import load_synthetic
from torchrec_aes.models.grouped import Router
from torchrec_aes.search.ihas.search import route_split

pytestmark = pytest.mark.e2e
IHAS_TINY = str(REPO / "configs" / "tests" / "ihas_tiny.yaml")


@pytest.fixture(scope="module")
def search_run(tmp_path_factory) -> tuple[Path, Path]:
    """(the run directory of one tiny iHAS search, the tmp dir holding it and the data cache)."""
    tmp = tmp_path_factory.mktemp("ihas")
    run = tmp / "search"
    out = cli(tmp, "search", IHAS_TINY, f"run_dir={run}", "search.final_baselines=false").stdout
    assert "<= budget" in out
    return run, tmp


def test_search_writes_the_grouped_run_directory(search_run):
    run, tmp = search_run
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["method"] == "ihas" and metrics["winner"] == "ihas_k2"
    assert [f["label"] for f in metrics["finalists"]] == ["ihas_k2"]  # no baselines
    assert 0 < metrics["budget_used"] <= metrics["budget_bytes"]
    log = {**metrics["search_log"], **metrics["search_log"]["candidates"][0]}  # the one K: 2
    assert log["num_groups"] == 2 and log["deployment"] == "shared"
    dims = [g["dims"] for g in log["groups"]]
    assert sum(g["share"] for g in log["groups"]) == pytest.approx(1.0)

    arch = yaml.safe_load((run / "architecture.yaml").read_text())
    assert arch["kind"] == "grouped" and arch["method"] == "ihas"
    assert arch["extra"]["groups"]["dims"] == dims
    assert arch["extra"]["router"]["features"] == log["router"]["features"]
    names = [t["name"] for t in arch["tables"]]
    assert names[:6] == [f"t_c{i}" for i in range(6)]
    assert names[6:] == [f"router_{f}" for f in log["router"]["features"]]
    widths = [max(col) for col in zip(*dims, strict=True)]
    assert [t["embedding_dim"] for t in arch["tables"][:6]] == widths  # shared: the widest group per field

    router = Router.load(str(run))
    assert router.features == log["router"]["features"] and router.num_groups == 2
    centroids = torch.load(run / "centroids.pt", weights_only=True)
    assert centroids["centroids"].shape == (2, 6 * 16) and centroids["features"] == [
        f"c{i}" for i in range(6)
    ]

    groups = np.load(run / "test_groups.npy")
    assert groups.shape == (metrics["num_examples"]["test"],) and set(groups.tolist()) <= {0, 1}
    cfg = load_config(IHAS_TINY, [f"data.cache_dir={tmp / 'cache'}"])
    splits, _ = load_synthetic(cfg.data, str(tmp / "cache"))
    routed = route_split(router, splits.test, splits.schema.sparse_names, cfg.train.eval_batch_size, 1)
    assert np.array_equal(groups, routed)  # the saved router routes the test rows to the saved groups

    report = (run / "report.md").read_text()
    assert "Groups: 2, deployment `shared`" in report
    assert "| group | train share | dims (sum) | test rows | test auc |" in report
    rows = [line for line in report.splitlines() if line.startswith(("| 0 |", "| 1 |"))]
    assert len(rows) == 2
    assert [int(r.split("|")[3]) for r in rows] == [sum(d) for d in dims]
    assert sum(int(r.split("|")[4]) for r in rows) == len(groups)
    assert (run / "groups.png").stat().st_size > 1000 and "groups.png" in report


def test_the_saved_grouped_architecture_loads_back_and_needs_its_router(search_run, tmp_path):
    run, tmp = search_run
    arch = Architecture.load(str(run / "architecture.yaml"))
    assert arch.kind == "grouped" and arch.budget_bytes is not None
    assert arch.embedding_bytes is not None and arch.embedding_bytes <= arch.budget_bytes
    cfg = load_config(IHAS_TINY, [f"data.cache_dir={tmp / 'cache'}"])
    schema = load_synthetic(cfg.data, str(tmp / "cache"))[0].schema
    train_arch, hooks = kind_of(arch).training_form(arch, str(run / "architecture.yaml"), schema)
    assert train_arch.dims == hooks.layout.widths() and hooks.layout.dims == arch.extra["groups"]["dims"]
    lonely = tmp_path / "no_router"
    lonely.mkdir()
    shutil.copy(run / "architecture.yaml", lonely / "architecture.yaml")
    with pytest.raises(ValueError) as e:
        kind_of(arch).training_form(arch, str(lonely / "architecture.yaml"), schema)
    assert "router.pt" in str(e.value) and "\n" not in str(e.value)


def test_train_and_plan_take_the_grouped_run(search_run, capsys):
    # `train` and `plan` run through the CLI's own entry point in this process (the search above ran as a
    # subprocess): the same parsing and code, without two more interpreter start-ups (~5 s each).
    run, tmp = search_run
    retrain = tmp / "retrain"
    cli_main(
        ["train", IHAS_TINY, "--run-dir", str(retrain), f"arch={run}", f"data.cache_dir={tmp / 'cache'}"]
    )
    assert "test auc=" in capsys.readouterr().out
    assert (retrain / "router.pt").exists()  # carried beside the architecture
    retrained = yaml.safe_load((retrain / "architecture.yaml").read_text())
    searched = yaml.safe_load((run / "architecture.yaml").read_text())
    assert retrained["kind"] == "grouped" and retrained["tables"] == searched["tables"]
    assert retrained["extra"] == searched["extra"]
    # The final pick trained the same grouped model (same config, seed and epochs) from scratch.
    auc = json.loads((retrain / "metrics.json").read_text())["test"]["auc"]
    assert auc == pytest.approx(json.loads((run / "metrics.json").read_text())["test"]["auc"], abs=1e-6)

    cli_main(["plan", str(run), "--world-size", "4"])
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.strip().split("|")[0].strip().isdigit()]
    assert len(lines) == 4  # one line per rank
    assert sum(int(line.split("|")[1]) for line in lines) >= len(searched["tables"])  # #tables per rank
    placed = (run / "plan_4xcuda.json").read_text()
    for t in searched["tables"]:
        assert f'"{t["name"]}"' in placed


def _search_in_process(tmp_path: Path, *overrides: str) -> tuple[Path, dict]:
    """A tiny iHAS search without the baselines, in this process: (its run directory, metrics.json)."""
    from torchrec_aes.runs import run_search

    run = tmp_path / "run"
    cfg = load_config(
        IHAS_TINY,
        [
            *overrides,
            "search.final_baselines=false",
            f"run_dir={run}",
            f"data.cache_dir={tmp_path / 'cache'}",
        ],
    )
    run_search(cfg)
    return run, json.loads((run / "metrics.json").read_text())


def test_candidate_group_counts_are_finalists_and_one_group_is_a_plain_per_table_architecture(tmp_path):
    run, metrics = _search_in_process(tmp_path, "search.ihas.num_groups=[2, 1]")
    log = metrics["search_log"]
    assert [c["num_groups"] for c in log["candidates"]] == [1, 2]  # ascending: a tie goes to K = 1
    assert [f["label"] for f in metrics["finalists"]] == ["ihas_k1", "ihas_k2"]
    one, two = log["candidates"]
    assert one["router"]["features"] == [] and one["router"]["bytes"] == 0 and len(one["groups"]) == 1
    assert two["router"]["features"] and len(two["groups"]) == 2
    budget = metrics["budget_bytes"]
    assert all(f["bytes"] <= budget for f in metrics["finalists"]), (budget, metrics["finalists"])
    # Planted data: how the gates and the dims follow the planted ranks, per K.
    assert -1.0 <= one["rank_spearman"]["gates"] <= 1.0 and one["rank_spearman"]["group_population"] == [0]
    # The gates' kept share per search epoch, against its target.
    (epoch,) = log["kept_per_epoch"]
    assert epoch["target"] == log["kept_target"] and 0.0 < epoch["kept"] <= 1.0
    arch = yaml.safe_load((run / "architecture.yaml").read_text())
    assert arch["kind"] == ("tables" if metrics["winner"] == "ihas_k1" else "grouped")
    if metrics["winner"] == "ihas_k1":
        assert not (run / "router.pt").exists()


def test_a_group_count_the_budget_cannot_hold_is_skipped_when_a_smaller_one_fits(tmp_path):
    _, metrics = _search_in_process(
        tmp_path,
        "search.ihas.num_groups=[1, 64]",
        "search.ihas.deployment=separate",  # 64 groups of their own tables: 64x the smallest bytes
        "search.budget=0.35 x uniform-16",
    )
    log = metrics["search_log"]
    assert [c["num_groups"] for c in log["candidates"]] == [1]
    (skipped,) = log["skipped"]
    assert skipped["num_groups"] == 64 and "cannot hold 64 groups" in skipped["reason"]
    assert [f["label"] for f in metrics["finalists"]] == ["ihas_k1"]
