"""AdaS&S on 2 gloo ranks: every rank samples the same architecture in every supernet step (no broadcast),
and the search returns the same architecture on every rank, within the budget.

A 2-rank run is not expected to return the same architecture as a 1-process run with the same seed: each
step trains on both ranks' batches (twice the examples), so the supernet's weights differ (see
torchrec_aes/search/adass.py, "World size")."""

from __future__ import annotations

import pytest
import torch

from tests.distributed.launcher import run_ranks
from tests.helpers import tiny_config, tiny_splits
from torchrec_aes.architecture import Architecture
from torchrec_aes.planning.memory import Budget
from torchrec_aes.search.adass.search import adass
from torchrec_aes.search.adass.supernet import SupernetTrainer
from torchrec_aes.search.base import SearchContext
from torchrec_aes.tasks.ctr import CTRTask

pytestmark = pytest.mark.distributed


def _context(model_type: str, run_dir: str = "") -> SearchContext:
    splits = tiny_splits(n=3000)
    cfg = tiny_config(model_type)
    cfg.search.candidates = [4, 8, 16]
    cfg.train.epochs = 1
    cfg.search.adass.supernet_epochs = 1
    cfg.search.adass.importance_every = 5
    cfg.search.adass.sandwich_every = 4
    cfg.search.adass.rl_updates = 10
    cfg.search.adass.rl_samples = 4
    cfg.search.adass.rl_eval_rows = 256
    budget = Budget.parse("0.5 x uniform-16", splits.schema)
    return SearchContext(cfg, CTRTask(cfg, splits), budget, run_dir, cfg.search.adass)


def _search(rank: int, world_size: int, model_type: str, run_dir: str) -> dict:
    torch.set_num_threads(1)  # 2 ranks on a shared 2-core machine
    ctx = _context(model_type)
    supernet = SupernetTrainer(ctx, writer=None)
    supernet.hooks.record_choices = True
    log = supernet.train()
    evaluator = supernet.evaluator()  # collective lookup of the val slice; rank 0 gets the evaluator
    supernet.close()
    result = adass(_context(model_type, run_dir))
    return {
        "choices": supernet.hooks.choices,
        "importance": log["importance"],
        "has_evaluator": evaluator is not None,
        "slice_rows": None if evaluator is None else int(evaluator.labels.numel()),
        "dims": result.arch.dims,
    }


@pytest.mark.parametrize("model_type", ["dlrm", "dcn"])
def test_two_ranks_train_the_same_sampled_architectures_and_return_the_same_result(model_type, tmp_path):
    r0, r1 = run_ranks(_search, model_type, str(tmp_path / "run"), world_size=2)
    assert len(r0["choices"]) == 3000 * 8 // 10 // 2 // 64  # every step of the epoch, on both ranks
    assert r0["choices"] == r1["choices"]
    assert len({tuple(c) for c in r0["choices"]}) > 3  # the choices do vary from step to step
    assert r0["importance"] == r1["importance"]
    assert r0["has_evaluator"] and not r1["has_evaluator"]
    assert r0["slice_rows"] == 256  # both ranks' halves of the val slice were gathered
    assert r0["dims"] == r1["dims"]
    ctx = _context(model_type)
    assert ctx.budget.fits(Architecture.from_dims(ctx.schema, r0["dims"]))
