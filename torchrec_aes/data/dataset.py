"""CTR rows and their batching into TorchRec `Batch`es, sharded by rank.

Every CTR data set we read has exactly one id per sparse field per row (Criteo, Avazu, Frappe, the
synthetic generator), so rows are stored as a dense [N, F] id matrix and become a `KeyedJaggedTensor`
with all lengths 1 at batching time.

`Rows` is what training and searches read a split through: its length, this rank's batches, the first
rows as a small in-memory sample (scoring slices, importance), and a restriction to some columns.
`CTRData` holds its rows in memory; `data.binary.BinaryRows` streams TorchRec's preprocessed Criteo
files in chunks, so memory is bounded by the chunk, not by the data set.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import torch
from torchrec.datasets.utils import Batch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_aes.data.schema import Schema


class Rows(Protocol):
    """One split of a CTR data set, as training and searches read it."""

    def __len__(self) -> int: ...

    def batches(
        self,
        keys: list[str],
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        *,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        max_batches: int = 0,
    ) -> Iterator[Batch]:
        """This rank's batches; every rank gets `num_batches(len(self), ...)` of them (the remainder of
        fewer than `world_size` rows is dropped). Without `shuffle`, the ranks' shares in rank order are
        the first `len(self) // world_size * world_size` rows in order."""
        ...

    def head(self, n: int) -> Rows:
        """The first `min(n, len(self))` rows, in memory (a fixed sample: scoring slices, importance)."""
        ...

    def select(self, columns: list[int]) -> Rows:
        """The same rows restricted to these sparse columns (in this order)."""
        ...


@dataclass
class CTRData:
    """Rows of a CTR data set.

    Args:
        dense: [N, num_dense] float32, already transformed (log(max(x,0)+1) for counts).
        sparse: [N, F] int64 ids, column f in [0, schema.sparse[f].num_embeddings).
        labels: [N] float32 in {0, 1}.
    """

    dense: torch.Tensor
    sparse: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: torch.Tensor) -> CTRData:
        return CTRData(self.dense[index], self.sparse[index], self.labels[index])

    def head(self, n: int) -> CTRData:
        return self.subset(torch.arange(min(n, len(self))))

    def select(self, columns: list[int]) -> CTRData:
        if columns == list(range(self.sparse.shape[1])):
            return self
        return CTRData(self.dense, self.sparse[:, columns], self.labels)

    def batches(
        self,
        keys: list[str],
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        *,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        max_batches: int = 0,
    ) -> Iterator[Batch]:
        return iter_batches(self, keys, batch_size, rank, world_size, shuffle, seed, drop_last, max_batches)


class MappedRows:
    """`Rows` whose batches pass through `fn` (e.g. the id remap of an architecture kind's `lookup`)."""

    def __init__(self, rows: Rows, fn: Callable[[Batch], Batch]) -> None:
        self.inner, self.fn = rows, fn

    def __len__(self) -> int:
        return len(self.inner)

    def batches(
        self,
        keys: list[str],
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        *,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        max_batches: int = 0,
    ) -> Iterator[Batch]:
        inner = self.inner.batches(
            keys,
            batch_size,
            rank,
            world_size,
            shuffle=shuffle,
            seed=seed,
            drop_last=drop_last,
            max_batches=max_batches,
        )
        return map(self.fn, inner)

    def head(self, n: int) -> MappedRows:
        return MappedRows(self.inner.head(n), self.fn)

    def select(self, columns: list[int]) -> MappedRows:
        return MappedRows(self.inner.select(columns), self.fn)


@dataclass
class Splits:
    """A schema and its train/val/test rows (in memory: `CTRData`; streamed: `BinaryRows`)."""

    schema: Schema
    train: Rows
    val: Rows
    test: Rows


def split_rows(n: int, fractions: list[float], seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Seeded random split of row indices into train/val/test by `fractions` (e.g. 8:1:1)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_train = int(round(fractions[0] * n))
    n_val = int(round(fractions[1] * n))
    return perm[:n_train], perm[n_train : n_train + n_val], perm[n_train + n_val :]


def make_batch(data: CTRData, index: torch.Tensor, keys: list[str]) -> Batch:
    """One TorchRec `Batch` for rows `index`: dense [B, num_dense], KJT with one id per key, labels [B]."""
    ids = data.sparse[index]  # [B, F]
    batch_size, num_features = ids.shape
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=keys,
        # KJT values are key-major: all ids of feature 0, then feature 1, ...
        values=ids.t().reshape(-1).contiguous(),
        lengths=torch.ones(batch_size * num_features, dtype=torch.int32),
    )
    return Batch(dense_features=data.dense[index], sparse_features=kjt, labels=data.labels[index])


def num_batches(n: int, batch_size: int, world_size: int, drop_last: bool) -> int:
    """Batches per rank. Every rank gets the same count (collectives in the model need that)."""
    per_rank = n // world_size
    return per_rank // batch_size if drop_last else -(-per_rank // batch_size)


def iter_batches(
    data: CTRData,
    keys: list[str],
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    shuffle: bool = False,
    seed: int = 0,
    drop_last: bool = False,
    max_batches: int = 0,
) -> Iterator[Batch]:
    """Yields this rank's batches: a (seeded) permutation, sliced into equal contiguous per-rank shares.

    Each rank sees `len(data) // world_size` rows; the remainder (< world_size rows) is dropped so that
    every rank runs the same number of steps.
    """
    n = len(data)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)) if shuffle else torch.arange(n)
    per_rank = n // world_size
    mine = order[rank * per_rank : (rank + 1) * per_rank]
    count = num_batches(n, batch_size, world_size, drop_last)
    if max_batches:
        count = min(count, max_batches)
    for b in range(count):
        yield make_batch(data, mine[b * batch_size : (b + 1) * batch_size], keys)
