"""Raw CTR tables and their preprocessing into model-ready `Splits`.

Readers (criteo.py, tabular.py, libfm.py) turn files into a `RawTable`: dense values as floats with NaN
for missing, categorical values as strings with "" for missing, and 0/1 labels. `preprocess` then applies
the common CTR protocol: a seeded 8:1:1 split, per-field vocabularies built on the train rows
only with a min-count threshold (rare and missing values share the field's OOV id 0) or stable hashing
modulo a table size, and log(max(x, 0) + 1) on dense values.

Everything is vectorised with numpy: a 1M-row x 26-field table preprocesses in a few seconds. Reading text
files (gzip, encodings, malformed rows) is `textfile.py`'s.

Example::

    raw = read_criteo(cfg)          # RawTable
    splits = preprocess(raw, cfg)   # Splits(schema, train, val, test)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from torchrec_aes.config import DataConfig
from torchrec_aes.data.dataset import CTRData, Splits, split_rows
from torchrec_aes.data.schema import Schema, SparseFeature

logger = logging.getLogger(__name__)

OOV_ID = 0
"""Id of rare, unseen and missing values of every field when a vocabulary is built."""


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

    def head(self, n: int) -> RawTable:
        """The first `n` rows."""
        return RawTable(
            self.dense[:n],
            [c[:n] for c in self.categorical],
            self.labels[:n],
            self.dense_names,
            self.sparse_names,
            self.label_name,
        )


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
        integer: only integers are valid (Criteo counts); otherwise any finite number ("nan" and "inf" are
            bad values, not missing ones: only "" is missing).

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
        if not integer:  # "nan" / "inf" parse as numbers but are not finite ones: bad, not missing
            bad = ~np.isfinite(numbers)
    except (ValueError, OverflowError):
        numbers = np.empty(len(values), dtype=np.float64)
        for i, text in enumerate(filled.tolist()):
            try:
                numbers[i] = float(int(text)) if integer else float(text)
            except (ValueError, OverflowError):
                numbers[i] = np.nan
                bad[i] = True
            else:
                bad[i] = not integer and not np.isfinite(numbers[i])
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


def as_str_array(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values)
    return np.ascontiguousarray(values if values.dtype.kind == "U" else values.astype(str))


def _code_points(values: np.ndarray) -> np.ndarray:
    """[n, W] uint32 code points of a contiguous `<U{W}` array, NUL-padded on the right."""
    width = values.dtype.itemsize // 4
    return values.view(np.uint32).reshape(len(values), width)


def group_values(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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
    distinct, inverse = group_values(as_str_array(values))
    counts = np.bincount(inverse[train_index], minlength=len(distinct))
    kept = np.flatnonzero((counts >= max(min_count, 1)) & (distinct != ""))
    # Sort by value first, then stably by descending count: equal counts stay in value order.
    kept = kept[np.argsort(distinct[kept], kind="stable")]
    kept = kept[np.argsort(-counts[kept], kind="stable")]
    id_of = np.full(len(distinct), OOV_ID, dtype=np.int64)
    id_of[kept] = np.arange(1, len(kept) + 1)
    return id_of[inverse], len(kept) + 1


def vocabulary_groups(names: list[str], shared: dict[str, list[str]]) -> list[list[int]]:
    """Column indices that share a vocabulary: the features of each shared table (`data.shared_tables`),
    and every other feature alone; in column order of their first member. Unknown features are left to
    `Schema.with_shared_tables` to report."""
    index = {name: i for i, name in enumerate(names)}
    owner = {index[n]: t for t, members in shared.items() for n in members if n in index}
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        groups.setdefault(owner.get(i, "\0" + name), []).append(i)
    return list(groups.values())


def column_names(cfg: DataConfig, specs: list[str]) -> list[str]:
    """The sparse columns `specs` (e.g. `data.multi_hot_columns`) by the names readers give them: as
    given, or for a headerless tabular file its 0-based indices as the reader names them, `c<i>`."""
    if cfg.type == "tabular" and not cfg.header:
        return [f"c{int(s)}" if str(s).strip().isdigit() else s for s in specs]
    return list(specs)


def bag_columns(cfg: DataConfig, names: list[str]) -> set[str]:
    """The categorical columns of `names` that hold bags (`data.multi_hot_columns`).

    Raises:
        ValueError: one of them is not a categorical column (names it and the columns).
    """
    multi_hot = set(column_names(cfg, cfg.multi_hot_columns))
    unknown = sorted(multi_hot - set(names))
    if unknown:
        raise ValueError(
            f"data.multi_hot_columns: {unknown[0]!r} is not a categorical column (data.sparse_columns: "
            f"{', '.join(names)})"
        )
    return multi_hot


def split_bags(cells: np.ndarray, separator: str, max_ids: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """The ids of multi-hot cells: `cells` [N] str split on `separator` (empty parts dropped, so an empty
    cell is an empty bag), each bag cut to its first `max_ids` ids when `max_ids` > 0.

    Returns:
        (every bag's ids in row order [sum of lengths] str, lengths [N] int64, [bags truncated, ids
        dropped]).
    """
    bags = [[t for t in str(c).split(separator) if t] if c else [] for c in cells]
    full = np.fromiter((len(b) for b in bags), dtype=np.int64, count=len(bags))
    if max_ids > 0:
        bags = [b[:max_ids] for b in bags]
        lengths = np.minimum(full, max_ids)
    else:
        lengths = full
    cut = [int((full > lengths).sum()), int((full - lengths).sum())]
    tokens = str_array([t for b in bags for t in b]) if lengths.sum() else np.array([], dtype=str)
    return tokens, lengths, cut


def split_weights(tokens: np.ndarray, column: str) -> tuple[np.ndarray, np.ndarray]:
    """`id:weight` tokens -> (ids [n] str, weights [n] float64), split at the last ':'.

    Raises:
        ValueError: a token without a numeric weight, naming the column and the token.
    """
    ids, colon, text = np.strings.rpartition(tokens, ":")
    bad = colon != ":"
    try:
        weights = np.where(bad, "0", text).astype(np.float64)
    except ValueError:  # find the token that is not a number
        weights = np.zeros(len(tokens))
        for i, t in enumerate(text.tolist()):
            try:
                weights[i] = float(t)
            except ValueError:
                bad[i] = True
    bad |= ~np.isfinite(weights)
    if bad.any():
        token = str(tokens[np.flatnonzero(bad)[0]])
        raise ValueError(
            f"data.weighted_columns: column {column!r} has {token!r}, not id:weight (expected a finite "
            "number after the last ':')"
        )
    return ids, weights


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
    values = as_str_array(values)
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
    multi_hot = bag_columns(cfg, raw.sparse_names)
    in_train = np.zeros(n, dtype=bool)
    in_train[train_np] = True
    weighted = set(column_names(cfg, cfg.weighted_columns))

    tokens, lengths, train_rows = [], [], []
    weights: list[np.ndarray | None] = []
    truncated = [0, 0]  # bags, ids dropped
    for name, values in zip(raw.sparse_names, raw.categorical, strict=True):
        weights.append(None)
        if name in multi_hot:
            values, bag_lengths, cut = split_bags(values, cfg.multi_hot_separator, cfg.max_ids_per_row)
            if name in weighted:
                values, weights[-1] = split_weights(values, name)
            truncated = [truncated[0] + cut[0], truncated[1] + cut[1]]
            train_rows.append(np.flatnonzero(np.repeat(in_train, bag_lengths)))
        else:
            bag_lengths = np.ones(n, dtype=np.int64)
            train_rows.append(train_np)
        tokens.append(values)
        lengths.append(bag_lengths)
    columns: list[np.ndarray] = [np.empty(0, dtype=np.int64)] * len(tokens)
    features: list[SparseFeature] = [SparseFeature("", 0)] * len(tokens)
    for group in vocabulary_groups(raw.sparse_names, cfg.shared_tables):
        # A shared table's features get one vocabulary, counted over all of them.
        values = np.concatenate([tokens[f] for f in group]) if len(group) > 1 else tokens[group[0]]
        starts = np.cumsum([0] + [len(tokens[f]) for f in group])
        if cfg.hash_size > 0:
            ids, size = hash_ids(values, cfg.hash_size), cfg.hash_size
        else:
            train = np.concatenate([train_rows[f] + start for f, start in zip(group, starts, strict=False)])
            ids, size = build_vocabulary(values, train, cfg.min_count)
        for f, a, b in zip(group, starts[:-1], starts[1:], strict=True):
            columns[f] = ids[a:b]
            name = raw.sparse_names[f]
            features[f] = SparseFeature(name=name, num_embeddings=int(size), weighted=name in weighted)
    if truncated[0]:
        logger.warning(
            "data.max_ids_per_row=%d: truncated %d bags (%d ids dropped)", cfg.max_ids_per_row, *truncated
        )
    schema = Schema(dense_names=list(raw.dense_names), sparse=features, label=raw.label_name, task="ctr")
    dense = torch.from_numpy(transform_dense(raw.dense))
    labels = torch.from_numpy(np.asarray(raw.labels, dtype=np.float32))
    if multi_hot:  # field-major bags (`CTRData`)
        per_id = None
        if weighted:  # unweighted features' ids weigh 1
            per_id = torch.from_numpy(
                np.concatenate(
                    [w if w is not None else np.ones(len(c)) for w, c in zip(weights, columns, strict=True)]
                )
            ).float()
        data = CTRData(
            dense,
            torch.from_numpy(np.concatenate(columns).astype(np.int64)),
            labels,
            torch.from_numpy(np.stack(lengths, axis=1)),
            per_id,
        )
    else:
        data = CTRData(dense, torch.from_numpy(np.stack(columns, axis=1).astype(np.int64)), labels)
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
