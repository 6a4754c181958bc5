"""Tables larger than one rank: with a per-rank memory cap (`plan.ddr_gb`) below the tables' total bytes
(but above half), the planner must place tables on both of 2 gloo ranks; training, and an AdaS&S search
with its finalists' retraining, still run and meet the cap and the budget.

On CPU TorchRec offers data_parallel, table_wise, column_wise and table_column_wise sharding (row-wise
needs cuda), and column-wise shards are at least 128 columns wide: a single table of dim <= 128 cannot be
split, so it is the set of tables that is larger than one rank here, not one table.
"""

from __future__ import annotations

import pytest
import torch

from tests.conftest import REPO
from tests.distributed.launcher import run_ranks
from torchrec_aes.architecture import Architecture
from torchrec_aes.config import Config, load_config
from torchrec_aes.planning.memory import arch_bytes
from torchrec_aes.planning.plan import make_topology, plan_summary
from torchrec_aes.tasks import get_task
from torchrec_aes.train.trainer import Trainer

pytestmark = pytest.mark.distributed
GiB = 1024**3
CONFIG = str(REPO / "configs" / "tests" / "adass_tiny.yaml")
CAP_SHARE = 0.75
"""The per-rank cap as a share of the uniform-16 tables (the AdaS&S supernet's tables: every table at the
largest candidate, 16)."""
CARDINALITIES = [10_000, 30_000, 20_000, 100_000, 5_000, 50_000]
"""adass_tiny's fields with 100x the rows (15 MB of tables at dim 16): at its own 150 KB, TorchRec's fixed
per-rank reservations (dense parameters, per-batch buffers: about 140 KB) would exceed the cap itself."""


def _config(cache: str, run_dir: str, *overrides: str) -> Config:
    cardinalities = f"data.synthetic.cardinalities=[{','.join(map(str, CARDINALITIES))}]"
    return load_config(CONFIG, [f"data.cache_dir={cache}", f"run_dir={run_dir}", cardinalities, *overrides])


def _cap_bytes(cfg: Config) -> int:
    task = get_task(cfg)
    return int(CAP_SHARE * arch_bytes(Architecture.uniform(task.schema, max(cfg.search.candidates))))


def _ranks_of(plan) -> dict[str, set[int]]:
    (module_plan,) = plan.plan.values()
    return {name: set(ps.ranks or []) for name, ps in module_plan.items()}


def _train_uniform(rank: int, world_size: int, cache: str, run_dir: str, ddr_gb: float) -> dict:
    torch.set_num_threads(1)  # 2 ranks on a shared 2-core machine
    cfg = _config(cache, run_dir, f"plan.ddr_gb={ddr_gb!r}", "train.epochs=2", "train.patience=2")
    task = get_task(cfg)
    arch = Architecture.uniform(task.schema, 16)
    trainer = Trainer(cfg, task, arch, run_dir)
    result = trainer.fit()
    topology = make_topology(world_size, "cpu", ddr_gb=ddr_gb)
    rows = plan_summary(trainer.plan, arch, topology, cfg.train.batch_size, cfg.train.embedding_optimizer)
    return {
        "ranks": _ranks_of(trainer.plan),
        "rank_bytes": [r.ddr_bytes for r in rows],
        "auc": result["test"]["auc"],
        "history": result["history"],
    }


def _search(rank: int, world_size: int, cache: str, run_dir: str, ddr_gb: float) -> dict:
    torch.set_num_threads(1)
    from torchrec_aes.runs import run_search

    cfg = _config(cache, run_dir, f"plan.ddr_gb={ddr_gb!r}")
    metrics = run_search(cfg)
    return {k: metrics[k] for k in ("budget_bytes", "budget_used", "embedding_bytes", "dims", "test")}


@pytest.fixture(scope="module")
def cap(tmp_path_factory) -> tuple[str, int, float]:
    cache = str(tmp_path_factory.mktemp("cache"))
    cap_bytes = _cap_bytes(_config(cache, "unused"))
    return cache, cap_bytes, cap_bytes / GiB


def test_tables_above_one_ranks_cap_are_placed_on_both_ranks_and_train(cap, tmp_path) -> None:
    cache, cap_bytes, ddr_gb = cap
    total = cap_bytes / CAP_SHARE
    assert total / 2 < cap_bytes < total
    r0, r1 = run_ranks(_train_uniform, cache, str(tmp_path / "run"), ddr_gb, world_size=2)
    assert r0["ranks"] == r1["ranks"]
    used = set().union(*r0["ranks"].values())
    assert used == {0, 1}, r0["ranks"]
    assert all(0 < b <= cap_bytes for b in r0["rank_bytes"]), (r0["rank_bytes"], cap_bytes)
    # It trains: the loss falls from epoch to epoch on each rank's share; both ranks see the same metrics.
    for r in (r0, r1):
        assert [h["epoch"] for h in r["history"]] == [0, 1]
        assert r["history"][1]["train_loss"] < r["history"][0]["train_loss"]
    assert [h["val_auc"] for h in r0["history"]] == [h["val_auc"] for h in r1["history"]]
    assert r0["auc"] == r1["auc"]


def test_adass_search_and_retraining_run_under_the_cap_and_meet_the_budget(cap, tmp_path) -> None:
    cache, cap_bytes, ddr_gb = cap
    r0, r1 = run_ranks(_search, cache, str(tmp_path / "search"), ddr_gb, world_size=2)
    assert r0["dims"] == r1["dims"]
    assert r0["budget_used"] <= r0["budget_bytes"]
    assert r0["embedding_bytes"] <= r0["budget_bytes"]
    assert 0.0 <= r0["test"]["auc"] <= 1.0
