"""Quality benchmark: uniform trainings and searches under budgets, over seeds, as one table.

Each run is a real `torchrec-aes train|search` (subprocess); results are read from its metrics.json.
Prints a markdown table (test AUC / logloss mean ± std over seeds, bytes, wall times), writes it to
`--out/summary.md` with `results.json` and a quality-vs-bytes plot `quality_vs_bytes.png`.

    # uniform dims 16 and 64 of DLRM and DCN on Frappe, 3 seeds
    .venv/bin/python tools/bench_quality.py --config configs/frappe_dlrm.yaml configs/frappe_dcn.yaml \\
        --uniform 16 64 --seeds 0 1 2 --out runs/bench_frappe
    # methods at budgets (fractions of uniform-64 bytes)
    .venv/bin/python tools/bench_quality.py --config configs/quickstart.yaml \\
        --methods uniform power_rule --budgets 0.25 0.5 --seeds 0 1 2 --out runs/bench_synth

Seeds change `train.seed` (initialisation, shuffling, search randomness); the data split stays fixed
(`data.split_seed`), so the spread is that of training and search, on one split.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def run_one(
    command: str, config: str, run_dir: Path, overrides: list[str], keep_checkpoints: bool = False
) -> dict:
    metrics_file = run_dir / "metrics.json"
    if metrics_file.exists():  # resumable: finished runs are not repeated
        return json.loads(metrics_file.read_text())
    cmd = [
        str(BIN / "torchrec-aes"),
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
    if not keep_checkpoints:  # a finished run needs only its metrics; checkpoints are GBs per run
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    return json.loads(metrics_file.read_text())


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", nargs="+", required=True, help="one or more configs")
    parser.add_argument("--uniform", nargs="*", type=int, default=[], help="train uniform dims")
    parser.add_argument("--methods", nargs="*", default=[], help="search methods")
    parser.add_argument(
        "--budgets", nargs="*", type=float, default=[0.5], help="fractions of uniform-64 bytes"
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", default="runs/bench_quality")
    parser.add_argument(
        "--keep-checkpoints", action="store_true", help="keep each finished run's checkpoints/ (large)"
    )
    parser.add_argument("overrides", nargs="*", help="key=value overrides for every run")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    jobs = []  # (label, command, config, overrides)
    for config in args.config:
        name = Path(config).stem
        for dim in args.uniform:
            jobs.append((f"{name} uniform-{dim}", "train", config, [f"model.embedding_dim={dim}"]))
        for budget in args.budgets:
            for method in args.methods:
                label = f"{name} {method} @{budget:g}"
                jobs.append(
                    (
                        label,
                        "search",
                        config,
                        [f"search.method={method}", f"search.budget={budget} x uniform-64"],
                    )
                )
    rows = []
    for label, command, config, overrides in jobs:
        print(label, flush=True)
        per_seed = []
        for seed in args.seeds:
            run_dir = out / (label.replace(" ", "_").replace("@", "b") + f"_s{seed}")
            per_seed.append(
                run_one(
                    command,
                    config,
                    run_dir,
                    [*overrides, f"train.seed={seed}", *args.overrides],
                    keep_checkpoints=args.keep_checkpoints,
                )
            )
        rows.append({"label": label, "runs": per_seed})

    lines = [
        f"seeds {args.seeds}; overrides {args.overrides or 'none'}",
        "",
        "| run | test AUC | test logloss | bytes | search s | train s | dims (seed 0) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        runs = row["runs"]
        auc = mean_std([r["test"]["auc"] for r in runs])
        logloss = mean_std([r["test"]["logloss"] for r in runs])
        size = statistics.mean(r["embedding_bytes"] for r in runs)
        search = statistics.mean(r.get("search_seconds", 0.0) for r in runs)
        train = statistics.mean(r["train_seconds"] for r in runs)
        dims = runs[0].get("dims")
        dims_text = " ".join(str(d) for d in dims.values()) if dims else "uniform"
        lines.append(
            f"| {row['label']} | {auc} | {logloss} | {size / 2**20:.2f} MiB | {search:.1f} | {train:.1f} "
            f"| {dims_text} |"
        )
    lines += ["", *planted_lines(rows)]
    table = "\n".join(lines)
    print(table)
    (out / "summary.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps(rows, indent=1))
    plot(rows, out / "quality_vs_bytes.png")


def _ranks(values: list[float]) -> list[float]:
    """Ranks with ties averaged (for Spearman's correlation)."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2
        i = j + 1
    return ranks


def spearman(x: list[float], y: list[float]) -> float:
    rx, ry = _ranks(x), _ranks(y)
    mx, my = statistics.mean(rx), statistics.mean(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    norm = math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))
    return cov / norm if norm else 0.0


def planted_lines(rows: list[dict]) -> list[str]:
    """For searches on planted synthetic data: do signal-free tables get the smallest dim, do dims follow
    the planted ranks (Spearman), and are the dims the same across seeds?"""
    lines = []
    for row in rows:
        runs = [r for r in row["runs"] if "dims" in r]
        if not runs:
            continue
        names = list(runs[0]["dims"])
        text = f"- {row['label']}:"
        if "planted_ranks" in runs[0]:
            planted = runs[0]["planted_ranks"]
            smallest = min(runs[0].get("candidates", [4]))
            free_ok = sum(all(r["dims"][n] == smallest for n in names if planted[n] == 0) for r in runs)
            rho = [spearman([r["dims"][n] for n in names], [planted[n] for n in names]) for r in runs]
            text += (
                f" signal-free tables all at dim {smallest} in {free_ok}/{len(runs)} seeds;"
                f" Spearman(dims, planted ranks) {statistics.mean(rho):.2f} (per seed "
                f"{', '.join(f'{v:.2f}' for v in rho)});"
            )
        same = sum(len({r["dims"][n] for r in runs}) == 1 for n in names)
        lines.append(f"{text} identical dims across seeds for {same}/{len(names)} tables")
    return lines


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for row in rows:
        runs = row["runs"]
        x = statistics.mean(r["embedding_bytes"] for r in runs) / 2**20
        y = [r["test"]["auc"] for r in runs]
        err = statistics.stdev(y) if len(y) > 1 else 0.0
        ax.errorbar([x], [statistics.mean(y)], yerr=[err], fmt="o", capsize=3, label=row["label"])
    ax.set_xlabel("embedding bytes (MiB, TorchRec estimate)")
    ax.set_ylabel("test AUC (mean ± std over seeds)")
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    print(f"wrote {path.parent / 'summary.md'} and {path}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
