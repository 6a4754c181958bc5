"""The Python API (torchrec_aes.api): a searched architecture and plan in a user's own TorchRec pipeline."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from torchrec.distributed.types import ShardingType
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

import torchrec_aes
from torchrec_aes.architecture import Architecture
from torchrec_aes.data.schema import Schema, SparseFeature
from torchrec_aes.tasks.ctr import CTRTask

FEATURES = {"user": 1000, "item": 500, "city": 50, "noise": 20}
SEARCHED_DIMS = [16, 12, 6, 0]  # 6: not a multiple of 4 (data-parallel only); 0: table dropped
TRAINER_EBC_PATH = CTRTask.ebc_path  # where `torchrec-aes search` plans the EBC of CTR models


def _user_tables(dim: int = 64) -> list[EmbeddingBagConfig]:
    """A user's own tables: their own names, mean pooling, one feature each."""
    return [
        EmbeddingBagConfig(
            name=f"{f}_table",
            feature_names=[f],
            num_embeddings=n,
            embedding_dim=dim,
            pooling=PoolingType.MEAN,
        )
        for f, n in FEATURES.items()
    ]


def _searched_arch() -> Architecture:
    """What a search on the user's data writes: tables named t_<feature>."""
    schema = Schema(sparse=[SparseFeature(f, n) for f, n in FEATURES.items()])
    return Architecture.from_dims(schema, SEARCHED_DIMS, method="power_rule")


def save_run_dir(path: Path) -> Path:
    """Writes `path` as `torchrec-aes search` leaves a run directory: architecture.yaml + plan.json
    (trainer's path). Also the distributed tier's (tests/distributed/test_api_distributed.py)."""
    arch = _searched_arch()
    arch.save(str(path / "architecture.yaml"))
    plan = torchrec_aes.plan_for(arch, world_size=1, device="cpu", module_path=TRAINER_EBC_PATH)
    torchrec_aes.save_plan(plan, str(path / "plan.json"))
    return path


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return save_run_dir(tmp_path)


# ---------------------------------------------------------------------------------------------------------
# load_architecture, resize_configs
# ---------------------------------------------------------------------------------------------------------


def test_load_architecture_accepts_the_run_directory_or_the_file(run_dir: Path) -> None:
    from_dir = torchrec_aes.load_architecture(str(run_dir))
    from_file = torchrec_aes.load_architecture(str(run_dir / "architecture.yaml"))
    assert from_dir == from_file and from_dir.dims == SEARCHED_DIMS


def test_load_architecture_of_a_directory_without_one_names_the_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="architecture.yaml"):
        torchrec_aes.load_architecture(str(tmp_path))


def test_resize_matches_by_feature_names_and_keeps_everything_but_the_dim() -> None:
    tables = _user_tables()
    resized = torchrec_aes.resize_configs(tables, _searched_arch())
    # The dim-0 table is dropped; the others keep their names, order, pooling and rows.
    assert [c.name for c in resized] == ["user_table", "item_table", "city_table"]
    assert [c.embedding_dim for c in resized] == [16, 12, 6]
    for old, new in zip(tables, resized, strict=False):
        assert dataclasses.replace(old, embedding_dim=new.embedding_dim) == new
    assert all(c.embedding_dim == 64 for c in tables), "the user's configs must not be modified"


def test_resize_matches_by_table_name_first() -> None:
    arch = _searched_arch()
    tables = [dataclasses.replace(c, name=t.name) for c, t in zip(_user_tables(), arch.tables, strict=True)]
    resized = torchrec_aes.resize_configs(tables[::-1], arch)  # any order
    assert [(c.name, c.embedding_dim) for c in resized] == [("t_city", 6), ("t_item", 12), ("t_user", 16)]


def test_resize_of_a_table_the_architecture_lacks_names_the_table() -> None:
    tables = [
        *_user_tables(),
        EmbeddingBagConfig(num_embeddings=7, embedding_dim=8, name="extra", feature_names=["x"]),
    ]
    with pytest.raises(ValueError, match=r"table 'extra' \(features x\) is not in the architecture.*t_user"):
        torchrec_aes.resize_configs(tables, _searched_arch())


def test_resize_with_different_rows_names_the_table_and_both_sizes() -> None:
    tables = _user_tables()
    tables[1] = dataclasses.replace(tables[1], num_embeddings=600)
    with pytest.raises(ValueError, match="table 'item_table' .* has 600 rows but .* 't_item' has 500"):
        torchrec_aes.resize_configs(tables, _searched_arch())


def test_resize_of_a_same_named_table_with_other_features_is_an_error() -> None:
    table = EmbeddingBagConfig(num_embeddings=1000, embedding_dim=8, name="t_user", feature_names=["item"])
    with pytest.raises(ValueError, match="'t_user' has features user"):
        torchrec_aes.resize_configs([table], _searched_arch())


def test_resize_of_two_configs_onto_one_searched_table_is_an_error() -> None:
    user = _user_tables()[0]
    with pytest.raises(ValueError, match="both match the architecture's table 't_user'"):
        torchrec_aes.resize_configs([user, dataclasses.replace(user, name="user_copy")], _searched_arch())


def test_resize_ignores_searched_tables_of_another_collection() -> None:
    """A model with two EBCs resizes each one's configs against the same architecture."""
    resized = torchrec_aes.resize_configs(_user_tables()[1:2], _searched_arch())
    assert [(c.name, c.embedding_dim) for c in resized] == [("item_table", 12)]


# ---------------------------------------------------------------------------------------------------------
# planner_constraints, plan_for, load_plan
# ---------------------------------------------------------------------------------------------------------


def test_planner_constraints_pin_dims_fbgemm_cannot_fuse_to_data_parallel_under_user_names() -> None:
    arch = _searched_arch()
    assert set(torchrec_aes.planner_constraints(arch)) == {"t_user", "t_item", "t_city"}
    constraints = torchrec_aes.planner_constraints(arch, configs=_user_tables())
    assert set(constraints) == {"user_table", "item_table", "city_table"}  # noise (dim 0) has no table
    assert constraints["city_table"].sharding_types == [ShardingType.DATA_PARALLEL.value]
    assert ShardingType.DATA_PARALLEL.value not in (constraints["user_table"].sharding_types or [])


def test_plan_for_places_every_kept_table_under_the_users_names_and_module_path() -> None:
    plan = torchrec_aes.plan_for(
        _searched_arch(),
        world_size=4,
        device="cuda",
        hbm_gb=16,
        module_path="sparse.ebc",
        configs=_user_tables(),
    )
    assert list(plan.plan) == ["sparse.ebc"]
    module_plan = plan.plan["sparse.ebc"]
    assert set(module_plan) == {"user_table", "item_table", "city_table"}  # noise (dim 0) is dropped
    assert module_plan["city_table"].sharding_type == ShardingType.DATA_PARALLEL.value


def test_load_plan_of_a_run_directory_moves_it_to_the_users_module_and_names(run_dir: Path) -> None:
    arch = torchrec_aes.load_architecture(str(run_dir))
    as_saved = torchrec_aes.load_plan(str(run_dir))
    assert list(as_saved.plan) == [TRAINER_EBC_PATH]
    moved = torchrec_aes.load_plan(
        str(run_dir / "plan.json"), module_path="", arch=arch, configs=_user_tables()
    )
    assert list(moved.plan) == [""]
    assert set(moved.plan[""]) == {"user_table", "item_table", "city_table"}
    assert moved.plan[""]["user_table"] == as_saved.plan[TRAINER_EBC_PATH]["t_user"]


def test_load_plan_for_another_architecture_says_which_table_does_not_fit(run_dir: Path) -> None:
    other = _searched_arch().with_dims([16, 8, 6, 0])
    with pytest.raises(
        ValueError, match="table 't_item' is planned as 500 x 12 but the architecture has 500 x 8"
    ):
        torchrec_aes.load_plan(str(run_dir), arch=other)
    with pytest.raises(ValueError, match="no sharding for table 't_noise'"):
        torchrec_aes.load_plan(str(run_dir), arch=_searched_arch().with_dims([16, 12, 6, 4]))


# ---------------------------------------------------------------------------------------------------------
# block_model: a NASRec architecture around the user's own tables
# ---------------------------------------------------------------------------------------------------------


def test_block_model_builds_the_searched_blocks_around_the_users_tables(tmp_path: Path) -> None:
    import random

    from torchrec_aes.models.blocks import BlockSpace, blocks_architecture
    from torchrec_aes.search.nasrec.space import random_graph

    schema = Schema(sparse=[SparseFeature(f, n) for f, n in FEATURES.items()], dense_names=["a", "b", "c"])
    space = BlockSpace(num_blocks=3, widths=(8, 16), tokens=(4, 8), token_dim=8, merger_tokens=2, heads=2)
    graph = random_graph(random.Random(0), space)
    blocks_architecture(schema, [16, 8, 4, 4], graph, space).save(str(tmp_path / "architecture.yaml"))
    arch = torchrec_aes.load_architecture(str(tmp_path))
    tables = torchrec_aes.resize_configs(_user_tables(), arch)
    model = torchrec_aes.block_model(arch, EmbeddingBagCollection(tables=tables), num_dense=3)
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=list(FEATURES),
        values=torch.cat([torch.randint(0, n, (5,)) for n in FEATURES.values()]),
        lengths=torch.ones(5 * len(FEATURES), dtype=torch.int32),
    )
    logits = model(torch.randn(5, 3), kjt)
    assert logits.shape == (5,) and torch.isfinite(logits).all()
    assert [b.width for b in model.graph.blocks] == [b.width for b in graph.blocks]
    with pytest.raises(ValueError, match="kind 'tables'; expected 'blocks'"):
        torchrec_aes.block_model(_searched_arch(), EmbeddingBagCollection(tables=tables), num_dense=3)
