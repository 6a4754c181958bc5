"""What routing costs at serving time: iHAS's router against the whole grouped model, measured in one run.

Loads a grouped run directory (`architecture.yaml` of kind `grouped` + `router.pt`), builds its serving
module (`GroupedModel`: router, TorchRec EBC, one head per group) unsharded on CPU, and times on batches
of the run's test rows (`--batch`, default 4096):

1. the router alone (`model.router(kjt)`);
2. the whole model (`model(dense, kjt)`: router + lookup + heads).

Prints median milliseconds per batch, the router's latency per 1k samples, its share of the whole model's
time (the ratio 1 / 2, measured in the same run) and its bytes against the budget.

    .venv/bin/python tools/bench_router.py RUN [--batch 4096] [--repeats 20] [key=value ...]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
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


@torch.no_grad()
def main() -> None:
    from torchrec_aes.architecture import Architecture, kind_of
    from torchrec_aes.config import load_config
    from torchrec_aes.data.dataset import make_batch
    from torchrec_aes.tasks import get_task

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run", help="a grouped (iHAS) run directory")
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: per-core latency)")
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
    model = hooks.make_model(task, ebc).eval()
    test = task.data.test
    keys = task.schema.sparse_names
    n = min(args.batch, len(test))
    batch = make_batch(test, torch.arange(n), keys)
    kjt, dense = batch.sparse_features, batch.dense_features
    router_ms = _median_ms(lambda: model.router(kjt), args.repeats)
    model_ms = _median_ms(lambda: model(dense, kjt), args.repeats)
    metrics = json.load(open(os.path.join(args.run, "metrics.json")))
    router = metrics.get("search_log", {}).get("router", {})
    out = {
        "batch": n,
        "threads": args.threads,
        "groups": len(arch.extra["groups"]["dims"]),
        "router_features": len(router.get("features", [])),
        "router_ms": router_ms,
        "model_ms": model_ms,
        "router_share_of_time": router_ms / model_ms,
        "router_ms_per_1k": router_ms * 1000 / n,
        "router_bytes": router.get("bytes"),
        "router_share_of_budget": router.get("share_of_budget"),
    }
    print(
        f"batch {n}, {out['groups']} groups, router over {out['router_features']} fields, "
        f"{args.threads} thread(s): router {router_ms:.2f} ms, whole model {model_ms:.2f} ms per batch -> "
        f"routing is {out['router_share_of_time']:.1%} of inference time "
        f"({out['router_ms_per_1k']:.3f} ms per 1k samples); router bytes "
        f"{out['router_bytes']} = {out['router_share_of_budget'] or 0:.1%} of the budget"
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
