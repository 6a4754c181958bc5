"""The final pick of every search, in the shared search layer: a search's best architectures *and* the
zero-cost baselines at the same budget (same-memory uniform, power_rule) are trained from scratch with the
one `Trainer`, and the best on validation is kept. A search result therefore cannot lose to the baselines
on validation; on test it still can, and the report says so plainly.

Schedule (`search.halving`, on by default when checkpoints are on): successive halving over epochs with
a doubling budget. With n finalists there are R = ceil(log2 n) rounds; in round r = 1..R every finalist
still in the race trains up to ceil(E * 2^(r-1-R)) epochs of its `train.epochs` = E (resuming from its
checkpoint, exactly), then the better half by validation goes on; after the last round the best by
validation trains to the end of its normal schedule (early stopping included) and is the pick. E.g.
E = 10, n = 5: 2, 3 and 5 epochs, then 10 -- about 2.2 full trainings instead of 5. Ours: the first
version halved after every single epoch, and on Frappe (where models need ~10 epochs) the rank after one
epoch eliminated the finalist that was best when trained fully. Without checkpoints every finalist
trains fully.

Test metrics are computed for every finalist at the point it stopped (for the report); the choice uses
validation only.

Example::

    chosen, table = pick_finalist(ctx, [Finalist("adass", arch)] + baseline_finalists(ctx))
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from typing import Any

from torchrec_aes.architecture import Architecture
from torchrec_aes.search.base import SearchContext
from torchrec_aes.search.baselines import fit_power_rule, largest_uniform
from torchrec_aes.train.hooks import TrainHooks
from torchrec_aes.train.trainer import Trainer

logger = logging.getLogger(__name__)


@dataclass
class Finalist:
    """One architecture of the final pick.

    Args:
        label: its name in reports ("adass", "uniform", "power_rule", ...).
        arch: the architecture as deployed (what the budget counts).
        train_arch: its training form, if different (e.g. BET's d_max tables under row masks).
        hooks: trainer hooks of the training form (e.g. `TableHooks(row_dims=...)`).
        save: writes its side files into a run directory and returns the `arch.extra` entries naming them
            (row-wise architectures), or None.
    """

    label: str
    arch: Architecture
    train_arch: Architecture | None = None
    hooks: TrainHooks | None = None
    save: Any = None


BASELINES = ("uniform", "power_rule", "uniform_fp16")


def baseline_finalists(ctx: SearchContext) -> list[Finalist]:
    """Same-memory uniform (the largest uniform multiple of 4 that fits), the power rule, and same-memory
    uniform with fp16 tables (what a TorchRec user gets for free by halving precision), at ctx's budget;
    a baseline that cannot fit the budget is left out."""
    out = []
    try:
        out.append(Finalist("uniform", largest_uniform(ctx)))
    except ValueError:
        pass
    rows = [f.num_embeddings for f in ctx.schema.sparse]
    low, high = min(ctx.candidates), max(ctx.candidates)
    try:
        arch0 = Architecture.uniform(ctx.schema, low, ctx.cfg.search.precision)
        out.append(
            Finalist(
                "power_rule", fit_power_rule(rows, ctx.budget, arch0, ctx.cfg.search.power_alpha, low, high)
            )
        )
    except ValueError:
        pass
    if ctx.cfg.search.precision != "fp16":
        try:
            out.append(Finalist("uniform_fp16", largest_uniform(ctx, "fp16")))
        except ValueError:
            pass
    return out


def _dedupe(finalists: list[Finalist]) -> list[Finalist]:
    """Drops later finalists whose architecture (kind, tables and extras) equals an earlier one's."""
    seen: set[tuple] = set()
    out = []
    for f in finalists:
        key = (
            (
                f.arch.kind,
                tuple((t.name, t.embedding_dim, t.data_type) for t in f.arch.tables),
                json.dumps(f.arch.extra, sort_keys=True),
            )
            if f.train_arch is None
            else (id(f),)
        )
        if key not in seen:
            seen.add(key)
            out.append(f)
    return out


def halving_epochs(epochs: int, rounds: int) -> list[int]:
    """Epochs reached in each round of successive halving (doubling, at least 1, increasing, below
    `epochs`): e.g. (10, 3) -> [2, 3, 5]; (3, 3) -> [1, 2]."""
    out: list[int] = []
    for r in range(1, rounds + 1):
        e = max(1, math.ceil(epochs * 2 ** (r - 1 - rounds)))
        if e < epochs and (not out or e > out[-1]):
            out.append(e)
    return out or [1]


def pick_finalist(
    ctx: SearchContext, finalists: list[Finalist]
) -> tuple[Finalist, dict[str, Any], list[dict[str, Any]]]:
    """Trains the finalists from scratch and keeps the best on validation.

    Args:
        ctx: the search context (task, budget, config, run directory).
        finalists: the method's best architectures first, then the baselines (duplicates are dropped).

    Returns:
        (the chosen finalist, its training result, one row per finalist for metrics and the report:
        label, bytes, val and test metrics, epochs trained, chosen).

    Raises:
        RuntimeError: a finalist is over the budget (an internal error of the method).
    """
    cfg, task = ctx.cfg, ctx.task
    finalists = _dedupe(finalists)
    for f in finalists:
        if not ctx.budget.fits(f.arch):
            raise RuntimeError(
                f"finalist '{f.label}' costs {ctx.budget.used(f.arch)} > budget {ctx.budget.bytes}"
            )
    key = task.stop_metric
    results: dict[int, dict[str, Any]] = {}

    def train(i: int, epochs: int | None) -> None:
        f = finalists[i]
        trainer = Trainer(
            cfg, task, f.train_arch or f.arch, ctx.run_dir, f"finalists/{f.label}", hooks=f.hooks
        )
        results[i] = trainer.fit(epochs=epochs)

    alive = list(range(len(finalists)))
    halving = cfg.search.halving and bool(ctx.run_dir) and cfg.train.checkpoint and len(alive) > 1
    if halving:
        rounds = math.ceil(math.log2(len(alive)))
        for epochs in halving_epochs(cfg.train.epochs, rounds):
            for i in alive:
                train(i, epochs)
            alive.sort(key=lambda i: -results[i]["val"].get(key, -math.inf))
            alive = alive[: max(1, math.ceil(len(alive) / 2))]
            logger.info("finalists after %d epochs: %s", epochs, ", ".join(finalists[i].label for i in alive))
            if len(alive) == 1:
                break
        best = alive[0]
        train(best, None)  # the survivor finishes its normal schedule
    else:
        for i in alive:
            train(i, None)
        best = max(alive, key=lambda i: results[i]["val"].get(key, -math.inf))
    rows = [
        {
            "label": f.label,
            "bytes": ctx.budget.used(f.arch),
            "val": results[i]["val"],
            "test": results[i].get("test", {}),
            "epochs": results[i]["epochs_run"],
            "chosen": i == best,
            "baseline": f.label in BASELINES,
        }
        for i, f in enumerate(finalists)
    ]
    return finalists[best], results[best], rows
