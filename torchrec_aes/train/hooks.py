"""Extension points of the one training loop (`Trainer`); every default does nothing.

What a search needs from training beyond "train this architecture" goes through these hooks, never a loop
of its own: a supernet sets its sampled choice before each step and folds the loss into its sampler after
it (AdaS&S), measures something every N steps with the model at rest (importance), scores epochs its own
way (a panel of subnets), and keeps its state in the trainer's checkpoints; a search starts from given
weights or under masks (BET), or adds a regulariser to the loss (iHAS).

Example::

    class SetChoice(TrainHooks):
        def before_step(self, step: int) -> None:
            supernet.set_dims(sampler.sample(step))

    Trainer(cfg, task, arch, hooks=SetChoice()).fit()
"""

from __future__ import annotations

from typing import Any

import torch
from torchrec.distributed.model_parallel import DistributedModelParallel


class TrainHooks:
    """Override what a training needs; the trainer calls these on every rank.

    Attributes:
        segment_steps: > 0 splits training into runs of this many steps (counted over the whole training);
            after each full run `between_segments` is called with the model detached from the pipeline.
    """

    segment_steps: int = 0

    def make_model(self, task: Any, ebc: Any) -> torch.nn.Module:
        """The model around `ebc` (tables on meta) replacing the task's `model.type`; only called when a
        subclass overrides it (e.g. iHAS's grouped model: a router and one head per group)."""
        raise NotImplementedError

    def on_model(self, dmp: DistributedModelParallel) -> None:
        """Once, after DMP has materialised the model (before any resume)."""

    def before_step(self, step: int) -> None:
        """Before training step `step` (0-based over the whole training)."""

    def after_step(self, step: int, loss: float) -> float:
        """After step `step` with this rank's loss; returns the loss to record (e.g. all-reduced)."""
        return loss

    def between_segments(self, step: int) -> None:
        """After every `segment_steps` steps (model callable directly)."""

    def extra_loss(self, batch: Any, outputs: torch.Tensor) -> torch.Tensor | None:
        """A term added to the task's training loss (e.g. a regulariser), or None."""
        return None

    def validate(self, epoch: int) -> dict[str, float] | None:
        """Validation metrics replacing the task's (they must hold `score_key`), or None for the task's."""
        return None

    score_key: str | None = None
    """The metric of `validate` that early stopping maximises (None: the task's stop metric)."""

    def on_best(self, dmp: DistributedModelParallel) -> None:
        """When an epoch becomes the best so far (or the best epoch is restored after a resume)."""

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state saved with each epoch checkpoint."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores `state_dict()` on resume."""


NO_HOOKS = TrainHooks()
