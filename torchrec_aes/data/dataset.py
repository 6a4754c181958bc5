"""CTR rows and their batching into TorchRec `Batch`es, sharded by rank.

A row has a bag of ids per sparse field. One-hot data (Criteo, Avazu, Frappe, the default synthetic
generator: exactly one id per field) is stored as a dense [N, F] id matrix; multi-hot data (tag lists,
histories, `data.multi_hot_columns`) as jagged bags: `lengths` [N, F] and the ids of all bags, field-major
(every row's bag of field 0 in row order, then field 1, ...), which is the order a `KeyedJaggedTensor`
wants, so a batch is one gather of segments. Both become a KJT at batching time.

`Rows` is what training and searches read a split through: its length, this rank's batches, the first
rows as a small in-memory sample (scoring slices, importance), and a restriction to some columns.
`CTRData` holds its rows in memory; `data.binary.BinaryRows` streams TorchRec's preprocessed Criteo
files in chunks, so memory is bounded by the chunk, not by the data set.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

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
        sparse: one-hot (`lengths` None): [N, F] int64 ids, column f in [0, schema.sparse[f].num_embeddings).
            Multi-hot: [sum(lengths)] int64 ids of every bag, field-major (all rows' bags of field 0 in
            row order, then field 1, ...).
        labels: [N] float32 in {0, 1}.
        lengths: None (one id per field per row) or [N, F] int64 bag lengths (0 = an empty bag).
        weights: None, or (multi-hot only) one float32 weight per id of `sparse`, the per-id scores of
            weighted features (id-score lists; 1.0 for the ids of unweighted features).
    """

    dense: torch.Tensor
    sparse: torch.Tensor
    labels: torch.Tensor
    lengths: torch.Tensor | None = None
    weights: torch.Tensor | None = None
    _offsets: torch.Tensor | None = field(default=None, init=False, repr=False, compare=False)
    _flat_lengths: torch.Tensor | None = field(default=None, init=False, repr=False, compare=False)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_fields(self) -> int:
        return int((self.sparse if self.lengths is None else self.lengths).shape[1])

    @property
    def is_multi_hot(self) -> bool:
        return self.lengths is not None

    def field_ids(self, f: int) -> torch.Tensor:
        """All ids of field `f` over all rows (each bag's ids in row order): [sum of its bag lengths]."""
        if self.lengths is None:
            return self.sparse[:, f]
        n = len(self)
        offsets = self.offsets()
        return self.sparse[offsets[f * n] : offsets[(f + 1) * n]]

    def field_weights(self, f: int) -> torch.Tensor | None:
        """The weights of `field_ids(f)`, or None without weights."""
        if self.weights is None:
            return None
        n, offsets = len(self), self.offsets()
        return self.weights[offsets[f * n] : offsets[(f + 1) * n]]

    def field_lengths(self, f: int) -> torch.Tensor:
        """[N] bag length of field `f` in every row (all 1 for one-hot data)."""
        if self.lengths is None:
            return torch.ones(len(self), dtype=torch.int64)
        return self.lengths[:, f]

    def offsets(self) -> torch.Tensor:
        """[N * F + 1] start of every bag in `sparse`, field-major (multi-hot only; computed once)."""
        assert self.lengths is not None, "offsets() is for multi-hot rows"
        if self._offsets is None:
            self._flat_lengths = self.lengths.t().reshape(-1)
            self._offsets = _exclusive_cumsum(self._flat_lengths)
        return self._offsets

    def slice_bags(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The bags of rows [start, stop), key-major, without a gather: each field's bags of consecutive
        rows are one slice of `sparse` (multi-hot only). Returns (values, lengths [F * (stop - start)],
        weights or None)."""
        assert self.lengths is not None, "slice_bags() is for multi-hot rows"
        n, offsets = len(self), self.offsets()
        bounds = offsets[torch.arange(self.num_fields)[:, None] * n + torch.tensor([start, stop])].tolist()
        values = torch.cat([self.sparse[a:b] for a, b in bounds])
        weights = None if self.weights is None else torch.cat([self.weights[a:b] for a, b in bounds])
        return values, self.lengths[start:stop].t().reshape(-1), weights

    def bags(
        self, rows: torch.Tensor, fields: list[int] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The bags of `rows` for `fields` (default all), key-major: (values, lengths [len(fields) * B],
        weights or None)."""
        columns = torch.arange(self.num_fields) if fields is None else torch.tensor(fields, dtype=torch.int64)
        if self.lengths is None:
            ones = torch.ones(columns.numel() * rows.numel(), dtype=torch.int64)
            return self.sparse[rows][:, columns].t().reshape(-1), ones, None
        segments = (columns[:, None] * len(self) + rows[None, :]).reshape(-1)
        offsets = self.offsets()
        assert self._flat_lengths is not None  # set with the offsets
        index, lengths = segment_index(offsets, self._flat_lengths, segments)
        weights = None if self.weights is None else self.weights[index]
        return self.sparse[index], lengths, weights

    def subset(self, index: torch.Tensor) -> CTRData:
        if self.lengths is None:
            return CTRData(self.dense[index], self.sparse[index], self.labels[index])
        values, _, weights = self.bags(index)
        return CTRData(self.dense[index], values, self.labels[index], self.lengths[index], weights)

    def head(self, n: int) -> CTRData:
        return self.subset(torch.arange(min(n, len(self))))

    def select(self, columns: list[int]) -> CTRData:
        if columns == list(range(self.num_fields)):
            return self
        if self.lengths is None:
            return CTRData(self.dense, self.sparse[:, columns], self.labels)
        values, _, weights = self.bags(torch.arange(len(self)), columns)
        return CTRData(self.dense, values, self.labels, self.lengths[:, columns], weights)

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


def rows_digest(rows: Any) -> str:
    """A digest of the content of `rows`: of its tensors for `CTRData`, else the rows' own `digest()`
    (streamed day files: their sampled fingerprints), else "" (cannot tell)."""
    if isinstance(rows, CTRData):
        digest = hashlib.sha256()
        for t in (rows.dense, rows.sparse, rows.labels, rows.lengths, rows.weights):
            if t is not None:
                digest.update(str(tuple(t.shape)).encode())
                digest.update(t.contiguous().numpy().tobytes())
        return digest.hexdigest()
    own = getattr(rows, "digest", None)
    return own() if callable(own) else ""


def concat_rows(parts: list[CTRData]) -> CTRData:
    """The rows of `parts` one after another (one-hot parts stay one-hot; multi-hot ones stay field-major)."""
    dense = torch.cat([p.dense for p in parts])
    labels = torch.cat([p.labels for p in parts])
    if all(p.lengths is None for p in parts):
        return CTRData(dense, torch.cat([p.sparse for p in parts]), labels)
    fields = parts[0].num_fields
    values = torch.cat([p.field_ids(f) for f in range(fields) for p in parts])
    lengths = torch.cat([torch.stack([p.field_lengths(f) for f in range(fields)], 1) for p in parts])
    weights = None
    if any(p.weights is not None for p in parts):
        weights = torch.cat(
            [
                w if (w := p.field_weights(f)) is not None else torch.ones(int(p.field_lengths(f).sum()))
                for f in range(fields)
                for p in parts
            ]
        )
    return CTRData(dense, values, labels, lengths, weights)


def batch_rows(batch: Batch, keys: list[str]) -> CTRData:
    """The rows of a batch as `CTRData` (the bags of `keys`; dense features and labels kept)."""
    jagged = batch.sparse_features.to_dict()
    lengths = torch.stack([jagged[k].lengths().to(torch.int64) for k in keys], 1)
    values = torch.cat([jagged[k].values() for k in keys])
    weights = None
    if batch.sparse_features.weights_or_none() is not None:
        weights = torch.cat([jagged[k].weights() for k in keys])
    return CTRData(batch.dense_features, values, batch.labels, lengths, weights)


def _exclusive_cumsum(lengths: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(lengths.numel() + 1, dtype=torch.int64)
    torch.cumsum(lengths, 0, out=out[1:])
    return out


def segment_index(
    offsets: torch.Tensor, lengths: torch.Tensor, segments: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Where segments `segments` of a jagged array are (segment s = [offsets[s], offsets[s] + lengths[s])):
    (the positions of their elements, concatenated in the order of `segments`; their lengths)."""
    lens = lengths[segments].to(torch.int64)
    total = int(lens.sum())
    if total == 0:
        return torch.zeros(0, dtype=torch.int64), lens
    starts = offsets[segments]
    out_starts = _exclusive_cumsum(lens)[:-1]
    # position i of the output belongs to segment k: starts[k] + (i - out_starts[k])
    shift = torch.repeat_interleave(starts - out_starts, lens, output_size=total)
    return torch.arange(total) + shift, lens


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
    """One TorchRec `Batch` for rows `index`: dense [B, num_dense], a KJT with each row's bag per key
    (one id each for one-hot data), labels [B]."""
    if data.lengths is None:
        ids = data.sparse[index]  # [B, F]
        # KJT values are key-major: all ids of feature 0, then feature 1, ...
        values = ids.t().reshape(-1).contiguous()
        lengths = torch.ones(values.numel(), dtype=torch.int32)
        weights = None
    else:
        values, lengths, weights = data.bags(index)
    return _batch(data.dense[index], values, lengths, weights, data.labels[index], keys)


def slice_batch(data: CTRData, start: int, stop: int, keys: list[str]) -> Batch:
    """The `Batch` of the consecutive rows [start, stop) of `data`: slices, no gather."""
    if data.lengths is None:
        return make_batch(data, torch.arange(start, stop), keys)
    values, lengths, weights = data.slice_bags(start, stop)
    return _batch(data.dense[start:stop], values, lengths, weights, data.labels[start:stop], keys)


def _batch(
    dense: torch.Tensor,
    values: torch.Tensor,
    lengths: torch.Tensor,
    weights: torch.Tensor | None,
    labels: torch.Tensor,
    keys: list[str],
) -> Batch:
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=keys, values=values, lengths=lengths.to(torch.int32), weights=weights
    )
    return Batch(dense_features=dense, sparse_features=kjt, labels=labels)


BAG_CHUNK_BATCHES = 32
"""Multi-hot rows are gathered this many batches at a time into consecutive rows, then sliced per batch."""


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
    if data.lengths is None:
        for b in range(count):
            yield make_batch(data, mine[b * batch_size : (b + 1) * batch_size], keys)
        return
    # Bags: one gather per chunk of batches (few large copies instead of many small ones), then slices.
    for first in range(0, count, BAG_CHUNK_BATCHES):
        chunk = data.subset(mine[first * batch_size : (first + BAG_CHUNK_BATCHES) * batch_size])
        for start in range(0, min(len(chunk), (count - first) * batch_size), batch_size):
            yield slice_batch(chunk, start, min(start + batch_size, len(chunk)), keys)
