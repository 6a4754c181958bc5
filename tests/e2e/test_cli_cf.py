"""Collaborative filtering through the CLI: train MF, BET search, retrain the searched architecture, plan."""

from __future__ import annotations

import json
import random

import pytest
import yaml

from tests.conftest import REPO, cli

pytestmark = pytest.mark.e2e
BET_TINY = str(REPO / "configs" / "tests" / "bet_tiny.yaml")


def _interaction_file(path, users=60, items=80, seed=0):
    """LightGCN format: popular items are liked more, each user has 8-20 items."""
    rng = random.Random(seed)
    weights = [1.0 / (1 + i) for i in range(items)]
    with open(path, "w") as f:
        for u in range(users):
            liked = sorted(set(rng.choices(range(items), weights=weights, k=rng.randint(8, 20))))
            f.write(" ".join(map(str, [u, *liked])) + "\n")
    return str(path)


def test_train_mf_reports_ranking_metrics(tmp_path):
    data = _interaction_file(tmp_path / "train.txt")
    run = tmp_path / "mf"
    cli(tmp_path, "train", BET_TINY, "--run-dir", str(run), f"data.path={data}", "model.embedding_dim=8")
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"recall@20", "ndcg@20", "recall@5"} <= set(metrics["test"])
    assert metrics["num_examples"]["train"] > 0 and metrics["embedding_bytes"] > 0


def test_bet_search_meets_the_budget_and_its_architecture_retrains_and_plans(tmp_path):
    data = _interaction_file(tmp_path / "train.txt")
    run = tmp_path / "bet"
    out = cli(tmp_path, "search", BET_TINY, "--run-dir", str(run), f"data.path={data}").stdout
    assert "<= budget" in out
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["budget_used"] <= metrics["budget_bytes"]
    assert "recall@20" in metrics["test"]
    # The final pick trained BET's top candidates, SU and the zero-cost baselines; the best on val won.
    finalists = {r["label"]: r for r in metrics["finalists"]}
    assert {"bet_0", "bet_1", "bet_su"} <= set(finalists) and all(
        r["bytes"] <= metrics["budget_bytes"] for r in finalists.values()
    )
    assert finalists[metrics["winner"]]["val"]["recall@20"] == max(
        r["val"]["recall@20"] for r in finalists.values()
    )
    # A row-wise architecture (one random BET action, no other finalists) is written with its row files,
    # retrains through `train arch=...` in its masked form, and plans.
    run = tmp_path / "bet_sr"
    cli(tmp_path, "search", BET_TINY, "--run-dir", str(run), f"data.path={data}", "search.method=bet_sr")
    arch = yaml.safe_load((run / "architecture.yaml").read_text())
    assert arch["kind"] == "rowwise"
    assert "row_dims" in arch["extra"] and (run / arch["extra"]["row_dims"]).exists()
    assert all(t["embedding_dim"] % 4 == 0 for t in arch["tables"])
    # The searched (bucketed) architecture trains again through `train arch=...` in its masked form.
    retrain = tmp_path / "retrain"
    cli(tmp_path, "train", BET_TINY, "--run-dir", str(retrain), f"data.path={data}", f"arch={run}")
    assert "recall@20" in json.loads((retrain / "metrics.json").read_text())["test"]
    again = yaml.safe_load((retrain / "architecture.yaml").read_text())
    assert again["tables"] == arch["tables"] and (retrain / again["extra"]["row_dims"]).exists()
    proc = cli(None, "plan", str(run), "--world-size", "2", "--device", "cpu", "--module-path", "ebc",
               "--out", str(tmp_path / "plan.json"), check=False, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
