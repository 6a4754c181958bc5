"""Writes the planted multi-hot synthetic rows as text files, in the two text formats that read bags: a CSV
for the tabular reader and a libFM file for the libfm reader (`configs/multihot_tabular.yaml`,
`configs/multihot_libfm.yaml` read them).

Usage::

    python tools/make_multihot_files.py --out data/multihot [--rows 20000] [--seed 0]

The rows are `generate` of the synthetic config in `configs/multihot_synthetic.yaml` (planted ranks; 8 of
the 20 fields bags of Poisson(10) ids): `<out>/planted.csv` has a header `label,d0..d12,c0..c19`, dense
values as log(x + 1) counts turned back into counts, a bag as its ids joined by `|` (an empty bag is an
empty cell); `<out>/planted.libfm` has `label idx:1 ...` with field f's ids offset by the sum of the
earlier fields' cardinalities (printed as `data.field_offsets`), no dense features.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import yaml

from torchrec_aes.config import SyntheticConfig
from torchrec_aes.data.planted import generate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def synthetic_config(rows: int) -> SyntheticConfig:
    """The synthetic section of `configs/multihot_synthetic.yaml`, with `rows` rows."""
    with open(os.path.join(REPO, "configs", "multihot_synthetic.yaml")) as f:
        spec = yaml.safe_load(f)["data"]["synthetic"]
    return SyntheticConfig(**{**spec, "num_examples": rows})


def bag_cells(ids: np.ndarray, lengths: np.ndarray) -> list[str]:
    """Each row's bag as its ids joined by '|' ('' for an empty bag)."""
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    text = ids.astype(str)
    return ["|".join(text[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="directory for planted.csv and planted.libfm")
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    cfg = synthetic_config(args.rows)
    schema, data, ranks = generate(cfg, args.seed)
    os.makedirs(args.out, exist_ok=True)
    columns = [
        bag_cells(data.field_ids(f).numpy(), data.field_lengths(f).numpy()) for f in range(len(schema.sparse))
    ]
    counts = np.rint(np.expm1(data.dense.numpy().astype(np.float64))).astype(np.int64)
    labels = data.labels.numpy().astype(int)
    with open(os.path.join(args.out, "planted.csv"), "w") as f:
        f.write(",".join(["label", *schema.dense_names, *schema.sparse_names]) + "\n")
        for i in range(len(data)):
            f.write(",".join([str(labels[i]), *map(str, counts[i]), *(c[i] for c in columns)]) + "\n")
    offsets = np.concatenate([[0], np.cumsum([s.num_embeddings for s in schema.sparse])[:-1]]).tolist()
    with open(os.path.join(args.out, "planted.libfm"), "w") as f:
        for i in range(len(data)):
            tokens = [f"{offsets[j] + int(x)}:1" for j, c in enumerate(columns) for x in c[i].split("|") if x]
            f.write(" ".join([str(labels[i]), *tokens]) + "\n")
    multi = [schema.sparse_names[f] for f in cfg.multi_hot_fields]
    print(f"{len(data)} rows -> {args.out}/planted.csv, {args.out}/planted.libfm")
    print(f"multi-hot fields: {multi} (mean bag length {cfg.mean_bag_length:g})")
    print(f"planted ranks: {dict(zip(schema.sparse_names, ranks, strict=True))}")
    print(f"libfm data.field_offsets: {offsets}")


if __name__ == "__main__":
    main()
