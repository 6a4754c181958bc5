"""BET benchmark on CF data: SU vs SR vs BET at several sparsities, as one markdown table.

For each config (a BET config: data, model, `search.bet`), sparsity c and method (bet_su, bet_sr, bet)
and seed, runs the search and its final pick in this process (data loaded once per config;
`runs.search_task`) and reads the returned architecture's test Recall@20 / NDCG@20 (mean ± std over
seeds; the seed drives initialisation, sampling and the
search) and the search wall time. The budget is the paper's: (1 - c) x 128 x (|U| + |I|) parameters,
i.e. `search.budget="(1-c) x uniform-128"` with `search.count=params`, whatever `search.bet.max_dim`
(a smaller d_max only caps the largest row size). Finished runs are read back
from `--out/<run>/result.json`, so an interrupted benchmark continues.

    # the paper's settings (slow: hours per cell on CPU)
    .venv/bin/python tools/bench_cf.py --config configs/bet_gowalla_mf.yaml configs/bet_movielens_mf.yaml
    # a small CPU setting
    .venv/bin/python tools/bench_cf.py --config configs/bet_movielens_mf.yaml --seeds 0 1 \\
        search.bet.max_dim=32 search.bet.iterations=6 search.bet.actions=20 search.bet.finetune_epochs=1 \\
        search.bet.top_k=2 train.epochs=8
    # LightGCN on Gowalla as in docs/results.md (about 1.5 hours for 3 seeds x 3 sparsities x 3 methods)
    .venv/bin/python tools/bench_cf.py --config configs/bet_gowalla_lightgcn.yaml search.bet.max_dim=64 \\
        search.bet.iterations=5 search.bet.actions=20 search.bet.finetune_epochs=1 search.bet.top_k=2 \\
        train.epochs=6 train.patience=2 train.batch_size=8192

Prints the table and writes `--out/summary.md` and `--out/results.json`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from bench_quality import mean_std  # tools/ is on sys.path when this script runs

REPO = Path(__file__).resolve().parents[1]
METHODS = ("bet_su", "bet_sr", "bet")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", nargs="+", required=True, help="BET configs (data + model + search.bet)")
    parser.add_argument("--sparsity", nargs="+", type=float, default=[0.8, 0.9, 0.95])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", default="runs/bench_cf")
    parser.add_argument(
        "--reference-dim", type=int, default=128, help="budget = (1 - c) x this x rows (the paper: 128)"
    )
    parser.add_argument("overrides", nargs="*", help="key=value overrides for every run")
    args = parser.parse_args()

    from torchrec_aes.config import load_config
    from torchrec_aes.data.interactions import load_interactions
    from torchrec_aes.runs import search_task
    from torchrec_aes.tasks.cf import CFTask

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for config in args.config:
        name = Path(config).stem
        base = load_config(config, [*args.overrides, "train.progress=false"])
        data = load_interactions(base.data)
        print(
            f"{name}: {data.num_users} users, {data.num_items} items, {data.train.nnz} train pairs",
            flush=True,
        )
        for sparsity in args.sparsity:
            for method in args.methods:
                runs = []
                for seed in args.seeds:
                    label = f"{name}_c{round(sparsity * 100)}_{method}_s{seed}"
                    run_dir = out / label
                    result_file = run_dir / "result.json"
                    if result_file.exists():
                        runs.append(json.loads(result_file.read_text()))
                        continue
                    cfg = load_config(
                        config,
                        [
                            *args.overrides,
                            "train.progress=false",
                            f"train.seed={seed}",
                            "search.count=params",
                            f"search.budget={1 - sparsity:.6g} x uniform-{args.reference_dim}",
                            f"run_dir={run_dir}",
                        ],
                    )
                    # The same search and final pick as `torchrec-aes search`, on the data loaded once.
                    cfg.search.method = method
                    start = time.perf_counter()
                    _, metrics = search_task(cfg, CFTask(cfg, data))
                    seconds = time.perf_counter() - start
                    record = {
                        "test": metrics["test"],
                        "val": metrics["val"],
                        "winner": metrics.get("winner"),
                        "seconds": seconds,
                        "budget": metrics["budget_bytes"],
                        "used": metrics["budget_used"],
                        "candidates": metrics["search_log"].get("candidates"),
                    }
                    result_file.write_text(json.dumps(record, indent=1))
                    print(
                        f"  {label}: recall@20 {record['test']['recall@20']:.4f} "
                        f"ndcg@20 {record['test']['ndcg@20']:.4f} ({seconds:.0f}s)",
                        flush=True,
                    )
                    runs.append(record)
                rows.append((name, sparsity, method, runs))

    lines = [
        f"seeds {args.seeds}; overrides {args.overrides or 'none'}; "
        f"budget = (1 - c) x {args.reference_dim} x (|U| + |I|) params",
        "",
        "| data | sparsity | method | test Recall@20 | test NDCG@20 | params used / budget "
        "| mean user / item size of the search's first candidate | winner of the final pick | search s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, sparsity, method, runs in rows:
        recall = mean_std([r["test"]["recall@20"] for r in runs])
        ndcg = mean_std([r["test"]["ndcg@20"] for r in runs])
        used = statistics.mean(r["used"] / r["budget"] for r in runs)
        own = [r["candidates"][0]["row_dims"] for r in runs if r.get("candidates")]
        user = statistics.mean(d["user"]["mean"] for d in own) if own else float("nan")
        item = statistics.mean(d["item"]["mean"] for d in own) if own else float("nan")
        winners = ", ".join(str(r.get("winner")) for r in runs)
        seconds = statistics.mean(r["seconds"] for r in runs)
        lines.append(
            f"| {name} | {sparsity:.0%} | {method} | {recall} | {ndcg} | {used:.3f} "
            f"| {user:.1f} / {item:.1f} | {winners} | {seconds:.0f} |"
        )
    text = "\n".join(lines)
    print(text)
    (out / "summary.md").write_text(text + "\n")
    (out / "results.json").write_text(
        json.dumps([{"data": n, "sparsity": s, "method": m, "runs": r} for n, s, m, r in rows], indent=1)
    )


if __name__ == "__main__":
    main()
