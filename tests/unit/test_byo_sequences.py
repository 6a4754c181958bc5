"""A user's model with `EmbeddingCollection` (sequence) tables beside its EBC: `search_embedding_dims` gives
each collection one searched dim (TorchRec's EC needs one dim for all its tables), counts its tables in the
budget, plans them with TorchRec's EC sharder at the model's own module path and returns `EmbeddingConfig`s
a TorchRec pipeline builds the EC from."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn
from torchrec.datasets.utils import Batch
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.modules.embedding_configs import EmbeddingBagConfig, EmbeddingConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection
from torchrec.modules.mlp import MLP
from torchrec.optim import RowWiseAdagrad
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

import torchrec_aes
from torchrec_aes.planning.memory import arch_bytes
from torchrec_aes.planning.plan import make_topology, plan_summary

POOLED = {"user_id": 300, "item_id": 200}
HISTORY = {"hist_item": 2000, "hist_tag": 12}  # one collection: tables of very different rows
MAX_LEN = 4
NUM_DENSE = 2
BATCH_SIZE = 32
BUDGET = "0.5 x uniform-16"
TINY = [
    "search.candidates=[4,8,16]",
    "train.epochs=1",
    "train.max_steps=8",
    f"train.batch_size={BATCH_SIZE}",
    "train.eval_batch_size=128",
    "search.adass.supernet_epochs=1",
    "search.adass.importance_every=4",
    "search.adass.importance_rows=64",
    "search.adass.rl_updates=6",
    "search.adass.rl_samples=4",
    "search.adass.rl_eval_rows=128",
]


def tables() -> dict[str, list]:
    return {
        "pooled": [
            EmbeddingBagConfig(name=f"{f}_emb", feature_names=[f], num_embeddings=n, embedding_dim=16)
            for f, n in POOLED.items()
        ],
        "history": [
            EmbeddingConfig(name=f"{f}_seq", feature_names=[f], num_embeddings=n, embedding_dim=16)
            for f, n in HISTORY.items()
        ],
    }


class SequenceModel(nn.Module):
    """Pooled user/item embeddings and the mean of each history sequence's per-id embeddings."""

    def __init__(self, modules: dict[str, nn.Module], hidden: int = 8) -> None:
        super().__init__()
        self.ebc, self.history = modules["pooled"], modules["history"]
        dims = {f: c.embedding_dim for c in self.ebc.embedding_bag_configs() for f in c.feature_names}
        self.pooled = [f for f in POOLED if f in dims]
        self.sequences = [f for c in self.history.embedding_configs() for f in c.feature_names]
        width = NUM_DENSE + sum(dims.values()) + self.history.embedding_dim() * len(self.sequences)
        self.mlp = MLP(width, [hidden, 1])

    def forward(self, dense: torch.Tensor, kjt: KeyedJaggedTensor) -> torch.Tensor:
        pooled = self.ebc(kjt).to_dict()
        seq = self.history(kjt)
        means = [seq[f].to_padded_dense(MAX_LEN).mean(dim=1) for f in self.sequences]
        x = torch.cat([dense] + [pooled[f] for f in self.pooled] + means, dim=1)
        return self.mlp(x).squeeze(1)


def batches(num: int, seed: int) -> list[Batch]:
    """Random batches whose label depends on the user and the history's tags; histories of 0-4 ids."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(num):
        ids = {f: torch.randint(0, n, (BATCH_SIZE,), generator=g) for f, n in POOLED.items()}
        lengths = {f: torch.randint(0, MAX_LEN + 1, (BATCH_SIZE,), generator=g) for f in HISTORY}
        seq = {f: torch.randint(0, n, (int(lengths[f].sum()),), generator=g) for f, n in HISTORY.items()}
        keys = [*POOLED, *HISTORY]
        values = torch.cat([ids[f] for f in POOLED] + [seq[f] for f in HISTORY])
        all_lengths = torch.cat(
            [torch.ones(BATCH_SIZE, dtype=torch.long)] * len(POOLED) + list(lengths.values())
        )
        kjt = KeyedJaggedTensor(keys=keys, values=values, lengths=all_lengths.int())
        labels = ((ids["user_id"] % 2) == 0).float()
        out.append(Batch(torch.randn(BATCH_SIZE, NUM_DENSE, generator=g), kjt, labels))
    return out


def _deploy(
    result: torchrec_aes.EmbeddingSearch, model_class: type[nn.Module] = SequenceModel
) -> torch.Tensor:
    """The user's model built from the result's configs (an EBC or an EC per module) and sharded with its
    plan: one step's logits, backpropagated."""
    meta = torch.device("meta")
    modules = {
        name: EmbeddingCollection(tables=c, device=meta)
        if isinstance(c[0], EmbeddingConfig)
        else EmbeddingBagCollection(tables=c, device=meta)
        for name, c in result.configs.items()  # type: ignore[union-attr]
    }
    for m in modules.values():
        apply_optimizer_in_backward(RowWiseAdagrad, m.parameters(), {"lr": 0.05})
    model = DistributedModelParallel(model_class(modules), device=torch.device("cpu"), plan=result.plan)
    batch = batches(1, 9)[0]
    logits = model(batch.dense_features, batch.sparse_features)
    logits.sum().backward()
    return logits


@pytest.mark.parametrize("method", ["adass", "power_rule"])
def test_each_collection_gets_one_dim_within_the_budget_and_deploys_with_its_plan(method) -> None:
    result = torchrec_aes.search_embedding_dims(
        tables(),
        SequenceModel,
        batches(8, 0),
        batches(4, 1),
        BUDGET,
        config=[*TINY, f"search.method={method}"],
    )
    history = result.configs["history"]
    assert all(isinstance(c, EmbeddingConfig) for c in history)
    assert [c.name for c in history] == ["hist_item_seq", "hist_tag_seq"]
    assert len({c.embedding_dim for c in history}) == 1, [c.embedding_dim for c in history]
    assert result.module_path == {"pooled": "ebc", "history": "history"}
    assert {p: set(t) for p, t in result.plan.plan.items()} == {  # type: ignore[union-attr]
        "ebc": {"user_id_emb", "item_id_emb"},
        "history": {"hist_item_seq", "hist_tag_seq"},
    }
    arch = result.architecture
    assert [t.collection for t in arch.tables] == ["", "", "history", "history"]
    assert arch_bytes(arch) <= result.metrics["budget_bytes"]
    assert _deploy(result).shape == (BATCH_SIZE,)


def test_methods_that_do_not_search_collections_say_so_in_one_line() -> None:
    with pytest.raises(ValueError, match="does not search the tables of an EmbeddingCollection") as e:
        torchrec_aes.search_embedding_dims(
            tables(),
            SequenceModel,
            batches(2, 0),
            batches(2, 1),
            BUDGET,
            config=[*TINY, "search.method=ihas"],
        )
    assert "\n" not in str(e.value) and "adass" in str(e.value)


def test_bad_module_lists_are_one_line_errors() -> None:
    good = batches(2, 0)
    mixed = {"pooled": tables()["pooled"] + tables()["history"][:1]}
    with pytest.raises(ValueError, match="mixes EmbeddingBagConfigs and EmbeddingConfigs"):
        torchrec_aes.search_embedding_dims(mixed, SequenceModel, good, good, BUDGET, config=TINY)
    with pytest.raises(ValueError, match="give a model's modules as a mapping"):
        torchrec_aes.search_embedding_dims(
            tables()["pooled"] + tables()["history"], SequenceModel, good, good, BUDGET, config=TINY
        )
    with pytest.raises(ValueError, match="at least one EmbeddingBagCollection"):
        torchrec_aes.search_embedding_dims(
            {"history": tables()["history"]}, SequenceModel, good, good, BUDGET, config=TINY
        )


def test_the_run_directory_and_plan_for_place_each_collection_at_its_module_path(tmp_path) -> None:
    run_dir = str(tmp_path / "run")
    config = [*TINY, "search.method=uniform"]
    result = torchrec_aes.search_embedding_dims(
        tables(), SequenceModel, batches(4, 0), batches(2, 1), BUDGET, config=config, run_dir=run_dir
    )
    # The run directory's plan is for the trainer's wrapper of your model (as for several EBCs).
    saved = torchrec_aes.load_plan(run_dir)
    assert {p: set(t) for p, t in saved.plan.items()} == {  # type: ignore[union-attr]
        "model.model.ebc": {"t_user_id", "t_item_id"},
        "model.model.history": {"t_hist_item", "t_hist_tag"},
    }
    arch = torchrec_aes.load_architecture(run_dir)
    assert [t.collection for t in arch.tables] == ["", "", "history", "history"]
    # Another topology, under your paths.
    plan = torchrec_aes.plan_for(
        result.architecture,
        world_size=2,
        device="cpu",
        module_path="ebc",
        collection_paths={"history": "history"},
    )
    assert {p: set(t) for p, t in plan.plan.items()} == {  # type: ignore[union-attr]
        "ebc": {"user_id_emb", "item_id_emb"},
        "history": {"hist_item_seq", "hist_tag_seq"},
    }
    rows = plan_summary(plan, result.architecture, make_topology(2, "cpu"))
    assert {t for r in rows for t in r.tables} == {t.name for t in result.architecture.tables}
    assert sum(r.ddr_bytes for r in rows) >= arch_bytes(result.architecture)


def test_torchrecs_pipeline_overlaps_the_collections_lookups_in_the_supernet_and_the_retraining(
    caplog,
) -> None:
    """With one EBC the user's model is built around the search's modules directly, so TorchRec's
    `TrainPipelineSparseDist` finds every lookup: the EC in the supernet (inside the elastic EBC, reached
    through the `SequenceView`) and the user's EC in the retrained finalists."""
    caplog.set_level(logging.INFO, logger="torchrec.distributed.train_pipeline.utils")
    torchrec_aes.search_embedding_dims(
        tables(), SequenceModel, batches(6, 0), batches(2, 1), BUDGET, config=TINY
    )
    pipelined = {r.getMessage() for r in caplog.records if "will be pipelined" in r.getMessage()}
    assert "Module 'model.model.ebc.ecs.c_history' will be pipelined" in pipelined  # supernet
    assert "Module 'model.model.history' will be pipelined" in pipelined  # finalists
    assert not any("will NOT be pipelined" in r.getMessage() for r in caplog.records)


class TwoEBCsAndHistory(nn.Module):
    """User and item EBCs and the history EC (the replay path of several EBCs, with an EC beside them)."""

    def __init__(self, modules: dict[str, nn.Module]) -> None:
        super().__init__()
        self.user_ebc, self.item_ebc, self.history = modules["users"], modules["items"], modules["history"]
        width = NUM_DENSE + sum(
            c.embedding_dim for m in (self.user_ebc, self.item_ebc) for c in m.embedding_bag_configs()
        )
        self.mlp = MLP(width + self.history.embedding_dim() * len(HISTORY), [8, 1])

    def forward(self, dense: torch.Tensor, kjt: KeyedJaggedTensor) -> torch.Tensor:
        users, items, seq = self.user_ebc(kjt).to_dict(), self.item_ebc(kjt).to_dict(), self.history(kjt)
        means = [seq[f].to_padded_dense(MAX_LEN).mean(dim=1) for f in HISTORY]
        x = torch.cat([dense, users["user_id"], items["item_id"], *means], dim=1)
        return self.mlp(x).squeeze(1)


def test_several_ebcs_and_a_collection_are_searched_and_planned_per_module() -> None:
    pooled = tables()["pooled"]
    by_module = {"users": pooled[:1], "items": pooled[1:], "history": tables()["history"]}
    result = torchrec_aes.search_embedding_dims(
        by_module, TwoEBCsAndHistory, batches(6, 3), batches(2, 4), BUDGET, config=TINY
    )
    assert result.module_path == {"users": "user_ebc", "items": "item_ebc", "history": "history"}
    assert {p: set(t) for p, t in result.plan.plan.items()} == {  # type: ignore[union-attr]
        "user_ebc": {"user_id_emb"},
        "item_ebc": {"item_id_emb"},
        "history": {"hist_item_seq", "hist_tag_seq"},
    }
    assert len({c.embedding_dim for c in result.configs["history"]}) == 1
    assert _deploy(result, TwoEBCsAndHistory).shape == (BATCH_SIZE,)
