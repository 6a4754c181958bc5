"""Sequence tables (a user's `EmbeddingCollection`s) in the architecture, the budget and the supernet: one
dim per collection, TorchRec's storage estimate, zero padding of per-id embeddings."""

from __future__ import annotations

import pytest
import torch
from torchrec.distributed.embedding import EmbeddingCollectionSharder
from torchrec.distributed.planner import ParameterConstraints
from torchrec.distributed.planner.enumerators import EmbeddingEnumerator
from torchrec.distributed.planner.shard_estimators import EmbeddingStorageEstimator
from torchrec.modules.embedding_configs import EmbeddingBagConfig, EmbeddingConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_aes.architecture import Architecture
from torchrec_aes.data.schema import Schema, SparseFeature
from torchrec_aes.planning.memory import _canonical_topology, attach_table_optimizer, table_storage
from torchrec_aes.supernet.elastic import ElasticEmbeddingBagCollection


def schema() -> Schema:
    return Schema(
        sparse=[
            SparseFeature("user", 100),
            SparseFeature("hist_item", 3000, collection="history"),
            SparseFeature("hist_tag", 40, collection="history"),
        ]
    )


def test_a_collection_is_tied_to_the_rows_weighted_mean_of_its_dims_rounded_down() -> None:
    arch = Architecture.uniform(schema(), 8).with_dims([64, 32, 64])
    tied = arch.tied()
    mean = (3000 * 32 + 40 * 64) / 3040  # 32.42 -> 32
    assert tied.dims == [64, int(mean // 4) * 4, int(mean // 4) * 4] == [64, 32, 32]
    assert sum(t.num_embeddings * t.embedding_dim for t in tied.tables) <= sum(
        t.num_embeddings * t.embedding_dim for t in arch.tables
    )
    assert arch.with_dims([4, 0, 16]).tied().dims == [4, 0, 16]  # a dropped table stays dropped
    with pytest.raises(
        ValueError, match="EmbeddingCollection 'history' have dims t_hist_item 32, t_hist_tag 64"
    ):
        arch.check_collections()
    tied.check_collections()


def test_collections_round_trip_through_the_architecture_file_and_are_checked_on_load(tmp_path) -> None:
    arch = Architecture.uniform(schema(), 16)
    path = str(tmp_path / "architecture.yaml")
    arch.save(path)
    assert Architecture.load(path) == arch
    assert "collection: history" in open(path).read()
    assert set(Architecture.load(path).to_ec_configs()) == {"history"}
    assert [c.name for c in arch.to_ebc_configs()] == ["t_user"]
    text = (
        open(path)
        .read()
        .replace(
            "embedding_dim: 16\n  data_type: fp32\n  collection",
            "embedding_dim: 8\n  data_type: fp32\n  collection",
            1,
        )
    )
    open(path, "w").write(text)
    with pytest.raises(ValueError, match="EmbeddingCollection 'history' have dims"):
        Architecture.load(path)
    plain = Schema(sparse=[SparseFeature(f.name, f.num_embeddings) for f in schema().sparse])
    with pytest.raises(ValueError, match="is in collection 'history' but feature 'hist_item' is in a pooled"):
        arch.check_schema(plain)
    assert plain.hash() == Schema.from_dict(plain.to_dict()).hash()
    assert "collection" not in str(plain.to_dict())  # pooled-only schemas keep their hashes


def test_torchrecs_storage_estimate_of_a_sequence_table_is_the_budgets() -> None:
    """The budget counts every table with `table_storage` (TorchRec's estimate through the EBC sharder);
    TorchRec's EC sharder estimates a sequence table of the same rows and dim at the same bytes."""
    topology = _canonical_topology()
    for rows, dim in [(1000, 16), (37, 4), (5000, 64)]:
        config = EmbeddingConfig(name="t", embedding_dim=dim, num_embeddings=rows, feature_names=["f"])
        ec = EmbeddingCollection(tables=[config], device=torch.device("meta"))
        attach_table_optimizer(ec, "rowwise_adagrad")
        constraints = {"t": ParameterConstraints(sharding_types=["table_wise"], compute_kernels=["fused"])}
        enumerator = EmbeddingEnumerator(
            topology=topology,
            batch_size=0,
            constraints=constraints,
            estimator=[EmbeddingStorageEstimator(topology=topology, constraints=constraints)],
        )
        (option,) = enumerator.enumerate(ec, [EmbeddingCollectionSharder()])
        (shard,) = option.shards
        assert shard.storage is not None
        assert int(shard.storage.ddr) == table_storage(rows, dim, "rowwise_adagrad") > 0


def test_an_elastic_ebc_serves_a_collection_at_one_sampled_dim_zero_padded() -> None:
    meta = torch.device("cpu")
    ebc = EmbeddingBagCollection(
        tables=[
            EmbeddingBagConfig(name="t_user", embedding_dim=16, num_embeddings=10, feature_names=["user"])
        ],
        device=meta,
    )
    ec = EmbeddingCollection(
        tables=[
            EmbeddingConfig(name="t_a", embedding_dim=16, num_embeddings=10, feature_names=["a"]),
            EmbeddingConfig(name="t_b", embedding_dim=16, num_embeddings=5, feature_names=["b"]),
        ],
        device=meta,
    )
    elastic = ElasticEmbeddingBagCollection(ebc, [4, 8, 16], sequences={"keys": ec})  # any name
    assert elastic.table_names == ["t_user", "keys"]
    view = elastic.sequence_view("keys")
    assert view.embedding_dim() == 16 and [c.name for c in view.embedding_configs()] == ["t_a", "t_b"]
    assert not any(p is q for p in view.parameters() for q in ec.parameters())  # not registered twice
    kjt = KeyedJaggedTensor(
        keys=["user", "a", "b"],
        values=torch.tensor([1, 2, 3, 4, 0, 1]),
        lengths=torch.tensor([1, 1, 2, 0, 1, 1]),
    )
    full = ec(kjt)
    elastic.set_dims([16, 8])
    out = view(kjt)
    for key in ("a", "b"):
        assert torch.equal(out[key].lengths(), full[key].lengths())
        assert torch.equal(out[key].values()[:, :8], full[key].values()[:, :8])
        assert not out[key].values()[:, 8:].any()
    elastic.set_dims([16, 0])
    assert not view(kjt)["a"].values().any()
    with pytest.raises(ValueError, match="not 0 or a candidate"):
        elastic.set_dims({"keys": 12})
