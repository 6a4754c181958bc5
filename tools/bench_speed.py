"""AdaS&S speed against plain training, measured in one run.

Runs, one after the other on the same machine:

1. `torchrec-aes train CONFIG model.embedding_dim=<d_max>`: plain training of uniform-d_max (the
   supernet's tables without elastic dims), batch size from the config;
2. `torchrec-aes search CONFIG search.method=adass`: supernet + RL + budget step, then the final pick
   (AdaS&S's finalists and the zero-cost baselines, compared as `search.pick` says), with the same batch
   size; with `--budgets`, one search over that budget list (one supernet for all);
3. the plain training of 1. again (throughput is the mean of 1. and 3.: the load of a shared machine
   drifts).

and reads metrics.json of both. Prints:

* supernet training throughput (examples/s over the supernet's train steps, and over its whole stage 1
  with the importance measurements) vs plain uniform-d_max training, and the ratio (target >= 0.7: the
  elastic supernet should cost little more than plain training);
* the whole search's wall time (supernet + RL + budget step + final pick) as a multiple of one full
  training of uniform-d_max (wall time, early stopping included; target <= 4), and with a
  budget list the cost of each extra budget in the same unit (target <= 1);
* examples/s of the final mixed-dim model vs uniform-d_max under the trainer;
* the whole search as a multiple of one training of the architecture it returned (`cost_ratio` of
  metrics.json, both measured in the search run);
* with `--compare-picks`: the final pick again as `search.pick=joint` (the previous pick) and with the
  zero-cost baselines already cached, each on a copy of the finished supernet and RL state.

    OMP_NUM_THREADS=1 .venv/bin/python tools/bench_speed.py [--config configs/adass_quickstart.yaml] \\
        [--out /tmp/bench_speed] [key=value ...]

Finished run directories under `--out` are reused (delete them to measure again).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

from harness import run_one


def run(
    command: str, config: str, run_dir: Path, overrides: list[str], keep_checkpoints: bool = False
) -> tuple[dict, float]:
    """Runs `torchrec-aes COMMAND CONFIG` (or reuses a finished run); returns metrics.json and wall s."""
    reused = (run_dir / "metrics.json").exists()
    start = time.perf_counter()
    metrics = run_one(command, config, run_dir, overrides, keep_checkpoints)
    wall = float(metrics.get("wall_seconds", 0.0)) if reused else time.perf_counter() - start
    return metrics, wall


def _rerun_pick(
    args: argparse.Namespace, out: Path, name: str, overrides: list[str], baselines: bool
) -> dict:
    """The same search again with another final pick: the finished supernet and RL state of `out/adass`
    are copied (so only the final pick runs), and with `baselines` its trained-baseline cache too."""
    src, dst = out / "adass", out / name
    if not (dst / "metrics.json").exists():
        shutil.rmtree(dst, ignore_errors=True)
        for state in src.rglob("checkpoints/adass"):  # the supernet's, and each budget's RL state
            shutil.copytree(state, dst / state.relative_to(src))
        if baselines:
            shutil.copytree(src / "baselines", dst / "baselines")
    budgets = ["search.budget=[" + ", ".join(f"{b} x uniform-64" for b in args.budgets) + "]"] * bool(
        args.budgets
    )
    metrics, _ = run(
        "search", args.config, dst, ["search.method=adass", *budgets, *overrides, *args.overrides]
    )
    if "budgets" in metrics:  # a budget list: the first budget's run, as for the staged search
        metrics = json.loads((dst / "budget_0" / "metrics.json").read_text())
    return metrics


def compare_picks(args: argparse.Namespace, out: Path, staged: dict, plain_wall: float) -> None:
    """The final pick's cost under `search.pick=joint` (the previous pick) and with the baselines already
    in the cache (a rerun, another budget or method on the same data), beside the staged pick measured
    above, for the (first) budget's search: the phases before the pick are the same in all three (same
    seed), so each whole-search figure is that search's wall time with its final pick replaced."""
    joint = _rerun_pick(args, out, "adass_joint", ["search.pick=joint"], baselines=False)
    cached = _rerun_pick(args, out, "adass_cached", ["search.pick=staged"], baselines=True)
    base = staged["wall_seconds"] - staged["final_seconds"]
    print()
    print(
        f"First budget's search (supernet, RL and budget step {base:.1f} s) with each final pick:\n\n"
        "| final pick | pick seconds | winner (test AUC) | whole search / uniform-64 training | "
        "/ one training of the returned architecture |"
    )
    print("|---|---|---|---|---|")
    for name, m in (("joint (previous)", joint), ("staged", staged), ("staged, baselines cached", cached)):
        whole = base + m["final_seconds"]
        print(
            f"| {name} | {m['final_seconds']:.1f} | {m['winner']} ({m['test']['auc']:.4f}) | "
            f"{whole / plain_wall:.2f}x | {whole / m['training_seconds']:.2f}x |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/adass_quickstart.yaml")
    parser.add_argument("--out", default="runs/bench_speed")
    parser.add_argument("--budgets", nargs="*", type=float, default=[], help="a budget list (x uniform-64)")
    parser.add_argument(
        "--compare-picks",
        action="store_true",
        help="also measure the final pick as search.pick=joint and with the baselines cached",
    )
    parser.add_argument("overrides", nargs="*", help="key=value overrides for both runs")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    from torchrec_aes.config import load_config

    cfg = load_config(args.config, args.overrides)
    d_max = max(cfg.search.candidates)
    uniform = [f"model.embedding_dim={d_max}", *args.overrides]
    # Plain training before and after the search (A-B-A): on a shared machine the load drifts, and the
    # mean of the two brackets the search's conditions better than either.
    plain, plain_wall = run("train", args.config, out / f"uniform-{d_max}", uniform)
    budgets = (
        ["search.budget=[" + ", ".join(f"{b} x uniform-64" for b in args.budgets) + "]"]
        if args.budgets
        else []
    )
    summary, search_wall = run(
        "search",
        args.config,
        out / "adass",
        ["search.method=adass", *budgets, *args.overrides],
        keep_checkpoints=args.compare_picks,  # the copies of --compare-picks start from its saved phases
    )
    plain_after, plain_after_wall = run("train", args.config, out / f"uniform-{d_max}_after", uniform)
    plain_wall = (plain_wall + plain_after_wall) / 2
    per_budget = summary.get("budgets")
    search = json.loads((out / "adass" / "budget_0" / "metrics.json").read_text()) if per_budget else summary

    log = search["search_log"]
    sup = log["supernet"]
    if sup.get("resumed"):
        raise SystemExit(f"{out / 'adass'} resumed a finished supernet: delete it to measure")
    world = int(search.get("world_size", 1))
    examples = sup["steps"] * cfg.train.batch_size * world
    sup_train_speed = examples / sup["train_seconds"]
    sup_stage_speed = examples / sup["seconds"]
    plain_speeds = [plain["examples_per_second"], plain_after["examples_per_second"]]
    plain_speed = sum(plain_speeds) / 2
    final_speed = search["examples_per_second"]
    search_s, final_s = search["search_seconds"], search["final_seconds"]
    rl = log["rl"]

    print(f"{args.config}: batch {cfg.train.batch_size}/rank, {world} process(es), {os.cpu_count()} cores")
    print(f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; budget {cfg.search.budget}")
    print()
    print(f"| what | examples/s | ratio to uniform-{d_max} |")
    print("|---|---|---|")
    print(f"| uniform-{d_max} training (plain), mean of before/after | {plain_speed:.0f} | 1.00 |")
    print(f"|   before the search / after it | {plain_speeds[0]:.0f} / {plain_speeds[1]:.0f} | |")
    print(f"| supernet, train steps only | {sup_train_speed:.0f} | {sup_train_speed / plain_speed:.2f} |")
    print(f"| supernet, whole stage 1 | {sup_stage_speed:.0f} | {sup_stage_speed / plain_speed:.2f} |")
    print(f"| final mixed-dim model (retraining) | {final_speed:.0f} | {final_speed / plain_speed:.2f} |")
    print()
    print("| search phase | seconds |")
    print("|---|---|")
    print(f"| supernet ({sup['steps']} steps, {len(sup['history'])} epochs) | {sup['seconds']:.1f} |")
    print(f"|   of which importance measurements | {sup['importance_seconds']:.1f} |")
    rl_row = f"RL, {rl['updates']} updates + budget step, {rl['evaluations']} scorings"
    print(f"| {rl_row} | {rl['seconds']:.1f} |")
    print(f"| search (supernet + RL + budget step) | {search_s:.1f} |")
    print(f"| final pick ({len(search['finalists'])} finalists, successive halving) | {final_s:.1f} |")
    print(f"| whole run, wall (data loading included) | {search_wall:.1f} |")
    print(f"| one full training of uniform-{d_max}, wall (mean of before/after) | {plain_wall:.1f} |")
    print()
    print(f"supernet throughput / plain uniform-{d_max}: {sup_train_speed / plain_speed:.2f}x (target >=0.7)")
    if per_budget:
        ratio = per_budget[0]["seconds"] / plain_wall
        print(
            f"first budget (supernet included) / one training of uniform-{d_max}: {ratio:.2f}x (target <= 4)"
        )
        for b in per_budget[1:]:
            ratio = b["seconds"] / plain_wall
            print(f"extra budget {b['budget']} / one training of uniform-{d_max}: {ratio:.2f}x (target <= 1)")
    else:
        print(
            f"whole search / one training of uniform-{d_max}: {search_wall / plain_wall:.2f}x (target <= 4)"
        )
    print(f"final model examples/s / uniform-{d_max}: {final_speed / plain_speed:.2f}x")
    print(
        f"whole search / one training of the returned architecture ({search['winner']}, measured in the "
        f"same run): {search['cost_ratio']:.2f}x"
    )
    if args.compare_picks:
        compare_picks(args, out, search, plain_wall)
        for ckpt in list(out.rglob("checkpoints")):  # finished: keep metrics and reports only
            shutil.rmtree(ckpt, ignore_errors=True)
    print(
        f"test AUC: final {search['test']['auc']:.4f}, uniform-{d_max} {plain['test']['auc']:.4f}; "
        f"bytes {search['embedding_bytes'] / 2**20:.1f} MiB vs {plain['embedding_bytes'] / 2**20:.1f} MiB"
    )


if __name__ == "__main__":
    main()
