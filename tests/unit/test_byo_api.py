"""Bring your own model and data: `torchrec_aes.search_embedding_dims` on models this package did not write
(a two-tower model of TorchRec `MLP`s over the user's EBC; TorchRec's own `DLRM` over a per-table projection
of it), on batches from TorchRec's `RandomRecDataset`."""

from __future__ import annotations

import dataclasses
import time

import pytest
import torch
from torch import nn
from torchrec.datasets.random import RandomRecDataset
from torchrec.datasets.utils import Batch
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.models.dlrm import DLRM
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.modules.mlp import MLP
from torchrec.optim import RowWiseAdagrad
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

import torchrec_aes
from tests.conftest import REPO
from torchrec_aes.data.schema import Schema, SparseFeature
from torchrec_aes.planning.memory import Budget, arch_bytes

USER_FEATURES = {"user_id": 400, "user_city": 30}
ITEM_FEATURES = {"item_id": 300, "item_tag": 20}
IDS_PER_FEATURE = {"user_id": 1, "user_city": 1, "item_id": 1, "item_tag": 3}  # item_tag: multi-id bags
NUM_DENSE = 3
BATCH_SIZE = 64
BUDGET = "0.5 x uniform-16"
TINY = [
    "search.candidates=[4,8,16]",
    "train.epochs=1",
    "train.max_steps=12",
    f"train.batch_size={BATCH_SIZE}",
    "train.eval_batch_size=256",
    "search.adass.supernet_epochs=1",
    "search.adass.importance_every=6",
    "search.adass.importance_rows=128",
    "search.adass.rl_updates=8",
    "search.adass.rl_samples=4",
    "search.adass.rl_eval_rows=256",
]


class TwoTower(nn.Module):
    """A user's two-tower CTR model over one EBC: user tower (dense + user features) . item tower.

    Sizes its towers from the EBC's per-table dims, so it works with any searched dims.
    """

    def __init__(self, ebc: nn.Module, num_dense: int = NUM_DENSE, hidden: int = 8) -> None:
        super().__init__()
        self.ebc = ebc
        dims = {f: c.embedding_dim for c in ebc.embedding_bag_configs() for f in c.feature_names}
        self.user = [f for f in USER_FEATURES if f in dims]
        self.item = [f for f in ITEM_FEATURES if f in dims]
        self.user_tower = MLP(num_dense + sum(dims[f] for f in self.user), [hidden, hidden])
        self.item_tower = MLP(sum(dims[f] for f in self.item), [hidden, hidden])

    def forward(self, dense: torch.Tensor, kjt: KeyedJaggedTensor) -> torch.Tensor:
        pooled = self.ebc(kjt).to_dict()
        u = self.user_tower(torch.cat([dense] + [pooled[f] for f in self.user], dim=1))
        i = self.item_tower(torch.cat([pooled[f] for f in self.item], dim=1))
        return (u * i).sum(dim=1)  # [B]


class Projected(nn.Module):
    """A user's adapter that lets TorchRec's equal-dim `DLRM` take mixed dims: each feature's pooled
    embedding projected to `dim` (an EBC look-alike: `embedding_bag_configs()` + KJT -> KeyedTensor)."""

    def __init__(self, ebc: nn.Module, dim: int) -> None:
        super().__init__()
        self.ebc, self.dim = ebc, dim
        self.configs = [dataclasses.replace(c, embedding_dim=dim) for c in ebc.embedding_bag_configs()]
        self.features = [f for c in self.configs for f in c.feature_names]
        dims = {f: c.embedding_dim for c in ebc.embedding_bag_configs() for f in c.feature_names}
        self.proj = nn.ModuleDict({f: nn.Linear(dims[f], dim) for f in self.features})

    def embedding_bag_configs(self) -> list[EmbeddingBagConfig]:
        return self.configs

    def forward(self, kjt: KeyedJaggedTensor) -> KeyedTensor:
        pooled = self.ebc(kjt).to_dict()
        values = torch.cat([self.proj[f](pooled[f]) for f in self.features], dim=1)
        return KeyedTensor(
            keys=self.features, length_per_key=[self.dim] * len(self.features), values=values, key_dim=1
        )


def dlrm(ebc: nn.Module) -> nn.Module:
    """TorchRec's DLRM (logits [B, 1]) over the user's tables projected to 8 columns."""
    return DLRM(Projected(ebc, 8), NUM_DENSE, dense_arch_layer_sizes=[8, 8], over_arch_layer_sizes=[8, 1])


def user_tables() -> list[EmbeddingBagConfig]:
    """The user's tables: their own names, mean pooling for the multi-id bag."""
    rows = {**USER_FEATURES, **ITEM_FEATURES}
    return [
        EmbeddingBagConfig(
            name=f"{f}_emb",
            feature_names=[f],
            num_embeddings=n,
            embedding_dim=16,
            pooling=PoolingType.MEAN if IDS_PER_FEATURE[f] > 1 else PoolingType.SUM,
        )
        for f, n in rows.items()
    ]


def random_batches(num_batches: int, seed: int) -> RandomRecDataset:
    """TorchRec's random data: ids within each table's rows, random 0/1 labels."""
    rows = {**USER_FEATURES, **ITEM_FEATURES}
    return RandomRecDataset(
        keys=list(rows),
        batch_size=BATCH_SIZE,
        hash_sizes=list(rows.values()),
        ids_per_features=[IDS_PER_FEATURE[f] for f in rows],
        num_dense=NUM_DENSE,
        manual_seed=seed,
        num_batches=num_batches,
        num_generated_batches=num_batches,
    )


@pytest.fixture(scope="module")
def searched() -> tuple[torchrec_aes.EmbeddingSearch, float]:
    t0 = time.perf_counter()
    result = torchrec_aes.search_embedding_dims(
        user_tables(), TwoTower, random_batches(12, 0), random_batches(4, 1), BUDGET, config=TINY
    )
    return result, time.perf_counter() - t0


def test_search_meets_the_budget_by_torchrecs_estimate_under_the_users_table_names(searched) -> None:
    result, seconds = searched
    tables = user_tables()
    schema = Schema(sparse=[SparseFeature(t.feature_names[0], t.num_embeddings) for t in tables])
    budget = Budget.parse(BUDGET, schema)
    arch = result.architecture
    assert [t.name for t in arch.tables] == [t.name for t in tables]
    assert [t.feature_names for t in arch.tables] == [t.feature_names for t in tables]
    assert all(d in (4, 8, 16) for d in arch.dims)
    assert arch_bytes(arch, "rowwise_adagrad") <= budget.bytes == result.metrics["budget_bytes"]
    assert result.metrics["method"] == "adass" and result.metrics["search_log"]["rl"]["updates"] > 0
    # The configs are the user's own, resized: names, features, rows and pooling kept.
    assert [(c.name, c.feature_names, c.num_embeddings, c.pooling) for c in result.configs] == [
        (c.name, c.feature_names, c.num_embeddings, c.pooling) for c in tables
    ]
    assert [c.embedding_dim for c in result.configs] == arch.dims
    assert result.run_dir == "" and seconds < 120


def test_the_plan_shards_the_users_model_built_from_the_searched_configs(searched) -> None:
    result, _ = searched
    assert result.module_path == "ebc"
    assert set(result.plan.plan) == {"ebc"}
    assert set(result.plan.plan["ebc"]) == {c.name for c in result.configs}  # type: ignore[arg-type]
    ebc = EmbeddingBagCollection(tables=result.configs, device=torch.device("meta"))
    apply_optimizer_in_backward(RowWiseAdagrad, ebc.parameters(), {"lr": 0.05})
    model = DistributedModelParallel(TwoTower(ebc), device=torch.device("cpu"), plan=result.plan)
    batch: Batch = next(iter(random_batches(1, 2)))
    logits = model(batch.dense_features, batch.sparse_features)
    assert logits.shape == (BATCH_SIZE,)
    logits.sum().backward()  # the fused table optimizer steps in backward


def test_torchrecs_dlrm_over_a_projection_is_searched_and_sharded_at_its_own_module_path() -> None:
    result = torchrec_aes.search_embedding_dims(
        user_tables(), dlrm, random_batches(8, 3), random_batches(4, 4), "2 x uniform-4", config=TINY
    )
    path = "sparse_arch.embedding_bag_collection.ebc"
    assert result.module_path == path and set(result.plan.plan) == {path}
    assert result.metrics["budget_used"] <= result.metrics["budget_bytes"]
    ebc = EmbeddingBagCollection(tables=result.configs, device=torch.device("meta"))
    apply_optimizer_in_backward(RowWiseAdagrad, ebc.parameters(), {"lr": 0.05})
    model = DistributedModelParallel(dlrm(ebc), device=torch.device("cpu"), plan=result.plan)
    batch: Batch = next(iter(random_batches(1, 5)))
    assert model(batch.dense_features, batch.sparse_features).shape == (BATCH_SIZE, 1)


def _search(tables, train, val, budget: str = BUDGET):
    return torchrec_aes.search_embedding_dims(tables, TwoTower, train, val, budget, config=TINY)


def _with(batch: Batch, **changes) -> Batch:
    return Batch(
        dense_features=changes.get("dense_features", batch.dense_features),
        sparse_features=changes.get("sparse_features", batch.sparse_features),
        labels=changes.get("labels", batch.labels),
    )


def _raises_one_line(match: str, *args, **kwargs) -> None:
    with pytest.raises(ValueError, match=match) as e:
        _search(*args, **kwargs)
    assert "\n" not in str(e.value)


def test_bad_input_is_a_one_line_value_error_naming_what_is_wrong() -> None:
    good = list(random_batches(2, 0))
    _raises_one_line("tables: empty", [], good, good)
    twice = [
        EmbeddingBagConfig(name="t", feature_names=["a", "b"], num_embeddings=10, embedding_dim=8),
        EmbeddingBagConfig(name="u", feature_names=["b"], num_embeddings=10, embedding_dim=8),
    ]
    _raises_one_line("tables: feature 'b' is in tables 't' and 'u'", twice, good, good)
    renamed = KeyedJaggedTensor.from_lengths_sync(
        keys=["user_id", "user_city", "item_id", "item_category"],
        values=good[0].sparse_features.values(),
        lengths=good[0].sparse_features.lengths(),
    )
    wrong_keys = [_with(good[0], sparse_features=renamed)]
    _raises_one_line(r"val batch 0: KJT keys .*missing: \['item_tag'\]", user_tables(), good, wrong_keys)
    column = [_with(good[0], labels=good[0].labels[:, None])]
    _raises_one_line(
        r"train batch 0: labels of shape \[64, 1\]; expected \[B\] = \[64\]", user_tables(), column, good
    )
    _raises_one_line("train: a generator can be read only once", user_tables(), (b for b in good), good)
    small = [dataclasses.replace(t, num_embeddings=5) for t in user_tables()]
    _raises_one_line("feature 'user_id' has ids in .* its table has 5 rows", small, good, good)
    # Checked on every batch as it is read, not only the first: a bad value later in a split.
    later = list(random_batches(4, 0))
    later[3] = _with(later[3], labels=later[3].labels.float().index_fill_(0, torch.tensor([5]), 2.0))
    _raises_one_line(
        r"train batch 3: label 2.0; expected binary labels in \[0, 1\]", user_tables(), later, good
    )
    later[3] = _with(later[3], labels=torch.full_like(later[3].labels.float(), float("nan")))
    _raises_one_line(r"train batch 3: label nan", user_tables(), later, good)
    shifted = KeyedJaggedTensor.from_lengths_sync(
        keys=good[1].sparse_features.keys(),
        values=good[1].sparse_features.values() + 10_000,
        lengths=good[1].sparse_features.lengths(),
    )
    _raises_one_line(
        r"val batch 1: feature 'user_id' has ids in .* 400 rows",
        user_tables(),
        good,
        [good[0], _with(good[1], sparse_features=shifted)],
    )


def test_a_budget_below_the_smallest_architecture_names_the_minimum() -> None:
    good = list(random_batches(2, 0))
    smallest = r"below the smallest possible architecture \(every table at dim 4 in fp32\), which needs"
    _raises_one_line(smallest, user_tables(), good, good, budget="1KB")


def test_the_readme_example_runs_as_written(tmp_path) -> None:
    """The README's "Bring your own model and data" code, with this file's tiny search settings added and
    its run directory under tmp_path."""

    readme = (REPO / "README.md").read_text()
    section = readme.split("## Bring your own model and data")[1]
    code = section.split("```python\n")[1].split("```")[0]
    settings = '"train.epochs=2"]'
    assert settings in code and 'run_dir="runs/byo"' in code
    code = code.replace(settings, f'"train.epochs=2", *{TINY!r}]')
    code = code.replace('run_dir="runs/byo"', f'run_dir="{tmp_path / "byo"}"')
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    result = scope["result"]
    assert [c.name for c in result.configs] == ["user_id_emb", "user_city_emb", "item_id_emb", "item_tag_emb"]
    assert result.metrics["budget_used"] <= result.metrics["budget_bytes"]
    assert (tmp_path / "byo" / "plan.json").exists()
    batch = next(iter(scope["batches"](1, 2)))
    assert scope["model"](batch.dense_features, batch.sparse_features).shape == (64,)


def test_a_table_shared_by_two_features_is_searched_as_one_table() -> None:
    """item_id and item_tag look up one `item_emb` table: one dim, its bytes once, planned once."""
    tables = [t for t in user_tables() if t.name not in ("item_id_emb", "item_tag_emb")]
    tables.append(
        EmbeddingBagConfig(
            name="item_emb", feature_names=["item_id", "item_tag"], num_embeddings=300, embedding_dim=16
        )
    )
    result = _search(tables, random_batches(8, 6), random_batches(4, 7), "0.5 x uniform-16")
    arch = result.architecture
    assert [(t.name, t.feature_names) for t in arch.tables][-1] == ("item_emb", ["item_id", "item_tag"])
    assert len(arch.tables) == 3 and [c.name for c in result.configs] == [c.name for c in tables]
    schema = Schema(
        sparse=[
            SparseFeature(n, t.num_embeddings, table=t.name if len(t.feature_names) > 1 else "")
            for t in tables
            for n in t.feature_names
        ]
    )
    assert arch_bytes(arch, "rowwise_adagrad") <= Budget.parse("0.5 x uniform-16", schema).bytes
    assert set(result.plan.plan["ebc"]) == {"user_id_emb", "user_city_emb", "item_emb"}  # type: ignore[arg-type]


def test_ihas_searches_the_users_model_and_returns_a_grouped_model_to_train_and_serve() -> None:
    """iHAS on the two-tower model: K = 2 groups of samples, each with the user's model as its head; the
    result gives the grouped model (router + one EBC + heads) around an EBC of the returned configs."""
    ihas = ["search.method=ihas", "search.ihas.search_epochs=1", "search.ihas.num_groups=[2]"]
    config = TINY + ihas + ["search.ihas.cluster_rows=512", "search.final_baselines=false"]
    result = torchrec_aes.search_embedding_dims(
        user_tables(), TwoTower, random_batches(12, 8), random_batches(4, 9), BUDGET, config=config
    )
    assert result.architecture.kind == "grouped" and result.model is not None
    assert result.module_path == "sparse_arch" and set(result.plan.plan) == {"sparse_arch"}
    assert result.metrics["budget_used"] <= result.metrics["budget_bytes"]
    ebc = EmbeddingBagCollection(tables=result.configs, device=torch.device("meta"))
    apply_optimizer_in_backward(RowWiseAdagrad, ebc.parameters(), {"lr": 0.05})
    model = DistributedModelParallel(result.model(ebc), device=torch.device("cpu"), plan=result.plan)
    batch: Batch = next(iter(random_batches(1, 10)))
    logits = model(batch.dense_features, batch.sparse_features)
    assert logits.shape == (BATCH_SIZE,)
    logits.sum().backward()
    heads = model.module.heads
    assert len(heads) == 2 and all(isinstance(h.model.model, TwoTower) for h in heads)


def test_nasrec_on_a_users_model_says_it_searches_a_whole_model() -> None:
    good = list(random_batches(2, 0))
    with pytest.raises(ValueError, match="NASRec searches a whole model") as e:
        torchrec_aes.search_embedding_dims(
            user_tables(), TwoTower, good, good, BUDGET, config=["search.method=nasrec"]
        )
    assert "\n" not in str(e.value)


class TwoEBCTowers(nn.Module):
    """A two-tower model whose towers keep their own EBC (`ebcs["user"]`, `ebcs["item"]`)."""

    def __init__(self, ebcs: dict[str, nn.Module], hidden: int = 8) -> None:
        super().__init__()
        self.user_ebc, self.item_ebc = ebcs["user"], ebcs["item"]
        dims = {
            f: c.embedding_dim
            for ebc in (self.user_ebc, self.item_ebc)
            for c in ebc.embedding_bag_configs()
            for f in c.feature_names
        }
        self.user = [f for f in USER_FEATURES if f in dims]
        self.item = [f for f in ITEM_FEATURES if f in dims]
        self.user_tower = MLP(NUM_DENSE + sum(dims[f] for f in self.user), [hidden, hidden])
        self.item_tower = MLP(sum(dims[f] for f in self.item), [hidden, hidden])

    def forward(self, dense: torch.Tensor, kjt: KeyedJaggedTensor) -> torch.Tensor:
        users, items = self.user_ebc(kjt).to_dict(), self.item_ebc(kjt).to_dict()
        u = self.user_tower(torch.cat([dense] + [users[f] for f in self.user], dim=1))
        i = self.item_tower(torch.cat([items[f] for f in self.item], dim=1))
        return (u * i).sum(dim=1)


def test_a_model_of_two_ebcs_is_searched_as_one_and_planned_per_ebc() -> None:
    tables = user_tables()
    by_ebc = {"user": tables[:2], "item": tables[2:]}
    result = torchrec_aes.search_embedding_dims(
        by_ebc, TwoEBCTowers, random_batches(8, 11), random_batches(4, 12), BUDGET, config=TINY
    )
    assert set(result.configs) == {"user", "item"}
    assert [c.name for c in result.configs["item"]] == ["item_id_emb", "item_tag_emb"]
    assert result.module_path == {"user": "user_ebc", "item": "item_ebc"}
    assert {p: set(tables_plan) for p, tables_plan in result.plan.plan.items()} == {  # type: ignore[union-attr]
        "user_ebc": {"user_id_emb", "user_city_emb"},
        "item_ebc": {"item_id_emb", "item_tag_emb"},
    }
    assert result.metrics["budget_used"] <= result.metrics["budget_bytes"]
    ebcs = {
        n: EmbeddingBagCollection(tables=c, device=torch.device("meta")) for n, c in result.configs.items()
    }
    for ebc in ebcs.values():
        apply_optimizer_in_backward(RowWiseAdagrad, ebc.parameters(), {"lr": 0.05})
    model = DistributedModelParallel(TwoEBCTowers(ebcs), device=torch.device("cpu"), plan=result.plan)
    batch: Batch = next(iter(random_batches(1, 13)))
    logits = model(batch.dense_features, batch.sparse_features)
    assert logits.shape == (BATCH_SIZE,)
    logits.sum().backward()
