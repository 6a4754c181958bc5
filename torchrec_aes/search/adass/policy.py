"""AdaS&S's search stage: REINFORCE over a factorised per-table policy with the resource competition
penalty."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from torchrec_aes.search.adass.config import AdaSSConfig
from torchrec_aes.search.state import load_state, save_state
from torchrec_aes.supernet.sampling import step_generator

logger = logging.getLogger(__name__)


class PolicySearch:
    """REINFORCE over a factorised per-table softmax policy, with the resource competition penalty.

    Args:
        score: architecture (candidate index per table) -> val AUC with supernet weights.
        table_bytes: [F][K] bytes of table f at candidate k.
        budget: budget bytes.
        acfg: the knobs (rl_*, penalty).
        seed: sampling seed.
        writer: TensorBoard writer or None.
        state_path: where the RL state is saved ("" = nowhere); an existing one of this run is resumed.
        identity: the run identity the state is saved with and checked against (`search.state`).
        progress: show a tqdm bar.
    """

    def __init__(
        self,
        score: Callable[[list[int]], float],
        table_bytes: Sequence[Sequence[int]],
        budget: int,
        acfg: AdaSSConfig,
        seed: int,
        writer: SummaryWriter | None = None,
        state_path: str = "",
        identity: dict[str, Any] | None = None,
        progress: bool = False,
    ) -> None:
        self.score = score
        self.bytes = torch.tensor(table_bytes, dtype=torch.float64)  # [F, K]
        self.budget = budget
        self.acfg = acfg
        self.seed = seed
        self.writer = writer
        self.state_path = state_path
        self.identity = identity or {}
        self.progress = progress
        num_tables, k = self.bytes.shape
        self.logits = torch.zeros(num_tables, k, requires_grad=True)  # [F, K]
        self.optimizer = torch.optim.Adam([self.logits], lr=acfg.rl_lr)
        self.baseline: torch.Tensor | None = None  # [F]
        self.update = 0
        self.history: list[dict[str, float]] = []
        if state_path and (blob := load_state(state_path, self.identity)) is not None:
            self._load(blob)

    def _save(self) -> None:
        save_state(
            self.state_path,
            {
                "logits": self.logits.detach(),
                "optimizer": self.optimizer.state_dict(),
                "baseline": self.baseline,
                "update": self.update,
                "history": self.history,
            },
            self.identity,
        )

    def _load(self, blob: dict[str, Any]) -> None:
        with torch.no_grad():
            self.logits.copy_(blob["logits"])
        self.optimizer.load_state_dict(blob["optimizer"])
        self.baseline, self.update, self.history = blob["baseline"], blob["update"], blob["history"]
        logger.info("adass: resumed the RL search at update %d", self.update)

    def rewards(self, choices: torch.Tensor, aucs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-table rewards [J, F] and total bytes [J] of choices [J, F] with AUCs [J]."""
        per_table = self.bytes.gather(1, choices.t()).t()  # [J, F]
        total = per_table.sum(1)  # [J]
        over = (total / self.budget - 1).clamp_min(0)  # [J]
        share = per_table / total[:, None]
        num_tables = choices.shape[1]
        return aucs[:, None] - self.acfg.penalty * num_tables * share * over[:, None], total

    def run(self) -> list[int]:
        """Runs the remaining updates; returns the policy's per-table argmax."""
        acfg = self.acfg
        bar = tqdm(
            total=acfg.rl_updates,
            initial=self.update,
            desc="adass RL",
            disable=not self.progress,
            leave=False,
            dynamic_ncols=True,
        )
        while self.update < acfg.rl_updates:
            g = step_generator(self.seed, 2, self.update)
            probs = torch.softmax(self.logits.detach(), dim=1)  # [F, K]
            choices = torch.multinomial(probs, acfg.rl_samples, replacement=True, generator=g).t()  # [J, F]
            aucs = torch.tensor([self.score(c.tolist()) for c in choices], dtype=torch.float64)
            rewards, total = self.rewards(choices, aucs)  # [J, F], [J]
            if self.baseline is None:
                self.baseline = rewards.mean(0)
            advantage = rewards - self.baseline[None, :]
            # Normalised: AUC differences between architectures are ~1e-3, penalties up to ~1.
            advantage = advantage / (advantage.std() + 1e-6) if advantage.numel() > 1 else advantage
            self.baseline = acfg.rl_baseline_decay * self.baseline + (
                1 - acfg.rl_baseline_decay
            ) * rewards.mean(0)
            log_p = torch.log_softmax(self.logits, dim=1)  # [F, K]
            chosen = log_p.gather(1, choices.t()).t()  # [J, F]
            entropy = -(log_p.exp() * log_p).sum(1)  # [F]
            loss = -(advantage.float() * chosen).mean(0).sum() - acfg.rl_entropy * entropy.sum()
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            self.update += 1
            row = {
                "update": self.update,
                "entropy": float(entropy.detach().mean()),
                "auc_mean": float(aucs.mean()),
                "auc_max": float(aucs.max()),
                "bytes_mean": float(total.mean()),
                "over_budget": float((total > self.budget).double().mean()),
            }
            self.history.append(row)
            if self.writer:
                for k, v in row.items():
                    if k != "update":
                        self.writer.add_scalar(f"rl/{k}", v, self.update)
            bar.update(1)
            if self.state_path and (
                self.update % acfg.checkpoint_every == 0 or self.update == acfg.rl_updates
            ):
                self._save()
        bar.close()
        return self.logits.detach().argmax(dim=1).tolist()
