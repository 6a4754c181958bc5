"""Sharding plans for an architecture: topology, per-table constraints, TorchRec's planner, plan I/O.

Planning needs no process group and no weights: the tables are built on the meta device with the table
optimizer attached (so the planner counts its state), and TorchRec's `EmbeddingShardingPlanner` places them
on a simulated topology. A plan is stored in our own JSON schema (TorchRec has no public round trip) and
loads back into a `ShardingPlan` that `DistributedModelParallel` accepts.

Example::

    plan = plan_architecture(arch, world_size=8, device="cuda", hbm_gb=80)
    save_plan(plan, "runs/x/plan.json")
    print(format_plan_summary(plan_summary(plan, arch, make_topology(8, "cuda", 80))))
    model = DistributedModelParallel(model, plan=load_plan("runs/x/plan.json"), ...)

Plan file schema (``format: torchrec_aes.sharding_plan``, ``version: 1``)::

    {"format": ..., "version": 1, "metadata": {...free-form, e.g. the topology...},
     "plan": {MODULE_PATH: {PARAM_NAME: {
         "sharding_type": "table_wise", "compute_kernel": "fused", "ranks": [0],
         "shards": [{"offsets": [0, 0], "sizes": [1000, 16], "placement": "rank:0/cpu"}] | null,
         "cache_params": {...} | null, "enforce_hbm": bool | null, "stochastic_rounding": bool | null,
         "bounds_check_mode": "FATAL" | null, "output_dtype": "FP32" | null,
         "key_value_params": {...scalar fields...} | null}}}}

`CacheParams.stats` is a planner input (cache statistics), not part of the placement; it is not stored.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass, fields
from typing import Any

import torch.distributed as dist
from torch import nn
from torch.distributed._shard.metadata import ShardMetadata
from torch.distributed._shard.sharding_spec import EnumerableShardingSpec
from torchrec.distributed.embedding_types import EmbeddingComputeKernel
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
    BoundsCheckMode,
    CacheAlgorithm,
    CacheParams,
    DataType,
    EmbeddingModuleShardingPlan,
    KeyValueParams,
    ModuleSharder,
    MultiPassPrefetchConfig,
    ParameterSharding,
    ShardingPlan,
    ShardingType,
)

from torchrec_aes.architecture import Architecture
from torchrec_aes.io import read_text, write_text_atomic
from torchrec_aes.planning.memory import OPTIMIZERS, arch_bytes, format_bytes, meta_ebc

GiB = 1024**3
DEVICES = ("cpu", "cuda")
PLAN_FORMAT = "torchrec_aes.sharding_plan"
PLAN_VERSION = 1


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
    return [EmbeddingBagCollectionSharder()]


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
) -> ShardingPlan:
    """A sharding plan for the tables of `arch` on a simulated topology (no process group, no weights).

    Args:
        arch: the architecture.
        world_size, device, hbm_gb, ddr_gb, local_world_size: the topology (see `make_topology`).
        batch_size: per-rank batch size (sizes the planner's input/output buffers).
        optimizer: the fused table optimizer whose state is placed with the tables.
        module_path: where the `EmbeddingBagCollection` sits in the model that DMP will wrap, e.g.
            "sparse_arch.embedding_bag_collection" ("" = the EBC itself is the model).

    Raises:
        PlanError: nothing fits.
    """
    topology = make_topology(world_size, device, hbm_gb, ddr_gb, local_world_size)
    ebc = meta_ebc(arch.to_ebc_configs(), optimizer)
    # The planner names the EBC's path "" (it is the whole model); put it where the user's model has it.
    plan = plan_model(ebc, arch, topology, batch_size)
    return ShardingPlan({module_path: plan.plan[""]} if plan.plan else {})


# ---------------------------------------------------------------------------------------------------------
# Plan I/O
# ---------------------------------------------------------------------------------------------------------

_PARAM_KEYS = {
    "sharding_type",
    "compute_kernel",
    "ranks",
    "shards",
    "cache_params",
    "enforce_hbm",
    "stochastic_rounding",
    "bounds_check_mode",
    "output_dtype",
    "key_value_params",
}
_CACHE_KEYS = {
    "algorithm",
    "load_factor",
    "reserved_memory",
    "precision",
    "prefetch_pipeline",
    "multipass_prefetch_config",
}
_SCALARS = (str, int, float, bool, type(None))


def _enum_name(value: Any) -> str | None:
    return None if value is None else value.name


def _cache_params_to_dict(cp: CacheParams | None) -> dict | None:
    if cp is None:
        return None
    mpp = cp.multipass_prefetch_config
    return {
        "algorithm": _enum_name(cp.algorithm),
        "load_factor": cp.load_factor,
        "reserved_memory": cp.reserved_memory,
        "precision": _enum_name(cp.precision),
        "prefetch_pipeline": cp.prefetch_pipeline,
        "multipass_prefetch_config": None if mpp is None else mpp._asdict(),
    }


def _kv_params_to_dict(kv: KeyValueParams | None, where: str) -> dict | None:
    if kv is None:
        return None
    out = {}
    for f in fields(kv):
        value = getattr(kv, f.name)
        if value is None or value == f.default:
            continue
        if not isinstance(value, _SCALARS):
            raise ValueError(
                f"{where}: key_value_params.{f.name} = {value!r} cannot be stored in a plan file"
            )
        out[f.name] = value
    return out


def plan_to_dict(plan: ShardingPlan, metadata: dict | None = None) -> dict:
    """`plan` in our JSON schema (see the module docstring)."""
    modules: dict[str, dict] = {}
    for module_path, module_plan in plan.plan.items():
        params: dict[str, dict] = {}
        for name, ps in module_plan.items():  # type: ignore[attr-defined]
            where = f"{module_path}/{name}"
            shards = None
            if ps.sharding_spec is not None:
                if not isinstance(ps.sharding_spec, EnumerableShardingSpec):
                    raise ValueError(
                        f"{where}: sharding spec {type(ps.sharding_spec).__name__} is not supported"
                    )
                shards = [
                    {
                        "offsets": list(s.shard_offsets),
                        "sizes": list(s.shard_sizes),
                        "placement": str(s.placement),
                    }
                    for s in ps.sharding_spec.shards
                ]
            params[name] = {
                "sharding_type": ps.sharding_type,
                "compute_kernel": ps.compute_kernel,
                "ranks": None if ps.ranks is None else list(ps.ranks),
                "shards": shards,
                "cache_params": _cache_params_to_dict(ps.cache_params),
                "enforce_hbm": ps.enforce_hbm,
                "stochastic_rounding": ps.stochastic_rounding,
                "bounds_check_mode": _enum_name(ps.bounds_check_mode),
                "output_dtype": _enum_name(ps.output_dtype),
                "key_value_params": _kv_params_to_dict(ps.key_value_params, where),
            }
        modules[module_path] = params
    return {"format": PLAN_FORMAT, "version": PLAN_VERSION, "metadata": metadata or {}, "plan": modules}


def _enum(enum_cls: Any, value: Any, where: str) -> Any:
    if value is None:
        return None
    try:
        return enum_cls[value]
    except KeyError:
        raise ValueError(
            f"{where}: '{value}' is not a {enum_cls.__name__}; allowed: {', '.join(e.name for e in enum_cls)}"
        ) from None


def _check_keys(data: Any, allowed: set[str], where: str, required: set[str] | None = None) -> None:
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
    unknown = set(data) - allowed
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}; allowed: {sorted(allowed)}")
    missing = (required or set()) - set(data)
    if missing:
        raise ValueError(f"{where}: missing keys {sorted(missing)}")


def _param_from_dict(d: dict, where: str) -> ParameterSharding:
    _check_keys(d, _PARAM_KEYS, where, required={"sharding_type", "compute_kernel"})
    sharding_types = [t.value for t in ShardingType]
    if d["sharding_type"] not in sharding_types:
        raise ValueError(f"{where}: sharding_type '{d['sharding_type']}' is not one of {sharding_types}")
    kernels = [k.value for k in EmbeddingComputeKernel]
    if d["compute_kernel"] not in kernels:
        raise ValueError(f"{where}: compute_kernel '{d['compute_kernel']}' is not one of {kernels}")
    spec = None
    if d.get("shards") is not None:
        shards = []
        for i, s in enumerate(d["shards"]):
            sw = f"{where}.shards[{i}]"
            _check_keys(s, {"offsets", "sizes", "placement"}, sw, required={"offsets", "sizes", "placement"})
            try:
                shards.append(
                    ShardMetadata(
                        [int(x) for x in s["offsets"]], [int(x) for x in s["sizes"]], str(s["placement"])
                    )
                )
            except (TypeError, ValueError, RuntimeError) as e:
                raise ValueError(
                    f"{sw}: {e} (placement looks like 'rank:0/cpu' or 'rank:1/cuda:1')"
                ) from None
        spec = EnumerableShardingSpec(shards)
    cache_params = None
    if d.get("cache_params") is not None:
        c = d["cache_params"]
        cw = f"{where}.cache_params"
        _check_keys(c, _CACHE_KEYS, cw)
        mpp = c.get("multipass_prefetch_config")
        cache_params = CacheParams(
            algorithm=_enum(CacheAlgorithm, c.get("algorithm"), cw + ".algorithm"),
            load_factor=c.get("load_factor"),
            reserved_memory=c.get("reserved_memory"),
            precision=_enum(DataType, c.get("precision"), cw + ".precision"),
            prefetch_pipeline=c.get("prefetch_pipeline"),
            multipass_prefetch_config=None if mpp is None else MultiPassPrefetchConfig(**mpp),
        )
    kv = d.get("key_value_params")
    if kv is not None:
        allowed_kv = {f.name for f in fields(KeyValueParams)}
        _check_keys(kv, allowed_kv, f"{where}.key_value_params")
        kv = KeyValueParams(**kv)
    ranks = d.get("ranks")
    return ParameterSharding(
        sharding_type=d["sharding_type"],
        compute_kernel=d["compute_kernel"],
        ranks=None if ranks is None else [int(r) for r in ranks],
        sharding_spec=spec,
        cache_params=cache_params,
        enforce_hbm=d.get("enforce_hbm"),
        stochastic_rounding=d.get("stochastic_rounding"),
        bounds_check_mode=_enum(BoundsCheckMode, d.get("bounds_check_mode"), where + ".bounds_check_mode"),
        output_dtype=_enum(DataType, d.get("output_dtype"), where + ".output_dtype"),
        key_value_params=kv,
    )


def plan_from_dict(data: dict, source: str = "plan") -> ShardingPlan:
    """The inverse of `plan_to_dict`; errors name `source` and the key."""
    _check_keys(
        data, {"format", "version", "metadata", "plan"}, source, required={"format", "version", "plan"}
    )
    if data["format"] != PLAN_FORMAT or data["version"] != PLAN_VERSION:
        raise ValueError(
            f"{source}: format {data['format']!r} version {data['version']!r}; expected {PLAN_FORMAT!r} "
            f"version {PLAN_VERSION}"
        )
    if not isinstance(data["plan"], dict):
        raise ValueError(f"{source}: 'plan' must map module paths to parameter shardings")
    plan: dict[str, EmbeddingModuleShardingPlan] = {}
    for module_path, params in data["plan"].items():
        if not isinstance(params, dict):
            raise ValueError(f"{source}: plan['{module_path}'] must map parameter names to shardings")
        plan[module_path] = EmbeddingModuleShardingPlan(
            {
                name: _param_from_dict(d, f"{source}: plan['{module_path}']['{name}']")
                for name, d in params.items()
            }
        )
    return ShardingPlan(plan)  # type: ignore[arg-type]


def save_plan(plan: ShardingPlan, path: str, metadata: dict | None = None) -> None:
    """Writes `plan` (plus free-form `metadata`, e.g. the topology) as JSON, atomically."""
    try:
        text = json.dumps(plan_to_dict(plan, metadata), indent=2)
    except TypeError as e:
        raise ValueError(
            f"{path}: plan metadata must be JSON data (str, numbers, lists, dicts): {e}"
        ) from None
    # One line per list of numbers (ranks, offsets, sizes) keeps the file readable.
    text = re.sub(r"\[\s*-?\d[\d\s,.+eE-]*\]", lambda m: json.dumps(json.loads(m.group(0))), text)
    write_text_atomic(path, text + "\n")


def load_plan(path: str) -> ShardingPlan:
    """Reads a plan written by `save_plan`."""
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None
    return plan_from_dict(data, source=path)


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
    configs = arch.to_ebc_configs()
    missing = [c.name for c in configs if c.name not in shardings]
    if missing:
        raise ValueError(f"the plan has no sharding for tables {missing} of the architecture")
    # Enumerate exactly the plan's (sharding type, kernel) per table, then put the plan's shards in.
    constraints = {
        c.name: ParameterConstraints(
            sharding_types=[shardings[c.name].sharding_type],
            compute_kernels=[shardings[c.name].compute_kernel],
            cache_params=shardings[c.name].cache_params,
        )
        for c in configs
    }
    enumerator = EmbeddingEnumerator(
        topology=topology,
        batch_size=batch_size,
        constraints=constraints,
        estimator=[EmbeddingStorageEstimator(topology=topology, constraints=constraints)],
    )
    options = enumerator.enumerate(meta_ebc(configs, optimizer), default_sharders())
    for option in options:
        ps = shardings[option.name]
        if ps.sharding_type == ShardingType.DATA_PARALLEL.value:
            assert ps.ranks is not None
            option.shards = [Shard(size=list(option.tensor.shape), offset=[0, 0], rank=r) for r in ps.ranks]
        else:
            assert isinstance(ps.sharding_spec, EnumerableShardingSpec)
            option.shards = [
                Shard(size=list(s.shard_sizes), offset=list(s.shard_offsets), rank=s.placement.rank())
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
