"""CF models (MF, LightGCN on TorchRec tables), full-ranking metrics and BPR training."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
import torch

from torchrec_aes.architecture import Architecture
from torchrec_aes.config import Config, DataConfig
from torchrec_aes.data.interactions import CSR, InteractionData, load_interactions
from torchrec_aes.models.cf import LightGCN, TableHooks, build_cf_model
from torchrec_aes.tasks.cf import CFTask
from torchrec_aes.train.ranking import evaluate_ranking, topk_items
from torchrec_aes.train.trainer import Trainer


def train_cf(
    cfg: Config,
    arch: Architecture,
    data: InteractionData,
    run_dir: str = "",
    *,
    init_tables: dict | None = None,
    keep_tables: bool = False,
    sharding_types: list[str] | None = None,
    checkpoint: bool = False,
) -> dict:
    """One CF training through the one Trainer; with `keep_tables` the best epoch's tables as "tables"."""
    cfg.train.checkpoint = checkpoint
    hooks = TableHooks(init_tables=init_tables, keep_tables=keep_tables)
    task = CFTask(cfg, data)
    result = Trainer(cfg, task, arch, run_dir, hooks=hooks, sharding_types=sharding_types).fit()
    if keep_tables:
        result["tables"] = hooks.best_tables
    return result


def _csr(rows: list[list[int]]) -> CSR:
    users = [u for u, items in enumerate(rows) for _ in items]
    items = [i for row in rows for i in row]
    return CSR.from_pairs(
        torch.tensor(users, dtype=torch.long), torch.tensor(items, dtype=torch.long), len(rows)
    )


def _data(train: list[list[int]], num_items: int) -> InteractionData:
    empty = _csr([[] for _ in train])
    csr = _csr(train)
    users, items = csr.to_pairs()
    return InteractionData(
        num_users=len(train),
        num_items=num_items,
        train=csr,
        val=empty,
        test=empty,
        user_freq=torch.bincount(users, minlength=len(train)),
        item_freq=torch.bincount(items, minlength=num_items),
    )


def _weights(model) -> tuple[torch.Tensor, torch.Tensor]:
    state = model.ebc.state_dict()
    return state["embedding_bags.t_user.weight"], state["embedding_bags.t_item.weight"]


# ---------------------------------------------------------------------------------------------------------
# Ranking metrics
# ---------------------------------------------------------------------------------------------------------

# Items 0..4 score 5, 4, 3, 2, 1 for every user (D = 1), so the ranking is 0, 1, 2, 3, 4.
ITEMS = torch.tensor([[5.0], [4.0], [3.0], [2.0], [1.0]])
USERS = torch.ones(3, 1)


def test_recall_and_ndcg_match_a_hand_computed_example() -> None:
    train = _csr([[0], [], [1]])
    # User 0: item 0 masked, ranking 1, 2, 3, 4, test {2, 4}; user 1: ranking 0.., test {0};
    # user 2 has no test items and is skipped.
    test = _csr([[2, 4], [0], []])
    m = evaluate_ranking(USERS, ITEMS, test, [train], ks=[1, 2, 4])
    d2, d4 = 1 / math.log2(3), 1 / math.log2(5)
    assert m["users"] == 2
    assert m["recall@1"] == pytest.approx((0 + 1) / 2)
    assert m["recall@2"] == pytest.approx((0.5 + 1) / 2)
    assert m["recall@4"] == pytest.approx((1 + 1) / 2)
    assert m["ndcg@1"] == pytest.approx((0 + 1) / 2)
    # IDCG over min(|test|, K) = 2 hits for user 0: 1 + 1/log2(3).
    assert m["ndcg@2"] == pytest.approx((d2 / (1 + d2) + 1) / 2)
    assert m["ndcg@4"] == pytest.approx(((d2 + d4) / (1 + d2) + 1) / 2)


def test_training_items_are_masked_from_the_ranking() -> None:
    # User 0 trained on the two best-scoring items; its test item is the third.
    test = _csr([[2], [], []])
    masked = evaluate_ranking(USERS, ITEMS, test, [_csr([[0, 1], [], []])], ks=[1])
    unmasked = evaluate_ranking(USERS, ITEMS, test, [], ks=[1])
    assert masked["recall@1"] == 1.0
    assert unmasked["recall@1"] == 0.0


def test_every_excluded_set_is_masked_when_testing() -> None:
    test = _csr([[3], [], []])
    m = evaluate_ranking(USERS, ITEMS, test, [_csr([[0], [], []]), _csr([[1, 2], [], []])], ks=[1])
    assert m["recall@1"] == 1.0


def test_blocked_topk_equals_torch_topk() -> None:
    scores = torch.randn(37, 64 * 50, generator=torch.Generator().manual_seed(0))
    assert torch.equal(topk_items(scores, 20), torch.topk(scores, 20, dim=1).indices)


def test_chunking_does_not_change_the_metrics() -> None:
    gen = torch.Generator().manual_seed(0)
    users, items = torch.randn(50, 8, generator=gen), torch.randn(300, 8, generator=gen)
    rows = [[(u * 7 + j) % 300 for j in range(u % 9)] for u in range(50)]
    test = _csr([[(u * 11 + j + 100) % 300 for j in range(1 + u % 4)] for u in range(50)])
    full = evaluate_ranking(users, items, test, [_csr(rows)], chunk_size=1024)
    chunked = evaluate_ranking(users, items, test, [_csr(rows)], chunk_size=7)
    assert full == pytest.approx(chunked)


# ---------------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------------

TRAIN = [[0, 1], [1, 2, 3], [], [4]]  # 4 users, 5 items; user 2 is isolated


def test_mf_scores_are_inner_products_of_table_rows() -> None:
    data = _data(TRAIN, 5)
    torch.manual_seed(0)
    model = build_cf_model("mf", Architecture.uniform(data.schema, 8), data)
    users, items = torch.tensor([0, 3, 1]), torch.tensor([[1, 4], [0, 2], [3, 3]])
    scores, ego_l2 = model(users, items)
    user_w, item_w = _weights(model)
    expected = (user_w[users][:, None, :] * item_w[items]).sum(-1)
    assert scores.shape == (3, 2)
    torch.testing.assert_close(scores, expected)
    torch.testing.assert_close(ego_l2, 0.5 * (user_w[users].pow(2).sum() + item_w[items].pow(2).sum()) / 3)


def test_mixed_dims_zero_pad_the_smaller_table_for_scoring() -> None:
    data = _data(TRAIN, 5)
    model = build_cf_model("mf", Architecture.from_dims(data.schema, [4, 8]), data)
    user_emb, item_emb = model.final_embeddings()
    assert user_emb.shape == (4, 8) and item_emb.shape == (5, 8)
    assert torch.all(user_emb[:, 4:] == 0)
    user_w, item_w = _weights(model)
    scores, _ = model(torch.tensor([1]), torch.tensor([[2]]))
    torch.testing.assert_close(scores[0, 0], user_w[1] @ item_w[2, :4])


def test_lightgcn_propagation_equals_a_dense_reference() -> None:
    data = _data(TRAIN, 5)
    torch.manual_seed(0)
    model = build_cf_model("lightgcn", Architecture.uniform(data.schema, 8), data, num_layers=3)
    assert isinstance(model, LightGCN)
    user_w, item_w = _weights(model)
    r = torch.zeros(4, 5)
    for u, items in enumerate(TRAIN):
        r[u, items] = 1
    a = torch.zeros(9, 9)
    a[:4, 4:], a[4:, :4] = r, r.t()
    deg = a.sum(1)
    inv = torch.where(deg > 0, deg.rsqrt(), torch.zeros_like(deg))
    norm = inv[:, None] * a * inv[None, :]
    x = torch.cat([user_w, item_w])
    layers = [x]
    for _ in range(3):
        layers.append(norm @ layers[-1])
    expected = torch.stack(layers).mean(0)
    user_emb, item_emb = model.final_embeddings()
    torch.testing.assert_close(torch.cat([user_emb, item_emb]), expected)
    # The isolated user keeps (1/4 of) its own row: no neighbours contribute.
    torch.testing.assert_close(user_emb[2], user_w[2] / 4)


def test_lightgcn_forward_scores_with_gradients_to_every_reachable_row() -> None:
    data = _data(TRAIN, 5)
    model = build_cf_model("lightgcn", Architecture.uniform(data.schema, 8), data, num_layers=2)
    scores, ego_l2 = model(torch.tensor([0, 1]), torch.tensor([[1, 4], [2, 0]]))
    assert scores.shape == (2, 2) and ego_l2.ndim == 0
    scores.sum().backward()
    grad = model.ebc.embedding_bags["t_item"].weight.grad
    # Every item is within two hops of the batch, so every item row gets a gradient through the full read.
    assert grad is not None and torch.all(grad.abs().sum(1) > 0)


def test_row_dims_keep_a_prefix_of_each_row() -> None:
    data = _data(TRAIN, 5)
    model = build_cf_model("mf", Architecture.uniform(data.schema, 8), data)
    model.set_row_dims(torch.tensor([8, 4, 0, 2]), None)
    user_emb, item_emb = model.final_embeddings()
    user_w, item_w = _weights(model)
    assert torch.all(user_emb[1, 4:] == 0) and torch.equal(user_emb[1, :4], user_w[1, :4])
    assert torch.all(user_emb[2] == 0)
    assert torch.equal(item_emb, item_w)
    with pytest.raises(ValueError, match=r"user row dims: expected 4 ints in \[0, 8\]"):
        model.set_row_dims(torch.tensor([9, 1, 1, 1]), None)


def test_architecture_without_an_item_table_is_rejected() -> None:
    data = _data(TRAIN, 5)
    with pytest.raises(ValueError, match=r"need two tables \(user, item\); got \['t_user'\]"):
        build_cf_model("mf", Architecture.from_dims(data.schema, [8, 0]), data)
    with pytest.raises(ValueError, match="not a CF model"):
        build_cf_model("dlrm", Architecture.uniform(data.schema, 8), data)


# ---------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------


def planted_interactions(path: Path, num_users: int = 120, clusters: int = 4, per_cluster: int = 30) -> str:
    """Users of cluster c interact with 12 random items of item cluster c (planted block structure)."""
    rng = random.Random(0)
    lines = []
    for u in range(num_users):
        c = u % clusters
        items = sorted(rng.sample(range(c * per_cluster, (c + 1) * per_cluster), 12))
        lines.append(" ".join(map(str, [u, *items])))
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def cf_config(path: str, model_type: str = "mf", epochs: int = 8, lr: float = 0.1) -> Config:
    cfg = Config()
    cfg.data = DataConfig(type="interactions", path=path, split=[0.5, 0.25, 0.25])
    cfg.model.type = model_type
    cfg.train.epochs = epochs
    cfg.train.batch_size = 64
    cfg.train.embedding_lr = lr
    cfg.train.patience = epochs
    cfg.train.progress = False
    return cfg


def test_short_mf_training_improves_recall_over_the_untrained_model(tmp_path: Path) -> None:
    path = planted_interactions(tmp_path / "train.txt")
    data = load_interactions(cf_config(path).data)
    arch = Architecture.uniform(data.schema, 8)
    untrained = train_cf(cf_config(path, epochs=1, lr=0.0), arch, data, "")
    trained = train_cf(cf_config(path), arch, data, str(tmp_path / "run"))
    assert set(trained["val"]) >= {"recall@5", "recall@10", "recall@20", "ndcg@5", "ndcg@10", "ndcg@20"}
    assert (trained["num_users"], trained["num_items"]) == (120, 120)
    # Chance Recall@20 is about 20 / 114; the planted blocks make about 0.8 reachable.
    assert untrained["test"]["recall@20"] < 0.3
    assert trained["test"]["recall@20"] > untrained["test"]["recall@20"] + 0.3
    assert trained["val"]["ndcg@20"] > untrained["val"]["ndcg@20"]
    assert list((tmp_path / "run" / "tb" / "train").iterdir())


def test_lightgcn_trains_and_init_tables_round_trip(tmp_path: Path) -> None:
    path = planted_interactions(tmp_path / "train.txt")
    cfg = cf_config(path, "lightgcn", epochs=2)
    data = load_interactions(cfg.data)
    arch = Architecture.uniform(data.schema, 8)
    trained = train_cf(cfg, arch, data, "", keep_tables=True)
    assert trained["test"]["recall@20"] > 0.5
    # Restarting from the trained tables with a zero learning rate reproduces the best epoch's metrics.
    again = train_cf(
        cf_config(path, "lightgcn", epochs=1, lr=0.0), arch, data, "", init_tables=trained["tables"]
    )
    assert again["val"] == pytest.approx(trained["val"])
    assert again["test"] == pytest.approx(trained["test"])


def test_early_stopping_stops_after_patience_epochs_without_improvement(tmp_path: Path) -> None:
    path = planted_interactions(tmp_path / "train.txt")
    cfg = cf_config(path, epochs=6, lr=0.0)  # nothing changes, so epoch 0 stays the best
    cfg.train.patience = 2
    data = load_interactions(cfg.data)
    result = train_cf(cfg, Architecture.uniform(data.schema, 8), data, "")
    assert result["best_epoch"] == 0
    assert result["epochs_run"] == 3


def test_checkpointed_training_resumes_and_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    path = planted_interactions(tmp_path / "train.txt")
    data = load_interactions(cf_config(path).data)
    arch = Architecture.uniform(data.schema, 8)
    whole = train_cf(cf_config(path, epochs=3), arch, data, str(tmp_path / "whole"), checkpoint=True)
    run = str(tmp_path / "run")
    # "Killed" after 2 epochs: the rerun with 3 epochs trains only the third, from the saved state.
    first = train_cf(cf_config(path, epochs=2), arch, data, run, checkpoint=True)
    assert [h["epoch"] for h in first["history"]] == [0, 1]
    resumed = train_cf(cf_config(path, epochs=3), arch, data, run, checkpoint=True)
    assert [h["epoch"] for h in resumed["history"]] == [0, 1, 2]
    for got, want in zip(resumed["history"], whole["history"], strict=True):
        assert got == pytest.approx(want)
    assert resumed["test"] == pytest.approx(whole["test"])
    assert (tmp_path / "run" / "checkpoints" / "train" / "state.json").exists()
    # A checkpoint of another architecture is not silently reused.
    with pytest.raises(ValueError, match="another architecture"):
        train_cf(cf_config(path, epochs=4), Architecture.uniform(data.schema, 12), data, run, checkpoint=True)
