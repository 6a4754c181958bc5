"""The one Trainer resumes exactly: a run stopped after an epoch and rerun equals an uninterrupted run."""

from __future__ import annotations

import torch

from tests.helpers import tiny_config, tiny_splits
from torchrec_aes.architecture import Architecture
from torchrec_aes.tasks.ctr import CTRTask
from torchrec_aes.train.hooks import TrainHooks
from torchrec_aes.train.trainer import Trainer


def test_ctr_training_resumed_after_an_epoch_equals_an_uninterrupted_run_bit_for_bit(tmp_path) -> None:
    # Adam's state is created on the first step; a resume must restore it (not start it afresh).
    splits = tiny_splits(n=3000)
    cfg = tiny_config()
    cfg.train.epochs, cfg.train.patience = 3, 5
    arch = Architecture.uniform(splits.schema, 8)
    whole = Trainer(cfg, CTRTask(cfg, splits), arch, str(tmp_path / "whole")).fit()
    cfg.train.epochs = 1  # "killed" after the first epoch
    Trainer(cfg, CTRTask(cfg, splits), arch, str(tmp_path / "part")).fit()
    cfg.train.epochs = 3
    resumed = Trainer(cfg, CTRTask(cfg, splits), arch, str(tmp_path / "part")).fit()
    assert [h["epoch"] for h in resumed["history"]] == [0, 1, 2]
    assert [h["train_loss"] for h in resumed["history"]] == [h["train_loss"] for h in whole["history"]]
    assert resumed["test"] == whole["test"]


class _DrawsNoise(TrainHooks):
    """A training loss that draws from the global generator each step (as iHAS's sampled gates do)."""

    def extra_loss(self, batch, outputs):
        return 0.1 * (outputs * torch.rand(outputs.shape)).mean()


def test_a_resumed_run_continues_the_global_random_generators(tmp_path) -> None:
    """Without the generators in the checkpoint, a resumed run redraws the noise of its first epoch."""
    splits = tiny_splits(n=2000)
    cfg = tiny_config()
    cfg.train.epochs, cfg.train.patience = 3, 5
    arch = Architecture.uniform(splits.schema, 8)

    def run(directory: str, epochs: int) -> dict:
        cfg.train.epochs = epochs
        return Trainer(cfg, CTRTask(cfg, splits), arch, str(tmp_path / directory), hooks=_DrawsNoise()).fit()

    whole = run("whole", 3)
    run("part", 1)
    torch.rand(1000)  # whatever happened in the process in between
    resumed = run("part", 3)
    assert [h["train_loss"] for h in resumed["history"]] == [h["train_loss"] for h in whole["history"]]
    assert resumed["test"] == whole["test"]


def test_a_run_directory_with_other_data_of_the_same_shape_is_refused_at_start(tmp_path) -> None:
    """Flipped labels (or another split seed) keep every shape: the data's content digest tells them apart."""
    import pytest  # only here

    from torchrec_aes.data.dataset import CTRData, Splits
    from torchrec_aes.errors import CheckpointError

    splits = tiny_splits(n=1500)
    cfg = tiny_config()
    cfg.train.epochs = 1
    arch = Architecture.uniform(splits.schema, 8)
    Trainer(cfg, CTRTask(cfg, splits), arch, str(tmp_path / "run")).fit()
    flipped = Splits(
        splits.schema,
        *(CTRData(p.dense, p.sparse, 1.0 - p.labels) for p in (splits.train, splits.val, splits.test)),
    )
    cfg.train.epochs = 2
    with pytest.raises(CheckpointError, match=r"data\.content \"[0-9a-f]+\" vs \"[0-9a-f]+\""):
        Trainer(cfg, CTRTask(cfg, flipped), arch, str(tmp_path / "run")).fit()
