"""Data at scale: peak memory and throughput of streamed TorchRec day files against loading them whole.

For each size (default 1M, 4M and 16M rows) the planted synthetic data is written in TorchRec's
preprocessed Criteo format (`day_*_{dense,sparse,labels}.npy`) and, in the same run:

1. the reader alone (`data.streaming=always`): one pass over this rank's training batches;
2. training (`torchrec-aes train`, `train.max_steps` steps, then a full validation and test pass),
   streamed and in memory (`data.streaming=never`: the same files loaded whole), `--repeats` times each
   (interleaved; the median is reported), on 1 process, and once on `torchrun` with 2 processes
   (streamed); with `--eval-batches N`, once more evaluating only N validation and test batches
   (`train.limit_val_batches`, `train.limit_test_batches`: exact AUC keeps every evaluated prediction,
   so full evaluation grows with the val/test splits);
3. an AdaS&S search (`--search`, 1 process, streamed and in memory; small supernet and RL phase).

Every measurement runs in a process of its own and reports its kernel peak resident set (VmHWM) per
rank. Printed: peak RSS per rank, reader and training examples/s, as ratios against the smallest size and
against the in-memory path measured in the same run.

The generator holds all rows in memory (~1.4 GB per 1M rows), so only the smallest size is generated; a
larger size repeats its rows (train days repeated, the val/test day's halves repeated) -- the same bytes
per row, tables and id distribution, which is what memory and throughput depend on; it is not more
information for a model.

    .venv/bin/python tools/bench_stream.py [--sizes 1000000 4000000 16000000] [--steps 300] [--repeats 3]
        [--eval-batches N] [--search] [--two-procs] [--tsv] [--no-binary] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CONFIG = REPO / "configs" / "synthetic_dlrm.yaml"


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM), MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


# -- children: one measurement each, reporting to a JSON file per rank --------------------------------
def child(argv: list[str]) -> None:
    mode, out, config, *overrides = argv
    rank = int(os.environ.get("RANK", "0"))
    from torchrec_aes.config import load_config

    cfg = load_config(config, overrides)
    report: dict = {}
    if mode == "load":
        from torchrec_aes.data.load import load_data

        t0 = time.perf_counter()
        splits = load_data(cfg.data)
        report = {
            "seconds": time.perf_counter() - t0,
            "rows": len(splits.train) + len(splits.val) + len(splits.test),
        }
    elif mode == "reader":
        from torchrec_aes.data.load import load_data

        splits = load_data(cfg.data)
        rows, t0 = 0, time.perf_counter()
        for batch in splits.train.batches(splits.schema.sparse_names, cfg.train.batch_size, shuffle=True):
            rows += len(batch.labels)
        report = {"rows": rows, "examples_per_second": rows / (time.perf_counter() - t0)}
    elif mode == "train":
        from torchrec_aes.runs import run_train

        metrics = run_train(cfg)
        report = {k: metrics[k] for k in ("examples_per_second", "wall_seconds", "steps")}
        report["test_auc"] = metrics["test"]["auc"]
    elif mode == "search":
        from torchrec_aes.runs import run_search

        t0 = time.perf_counter()
        metrics = run_search(cfg)
        report = {"wall_seconds": time.perf_counter() - t0, "test_auc": metrics["test"]["auc"]}
    report["peak_rss_mb"] = peak_rss_mb()
    Path(f"{out}.rank{rank}.json").write_text(json.dumps(report))


def measure(
    mode: str, workdir: Path, name: str, overrides: list[str], procs: int = 1, config: Path = CONFIG
) -> list[dict]:
    """Runs one child (`procs` ranks) and returns each rank's report."""
    out = workdir / "reports" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    launcher = (
        [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", str(procs)]
        if procs > 1
        else [sys.executable]
    )
    run_dir = workdir / "runs" / name
    cmd = [
        *launcher, __file__, "--child", mode, str(out), str(config), f"run_dir={run_dir}",
        "train.progress=false", "train.checkpoint=false", *overrides,
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{name}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
    shutil.rmtree(run_dir, ignore_errors=True)
    return [json.loads(Path(f"{out}.rank{r}.json").read_text()) for r in range(procs)]


def median_run(reports: list[list[dict]]) -> list[dict]:
    """Of repeated runs, the one with the median rank-0 examples/s; every run's figure is kept beside it."""
    ordered = sorted(reports, key=lambda r: r[0]["examples_per_second"])
    chosen = [dict(x) for x in ordered[(len(ordered) - 1) // 2]]
    chosen[0]["examples_per_second_runs"] = [r[0]["examples_per_second"] for r in reports]
    return chosen


# -- data ----------------------------------------------------------------------------------------------
def write_sizes(workdir: Path, sizes: list[int], days_per_base: int = 8) -> dict[int, Path]:
    """The planted data at the smallest size in day files, and each larger size as its repetition."""
    from torchrec_aes.config import load_config
    from torchrec_aes.data.binary import files_key, find_days, write_days, write_meta
    from torchrec_aes.io import save_numpy_atomic
    from torchrec_aes.tasks import get_task

    base_rows = min(sizes)
    cfg = load_config(
        str(CONFIG), [f"data.synthetic.num_examples={base_rows}", f"data.cache_dir={workdir}/cache"]
    )
    splits = get_task(cfg).data
    base = workdir / f"npy_{base_rows}"
    files = write_days(splits, str(base), days_per_base)
    sizes_of_tables = [f.num_embeddings for f in splits.schema.sparse]
    del splits
    out = {}
    for size in sorted(sizes):
        if size % base_rows:
            raise SystemExit(f"--sizes: {size} is not a multiple of the smallest size {base_rows}")
        copies = size // base_rows
        directory = base if copies == 1 else workdir / f"npy_{size}"
        if copies > 1:
            shutil.rmtree(directory, ignore_errors=True)  # a rerun in the same --workdir
            directory.mkdir(parents=True)
            day = 0
            for _ in range(copies):
                for d in range(days_per_base):
                    for kind in ("dense", "sparse", "labels"):
                        os.link(base / f"day_{d}_{kind}.npy", directory / f"day_{day}_{kind}.npy")
                    day += 1
            last = days_per_base
            half = -(-files.rows[last] // 2)
            for kind in ("dense", "sparse", "labels"):
                arr = np.load(base / f"day_{last}_{kind}.npy")
                save_numpy_atomic(
                    str(directory / f"day_{day}_{kind}.npy"),
                    np.concatenate([arr[:half]] * copies + [arr[half:]] * copies),
                )
        key = files_key(find_days(str(directory)))
        write_meta(str(directory), {"files": key, "num_embeddings": sizes_of_tables})
        out[size] = directory
    return out


def write_tsv(days: Path, out: Path) -> None:
    """The rows of day files as a headerless TSV: label, dense counts (undoing log1p), ids."""
    from torchrec.datasets.criteo import BinaryCriteoUtils as U

    from torchrec_aes.data.binary import find_days

    files = find_days(str(days))
    with open(out, "w") as f:
        for d, rows in enumerate(files.rows):
            for a in range(0, rows, 1 << 16):
                n = min(1 << 16, rows - a)
                dense = np.rint(np.expm1(U.load_npy_range(files.dense[d], a, n))).astype(np.int64)
                labels = U.load_npy_range(files.labels[d], a, n).astype(np.int64)
                table = np.hstack([labels, dense, U.load_npy_range(files.sparse[d], a, n).astype(np.int64)])
                f.write("\n".join("\t".join(map(str, r)) for r in table.tolist()) + "\n")


def tsv_config(workdir: Path, tsv: Path, copies: int, num_dense: int, num_sparse: int) -> Path:
    """A run config reading `tsv` `copies` times over (data.path lists it repeatedly) as tabular TSV."""
    import yaml

    cfg = yaml.safe_load(CONFIG.read_text())
    cfg["data"] = {
        "type": "tabular",
        "path": ",".join([str(tsv)] * copies),
        "delimiter": "\t",
        "header": False,
        "label_column": "0",
        "dense_columns": [str(i) for i in range(1, 1 + num_dense)],
        "sparse_columns": [str(i) for i in range(1 + num_dense, 1 + num_dense + num_sparse)],
        "cache_dir": str(workdir / f"tsv_cache_{copies}"),
    }
    path = workdir / f"tsv_{copies}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


# -- the run -------------------------------------------------------------------------------------------
def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 4_000_000, 16_000_000])
    parser.add_argument("--steps", type=int, default=300, help="training steps per run (train.max_steps)")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="1-process trainings per path and size (the median is reported)",
    )
    parser.add_argument(
        "--eval-batches",
        type=int,
        default=0,
        help="also a streamed training evaluating only this many val/test batches (train.limit_*_batches)",
    )
    parser.add_argument("--search", action="store_true", help="also an AdaS&S search per size")
    parser.add_argument("--two-procs", action="store_true", help="also streamed training on 2 processes")
    parser.add_argument(
        "--tsv", action="store_true", help="also the data as TSV: streamed conversion, training"
    )
    parser.add_argument(
        "--tsv-memory-max", type=int, default=4_000_000, help="largest size also read whole into memory"
    )
    parser.add_argument("--no-binary", action="store_true", help="only the TSV measurements")
    parser.add_argument("--workdir", default=None, help="keep data here (default: a temporary directory)")
    args = parser.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_stream_"))
    t0 = time.perf_counter()
    try:
        dirs = write_sizes(workdir, args.sizes)
        print(f"data written in {time.perf_counter() - t0:.0f} s under {workdir}", flush=True)
        common = [
            "data.type=criteo_binary", f"train.batch_size={args.batch_size}", f"train.max_steps={args.steps}",
            "train.epochs=1",
        ]  # fmt: skip
        search = [
            "search.method=adass", "search.budget=0.5 x uniform-16", "search.candidates=[4,8,16]",
            "search.adass.supernet_epochs=1", "search.adass.importance_every=100",
            "search.adass.rl_updates=40", "search.adass.rl_samples=6",
        ]  # fmt: skip
        results: dict[int, dict[str, list[dict]]] = {}
        base = dirs[min(dirs)]
        if args.tsv:
            tsv = workdir / "rows.tsv"
            write_tsv(base, tsv)
        steps = common[1:]
        for size, directory in dirs.items():
            data = [*common, f"data.path={directory}"]
            r: dict[str, list[dict]] = {}
            if args.tsv:
                from torchrec.datasets.criteo import BinaryCriteoUtils as U

                shape = (
                    U.get_shape_from_npy(str(base / "day_0_dense.npy")),
                    U.get_shape_from_npy(str(base / "day_0_sparse.npy")),
                )
                config = tsv_config(workdir, tsv, size // min(dirs), shape[0][1], shape[1][1])
                r["tsv_convert"] = measure(
                    "load", workdir, f"tsv_convert_{size}", ["data.streaming=always"], 1, config
                )
                if size <= args.tsv_memory_max:
                    r["tsv_memory"] = measure(
                        "load", workdir, f"tsv_memory_{size}", ["data.streaming=never"], 1, config
                    )
                r["train_tsv"] = measure(
                    "train", workdir, f"train_tsv_{size}", [*steps, "data.streaming=always"], 1, config
                )
                shutil.rmtree(workdir / f"tsv_cache_{size // min(dirs)}", ignore_errors=True)
            if not args.no_binary:
                r["reader"] = measure("reader", workdir, f"reader_{size}", [*data, "data.streaming=always"])
                runs: dict[str, list[list[dict]]] = {"train_stream": [], "train_memory": []}
                for i in range(args.repeats):  # interleaved, so drifts in machine speed hit both alike
                    for run, how in (("train_stream", "always"), ("train_memory", "never")):
                        runs[run].append(
                            measure("train", workdir, f"{run}_{size}_{i}", [*data, f"data.streaming={how}"])
                        )
                for run, reports in runs.items():
                    r[run] = median_run(reports)
                if args.eval_batches:
                    cap = [
                        f"train.limit_val_batches={args.eval_batches}",
                        f"train.limit_test_batches={args.eval_batches}",
                    ]
                    r["train_eval_capped"] = measure(
                        "train", workdir, f"train_capped_{size}", [*data, "data.streaming=always", *cap]
                    )
                if args.two_procs:
                    r["train_stream_2p"] = measure(
                        "train", workdir, f"train2_{size}", [*data, "data.streaming=always"], procs=2
                    )
                if args.search:
                    for how in ("always", "never"):
                        r[f"search_{'stream' if how == 'always' else 'memory'}"] = measure(
                            "search",
                            workdir,
                            f"search_{how}_{size}",
                            [*data, f"data.streaming={how}", *search],
                        )
            results[size] = r
            print(f"{size} rows: " + json.dumps(r), flush=True)
        report(results, args)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"total {time.perf_counter() - t0:.0f} s")


def report(results: dict[int, dict[str, list[dict]]], args: argparse.Namespace) -> None:
    sizes = sorted(results)
    small = sizes[0]
    print(f"\nbatch {args.batch_size}, {args.steps} training steps per run, {os.cpu_count()} CPU cores")
    print("peak RSS per rank, MB (x = against the smallest size):")
    runs = [k for k in results[small]]
    print(f"{'run':<16}" + "".join(f"{s:>22,}" for s in sizes))
    for run in runs:
        cells = []
        for s in sizes:
            if run not in results[s]:
                cells.append("-")
                continue
            mb = max(x["peak_rss_mb"] for x in results[s][run])
            cells.append(f"{mb:>12.0f} ({mb / max(x['peak_rss_mb'] for x in results[small][run]):.2f}x)")
        print(f"{run:<16}" + "".join(f"{c:>22}" for c in cells))
    print("seconds to load (TSV: streamed = converting to the cache, memory = reading whole):")
    for run in ("tsv_convert", "tsv_memory"):
        cells = [
            f"{results[s][run][0]['seconds']:>20.0f} s" if run in results[s] else f"{'-':>22}" for s in sizes
        ]
        if run in results[small]:
            print(f"{run:<16}" + "".join(cells))
    print("examples/s:")
    for run in ("reader", "train_stream", "train_memory", "train_stream_2p", "train_tsv"):
        if run not in results[small]:
            continue
        cells = []
        for s in sizes:
            v = sum(x["examples_per_second"] for x in results[s][run][:1])
            cells.append(f"{v:>12.0f} ({v / results[small][run][0]['examples_per_second']:.2f}x)")
        print(f"{run:<16}" + "".join(f"{c:>22}" for c in cells))
    print("ratios in the same run:")
    for s in sizes:
        r = results[s]
        if "reader" not in r:
            continue
        reader, stream = r["reader"][0]["examples_per_second"], r["train_stream"][0]["examples_per_second"]
        memory = r["train_memory"][0]["examples_per_second"]
        line = f"{s:>12,} rows: reader / training {reader / stream:.1f}x, streamed / in-memory training "
        line += f"{stream / memory:.2f}x (medians"
        if len(r["train_stream"][0].get("examples_per_second_runs", [])) > 1:
            runs = [
                [f"{v:.0f}" for v in r[k][0]["examples_per_second_runs"]]
                for k in ("train_stream", "train_memory")
            ]
            line += f" of {', '.join(runs[0])} and {', '.join(runs[1])} ex/s"
        line += "), RSS streamed / in-memory "
        line += f"{r['train_stream'][0]['peak_rss_mb'] / r['train_memory'][0]['peak_rss_mb']:.2f}x"
        if "search_stream" in r:
            s_stream, s_memory = r["search_stream"][0], r["search_memory"][0]
            line += (
                f"; search RSS streamed / in-memory {s_stream['peak_rss_mb'] / s_memory['peak_rss_mb']:.2f}x "
                f"(time {s_stream['wall_seconds']:.0f} s vs {s_memory['wall_seconds']:.0f} s)"
            )
        print(line)


if __name__ == "__main__":
    main()
