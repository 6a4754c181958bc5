"""Criteo TSV files: the Kaggle Display Advertising Challenge `train.txt` and the Criteo 1TB day files.

Both share one format: no header, 40 tab-separated columns per row, `label` (0/1), 13 integer counts
`I1..I13` (may be negative or empty) and 26 categorical hashes `C1..C26` (8 hex digits, may be empty).
Empty means missing. Files may be gzip'ed; `data.path` may list several, comma-separated (e.g. day files).

Example::

    raw = read_criteo(DataConfig(type="criteo", path="criteo_sample.txt.gz"))
    len(raw), raw.dense.shape, len(raw.categorical)   # 10000, (10000, 13), 26
"""

from __future__ import annotations

import csv
from collections.abc import Callable

from torchrec_aes.config import DataConfig
from torchrec_aes.data.preprocess import RawTable
from torchrec_aes.data.tabular import Columns, read_delimited
from torchrec_aes.data.textfile import input_paths

NUM_DENSE = 13
NUM_SPARSE = 26
DENSE_NAMES = [f"I{i}" for i in range(1, NUM_DENSE + 1)]
SPARSE_NAMES = [f"C{i}" for i in range(1, NUM_SPARSE + 1)]

CRITEO_COLUMNS = Columns(
    num_columns=1 + NUM_DENSE + NUM_SPARSE,
    label=0,
    dense=list(range(1, 1 + NUM_DENSE)),
    sparse=list(range(1 + NUM_DENSE, 1 + NUM_DENSE + NUM_SPARSE)),
    label_name="label",
    dense_names=DENSE_NAMES,
    sparse_names=SPARSE_NAMES,
    count_hint="expected 40, tab-separated: label, I1..I13, C1..C26",
    integer_dense=True,
)
"""Criteo's fixed layout."""


def read_criteo(cfg: DataConfig, sink: Callable[[RawTable], None] | None = None) -> RawTable:
    """Reads the Criteo TSV file(s) of `cfg.path` into a RawTable.

    Args:
        cfg: uses path, max_rows, skip_bad_rows.
        sink: streamed reading: each parsed chunk goes to `sink` (see `read_delimited`).

    Returns:
        A RawTable with dense I1..I13 (NaN = missing), categorical C1..C26 ("" = missing), labels 0/1.

    Raises:
        ValueError: a missing file, or a malformed row -- wrong column count, a non-integer dense value,
            a label other than 0/1, bytes that are not UTF-8 -- as "FILE:LINE: what (expected ...)", unless
            `cfg.skip_bad_rows`; even when skipping: a damaged gzip stream, a file without data rows, or
            more skipped rows than `MAX_SKIPPED_SHARE` (see `read_delimited`).
    """
    return read_delimited(
        input_paths(cfg),
        lambda path, first: CRITEO_COLUMNS,
        delimiter="\t",
        header=False,
        # Criteo has no quoting: a '"' inside a value is data, exactly as `line.split("\t")` would see it.
        quoting=csv.QUOTE_NONE,
        max_rows=cfg.max_rows,
        skip_bad_rows=cfg.skip_bad_rows,
        sink=sink,
    )
