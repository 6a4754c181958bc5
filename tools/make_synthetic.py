"""Generates the embedded synthetic data set into a cache directory and prints its planted ranks.

Usage::

    python tools/make_synthetic.py --out data_cache [--rows 100000] [--seed 0]

Writes `<out>/synthetic-<hash>/data.pt` and `planted.json` (the same files `load_synthetic` reads, so a
run with `data.cache_dir=<out>`, the same row count and `data.split_seed=<seed>` skips generation) and
prints, per sparse field, its cardinality, planted rank and how many distinct ids were drawn.
"""

from __future__ import annotations

import argparse
import time

from torchrec_aes.config import DataConfig, SyntheticConfig
from torchrec_aes.data.synthetic import load_synthetic, read_planted, synthetic_cache_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="cache directory (local path or iopath URI)")
    parser.add_argument("--rows", type=int, default=SyntheticConfig.num_examples, help="rows to generate")
    parser.add_argument("--seed", type=int, default=0, help="generator seed (= data.split_seed)")
    args = parser.parse_args(argv)
    if args.rows <= 0:
        parser.error(f"--rows must be positive, got {args.rows}")

    cfg = DataConfig(split_seed=args.seed, synthetic=SyntheticConfig(num_examples=args.rows))
    start = time.perf_counter()
    splits, _ = load_synthetic(cfg, args.out)
    seconds = time.perf_counter() - start

    parts = (splits.train, splits.val, splits.test)
    num_rows = sum(len(p) for p in parts)
    positives = sum(float(p.labels.sum()) for p in parts)
    print(f"{synthetic_cache_dir(args.out, cfg.synthetic, args.seed)}  ({seconds:.1f} s)")
    print(
        f"{num_rows} rows (train/val/test {len(splits.train)}/{len(splits.val)}/{len(splits.test)}), "
        f"{splits.schema.num_dense} dense, {len(splits.schema.sparse)} sparse, "
        f"positive rate {positives / num_rows:.3f}"
    )
    print(f"{'field':<6} {'cardinality':>11} {'true_rank':>9} {'effective':>9} {'distinct_ids':>12}")
    for f, row in enumerate(read_planted(args.out, cfg)):
        distinct = len(set().union(*(p.sparse[:, f].unique().tolist() for p in parts)))
        print(
            f"{row['name']:<6} {row['cardinality']:>11} {row['true_rank']:>9} {row['effective_rank']:>9} "
            f"{distinct:>12}"
        )


if __name__ == "__main__":
    main()
