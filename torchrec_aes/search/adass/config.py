"""AdaS&S's config section, `search.adass` (`search/adass/__init__.py` says what the paper fixes and what
these defaults are)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torchrec_aes.config import register_section


@dataclass
class AdaSSConfig:
    """AdaS&S (search.method=adass): supernet training with adaptive sampling, then an RL search.

    See `torchrec_aes/search/adass/__init__.py` for what the paper fixes and what these defaults are.
    """

    shared_projection: bool = True
    """DLRM: one projection per table whose first d input columns serve candidate d (our default), instead
    of one projection per (table, candidate) (our first design). Measured on planted data (30k rows, 6
    fields): signal-free tables all got the smallest dim in 6 of 6 seeds shared, 1 of 6 per-candidate,
    because rarely sampled candidates leave their own projections undertrained."""
    supernet_epochs: int = 4
    """Epochs of supernet training (each capped by `train.max_steps` steps if set)."""
    epsilon: float = 0.2
    """Uniform share mixed into each table's candidate distribution: p = (1-eps) softmax + eps/K."""
    temperature: float = 0.01
    """Softmax temperature on the per-(table, candidate) EMA train loss, relative to the table's mean EMA
    loss (1% above the mean = one unit of logit at 0.01)."""
    loss_ema: float = 0.95
    """Decay of the per-(table, candidate) train-loss EMA."""
    sample_fraction: float = 0.5
    """rho: fraction of tables that use their sampled dim in a step (drawn by importance); the rest use
    the largest candidate."""
    importance_uniform: float = 0.2
    """Uniform share mixed into the importance distribution that picks those tables."""
    importance_every: int = 50
    """Refresh table importance (val-loss increase when the table is zeroed) every this many steps."""
    importance_ema: float = 0.5
    """Decay of the importance EMA (0 = keep only the latest measurement)."""
    importance_rows: int = 2048
    """Validation rows (in total over ranks) used to measure importance."""
    sandwich_every: int = 10
    """Every this many steps, one step with all tables at the smallest and one at the largest candidate
    (0 = no sandwich steps)."""
    rl_updates: int = 150
    """REINFORCE policy updates."""
    rl_samples: int = 8
    """Architectures sampled (and evaluated on the validation slice) per update."""
    rl_lr: float = 0.05
    """Adam learning rate of the policy logits."""
    rl_entropy: float = 0.01
    """Entropy bonus weight (per table)."""
    rl_baseline_decay: float = 0.9
    """Decay of the per-table EMA reward baseline."""
    rl_eval_rows: int = 8192
    """Validation rows (fixed slice, from the start of val) on which sampled architectures are scored."""
    penalty: float = 1.0
    """lambda of the resource competition penalty
    r_f = AUC - lambda * F * share_f * max(0, bytes/budget - 1)."""
    confidence: float = 0.95
    """Final budget step: one-sided confidence that a grow's gain (on the confirming half of the val slice)
    and a shrink's loss (on all of it) must reach to count, judged against the paired standard error of
    the AUC difference (DeLong) -- a statistical level, not an AUC constant tuned to one data set. The
    fixed tolerances it replaces (0.0005 / 0.001 AUC) were replayed to fit the planted data and shrank
    nearly every Frappe field to the smallest dim."""
    precisions: list[str] = field(default_factory=lambda: ["fp32"])
    """Table precisions the search chooses from, with the dims: ["fp32"] (dims only) or ["fp32", "fp16"]
    (each table gets a (dim, precision) pair under the one byte budget). The supernet trains in fp32; an fp16
    choice is simulated by rounding its prefix to fp16 in the forward pass (straight-through gradient), so
    scoring sees the loss of precision; the final tables are real fp16 TorchRec tables."""
    checkpoint_every: int = 10
    """Save the RL state every this many updates (the supernet is saved every epoch)."""
    rows: str = "auto"
    """What a choice is made for: "tables" (one dim per table), "blocks" (CTR data: each table cut into its
    frequency blocks, `search.frequency_blocks`, and each block chooses a dim or to share one row; the
    result is a `frequency` architecture -- rows as a lever), or "auto": blocks when no per-table
    architecture fits the budget (every table at its cheapest option is over it), else tables."""


def check_config(acfg: AdaSSConfig) -> None:
    """Raises ValueError naming the `search.adass.*` key of an out-of-range value."""
    rules: dict[str, tuple[float, Callable[[float], bool], str]] = {
        "supernet_epochs": (acfg.supernet_epochs, lambda v: v >= 1, ">= 1"),
        "epsilon": (acfg.epsilon, lambda v: 0 <= v <= 1, "in [0, 1]"),
        "temperature": (acfg.temperature, lambda v: v > 0, "> 0"),
        "loss_ema": (acfg.loss_ema, lambda v: 0 <= v < 1, "in [0, 1)"),
        "sample_fraction": (acfg.sample_fraction, lambda v: 0 < v <= 1, "in (0, 1]"),
        "importance_uniform": (acfg.importance_uniform, lambda v: 0 <= v <= 1, "in [0, 1]"),
        "importance_every": (acfg.importance_every, lambda v: v >= 1, ">= 1"),
        "importance_ema": (acfg.importance_ema, lambda v: 0 <= v < 1, "in [0, 1)"),
        "importance_rows": (acfg.importance_rows, lambda v: v >= 1, ">= 1"),
        "sandwich_every": (acfg.sandwich_every, lambda v: v == 0 or v >= 3, "0 (off) or >= 3"),
        "rl_updates": (acfg.rl_updates, lambda v: v >= 0, ">= 0"),
        "rl_samples": (acfg.rl_samples, lambda v: v >= 1, ">= 1"),
        "rl_lr": (acfg.rl_lr, lambda v: v > 0, "> 0"),
        "rl_entropy": (acfg.rl_entropy, lambda v: v >= 0, ">= 0"),
        "rl_baseline_decay": (acfg.rl_baseline_decay, lambda v: 0 <= v < 1, "in [0, 1)"),
        "rl_eval_rows": (acfg.rl_eval_rows, lambda v: v >= 2, ">= 2"),
        "penalty": (acfg.penalty, lambda v: v >= 0, ">= 0"),
        "confidence": (acfg.confidence, lambda v: 0.5 <= v < 1, "in [0.5, 1)"),
        "checkpoint_every": (acfg.checkpoint_every, lambda v: v >= 1, ">= 1"),
    }
    for key, (value, ok, allowed) in rules.items():
        if not ok(value):
            raise ValueError(f"search.adass.{key}: {value} is out of range; allowed: {allowed}")
    if acfg.rows not in ("auto", "tables", "blocks"):
        raise ValueError(f"search.adass.rows: '{acfg.rows}' is not one of auto, tables, blocks")
    bad = [p for p in acfg.precisions if p not in ("fp32", "fp16")]
    if bad or not acfg.precisions or len(set(acfg.precisions)) != len(acfg.precisions):
        raise ValueError(
            f"search.adass.precisions: {acfg.precisions}; allowed: distinct values of fp32, fp16"
        )


register_section("adass", AdaSSConfig, check_config)
