"""AdaS&S's adaptive sampling: which candidate each table trains with in a supernet step."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from torchrec_aes.search.adass.config import AdaSSConfig
from torchrec_aes.supernet.sampling import step_generator


class AdaptiveSampler:
    """Per-step architecture sampling of AdaS&S (see the module docstring).

    Args:
        num_tables: F.
        num_candidates: K (candidate index K - 1 is the largest dim).
        acfg: the knobs.
        seed: shared by all ranks.

    Example::

        sampler = AdaptiveSampler(20, 7, AdaSSConfig(), seed=0)
        choice = sampler.sample(step)          # [F] candidate indices, same on every rank
        sampler.update_loss(choice, step, global_loss)
    """

    def __init__(self, num_tables: int, num_candidates: int, acfg: AdaSSConfig, seed: int) -> None:
        self.num_tables = num_tables
        self.num_candidates = num_candidates
        self.acfg = acfg
        self.seed = seed
        self.loss_ema = torch.full((num_tables, num_candidates), math.nan, dtype=torch.float64)  # [F, K]
        self.importance = torch.ones(num_tables, dtype=torch.float64)  # [F]
        self.importance_measured = False

    def sandwich(self, step: int) -> str | None:
        """ "min" or "max" if `step` is a sandwich step, else None."""
        every = self.acfg.sandwich_every
        if every <= 0:
            return None
        return {every - 2: "min", every - 1: "max"}.get(step % every)

    def candidate_probs(self) -> torch.Tensor:
        """p_f(k) [F, K]: softmax of the relative EMA loss, mixed with uniform."""
        k = self.num_candidates
        ema = self.loss_ema
        seen = ~torch.isnan(ema)
        # Candidates never trained yet count as the table's worst seen one, so they get sampled soon.
        worst = torch.where(seen, ema, torch.full_like(ema, -math.inf)).amax(dim=1, keepdim=True)
        filled = torch.where(seen, ema, worst)
        mean = filled.mean(dim=1, keepdim=True)
        z = (filled - mean) / (self.acfg.temperature * mean.abs().clamp_min(1e-12))
        z = torch.where(seen.any(dim=1, keepdim=True), z, torch.zeros_like(z))
        return (1 - self.acfg.epsilon) * torch.softmax(z, dim=1) + self.acfg.epsilon / k

    def table_probs(self) -> torch.Tensor:
        """[F] probability of each table being among those that use their sampled dim."""
        w = self.importance.clamp_min(0)
        w = w / w.sum() if float(w.sum()) > 0 else torch.full_like(w, 1 / self.num_tables)
        u = self.acfg.importance_uniform
        return (1 - u) * w + u / self.num_tables

    def sample(self, step: int) -> list[int]:
        """The candidate index of every table for `step` (a pure function of the state and the step)."""
        mode = self.sandwich(step)
        if mode is not None:
            return [0 if mode == "min" else self.num_candidates - 1] * self.num_tables
        g = step_generator(self.seed, 1, step)
        n_sampled = max(1, round(self.acfg.sample_fraction * self.num_tables))
        tables = torch.multinomial(self.table_probs(), n_sampled, replacement=False, generator=g)
        picks = torch.multinomial(self.candidate_probs(), 1, generator=g).squeeze(1)  # [F]
        choice = [self.num_candidates - 1] * self.num_tables
        for f in tables.tolist():
            choice[f] = int(picks[f])
        return choice

    def update_loss(self, choice: Sequence[int], step: int, loss: float) -> None:
        """Folds the step's (global) train loss into the EMA of every (table, used candidate).

        Sandwich steps are skipped: an all-smallest step's high loss says nothing about one table's
        candidate and would only pull sampling towards the smallest dims.
        """
        if self.sandwich(step) is not None or not math.isfinite(loss):
            return
        decay = self.acfg.loss_ema
        for f, k in enumerate(choice):
            old = float(self.loss_ema[f, k])
            self.loss_ema[f, k] = loss if math.isnan(old) else decay * old + (1 - decay) * loss

    def update_importance(self, increase: Sequence[float]) -> None:
        """Folds a measurement of the val-loss increase per zeroed table into the importance EMA."""
        new = torch.tensor(list(increase), dtype=torch.float64)
        if not self.importance_measured:
            self.importance = new
            self.importance_measured = True
        else:
            a = self.acfg.importance_ema
            self.importance = a * self.importance + (1 - a) * new

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state (NaN as None)."""
        return {
            "loss_ema": [[None if math.isnan(v) else v for v in row] for row in self.loss_ema.tolist()],
            "importance": self.importance.tolist(),
            "importance_measured": self.importance_measured,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loss_ema = torch.tensor(
            [[math.nan if v is None else v for v in row] for row in state["loss_ema"]], dtype=torch.float64
        )
        self.importance = torch.tensor(state["importance"], dtype=torch.float64)
        self.importance_measured = bool(state["importance_measured"])
