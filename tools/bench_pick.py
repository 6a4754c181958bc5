"""Pick regret: how far the final pick's choice is from what full trainings of every finalist would choose.

Each set of finalists is a real search (`torchrec-aes search`, subprocess) run with `search.halving=false`,
so every finalist -- the method's and the zero-cost baselines -- trains its full schedule (early stopping
included) and its per-epoch validation history and test metrics land in metrics.json. A budget list gives
one set per budget (one supernet serves all). Because a resumed training is exact, what any pick scheme
that looks at the first k epochs would have seen is the first k entries of those histories: every scheme
below is evaluated on the same trainings, without training again.

Schemes (per set of n finalists, E = `train.epochs`):
- `full`: every finalist trains fully; the best full validation is chosen (regret on validation is 0 by
  construction; on test it is the noise between val and test).
- `halving`: successive halving as `search/finalists.py` does (rounds at `halving_epochs(E, ceil(log2 n))`
  epochs, the better half by best validation so far goes on, the survivor finishes).
- `extrapolate`: the same rounds, ranked by a converged validation predicted from each curve
  (`extrapolate`: geometric shrinking of the per-epoch gains).
- `at_half`: every finalist trains ceil(E/2) epochs, the best by validation so far finishes.
- `staged_halved`: like with like first -- halving among the method's finalists, halving among the
  baselines -- then the two survivors, each fully trained, compared on validation.
- `staged` (`search.pick=staged`, the default): the method's finalists all train fully, the baselines are
  halved among themselves, and the best on validation of the fully trained ones is chosen.
- `halving` is `search.pick=joint`.

Reported per data set and scheme: regret = best fully trained metric - the chosen finalist's fully trained
metric (test and validation; CF relative to the best), the share of sets within the target (0.001 AUC for
CTR, 2% relative for CF), Kendall tau between the scheme's first-round scores and the full trainings'
validation and test metrics (for `full`, val vs test: the ceiling the split's noise sets), and its cost:
epochs trained by all finalists over the epochs of the chosen one's full training.

    .venv/bin/python tools/bench_pick.py --config configs/frappe_dlrm.yaml --method adass \\
        --budgets 0.05 0.1 0.2 --seeds 0 1 --out runs/bench_pick
    .venv/bin/python tools/bench_pick.py --analyse runs/bench_pick   # tables again, no training

Finished runs are not repeated (resume by rerunning); their checkpoints are deleted once they finish.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

from harness import kendall_tau, run_one

from torchrec_aes.search.finalists import halving_epochs

CF_TARGET, CTR_TARGET = 0.02, 0.001


def finalist_sets(run_dir: Path) -> list[dict]:
    """The finalist sets of one search run (one per budget), each {"run", "metric", "rows", "epochs"}."""
    top = json.loads((run_dir / "metrics.json").read_text())
    subs = [run_dir / f"budget_{i}" for i in range(len(top["budgets"]))] if "budgets" in top else [run_dir]
    config = json.loads(json.dumps(_yaml(run_dir / "config.yaml")))
    out = []
    for sub in subs:
        m = json.loads((sub / "metrics.json").read_text())
        rows = m.get("finalists") or []
        if len(rows) < 2:
            continue
        metric = "auc" if "auc" in rows[0]["val"] else f"recall@{max(config['train']['ranking_k'])}"
        out.append({"run": str(sub), "metric": metric, "rows": rows, "epochs": config["train"]["epochs"]})
    return out


def _yaml(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())


def best_so_far(history: list[float], k: int) -> float:
    seen = [v for v in history[:k] if v is not None]
    return max(seen) if seen else -math.inf


def extrapolate(history: list[float], k: int, prior_ratio: float = 0.5, max_ratio: float = 0.9) -> float:
    """Predicted converged validation from the first k epochs: the last gain continues, shrinking by a
    ratio q per epoch (q from the last two gains, else `prior_ratio`), v_inf = v_k + g_k q / (1 - q); a
    curve that stopped improving predicts its best so far."""
    h = [v for v in history[:k] if v is not None]
    best = max(h) if h else -math.inf
    if len(h) < 2 or len(history) < k:  # one point, or early stopping ended the curve: no trend
        return best
    gain = h[-1] - h[-2]
    if gain <= 0:
        return best
    q = prior_ratio
    if len(h) >= 3 and h[-2] - h[-3] > 0:
        q = min(max(gain / (h[-2] - h[-3]), 0.0), max_ratio)
    return max(best, h[-1] + gain * q / (1 - q))


def simulate(rows: list[dict], epochs: int, scheme: str) -> tuple[int, list[float], list[int]]:
    """(index chosen, first-round scores of every finalist, epochs trained per finalist)."""
    hist = [r["history"] for r in rows]
    full_len = [len(h) for h in hist]
    n = len(rows)
    if scheme == "full":
        scores = [best_so_far(h, epochs) for h in hist]
        return max(range(n), key=lambda i: scores[i]), scores, full_len
    if scheme == "at_half":
        k = math.ceil(epochs / 2)
        scores = [best_so_far(h, k) for h in hist]
        best = max(range(n), key=lambda i: scores[i])
        trained = [min(k, L) for L in full_len]
        trained[best] = full_len[best]
        return best, scores, trained
    if scheme in ("staged_halved", "staged"):
        # Like is compared with like early (the method's finalists among themselves, the baselines among
        # themselves); the survivors are compared fully trained.
        groups = [[i for i in range(n) if rows[i]["baseline"] == b] for b in (False, True)]
        trained = [0] * n
        first = [0.0] * n
        survivors = []
        for b, group in enumerate(groups):
            if not group:
                continue
            if scheme == "staged" and b == 0:  # the method's finalists all train fully
                best_g = max(group, key=lambda i: best_so_far(hist[i], epochs))
                first_g = [best_so_far(h, epochs) for h in hist]
                trained_g = full_len
            else:
                best_g, first_g, trained_g = _halving(hist, epochs, group, best_so_far)
            survivors.append(best_g)
            for i in group:
                trained[i], first[i] = trained_g[i], first_g[i]
        best = max(survivors, key=lambda i: best_so_far(hist[i], epochs))
        return best, first, trained
    score = best_so_far if scheme == "halving" else extrapolate
    return _halving(hist, epochs, list(range(n)), score)


def _halving(hist: list[list[float]], epochs: int, group: list[int], score) -> tuple[int, list, list]:
    """Successive halving over `group`: (survivor, first-round scores, epochs trained per finalist); the
    survivor trains its full schedule."""
    n = len(hist)
    trained = [0] * n
    first = [0.0] * n
    alive = list(group)
    rounds = halving_epochs(epochs, math.ceil(math.log2(len(group)))) if len(group) > 1 else []
    for r, k in enumerate(rounds):
        for i in alive:
            trained[i] = min(k, len(hist[i]))
        scores = {i: score(hist[i], k) for i in alive}
        if r == 0:
            for i in alive:
                first[i] = scores[i]
        alive.sort(key=lambda i: -scores[i])
        alive = alive[: max(1, math.ceil(len(alive) / 2))]
        if len(alive) == 1:
            break
    best = alive[0]
    if not rounds:
        first[best] = best_so_far(hist[best], epochs)
    trained[best] = len(hist[best])
    return best, first, trained


SCHEMES = ("full", "halving", "extrapolate", "at_half", "staged_halved", "staged")


def _mean(values: list[float]) -> float:
    return statistics.mean(values) if values else float("nan")


def analyse(sets: list[dict], label: str) -> list[str]:
    lines = [
        f"### {label}: {len(sets)} finalist sets, {sum(len(s['rows']) for s in sets)} finalists",
        "",
        "| scheme | test regret mean / max | val regret mean / max | within target val / test "
        "| Kendall tau val / test | cost (epochs / one training) | cost, baselines cached |",
        "|---|---|---|---|---|---|---|",
    ]
    for scheme in SCHEMES:
        regrets, vregrets, within, vwithin, taus, vtaus, costs, cached = [], [], 0, 0, [], [], [], []
        for s in sets:
            rows, m = s["rows"], s["metric"]
            test = [r["test"].get(m, float("nan")) for r in rows]
            val = [r["val"].get(m, float("nan")) for r in rows]
            chosen, first, trained = simulate(rows, s["epochs"], scheme)
            cf = m != "auc"
            scale = max(test) if cf else 1.0
            regret = (max(test) - test[chosen]) / scale
            regrets.append(regret)
            vregrets.append((max(val) - val[chosen]) / (max(val) if cf else 1.0))
            within += regret <= (CF_TARGET if cf else CTR_TARGET)
            vwithin += vregrets[-1] <= (CF_TARGET if cf else CTR_TARGET)
            for out, truth in ((taus, test), (vtaus, val)):
                tau = kendall_tau(first, truth)
                if not math.isnan(tau):
                    out.append(tau)
            one = max(len(rows[chosen]["history"]), 1)
            costs.append(sum(trained) / one)
            cached.append(sum(t for t, r in zip(trained, rows, strict=True) if not r["baseline"]) / one)
        lines.append(
            f"| {scheme} | {statistics.mean(regrets):.4f} / {max(regrets):.4f} "
            f"| {statistics.mean(vregrets):.4f} / {max(vregrets):.4f} | {vwithin} / {within} of {len(sets)} "
            f"| {_mean(vtaus):.2f} / {_mean(taus):.2f} | {_mean(costs):.2f} | {_mean(cached):.2f} |"
        )
    lines += ["", "Per set (test metric of each finalist fully trained, epochs; * = best on validation):", ""]
    for s in sets:
        rows, m = s["rows"], s["metric"]
        best_val = max(range(len(rows)), key=lambda i: rows[i]["val"].get(m, -math.inf))
        cells = ", ".join(
            f"{r['label']} {r['test'].get(m, float('nan')):.4f} ({len(r['history'])})"
            + ("*" if i == best_val else "")
            for i, r in enumerate(rows)
        )
        picks = ", ".join(f"{sc}={rows[simulate(rows, s['epochs'], sc)[0]]['label']}" for sc in SCHEMES[1:])
        lines.append(f"- `{s['run']}`: {cells}; picks: {picks}")
    return lines + [""]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", nargs="*", default=[])
    p.add_argument("--method", default="adass")
    p.add_argument("--budgets", nargs="*", default=["0.1"], help="fractions of uniform-64 bytes")
    p.add_argument("--budget-ref", default="uniform-64")
    p.add_argument("--seeds", nargs="*", type=int, default=[0])
    p.add_argument("--set", nargs="*", default=[], help="extra key=value overrides for every run")
    p.add_argument("--out", default="runs/bench_pick")
    p.add_argument("--analyse", nargs="*", default=None, help="only analyse these output directories")
    args = p.parse_args()
    outs = [Path(o) for o in args.analyse] if args.analyse is not None else [Path(args.out)]
    if args.analyse is None:
        budget = "[" + ",".join(f"{b} x {args.budget_ref}" for b in args.budgets) + "]"
        for config in args.config:
            for seed in args.seeds:
                run_dir = Path(args.out) / f"{Path(config).stem}_{args.method}_s{seed}"
                overrides = [f"search.method={args.method}", f"search.budget={budget}", f"train.seed={seed}"]
                run_one("search", config, run_dir, ["search.halving=false", *overrides, *args.set])
    by_data: dict[str, list[dict]] = {}
    for out in outs:
        for run in sorted(p for p in out.iterdir() if (p / "metrics.json").exists()):
            data = run.name.rsplit("_s", 1)[0]
            by_data.setdefault(data, []).extend(finalist_sets(run))
    lines = ["# Pick regret", ""]
    for data, sets in by_data.items():
        lines += analyse(sets, data)
    lines += analyse([s for sets in by_data.values() for s in sets], "all")
    text = "\n".join(lines)
    print(text)
    (outs[0] / "summary.md").write_text(text)


if __name__ == "__main__":
    main()
