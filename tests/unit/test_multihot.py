"""Multi-hot rows: jagged bags in `CTRData`, the tabular reader's bag columns, the planted generator's
multi-hot fields, per-feature pooling, and id counts over every id of a bag."""

import numpy as np
import pytest
import torch

from torchrec_aes.architecture import Architecture
from torchrec_aes.config import DataConfig, SyntheticConfig
from torchrec_aes.data.dataset import CTRData, concat_rows
from torchrec_aes.data.load import load_data
from torchrec_aes.data.planted import generate
from torchrec_aes.data.preprocess import split_bags
from torchrec_aes.data.schema import Schema, SparseFeature
from torchrec_aes.models.frequency import id_counts


def _bags(n: int, seed: int = 0) -> tuple[CTRData, list[list[list[int]]]]:
    """Random multi-hot rows (3 fields, bags of 0-4 ids) and the same bags as Python lists [row][field]."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, 5, (n, 3), generator=g)
    lengths[:, 1] = 1  # a one-hot field among multi-hot ones
    rows = [
        [torch.randint(0, 50, (int(lengths[i, f]),), generator=g).tolist() for f in range(3)]
        for i in range(n)
    ]
    values = torch.tensor([v for f in range(3) for i in range(n) for v in rows[i][f]], dtype=torch.int64)
    data = CTRData(
        torch.rand(n, 2, generator=g), values, torch.randint(0, 2, (n,), generator=g).float(), lengths
    )
    return data, rows


def _as_lists(data: CTRData) -> list[list[list[int]]]:
    offsets = data.offsets()
    n = len(data)
    return [
        [data.sparse[offsets[f * n + i] : offsets[f * n + i + 1]].tolist() for f in range(data.num_fields)]
        for i in range(n)
    ]


def test_jagged_rows_subset_select_and_batch_keep_every_bag():
    data, rows = _bags(40)
    index = torch.tensor([5, 0, 39, 5, 17])
    sub = data.subset(index)
    assert _as_lists(sub) == [rows[i] for i in index.tolist()]
    assert torch.equal(sub.dense, data.dense[index]) and torch.equal(sub.labels, data.labels[index])
    assert _as_lists(data.select([2, 0])) == [[r[2], r[0]] for r in rows]
    assert _as_lists(data.head(3)) == rows[:3]
    batch = next(data.batches(["a", "b", "c"], 8, rank=1, world_size=2))  # rows 20..27
    jagged = batch.sparse_features.to_dict()
    for f, key in enumerate(["a", "b", "c"]):
        assert jagged[key].lengths().tolist() == [len(rows[i][f]) for i in range(20, 28)]
        assert jagged[key].values().tolist() == [v for i in range(20, 28) for v in rows[i][f]]


def test_id_counts_count_every_id_of_a_bag():
    data, rows = _bags(60)
    counts = id_counts(data, ["a", "b", "c"], [50, 50, 50])
    streamed = id_counts(MappedLike(data), ["a", "b", "c"], [50, 50, 50])  # through batches
    for f, key in enumerate(["a", "b", "c"]):
        expected = np.bincount([v for r in rows for v in r[f]], minlength=50)
        assert counts[key].tolist() == expected.tolist() == streamed[key].tolist()


class MappedLike:
    """Rows without `field_ids`: counted through their batches, as streamed rows are."""

    def __init__(self, data: CTRData) -> None:
        self.data = data

    def batches(self, keys, batch_size, *args, **kwargs):
        return self.data.batches(keys, batch_size)


def test_split_bags_drops_empty_parts_and_truncates_with_counts():
    cells = np.array(["a|b|c", "", "b", "a||d|e|f"])
    tokens, lengths, cut = split_bags(cells, "|", max_ids=3)
    assert lengths.tolist() == [3, 0, 1, 3]
    assert tokens.tolist() == ["a", "b", "c", "b", "a", "d", "e"]
    assert cut == [1, 1]  # one bag cut, one id dropped
    assert split_bags(cells, "|", 0)[1].tolist() == [3, 0, 1, 4]


def _csv(tmp_path, rows: list[str]) -> str:
    path = tmp_path / "tags.csv"
    path.write_text("label,price,tags,site\n" + "\n".join(rows) + "\n")
    return str(path)


def _tabular(path: str, **changes) -> DataConfig:
    cfg = DataConfig(
        type="tabular",
        path=path,
        label_column="label",
        dense_columns=["price"],
        sparse_columns=["tags", "site"],
        multi_hot_columns=["tags"],
        min_count=1,
        split=[0.8, 0.1, 0.1],
    )
    for k, v in changes.items():
        setattr(cfg, k, v)
    return cfg


def test_tabular_multi_hot_column_becomes_bags_through_the_vocabulary(tmp_path):
    tags = ["x|y", "", "y|z|z", "x", "w|x|y|z"] * 20
    path = _csv(tmp_path, [f"{i % 2},{i},{t},s{i % 3}" for i, t in enumerate(tags)])
    splits = load_data(_tabular(path, max_ids_per_row=3, pooling={"tags": "mean"}))
    schema = splits.schema
    assert [f.pooling for f in schema.sparse] == ["mean", "sum"]
    assert schema.feature("tags").num_embeddings == 5  # OOV + w, x, y, z
    for part in (splits.train, splits.val, splits.test):
        assert isinstance(part, CTRData) and part.is_multi_hot
        assert set(part.field_lengths(0).tolist()) <= {0, 1, 2, 3}
        assert part.field_lengths(1).tolist() == [1] * len(part)
    total = sum(int(p.field_lengths(0).sum()) for p in (splits.train, splits.val, splits.test))
    assert total == 20 * (2 + 0 + 3 + 1 + 3)  # the 4-id bags were cut to 3
    arch = Architecture.uniform(schema, 8)
    configs = {c.name: c.pooling.name for c in arch.to_ebc_configs()}
    assert configs == {"t_tags": "MEAN", "t_site": "SUM"}


def test_multi_hot_config_errors_name_the_key(tmp_path):
    path = _csv(tmp_path, ["1,2,a|b,s"] * 10)
    with pytest.raises(ValueError, match="data.multi_hot_columns: 'genre' is not a categorical column"):
        load_data(_tabular(path, multi_hot_columns=["genre"]))
    with pytest.raises(ValueError, match="data.pooling: 'genre' is not a sparse feature"):
        load_data(_tabular(path, pooling={"genre": "mean"}))
    with pytest.raises(ValueError, match="data.weighted_columns: weighted text files are read in memory"):
        load_data(_tabular(path, streaming="always", weighted_columns=["tags"]))


def test_schema_and_architecture_keep_one_hot_files_unchanged_and_check_pooling():
    schema = Schema(["d0"], [SparseFeature("a", 10), SparseFeature("b", 20)])
    assert "pooling" not in str(schema.to_dict())
    mean = schema.with_pooling({"b": "mean"})
    assert mean.hash() != schema.hash()
    assert "pooling" not in str(Architecture.uniform(schema, 8).to_dict())
    arch = Architecture.uniform(mean, 8)
    assert Architecture.from_dict(arch.to_dict()).tables[1].pooling == "mean"
    with pytest.raises(ValueError, match="table 't_b' pools by mean but feature 'b' pools by sum"):
        arch.check_schema(schema)


def test_planted_multi_hot_fields_are_bags_and_one_hot_fields_keep_their_ids():
    plain = SyntheticConfig(num_examples=3000, cardinalities=[10, 100, 1000, 50], true_ranks=[4, 0, 8, 2])
    multi = SyntheticConfig(**{**plain.__dict__, "multi_hot_fields": [1, 2], "mean_bag_length": 6.0})
    schema, data, ranks = generate(multi, seed=0)
    _, one_hot, _ = generate(plain, seed=0)
    assert ranks == [4, 0, 8, 2] and data.is_multi_hot
    assert [f.pooling for f in schema.sparse] == ["sum", "mean", "mean", "sum"]
    for f in (0, 3):  # fields that stay one-hot draw the same ids
        assert torch.equal(data.field_ids(f), one_hot.sparse[:, f])
    for f in (1, 2):
        lengths = data.field_lengths(f).double()
        assert abs(float(lengths.mean()) - 6.0) < 0.3 and int(lengths.min()) >= 0
        assert int(data.field_ids(f).max()) < multi.cardinalities[f]
    assert abs(float(data.labels.mean()) - 0.25) < 0.03
    again = generate(multi, seed=0)[1]
    assert torch.equal(again.sparse, data.sparse) and torch.equal(again.labels, data.labels)
    with pytest.raises(ValueError, match="data.synthetic.multi_hot_fields"):
        generate(SyntheticConfig(num_examples=10, cardinalities=[10], multi_hot_fields=[3]), seed=0)


def test_feature_groups_mean_divides_the_buckets_sum_by_the_whole_bag():
    from torchrec.modules.embedding_configs import EmbeddingBagConfig
    from torchrec.modules.embedding_modules import EmbeddingBagCollection
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    from torchrec_aes.models.ctr import FeatureGroups

    tables = [
        EmbeddingBagConfig(name=f"t_a{k}", embedding_dim=4, num_embeddings=5, feature_names=[f"a{k}"])
        for k in (0, 1)
    ]
    ebc = EmbeddingBagCollection(tables=tables)
    # row 0: ids 1, 2 in bucket 0 and 3 in bucket 1; row 1: an empty bag
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=["a0", "a1"],
        values=torch.tensor([1, 2, 3]),
        lengths=torch.tensor([2, 0, 1, 0], dtype=torch.int32),
    )
    w0, w1 = (ebc.embedding_bags[f"t_a{k}"].weight.detach() for k in (0, 1))
    out = FeatureGroups(ebc, [("a", ["a0", "a1"])], frozenset({"a"}))(kjt).to_dict()["a"].detach()
    assert torch.allclose(out[0], (w0[1] + w0[2] + w1[3]) / 3) and torch.equal(out[1], torch.zeros(4))
    summed = FeatureGroups(ebc, [("a", ["a0", "a1"])])(kjt).to_dict()["a"].detach()
    assert torch.allclose(summed[0], w0[1] + w0[2] + w1[3])


def test_libfm_fields_in_multi_hot_columns_take_any_number_of_indices(tmp_path):
    # fields: user [0, 10), tags [10, 20); tags is a bag
    lines = ["1 3:1 12:1 15:1", "0 4:1", "-1 3:1 11:1 12:1 19:1"] * 10
    path = tmp_path / "bags.libfm"
    path.write_text("\n".join(lines) + "\n")
    cfg = DataConfig(
        type="libfm",
        path=str(path),
        field_offsets=[0, 10],
        field_names=["user", "tags"],
        multi_hot_columns=["tags"],
        min_count=1,
    )
    splits = load_data(cfg)
    parts = (splits.train, splits.val, splits.test)
    assert sorted(int(x) for p in parts for x in p.field_lengths(1)) == sorted([2, 0, 3] * 10)
    assert all(p.field_lengths(0).tolist() == [1] * len(p) for p in parts)
    assert splits.schema.feature("tags").num_embeddings == 5  # OOV + 1, 2, 5, 9
    path.write_text("1 3:1 4:1 12:1\n")
    with pytest.raises(ValueError, match=r"bags.libfm:1: 2 indices in field 'user' \(expected exactly one"):
        load_data(cfg)
    with pytest.raises(ValueError, match="data.multi_hot_columns: libFM bags need data.field_offsets"):
        load_data(DataConfig(type="libfm", path=str(path), multi_hot_columns=["tags"]))


def test_ihas_router_counts_every_id_of_a_bag():
    from torchrec_aes.data.dataset import make_batch
    from torchrec_aes.search.ihas.router import fit_router

    # group 0 rows hold ids from [0, 10), group 1 rows from [10, 20); bags of 0-5 ids; the first id of a
    # bag alone is a weaker vote than the whole bag
    g = torch.Generator().manual_seed(0)
    n = 2000
    groups = torch.randint(0, 2, (n,), generator=g)
    lengths = torch.randint(1, 6, (n, 1), generator=g)
    noisy = torch.rand(int(lengths.sum()), generator=g) < 0.3  # 30% of ids from the other group's range
    own = torch.repeat_interleave(groups, lengths[:, 0])
    values = torch.randint(0, 10, (int(lengths.sum()),), generator=g) + 10 * (own ^ noisy.long())
    bags = CTRData(torch.zeros(n, 0), values, torch.zeros(n), lengths)
    router, report = fit_router(bags, groups, ["tags"], [20], 2, 1.0, lambda fs: True)
    assert report[0]["used"] and report[0]["gain"] > 0.15  # one id of a 70/30 field: 0.08 nats
    routed = router(make_batch(bags, torch.arange(n), ["tags"]).sparse_features)
    first = values[bags.offsets()[:-1]]
    first_only = (first >= 10).long()
    assert float((routed == groups).float().mean()) > float((first_only == groups).float().mean()) + 0.05


def _multi_hot_days(directory, widths=(1, 3, 2), rows=(40, 30, 20), seed=0) -> list[np.ndarray]:
    """DLRM v2's multi-hot day files: dense/labels .npy and `day_{d}_sparse_multi_hot.npz` (np.savez of
    one [N_d, k_f] array per feature, keys "0".."F-1"). Returns every feature's [N, k_f] ids, all days."""
    rng = np.random.default_rng(seed)
    per_feature: list[list[np.ndarray]] = [[] for _ in widths]
    for d, n in enumerate(rows):
        np.save(directory / f"day_{d}_dense.npy", rng.random((n, 2), dtype=np.float32))
        np.save(directory / f"day_{d}_labels.npy", rng.integers(0, 2, (n, 1)).astype(np.int32))
        arrays = {str(f): rng.integers(0, 50, (n, k)).astype(np.int32) for f, k in enumerate(widths)}
        np.savez(directory / f"day_{d}_sparse_multi_hot.npz", **arrays)
        for f in range(len(widths)):
            per_feature[f].append(arrays[str(f)])
    return [np.concatenate(p) for p in per_feature]


@pytest.mark.parametrize("streaming", ["always", "never"])
def test_criteo_multi_hot_day_files_are_read_as_bags(tmp_path, streaming):
    ids = _multi_hot_days(tmp_path)
    cfg = DataConfig(type="criteo_binary", path=str(tmp_path), streaming=streaming, stream_chunk_rows=7)
    splits = load_data(cfg)
    assert [f.num_embeddings for f in splits.schema.sparse] == [int(a.max()) + 1 for a in ids]
    rows = []  # every split's bags, in order: train (days 0-1), val and test (day 2's halves)
    for part in (splits.train, splits.val, splits.test):
        for batch in part.batches(splits.schema.sparse_names, 8):
            jagged = batch.sparse_features.to_dict()
            rows.append(
                [jagged[k].values().reshape(len(batch.labels), -1) for k in splits.schema.sparse_names]
            )
    for f, expected in enumerate(ids):
        assert torch.equal(torch.cat([r[f] for r in rows]), torch.from_numpy(expected.astype(np.int64)))
    shuffled = list(splits.train.batches(splits.schema.sparse_names, 8, shuffle=True, seed=1))
    assert sum(len(b.labels) for b in shuffled) == 70 and all(
        b.sparse_features.to_dict()["cat_1"].lengths().tolist() == [3] * len(b.labels) for b in shuffled
    )
    hashed = load_data(DataConfig(**{**cfg.__dict__, "num_embeddings_per_feature": [7, 11, 13]}))
    head = hashed.train.head(40)
    assert torch.equal(head.field_ids(1), torch.from_numpy(ids[1][:40].reshape(-1).astype(np.int64)) % 11)


def test_weighted_bags_keep_each_ids_weight_through_subset_select_and_batches():
    data, rows = _bags(30)
    data.weights = data.sparse.float() / 10 + 0.5  # a weight tied to its id, so alignment is checkable
    sub = data.subset(torch.tensor([3, 29, 0])).select([2, 0])
    assert torch.equal(sub.weights, sub.sparse.float() / 10 + 0.5)
    for batch in data.batches(["a", "b", "c"], 7, shuffle=True, seed=3):
        kjt = batch.sparse_features
        assert torch.equal(kjt.weights(), kjt.values().float() / 10 + 0.5)
    assert torch.equal(
        concat_rows([sub, sub]).weights,
        torch.cat([sub.field_weights(0), sub.field_weights(0), sub.field_weights(1), sub.field_weights(1)]),
    )


def test_weighted_columns_read_id_weight_pairs(tmp_path):
    path = tmp_path / "w.csv"
    path.write_text(
        "label,price,tags,site\n" + "\n".join(f"{i % 2},{i},a:0.5|b:{i},s" for i in range(50)) + "\n"
    )
    cfg = _tabular(str(path), weighted_columns=["tags"])
    splits = load_data(cfg)
    assert [f.weighted for f in splits.schema.sparse] == [True, False] and splits.schema.is_weighted
    part = splits.train
    tags = part.field_weights(0).reshape(-1, 2)
    assert torch.equal(tags[:, 0], torch.full((len(part),), 0.5))
    assert torch.equal(part.field_weights(1), torch.ones(len(part)))  # unweighted features weigh 1
    path.write_text("label,price,tags,site\n1,2,a:x|b:1,s\n")
    with pytest.raises(ValueError, match=r"w.csv:2: 'a:x' in column 'tags' is not id:weight"):
        load_data(cfg)
    with pytest.raises(ValueError, match="data.weighted_columns: 'site' is not in data.multi_hot_columns"):
        load_data(_tabular(str(path), weighted_columns=["site"]))
    path.write_text("label,price,tags,site\n1,2,a:1|b:1,s\n")
    with pytest.raises(ValueError, match="data.pooling.tags: a weighted feature"):
        load_data(_tabular(str(path), weighted_columns=["tags"], pooling={"tags": "mean"}))


def test_libfm_values_are_weights_of_weighted_fields(tmp_path):
    path = tmp_path / "w.libfm"
    path.write_text("\n".join(["1 3:1 12:0.25 15:4", "0 4:1"] * 10) + "\n")
    cfg = DataConfig(
        type="libfm",
        path=str(path),
        field_offsets=[0, 10],
        field_names=["user", "tags"],
        multi_hot_columns=["tags"],
        weighted_columns=["tags"],
        min_count=1,
    )
    splits = load_data(cfg)
    weights = torch.cat([p.field_weights(1) for p in (splits.train, splits.val, splits.test)])
    assert sorted(weights.tolist()) == sorted([0.25, 4.0] * 10)


def test_a_weighted_schema_builds_a_weighted_ebc(tmp_path):
    from tests.helpers import tiny_config
    from torchrec_aes.tasks.ctr import CTRTask

    path = tmp_path / "w.csv"
    path.write_text(
        "label,price,tags,site\n" + "\n".join(f"{i % 2},{i},a:0.5|b:{i},s" for i in range(50)) + "\n"
    )
    for weighted in ([], ["tags"]):
        splits = load_data(_tabular(str(path), weighted_columns=weighted))
        _, ebc = CTRTask(tiny_config(), splits).build(Architecture.uniform(splits.schema, 8))
        assert ebc.is_weighted() == bool(weighted)


def test_multi_hot_day_files_with_float_ids_or_missing_features_are_refused(tmp_path):
    _multi_hot_days(tmp_path)
    np.savez(tmp_path / "day_1_sparse_multi_hot.npz", **{"0": np.zeros((30, 1)), "1": np.zeros((30, 3))})
    with pytest.raises(ValueError, match=r"day_1_sparse_multi_hot.npz: member '0.npy' holds float64 values"):
        load_data(DataConfig(type="criteo_binary", path=str(tmp_path)))
    np.savez(
        tmp_path / "day_1_sparse_multi_hot.npz",
        **{"0": np.zeros((30, 1), np.int32), "2": np.zeros((30, 3), np.int32)},
    )
    with pytest.raises(ValueError, match=r"no member '1.npy'"):
        load_data(DataConfig(type="criteo_binary", path=str(tmp_path)))


def _bag_multiset(splits) -> list:
    """Every row's (label, bags as sorted tuples per feature), sorted: the rows regardless of split."""
    out = []
    for part in (splits.train, splits.val, splits.test):
        for batch in part.batches(splits.schema.sparse_names, 64):
            jagged = batch.sparse_features.to_dict()
            per_key = [
                torch.split(jagged[k].values(), jagged[k].lengths().tolist())
                for k in splits.schema.sparse_names
            ]
            for i, label in enumerate(batch.labels.tolist()):
                out.append((label, *(tuple(sorted(bags[i].tolist())) for bags in per_key)))
    return sorted(out)


@pytest.mark.parametrize("hash_size", [0, 1000])
def test_streamed_multi_hot_text_gives_the_in_memory_bags(tmp_path, hash_size):
    tags = ["x|y", "", "y|z|z", "x", "w|x|y|z|v|u"] * 40
    path = _csv(tmp_path, [f"{i % 2},{i},{t},s{i % 3}" for i, t in enumerate(tags)])
    cfg = _tabular(path, max_ids_per_row=4, hash_size=hash_size, cache_dir=str(tmp_path / "cache"))
    memory = load_data(cfg)
    streamed = load_data(DataConfig(**{**cfg.__dict__, "streaming": "always", "stream_chunk_rows": 16}))
    assert not isinstance(streamed.train, CTRData)  # read from the converted day files
    assert sum(len(p) for p in (streamed.train, streamed.val, streamed.test)) == len(tags)
    if hash_size:  # hashed ids do not depend on the split: the same rows, bag for bag
        assert _bag_multiset(streamed) == _bag_multiset(memory)
    else:  # each path's vocabulary comes from its own training rows
        lengths = sorted(b for row in _bag_multiset(streamed) for b in [len(row[1])])
        assert lengths == sorted(min(len([t for t in c.split("|") if t]), 4) for c in tags)
        assert streamed.schema.feature("tags").num_embeddings <= 8


def test_streamed_shared_table_features_share_one_vocabulary(tmp_path):
    rows = [
        f"{i % 2},{i},i{i % 5},{'|'.join(f'i{(i + k) % 7}' for k in range(i % 4))},u{i % 3}"
        for i in range(200)
    ]
    path = tmp_path / "h.csv"
    path.write_text("label,price,item,history,user\n" + "\n".join(rows) + "\n")
    cfg = DataConfig(
        type="tabular",
        path=str(path),
        label_column="label",
        dense_columns=["price"],
        sparse_columns=["item", "history", "user"],
        multi_hot_columns=["history"],
        shared_tables={"items": ["item", "history"]},
        min_count=1,
        streaming="always",
        cache_dir=str(tmp_path / "cache"),
    )
    splits = load_data(cfg)
    assert (
        splits.schema.feature("item").num_embeddings == splits.schema.feature("history").num_embeddings == 8
    )
    head = splits.train.head(50)
    assert int(head.field_ids(0).max()) < 8 and int(head.field_ids(1).max()) < 8


def test_headerless_bag_columns_by_index_and_quoted_cells(tmp_path):
    """Without a header, bag columns are named by their indices like `sparse_columns`; a quoted cell is
    unquoted by the CSV reader first, so a delimiter inside quotes stays in the id and the separator
    still splits the bag."""
    path = tmp_path / "q.csv"
    path.write_text("\n".join(['1,2,"x,1|y",s', "0,3,z,s"] * 10) + "\n")
    headerless = {"header": False, "label_column": "0", "dense_columns": ["1"], "sparse_columns": ["2", "3"]}
    splits = load_data(_tabular(str(path), multi_hot_columns=["2"], **headerless))
    assert splits.schema.sparse_names == ["c2", "c3"]
    assert splits.schema.feature("c2").num_embeddings == 4  # OOV + "x,1", "y", "z"
    lengths = torch.cat([p.field_lengths(0) for p in (splits.train, splits.val, splits.test)])
    assert sorted(lengths.tolist()) == sorted([2, 1] * 10)


def test_streamed_bags_name_an_unknown_column_and_count_truncations_once(tmp_path, caplog):
    import logging  # only this test

    path = _csv(tmp_path, [f"{i % 2},{i},a|b|c|d,s" for i in range(40)])
    streamed = {"streaming": "always", "cache_dir": str(tmp_path / "cache")}
    with pytest.raises(ValueError, match="data.multi_hot_columns: 'genre' is not a categorical column"):
        load_data(_tabular(path, multi_hot_columns=["genre"], **streamed))
    with caplog.at_level(logging.WARNING):
        load_data(_tabular(path, max_ids_per_row=3, **streamed))
    assert "truncated 40 bags (40 ids dropped)" in caplog.text
