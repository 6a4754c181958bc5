"""Run directories reused with another setting: each case runs a command to completion, changes one
setting (or the data file in place, same shape), reruns the command on the same run directory and checks
that it is refused at start, in one line, with exit status 2, naming what differs.

    .venv/bin/python tools/check_reuse.py [--out /tmp/reuse]

Prints one row per case (refused?, seconds to the refusal, the message) and the count. Each first run
takes seconds on a CPU (the tiny test configs); the whole check a few minutes.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from harness import run_cli, write_interactions

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent / "torchrec-aes"
TESTS = REPO / "configs" / "tests"


def _csv(path: Path, flip: bool = False, shift: int = 0) -> None:
    """A small tabular file; `flip` flips every label, `shift` renames every site id (same shape)."""
    rng = np.random.default_rng(0)
    lines = ["label,price,site,tags"]
    for i in range(3000):
        label = int(rng.random() < 0.3) ^ int(flip)
        lines.append(f"{label},{i % 97},s{(i * 7 + shift) % 50},t{i % 13}|t{i % 7}")
    path.write_text("\n".join(lines) + "\n")


TABULAR = [
    "data.type=tabular",
    "data.label_column=label",
    "data.dense_columns=[price]",
    "data.sparse_columns=[site,tags]",
    "data.multi_hot_columns=[tags]",
    "data.min_count=1",
    "data.streaming=never",
]

# (name, config, command, overrides of the first run, what the rerun changes: overrides or a data edit)
CASES: list[tuple[str, str, str, list[str], list[str] | str]] = [
    ("train: data.split_seed", "tiny", "train", [], ["data.split_seed=1"]),
    ("train: data.synthetic.signal_scale", "tiny", "train", [], ["data.synthetic.signal_scale=2.0"]),
    ("train: data.synthetic.zipf_exponent", "tiny", "train", [], ["data.synthetic.zipf_exponent=1.3"]),
    ("train: data.synthetic.num_examples", "tiny", "train", [], ["data.synthetic.num_examples=5000"]),
    ("train: train.seed", "tiny", "train", [], ["train.seed=1"]),
    ("train: train.embedding_lr", "tiny", "train", [], ["train.embedding_lr=0.2"]),
    ("train: model.embedding_dim", "tiny", "train", [], ["model.embedding_dim=12"]),
    ("train: model.dense_arch", "tiny", "train", [], ["model.dense_arch=[32,8]"]),
    ("train: tabular labels flipped in place", "tiny", "train", TABULAR, "flip"),
    ("train: tabular ids changed in place", "tiny", "train", TABULAR, "shift"),
    ("adass: data.synthetic.signal_scale", "adass_tiny", "search", [], ["data.synthetic.signal_scale=2.0"]),
    ("adass: train.seed", "adass_tiny", "search", [], ["train.seed=1"]),
    ("adass: data.synthetic.num_examples", "adass_tiny", "search", [], ["data.synthetic.num_examples=7000"]),
    ("adass: search.candidates", "adass_tiny", "search", [], ["search.candidates=[4,8,12,16]"]),
    ("nasrec: data.synthetic.signal_scale", "nasrec_tiny", "search", [], ["data.synthetic.signal_scale=2.0"]),
    ("nasrec: train.seed", "nasrec_tiny", "search", [], ["train.seed=1"]),
    ("ihas: data.synthetic.signal_scale", "ihas_tiny", "search", [], ["data.synthetic.signal_scale=2.0"]),
    ("ihas: train.seed", "ihas_tiny", "search", [], ["train.seed=1"]),
    ("bet: train.seed", "bet_tiny", "search", [], ["train.seed=1"]),
    ("bet: interactions file changed in place", "bet_tiny", "search", [], "interactions"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="", help="work directory (default: a temporary one, removed)")
    args = parser.parse_args()
    work = Path(args.out or tempfile.mkdtemp(prefix="reuse_"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        for i, (name, config, command, first, change) in enumerate(CASES):
            case = work / f"case{i}"
            shutil.rmtree(case, ignore_errors=True)
            case.mkdir()
            data = case / ("data.csv" if config == "tiny" else "interactions.txt")
            common = [f"data.cache_dir={work / 'cache'}", "train.progress=false", "train.checkpoint=true"]
            if first == TABULAR:
                _csv(data)
                common += [*TABULAR, f"data.path={data}"]
            if config == "bet_tiny":
                write_interactions(data)
                common += [f"data.path={data}"]
            base = [str(BIN), command, str(TESTS / f"{config}.yaml"), "--run-dir", str(case / "run"), *common]
            done = run_cli(base)
            if done.returncode != 0:
                rows.append((name, False, 0.0, f"first run failed: {done.stderr.strip().splitlines()[-1:]}"))
                continue
            if change == "flip":
                _csv(data, flip=True)
            elif change == "shift":
                _csv(data, shift=7)
            elif change == "interactions":
                write_interactions(data, shift=5)
            extra = change if isinstance(change, list) else []
            t0 = time.perf_counter()
            again = run_cli([*base, *extra])
            seconds = time.perf_counter() - t0
            errors = [line for line in again.stderr.splitlines() if "error:" in line]
            refused = again.returncode == 2 and len(errors) == 1 and "Traceback" not in again.stderr
            rows.append((name, refused, seconds, errors[0] if errors else "(no error: it ran)"))
    finally:
        if not args.out:
            shutil.rmtree(work, ignore_errors=True)
    print("| case | refused in one line, exit 2 | seconds to refusal | message |")
    print("|---|---|---|---|")
    for name, refused, seconds, message in rows:
        print(f"| {name} | {'yes' if refused else 'NO'} | {seconds:.1f} | {message[:160]} |")
    print(f"refused: {sum(r[1] for r in rows)} of {len(rows)}")


if __name__ == "__main__":
    main()
