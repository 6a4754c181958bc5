"""The Python API (torchrec_aes.api): a searched architecture and plan in a user's own TorchRec pipeline."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.types import ShardingType
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.optim import RowWiseAdagrad
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
from torchrec.optim.keyed import KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

import torchrec_aes
from tests.distributed.launcher import run_ranks
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


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A run directory as `torchrec-aes search` leaves it: architecture.yaml + plan.json (trainer's path)."""
    arch = _searched_arch()
    arch.save(str(tmp_path / "architecture.yaml"))
    plan = torchrec_aes.plan_for(arch, world_size=1, device="cpu", module_path=TRAINER_EBC_PATH)
    torchrec_aes.save_plan(plan, str(tmp_path / "plan.json"))
    return tmp_path


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


def test_package_import_stays_cheap_until_the_api_is_used() -> None:
    import subprocess
    import sys

    code = "import sys, torchrec_aes; print('torchrec' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# ---------------------------------------------------------------------------------------------------------
# The README flow: a plain TorchRec training loop with the searched sizes and the saved plan
# ---------------------------------------------------------------------------------------------------------


class _UserModel(nn.Module):
    """A user's model: EBC -> concatenated pooled embeddings -> linear logit (any TorchRec model will do)."""

    def __init__(self, ebc: EmbeddingBagCollection) -> None:
        super().__init__()
        self.ebc = ebc
        self.head = nn.Linear(sum(c.embedding_dim for c in ebc.embedding_bag_configs()), 1)

    def forward(self, features: KeyedJaggedTensor) -> torch.Tensor:
        return self.head(self.ebc(features).values()).squeeze(-1)


def _train_with_saved_plan(rank: int, world_size: int, run_dir: str) -> tuple[list[float], dict[str, str]]:
    # --- what the README shows -------------------------------------------------------------------------
    arch = torchrec_aes.load_architecture(run_dir)
    tables = torchrec_aes.resize_configs(_user_tables(), arch)
    model = _UserModel(EmbeddingBagCollection(tables=tables, device=torch.device("meta")))
    apply_optimizer_in_backward(RowWiseAdagrad, model.ebc.parameters(), {"lr": 0.1})
    plan = torchrec_aes.load_plan(run_dir, module_path="ebc", arch=arch, configs=_user_tables())
    model = DistributedModelParallel(model, device=torch.device("cpu"), plan=plan)
    dense_params = dict(in_backward_optimizer_filter(model.named_parameters()))
    dense_optimizer = KeyedOptimizerWrapper(dense_params, lambda params: torch.optim.Adam(params, lr=0.02))
    # ----------------------------------------------------------------------------------------------------
    g = torch.Generator().manual_seed(rank)
    batch = 256
    ids = {f: torch.randint(0, n, (batch,), generator=g) for f, n in FEATURES.items()}
    labels = ((ids["user"] % 2) ^ (ids["item"] % 3 == 0)).float()  # learnable only through the embeddings
    features = KeyedJaggedTensor.from_lengths_sync(
        keys=list(FEATURES),
        values=torch.cat(list(ids.values())),
        lengths=torch.ones(batch * len(FEATURES), dtype=torch.int32),
    )
    losses = []
    for _ in range(15):
        dense_optimizer.zero_grad()
        loss = F.binary_cross_entropy_with_logits(model(features), labels)
        loss.backward()  # the fused row-wise Adagrad updates the tables here
        dense_optimizer.step()
        losses.append(loss.item())
    sharding = {name: ps.sharding_type for name, ps in model.plan.plan["ebc"].items()}
    return losses, sharding


def test_saved_architecture_and_plan_train_a_plain_torchrec_model(run_dir: Path) -> None:
    ((losses, sharding),) = run_ranks(_train_with_saved_plan, str(run_dir), world_size=1)
    assert sharding["city_table"] == ShardingType.DATA_PARALLEL.value and "noise_table" not in sharding
    assert losses[-1] < 0.8 * losses[0], losses


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
