"""Compression benchmark: AdaS&S over frequency blocks against every free baseline at budgets far below
uniform-64 (1/8 .. 1/64 of its bytes), over seeds, paired on the same test rows.

Per config and seed: one uniform-64 training (the reference) and one search with the whole budget list
(`search.budget=[...]`: one supernet serves every budget), whose final pick trains the method's own
finalists and the zero-cost baselines that fit (same-memory uniform in fp32/fp16, power_rule, mde, hashed).
Prints, per data set and budget: uniform-64, each baseline, the method's own result (its best finalist on
validation), the tool's result (the final pick) and the winner per seed; then the paired differences
(95% interval, Poisson bootstrap over test rows) of the tool's result against uniform-64 and against the
best free baseline, and of the own result against the best baseline; and the search's cost against one
uniform-64 training. Writes `--out/summary.md` and `results.json`; every search run keeps its
`frontier.png` (test AUC vs bytes of each budget's pick with the baselines).

    .venv/bin/python tools/bench_compress.py --config configs/criteo_sample_dlrm.yaml \\
        configs/frappe_dlrm.yaml configs/quickstart.yaml --seeds 0 1 2 --out runs/bench_compress
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from harness import (
    budget_runs,
    finalist_scores,
    mean_std,
    paired_bootstrap,
    run_one,
    scores,
    verdict,
    with_dir,
)

BASELINES = ("uniform", "uniform_fp16", "power_rule", "mde", "hashed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", nargs="+", required=True)
    parser.add_argument("--budgets", nargs="+", type=float, default=[0.125, 0.0625, 0.03125, 0.015625])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--method", default="search.method=adass;search.adass.rows=blocks", help="the search's overrides"
    )
    parser.add_argument("--out", default="runs/bench_compress")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("overrides", nargs="*", help="key=value overrides for every run")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    budgets = [f"{b} x uniform-64" for b in args.budgets]
    lines = [f"seeds {args.seeds}; search {args.method}; overrides {args.overrides or 'none'}", ""]
    results = []
    for config in args.config:
        name = Path(config).stem
        refs, searches, wall = [], [], []
        for seed in args.seeds:
            ref_dir = out / f"{name}_u64_s{seed}"
            refs.append(
                with_dir(
                    run_one(
                        "train",
                        config,
                        ref_dir,
                        ["model.embedding_dim=64", f"train.seed={seed}", *args.overrides],
                    ),
                    ref_dir,
                )
            )
            run_dir = out / f"{name}_search_s{seed}"
            overrides = [
                *args.method.split(";"),
                f"search.budget=[{', '.join(budgets)}]",
                f"train.seed={seed}",
            ]
            summary = run_one("search", config, run_dir, [*overrides, *args.overrides])
            searches.append(budget_runs(summary, run_dir))
            wall.append(summary["wall_seconds"] / refs[-1]["train_seconds"])
        lines += [
            f"## {name}",
            "",
            f"uniform-64 test AUC {mean_std([r['test']['auc'] for r in refs])}; the whole search (every "
            f"budget, final picks included) cost {mean_std(wall)} uniform-64 trainings",
            "",
            "| budget | seed | uniform-64 | " + " | ".join(BASELINES) + " | own | tool | winner |",
            "|---|---|---|" + "---|" * len(BASELINES) + "---|---|---|",
        ]
        for b_index, fraction in enumerate(args.budgets):
            pairs_u64, pairs_base, pairs_own, own_wins, entry = (
                [],
                [],
                [],
                0,
                {"config": name, "budget": fraction},
            )
            for s_index, seed in enumerate(args.seeds):
                run = searches[s_index][b_index]
                rows = {r["label"]: r for r in run["finalists"]}
                own = max((r for r in rows.values() if not r["baseline"]), key=lambda r: r["val"]["auc"])
                base = [rows[b] for b in BASELINES if b in rows]
                best_base = max(base, key=lambda r: r["test"]["auc"]) if base else None
                cells = [f"{rows[b]['test']['auc']:.4f}" if b in rows else "-" for b in BASELINES]
                own_wins += not rows[run["winner"]]["baseline"]
                lines.append(
                    f"| 1/{1 / fraction:g} | {seed} | {refs[s_index]['test']['auc']:.4f} | "
                    + " | ".join(cells)
                    + f" | {own['test']['auc']:.4f} ({own['label']}) | {run['test']['auc']:.4f} "
                    + f"| {run['winner']} |"
                )
                tool = scores(run)
                pairs_u64.append((tool, scores(refs[s_index])))
                if best_base is not None:
                    pairs_base.append((tool, finalist_scores(run, best_base)))
                    pairs_own.append((finalist_scores(run, own), finalist_scores(run, best_base)))
            entry["own_wins"] = own_wins
            for key, pairs in (
                ("tool - uniform-64", pairs_u64),
                ("tool - best baseline", pairs_base),
                ("own - best baseline", pairs_own),
            ):
                if pairs and all(a is not None and b is not None for a, b in pairs):
                    point, lo, hi = paired_bootstrap(pairs, args.bootstrap)["mean"]
                    entry[key] = [point, lo, hi]
            results.append(entry)
        lines += [
            "",
            "| budget | tool - uniform-64 | tool - best baseline | own - best baseline | own wins the pick |",
            "|---|---|---|---|---|",
        ]
        for entry in (e for e in results if e["config"] == name):
            cells = []
            for key in ("tool - uniform-64", "tool - best baseline", "own - best baseline"):
                if key in entry:
                    point, lo, hi = entry[key]
                    cells.append(f"{point:+.4f} [{lo:+.4f}, {hi:+.4f}] {verdict(lo, hi)}")
                else:
                    cells.append("-")
            lines.append(
                f"| 1/{1 / entry['budget']:g} | "
                + " | ".join(cells)
                + f" | {entry['own_wins']}/{len(args.seeds)} |"
            )
        lines.append("")
        print("\n".join(lines), flush=True)
    text = "\n".join(lines)
    (out / "summary.md").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print(f"frontier plots: {out}/*_search_s*/frontier.png")


if __name__ == "__main__":
    main()
