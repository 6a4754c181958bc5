"""Criteo TSV and tabular CSV/TSV files streamed: converted once, chunk by chunk, into TorchRec's day-file
format in a cache beside the data, then read per rank like `criteo_binary`.

Two streaming passes over the text with the readers' own parsing and checks (`read_delimited` with a
sink: one chunk of `CHUNK_ROWS` rows is alive at a time):

1. each row's split is decided by a seeded hash of its row number (`split_of_rows`: the `data.split`
   fractions, `data.split_seed`), so no pass needs all rows; the training rows' value counts are
   accumulated per field as sorted (value, count) arrays (`ValueCounts`: numpy, merged in amortised
   batches) -- or nothing, with `data.hash_size` (stable hashing, no vocabulary);
2. the vocabulary is the in-memory one's rule (`build_vocabulary`: values seen at least `min_count` times
   in train get ids 1.. by descending count, the rest the OOV id 0), rows are encoded chunk by chunk and
   appended to `day_0_*.npy` (train) and `day_1_*.npy` (validation rows, then test rows).

The cache (`<data.cache_dir>/stream/<key>/` when `data.cache_dir` is set, else
`<data dir>/.torchrec_aes_stream/<key>/`, or `~/.cache/torchrec_aes/stream/<key>/` when the data's directory
is not writable) is keyed by the files (names, sizes, times) and every setting that changes its content;
`torchrec_aes_vocab.json` is written last, so a cache without it is incomplete and is rebuilt. With
several ranks, rank 0 converts and the others wait for it; then each rank reads only its own rows.

Example::

    splits = load_text_streamed(DataConfig(type="criteo", path="day_0.gz,day_1.gz", streaming="always"))
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import time
from dataclasses import replace

import numpy as np
from torchrec.datasets.criteo import BinaryCriteoUtils

from torchrec_aes import io
from torchrec_aes.config import DataConfig
from torchrec_aes.data.binary import (
    BAG_OFFSETS,
    VOCAB_FILE,
    files_key,
    find_days,
    load_criteo_binary,
    load_jagged_range,
    read_meta,
    sampled_digest,
    write_meta,
)
from torchrec_aes.data.dataset import Splits
from torchrec_aes.data.planted import hash_uniform
from torchrec_aes.data.preprocess import (
    OOV_ID,
    RawTable,
    as_str_array,
    bag_columns,
    group_values,
    hash_ids,
    split_bags,
    transform_dense,
    vocabulary_groups,
)
from torchrec_aes.data.textfile import input_paths

logger = logging.getLogger(__name__)

CACHE_DIR_NAME = ".torchrec_aes_stream"
CHUNK = 1 << 16
STREAM_READERS = {
    "criteo": ("torchrec_aes.data.criteo", "read_criteo"),
    "tabular": ("torchrec_aes.data.tabular", "read_tabular"),
}
"""Readers that can stream (a sink per parsed chunk)."""


def split_of_rows(start: int, n: int, fractions: list[float], seed: int) -> np.ndarray:
    """[n] int8 split (0 train, 1 val, 2 test) of rows `start .. start + n - 1`: a seeded hash of the row
    number against the cumulative fractions, so a row's split needs no other row."""
    key = np.arange(start, start + n, dtype=np.uint64) ^ np.uint64((seed * 0x9E3779B97F4A7C15) & (2**64 - 1))
    u = hash_uniform(key)
    return (u >= fractions[0]).astype(np.int8) + (u >= fractions[0] + fractions[1]).astype(np.int8)


class ValueCounts:
    """Counts of one field's values, held as distinct values with counts, merged in amortised batches."""

    def __init__(self) -> None:
        self.values = np.array([], dtype="U1")
        self.counts = np.zeros(0, dtype=np.int64)
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        self._pending_size = 0

    def add(self, values: np.ndarray) -> None:
        distinct, inverse = group_values(as_str_array(values))
        self._pending.append((distinct, np.bincount(inverse, minlength=len(distinct))))
        self._pending_size += len(distinct)
        if self._pending_size > max(len(self.values), 1 << 18):
            self._merge()

    def _merge(self) -> None:
        if not self._pending:
            return
        values = np.concatenate([self.values.astype(str)] + [v for v, _ in self._pending])
        counts = np.concatenate([self.counts] + [c for _, c in self._pending])
        distinct, inverse = group_values(as_str_array(values))
        self.values, self.counts = distinct, np.bincount(inverse, weights=counts, minlength=len(distinct))
        self.counts = self.counts.astype(np.int64)
        self._pending, self._pending_size = [], 0

    def vocabulary(self, min_count: int) -> tuple[np.ndarray, np.ndarray]:
        """(values sorted ascending, their ids): `build_vocabulary`'s rule over the counted rows."""
        self._merge()
        kept = np.flatnonzero((self.counts >= max(min_count, 1)) & (self.values != ""))
        kept = kept[np.argsort(self.values[kept], kind="stable")]
        kept = kept[np.argsort(-self.counts[kept], kind="stable")]
        ids = np.arange(1, len(kept) + 1, dtype=np.int64)
        order = np.argsort(self.values[kept], kind="stable")
        return self.values[kept][order], ids[order]


def _lookup(values: np.ndarray, sorted_values: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Ids of `values` in a vocabulary (sorted values -> ids); unknown values get `OOV_ID`."""
    if not len(sorted_values):
        return np.full(len(values), OOV_ID, dtype=np.int64)
    values = as_str_array(values)
    pos = np.minimum(np.searchsorted(sorted_values, values), len(sorted_values) - 1)
    return np.where(sorted_values[pos] == values, ids[pos], OOV_ID)


class _NpyAppender:
    """Writes an [rows, width] .npy file chunk by chunk (the row count is known up front), atomically."""

    def __init__(self, path: str, rows: int, width: int, dtype: np.dtype) -> None:
        self.path, self.tmp = path, path + ".tmp"
        self.dtype, self.rows, self.written = np.dtype(dtype), rows, 0
        self.f = open(self.tmp, "wb")  # noqa: SIM115 (closed by `close`)
        header = {
            "descr": np.lib.format.dtype_to_descr(self.dtype),
            "fortran_order": False,
            "shape": (rows, width),
        }
        np.lib.format.write_array_header_1_0(self.f, header)

    def append(self, array: np.ndarray) -> None:
        try:
            self.f.write(np.ascontiguousarray(array, dtype=self.dtype).tobytes())
        except OSError as e:  # a full disk: name the cache file (the OS error alone names none)
            raise OSError(e.errno, f"{e.strerror} (writing the stream cache)", self.path) from None
        self.written += len(array)

    def close(self) -> None:
        try:
            self.f.close()
        except OSError as e:
            raise OSError(e.errno, f"{e.strerror} (writing the stream cache)", self.path) from None
        assert self.written == self.rows, f"{self.path}: wrote {self.written} rows of {self.rows}"
        os.replace(self.tmp, self.path)


def _key(cfg: DataConfig, paths: list[str]) -> str:
    # Size and time, and a sampled digest of the content: a file rewritten in place keeps neither cache.
    files = [
        [os.path.abspath(p), os.path.getsize(p), int(os.path.getmtime(p)), sampled_digest(p)] for p in paths
    ]
    fields = (
        "type", "min_count", "hash_size", "split", "split_seed", "max_rows", "skip_bad_rows", "label_column",
        "dense_columns", "sparse_columns", "delimiter", "header", "multi_hot_columns", "multi_hot_separator",
        "max_ids_per_row", "shared_tables",
    )  # fmt: skip
    spec = {"files": files, "schema": 1, **{f: getattr(cfg, f) for f in fields}}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def cache_dir(cfg: DataConfig) -> str:
    """Where the converted files of `cfg`'s text files go: under `data.cache_dir` when it is set, else
    beside the data (`<dir>/.torchrec_aes_stream/<key>`) when that directory is writable, else under
    `~/.cache/torchrec_aes`."""
    paths = input_paths(cfg)
    key = _key(cfg, paths)
    if cfg.cache_dir:
        return os.path.join(cfg.cache_dir, "stream", key)
    beside = os.path.join(os.path.dirname(os.path.abspath(paths[0])), CACHE_DIR_NAME)
    if os.access(os.path.dirname(beside), os.W_OK):
        return os.path.join(beside, key)
    return os.path.join(os.path.expanduser("~"), ".cache", "torchrec_aes", "stream", key)


class _Bags:
    """A day's jagged bag files being written (`binary.BAG_OFFSETS`): running offsets [rows + 1, F] and one
    ids file per feature, their sizes known from the counting pass."""

    def __init__(self, prefix: str, rows: int, totals: list[int], dtype: np.dtype) -> None:
        self.offsets = _NpyAppender(prefix + BAG_OFFSETS, rows + 1, len(totals), np.dtype(np.int64))
        self.ids = [_NpyAppender(prefix + f"bag_ids_{f}.npy", t, 1, dtype) for f, t in enumerate(totals)]
        self.running = np.zeros(len(totals), dtype=np.int64)
        self.offsets.append(self.running[None, :])

    def append(self, bags: list[tuple[np.ndarray, np.ndarray]]) -> None:
        """One chunk: per feature (ids of its bags in row order, bag lengths [rows])."""
        ends = np.stack([np.cumsum(lengths) for _, lengths in bags], axis=1) + self.running
        if len(ends):
            self.offsets.append(ends)
            self.running = ends[-1].copy()
        for writer, (ids, _) in zip(self.ids, bags, strict=True):
            writer.append(ids.reshape(-1, 1))

    def close(self) -> None:
        self.offsets.close()
        for w in self.ids:
            w.close()


def convert(cfg: DataConfig, out: str) -> None:
    """The two passes (see the module docstring): `cfg`'s text files -> day files in `out`."""

    module, function = STREAM_READERS[cfg.type]
    read = getattr(importlib.import_module(module), function)
    t0 = time.perf_counter()
    counts: list[ValueCounts] = []
    groups: list[list[int]] = []  # the features that share a vocabulary (shared tables)
    multi: list[bool] = []
    sizes = [0, 0, 0]
    id_totals: list[list[int]] = [[], [], []]  # per split, ids per feature (multi-hot data)
    truncated = [0, 0]
    seen = 0

    def bags_of(part: RawTable) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per feature: (its tokens in row order, bag lengths [rows]); one token per row if one-hot."""
        out = []
        for f, values in enumerate(part.categorical):
            if multi[f]:
                tokens, lengths, cut = split_bags(values, cfg.multi_hot_separator, cfg.max_ids_per_row)
                truncated[0] += cut[0]
                truncated[1] += cut[1]
                out.append((tokens, lengths))
            else:
                out.append((values, np.ones(len(values), dtype=np.int64)))
        return out

    def count(part: RawTable) -> None:
        nonlocal seen
        if not multi:
            bagged = bag_columns(cfg, part.sparse_names)
            multi.extend(name in bagged for name in part.sparse_names)
            groups.extend(vocabulary_groups(part.sparse_names, cfg.shared_tables))
            for s in range(3):
                id_totals[s].extend([0] * len(part.sparse_names))
        split = split_of_rows(seen, len(part), cfg.split, cfg.split_seed)
        seen += len(part)
        for s in range(3):
            sizes[s] += int((split == s).sum())
        bags = bags_of(part)
        for f, (_, lengths) in enumerate(bags):
            for s in range(3):
                id_totals[s][f] += int(lengths[split == s].sum())
        if cfg.hash_size:
            return
        if not counts:
            counts.extend(ValueCounts() for _ in groups)
        for c, group in zip(counts, groups, strict=True):
            for f in group:
                tokens, lengths = bags[f]
                c.add(tokens[np.repeat(split == 0, lengths)])

    names = read(cfg, sink=count)
    if min(sizes) == 0:
        raise ValueError(
            f"data.path: {cfg.path}: {seen} rows give an empty split (train/val/test {sizes}); "
            f"data.split={cfg.split} needs more rows"
        )
    bag_data = any(multi)
    vocab: list[tuple[np.ndarray, np.ndarray]] = [(np.array([]), np.array([]))] * len(names.sparse_names)
    for group, c in zip(groups, counts, strict=False):  # no counts with hashing
        group_vocab = c.vocabulary(cfg.min_count)
        for f in group:
            vocab[f] = group_vocab
    num_embeddings = (
        [cfg.hash_size] * len(names.sparse_names) if cfg.hash_size else [len(v) + 1 for v, _ in vocab]
    )
    io.makedirs(out)
    widths = {"dense": len(names.dense_names), "labels": 1}
    if not bag_data:
        widths["sparse"] = len(names.sparse_names)
    id_dtype = np.dtype(np.int32 if max(num_embeddings) < 2**31 else np.int64)
    dtypes = {"dense": np.dtype(np.float32), "sparse": id_dtype, "labels": np.dtype(np.int32)}
    day_rows = {0: sizes[0], 1: sizes[1] + sizes[2]}
    # day_0: train; day_1: val rows, then test rows (`val_rows` in the metadata marks the boundary).
    writers = {
        (day, kind): _NpyAppender(
            os.path.join(out, f"day_{day}_{kind}.npy"), rows, widths[kind], dtypes[kind]
        )
        for day, rows in day_rows.items()
        for kind in widths
    }
    # Test rows go to a side file first: day 1 holds all val rows, then all test rows.
    test_writers = {
        kind: _NpyAppender(os.path.join(out, f"test_{kind}.npy"), sizes[2], widths[kind], dtypes[kind])
        for kind in widths
    }
    bag_writers: dict[int, _Bags] = {}
    if bag_data:
        val_test = [a + b for a, b in zip(id_totals[1], id_totals[2], strict=True)]
        bag_writers = {
            0: _Bags(os.path.join(out, "day_0_"), sizes[0], id_totals[0], id_dtype),
            1: _Bags(os.path.join(out, "day_1_"), day_rows[1], val_test, id_dtype),
            2: _Bags(os.path.join(out, "test_"), sizes[2], id_totals[2], id_dtype),
        }
    seen = 0

    def encode(part: RawTable) -> None:
        nonlocal seen
        split = split_of_rows(seen, len(part), cfg.split, cfg.split_seed)
        seen += len(part)
        bags = bags_of(part)
        if cfg.hash_size:
            ids = [hash_ids(tokens, cfg.hash_size) for tokens, _ in bags]
        else:
            ids = [_lookup(tokens, *vocab[f]) for f, (tokens, _) in enumerate(bags)]
        arrays = {"dense": transform_dense(part.dense), "labels": part.labels.astype(np.int32).reshape(-1, 1)}
        if not bag_data:
            arrays["sparse"] = np.stack(ids, axis=1)
        for kind, array in arrays.items():
            for s in (0, 1):
                writers[(s, kind)].append(array[split == s])
            test_writers[kind].append(array[split == 2])
        for s, writer in bag_writers.items():
            keep = split == s
            writer.append(
                [
                    (i[np.repeat(keep, lengths)], lengths[keep])
                    for i, (_, lengths) in zip(ids, bags, strict=True)
                ]
            )

    truncated[:] = [0, 0]  # counted again, once, as the rows are encoded
    read(cfg, sink=encode)
    for kind, w in test_writers.items():
        w.close()
        for a in range(0, sizes[2], CHUNK):  # appended after day 1's val rows, a chunk at a time
            writers[(1, kind)].append(BinaryCriteoUtils.load_npy_range(w.path, a, min(CHUNK, sizes[2] - a)))
        os.remove(w.path)
    if bag_data:
        _append_test_bags(bag_writers[2], bag_writers[1], sizes[2])
        bag_writers[0].close()
        bag_writers[1].close()
    for w in writers.values():
        w.close()
    if truncated[0]:
        logger.warning(
            "data.max_ids_per_row=%d: truncated %d bags (%d ids dropped)", cfg.max_ids_per_row, *truncated
        )
    meta = {
        "files": files_key(find_days(out)),
        "num_embeddings": num_embeddings,
        "dense_names": names.dense_names,
        "sparse_names": names.sparse_names,
        "val_rows": sizes[1],
        "source": input_paths(cfg),
    }
    write_meta(out, meta)
    logger.info(
        "streamed %s into %s: %d rows (train/val/test %s) in %.0f s", cfg.path, out, seen, sizes,
        time.perf_counter() - t0,
    )  # fmt: skip


def _append_test_bags(test: _Bags, day: _Bags, rows: int) -> None:
    """Closes the test rows' side bag files and appends them to `day` (after its val rows), a chunk at a
    time; the side files are removed."""
    test.close()
    path = test.offsets.path
    for a in range(0, rows, CHUNK):
        count = min(CHUNK, rows - a)
        part = load_jagged_range(path, a, count)
        day.append(
            [(part.field_ids(f).numpy(), part.field_lengths(f).numpy()) for f in range(part.num_fields)]
        )
    os.remove(path)
    for w in test.ids:
        os.remove(w.path)


def _complete(directory: str) -> bool:
    """Whether the cache holds a finished conversion: its record, written last, intact (its checksum and
    the files it lists); a damaged or edited cache is converted again."""
    if not os.path.exists(os.path.join(directory, VOCAB_FILE)):
        return False
    try:
        return bool(read_meta(find_days(directory), directory))
    except ValueError:
        return False


def converted(cfg: DataConfig, timeout: float = 24 * 3600) -> str:
    """The cache directory of `cfg`'s text files, converted by rank 0 if it is not complete (other ranks
    wait for it)."""
    out = cache_dir(cfg)
    if _complete(out):
        return out
    if int(os.environ.get("RANK", "0")) == 0:
        convert(cfg, out)
        return out
    deadline = time.monotonic() + timeout
    while not _complete(out):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{out}: rank 0 did not finish converting {cfg.path} in {timeout:.0f} s")
        time.sleep(1.0)
    return out


def streamed(cfg: DataConfig) -> bool:
    """Whether `data.streaming` (auto: by the text files' total size) streams `cfg`'s files."""
    if cfg.type not in STREAM_READERS or cfg.streaming == "never":
        return False
    if cfg.streaming == "always":
        return True
    return sum(os.path.getsize(p) for p in input_paths(cfg)) > cfg.in_memory_max_mb * 2**20


def load_text_streamed(cfg: DataConfig) -> Splits:
    """`cfg`'s text files as streamed `Splits`, read per rank from their converted cache."""

    out = converted(cfg)
    return load_criteo_binary(
        replace(cfg, path=out, max_rows=0, num_embeddings_per_feature=[], streaming="always")
    )
