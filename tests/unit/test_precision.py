"""Table precision as a byte lever: fp16 tables and int8/int4 serving in architectures, budgets, baselines,
training and the served model's test."""

from __future__ import annotations

import random

import pytest
import torch
from torchrec.modules.embedding_configs import DataType, EmbeddingBagConfig

import torchrec_aes
from tests.conftest import REPO
from tests.helpers import tiny_config, tiny_splits
from torchrec_aes.architecture import Architecture, check_data_type
from torchrec_aes.models.quantized import served_rows
from torchrec_aes.planning.memory import Budget, arch_bytes, meta_ebc, table_storage
from torchrec_aes.search.base import SearchContext, get_method
from torchrec_aes.search.finalists import baseline_finalists
from torchrec_aes.tasks.ctr import CTRTask
from torchrec_aes.train.trainer import Trainer


def test_fp16_tables_are_stored_planned_and_counted_at_half_the_bytes(tmp_path) -> None:
    schema = tiny_splits(n=10).schema
    arch = Architecture.uniform(schema, 16, "fp16")
    configs = arch.to_ebc_configs()
    assert {c.data_type for c in configs} == {DataType.FP16}
    weights = [p for p in meta_ebc(configs, "rowwise_adagrad").parameters()]
    assert {w.dtype for w in weights} == {torch.float16}
    # TorchRec's estimate (never re-derived): half of fp32 with row-wise Adagrad, whose per-row state it
    # counts at the weights' element size.
    fp32 = arch_bytes(Architecture.uniform(schema, 16))
    assert arch_bytes(arch) * 2 == fp32
    assert table_storage(1000, 64, data_type="fp16") == 1000 * (64 * 2 + 2)
    arch.save(str(tmp_path / "architecture.yaml"))
    again = Architecture.load(str(tmp_path / "architecture.yaml"))
    assert again.data_types == ["fp16"] * len(schema.sparse) and again == arch


def test_serving_precisions_train_in_fp32_and_are_counted_as_torchrec_serves_them() -> None:
    schema = tiny_splits(n=10).schema
    fp32 = Architecture.uniform(schema, 64)
    for data_type, per_row in (("int8", 84), ("int4", 52)):
        arch = Architecture.uniform(schema, 64, data_type)
        assert {c.data_type for c in arch.to_ebc_configs()} == {DataType.FP32}
        assert arch.served_types == {t.name: data_type for t in arch.tables}
        assert arch_bytes(arch) == arch_bytes(fp32)  # training memory: the fp32 table and its state
        # TorchRec's inference estimate: 64 one-byte (int8) or half-byte (int4) weights, a scale and a
        # bias per row, rows aligned to 16 bytes.
        assert table_storage(1000, 64, count="serving", data_type=data_type) == 1000 * per_row
    assert table_storage(1000, 64, count="serving") == 1000 * 260
    data = Architecture.uniform(schema, 8).to_dict()
    data["tables"][0]["data_type"] = "bf8"
    with pytest.raises(
        ValueError, match=r"tables\[0\].data_type: 'bf8' is not one of fp32, fp16, int8, int4"
    ):
        Architecture.from_dict(data, "arch.yaml")
    with pytest.raises(ValueError, match="router: 'int8' is a serving-only precision"):
        check_data_type("int8", "router")


def test_served_rows_are_torchrecs_row_wise_quantization() -> None:
    weights = torch.randn(500, 16, generator=torch.Generator().manual_seed(0))
    span = (weights.max(1).values - weights.min(1).values).unsqueeze(1)
    for data_type, levels in (("int8", 255), ("int4", 15)):
        served = served_rows(weights, data_type)
        error = (served - weights).abs()
        assert not torch.equal(served, weights)
        # Row-wise: within half a quantization step of the row's own range (fp16 scale: a little slack).
        assert bool((error <= span / levels / 2 * 1.01 + 1e-3).all()), data_type


def test_an_int4_model_is_tested_as_served() -> None:
    splits = tiny_splits(n=3000)
    cfg = tiny_config()
    cfg.train.epochs = 2
    result = Trainer(cfg, CTRTask(cfg, splits), Architecture.uniform(splits.schema, 16, "int4")).fit()
    test = result["test"]
    assert {"auc", "trained_auc", "logloss", "trained_logloss"} <= set(test)
    assert test["logloss"] != test["trained_logloss"] and abs(test["auc"] - test["trained_auc"]) < 0.01


def test_resize_configs_applies_the_searched_precision() -> None:
    schema = tiny_splits(n=10).schema
    arch = Architecture.from_dims(
        schema, [8] * len(schema.sparse), data_types=["fp16", "fp32", "fp16", "fp32", "fp32"]
    )
    mine = [
        EmbeddingBagConfig(
            name=f"t_{f.name}", embedding_dim=64, num_embeddings=f.num_embeddings, feature_names=[f.name]
        )
        for f in schema.sparse
    ]
    resized = torchrec_aes.resize_configs(mine, arch)
    assert [c.data_type for c in resized] == [
        DataType.FP16,
        DataType.FP32,
        DataType.FP16,
        DataType.FP32,
        DataType.FP32,
    ]


def test_budgets_hold_for_mixed_precisions_over_random_schemas_and_budgets() -> None:
    rng = random.Random(0)
    splits = tiny_splits(n=10)
    violations, tried = 0, 0
    for _ in range(300):
        dims = [rng.choice([0, 4, 8, 12, 16, 32]) for _ in splits.schema.sparse]
        types = [rng.choice(["fp32", "fp16"]) for _ in dims]
        arch = Architecture.from_dims(splits.schema, dims, data_types=types)
        expected = sum(
            table_storage(t.num_embeddings, t.embedding_dim, data_type=t.data_type) for t in arch.tables
        )
        assert arch_bytes(arch) == expected
        budget = Budget(rng.randint(expected // 2, expected * 2), "bytes", "rowwise_adagrad", "random")
        assert budget.fits(arch) == (expected <= budget.bytes)
        cfg = tiny_config()
        cfg.search.candidates = [4, 8, 16, 32]
        cfg.search.precision = rng.choice(["fp32", "fp16"])
        ctx = SearchContext(cfg, CTRTask(cfg, splits), budget)
        for method in ("uniform", "power_rule"):
            try:
                found = get_method(method)(ctx).arch
            except ValueError:  # the budget is below every table at dim 4
                continue
            tried += 1
            violations += not budget.fits(found)
            assert set(found.data_types) == {cfg.search.precision}
    assert tried > 300 and violations == 0


def test_baselines_of_the_final_pick_include_same_memory_uniform_in_fp16() -> None:
    splits = tiny_splits(n=10)
    cfg = tiny_config()
    cfg.search.candidates = [4, 8, 16, 32, 64]
    budget = Budget.parse("0.5 x uniform-64", splits.schema)
    by_label = {f.label: f.arch for f in baseline_finalists(SearchContext(cfg, CTRTask(cfg, splits), budget))}
    assert set(by_label) == {"uniform", "power_rule", "uniform_fp16", "mde", "hashed"}
    # At half the bytes of uniform-64 in fp32, fp16 affords uniform-64 again (TorchRec counts exactly half).
    assert by_label["uniform_fp16"].dims == [64] * 5 and set(by_label["uniform_fp16"].data_types) == {"fp16"}
    assert by_label["uniform"].dims[0] < 64 and budget.fits(by_label["uniform_fp16"])


def test_fp16_tables_train_with_the_fused_rowwise_adagrad_on_cpu() -> None:
    splits = tiny_splits(n=3000)
    cfg = tiny_config()
    result = Trainer(cfg, CTRTask(cfg, splits), Architecture.uniform(splits.schema, 8, "fp16")).fit()
    assert result["test"]["auc"] > 0.75  # the toy task is learnable (fp32 reaches ~0.86)


def test_simulated_fp16_rounds_the_forward_pass_and_passes_gradients_straight_through() -> None:
    from torchrec.modules.embedding_modules import EmbeddingBagCollection

    from torchrec_aes.data.dataset import make_batch
    from torchrec_aes.supernet.elastic import ElasticEmbeddingBagCollection

    splits = tiny_splits(n=64)
    configs = Architecture.uniform(splits.schema, 16).to_ebc_configs()
    elastic = ElasticEmbeddingBagCollection(EmbeddingBagCollection(tables=configs), [8, 16])
    batch = make_batch(splits.train, torch.arange(8), splits.schema.sparse_names)
    exact = elastic(batch.sparse_features).values()
    elastic.set_half([True] + [False] * (len(configs) - 1))
    rounded = elastic(batch.sparse_features).values()
    torch.testing.assert_close(rounded[:, :16], exact[:, :16].half().float(), rtol=0, atol=0)
    torch.testing.assert_close(rounded[:, 16:], exact[:, 16:], rtol=0, atol=0)
    assert not torch.equal(rounded[:, :16], exact[:, :16])
    rounded.sum().backward()
    grad = elastic.ebc.embedding_bags["t_c0"].weight.grad
    assert grad is not None and grad.abs().sum() > 0  # straight through: rounding does not stop learning


def test_adass_with_a_precision_choice_meets_the_byte_budget_with_mixed_precision_tables(tmp_path) -> None:

    from torchrec_aes.config import load_config
    from torchrec_aes.runs import run_search

    cfg = load_config(
        str(REPO / "configs" / "tests" / "adass_tiny.yaml"),
        [
            f"data.cache_dir={tmp_path / 'cache'}",
            f"run_dir={tmp_path / 'run'}",
            "search.adass.precisions=[fp32, fp16]",
            "search.adass.rl_updates=10",
        ],
    )
    metrics = run_search(cfg)
    assert metrics["budget_used"] <= metrics["budget_bytes"]
    labels = set(metrics["search_log"]["rl"]["argmax_dims"].values()) | set(
        metrics["search_log"]["rl"]["fill_dims"].values()
    )
    assert any(label.endswith("/fp16") for label in labels)  # fp16 options were on the table
    rows = {r["label"]: r for r in metrics["finalists"]}
    assert {"adass", "uniform_fp16"} <= set(rows)
    assert all(r["bytes"] <= metrics["budget_bytes"] for r in rows.values())
    saved = Architecture.load(str(tmp_path / "run" / "architecture.yaml"))
    assert metrics["budget_used"] == Budget.parse(cfg.search.budget[0], saved_schema(cfg)).used(saved)


def saved_schema(cfg):
    return CTRTask.load(cfg).schema


def test_bet_with_fp16_tables_affords_twice_the_row_sizes_within_the_same_byte_budget(tmp_path) -> None:
    from tests.unit.test_bet import _interaction_file
    from torchrec_aes.config import load_config
    from torchrec_aes.data.interactions import load_interactions
    from torchrec_aes.models.rowwise import RowCost
    from torchrec_aes.search.bet.search import bet_search
    from torchrec_aes.tasks.cf import CFTask

    assert RowCost.of("rowwise_adagrad", "bytes", "fp16").per_dim * 2 == RowCost.of("rowwise_adagrad").per_dim
    _interaction_file(tmp_path / "train.txt")
    results = {}
    for precision in ("fp32", "fp16"):
        cfg = load_config(
            "configs/tests/bet_tiny.yaml",
            [
                f"data.path={tmp_path / 'train.txt'}",
                "search.count=bytes",
                "search.bet.iterations=2",
                f"search.bet.precision={precision}",
            ],
        )
        data = load_interactions(cfg.data)
        budget = Budget.parse(cfg.search.budget[0], data.schema, cfg.train.embedding_optimizer, "bytes")
        result = bet_search(cfg, CFTask(cfg, data), budget, "", "bet_su")
        (su,) = result.finalists
        assert budget.used(su.arch) <= budget.bytes and set(su.arch.data_types) == {precision}
        results[precision] = su.arch.dims[0]
    assert results["fp16"] >= 2 * results["fp32"] - 4  # sizes are multiples of 4


def test_a_serving_budget_affords_int8_tables_uniform_64_at_a_third_of_fp32() -> None:
    splits = tiny_splits(n=10)
    cfg = tiny_config()
    cfg.search.count = "serving"
    budget = Budget.parse("0.35 x uniform-64", splits.schema, count="serving")
    by_label = {f.label: f.arch for f in baseline_finalists(SearchContext(cfg, CTRTask(cfg, splits), budget))}
    # int8 at dim 64 serves in 84 B a row, fp32 in 260 B: about a third.
    assert by_label["uniform_int8"].dims == [64] * 5 and set(by_label["uniform_int8"].data_types) == {"int8"}
    assert by_label["uniform"].dims[0] < 24 and by_label["uniform_fp16"].dims[0] < 48
    assert all(budget.fits(a) for a in by_label.values())
    cfg.search.count = "bytes"  # training memory: int8 tables train in fp32 and save nothing
    budget = Budget.parse("0.35 x uniform-64", splits.schema)
    assert "uniform_int8" not in {
        f.label for f in baseline_finalists(SearchContext(cfg, CTRTask(cfg, splits), budget))
    }
