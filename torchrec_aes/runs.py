"""What `torchrec-aes train` and `torchrec-aes search` do, and the run directory they write.

Run directory (DESIGN.md, Artifacts): `config.yaml`, `architecture.yaml`, `metrics.json`, `plan.json`,
`report.md` + PNGs, `tb/`, `checkpoints/`. Every rank computes; rank 0 writes, atomically.

This module is also where the budget is enforced: `run_search` rejects a search result that exceeds its
budget by TorchRec's storage estimate, whatever the method.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

from torchrec_aes.architecture import Architecture
from torchrec_aes.config import Config, save_config
from torchrec_aes.data import load_data
from torchrec_aes.data.dataset import Splits
from torchrec_aes.io import join, makedirs, write_text_atomic
from torchrec_aes.planning.memory import Budget, arch_bytes, table_bytes
from torchrec_aes.planning.plan import plan_architecture, save_plan
from torchrec_aes.train.distributed import DistEnv, init_distributed

logger = logging.getLogger(__name__)

TRAINER_EBC_PATH = "model.sparse_arch"
"""Where the trainer's DMP-wrapped module (`CTRTask`) holds the EBC; plans in run directories use it."""


def data_cache_dir(cfg: Config) -> str:
    """Where generated data is cached: `data.cache_dir`, else `~/.cache/torchrec_aes`."""
    return cfg.data.cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "torchrec_aes")


def load_splits(cfg: Config) -> tuple[Splits, list[int] | None]:
    """The data of `cfg.data`, plus the planted ranks for synthetic data."""
    if cfg.data.type == "synthetic":
        from torchrec_aes.data.synthetic import load_synthetic

        return load_synthetic(cfg.data, data_cache_dir(cfg))
    return load_data(cfg.data), None


def resolve_arch(cfg: Config, splits: Splits) -> Architecture:
    """`cfg.arch` (an architecture file) checked against the data, or uniform `model.embedding_dim`."""
    if cfg.arch:
        path = cfg.arch
        if os.path.isdir(path):
            path = join(path, "architecture.yaml")
        arch = Architecture.load(path)
        arch.check_schema(splits.schema, source=path)
        return arch
    return Architecture.uniform(splits.schema, cfg.model.embedding_dim)


def _num_examples(splits: Splits) -> dict[str, int]:
    return {"train": len(splits.train), "val": len(splits.val), "test": len(splits.test)}


def write_plan(cfg: Config, env: DistEnv, arch: Architecture, run_dir: str) -> dict[str, Any]:
    """Plans `arch` for the topology of `cfg.plan` (default: this job's world size) into `plan.json`."""
    world_size = cfg.plan.world_size or env.world_size
    plan = plan_architecture(
        arch,
        world_size,
        cfg.plan.device,
        cfg.plan.hbm_gb,
        cfg.plan.ddr_gb,
        cfg.train.batch_size,
        cfg.train.embedding_optimizer,
        module_path=TRAINER_EBC_PATH,
    )
    topology = {
        "world_size": world_size,
        "device": cfg.plan.device,
        "hbm_gb": cfg.plan.hbm_gb,
        "ddr_gb": cfg.plan.ddr_gb,
        "batch_size": cfg.train.batch_size,
        "module_path": TRAINER_EBC_PATH,
    }
    save_plan(plan, join(run_dir, "plan.json"), metadata={"topology": topology})
    return topology


def finish_run(
    cfg: Config,
    env: DistEnv,
    arch: Architecture,
    metrics: dict[str, Any],
    budget: Budget | None = None,
    planted: list[int] | None = None,
) -> None:
    """Writes config, architecture, plan, metrics and report (rank 0; the plan is computed on rank 0)."""
    if not env.is_main:
        return
    run_dir = cfg.run_dir
    makedirs(run_dir)
    save_config(cfg, join(run_dir, "config.yaml"))
    arch.save(join(run_dir, "architecture.yaml"))
    metrics["plan_topology"] = write_plan(cfg, env, arch, run_dir)
    write_text_atomic(join(run_dir, "metrics.json"), json.dumps(metrics, indent=1, sort_keys=True))
    from torchrec_aes.report import write_report

    write_report(run_dir, arch, metrics, budget, planted)


def run_train(cfg: Config) -> dict[str, Any]:
    """Trains `cfg.arch` (or uniform dims) and writes the run directory. Returns metrics.json's content."""
    from torchrec_aes.train.trainer import Trainer

    start = time.perf_counter()
    env = init_distributed()
    splits, planted = load_splits(cfg)
    arch = resolve_arch(cfg, splits)
    result = Trainer(cfg, splits, arch, cfg.run_dir, tag="train").fit()
    arch.embedding_bytes = arch_bytes(arch, cfg.train.embedding_optimizer)
    metrics = {
        **result,
        "embedding_bytes": arch.embedding_bytes,
        "table_bytes": table_bytes(arch, cfg.train.embedding_optimizer),
        "num_examples": _num_examples(splits),
        "world_size": env.world_size,
        "wall_seconds": time.perf_counter() - start,
    }
    finish_run(cfg, env, arch, metrics, planted=planted)
    return metrics


def run_search(cfg: Config) -> dict[str, Any]:
    """Search -> budget check -> retrain from scratch -> test metrics -> plan -> report."""
    from torchrec_aes.search.base import SearchContext, get_method
    from torchrec_aes.train.trainer import Trainer

    start = time.perf_counter()
    method = get_method(cfg.search.method)
    env = init_distributed()
    splits, planted = load_splits(cfg)
    budget = Budget.parse(cfg.search.budget, splits.schema, cfg.train.embedding_optimizer, cfg.search.count)
    budget.check_feasible(splits.schema, cfg.search.candidates)
    ctx = SearchContext(cfg, splits, budget, cfg.run_dir, planted)
    t0 = time.perf_counter()
    result = method(ctx)
    search_seconds = time.perf_counter() - t0
    arch = result.arch
    used = budget.used(arch)
    if used > budget.bytes:
        raise RuntimeError(
            f"search method '{cfg.search.method}' returned an architecture of {used} > budget {budget.bytes}"
        )
    arch.method = cfg.search.method
    arch.budget_bytes = budget.bytes
    arch.embedding_bytes = arch_bytes(arch, cfg.train.embedding_optimizer)
    arch.seed = cfg.train.seed
    arch.schema_hash = splits.schema.hash()
    metrics: dict[str, Any] = {
        "method": cfg.search.method,
        "budget_bytes": budget.bytes,
        "budget_count": budget.count,
        "budget_used": used,
        "embedding_bytes": arch.embedding_bytes,
        "table_bytes": table_bytes(arch, cfg.train.embedding_optimizer),
        "dims": {t.name: t.embedding_dim for t in arch.tables},
        "search_seconds": search_seconds,
        "search_log": result.log,
        "num_examples": _num_examples(splits),
        "world_size": env.world_size,
    }
    if planted is not None:
        metrics["planted_ranks"] = {t.name: r for t, r in zip(arch.tables, planted, strict=True)}
    if cfg.search.retrain:
        t0 = time.perf_counter()
        metrics.update(Trainer(cfg, splits, arch, cfg.run_dir, tag="final").fit())
        metrics["retrain_seconds"] = time.perf_counter() - t0
    metrics["wall_seconds"] = time.perf_counter() - start
    finish_run(cfg, env, arch, metrics, budget, planted)
    return metrics
