"""`Architecture`: the one contract between search, train, plan and export.

An architecture is a list of TorchRec tables (name, feature names, rows, dim) plus what the search
recorded (method, budget, measured bytes, seed, schema hash) and kind-specific extras (BET's row-size
file, iHAS's groups, NASRec's block graph) under `extra`. Stored as `architecture.yaml`.

Its `kind` says how it deploys, and every consumer dispatches on it (never on `extra` or the data):

* `tables` -- one table per feature at its dim (uniform, power_rule, AdaS&S); trained as listed.
* `rowwise` -- per-row sizes (BET): the tables are size buckets with an id remap (`row_dims.npy`,
  `row_remap.npy` beside the file); trained in the masked form (d_max tables + per-row prefix masks).
* `grouped` -- instance-wise groups (iHAS, `models/grouped.py`): group tables + a router's tables
  (`router.pt` beside the file), the groups' dims under `extra.groups`; trained as one `GroupedModel`.
* `blocks` -- a block graph over one table per feature (NASRec, `models/blocks.py`): the graph under
  `extra.blocks` and its space under `extra.space`; trained as a `BlockNet`.
* `frequency` -- each feature's ids, ranked by training frequency, cut into buckets with their own table,
  dim and rows (MDE's blocks, hashed tails; `models/frequency.py`): the bucket ends under
  `extra.frequency`; trained as listed, the task remapping ids into the buckets.

A kind (`ArchKind`) checks an architecture against the data, gives its training form and carries its side
files into a new run; its bytes are those of its tables, which list everything serving needs.

Example::

    arch = Architecture.uniform(schema, 16)
    configs = arch.to_ebc_configs()  # list[EmbeddingBagConfig] for torchrec.EmbeddingBagCollection
    arch.save("runs/x/architecture.yaml")
"""

from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import yaml
from torchrec.modules.embedding_configs import DataType, EmbeddingBagConfig, EmbeddingConfig, PoolingType

from torchrec_aes.data.schema import Schema
from torchrec_aes.errors import UserError, yaml_error
from torchrec_aes.io import join, read_text, write_text_atomic

DATA_TYPES = ("fp32", "fp16")
"""Table precisions that train (FBGEMM's fused kernels, CPU and GPU)."""

SERVING_TYPES = ("int8", "int4")
"""Row-wise quantized precisions of TorchRec's inference path (`QuantEmbeddingBagCollection`): a table in
one of them trains in fp32 and is quantized for serving; its test metrics are the quantized model's."""

TABLE_TYPES = DATA_TYPES + SERVING_TYPES

TORCHREC_DATA_TYPES = {
    "fp32": DataType.FP32,
    "fp16": DataType.FP16,
    "int8": DataType.INT8,
    "int4": DataType.INT4,
}


POOLING_TYPES = {"sum": PoolingType.SUM, "mean": PoolingType.MEAN}
"""A table's `pooling` as TorchRec's `PoolingType`."""


def training_type(data_type: str) -> str:
    """The precision a table of `data_type` trains in (serving types train in fp32)."""
    return "fp32" if data_type in SERVING_TYPES else data_type


def check_data_type(value: object, where: str) -> str:
    """`value` if it is a precision tables train in, else a one-line ValueError naming `where`."""
    if value in DATA_TYPES:
        return str(value)
    if value in SERVING_TYPES:
        raise ValueError(
            f"{where}: '{value}' is a serving-only precision (TorchRec's quantized inference path); "
            f"tables that train are one of {', '.join(DATA_TYPES)}"
        )
    raise ValueError(f"{where}: '{value}' is not one of {', '.join(DATA_TYPES)}")


def check_table_type(value: object, where: str) -> str:
    """`value` if it is a table precision of an architecture (trained, or quantized for serving)."""
    if value in TABLE_TYPES:
        return str(value)
    raise ValueError(f"{where}: '{value}' is not one of {', '.join(TABLE_TYPES)}")


@dataclass
class TableArch:
    """One embedding table.

    Args:
        name: table name (`t_<feature>` by default).
        feature_names: features looked up in this table.
        num_embeddings: rows.
        embedding_dim: columns; 0 drops the table (its features are not used).
        data_type: storage precision of the weights: "fp32" or "fp16" (`EmbeddingBagConfig.data_type`;
            the fused optimizer's state stays fp32), or "int8" / "int4": trained in fp32, served row-wise
            quantized by TorchRec's inference path (test metrics are the quantized model's).
        pooling: "sum" or "mean" over a feature's bag of ids (the features' `data.pooling`).
        collection: "" for a pooled table (an `EmbeddingBagCollection`'s); else the name of the user's
            `EmbeddingCollection` it is in (a sequence table: looked up per id, not pooled). TorchRec's
            `EmbeddingCollection` needs one dim for all its tables: a collection's active tables share one.
    """

    name: str
    feature_names: list[str]
    num_embeddings: int
    embedding_dim: int
    data_type: str = "fp32"
    pooling: str = "sum"
    collection: str = ""


@dataclass
class Architecture:
    """Per-table sizes plus provenance.

    Args:
        tables: the tables, in schema order.
        method: the search method (or "uniform" for a hand-made one).
        budget_bytes: the budget the search had, if any.
        embedding_bytes: TorchRec's storage estimate of the tables (weights + optimizer state).
        seed: the search seed.
        schema_hash: `Schema.hash()` of the data it was searched on.
        extra: kind-specific fields (documented per kind).
        kind: how it deploys: one of `kind_names()` (see the module docstring).
    """

    tables: list[TableArch]
    method: str = "uniform"
    budget_bytes: int | None = None
    embedding_bytes: int | None = None
    seed: int | None = None
    schema_hash: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    kind: str = "tables"

    @classmethod
    def uniform(cls, schema: Schema, dim: int, data_type: str = "fp32") -> Architecture:
        """Every table at `dim` (all tables in `data_type`): one per sparse feature, or shared."""
        return cls.from_dims(schema, [dim] * len(schema.tables), method="uniform", data_types=data_type)

    @classmethod
    def from_dims(
        cls,
        schema: Schema,
        dims: list[int],
        method: str = "uniform",
        data_types: str | list[str] = "fp32",
    ) -> Architecture:
        """The schema's tables (`Schema.tables`: one per sparse feature unless features share one) with
        the given dims (in that order) and precision(s)."""
        groups = schema.tables
        if len(dims) != len(groups):
            what = "tables" if schema.has_shared_tables else "sparse features"
            raise ValueError(f"got {len(dims)} dims for {len(groups)} {what}")
        types = [data_types] * len(dims) if isinstance(data_types, str) else list(data_types)
        for t in types:
            check_table_type(t, "data_type")
        tables = [
            TableArch(
                f"t_{key}",
                list(names),
                rows,
                int(d),
                dt,
                schema.feature(names[0]).pooling,
                schema.feature(names[0]).collection,
            )
            for (key, names), rows, d, dt in zip(groups, schema.table_rows, dims, types, strict=True)
        ]
        return cls(tables=tables, method=method, schema_hash=schema.hash())

    @property
    def dims(self) -> list[int]:
        return [t.embedding_dim for t in self.tables]

    @property
    def active_tables(self) -> list[TableArch]:
        return [t for t in self.tables if t.embedding_dim > 0]

    def with_dims(self, dims: list[int], **changes: Any) -> Architecture:
        """A copy with new per-table dims (and optionally other fields changed)."""
        if len(dims) != len(self.tables):
            raise ValueError(f"got {len(dims)} dims for {len(self.tables)} tables")
        tables = [replace(t, embedding_dim=int(d)) for t, d in zip(self.tables, dims, strict=True)]
        return replace(self, tables=tables, **changes)

    @property
    def collections(self) -> dict[str, list[TableArch]]:
        """{collection: its tables} of the sequence tables (`TableArch.collection`), in table order."""
        out: dict[str, list[TableArch]] = {}
        for t in self.tables:
            if t.collection:
                out.setdefault(t.collection, []).append(t)
        return out

    def tied(self) -> Architecture:
        """A copy in which each collection's active tables share one dim: the rows-weighted mean of their
        dims, rounded down to a multiple of 4 (never below their smallest dim). Its tables then cost no
        more than before (a table's bytes grow linearly with its dim), so a budget that held still holds;
        tables of dim 0 stay dropped. How per-table methods (the power rule) respect an
        `EmbeddingCollection`; searches that choose per collection (AdaS&S) need no tying."""
        dims: dict[str, int] = {}
        for name, tables in self.collections.items():
            active = [t for t in tables if t.embedding_dim > 0]
            if len({t.embedding_dim for t in active}) > 1:
                rows = sum(t.num_embeddings for t in active)
                mean = sum(t.num_embeddings * t.embedding_dim for t in active) / rows
                dims[name] = max(int(mean // 4) * 4, min(t.embedding_dim for t in active))
        if not dims:
            return self
        tables = [
            replace(t, embedding_dim=dims[t.collection])
            if t.collection in dims and t.embedding_dim > 0
            else t
            for t in self.tables
        ]
        return replace(self, tables=tables)

    def check_collections(self, source: str = "architecture") -> None:
        """A one-line ValueError naming the collection whose active tables have different dims."""
        for name, tables in self.collections.items():
            dims = {t.name: t.embedding_dim for t in tables if t.embedding_dim > 0}
            if len(set(dims.values())) > 1:
                listed = ", ".join(f"{k} {v}" for k, v in dims.items())
                raise ValueError(
                    f"{source}: the tables of EmbeddingCollection '{name}' have dims {listed}; TorchRec's "
                    "EmbeddingCollection needs one dim for all its tables"
                )

    @property
    def data_types(self) -> list[str]:
        return [t.data_type for t in self.tables]

    def to_ebc_configs(self) -> list[EmbeddingBagConfig]:
        """`EmbeddingBagConfig`s of the active pooled tables (dim > 0; not the sequence tables of
        `collections`), each with its pooling and in the precision it trains in (`training_type`)."""
        return [
            EmbeddingBagConfig(
                name=t.name,
                embedding_dim=t.embedding_dim,
                num_embeddings=t.num_embeddings,
                feature_names=list(t.feature_names),
                pooling=POOLING_TYPES[t.pooling],
                data_type=TORCHREC_DATA_TYPES[training_type(t.data_type)],
            )
            for t in self.active_tables
            if not t.collection
        ]

    def to_ec_configs(self) -> dict[str, list[EmbeddingConfig]]:
        """{collection: `EmbeddingConfig`s of its active tables} (dim > 0, in their training precision);
        a collection whose tables are all dropped is left out."""
        out: dict[str, list[EmbeddingConfig]] = {}
        for name, tables in self.collections.items():
            configs = [
                EmbeddingConfig(
                    name=t.name,
                    embedding_dim=t.embedding_dim,
                    num_embeddings=t.num_embeddings,
                    feature_names=list(t.feature_names),
                    data_type=TORCHREC_DATA_TYPES[training_type(t.data_type)],
                )
                for t in tables
                if t.embedding_dim > 0
            ]
            if configs:
                out[name] = configs
        return out

    @property
    def served_types(self) -> dict[str, str]:
        """{table name: int8 | int4} of the active tables that serve quantized."""
        return {t.name: t.data_type for t in self.active_tables if t.data_type in SERVING_TYPES}

    def check_schema(self, schema: Schema, source: str = "architecture") -> None:
        """Raises ValueError if the tables do not match the data: a feature the data does not have, a
        feature of the data without a table (a dropped feature is a table of dim 0), a feature in two
        tables, or a table with fewer rows than the feature's ids."""
        known = {f.name: f.num_embeddings for f in schema.sparse}
        pooling = schema.pooling
        seen: dict[str, str] = {}
        for t in self.tables:
            for name in t.feature_names:
                if name not in known:
                    raise ValueError(
                        f"{source}: table '{t.name}' uses feature '{name}', which the data does not have "
                        f"(features: {', '.join(known)})"
                    )
                if name in seen:
                    raise ValueError(
                        f"{source}: feature '{name}' is in two tables, '{seen[name]}' and '{t.name}'; "
                        "expected exactly one table per feature"
                    )
                seen[name] = t.name
                if t.pooling != pooling[name]:
                    raise ValueError(
                        f"{source}: table '{t.name}' pools by {t.pooling} but feature '{name}' pools by "
                        f"{pooling[name]} (data.pooling)"
                    )
                if t.collection != (have := schema.feature(name).collection):
                    where = f"EmbeddingCollection '{have}'" if have else "a pooled (EBC) table"
                    raise ValueError(
                        f"{source}: table '{t.name}' is in collection '{t.collection or '(none)'}' but "
                        f"feature '{name}' is in {where}"
                    )
                if t.num_embeddings < known[name]:
                    raise ValueError(
                        f"{source}: table '{t.name}' has {t.num_embeddings} rows but feature '{name}' "
                        f"has ids up to {known[name] - 1}"
                    )
            if t.embedding_dim < 0:
                raise ValueError(f"{source}: table '{t.name}' has negative embedding_dim {t.embedding_dim}")
        missing = [name for name in known if name not in seen]
        if missing:
            raise ValueError(
                f"{source}: no table for data feature(s) {', '.join(missing)} "
                f"({len(self.tables)} tables for {len(known)} features); expected one table per feature "
                "(embedding_dim 0 drops a feature)"
            )

    def to_dict(self) -> dict:
        data = asdict(self)
        for t in data["tables"]:  # defaults are left out: files stay as they were for one-hot data
            if t["pooling"] == "sum":
                del t["pooling"]
            if not t["collection"]:
                del t["collection"]
        return data

    @classmethod
    def from_dict(cls, data: dict, source: str = "architecture") -> Architecture:
        """The inverse of `to_dict`; every error is a one-line ValueError naming `source` and the key.

        `num_tables` (written by `save`) is checked against the tables read, so a file cut at a table
        boundary is refused; dicts without it (older files, hand-made ones) are accepted.
        """
        if not isinstance(data, dict) or not isinstance(data.get("tables"), list):
            raise ValueError(f"{source}: expected a mapping with a 'tables' list")
        allowed = {"name", "feature_names", "num_embeddings", "embedding_dim"}
        tables = []
        for i, t in enumerate(data["tables"]):
            where = f"{source}: tables[{i}]"
            optional = {"data_type", "pooling", "collection"}
            if not isinstance(t, dict) or not allowed <= set(t) <= allowed | optional:
                keys = sorted(t) if isinstance(t, dict) else repr(t)
                raise ValueError(
                    f"{where} has keys {keys}; expected {sorted(allowed)} and optionally 'data_type', "
                    "'pooling', 'collection'"
                )
            pooling = t.get("pooling", "sum")
            if pooling not in POOLING_TYPES:
                raise ValueError(f"{where}.pooling: {pooling!r}; expected one of {', '.join(POOLING_TYPES)}")
            names = t["feature_names"]
            if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
                raise ValueError(f"{where}.feature_names: {names!r}; expected a non-empty list of names")
            tables.append(
                TableArch(
                    _text(t["name"], f"{where}.name"),
                    list(names),
                    _integer(t["num_embeddings"], f"{where}.num_embeddings", minimum=1),
                    _integer(t["embedding_dim"], f"{where}.embedding_dim", minimum=0),
                    check_table_type(t.get("data_type", "fp32"), f"{where}.data_type"),
                    pooling,
                    _text(t["collection"], f"{where}.collection") if "collection" in t else "",
                )
            )
        names = [t.name for t in tables]
        if len(set(names)) != len(names):
            twice = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"{source}: table names {twice} appear more than once; expected unique names")
        top = {k: v for k, v in data.items() if k not in ("tables", "num_tables")}
        allowed_top = {"method", "budget_bytes", "embedding_bytes", "seed", "schema_hash", "extra", "kind"}
        if set(top) - allowed_top:
            raise ValueError(
                f"{source}: unknown keys {sorted(set(top) - allowed_top)}; allowed: "
                f"{', '.join(sorted(allowed_top | {'tables', 'num_tables'}))}"
            )
        if "num_tables" in data:
            count = _integer(data["num_tables"], f"{source}: num_tables", minimum=0)
            if count != len(tables):
                raise ValueError(
                    f"{source}: has {len(tables)} tables but num_tables says {count}; the file is truncated "
                    "or was edited (after editing tables by hand, fix or delete num_tables)"
                )
        for key in ("budget_bytes", "embedding_bytes", "seed"):
            if top.get(key) is not None:
                top[key] = _integer(top[key], f"{source}: {key}", minimum=0)
        if not isinstance(top.get("extra") or {}, dict):
            raise ValueError(f"{source}: extra: {top['extra']!r}; expected a mapping")
        if "kind" not in top:  # files written before kinds existed: BET's were the row-wise ones
            top["kind"] = "rowwise" if "row_dims" in (top.get("extra") or {}) else "tables"
        if top["kind"] not in kind_names():
            raise ValueError(f"{source}: kind '{top['kind']}' is not one of {', '.join(kind_names())}")
        arch = cls(tables=tables, **top)
        arch.check_collections(source)
        return arch

    def save(self, path: str) -> None:
        """Writes `architecture.yaml` atomically: `num_tables` and the provenance first and the tables
        last, so that `load` detects a file cut short (a missing table, or a last line cut mid-way)."""
        data = self.to_dict()
        tables = data.pop("tables")
        text = yaml.safe_dump({"num_tables": len(tables), **data, "tables": tables}, sort_keys=False)
        write_text_atomic(path, text)

    @classmethod
    def load(cls, path: str) -> Architecture:
        """Reads a file written by `save` (or by hand, without `num_tables`).

        Raises:
            FileNotFoundError: no such file.
            ValueError: not UTF-8, not valid YAML (naming the line), truncated, or not an architecture.
        """
        try:
            text = read_text(path)
        except UnicodeDecodeError as e:
            raise UserError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from None
        except IsADirectoryError:
            raise UserError(f"{path}: is a directory (expected an architecture.yaml)") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise yaml_error(path, e) from None
        if isinstance(data, dict) and "num_tables" in data and not text.endswith("\n"):
            raise UserError(f"{path}: truncated (the last line is cut short)")
        return cls.from_dict(data, source=path)


def _integer(value: Any, where: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{where}: {value!r}; expected an integer >= {minimum}")
    return value


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{where}: {value!r}; expected a non-empty name")
    return value


# ---------------------------------------------------------------------------------------------------------
# Kinds
# ---------------------------------------------------------------------------------------------------------


ARCHITECTURE_FILE = "architecture.yaml"


def architecture_file(path_or_run_dir: str) -> str:
    """The architecture file named by a path: the file itself, or `architecture.yaml` in a run directory."""
    return (
        path_or_run_dir
        if path_or_run_dir.endswith((".yaml", ".yml"))
        else join(path_or_run_dir, ARCHITECTURE_FILE)
    )


class ArchKind:
    """How one kind of architecture is checked, trained and carried (this base class is the `tables`
    kind). An architecture's tables list everything serving it needs (a grouped architecture lists its
    router's tables too), so its bytes are TorchRec's estimate of those tables for every kind
    (`planning.memory.arch_bytes`).

    Consumers call `kind_of(arch)` and these methods. A kind lives with its model (`models/rowwise.py`,
    `models/grouped.py`, `models/blocks.py`) and registers itself with `register_kind` when its module is
    imported; `kind_of` imports the built-in ones by name (`BUILTIN_KINDS`), so this contract never
    imports its implementations.
    """

    name = "tables"

    def training_form(self, arch: Architecture, source: str, schema: Schema) -> tuple[Architecture, Any]:
        """(the architecture to train, trainer hooks or None) for `arch`, read from file `source` (side
        files lie beside it); raises ValueError naming `source` if it does not match the data."""
        arch.check_schema(schema, source=source or "architecture")
        return arch, None

    def carry(self, arch: Architecture, source: str, run_dir: str) -> None:
        """Copies the side files of `arch` (loaded from directory `source`) into `run_dir`."""

    def lookup(self, arch: Architecture, task: Any) -> Any:
        """How a task's features reach the tables when they are not one table per feature, or None.

        Otherwise an object with `features` (the data features read, in order), `batch(Batch) -> Batch`
        (the batch as the tables see it) and `wrap(ebc) -> nn.Module` (the sparse arch the model sees: it
        returns one pooled embedding per feature and has `embedding_bag_configs()` sized per feature).
        """
        return None

    def report(self, run_dir: str, arch: Architecture, metrics: dict[str, Any]) -> list[str]:
        """This kind's section of `report.md` (markdown lines; pictures it writes go into `run_dir`)."""
        return []


_KINDS: dict[str, ArchKind] = {"tables": ArchKind()}

BUILTIN_KINDS = {
    "tables": "torchrec_aes.architecture",
    "rowwise": "torchrec_aes.models.rowwise",
    "grouped": "torchrec_aes.models.grouped",
    "blocks": "torchrec_aes.models.blocks",
    "frequency": "torchrec_aes.models.frequency",
}
"""The built-in kinds by name -> the module that registers it (resolved by name when first needed)."""


def register_kind(kind: ArchKind) -> ArchKind:
    """Registers an architecture kind under `kind.name` (a kind's module calls this when imported)."""
    if _KINDS.get(kind.name, kind) is not kind and type(_KINDS[kind.name]) is not type(kind):
        raise ValueError(f"architecture kind '{kind.name}' is registered twice")
    _KINDS[kind.name] = kind
    return kind


def kind_names() -> list[str]:
    """Every kind's name (the built-in ones and any registered)."""
    return sorted({*BUILTIN_KINDS, *_KINDS})


def kind_of(arch: Architecture) -> ArchKind:
    """The kind of `arch` (a built-in kind's module is imported the first time it is asked for)."""
    name = arch.kind
    if name not in _KINDS and name in BUILTIN_KINDS:
        importlib.import_module(BUILTIN_KINDS[name])
    if name not in _KINDS:
        raise ValueError(f"architecture kind '{name}' is not one of {', '.join(kind_names())}")
    return _KINDS[name]


def pools_tables(arch: Architecture) -> bool:
    """Whether the model sees `arch`'s tables pooled per feature by its kind (`ArchKind.lookup`), so the
    EBC sits one module deeper (`<sparse arch>.inner`)."""
    return type(kind_of(arch)).lookup is not ArchKind.lookup
