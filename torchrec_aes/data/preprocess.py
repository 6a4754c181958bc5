"""Raw CTR tables and their preprocessing into model-ready `Splits`.

Readers (criteo.py, tabular.py, libfm.py) turn files into a `RawTable`: dense values as floats with NaN
for missing, categorical values as strings with "" for missing, and 0/1 labels. `preprocess` then applies
the common CTR protocol (METHODS.md): a seeded 8:1:1 split, per-field vocabularies built on the train rows
only with a min-count threshold (rare and missing values share the field's OOV id 0) or stable hashing
modulo a table size, and log(max(x, 0) + 1) on dense values.

Everything is vectorised with numpy: a 1M-row x 26-field table preprocesses in a few seconds.

Example::

    raw = read_criteo(cfg)          # RawTable
    splits = preprocess(raw, cfg)   # Splits(schema, train, val, test)
"""

from __future__ import annotations

import codecs
import gzip
import io
import logging
import re
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TextIO

import numpy as np
import torch
from iopath.common.file_io import g_pathmgr

from torchrec_aes.config import DataConfig
from torchrec_aes.data.dataset import CTRData, Splits, split_rows
from torchrec_aes.data.schema import Schema, SparseFeature

logger = logging.getLogger(__name__)

OOV_ID = 0
"""Id of rare, unseen and missing values of every field when a vocabulary is built."""

MAX_SKIPPED_SHARE = 0.1
"""Largest share of the rows read that `skip_bad_rows` may skip before reading stops with an error.

Skipping is meant for a few stray lines; losing more than this share means the reader and the files
disagree (wrong format, wrong delimiter, a damaged file), and training on the remainder would be silent
data loss. `SKIPPED_ROWS_TOLERATED` rows are always allowed. This module constant becomes the config
field `data.max_skipped_share` once the config refactor lands.
"""

SKIPPED_ROWS_TOLERATED = 10
"""Skipped rows always tolerated whatever their share: a few bad lines in a small file are not mass loss."""


@dataclass
class RawTable:
    """A CTR table as read from files, before vocabularies and transforms.

    Args:
        dense: [N, num_dense] float64, NaN where a value is missing.
        categorical: one [N] array of str per sparse field, "" where a value is missing.
        labels: [N] labels in {0, 1}.
        dense_names: names of the dense columns.
        sparse_names: names of the categorical fields (they become KJT keys).
        label_name: name of the label column.
        skipped_rows: malformed rows the reader skipped (with `skip_bad_rows`).
    """

    dense: np.ndarray
    categorical: list[np.ndarray]
    labels: np.ndarray
    dense_names: list[str]
    sparse_names: list[str]
    label_name: str = "label"
    skipped_rows: int = 0

    def __post_init__(self) -> None:
        n = len(self.labels)
        if self.dense.ndim != 2 or self.dense.shape != (n, len(self.dense_names)):
            raise ValueError(
                f"RawTable: dense has shape {tuple(self.dense.shape)}, "
                f"expected ({n}, {len(self.dense_names)})"
            )
        if len(self.categorical) != len(self.sparse_names):
            raise ValueError(
                f"RawTable: {len(self.categorical)} categorical columns for "
                f"{len(self.sparse_names)} sparse names"
            )
        for name, col in zip(self.sparse_names, self.categorical, strict=True):
            if col.shape != (n,):
                raise ValueError(
                    f"RawTable: categorical column '{name}' has shape {col.shape}, expected ({n},)"
                )

    def __len__(self) -> int:
        return int(len(self.labels))


# ---------------------------------------------------------------------------------------------------------
# Reading helpers shared by the readers
# ---------------------------------------------------------------------------------------------------------


class DataFileNotFoundError(ValueError, FileNotFoundError):
    """A data file that does not exist.

    A user error like every other data error (`ValueError`), that callers catching `FileNotFoundError`
    still see (the pattern of `io.UnsupportedOperation`, which is both an `OSError` and a `ValueError`).
    """


def _native(path: str) -> str:
    # iopath's default handler takes plain local paths only; file:// URIs name local files too.
    return path.removeprefix("file://")


def check_file(path: str, key: str = "data.path") -> None:
    """Checks that `path` names an existing file, not a directory.

    Args:
        path: local path or iopath URI.
        key: the config field that named it, for the message.

    Raises:
        DataFileNotFoundError: the path does not exist.
        ValueError: the path is a directory.
    """
    if not g_pathmgr.exists(_native(path)):
        raise DataFileNotFoundError(f"{key}: {path}: no such file")
    if g_pathmgr.isdir(_native(path)):
        raise ValueError(f"{key}: {path}: is a directory (expected a file)")


def input_paths(cfg: DataConfig) -> list[str]:
    """The files named by `cfg.path` (comma-separated), each checked to exist.

    Raises:
        ValueError: `data.path` is empty or names a file that does not exist or is a directory.
    """
    paths = [p.strip() for p in cfg.path.split(",") if p.strip()]
    if not paths:
        raise ValueError(
            f"data.path: empty; data.type={cfg.type} needs the file(s) to read (comma-separated)"
        )
    for path in paths:
        check_file(path)
    return paths


class _UndecodableCount:
    """How many runs of non-UTF-8 bytes `open_text` has escaped so far, in this process."""

    value = 0


_SURROGATEESCAPE = codecs.lookup_error("surrogateescape")


def _escape_undecodable(error: UnicodeError) -> tuple[str | bytes, int]:
    # Called by the C decoder only for bytes that are not UTF-8, so well-formed files pay nothing.
    _UndecodableCount.value += 1
    return _SURROGATEESCAPE(error)


_UNDECODABLE_ERRORS = "torchrec_aes.escape_undecodable"
codecs.register_error(_UNDECODABLE_ERRORS, _escape_undecodable)

# surrogateescape maps each undecodable byte 0x80..0xFF to one lone surrogate U+DC80..U+DCFF; valid UTF-8
# never decodes to a lone surrogate, so one of these characters in a line marks exactly the bad bytes.
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")


class TextFile:
    """A text file opened by `open_text`: iterate it for its lines, ask it whether bad bytes were seen.

    Bytes that are not UTF-8 do not abort decoding: each becomes a lone surrogate (U+DC80..U+DCFF), and
    `undecodable()` turns true. Readers then check the lines they hold with `undecodable_byte` and reject
    or skip those rows by line number, while files without bad bytes keep the C-speed path untouched.

    Args:
        path: the file, for messages.
        text: the decoded stream.
    """

    def __init__(self, path: str, text: TextIO) -> None:
        self.path = path
        self._text = text
        self._escaped_before = _UndecodableCount.value

    def __iter__(self) -> Iterator[str]:
        # The stream is its own iterator: csv.reader and for-loops pull lines straight from C.
        return iter(self._text)

    def undecodable(self) -> bool:
        """Whether bytes that are not UTF-8 may have been decoded since the file was opened.

        Counted per process, so another file read at the same time can make this true too; it then only
        costs a check of the lines, never a wrong answer.
        """
        return _UndecodableCount.value != self._escaped_before


def undecodable_byte(fields: Sequence[str]) -> int | None:
    """The first byte that was not UTF-8 in the fields of a line (or in `[line]`), or None if none."""
    for text in fields:
        if not text.isascii():
            match = _ESCAPED_BYTE.search(text)
            if match:
                return ord(match.group()) - 0xDC00
    return None


def not_utf8(byte: int) -> str:
    """The message for a line with a byte that is not UTF-8 (without the FILE:LINE prefix)."""
    return f"not valid UTF-8 (byte 0x{byte:02x}; expected UTF-8 text)"


def drop_undecodable(
    rows: list[list[str]], lines: list[int], errors: dict[int, str]
) -> tuple[list[list[str]], list[int]]:
    """Moves rows holding bytes that are not UTF-8 from `rows`/`lines` to `errors` (line -> message)."""
    keep_rows: list[list[str]] = []
    keep_lines: list[int] = []
    for row, line in zip(rows, lines, strict=True):
        byte = undecodable_byte(row)
        if byte is None:
            keep_rows.append(row)
            keep_lines.append(line)
        else:
            errors[line] = not_utf8(byte)
    return keep_rows, keep_lines


STREAM_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile)
"""What a damaged gzip file raises while it is read; `stream_error` turns them into user errors."""


def stream_error(path: str, line: int, error: BaseException) -> ValueError:
    """A one-line error for a damaged (truncated or corrupt) gzip file, naming the last line read.

    Args:
        path: the file.
        line: the last complete line read before the failure (0 = none).
        error: one of `STREAM_ERRORS`.
    """
    where = f"{path}:{line}: " if line else f"{path}: "
    after = "after this line" if line else "before its first line"
    if isinstance(error, EOFError):
        what = f"file ends early {after} (truncated gzip stream; expected a complete gzip file)"
    else:
        reason = " ".join(str(error).split()) or type(error).__name__
        what = f"corrupt gzip data {after} ({reason}; expected a valid gzip file)"
    return ValueError(where + what)


@contextmanager
def open_text(path: str) -> Iterator[TextFile]:
    """Opens a plain or gzip'ed text file (local or any iopath URI) for reading as UTF-8 (a BOM is dropped).

    Gzip is recognised by its magic bytes, not the file name. Lines keep their line endings
    (`newline=""`), as the csv module requires. Bytes that are not UTF-8 are escaped, not raised: see
    `TextFile`. A damaged gzip stream raises one of `STREAM_ERRORS` while the lines are read; readers
    catch them where they know the line number and raise `stream_error`.
    """
    with g_pathmgr.open(_native(path), "rb") as raw:
        magic = raw.read(2)
        raw.seek(0)
        binary = gzip.GzipFile(fileobj=raw, mode="rb") if magic == b"\x1f\x8b" else raw
        text = io.TextIOWrapper(binary, encoding="utf-8-sig", errors=_UNDECODABLE_ERRORS, newline="")
        try:
            yield TextFile(path, text)
        finally:
            text.detach()
            if binary is not raw:
                binary.close()


def check_skipped_share(skipped: int, read: int, first_error: str, where: str) -> None:
    """Stops silent mass loss: raises when `skip_bad_rows` skipped too many of the rows read.

    Args:
        skipped: rows skipped.
        read: rows read (good and skipped).
        first_error: the first skipped row's "FILE:LINE: what (expected ...)".
        where: the file(s), for the message.

    Raises:
        ValueError: more than `SKIPPED_ROWS_TOLERATED` rows and more than `MAX_SKIPPED_SHARE` of them.
    """
    if skipped > SKIPPED_ROWS_TOLERATED and skipped > MAX_SKIPPED_SHARE * read:
        raise ValueError(
            f"{where}: skip_bad_rows skipped {skipped} of {read} rows ({skipped / read:.1%}; expected at "
            f"most {MAX_SKIPPED_SHARE:.0%}); first skipped row: {first_error}"
        )


class TableBuilder:
    """Collects a reader's parsed chunks up to `max_rows`, and its malformed rows.

    The first malformed row raises `ValueError("FILE:LINE: what (expected ...)")`; with `skip_bad_rows`
    malformed rows are skipped, counted into `RawTable.skipped_rows` and logged, unless they are more than
    `MAX_SKIPPED_SHARE` of the rows read (see `check_skipped_share`).

    Args:
        max_rows: keep at most this many good rows (0 = all).
        skip_bad_rows: skip and count malformed rows instead of raising.
    """

    def __init__(self, max_rows: int, skip_bad_rows: bool) -> None:
        self.max_rows = max_rows
        self.skip_bad_rows = skip_bad_rows
        self.parts: list[RawTable] = []
        self.taken = 0
        self.skipped = 0
        self.read = 0
        self._first_error: dict[str, str] = {}
        self._skipped_per_file: dict[str, int] = {}
        self._read_per_file: dict[str, int] = {}

    def full(self) -> bool:
        return bool(self.max_rows) and self.taken >= self.max_rows

    def room(self, chunk_rows: int) -> int:
        """How many rows to parse next: a chunk, or fewer when `max_rows` is near."""
        return min(chunk_rows, self.max_rows - self.taken) if self.max_rows else chunk_rows

    def add(self, path: str, part: RawTable | None, errors: dict[int, str]) -> None:
        """Adds a chunk's good rows and its malformed ones (line number -> what is wrong)."""
        read = (len(part) if part is not None else 0) + len(errors)
        self.read += read
        self._read_per_file[path] = self._read_per_file.get(path, 0) + read
        if errors:
            first = min(errors)
            if not self.skip_bad_rows:
                raise ValueError(f"{path}:{first}: {errors[first]}")
            self.skipped += len(errors)
            self._skipped_per_file[path] = self._skipped_per_file.get(path, 0) + len(errors)
            self._first_error.setdefault(path, f"{path}:{first}: {errors[first]}")
        if part is None or not len(part):
            return
        if self.max_rows and self.taken + len(part) > self.max_rows:
            keep = self.max_rows - self.taken
            part = RawTable(
                dense=part.dense[:keep],
                categorical=[c[:keep] for c in part.categorical],
                labels=part.labels[:keep],
                dense_names=part.dense_names,
                sparse_names=part.sparse_names,
                label_name=part.label_name,
            )
        self.parts.append(part)
        self.taken += len(part)

    def end_file(self, path: str, expected: str) -> None:
        """Called after each file: a file without a single data row is an error, not a silent no-op.

        Args:
            path: the file just read.
            expected: what a data row looks like, for the message.

        Raises:
            ValueError: "FILE: no data rows (...)".
        """
        if not self._read_per_file.get(path):
            raise ValueError(f"{path}: no data rows (expected {expected})")

    def finish(self, paths: list[str]) -> RawTable:
        """The concatenated table; logs what was skipped.

        Raises:
            ValueError: no good rows at all, or too many skipped rows (`check_skipped_share`).
        """
        for path, count in self._skipped_per_file.items():
            logger.warning(
                "skipped %d malformed rows in %s (first: %s)", count, path, self._first_error[path]
            )
        if self._first_error:
            check_skipped_share(
                self.skipped, self.read, next(iter(self._first_error.values())), ",".join(paths)
            )
        if not self.parts:
            raise ValueError(f"data.path: {','.join(paths)}: no data rows")
        table = concat_tables(self.parts)
        table.skipped_rows = self.skipped
        logger.info(
            "read %d rows from %s (%d malformed rows skipped)", len(table), ",".join(paths), self.skipped
        )
        return table


def str_array(values: Sequence[str]) -> np.ndarray:
    """[n] `<U{max length}` array of Python strings; faster than np.array (width known upfront)."""
    width = max(map(len, values), default=0)
    return np.fromiter(values, dtype=f"U{max(width, 1)}", count=len(values))


def parse_labels(values: np.ndarray, allow_minus_one: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Parses label strings to {0, 1}.

    Args:
        values: [n] str.
        allow_minus_one: also accept -1 as the negative label (libFM/libSVM convention).

    Returns:
        labels [n] float32 (0 where bad) and bad [n] bool.
    """
    labels = (values == "1").astype(np.float32)
    ok = (values == "1") | (values == "0")
    for i in np.flatnonzero(~ok):
        try:
            x = float(values[i])
        except ValueError:
            continue
        if x == 1.0 or x == 0.0 or (allow_minus_one and x == -1.0):
            labels[i] = float(x == 1.0)
            ok[i] = True
    return labels, ~ok


def parse_numbers(values: np.ndarray, integer: bool) -> tuple[np.ndarray, np.ndarray]:
    """Parses a column of number strings; "" is missing.

    Args:
        values: [n] str.
        integer: only integers are valid (Criteo counts); otherwise any finite number.

    Returns:
        numbers [n] float64 (NaN where missing or bad) and bad [n] bool.
    """
    missing = values == ""
    filled = np.where(missing, "0", values)
    bad = np.zeros(len(values), dtype=bool)
    try:
        # numpy's string casts parse in C; a failure only tells us *that* some cell is bad, so the
        # per-cell loop below runs just for chunks that contain one.
        numbers = filled.astype(np.int64).astype(np.float64) if integer else filled.astype(np.float64)
        if not integer:
            bad = ~np.isfinite(numbers) & ~np.isnan(numbers)
    except (ValueError, OverflowError):
        numbers = np.empty(len(values), dtype=np.float64)
        for i, text in enumerate(filled.tolist()):
            try:
                numbers[i] = float(int(text)) if integer else float(text)
            except (ValueError, OverflowError):
                numbers[i] = np.nan
                bad[i] = True
            else:
                bad[i] = not integer and np.isinf(numbers[i])
    numbers[missing | bad] = np.nan
    return numbers, bad


def concat_tables(parts: list[RawTable]) -> RawTable:
    """Concatenates tables with the same columns (e.g. one per chunk or file)."""
    assert parts, "concat_tables needs at least one table"
    first = parts[0]
    return RawTable(
        dense=np.concatenate([p.dense for p in parts]),
        categorical=[
            np.concatenate([p.categorical[f] for p in parts]) for f in range(len(first.sparse_names))
        ],
        labels=np.concatenate([p.labels for p in parts]),
        dense_names=list(first.dense_names),
        sparse_names=list(first.sparse_names),
        label_name=first.label_name,
        skipped_rows=sum(p.skipped_rows for p in parts),
    )


# ---------------------------------------------------------------------------------------------------------
# Categorical encoding
# ---------------------------------------------------------------------------------------------------------


def _as_str_array(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values)
    return np.ascontiguousarray(values if values.dtype.kind == "U" else values.astype(str))


def _code_points(values: np.ndarray) -> np.ndarray:
    """[n, W] uint32 code points of a contiguous `<U{W}` array, NUL-padded on the right."""
    width = values.dtype.itemsize // 4
    return values.view(np.uint32).reshape(len(values), width)


def _group(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values and the inverse index, like `np.unique(values, return_inverse=True)` but faster.

    Sorting strings is the slow part of np.unique, so each string becomes a uint64 key first: exact
    packing when its code points fit (e.g. Criteo/Avazu 8-hex-digit ids), else a 64-bit FNV-1a hash whose
    grouping is verified and falls back to np.unique on the strings if two values ever collide.

    Returns:
        distinct [K] str (in no particular order) and inverse [n] int64 with distinct[inverse] == values.
    """
    n = len(values)
    codes = _code_points(values)
    width = codes.shape[1]
    bits = max(int(codes.max()).bit_length(), 1) if codes.size else 1
    if width * bits <= 64:
        keys = np.zeros(n, dtype=np.uint64)
        for j in range(width):
            keys = (keys << np.uint64(bits)) | codes[:, j].astype(np.uint64)
        exact = True
    else:
        keys = np.full(n, 14695981039346656037, dtype=np.uint64)
        prime = np.uint64(1099511628211)
        for j in range(width):
            keys ^= codes[:, j].astype(np.uint64)
            keys *= prime
        exact = False
    _, inverse = np.unique(keys, return_inverse=True)
    inverse = inverse.reshape(-1).astype(np.int64)
    representative = np.empty(int(inverse.max()) + 1 if n else 0, dtype=np.int64)
    representative[inverse] = np.arange(n)
    distinct = values[representative]
    if not exact and not np.array_equal(distinct[inverse], values):
        distinct, inverse = np.unique(values, return_inverse=True)
        inverse = inverse.reshape(-1).astype(np.int64)
    return distinct, inverse


def build_vocabulary(values: np.ndarray, train_index: np.ndarray, min_count: int) -> tuple[np.ndarray, int]:
    """Vocabulary ids of one field, built on the train rows only.

    Values seen fewer than `min_count` times in train, values never seen in train, and missing values ("")
    map to `OOV_ID` 0; the others get ids 1.. in descending train frequency, ties broken by the value
    (ascending), so ids are deterministic.

    Args:
        values: [N] str, all rows.
        train_index: indices of the train rows.
        min_count: threshold (values <= 1 keep every value seen in train).

    Returns:
        ids [N] int64 and num_embeddings (vocabulary size including the OOV id).
    """
    distinct, inverse = _group(_as_str_array(values))
    counts = np.bincount(inverse[train_index], minlength=len(distinct))
    kept = np.flatnonzero((counts >= max(min_count, 1)) & (distinct != ""))
    # Sort by value first, then stably by descending count: equal counts stay in value order.
    kept = kept[np.argsort(distinct[kept], kind="stable")]
    kept = kept[np.argsort(-counts[kept], kind="stable")]
    id_of = np.full(len(distinct), OOV_ID, dtype=np.int64)
    id_of[kept] = np.arange(1, len(kept) + 1)
    return id_of[inverse], len(kept) + 1


def _crc32_table() -> np.ndarray:
    table = np.zeros(256, dtype=np.uint32)
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0xEDB88320 if c & 1 else c >> 1
        table[i] = c
    return table


_CRC32_TABLE = _crc32_table()


def stable_hash(values: np.ndarray) -> np.ndarray:
    """CRC-32 of each value's UTF-8 bytes, equal to `zlib.crc32(value.encode())`, vectorised.

    Unlike Python's `hash()` it is the same in every process and on every machine, so hashed ids agree
    across ranks and runs.

    Args:
        values: [n] str.

    Returns:
        [n] uint32 hashes (the empty string hashes to 0).
    """
    values = _as_str_array(values)
    codes = _code_points(values)
    lengths = np.strings.str_len(values)
    if codes.size and int(codes.max()) >= 128:
        encoded = np.strings.encode(values, "utf-8")
        codes = encoded.view(np.uint8).reshape(len(values), encoded.dtype.itemsize)
        lengths = np.strings.str_len(encoded)
    crc = np.full(len(values), 0xFFFFFFFF, dtype=np.uint32)
    for j in range(int(lengths.max()) if len(values) else 0):
        step = _CRC32_TABLE[(crc ^ codes[:, j]) & 0xFF] ^ (crc >> np.uint32(8))
        crc = np.where(lengths > j, step, crc)
    return crc ^ np.uint32(0xFFFFFFFF)


def hash_ids(values: np.ndarray, hash_size: int) -> np.ndarray:
    """Ids in [0, hash_size): `stable_hash(value) % hash_size`. Missing values ("") get id 0."""
    return (stable_hash(values).astype(np.int64) % hash_size).astype(np.int64)


def transform_dense(dense: np.ndarray) -> np.ndarray:
    """log(max(x, 0) + 1), missing (NaN) -> 0: [N, num_dense] float -> float32."""
    out = np.log1p(np.maximum(dense, 0.0))
    out[np.isnan(out)] = 0.0
    return out.astype(np.float32)


# ---------------------------------------------------------------------------------------------------------
# Preprocessing
# ---------------------------------------------------------------------------------------------------------


def preprocess(raw: RawTable, cfg: DataConfig) -> Splits:
    """Splits a raw table 8:1:1 (seeded) and encodes it as model-ready tensors.

    Args:
        raw: the table a reader produced.
        cfg: uses `split`, `split_seed`, `min_count` and `hash_size`.

    Returns:
        Splits whose schema has one SparseFeature per field, with num_embeddings = vocabulary size
        including OOV id 0 (or `hash_size` when hashing).

    Raises:
        ValueError: the table has no rows, or `hash_size` is negative.
    """
    n = len(raw)
    if n == 0:
        raise ValueError(f"data.path: {cfg.path}: no rows to preprocess")
    if cfg.hash_size < 0:
        raise ValueError(f"data.hash_size: must be >= 0 (0 = build a vocabulary), got {cfg.hash_size}")
    train_idx, val_idx, test_idx = split_rows(n, cfg.split, cfg.split_seed)
    train_np = train_idx.numpy()

    sparse = np.empty((n, len(raw.sparse_names)), dtype=np.int64)
    features = []
    for f, (name, values) in enumerate(zip(raw.sparse_names, raw.categorical, strict=True)):
        if cfg.hash_size > 0:
            sparse[:, f] = hash_ids(values, cfg.hash_size)
            size = cfg.hash_size
        else:
            sparse[:, f], size = build_vocabulary(values, train_np, cfg.min_count)
        features.append(SparseFeature(name=name, num_embeddings=int(size)))
    schema = Schema(dense_names=list(raw.dense_names), sparse=features, label=raw.label_name, task="ctr")
    data = CTRData(
        dense=torch.from_numpy(transform_dense(raw.dense)),
        sparse=torch.from_numpy(sparse),
        labels=torch.from_numpy(np.asarray(raw.labels, dtype=np.float32)),
    )
    logger.info(
        "preprocessed %d rows (%d train / %d val / %d test), %d dense, %d sparse fields, %d table rows",
        n,
        len(train_idx),
        len(val_idx),
        len(test_idx),
        len(schema.dense_names),
        len(features),
        sum(f.num_embeddings for f in features),
    )
    return Splits(
        schema=schema, train=data.subset(train_idx), val=data.subset(val_idx), test=data.subset(test_idx)
    )
