"""Memory accounting of architectures, and budgets.

"Bytes" of a table means what TorchRec's planner says the table costs in storage: weights plus the state of
the fused table optimizer, as `EmbeddingStorageEstimator` computes it. We ask TorchRec rather than
re-deriving the formula, so the bytes a search budgets are the bytes the planner later places.

The estimate is taken in one canonical, topology-independent setting, so that a table's bytes do not depend
on where it will run:

* world size 1, compute device ``cpu`` (all storage lands in DDR), sharding ``table_wise``, kernel
  ``fused`` -- one shard that holds the whole table, with FBGEMM's fused optimizer state;
* batch size 0, so the estimator's per-batch input/output buffers are zero. They depend on batch size,
  pooling factors and topology, not on the architecture a search picks, and the planner accounts for them
  itself when it places the tables (see `planning.plan`);
* the optimizer attached with `_apply_optimizer_in_backward` on an `EmbeddingBagCollection` built on the
  meta device -- TorchRec only counts optimizer state it can see on the parameter.

For the optimizers we use, that gives (and `tests/unit/test_memory.py` checks) row-wise Adagrad
``rows * dim * 4 + rows * 4``, Adagrad ``2 * rows * dim * 4`` and SGD ``rows * dim * 4``: deterministic and
monotone in ``dim``. A table of dim 0 is dropped and costs 0. A table the planner must keep data-parallel
(dim not a multiple of 4) is still counted once: replicas are a placement cost, shown per rank by
`planning.plan.plan_summary`, not a property of the architecture.

``count="params"`` counts ``rows * dim`` instead (the papers' convention), without optimizer state.

``count="serving"`` counts what serving holds: the table in its serving precision (fp32, fp16, or row-wise
quantized int8 / int4 with its per-row scale and bias) as TorchRec's inference path stores it -- the
`EmbeddingStorageEstimator(is_inference=True)` estimate of a `QuantEmbeddingBagCollection` with the QUANT
kernel, in the same canonical setting; no optimizer state.

Searches call this thousands of times, so TorchRec is asked once per distinct (rows, dim, optimizer) and
the answer cached; `warm_cache` asks for a whole candidate grid in one call.

Example::

    arch = Architecture.uniform(schema, 16)
    arch_bytes(arch)                            # int, TorchRec's storage estimate
    budget = Budget.parse("0.5 x uniform-64", schema)
    budget.fits(arch), budget.slack(arch)
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.distributed.optim import _apply_optimizer_in_backward
from torchrec.distributed.embedding_types import EmbeddingComputeKernel
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.planner import ParameterConstraints, Topology
from torchrec.distributed.planner.enumerators import EmbeddingEnumerator
from torchrec.distributed.planner.shard_estimators import EmbeddingStorageEstimator
from torchrec.distributed.planner.types import KernelConfig, TopologyFactory, TrainerConfig
from torchrec.distributed.quant_embeddingbag import QuantEmbeddingBagCollectionSharder
from torchrec.distributed.types import ShardingType
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.optim import RowWiseAdagrad
from torchrec.quant.embedding_modules import EmbeddingBagCollection as QuantEmbeddingBagCollection

from torchrec_aes.architecture import TORCHREC_DATA_TYPES, Architecture, training_type
from torchrec_aes.data.schema import Schema

OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    # DMP maps these classes onto FBGEMM's fused EXACT_ROWWISE_ADAGRAD / EXACT_ADAGRAD / EXACT_SGD.
    "rowwise_adagrad": RowWiseAdagrad,
    "adagrad": torch.optim.Adagrad,
    "sgd": torch.optim.SGD,
}
COUNTS = ("bytes", "params", "serving")


def _check_optimizer(optimizer: str) -> None:
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown table optimizer '{optimizer}'; allowed: {', '.join(OPTIMIZERS)}")


def _check_count(count: str) -> None:
    if count not in COUNTS:
        raise ValueError(f"unknown count '{count}'; allowed: {', '.join(COUNTS)}")


def attach_table_optimizer(module: nn.Module, optimizer: str, lr: float = 0.01) -> None:
    """Attaches the fused table optimizer to every parameter of `module` (usually an EBC).

    Uses `_apply_optimizer_in_backward`, the form DMP turns into FBGEMM's fused optimizer and the only one
    the planner's storage estimate sees.

    Args:
        module: the embedding module (any device, including meta).
        optimizer: one of `OPTIMIZERS`.
        lr: learning rate.
    """
    _check_optimizer(optimizer)
    _apply_optimizer_in_backward(OPTIMIZERS[optimizer], module.parameters(), {"lr": lr})


def meta_ebc(configs: Sequence[EmbeddingBagConfig], optimizer: str | None) -> EmbeddingBagCollection:
    """An `EmbeddingBagCollection` on the meta device (no weights allocated), optimizer attached.

    Args:
        configs: the tables.
        optimizer: one of `OPTIMIZERS`, or None for weights only.
    """
    ebc = EmbeddingBagCollection(tables=list(configs), device=torch.device("meta"))
    if optimizer is not None:
        attach_table_optimizer(ebc, optimizer)
    return ebc


def _canonical_topology() -> Topology:
    return TopologyFactory.create_topology(
        trainer_config=TrainerConfig(world_size=1), kernel_config=KernelConfig(compute_device="cpu")
    )


# (rows, dim, optimizer, data type) -> bytes, filled by `_estimate`.
_CACHE: dict[tuple[int, int, str, str], int] = {}


def _estimate(keys: Iterable[tuple[int, int] | tuple[int, int, str]], optimizer: str) -> None:
    """Asks TorchRec for the storage of every (rows, dim[, data type]) not cached yet, in one enumeration
    (`optimizer` "serving": the inference estimate of the quantized tables)."""
    full = {(k[0], k[1], k[2] if len(k) > 2 else "fp32") for k in keys}  # type: ignore[misc]
    missing = sorted(k for k in full if k[1] > 0 and (k[0], k[1], optimizer, k[2]) not in _CACHE)
    if not missing:
        return
    serving = optimizer == "serving"
    configs = [
        EmbeddingBagConfig(
            name=f"t{i}",
            embedding_dim=d,
            num_embeddings=r,
            feature_names=[f"f{i}"],
            pooling=PoolingType.SUM,
            data_type=TORCHREC_DATA_TYPES[dt if serving else training_type(dt)],
        )
        for i, (r, d, dt) in enumerate(missing)
    ]
    topology = _canonical_topology()
    kernel = EmbeddingComputeKernel.QUANT if serving else EmbeddingComputeKernel.FUSED
    constraints = {
        c.name: ParameterConstraints(
            sharding_types=[ShardingType.TABLE_WISE.value], compute_kernels=[kernel.value]
        )
        for c in configs
    }
    # Batch size 0 zeroes the estimator's input/output buffers (see the module docstring).
    enumerator = EmbeddingEnumerator(
        topology=topology,
        batch_size=0,
        constraints=constraints,
        estimator=[
            EmbeddingStorageEstimator(topology=topology, constraints=constraints, is_inference=serving)
        ],
    )
    if serving:
        module: nn.Module = QuantEmbeddingBagCollection(
            configs, is_weighted=False, device=torch.device("meta")
        )
        options = enumerator.enumerate(module, [QuantEmbeddingBagCollectionSharder()])  # type: ignore[list-item]
    else:
        options = enumerator.enumerate(meta_ebc(configs, optimizer), [EmbeddingBagCollectionSharder()])
    by_name = {o.name: o for o in options}
    for c, (r, d, dt) in zip(configs, missing, strict=True):
        (shard,) = by_name[c.name].shards
        assert shard.storage is not None and shard.storage.hbm == 0
        _CACHE[(r, d, optimizer, dt)] = int(shard.storage.ddr)


def warm_cache(
    rows: Iterable[int],
    dims: Iterable[int],
    optimizer: str = "rowwise_adagrad",
    data_types: Sequence[str] = ("fp32",),
) -> None:
    """Estimates every (rows, dim, data type) combination in one TorchRec call, e.g. a schema x candidate
    grid (`optimizer="serving"`: the serving estimate)."""
    if optimizer != "serving":
        _check_optimizer(optimizer)
    dims = list(dims)
    _estimate([(r, d, dt) for r in rows for d in dims for dt in data_types], optimizer)


def table_storage(
    num_embeddings: int,
    embedding_dim: int,
    optimizer: str = "rowwise_adagrad",
    count: str = "bytes",
    data_type: str = "fp32",
) -> int:
    """Bytes (or parameters) of one table of `num_embeddings` x `embedding_dim` stored in `data_type`;
    0 for dim 0. TorchRec counts the weights at the element size of the precision the table trains in
    (fp16: 2 bytes; int8 / int4 tables train in fp32) and the fused optimizer's state as it keeps it
    (row-wise Adagrad: one fp32 per row); `count="serving"`: the weights as served (module docstring)."""
    _check_count(count)
    _check_optimizer(optimizer)
    if embedding_dim <= 0:
        return 0
    if count == "params":
        return num_embeddings * embedding_dim
    if count == "serving":
        optimizer = "serving"
    key = (num_embeddings, embedding_dim, optimizer, data_type)
    if key not in _CACHE:
        _estimate([(num_embeddings, embedding_dim, data_type)], optimizer)
    return _CACHE[key]


def table_bytes(
    arch: Architecture, optimizer: str = "rowwise_adagrad", count: str = "bytes"
) -> dict[str, int]:
    """Bytes (or parameters) of every table of `arch`, by table name (dropped tables: 0)."""
    _check_count(count)
    _check_optimizer(optimizer)
    if count != "params":
        keys = [(t.num_embeddings, t.embedding_dim, t.data_type) for t in arch.tables]
        _estimate(keys, "serving" if count == "serving" else optimizer)
    return {
        t.name: table_storage(t.num_embeddings, t.embedding_dim, optimizer, count, t.data_type)
        for t in arch.tables
    }


def arch_bytes(arch: Architecture, optimizer: str = "rowwise_adagrad", count: str = "bytes") -> int:
    """Total bytes (or parameters) of the tables of `arch`."""
    return sum(table_bytes(arch, optimizer, count).values())


# ---------------------------------------------------------------------------------------------------------
# Human units
# ---------------------------------------------------------------------------------------------------------

_BYTE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_PARAM_UNITS = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "b": 1000**3}
_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)(?:e[+-]?\d+)?"


def format_bytes(n: int) -> str:
    """`n` bytes in binary units, e.g. "1.50 GiB" (negative values keep their sign)."""
    sign, value = ("-" if n < 0 else ""), float(abs(n))
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{sign}{value:.0f} {unit}" if unit == "B" else f"{sign}{value:.2f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_amount(n: int, count: str = "bytes") -> str:
    """`n` bytes as "123456 B (120.56 KiB)", or `n` parameters as "123456 params (0.12M)"."""
    if count == "params":
        return f"{n} params ({n / 1e6:.2f}M)"
    return f"{n} B ({format_bytes(n)})"


_MAX_AMOUNT = 2**63 - 1
"""Larger sizes are typos (an int64 holds every real memory size)."""


def _amount(number: str, unit_size: int, text: str) -> int:
    """`number` x `unit_size` as an int; a ValueError for infinite or absurdly large values (e.g. 1e400)."""
    value = float(number) * unit_size
    if not math.isfinite(value) or value > _MAX_AMOUNT:
        raise ValueError(f"'{text}' is too large (at most {_MAX_AMOUNT:.3g})")
    return int(value)


def parse_bytes(text: str) -> int:
    """Parses "123456", "800MB" (decimal, 10^6), "64KiB", "1.5GiB" (binary, 2^30) into bytes.

    Raises:
        ValueError: not a number with a known unit, or too large (e.g. "1e400").
    """
    m = re.fullmatch(rf"\s*({_NUMBER})\s*([a-zA-Z]*)\s*", str(text))
    unit = m.group(3).lower() if m else ""
    if not m or unit not in _BYTE_UNITS:
        raise ValueError(
            f"'{text}' is not a byte size; expected a number with an optional unit "
            f"(B, KB, MB, GB, TB = powers of 1000; KiB, MiB, GiB, TiB = powers of 1024), e.g. '1.5GiB'"
        )
    return _amount(m.group(1), _BYTE_UNITS[unit], str(text))


def _parse_params(text: str) -> int:
    m = re.fullmatch(rf"\s*({_NUMBER})\s*([a-zA-Z]*)\s*", text)
    unit = m.group(3).lower() if m else ""
    if not m or unit not in _PARAM_UNITS:
        raise ValueError(f"'{text}' is not a parameter count; expected e.g. '123456', '500K', '1.5M'")
    return _amount(m.group(1), _PARAM_UNITS[unit], text)


# ---------------------------------------------------------------------------------------------------------
# Budget
# ---------------------------------------------------------------------------------------------------------

_BUDGET_FORMS = (
    "a size ('123456', '800MB', '64KiB', '1.5GiB'; with count=params: '123456', '500K', '1.5M'), "
    "a fraction of a reference architecture ('0.5 x uniform-64', '25% of uniform-64', "
    "'0.5 x runs/x/architecture.yaml') or a topology total ('8 x 16GiB' = world size x per-device cap)"
)


def _reference_arch(ref: str, schema: Schema) -> Architecture | None:
    m = re.fullmatch(r"uniform-(\d+)", ref)
    if m:
        return Architecture.uniform(schema, int(m.group(1)))
    if ref.endswith((".yaml", ".yml")):
        if not os.path.exists(ref):
            raise ValueError(f"reference architecture file {ref} does not exist")
        return Architecture.load(ref)
    return None


@dataclass
class Budget:
    """A memory budget for the embedding tables.

    Args:
        bytes: the budget: bytes of TorchRec's storage estimate for training (`count="bytes"`) or for
            serving (`count="serving"`), or parameters (`count="params"`).
        count: what `bytes` counts: "bytes", "serving" or "params".
        optimizer: the table optimizer whose state is counted (bytes only).
        text: the string it was parsed from, for messages.

    Example::

        budget = Budget.parse("0.5 x uniform-64", schema)
        budget.check_feasible(schema, candidates=[4, 8, 16, 32, 64])
        assert budget.fits(arch)
    """

    bytes: int
    count: str = "bytes"
    optimizer: str = "rowwise_adagrad"
    text: str = ""

    def __post_init__(self) -> None:
        _check_count(self.count)
        _check_optimizer(self.optimizer)

    @classmethod
    def parse(
        cls, text: str, schema: Schema, optimizer: str = "rowwise_adagrad", count: str = "bytes"
    ) -> Budget:
        """Parses a budget string (see `_BUDGET_FORMS`); a bad one raises ValueError listing the forms.

        A topology total ("8 x 16GiB") is the sum of the device caps: a budget for the tables in total, not
        a guarantee that the planner can place them (it also reserves memory per device).
        """
        _check_count(count)
        _check_optimizer(optimizer)
        s = str(text).strip()
        try:
            m = re.fullmatch(rf"({_NUMBER})\s*%\s*of\s+(\S+)", s, flags=re.IGNORECASE)
            if m:
                factor, ref_text = float(m.group(1)) / 100, m.group(3)
                return cls._of_reference(factor, ref_text, schema, optimizer, count, s)
            m = re.fullmatch(rf"({_NUMBER})\s*[x*]\s*(\S.*)", s, flags=re.IGNORECASE)
            if m:
                factor, rhs = float(m.group(1)), m.group(3).strip()
                if rhs.lower().startswith("uniform") or rhs.endswith((".yaml", ".yml")):
                    return cls._of_reference(factor, rhs, schema, optimizer, count, s)
                if count == "params":
                    raise ValueError("a topology budget needs count=bytes or serving")
                if not factor.is_integer() or not 1 <= factor <= 2**20:
                    raise ValueError(f"world size {m.group(1)} must be an integer in [1, 2^20]")
                amount = int(factor) * parse_bytes(rhs)
            else:
                amount = _parse_params(s) if count == "params" else parse_bytes(s)
            if amount <= 0:
                raise ValueError(f"{format_amount(amount, count)} must be positive")
            return cls(amount, count, optimizer, s)
        except ValueError as e:
            raise ValueError(f"budget '{text}': {e}. Accepted forms: {_BUDGET_FORMS}") from None

    @classmethod
    def _of_reference(
        cls, factor: float, ref: str, schema: Schema, optimizer: str, count: str, text: str
    ) -> Budget:
        arch = _reference_arch(ref, schema)
        if arch is None:
            raise ValueError(f"unknown reference architecture '{ref}' (use uniform-<dim> or a .yaml file)")
        if not 0 < factor <= 1e6:
            raise ValueError(f"fraction {factor:g} must be positive and at most 1e6")
        return cls(math.floor(factor * arch_bytes(arch, optimizer, count)), count, optimizer, text)

    def used(self, arch: Architecture) -> int:
        """What `arch` costs in this budget's unit: everything its kind needs to serve."""
        return arch_bytes(arch, self.optimizer, self.count)

    def fits(self, arch: Architecture) -> bool:
        """True if `arch` costs at most the budget."""
        return self.used(arch) <= self.bytes

    def slack(self, arch: Architecture) -> int:
        """Budget left after `arch` (negative if over)."""
        return self.bytes - self.used(arch)

    def check_feasible(self, schema: Schema, candidates: Sequence[int], data_type: str = "fp32") -> int:
        """Raises ValueError if even every table at the smallest candidate dim (in `data_type`) exceeds
        the budget.

        Returns:
            The cost of that smallest architecture.
        """
        if not candidates:
            raise ValueError("no candidate dims given")
        smallest = min(candidates)
        arch = Architecture.uniform(schema, smallest, data_type)
        return self.check_floor(arch, f"every table at dim {smallest} in {data_type}")

    def check_floor(self, smallest: Architecture, what: str) -> int:
        """Raises ValueError if `smallest` (described by `what`) exceeds the budget; returns its cost."""
        minimum = self.used(smallest)
        if minimum > self.bytes:
            raise ValueError(
                f"budget '{self.text or self.bytes}' = {format_amount(self.bytes, self.count)} is below the "
                f"smallest possible architecture ({what}), which needs {format_amount(minimum, self.count)}"
            )
        return minimum

    def __str__(self) -> str:
        return format_amount(self.bytes, self.count)
