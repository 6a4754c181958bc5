"""BPR training of MF and LightGCN on 2 gloo ranks: data-parallel pairs, sharded or replicated tables."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.distributed.launcher import run_ranks
from tests.unit.test_cf import cf_config, planted_interactions, train_cf
from torchrec_aes.architecture import Architecture
from torchrec_aes.data.interactions import load_interactions

pytestmark = pytest.mark.distributed


def _train(rank: int, world_size: int, path: str) -> dict:
    cfg = cf_config(path, "mf", epochs=6)
    data = load_interactions(cfg.data)
    arch = Architecture.uniform(data.schema, 8)
    untrained = train_cf(
        cf_config(path, "mf", epochs=1, lr=0.0), arch, data, "", sharding_types=["data_parallel"]
    )
    # Replicated tables: TorchRec's DDP inside the lookup all-reduces the row gradients.
    mf = train_cf(cfg, arch, data, "", keep_tables=True, sharding_types=["data_parallel"])
    # One table per rank: LightGCN's full-table read fetches rows from the other rank every step.
    lightgcn = train_cf(
        cf_config(path, "lightgcn", epochs=2), arch, data, "", keep_tables=True, sharding_types=["table_wise"]
    )
    return {"untrained": untrained, "mf": mf, "lightgcn": lightgcn}


def _comparable(result: dict) -> dict:
    timings = ("wall_seconds", "train_seconds", "examples_per_second")
    return {k: v for k, v in result.items() if k not in (*timings, "tables", "history")}


def test_data_parallel_bpr_training_gives_the_same_metrics_and_tables_on_both_ranks(tmp_path: Path) -> None:
    path = planted_interactions(tmp_path / "train.txt")
    rank0, rank1 = run_ranks(_train, path, world_size=2)
    for name in ("untrained", "mf", "lightgcn"):
        assert _comparable(rank0[name]) == _comparable(rank1[name]), name
        # Train losses are per rank (each rank's own pairs); the validation metrics are global.
        val0 = [{k: v for k, v in h.items() if k != "train_loss"} for h in rank0[name]["history"]]
        val1 = [{k: v for k, v in h.items() if k != "train_loss"} for h in rank1[name]["history"]]
        assert val0 == val1, name
    for name in ("mf", "lightgcn"):
        for feature in ("user", "item"):
            assert torch.equal(rank0[name]["tables"][feature], rank1[name]["tables"][feature]), (
                name,
                feature,
            )
    assert set(rank0["mf"]["sharding"].values()) == {"data_parallel"}
    assert set(rank0["lightgcn"]["sharding"].values()) == {"table_wise"}
    assert rank0["mf"]["test"]["recall@20"] > rank0["untrained"]["test"]["recall@20"] + 0.3
    assert rank0["lightgcn"]["test"]["recall@20"] > 0.5
