"""Zero-cost baselines every search must beat, in the precision `search.precision` (fp32 or fp16).

- `uniform`: every table at the largest dim (a multiple of 4, up to the largest candidate) that fits.
- `power_rule`: Ginart et al. 2019, "Mixed Dimension Embeddings": d_f proportional to n_f^-alpha, scaled to
  the budget by bisection on the scale, rounded to multiples of 4 and clamped to the candidate range.
"""

from __future__ import annotations

from torchrec_aes.architecture import Architecture
from torchrec_aes.planning.memory import Budget
from torchrec_aes.search.base import SearchContext, SearchResult, register


def largest_uniform(ctx: SearchContext, data_type: str | None = None) -> Architecture:
    """The same-memory uniform architecture: the largest uniform multiple of 4 (up to the largest
    candidate) that fits, every table in `data_type` (default `search.precision`)."""
    data_type = data_type or ctx.cfg.search.precision
    best = None
    for dim in range(4, max(ctx.candidates) + 1, 4):
        arch = Architecture.uniform(ctx.schema, dim, data_type)
        if not ctx.budget.fits(arch):
            break
        best = arch
    if best is None:
        raise ValueError(f"no uniform architecture fits the budget {ctx.budget} (dim 4 is too large)")
    return best


@register("uniform", tasks=("ctr", "cf"), user_model=True)
def uniform(ctx: SearchContext) -> SearchResult:
    arch = largest_uniform(ctx)
    return SearchResult(arch, {"dim": arch.dims[0], "data_type": arch.tables[0].data_type})


def power_rule_dims(num_embeddings: list[int], alpha: float, scale: float, low: int, high: int) -> list[int]:
    """d_f = scale * n_f^-alpha, rounded to a multiple of 4 in [low, high]."""
    dims = []
    for n in num_embeddings:
        d = int(round(scale * n ** (-alpha) / 4.0)) * 4
        dims.append(min(max(d, low), high))
    return dims


def fit_power_rule(
    schema_rows: list[int],
    budget: Budget,
    arch0: Architecture,
    alpha: float,
    low: int,
    high: int,
    iters: int = 60,
) -> Architecture:
    """Bisection on the scale: the largest scale whose rounded dims fit the budget."""
    lo, hi = 0.0, float(high) * max(schema_rows) ** alpha * 4
    best = arch0.with_dims(power_rule_dims(schema_rows, alpha, lo, low, high))
    if not budget.fits(best):
        raise ValueError(f"the power rule cannot fit budget {budget}: every table at dim {low} is over it")
    for _ in range(iters):
        mid = (lo + hi) / 2
        arch = arch0.with_dims(power_rule_dims(schema_rows, alpha, mid, low, high))
        if budget.fits(arch):
            lo, best = mid, arch
        else:
            hi = mid
    return best


@register("power_rule", tasks=("ctr", "cf"), user_model=True)
def power_rule(ctx: SearchContext) -> SearchResult:
    rows = [f.num_embeddings for f in ctx.schema.sparse]
    arch0 = Architecture.uniform(ctx.schema, min(ctx.candidates), ctx.cfg.search.precision)
    alpha = ctx.cfg.search.power_alpha
    arch = fit_power_rule(rows, ctx.budget, arch0, alpha, min(ctx.candidates), max(ctx.candidates))
    return SearchResult(arch, {"alpha": alpha, "data_type": ctx.cfg.search.precision})
