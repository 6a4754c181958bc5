"""The shared final pick: finalists and the zero-cost baselines trained from scratch, the best on validation
kept; a search whose own finalist is worse loses to a baseline, and the run says so."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch.nn.functional as F

from tests.conftest import REPO
from tests.helpers import tiny_config, tiny_splits
from torchrec_aes.architecture import Architecture
from torchrec_aes.config import load_config
from torchrec_aes.planning.memory import Budget
from torchrec_aes.report import write_report
from torchrec_aes.runs import run_search
from torchrec_aes.search.base import SearchContext, SearchResult
from torchrec_aes.search.finalists import Finalist, baseline_finalists, halving_epochs, pick_finalist
from torchrec_aes.tasks.ctr import CTRTask
from torchrec_aes.train.hooks import TrainHooks


class Backwards(TrainHooks):
    """Makes a finalist learn the labels reversed (its loss is -2 BCE): a search result that is clearly
    worse than the baselines on validation."""

    def extra_loss(self, batch, outputs):
        return -3 * F.binary_cross_entropy_with_logits(outputs, batch.labels)


def backwards(ctx: SearchContext) -> SearchResult:
    arch = Architecture.from_dims(ctx.schema, [min(ctx.candidates)] * len(ctx.schema.sparse))
    return SearchResult(arch, finalists=[Finalist("backwards", arch, arch, Backwards())])


@pytest.fixture
def registered(registry):
    registry.method("backwards", backwards, tasks=("ctr",))


def _run(tmp_path: Path, *overrides: str) -> dict:
    cfg = load_config(
        str(REPO / "configs" / "tests" / "tiny.yaml"),
        [
            "search.method=backwards",
            f"data.cache_dir={tmp_path / 'cache'}",
            f"run_dir={tmp_path / 'run'}",
            "train.epochs=3",
            *overrides,
        ],
    )
    return run_search(cfg)


def test_a_worse_search_result_loses_to_a_baseline_trained_from_scratch(tmp_path) -> None:
    splits = tiny_splits(n=3000)  # learnable: feature 1's parity and dense 0 decide the label
    cfg = tiny_config()
    cfg.train.epochs = 3
    cfg.search.pick = "joint"
    cfg.search.baselines = ["uniform", "power_rule", "uniform_fp16"]  # the frequency ones: test_frequency
    task = CTRTask(cfg, splits)
    ctx = SearchContext(cfg, task, Budget.parse("0.5 x uniform-16", splits.schema), str(tmp_path))
    mine = Architecture.from_dims(splits.schema, [4] * len(splits.schema.sparse))
    chosen, result, rows = pick_finalist(
        ctx, [Finalist("backwards", mine, mine, Backwards())] + baseline_finalists(ctx)
    )
    by_label = {r["label"]: r for r in rows}
    assert set(by_label) == {"backwards", "uniform", "power_rule", "uniform_fp16"}
    assert chosen.label in ("uniform", "power_rule", "uniform_fp16") and by_label[chosen.label]["chosen"]
    assert by_label["backwards"]["val"]["auc"] < 0.5 < result["val"]["auc"]
    # Successive halving: the worse half stops after the first epoch; the survivor trains on.
    assert by_label["backwards"]["epochs"] == 1 and by_label[chosen.label]["epochs"] >= 2
    assert all(ctx.budget.used(f.arch) <= ctx.budget.bytes for f in baseline_finalists(ctx))


def test_a_staged_pick_trains_the_methods_finalist_fully_before_comparing_it_with_the_baselines(
    tmp_path,
) -> None:
    splits = tiny_splits(n=3000)
    cfg = tiny_config()
    cfg.train.epochs = 4
    cfg.train.patience = 4
    cfg.search.baselines = ["uniform", "power_rule", "uniform_fp16"]
    task = CTRTask(cfg, splits)
    ctx = SearchContext(cfg, task, Budget.parse("0.5 x uniform-16", splits.schema), str(tmp_path))
    mine = Architecture.from_dims(splits.schema, [4] * len(splits.schema.sparse))
    assert cfg.search.pick == "staged"  # the default
    chosen, result, rows = pick_finalist(
        ctx, [Finalist("backwards", mine, mine, Backwards())] + baseline_finalists(ctx)
    )
    by_label = {r["label"]: r for r in rows}
    # The method's own finalists train their whole schedule.
    assert by_label["backwards"]["epochs"] == 4
    # The baselines are halved among themselves (1 epoch, then 2); their survivor trains fully and wins.
    baselines = sorted(r["epochs"] for r in rows if r["baseline"])
    assert baselines == [1, 2, 4] and by_label[chosen.label]["epochs"] == 4 and chosen.baseline
    assert result["val"]["auc"] > by_label["backwards"]["val"]["auc"]


def test_the_report_says_plainly_when_a_baseline_won(tmp_path) -> None:
    schema = tiny_splits(n=10).schema
    arch = Architecture.uniform(schema, 8)
    row = {"bytes": 1000, "epochs": 1, "val": {"auc": 0.6}, "test": {"auc": 0.6}}
    metrics = {
        "finalists": [
            {**row, "label": "adass", "chosen": False, "baseline": False},
            {**row, "label": "uniform", "chosen": True, "baseline": True},
        ]
    }
    write_report(str(tmp_path), arch, metrics)
    text = (tmp_path / "report.md").read_text()
    assert "| uniform | " in text and "**A zero-cost baseline won: uniform.**" in text


def test_without_baselines_the_methods_own_finalist_is_kept(registered, tmp_path) -> None:
    metrics = _run(tmp_path, "search.final_baselines=false")
    assert [r["label"] for r in metrics["finalists"]] == ["backwards"] and metrics["winner"] == "backwards"


def test_successive_halving_doubles_the_epochs_each_round_up_to_the_schedule() -> None:
    assert halving_epochs(10, 3) == [2, 3, 5]  # 5 finalists, 10 epochs: then the survivor trains to 10
    assert halving_epochs(3, 2) == [1, 2]
    assert halving_epochs(1, 2) == [1]


def _ctx(tmp_path: Path, seed: int = 0, cache: str = "") -> SearchContext:
    splits = tiny_splits(n=2000)
    cfg = tiny_config()
    cfg.train.epochs = 2
    cfg.train.seed = seed
    cfg.search.halving = False
    cfg.search.cache_dir = cache
    task = CTRTask(cfg, splits)
    return SearchContext(cfg, task, Budget.parse("0.5 x uniform-16", splits.schema), str(tmp_path))


def test_a_baseline_is_trained_once_and_read_from_the_cache_by_the_next_search(tmp_path) -> None:
    ctx = _ctx(tmp_path / "first", cache=str(tmp_path / "cache"))
    _, first, rows = pick_finalist(ctx, baseline_finalists(ctx))
    assert not any(r["cached"] for r in rows) and all(r["seconds"] > 0 for r in rows)
    # Another run directory (another budget, a rerun, another method) pointed at the same cache.
    again = _ctx(tmp_path / "second", cache=str(tmp_path / "cache"))
    _, second, rows2 = pick_finalist(again, baseline_finalists(again))
    assert all(r["cached"] and r["seconds"] == 0 for r in rows2)
    same = [(r["val"], r["test"], r["history"]) for r in rows]
    assert [(r["val"], r["test"], r["history"]) for r in rows2] == same
    assert second["test"] == first["test"] and second["training_seconds"] == first["training_seconds"] > 0
    # Another seed is another identity: trained, not read.
    other = _ctx(tmp_path / "third", seed=1, cache=str(tmp_path / "cache"))
    _, _, rows3 = pick_finalist(other, baseline_finalists(other))
    assert not any(r["cached"] for r in rows3)


def test_a_cached_result_cut_at_k_epochs_is_what_training_k_epochs_gives(tmp_path) -> None:
    from torchrec_aes.search.finalists import result_at
    from torchrec_aes.train.trainer import Trainer

    ctx = _ctx(tmp_path)
    arch = baseline_finalists(ctx)[0].arch
    full = Trainer(ctx.cfg, ctx.task, arch, str(tmp_path / "full"), "t").fit()
    part = Trainer(ctx.cfg, ctx.task, arch, str(tmp_path / "part"), "t").fit(epochs=1)
    cut = result_at(full, 1, "auc")
    assert cut["val"] == part["val"] and cut["epochs_run"] == part["epochs_run"] == 1


def test_a_search_reports_its_cost_per_phase_and_against_one_training(registered, tmp_path) -> None:
    metrics = _run(tmp_path, "search.final_baselines=false")
    assert metrics["training_seconds"] > 0
    assert metrics["cost_ratio"] == pytest.approx(metrics["wall_seconds"] / metrics["training_seconds"])
    assert {"search", "final_pick"} <= set(metrics["phase_seconds"])
    assert metrics["finalists"][0]["seconds"] > 0
    assert "x one training of the returned architecture" in (tmp_path / "run" / "report.md").read_text()


def test_phase_seconds_are_read_from_any_methods_log() -> None:
    from torchrec_aes.runs import phase_seconds

    log = {
        "supernet": {"seconds": 3.0, "train_seconds": 2.0, "history": [1, 2]},
        "rl": {"seconds": 1.5, "updates": 10},
        "evolution_seconds": 4.0,
        "resumed": True,
    }
    assert phase_seconds(log) == {
        "supernet": 3.0,
        "supernet/train": 2.0,
        "rl": 1.5,
        "evolution": 4.0,
    }
