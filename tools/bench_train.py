"""Training throughput: 1 process vs `torchrun --nproc_per_node 2`, measured in the same run; with
`--mean-bag-length L`, also multi-hot rows (every field a bag of Poisson(L) ids, mean-pooled) against the
one-hot rows on the same fields.

Runs `torchrec-aes train` on the synthetic data for each world size (and shape) and reads
`examples_per_second` (train steps only, from the trainer) from metrics.json. Prints a table, the 2-vs-1
ratio and the multi-hot / one-hot ratio per world size.

    .venv/bin/python tools/bench_train.py [--rows 200000] [--batch-size 512] [--epochs 1] [--model dlrm]
        [--mean-bag-length 10]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def run(world_size: int, args: argparse.Namespace, workdir: str, bags: float = 0.0) -> dict:
    run_dir = os.path.join(workdir, f"ws{world_size}" + (f"_bags{bags:g}" if bags else ""))
    prefix = (
        [str(BIN / "torchrec-aes")]
        if world_size == 1
        else [
            str(BIN / "torchrun"),
            "--standalone",
            "--nproc_per_node",
            str(world_size),
            "-m",
            "torchrec_aes.cli",
        ]
    )
    overrides = [
        f"data.synthetic.num_examples={args.rows}",
        f"data.cache_dir={workdir}/cache",
        f"train.batch_size={args.batch_size}",
        f"train.epochs={args.epochs}",
        f"model.type={args.model}",
        "train.progress=false",
        "train.checkpoint=false",
    ]
    if bags:
        fields = ",".join(str(f) for f in range(20))  # the 20 fields of the synthetic default
        overrides += [f"data.synthetic.multi_hot_fields=[{fields}]", f"data.synthetic.mean_bag_length={bags}"]
    cmd = [*prefix, "train", str(REPO / "configs" / "synthetic_dlrm.yaml"), "--run-dir", run_dir, *overrides]
    subprocess.run(
        cmd,
        check=True,
        cwd=REPO,
        capture_output=True,
        env=dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}"),
    )
    return json.loads(Path(run_dir, "metrics.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--batch-size", type=int, default=512, help="per rank")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--model", default="dlrm", choices=["dlrm", "dcn"])
    parser.add_argument("--mean-bag-length", type=float, default=0.0, help="0: one-hot rows only")
    args = parser.parse_args()
    shapes = [0.0] + ([args.mean_bag_length] if args.mean_bag_length else [])
    with tempfile.TemporaryDirectory() as workdir:
        results = {(ws, bags): run(ws, args, workdir, bags) for bags in shapes for ws in (1, 2)}
    print(
        f"synthetic {args.rows} rows, {args.model}, batch {args.batch_size}/rank, {os.cpu_count()} CPU cores"
    )
    print(f"{'rows':>16} | {'processes':>9} | {'examples/s':>10} | {'train s':>7} | {'test auc':>8}")
    for (ws, bags), m in results.items():
        speed, seconds, auc = m["examples_per_second"], m["train_seconds"], m["test"]["auc"]
        shape = f"bags of mean {bags:g}" if bags else "one-hot"
        print(f"{shape:>16} | {ws:>9} | {speed:>10.0f} | {seconds:>7.1f} | {auc:>8.4f}")
    for bags in shapes:
        ratio = results[(2, bags)]["examples_per_second"] / results[(1, bags)]["examples_per_second"]
        print(f"ratio 2 processes / 1 process ({'bags' if bags else 'one-hot'}): {ratio:.2f}x")
    if args.mean_bag_length:
        for ws in (1, 2):
            ratio = (
                results[(ws, args.mean_bag_length)]["examples_per_second"]
                / results[(ws, 0.0)]["examples_per_second"]
            )
            print(f"ratio multi-hot / one-hot, {ws} process(es): {ratio:.2f}x")


if __name__ == "__main__":
    main()
