"""Row-wise sizes: prefix masks on TorchRec lookups, and their deployment as size-bucket tables."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from torchrec_aes.architecture import Architecture
from torchrec_aes.cli import main as cli_main
from torchrec_aes.data.interactions import CSR, InteractionData
from torchrec_aes.io import load_numpy
from torchrec_aes.models.cf import build_cf_model
from torchrec_aes.models.rowwise import (
    BucketedEmbedding,
    BucketLayout,
    RowCost,
    bucket_architecture,
    masked_form,
)
from torchrec_aes.planning.memory import arch_bytes, table_storage
from torchrec_aes.planning.plan import plan_architecture

NUM_USERS, NUM_ITEMS, DMAX = 30, 50, 16


def _data() -> InteractionData:
    g = torch.Generator().manual_seed(0)
    users = torch.randint(NUM_USERS, (300,), generator=g)
    items = torch.randint(NUM_ITEMS, (300,), generator=g)
    train = CSR.from_pairs(users, items, NUM_USERS)
    empty = CSR.from_pairs(torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long), NUM_USERS)
    u, i = train.to_pairs()
    return InteractionData(
        NUM_USERS,
        NUM_ITEMS,
        train,
        empty,
        empty,
        torch.bincount(u, minlength=NUM_USERS),
        torch.bincount(i, minlength=NUM_ITEMS),
    )


def _sizes(n: int, seed: int) -> torch.Tensor:
    return 4 * torch.randint(1, DMAX // 4 + 1, (n,), generator=torch.Generator().manual_seed(seed))


def test_row_dims_keep_each_rows_first_columns_and_give_masked_columns_no_gradient() -> None:
    data = _data()
    model = build_cf_model("mf", Architecture.uniform(data.schema, 8), data)
    user_dims = torch.zeros(NUM_USERS, dtype=torch.long)
    user_dims[0], user_dims[3] = 8, 4
    model.set_row_dims(user_dims, None)
    users = torch.tensor([0, 3, 4])
    rows, _ = model.lookup(users, torch.tensor([0]))
    assert rows[0].ne(0).all() and rows[1, :4].ne(0).all() and rows[1, 4:].eq(0).all() and rows[2].eq(0).all()
    rows.pow(2).sum().backward()
    grad = model.ebc.embedding_bags["t_user"].weight.grad
    assert grad[0].ne(0).all()
    assert grad[3, :4].ne(0).all() and grad[3, 4:].eq(0).all()
    assert grad[4].eq(0).all()


def test_row_cost_matches_torchrec_storage_estimate_of_a_table() -> None:
    cost = RowCost.of("rowwise_adagrad", "bytes")
    assert cost.total(torch.full((777,), 20)) == table_storage(777, 20, "rowwise_adagrad")
    assert RowCost.of("rowwise_adagrad", "params").total(torch.full((10,), 8)) == 80


def test_bucketed_tables_score_exactly_like_the_masked_model() -> None:
    data = _data()
    torch.manual_seed(0)
    model = build_cf_model("mf", Architecture.uniform(data.schema, DMAX), data)
    user_dims, item_dims = _sizes(NUM_USERS, 1), _sizes(NUM_ITEMS, 2)
    model.set_row_dims(user_dims, item_dims)
    masked_users, masked_items = model.final_embeddings()

    layout = BucketLayout.from_row_dims({"user": user_dims, "item": item_dims})
    bucketed = BucketedEmbedding(layout, width=DMAX)
    bucketed.load_from_full(model.raw_tables())
    tables = bucketed.read_tables()
    torch.testing.assert_close(tables["user"], masked_users, rtol=0, atol=0)
    torch.testing.assert_close(tables["item"], masked_items, rtol=0, atol=0)
    # Scores of a batch looked up through the bucket tables equal the masked model's.
    users, items = torch.tensor([0, 7, 29]), torch.tensor([[1, 2], [49, 0], [10, 11]])
    scores, _ = model(users, items)
    u = bucketed.lookup("user", users)
    i = bucketed.lookup("item", items.reshape(-1)).view(3, 2, -1)
    torch.testing.assert_close(torch.einsum("bd,bnd->bn", u, i), scores, rtol=0, atol=0)
    # Each physical table holds exactly the rows of its size.
    sizes = {c.name: (c.num_embeddings, c.embedding_dim) for c in layout.ebc_configs()}
    for d in user_dims.unique().tolist():
        assert sizes[f"t_user_d{d}"] == (int((user_dims == d).sum()), d)


def test_bucket_architecture_round_trips_and_is_planned_within_the_budget(tmp_path, capsys) -> None:
    user_dims, item_dims = _sizes(NUM_USERS, 3), _sizes(NUM_ITEMS, 4)
    layout = BucketLayout.from_row_dims({"user": user_dims, "item": item_dims})
    arch = bucket_architecture(layout)
    arch.extra.update(layout.save(str(tmp_path)))
    arch.save(str(tmp_path / "architecture.yaml"))
    cost = RowCost.of("rowwise_adagrad", "bytes")
    assert arch_bytes(arch) == cost.total(user_dims) + cost.total(item_dims)
    assert arch.kind == "rowwise"

    loaded = Architecture.load(str(tmp_path / "architecture.yaml"))
    assert loaded.kind == "rowwise"
    again = BucketLayout.load(loaded, str(tmp_path))
    assert torch.equal(again.row_dims["user"], user_dims) and torch.equal(again.row_dims["item"], item_dims)
    full, row_dims = masked_form(loaded, str(tmp_path), _data().schema)  # the training form
    assert full.dims == [DMAX, DMAX] and torch.equal(row_dims["item"], item_dims)
    remap = np.asarray(load_numpy(str(tmp_path / "row_remap.npy")))
    assert remap.shape == (NUM_USERS + NUM_ITEMS, 2)

    plan = plan_architecture(loaded, world_size=2)
    assert set(plan.plan[""]) == {t.name for t in loaded.tables}
    cli_main(["plan", str(tmp_path), "--world-size", "2", "--device", "cpu"])
    assert "plan written to" in capsys.readouterr().out


def test_a_truncated_row_size_file_is_a_one_line_error(tmp_path) -> None:
    layout = BucketLayout.from_row_dims({"user": _sizes(NUM_USERS, 3), "item": _sizes(NUM_ITEMS, 4)})
    arch = bucket_architecture(layout)
    arch.extra.update(layout.save(str(tmp_path)))
    path = tmp_path / arch.extra["row_dims"]
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(ValueError, match=r"row_dims.npy: not a readable row-size file"):
        BucketLayout.load(arch, str(tmp_path))
