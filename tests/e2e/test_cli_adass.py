"""AdaS&S through the CLI as a user runs it: `torchrec-aes search` writes the run directory (saved phases,
landscape, final pick, report) and a rerun resumes from the saved phases."""

from __future__ import annotations

import json

import pytest

from tests.conftest import REPO, cli

pytestmark = pytest.mark.e2e

ONE_THREAD = {"OMP_NUM_THREADS": "1"}
"""The CLI runs' environment on top of `cli_env()`: one intra-op thread per process."""


def test_cli_search_runs_end_to_end_and_a_rerun_resumes_from_the_saved_phases(tmp_path):
    run = tmp_path / "run"
    config = str(REPO / "configs" / "tests" / "adass_tiny.yaml")
    first = cli(tmp_path, "search", config, "--run-dir", str(run), env=ONE_THREAD, check=False)
    assert first.returncode == 0, first.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["budget_used"] <= metrics["budget_bytes"]
    assert 0.0 <= metrics["test"]["auc"] <= 1.0
    assert (run / "checkpoints" / "adass" / "supernet_eval.pt").exists()
    assert (run / "checkpoints" / "adass" / "rl_state.pt").exists()
    assert not (run / "checkpoints" / "adass" / "supernet").exists()  # superseded by supernet_eval.pt
    assert any((run / "tb" / "adass").iterdir())
    # The report's quality-vs-bytes plot: the final pick among the scored architectures, uniform-d_max most
    # expensive of the named points, and the final choice within the budget.
    landscape = json.loads((run / "landscape.json").read_text())
    named = landscape["named"]
    assert named["final"][0] <= metrics["budget_bytes"]
    # The final pick: the search's two variants and the baselines, trained from scratch, best on val.
    finalists = {r["label"]: r for r in metrics["finalists"]}
    assert (
        {"adass", "adass_fill", "uniform", "power_rule", "uniform_fp16", "mde", "hashed"}
        >= set(finalists)
        >= {"adass", "uniform"}
    )
    assert finalists["adass"]["bytes"] == named["final"][0]
    assert finalists[metrics["winner"]]["val"]["auc"] == max(r["val"]["auc"] for r in finalists.values())
    assert finalists[metrics["winner"]]["bytes"] == metrics["budget_used"] <= metrics["budget_bytes"]
    assert "Final pick" in (run / "report.md").read_text()
    assert max(v[0] for v in named.values()) == named[f"uniform-{max(metrics['candidates'])}"][0]
    assert len(landscape["points"]) >= metrics["search_log"]["rl"]["updates"]
    assert "quality_vs_bytes.png" in (run / "report.md").read_text()
    assert (run / "quality_vs_bytes.png").stat().st_size > 0
    # A rerun (e.g. after a kill) skips the trained supernet and the finished RL phase: same architecture.
    second = cli(tmp_path, "search", config, "--run-dir", str(run), env=ONE_THREAD, check=False)
    assert second.returncode == 0, second.stderr[-3000:]
    again = json.loads((run / "metrics.json").read_text())
    assert again["search_log"]["supernet"] == {"resumed": True}
    assert again["dims"] == metrics["dims"]
    # train.resume=false starts every phase fresh: the supernet trains again.
    fresh = cli(
        tmp_path, "search", config, "--run-dir", str(run), "train.resume=false", env=ONE_THREAD, check=False
    )
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    assert "history" in json.loads((run / "metrics.json").read_text())["search_log"]["supernet"]
