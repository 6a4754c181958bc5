"""Bad input to every file reader fails fast and clearly: one-line `ValueError`s naming file and line.

Each reader (criteo, tabular, libfm through `load_data`; interactions through `load_interactions`) meets
the same damaged files: truncated and corrupt gzip, bytes that are not UTF-8, missing, directory, empty
and blank files. Text cases live in the corpus `tests/data/bad/` (see its README); binary ones are
generated here from a few hundred good lines.
"""

from __future__ import annotations

import gzip
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO
from torchrec_aes.config import DataConfig
from torchrec_aes.data.interactions import MAX_ID, MAX_ID_SPARSITY, load_interactions
from torchrec_aes.data.load import load_data, read_raw
from torchrec_aes.data.textfile import MAX_SKIPPED_SHARE, SKIPPED_ROWS_TOLERATED, DataFileNotFoundError

CORPUS = REPO / "tests" / "data" / "bad"
NUM_ROWS = 300
BAD_LINE = 3
"""File line (1-based, a header included) that the generated non-UTF-8 files damage."""


@dataclass(frozen=True)
class Reader:
    """A reader under test: how to write good lines for it, configure it and call its public entry.

    Args:
        name: `data.type`.
        row: the i-th good data line.
        suffix: file name suffix of its files.
        header: the header line, if its files have one.
        options: `DataConfig` fields it needs besides type and path.
    """

    name: str
    row: Callable[[int], str]
    suffix: str
    header: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def lines(self, n: int = NUM_ROWS) -> list[str]:
        return ([self.header] if self.header else []) + [self.row(i) for i in range(n)]

    def cfg(self, path: Path | str, **kwargs: Any) -> DataConfig:
        return DataConfig(type=self.name, path=str(path), **{**self.options, **kwargs})

    def load(self, path: Path | str, **kwargs: Any) -> int:
        """Loads through the public entry point; returns the number of rows (CTR) or interactions kept."""
        cfg = self.cfg(path, **kwargs)
        if self.name == "interactions":
            data = load_interactions(cfg)
            return data.train.nnz + data.val.nnz + data.test.nnz
        splits = load_data(cfg)
        return len(splits.train) + len(splits.val) + len(splits.test)


def _criteo_row(i: int) -> str:
    dense = [str((i * 7 + j) % 50) for j in range(13)]
    cats = [f"{(i * 31 + j) % 97:08x}" for j in range(26)]
    return "\t".join([str(i % 2), *dense, *cats])


READERS = {
    "criteo": Reader("criteo", _criteo_row, ".txt"),
    "tabular": Reader(
        "tabular",
        lambda i: f"{i},s{i % 7},{i % 2},{i % 13}.5,d{i % 3}",
        ".csv",
        header="id,site,click,price,device",
        options=dict(label_column="click", dense_columns=["price"], sparse_columns=["site", "device"]),
    ),
    "libfm": Reader(
        "libfm",
        lambda i: f"{1 if i % 2 else -1} {i % 10}:1 {10 + i % 5}:1 {15 + i % 4}:1",
        ".libfm",
        options=dict(field_offsets=[0, 10, 15]),
    ),
    "interactions": Reader(
        "interactions",
        lambda i: " ".join(str(x) for x in [i, *((i * 3 + j) % 40 for j in range(5))]),
        ".txt",
        options=dict(split=[0.8, 0.1, 0.1]),
    ),
}


def _encode(lines: list[str]) -> bytes:
    return "".join(line + "\n" for line in lines).encode()


def _gzip(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


# ---------------------------------------------------------------------------------------------------------
# The damaged files: each case writes one and says which line (None: no line) and what the message names.
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bad:
    path: Path
    line: int | None
    what: str


def _truncated_gz(reader: Reader, tmp: Path) -> Bad:
    data = _encode(reader.lines())
    packed = _gzip(data)
    cut = packed[: len(packed) // 2]
    # The lines a reader can see are the complete ones in what the cut stream still decompresses to.
    readable = zlib.decompressobj(wbits=31).decompress(cut).count(b"\n")
    assert 0 < readable < data.count(b"\n")
    path = tmp / f"data{reader.suffix}.gz"
    path.write_bytes(cut)
    return Bad(path, readable, r"file ends early after this line \(truncated gzip stream")


def _corrupt_crc_gz(reader: Reader, tmp: Path) -> Bad:
    lines = reader.lines()
    packed = bytearray(_gzip(_encode(lines)))
    packed[-8] ^= 0xFF  # the CRC-32 of the trailer: every line decompresses, the check at the end fails
    path = tmp / f"data{reader.suffix}.gz"
    path.write_bytes(bytes(packed))
    return Bad(path, len(lines), r"corrupt gzip data after this line \(CRC check failed")


def _corrupt_header_gz(reader: Reader, tmp: Path) -> Bad:
    packed = bytearray(_gzip(_encode(reader.lines())))
    packed[2] = 7  # compression method: only 8 (deflate) exists
    path = tmp / f"data{reader.suffix}.gz"
    path.write_bytes(bytes(packed))
    return Bad(path, None, r"corrupt gzip data before its first line")


def _corrupt_deflate_gz(reader: Reader, tmp: Path) -> Bad:
    lines = reader.lines()
    # A second gzip member whose first deflate block has the reserved type 11 (byte 0b111 = final, type 3).
    second = _gzip(b"")[:10] + b"\x07" + b"\x00" * 16
    path = tmp / f"data{reader.suffix}.gz"
    path.write_bytes(_gzip(_encode(lines[:100])) + second)
    return Bad(path, 100, r"corrupt gzip data after this line \(Error -3 while decompressing")


def _not_utf8(reader: Reader, tmp: Path, gz: bool = False) -> Bad:
    data = bytearray(_encode(reader.lines()))
    start = sum(len(line) + 1 for line in reader.lines()[: BAD_LINE - 1])
    # Latin-1 'é' (0xe9) as the last byte of the line's last token: not UTF-8, and every reader's
    # tokenisation keeps the line's shape.
    end = data.index(b"\n", start)
    data[end:end] = b"\xe9"
    path = tmp / f"data{reader.suffix}{'.gz' if gz else ''}"
    path.write_bytes(_gzip(bytes(data)) if gz else bytes(data))
    return Bad(path, BAD_LINE, r"not valid UTF-8 \(byte 0xe9; expected UTF-8 text\)")


def _not_utf8_gz(reader: Reader, tmp: Path) -> Bad:
    return _not_utf8(reader, tmp, gz=True)


def _missing(reader: Reader, tmp: Path) -> Bad:
    return Bad(tmp / f"nope{reader.suffix}", None, r"no such file")


def _directory(reader: Reader, tmp: Path) -> Bad:
    path = tmp / f"day_0{reader.suffix}"
    path.mkdir()
    return Bad(path, None, r"is a directory \(expected a file\)")


def _empty(reader: Reader, tmp: Path) -> Bad:
    return Bad(CORPUS / "empty.txt", None, r"no data|empty file")


def _empty_gz(reader: Reader, tmp: Path) -> Bad:
    path = tmp / f"empty{reader.suffix}.gz"
    path.write_bytes(_gzip(b""))
    return Bad(path, None, r"no data|empty file")


def _blank_lines(reader: Reader, tmp: Path) -> Bad:
    if reader.header:  # a blank first line would be read as the (empty) header instead
        path = tmp / f"blank{reader.suffix}"
        path.write_bytes(_encode([reader.header]) + (CORPUS / "blank_lines.txt").read_bytes())
        return Bad(path, None, r"no data rows")
    return Bad(CORPUS / "blank_lines.txt", None, r"no data")


CASES: dict[str, Callable[[Reader, Path], Bad]] = {
    "truncated-gz": _truncated_gz,
    "corrupt-crc-gz": _corrupt_crc_gz,
    "corrupt-header-gz": _corrupt_header_gz,
    "corrupt-deflate-gz": _corrupt_deflate_gz,
    "not-utf8": _not_utf8,
    "not-utf8-gz": _not_utf8_gz,
    "missing": _missing,
    "directory": _directory,
    "empty": _empty,
    "empty-gz": _empty_gz,
    "blank-lines": _blank_lines,
}


def _assert_clear(error: ValueError, path: Path, line: int | None, what: str) -> None:
    """One line, printable, naming the file (and the line) and saying what is wrong."""
    message = str(error)
    assert "\n" not in message and "\r" not in message, message
    message.encode("utf-8")  # no lone surrogates from escaped bytes: the message prints anywhere
    where = f"{path.name}:{line}: " if line is not None else f"{path.name}: "
    assert where in message, f"{where!r} not in {message!r}"
    assert re.search(what, message), f"{what!r} not in {message!r}"


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("reader", list(READERS))
def test_bad_file_is_a_one_line_value_error_naming_file_and_line(
    tmp_path: Path, reader: str, case: str
) -> None:
    bad = CASES[case](READERS[reader], tmp_path)
    with pytest.raises(ValueError) as error:
        READERS[reader].load(bad.path)
    _assert_clear(error.value, bad.path, bad.line, bad.what)


@pytest.mark.parametrize("case", ["truncated-gz", "corrupt-crc-gz", "corrupt-deflate-gz"])
@pytest.mark.parametrize("reader", list(READERS))
def test_damaged_gzip_is_an_error_even_when_skipping_bad_rows(tmp_path: Path, reader: str, case: str) -> None:
    bad = CASES[case](READERS[reader], tmp_path)
    with pytest.raises(ValueError) as error:
        READERS[reader].load(bad.path, skip_bad_rows=True)
    _assert_clear(error.value, bad.path, bad.line, bad.what)


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
@pytest.mark.parametrize("reader", list(READERS))
def test_skip_bad_rows_skips_a_non_utf8_row_and_keeps_the_others(
    tmp_path: Path, reader: str, gz: bool
) -> None:
    spec = READERS[reader]
    bad = _not_utf8(spec, tmp_path, gz=gz)
    good = tmp_path / f"good{spec.suffix}"
    good.write_bytes(_encode(spec.lines()))
    if spec.name == "interactions":
        data = load_interactions(spec.cfg(bad.path, skip_bad_rows=True))
        reference = load_interactions(spec.cfg(good))
        assert data.skipped_rows == 1
        # Line 3 holds user 2, the only line of that user: every other interaction is kept.
        line_items = {int(t) for t in spec.row(BAD_LINE - 1).split()[1:]}
        assert data.train.nnz + data.val.nnz + data.test.nnz == (
            reference.train.nnz + reference.val.nnz + reference.test.nnz - len(line_items)
        )
        return
    raw = read_raw(spec.cfg(bad.path, skip_bad_rows=True))
    assert raw.skipped_rows == 1 and len(raw) == NUM_ROWS - 1
    # The kept rows are exactly the good lines, and no value carries an escaped byte.
    reference = read_raw(spec.cfg(good))
    bad_row = BAD_LINE - 1 - (1 if spec.header else 0)
    kept = [i for i in range(NUM_ROWS) if i != bad_row]
    assert raw.labels.tolist() == reference.labels[kept].tolist()
    for column, expected in zip(raw.categorical, reference.categorical, strict=True):
        assert column.tolist() == expected[kept].tolist()
    assert spec.load(bad.path, skip_bad_rows=True) == NUM_ROWS - 1


# ---------------------------------------------------------------------------------------------------------
# Quotes, mass loss, id bounds
# ---------------------------------------------------------------------------------------------------------


UNCLOSED = r"quote never closed: a quoted field runs "


@pytest.mark.parametrize(
    ("name", "line", "what"),
    [
        (
            "tabular_unclosed_quote.csv",
            5,
            UNCLOSED + r"on to line 12 \(',' expected after '\"'; expected a closing",
        ),
        (
            "tabular_unclosed_quote_wrong_count.csv",
            5,
            UNCLOSED + r"on to line 12 \(2 columns; expected a closing",
        ),
        (
            "tabular_unclosed_quote_in_last_field.csv",
            5,
            UNCLOSED + r"to the end of the file \(unexpected end of data",
        ),
        (
            "tabular_unclosed_quote_at_eof.csv",
            7,
            UNCLOSED + r"to the end of the file \(unexpected end of data",
        ),
    ],
)
@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
@pytest.mark.parametrize("skip", [False, True], ids=["strict", "skip_bad_rows"])
def test_unclosed_quote_is_an_error_naming_its_line_even_when_skipping(
    tmp_path: Path, name: str, line: int, what: str, gz: bool, skip: bool
) -> None:
    path = CORPUS / name
    if gz:
        path = tmp_path / f"{name}.gz"
        path.write_bytes(_gzip((CORPUS / name).read_bytes()))
    with pytest.raises(ValueError) as error:
        READERS["tabular"].load(path, skip_bad_rows=skip)
    _assert_clear(error.value, path, line, what)


def test_field_limit_in_a_runaway_quote_names_the_line_the_quote_opened(tmp_path: Path) -> None:
    # Past the csv module's field size limit (128 KiB) it raises before the record ends.
    lines = READERS["tabular"].lines(10_000)
    lines[3] = '2,"s2,0,2.5,d2'
    path = tmp_path / "runaway.csv"
    path.write_bytes(_encode(lines))
    with pytest.raises(ValueError) as error:
        READERS["tabular"].load(path, skip_bad_rows=True)
    _assert_clear(error.value, path, 4, UNCLOSED + r"on to line \d+ \(field larger than field limit")


@pytest.mark.parametrize("skip", [False, True], ids=["strict", "skip_bad_rows"])
def test_text_after_a_closing_quote_is_a_malformed_row(tmp_path: Path, skip: bool) -> None:
    lines = READERS["tabular"].lines(20)
    lines[3] = '2,"s2"x,0,2.5,d2'
    path = tmp_path / "quotes.csv"
    path.write_bytes(_encode(lines))
    if not skip:
        with pytest.raises(ValueError) as error:
            READERS["tabular"].load(path)
        _assert_clear(error.value, path, 4, r"malformed CSV: ',' expected after '\"'")
        return
    raw = read_raw(READERS["tabular"].cfg(path, skip_bad_rows=True))
    assert raw.skipped_rows == 1 and len(raw) == 19 and raw.categorical[0][3] == "s4"


def test_bad_quoting_in_the_header_names_the_file(tmp_path: Path) -> None:
    lines = READERS["tabular"].lines(5)
    lines[0] = 'id,"site"x,click,price,device'
    path = tmp_path / "header.csv"
    path.write_bytes(_encode(lines))
    with pytest.raises(ValueError) as error:
        READERS["tabular"].load(path, skip_bad_rows=True)
    _assert_clear(error.value, path, 1, r"header: malformed CSV")


@pytest.mark.parametrize(
    ("reader", "name", "first"),
    [
        ("criteo", "criteo_mostly_bad.txt", r"criteo_mostly_bad\.txt:2: 3 columns \(expected 40"),
        ("tabular", "tabular_mostly_bad.csv", r"tabular_mostly_bad\.csv:3: 3 columns \(expected 5"),
        ("libfm", "libfm_mostly_bad.libfm", r"libfm_mostly_bad\.libfm:2: 1 features \(expected 3"),
        (
            "interactions",
            "interactions_mostly_bad.txt",
            r"interactions_mostly_bad\.txt:2: 'x' is not an integer",
        ),
    ],
)
def test_mass_loss_guard_stops_skip_bad_rows_from_dropping_most_rows(
    reader: str, name: str, first: str
) -> None:
    path = CORPUS / name
    with pytest.raises(ValueError) as error:
        READERS[reader].load(path, skip_bad_rows=True)
    message = str(error.value)
    _assert_clear(
        error.value, path, None, r"skip_bad_rows skipped 11 of 20 rows \(55\.0%; expected at most 10%\)"
    )
    assert re.search(r"first skipped row: .*" + first, message), message


@pytest.mark.parametrize("reader", list(READERS))
def test_skipped_rows_within_the_share_are_tolerated(tmp_path: Path, reader: str) -> None:
    spec = READERS[reader]
    bad_row = {"criteo": "0\t1\t2", "tabular": "1,a,0", "libfm": "1 3:1", "interactions": "1 x 2"}[reader]
    num_bad = int(MAX_SKIPPED_SHARE * NUM_ROWS)  # 30 of 330 rows: more than tolerated, within the share
    assert num_bad > SKIPPED_ROWS_TOLERATED
    path = tmp_path / f"data{spec.suffix}"
    path.write_bytes(_encode(spec.lines() + [bad_row] * num_bad))
    assert spec.load(path, skip_bad_rows=True) > 0


@pytest.mark.parametrize(
    ("name", "line", "what"),
    [
        ("interactions_huge_id.txt", 3, rf"id 4000000000 is too large \(expected ids < {MAX_ID}\)"),
        ("interactions_max_id.txt", 2, rf"id {MAX_ID} is too large \(expected ids < {MAX_ID}\)"),
        (
            "interactions_sparse_items.txt",
            3,
            r"item id 5000 would size the item table to 5001 rows for 4 distinct item ids "
            rf"\(expected max id \+ 1 <= {MAX_ID_SPARSITY} x distinct ids = 200",
        ),
        (
            "interactions_sparse_users.txt",
            3,
            r"user id 7000 would size the user table to 7001 rows for 4 distinct user ids "
            rf"\(expected max id \+ 1 <= {MAX_ID_SPARSITY} x distinct ids = 200",
        ),
    ],
)
def test_interaction_ids_beyond_the_bounds_are_rejected_before_sizing_tables(
    name: str, line: int, what: str
) -> None:
    path = CORPUS / name
    with pytest.raises(ValueError) as error:
        READERS["interactions"].load(path)
    _assert_clear(error.value, path, line, what)


def test_sparse_ids_in_the_test_file_name_the_test_file(tmp_path: Path) -> None:
    train = tmp_path / "train.txt"
    train.write_bytes(_encode(READERS["interactions"].lines(20)))
    test = tmp_path / "test.txt.gz"
    test.write_bytes(_gzip(_encode(["0 1", "1 2", "2 99999"])))
    with pytest.raises(ValueError) as error:
        load_interactions(DataConfig(type="interactions", path=str(train), test_path=str(test)))
    _assert_clear(error.value, test, 3, r"item id 99999 would size the item table")


# ---------------------------------------------------------------------------------------------------------
# What must keep working
# ---------------------------------------------------------------------------------------------------------


def test_valid_non_ascii_utf8_and_quoted_line_breaks_still_read(tmp_path: Path) -> None:
    lines = READERS["tabular"].lines(20)
    lines[2] = '1,"caf\u00e9, \u5317\u4eac",1,1.5,d1'
    lines[5] = '4,"two\nlines",0,4.5,d1'
    lines[-1] = '19,s5,1,6.5,"ends with a line break\n"'
    path = tmp_path / "utf8.csv.gz"
    path.write_bytes(_gzip(_encode(lines)))
    raw = read_raw(READERS["tabular"].cfg(path))
    assert len(raw) == 20 and raw.skipped_rows == 0
    assert raw.categorical[0][1] == "caf\u00e9, \u5317\u4eac" and raw.categorical[0][4] == "two\nlines"
    assert raw.categorical[1][-1] == "ends with a line break\n"


def test_a_missing_interactions_file_is_a_value_error_and_still_a_file_not_found_error(
    tmp_path: Path,
) -> None:
    with pytest.raises(DataFileNotFoundError) as error:
        load_interactions(DataConfig(type="interactions", path=str(tmp_path / "nope.txt")))
    assert isinstance(error.value, ValueError) and isinstance(error.value, FileNotFoundError)
    _assert_clear(error.value, tmp_path / "nope.txt", None, "no such file")


def test_a_missing_test_file_names_data_test_path(tmp_path: Path) -> None:
    train = tmp_path / "train.txt"
    train.write_bytes(_encode(READERS["interactions"].lines(20)))
    with pytest.raises(ValueError, match=r"^data\.test_path: .*nope\.txt: no such file$"):
        load_interactions(
            DataConfig(type="interactions", path=str(train), test_path=str(tmp_path / "nope.txt"))
        )


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-Infinity"])
@pytest.mark.parametrize("streaming", ["never", "always"])
def test_a_literal_nan_or_inf_dense_value_is_a_bad_value_not_a_missing_one(
    tmp_path: Path, value, streaming
) -> None:
    path = tmp_path / "d.csv"
    path.write_text(
        "label,price,site\n" + "".join(f"{i % 2},{value if i == 4 else i},s{i % 3}\n" for i in range(40))
    )
    cfg = DataConfig(
        type="tabular",
        path=str(path),
        label_column="label",
        dense_columns=["price"],
        sparse_columns=["site"],
        streaming=streaming,
        cache_dir=str(tmp_path / "cache"),
    )
    with pytest.raises(
        ValueError, match=rf"d.csv:6: non-numeric value '{value}' in column 'price' \(expected a finite"
    ):
        load_data(cfg)


def test_a_libfm_index_beyond_the_last_fields_end_is_refused_when_the_end_is_given(tmp_path: Path) -> None:
    path = tmp_path / "f.libfm"
    path.write_text("1 3:1 12:1\n0 4:1 15:1\n1 2:1 99:1\n" * 5)
    cfg = DataConfig(type="libfm", path=str(path), field_offsets=[0, 10, 20], field_names=["user", "item"])
    with pytest.raises(ValueError, match=r"f.libfm:3: 1 indices beyond the last field's end"):
        load_data(cfg)
    bags = DataConfig(**{**cfg.__dict__, "multi_hot_columns": ["item"]})
    with pytest.raises(ValueError, match=r"f.libfm:3: index 99 is beyond the last field's end \(20"):
        load_data(bags)
    unbounded = DataConfig(**{**cfg.__dict__, "field_offsets": [0, 10]})  # without an end: accepted
    assert load_data(unbounded).schema.feature("item").num_embeddings > 1
