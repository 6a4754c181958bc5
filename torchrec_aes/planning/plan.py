"""Sharding plans for an architecture: topology, per-table constraints, TorchRec's planner, summaries.

Planning needs no process group and no weights: the tables are built on the meta device with the table
optimizer attached (so the planner counts its state), and TorchRec's `EmbeddingShardingPlanner` places them
on a simulated topology. A plan is stored in our own JSON schema (TorchRec has no public round trip) and
loads back into a `ShardingPlan` that `DistributedModelParallel` accepts.

Example::

    plan = plan_architecture(arch, world_size=8, device="cuda", hbm_gb=80)
    save_plan(plan, "runs/x/plan.json")
    print(format_plan_summary(plan_summary(plan, arch, make_topology(8, "cuda", 80))))
    model = DistributedModelParallel(model, plan=load_plan("runs/x/plan.json"), ...)

Plans are stored and read by `plan_io.py`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed._shard.sharding_spec import EnumerableShardingSpec
from torchrec.distributed.embedding import EmbeddingCollectionSharder
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
from torchrec.distributed.planner.constants import BATCH_SIZE
from torchrec.distributed.planner.enumerators import EmbeddingEnumerator
from torchrec.distributed.planner.shard_estimators import EmbeddingStorageEstimator
from torchrec.distributed.planner.types import (
    KernelConfig,
    PlannerError,
    Shard,
    TopologyFactory,
    TrainerConfig,
)
from torchrec.distributed.types import (
    ModuleSharder,
    ParameterSharding,
    ShardingPlan,
    ShardingType,
)
from torchrec.modules.embedding_modules import EmbeddingCollection

from torchrec_aes.architecture import Architecture
from torchrec_aes.planning.memory import (
    OPTIMIZERS,
    arch_bytes,
    attach_table_optimizer,
    format_bytes,
    meta_ebc,
)

GiB = 1024**3
DEVICES = ("cpu", "cuda")


MODEL_PARALLEL = [
    ShardingType.TABLE_WISE.value,
    ShardingType.COLUMN_WISE.value,
    ShardingType.TABLE_COLUMN_WISE.value,
    ShardingType.ROW_WISE.value,
    ShardingType.TABLE_ROW_WISE.value,
]
"""Sharding types allowed for fused tables (everything but data_parallel)."""


class PlanError(ValueError):
    """No sharding plan fits the topology; the message says how much is needed and available."""


def make_topology(
    world_size: int,
    device: str = "cpu",
    hbm_gb: float = 0.0,
    ddr_gb: float = 0.0,
    local_world_size: int | None = None,
) -> Topology:
    """A TorchRec `Topology` of `world_size` devices; caps of 0 keep TorchRec's defaults.

    Args:
        world_size: ranks.
        device: "cpu" or "cuda".
        hbm_gb: HBM per device in GiB (cuda; TorchRec's default is 32 GiB).
        ddr_gb: DDR per rank in GiB (TorchRec's default is 128 GiB); on cuda it holds UVM-offloaded tables.
        local_world_size: ranks per host (default: all on one host); only the planner's perf model uses it.
    """
    if device not in DEVICES:
        raise ValueError(f"unknown compute device '{device}'; allowed: {', '.join(DEVICES)}")
    if world_size < 1:
        raise ValueError(f"world size must be at least 1, got {world_size}")
    if hbm_gb < 0 or ddr_gb < 0:
        raise ValueError(f"memory caps must be >= 0 GiB, got hbm_gb={hbm_gb}, ddr_gb={ddr_gb}")
    return TopologyFactory.create_topology(
        trainer_config=TrainerConfig(
            world_size=world_size,
            local_world_size=local_world_size,
            hbm_cap_bytes=int(hbm_gb * GiB) if hbm_gb else None,
            ddr_cap_bytes=int(ddr_gb * GiB) if ddr_gb else None,
        ),
        kernel_config=KernelConfig(compute_device=device),
    )


def constraints_for(arch: Architecture) -> dict[str, ParameterConstraints]:
    """Planner constraints per table.

    - Dims that are not a multiple of 4 are pinned to data_parallel: FBGEMM's fused kernels need every
      (column-shard) dim to be a multiple of 4.
    - Every other table is kept off data_parallel. DMP does not give a data-parallel table the fused
      optimizer attached with `apply_optimizer_in_backward`: it ends up with the dense parameters (DDP,
      dense optimizer and learning rate), so it would silently train with another optimizer than the
      planner counted (measured in tests/distributed/test_trainer_distributed.py).
    """
    constraints = {}
    for t in arch.active_tables:
        if t.embedding_dim % 4:
            constraints[t.name] = ParameterConstraints(sharding_types=[ShardingType.DATA_PARALLEL.value])
        else:
            constraints[t.name] = ParameterConstraints(sharding_types=MODEL_PARALLEL)
    return constraints


def default_sharders() -> list[ModuleSharder[nn.Module]]:
    """TorchRec's sharders of pooled (`EmbeddingBagCollection`) and sequence (`EmbeddingCollection`)
    tables."""
    return [EmbeddingBagCollectionSharder(), EmbeddingCollectionSharder()]  # type: ignore[list-item]


def _optimizer_of(model: nn.Module) -> str | None:
    """The name of the table optimizer attached to `model`'s parameters, if one of ours."""
    names = {cls: name for name, cls in OPTIMIZERS.items()}
    for p in model.parameters():
        for cls in getattr(p, "_optimizer_classes", []):
            if cls in names:
                return names[cls]
    return None


def _plan_error(
    arch: Architecture, topology: Topology, batch_size: int, optimizer: str | None, error: PlannerError
) -> PlanError:
    needed = arch_bytes(arch, optimizer or "sgd")
    what = f"weights + {optimizer} state" if optimizer else "weights"
    n = topology.world_size
    hbm, ddr = topology.devices[0].storage.hbm, topology.devices[0].storage.ddr
    if topology.compute_device == "cuda":
        # The planner may offload tables to DDR through UVM, so both memories count.
        available = n * (hbm + ddr)
        where = f"{n} x ({format_bytes(hbm)} HBM + {format_bytes(ddr)} DDR)"
    else:
        available = n * ddr
        where = f"{n} x {format_bytes(ddr)} DDR"
    if needed > available:
        verdict = f"{format_bytes(needed - available)} short"
    else:
        verdict = (
            "enough in total, but not once TorchRec reserves its margin (15% of HBM), dense parameters and "
            f"per-batch buffers at batch size {batch_size} on each device, or no table split fits"
        )
    # TorchRec's message is a multi-line report; its first line and its last error say what went wrong.
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    reason = lines[0] + (f" Last: {lines[-1]}" if len(lines) > 1 else "")
    return PlanError(
        f"no sharding plan fits: the tables need {needed} B ({format_bytes(needed)}, TorchRec's storage "
        f"estimate of {what}) and the topology has {available} B ({format_bytes(available)} = {where}): "
        f"{verdict}. Use more devices, larger caps or a smaller architecture. (TorchRec: {reason})"
    )


def plan_model(
    model: nn.Module,
    arch: Architecture,
    topology: Topology,
    batch_size: int,
    sharders: list[ModuleSharder[nn.Module]] | None = None,
    pg: dist.ProcessGroup | None = None,
    sharding_types: list[str] | None = None,
) -> ShardingPlan:
    """Plans `model` (built on the meta device) with TorchRec's `EmbeddingShardingPlanner`.

    With a process group the plan is computed collectively (rank 0 plans and broadcasts), so every rank
    gets the same plan. `sharding_types` replaces `constraints_for`'s per-table choice (tests use it to
    force e.g. data_parallel).

    Raises:
        PlanError: nothing fits; says how much the tables need and how much the topology has.
    """
    constraints = constraints_for(arch)
    if sharding_types:
        constraints = {
            t.name: ParameterConstraints(sharding_types=list(sharding_types)) for t in arch.active_tables
        }
    with warnings.catch_warnings():
        # TorchRec warns that its default (heuristic) reservation over-estimates dense tensors in dry runs;
        # on the meta device the parameter shapes it sums are exact, so the default stays.
        warnings.simplefilter("ignore", FutureWarning)
        planner = EmbeddingShardingPlanner(
            topology=topology, batch_size=batch_size, constraints=constraints, debug=False
        )
    sharders = sharders or default_sharders()
    try:
        if pg is not None:
            return planner.collective_plan(model, sharders, pg)
        return planner.plan(model, sharders)
    except PlannerError as e:
        raise _plan_error(arch, topology, batch_size, _optimizer_of(model), e) from e


def plan_architecture(
    arch: Architecture,
    world_size: int,
    device: str = "cpu",
    hbm_gb: float = 0.0,
    ddr_gb: float = 0.0,
    batch_size: int = BATCH_SIZE,
    optimizer: str = "rowwise_adagrad",
    module_path: str = "",
    local_world_size: int | None = None,
    collection_paths: dict[str, str] | None = None,
) -> ShardingPlan:
    """A sharding plan for the tables of `arch` on a simulated topology (no process group, no weights).

    Args:
        arch: the architecture.
        world_size, device, hbm_gb, ddr_gb, local_world_size: the topology (see `make_topology`).
        batch_size: per-rank batch size (sizes the planner's input/output buffers).
        optimizer: the fused table optimizer whose state is placed with the tables.
        module_path: where the `EmbeddingBagCollection` sits in the model that DMP will wrap, e.g.
            "sparse_arch.embedding_bag_collection" ("" = the EBC itself is the model).
        collection_paths: where each `EmbeddingCollection` of the architecture's sequence tables sits
            ({collection: module path}; default: the collection's name).

    Raises:
        PlanError: nothing fits.
    """
    topology = make_topology(world_size, device, hbm_gb, ddr_gb, local_world_size)
    tables, collections = meta_tables(arch, optimizer)
    plan = plan_model(tables, arch, topology, batch_size)
    # The planner names the modules by their paths in `tables`; put them where the user's model has them.
    paths = {"": module_path, "ebc": module_path}
    paths.update({key: (collection_paths or {}).get(name, name) for key, name in collections.items()})
    return ShardingPlan({paths[key]: module_plan for key, module_plan in plan.plan.items()})


def meta_tables(arch: Architecture, optimizer: str | None) -> tuple[nn.Module, dict[str, str]]:
    """The tables of `arch` on meta with `optimizer` attached: its EBC, or with sequence tables a module
    holding the EBC (`ebc`) and one `EmbeddingCollection` per collection; with {child name: collection}."""
    ebc = meta_ebc(arch.to_ebc_configs(), optimizer)
    ec_configs = arch.to_ec_configs()
    if not ec_configs:
        return ebc, {}
    root = nn.Module()
    root.add_module("ebc", ebc)
    collections = {}
    for i, (name, configs) in enumerate(ec_configs.items()):
        ec = EmbeddingCollection(tables=configs, device=torch.device("meta"))
        if optimizer is not None:
            attach_table_optimizer(ec, optimizer)
        root.add_module(f"ec{i}", ec)
        collections[f"ec{i}"] = name
    return root, collections


# ---------------------------------------------------------------------------------------------------------
# Per-rank memory
# ---------------------------------------------------------------------------------------------------------


@dataclass
class PlanRow:
    """What one rank holds under a plan.

    Args:
        rank: the rank.
        tables: tables with a shard (or a data-parallel replica) on this rank.
        hbm_bytes: TorchRec's storage estimate of those shards in HBM.
        ddr_bytes: the same in DDR (CPU ranks, UVM-offloaded tables).
    """

    rank: int
    tables: list[str]
    hbm_bytes: int
    ddr_bytes: int


def plan_summary(
    plan: ShardingPlan,
    arch: Architecture,
    topology: Topology,
    batch_size: int = BATCH_SIZE,
    optimizer: str = "rowwise_adagrad",
) -> list[PlanRow]:
    """Per-rank memory of `plan`, as TorchRec's `EmbeddingStorageEstimator` computes it for the plan's shards.

    Counts the shards' weights, optimizer state and the estimator's per-batch input/output buffers at
    `batch_size` (0 leaves them out, so the rows add up to `arch_bytes` plus data-parallel replicas); not the
    planner's reservations (the HBM margin, dense parameters, KJT copies).

    Args:
        plan: a plan for `arch`'s tables (any module path), e.g. from `load_plan`.
        arch: the architecture.
        topology: the topology it was planned for.
        batch_size: per-rank batch size.
        optimizer: the fused table optimizer.
    """
    shardings: dict[str, ParameterSharding] = {}
    for module_plan in plan.plan.values():
        shardings.update(module_plan)  # type: ignore[arg-type]
    tables = arch.active_tables
    missing = [t.name for t in tables if t.name not in shardings]
    if missing:
        raise ValueError(f"the plan has no sharding for tables {missing} of the architecture")
    # Enumerate exactly the plan's (sharding type, kernel) per table, then put the plan's shards in.
    constraints = {
        c.name: ParameterConstraints(
            sharding_types=[shardings[c.name].sharding_type],
            compute_kernels=[shardings[c.name].compute_kernel],
            cache_params=shardings[c.name].cache_params,
        )
        for c in tables
    }
    enumerator = EmbeddingEnumerator(
        topology=topology,
        batch_size=batch_size,
        constraints=constraints,
        estimator=[EmbeddingStorageEstimator(topology=topology, constraints=constraints)],
    )
    options = enumerator.enumerate(meta_tables(arch, optimizer)[0], default_sharders())
    for option in options:
        ps = shardings[option.name]
        if ps.sharding_type == ShardingType.DATA_PARALLEL.value:
            assert ps.ranks is not None
            option.shards = [Shard(size=list(option.tensor.shape), offset=[0, 0], rank=r) for r in ps.ranks]
        else:
            assert isinstance(ps.sharding_spec, EnumerableShardingSpec)
            option.shards = [
                Shard(
                    size=list(s.shard_sizes),
                    offset=list(s.shard_offsets),
                    rank=s.placement.rank() if s.placement is not None else None,
                )
                for s in ps.sharding_spec.shards
            ]
    enumerator.populate_estimates(options)
    rows = {r: PlanRow(r, [], 0, 0) for r in range(topology.world_size)}
    for option in options:
        for shard in option.shards:
            assert shard.rank is not None and shard.storage is not None
            row = rows[shard.rank]
            if option.name not in row.tables:
                row.tables.append(option.name)
            row.hbm_bytes += int(shard.storage.hbm)
            row.ddr_bytes += int(shard.storage.ddr)
    return [rows[r] for r in sorted(rows)]


def format_plan_summary(rows: list[PlanRow], topology: Topology | None = None, max_tables: int = 6) -> str:
    """A text table of `plan_summary` rows with a total line (and the device caps, given the topology)."""

    def names(tables: list[str]) -> str:
        shown = ", ".join(tables[:max_tables])
        return shown + (f", ... (+{len(tables) - max_tables})" if len(tables) > max_tables else "")

    header = ["rank", "#tables", "HBM", "DDR", "tables"]
    body = [
        [
            str(r.rank),
            str(len(r.tables)),
            format_bytes(r.hbm_bytes),
            format_bytes(r.ddr_bytes),
            names(r.tables),
        ]
        for r in rows
    ]
    body.append(
        [
            "total",
            "",
            format_bytes(sum(r.hbm_bytes for r in rows)),
            format_bytes(sum(r.ddr_bytes for r in rows)),
            "",
        ]
    )
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    fmt = " | ".join(f"{{:{'<' if i == len(header) - 1 else '>'}{w}}}" for i, w in enumerate(widths))
    lines = [fmt.format(*header), "-+-".join("-" * w for w in widths), *(fmt.format(*line) for line in body)]
    if topology is not None:
        cap = topology.devices[0].storage
        lines.insert(
            0,
            f"{topology.world_size} x {topology.compute_device}: HBM cap {format_bytes(cap.hbm)}, "
            f"DDR cap {format_bytes(cap.ddr)} per rank",
        )
    return "\n".join(line.rstrip() for line in lines)
