"""BET: budget-guaranteed action sampler, DeepSets fitness predictor, and the search end to end."""

from __future__ import annotations

import random

import pytest
import torch

from torchrec_aes.architecture import Architecture
from torchrec_aes.config import load_config
from torchrec_aes.data.interactions import load_interactions
from torchrec_aes.models.rowwise import BucketLayout, RowCost
from torchrec_aes.planning.memory import Budget
from torchrec_aes.search.bet.predictor import FitnessPredictor, PredictorTrainer
from torchrec_aes.search.bet.sampler import ActionSampler
from torchrec_aes.search.bet.search import bet_search
from torchrec_aes.tasks.cf import CFTask


def _profiles(n: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    zipf = (1e4 / torch.arange(1, n + 1).double() ** 1.2).long() + 1
    return {
        "zipf": zipf[torch.randperm(n, generator=g)],
        "uniform_random": torch.randint(1, 50, (n,), generator=g),
        "all_equal": torch.full((n,), 7),
        "few_heavy": torch.where(torch.rand(n, generator=g) < 0.05, 1000, 1),
    }


def _assert_frequency_ranking(freq: torch.Tensor, dims: torch.Tensor) -> None:
    order = torch.sort(-freq, stable=True).indices
    assert bool((dims[order][:-1] >= dims[order][1:]).all()), "a more frequent row got a smaller size"
    # Equal frequency never breaks the order the other way either: rows sorted by size have sorted freq.
    strictly_more = freq[:, None] > freq[None, :]
    assert not bool((strictly_more & (dims[:, None] < dims[None, :])).any())


def test_sampler_never_exceeds_the_budget_and_gives_frequent_rows_the_largest_sizes() -> None:
    g = torch.Generator().manual_seed(0)
    rng = random.Random(0)
    violations = 0
    draws = 0
    for count in ("bytes", "params"):
        cost = RowCost.of("rowwise_adagrad", count)
        for _trial in range(12):
            num_users, num_items = rng.randint(1, 300), rng.randint(1, 300)
            max_dim = rng.choice([8, 16, 64, 128])
            users = _profiles(num_users, g)[rng.choice(["zipf", "uniform_random", "all_equal", "few_heavy"])]
            items = _profiles(num_items, g)[rng.choice(["zipf", "uniform_random", "all_equal", "few_heavy"])]
            rows = num_users + num_items
            smallest = cost.total(torch.full((rows,), 4))
            largest = cost.total(torch.full((rows,), max_dim))
            # Budgets from the minimum (every row at 4) to above the full model.
            for budget in (
                smallest,
                smallest + 1,
                int(smallest + (largest - smallest) * rng.random()),
                largest * 2,
            ):
                sampler = ActionSampler(users, items, budget, cost, max_dim, 4, max_redraws=3)
                for _ in range(3):
                    action = sampler.sample(g)
                    draws += 1
                    used = cost.total(action.user_dims) + cost.total(action.item_dims)
                    violations += used > budget
                    for dims in (action.user_dims, action.item_dims):
                        assert (
                            bool((dims % 4 == 0).all())
                            and int(dims.min()) >= 4
                            and int(dims.max()) <= max_dim
                        )
                    _assert_frequency_ranking(users, action.user_dims)
                    _assert_frequency_ranking(items, action.item_dims)
                su = sampler.uniform()
                assert cost.total(su.user_dims) + cost.total(su.item_dims) <= budget
    assert draws == 2 * 12 * 4 * 3
    assert violations == 0


def test_sampler_uses_nearly_all_of_the_budget_and_varies_the_user_share() -> None:
    g = torch.Generator().manual_seed(1)
    cost = RowCost.of("rowwise_adagrad", "params")
    users, items = torch.randint(1, 100, (500,), generator=g), torch.randint(1, 100, (800,), generator=g)
    budget = int(0.1 * 128 * 1300)  # the paper's 90% sparsity, in parameters
    sampler = ActionSampler(users, items, budget, cost, 128, 4)
    shares = []
    for _ in range(20):
        a = sampler.sample(g)
        used = cost.total(a.user_dims) + cost.total(a.item_dims)
        assert budget - 4 < used <= budget  # less than one quantum left over
        shares.append(cost.total(a.user_dims) / used)
    assert max(shares) - min(shares) > 0.3


def test_sampler_says_the_minimum_when_the_budget_is_too_small() -> None:
    cost = RowCost.of("rowwise_adagrad", "params")
    with pytest.raises(ValueError, match="below 40"):
        ActionSampler(torch.ones(4), torch.ones(6), 39, cost, 16, 4)


def test_predictor_maps_actions_to_one_fitness_and_a_64_wide_embedding() -> None:
    predictor = FitnessPredictor(torch.rand(70), max_dim=32, multiple=4)
    dims = 4 * torch.randint(1, 9, (5, 70))
    pred, emb = predictor(dims)
    assert pred.shape == (5,) and emb.shape == (5, 64)
    trainer = PredictorTrainer(predictor, lr=0.01, decay=0.9, min_lr=0.002)
    for _ in range(30):
        trainer.update(dims[0], 0.5)
    assert trainer.lr == pytest.approx(0.002)


def test_predictor_learns_to_rank_actions_by_a_synthetic_fitness() -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    num_users, num_items = 150, 250
    users = (1000 / torch.arange(1, num_users + 1).double()).long() + 1
    items = (1000 / torch.arange(1, num_items + 1).double() ** 0.8).long() + 1
    cost = RowCost.of("rowwise_adagrad", "params")
    sampler = ActionSampler(users, items, 12 * (num_users + num_items), cost, 64, 4)
    freq = torch.cat([users / users.max(), items / items.max()]).float()
    actions = torch.stack(
        [torch.cat([a.user_dims, a.item_dims]) for a in (sampler.sample(g) for _ in range(80))]
    )

    def fitness(dims: torch.Tensor) -> float:  # share of the sizes spent on frequent rows
        return float((freq * dims).sum() / dims.sum())

    targets = [fitness(d) for d in actions]
    mean = sum(targets) / len(targets)
    predictor = FitnessPredictor(freq, max_dim=64, multiple=4)
    trainer = PredictorTrainer(predictor, lr=0.01, decay=0.9, min_lr=0.002)
    for _ in range(8):
        for j in torch.randperm(50, generator=g).tolist():
            trainer.update(actions[j], (targets[j] - mean) * 10)
    with torch.no_grad():
        pred, _ = predictor(actions[50:])
    truth = torch.tensor(targets[50:])
    rank = lambda x: torch.argsort(torch.argsort(x)).double()  # noqa: E731
    spearman = torch.corrcoef(torch.stack([rank(pred), rank(truth)]))[0, 1]
    assert spearman > 0.7


def _interaction_file(path, num_users: int = 40, num_items: int = 60) -> None:
    g = torch.Generator().manual_seed(0)
    lines = []
    for u in range(num_users):
        # Two taste groups, with popular items more likely: a structure MF can learn.
        group = u % 2
        weights = torch.tensor([(2.0 if i % 2 == group else 0.2) / (1 + i / 10) for i in range(num_items)])
        items = torch.multinomial(weights, 12, replacement=False, generator=g).tolist()
        lines.append(" ".join(map(str, [u, *sorted(items)])))
    path.write_text("\n".join(lines) + "\n")


def test_bet_search_finds_buckets_within_budget_and_resumes(tmp_path) -> None:
    data_file = tmp_path / "train.txt"
    _interaction_file(data_file)
    run_dir = tmp_path / "run"
    overrides = [f"data.path={data_file}", f"run_dir={run_dir}"]
    cfg = load_config("configs/tests/bet_tiny.yaml", overrides + ["search.bet.iterations=3"])
    data = load_interactions(cfg.data)
    budget = Budget.parse(cfg.search.budget[0], data.schema, cfg.train.embedding_optimizer, cfg.search.count)
    result = bet_search(cfg, CFTask(cfg, data), budget, str(run_dir))
    assert [r["iteration"] for r in result.log["iterations"]] == [0, 1, 2]
    # Finalists for the shared final pick: the top-k candidates (bucket tables, trained masked) and SU.
    assert result.finalists is not None
    assert [f.label for f in result.finalists] == ["bet_0", "bet_1", "bet_su"]
    assert all(budget.used(f.arch) <= budget.bytes for f in result.finalists)
    best = result.finalists[0]
    assert best.arch.kind == "rowwise" and best.train_arch.dims == [16, 16]
    best.save(str(run_dir))
    layout = BucketLayout.load(best.arch, str(run_dir))
    assert layout.row_dims["user"].numel() == data.num_users

    # A rerun with more iterations continues from the saved replay set instead of starting over.
    cfg = load_config("configs/tests/bet_tiny.yaml", overrides + ["search.bet.iterations=4"])
    again = bet_search(cfg, CFTask(cfg, data), budget, str(run_dir))
    assert [r["iteration"] for r in again.log["iterations"]] == [0, 1, 2, 3]
    assert again.log["iterations"][:3] == result.log["iterations"]

    for variant in ("bet_su", "bet_sr"):
        base = bet_search(cfg, CFTask(cfg, data), budget, "", variant)
        assert budget.used(base.arch) <= budget.bytes
        assert isinstance(base.arch, Architecture) and len(base.finalists) == 1 and not base.add_baselines
    su = bet_search(cfg, CFTask(cfg, data), budget, "", "bet_su")
    assert len(su.arch.tables) == 2  # one size for every user and every item
