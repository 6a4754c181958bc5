"""A user's model with an `EmbeddingCollection` searched by AdaS&S on two gloo ranks: the collection's
tables are sharded by TorchRec's EC sharder inside the supernet, its per-id embeddings of the scoring slice
are gathered from both ranks, and both ranks return the same architecture and plan."""

from __future__ import annotations

import pytest

import torchrec_aes
from tests.distributed.launcher import run_ranks
from tests.unit.test_byo_sequences import BUDGET, TINY, SequenceModel, batches, tables

pytestmark = pytest.mark.distributed


def _search_on_rank(rank: int, world_size: int) -> tuple[list, dict, list]:
    result = torchrec_aes.search_embedding_dims(
        tables(), SequenceModel, batches(6, 10 + rank), batches(3, 20 + rank), BUDGET, config=TINY
    )
    dims = [(t.name, t.embedding_dim, t.data_type) for t in result.architecture.tables]
    plan = {p: sorted(t) for p, t in result.plan.plan.items()}  # type: ignore[union-attr]
    return dims, plan, result.metrics["test"]


def test_two_ranks_search_a_model_with_an_embedding_collection_alike() -> None:
    (dims0, plan0, test0), (dims1, plan1, test1) = run_ranks(_search_on_rank)
    assert dims0 == dims1 and plan0 == plan1 and test0 == test1
    history = [d for name, d, _ in dims0 if name.startswith("hist_")]
    assert len(set(history)) == 1
    assert plan0 == {"ebc": ["item_id_emb", "user_id_emb"], "history": ["hist_item_seq", "hist_tag_seq"]}
