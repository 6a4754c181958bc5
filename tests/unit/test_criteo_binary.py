"""TorchRec's preprocessed Criteo format (`data.type=criteo_binary`): streamed per rank in chunks, the
same rows as the in-memory data it was written from, disjoint per-rank shares, one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.helpers import tiny_splits
from torchrec_aes.config import DataConfig
from torchrec_aes.data.binary import (
    VOCAB_FILE,
    BinaryRows,
    find_days,
    load_criteo_binary,
    write_days,
    write_meta,
)
from torchrec_aes.data.dataset import CTRData, Splits
from torchrec_aes.data.load import load_data


def _write(tmp_path, n: int = 3000, days: int = 3):
    splits = tiny_splits(n)
    out = tmp_path / "npy"
    write_days(splits, str(out), days)
    return splits, out


def _load(out, **kw) -> Splits:
    kw.setdefault("streaming", "always")
    return load_criteo_binary(DataConfig(type="criteo_binary", path=str(out), **kw))


def _rows(batches) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    batches = list(batches)
    dense = torch.cat([b.dense_features for b in batches])
    labels = torch.cat([b.labels for b in batches])
    ids = torch.cat(
        [b.sparse_features.values().reshape(len(b.sparse_features.keys()), -1).t() for b in batches]
    )
    return dense, ids, labels


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_streamed_batches_equal_the_in_memory_batches_they_were_written_from(tmp_path, world_size):
    mem, out = _write(tmp_path)
    binary = _load(out, stream_chunk_rows=100)  # chunks smaller than a batch's span: batches cross chunks
    assert [len(binary.train), len(binary.val), len(binary.test)] == [
        len(mem.train),
        len(mem.val),
        len(mem.test),
    ]
    for split in ("train", "val", "test"):
        for rank in range(world_size):
            a = list(getattr(mem, split).batches(mem.schema.sparse_names, 128, rank, world_size))
            b = list(getattr(binary, split).batches(binary.schema.sparse_names, 128, rank, world_size))
            assert len(a) == len(b)
            for x, y in zip(a, b, strict=True):
                assert torch.equal(x.dense_features, y.dense_features)
                assert torch.equal(x.labels, y.labels)
                assert torch.equal(x.sparse_features.values(), y.sparse_features.values())
                assert torch.equal(x.sparse_features.lengths(), y.sparse_features.lengths())


def test_schema_uses_torchrec_names_and_the_recorded_or_found_table_sizes(tmp_path):
    mem, out = _write(tmp_path)
    found = _load(out).schema
    assert found.dense_names == [f"int_{i}" for i in range(mem.schema.num_dense)]
    assert found.sparse_names == [f"cat_{i}" for i in range(len(mem.schema.sparse))]
    ids = torch.cat([d.sparse for d in (mem.train, mem.val, mem.test) if isinstance(d, CTRData)])
    assert [f.num_embeddings for f in found.sparse] == (ids.max(0).values + 1).tolist()
    cache = json.loads((out / VOCAB_FILE).read_text())
    assert cache["num_embeddings"] == [f.num_embeddings for f in found.sparse]
    # A recorded size (the converter writes the source schema's) wins while the files are unchanged...
    record = {k: v for k, v in cache.items() if k != "sha256"}
    write_meta(str(out), {**record, "num_embeddings": [5000] * len(found.sparse)})
    assert [f.num_embeddings for f in _load(out).schema.sparse] == [5000] * len(found.sparse)
    # ... but a record edited by hand fails its checksum and is rebuilt from the files.
    cache["num_embeddings"] = [3] * len(found.sparse)
    (out / VOCAB_FILE).write_text(json.dumps(cache))
    assert [f.num_embeddings for f in _load(out).schema.sparse] == (ids.max(0).values + 1).tolist()


def test_num_embeddings_per_feature_hashes_ids_modulo_the_size(tmp_path):
    mem, out = _write(tmp_path)
    sizes = [7, 7, 7, 7, 7]
    binary = _load(out, num_embeddings_per_feature=sizes)
    assert [f.num_embeddings for f in binary.schema.sparse] == sizes
    _, ids, _ = _rows(binary.test.batches(binary.schema.sparse_names, 256))
    assert isinstance(mem.test, CTRData)
    assert torch.equal(ids, mem.test.sparse % 7)
    with pytest.raises(ValueError, match="num_embeddings_per_feature: 2 entries, the files have 5"):
        _load(out, num_embeddings_per_feature=[7, 7])


def test_ranks_read_disjoint_contiguous_shares_of_equal_size(tmp_path):
    _, out = _write(tmp_path, n=3001, days=4)
    train = _load(out).train
    assert isinstance(train, BinaryRows)
    for world_size in (1, 2, 3, 5):
        seen: list[int] = []
        for rank in range(world_size):
            ranges = train.rank_ranges(rank, world_size)
            offsets = np.cumsum([0, *train.files.rows])
            rows = [int(offsets[f]) + left + i for f, left, count in ranges for i in range(count)]
            assert len(rows) == len(train) // world_size
            assert rows == list(range(rows[0], rows[0] + len(rows)))  # one contiguous range
            seen += rows
        assert len(seen) == len(set(seen))


def test_shuffled_epochs_are_seeded_permutations_of_the_ranks_share(tmp_path):
    _, out = _write(tmp_path)
    train = _load(out, stream_chunk_rows=256).train
    keys = [f"cat_{i}" for i in range(5)]
    plain = _rows(train.batches(keys, 64, 1, 2, drop_last=False))
    a = _rows(train.batches(keys, 64, 1, 2, shuffle=True, seed=1))
    again = _rows(train.batches(keys, 64, 1, 2, shuffle=True, seed=1))
    other = _rows(train.batches(keys, 64, 1, 2, shuffle=True, seed=2))
    assert torch.equal(a[1], again[1]) and not torch.equal(a[1], other[1])
    assert not torch.equal(a[1], plain[1][: len(a[1])])
    # drop_last keeps whole batches of the rank's share; with a full epoch the rows are the same set.
    key = lambda t: sorted(map(tuple, t[1].tolist()))  # noqa: E731
    full = _rows(train.batches(keys, 100, 1, 2, shuffle=True, seed=3))
    assert key(full) == key(plain)


def test_max_batches_and_head_read_only_what_they_need(tmp_path):
    mem, out = _write(tmp_path)
    binary = _load(out, stream_chunk_rows=64)
    assert len(list(binary.train.batches(binary.schema.sparse_names, 32, max_batches=3))) == 3
    head = binary.val.head(300)
    assert isinstance(head, CTRData) and isinstance(mem.val, CTRData) and len(head) == 300
    assert torch.equal(head.sparse, mem.val.sparse[:300]) and torch.equal(head.dense, mem.val.dense[:300])
    selected = binary.val.select([3, 1]).head(10)
    assert torch.equal(selected.sparse, mem.val.sparse[:10][:, [3, 1]])


def test_load_data_dispatches_criteo_binary_and_streams_by_size(tmp_path):
    mem, out = _write(tmp_path)
    small = load_data(DataConfig(type="criteo_binary", path=str(out)))  # ~0.3 MB: in memory
    assert isinstance(small.train, CTRData) and isinstance(mem.train, CTRData)
    assert torch.equal(small.train.sparse, mem.train.sparse) and torch.equal(
        small.train.dense, mem.train.dense
    )
    big = load_data(DataConfig(type="criteo_binary", path=str(out), in_memory_max_mb=0))
    assert isinstance(big.train, BinaryRows)
    never = load_data(DataConfig(type="criteo_binary", path=str(out), streaming="never", in_memory_max_mb=0))
    assert isinstance(never.test, CTRData) and len(never.test) == len(mem.test)


def _damage(out, name: str, array: np.ndarray) -> None:
    np.save(out / name, array)


def test_bad_day_files_give_one_line_errors_naming_the_file(tmp_path):
    _, out = _write(tmp_path)
    with pytest.raises(ValueError, match="is not a directory"):
        _load(tmp_path / "missing")
    (out / "day_1_labels.npy").unlink()
    with pytest.raises(ValueError, match=r"day_1_labels.npy: missing"):
        find_days(str(out))
    _, out = _write(tmp_path / "b")
    _damage(out, "day_0_labels.npy", np.zeros((5, 1), dtype=np.int32))
    with pytest.raises(ValueError, match="day 0 files disagree in rows: dense 800, sparse 800, labels 5"):
        find_days(str(out))
    _, out = _write(tmp_path / "c", days=1)
    for kind in ("dense", "sparse", "labels"):
        (out / f"day_1_{kind}.npy").unlink()
    with pytest.raises(ValueError, match="needs at least 2 days"):
        find_days(str(out))


def test_bad_ids_and_labels_name_the_file_and_row(tmp_path):
    _, out = _write(tmp_path)
    sparse = np.load(out / "day_1_sparse.npy")
    sparse[17, 2] = -4
    _damage(out, "day_1_sparse.npy", sparse)
    with pytest.raises(ValueError, match=r"day_1_sparse.npy: row 17, column 2: negative id -4"):
        _load(out)
    _, out = _write(tmp_path / "b")
    labels = np.load(out / "day_2_labels.npy")
    labels[5] = 3
    _damage(out, "day_2_labels.npy", labels)
    with pytest.raises(ValueError, match=r"day_2_labels.npy: row 5: label 3, expected 0 or 1"):
        _load(out)
