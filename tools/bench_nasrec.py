"""NASRec benchmarks: model quality against DLRM and DCN at the same embedding bytes, the supernet's rank
correlation with training from scratch, and search time with 1 and 2 processes.

    # quality: per seed, DLRM and DCN at uniform-16 and a NASRec search at their bytes: NASRec's own
    # result (its best finalist) and the tool's (the final pick's winner), paired test-AUC differences,
    # and the search's cost against one training of NASRec's own model
    .venv/bin/python tools/bench_nasrec.py quality --config configs/nasrec_frappe.yaml --dim 16 \\
        --seeds 0 1 2 --out runs/bench_nasrec_frappe
    # Kendall tau between supernet scores and from-scratch validation results of 20 subnets (DLRM and DCN
    # as graphs, then random ones), each trained from scratch with the config's training
    .venv/bin/python tools/bench_nasrec.py tau --config configs/nasrec_frappe.yaml --subnets 20 \\
        --out runs/bench_nasrec_tau
    # the space: DLRM and DCN hand-built and as block graphs, and random graphs of a space, all at
    # uniform-16 and trained alike (paired test-AUC differences against the hand-built models)
    .venv/bin/python tools/bench_nasrec.py space --config configs/nasrec_synthetic.yaml --dim 16 \\
        --seeds 0 1 2 --random 4 --random-space paper_full --out runs/bench_nasrec_space
    # search wall time with 1 and 2 processes (torchrun, gloo), the ratio printed
    .venv/bin/python tools/bench_nasrec.py speed --config configs/nasrec_frappe.yaml \\
        --out runs/bench_nasrec_speed

Every run is resumable per --out directory (finished runs are read back, not repeated). Runs use the
config as given plus the overrides after the subcommand's arguments (key=value).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import statistics
import time
from pathlib import Path

from harness import (
    finalist_scores,
    kendall_tau,
    mean_std,
    paired_bootstrap,
    run_one,
    scores,
    verdict,
    with_dir,
)


def _own(run: dict) -> dict:
    """NASRec's own result in a search's final pick: its best finalist on validation."""
    return max((r for r in run["finalists"] if not r["baseline"]), key=lambda r: r["val"]["auc"])


def quality(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    variants = {
        "dlrm": ("train", ["model.type=dlrm", f"model.embedding_dim={args.dim}"]),
        "dcn": ("train", ["model.type=dcn", f"model.embedding_dim={args.dim}"]),
        "nasrec": ("search", []),
    }
    runs: dict[str, list[dict]] = {k: [] for k in variants}
    for seed in args.seeds:
        for label, (command, overrides) in variants.items():
            run_dir = out / f"{label}_s{seed}"
            print(f"{label} seed {seed}", flush=True)
            m = run_one(command, args.config, run_dir, [*overrides, f"train.seed={seed}", *args.overrides])
            runs[label].append(with_dir(m, run_dir))
    searches = runs["nasrec"]
    own = [_own(r) for r in searches]
    lines = [
        f"config {args.config}; DLRM and DCN at uniform dim {args.dim} (the budget); seeds {args.seeds}",
        "",
        "| seed | DLRM | DCN | NASRec own (finalist, dense params) | tool (winner) | search + final s | "
        "own training s | cost ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for i, seed in enumerate(args.seeds):
        run, o = searches[i], own[i]
        total = run["search_seconds"] + run.get("final_seconds", 0.0)
        lines.append(
            f"| {seed} | {runs['dlrm'][i]['test']['auc']:.4f} | {runs['dcn'][i]['test']['auc']:.4f} | "
            f"{o['test']['auc']:.4f} ({o['label']}, {o.get('dense_params')}) | "
            f"{run['test']['auc']:.4f} ({run['winner']}) | {total:.0f} | {o['seconds']:.0f} | "
            f"{total / max(o['seconds'], 1e-9):.1f} |"
        )
    lines.append(
        f"| mean | {mean_std([r['test']['auc'] for r in runs['dlrm']])} | "
        f"{mean_std([r['test']['auc'] for r in runs['dcn']])} | "
        f"{mean_std([o['test']['auc'] for o in own])} | "
        f"{mean_std([r['test']['auc'] for r in searches])} | | | |"
    )
    phases = [(r["search_log"]["supernet_seconds"], r["search_log"]["evolution_seconds"]) for r in searches]
    lines += [
        "",
        "Search phases (s, per seed): "
        + ", ".join(f"supernet {a:.0f} + evolution {b:.0f}" for a, b in phases)
        + "; supernet scores of the seeded hand-built graphs vs the best: "
        + "; ".join(
            ", ".join(f"{x['name']} {x['score']:.4f}" for x in r["search_log"].get("seeded", []))
            + f" | best {max(r['search_log']['best_per_generation']):.4f}"
            for r in searches
        ),
        "",
        "Paired test-AUC differences (95% paired bootstrap over test rows):",
        "",
        "| model | vs | per seed | mean [interval] | verdict |",
        "|---|---|---|---|---|",
    ]
    own_scores = [finalist_scores(r, o) for r, o in zip(searches, own, strict=True)]
    compared = {"NASRec own": own_scores, "tool": [scores(r) for r in searches]}
    for label, mine in compared.items():
        for base in ("dlrm", "dcn"):
            pairs = [(a, scores(b)) for a, b in zip(mine, runs[base], strict=True)]
            point, lo, hi = paired_bootstrap(pairs, args.bootstrap)["mean"]
            seeds = ", ".join(f"{p:+.4f}" for p, _, _ in paired_bootstrap(pairs, args.bootstrap)["per_seed"])
            lines.append(
                f"| {label} | {base} | {seeds} | {point:+.4f} [{lo:+.4f}, {hi:+.4f}] | {verdict(lo, hi)} |"
            )
    table = "\n".join(lines)
    print(table)
    (out / "summary.md").write_text(table + "\n")


def _graph_archs(args: argparse.Namespace, out: Path) -> dict[str, Path]:
    """architecture.yaml files at uniform `--dim`: DLRM and DCN as graphs of the config's space, and
    `--random` random graphs of `--random-space` (drawn once, seed 0), keyed by label."""
    from torchrec_aes.config import load_config
    from torchrec_aes.models.blocks import blocks_architecture
    from torchrec_aes.search.nasrec.search import space_of
    from torchrec_aes.search.nasrec.space import dcn_graph, dlrm_graph, random_graph
    from torchrec_aes.tasks.base import get_task

    cfg = load_config(args.config, ["train.progress=false", *args.overrides])
    model, ncfg = cfg.model, cfg.search.nasrec
    space = space_of(ncfg, model)
    schema = get_task(cfg).schema
    graphs = {
        "dlrm_blocks": (space, dlrm_graph(space, list(model.dense_arch), list(model.over_arch))),
        "dcn_blocks": (space, dcn_graph(space, list(model.over_arch))),
    }
    rspace = dataclasses.replace(space, space=args.random_space)
    rng = random.Random(0)
    for i in range(args.random):
        graphs[f"random{i}_{args.random_space}"] = (rspace, random_graph(rng, rspace))
    paths = {}
    for label, (sp, graph) in graphs.items():
        path = out / f"{label}.yaml"
        if not path.exists():
            arch = blocks_architecture(schema, [args.dim] * len(schema.sparse), graph, sp)
            arch.save(str(path))
        paths[label] = path
    return paths


def space_bench(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    variants: dict[str, list[str]] = {
        "dlrm": ["model.type=dlrm", f"model.embedding_dim={args.dim}"],
        "dcn": ["model.type=dcn", f"model.embedding_dim={args.dim}"],
    }
    variants.update({label: [f"arch={path}"] for label, path in _graph_archs(args, out).items()})
    runs: dict[str, list[dict]] = {k: [] for k in variants}
    for seed in args.seeds:
        for label, overrides in variants.items():
            run_dir = out / f"{label}_s{seed}"
            print(f"{label} seed {seed}", flush=True)
            m = run_one("train", args.config, run_dir, [*overrides, f"train.seed={seed}", *args.overrides])
            runs[label].append(with_dir(m, run_dir))
    lines = [
        f"config {args.config}; uniform dim {args.dim}; seeds {args.seeds}",
        "",
        "| model | test AUC | val AUC | best epoch | dense params | train s |",
        "|---|---|---|---|---|---|",
    ]
    for label, rs in runs.items():
        lines.append(
            f"| {label} | {mean_std([r['test']['auc'] for r in rs])} | "
            f"{mean_std([r['val']['auc'] for r in rs])} | "
            f"{statistics.mean(r.get('best_epoch', -1) for r in rs):.1f} | "
            f"{rs[0].get('dense_params', '')} | "
            f"{statistics.mean(r['train_seconds'] for r in rs):.0f} |"
        )
    lines += ["", "Paired test-AUC differences (95% paired bootstrap over test rows):", ""]
    lines += ["| model | vs | mean [interval] | verdict |", "|---|---|---|---|"]
    for label in [k for k in variants if k not in ("dlrm", "dcn")]:
        bases = (
            ["dlrm" if label.startswith("dlrm") else "dcn"] if label.endswith("_blocks") else ["dlrm", "dcn"]
        )
        for base in bases:
            pairs = [(scores(a), scores(b)) for a, b in zip(runs[label], runs[base], strict=True)]
            point, lo, hi = paired_bootstrap(pairs, args.bootstrap)["mean"]
            verdict = "better" if lo > 0 else ("worse" if hi < 0 else "tie")
            lines.append(f"| {label} | {base} | {point:+.4f} [{lo:+.4f}, {hi:+.4f}] | {verdict} |")
    table = "\n".join(lines)
    print(table)
    (out / "summary.md").write_text(table + "\n")


def tau(args: argparse.Namespace) -> None:
    """In one process: train the supernet (the search's own function), sample random subnets under the
    budget, score them with the supernet, train each from scratch, correlate."""
    import torch

    from torchrec_aes.architecture import Architecture
    from torchrec_aes.config import load_config
    from torchrec_aes.models.blocks import BlocksHooks, blocks_architecture
    from torchrec_aes.planning.memory import Budget
    from torchrec_aes.search.base import SearchContext
    from torchrec_aes.search.nasrec.search import seed_graphs, space_of, train_supernet
    from torchrec_aes.search.nasrec.space import Candidate, random_candidate
    from torchrec_aes.tasks.base import get_task
    from torchrec_aes.train.trainer import Trainer

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result_file = out / "tau.json"
    cfg = load_config(args.config, ["train.progress=false", *args.overrides])
    if args.epochs:
        cfg.train.epochs = args.epochs
    task = get_task(cfg)
    ncfg = cfg.search.nasrec
    budget = Budget.parse(cfg.search.budget[0], task.schema, cfg.train.embedding_optimizer, cfg.search.count)
    ctx = SearchContext(cfg, task, budget, run_dir=str(out / "supernet"), section=ncfg)
    space = space_of(ncfg, cfg.model)
    candidates = sorted(cfg.search.candidates)
    done = json.loads(result_file.read_text()) if result_file.exists() else {"subnets": []}
    t0 = time.perf_counter()
    scorer, _ = train_supernet(ctx, ncfg, space, candidates, None)
    rng = random.Random(args.seed)
    # The hand-built models as graphs (at the largest uniform candidate dim that fits), then random ones.
    fitting = [d for d in candidates if budget.fits(Architecture.uniform(task.schema, d))]
    subnets: list[Candidate] = [
        Candidate(g, tuple([max(fitting)] * len(task.schema.sparse)))
        for g in seed_graphs(ncfg, space, cfg.model).values()
    ]
    while len(subnets) < args.subnets:
        c = random_candidate(rng, space, len(task.schema.sparse), candidates, None)
        arch = blocks_architecture(task.schema, list(c.dims), c.graph, space, cfg.search.precision)
        if budget.fits(arch):
            subnets.append(c)
    print(f"supernet + slices {time.perf_counter() - t0:.0f}s", flush=True)
    for i, c in enumerate(subnets):
        if i < len(done["subnets"]):
            continue
        s = scorer.score(c)
        arch = blocks_architecture(task.schema, list(c.dims), c.graph, space, cfg.search.precision)
        torch.manual_seed(cfg.train.seed)
        fitted = Trainer(cfg, task, arch, "", f"subnet{i}", hooks=BlocksHooks(c.graph, space)).fit(test=False)
        row = {
            "key": c.key(),
            "dense_ops": sorted({b.dense_op for b in c.graph.blocks}),
            "supernet_logloss": s["logloss"],
            "supernet_auc": s["auc"],
            "scratch_logloss": fitted["val"]["logloss"],
            "scratch_auc": fitted["val"]["auc"],
        }
        done["subnets"].append(row)
        result_file.write_text(json.dumps(done, indent=1))
        print(f"subnet {i}: {row}", flush=True)
    rows = done["subnets"]
    t_loss = kendall_tau([r["supernet_logloss"] for r in rows], [r["scratch_logloss"] for r in rows])
    t_auc = kendall_tau([r["supernet_auc"] for r in rows], [r["scratch_auc"] for r in rows])
    scratch = [r["scratch_auc"] for r in rows]
    text = (
        f"{len(rows)} subnets under the budget ({args.config}; DLRM and DCN as graphs, then random ones);"
        " "
        f"from scratch: {cfg.train.epochs} epochs (patience {cfg.train.patience}); overrides "
        f"{args.overrides}\n"
        f"from-scratch val AUC {min(scratch):.4f}-{max(scratch):.4f}; supernet val AUC "
        f"{min(r['supernet_auc'] for r in rows):.4f}-{max(r['supernet_auc'] for r in rows):.4f}\n"
        f"Kendall tau(supernet val logloss, scratch val logloss) = {t_loss:.3f}\n"
        f"Kendall tau(supernet val AUC, scratch val AUC) = {t_auc:.3f}\n"
    )
    print(text)
    (out / "summary.md").write_text(text)


def speed(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    overrides = [
        "train.progress=false",
        "search.final_baselines=false",
        "search.nasrec.top_k=1",
        *args.overrides,
    ]
    results = {}
    for procs in (1, 2):
        m = run_one("search", args.config, out / f"procs{procs}", overrides[1:], procs=procs)
        log = m["search_log"]
        results[procs] = {
            "search_seconds": m["search_seconds"],
            "supernet_seconds": log["supernet_seconds"],
            "evolution_seconds": log["evolution_seconds"],
            "scored": log["scored"],
        }
    one, two = results[1], results[2]
    lines = [
        f"config {args.config}; overrides {overrides}",
        "",
        "| | 1 process | 2 processes | ratio 2/1 |",
        "|---|---|---|---|",
    ]
    for key in ("search_seconds", "supernet_seconds", "evolution_seconds"):
        lines.append(f"| {key} | {one[key]:.1f} | {two[key]:.1f} | {two[key] / max(one[key], 1e-9):.2f} |")
    lines.append(f"| scored | {one['scored']} | {two['scored']} | |")
    table = "\n".join(lines)
    print(table)
    (out / "summary.md").write_text(table + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    q = sub.add_parser("quality")
    q.add_argument("--dim", type=int, default=16, help="uniform dim of DLRM/DCN (the budget's)")
    q.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    q.add_argument("--bootstrap", type=int, default=1000)
    t = sub.add_parser("tau")
    t.add_argument("--subnets", type=int, default=20)
    t.add_argument("--epochs", type=int, default=0, help="from-scratch epochs per subnet (0: the config's)")
    t.add_argument("--seed", type=int, default=0, help="seed of the subnet sample")
    g = sub.add_parser("space")
    g.add_argument("--dim", type=int, default=16, help="uniform dim of every model")
    g.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    g.add_argument("--bootstrap", type=int, default=1000)
    g.add_argument("--random", type=int, default=0, help="random graphs to train besides DLRM/DCN")
    g.add_argument("--random-space", default="paper_full", help="the space of those random graphs")
    s = sub.add_parser("speed")
    for p in (q, t, g, s):
        p.add_argument("--config", required=True)
        p.add_argument("--out", required=True)
        p.add_argument("overrides", nargs="*", help="key=value overrides for every run")
    args = parser.parse_args()
    {"quality": quality, "tau": tau, "space": space_bench, "speed": speed}[args.command](args)


if __name__ == "__main__":
    main()
