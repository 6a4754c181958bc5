"""The CLI as a user runs it: `torchrec-aes train|search|plan` in subprocesses, on 1 and 2 processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
import yaml

from tests.conftest import REPO, SHARED_DATA, cli, cli_argv, cli_env

pytestmark = pytest.mark.e2e
TINY = str(REPO / "configs" / "tests" / "tiny.yaml")


def test_train_writes_the_run_directory_contract(tmp_path):
    run = tmp_path / "run"
    out = cli(tmp_path, "train", TINY, "--run-dir", str(run)).stdout
    assert "test auc=" in out
    metrics = json.loads((run / "metrics.json").read_text())
    for split in ("val", "test"):
        assert set(metrics[split]) >= {"auc", "logloss"}
        assert 0.0 <= metrics[split]["auc"] <= 1.0  # quality is tested on learnable data elsewhere
    assert metrics["num_examples"] == {"train": 4800, "val": 600, "test": 600}
    assert metrics["embedding_bytes"] > 0 and metrics["wall_seconds"] > 0
    arch = yaml.safe_load((run / "architecture.yaml").read_text())
    assert [t["embedding_dim"] for t in arch["tables"]] == [8] * 6
    assert set(arch["tables"][0]) == {"name", "feature_names", "num_embeddings", "embedding_dim", "data_type"}
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["train"]["epochs"] == 2 and config["run_dir"] == str(run)
    assert list((run / "tb" / "train").glob("events.out.tfevents.*"))
    assert (run / "checkpoints" / "train" / "state.json").exists()
    assert (run / "plan.json").exists() and (run / "report.md").exists()


def test_search_meets_the_budget_and_trains_the_result_with_arch_file(tmp_path):
    run = tmp_path / "search"
    out = cli(tmp_path, "search", TINY, "--run-dir", str(run)).stdout
    assert "<= budget" in out
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["embedding_bytes"] <= metrics["budget_bytes"]
    assert metrics["search_seconds"] >= 0 and "auc" in metrics["test"]
    assert (run / "dims.png").stat().st_size > 1000
    assert "budget" in (run / "report.md").read_text()
    # The searched architecture feeds `train` directly.
    retrain = tmp_path / "retrain"
    cli(tmp_path, "train", TINY, "--run-dir", str(retrain), f"arch={run / 'architecture.yaml'}")
    dims = [t["embedding_dim"] for t in yaml.safe_load((retrain / "architecture.yaml").read_text())["tables"]]
    assert dims == list(metrics["dims"].values())


def test_plan_command_prints_per_rank_memory_and_writes_a_loadable_plan(tmp_path):
    run = tmp_path / "run"
    cli(tmp_path, "train", TINY, "--run-dir", str(run), "train.epochs=1")
    out_file = tmp_path / "plan8.json"
    plan = [
        "plan",
        str(run),
        "--world-size",
        "8",
        "--device",
        "cuda",
        "--hbm-gb",
        "16",
        "--out",
        str(out_file),
    ]
    proc = cli(None, *plan, check=False, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "rank" in proc.stdout and str(out_file) in proc.stdout
    from torchrec_aes.planning.plan_io import load_plan

    plan = load_plan(str(out_file))
    assert "model.sparse_arch" in plan.plan


@pytest.mark.parametrize(
    "args, message",
    [
        (["train.epoch=3"], "unknown config key 'train.epoch'"),
        (["search.budget=10"], "below the smallest possible architecture"),
        (["data.type=criteo", "data.path=/nonexistent/x.txt"], "/nonexistent/x.txt"),
    ],
)
def test_bad_input_is_one_line_error_with_exit_2(tmp_path, args, message):
    command = "search" if any(a.startswith("search.") for a in args) else "train"
    proc = cli(tmp_path, command, TINY, "--run-dir", str(tmp_path / "r"), *args, check=False)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and message in errors[0], proc.stderr[-2000:]


def test_killed_training_resumes_from_its_last_checkpoint(tmp_path):
    run = tmp_path / "run"
    args = [
        "train",
        TINY,
        "--run-dir",
        str(run),
        "train.epochs=3",
        "train.patience=3",
        "data.synthetic.num_examples=20000",
        f"data.cache_dir={tmp_path / 'cache'}",
    ]
    proc = subprocess.Popen(
        cli_argv(*args),
        cwd=REPO,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    state = run / "checkpoints" / "train" / "state.json"
    deadline = time.time() + 240
    while not state.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert state.exists(), "no checkpoint was written"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = json.loads(state.read_text())["epoch"]
    assert done < 2, "the run finished before it could be killed; make it longer"
    rerun = cli(tmp_path, *args[:-1])
    assert f"resumed train after epoch {done}" in rerun.stderr + rerun.stdout
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs_run"] == 3
    assert [h["epoch"] for h in metrics["history"]] == [0, 1, 2]


def test_two_process_torchrun_trains_and_writes_the_same_contract(tmp_path):
    run = tmp_path / "run2"
    proc = cli(tmp_path, "train", TINY, "--run-dir", str(run), procs=2, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and 0.0 <= metrics["test"]["auc"] <= 1.0


@pytest.mark.skipif(not (SHARED_DATA / "frappe").exists(), reason="../shared/data/frappe is not present")
def test_train_on_real_frappe_data(tmp_path):
    run = tmp_path / "frappe"
    cli(
        tmp_path,
        "train",
        str(REPO / "configs" / "frappe_dlrm.yaml"),
        "--run-dir",
        str(run),
        f"data.path={SHARED_DATA}/frappe/frappe.validation.libfm.gz,{SHARED_DATA}/frappe/frappe.test.libfm.gz",
        "train.epochs=1",
        "train.progress=false",
    )
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["num_examples"]["train"] == 69266
    assert metrics["test"]["auc"] > 0.85


def test_a_budget_below_every_table_is_met_by_rows_and_the_result_retrains_and_serves_in_int8(tmp_path):
    # 1/64 of uniform-64: no table keeps a row per id at dim 4, so `uniform` names its floor in one line...
    refused = cli(
        tmp_path,
        "search",
        TINY,
        "--run-dir",
        str(tmp_path / "u"),
        "search.budget=0.015625 x uniform-64",
        check=False,
    )
    assert (
        refused.returncode == 2 and "every table at dim 4 in fp32" in refused.stderr.strip().splitlines()[-1]
    )
    # ... and MDE's frequency blocks (hashed tails, shared rows) meet it.
    run = tmp_path / "mde"
    cli(
        tmp_path,
        "search",
        TINY,
        "--run-dir",
        str(run),
        "search.method=mde",
        "search.budget=0.015625 x uniform-64",
    )
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["budget_used"] <= metrics["budget_bytes"] and "serving_bytes" in metrics
    arch = yaml.safe_load((run / "architecture.yaml").read_text())
    assert arch["kind"] == "frequency" and "Frequency buckets" in (run / "report.md").read_text()
    # The searched architecture retrains as it is, its tables served in int8 and tested as served.
    edited = tmp_path / "int8.yaml"
    for t in arch["tables"]:
        t["data_type"] = "int8"
    edited.write_text(yaml.safe_dump(arch))
    retrain = tmp_path / "retrain"
    cli(tmp_path, "train", TINY, "--run-dir", str(retrain), f"arch={edited}")
    result = json.loads((retrain / "metrics.json").read_text())
    assert {"auc", "trained_auc"} <= set(result["test"]) and result["serving_bytes"] < result[
        "embedding_bytes"
    ]
