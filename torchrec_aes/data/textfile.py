"""Reading text data files for every reader: paths, plain or gzip streams, encodings, and the rows a reader
keeps or skips (`TableBuilder`), each failure a one-line error naming `FILE:LINE`."""

from __future__ import annotations

import codecs
import gzip
import io
import logging
import re
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TextIO

from iopath.common.file_io import g_pathmgr

from torchrec_aes.config import DataConfig
from torchrec_aes.data.preprocess import RawTable, concat_tables

logger = logging.getLogger(__name__)

MAX_SKIPPED_SHARE = 0.1
"""Largest share of the rows read that `skip_bad_rows` may skip before reading stops with an error.

Skipping is meant for a few stray lines; losing more than this share means the reader and the files
disagree (wrong format, wrong delimiter, a damaged file), and training on the remainder would be silent
data loss. `SKIPPED_ROWS_TOLERATED` rows are always allowed. This module constant becomes the config
field `data.max_skipped_share` once the config refactor lands.
"""

SKIPPED_ROWS_TOLERATED = 10
"""Skipped rows always tolerated whatever their share: a few bad lines in a small file are not mass loss."""


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
        sink: streamed reading: each chunk of good rows goes to `sink` instead of being kept (`finish`
            then returns a table without rows).
    """

    def __init__(
        self, max_rows: int, skip_bad_rows: bool, sink: Callable[[RawTable], None] | None = None
    ) -> None:
        self.max_rows = max_rows
        self.skip_bad_rows = skip_bad_rows
        self.sink = sink
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
        if self.sink is None:
            self.parts.append(part)
        else:  # streamed: the chunk goes on, an empty table keeps the column names for `finish`
            self.sink(part)
            if not self.parts:
                self.parts.append(part.head(0))
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
