"""Frequency buckets (architecture kind `frequency`): rows as a lever for CTR tables.

A feature's ids are ranked by how often they occur in the *training split* (most frequent first, ties by
id). The ranks are cut into buckets `[start, end)`; each bucket is its own TorchRec table with its own
dim (Ginart et al. 2019, "Mixed Dimension Embeddings", blocked form) and its own number of rows: as many
as the bucket has ids, or fewer, in which case its ids share rows by `(rank - start) mod rows` (the hashing
trick; the bucket's most frequent ids get rows of their own first). A bucket of one row gives all its ids
one shared, learned vector (the fallback of a cold tail); a bucket of dim 0 has no table and its ids
contribute nothing. A feature with one bucket of `n_f` rows is the ordinary table.

What it costs is what TorchRec's estimator says of the bucket tables (`planning.memory.arch_bytes`). The
id -> rank order is part of the feature's id mapping, like a vocabulary (MDE reindexes ids by frequency the
same way); it is recomputed from the training split (`feature_ranks`) and not counted in the budget. A
serving stack that cannot fold it into its vocabulary needs one int32 per id for it (the report says how
much).

How it runs (`FrequencyLookup`): batches are remapped before the model sees them -- every id of feature
`f` becomes an id of its bucket's key `f__b<k>` (`bucket_key`), so TorchRec's pipeline and sharding see
ordinary KJTs -- and the model's sparse arch is `models.ctr.FeatureGroups` over the bucket tables' EBC,
which gives the model one pooled embedding per *feature*: each bucket's output zero-padded to the
feature's widest bucket and summed (an id lives in exactly one bucket, so this is its row, padded). The
models (DLRM, DCN) see one feature of that width, exactly as for one table per feature.

`architecture.yaml` holds the bucket tables and `extra.frequency = {feature: [end_0, end_1, ...]}` (the
rank at which each bucket ends; the last is the feature's number of ids).

Example::

    arch = frequency_architecture(schema, {"c0": [(100, 100, 64), (10000, 500, 16)], ...})
    Trainer(cfg, task, arch, "runs/x", "train").fit()   # the task remaps batches through the kind
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchrec.datasets.utils import Batch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_aes.architecture import Architecture, ArchKind, TableArch, register_kind
from torchrec_aes.data.schema import Schema
from torchrec_aes.models.ctr import FeatureGroups

SEPARATOR = "__b"
"""Between a feature's name and its bucket index in the bucket's KJT key (`c0__b1`)."""

Bucket = tuple[int, int, int]
"""(end rank, rows, dim) of one bucket; the bucket starts where the previous one ended."""


def bucket_key(feature: str, index: int) -> str:
    """The KJT key (and table feature name) of bucket `index` of `feature`; its table is `t_<key>`."""
    return f"{feature}{SEPARATOR}{index}"


# ---------------------------------------------------------------------------------------------------------
# Id frequencies of the training split
# ---------------------------------------------------------------------------------------------------------


def id_counts(
    rows: Any, keys: list[str], sizes: list[int], batch_size: int = 65536
) -> dict[str, torch.Tensor]:
    """How often each id of each feature occurs in `rows` (a `data.dataset.Rows`): {key: [n_key] int64}.

    In-memory rows are counted directly; streamed ones in one pass over their batches (every id of a bag
    counts).
    """
    if callable(getattr(rows, "field_ids", None)):  # in memory (`CTRData`)
        return {
            k: torch.bincount(rows.field_ids(i), minlength=n)[:n]
            for i, (k, n) in enumerate(zip(keys, sizes, strict=True))
        }
    counts = {k: torch.zeros(n, dtype=torch.int64) for k, n in zip(keys, sizes, strict=True)}
    for batch in rows.batches(keys, batch_size):
        jagged = batch.sparse_features.to_dict()
        for k, n in zip(keys, sizes, strict=True):
            counts[k] += torch.bincount(jagged[k].values(), minlength=n)[:n]
    return counts


def mean_pooled(schema: Schema) -> frozenset[str]:
    """The features of `schema` pooled by mean."""
    return frozenset(f.name for f in schema.sparse if f.pooling == "mean")


def ranks_from_counts(counts: torch.Tensor) -> torch.Tensor:
    """rank[id] for ids ordered by count, most frequent first; ties in id order. [n] int64."""
    order = torch.sort(-counts, stable=True).indices
    ranks = torch.empty_like(order)
    ranks[order] = torch.arange(order.numel())
    return ranks


def feature_ranks(task: Any) -> dict[str, torch.Tensor]:
    """rank[id] of every sparse feature of a CTR task, from its training split (computed once per task)."""
    if "frequency_ranks" not in task.memo:
        schema = task.schema
        keys = list(schema.sparse_names)
        counts = id_counts(task.data.train, keys, [f.num_embeddings for f in schema.sparse])
        task.memo["frequency_counts"] = counts
        task.memo["frequency_ranks"] = {k: ranks_from_counts(c) for k, c in counts.items()}
    return task.memo["frequency_ranks"]


def feature_counts(task: Any) -> dict[str, torch.Tensor]:
    """Training-split id counts of every sparse feature, {feature: [n_f]} (computed once per task)."""
    feature_ranks(task)
    return task.memo["frequency_counts"]


# ---------------------------------------------------------------------------------------------------------
# The architecture
# ---------------------------------------------------------------------------------------------------------


def block_ends(num_ids: int, fractions: list[float]) -> list[int]:
    """Where a feature's frequency blocks end (ranks), from fractions of its ids; at least one id each."""
    return sorted({min(num_ids, max(1, round(f * num_ids))) for f in fractions} | {num_ids})


def frequency_architecture(
    schema: Schema,
    buckets: dict[str, list[Bucket]],
    data_type: str = "fp32",
    method: str = "frequency",
) -> Architecture:
    """An architecture of kind `frequency`: for every sparse feature (schema order), its buckets
    [(end rank, rows, dim)], the last ending at the feature's number of ids."""
    tables, ends = [], {}
    for f in schema.sparse:
        if f.name not in buckets:
            raise ValueError(f"no buckets for feature '{f.name}'")
        ends[f.name] = [int(end) for end, _, _ in buckets[f.name]]
        for k, (_, rows, dim) in enumerate(buckets[f.name]):
            key = bucket_key(f.name, k)
            tables.append(TableArch(f"t_{key}", [key], int(rows), int(dim), data_type))
    arch = Architecture(tables, method=method, schema_hash=schema.hash(), kind="frequency")
    arch.extra["frequency"] = ends
    check_frequency(arch, schema)
    return arch


def buckets_of(arch: Architecture) -> dict[str, list[tuple[int, int, TableArch]]]:
    """{feature: [(start rank, end rank, table)]} of a `frequency` architecture."""
    by_name = {t.name: t for t in arch.tables}
    out = {}
    for feature, ends in arch.extra["frequency"].items():
        starts = [0, *ends[:-1]]
        out[feature] = [
            (s, e, by_name[f"t_{bucket_key(feature, k)}"])
            for k, (s, e) in enumerate(zip(starts, ends, strict=True))
        ]
    return out


def check_frequency(arch: Architecture, schema: Schema, source: str = "architecture") -> None:
    """Raises ValueError (naming `source`) unless `arch` is a valid `frequency` architecture for `schema`:
    every feature's buckets end in increasing order at its number of ids, each bucket has its table with
    1..(bucket size) rows, and there are no other tables."""
    spec = arch.extra.get("frequency")
    if not isinstance(spec, dict):
        raise ValueError(
            f"{source}: a frequency architecture needs extra.frequency = {{feature: [end, ...]}}"
        )
    sizes = {f.name: f.num_embeddings for f in schema.sparse}
    if set(spec) != set(sizes):
        raise ValueError(
            f"{source}: extra.frequency has features {sorted(spec)}; the data has {sorted(sizes)}"
        )
    by_name = {t.name: t for t in arch.tables}
    expected = set()
    for feature, ends in spec.items():
        if (
            not isinstance(ends, list)
            or not ends
            or not all(isinstance(e, int) and not isinstance(e, bool) for e in ends)
            or any(b <= a for a, b in zip([0, *ends], ends, strict=False))
            or ends[-1] != sizes[feature]
        ):
            raise ValueError(
                f"{source}: extra.frequency.{feature}: {ends!r}; expected increasing bucket ends in ranks, "
                f"the last equal to the feature's {sizes[feature]} ids"
            )
        for k, (start, end) in enumerate(zip([0, *ends[:-1]], ends, strict=True)):
            name = f"t_{bucket_key(feature, k)}"
            expected.add(name)
            table = by_name.get(name)
            if table is None or table.feature_names != [bucket_key(feature, k)]:
                raise ValueError(
                    f"{source}: no table '{name}' (feature '{bucket_key(feature, k)}') for bucket {k} of "
                    f"'{feature}'"
                )
            if not 1 <= table.num_embeddings <= end - start:
                raise ValueError(
                    f"{source}: table '{name}' has {table.num_embeddings} rows; its bucket holds ranks "
                    f"[{start}, {end}), so 1..{end - start} rows"
                )
    extra_tables = sorted(set(by_name) - expected)
    if extra_tables:
        raise ValueError(f"{source}: tables {extra_tables} belong to no bucket of extra.frequency")


# ---------------------------------------------------------------------------------------------------------
# Training and serving form
# ---------------------------------------------------------------------------------------------------------


class FrequencyLookup:
    """How a task feeds a `frequency` architecture: which data features it reads, the remap of a batch's
    ids into bucket ids, and the sparse arch wrapping the bucket tables.

    Args:
        arch: a `frequency` architecture (checked).
        ranks: {feature: rank[id]} of the training split (`feature_ranks`).
        mean: the features pooled by mean (their sum-pooled buckets are divided by the bag's size).
    """

    def __init__(
        self, arch: Architecture, ranks: dict[str, torch.Tensor], mean: frozenset[str] = frozenset()
    ) -> None:
        self.mean = mean
        self.plan: list[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor, list[tuple[int, str, int]]]] = []
        for feature, buckets in buckets_of(arch).items():
            active = [
                (k, bucket_key(feature, k), t.embedding_dim)
                for k, (_, _, t) in enumerate(buckets)
                if t.embedding_dim > 0
            ]
            if not active:
                continue  # every bucket dropped: the feature is not used
            ends = torch.tensor([e for _, e, _ in buckets])
            starts = torch.tensor([s for s, _, _ in buckets])
            rows = torch.tensor([t.num_embeddings for _, _, t in buckets])
            # Per id: its bucket and its row in the bucket's table (computed once, gathered per batch).
            rank = ranks[feature]
            bucket = torch.bucketize(rank, ends, right=True)
            local = (rank - starts[bucket]) % rows[bucket]
            self.plan.append((feature, bucket, local, rows, active))
        self.features = [p[0] for p in self.plan]
        self.keys = [key for p in self.plan for _, key, _ in p[4]]

    def remap(self, kjt: KeyedJaggedTensor) -> KeyedJaggedTensor:
        """A KJT over the data features -> the same bags over the active bucket keys (local row ids)."""
        jagged = kjt.to_dict()
        weights = kjt.weights_or_none()
        values, lengths, new_weights = [], [], []
        for feature, bucket_of, local_of, _, active in self.plan:
            jt = jagged[feature]
            ids, bag_lengths = jt.values(), jt.lengths()
            bucket, local = bucket_of[ids], local_of[ids]
            bag = torch.repeat_interleave(torch.arange(bag_lengths.numel()), bag_lengths)
            for k, _, _ in active:
                chosen = bucket == k
                values.append(local[chosen])
                lengths.append(torch.bincount(bag[chosen], minlength=bag_lengths.numel()).to(torch.int32))
                if weights is not None:
                    new_weights.append(jt.weights()[chosen])
        return KeyedJaggedTensor.from_lengths_sync(
            keys=self.keys,
            values=torch.cat(values),
            lengths=torch.cat(lengths),
            weights=torch.cat(new_weights) if weights is not None else None,
        )

    def batch(self, batch: Batch) -> Batch:
        return Batch(batch.dense_features, self.remap(batch.sparse_features), batch.labels)

    @property
    def groups(self) -> list[tuple[str, list[str]]]:
        """[(feature, its active bucket keys)] in model order."""
        return [(f, [key for _, key, _ in active]) for f, _, _, _, active in self.plan]

    def wrap(self, tables: nn.Module) -> FeatureGroups:
        """The sparse arch the model sees: the bucket tables (an EBC, or a supernet's elastic one) pooled
        back to one embedding per feature."""
        return FeatureGroups(tables, self.groups, self.mean)


class FrequencyKind(ArchKind):
    """Frequency buckets per feature (MDE's blocks, hashed tails): bucket tables + `extra.frequency`."""

    name = "frequency"

    def training_form(self, arch: Architecture, source: str, schema: Schema) -> tuple[Architecture, Any]:
        check_frequency(arch, schema, source or "architecture")
        return arch, None

    def lookup(self, arch: Architecture, task: Any) -> FrequencyLookup:
        return FrequencyLookup(arch, feature_ranks(task), mean_pooled(task.schema))

    def report(self, run_dir: str, arch: Architecture, metrics: dict[str, Any]) -> list[str]:
        lines = [
            "## Frequency buckets",
            "",
            "| feature | bucket (ranks) | rows | dim | precision |",
            "|---|---|---|---|---|",
        ]
        for feature, buckets in buckets_of(arch).items():
            for start, end, t in buckets:
                rows = f"{t.num_embeddings}" + (" (hashed)" if t.num_embeddings < end - start else "")
                lines.append(f"| {feature} | [{start}, {end}) | {rows} | {t.embedding_dim} | {t.data_type} |")
        ids = sum(ends[-1] for ends in arch.extra["frequency"].values())
        lines += [
            "",
            f"Ids are ranked by training-split frequency; a serving stack that cannot fold that order into "
            f"its vocabulary needs {4 * ids} B for it (one int32 per id; not counted in the budget).",
            "",
        ]
        return lines


register_kind(FrequencyKind())
