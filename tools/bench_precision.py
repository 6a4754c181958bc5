"""Real fp16 tables against simulated fp16, measured in one run.

For each seed, on the data of `--config`:

1. trains uniform-d in fp32 and tests it;
2. rounds that model's table weights to fp16 in place (what AdaS&S's supernet simulates: fp16 storage of
   weights trained in fp32) and tests again;
3. trains uniform-d with real fp16 tables (FBGEMM keeps the weights in fp16, every update rounded) and
   tests it.

Prints test AUC of each and the paired differences (2 - 1: the cost of storing in fp16; 3 - 1: the cost of
training in fp16), mean ± std over seeds.

    OMP_NUM_THREADS=1 .venv/bin/python tools/bench_precision.py --config configs/frappe_dlrm.yaml --dim 64 \\
        --seeds 0 1 2 [key=value ...]
"""

from __future__ import annotations

import argparse
import statistics

import torch
from torch.distributed._shard.sharded_tensor import ShardedTensor


@torch.no_grad()
def round_tables_to_fp16(model: torch.nn.Module) -> int:
    """Rounds every embedding table's weights (local shards) to fp16 values in place; returns how many."""
    count = 0
    for key, value in model.state_dict().items():
        if "embedding_bags" not in key or not key.endswith("weight"):
            continue
        tensors = [s.tensor for s in value.local_shards()] if isinstance(value, ShardedTensor) else [value]
        for t in tensors:
            t.copy_(t.half().to(t.dtype))
        count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    from torchrec_aes.architecture import Architecture
    from torchrec_aes.config import load_config
    from torchrec_aes.tasks import get_task
    from torchrec_aes.train.trainer import Trainer

    rows = []
    task = None
    for seed in args.seeds:
        cfg = load_config(args.config, [*args.overrides, f"train.seed={seed}", "train.progress=false"])
        task = task or get_task(cfg)
        task.cfg = cfg
        fp32 = Trainer(cfg, task, Architecture.uniform(task.schema, args.dim))
        trained = fp32.fit()
        tables = round_tables_to_fp16(fp32.model)
        assert tables > 0
        stored = task.test(fp32.model, fp32.env, None)
        real = Trainer(cfg, task, Architecture.uniform(task.schema, args.dim, "fp16")).fit()
        rows.append((trained["test"]["auc"], stored["auc"], real["test"]["auc"]))
        a, b, c = rows[-1]
        print(f"seed {seed}: fp32 {a:.4f}, fp32 stored as fp16 {b:.4f}, fp16 {c:.4f}", flush=True)

    def ms(values: list[float]) -> str:
        return (
            f"{statistics.mean(values):+.4f} ± {statistics.stdev(values):.4f}"
            if len(values) > 1
            else f"{values[0]:+.4f}"
        )

    print()
    print(f"| {args.config} uniform-{args.dim}, seeds {args.seeds} | test AUC |")
    print("|---|---|")
    print(f"| fp32 | {ms([r[0] for r in rows])} |")
    print(f"| fp32 weights rounded to fp16 (simulated storage) - fp32 | {ms([r[1] - r[0] for r in rows])} |")
    print(f"| fp16 tables trained (real) - fp32 | {ms([r[2] - r[0] for r in rows])} |")


if __name__ == "__main__":
    main()
