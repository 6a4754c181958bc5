"""Python API: use a searched architecture and its sharding plan in an existing TorchRec pipeline.

A search (`torchrec-aes search`) writes `architecture.yaml` and `plan.json` into its run directory. These
functions turn them into what a TorchRec training script consumes: resized `EmbeddingBagConfig`s, the
planner's `ParameterConstraints`, and a `ShardingPlan` for `DistributedModelParallel`.

Example::

    import torch
    import torchrec_aes
    from torchrec import EmbeddingBagCollection
    from torchrec.distributed.model_parallel import DistributedModelParallel

    arch = torchrec_aes.load_architecture("runs/quickstart")
    tables = torchrec_aes.resize_configs(my_tables, arch)  # your configs, searched dims; dim 0 drops one
    model = MyModel(EmbeddingBagCollection(tables=tables, device=torch.device("meta")))
    plan = torchrec_aes.load_plan("runs/quickstart", module_path="ebc", arch=arch, configs=my_tables)
    # or plan for another topology: torchrec_aes.plan_for(arch, world_size=8, device="cuda", hbm_gb=80,
    #                                                      module_path="ebc", configs=my_tables)
    model = DistributedModelParallel(model, device=torch.device("cuda"), plan=plan)

Tables are matched by name, or by feature names when the names differ (a searched architecture names its
tables `t_<feature>`). Pass your original configs as `configs=` to `planner_constraints`, `plan_for` and
`load_plan` so that constraints and plans are keyed by your table names.

Or search from Python on your own model and data (`search_embedding_dims`; see its docstring)::

    result = torchrec_aes.search_embedding_dims(my_tables, lambda ebc: MyModel(ebc), train_loader,
                                                val_loader, budget="0.5 x uniform-64")
    model = DistributedModelParallel(MyModel(EmbeddingBagCollection(tables=result.configs, device=meta)),
                                     plan=result.plan, device=device)
"""

from __future__ import annotations

import copy
import dataclasses
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from typing import Any

import torch
from torch import nn
from torchrec.distributed.planner import ParameterConstraints
from torchrec.distributed.planner.constants import BATCH_SIZE
from torchrec.distributed.types import EmbeddingModuleShardingPlan, ShardingPlan
from torchrec.modules.embedding_configs import EmbeddingBagConfig, EmbeddingConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection

from torchrec_aes import rundir
from torchrec_aes.architecture import (  # noqa: F401
    TORCHREC_DATA_TYPES,
    Architecture,
    TableArch,
    kind_of,
    training_type,
)
from torchrec_aes.config import Config, load_config, validate
from torchrec_aes.data.schema import Schema, SparseFeature
from torchrec_aes.models.blocks import BlockNet, BlocksKind
from torchrec_aes.planning import plan as planning
from torchrec_aes.planning import plan_io
from torchrec_aes.planning.memory import Budget, attach_table_optimizer
from torchrec_aes.planning.plan_io import save_plan  # noqa: F401  (re-exported)
from torchrec_aes.runs import search_task
from torchrec_aes.search.base import get_method, method_names
from torchrec_aes.tasks.user import UserHeads, UserTask, flatten_tables, module_path_of
from torchrec_aes.train.distributed import init_distributed

# The public names are listed once, in torchrec_aes/__init__.py (which re-exports them lazily).


def load_architecture(path_or_run_dir: str) -> Architecture:
    """Reads an `architecture.yaml`, given the file or the run directory that holds it.

    Args:
        path_or_run_dir: a `.yaml` file, or a run directory (local path or iopath URI).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not an architecture (names the file and the key).
    """
    return Architecture.load(rundir.architecture_file(path_or_run_dir))


def _describe(config: EmbeddingBagConfig) -> str:
    return f"table '{config.name}' (features {', '.join(config.feature_names)})"


def _match(configs: Sequence[EmbeddingBagConfig], arch: Architecture) -> list[TableArch]:
    """The architecture table of each config: same name, else same feature names; checked for rows."""
    by_name = {t.name: t for t in arch.tables}
    by_features = {frozenset(t.feature_names): t for t in arch.tables}
    known = "; ".join(f"{t.name} ({', '.join(t.feature_names)})" for t in arch.tables)
    matched: dict[str, str] = {}
    tables = []
    for c in configs:
        t = by_name.get(c.name)
        if t is not None and set(t.feature_names) != set(c.feature_names):
            raise ValueError(
                f"{_describe(c)}: the architecture's table '{t.name}' has features "
                f"{', '.join(t.feature_names)}; the same table must look up the same features"
            )
        t = t or by_features.get(frozenset(c.feature_names))
        if t is None:
            raise ValueError(
                f"{_describe(c)} is not in the architecture (matched by table name, then by feature names); "
                f"its tables are: {known}"
            )
        if t.num_embeddings != c.num_embeddings:
            raise ValueError(
                f"{_describe(c)} has {c.num_embeddings} rows but the architecture's table '{t.name}' has "
                f"{t.num_embeddings}; the architecture was searched for tables of other sizes"
            )
        if t.name in matched:
            raise ValueError(
                f"{_describe(c)} and table '{matched[t.name]}' both match the architecture's table '{t.name}'"
            )
        matched[t.name] = c.name
        tables.append(t)
    return tables


def resize_configs(configs: Sequence[EmbeddingBagConfig], arch: Architecture) -> list[EmbeddingBagConfig]:
    """Your tables with the architecture's embedding dims and precisions (`data_type`); everything else
    (names, pooling, init) kept.

    Each config is matched to an architecture table by name, or by feature names when the names differ.
    Architecture tables that match no config are ignored (e.g. the tables of another EBC of your model).

    Args:
        configs: the `EmbeddingBagConfig`s of one `EmbeddingBagCollection`.
        arch: a searched architecture (`load_architecture`).

    Returns:
        The configs in the same order with `embedding_dim` and `data_type` from `arch`; a table whose
        searched dim is 0 is left out (its features are unused: the model must not expect their pooled
        embeddings).

    Raises:
        ValueError: a config that the architecture does not cover, or whose rows differ (names the table).
    """
    return [
        dataclasses.replace(
            c, embedding_dim=t.embedding_dim, data_type=TORCHREC_DATA_TYPES[training_type(t.data_type)]
        )
        for c, t in zip(configs, _match(configs, arch), strict=True)
        if t.embedding_dim > 0
    ]


def _as_named_by(arch: Architecture, configs: Sequence[EmbeddingBagConfig] | None) -> Architecture:
    """`arch` restricted to `configs`' tables and renamed to their names (or `arch` when None)."""
    if configs is None:
        return arch
    tables = [
        dataclasses.replace(t, name=c.name, feature_names=list(c.feature_names))
        for c, t in zip(configs, _match(configs, arch), strict=True)
    ]
    return dataclasses.replace(arch, tables=tables)


def planner_constraints(
    arch: Architecture, configs: Sequence[EmbeddingBagConfig] | None = None
) -> dict[str, ParameterConstraints]:
    """Planner constraints the architecture's tables need, for your own `EmbeddingShardingPlanner`.

    The sharding types TorchRec's fused kernels allow for each table's dim (e.g. FBGEMM fuses only dims
    that are multiples of 4; others are pinned to data parallel); see `planning.plan.constraints_for`.
    Merge them with your own constraints if you have any.

    Args:
        arch: the architecture.
        configs: your original configs; given, the keys are your table names (see `resize_configs`).
    """
    return planning.constraints_for(_as_named_by(arch, configs))


def load_plan(
    path_or_run_dir: str,
    module_path: str | None = None,
    arch: Architecture | None = None,
    configs: Sequence[EmbeddingBagConfig] | None = None,
) -> ShardingPlan:
    """Reads a sharding plan written by `torchrec-aes search|plan` (or `save_plan`).

    Args:
        path_or_run_dir: a `.json` plan file, or a run directory (its `plan.json`).
        module_path: where the `EmbeddingBagCollection` sits in your model (e.g. "sparse_arch.ebc"; ""
            when the EBC is the model). None keeps the file's: a run directory's plan is for our trainer's
            model ("model.sparse_arch").
        arch: the architecture the plan was made for; given, the plan is checked to cover its tables at
            their sizes.
        configs: your original configs (needs `arch`); given, the plan's tables are renamed from the
            architecture's names to yours (see `resize_configs`).

    Raises:
        ValueError: a malformed file, a plan that does not fit `arch`, or `module_path` given for a plan of
            several modules.
    """
    path = path_or_run_dir if path_or_run_dir.endswith(".json") else rundir.path(path_or_run_dir, rundir.PLAN)
    plan = plan_io.load_plan(path)
    if configs is not None and arch is None:
        raise ValueError("load_plan: renaming the plan's tables to your configs' names needs `arch` too")
    if module_path is None and arch is None:
        return plan
    if len(plan.plan) != 1:
        raise ValueError(
            f"{path}: plans {len(plan.plan)} modules ({', '.join(plan.plan)}); load_plan can only move or "
            "check a plan of one module"
        )
    ((old_path, module_plan),) = plan.plan.items()
    if arch is not None:
        plan_io.check_plan_covers(module_plan, arch, path)
        if configs is not None:
            names = {t.name: c.name for c, t in zip(configs, _match(configs, arch), strict=True)}
            module_plan = EmbeddingModuleShardingPlan(
                {names.get(name, name): ps for name, ps in module_plan.items()}  # type: ignore[attr-defined]
            )
    return ShardingPlan({old_path if module_path is None else module_path: module_plan})


def plan_for(
    arch: Architecture,
    world_size: int,
    device: str = "cuda",
    hbm_gb: float = 0.0,
    ddr_gb: float = 0.0,
    batch_size: int = BATCH_SIZE,
    optimizer: str = "rowwise_adagrad",
    module_path: str = "",
    configs: Sequence[EmbeddingBagConfig] | None = None,
    local_world_size: int | None = None,
    collection_paths: dict[str, str] | None = None,
) -> ShardingPlan:
    """A sharding plan of the architecture's tables from TorchRec's planner, on a simulated topology.

    Needs no process group and allocates no weights, so it can run on a laptop for a GPU cluster.

    Args:
        arch: the architecture.
        world_size: ranks (GPUs, or CPU processes).
        device: "cuda" or "cpu".
        hbm_gb: HBM per device in GiB (0 = TorchRec's default).
        ddr_gb: DDR per rank in GiB (0 = TorchRec's default).
        batch_size: per-rank batch size.
        optimizer: the fused table optimizer (its state is placed with the tables): rowwise_adagrad |
            adagrad | sgd.
        module_path: where the `EmbeddingBagCollection` sits in your model ("" = the EBC is the model).
        configs: your original configs; given, the plan covers their tables under your table names.
        local_world_size: ranks per host (default: all on one host).
        collection_paths: where your model keeps the `EmbeddingCollection` of each collection of sequence
            tables ({collection: module path}; default: the collection's name).

    Raises:
        PlanError: nothing fits; says how much the tables need and how much the topology has.
    """
    return planning.plan_architecture(
        _as_named_by(arch, configs), world_size, device, hbm_gb, ddr_gb, batch_size, optimizer,
        module_path=module_path, local_world_size=local_world_size, collection_paths=collection_paths,
    )  # fmt: skip


def block_model(arch: Architecture, ebc: nn.Module, num_dense: int) -> nn.Module:
    """The model of a NASRec (`blocks`) architecture around your EBC: `(dense [B, num_dense], KJT) ->
    logits [B]`, a plain `nn.Module` for DMP (the EBC is sharded by the planner, the blocks are dense).

    Args:
        arch: a `blocks` architecture (`load_architecture(run_dir)`).
        ebc: an `EmbeddingBagCollection` with the architecture's tables (e.g. built from
            `resize_configs(my_tables, arch)`), one feature per table, on meta or a device.
        num_dense: dense features of your batches.

    Raises:
        ValueError: `arch` is not a blocks architecture, or its `extra` is damaged (one line).
    """

    if arch.kind != "blocks":
        raise ValueError(
            f"block_model: the architecture is of kind '{arch.kind}'; expected 'blocks' (NASRec)"
        )
    graph, space = BlocksKind().graph(arch)
    return BlockNet(ebc, num_dense, space, graph)


@dataclasses.dataclass
class EmbeddingSearch:
    """What `search_embedding_dims` returns.

    Args:
        architecture: the chosen tables, named as yours (`configs` are them as `EmbeddingBagConfig`s);
            for iHAS's groups the searched `grouped` architecture (group and router tables, `extra`).
        configs: your configs with the searched `embedding_dim` and `data_type` (`resize_configs`); {module
            name: configs} for a model of several modules (`EmbeddingConfig`s for an
            `EmbeddingCollection`: one dim for all its tables).
        plan: a TorchRec `ShardingPlan` of your model built around `configs`, for the topology the search
            ran on, keyed by `module_path` and your table names.
        module_path: where your model keeps its EBC (e.g. "sparse_arch.embedding_bag_collection"); pass it
            to `plan_for` to plan for another topology; {module name: path} for several modules.
        metrics: the search's metrics (`metrics.json`: budget, bytes, finalists, val/test metrics, log).
        run_dir: the run directory written (report, architecture, logs), or "" when none was kept.
        model: None when the result is per-table dims for your model. For iHAS's instance-wise groups
            (`architecture.kind == "grouped"`): `ebc -> model`, the model to train and serve around an EBC
            of `configs` (each feature's table at its widest group's dim): the router, the one EBC and your
            model as each group's head over its slice of the pooled embeddings; `plan` and `module_path`
            ("sparse_arch") are for it.
    """

    architecture: Architecture
    configs: list[EmbeddingBagConfig]
    plan: ShardingPlan
    module_path: str
    metrics: dict[str, Any]
    run_dir: str
    model: Callable[[nn.Module], nn.Module] | None = None


def _plan_user_model(
    configs: dict[str, list[Any]],
    model_factory: Callable[[Any], nn.Module],
    arch: Architecture,
    cfg: Config,
) -> tuple[dict[str, str], ShardingPlan]:
    """Your model of several embedding modules built on meta around `configs` ({module name: its searched
    configs}: EBCs and ECs) and planned whole by TorchRec's planner on this job's topology: (where the model
    keeps each module, the plan keyed by those paths)."""
    meta = torch.device("meta")
    modules: dict[str, nn.Module] = {
        name: EmbeddingCollection(tables=c, device=meta)
        if isinstance(c[0], EmbeddingConfig)
        else EmbeddingBagCollection(tables=c, device=meta)
        for name, c in configs.items()
    }
    for module in modules.values():
        attach_table_optimizer(module, cfg.train.embedding_optimizer)
    built = model_factory(modules)
    paths = {name: module_path_of(built, module) for name, module in modules.items()}
    env = init_distributed()
    topology = planning.make_topology(env.world_size, env.device.type, cfg.plan.hbm_gb, cfg.plan.ddr_gb)
    return paths, planning.plan_model(built, arch, topology, cfg.train.batch_size)


def search_embedding_dims(
    tables: Sequence[EmbeddingBagConfig] | Mapping[str, Sequence[EmbeddingBagConfig | EmbeddingConfig]],
    model_factory: Callable[[Any], nn.Module],
    train: Iterable[Any],
    val: Iterable[Any],
    budget: str | int,
    *,
    test: Iterable[Any] | None = None,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    config: Sequence[str] | Any = None,
    run_dir: str = "",
    train_steps_per_epoch: int = 0,
) -> EmbeddingSearch:
    """Searches per-table embedding dims of your own model on your own data under a memory budget.

    Runs AdaS&S (`search.method=adass`, the default; `uniform`, `power_rule` and `ihas` also work: iHAS's
    groups of samples return `EmbeddingSearch.model`, your model as each group's head behind a router)
    through the same search, final pick and budget check as `torchrec-aes search`: a supernet of your model
    around an
    elastic EBC (every table at the largest candidate dim, zero-padded beyond the sampled dim), an RL search
    scored by validation AUC, then the finalists and the zero-cost baselines retrained from scratch as your
    model, keeping the best on validation. The budget is TorchRec's storage estimate of the tables (weights
    + fused optimizer state). Call it on every rank under torchrun (each with its own loaders), or in one
    process.

    Args:
        tables: your `EmbeddingBagConfig`s (pooling and init range are kept; `embedding_dim` is what is
            searched; their rows count in the budget; a table of several features is one shared table),
            or for a model of several embedding modules {module name: its configs}: a list of
            `EmbeddingBagConfig`s is an EBC, of `EmbeddingConfig`s an `EmbeddingCollection` (sequence
            tables: one searched dim per collection; uniform, power_rule and adass). The factory then gets
            {module name: EBC or EC}, and `configs` / `module_path` of the result are dicts by module
            name, `plan` TorchRec's plan of your model built from them, keyed by each module's path.
        model_factory: `ebc -> model`, `model(dense [B, num_dense], kjt) -> logits [B]` (or [B, 1]); reads the
            tables' dims from `ebc.embedding_bag_configs()` (they differ per table) and pooled embeddings
            by feature name from `ebc(kjt)`; must keep the EBC as a submodule, pass the KJT to it untouched
            and be torch.fx-traceable (TorchRec's train pipeline traces it). Contract in
            `torchrec_aes/tasks/user.py`.
        train: this rank's training batches: a re-iterable (list, DataLoader, IterableDataset) of
            `torchrec.datasets.utils.Batch` or `(kjt, labels)` / `(dense, kjt, labels)` tuples, labels [B]
            in [0, 1]. Shuffling and sharding by rank are your loader's job.
        val: this rank's validation batches (the search scores on their first rows).
        budget: bytes (an int, or "800MB", "1.5GiB"), or a fraction of a reference ("0.5 x uniform-64",
            "25% of uniform-64"); the forms of `search.budget`.
        test: this rank's test batches for the final report; None reports validation's.
        loss: `(logits [B], labels [B]) -> scalar` for training; None = BCE on logits.
        config: `key=value` overrides (e.g. ["train.epochs=2", "search.candidates=[8,16,32]"]) or a
            `Config`; `search.budget` and `run_dir` come from the arguments.
        run_dir: where the run directory goes (report, architecture, TensorBoard, checkpoints: a rerun
            resumes). "" = a temporary directory, deleted afterwards, and no checkpoints (so the final pick
            trains every finalist fully instead of by successive halving).
        train_steps_per_epoch: steps per epoch; 0 counts the train batches once (minimum over ranks).

    Returns:
        The architecture under your table names, your configs resized, a sharding plan and the metrics.

    Raises:
        ValueError: bad input, in one line: no tables or a table of several features, a split that is
            empty or a one-shot iterator, a batch whose KJT keys are not the tables' feature names or whose
            labels are not [B], ids beyond a table's rows, a config value, or a budget below the smallest
            architecture (naming that minimum).

    Example::

        tables = [EmbeddingBagConfig(name="user_table", feature_names=["user"], num_embeddings=10_000,
                                     embedding_dim=64), ...]
        result = torchrec_aes.search_embedding_dims(
            tables, lambda ebc: TwoTower(ebc), train_batches, val_batches, "0.5 x uniform-64",
            config=["train.epochs=2"], run_dir="runs/byo")
        result.architecture.dims        # per table, in `tables` order
        ebc = EmbeddingBagCollection(tables=result.configs, device=torch.device("meta"))
        model = DistributedModelParallel(TwoTower(ebc), plan=result.plan, device=device)
    """

    flat, ebc_features, _ = flatten_tables(tables)
    if isinstance(config, Config):
        cfg = copy.deepcopy(config)
    elif config is None or (isinstance(config, Sequence) and not isinstance(config, str)):
        cfg = load_config(None, ["search.method=adass", "train.progress=false", *(config or [])])
    else:
        raise ValueError(f"config: a {type(config).__name__}; expected key=value overrides or a Config")
    if not get_method(cfg.search.method).user_model:
        fits = [m for m in method_names() if get_method(m).user_model]
        whole = (
            " (NASRec searches a whole model, a block graph, not your model's tables: run it with "
            "`torchrec-aes search` and build the result around your EBC with block_model)"
            if cfg.search.method == "nasrec"
            else ""
        )
        raise ValueError(
            f"search.method: '{cfg.search.method}' does not search a user's model{whole}; one of "
            f"{', '.join(fits)}"
        )
    keep = bool(run_dir)
    cfg.search.budget = [str(budget)]
    cfg.run_dir = run_dir or tempfile.mkdtemp(prefix="torchrec_aes_")
    if not keep:
        cfg.train.checkpoint = False  # a temporary directory per rank: no shared checkpoints to resume
    try:
        validate(cfg)
        # The budget against the tables before any data is read: an infeasible one names the minimum.
        schema = Schema(sparse=[SparseFeature(t.feature_names[0], t.num_embeddings) for t in flat])
        b = Budget.parse(cfg.search.budget[0], schema, cfg.train.embedding_optimizer, cfg.search.count)
        b.check_feasible(schema, cfg.search.candidates, cfg.search.precision)
        task = UserTask(cfg, tables, model_factory, train, val, test, loss, train_steps_per_epoch)
        arch, metrics = search_task(cfg, task)
        model, tables_arch = None, arch
        module_path: Any = task.module_path
        if arch.kind == "grouped":  # deploys as a model of its own: tables in their training form
            source = os.path.join(cfg.run_dir, "architecture.yaml")
            tables_arch, hooks = kind_of(arch).training_form(arch, source, task.schema)
            heads = UserHeads(model_factory, ebc_features)
            model, module_path = partial(hooks.make_model, heads), "sparse_arch"
        named = _as_named_by(tables_arch, flat)
        configs: Any = resize_configs(flat, named)
        if model is None and ebc_features is not None:  # your modules: each its configs; your model planned
            assert isinstance(tables, Mapping)
            configs = {name: resize_configs(tables[name], named) for name in tables}
            module_path, plan = _plan_user_model(configs, model_factory, named, cfg)
        else:
            env = init_distributed()
            plan = planning.plan_architecture(
                named,
                env.world_size,
                env.device.type,
                cfg.plan.hbm_gb,
                cfg.plan.ddr_gb,
                cfg.train.batch_size,
                cfg.train.embedding_optimizer,
                module_path=module_path,
            )
        return EmbeddingSearch(
            architecture=named if model is None else arch,
            configs=configs,
            plan=plan,
            module_path=module_path,
            metrics=metrics,
            run_dir=run_dir,
            model=model,
        )
    finally:
        if not keep:
            shutil.rmtree(cfg.run_dir, ignore_errors=True)
