"""Streamed text files (`data.streaming`): a per-row hashed split, a vocabulary counted chunk by chunk with
the in-memory rule, a cache converted once, and the same ids as encoding everything in memory."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from tests.conftest import SHARED_DATA
from tests.helpers import tiny_splits
from torchrec_aes.config import DataConfig
from torchrec_aes.data.binary import BinaryRows
from torchrec_aes.data.dataset import CTRData
from torchrec_aes.data.load import load_data, read_raw
from torchrec_aes.data.preprocess import build_vocabulary, transform_dense
from torchrec_aes.data.stream_text import CACHE_DIR_NAME, ValueCounts, cache_dir, split_of_rows


def _write_tsv(path, n: int = 3000) -> None:
    """tiny_splits' rows as `label \\t dense counts \\t ids`, with some ids written as words."""
    splits = tiny_splits(n)
    parts = [s for s in (splits.train, splits.val, splits.test) if isinstance(s, CTRData)]
    dense = torch.cat([p.dense for p in parts]) * 20
    ids = torch.cat([p.sparse for p in parts])
    labels = torch.cat([p.labels for p in parts])
    with open(path, "w") as f:
        for i in range(len(labels)):
            cols = [str(int(labels[i]))] + [str(int(x)) for x in dense[i]] + [f"v{int(x)}" for x in ids[i]]
            f.write("\t".join(cols) + "\n")


def _cfg(path, **kw) -> DataConfig:
    return DataConfig(
        type="tabular", path=str(path), delimiter="\t", header=False, label_column="0",
        dense_columns=["1", "2", "3", "4"], sparse_columns=["5", "6", "7", "8", "9"], **kw,
    )  # fmt: skip


def test_split_of_rows_is_a_seeded_hash_of_the_row_number_with_the_fractions():
    whole = split_of_rows(0, 100_000, [0.8, 0.1, 0.1], 7)
    parts = [split_of_rows(0, 40_000, [0.8, 0.1, 0.1], 7), split_of_rows(40_000, 60_000, [0.8, 0.1, 0.1], 7)]
    assert np.array_equal(np.concatenate(parts), whole)
    shares = np.bincount(whole, minlength=3) / len(whole)
    assert np.allclose(shares, [0.8, 0.1, 0.1], atol=0.005)
    assert not np.array_equal(split_of_rows(0, 1000, [0.8, 0.1, 0.1], 8), whole[:1000])


def test_value_counts_merged_in_batches_equal_counting_everything_at_once():
    rng = np.random.default_rng(0)
    values = np.array([f"x{v}" for v in rng.zipf(1.3, 20_000) % 5000] + [""] * 50)
    rng.shuffle(values)
    counts = ValueCounts()
    for a in range(0, len(values), 777):
        counts.add(values[a : a + 777])
    for min_count in (1, 3):
        sorted_values, ids = counts.vocabulary(min_count)
        expected, size = build_vocabulary(values, np.arange(len(values)), min_count)
        assert len(ids) + 1 == size
        got = np.zeros(len(values), dtype=np.int64)
        pos = np.searchsorted(sorted_values, values)
        hit = (pos < len(sorted_values)) & (sorted_values[np.minimum(pos, len(sorted_values) - 1)] == values)
        got[hit] = ids[pos[hit]]
        assert np.array_equal(got, expected)


def test_streamed_text_has_the_ids_of_the_in_memory_rule_on_the_same_split(tmp_path):
    path = tmp_path / "rows.tsv"
    _write_tsv(path)
    cfg = _cfg(path, streaming="always", min_count=2)
    splits = load_data(cfg)
    assert isinstance(splits.train, BinaryRows)
    raw = read_raw(_cfg(path))
    split = split_of_rows(0, len(raw), cfg.split, cfg.split_seed)
    assert [len(splits.train), len(splits.val), len(splits.test)] == np.bincount(split).tolist()
    train_index = np.flatnonzero(split == 0)
    encoded = [build_vocabulary(v, train_index, 2) for v in raw.categorical]
    assert [f.num_embeddings for f in splits.schema.sparse] == [n for _, n in encoded]
    assert splits.schema.sparse_names == ["c5", "c6", "c7", "c8", "c9"]
    ids = np.stack([i for i, _ in encoded], axis=1)
    dense = transform_dense(raw.dense)
    for s, name in enumerate(("train", "val", "test")):
        rows = getattr(splits, name).head(10**9)
        assert np.array_equal(rows.sparse.numpy(), ids[split == s])
        assert np.allclose(rows.dense.numpy(), dense[split == s])
        assert np.array_equal(rows.labels.numpy(), raw.labels[split == s])


def test_the_cache_is_converted_once_and_keyed_by_the_settings(tmp_path):
    path = tmp_path / "rows.tsv"
    _write_tsv(path)
    cfg = _cfg(path, streaming="always")
    out = cache_dir(cfg)
    assert out.startswith(str(tmp_path / CACHE_DIR_NAME))  # beside the data
    load_data(cfg)
    stamp = os.path.getmtime(os.path.join(out, "day_0_sparse.npy"))
    load_data(cfg)
    assert os.path.getmtime(os.path.join(out, "day_0_sparse.npy")) == stamp
    assert cache_dir(_cfg(path, streaming="always", min_count=5)) != out
    assert cache_dir(_cfg(path, streaming="always", split_seed=1)) != out


def test_auto_streams_only_files_above_the_size_limit(tmp_path):
    path = tmp_path / "rows.tsv"
    _write_tsv(path)
    assert isinstance(load_data(_cfg(path)).train, CTRData)  # ~100 KB: in memory
    assert isinstance(load_data(_cfg(path, in_memory_max_mb=0)).train, BinaryRows)


def test_hash_size_streams_without_a_vocabulary(tmp_path):
    path = tmp_path / "rows.tsv"
    _write_tsv(path)
    splits = load_data(_cfg(path, streaming="always", hash_size=64))
    assert [f.num_embeddings for f in splits.schema.sparse] == [64] * 5
    assert int(splits.val.head(500).sparse.max()) < 64


def test_bad_rows_stream_with_the_readers_one_line_errors(tmp_path):
    path = tmp_path / "rows.tsv"
    _write_tsv(path, n=200)
    with open(path, "a") as f:
        f.write("1\t2\t3\n")
    with pytest.raises(ValueError, match=r"rows.tsv:201: 3 columns"):
        load_data(_cfg(path, streaming="always"))


@pytest.mark.skipif(
    not (SHARED_DATA / "criteo_sample").exists(), reason="../shared/data/criteo_sample is absent"
)
def test_criteo_sample_streams_into_the_cache_dir(tmp_path):
    cfg = DataConfig(
        type="criteo", path=str(SHARED_DATA / "criteo_sample" / "criteo_sample.txt.gz"),
        streaming="always", cache_dir=str(tmp_path),
    )  # fmt: skip
    splits = load_data(cfg)
    assert cache_dir(cfg).startswith(str(tmp_path / "stream"))
    assert splits.schema.sparse_names == [f"C{i}" for i in range(1, 27)]
    assert len(splits.train) + len(splits.val) + len(splits.test) == 10_000
    batch = next(splits.train.batches(splits.schema.sparse_names, 128, shuffle=True))
    assert batch.dense_features.shape == (128, 13) and batch.sparse_features.keys()[0] == "C1"
