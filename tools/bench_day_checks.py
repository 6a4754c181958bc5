"""Cost of checking TorchRec day files as they are read (`data.binary.check_chunk`: finite dense values,
0/1 labels, ids in range), against reading the same chunks, measured in one run.

Writes Criteo-shaped day files (13 dense, 26 sparse columns; `--rows` rows over two days) to a temporary
directory, reads every chunk the way a rank streams them (`load_npy_range` of dense, labels and ids) and
times the checks on the same chunks. Prints seconds per million rows and the ratio.

    .venv/bin/python tools/bench_day_checks.py [--rows 1000000] [--chunk-rows 65536]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
from torchrec.datasets.criteo import BinaryCriteoUtils

from torchrec_aes.data.binary import check_chunk, find_days, load_sparse_range


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--chunk-rows", type=int, default=65536)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as out:
        half = args.rows // 2
        for d, n in enumerate((half, args.rows - half)):
            np.save(os.path.join(out, f"day_{d}_dense.npy"), rng.random((n, 13), dtype=np.float32))
            np.save(os.path.join(out, f"day_{d}_sparse.npy"), rng.integers(0, 10**6, (n, 26), dtype=np.int32))
            np.save(os.path.join(out, f"day_{d}_labels.npy"), rng.integers(0, 2, (n, 1), dtype=np.int32))
        files = find_days(out)
        limits = [10**6] * 26
        read = check = 0.0
        for f, rows in enumerate(files.rows):
            for left in range(0, rows, args.chunk_rows):
                count = min(args.chunk_rows, rows - left)
                t0 = time.perf_counter()
                dense = BinaryCriteoUtils.load_npy_range(files.dense[f], left, count)
                labels = BinaryCriteoUtils.load_npy_range(files.labels[f], left, count)
                ids = load_sparse_range(files.sparse[f], left, count)
                t1 = time.perf_counter()
                check_chunk(files, f, left, dense, labels, ids, list(range(26)), limits)
                t2 = time.perf_counter()
                read, check = read + t1 - t0, check + t2 - t1
    per_m = 1e6 / args.rows
    print(f"{args.rows} rows, chunks of {args.chunk_rows}, 13 dense + 26 sparse columns")
    print(f"read:  {read * per_m:.3f} s per million rows")
    print(f"check: {check * per_m:.3f} s per million rows")
    print(f"ratio (read + check) / read: {(read + check) / read:.2f}x")


if __name__ == "__main__":
    main()
