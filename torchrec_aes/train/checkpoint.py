"""Epoch checkpoints with `torch.distributed.checkpoint` (DCP): sharded tables, fused optimizer state,
dense weights and the trainer's own state. A rerun with the same run directory resumes from the last one.

Layout: `checkpoints/<tag>/epoch_<k>/` (DCP files) and `checkpoints/<tag>/state.json` (written last and
atomically, so a checkpoint only counts once it is complete). Only the latest and the best epoch are kept.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import torch.distributed as dist
import torch.distributed.checkpoint as dcp

from torchrec_aes.io import exists, join, read_text, write_text_atomic


class Checkpointer:
    """Saves and restores (model, optimizer, trainer state) per epoch.

    Args:
        directory: `RUN/checkpoints/<tag>`.
        is_main: whether this rank writes the state file and prunes old epochs.
    """

    def __init__(self, directory: str, is_main: bool) -> None:
        self.directory = directory
        self.is_main = is_main

    def _epoch_dir(self, epoch: int) -> str:
        return join(self.directory, f"epoch_{epoch}")

    def state(self) -> dict[str, Any] | None:
        """The trainer state of the last complete checkpoint, or None."""
        path = join(self.directory, "state.json")
        return json.loads(read_text(path)) if exists(path) else None

    def save(self, epoch: int, model, optimizer, trainer_state: dict[str, Any]) -> None:
        dcp.save(
            {"model": model.state_dict(), "optim": optimizer.state_dict()},
            checkpoint_id=self._epoch_dir(epoch),
        )
        if dist.is_initialized():
            dist.barrier()
        if self.is_main:
            write_text_atomic(join(self.directory, "state.json"), json.dumps(trainer_state, indent=1))
            keep = {f"epoch_{epoch}", f"epoch_{trainer_state.get('best_epoch', epoch)}"}
            for name in os.listdir(self.directory):
                if name.startswith("epoch_") and name not in keep:
                    shutil.rmtree(join(self.directory, name), ignore_errors=True)
        if dist.is_initialized():
            dist.barrier()

    def load(self, epoch: int, model, optimizer=None) -> None:
        if optimizer is not None:
            # Optimizer state is created lazily on the first step: a fresh optimizer (e.g. Adam's) has
            # none, so DCP would have nothing to load into and its saved state would silently be lost.
            # A zero-gradient step creates it; the weights and state are then overwritten from the file.
            optimizer.init_state()
        state = {"model": model.state_dict()}
        if optimizer is not None:
            state["optim"] = optimizer.state_dict()
        dcp.load(state, checkpoint_id=self._epoch_dir(epoch))
        model.load_state_dict(state["model"])
        if optimizer is not None:
            optimizer.load_state_dict(state["optim"])
