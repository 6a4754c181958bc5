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
from torchrec_aes.data.interactions import InteractionData, load_interactions
from torchrec_aes.data.schema import Schema
from torchrec_aes.embedding.rowwise import BucketLayout, masked_form
from torchrec_aes.io import join, makedirs, write_text_atomic
from torchrec_aes.planning.memory import Budget, arch_bytes, table_bytes
from torchrec_aes.planning.plan import plan_architecture, save_plan
from torchrec_aes.train.cf_trainer import train_cf
from torchrec_aes.train.distributed import DistEnv, init_distributed

logger = logging.getLogger(__name__)

TRAINER_EBC_PATH = "model.sparse_arch"
"""Where the trainer's DMP-wrapped module (`CTRTask`) holds the EBC; plans in run directories use it."""
CF_EBC_PATH = "ebc"
"""Where the CF models (MF, LightGCN) hold their EBC."""


def data_cache_dir(cfg: Config) -> str:
    """Where generated data is cached: `data.cache_dir`, else `~/.cache/torchrec_aes`."""
    return cfg.data.cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "torchrec_aes")


def is_cf(cfg: Config) -> bool:
    """Collaborative-filtering runs (interaction data, MF/LightGCN) take the CF trainer."""
    return cfg.data.type == "interactions"


def load_splits(cfg: Config) -> tuple[Splits | InteractionData, list[int] | None]:
    """The data of `cfg.data` (CTR splits or CF interactions), plus the planted ranks for synthetic data."""
    if is_cf(cfg):
        if cfg.model.type not in ("mf", "lightgcn"):
            raise ValueError(f"model.type: interaction data needs mf or lightgcn, got '{cfg.model.type}'")
        return load_interactions(cfg.data), None
    if cfg.model.type not in ("dlrm", "dcn"):
        raise ValueError(f"model.type: '{cfg.model.type}' needs interaction data (data.type=interactions)")
    if cfg.data.type == "synthetic":
        from torchrec_aes.data.synthetic import load_synthetic

        return load_synthetic(cfg.data, data_cache_dir(cfg))
    return load_data(cfg.data), None


def resolve_arch(cfg: Config, schema: Schema) -> tuple[Architecture, Architecture, dict | None]:
    """`cfg.arch` (an architecture file) checked against the data, or uniform `model.embedding_dim`.

    Returns (the architecture as deployed, the one to train, per-row sizes or None). They differ only for
    a BET (row-wise) architecture: deployed as size buckets, trained in its masked form (one d_max table
    per feature under per-row prefix masks).
    """
    if not cfg.arch:
        arch = Architecture.uniform(schema, cfg.model.embedding_dim)
        return arch, arch, None
    path = cfg.arch
    if os.path.isdir(path):
        path = join(path, "architecture.yaml")
    arch = Architecture.load(path)
    if "row_dims" in arch.extra:
        full, row_dims = masked_form(arch, os.path.dirname(path), schema)
        return arch, full, row_dims
    arch.check_schema(schema, source=path)
    return arch, arch, None


def _num_examples(data: Splits | InteractionData) -> dict[str, int]:
    if isinstance(data, InteractionData):
        return {"train": data.train.nnz, "val": data.val.nnz, "test": data.test.nnz}
    return {"train": len(data.train), "val": len(data.val), "test": len(data.test)}


def _fit(
    cfg: Config, data: Splits | InteractionData, arch: Architecture, tag: str, row_dims: dict | None = None
) -> dict[str, Any]:
    """One training of `arch`: the CTR trainer or the CF (BPR) trainer."""
    if isinstance(data, InteractionData):
        return train_cf(
            cfg, arch, data, cfg.run_dir, tag=tag, row_dims=row_dims, checkpoint=cfg.train.checkpoint
        )
    from torchrec_aes.train.trainer import Trainer

    return Trainer(cfg, data, arch, cfg.run_dir, tag=tag).fit()


def write_plan(cfg: Config, env: DistEnv, arch: Architecture, run_dir: str) -> dict[str, Any]:
    """Plans `arch` for the topology of `cfg.plan` (default: this job's world size) into `plan.json`."""
    world_size = cfg.plan.world_size or env.world_size
    module_path = CF_EBC_PATH if is_cf(cfg) else TRAINER_EBC_PATH
    plan = plan_architecture(
        arch,
        world_size,
        cfg.plan.device,
        cfg.plan.hbm_gb,
        cfg.plan.ddr_gb,
        cfg.train.batch_size,
        cfg.train.embedding_optimizer,
        module_path=module_path,
    )
    topology = {
        "world_size": world_size,
        "device": cfg.plan.device,
        "hbm_gb": cfg.plan.hbm_gb,
        "ddr_gb": cfg.plan.ddr_gb,
        "batch_size": cfg.train.batch_size,
        "module_path": module_path,
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
    landscape: dict[str, Any] | None = None,
) -> None:
    """Writes config, architecture, plan, metrics, the search's `landscape.json` (if any) and the report
    (rank 0; the plan is computed on rank 0)."""
    if not env.is_main:
        return
    run_dir = cfg.run_dir
    makedirs(run_dir)
    save_config(cfg, join(run_dir, "config.yaml"))
    arch.save(join(run_dir, "architecture.yaml"))
    metrics["plan_topology"] = write_plan(cfg, env, arch, run_dir)
    write_text_atomic(join(run_dir, "metrics.json"), json.dumps(metrics, indent=1, sort_keys=True))
    if landscape:
        write_text_atomic(join(run_dir, "landscape.json"), json.dumps(landscape))
    from torchrec_aes.report import write_report

    write_report(run_dir, arch, metrics, budget, planted, landscape)


def run_train(cfg: Config) -> dict[str, Any]:
    """Trains `cfg.arch` (or uniform dims) and writes the run directory. Returns metrics.json's content."""
    start = time.perf_counter()
    env = init_distributed()
    data, planted = load_splits(cfg)
    arch, train_arch, row_dims = resolve_arch(cfg, data.schema)
    result = _fit(cfg, data, train_arch, "train", row_dims)
    if row_dims is not None and env.is_main:
        # A row-wise architecture is only whole with its size and remap files: carry them along.
        source = cfg.arch if os.path.isdir(cfg.arch) else os.path.dirname(cfg.arch)
        BucketLayout.load(arch, source).save(cfg.run_dir)
    arch.embedding_bytes = arch_bytes(arch, cfg.train.embedding_optimizer)
    metrics = {
        **result,
        "embedding_bytes": arch.embedding_bytes,
        "table_bytes": table_bytes(arch, cfg.train.embedding_optimizer),
        "num_examples": _num_examples(data),
        "world_size": env.world_size,
        "wall_seconds": time.perf_counter() - start,
    }
    finish_run(cfg, env, arch, metrics, planted=planted)
    return metrics


def run_search(cfg: Config) -> dict[str, Any]:
    """Search -> budget check -> retrain from scratch -> test metrics -> plan -> report."""
    from torchrec_aes.search.base import SearchContext, get_method

    start = time.perf_counter()
    method = get_method(cfg.search.method)
    env = init_distributed()
    data, planted = load_splits(cfg)
    schema = data.schema
    budget = Budget.parse(cfg.search.budget, schema, cfg.train.embedding_optimizer, cfg.search.count)
    budget.check_feasible(schema, cfg.search.candidates)
    if isinstance(data, InteractionData):
        ctx = SearchContext(cfg, None, budget, cfg.run_dir, interactions=data)
    else:
        ctx = SearchContext(cfg, data, budget, cfg.run_dir, planted)
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
    arch.schema_hash = schema.hash()
    # Methods that retrain their own finalists (BET) report the chosen one's metrics here.
    final = result.log.pop("final", None)
    # Methods that score many architectures (AdaS&S) return them for the report's quality-vs-bytes plot.
    landscape = result.log.pop("landscape", None)
    metrics: dict[str, Any] = {
        "method": cfg.search.method,
        "budget_bytes": budget.bytes,
        "budget_count": budget.count,
        "budget_used": used,
        "embedding_bytes": arch.embedding_bytes,
        "table_bytes": table_bytes(arch, cfg.train.embedding_optimizer),
        "dims": {t.name: t.embedding_dim for t in arch.tables},
        "candidates": sorted(cfg.search.candidates),
        "search_seconds": search_seconds,
        "search_log": result.log,
        "num_examples": _num_examples(data),
        "world_size": env.world_size,
    }
    if planted is not None:
        metrics["planted_ranks"] = {t.name: r for t, r in zip(arch.tables, planted, strict=True)}
    if final is not None:
        metrics.update(final)
    elif cfg.search.retrain:
        t0 = time.perf_counter()
        metrics.update(_fit(cfg, data, arch, "final"))
        metrics["retrain_seconds"] = time.perf_counter() - t0
    metrics["wall_seconds"] = time.perf_counter() - start
    finish_run(cfg, env, arch, metrics, budget, planted, landscape)
    return metrics
