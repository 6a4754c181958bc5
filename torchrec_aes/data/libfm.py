"""libFM / libSVM one-hot files: `label idx:val idx:val ...`, one active index per field (Frappe, iPinYou).

A row's label is 1 (positive) or 0 / -1 (negative). Which field an index belongs to comes from
`data.field_offsets`, the first global index of each field in ascending order (Frappe: user 0, item 957,
daytime 5039, ...): an index belongs to the field whose range contains it, and every row must have exactly
one index in every field. Without offsets, fields are positional: the i-th index of a row is field i, and
every row must have as many indices as the first one (or as `data.field_names`).

The categorical value of a field is its index relative to the field's first index (or the global index
when positional); the `val` part must be a number but is otherwise ignored, since every supported data set
is one-hot with value 1.

Fields named in `data.multi_hot_columns` (with `data.field_offsets`) may hold any number of indices in a
row (0 = an empty bag), read as that row's bag of ids; the others still hold exactly one.

Example::

    cfg = DataConfig(type="libfm", path="frappe.validation.libfm.gz,frappe.test.libfm.gz",
                     field_offsets=[0, 957, 5039, 5046, 5053, 5055, 5058, 5060, 5069, 5149])
    raw = read_libfm(cfg)   # 86,582 rows, 10 fields
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from torchrec_aes.config import DataConfig
from torchrec_aes.data.preprocess import RawTable, parse_labels, str_array
from torchrec_aes.data.textfile import (
    STREAM_ERRORS,
    TableBuilder,
    TextFile,
    drop_undecodable,
    input_paths,
    not_utf8,
    open_text,
    stream_error,
    undecodable_byte,
)

CHUNK_ROWS = 1 << 16
"""Rows parsed per vectorised chunk."""


def _field_errors(fields: np.ndarray, names: list[str]) -> str:
    """What is wrong with one row's field assignment ([F] field per index, -1 = below the first offset,
    len(names) = at or beyond the end of the last field)."""
    inside = (fields >= 0) & (fields < len(names))
    counts = np.bincount(fields[inside], minlength=len(names))
    parts = []
    if (fields < 0).any():
        parts.append(f"{int((fields < 0).sum())} indices below the first field offset")
    if (fields >= len(names)).any():
        parts.append(f"{int((fields >= len(names)).sum())} indices beyond the last field's end")
    parts += [f"{c} indices in field {names[f]!r}" for f, c in enumerate(counts) if c > 1]
    parts += [f"no index in field {names[f]!r}" for f, c in enumerate(counts) if c == 0]
    return (
        "; ".join(parts)
        + f" (expected exactly one index in each of the {len(names)} fields of data.field_offsets)"
    )


def _parse_chunk(
    rows: list[list[str]],
    lines: list[int],
    offsets: np.ndarray | None,
    names: list[str],
    errors: dict[int, str],
) -> RawTable:
    """Vectorised parse of rows that have one token per field; malformed rows go to `errors`."""
    n, num_fields = len(rows), len(names)
    label_text = str_array([r[0] for r in rows])
    labels, bad = parse_labels(label_text, allow_minus_one=True)
    for i in np.flatnonzero(bad):
        errors.setdefault(lines[i], f"label {str(label_text[i])!r} (expected 1, 0 or -1)")

    tokens = str_array([t for r in rows for t in r[1:]]).reshape(n, num_fields)
    index_text, colon, value_text = np.strings.partition(tokens, ":")
    bad_token = colon != ":"
    index = np.zeros((n, num_fields), dtype=np.int64)
    try:
        index = np.where(bad_token, "0", index_text).astype(np.int64)
    except (ValueError, OverflowError):
        for (i, j), text in np.ndenumerate(index_text):
            try:
                index[i, j] = int(text)
            except (ValueError, OverflowError):
                bad_token[i, j] = True
    bad_token |= index < 0
    try:
        np.where(bad_token, "1", value_text).astype(np.float64)
    except ValueError:
        for (i, j), text in np.ndenumerate(value_text):
            try:
                float(text)
            except ValueError:
                bad_token[i, j] = True
    for i in np.flatnonzero(bad_token.any(axis=1)):
        token = tokens[i, np.flatnonzero(bad_token[i])[0]]
        errors.setdefault(
            lines[i],
            f"feature {str(token)!r} is not index:value (expected a non-negative integer index:number)",
        )
    bad |= bad_token.any(axis=1)

    if offsets is None:
        values = index
    else:
        fields = np.searchsorted(offsets, index, side="right") - 1  # [n, F]; -1: below the first offset
        bad_fields = ~(np.sort(fields, axis=1) == np.arange(num_fields)).all(axis=1) & ~bad
        for i in np.flatnonzero(bad_fields):
            errors.setdefault(lines[i], _field_errors(fields[i], names))
        bad |= bad_fields
        values = np.zeros((n, num_fields), dtype=np.int64)
        good = np.flatnonzero(~bad)
        rows_of = np.repeat(good, num_fields).reshape(-1, num_fields)
        values[rows_of, fields[good]] = index[good] - offsets[fields[good]]
    keep = ~bad
    return RawTable(
        dense=np.zeros((int(keep.sum()), 0), dtype=np.float64),
        categorical=[values[keep, f].astype(str) for f in range(num_fields)],
        labels=labels[keep],
        dense_names=[],
        sparse_names=list(names),
    )


def _parse_bags(
    rows: list[list[str]],
    lines: list[int],
    offsets: np.ndarray,
    names: list[str],
    bags: set[int],
    separator: str,
    errors: dict[int, str],
    weighted: frozenset[int] = frozenset(),
) -> RawTable:
    """Parse of rows in which the fields in `bags` hold any number of indices (multi-hot) and every other
    field exactly one; a bag becomes its relative indices joined by `separator` (split in `preprocess`),
    each as `index:value` for the fields in `weighted` (the value is the id's weight)."""
    cells: list[list[str]] = [[] for _ in names]
    labels_text, keep = [], []
    for i, (tokens, line) in enumerate(zip(rows, lines, strict=True)):
        found: list[list[str]] = [[] for _ in names]
        problem = ""
        for token in tokens[1:]:
            index_text, colon, value_text = token.partition(":")
            try:
                index, _ = int(index_text), float(value_text)
            except ValueError:
                index = -1
            if colon != ":" or index < 0:
                problem = (
                    f"feature {token!r} is not index:value (expected a non-negative integer index:number)"
                )
                break
            field = int(np.searchsorted(offsets, index, side="right")) - 1
            if field < 0:
                problem = f"index {index} is below the first field offset"
                break
            if field >= len(names):
                problem = (
                    f"index {index} is beyond the last field's end ({int(offsets[-1])}, data.field_offsets)"
                )
                break
            relative = str(index - int(offsets[field]))
            found[field].append(f"{relative}:{value_text}" if field in weighted else relative)
        if not problem:
            wrong = [j for j, ids in enumerate(found) if j not in bags and len(ids) != 1]
            if wrong:
                j = wrong[0]
                problem = (
                    f"{len(found[j])} indices in field {names[j]!r} (expected exactly one: it is not in "
                    "data.multi_hot_columns)"
                )
        if problem:
            errors.setdefault(line, problem)
            continue
        keep.append(i)
        labels_text.append(tokens[0])
        for j, ids in enumerate(found):
            cells[j].append(separator.join(ids))
    label_text = str_array(labels_text)
    labels, bad = parse_labels(label_text, allow_minus_one=True)
    for k in np.flatnonzero(bad).tolist():
        errors.setdefault(lines[keep[k]], f"label {str(label_text[k])!r} (expected 1, 0 or -1)")
    good = ~bad
    return RawTable(
        dense=np.zeros((int(good.sum()), 0), dtype=np.float64),
        categorical=[str_array(c)[good] for c in cells],
        labels=labels[good],
        dense_names=[],
        sparse_names=list(names),
    )


def _flush(
    builder: TableBuilder,
    f: TextFile,
    rows: list[list[str]],
    lines: list[int],
    parse: Callable[[list[list[str]], list[int], dict[int, str]], RawTable],
    errors: dict[int, str],
) -> None:
    """Parses a chunk of rows into `builder`; rows with bytes that are not UTF-8 become malformed rows."""
    if f.undecodable():
        rows, lines = drop_undecodable(rows, lines, errors)
    builder.add(f.path, parse(rows, lines, errors) if rows else None, errors)


def _check_offsets(offsets: list[int]) -> np.ndarray | None:
    if not offsets:
        return None
    array = np.asarray(offsets, dtype=np.int64)
    if array[0] < 0 or (np.diff(array) <= 0).any():
        raise ValueError(
            f"data.field_offsets: {offsets} must be non-negative and strictly ascending "
            "(the first global index of each field)"
        )
    return array


def read_libfm(cfg: DataConfig) -> RawTable:
    """Reads the libFM/libSVM file(s) of `cfg.path` into a RawTable of categorical fields (no dense).

    Args:
        cfg: uses path, field_offsets, field_names, max_rows, skip_bad_rows.

    Returns:
        A RawTable with one categorical column per field and 0/1 labels.

    Raises:
        ValueError: a missing file, inconsistent field_offsets/field_names, or a malformed row -- bad
            label, a token that is not index:value, a row whose indices do not fall one per field, bytes
            that are not UTF-8 -- as "FILE:LINE: what (expected ...)", unless `cfg.skip_bad_rows`; even
            when skipping: a damaged gzip stream, a file without data rows, or more skipped rows than
            `MAX_SKIPPED_SHARE`.
    """
    offsets = _check_offsets(cfg.field_offsets)
    names = list(cfg.field_names)
    if offsets is not None and names and len(offsets) not in (len(names), len(names) + 1):
        raise ValueError(
            f"data.field_names: {len(names)} names for {len(offsets)} fields in data.field_offsets (one more "
            "offset, the end of the last field, bounds it)"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"data.field_names: names must be distinct, got {names}")
    if offsets is not None and not names:
        names = [f"f{i}" for i in range(len(offsets))]
    how = "one per field of data.field_offsets" if offsets is not None else "one per field"
    unknown = [c for c in cfg.multi_hot_columns if c not in names]
    if cfg.multi_hot_columns and (offsets is None or unknown):
        raise ValueError(
            "data.multi_hot_columns: libFM bags need data.field_offsets (which field an index is in) and "
            f"field names from data.field_names; {unknown[0] if unknown else 'no offsets'!r} is not one "
            f"(fields: {', '.join(names) or 'positional'})"
        )
    bags = {names.index(c) for c in cfg.multi_hot_columns}
    weighted = frozenset(names.index(c) for c in cfg.weighted_columns if c in names)

    def parse(rows: list[list[str]], lines: list[int], errors: dict[int, str]) -> RawTable:
        if bags:
            assert offsets is not None
            return _parse_bags(rows, lines, offsets, names, bags, cfg.multi_hot_separator, errors, weighted)
        return _parse_chunk(rows, lines, offsets, names, errors)

    paths = input_paths(cfg)
    builder = TableBuilder(cfg.max_rows, cfg.skip_bad_rows)
    for path in paths:
        if builder.full():
            break
        rows: list[list[str]] = []
        lines: list[int] = []
        errors: dict[int, str] = {}
        room = builder.room(CHUNK_ROWS)
        line_no = 0
        with open_text(path) as f:
            try:
                for line_no, line in enumerate(f, start=1):
                    tokens = line.split()
                    if not tokens:
                        continue
                    if not names:  # positional fields, counted from the first row
                        names = [f"f{i}" for i in range(len(tokens) - 1)]
                        if not names:
                            raise ValueError(
                                f"{path}:{line_no}: a label without features (expected label idx:val ...)"
                            )
                    if not bags and len(tokens) - 1 != len(names):
                        byte = undecodable_byte(tokens) if f.undecodable() else None
                        errors[line_no] = (
                            not_utf8(byte)
                            if byte is not None
                            else f"{len(tokens) - 1} features (expected {len(names)}, {how})"
                        )
                    else:
                        rows.append(tokens)
                        lines.append(line_no)
                    if len(rows) + len(errors) >= room:
                        _flush(builder, f, rows, lines, parse, errors)
                        rows, lines, errors = [], [], {}
                        if builder.full():
                            break
                        room = builder.room(CHUNK_ROWS)
            except STREAM_ERRORS as e:
                raise stream_error(path, line_no, e) from None
            _flush(builder, f, rows, lines, parse, errors)
        builder.end_file(path, "lines 'label idx:val idx:val ...'")
    return builder.finish(paths)
