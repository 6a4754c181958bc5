"""AdaS&S: the budget step never exceeds the budget, sampling behaves as specified, and the search finds
the planted signal-free tables (`torchrec-aes search` end to end: tests/e2e/test_cli_adass.py)."""

from __future__ import annotations

import json
import random

import pytest
import torch
from torchrec.modules.embedding_configs import EmbeddingBagConfig

from tests.conftest import REPO
from tests.helpers import CARDINALITIES, tiny_splits
from torchrec_aes.architecture import Architecture
from torchrec_aes.config import load_config
from torchrec_aes.models.frequency import check_frequency
from torchrec_aes.planning.memory import Budget
from torchrec_aes.search.adass.budget_step import NoiselessJudge, fit_to_budget
from torchrec_aes.search.adass.config import AdaSSConfig, check_config
from torchrec_aes.search.adass.policy import PolicySearch
from torchrec_aes.search.adass.sampler import AdaptiveSampler
from torchrec_aes.search.adass.search import adass, candidate_bytes
from torchrec_aes.search.adass.supernet import model_factory, uses_blocks
from torchrec_aes.search.base import SearchContext, get_method
from torchrec_aes.supernet.scorer import SupernetEvaluator, _CachedLookup, binary_auc
from torchrec_aes.supernet.stats import auc_difference
from torchrec_aes.tasks.ctr import CTRTask

pytestmark = pytest.mark.usefixtures("single_thread")


def _random_bytes(rng: random.Random, num_tables: int, k: int) -> list[list[int]]:
    rows = [rng.randint(1, 10_000) for _ in range(num_tables)]
    return [[r * (4 * d + 4) for d in range(4, 4 * k + 1, 4)] for r in rows]


class HalvesJudge:
    """Scores from two functions (select and confirm halves) and a fixed standard error for comparisons."""

    def __init__(self, select, confirm=None, se: float = 0.0) -> None:
        self.parts = {"select": select, "confirm": confirm or select}
        self.se = se

    def score(self, c, part):
        if part == "all":
            return (self.parts["select"](list(c)) + self.parts["confirm"](list(c))) / 2
        return self.parts[part](list(c))

    def compare(self, a, b, part):
        return self.score(b, part) - self.score(a, part), self.se


@pytest.mark.parametrize("lazy", [False, True])
def test_budget_step_never_exceeds_the_budget_for_random_budgets_and_scores(lazy):
    rng = random.Random(0)
    for trial in range(300):
        num_tables, k = rng.randint(1, 8), rng.randint(1, 5)
        costs = _random_bytes(rng, num_tables, k)
        low, high = sum(r[0] for r in costs), sum(r[-1] for r in costs)
        budget = rng.randint(low, high + high // 4)
        weights = [[rng.random() for _ in range(k)] for _ in range(num_tables)]
        noise = rng.random() * 0.1

        def score(c, w=weights, n=noise, t=trial):
            # Arbitrary (not monotone) quality, deterministic per architecture.
            return sum(w[f][i] for f, i in enumerate(c)) + n * random.Random(hash((t, tuple(c)))).random()

        def other_half(c, w=weights, t=trial):
            return sum(w[f][i] for f, i in enumerate(c)) + 0.1 * random.Random(hash((-t, tuple(c)))).random()

        start = [rng.randrange(k) for _ in range(num_tables)]
        judge = HalvesJudge(score, rng.choice([None, other_half]), se=rng.choice([0.0, 0.01, 0.1]))
        final, _ = fit_to_budget(start, costs, budget, judge, fill=rng.random() < 0.3, lazy=lazy)
        assert sum(costs[f][i] for f, i in enumerate(final)) <= budget, (trial, start, final, budget)


def test_lazy_budget_step_makes_the_exact_choices_when_tables_do_not_interact():
    # An additive score (no interaction between tables): lazy ranking must end where rescoring every move
    # each round ends, with fewer scorings.
    rng = random.Random(3)
    for _ in range(20):
        num_tables, k = rng.randint(2, 8), rng.randint(2, 6)
        costs = _random_bytes(rng, num_tables, k)
        budget = rng.randint(sum(r[0] for r in costs), sum(r[-1] for r in costs))
        gains = [sorted(rng.random() for _ in range(k)) for _ in range(num_tables)]
        calls = {True: 0, False: 0}

        def judge_for(lazy, g=gains, n=calls):
            def score(c):
                n[lazy] += 1
                return sum(g[f][i] for f, i in enumerate(c))

            return HalvesJudge(score, se=0.0)

        start = [k - 1] * num_tables
        exact, _ = fit_to_budget(start, costs, budget, judge_for(False), fill=True)
        lazy, _ = fit_to_budget(start, costs, budget, judge_for(True), fill=True, lazy=True)
        assert lazy == exact and calls[True] <= calls[False]


def test_budget_step_meets_torchrec_budgets_on_a_real_schema():
    splits = tiny_splits(n=100)
    cfg = load_config(None, ["search.candidates=[4,8,16,32]", "search.adass.rows=tables"])
    rng = random.Random(1)
    for _ in range(40):
        fraction = rng.uniform(0.13, 1.1)
        budget = Budget.parse(f"{fraction} x uniform-32", splits.schema)
        ctx = SearchContext(cfg, CTRTask(cfg, splits), budget, section=cfg.search.adass)
        costs = candidate_bytes(ctx)
        if sum(r[0] for r in costs) > budget.bytes:
            with pytest.raises(ValueError, match="below the smallest"):
                fit_to_budget([3] * 5, costs, budget.bytes, NoiselessJudge(lambda c: 0.0))
            continue
        final, _ = fit_to_budget(
            [rng.randrange(4) for _ in range(5)],
            costs,
            budget.bytes,
            NoiselessJudge(lambda c: float(sum(c)) + rng.random() * 0.5),
        )
        arch = Architecture.from_dims(splits.schema, [ctx.candidates[k] for k in final])
        assert budget.fits(arch)


def test_budget_step_grows_only_where_quality_improves_and_frees_useless_bytes():
    costs = [[10, 20, 40]] * 3
    # Only table 1 matters; tables 0 and 2 carry no signal.
    final, moves = fit_to_budget([2, 0, 2], costs, 80, NoiselessJudge(lambda c: float(c[1])))
    assert final == [0, 2, 0]
    assert moves[0].startswith("free-shrink")


def test_budget_step_grows_only_what_the_other_half_of_the_slice_confirms():
    costs = [[10, 20, 40]] * 3
    # Table 0 gains on both halves; on the selection half, tables 1 and 2 seem to gain even more per byte
    # (slice noise), but the confirmation half shows no gain for them.
    real = [0.0, 0.01, 0.02]
    noise_a = [0.0, 0.03, 0.06]

    def half_a(c):
        return real[c[0]] + noise_a[c[1]] + noise_a[c[2]]

    def half_b(c):
        return real[c[0]] - 0.001 * (c[1] + c[2])

    unconfirmed, _ = fit_to_budget([0, 0, 0], costs, 80, HalvesJudge(half_a, half_b, se=0.001), fill=True)
    assert unconfirmed != [2, 0, 0]  # selecting and accepting on one half follows its noise
    final, moves = fit_to_budget([0, 0, 0], costs, 80, HalvesJudge(half_a, half_b, se=0.001))
    assert final == [2, 0, 0], moves
    # A gain the confirming half shows, but within its noise, is not taken.
    kept, _ = fit_to_budget([0, 0, 0], costs, 80, HalvesJudge(half_a, half_b, se=0.05))
    assert kept == [0, 0, 0]


def test_budget_step_judges_the_same_auc_loss_against_the_measured_noise():
    # Tables 1 and 2 lose 0.001 AUC per smaller candidate: within the noise of a small slice that is no
    # loss (shrink, free the bytes); on a slice whose standard error is ten times smaller it is (keep).
    costs = [[10, 20, 40]] * 3

    def slight(c):
        return 0.01 * c[0] + 0.001 * (c[1] + c[2])

    noisy, moves = fit_to_budget([2, 2, 2], costs, 200, HalvesJudge(slight, se=0.002))
    assert noisy == [2, 0, 0] and moves[0].startswith("free-shrink"), moves
    precise, _ = fit_to_budget([2, 2, 2], costs, 200, HalvesJudge(slight, se=0.0001))
    assert precise == [2, 2, 2]


def test_delong_standard_error_matches_a_bootstrap_of_the_paired_auc_difference():
    g = torch.Generator().manual_seed(0)
    n = 4000
    labels = (torch.rand(n, generator=g) < 0.3).float()
    common = torch.randn(n, generator=g) + labels  # what both models see
    a = common + 0.8 * torch.randn(n, generator=g)
    b = common + 0.8 * torch.randn(n, generator=g) + 0.15 * labels
    gain, se = auc_difference(a, b, labels)
    assert gain == pytest.approx(binary_auc(b, labels) - binary_auc(a, labels), abs=1e-9)
    boot = []
    for _ in range(300):
        idx = torch.randint(0, n, (n,), generator=g)
        boot.append(binary_auc(b[idx], labels[idx]) - binary_auc(a[idx], labels[idx]))
    assert se == pytest.approx(torch.tensor(boot).std().item(), rel=0.2)
    assert auc_difference(a, a, labels) == (0.0, 0.0)


def test_sampler_favours_under_performing_candidates_and_keeps_an_epsilon_floor():
    acfg = AdaSSConfig(epsilon=0.2, temperature=0.01, loss_ema=0.0)
    sampler = AdaptiveSampler(num_tables=2, num_candidates=3, acfg=acfg, seed=0)
    step = 1  # not a sandwich step
    sampler.update_loss([0, 0], step, 0.50)
    sampler.update_loss([1, 1], step, 0.52)  # candidate 1 under-performs
    sampler.update_loss([2, 2], step, 0.48)
    probs = sampler.candidate_probs()
    assert probs[0].argmax() == 1 and probs[0, 2] < probs[0, 0]
    assert float(probs.min()) >= 0.2 / 3 - 1e-9
    torch.testing.assert_close(probs.sum(1), torch.ones(2, dtype=torch.float64))


def test_sampler_choices_depend_only_on_seed_step_and_state():
    acfg = AdaSSConfig(sample_fraction=0.5, sandwich_every=5)
    a = AdaptiveSampler(10, 4, acfg, seed=3)
    b = AdaptiveSampler(10, 4, acfg, seed=3)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    assert [a.sample(s) for s in range(30)] == [b.sample(s) for s in range(30)]
    # Sandwich steps: all smallest, then all largest; otherwise half the tables keep the largest.
    assert a.sample(3) == [0] * 10 and a.sample(4) == [3] * 10
    assert sum(k != 3 for k in a.sample(0)) <= 5


def test_important_tables_use_their_sampled_dim_more_often():
    sampler = AdaptiveSampler(
        4, 3, AdaSSConfig(sample_fraction=0.25, importance_uniform=0.0, epsilon=1.0, sandwich_every=0), seed=0
    )
    sampler.update_importance([0.0, 1.0, 0.0, 0.0])
    picked = [sum(k != 2 for k in sampler.sample(s)[1:2]) for s in range(200)]
    others = [sum(k != 2 for k in sampler.sample(s)[2:]) for s in range(200)]
    assert sum(picked) > 100 and sum(others) == 0


def test_policy_search_then_budget_step_find_the_best_architecture_within_budget():
    costs = [[10, 20, 40]] * 4
    acfg = AdaSSConfig(rl_updates=150, rl_samples=8, rl_lr=0.1, penalty=1.0)
    # Tables 0 and 1 gain from size; 2 and 3 do not. The budget fits 0 and 1 at the largest, 2 and 3 smallest.
    gains = [[0.0, 0.02, 0.04], [0.0, 0.02, 0.04], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]

    def score(c):
        return 0.7 + sum(gains[f][k] for f, k in enumerate(c))

    search = PolicySearch(score, costs, 100, acfg, seed=0)
    argmax = search.run()
    assert search.history[-1]["entropy"] < 0.5 * search.history[0]["entropy"]
    assert score(argmax) >= 0.76  # the policy alone may stop at a local optimum (one wide table) ...
    final, _ = fit_to_budget(argmax, costs, 100, NoiselessJudge(score))
    assert final == [2, 2, 0, 0]  # ... which the budget step turns into the best architecture


def test_auc_matches_the_definition_with_ties():
    scores = torch.tensor([0.1, 0.4, 0.35, 0.8, 0.4])
    labels = torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0])
    # Positive/negative pairs ordered correctly: (0.35>0.1), (0.8>both), (0.4>0.1), (0.4=0.4 counts 1/2).
    assert binary_auc(scores, labels) == pytest.approx((1 + 2 + 1.5) / 6)


def test_config_values_out_of_range_name_the_key():
    with pytest.raises(ValueError, match="search.adass.epsilon"):
        check_config(AdaSSConfig(epsilon=1.5))


def test_search_gives_signal_free_tables_the_smallest_candidate_on_planted_data(tmp_path):
    cfg = load_config(
        str(REPO / "configs" / "tests" / "adass_tiny.yaml"),
        [
            f"data.cache_dir={tmp_path / 'cache'}",
            "data.synthetic.num_examples=30000",
            "data.synthetic.signal_scale=2.0",
            "data.synthetic.true_ranks=[0,8,0,8,0,8]",
            "train.batch_size=256",
            "train.embedding_lr=0.1",
            "train.dense_lr=0.003",
            "search.adass.supernet_epochs=4",
            "search.adass.importance_every=25",
            "search.adass.rl_updates=60",
            "search.adass.rl_samples=8",
            "search.adass.rl_eval_rows=3000",
            # With one projection per (table, candidate), rarely trained candidates' projections make noise
            # tables' dims matter on the val slice (1 of 6 seeds right); shared projections: 6 of 6.
            "search.adass.shared_projection=true",
        ],
    )
    task = CTRTask.load(cfg)
    planted = task.planted
    budget = Budget.parse(cfg.search.budget[0], task.schema)
    result = adass(SearchContext(cfg, task, budget, "", cfg.search.adass))
    dims = result.arch.dims
    assert budget.fits(result.arch)
    assert [d for d, r in zip(dims, planted, strict=True) if r == 0] == [4, 4, 4], (dims, planted)
    assert max(d for d, r in zip(dims, planted, strict=True) if r > 0) > 4, (dims, planted)


@pytest.mark.parametrize("model_type", ["dlrm", "dcn"])
def test_evaluator_scores_like_the_supernet_itself(model_type):
    # The evaluator precomputes what no architecture changes (DLRM: dense arch, projected embeddings);
    # its scores must be those of the supernet run on the slice, for any choice (-1 = table zeroed).
    torch.manual_seed(0)
    cfg = load_config(
        None, ["search.candidates=[4,8,16]", f"model.type={model_type}", "model.dense_arch=[8,8]"]
    )
    schema = tiny_splits(n=10).schema
    configs = Architecture.uniform(schema, 16).to_ebc_configs()
    n = 500
    pooled = {f.name: torch.randn(n, 16) for f in schema.sparse}
    dense, labels = torch.randn(n, schema.num_dense), (torch.rand(n) < 0.3).float()
    build = model_factory(cfg, [4, 8, 16], schema.num_dense)
    choices = [[random.Random(i).randrange(-1, 3) for _ in configs] for i in range(6)]
    _assert_scores_like_the_supernet(build, configs, [4, 8, 16], pooled, dense, labels, choices, 1e-9)


def _assert_scores_like_the_supernet(build, configs, candidates, pooled, dense, labels, choices, tol):
    """The evaluator's AUC of each choice (candidate index per table, -1 = zeroed) equals the AUC of the
    supernet model itself with those dims."""
    model = build(_CachedLookup(configs, pooled))
    evaluator = SupernetEvaluator(build, configs, candidates, pooled, dense, labels, model.state_dict())
    reference = build(_CachedLookup(configs, pooled))
    reference.load_state_dict(model.state_dict())
    reference.eval()
    elastic = next(m for m in reference.modules() if hasattr(m, "set_dims"))
    dims = [c if isinstance(c, int) else c[0] for c in candidates]
    for choice in choices:
        elastic.set_dims([dims[k] if k >= 0 else 0 for k in choice])
        with torch.no_grad():
            expected = binary_auc(reference(dense, None), labels)
        assert evaluator.auc(choice) == pytest.approx(expected, abs=tol)


def test_tiny_schema_has_the_expected_tables():
    # Guards the constants the tests above rely on.
    assert len(CARDINALITIES) == 5


def test_a_budget_list_trains_one_supernet_and_writes_a_sub_run_and_frontier_per_budget(tmp_path):
    from torchrec_aes.runs import run_search

    run = tmp_path / "run"
    cfg = load_config(
        str(REPO / "configs" / "tests" / "adass_tiny.yaml"),
        [
            f"data.cache_dir={tmp_path / 'cache'}",
            f"run_dir={run}",
            "search.budget=[0.6 x uniform-16, 0.35 x uniform-16]",
            "search.adass.rl_updates=10",
        ],
    )
    summary = run_search(cfg)
    first, second = summary["budgets"]
    assert first["budget_used"] <= first["budget_bytes"] and second["budget_used"] <= second["budget_bytes"]
    assert second["budget_bytes"] < first["budget_bytes"]
    logs = [json.loads((run / f"budget_{i}" / "metrics.json").read_text())["search_log"] for i in (0, 1)]
    assert "history" in logs[0]["supernet"] and logs[1]["supernet"] == {"shared": True}  # trained once
    assert (run / "checkpoints" / "adass" / "supernet_eval.pt").exists()
    assert (run / "budget_1" / "architecture.yaml").exists() and (run / "budget_1" / "plan.json").exists()
    frontier = json.loads((run / "frontier.json").read_text())
    assert [p["budget_bytes"] for p in frontier["points"]] == [first["budget_bytes"], second["budget_bytes"]]
    assert {"uniform", "power_rule"} <= {p["label"] for p in frontier["points"][0]["picks"]}
    assert (run / "frontier.png").stat().st_size > 0 and "frontier.png" in (run / "report.md").read_text()


def test_a_supernet_stopped_after_an_epoch_resumes_exactly(tmp_path):
    # Stage 1 runs in the one Trainer: the sampler's state rides in its checkpoints, the optimizers' too.
    from tests.helpers import tiny_config
    from torchrec_aes.search.adass.supernet import SupernetTrainer

    def supernet(epochs: int, run_dir: str) -> tuple[dict, list[float]]:
        splits = tiny_splits(n=2000)
        cfg = tiny_config()
        cfg.search.candidates = [4, 8, 16]
        cfg.search.adass.supernet_epochs = epochs
        cfg.search.adass.importance_every = 7
        cfg.train.patience = 5
        budget = Budget.parse("0.5 x uniform-16", splits.schema)
        ctx = SearchContext(cfg, CTRTask(cfg, splits), budget, run_dir, cfg.search.adass)
        trainer = SupernetTrainer(ctx, writer=None)
        log = trainer.train()
        evaluator = trainer.evaluator()
        return log, [evaluator.auc([k] * 5) for k in range(3)]

    whole_log, whole_scores = supernet(3, str(tmp_path / "whole"))
    supernet(1, str(tmp_path / "part"))  # "killed" after the first epoch
    resumed_log, resumed_scores = supernet(3, str(tmp_path / "part"))
    assert [h["train_loss"] for h in resumed_log["history"]] == [
        h["train_loss"] for h in whole_log["history"]
    ]
    assert resumed_log["importance"] == whole_log["importance"]
    assert resumed_scores == whole_scores


def test_blocks_evaluator_scores_like_the_supernet_with_blocks_pooled_per_feature():
    # With frequency blocks the elastic EBC sits inside a per-feature pooling; the evaluator stands in for
    # both, and a block's "shared row" option scores as the block zeroed.
    torch.manual_seed(0)
    cfg = load_config(None, ["search.candidates=[4,8,16]", "model.dense_arch=[8,8]"])
    blocks = [("a", ["a__b0", "a__b1"]), ("b", ["b__b0"]), ("c", ["c__b0", "c__b1", "c__b2"])]
    configs = [
        EmbeddingBagConfig(name=f"t_{k}", embedding_dim=16, num_embeddings=10, feature_names=[k])
        for _, keys in blocks
        for k in keys
    ]
    n = 400
    pooled = {c.feature_names[0]: torch.randn(n, 16) for c in configs}
    dense, labels = torch.randn(n, 3), (torch.rand(n) < 0.3).float()
    build = model_factory(cfg, [4, 8, 16], 3, groups=blocks)
    options = [(0, "fp32"), (4, "fp32"), (8, "fp32"), (16, "fp32")]
    choices = [[random.Random(i).randrange(0, 4) for _ in configs] for i in range(6)]
    _assert_scores_like_the_supernet(build, configs, options, pooled, dense, labels, choices, 1e-6)


def test_blocks_search_returns_a_frequency_architecture_far_below_every_uniform_table(tmp_path):
    cfg = load_config(
        str(REPO / "configs" / "tests" / "adass_tiny.yaml"),
        [
            f"data.cache_dir={tmp_path / 'cache'}",
            "search.adass.rows=blocks",
            "search.adass.rl_updates=10",
            "search.budget=0.03125 x uniform-64",
        ],
    )
    task = CTRTask.load(cfg)
    budget = Budget.parse(cfg.search.budget[0], task.schema)
    ctx = SearchContext(cfg, task, budget, "", cfg.search.adass)
    with pytest.raises(ValueError, match="every table at dim 4 in fp32"):
        budget.check_feasible(task.schema, cfg.search.candidates)
    result = adass(ctx)
    arch = result.arch
    assert arch.kind == "frequency" and budget.fits(arch)
    check_frequency(arch, task.schema)
    assert {t.embedding_dim for t in arch.tables if t.num_embeddings > 1} <= set(cfg.search.candidates)
    assert all(f.arch.kind == "frequency" and budget.fits(f.arch) for f in result.finalists)
    tiny = Budget.parse("50B", task.schema)
    with pytest.raises(ValueError, match="every frequency block one shared row of dim 4"):
        get_method("adass").check_floor(SearchContext(cfg, task, tiny, "", cfg.search.adass))
    # The default, rows=auto: blocks exactly when no per-table architecture fits.
    cfg.search.adass.rows = "auto"
    assert uses_blocks(ctx)
    roomy = Budget.parse("0.6 x uniform-16", task.schema)
    assert not uses_blocks(SearchContext(cfg, task, roomy, "", cfg.search.adass))
