"""Same seed and world size -> same architecture and metrics, per method, so a run can be repeated exactly."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from tests.conftest import REPO
from torchrec_aes.config import load_config
from torchrec_aes.runs import run_search


def _interactions(path: Path) -> str:
    rng = random.Random(0)
    with open(path, "w") as f:
        for u in range(40):
            liked = sorted(set(rng.choices(range(50), weights=[1 / (1 + i) for i in range(50)], k=12)))
            f.write(" ".join(map(str, [u, *liked])) + "\n")
    return str(path)


def _comparable(metrics: dict) -> dict:
    keys = ("dims", "budget_used", "val", "test", "winner")
    out = {k: metrics.get(k) for k in keys}
    out["finalists"] = [
        {k: r[k] for k in ("label", "bytes", "val", "test")} for r in metrics.get("finalists", [])
    ]
    return out


@pytest.mark.parametrize(
    ("config", "method"),
    [
        ("tiny.yaml", "uniform"),
        ("tiny.yaml", "power_rule"),
        ("adass_tiny.yaml", "adass"),
        ("bet_tiny.yaml", "bet"),
    ],
)
def test_two_runs_with_the_same_seed_give_the_same_architecture_and_metrics(config, method, tmp_path) -> None:
    extra = [f"data.path={_interactions(tmp_path / 'train.txt')}"] if method == "bet" else []
    if method == "adass":
        extra.append("search.adass.rl_updates=15")
    runs = []
    for i in (0, 1):
        cfg = load_config(
            str(REPO / "configs" / "tests" / config),
            [
                f"search.method={method}",
                f"data.cache_dir={tmp_path / 'cache'}",
                f"run_dir={tmp_path / f'run{i}'}",
                "train.epochs=1",
                *extra,
            ],
        )
        runs.append(_comparable(run_search(cfg)))
    assert runs[0] == runs[1]
