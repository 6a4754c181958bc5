"""Generic delimited CTR files (CSV/TSV) with a column spec from the config, e.g. Avazu.

The column spec names the label, the dense and the categorical columns: by header name when the file has
a header (`data.header: true`), by 0-based index (as strings) when it has none. Every value is read as a
string first (Avazu's ids do not fit int64); dense columns must parse as numbers, the label as 0 or 1.

The delimited-file engine here (`read_delimited`) also serves the Criteo reader, which is a fixed column
spec over tab-separated files.

Example::

    cfg = DataConfig(type="tabular", path="avazu_sample.csv.gz", label_column="click",
                     sparse_columns=["C1", "banner_pos", "site_id", ...])
    raw = read_tabular(cfg)
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from torchrec_aes.config import DataConfig
from torchrec_aes.data.preprocess import RawTable, column_names, parse_labels, parse_numbers, str_array
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
"""Rows parsed per vectorised chunk: bounds the Python string objects alive at once."""


@dataclass
class Columns:
    """Where the label, dense and categorical values sit in a delimited row.

    Args:
        num_columns: columns every row must have.
        label: index of the label column.
        dense: indices of the dense columns.
        sparse: indices of the categorical columns.
        label_name: name of the label column.
        dense_names: names of the dense columns.
        sparse_names: names of the categorical columns.
        count_hint: what a row should look like, for the wrong-column-count error.
        integer_dense: dense values must be integers (Criteo counts), not just numbers.
        weighted: indices (into `sparse`) of weighted bag columns: `id:weight` pairs split by `separator`.
        separator: the bag separator of weighted columns.
    """

    num_columns: int
    label: int
    dense: list[int]
    sparse: list[int]
    label_name: str
    dense_names: list[str]
    sparse_names: list[str]
    count_hint: str
    integer_dense: bool = False
    weighted: list[int] = field(default_factory=list)
    separator: str = "|"


def _parse_chunk(
    rows: list[list[str]], lines: list[int], columns: Columns, errors: dict[int, str]
) -> RawTable:
    """Vectorised parse of rows that have the right column count; malformed rows go to `errors`."""
    cols = list(zip(*rows, strict=True))
    label_text = str_array(cols[columns.label])
    labels, bad = parse_labels(label_text)
    for i in np.flatnonzero(bad):
        errors.setdefault(
            lines[i], f"label {str(label_text[i])!r} in column {columns.label_name!r} (expected 0 or 1)"
        )
    dense = np.empty((len(rows), len(columns.dense)), dtype=np.float64)
    kind, expect = (
        ("non-integer", "an integer or empty")
        if columns.integer_dense
        else ("non-numeric", "a finite number or empty")
    )
    for k, (j, name) in enumerate(zip(columns.dense, columns.dense_names, strict=True)):
        text = str_array(cols[j])
        dense[:, k], bad_k = parse_numbers(text, integer=columns.integer_dense)
        for i in np.flatnonzero(bad_k):
            errors.setdefault(
                lines[i], f"{kind} value {str(text[i])!r} in column {name!r} (expected {expect})"
            )
        bad |= bad_k
    for k in columns.weighted:  # id:weight pairs: a bad weight is a malformed row, like a bad number
        name = columns.sparse_names[k]
        for row, cell in enumerate(cols[columns.sparse[k]]):  # (Python strings: a cell at a time)
            pair = next((p for p in cell.split(columns.separator) if p and not _is_weighted_id(p)), None)
            if pair is not None:
                errors.setdefault(
                    lines[row],
                    f"{pair!r} in column {name!r} is not id:weight (expected a number after the last ':')",
                )
                bad[row] = True
    keep = ~bad
    return RawTable(
        dense=dense[keep],
        categorical=[str_array(cols[j])[keep] for j in columns.sparse],
        labels=labels[keep],
        dense_names=list(columns.dense_names),
        sparse_names=list(columns.sparse_names),
        label_name=columns.label_name,
    )


def _is_weighted_id(pair: str) -> bool:
    """Whether `pair` is `id:weight` with a finite number as weight."""
    _, colon, weight = pair.rpartition(":")
    try:
        return bool(colon) and math.isfinite(float(weight))
    except ValueError:
        return False


def _flush(
    builder: TableBuilder,
    f: TextFile,
    rows: list[list[str]],
    lines: list[int],
    columns: Columns | None,
    errors: dict[int, str],
) -> None:
    """Parses a chunk of rows into `builder`; rows with bytes that are not UTF-8 become malformed rows.

    `columns` is None only while no record has been seen, and then `rows` is empty.
    """
    if f.undecodable():
        rows, lines = drop_undecodable(rows, lines, errors)
    if not rows:
        builder.add(f.path, None, errors)
        return
    assert columns is not None, "rows were collected before the column spec was resolved"
    builder.add(f.path, _parse_chunk(rows, lines, columns, errors), errors)


def _unclosed_quote(path: str, start: int, end: int, why: str) -> ValueError:
    """The error for a record (lines `start`-`end`) in which a quote opened on line `start` never closed."""
    runs = "to the end of the file" if why == _END_IN_QUOTES else f"on to line {end}"
    return ValueError(
        f"{path}:{start}: quote never closed: a quoted field runs {runs} ({why}; expected a closing '\"' "
        "on the same line)"
    )


_END_IN_QUOTES = "unexpected end of data"
"""What a strict csv reader raises when the file ends inside a quoted field."""


def read_delimited(
    paths: list[str],
    resolve: Callable[[str, list[str]], Columns],
    *,
    delimiter: str,
    header: bool,
    quoting: Literal[0, 1, 2, 3] = csv.QUOTE_MINIMAL,  # csv.QUOTE_*, spelled as typeshed types them
    max_rows: int = 0,
    skip_bad_rows: bool = False,
    chunk_rows: int = CHUNK_ROWS,
    sink: Callable[[RawTable], None] | None = None,
) -> RawTable:
    """Reads delimited files (plain or gzip'ed) into one RawTable.

    Blank lines are ignored. Without a header, the column count of the first data row is the expected one.
    A row is numbered by the line it starts on (a quoted field may span lines).

    Args:
        paths: files to read, concatenated in order.
        resolve: builds the column spec from (first file, its header or first data row).
        delimiter: one character.
        header: every file starts with a header line; later files' headers must equal the first's.
        quoting: csv quoting mode (QUOTE_NONE for formats without quoting, like Criteo).
        max_rows: stop after this many good rows (0 = all).
        skip_bad_rows: skip and count malformed rows instead of raising.
        chunk_rows: rows per vectorised parse.
        sink: streamed reading: each parsed chunk goes to `sink`, and the returned table has no rows.

    Raises:
        ValueError: "FILE:LINE: what (expected ...)" for the first malformed row unless skipping (a row
            that is not UTF-8 is malformed too); even when skipping: a quote that is never closed (the csv
            module would swallow the rest of the file into one field), a damaged gzip stream, a header
            that differs between files, a file without data rows, or more skipped rows than
            `MAX_SKIPPED_SHARE`.
    """
    builder = TableBuilder(max_rows, skip_bad_rows, sink)
    columns: Columns | None = None
    first_header: tuple[str, list[str]] | None = None
    for path in paths:
        if builder.full():
            break
        rows: list[list[str]] = []
        lines: list[int] = []
        errors: dict[int, str] = {}
        with open_text(path) as f:
            # `strict` makes the csv module raise where a quote misbehaves (text after a closing quote, the
            # file ending inside quotes) instead of gluing lines into one field and carrying on.
            reader = csv.reader(f, delimiter=delimiter, quoting=quoting, strict=True)
            end = 0  # the line the previous record ended on: the next one starts on end + 1
            try:
                if header:
                    head = next(reader, None)
                    if head is None:
                        raise ValueError(f"{path}: empty file (expected a header line, data.header=true)")
                    end = reader.line_num
                    byte = undecodable_byte(head) if f.undecodable() else None
                    if byte is not None:
                        raise ValueError(f"{path}:1: header {not_utf8(byte)}")
                    if first_header is None:
                        first_header = (path, head)
                        columns = resolve(path, head)
                    elif head != first_header[1]:
                        raise ValueError(
                            f"{path}:1: header {delimiter.join(head)!r} differs from the header of "
                            f"{first_header[0]} (expected {delimiter.join(first_header[1])!r})"
                        )
                room = builder.room(chunk_rows)
                while True:  # reenters the loop below after a malformed record the csv module rejects
                    try:
                        for record in reader:
                            start, end = end + 1, reader.line_num
                            if not record:  # blank line
                                continue
                            if columns is None:
                                columns = resolve(path, record)
                            if len(record) != columns.num_columns:
                                if end > start:  # a quote swallowed lines, up to a '"' that closed it
                                    raise _unclosed_quote(path, start, end, f"{len(record)} columns")
                                byte = undecodable_byte(record) if f.undecodable() else None
                                errors[start] = (
                                    not_utf8(byte)
                                    if byte is not None
                                    else f"{len(record)} columns ({columns.count_hint})"
                                )
                            else:
                                rows.append(record)
                                lines.append(start)
                            if len(rows) + len(errors) >= room:
                                _flush(builder, f, rows, lines, columns, errors)
                                rows, lines, errors = [], [], {}
                                if builder.full():
                                    break
                                room = builder.room(chunk_rows)
                        break
                    except csv.Error as e:
                        # The csv module drops the rest of the line and starts afresh on the next one.
                        start, end = end + 1, reader.line_num
                        if end > start or str(e) == _END_IN_QUOTES:
                            raise _unclosed_quote(path, start, end, str(e)) from None
                        errors[start] = f"malformed CSV: {e}"
                _flush(builder, f, rows, lines, columns, errors)
            except csv.Error as e:  # only the header gets here: records are handled above
                raise ValueError(f"{path}:{reader.line_num}: header: malformed CSV: {e}") from None
            except STREAM_ERRORS as e:
                raise stream_error(path, reader.line_num, e) from None
        shape = f"{columns.num_columns} columns" if columns else "columns"
        builder.end_file(path, f"rows of {shape} separated by {delimiter!r}")
    return builder.finish(paths)


def parse_delimiter(text: str) -> str:
    """`data.delimiter` as one character; accepts the escapes "\\t" and "tab" for a tab.

    Raises:
        ValueError: not a single character.
    """
    if text in ("\\t", "tab"):
        return "\t"
    if len(text) != 1:
        raise ValueError(f"data.delimiter: {text!r} must be a single character such as ',' or '\\t'")
    return text


def _resolve_columns(cfg: DataConfig, path: str, first: list[str], header: bool) -> Columns:
    """The column spec from the config, checked against the first file's header (or first row)."""
    if not cfg.sparse_columns:
        raise ValueError(
            "data.sparse_columns: empty; the tabular reader needs at least one categorical column"
        )
    if header:
        names = [h.strip() for h in first]

        def find(key: str, name: str) -> int:
            if name not in names:
                raise ValueError(
                    f"data.{key}: column {name!r} is not in the header of {path}; columns: {', '.join(names)}"
                )
            if names.count(name) > 1:
                raise ValueError(f"data.{key}: column {name!r} appears {names.count(name)} times in {path}")
            return names.index(name)

    else:
        names = [f"c{i}" for i in range(len(first))]

        def find(key: str, name: str) -> int:
            try:
                index = int(name)
            except ValueError:
                raise ValueError(
                    f"data.{key}: {name!r} is not a column index; {path} has no header (data.header=false), "
                    f"so columns are 0-based indices 0..{len(first) - 1}"
                ) from None
            if not 0 <= index < len(first):
                raise ValueError(
                    f"data.{key}: column index {index} is out of range; {path} has {len(first)} columns "
                    f"(0..{len(first) - 1})"
                )
            return index

    label = find("label_column", cfg.label_column)
    dense = [find("dense_columns", c) for c in cfg.dense_columns]
    sparse = [find("sparse_columns", c) for c in cfg.sparse_columns]
    used = [label, *dense, *sparse]
    for index in used:
        if used.count(index) > 1:
            raise ValueError(
                f"data: column {names[index]!r} is used more than once among label_column, dense_columns "
                "and sparse_columns"
            )
    source = f"the header of {path}" if header else f"the first row of {path}"
    return Columns(
        num_columns=len(first),
        label=label,
        dense=dense,
        sparse=sparse,
        label_name=names[label],
        dense_names=[names[i] for i in dense],
        sparse_names=[names[i] for i in sparse],
        count_hint=f"expected {len(first)}, as in {source}, separated by {parse_delimiter(cfg.delimiter)!r}",
        weighted=[k for k, i in enumerate(sparse) if names[i] in column_names(cfg, cfg.weighted_columns)],
        separator=cfg.multi_hot_separator,
    )


def read_tabular(cfg: DataConfig, sink: Callable[[RawTable], None] | None = None) -> RawTable:
    """Reads the delimited file(s) of `cfg.path` with the column spec of `cfg`.

    Args:
        cfg: uses path, delimiter, header, label_column, dense_columns, sparse_columns, max_rows,
            skip_bad_rows.
        sink: streamed reading (see `read_delimited`).

    Raises:
        ValueError: a missing file, a column the header does not have (the message lists the header's
            columns), or a malformed row ("FILE:LINE: ...") unless `skip_bad_rows`.
    """
    delimiter = parse_delimiter(cfg.delimiter)
    paths = input_paths(cfg)
    return read_delimited(
        paths,
        lambda path, first: _resolve_columns(cfg, path, first, cfg.header),
        delimiter=delimiter,
        header=cfg.header,
        max_rows=cfg.max_rows,
        skip_bad_rows=cfg.skip_bad_rows,
        sink=sink,
    )
