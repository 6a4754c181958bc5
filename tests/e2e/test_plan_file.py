"""The production loop (docs/usage.md): search on a small job -> plan for the production topology -> train
with that plan on 2 processes; a plan that does not fit the job is a one-line error naming what differs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import cli
from tests.e2e.test_cli import TINY

pytestmark = pytest.mark.e2e


def test_an_exported_plan_drives_a_two_process_training_and_a_mismatch_is_one_line(tmp_path: Path) -> None:
    run = tmp_path / "search"
    cli(tmp_path, "search", TINY, "--run-dir", str(run), "search.method=power_rule")
    plan = tmp_path / "plan2.json"
    planned = cli(None, "plan", str(run), "--world-size", "2", "--device", "cpu", "--out", str(plan),
                  check=False, timeout=120)  # fmt: skip
    assert planned.returncode == 0, planned.stderr[-2000:]
    train = tmp_path / "train2"
    proc = cli(tmp_path, "train", TINY, "--run-dir", str(train), f"arch={run}", f"plan.file={plan}",
               "train.epochs=1", procs=2, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((train / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["plan_topology"]["file"] == str(plan)
    assert json.loads((train / "plan.json").read_text()) == json.loads(plan.read_text())
    # The same plan on one process: refused before training, in one line naming the world sizes.
    bad = cli(tmp_path, "train", TINY, "--run-dir", str(tmp_path / "bad"), f"arch={run}", f"plan.file={plan}",
              check=False)  # fmt: skip
    assert bad.returncode == 2
    lines = [line for line in bad.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "planned for 2 ranks" in lines[0] and "this job has 1" in lines[0]
    # A plan of another architecture names the table that does not fit.
    other = cli(tmp_path, "train", TINY, "--run-dir", str(tmp_path / "other"), "model.embedding_dim=12",
                f"plan.file={plan}", check=False)  # fmt: skip
    assert other.returncode == 2 and "is planned as 10 x 16 but the architecture has 10 x 12" in other.stderr


def test_a_plan_of_frequency_buckets_names_the_tables_where_the_trainer_holds_them(tmp_path: Path) -> None:
    # The model sees bucket tables pooled per feature, so their EBC sits at model.sparse_arch.inner: the
    # plan command's default and the trainer agree.
    run = tmp_path / "mde"
    cli(
        tmp_path,
        "search",
        TINY,
        "--run-dir",
        str(run),
        "search.method=mde",
        "search.budget=0.03 x uniform-64",
    )
    plan = tmp_path / "plan1.json"
    cli(None, "plan", str(run), "--world-size", "1", "--device", "cpu", "--out", str(plan), timeout=120)
    assert "model.sparse_arch.inner" in json.loads(plan.read_text())["plan"]
    train = tmp_path / "train"
    cli(
        tmp_path, "train", TINY, "--run-dir", str(train), f"arch={run}", f"plan.file={plan}", "train.epochs=1"
    )
    assert json.loads((train / "plan.json").read_text()) == json.loads(plan.read_text())
