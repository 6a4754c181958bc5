"""Row-wise embedding sizes (BET): a prefix mask per row for search, size buckets for deployment.

Search form: every table stays an ordinary TorchRec table at d_max columns; each row r has a size
`dims[r]` and keeps only its first `dims[r]` columns, applied to the pooled output of single-id bags (one
id per sample, as in CF lookups). The mask is a multiplication by 0/1, so masked columns get zero
gradient and the fused table optimizer leaves their weights alone (SGD and Adagrad exactly; row-wise
Adagrad's per-row state averages the squared gradient over all d_max columns, zeros included).

Deployment form: rows of equal size go to one physical TorchRec table per (feature, size) bucket, with an
id remap original id -> (bucket table, local row). `bucket_architecture` describes those tables as an
`Architecture` (what `architecture.yaml` holds, what the planner shards and what the budget is checked
against); `row_dims.npy` and `row_remap.npy` beside it hold the per-row sizes and the remap.
`BucketedEmbedding` looks ids up through the bucket tables and returns rows zero-padded to a common
width, so a model built from the buckets scores exactly like the masked model (tests/unit/test_rowwise.py).

Sizes must be multiples of `multiple` (4: FBGEMM's fused kernels need dims divisible by 4);
`round_to_multiple` rounds free-form sizes (e.g. BET's [1, 128]) so that a budget still holds.

Example::

    layout = BucketLayout.from_row_dims({"user": user_dims, "item": item_dims})  # [U], [I] multiples of 4
    arch = bucket_architecture(layout)         # tables t_user_d4, t_user_d8, ..., t_item_d64
    emb = BucketedEmbedding(layout)
    emb.load_from_full({"user": user_weights, "item": item_weights})  # [U, d_max], [I, d_max]
    user_rows = emb.lookup("user", torch.tensor([0, 5]))               # [2, D], zero beyond each size
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_aes.architecture import Architecture, TableArch
from torchrec_aes.data.schema import Schema
from torchrec_aes.io import join, load_numpy, save_numpy_atomic
from torchrec_aes.planning.memory import table_storage

ROW_DIMS_FILE = "row_dims.npy"
ROW_REMAP_FILE = "row_remap.npy"


def prefix_mask(rows: torch.Tensor, dims: torch.Tensor) -> torch.Tensor:
    """Keeps the first `dims[n]` columns of row n and zeroes the rest.

    Args:
        rows: [N, D] pooled rows (one id per bag).
        dims: [N] sizes in [0, D].

    Returns:
        [N, D]; the gradient of a zeroed column is 0.
    """
    keep = torch.arange(rows.shape[1], device=rows.device) < dims.to(rows.device)[:, None]
    return rows * keep.to(rows.dtype)


class RowwiseMask(nn.Module):
    """Per-row size buffers (one per feature) and the prefix mask applied after an EBC lookup.

    Args:
        row_dims: {feature: [n_f] sizes}; a feature without sizes passes through unmasked.
        max_dims: {feature: d_max of its table}, to check the sizes.

    Example::

        mask = RowwiseMask({"user": user_dims}, {"user": 64})
        pooled = ebc(kjt).to_dict()                  # {"user": [B, 64]}, one id per bag
        rows = mask("user", pooled["user"], user_ids)  # [B, 64], zero beyond each row's size
    """

    def __init__(self, row_dims: dict[str, torch.Tensor], max_dims: dict[str, int]) -> None:
        super().__init__()
        self.features = sorted(row_dims)
        for feature, dims in row_dims.items():
            dims = torch.as_tensor(dims).long()
            if dims.ndim != 1 or (
                dims.numel() and (int(dims.min()) < 0 or int(dims.max()) > max_dims[feature])
            ):
                raise ValueError(
                    f"row dims of '{feature}': expected a 1-d tensor of ints in [0, {max_dims[feature]}], "
                    f"got shape {tuple(dims.shape)}"
                )
            # A buffer: moves with the module; not persistent, since it is search state, not a weight.
            self.register_buffer(f"dims_{feature}", dims, persistent=False)

    def dims(self, feature: str) -> torch.Tensor:
        """[n_f] sizes of `feature`'s rows."""
        return getattr(self, f"dims_{feature}")

    def forward(self, feature: str, rows: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """rows [N, D] of ids [N] of `feature` -> [N, D], each row cut to its size."""
        if feature not in self.features:
            return rows
        return prefix_mask(rows, self.dims(feature)[ids.to(self.dims(feature).device)])


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
    def of(cls, optimizer: str = "rowwise_adagrad", count: str = "bytes") -> RowCost:
        """Asks TorchRec's estimator at three (rows, dim) points and checks that it is linear."""
        base = table_storage(1000, 4, optimizer, count)
        per_dim, rem = divmod(table_storage(1000, 8, optimizer, count) - base, 4000)
        per_row, rem2 = divmod(base - 4000 * per_dim, 1000)
        check = table_storage(3000, 12, optimizer, count)
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


def round_to_multiple(
    dims: torch.Tensor, multiple: int, max_dim: int, budget: int, cost: RowCost
) -> torch.Tensor:
    """Rounds sizes to multiples of `multiple` in [multiple, max_dim] without exceeding `budget`.

    Rounds to the nearest multiple (at least one multiple, so no row is dropped), then, while over budget,
    takes one multiple off the rows that were rounded up the most (largest first among equals).

    Args:
        dims: [N] sizes >= 1.
        multiple: e.g. 4.
        max_dim: largest size (a multiple of `multiple`).
        budget: what all rows may cost.
        cost: per-row cost.

    Raises:
        ValueError: every row at `multiple` already exceeds the budget.
    """
    dims = torch.as_tensor(dims).long()
    rounded = (torch.div(dims + multiple // 2, multiple, rounding_mode="floor") * multiple).clamp(
        multiple, max_dim
    )
    floor_cost = cost.total(torch.full_like(rounded, multiple))
    if floor_cost > budget:
        raise ValueError(
            f"row-wise budget {budget} is below {floor_cost}, the cost of every row at size {multiple}"
        )
    over = cost.total(rounded) - budget
    if over > 0:
        steps = -(-over // (cost.per_dim * multiple))
        # Rows rounded up most first, then the largest; only rows above the minimum can shrink.
        excess = (rounded - dims).double() + rounded.double() * 1e-6
        excess[rounded <= multiple] = -torch.inf
        while steps > 0:
            take = min(steps, int((rounded > multiple).sum()))
            idx = torch.topk(excess, take).indices
            rounded[idx] -= multiple
            excess[idx] -= multiple
            excess[rounded <= multiple] = -torch.inf
            steps -= take
    assert cost.total(rounded) <= budget
    return rounded


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
        flat = torch.from_numpy(np.asarray(load_numpy(join(directory, arch.extra["row_dims"])))).long()
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


def bucket_architecture(layout: BucketLayout, method: str = "bet") -> Architecture:
    """The deployment architecture: one table per bucket (what the planner shards and the budget counts)."""
    tables = [
        TableArch(c.name, list(c.feature_names), c.num_embeddings, c.embedding_dim)
        for c in layout.ebc_configs()
    ]
    return Architecture(tables=tables, method=method)


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

    `train_cf(cfg, *masked_form(arch, run_dir, data.schema))`-style use: pass the architecture and
    `row_dims=` the sizes, so a searched BET architecture retrains under its prefix masks.

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
    return Architecture.uniform(schema, max_dim), dict(layout.row_dims)
