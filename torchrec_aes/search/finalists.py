"""The final pick of every search, in the shared search layer: a search's best architectures *and* the
zero-cost baselines at the same budget (same-memory uniform, power_rule, same-memory uniform in fp16) are
trained from scratch with the one `Trainer`, and the best on validation is kept. A search result therefore
cannot lose to the baselines on validation; on test it still can, and the report says so plainly.

Schedule (`search.halving`, on by default when checkpoints are on): successive halving over epochs with
a doubling budget. With n finalists in a group there are R = ceil(log2 n) rounds; in round r = 1..R every
finalist still in the race trains up to ceil(E * 2^(r-1-R)) epochs of its `train.epochs` = E (resuming
from its checkpoint, exactly), then the better half by validation goes on; the survivor trains to the end
of its normal schedule (early stopping included). E.g. E = 10, n = 5: 2, 3 and 5 epochs, then 10 -- about
2.2 full trainings instead of 5. Without checkpoints every finalist trains fully.

Groups (`search.pick`): `staged` (default) trains every one of the method's finalists fully and halves
only the zero-cost baselines among themselves (architectures of one kind, which learn alike; the survivor
finishes), then keeps the best on validation of the fully trained ones. A method's result that learns more
slowly than a uniform table (masked rows, block graphs, grouped models, a budget-filling variant) is
therefore never dropped after a short training. `joint` halves all finalists together: cheaper, but on
Frappe its choice was more than 0.001 AUC below the best fully trained finalist on validation in 4 of 9
sets (`tools/bench_pick.py`; docs/results.md, "Final pick: regret and cost").

Baselines are trained once: a baseline's result depends only on its architecture, the data and the
training config, so it is trained under `search.cache_dir` (default: the run directory, or the parent run
of a budget list) in `baselines/<identity hash>/`, with its checkpoints there, and its finished result
(every epoch's validation metrics, its test metrics) is kept as `result.json`. Another budget of a list,
a rerun, or another method's search pointed at the same cache directory reads it instead of training:
in a halving round a cached baseline is judged by its validation history up to that round's epochs,
exactly what training it again would give. The identity (`baseline_identity`) covers the architecture,
the data (config, schema hash, examples per split), the `train` and `model` sections and the world size.

Every finalist's seconds of training in this run are recorded (0 for a cached one), so a run can say
what its final pick cost beside one training of the architecture it returned.

Test metrics are computed for every finalist at the point it stopped (a cached baseline: fully trained);
the choice uses validation only.

Example::

    chosen, table = pick_finalist(ctx, [Finalist("adass", arch)] + baseline_finalists(ctx))
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torchrec_aes.architecture import Architecture
from torchrec_aes.io import exists, join, read_text, write_text_atomic
from torchrec_aes.search.base import SearchContext
from torchrec_aes.search.baselines import fit_hashed, fit_mde, fit_power_rule, largest_uniform
from torchrec_aes.search.state import state_identity
from torchrec_aes.train.distributed import broadcast_object, init_distributed
from torchrec_aes.train.hooks import TrainHooks
from torchrec_aes.train.trainer import Trainer

logger = logging.getLogger(__name__)

RESULT_FILE = "result.json"
"""A cached baseline's finished training result, in `CACHE/baselines/<identity hash>/`."""


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
        baseline: a zero-cost baseline (not the search's own result): trained once per identity and cached.
    """

    label: str
    arch: Architecture
    train_arch: Architecture | None = None
    hooks: TrainHooks | None = None
    save: Any = None
    baseline: bool = False


def baseline_finalists(ctx: SearchContext) -> list[Finalist]:
    """The zero-cost baselines of `search.baselines` at ctx's budget: same-memory uniform (the largest
    uniform multiple of 4 that fits), the power rule, same-memory uniform with fp16 tables (what a TorchRec
    user gets for free by halving precision) and, on CTR data, MDE's frequency blocks and hashed tables
    (rows as a lever). A baseline that cannot fit the budget is left out."""
    cfg = ctx.cfg.search
    low, high = min(ctx.candidates), max(ctx.candidates)
    rows = ctx.schema.table_rows

    def power_rule() -> Architecture:
        arch0 = Architecture.uniform(ctx.schema, low, cfg.precision)
        return fit_power_rule(rows, ctx.budget, arch0, cfg.power_alpha, low, high)

    makers: dict[str, Callable[[], Architecture | None]] = {
        "uniform": lambda: largest_uniform(ctx),
        "power_rule": power_rule,
    }
    if cfg.precision != "fp16":
        makers["uniform_fp16"] = lambda: largest_uniform(ctx, "fp16")
    if cfg.count == "serving" and cfg.precision != "int8":  # int8 saves serving bytes only
        makers["uniform_int8"] = lambda: largest_uniform(ctx, "int8")
    # Frequency buckets: CTR rows (not a user's own model), one table per feature.
    if ctx.task.remaps_ids and not ctx.schema.has_shared_tables:
        makers["mde"] = lambda: fit_mde(ctx)
        makers["hashed"] = lambda: fit_hashed(ctx)
    out = []
    for name in cfg.baselines:
        if name not in makers:
            continue
        try:
            arch = makers[name]()
        except ValueError:
            continue
        if arch is not None:
            out.append(Finalist(name, arch, baseline=True))
    return out


def _arch_key(arch: Architecture) -> tuple:
    return (
        arch.kind,
        tuple((t.name, t.num_embeddings, t.embedding_dim, t.data_type) for t in arch.tables),
        json.dumps(arch.extra, sort_keys=True),
    )


def _dedupe(finalists: list[Finalist]) -> list[Finalist]:
    """Drops later finalists whose architecture (kind, tables and extras) equals an earlier one's."""
    seen: set[tuple] = set()
    out = []
    for f in finalists:
        key = _arch_key(f.arch) if f.train_arch is None else (id(f),)
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


def baseline_identity(ctx: SearchContext, arch: Architecture) -> dict[str, Any]:
    """What a baseline's trained result depends on, as JSON: the data and training config that every
    saved search state is keyed by (`search.state.state_identity`), its architecture, the task and the
    world size (1 and 2 processes train differently)."""
    settings = {
        "task": ctx.task.name,
        "arch": [arch.kind, [list(t) for t in _arch_key(arch)[1]], arch.extra],
        "world_size": init_distributed().world_size,
    }
    return state_identity(ctx.cfg, ctx.task, settings)


class BaselineCache:
    """Trained baselines by identity under `ROOT/baselines/<sha256 of the identity>[:16]/`: the trainer's
    checkpoints and TensorBoard logs, and `result.json` once the training finished (see the module doc).

    Args:
        root: the cache directory (a run directory, or one shared by several runs).
    """

    def __init__(self, root: str) -> None:
        self.root = root

    def entry(self, identity: dict[str, Any]) -> str:
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
        return join(self.root, "baselines", digest)

    def load(self, identity: dict[str, Any]) -> dict[str, Any] | None:
        """The finished result of this identity, or None (read by rank 0, the same on every rank)."""
        path = join(self.entry(identity), RESULT_FILE)
        found = None
        if init_distributed().is_main and exists(path):
            try:
                saved = json.loads(read_text(path))
            except (OSError, ValueError) as e:
                logger.warning("ignoring the unreadable cached baseline %s (%s)", path, e)
            else:
                if isinstance(saved, dict) and saved.get("identity") == identity:
                    found = saved["result"]
                else:
                    logger.warning("ignoring the cached baseline %s: it belongs to another identity", path)
        return broadcast_object(found)

    def save(self, identity: dict[str, Any], result: dict[str, Any]) -> None:
        if init_distributed().is_main:
            text = json.dumps({"identity": identity, "result": result}, indent=1, default=float)
            write_text_atomic(join(self.entry(identity), RESULT_FILE), text)


def result_at(result: dict[str, Any], epochs: int, key: str) -> dict[str, Any]:
    """A finished training's result as it stood after `epochs` epochs, from its per-epoch history: the
    best validation metrics so far (what `Trainer.fit(epochs=...)` of the same run returns)."""
    history = result["history"][:epochs]
    best = max(history, key=lambda h: h.get(f"val_{key}", -math.inf))
    return {
        "val": {k[4:]: v for k, v in best.items() if k.startswith("val_")},
        "best_epoch": best["epoch"],
        "epochs_run": len(history),
        "history": history,
    }


def pick_finalist(
    ctx: SearchContext, finalists: list[Finalist]
) -> tuple[Finalist, dict[str, Any], list[dict[str, Any]]]:
    """Trains the finalists from scratch and keeps the best on validation.

    Args:
        ctx: the search context (task, budget, config, run directory).
        finalists: the method's best architectures first, then the baselines (duplicates are dropped).

    Returns:
        (the chosen finalist, its training result, one row per finalist for metrics and the report:
        label, bytes, val and test metrics, epochs trained, per-epoch validation history, seconds of
        training in this run, whether it came from the cache, chosen). The chosen result's
        `training_seconds` is one full training of the chosen architecture (from the cache, if cached).

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
    cache_root = cfg.search.cache_dir or ctx.state_dir
    cache = BaselineCache(cache_root) if cache_root and cfg.train.checkpoint else None
    identities = {
        i: baseline_identity(ctx, f.arch)
        for i, f in enumerate(finalists)
        if cache is not None and f.baseline and f.train_arch is None and f.hooks is None
    }
    finished: dict[int, dict[str, Any]] = {}
    for i, identity in identities.items():
        if (saved := cache.load(identity)) is not None:  # type: ignore[union-attr]
            finished[i] = saved
    results: dict[int, dict[str, Any]] = {}
    seconds = {i: 0.0 for i in range(len(finalists))}

    def train(i: int, epochs: int | None) -> None:
        if i in finished:
            results[i] = finished[i] if epochs is None else result_at(finished[i], epochs, key)
            return
        f = finalists[i]
        run_dir = cache.entry(identities[i]) if i in identities else ctx.run_dir  # type: ignore[union-attr]
        t0 = time.perf_counter()
        trainer = Trainer(cfg, task, f.train_arch or f.arch, run_dir, f"finalists/{f.label}", hooks=f.hooks)
        results[i] = trainer.fit(epochs=epochs)
        seconds[i] += time.perf_counter() - t0
        if i in identities:
            if "test_scores" in results[i]:  # written under the cache entry, not the run directory
                results[i]["test_scores"] = join(run_dir, results[i]["test_scores"])
            # Finished: its whole schedule, or early stopping ended it before `epochs`.
            if epochs is None or epochs >= cfg.train.epochs or results[i]["epochs_run"] < epochs:
                results[i]["training_seconds"] = seconds[i]
                cache.save(identities[i], results[i])  # type: ignore[union-attr]
                finished[i] = results[i]

    def score(i: int) -> float:
        return results[i]["val"].get(key, -math.inf)

    def halve(group: list[int], halving: bool) -> int:
        """Successive halving over `group`; the survivor finishes its normal schedule."""
        alive = list(group)
        if halving and len(alive) > 1:
            for epochs in halving_epochs(cfg.train.epochs, math.ceil(math.log2(len(alive)))):
                for i in alive:
                    train(i, epochs)
                alive.sort(key=lambda i: -score(i))
                alive = alive[: max(1, math.ceil(len(alive) / 2))]
                names = ", ".join(finalists[i].label for i in alive)
                logger.info("finalists after %d epochs: %s", epochs, names)
                if len(alive) == 1:
                    break
            train(alive[0], None)
            return alive[0]
        for i in alive:
            train(i, None)
        return max(alive, key=score)

    halving = cfg.search.halving and bool(ctx.run_dir) and cfg.train.checkpoint
    everyone = list(range(len(finalists)))
    if cfg.search.pick == "staged":
        # The method's finalists train fully; the baselines (one kind, cached) are halved among themselves.
        own = [i for i in everyone if not finalists[i].baseline]
        baselines = [i for i in everyone if finalists[i].baseline]
        survivors = ([halve(own, False)] if own else []) + ([halve(baselines, halving)] if baselines else [])
        best = max(survivors, key=score)
    else:
        best = halve(everyone, halving)
    rows = []
    for i, f in enumerate(finalists):
        r = finished.get(i, results[i])  # a cached baseline's row shows its full training
        rows.append(
            {
                "label": f.label,
                "bytes": ctx.budget.used(f.arch),
                "dense_params": r.get("dense_params"),
                "val": r["val"],
                "test": r.get("test", {}),
                "epochs": r["epochs_run"],
                "history": [h.get(f"val_{key}") for h in r.get("history", [])],
                "seconds": seconds[i],
                "cached": i in finished and seconds[i] == 0.0,
                "test_scores": r.get("test_scores"),
                "chosen": i == best,
                "baseline": f.baseline,
            }
        )
    chosen = dict(results[best])
    chosen.setdefault("training_seconds", seconds[best])
    # Rank 0's rows on every rank (only it wrote the test scores, so only its rows name them).
    return finalists[best], chosen, broadcast_object(rows)
