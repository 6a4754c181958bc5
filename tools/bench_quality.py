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

    # AdaS&S at two budgets (one supernet per seed serves both) against the baselines, paired
    .venv/bin/python tools/bench_quality.py --config configs/frappe_dlrm.yaml --uniform 64 \\
        --methods uniform power_rule adass --budgets 0.5 0.2 --seeds 0 1 2 --out runs/bench_adass_frappe

Seeds change `train.seed` (initialisation, shuffling, search randomness); the data split stays fixed
(`data.split_seed`), so the spread is that of training and search, on one split.

Paired comparisons: every training writes its test logits row by row (`scores/<tag>.npy`), so each search
method is compared with each baseline at the same budget (and with uniform-64) on the same test rows of the
same seed: the AUC difference with a 95% interval from a paired Poisson bootstrap over test rows
(`--bootstrap` resamples; both models get the same row weights), per seed and for the mean over seeds
(rows resampled independently per seed). A difference whose interval contains 0 is a tie. Methods in
`--list-methods` (default adass) run once per seed with the whole budget list (`search.budget=[...]`),
so one supernet serves every budget.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

from harness import budget_runs, mean_std, paired_bootstrap, run_one, scores, verdict, with_dir

from torchrec_aes.search.ihas.cluster import spearman


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", nargs="+", required=True, help="one or more configs")
    parser.add_argument(
        "--uniform", nargs="*", default=[], help="train uniform dims, e.g. 64 or 64:fp16 (fp16 tables)"
    )
    parser.add_argument(
        "--methods",
        nargs="*",
        default=[],
        help="search methods, or variants LABEL=key=value;key=value (e.g. "
        "'adass16=search.method=adass;search.adass.precisions=[fp32, fp16]')",
    )
    parser.add_argument(
        "--budgets", nargs="*", type=float, default=[0.5], help="fractions of uniform-64 bytes"
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", default="runs/bench_quality")
    parser.add_argument(
        "--keep-checkpoints", action="store_true", help="keep each finished run's checkpoints/ (large)"
    )
    parser.add_argument(
        "--list-methods", nargs="*", default=["adass"], help="methods run once per seed with the budget list"
    )
    parser.add_argument("--bootstrap", type=int, default=1000, help="paired bootstrap resamples")
    parser.add_argument(
        "--baselines", nargs="*", default=["uniform", "power_rule", "uniform-64"], help="compared against"
    )
    parser.add_argument("overrides", nargs="*", help="key=value overrides for every run")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    rows = []
    for config in args.config:
        name = Path(config).stem
        for spec in args.uniform:
            dim, _, data_type = spec.partition(":")
            kind = f"uniform-{dim}" + (f"-{data_type}" if data_type else "")
            label = f"{name} {kind}"
            print(label, flush=True)
            runs = []
            for seed in args.seeds:
                run_dir = out / (label.replace(" ", "_") + f"_s{seed}")
                overrides = [f"model.embedding_dim={dim}", f"train.seed={seed}", *args.overrides]
                if data_type:
                    overrides.append(f"model.data_type={data_type}")
                runs.append(
                    with_dir(run_one("train", config, run_dir, overrides, args.keep_checkpoints), run_dir)
                )
            rows.append({"label": label, "config": name, "kind": kind, "budget": None, "runs": runs})
        for spec in args.methods:
            # "adass" or a variant "LABEL=key=value;key=value" (e.g. adass16=search.method=adass;...).
            method, _, rest = spec.partition("=")
            variant = rest.split(";") if rest else [f"search.method={method}"]
            base = next((o.split("=", 1)[1] for o in variant if o.startswith("search.method=")), method)
            budgets = [f"{b} x uniform-64" for b in args.budgets]
            if base in args.list_methods and len(budgets) > 1:
                label = f"{name} {method} @" + "+".join(f"{b:g}" for b in args.budgets)
                print(label, flush=True)
                per_budget: list[list[dict]] = [[] for _ in budgets]
                for seed in args.seeds:
                    run_dir = out / (
                        label.replace(" ", "_").replace("@", "b").replace("+", "_") + f"_s{seed}"
                    )
                    overrides = [*variant, f"search.budget=[{', '.join(budgets)}]", f"train.seed={seed}"]
                    summary = run_one(
                        "search", config, run_dir, [*overrides, *args.overrides], args.keep_checkpoints
                    )
                    for i, m in enumerate(budget_runs(summary, run_dir)):
                        per_budget[i].append(m)
                for b, runs in zip(args.budgets, per_budget, strict=True):
                    rows.append(
                        {
                            "label": f"{name} {method} @{b:g}",
                            "config": name,
                            "kind": method,
                            "budget": b,
                            "runs": runs,
                        }
                    )
                continue
            for b, budget in zip(args.budgets, budgets, strict=True):
                label = f"{name} {method} @{b:g}"
                print(label, flush=True)
                runs = []
                for seed in args.seeds:
                    run_dir = out / (label.replace(" ", "_").replace("@", "b") + f"_s{seed}")
                    overrides = [*variant, f"search.budget={budget}", f"train.seed={seed}"]
                    m = run_one(
                        "search", config, run_dir, [*overrides, *args.overrides], args.keep_checkpoints
                    )
                    runs.append(with_dir(m, run_dir))
                rows.append({"label": label, "config": name, "kind": method, "budget": b, "runs": runs})

    rows += own_rows(rows)
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
        winners = [r.get("own_label") or r.get("winner") for r in runs]
        if any(winners):
            dims_text += " (" + ", ".join(str(w) for w in winners) + ")"
        lines.append(
            f"| {row['label']} | {auc} | {logloss} | {size / 2**20:.2f} MiB | {search:.1f} | {train:.1f} "
            f"| {dims_text} |"
        )
    lines += ["", *planted_lines(rows), "", *paired_lines(rows, args.bootstrap, args.baselines)]
    table = "\n".join(lines)
    print(table)
    (out / "summary.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps(rows, indent=1))
    plot(rows, out / "quality_vs_bytes.png")


def own_rows(rows: list[dict]) -> list[dict]:
    """Per search row, the method's own result: in each run its best finalist on validation that is not a
    zero-cost baseline (what the search found, whether or not the final pick returned it)."""
    out = []
    for row in rows:
        if row["budget"] is None or not all(r.get("finalists") for r in row["runs"]):
            continue
        runs = []
        for run in row["runs"]:
            own = [f for f in run["finalists"] if not f["baseline"]]
            if not own:
                break
            best = max(own, key=lambda f: f["val"]["auc"])
            runs.append(
                {
                    **run,
                    "test": best["test"],
                    "test_scores": best["test_scores"],
                    "embedding_bytes": best["bytes"],
                    "train_seconds": best["seconds"],
                    "dims": None,
                    "own_label": best["label"],
                }
            )
        else:
            label = row["label"].replace(" @", " own @")
            out.append({**row, "label": label, "kind": f"{row['kind']} own", "runs": runs})
    return out


def planted_lines(rows: list[dict]) -> list[str]:
    """For searches on planted synthetic data: do signal-free tables get the smallest dim, do dims follow
    the planted ranks (Spearman), and are the dims the same across seeds?"""
    lines = []
    for row in rows:
        runs = [r for r in row["runs"] if r.get("dims") and row["kind"] not in ("uniform", "power_rule")]
        if not runs:
            continue
        names = list(runs[0]["dims"])
        text = f"- {row['label']}:"
        with_ranks = [r for r in runs if "planted_ranks" in r]  # one table per feature (not grouped)
        if with_ranks:
            planted = with_ranks[0]["planted_ranks"]
            names = list(planted)
            smallest = min(with_ranks[0].get("candidates", [4]))
            free_ok = sum(all(r["dims"][n] == smallest for n in names if planted[n] == 0) for r in with_ranks)
            rho = [spearman([r["dims"][n] for n in names], [planted[n] for n in names]) for r in with_ranks]
            text += (
                f" signal-free tables all at dim {smallest} in {free_ok}/{len(with_ranks)} seeds;"
                f" Spearman(dims, planted ranks) {statistics.mean(rho):.2f} (per seed "
                f"{', '.join(f'{v:.2f}' for v in rho)});"
            )
        # Tables differ between runs when the winner differs in kind (e.g. an iHAS grouped model with
        # router tables against a baseline's one table per feature): a missing table counts as dim None.
        same = sum(len({r["dims"].get(n) for r in runs}) == 1 for n in names)
        lines.append(f"{text} identical dims across seeds for {same}/{len(names)} tables")
    return lines


def paired_lines(rows: list[dict], resamples: int, baselines: list[str]) -> list[str]:
    """Each search method against each baseline at the same budget (and uniform-64), paired per seed."""
    lines = [
        "Paired test-AUC differences (method - baseline; 95% paired bootstrap over test rows; a tie when the "
        "interval contains 0):",
        "",
        "| data | method | vs | per seed: diff [interval] | mean over seeds [interval] | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        if row["budget"] is None and row["kind"].endswith("-fp16"):
            # Half precision for free: uniform-d in fp16 against the same dims in fp32 (expect a tie).
            pairs_with = [row["kind"].removesuffix("-fp16")]
        elif row["budget"] is None or row["kind"] in baselines:
            continue
        else:
            pairs_with = baselines
        for base in pairs_with:
            other = next(
                (
                    r
                    for r in rows
                    if r["config"] == row["config"]
                    and (r["kind"] == base and (r["budget"] == row["budget"] or base.startswith("uniform-")))
                ),
                None,
            )
            if other is None:
                continue
            seeds = min(len(row["runs"]), len(other["runs"]))
            pairs = [(scores(row["runs"][i]), scores(other["runs"][i])) for i in range(seeds)]
            if any(a is None or b is None for a, b in pairs):
                continue
            result = paired_bootstrap(pairs, resamples)
            at = f" @{row['budget']:g}" if row["budget"] is not None else ""
            seeds_text = "; ".join(f"{p:+.4f} [{lo:+.4f}, {hi:+.4f}]" for p, lo, hi in result["per_seed"])
            p, lo, hi = result["mean"]
            lines.append(
                f"| {row['config']} | {row['kind']}{at} | {other['label'].split(' ', 1)[1]} "
                f"| {seeds_text} | {p:+.4f} [{lo:+.4f}, {hi:+.4f}] | {verdict(lo, hi)} |"
            )
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
