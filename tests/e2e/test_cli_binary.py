"""TorchRec's preprocessed Criteo format end to end: the converter tool writes day files, `train` and
AdaS&S, NASRec and iHAS searches stream them, and a 2-process torchrun run gives a result close to 1
process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, cli, cli_env
from torchrec_aes.architecture import Architecture
from torchrec_aes.config import load_config
from torchrec_aes.planning.memory import Budget
from torchrec_aes.tasks import get_task

pytestmark = pytest.mark.e2e
TINY = REPO / "configs" / "tests" / "tiny.yaml"


def _convert(tmp_path: Path, config: Path, *overrides: str) -> Path:
    out = tmp_path / "npy"
    proc = subprocess.run(
        [sys.executable, "tools/criteo_binary.py", "--out", str(out), "--config", str(config), "--days", "3",
         f"data.cache_dir={tmp_path / 'cache'}", *overrides],
        cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_training_on_day_files_with_two_processes_matches_one_process(tmp_path):
    # A clearer signal and more rows than tiny.yaml's (whose in-memory test AUC is ~0.59).
    out = _convert(tmp_path, TINY, "data.synthetic.signal_scale=3", "data.synthetic.num_examples=12000")
    data = ["data.type=criteo_binary", f"data.path={out}", "data.streaming=always", "train.epochs=3"]
    auc = {}
    for procs in (1, 2):
        run = tmp_path / f"run{procs}"
        # The same global batch (128 rows per step) on 1 and 2 processes.
        batch = f"train.batch_size={128 // procs}"
        cli(None, "train", str(TINY), "--run-dir", str(run), *data, batch, procs=procs, timeout=600)
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["world_size"] == procs
        assert metrics["num_examples"] == {"train": 9600, "val": 1200, "test": 1200}
        auc[procs] = metrics["test"]["auc"]
    # In memory, 1 process reaches 0.70 / 0.72 (seeds 0 / 1) on this data; 2 processes see the rows in
    # another order and reduce gradients over the ranks, so the results differ a little.
    assert auc[1] > 0.65 and auc[2] > 0.65, auc
    assert abs(auc[1] - auc[2]) < 0.05, auc


@pytest.mark.parametrize("method", ["adass", "nasrec", "ihas"])
def test_searches_stream_day_files_and_meet_the_budget(tmp_path, method):
    config = REPO / "configs" / "tests" / f"{method}_tiny.yaml"
    out = _convert(tmp_path, config)
    run = tmp_path / "search"
    data = ["data.type=criteo_binary", f"data.path={out}", "data.streaming=always"]
    cli(None, "search", str(config), "--run-dir", str(run), *data, timeout=600)
    metrics = json.loads((run / "metrics.json").read_text())
    # The tiny configs are smoke-sized searches (one retraining epoch: test AUC ~0.5 in memory too);
    # what is checked here is that every phase ran on the streamed rows and the budget held.
    assert metrics["num_examples"] == {"train": 6400, "val": 800, "test": 800}
    assert metrics["method"] == method and 0.0 <= metrics["test"]["auc"] <= 1.0
    cfg = load_config(str(config), [*data, f"data.cache_dir={tmp_path / 'cache'}"])
    schema = get_task(cfg).schema
    budget = Budget.parse(cfg.search.budget[0], schema)
    arch = Architecture.load(str(run / "architecture.yaml"))
    assert budget.used(arch) <= budget.bytes
