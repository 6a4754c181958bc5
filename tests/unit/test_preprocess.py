"""Vocabularies, hashing, dense transform and splitting of raw CTR tables."""

from __future__ import annotations

import zlib
from collections import Counter

import numpy as np
import pytest
import torch

from torchrec_aes.config import DataConfig
from torchrec_aes.data.dataset import split_rows
from torchrec_aes.data.preprocess import (
    OOV_ID,
    RawTable,
    build_vocabulary,
    hash_ids,
    preprocess,
    stable_hash,
    transform_dense,
)


def _table(columns: dict[str, list[str]], labels: list[int] | None = None, dense=None) -> RawTable:
    n = len(next(iter(columns.values())))
    dense = np.zeros((n, 0)) if dense is None else np.asarray(dense, dtype=np.float64)
    return RawTable(
        dense=dense,
        categorical=[np.array(v, dtype=str) for v in columns.values()],
        labels=np.array(labels if labels is not None else [i % 2 for i in range(n)]),
        dense_names=[f"I{i}" for i in range(dense.shape[1])],
        sparse_names=list(columns),
    )


def _reference_vocabulary(values: list[str], train: list[int], min_count: int) -> dict[str, int]:
    """The vocabulary rule written the slow, obvious way."""
    counts = Counter(values[i] for i in train)
    kept = sorted((v for v, c in counts.items() if c >= min_count and v != ""), key=lambda v: (-counts[v], v))
    return {v: i + 1 for i, v in enumerate(kept)}


def test_ids_are_ordered_by_descending_train_frequency_with_ties_broken_by_value():
    values = np.array(["x"] * 5 + ["b"] * 3 + ["a"] * 3 + ["z"])
    ids, size = build_vocabulary(values, np.arange(len(values)), min_count=2)
    assert size == 4  # OOV + x, a, b
    assert dict(zip(values.tolist(), ids.tolist(), strict=True)) == {"x": 1, "a": 2, "b": 3, "z": OOV_ID}


def test_rare_and_missing_values_share_oov_id_zero():
    values = np.array(["a", "a", "rare", "", "", "", "b", "b", "b"])
    ids, size = build_vocabulary(values, np.arange(len(values)), min_count=2)
    assert size == 3
    assert ids.tolist() == [2, 2, 0, 0, 0, 0, 1, 1, 1]


def test_min_count_one_keeps_every_value_seen_in_train():
    values = np.array(["a", "b", "c", ""])
    ids, size = build_vocabulary(values, np.arange(4), min_count=1)
    assert size == 4 and ids.tolist() == [1, 2, 3, 0]


def test_vocabulary_is_built_on_train_rows_only():
    # "val_only" is frequent, but only outside the train rows: it must be OOV everywhere.
    values = np.array(["a", "a", "a", "val_only", "val_only", "val_only", "a"])
    ids, size = build_vocabulary(values, np.array([0, 1, 2]), min_count=2)
    assert size == 2
    assert ids.tolist() == [1, 1, 1, 0, 0, 0, 1]


@pytest.mark.parametrize("width", [3, 8, 30], ids=["packed-short", "packed-hex", "hashed-long"])
def test_vocabulary_matches_the_reference_rule_for_short_and_long_values(width):
    rng = np.random.default_rng(width)
    alphabet = np.array(list("abcdef0123456789é"))
    pool = ["".join(rng.choice(alphabet, size=rng.integers(1, width + 1))) for _ in range(300)] + [""]
    values = [pool[i] for i in rng.zipf(1.3, size=5000) % len(pool)]
    train = rng.permutation(5000)[:4000].tolist()
    ids, size = build_vocabulary(np.array(values), np.array(train), min_count=3)
    expected = _reference_vocabulary(values, train, 3)
    assert size == len(expected) + 1
    assert ids.tolist() == [expected.get(v, OOV_ID) for v in values]


def test_preprocess_splits_8_1_1_and_builds_the_vocabulary_from_the_train_split():
    rng = np.random.default_rng(0)
    values = [f"v{i}" for i in rng.zipf(1.5, size=2000) % 100]
    raw = _table({"C1": values, "C2": ["same"] * 2000})
    cfg = DataConfig(type="tabular", split_seed=7, min_count=2)
    splits = preprocess(raw, cfg)

    assert (len(splits.train), len(splits.val), len(splits.test)) == (1600, 200, 200)
    train, val, test = split_rows(2000, cfg.split, cfg.split_seed)
    vocab = _reference_vocabulary(values, train.tolist(), 2)
    assert splits.schema.sparse_names == ["C1", "C2"]
    assert splits.schema.feature("C1").num_embeddings == len(vocab) + 1
    assert splits.schema.feature("C2").num_embeddings == 2
    for part, index in ((splits.train, train), (splits.val, val), (splits.test, test)):
        assert part.sparse[:, 0].tolist() == [vocab.get(values[i], OOV_ID) for i in index.tolist()]
        assert part.sparse.dtype == torch.int64 and part.dense.dtype == torch.float32
        assert part.labels.dtype == torch.float32
        assert part.labels.tolist() == [float(i % 2) for i in index.tolist()]


def test_preprocess_is_deterministic():
    rng = np.random.default_rng(1)
    raw = _table({"C1": [f"x{i}" for i in rng.integers(0, 50, 500)]}, dense=rng.normal(size=(500, 2)))
    a = preprocess(raw, DataConfig())
    b = preprocess(raw, DataConfig())
    for part in ("train", "val", "test"):
        assert torch.equal(getattr(a, part).sparse, getattr(b, part).sparse)
        assert torch.equal(getattr(a, part).dense, getattr(b, part).dense)
    assert a.schema == b.schema


def test_a_field_with_only_missing_values_gets_a_one_row_table():
    splits = preprocess(_table({"empty": [""] * 20, "C": ["a", "b"] * 10}), DataConfig())
    assert splits.schema.feature("empty").num_embeddings == 1
    assert int(splits.train.sparse[:, 0].max()) == 0


def test_dense_values_become_log1p_with_negatives_clipped_and_missing_zero():
    dense = np.array([[-5.0, 0.0, np.nan, np.e - 1, 99.0]])
    assert transform_dense(dense)[0].tolist() == pytest.approx([0.0, 0.0, 0.0, 1.0, np.log(100.0)])
    assert transform_dense(dense).dtype == np.float32


def test_hash_ids_equal_crc32_of_utf8_modulo_the_table_size():
    values = ["", "a", "68fd1e64", "ünïcödé", "日本語", "a much longer categorical value than eight chars"]
    assert stable_hash(np.array(values)).tolist() == [zlib.crc32(v.encode()) for v in values]
    ids = hash_ids(np.array(values), 1000)
    assert ids.tolist() == [zlib.crc32(v.encode()) % 1000 for v in values]
    assert ids[0] == 0  # missing hashes to id 0


def test_hash_size_sets_every_table_size_and_bounds_the_ids():
    raw = _table({"C1": [f"v{i}" for i in range(300)], "C2": [str(i % 7) for i in range(300)]})
    splits = preprocess(raw, DataConfig(hash_size=16))
    assert [f.num_embeddings for f in splits.schema.sparse] == [16, 16]
    ids = torch.cat([splits.train.sparse, splits.val.sparse, splits.test.sparse])
    assert int(ids.min()) >= 0 and int(ids.max()) < 16


def test_raw_table_rejects_columns_of_different_lengths():
    with pytest.raises(ValueError, match="categorical column 'C2' has shape"):
        RawTable(
            dense=np.zeros((3, 0)),
            categorical=[np.array(["a", "b", "c"]), np.array(["a"])],
            labels=np.zeros(3),
            dense_names=[],
            sparse_names=["C1", "C2"],
        )
