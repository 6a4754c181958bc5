"""Checkpoint integrity on 2 gloo ranks: rank 0 verifies every rank's DCP files, all ranks fall back
together to the previous intact epoch, and the run still equals an uninterrupted one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.distributed.launcher import run_ranks
from tests.helpers import tiny_config, tiny_splits
from torchrec_aes.architecture import Architecture
from torchrec_aes.errors import CheckpointError
from torchrec_aes.tasks.ctr import CTRTask
from torchrec_aes.train.trainer import Trainer

pytestmark = pytest.mark.distributed


def _fit(rank: int, world_size: int, run_dir: str, epochs: int, seed: int = 0) -> dict:
    torch.set_num_threads(1)  # 2 ranks on a shared 2-core machine
    splits = tiny_splits(n=3000)
    cfg = tiny_config()
    cfg.train.epochs, cfg.train.patience, cfg.train.seed = epochs, 5, seed
    arch = Architecture.uniform(splits.schema, 8)
    try:
        return Trainer(cfg, CTRTask(cfg, splits), arch, run_dir).fit()
    except CheckpointError as e:
        return {"error": str(e)}


def test_rank_1s_corrupt_shard_falls_back_on_both_ranks_and_equals_an_uninterrupted_run(tmp_path) -> None:
    whole = run_ranks(_fit, str(tmp_path / "whole"), 3, world_size=2)
    part = str(tmp_path / "part")
    run_ranks(_fit, part, 2, world_size=2)
    shard = Path(part) / "checkpoints" / "train" / "epoch_1" / "__1_0.distcp"  # written by rank 1
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    resumed = run_ranks(_fit, part, 3, world_size=2)
    # Rank 0's history is the run's (metrics.json); train losses are per rank, and a resumed rank 1 gets
    # rank 0's for the epochs before the resume, so the per-epoch comparison is rank 0's.
    assert resumed[0]["history"] == whole[0]["history"]
    assert [h["epoch"] for h in resumed[0]["history"]] == [0, 1, 2]
    for r, w in zip(resumed, whole, strict=True):
        assert r["test"] == w["test"]
    # Another seed is refused on every rank with the same one-line message.
    refused = run_ranks(_fit, part, 3, 1, world_size=2)
    assert refused[0] == refused[1] and "train.seed 0 vs 1" in refused[0]["error"]
