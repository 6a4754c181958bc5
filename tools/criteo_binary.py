"""Writes a CTR data set (by default the embedded planted synthetic one) in TorchRec's preprocessed Criteo
format, the day files `data.type=criteo_binary` streams.

Usage::

    python tools/criteo_binary.py --out DIR [--config CONFIG] [--days 8] [key=value ...]

The config's data is loaded in memory as a run would load it (synthetic: generated or read from its cache),
its training rows are written as `--days` days (`day_{d}_{dense,sparse,labels}.npy`: float32 dense as the
model sees it, int32 ids, int32 labels [N, 1]) and its validation and test rows as the last day (the reader
gives back its first half as validation and its second as test). The tables' sizes are recorded beside the
files (`torchrec_aes_vocab.json`), so a run over DIR has the same schema sizes as the in-memory one.
Then, for example::

    torchrec-aes train configs/default.yaml data.type=criteo_binary data.path=DIR
"""

from __future__ import annotations

import argparse
import time

from torchrec_aes.config import load_config
from torchrec_aes.data.binary import files_key, write_days, write_meta
from torchrec_aes.tasks import get_task


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="directory to write the day files to")
    parser.add_argument("--config", default=None, help="run config whose data to write (default: embedded)")
    parser.add_argument("--days", type=int, default=8, help="training days (the last day is val + test)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the config")
    args = parser.parse_args(argv)
    if args.days <= 0:
        parser.error(f"--days must be positive, got {args.days}")
    cfg = load_config(args.config, args.overrides)
    start = time.perf_counter()
    splits = get_task(cfg).data
    files = write_days(splits, args.out, args.days)
    sizes = [f.num_embeddings for f in splits.schema.sparse]
    write_meta(args.out, {"files": files_key(files), "num_embeddings": sizes})
    print(
        f"{args.out}: {args.days} training days + 1 val/test day, rows {files.rows}, "
        f"{splits.schema.num_dense} dense, {len(sizes)} sparse ({time.perf_counter() - start:.1f} s)"
    )


if __name__ == "__main__":
    main()
