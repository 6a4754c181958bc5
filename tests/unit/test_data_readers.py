"""CTR file readers (Criteo TSV, delimited tables, libFM) and `load_data` on tiny files and real samples."""

from __future__ import annotations

import gzip
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torchrec.datasets.utils import Batch

from tests.conftest import SHARED_DATA
from torchrec_aes.config import DataConfig, SyntheticConfig
from torchrec_aes.data.criteo import read_criteo
from torchrec_aes.data.dataset import iter_batches
from torchrec_aes.data.libfm import read_libfm
from torchrec_aes.data.load import load_data
from torchrec_aes.data.tabular import read_tabular

FRAPPE_OFFSETS = [0, 957, 5039, 5046, 5053, 5055, 5058, 5060, 5069, 5149]
FRAPPE_FIELDS = [
    "user",
    "item",
    "daytime",
    "weekday",
    "isweekend",
    "homework",
    "cost",
    "weather",
    "country",
    "city",
]
AVAZU_SPARSE = (
    "hour,C1,banner_pos,site_id,site_domain,site_category,app_id,app_domain,app_category,device_id,"
    "device_ip,device_model,device_type,device_conn_type,C14,C15,C16,C17,C18,C19,C20,C21"
).split(",")


def _sample(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data sample {path} is absent (expected ../shared/data beside the checkout)")
    return path


def _write(path: Path, lines: list[str]) -> str:
    data = "".join(line + "\n" for line in lines).encode()
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return str(path)


# ---------------------------------------------------------------------------------------------------------
# Criteo
# ---------------------------------------------------------------------------------------------------------


def _criteo_row(label: str = "0", dense: list[str] | None = None, cats: list[str] | None = None) -> str:
    dense = dense if dense is not None else [str(i) for i in range(13)]
    cats = cats if cats is not None else [f"{i:08x}" for i in range(26)]
    return "\t".join([label, *dense, *cats])


def test_criteo_rows_round_trip_with_missing_and_negative_values(tmp_path):
    dense = ["", "-3", *[str(i) for i in range(11)]]
    cats = ["68fd1e64", "", *["abcdef01"] * 24]
    path = _write(tmp_path / "day_0", [_criteo_row("1", dense, cats), _criteo_row()])
    raw = read_criteo(DataConfig(type="criteo", path=path))

    assert len(raw) == 2 and raw.skipped_rows == 0
    assert raw.labels.tolist() == [1, 0]
    assert raw.dense_names == [f"I{i}" for i in range(1, 14)]
    assert raw.sparse_names == [f"C{i}" for i in range(1, 27)]
    assert math.isnan(raw.dense[0, 0]) and raw.dense[0, 1] == -3.0 and raw.dense[0, 12] == 10.0
    assert raw.dense[1].tolist() == [float(i) for i in range(13)]
    assert [c[0] for c in raw.categorical[:3]] == ["68fd1e64", "", "abcdef01"]
    assert raw.categorical[25][1] == f"{25:08x}"


def test_criteo_reads_gzip_and_concatenates_comma_separated_files(tmp_path):
    first = _write(tmp_path / "day_0.gz", [_criteo_row("1"), _criteo_row("0")])
    second = _write(tmp_path / "day_1", [_criteo_row("1")])
    raw = read_criteo(DataConfig(type="criteo", path=f"{first}, {second}"))
    assert raw.labels.tolist() == [1, 0, 1]


def test_criteo_max_rows_stops_early_across_files(tmp_path):
    first = _write(tmp_path / "a", [_criteo_row("1")] * 3)
    second = _write(tmp_path / "b", [_criteo_row("0")] * 3)
    raw = read_criteo(DataConfig(type="criteo", path=f"{first},{second}", max_rows=4))
    assert raw.labels.tolist() == [1, 1, 1, 0]


@pytest.mark.parametrize(
    "bad_row, message",
    [
        (_criteo_row()[: -len("\t00000019")], r":2: 39 columns \(expected 40, tab-separated: label, I1..I13"),
        (
            _criteo_row(dense=["1", "1.5", *["0"] * 11]),
            r":2: non-integer value '1.5' in column 'I2' \(expected",
        ),
        (_criteo_row(dense=["x", *["0"] * 12]), r":2: non-integer value 'x' in column 'I1'"),
        (_criteo_row(label="2"), r":2: label '2' in column 'label' \(expected 0 or 1\)"),
    ],
    ids=["column-count", "fractional-dense", "text-dense", "label"],
)
def test_criteo_malformed_row_error_names_file_and_line(tmp_path, bad_row, message):
    path = _write(tmp_path / "train.txt", [_criteo_row(), bad_row, _criteo_row()])
    with pytest.raises(ValueError, match=str(path) + message):
        read_criteo(DataConfig(type="criteo", path=path))


def test_criteo_reports_the_first_malformed_line(tmp_path):
    rows = [_criteo_row(), _criteo_row(dense=["1.5", *["0"] * 12]), "0\t1", _criteo_row(label="x")]
    path = _write(tmp_path / "train.txt", rows)
    with pytest.raises(ValueError, match=r"train.txt:2: non-integer"):
        read_criteo(DataConfig(type="criteo", path=path))


def test_criteo_skip_bad_rows_skips_counts_and_logs_them(tmp_path, caplog):
    rows = [_criteo_row("1"), "0\t1\t2", _criteo_row(dense=["z", *["0"] * 12]), _criteo_row("0")]
    rows += [_criteo_row(label="7"), _criteo_row("1")]
    path = _write(tmp_path / "train.txt", rows)
    with caplog.at_level(logging.WARNING):
        raw = read_criteo(DataConfig(type="criteo", path=path, skip_bad_rows=True))
    assert raw.labels.tolist() == [1, 0, 1]
    assert raw.skipped_rows == 3
    assert "skipped 3 malformed rows" in caplog.text and "train.txt:2: 3 columns" in caplog.text


def test_criteo_max_rows_counts_only_good_rows_when_skipping(tmp_path):
    path = _write(tmp_path / "train.txt", [_criteo_row("1"), "bad", _criteo_row("0"), _criteo_row("1")])
    raw = read_criteo(DataConfig(type="criteo", path=path, max_rows=2, skip_bad_rows=True))
    assert raw.labels.tolist() == [1, 0] and raw.skipped_rows == 1


# ---------------------------------------------------------------------------------------------------------
# Generic delimited tables
# ---------------------------------------------------------------------------------------------------------


def _tabular_cfg(path: str, **kwargs) -> DataConfig:
    spec = dict(label_column="click", dense_columns=["price"], sparse_columns=["site", "device"])
    return DataConfig(type="tabular", path=path, **{**spec, **kwargs})


def test_tabular_csv_with_header_reads_the_configured_columns(tmp_path):
    path = _write(
        tmp_path / "ads.csv.gz",
        [
            "id,site,click,price,device",
            '18446744073709551615,"a,b",1,2.5,phone',
            "2,c,0,,",
            "3,c,1,-1e2,tablet",
        ],
    )
    raw = read_tabular(_tabular_cfg(path))
    assert (
        raw.label_name == "click" and raw.dense_names == ["price"] and raw.sparse_names == ["site", "device"]
    )
    assert raw.labels.tolist() == [1, 0, 1]
    assert raw.dense[[0, 2], 0].tolist() == [2.5, -100.0] and math.isnan(raw.dense[1, 0])
    assert raw.categorical[0].tolist() == ["a,b", "c", "c"]
    assert raw.categorical[1].tolist() == ["phone", "", "tablet"]


def test_tabular_without_header_uses_column_indices(tmp_path):
    path = _write(tmp_path / "ads.tsv", ["x\t1\t0.5\ty", "z\t0\t1\tw"])
    cfg = DataConfig(
        type="tabular",
        path=path,
        delimiter="\\t",
        header=False,
        label_column="1",
        dense_columns=["2"],
        sparse_columns=["0", "3"],
    )
    raw = read_tabular(cfg)
    assert raw.sparse_names == ["c0", "c3"] and raw.dense_names == ["c2"]
    assert raw.categorical[0].tolist() == ["x", "z"] and raw.labels.tolist() == [1, 0]


def test_tabular_unknown_column_error_lists_the_header_columns(tmp_path):
    path = _write(tmp_path / "ads.csv", ["id,site,click,price,device", "1,a,0,1,b"])
    with pytest.raises(
        ValueError,
        match=r"data.sparse_columns: column 'devise' is not in the header of .*ads.csv; "
        r"columns: id, site, click, price, device",
    ):
        read_tabular(_tabular_cfg(path, sparse_columns=["site", "devise"]))


def test_tabular_column_index_out_of_range_without_header_is_an_error(tmp_path):
    path = _write(tmp_path / "ads.csv", ["1,a", "0,b"])
    cfg = DataConfig(type="tabular", path=path, header=False, label_column="0", sparse_columns=["5"])
    with pytest.raises(
        ValueError, match=r"data.sparse_columns: column index 5 is out of range; .* has 2 columns"
    ):
        read_tabular(cfg)


@pytest.mark.parametrize(
    "bad_row, message",
    [
        ("2,a,1,3", r":3: 4 columns \(expected 5, as in the header"),
        (
            "2,a,1,cheap,b",
            r":3: non-numeric value 'cheap' in column 'price' \(expected a finite number or empty\)",
        ),
        ("2,a,yes,3,b", r":3: label 'yes' in column 'click' \(expected 0 or 1\)"),
    ],
    ids=["column-count", "dense", "label"],
)
def test_tabular_malformed_row_error_names_file_and_line(tmp_path, bad_row, message):
    path = _write(tmp_path / "ads.csv", ["id,site,click,price,device", "1,a,0,1,b", bad_row])
    with pytest.raises(ValueError, match=str(path) + message):
        read_tabular(_tabular_cfg(path))


def test_tabular_skip_bad_rows_counts_them(tmp_path):
    rows = ["id,site,click,price,device", "1,a,0,1,b", "2,a,1", "3,a,2,1,b", "4,a,1,inf,b", "5,b,1,,c"]
    raw = read_tabular(_tabular_cfg(_write(tmp_path / "ads.csv", rows), skip_bad_rows=True))
    assert raw.skipped_rows == 3 and raw.categorical[1].tolist() == ["b", "c"]


def test_tabular_files_with_different_headers_are_an_error(tmp_path):
    first = _write(tmp_path / "a.csv", ["id,site,click,price,device", "1,a,0,1,b"])
    second = _write(tmp_path / "b.csv", ["id,click,site,price,device", "1,0,a,1,b"])
    with pytest.raises(ValueError, match=r"b.csv:1: header .* differs from the header of .*a.csv"):
        read_tabular(_tabular_cfg(f"{first},{second}"))


# ---------------------------------------------------------------------------------------------------------
# libFM
# ---------------------------------------------------------------------------------------------------------


def test_libfm_assigns_indices_to_fields_by_offset_and_maps_labels(tmp_path):
    # Fields start at 0, 10, 15; the second row lists its indices out of field order.
    path = _write(tmp_path / "x.libfm", ["1 3:1 12:1 20:1", "-1 16:1 0:1 10:1", "0 9:1 14:1.0 15:1"])
    raw = read_libfm(
        DataConfig(type="libfm", path=path, field_offsets=[0, 10, 15], field_names=["user", "item", "ctx"])
    )
    assert raw.sparse_names == ["user", "item", "ctx"] and raw.dense.shape == (3, 0)
    assert raw.labels.tolist() == [1, 0, 0]
    assert [c.tolist() for c in raw.categorical] == [["3", "0", "9"], ["2", "0", "4"], ["5", "1", "0"]]


def test_libfm_without_offsets_uses_positions_and_default_names(tmp_path):
    path = _write(tmp_path / "x.libsvm.gz", ["1 7:1 3:1", "0 7:1 4:1", ""])
    raw = read_libfm(DataConfig(type="libfm", path=path))
    assert raw.sparse_names == ["f0", "f1"]
    assert [c.tolist() for c in raw.categorical] == [["7", "7"], ["3", "4"]]


@pytest.mark.parametrize(
    "bad_row, message",
    [
        (
            "1 3:1 4:1 20:1",
            r":2: 2 indices in field 'f0'; no index in field 'f1' \(expected exactly one index",
        ),
        ("1 3:1 12:1", r":2: 2 features \(expected 3, one per field of data.field_offsets\)"),
        ("1 3:1 twelve:1 20:1", r":2: feature 'twelve:1' is not index:value"),
        ("1 3:1 12 20:1", r":2: feature '12' is not index:value"),
        ("2 3:1 12:1 20:1", r":2: label '2' \(expected 1, 0 or -1\)"),
    ],
    ids=["field-mismatch", "feature-count", "bad-index", "no-value", "label"],
)
def test_libfm_malformed_row_error_names_file_and_line(tmp_path, bad_row, message):
    path = _write(tmp_path / "x.libfm", ["1 3:1 12:1 20:1", bad_row, "0 3:1 12:1 20:1"])
    with pytest.raises(ValueError, match=str(path) + message):
        read_libfm(DataConfig(type="libfm", path=path, field_offsets=[0, 10, 15]))


def test_libfm_skip_bad_rows_counts_them(tmp_path):
    rows = ["1 3:1 12:1 20:1", "1 3:1 4:1 20:1", "x 3:1 12:1 20:1", "0 5:1 11:1 16:1"]
    raw = read_libfm(
        DataConfig(
            type="libfm", path=_write(tmp_path / "x", rows), field_offsets=[0, 10, 15], skip_bad_rows=True
        )
    )
    assert raw.skipped_rows == 2 and raw.labels.tolist() == [1, 0]


def test_libfm_field_names_must_match_the_offsets(tmp_path):
    path = _write(tmp_path / "x", ["1 3:1 12:1"])
    with pytest.raises(ValueError, match=r"data.field_names: 1 names for 3 fields in data.field_offsets"):
        read_libfm(DataConfig(type="libfm", path=path, field_offsets=[0, 10, 20], field_names=["user"]))


# ---------------------------------------------------------------------------------------------------------
# load_data
# ---------------------------------------------------------------------------------------------------------


def test_load_data_names_a_missing_file(tmp_path):
    missing = tmp_path / "nope.txt.gz"
    with pytest.raises(ValueError, match=f"data.path: {missing}: no such file"):
        load_data(DataConfig(type="criteo", path=str(missing)))


def test_load_data_lists_the_allowed_types_for_an_unknown_one():
    with pytest.raises(
        ValueError,
        match="'parquet' is not one of synthetic, criteo, tabular, libfm, criteo_binary, interactions",
    ):
        load_data(DataConfig(type="parquet"))


def test_load_data_points_cf_data_to_its_own_loader():
    with pytest.raises(ValueError, match="load_interactions"):
        load_data(DataConfig(type="interactions", path="train.txt"))


def test_load_data_dispatches_synthetic_to_the_generator(tmp_path):
    cfg = DataConfig(synthetic=SyntheticConfig(num_examples=500, num_dense=2, cardinalities=[10, 20]))
    splits = load_data(cfg, cache_dir=str(tmp_path))
    assert len(splits.train) + len(splits.val) + len(splits.test) == 500
    assert [f.num_embeddings for f in splits.schema.sparse] == [10, 20]


def test_load_data_on_a_tiny_criteo_file_yields_torchrec_batches(tmp_path):
    rows = [_criteo_row(str(i % 2), cats=[f"{i % 3:08x}"] * 26) for i in range(40)]
    splits = load_data(DataConfig(type="criteo", path=_write(tmp_path / "t.txt", rows)))
    batch = next(iter_batches(splits.train, splits.schema.sparse_names, batch_size=8))
    assert isinstance(batch, Batch)
    assert batch.sparse_features.keys() == [f"C{i}" for i in range(1, 27)]
    assert batch.dense_features.shape == (8, 13)
    # Every value is seen >= 2 times in train, so each field's table has OOV + 3 values.
    assert [f.num_embeddings for f in splits.schema.sparse] == [4] * 26


# ---------------------------------------------------------------------------------------------------------
# Real samples in ../shared/data
# ---------------------------------------------------------------------------------------------------------


def _check_batches(splits, num_dense: int) -> None:
    names = splits.schema.sparse_names
    batch = next(iter_batches(splits.train, names, batch_size=256, shuffle=True))
    assert isinstance(batch, Batch)
    assert batch.sparse_features.keys() == names
    assert batch.dense_features.shape == (256, num_dense) and batch.labels.shape == (256,)
    sizes = torch.tensor([f.num_embeddings for f in splits.schema.sparse])
    for part in (splits.train, splits.val, splits.test):
        assert bool((part.sparse >= 0).all()) and bool((part.sparse < sizes).all())


def test_criteo_sample_loads_10000_rows_with_13_dense_and_26_sparse():
    path = _sample("criteo_sample", "criteo_sample.txt.gz")
    splits = load_data(DataConfig(type="criteo", path=str(path)))
    labels = torch.cat([splits.train.labels, splits.val.labels, splits.test.labels])
    assert labels.numel() == 10_000 and (len(splits.train), len(splits.val)) == (8000, 1000)
    assert labels.mean().item() == pytest.approx(0.2182, abs=1e-4)
    assert splits.schema.num_dense == 13 and len(splits.schema.sparse) == 26
    # Vocabularies are train-only with min_count 2, so never larger than the sample's cardinalities + OOV.
    cardinalities = [175, 386, 5521, 4033, 56, 8, 3184, 93, 3, 2986, 2084, 5284, 1725]
    cardinalities += [24, 2035, 4724, 9, 1149, 547, 4, 5037, 8, 12, 2525, 40, 1939]
    assert all(f.num_embeddings <= c + 1 for f, c in zip(splits.schema.sparse, cardinalities, strict=True))
    assert float(splits.train.dense.min()) >= 0.0
    _check_batches(splits, num_dense=13)


def test_frappe_validation_and_test_files_load_as_86582_rows_with_10_fields():
    files = [_sample("frappe", f"frappe.{s}.libfm.gz") for s in ("validation", "test")]
    cfg = DataConfig(
        type="libfm",
        path=",".join(map(str, files)),
        field_offsets=FRAPPE_OFFSETS,
        field_names=FRAPPE_FIELDS,
    )
    splits = load_data(cfg)
    labels = torch.cat([splits.train.labels, splits.val.labels, splits.test.labels])
    assert labels.numel() == 86_582
    assert int(labels.sum()) == 19_063 + 9_536
    assert splits.schema.sparse_names == FRAPPE_FIELDS and splits.schema.num_dense == 0
    assert splits.schema.feature("daytime").num_embeddings == 8  # 7 values + OOV
    _check_batches(splits, num_dense=0)


def test_avazu_sample_loads_9999_rows_with_its_22_categorical_columns():
    path = _sample("avazu_sample", "avazu_sample.csv.gz")
    cfg = DataConfig(type="tabular", path=str(path), label_column="click", sparse_columns=AVAZU_SPARSE)
    splits = load_data(cfg)
    labels = torch.cat([splits.train.labels, splits.val.labels, splits.test.labels])
    assert labels.numel() == 9_999 and int(labels.sum()) == 1_706
    assert splits.schema.label == "click" and splits.schema.sparse_names == AVAZU_SPARSE
    assert splits.schema.feature("hour").num_embeddings == 2  # constant in this sample
    _check_batches(splits, num_dense=0)


def test_criteo_sample_with_hashing_bounds_every_table():
    path = _sample("criteo_sample", "criteo_sample.txt.gz")
    splits = load_data(DataConfig(type="criteo", path=str(path), hash_size=1000, max_rows=2000))
    assert len(splits.train) == 1600
    assert [f.num_embeddings for f in splits.schema.sparse] == [1000] * 26
    assert int(splits.train.sparse.max()) < 1000
    assert np.unique(splits.train.sparse[:, 0].numpy()).size > 50  # C1 has 175 values; hashing keeps most
