"""BET's config section, `search.bet` (defaults are the paper's values; `search/bet/__init__.py` and the
docs/methods/bet.md say what is ours)."""

from __future__ import annotations

from dataclasses import dataclass, field

from torchrec_aes.config import register_section


@dataclass
class BETConfig:
    """BET (search.method=bet | bet_su | bet_sr): row-wise sizes of CF user/item tables (WSDM 2024).

    Defaults are the paper's values; see `torchrec_aes/search/bet/__init__.py` for what is ours.
    """

    max_dim: int = 128
    """d_max: the full-size model's dim and the largest row size (a multiple of `multiple`)."""
    multiple: int = 4
    """Row sizes are multiples of this (4: FBGEMM's fused kernels; the paper uses 1)."""
    iterations: int = 50
    """T: search iterations (each fine-tunes and evaluates one action)."""
    actions: int = 100
    """m: feasible actions sampled per iteration, among which one is picked."""
    finetune_epochs: int = 10
    """E: fine-tuning epochs of the pre-trained model under an action's mask (fresh optimizer)."""
    top_k: int = 5
    """Candidates (best fitness) retrained from scratch at the end; the best on validation is kept."""
    schedule: list[str] = field(default_factory=lambda: ["random", "argmax", "argmax", "argmax", "nearest"])
    """Pick rule per iteration, cycled: argmax (predicted fitness) | random | nearest (to the best so far
    in predictor embedding space). The paper: 3 of 5 argmax, 1 random, 1 nearest."""
    predictor_lr: float = 0.01
    """Adam learning rate of the fitness predictor at the start."""
    predictor_lr_decay: float = 0.9
    """Learning rate multiplier after each predictor update."""
    predictor_min_lr: float = 0.002
    """Floor of the predictor learning rate."""
    predictor_updates: int = 2
    """Single-sample predictor updates per iteration."""
    max_redraws: int = 20
    """Redraws of a side's sizes when one exceeds d_max; after that, sizes are clipped to d_max and the
    freed budget is handed to rows with room (ours; the paper redraws without bound)."""
    resume: bool = True
    """Continue a search from RUN/bet/state.pt (replay set + predictor, saved every iteration)."""
    precision: str = "fp32"
    """Storage precision of every user/item table (the bucket tables, their masked training form and SU):
    fp32 | fp16. fp16 halves a row's bytes, so the same budget affords about twice the sizes."""


register_section("bet", BETConfig)
