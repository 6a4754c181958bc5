"""Plan I/O: our JSON schema for TorchRec's `ShardingPlan` (TorchRec 1.8 has no public round trip).

Example::

    save_plan(plan, "runs/x/plan.json", metadata={"topology": {...}})
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
from dataclasses import fields
from typing import Any

from torch.distributed._shard.metadata import ShardMetadata
from torch.distributed._shard.sharding_spec import EnumerableShardingSpec
from torchrec.distributed.embedding_types import EmbeddingComputeKernel
from torchrec.distributed.types import (
    BoundsCheckMode,
    CacheAlgorithm,
    CacheParams,
    DataType,
    EmbeddingModuleShardingPlan,
    KeyValueParams,
    MultiPassPrefetchConfig,
    ParameterSharding,
    ShardingPlan,
    ShardingType,
)

from torchrec_aes.errors import UserError
from torchrec_aes.io import read_text, write_text_atomic

PLAN_FORMAT = "torchrec_aes.sharding_plan"
PLAN_VERSION = 1


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


_PLACEMENT = re.compile(r"rank:\d+/[a-z]+(:\d+)?")


def _int_list(value: Any, where: str, minimum: int) -> list[int]:
    if not isinstance(value, list) or not all(
        isinstance(x, int) and not isinstance(x, bool) and x >= minimum for x in value
    ):
        raise ValueError(f"{where}: {value!r}; expected a list of integers >= {minimum}")
    return value


def _param_from_dict(d: dict, where: str) -> ParameterSharding:
    _check_keys(d, _PARAM_KEYS, where, required={"sharding_type", "compute_kernel"})
    sharding_types = [t.value for t in ShardingType]
    if d["sharding_type"] not in sharding_types:
        raise ValueError(f"{where}: sharding_type '{d['sharding_type']}' is not one of {sharding_types}")
    kernels = [k.value for k in EmbeddingComputeKernel]
    if d["compute_kernel"] not in kernels:
        raise ValueError(f"{where}: compute_kernel '{d['compute_kernel']}' is not one of {kernels}")
    ranks = d.get("ranks")
    if ranks is not None:
        ranks = _int_list(ranks, f"{where}.ranks", minimum=0)
    spec = None
    if d.get("shards") is not None:
        if not isinstance(d["shards"], list) or not d["shards"]:
            raise ValueError(f"{where}.shards: {d['shards']!r}; expected a non-empty list of shards or null")
        shards = []
        for i, s in enumerate(d["shards"]):
            sw = f"{where}.shards[{i}]"
            _check_keys(s, {"offsets", "sizes", "placement"}, sw, required={"offsets", "sizes", "placement"})
            offsets = _int_list(s["offsets"], f"{sw}.offsets", minimum=0)
            sizes = _int_list(s["sizes"], f"{sw}.sizes", minimum=0)
            placement = str(s["placement"])
            if not _PLACEMENT.fullmatch(placement):
                raise ValueError(
                    f"{sw}.placement: {placement!r}; expected 'rank:<r>/<device>', e.g. 'rank:0/cpu' or "
                    "'rank:1/cuda:1'"
                )
            try:
                shards.append(ShardMetadata(offsets, sizes, placement))
            except (TypeError, ValueError, RuntimeError) as e:
                raise ValueError(f"{sw}: {' '.join(str(e).split())}") from None
        if ranks is not None and len(ranks) != len(shards):
            raise ValueError(
                f"{where}: {len(ranks)} ranks but {len(shards)} shards; expected one rank per shard"
            )
        spec = EnumerableShardingSpec(shards)
    cache_params = None
    if d.get("cache_params") is not None:
        c = d["cache_params"]
        cw = f"{where}.cache_params"
        _check_keys(c, _CACHE_KEYS, cw)
        mpp = c.get("multipass_prefetch_config")
        if mpp is not None:
            _check_keys(mpp, set(MultiPassPrefetchConfig._fields), cw + ".multipass_prefetch_config")
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
    return ParameterSharding(
        sharding_type=d["sharding_type"],
        compute_kernel=d["compute_kernel"],
        ranks=ranks,
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
    """Reads a plan written by `save_plan`.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not UTF-8, not JSON (naming the line), or not a plan (naming the key); one line.
    """
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory (expected a plan .json file)") from None
    return plan_from_dict(data, source=path)


def check_plan_covers(plan: Any, arch: Any, source: str) -> None:
    """Raises ValueError if a module plan does not shard exactly `arch`'s active tables at their sizes.

    Args:
        plan: an `EmbeddingModuleShardingPlan` (table name -> `ParameterSharding`).
        arch: the `Architecture` it should shard.
        source: names the plan in messages (its file).
    """
    for t in arch.active_tables:
        if t.name not in plan:
            raise UserError(
                f"{source}: no sharding for table '{t.name}' ({t.num_embeddings} x {t.embedding_dim}); "
                f"the plan has {', '.join(plan) or 'no tables'}. Was it planned for another architecture?"
            )
        spec = plan[t.name].sharding_spec
        if not isinstance(spec, EnumerableShardingSpec):
            continue  # data parallel: a full replica on each rank, nothing to compare
        # Table-, column- and row-wise shards all tile the table: its extent is the farthest shard corner.
        rows = max(s.shard_offsets[0] + s.shard_sizes[0] for s in spec.shards)
        dim = max(s.shard_offsets[1] + s.shard_sizes[1] for s in spec.shards)
        if (rows, dim) != (t.num_embeddings, t.embedding_dim):
            raise UserError(
                f"{source}: table '{t.name}' is planned as {rows} x {dim} but the architecture has "
                f"{t.num_embeddings} x {t.embedding_dim}. Was the plan made for another architecture?"
            )


def plan_for_job(path: str, arch: Any, module_path: str, world_size: int, device: str) -> ShardingPlan:
    """A plan file (`torchrec-aes plan RUN ...`, `save_plan`) made usable for this job, or a one-line error
    naming what differs: the tables and their sizes, the world size, the device.

    Args:
        path: the plan file.
        arch: the architecture this job trains.
        module_path: where this job's model holds its EBC (the plan's one module is moved there).
        world_size: this job's ranks.
        device: this job's compute device type ("cpu" | "cuda").
    """
    plan = load_plan(path)
    if len(plan.plan) != 1:
        raise UserError(f"{path}: plans {len(plan.plan)} modules ({', '.join(plan.plan)}); expected one EBC")
    ((_, module_plan),) = plan.plan.items()
    check_plan_covers(module_plan, arch, path)
    extra = sorted(set(module_plan) - {t.name for t in arch.active_tables})  # type: ignore[arg-type]
    if extra:
        raise UserError(f"{path}: plans tables {extra} that this architecture does not have")
    ranks = [r for ps in module_plan.values() for r in (ps.ranks or [])]  # type: ignore[attr-defined]
    if ranks and max(ranks) + 1 != world_size:
        raise UserError(
            f"{path}: planned for {max(ranks) + 1} ranks (placements up to rank {max(ranks)}); this job has "
            f"{world_size} (plan again with `torchrec-aes plan RUN --world-size {world_size}`)"
        )
    for name, ps in module_plan.items():  # type: ignore[attr-defined]
        spec = ps.sharding_spec
        if isinstance(spec, EnumerableShardingSpec):
            for shard in spec.shards:
                placed = shard.placement.device().type if shard.placement is not None else device
                if placed != device:
                    raise UserError(
                        f"{path}: table '{name}' is placed on {placed}; this job runs on {device}"
                    )
    return ShardingPlan({module_path: module_plan})
