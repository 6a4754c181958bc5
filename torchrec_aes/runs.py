"""What `torchrec-aes train` and `torchrec-aes search` do. The run directory they write is `rundir.py`'s.

This module is also where the budget is enforced: `run_search` rejects a search result that exceeds its
budget by TorchRec's storage estimate (of everything the architecture's kind needs to serve), whatever
the method. Nothing here depends on the task (CTR or CF) or on an architecture's kind: they dispatch.
"""

from __future__ import annotations

import copy
import os
import time
from typing import Any

from torchrec_aes import rundir
from torchrec_aes.architecture import Architecture, kind_of
from torchrec_aes.config import Config
from torchrec_aes.planning.memory import Budget, arch_bytes, table_bytes
from torchrec_aes.planning.plan_io import plan_for_job
from torchrec_aes.search.base import SearchContext, get_method
from torchrec_aes.search.finalists import baseline_finalists, pick_finalist
from torchrec_aes.tasks import Task, get_task, task_of
from torchrec_aes.train.distributed import DistEnv, init_distributed
from torchrec_aes.train.trainer import Trainer


def resolve_arch(cfg: Config, task: Task) -> tuple[Architecture, Architecture, Any, str]:
    """`cfg.arch` (an architecture file or run directory) checked against the data, or uniform
    `model.embedding_dim`.

    Returns:
        (the architecture as deployed, the one to train, trainer hooks or None, the directory it was
        loaded from or ""). They differ for kinds that train in another form (a BET `rowwise`
        architecture trains as d_max tables under per-row masks).
    """
    if not cfg.arch:
        arch = Architecture.uniform(task.schema, cfg.model.embedding_dim, cfg.model.data_type)
        return arch, arch, None, ""
    path = rundir.architecture_file(cfg.arch)
    arch = Architecture.load(path)
    train_arch, hooks = kind_of(arch).training_form(arch, path, task.schema)
    return arch, train_arch, hooks, os.path.dirname(path)


def _write(
    cfg: Config,
    env: DistEnv,
    task: Task,
    arch: Architecture,
    metrics: dict[str, Any],
    budget: Budget | None = None,
    landscape: dict[str, Any] | None = None,
    report: Any = None,
) -> None:
    if env.is_main:
        rundir.write_run(
            cfg,
            arch,
            metrics,
            world_size=env.world_size,
            module_path=task.ebc_path_for(arch),
            collection_paths=task.collection_paths_for(arch),
            budget=budget,
            planted=task.planted,
            landscape=landscape,
            report=report,
        )


def run_train(cfg: Config) -> dict[str, Any]:
    """Trains `cfg.arch` (or uniform dims) and writes the run directory. Returns metrics.json's content."""
    start = time.perf_counter()
    env = init_distributed()
    task = get_task(cfg)
    arch, train_arch, hooks, source = resolve_arch(cfg, task)
    plan = None
    if cfg.plan.file:
        path = task.ebc_path_for(train_arch)
        plan = plan_for_job(cfg.plan.file, train_arch, path, env.world_size, env.device.type)
    result = Trainer(cfg, task, train_arch, cfg.run_dir, "train", hooks=hooks, plan=plan).fit()
    if source and env.is_main:
        kind_of(arch).carry(arch, source, cfg.run_dir)
    arch.embedding_bytes = arch_bytes(arch, cfg.train.embedding_optimizer)
    metrics = {
        **result,
        "embedding_bytes": arch.embedding_bytes,
        "serving_bytes": arch_bytes(arch, count="serving"),
        "table_bytes": table_bytes(arch, cfg.train.embedding_optimizer),
        "num_examples": task.num_examples(),
        "world_size": env.world_size,
        "wall_seconds": time.perf_counter() - start,
    }
    _write(cfg, env, task, arch, metrics)
    return metrics


def run_search(cfg: Config) -> dict[str, Any]:
    """Search -> final pick among finalists (or retraining) -> budget check -> plan -> report.

    A method that returns finalists has them trained from scratch with the zero-cost baselines at the same
    budget (`search/finalists.py`), keeping the best on validation; otherwise its architecture is retrained.
    Whatever is chosen is checked against the budget here, the one place it is enforced. With a list of
    budgets, one search per budget (`run_budgets`).
    """
    _check_search(cfg, task_of(cfg).name)  # a one-line error before any data is read
    if len(cfg.search.budget) > 1:
        return run_budgets(cfg)
    return _search_one(cfg, get_task(cfg))


def search_task(cfg: Config, task: Task) -> tuple[Architecture, dict[str, Any]]:
    """`run_search` for one budget on a task built by the caller (the Python API's user-supplied model and
    data): the same search, final pick, budget check and run directory.

    Returns:
        (the chosen architecture, metrics.json's content).
    """
    _check_search(cfg, task.name)
    if len(cfg.search.budget) != 1:
        raise ValueError(f"search.budget: expected one budget here, got {len(cfg.search.budget)}")
    return _search(cfg, task)


def _check_search(cfg: Config, task_name: str) -> None:
    get_method(cfg.search.method, task_name)
    if cfg.plan.file:
        raise ValueError(
            "plan.file: a plan drives `train` (a search decides the architecture a plan would be for); "
            "search, then `torchrec-aes plan RUN ...`, then `train ... arch=RUN plan.file=PLAN.json`"
        )
    if not cfg.search.budget:
        raise ValueError("search.budget: give at least one budget")


def run_budgets(cfg: Config) -> dict[str, Any]:
    """One search per budget of `cfg.search.budget`, in sub-runs `RUN/budget_<i>/`, sharing the data and
    what does not depend on the budget (AdaS&S's supernet, under `RUN/checkpoints/`); writes a summary
    `metrics.json`, `frontier.json` and `frontier.png` (test quality vs bytes of each budget's pick, with the
    zero-cost baselines the final pick trained at the same budget) into `RUN/`."""
    start = time.perf_counter()
    env = init_distributed()
    task = get_task(cfg)
    cache: dict[str, Any] = {}
    per_budget = []
    for i, text in enumerate(cfg.search.budget):
        sub = copy.deepcopy(cfg)
        sub.search.budget = [text]
        sub.run_dir = rundir.budget_dir(cfg.run_dir, i)
        t0 = time.perf_counter()
        metrics = _search_one(sub, task, shared_dir=cfg.run_dir, cache=cache)
        per_budget.append(
            {"budget": text, "run_dir": sub.run_dir, "seconds": time.perf_counter() - t0, **metrics}
        )
    summary = {
        "method": cfg.search.method,
        "budgets": [
            {
                k: m.get(k)
                for k in (
                    "budget",
                    "run_dir",
                    "seconds",
                    "budget_bytes",
                    "budget_used",
                    "embedding_bytes",
                    "dims",
                    "val",
                    "test",
                    "winner",
                    "finalists",
                    "search_seconds",
                    "final_seconds",
                    "training_seconds",
                    "cost_ratio",
                    "phase_seconds",
                )
            }
            for m in per_budget
        ],
        "world_size": env.world_size,
        "wall_seconds": time.perf_counter() - start,
    }
    if env.is_main:
        rundir.write_budgets(cfg, summary, task.stop_metric)
    return summary


def phase_seconds(log: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The seconds a search log records per phase: every `<phase>_seconds` number and every nested
    section's `seconds` (e.g. AdaS&S's `rl.seconds`, NASRec's `supernet_seconds`), by phase name."""
    out: dict[str, float] = {}
    for k, v in log.items():
        if isinstance(v, dict):
            out.update(phase_seconds(v, f"{prefix}{k}/"))
        elif isinstance(v, int | float) and not isinstance(v, bool):
            if k == "seconds" and prefix:
                out[prefix.rstrip("/")] = float(v)
            elif k.endswith("_seconds"):
                out[prefix + k[: -len("_seconds")]] = float(v)
    return out


def _search_one(
    cfg: Config, task: Task, shared_dir: str = "", cache: dict[str, Any] | None = None
) -> dict[str, Any]:
    return _search(cfg, task, shared_dir, cache)[1]


def _search(
    cfg: Config, task: Task, shared_dir: str = "", cache: dict[str, Any] | None = None
) -> tuple[Architecture, dict[str, Any]]:
    start = time.perf_counter()
    method = get_method(cfg.search.method, task.name)
    env = init_distributed()
    schema = task.schema
    (text,) = cfg.search.budget
    budget = Budget.parse(text, schema, cfg.train.embedding_optimizer, cfg.search.count)
    section = getattr(cfg.search, method.section) if method.section else None
    ctx = SearchContext(cfg, task, budget, cfg.run_dir, section, shared_dir, {} if cache is None else cache)
    method.check_floor(ctx)
    t0 = time.perf_counter()
    result = method(ctx)
    search_seconds = time.perf_counter() - t0
    final: dict[str, Any] = {}
    arch = result.arch
    if result.finalists:
        pool = list(result.finalists)
        if result.add_baselines and cfg.search.final_baselines:
            pool += baseline_finalists(ctx)
        t0 = time.perf_counter()
        chosen, trained, rows = pick_finalist(ctx, pool)
        arch = chosen.arch
        if chosen.save is not None and env.is_main:
            chosen.save(cfg.run_dir)
        final = {**trained, "finalists": rows, "winner": chosen.label}
        final["final_seconds"] = time.perf_counter() - t0
    used = budget.used(arch)
    if used > budget.bytes:
        raise RuntimeError(
            f"search method '{cfg.search.method}' returned an architecture of {used} > budget {budget.bytes}"
        )
    arch.method = cfg.search.method
    arch.budget_bytes = budget.bytes
    arch.embedding_bytes = arch_bytes(arch, cfg.train.embedding_optimizer)
    arch.seed = cfg.train.seed
    arch.schema_hash = schema.hash()
    metrics: dict[str, Any] = {
        "method": cfg.search.method,
        "budget_bytes": budget.bytes,
        "budget_count": budget.count,
        "budget_used": used,
        "budget_share_used": used / max(budget.bytes, 1),
        "embedding_bytes": arch.embedding_bytes,
        "serving_bytes": arch_bytes(arch, count="serving"),
        "table_bytes": table_bytes(arch, cfg.train.embedding_optimizer),
        "dims": {t.name: t.embedding_dim for t in arch.tables},
        "candidates": sorted(cfg.search.candidates),
        "search_seconds": search_seconds,
        "search_log": result.log,
        "num_examples": task.num_examples(),
        "world_size": env.world_size,
    }
    if task.planted is not None and len(arch.tables) == len(task.planted):
        metrics["planted_ranks"] = {t.name: r for t, r in zip(arch.tables, task.planted, strict=True)}
    if final:
        metrics.update(final)
    elif cfg.search.retrain:
        t0 = time.perf_counter()
        source = rundir.path(cfg.run_dir, rundir.ARCHITECTURE)
        train_arch, hooks = kind_of(arch).training_form(arch, source, schema)
        metrics.update(Trainer(cfg, task, train_arch, cfg.run_dir, "final", hooks=hooks).fit())
        metrics["retrain_seconds"] = time.perf_counter() - t0
    metrics["wall_seconds"] = time.perf_counter() - start
    # Search cost in units of one training of the returned architecture, measured in this run (or, for a
    # cached baseline, when the cache entry was trained).
    metrics["phase_seconds"] = {
        **{f"search/{k}": v for k, v in phase_seconds(result.log).items()},
        "search": search_seconds,
        **({"final_pick": metrics["final_seconds"]} if "final_seconds" in metrics else {}),
        **({"retrain": metrics["retrain_seconds"]} if "retrain_seconds" in metrics else {}),
    }
    one = metrics.get("training_seconds") or metrics.get("retrain_seconds")
    if one:
        metrics["training_seconds"] = one
        metrics["cost_ratio"] = metrics["wall_seconds"] / one
    _write(cfg, env, task, arch, metrics, budget, result.landscape, method.report)
    return arch, metrics
