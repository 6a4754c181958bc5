"""TorchRec's preprocessed Criteo format (`data.type=criteo_binary`), streamed per rank in chunks.

The files are what TorchRec's own scripts write (`torchrec.datasets.scripts.npy_preproc_criteo`, then
optionally `contiguous_preproc_criteo` and `shuffle_preproc_criteo`): per day `d` of a directory,
`day_{d}_dense.npy` [N_d, num_dense] float32 (already log-transformed), `day_{d}_sparse.npy` (or
`day_{d}_sparse_contig_freq.npy` when present) [N_d, F] integer ids, and `day_{d}_labels.npy` [N_d, 1].
Multi-hot days (DLRM v2's `day_{d}_sparse_multi_hot.npz` as TorchRec's
`materialize_synthetic_multihot_dataset` script writes them: one uncompressed [N_d, k_f] array per
feature, keys "0".."F-1") are read instead of `day_{d}_sparse.npy` when present: feature f's bag is the
row's k_f ids, read per rank in row ranges straight from the archive's members.
As in TorchRec's DLRM example, the last day is split into halves, the first for validation and the
second for test, and every other day is training data.

Reading uses TorchRec's `BinaryCriteoUtils`: `get_file_row_ranges_and_remainder` gives each rank its own
contiguous row range over the day files (so ranks read disjoint rows and never the whole data), and
`load_npy_range` reads it `data.stream_chunk_rows` rows at a time, so a rank holds one chunk (plus a
batch) whatever the data's size. TorchRec's `InMemoryBinaryCriteoIterDataPipe` is not used as is: it
hard-codes Criteo's 26 features and, in mmap mode, maps every file whole on every rank and deals batches
round-robin (its per-rank range loader is not called in TorchRec 1.8), so a rank's resident memory grows
with the files it touches. Training order: chunks in a seeded random order per epoch and rows shuffled
within each chunk (a shuffle buffer of one chunk); TorchRec's `shuffle_preproc_criteo` shuffles the
files themselves once, if a global shuffle is wanted.

Table sizes: `data.num_embeddings_per_feature` (as TorchRec's DLRM example: ids are taken modulo it, like
the datapipe's `hashes`), else the largest id + 1 per feature, found in one chunked pass over the sparse
files and cached beside them (`torchrec_aes_vocab.json`, keyed by the files' names, sizes and times).

Example::

    splits = load_criteo_binary(DataConfig(type="criteo_binary", path="/data/criteo_1tb_npy"))
    for batch in splits.train.batches(splits.schema.sparse_names, 8192, rank, world_size):
        ...
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torchrec.datasets.criteo import BinaryCriteoUtils
from torchrec.datasets.utils import Batch

from torchrec_aes import io
from torchrec_aes.config import DataConfig
from torchrec_aes.data.dataset import CTRData, Rows, Splits, concat_rows, num_batches, slice_batch
from torchrec_aes.data.schema import Schema, SparseFeature

logger = logging.getLogger(__name__)

VOCAB_FILE = "torchrec_aes_vocab.json"
"""Cached table sizes beside the day files."""


@dataclass(frozen=True)
class DayFiles:
    """The dense, sparse and labels files of consecutive days, with each day's row count."""

    dense: list[str]
    sparse: list[str]
    labels: list[str]
    rows: list[int]

    def day(self, d: int) -> DayFiles:
        return DayFiles([self.dense[d]], [self.sparse[d]], [self.labels[d]], [self.rows[d]])

    def days(self, first: int, last: int) -> DayFiles:
        s = slice(first, last)
        return DayFiles(self.dense[s], self.sparse[s], self.labels[s], self.rows[s])


def find_days(directory: str) -> DayFiles:
    """The day files of `directory` (day_0, day_1, ... with no gap), their shapes checked.

    Raises:
        ValueError: no day files, a missing file of a day, or files of a day that disagree in rows or
            columns, naming the file.
    """
    if not os.path.isdir(directory):
        raise ValueError(f"data.path: '{directory}' is not a directory of TorchRec Criteo day files")
    dense, sparse, labels, rows = [], [], [], []
    width: dict[str, int] = {}
    d = 0
    while os.path.exists(os.path.join(directory, f"day_{d}_dense.npy")):
        contig = os.path.join(directory, f"day_{d}_sparse_contig_freq.npy")
        multi = os.path.join(directory, f"day_{d}_sparse_multi_hot.npz")
        bags = os.path.join(directory, f"day_{d}_{BAG_OFFSETS}")
        one_hot = contig if os.path.exists(contig) else os.path.join(directory, f"day_{d}_sparse.npy")
        sparse_file = next((p for p in (multi, bags) if os.path.exists(p)), one_hot)
        files = {
            "dense": os.path.join(directory, f"day_{d}_dense.npy"),
            "sparse": sparse_file,
            "labels": os.path.join(directory, f"day_{d}_labels.npy"),
        }
        shapes = {}
        for kind, path in files.items():
            if not os.path.exists(path):
                raise ValueError(f"{path}: missing (day {d} has {files['dense']})")
            try:
                if not path.endswith(".npz"):
                    check_npy(path, integer=kind == "sparse")
                shape = sparse_shape(path) if kind == "sparse" else BinaryCriteoUtils.get_shape_from_npy(path)
            except _BadNpy as e:
                raise ValueError(f"{path}: {e}") from None
            except ValueError as e:
                raise ValueError(f"{path}: not a .npy file ({e})") from e
            if len(shape) != 2:
                raise ValueError(f"{path}: shape {tuple(shape)}, expected 2 dimensions [rows, columns]")
            if width.setdefault(kind, shape[1]) != shape[1]:
                raise ValueError(f"{path}: {shape[1]} columns, day 0 has {width[kind]}")
            shapes[kind] = shape
        if len({s[0] for s in shapes.values()}) != 1:
            raise ValueError(
                f"{directory}: day {d} files disagree in rows: "
                + ", ".join(f"{k} {s[0]}" for k, s in shapes.items())
            )
        if width["labels"] != 1:
            raise ValueError(f"{files['labels']}: {width['labels']} columns, expected 1")
        dense.append(files["dense"])
        sparse.append(files["sparse"])
        labels.append(files["labels"])
        rows.append(int(shapes["dense"][0]))
        d += 1
    later = sorted(
        int(name.split("_")[1])
        for name in os.listdir(directory)
        if name.startswith("day_") and name.endswith("_dense.npy") and name.split("_")[1].isdigit()
    )
    if later and later[-1] >= d:
        raise ValueError(
            f"data.path: '{directory}' has day_{later[-1]}_dense.npy but no day_{d}_dense.npy: days must be "
            f"day_0, day_1, ... without a gap (the last day is validation and test)"
        )
    if d < 2:
        raise ValueError(
            f"data.path: '{directory}' needs at least 2 days (day_0_dense.npy, day_1_dense.npy, ...: "
            f"training days, the last one is split into validation and test); found {d}"
        )
    return DayFiles(dense, sparse, labels, rows)


def _npy_header(f: Any) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, Fortran order, dtype) of the .npy array at `f`'s position; `f` is left at its data."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    return np.lib.format.read_array_header_2_0(f)


class _BadNpy(ValueError):
    """A day file whose header or size cannot be right (reported as the file's one-line error)."""


def check_npy(path: str, integer: bool = False) -> None:
    """A .npy day file that can be read as the rows it declares: C order, the whole size its header
    declares, integer values where ids are expected.

    Raises:
        ValueError: naming what is wrong (the caller names the file).
    """
    with open(path, "rb") as f:
        shape, fortran, dtype = _npy_header(f)
        start = f.tell()
    if fortran:
        raise _BadNpy("Fortran-ordered (column-major) array; save it in C order (np.ascontiguousarray)")
    if integer and dtype.kind not in "iu":
        raise _BadNpy(f"{dtype} values; ids must be integers")
    expected = start + int(np.prod(shape)) * dtype.itemsize
    actual = os.path.getsize(path)
    if actual < expected:
        raise _BadNpy(
            f"truncated: {actual} bytes, its header declares {tuple(shape)} {dtype} ({expected} bytes)"
        )


def _npz_members(path: str) -> list[tuple[int, tuple[int, ...], np.dtype]]:
    """(byte offset of the array data in the file, shape, dtype) of features "0".."F-1" of a multi-hot
    day archive; every member must be a stored (uncompressed) .npy, as `np.savez` writes them."""
    out = []
    with zipfile.ZipFile(path) as archive, open(path, "rb") as raw:
        names = {info.filename: info for info in archive.infolist()}
        for f in range(len(names)):
            info = names.get(f"{f}.npy")
            if info is None:
                raise ValueError(f"{path}: no member '{f}.npy' (members: {', '.join(sorted(names))})")
            if info.compress_type != zipfile.ZIP_STORED:
                raise ValueError(f"{path}: member '{f}.npy' is compressed; write it with np.savez")
            raw.seek(info.header_offset + 26)
            name_len, extra_len = np.frombuffer(raw.read(4), dtype="<u2").tolist()
            raw.seek(info.header_offset + 30 + name_len + extra_len)
            shape, fortran, dtype = _npy_header(raw)
            if fortran or len(shape) != 2:
                raise ValueError(f"{path}: member '{f}.npy' has shape {shape}; expected C-order [rows, ids]")
            if dtype.kind not in "iu":
                raise ValueError(f"{path}: member '{f}.npy' holds {dtype} values; expected integer ids")
            out.append((raw.tell(), tuple(shape), dtype))
    return out


def npz_shape(path: str) -> tuple[int, int]:
    """(rows, features) of a multi-hot day archive (all features must have the same rows)."""
    members = _npz_members(path)
    rows = {shape[0] for _, shape, _ in members}
    if len(rows) != 1:
        raise ValueError(f"{path}: features disagree in rows ({sorted(rows)})")
    return rows.pop(), len(members)


def load_npz_range(path: str, left: int, count: int, columns: list[int] | None = None) -> CTRData:
    """Rows `[left, left + count)` of a multi-hot day archive as bags (ids only): feature f's bag is the
    row's k_f ids. Dense features and labels are empty."""
    members = _npz_members(path)
    chosen = columns if columns is not None else list(range(len(members)))
    values, lengths = [], []
    with open(path, "rb") as raw:
        for f in chosen:
            offset, (_, width), dtype = members[f]
            raw.seek(offset + left * width * dtype.itemsize)
            block = np.frombuffer(raw.read(count * width * dtype.itemsize), dtype=dtype)
            values.append(torch.from_numpy(block.astype(np.int64)))
            lengths.append(torch.full((count,), width, dtype=torch.int64))
    return CTRData(torch.zeros(count, 0), torch.cat(values), torch.zeros(count), torch.stack(lengths, 1))


BAG_OFFSETS = "bag_offsets.npy"
"""Jagged multi-hot day files (what text conversion writes for bag columns): `day_{d}_bag_offsets.npy`
[N_d + 1, F] int64, each feature's running id count (row i's bag of feature f is ids
[offsets[i, f], offsets[i + 1, f]) of `day_{d}_bag_ids_{f}.npy` [T_f, 1])."""


def _bag_ids_path(offsets_path: str, f: int) -> str:
    return offsets_path[: -len(BAG_OFFSETS)] + f"bag_ids_{f}.npy"


def load_jagged_range(path: str, left: int, count: int, columns: list[int] | None = None) -> CTRData:
    """Rows `[left, left + count)` of jagged bag day files (`BAG_OFFSETS`) as bags (ids only)."""
    offsets = BinaryCriteoUtils.load_npy_range(path, left, count + 1).astype(np.int64)
    chosen = columns if columns is not None else list(range(offsets.shape[1]))
    values = []
    for f in chosen:
        start, stop = int(offsets[0, f]), int(offsets[-1, f])
        ids = (
            BinaryCriteoUtils.load_npy_range(_bag_ids_path(path, f), start, stop - start)
            if stop > start
            else None
        )
        values.append(
            torch.zeros(0, dtype=torch.int64)
            if ids is None
            else torch.from_numpy(ids.reshape(-1).astype(np.int64))
        )
    lengths = torch.from_numpy(np.diff(offsets[:, chosen], axis=0))
    return CTRData(torch.zeros(count, 0), torch.cat(values), torch.zeros(count), lengths)


def sparse_files(path: str) -> list[str]:
    """Every file a day's sparse data is in: the file itself, and for jagged bags each feature's ids."""
    if not path.endswith(BAG_OFFSETS):
        return [path]
    return [path] + [_bag_ids_path(path, f) for f in range(sparse_shape(path)[1])]


def sparse_shape(path: str) -> tuple[int, int]:
    """(rows, features) of a day's sparse file: one-hot .npy, DLRM v2's .npz or jagged bag offsets."""
    if path.endswith(".npz"):
        return npz_shape(path)
    shape = tuple(BinaryCriteoUtils.get_shape_from_npy(path))
    if path.endswith(BAG_OFFSETS) and len(shape) == 2:
        return shape[0] - 1, shape[1]
    return shape  # type: ignore[return-value]


def load_sparse_range(path: str, left: int, count: int, columns: list[int] | None = None) -> CTRData:
    """Rows `[left, left + count)` of a day's sparse file (ids only; one-hot stays an [N, F] matrix)."""
    if path.endswith(".npz"):
        return load_npz_range(path, left, count, columns)
    if path.endswith(BAG_OFFSETS):
        return load_jagged_range(path, left, count, columns)
    sparse = BinaryCriteoUtils.load_npy_range(path, left, count)
    if columns is not None:
        sparse = sparse[:, columns]
    return CTRData(
        torch.zeros(count, 0), torch.from_numpy(sparse.astype(np.int64, copy=False)), torch.zeros(count)
    )


def check_chunk(
    files: DayFiles,
    f: int,
    left: int,
    dense: np.ndarray,
    labels: np.ndarray,
    ids: CTRData,
    columns: list[int],
    limits: list[int] | None,
) -> None:
    """One-line errors naming file, row and column for what would train silently wrong: a dense value that
    is not finite, a label other than 0/1, a negative id, an id beyond its table (`limits`: rows per
    column read; None when ids are hashed modulo the table size).

    Raises:
        ValueError: the first bad value.
    """
    finite = np.isfinite(dense)
    if not finite.all():
        row, col = np.argwhere(~finite)[0]
        raise ValueError(
            f"{files.dense[f]}: row {left + row}, column {col}: dense value {dense[row, col]} (expected a "
            "finite number)"
        )
    flat = labels.reshape(-1)
    bad = np.flatnonzero((flat != 0) & (flat != 1))
    if len(bad):
        raise ValueError(f"{files.labels[f]}: row {left + bad[0]}: label {flat[bad[0]]} (expected 0 or 1)")
    bad_id = first_id_outside(ids, limits)
    if bad_id is None:
        return
    row, j, value = bad_id
    path = files.sparse[f]
    if value < 0:
        raise ValueError(f"{path}: row {left + row}, column {columns[j]}: negative id {value}")
    raise ValueError(
        f"{path}: row {left + row}, column {columns[j]}: id {value} is beyond the table's {limits[j]} rows "  # type: ignore[index]
        f"(a stale {VOCAB_FILE} beside the files? it is rebuilt when deleted)"
    )


def first_id_outside(ids: CTRData, limits: list[int] | None) -> tuple[int, int, int] | None:
    """(row, field, id) of the first negative id, or one at or beyond its field's `limits` entry (None:
    negatives only), in `ids` (one-hot or bags); None when every id is inside."""
    if ids.lengths is None:  # one matrix test; the loop below only finds the culprit
        matrix = ids.sparse.numpy()
        outside = matrix < 0 if limits is None else (matrix < 0) | (matrix >= np.asarray(limits))
        if not outside.any():
            return None
    for j in range(ids.num_fields):
        values = ids.field_ids(j)
        out = (values < 0) if limits is None else ((values < 0) | (values >= limits[j]))
        if not values.numel() or not bool(out.any()):
            continue
        k = int(torch.nonzero(out)[0])
        row = (
            k
            if ids.lengths is None
            else int(torch.searchsorted(ids.field_lengths(j).cumsum(0), k, right=True))
        )
        return row, j, int(values[k])
    return None


class BinaryRows:
    """Rows `[start, start + length)` of the concatenated day files, streamed in chunks (see `Rows`).

    Args:
        files: the day files.
        start: first row (over the concatenation of the files).
        length: number of rows.
        columns: sparse columns to read, in this order (None: all).
        hashes: per sparse column of the files, ids are taken modulo this (None: as stored).
        chunk_rows: rows read at once (and the shuffle window).
        sizes: per sparse column of the files, its table's rows: ids at or beyond are refused as read
            (None: not checked; with `hashes`, ids are taken modulo instead).
    """

    def __init__(
        self,
        files: DayFiles,
        start: int,
        length: int,
        columns: list[int] | None = None,
        hashes: list[int] | None = None,
        chunk_rows: int = 65536,
        sizes: list[int] | None = None,
    ) -> None:
        self.files, self.start, self.length = files, start, length
        self.columns, self.hashes, self.chunk_rows, self.sizes = columns, hashes, chunk_rows, sizes

    def __len__(self) -> int:
        return self.length

    def digest(self) -> str:
        """Of the rows' content: every day file's sampled digest, the row range, columns and hashing."""
        paths = self.files.dense + self.files.labels + [p for s in self.files.sparse for p in sparse_files(s)]
        spec = [[sampled_digest(p) for p in paths], self.start, self.length, self.columns, self.hashes]
        return hashlib.sha256(json.dumps(spec).encode()).hexdigest()

    def select(self, columns: list[int]) -> BinaryRows:
        base = self.columns if self.columns is not None else None
        mapped = [base[c] for c in columns] if base is not None else list(columns)
        return BinaryRows(
            self.files, self.start, self.length, mapped, self.hashes, self.chunk_rows, self.sizes
        )

    def rank_ranges(self, rank: int, world_size: int) -> list[tuple[int, int, int]]:
        """(file, first row in the file, rows) of this rank's share: TorchRec's contiguous per-rank range,
        cut to `length // world_size` rows so that every rank holds the same number."""
        if self.length < world_size:
            return []
        ranges, _ = BinaryCriteoUtils.get_file_row_ranges_and_remainder(
            self.files.rows, rank, world_size, self.start, self.start + self.length - 1
        )
        budget = self.length // world_size
        out = []
        for f, (left, right) in sorted(ranges.items()):
            count = min(right - left + 1, budget)
            if count > 0:
                out.append((f, left, count))
            budget -= count
        return out

    def _read(self, f: int, left: int, count: int) -> CTRData:
        """Rows `[left, left + count)` of day file `f` (TorchRec's `load_npy_range`, no mmap), checked as
        they are read (`check_chunk`)."""
        dense = BinaryCriteoUtils.load_npy_range(self.files.dense[f], left, count)
        labels = BinaryCriteoUtils.load_npy_range(self.files.labels[f], left, count)
        ids = load_sparse_range(self.files.sparse[f], left, count, self.columns)
        cols = self.columns if self.columns is not None else list(range(ids.num_fields))
        limits = None if self.hashes is not None or self.sizes is None else [self.sizes[c] for c in cols]
        check_chunk(self.files, f, left, dense, labels, ids, cols, limits)
        dense_t = torch.from_numpy(np.ascontiguousarray(dense, dtype=np.float32))
        labels_t = torch.from_numpy(labels.reshape(-1).astype(np.float32))
        values = ids.sparse
        if self.hashes is not None:
            hashes = torch.tensor([self.hashes[c] for c in cols])
            # ids modulo their feature's size: per column, or per id of each feature's bags
            values = values % (
                hashes if ids.lengths is None else torch.repeat_interleave(hashes, ids.lengths.sum(0))
            )
        return CTRData(dense_t, values, labels_t, ids.lengths)

    def _chunks(self, rank: int, world_size: int) -> list[tuple[int, int, int]]:
        return [
            (f, left + i, min(self.chunk_rows, count - i))
            for f, left, count in self.rank_ranges(rank, world_size)
            for i in range(0, count, self.chunk_rows)
        ]

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
        count = num_batches(self.length, batch_size, world_size, drop_last)
        if max_batches:
            count = min(count, max_batches)
        if count == 0:
            return
        chunks = self._chunks(rank, world_size)
        gen = torch.Generator().manual_seed(seed)
        if shuffle:
            chunks = [chunks[i] for i in torch.randperm(len(chunks), generator=gen).tolist()]
        pending: CTRData | None = None
        done = 0
        for f, left, rows in chunks:
            part = self._read(f, left, rows)
            if shuffle:
                part = part.subset(torch.randperm(len(part), generator=gen))
            if pending is not None and len(pending):
                part = concat_rows([pending, part])
            full = len(part) // batch_size
            for b in range(full):
                yield slice_batch(part, b * batch_size, (b + 1) * batch_size, keys)
                done += 1
                if done == count:
                    return
            pending = part.subset(torch.arange(full * batch_size, len(part)))
        if pending is not None and len(pending) and done < count:
            yield slice_batch(pending, 0, len(pending), keys)

    def head(self, n: int) -> CTRData:
        whole = BinaryRows(
            self.files, self.start, min(n, self.length), self.columns, self.hashes, sizes=self.sizes
        )
        parts = [whole._read(f, left, rows) for f, left, rows in whole._chunks(0, 1)]
        if not parts:
            return CTRData(torch.zeros(0, 0), torch.zeros(0, 0, dtype=torch.int64), torch.zeros(0))
        return concat_rows(parts)


SAMPLED_BLOCKS = 64
SAMPLED_BLOCK_BYTES = 1 << 16


def sampled_digest(path: str) -> str:
    """A digest of a file's size and of `SAMPLED_BLOCKS` blocks spread over it (the first and last
    included): a file rewritten in place (other labels, other ids) gets another digest without reading
    it whole; an edit confined to the bytes between blocks is not seen. Read once per file version."""
    stat = os.stat(path)
    return _sampled_digest(path, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=4096)
def _sampled_digest(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256(str(size).encode())
    starts = np.linspace(0, max(size - SAMPLED_BLOCK_BYTES, 0), SAMPLED_BLOCKS).astype(np.int64)
    with open(path, "rb") as f:
        for start in sorted(set(starts.tolist())):
            f.seek(start)
            digest.update(f.read(SAMPLED_BLOCK_BYTES))
    return digest.hexdigest()[:16]


def files_key(files: DayFiles) -> list[list]:
    return [
        [os.path.basename(p), os.path.getsize(p), int(os.path.getmtime(p))]
        for p in files.sparse + files.labels
    ]


def read_meta(files: DayFiles, directory: str) -> dict:
    """What is recorded beside the files (`VOCAB_FILE`) while they are unchanged: `num_embeddings`, and
    for converted text `dense_names`, `sparse_names`, `val_rows`; {} if nothing (or a stale record)."""
    path = os.path.join(directory, VOCAB_FILE)
    if not os.path.exists(path):
        return {}
    try:
        saved = json.loads(io.read_text(path))
    except ValueError:
        return {}  # a damaged record is recomputed
    if not isinstance(saved, dict) or saved.get("files") != files_key(files):
        return {}
    if saved.get("sha256") != _record_digest(saved):  # edited by hand (or written before checksums)
        logger.warning("%s: its checksum does not match; the record is rebuilt from the files", path)
        return {}
    return saved


def _record_digest(record: dict) -> str:
    body = {k: v for k, v in record.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def write_meta(directory: str, record: dict) -> None:
    """Writes `VOCAB_FILE` with a checksum of its content (an edited record is not trusted)."""
    io.write_text_atomic(
        os.path.join(directory, VOCAB_FILE), json.dumps({**record, "sha256": _record_digest(record)})
    )


def table_sizes(files: DayFiles, directory: str, chunk_rows: int = 1 << 20) -> list[int]:
    """Largest id + 1 per sparse column over all days, cached in `directory/VOCAB_FILE` (one chunked
    pass; labels are checked to be 0/1 on the way).

    Raises:
        ValueError: a negative id or a label other than 0/1, naming the file and row.
    """
    saved = read_meta(files, directory)
    if "num_embeddings" in saved:
        return [int(x) for x in saved["num_embeddings"]]
    top: np.ndarray | None = None
    for path, label_path, rows in zip(files.sparse, files.labels, files.rows, strict=True):
        for left in range(0, rows, chunk_rows):
            count = min(chunk_rows, rows - left)
            m = _chunk_maxima(path, left, count)
            labels = BinaryCriteoUtils.load_npy_range(label_path, left, count).reshape(-1)
            bad = np.flatnonzero((labels != 0) & (labels != 1))
            if len(bad):
                raise ValueError(
                    f"{label_path}: row {left + bad[0]}: label {labels[bad[0]]}, expected 0 or 1"
                )
            top = m if top is None else np.maximum(top, m)
    assert top is not None
    sizes = [int(x) + 1 for x in top]
    try:
        record = {"files": files_key(files), "num_embeddings": sizes}
        write_meta(directory, record)
    except OSError:
        pass  # a read-only data directory: recomputed next time
    return sizes


MAX_TABLE_ID = 2**31 - 1
"""Ids from this up would size a table (largest id + 1) beyond what a table can hold; hash them instead."""


def _chunk_maxima(path: str, left: int, count: int) -> np.ndarray:
    """[F] largest id of each feature in rows `[left, left + count)` of a sparse day file (-1: none).

    Raises:
        ValueError: a negative id, or one at or above `MAX_TABLE_ID`, naming the file, row and column.
    """
    ids = load_sparse_range(path, left, count)
    bad_id = first_id_outside(ids, [MAX_TABLE_ID] * ids.num_fields)
    if bad_id is not None:
        row, j, value = bad_id
        if value < 0:
            raise ValueError(f"{path}: row {left + row}, column {j}: negative id {value}")
        raise ValueError(_too_large(path, left + row, j, value))
    if ids.lengths is None:
        return ids.sparse.numpy().max(axis=0) if count else np.full(ids.num_fields, -1)
    return np.array([int(v.max()) if v.numel() else -1 for v in map(ids.field_ids, range(ids.num_fields))])


def _too_large(path: str, row: int, column: int, value: int) -> str:
    return (
        f"{path}: row {row}, column {column}: id {value} would size its table to {value + 1} rows (expected "
        f"ids < {MAX_TABLE_ID}); set data.num_embeddings_per_feature to hash ids into tables of that size"
    )


def load_criteo_binary(cfg: DataConfig) -> Splits:
    """The day files of `cfg.path` as streamed train/val/test `Splits`.

    Raises:
        ValueError: see `find_days` and `table_sizes`; `num_embeddings_per_feature` of the wrong length.
    """
    files = find_days(cfg.path)
    num_sparse = sparse_shape(files.sparse[0])[1]
    num_dense = BinaryCriteoUtils.get_shape_from_npy(files.dense[0])[1]
    meta = read_meta(files, cfg.path)
    hashes: list[int] | None = None
    if cfg.num_embeddings_per_feature:
        if len(cfg.num_embeddings_per_feature) != num_sparse:
            raise ValueError(
                f"data.num_embeddings_per_feature: {len(cfg.num_embeddings_per_feature)} entries, the files "
                f"have {num_sparse} sparse columns"
            )
        hashes = sizes = [int(x) for x in cfg.num_embeddings_per_feature]
    else:
        sizes = table_sizes(files, cfg.path)
    # Names recorded with the files (converted text keeps its columns' names), else TorchRec's Criteo
    # names (DEFAULT_INT_NAMES / DEFAULT_CAT_NAMES) for any number of columns.
    dense_names = meta.get("dense_names") or [f"int_{i}" for i in range(num_dense)]
    sparse_names = meta.get("sparse_names") or [f"cat_{i}" for i in range(num_sparse)]
    schema = Schema(
        dense_names=list(dense_names),
        sparse=[SparseFeature(name, n) for name, n in zip(sparse_names, sizes, strict=True)],
    )
    last = len(files.rows) - 1
    train_rows = sum(files.rows[:last])
    if cfg.max_rows:
        train_rows = min(train_rows, cfg.max_rows)
    # As TorchRec's datapipe: the first ceil(N/2) rows of the last day validate, the rest test (unless
    # the files record another boundary: converted text files split by a hash per row).
    half = int(meta.get("val_rows", -(-files.rows[last] // 2)))
    chunk = cfg.stream_chunk_rows

    def rows(start: int, length: int) -> Rows:
        return BinaryRows(files, start, length, None, hashes, chunk, sizes)

    start_last = sum(files.rows[:last])
    splits = Splits(
        schema,
        rows(0, train_rows),
        rows(start_last, half),
        rows(start_last + half, files.rows[last] - half),
    )
    return splits if streamed(cfg, files) else in_memory(splits)


def streamed(cfg: DataConfig, files: DayFiles) -> bool:
    """Whether `data.streaming` (auto: by the files' total size) streams these files."""
    if cfg.streaming != "auto":
        return cfg.streaming == "always"
    total = sum(os.path.getsize(p) for p in files.dense + files.sparse + files.labels)
    return total > cfg.in_memory_max_mb * 2**20


def in_memory(splits: Splits) -> Splits:
    """Every split read whole into memory (`CTRData`)."""
    return Splits(
        splits.schema, *(getattr(splits, s).head(len(getattr(splits, s))) for s in ("train", "val", "test"))
    )


def write_days(splits: Splits, directory: str, train_days: int, chunk_rows: int = 1 << 20) -> DayFiles:
    """Writes in-memory `splits` in TorchRec's format: train as `train_days` days, then one day holding
    val followed by test (so the reader's halves give back val and test when they have equal length).

    Files are written atomically (each appears whole or not at all). Used by `tools/criteo_binary.py`.
    """
    for name in ("train", "val", "test"):
        if not isinstance(getattr(splits, name), CTRData):
            raise ValueError(f"write_days: the {name} split is not in memory")
    train, val, test = splits.train, splits.val, splits.test
    assert isinstance(train, CTRData) and isinstance(val, CTRData) and isinstance(test, CTRData)
    io.makedirs(directory)
    bounds = np.linspace(0, len(train), train_days + 1).astype(int)
    days = [train.subset(torch.arange(a, b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    days.append(
        CTRData(
            torch.cat([val.dense, test.dense]),
            torch.cat([val.sparse, test.sparse]),
            torch.cat([val.labels, test.labels]),
        )
    )
    for d, day in enumerate(days):
        sparse_dtype = np.int32 if day.sparse.numel() == 0 or int(day.sparse.max()) < 2**31 else np.int64
        arrays = {
            "dense": day.dense.numpy().astype(np.float32),
            "sparse": day.sparse.numpy().astype(sparse_dtype),
            "labels": day.labels.numpy().astype(np.int32).reshape(-1, 1),
        }
        for kind, array in arrays.items():
            io.save_numpy_atomic(os.path.join(directory, f"day_{d}_{kind}.npy"), array)
    return find_days(directory)
