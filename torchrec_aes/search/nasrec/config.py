"""NASRec's config section, `search.nasrec`. Paper values (NASRec's public code, facebookresearch/NasRec) are
the defaults where they exist; the rest are ours and say so. CPU-sized settings live in configs/."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torchrec_aes.config import register_section
from torchrec_aes.models.block_graph import NORMS, SPACES, TOKEN_INITS

SEED_GRAPHS = ("dlrm", "dcn")


@dataclass
class NASRecConfig:
    """NASRec (search.method=nasrec): weight-sharing supernet over block graphs, regularized evolution."""

    space: str = "full"
    """"full" (dense fc, sum, gating, dot, interact, cross | sparse efc, attention), "small" (fc, dot,
    interact, cross | efc), or the paper's exact op sets "paper_full" / "paper_small" (without `interact`
    and `cross`, ours, which make DLRM and DCN points of the space)."""
    num_blocks: int = 7
    """Blocks per architecture."""
    widths: list[int] = field(default_factory=lambda: [16, 32, 64, 128, 256, 512, 768, 1024])
    """Dense widths a block may choose."""
    tokens: list[int] = field(default_factory=lambda: [16, 32, 48, 64])
    """Sparse token counts a block may choose."""
    token_dim: int = 16
    """Width of a sparse token (the paper's fixed embedding dim); every table is projected to it."""
    merger_tokens: int = 8
    """Tokens the dense -> sparse merger appends."""
    heads: int = 8
    """Attention heads of the `attention` op (NASRec's code: 8 over 16-dim tokens)."""
    layer_norm: str = "always"
    """LayerNorm on the block ops' outputs: "always" (every block: the paper's), "never", or "searched" (each
    block's choice, sampled and mutated like its ops: ours). Attention keeps its own two either way."""
    token_init: str = "identity"
    """Initial token projections of node 0: "identity" (each token starts as its table's embedding, as
    DLRM and DCN read them; ours) or "random" (PyTorch's default for a linear layer, as the paper's
    code)."""
    search_dims: bool = True
    """Search one embedding dim per table (from search.candidates) with the blocks -- our extension; false:
    every table at the largest uniform dim that fits the budget, only the blocks searched (the paper)."""
    supernet_epochs: int = 1
    """Epochs of supernet training (paper: 1)."""
    supernet_lr: float = 0.12
    """Adagrad learning rate of the supernet's dense part (paper: 0.12), cosine schedule."""
    lr_warmup: float = 0.1
    """Share of the supernet's steps with a linear learning-rate warm-up (paper: 10%)."""
    allreduce_precision: str = "fp16"
    """Precision of the supernet's dense-gradient all-reduce with several processes (ours; the run's
    `train.allreduce_precision` for everything else): the supernet's dense part is large and every
    step all-reduces all of it."""
    grad_clip: float = 1.0
    """Gradient-norm clipping of the supernet's dense part (ours; the paper's value is not stated)."""
    warmup_steps: int = 15000
    """Steps over which the probability of training the full path falls linearly from 1 to 0 (paper)."""
    finetune_steps: int = 500
    """Steps of final-layer fine-tuning before a subnet is scored (paper: 500)."""
    finetune_lr: float = 0.04
    """Learning rate of that fine-tuning (Adagrad; paper: 0.04)."""
    finetune_batch: int = 512
    """Batch of that fine-tuning (paper: 512)."""
    finetune_rows: int = 65536
    """Training rows (a fixed slice) the fine-tuning batches are drawn from (ours: the paper streams the
    training set)."""
    score_rows: int = 65536
    """Validation rows of the fixed scoring slice (the paper: 150 batches of 8192; ours is smaller so that
    the slice's pooled embeddings stay in memory on every rank)."""
    generations: int = 240
    """Regularized-evolution generations (paper: 240)."""
    population: int = 128
    """Population size (paper: 128)."""
    sample_size: int = 64
    """Candidates sampled from the population to pick a parent (paper: 64)."""
    children: int = 8
    """Children per generation (paper: 8)."""
    mutations: int = 3
    """Mutations per child in the first generation, falling linearly to 1 in the last (ours: the paper's
    schedule is not stated beyond "falling over time")."""
    top_k: int = 2
    """Best architectures trained from scratch in the final pick (paper: 2)."""
    count_dense: bool = False
    """Count a candidate's dense part (its parameters outside the tables: 4 bytes each as fp32 weights,
    or parameters under `search.count=params`) in the budget with its tables (ours: a NASRec model is a
    whole model). The baselines of the final pick are counted by their tables, as always."""
    seed_graphs: list[str] = field(default_factory=lambda: ["dlrm", "dcn"])
    """Hand-built models the evolution's first population starts with, as block graphs at the largest
    uniform dim that fits (ours; the paper starts from random candidates only): "dlrm", "dcn" (sized
    by `model.dense_arch`, `model.over_arch`, `model.cross_layers`, `model.cross_rank`); [] = none."""


def check_config(ncfg: NASRecConfig) -> None:
    """Raises ValueError naming the `search.nasrec.*` key of an out-of-range value."""
    positive = lambda v: v >= 1  # noqa: E731
    rules: dict[str, tuple[float, Callable[[float], bool], str]] = {
        "num_blocks": (ncfg.num_blocks, positive, ">= 1"),
        "token_dim": (ncfg.token_dim, positive, ">= 1"),
        "merger_tokens": (ncfg.merger_tokens, positive, ">= 1"),
        "heads": (ncfg.heads, lambda v: v >= 1 and ncfg.token_dim % v == 0, ">= 1 and dividing token_dim"),
        "supernet_epochs": (ncfg.supernet_epochs, positive, ">= 1"),
        "supernet_lr": (ncfg.supernet_lr, lambda v: v > 0, "> 0"),
        "lr_warmup": (ncfg.lr_warmup, lambda v: 0 <= v < 1, "in [0, 1)"),
        "grad_clip": (ncfg.grad_clip, lambda v: v >= 0, ">= 0 (0 = off)"),
        "warmup_steps": (ncfg.warmup_steps, lambda v: v >= 0, ">= 0"),
        "finetune_steps": (ncfg.finetune_steps, lambda v: v >= 0, ">= 0"),
        "finetune_lr": (ncfg.finetune_lr, lambda v: v > 0, "> 0"),
        "finetune_batch": (ncfg.finetune_batch, positive, ">= 1"),
        "finetune_rows": (ncfg.finetune_rows, positive, ">= 1"),
        "score_rows": (ncfg.score_rows, lambda v: v >= 2, ">= 2"),
        "generations": (ncfg.generations, lambda v: v >= 0, ">= 0"),
        "population": (ncfg.population, lambda v: v >= 2, ">= 2"),
        "sample_size": (ncfg.sample_size, lambda v: 1 <= v <= ncfg.population, "in [1, population]"),
        "children": (ncfg.children, positive, ">= 1"),
        "mutations": (ncfg.mutations, positive, ">= 1"),
        "top_k": (ncfg.top_k, positive, ">= 1"),
    }
    for key, (value, ok, allowed) in rules.items():
        if not ok(value):
            raise ValueError(f"search.nasrec.{key}: {value} is out of range; allowed: {allowed}")
    for name in ncfg.seed_graphs:
        if name not in SEED_GRAPHS:
            raise ValueError(f"search.nasrec.seed_graphs: '{name}' is not one of {', '.join(SEED_GRAPHS)}")
    if ncfg.allreduce_precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(
            f"search.nasrec.allreduce_precision: '{ncfg.allreduce_precision}' is not one of fp32, bf16, fp16"
        )
    if ncfg.layer_norm not in NORMS:
        raise ValueError(f"search.nasrec.layer_norm: '{ncfg.layer_norm}' is not one of {', '.join(NORMS)}")
    if ncfg.token_init not in TOKEN_INITS:
        raise ValueError(
            f"search.nasrec.token_init: '{ncfg.token_init}' is not one of {', '.join(TOKEN_INITS)}"
        )
    if ncfg.space not in SPACES:
        raise ValueError(f"search.nasrec.space: '{ncfg.space}' is not one of {', '.join(SPACES)}")
    for key in ("widths", "tokens"):
        values = getattr(ncfg, key)
        if not values or any(v < 1 for v in values):
            raise ValueError(f"search.nasrec.{key}: {values}; expected a non-empty list of positive sizes")


register_section("nasrec", NASRecConfig, check_config)
