"""Zero-cost baselines every search must beat, in the precision `search.precision` (fp32 or fp16).

- `uniform`: every table at the largest dim (a multiple of 4, up to the largest candidate) that fits.
- `power_rule`: Ginart et al. 2019, "Mixed Dimension Embeddings": d_f proportional to n_f^-alpha, scaled to
  the budget by bisection on the scale, rounded to multiples of 4 and clamped to the candidate range.
- `mde` (CTR): the same rule over frequency blocks within a table (MDE's blocked form; architecture kind
  `frequency`): each feature's ids ranked by training frequency are cut at `search.frequency_blocks`, and
  block k gets d_k proportional to p_k^alpha, p_k the mean training frequency of its ids (one block of n
  equally frequent ids: p = 1/n, the power rule). A block whose dim rounds to 0 shares one learned row.
- `hashed` (CTR): every table at the largest candidate dim with its rows cut to fit (the hashing trick,
  the most frequent ids first: rank mod rows).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from torchrec_aes.architecture import Architecture
from torchrec_aes.data.schema import Schema
from torchrec_aes.models.frequency import Bucket, block_ends, feature_counts, frequency_architecture
from torchrec_aes.planning.memory import Budget, warm_cache
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


@register("uniform", tasks=("ctr", "cf"), user_model=True, shared_tables=True, sequences=True)
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
    """Bisection on the scale: the largest scale whose rounded dims fit the budget (each collection of a
    user's `EmbeddingCollection` tied to one dim, `Architecture.tied`)."""
    lo, hi = 0.0, float(high) * max(schema_rows) ** alpha * 4
    best = arch0.with_dims(power_rule_dims(schema_rows, alpha, lo, low, high)).tied()
    if not budget.fits(best):
        raise ValueError(f"the power rule cannot fit budget {budget}: every table at dim {low} is over it")
    for _ in range(iters):
        mid = (lo + hi) / 2
        arch = arch0.with_dims(power_rule_dims(schema_rows, alpha, mid, low, high)).tied()
        if budget.fits(arch):
            lo, best = mid, arch
        else:
            hi = mid
    return best


@register("power_rule", tasks=("ctr", "cf"), user_model=True, shared_tables=True, sequences=True)
def power_rule(ctx: SearchContext) -> SearchResult:
    rows = ctx.schema.table_rows
    arch0 = Architecture.uniform(ctx.schema, min(ctx.candidates), ctx.cfg.search.precision)
    alpha = ctx.cfg.search.power_alpha
    arch = fit_power_rule(rows, ctx.budget, arch0, alpha, min(ctx.candidates), max(ctx.candidates))
    return SearchResult(arch, {"alpha": alpha, "data_type": ctx.cfg.search.precision})


# ---------------------------------------------------------------------------------------------------------
# Rows as a lever: frequency blocks (MDE) and hashing
# ---------------------------------------------------------------------------------------------------------


def largest_fitting(
    make: Callable[[float], Architecture], budget: Budget, high: float, iters: int = 60, integer: bool = False
) -> Architecture | None:
    """Bisection on a scale in [0, high] (or on an integer in [1, high]): the architecture of the largest
    scale that fits `budget`, or None if even the smallest does not. `make` must grow with the scale."""
    lo = 1.0 if integer else 0.0
    best = make(lo)
    if not budget.fits(best):
        return None
    hi = float(high)
    if budget.fits(top := make(hi)):
        return top
    for _ in range(iters):
        if integer and hi - lo <= 1:
            break
        mid = (lo + hi) // 2 if integer else (lo + hi) / 2
        arch = make(mid)
        if budget.fits(arch):
            lo, best = mid, arch
        else:
            hi = mid
    return best


def mde_buckets(counts: torch.Tensor, ends: list[int], alpha: float, scale: float, high: int) -> list[Bucket]:
    """MDE's blocks of one feature: d_k = scale * p_k^alpha rounded to a multiple of 4 (at most `high`),
    p_k the mean training frequency of the block's ids; a block whose dim rounds to 0 gets one shared row
    (of dim 4)."""
    ordered = torch.sort(counts, descending=True).values.double()
    total = max(float(ordered.sum()), 1.0)
    out = []
    for start, end in zip([0, *ends[:-1]], ends, strict=True):
        p = float(ordered[start:end].sum()) / (total * (end - start))
        dim = min(int(round(scale * p**alpha / 4.0)) * 4, high)
        out.append((end, end - start, dim) if dim >= 4 else (end, 1, 4))
    return out


def fit_mde(ctx: SearchContext, data_type: str | None = None) -> Architecture | None:
    """The `mde` architecture at ctx's budget (None if even every block sharing one row is over it)."""
    data_type = data_type or ctx.cfg.search.precision
    counts = feature_counts(ctx.task)
    high = max(ctx.candidates)
    alpha = ctx.cfg.search.power_alpha
    ends = {f.name: block_ends(f.num_embeddings, ctx.cfg.search.frequency_blocks) for f in ctx.schema.sparse}
    sizes = {e - s for es in ends.values() for s, e in zip([0, *es[:-1]], es, strict=True)} | {1}
    warm_cache(sizes, range(4, high + 1, 4), ctx.budget.optimizer, [data_type])
    rarest = min(
        (float(c[c > 0].min()) / max(float(c.sum()), 1.0) for c in counts.values() if bool((c > 0).any())),
        default=1.0,
    )

    def make(scale: float) -> Architecture:
        buckets = {
            f.name: mde_buckets(counts[f.name], ends[f.name], alpha, scale, high) for f in ctx.schema.sparse
        }
        return frequency_architecture(ctx.schema, buckets, data_type, method="mde")

    return largest_fitting(make, ctx.budget, high * 4 / rarest**alpha)


def hashed_architecture(schema: Schema, rows: int, dim: int, data_type: str = "fp32") -> Architecture:
    """Every feature one table at `dim` with at most `rows` rows (ids beyond share rows: rank mod rows)."""
    buckets = {f.name: [(f.num_embeddings, min(f.num_embeddings, rows), dim)] for f in schema.sparse}
    return frequency_architecture(schema, buckets, data_type, method="hashed")


def fit_hashed(ctx: SearchContext, data_type: str | None = None) -> Architecture | None:
    """The `hashed` architecture at ctx's budget: the most rows per table that fit at the largest dim."""
    data_type = data_type or ctx.cfg.search.precision
    dim = max(ctx.candidates)
    most = max(f.num_embeddings for f in ctx.schema.sparse)
    return largest_fitting(
        lambda r: hashed_architecture(ctx.schema, int(r), dim, data_type), ctx.budget, most, integer=True
    )


def frequency_floor(ctx: SearchContext) -> tuple[Architecture, str]:
    """The smallest frequency architecture: every feature's ids share one row of dim 4."""
    precision = ctx.cfg.search.precision
    return hashed_architecture(ctx.schema, 1, 4, precision), f"every feature one row of dim 4 in {precision}"


def _fitted(arch: Architecture | None, ctx: SearchContext) -> Architecture:
    if arch is None:
        ctx.budget.check_floor(*frequency_floor(ctx))
        raise AssertionError("the frequency floor fits, so a fitted architecture exists")
    return arch


@register("mde", tasks=("ctr",), floor=frequency_floor)
def mde(ctx: SearchContext) -> SearchResult:
    arch = _fitted(fit_mde(ctx), ctx)
    return SearchResult(
        arch, {"alpha": ctx.cfg.search.power_alpha, "blocks": ctx.cfg.search.frequency_blocks}
    )


@register("hashed", tasks=("ctr",), floor=frequency_floor)
def hashed(ctx: SearchContext) -> SearchResult:
    arch = _fitted(fit_hashed(ctx), ctx)
    return SearchResult(arch, {"dim": max(ctx.candidates), "rows": [t.num_embeddings for t in arch.tables]})
