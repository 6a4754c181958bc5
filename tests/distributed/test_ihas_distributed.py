"""iHAS on 2 gloo ranks: the tiny search (gated model, gathered sample, K-Means, router, budget step, final
pick of the grouped model) completes, and every rank finds the same groups, dims and router, within the
budget: the clustered sample is gathered from both ranks and K-Means is a pure function of it, so no rank
may diverge without a broadcast.

The `separate` deployment is used here (per-group column blocks in one table per field, trained sharded
over both ranks); the single-process e2e test covers `shared`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from tests.conftest import REPO
from tests.distributed.launcher import run_ranks
from torchrec_aes.config import load_config
from torchrec_aes.data.synthetic import load_synthetic
from torchrec_aes.models.grouped import Router

pytestmark = pytest.mark.distributed
IHAS_TINY = str(REPO / "configs" / "tests" / "ihas_tiny.yaml")


MULTI_HOT = ["data.synthetic.multi_hot_fields=[1, 3]", "data.synthetic.mean_bag_length=4"]
"""Two fields as bags: the clustering sample gathers each rank's bags, the router is fitted on every id."""


def _overrides(run_dir: str, cache: str, extra: list[str]) -> list[str]:
    return [
        f"run_dir={run_dir}",
        f"data.cache_dir={cache}",
        "search.final_baselines=false",
        "search.ihas.deployment=separate",
        *extra,
    ]


def _search(rank: int, world_size: int, run_dir: str, cache: str, extra: list[str]) -> dict:
    torch.set_num_threads(1)  # 2 ranks on a shared 2-core machine
    from torchrec_aes.runs import run_search

    metrics = run_search(load_config(IHAS_TINY, _overrides(run_dir, cache, extra)))
    return {
        "world_size": metrics["world_size"],
        "search_log": metrics["search_log"],
        "dims": metrics["dims"],
        "budget_used": metrics["budget_used"],
        "budget_bytes": metrics["budget_bytes"],
        "test_auc": metrics["test"]["auc"],
    }


@pytest.mark.parametrize("extra", [[], MULTI_HOT], ids=["one-hot", "multi-hot"])
def test_two_ranks_find_the_same_groups_dims_and_router(tmp_path, extra):
    run, cache = tmp_path / "run", str(tmp_path / "cache")
    cfg = load_config(IHAS_TINY, _overrides(str(run), cache, extra))
    splits, _ = load_synthetic(cfg.data, cache)  # generate the data once, before the ranks read it
    r0, r1 = run_ranks(_search, str(run), cache, extra, world_size=2)
    assert r0["world_size"] == r1["world_size"] == 2
    log0, log1 = ({**r["search_log"], **r["search_log"]["candidates"][0]} for r in (r0, r1))
    assert log0["num_groups"] == 2 and log0["deployment"] == "separate"
    assert [g["dims"] for g in log0["groups"]] == [g["dims"] for g in log1["groups"]]
    assert [g["share"] for g in log0["groups"]] == [g["share"] for g in log1["groups"]]
    assert [g["mean_active"] for g in log0["groups"]] == [g["mean_active"] for g in log1["groups"]]
    assert log0["router"] == log1["router"]  # features, gains, accuracy, bytes
    assert log0["sparsity_weight"] == log1["sparsity_weight"]  # the dual update saw the all-reduced share
    assert log0["search_history"] == log1["search_history"]
    assert r0["dims"] == r1["dims"] and r0["test_auc"] == r1["test_auc"]
    assert r0["budget_used"] <= r0["budget_bytes"]

    # Rank 0 wrote the run directory: the architecture holds the groups both ranks found.
    arch = yaml.safe_load((run / "architecture.yaml").read_text())
    assert arch["kind"] == "grouped" and arch["extra"]["groups"]["dims"] == [
        g["dims"] for g in log0["groups"]
    ]
    names = [t["name"] for t in arch["tables"]]
    assert names[:12] == [f"g{k}_t_c{f}" for k in range(2) for f in range(6)]
    router = Router.load(str(run))
    assert router.features == log0["router"]["features"]
    groups = np.load(run / "test_groups.npy")
    assert len(groups) == len(splits.test) // 2 * 2  # the rows a 2-rank test pass scores
