"""Budgets are hard, for every method: over 1,000 random (schema, budget) pairs each,
the architecture a method's final budget step returns never exceeds its budget by TorchRec's estimate."""

from __future__ import annotations

import random

import torch

from tests.helpers import tiny_config
from torchrec_aes.architecture import Architecture
from torchrec_aes.data.dataset import CTRData, Splits
from torchrec_aes.data.schema import Schema, SparseFeature
from torchrec_aes.models.rowwise import BucketLayout, RowCost, bucket_architecture
from torchrec_aes.planning.memory import Budget
from torchrec_aes.search.adass.budget_step import NoiselessJudge, fit_to_budget
from torchrec_aes.search.adass.search import candidate_bytes
from torchrec_aes.search.adass.supernet import options, search_space
from torchrec_aes.search.base import SearchContext, get_method
from torchrec_aes.search.bet.sampler import ActionSampler
from torchrec_aes.tasks.ctr import CTRTask

# A fixed pool of table sizes keeps TorchRec's estimates cached (one enumeration per distinct table).
ROWS = [3, 10, 57, 100, 333, 1000, 4096, 10_000, 77_777, 1_000_000]
PAIRS = 1000


def _context(rng: random.Random, precision: str) -> SearchContext:
    features = [SparseFeature(f"c{i}", rng.choice(ROWS)) for i in range(rng.randint(1, 8))]
    schema = Schema(["d0"], features)
    empty = CTRData(torch.zeros(0, 1), torch.zeros(0, len(features), dtype=torch.long), torch.zeros(0))
    cfg = tiny_config()
    cfg.search.candidates = sorted(rng.sample([4, 8, 12, 16, 24, 32, 48, 64], rng.randint(1, 5)))
    cfg.search.precision = precision
    cfg.search.adass.precisions = ["fp32", "fp16"] if rng.random() < 0.5 else ["fp32"]
    smallest = Budget(0, "bytes", "rowwise_adagrad").used(
        Architecture.uniform(schema, min(cfg.search.candidates))
    )
    largest = Budget(0, "bytes", "rowwise_adagrad").used(Architecture.uniform(schema, 64))
    budget = Budget(
        rng.randint(smallest // 2, largest + largest // 4 + 1), "bytes", "rowwise_adagrad", "random"
    )
    return SearchContext(
        cfg, CTRTask(cfg, Splits(schema, empty, empty, empty)), budget, section=cfg.search.adass
    )


def test_uniform_and_power_rule_never_exceed_random_budgets() -> None:
    rng = random.Random(0)
    tried = violations = 0
    for _ in range(PAIRS):
        ctx = _context(rng, rng.choice(["fp32", "fp16"]))
        for method in ("uniform", "power_rule"):
            try:
                arch = get_method(method)(ctx).arch
            except ValueError as e:  # below the smallest architecture: a clear error, never an overrun
                assert "fits" in str(e) or "budget" in str(e)
                continue
            tried += 1
            violations += ctx.budget.used(arch) > ctx.budget.bytes
    assert tried >= PAIRS and violations == 0


def test_the_adass_budget_step_never_exceeds_random_budgets_with_dims_and_precisions() -> None:
    rng = random.Random(1)
    tried = violations = 0
    for trial in range(PAIRS):
        ctx = _context(rng, "fp32")
        costs = candidate_bytes(ctx)
        if sum(row[0] for row in costs) > ctx.budget.bytes:
            continue
        k = len(costs[0])
        noise = random.Random(trial)

        def score(c: list[int], n: random.Random = noise) -> float:
            return sum(c) * n.random()

        start = [rng.randrange(k) for _ in costs]
        final, _ = fit_to_budget(
            start, costs, ctx.budget.bytes, NoiselessJudge(score), fill=rng.random() < 0.5
        )
        opts = options(ctx)
        # Per table, or (budgets no per-table architecture fits, rows=auto) per frequency block.
        arch = search_space(ctx).architecture([opts[i] for i in final])
        tried += 1
        violations += ctx.budget.used(arch) > ctx.budget.bytes
    assert tried >= PAIRS // 2 and violations == 0


def test_bet_actions_never_exceed_random_budgets_as_bucket_tables() -> None:
    rng = random.Random(2)
    g = torch.Generator().manual_seed(2)
    tried = violations = 0
    cost = RowCost.of("rowwise_adagrad", "bytes")
    for _ in range(PAIRS // 10):
        users, items = rng.randint(1, 200), rng.randint(1, 200)
        user_freq = torch.randint(1, 100, (users,), generator=g)
        item_freq = torch.randint(1, 100, (items,), generator=g)
        max_dim = rng.choice([8, 16, 64, 128])
        smallest = cost.total(torch.full((users + items,), 4))
        budget = Budget(rng.randint(smallest, cost.total(torch.full((users + items,), max_dim)) * 2), "bytes")
        sampler = ActionSampler(user_freq, item_freq, budget.bytes, cost, max_dim, 4, max_redraws=3)
        for _ in range(10):
            action = sampler.sample(g)
            arch = bucket_architecture(BucketLayout.from_row_dims(action.as_dict()))
            tried += 1
            violations += budget.used(arch) > budget.bytes
    assert tried >= PAIRS and violations == 0
