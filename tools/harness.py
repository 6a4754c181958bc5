"""What the benchmarks in tools/ share: launching a CLI run on 1 or N processes (resumable: a finished run
is read back, not repeated), reading a budget list's sub-runs, mean ± std, Kendall's tau, and paired
comparisons of two models on the same test rows (Poisson bootstrap over rows), as TorchRec's
`distributed/benchmark/benchmark_base.py` is shared by its benchmarks.

    from harness import paired_bootstrap, run_one   # tools/ is on sys.path when a tool runs
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def run_cli(cmd: list[str]) -> subprocess.CompletedProcess:
    """Runs a `torchrec-aes` command line on one thread, capturing its output (not checked: the reliability
    checks look at the exit status and the error line themselves)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PATH=f"{BIN}:{os.environ['PATH']}")
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)


def write_interactions(path: Path, shift: int = 0) -> None:
    """A small LightGCN-format file, `user item item ...` (200 users, 12 of 300 items each); `shift` gives
    every user other items, the same counts."""
    rng = np.random.default_rng(1)
    lines = [
        " ".join(str(x) for x in [u, *((rng.choice(300, 12, replace=False) + shift) % 300)])
        for u in range(200)
    ]
    path.write_text("\n".join(lines) + "\n")


def run_one(
    command: str,
    config: str,
    run_dir: Path,
    overrides: list[str],
    keep_checkpoints: bool = False,
    procs: int = 1,
) -> dict:
    """Runs `torchrec-aes COMMAND CONFIG --run-dir RUN_DIR OVERRIDES` (on `procs` processes through
    torchrun) unless RUN_DIR already holds a finished run's metrics.json (benchmarks resume by rerunning);
    returns metrics.json. A finished run keeps its metrics and reports, not its checkpoints."""
    metrics_file = run_dir / "metrics.json"
    if metrics_file.exists():  # resumable: finished runs are not repeated
        return json.loads(metrics_file.read_text())
    launcher = (
        [str(BIN / "torchrec-aes")]
        if procs == 1
        else [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", str(procs), "-m", "torchrec_aes.cli"]
    )
    cmd = [
        *launcher,
        command,
        config,
        "--run-dir",
        str(run_dir),
        "train.progress=false",
        *overrides,
    ]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    print(f"  {run_dir.name}: {time.perf_counter() - start:.0f}s", flush=True)
    if not keep_checkpoints:  # GBs per run: the final pick's baselines keep theirs under baselines/
        for ckpt in list(run_dir.rglob("checkpoints")):
            shutil.rmtree(ckpt, ignore_errors=True)
    return json.loads(metrics_file.read_text())


def with_dir(metrics: dict, run_dir: Path) -> dict:
    return {**metrics, "_run_dir": str(run_dir)}


def budget_runs(summary: dict, run_dir: Path) -> list[dict]:
    """The per-budget sub-runs of a budget-list search, as full metrics dicts."""
    out = []
    for i, _ in enumerate(summary["budgets"]):
        sub = run_dir / f"budget_{i}"
        out.append(with_dir(json.loads((sub / "metrics.json").read_text()), sub))
    return out


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def kendall_tau(x: list[float], y: list[float]) -> float:
    """Kendall's tau-b (ties in either list counted as neither concordant nor discordant)."""
    concordant = discordant = ties_x = ties_y = 0
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            dx, dy = x[i] - x[j], y[i] - y[j]
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                ties_x += 1
            elif dy == 0:
                ties_y += 1
            elif (dx > 0) == (dy > 0):
                concordant += 1
            else:
                discordant += 1
    n0 = concordant + discordant
    denom = ((n0 + ties_x) * (n0 + ties_y)) ** 0.5
    return (concordant - discordant) / denom if denom else 0.0


def scores(run: dict):
    import numpy as np

    rel = run.get("test_scores")
    return None if rel is None else np.load(Path(run["_run_dir"]) / rel)


def finalist_scores(run: dict, row: dict):
    """Test scores [2, N] of one finalist of a search run (cached baselines: their cache entry)."""
    import numpy as np

    path = row.get("test_scores")
    if path is None:
        return None
    full = Path(path) if Path(path).is_absolute() else Path(run["_run_dir"]) / path
    return np.load(full) if full.exists() else None


def weighted_auc(order, labels, weights):
    """AUC of scores sorted by `order` under row weights [B, N] (ties between scores ignored)."""
    import numpy as np

    y = labels[order]
    w = weights[:, order]
    wpos, wneg = w * y, w * (1 - y)
    below = np.cumsum(wneg, axis=1) - wneg  # negative weight strictly before each row
    return (wpos * below).sum(1) / np.maximum(wpos.sum(1) * wneg.sum(1), 1e-12)


def paired_bootstrap(pairs: list[tuple], resamples: int, seed: int = 0) -> dict:
    """AUC(method) - AUC(baseline) per seed and for the mean over seeds, with 95% intervals from a paired
    Poisson bootstrap over test rows. `pairs`: per seed (method scores [2, N], baseline scores [2, N])."""
    import numpy as np

    rng = np.random.default_rng(seed)
    per_seed, draws = [], []
    for a, b in pairs:
        if a.shape != b.shape or not np.array_equal(a[1], b[1]):
            raise SystemExit("paired comparison: the two runs' test rows differ (split or world size?)")
        labels = a[1]
        oa, ob = np.argsort(a[0], kind="stable"), np.argsort(b[0], kind="stable")
        ones = np.ones((1, labels.size))
        point = float(weighted_auc(oa, labels, ones)[0] - weighted_auc(ob, labels, ones)[0])
        d = []
        for start in range(0, resamples, 50):
            w = rng.poisson(1.0, size=(min(50, resamples - start), labels.size)).astype(np.float64)
            d.append(weighted_auc(oa, labels, w) - weighted_auc(ob, labels, w))
        d = np.concatenate(d)
        draws.append(d)
        per_seed.append((point, float(np.quantile(d, 0.025)), float(np.quantile(d, 0.975))))
    mean = np.mean(draws, axis=0)
    point = float(np.mean([p[0] for p in per_seed]))
    return {
        "per_seed": per_seed,
        "mean": (point, float(np.quantile(mean, 0.025)), float(np.quantile(mean, 0.975))),
    }


def verdict(lo: float, hi: float) -> str:
    return "better" if lo > 0 else ("worse" if hi < 0 else "tie")
