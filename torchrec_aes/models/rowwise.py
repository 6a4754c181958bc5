"""Row-wise embedding sizes (BET, architecture kind `rowwise`): size buckets for deployment, a masked
form for training.

Training form (`masked_form`): every table stays an ordinary TorchRec table at d_max columns; each row r
has a size `dims[r]` and keeps only its first `dims[r]` columns (`CFModel.set_row_dims`, a prefix mask
on the pooled output of single-id bags). The mask is a multiplication by 0/1, so masked columns get zero
gradient and the fused table optimizer leaves their weights alone (SGD and Adagrad exactly; row-wise
Adagrad's per-row state averages the squared gradient over all d_max columns, zeros included).

Deployment form: rows of equal size go to one physical TorchRec table per (feature, size) bucket, with an
id remap original id -> (bucket table, local row). `bucket_architecture` describes those tables as an
`Architecture` (what `architecture.yaml` holds, what the planner shards and what the budget is checked
against); `row_dims.npy` and `row_remap.npy` beside it hold the per-row sizes and the remap.
`BucketedEmbedding` looks ids up through the bucket tables and returns rows zero-padded to a common
width, so a model built from the buckets scores exactly like the masked model (tests/unit/test_rowwise.py).

Sizes must be multiples of 4 (FBGEMM's fused kernels need dims divisible by 4).

Example::

    layout = BucketLayout.from_row_dims({"user": user_dims, "item": item_dims})  # [U], [I] multiples of 4
    arch = bucket_architecture(layout)         # tables t_user_d4, t_user_d8, ..., t_item_d64
    emb = BucketedEmbedding(layout)
    emb.load_from_full({"user": user_weights, "item": item_weights})  # [U, d_max], [I, d_max]
    user_rows = emb.lookup("user", torch.tensor([0, 5]))               # [2, D], zero beyond each size
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_aes.architecture import Architecture, ArchKind, TableArch, register_kind
from torchrec_aes.data.schema import Schema
from torchrec_aes.io import join, load_numpy, save_numpy_atomic
from torchrec_aes.models.cf import TableHooks
from torchrec_aes.planning.memory import table_storage

ROW_DIMS_FILE = "row_dims.npy"
ROW_REMAP_FILE = "row_remap.npy"


# ---------------------------------------------------------------------------------------------------------
# Cost of row-wise sizes, as TorchRec counts it
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RowCost:
    """Cost of one row of size d in a bucket table: `per_dim * d + per_row` (bytes or parameters).

    Derived from TorchRec's storage estimate (`planning.memory.table_storage`), which is linear in rows and
    dim for our optimizers (row-wise Adagrad: 4 d + 4 bytes; Adagrad: 8 d; SGD: 4 d; params: d).
    """

    per_dim: int
    per_row: int

    @classmethod
    def of(cls, optimizer: str = "rowwise_adagrad", count: str = "bytes", data_type: str = "fp32") -> RowCost:
        """Asks TorchRec's estimator at three (rows, dim) points and checks that it is linear."""
        base = table_storage(1000, 4, optimizer, count, data_type)
        per_dim, rem = divmod(table_storage(1000, 8, optimizer, count, data_type) - base, 4000)
        per_row, rem2 = divmod(base - 4000 * per_dim, 1000)
        check = table_storage(3000, 12, optimizer, count, data_type)
        if rem or rem2 or check != 3000 * (12 * per_dim + per_row):
            raise ValueError(
                f"TorchRec's storage estimate for optimizer '{optimizer}' is not linear in rows and dim; "
                "row-wise budgets need a linear per-row cost"
            )
        return cls(per_dim, per_row)

    def total(self, dims: torch.Tensor) -> int:
        """Cost of rows with sizes `dims` [N] (size-0 rows are dropped and cost nothing)."""
        dims = torch.as_tensor(dims).long()
        return int(self.per_dim * dims.sum()) + self.per_row * int((dims > 0).sum())


# ---------------------------------------------------------------------------------------------------------
# Deployment form: size buckets
# ---------------------------------------------------------------------------------------------------------


def bucket_name(feature: str, dim: int) -> str:
    """Feature name of the bucket of `feature`'s rows of size `dim` (its table is `t_<name>`)."""
    return f"{feature}_d{dim}"


@dataclass
class BucketLayout:
    """Rows grouped by size: one physical table per (feature, size).

    Args:
        row_dims: {feature: [n_f] sizes, multiples of 4 (0 = row dropped)}.
        buckets: [(feature, dim, rows)] in table order (by feature, then dim).
        remap: {feature: [n_f, 2] (bucket index into `buckets`, local row)}; -1 for dropped rows.
    """

    row_dims: dict[str, torch.Tensor]
    buckets: list[tuple[str, int, int]]
    remap: dict[str, torch.Tensor]

    @classmethod
    def from_row_dims(cls, row_dims: dict[str, torch.Tensor]) -> BucketLayout:
        """Buckets rows by size; within a bucket, rows keep their original id order."""
        buckets: list[tuple[str, int, int]] = []
        remap = {}
        clean = {}
        for feature in row_dims:
            dims = torch.as_tensor(row_dims[feature]).long()
            if dims.numel() and (int(dims.min()) < 0 or bool((dims % 4).any())):
                raise ValueError(
                    f"row dims of '{feature}' must be non-negative multiples of 4 (FBGEMM's fused kernels), "
                    f"got values {sorted(set(dims.tolist()))[:10]}"
                )
            table = torch.full((dims.numel(), 2), -1, dtype=torch.int64)
            for dim in sorted(set(dims.tolist()) - {0}):
                rows = torch.nonzero(dims == dim).flatten()
                table[rows, 0] = len(buckets)
                table[rows, 1] = torch.arange(rows.numel())
                buckets.append((feature, int(dim), int(rows.numel())))
            remap[feature] = table
            clean[feature] = dims
        return cls(clean, buckets, remap)

    @property
    def max_dim(self) -> int:
        return max((d for _, d, _ in self.buckets), default=0)

    def ebc_configs(self) -> list[EmbeddingBagConfig]:
        """One `EmbeddingBagConfig` per bucket (sum pooling over one id = the row)."""
        return [
            EmbeddingBagConfig(
                name=f"t_{bucket_name(f, d)}",
                embedding_dim=d,
                num_embeddings=n,
                feature_names=[bucket_name(f, d)],
                pooling=PoolingType.SUM,
            )
            for f, d, n in self.buckets
        ]

    def save(self, directory: str) -> dict[str, object]:
        """Writes `row_dims.npy` (features concatenated in `layout` order) and `row_remap.npy` into
        `directory`; returns the `Architecture.extra` entries that point at them."""
        features = list(self.row_dims)
        save_numpy_atomic(
            join(directory, ROW_DIMS_FILE), torch.cat([self.row_dims[f] for f in features]).numpy()
        )
        save_numpy_atomic(
            join(directory, ROW_REMAP_FILE), torch.cat([self.remap[f] for f in features]).numpy()
        )
        return self.extra()

    def extra(self) -> dict[str, object]:
        """The `Architecture.extra` entries that point at the files `save` writes."""
        return {
            "row_dims": ROW_DIMS_FILE,
            "row_remap": ROW_REMAP_FILE,
            "row_features": {f: int(d.numel()) for f, d in self.row_dims.items()},
        }

    @classmethod
    def load(cls, arch: Architecture, directory: str) -> BucketLayout:
        """Reads the layout that `arch.extra` (written by `save`) points at, from `directory`."""
        if "row_dims" not in arch.extra or "row_features" not in arch.extra:
            raise ValueError("architecture: not a row-wise (BET) architecture; extra.row_dims is missing")
        path = join(directory, arch.extra["row_dims"])
        try:
            flat = torch.from_numpy(np.asarray(load_numpy(path))).long()
        except (ValueError, EOFError) as e:  # truncated or not a .npy file
            raise ValueError(
                f"{path}: not a readable row-size file ({type(e).__name__}); search again"
            ) from None
        counts = dict(arch.extra["row_features"])
        if flat.numel() != sum(counts.values()):
            raise ValueError(
                f"{join(directory, arch.extra['row_dims'])}: {flat.numel()} sizes, "
                f"expected {sum(counts.values())}"
            )
        parts = dict(zip(counts, torch.split(flat, list(counts.values())), strict=True))
        layout = cls.from_row_dims(parts)
        expected = {t.name: (t.num_embeddings, t.embedding_dim) for t in arch.tables}
        got = {c.name: (c.num_embeddings, c.embedding_dim) for c in layout.ebc_configs()}
        if expected != got:
            raise ValueError(f"architecture tables {expected} do not match the row sizes' buckets {got}")
        return layout


def bucket_architecture(layout: BucketLayout, method: str = "bet", data_type: str = "fp32") -> Architecture:
    """The deployment architecture: one table per bucket (what the planner shards and the budget counts),
    every bucket table stored in `data_type`."""
    tables = [
        TableArch(c.name, list(c.feature_names), c.num_embeddings, c.embedding_dim, data_type)
        for c in layout.ebc_configs()
    ]
    return Architecture(tables=tables, method=method, kind="rowwise")


class BucketedEmbedding(nn.Module):
    """Row-wise sized tables as TorchRec bucket tables: look up original ids, get padded rows.

    Args:
        layout: the buckets and remap.
        width: output width D (default: the largest bucket dim); rows are zero-padded to it.
        device: where the EBC is created (`meta` for DMP).
    """

    def __init__(
        self, layout: BucketLayout, width: int | None = None, device: torch.device | None = None
    ) -> None:
        super().__init__()
        self.layout = layout
        self.width = width or layout.max_dim
        self.ebc = EmbeddingBagCollection(tables=layout.ebc_configs(), device=device)
        self.keys = [bucket_name(f, d) for f, d, _ in layout.buckets]

    def lookup(self, feature: str, ids: torch.Tensor) -> torch.Tensor:
        """Rows of original ids [N] of `feature` -> [N, D] (dropped rows are all zero).

        One KJT with a key per bucket; each id is one bag in its bucket's key, empty bags elsewhere.
        """
        remap = self.layout.remap[feature].to(ids.device)[ids]  # [N, 2]
        n = ids.numel()
        num_keys = len(self.keys)
        bucket, local = remap[:, 0], remap[:, 1]
        present = bucket >= 0
        # lengths[k * n + j] = 1 iff id j lives in bucket k; values in key-major order.
        lengths = torch.zeros(num_keys * n, dtype=torch.int32, device=ids.device)
        flat = bucket[present] * n + torch.arange(n, device=ids.device)[present]
        lengths[flat] = 1
        order = torch.argsort(flat, stable=True)
        values = local[present][order]
        kjt = KeyedJaggedTensor.from_lengths_sync(keys=self.keys, values=values, lengths=lengths)
        pooled = self.ebc(kjt).to_dict()
        # Empty bags pool to zero, so summing the zero-padded bucket outputs places every row.
        out = torch.zeros(n, self.width, device=ids.device)
        for k, (f, d, _) in enumerate(self.layout.buckets):
            if f == feature:
                out = out + F.pad(pooled[self.keys[k]], (0, self.width - d))
        return out

    def read_tables(self) -> dict[str, torch.Tensor]:
        """Every row of every feature: {feature: [n_f, D]}."""
        return {f: self.lookup(f, torch.arange(d.numel())) for f, d in self.layout.row_dims.items()}

    @torch.no_grad()
    def load_from_full(self, tables: dict[str, torch.Tensor]) -> None:
        """Copies each row's first `size` columns from full-width tables {feature: [n_f, >= d_max]}."""
        state = self.ebc.state_dict()
        for k, (f, d, _) in enumerate(self.layout.buckets):
            rows = torch.nonzero(self.layout.remap[f][:, 0] == k).flatten()
            state[f"embedding_bags.t_{self.keys[k]}.weight"].copy_(tables[f][rows, :d])


def masked_form(
    arch: Architecture, directory: str, schema: Schema
) -> tuple[Architecture, dict[str, torch.Tensor]]:
    """The training form of a bucket architecture: one d_max table per feature plus the per-row sizes.

    The `rowwise` architecture kind trains this form with `TableHooks(row_dims=...)`, so a searched BET
    architecture retrains under its prefix masks.

    Args:
        arch: a bucket architecture (`extra.row_dims` set), e.g. loaded from `RUN/architecture.yaml`.
        directory: where its `row_dims.npy` lies (the run directory).
        schema: the data's schema (features `user`, `item`).
    """
    layout = BucketLayout.load(arch, directory)
    max_dim = int(arch.extra.get("max_dim", layout.max_dim))
    missing = set(layout.row_dims) - {f.name for f in schema.sparse}
    if missing:
        raise ValueError(
            f"architecture: row sizes for features {sorted(missing)} that the data does not have"
        )
    # The bucket tables' precision carries over to the training form (all buckets share one).
    data_type = arch.tables[0].data_type if arch.tables else "fp32"
    return Architecture.uniform(schema, max_dim, data_type), dict(layout.row_dims)


class RowwiseKind(ArchKind):
    """Per-row sizes (BET): size-bucket tables + `row_dims.npy` / `row_remap.npy`; trained masked."""

    name = "rowwise"

    def training_form(self, arch: Architecture, source: str, schema: Schema) -> tuple[Architecture, Any]:
        full, row_dims = masked_form(arch, os.path.dirname(source), schema)
        return full, TableHooks(row_dims=row_dims)

    def carry(self, arch: Architecture, source: str, run_dir: str) -> None:
        BucketLayout.load(arch, source).save(run_dir)


register_kind(RowwiseKind())
