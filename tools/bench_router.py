"""What grouping costs at serving time: iHAS's routed model against the same model running every head and
against a plain model of the same bytes, measured in one run.

Loads a grouped run directory (`architecture.yaml` of kind `grouped` + `router.pt`), builds its serving
module (`GroupedModel`: router, TorchRec EBC, one head per group) unsharded on CPU, and times on batches
of the run's test rows (`--batches`, default 1000 and 4096 rows), on `--threads` threads (default 1):

1. the router alone (`model.router(kjt)`);
2. the routed model (`model(dense, kjt)`: router + lookup + each row through its group's head only);
3. the whole grouped model (every head on every row, each row keeping its group's score: the way the
   grouped model ran before the routed path);
4. one head: group 0's mixed-dim head on every row after the lookup (no router, no routing), which
   separates what routing costs from what mixed dims (DLRM's per-field projections) cost;
5. a plain model of the same bytes (`model.type` at the largest uniform dim whose tables are not larger
   than the grouped architecture's, router included).

Prints median milliseconds per batch, per 1k rows and rows/s, and the ratios routed / plain, whole /
plain and router / routed (measured in the same run), and the router's bytes against the budget.

With `--train-steps N` it also trains both from scratch for N steps with the one `Trainer` (the run's
config: TorchRec EBC with its fused optimizer, the train pipeline; `--threads` threads) and prints
their training examples/s and the ratio grouped / plain (the time of the training steps only).

    .venv/bin/python tools/bench_router.py RUN [--batches 1000 4096] [--repeats 20] [--train-steps 300] \
        [key=value ...]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import tempfile
import time

import torch
from torchrec.modules.embedding_modules import EmbeddingBagCollection


def _median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def _time_batch(model, plain, dense, kjt, repeats: int) -> dict[str, float]:
    """Median ms of the router, the routed model, every head on every row and the plain model."""

    def whole() -> torch.Tensor:
        return model.group_logits(dense, kjt).gather(1, model.router(kjt)[:, None])

    def one_head() -> torch.Tensor:  # group 0's mixed-dim head on every row: no router, no routing
        pooled = model.sparse_arch(kjt).to_dict()
        return model.heads[0].interact(dense, {f: pooled[f][:, o : o + d] for f, o, d in model.slices[0]})

    return {
        "router": _median_ms(lambda: model.router(kjt), repeats),
        "routed": _median_ms(lambda: model(dense, kjt), repeats),
        "whole": _median_ms(whole, repeats),
        "one_head": _median_ms(one_head, repeats),
        "plain": _median_ms(lambda: plain(dense, kjt), repeats),
    }


def _train_speed(cfg, task, arch, hooks, steps: int) -> float:
    """Training examples/s of `arch` (with `hooks`) over `steps` steps from scratch (no validation)."""
    from torchrec_aes.train.trainer import Trainer

    cfg = copy.deepcopy(cfg)
    cfg.train.epochs, cfg.train.max_steps, cfg.train.checkpoint = 1, steps, False
    cfg.train.limit_val_batches = 1
    with tempfile.TemporaryDirectory() as run_dir:
        result = Trainer(cfg, task, arch, run_dir, "bench", hooks=hooks).fit(test=False)
    return result["examples_per_second"]


def train_lines(cfg, task, train_arch, hooks, plain_arch, steps: int) -> list[str]:
    """Training speed of the grouped model against the plain model of the same bytes, same run."""
    grouped = _train_speed(cfg, task, train_arch, hooks, steps)
    plain = _train_speed(cfg, task, plain_arch, None, steps)
    return [
        f"training, {steps} steps of batch {cfg.train.batch_size}: grouped {grouped:,.0f} examples/s, "
        f"plain {plain:,.0f} examples/s -> grouped / plain time {plain / grouped:.2f}x"
    ]


@torch.no_grad()
def timing(args, model, plain, test, keys) -> list[dict]:
    """Serving latency table (printed) and its rows."""
    from torchrec_aes.data.dataset import make_batch

    print(
        "| rows per batch | router ms | routed ms | whole ms | one head ms | plain ms | routed/plain | "
        "whole/plain | one head/plain | router/routed | routed rows/s | plain rows/s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    results = []
    for size in args.batches:
        n = min(size, len(test))
        batch = make_batch(test, torch.arange(n), keys)
        ms = _time_batch(model, plain, batch.dense_features, batch.sparse_features, args.repeats)
        results.append({"rows": n, "threads": args.threads, **{f"{k}_ms": v for k, v in ms.items()}})
        print(
            f"| {n} | {ms['router']:.2f} | {ms['routed']:.2f} | {ms['whole']:.2f} | {ms['one_head']:.2f} | "
            f"{ms['plain']:.2f} | {ms['routed'] / ms['plain']:.2f} | {ms['whole'] / ms['plain']:.2f} | "
            f"{ms['one_head'] / ms['plain']:.2f} | "
            f"{ms['router'] / ms['routed']:.1%} | {n / ms['routed'] * 1000:,.0f} | "
            f"{n / ms['plain'] * 1000:,.0f} |"
        )
    return results


def main() -> None:
    from torchrec_aes.architecture import Architecture, kind_of
    from torchrec_aes.config import load_config
    from torchrec_aes.models.ctr import build_ctr_model
    from torchrec_aes.planning.memory import arch_bytes
    from torchrec_aes.tasks import get_task

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run", help="a grouped (iHAS) run directory")
    parser.add_argument("--batches", type=int, nargs="+", default=[1000, 4096])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: per-core latency)")
    parser.add_argument("--train-steps", type=int, default=0, help="also time N training steps of both")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the run's config")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(os.path.join(args.run, "config.yaml"), args.overrides)
    task = get_task(cfg)
    path = os.path.join(args.run, "architecture.yaml")
    arch = Architecture.load(path)
    if arch.kind != "grouped":
        raise SystemExit(f"{path}: kind '{arch.kind}'; expected a grouped (iHAS) architecture")
    train_arch, hooks = kind_of(arch).training_form(arch, path, task.schema)
    ebc = EmbeddingBagCollection(tables=train_arch.to_ebc_configs(), device=torch.device("cpu"))
    with torch.no_grad():
        model = hooks.make_model(task, ebc).eval()
    grouped_bytes = arch_bytes(arch)
    dim = max(
        (d for d in range(4, 1025, 4) if arch_bytes(Architecture.uniform(task.schema, d)) <= grouped_bytes),
        default=4,
    )
    plain_ebc = EmbeddingBagCollection(
        tables=Architecture.uniform(task.schema, dim).to_ebc_configs(), device=torch.device("cpu")
    )
    plain = build_ctr_model(cfg.model.type, plain_ebc, task.schema.num_dense, cfg.model).eval()
    test = task.data.test
    keys = task.schema.sparse_names
    metrics = json.load(open(os.path.join(args.run, "metrics.json")))
    groups = len(arch.extra["groups"]["dims"])
    router = next(
        (
            c["router"]
            for c in metrics.get("search_log", {}).get("candidates", [])
            if c["num_groups"] == groups
        ),
        {},
    )
    plain_bytes = arch_bytes(Architecture.uniform(task.schema, dim))
    print(
        f"{groups} groups, router over {len(model.router.features)} fields; "
        f"plain {cfg.model.type} at uniform dim {dim} ({plain_bytes} vs {grouped_bytes} bytes); "
        f"{args.threads} thread(s); median of {args.repeats}"
    )
    results = timing(args, model, plain, test, keys)
    print(f"router bytes {router.get('bytes')} = {router.get('share_of_budget') or 0:.1%} of the budget")
    if args.train_steps:
        for line in train_lines(
            cfg, task, train_arch, hooks, Architecture.uniform(task.schema, dim), args.train_steps
        ):
            print(line)
    print(
        json.dumps(
            {
                "results": results,
                "router_bytes": router.get("bytes"),
                "router_share_of_budget": router.get("share_of_budget"),
            }
        )
    )


if __name__ == "__main__":
    main()
