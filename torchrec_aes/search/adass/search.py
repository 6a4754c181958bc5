"""AdaS&S end to end: supernet (stage 1) -> REINFORCE (stage 2) -> budget step; see the package doc."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

from torch.utils.tensorboard import SummaryWriter

from torchrec_aes import rundir
from torchrec_aes.architecture import Architecture
from torchrec_aes.io import exists, join, remove_tree
from torchrec_aes.planning.memory import table_storage, warm_cache
from torchrec_aes.search.adass.budget_step import fit_to_budget
from torchrec_aes.search.adass.config import check_config
from torchrec_aes.search.adass.policy import PolicySearch
from torchrec_aes.search.adass.supernet import (
    SearchSpace,
    SupernetTrainer,
    model_factory,
    options,
    search_space,
    supernet_name,
    uses_blocks,
)
from torchrec_aes.search.base import SearchContext, SearchResult, register
from torchrec_aes.search.finalists import Finalist
from torchrec_aes.search.state import load_state_on_main, save_state, state_identity
from torchrec_aes.supernet.scorer import SupernetEvaluator
from torchrec_aes.train.distributed import broadcast_object, init_distributed


def candidate_bytes(ctx: SearchContext, space: SearchSpace | None = None) -> list[list[int]]:
    """[F][K] cost of each choice (a searched table, or a collection's tables; of `space`, default ctx's)
    at each option, in the budget's unit (TorchRec's estimate, cached); a shared row costs one row of dim
    4."""
    b = ctx.budget
    space = space or search_space(ctx)
    if b.count != "params":
        optimizer = "serving" if b.count == "serving" else b.optimizer
        warm_cache([*space.rows, 1], [4, *ctx.candidates], optimizer, ctx.section.precisions)
    return [
        [
            table_storage(1, 4, b.optimizer, b.count, p)
            if d == 0
            else sum(table_storage(r, d, b.optimizer, b.count, p) for r in rows)
            for d, p in options(ctx)
        ]
        for rows in space.unit_rows
    ]


# Knobs that do not shape the supernet (the RL's and the budget step's) or only say how far to go.
_NOT_SUPERNET = ("rl_updates", "rl_samples", "rl_lr", "rl_entropy", "rl_baseline_decay", "penalty")
_NOT_RL = ("rl_updates", "checkpoint_every", "confidence")


def supernet_settings(ctx: SearchContext) -> dict[str, Any]:
    """What the trained supernet (its evaluator) depends on besides data and training config."""
    acfg = dataclasses.asdict(ctx.section)
    skip = (*_NOT_SUPERNET, *_NOT_RL)
    settings = {"candidates": ctx.candidates, "adass": {k: v for k, v in acfg.items() if k not in skip}}
    if uses_blocks(ctx):
        settings["frequency_blocks"] = ctx.cfg.search.frequency_blocks
    return settings


def rl_settings(ctx: SearchContext) -> dict[str, Any]:
    """What the RL state depends on: the supernet's settings and the RL's own (not how many updates)."""
    acfg = dataclasses.asdict(ctx.section)
    return {
        **supernet_settings(ctx),
        "count": ctx.budget.count,
        "adass": {k: v for k, v in acfg.items() if k not in _NOT_RL},
    }


def adass_floor(ctx: SearchContext) -> tuple[Architecture, str]:
    """The smallest architecture AdaS&S can return: every searched table at its cheapest option."""
    check_config(ctx.section)
    space = search_space(ctx)
    cheapest = options(ctx)[0]
    arch = space.architecture([cheapest] * len(space.unit_rows))
    if uses_blocks(ctx):
        return arch, "every frequency block one shared row of dim 4"
    return arch, f"every table at dim {cheapest[0]} in {cheapest[1]}"


@register(
    "adass",
    tasks=("ctr",),
    section="adass",
    user_model=True,
    floor=adass_floor,
    shared_tables=True,
    sequences=True,
)
def adass(ctx: SearchContext) -> SearchResult:
    """AdaS&S: supernet with adaptive sampling -> REINFORCE with resource competition -> budget step."""
    cfg, acfg = ctx.cfg, ctx.section
    check_config(acfg)
    if "fp16" in acfg.precisions and ctx.budget.count == "params":
        raise ValueError("search.adass.precisions: fp16 saves bytes, not parameters; use search.count=bytes")
    env = init_distributed()
    start = time.perf_counter()
    # The supernet does not depend on the budget: with a budget list it is trained once, under the parent
    # run directory (and kept in memory for the other budgets); the RL state is per budget.
    ckpt_dir = rundir.checkpoint_dir(ctx.state_dir, "adass") if ctx.state_dir and cfg.train.checkpoint else ""
    rl_dir = rundir.checkpoint_dir(ctx.run_dir, "adass") if ctx.run_dir and cfg.train.checkpoint else ""
    name = supernet_name(ctx)
    eval_path = join(ckpt_dir, f"{name}_eval.pt") if ckpt_dir else ""
    cached = f"adass_evaluator/{name}"
    writer = SummaryWriter(rundir.tb_dir(ctx.run_dir, "adass")) if ctx.run_dir and env.is_main else None
    space = search_space(ctx)
    build_model = model_factory(cfg, ctx.candidates, ctx.schema.num_dense, ctx.task, space.groups)
    opts = options(ctx)
    # "64" for an fp32 option, "64/fp16" for an fp16 one, "shared" for a block's shared row (names in logs
    # and the landscape).
    labels = ["shared" if d == 0 else f"{d}" if p == "fp32" else f"{d}/{p}" for d, p in opts]
    log: dict[str, Any] = {}
    # Rank 0 decides, so every rank takes the same branch (the run directory may be rank 0's only).
    if not cfg.train.resume and env.is_main and cached not in ctx.cache:
        # train.resume=false: start fresh, replacing the saved phases (the supernet's, once per run).
        for stale in (eval_path, join(rl_dir, "rl_state.pt") if rl_dir else ""):
            if stale and exists(stale):
                remove_tree(stale)
    elif not cfg.train.resume and env.is_main and rl_dir and exists(join(rl_dir, "rl_state.pt")):
        remove_tree(join(rl_dir, "rl_state.pt"))
    supernet_id = state_identity(cfg, ctx.task, supernet_settings(ctx))
    saved, resume = (None, False)
    if cached not in ctx.cache and eval_path:
        saved, resume = load_state_on_main(eval_path, supernet_id)
    if cached in ctx.cache:
        evaluator = ctx.cache[cached]
        log["supernet"] = {"shared": True}
    elif resume:
        configs = space.arch.to_ebc_configs()  # the pooled tables (collections are the evaluator's own)
        evaluator = SupernetEvaluator.from_state(saved, build_model, configs) if saved is not None else None
        log["supernet"] = {"resumed": True}
    else:
        supernet = SupernetTrainer(ctx, writer)
        log["supernet"] = supernet.train()
        evaluator = supernet.evaluator()
        supernet.close()
        if evaluator is not None and eval_path:
            save_state(eval_path, evaluator.state_dict(), supernet_id)
            # A resume starts from the evaluator from now on; the supernet's DCP checkpoint (every table
            # at d_max plus optimizer state: the largest file of the run) is no longer needed.
            remove_tree(join(ckpt_dir, name))
    ctx.cache[cached] = evaluator
    result: tuple[list[int], list[int], dict[str, Any], dict[str, Any]] | None = None
    if env.is_main:
        assert evaluator is not None
        t0 = time.perf_counter()
        costs = candidate_bytes(ctx, space)
        search = PolicySearch(
            evaluator.auc,
            costs,
            ctx.budget.bytes,
            acfg,
            cfg.train.seed,
            writer,
            join(rl_dir, "rl_state.pt") if rl_dir else "",
            state_identity(cfg, ctx.task, rl_settings(ctx), ctx.budget.bytes),
            cfg.train.progress,
        )
        argmax = search.run()
        # Select on the even rows, confirm on the odd ones, every decision against its standard error
        # (fit_to_budget's doc); the budget-filling variant is the second finalist.
        # Frequency blocks make hundreds of (block, option) moves: their budget step ranks them lazily.
        lazy = space.groups is not None
        final, moves = fit_to_budget(argmax, costs, ctx.budget.bytes, evaluator, acfg.confidence, lazy=lazy)
        filled, fill_moves = fit_to_budget(
            final, costs, ctx.budget.bytes, evaluator, acfg.confidence, fill=True, lazy=lazy
        )
        names = evaluator.table_names
        rl_log = {
            "seconds": time.perf_counter() - t0,
            "updates": search.update,
            "final_entropy": search.history[-1]["entropy"] if search.history else None,
            "argmax_dims": {n: labels[k] for n, k in zip(names, argmax, strict=True)},
            "argmax_val_auc": evaluator.auc(argmax),
            "argmax_bytes": sum(costs[f][k] for f, k in enumerate(argmax)),
            "final_dims": {n: labels[k] for n, k in zip(names, final, strict=True)},
            "final_val_auc": evaluator.auc(final),
            "final_bytes": sum(costs[f][k] for f, k in enumerate(final)),
            "budget_moves": [_name_move(m, names, labels) for m in moves],
            "fill_dims": {n: labels[k] for n, k in zip(names, filled, strict=True)},
            "fill_val_auc": evaluator.auc(filled),
            "fill_moves": [_name_move(m, names, labels) for m in fill_moves],
            "evaluations": evaluator.evaluations,
        }
        landscape = _landscape(evaluator, costs, argmax, final, labels)
        landscape["named"]["budget-filling"] = [
            sum(costs[f][k] for f, k in enumerate(filled)),
            round(evaluator.auc(filled), 5),
        ]
        result = (final, filled, rl_log, landscape)
        if writer:
            writer.add_scalar("rl/final_val_auc", rl_log["final_val_auc"], search.update)
            writer.flush()
    final, filled, log["rl"], landscape = broadcast_object(result)
    arch, filled_arch = (space.architecture([opts[k] for k in c]) for c in (final, filled))
    for a in (arch, filled_arch):  # fit_to_budget's sums are the same estimates: an internal error
        if not ctx.budget.fits(a):
            raise AssertionError(f"adass: {ctx.budget.used(a)} > budget {ctx.budget.bytes}")
    log["seconds"] = time.perf_counter() - start
    if writer:
        writer.close()
    finalists = [Finalist("adass", arch), Finalist("adass_fill", filled_arch)]
    return SearchResult(arch, log, finalists=finalists, landscape=landscape)


def _landscape(
    evaluator: SupernetEvaluator,
    costs: list[list[int]],
    argmax: list[int],
    final: list[int],
    labels: Sequence[str],
    max_points: int = 4000,
) -> dict[str, Any]:
    """Quality vs bytes of every architecture the search scored, plus the uniform baselines at each
    candidate, the policy's argmax and the final choice (the report's `quality_vs_bytes.png`)."""

    def point(choice: Sequence[int]) -> list[float]:
        return [sum(costs[f][k] for f, k in enumerate(choice)), round(evaluator.auc(choice), 5)]

    num_tables = len(costs)
    named = {f"uniform-{label}": point([k] * num_tables) for k, label in enumerate(labels)}
    named.update({"policy argmax": point(argmax), "final": point(final)})
    scored = [
        [sum(costs[f][k] for f, k in enumerate(key)), round(v[0], 5)]
        for key, v in evaluator.scored()[:max_points]
    ]
    return {
        "x": "embedding bytes (TorchRec estimate)",
        "y": "val AUC with supernet weights (fixed val slice)",
        "points": scored,
        "named": named,
    }


def _name_move(move: str, names: list[str], labels: Sequence[str]) -> str:
    kind, f, _, k, *note = move.split(maxsplit=4)
    return f"{kind} {names[int(f)]} -> {labels[int(k)]}" + (f" {note[0]}" if note else "")
