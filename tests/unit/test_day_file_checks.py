"""TorchRec day files (`criteo_binary`) checked on first read, one line naming file, row and column:
nothing that would train silently wrong gets through, streamed or in memory."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from tests.helpers import tiny_splits
from torchrec_aes.config import DataConfig
from torchrec_aes.data.binary import VOCAB_FILE, load_criteo_binary, write_days, write_meta


def _days(tmp_path, days: int = 3):
    out = tmp_path / "npy"
    write_days(tiny_splits(600), str(out), days)
    return out


def _read_all(out, **kw) -> None:
    """Every row of every split, as training and evaluation read them."""
    splits = load_criteo_binary(DataConfig(type="criteo_binary", path=str(out), stream_chunk_rows=64, **kw))
    for part in (splits.train, splits.val, splits.test):
        for _ in part.batches(splits.schema.sparse_names, 50):
            pass


def _edit(path, fn) -> None:
    array = np.load(path)
    fn(array)
    np.save(path, array)


@pytest.mark.parametrize("streaming", ["always", "never"])
def test_non_finite_dense_values_name_file_row_and_column(tmp_path, streaming):
    out = _days(tmp_path)
    _edit(out / "day_1_dense.npy", lambda a: a.__setitem__((7, 2), np.nan))
    with pytest.raises(
        ValueError, match=r"day_1_dense.npy: row 7, column 2: dense value nan \(expected a finite"
    ):
        _read_all(out, streaming=streaming)


def test_labels_and_negative_ids_are_refused_even_when_ids_are_hashed(tmp_path):
    out = _days(tmp_path)
    sizes = [10, 100, 1000, 50, 500]
    _edit(out / "day_0_labels.npy", lambda a: a.__setitem__((5, 0), 2))
    with pytest.raises(ValueError, match=r"day_0_labels.npy: row 5: label 2 \(expected 0 or 1\)"):
        _read_all(out, streaming="always", num_embeddings_per_feature=sizes)
    out = _days(tmp_path / "b")
    _edit(out / "day_2_sparse.npy", lambda a: a.__setitem__((3, 1), -4))
    with pytest.raises(ValueError, match=r"day_2_sparse.npy: row 3, column 1: negative id -4"):
        _read_all(out, streaming="always", num_embeddings_per_feature=sizes)


def test_a_stale_vocabulary_record_cannot_clamp_ids(tmp_path, caplog):
    out = _days(tmp_path)
    _read_all(out, streaming="always")  # writes the table-size record beside the files
    record = json.loads((out / VOCAB_FILE).read_text())
    record["num_embeddings"] = [2] * len(record["num_embeddings"])  # edited by hand: smaller tables
    (out / VOCAB_FILE).write_text(json.dumps(record))
    with caplog.at_level(logging.WARNING):
        _read_all(out, streaming="always")  # not trusted: rebuilt from the files
    assert "its checksum does not match" in caplog.text
    # A record that is intact but stale (files rewritten in place, the same names, sizes and times):
    write_meta(str(out), {k: v for k, v in record.items() if k != "sha256"})
    with pytest.raises(
        ValueError, match=rf"column 0: id \d+ is beyond the table's 2 rows \(a stale {VOCAB_FILE}"
    ):
        _read_all(out, streaming="always")


def test_malformed_day_files_are_refused_when_found(tmp_path):
    out = _days(tmp_path)
    ids = np.load(out / "day_0_sparse.npy")
    np.save(out / "day_0_sparse.npy", ids.astype(np.float32))
    with pytest.raises(ValueError, match=r"day_0_sparse.npy: float32 values; ids must be integers"):
        _read_all(out)
    np.save(out / "day_0_sparse.npy", ids.astype(str))
    with pytest.raises(ValueError, match=r"day_0_sparse.npy: <U\d+ values; ids must be integers"):
        _read_all(out)
    np.save(out / "day_0_sparse.npy", np.asfortranarray(ids))
    with pytest.raises(ValueError, match=r"day_0_sparse.npy: Fortran-ordered"):
        _read_all(out)
    np.save(out / "day_0_sparse.npy", ids)
    raw = (out / "day_1_dense.npy").read_bytes()
    (out / "day_1_dense.npy").write_bytes(raw[: len(raw) - 100])
    with pytest.raises(ValueError, match=r"day_1_dense.npy: truncated: \d+ bytes, its header declares"):
        _read_all(out)


def test_a_missing_day_is_refused_instead_of_shifting_the_split(tmp_path):
    out = _days(tmp_path, days=4)  # day_0..day_3 train, day_4 val + test
    for kind in ("dense", "sparse", "labels"):
        (out / f"day_2_{kind}.npy").unlink()
    with pytest.raises(ValueError, match=r"has day_4_dense.npy but no day_2_dense.npy"):
        _read_all(out)


def test_an_id_too_large_for_a_table_names_its_row_and_the_remedy(tmp_path):
    out = _days(tmp_path)
    ids = np.load(out / "day_1_sparse.npy").astype(np.int64)
    ids[9, 3] = 2**40
    np.save(out / "day_1_sparse.npy", ids)
    with pytest.raises(
        ValueError, match=r"day_1_sparse.npy: row 9, column 3: id 1099511627776 would size its table"
    ):
        _read_all(out)
    _read_all(out, num_embeddings_per_feature=[10, 100, 1000, 50, 500])  # hashed: fine
