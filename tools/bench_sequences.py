"""Sequence tables benchmark: AdaS&S on a user's model with `EmbeddingCollection`s, on planted data whose
label depends on one history collection and not on the other, against same-memory uniform and the power
rule trained in the same search (same seed, same split, paired over test rows).

The data (in memory, made here): pooled `user`, `item` and a signal-free `ctx`; an `EmbeddingCollection`
`clicks` of two sequence tables (`hist_item`, `hist_cat`: the items and categories a user clicked, 0-10
ids, Poisson lengths, Zipf ids) and an `EmbeddingCollection` `noise` of one sequence table whose ids are
unrelated to the label. The hidden model: logit = scale * <user + mean(clicked items) + mean(clicked
categories), item> over rank-16 latent vectors. The user's model is a two-tower model whose user tower
reads the pooled user and ctx embeddings and the mean of each sequence's per-id embeddings
(`HistoryTwoTower`; searched through `torchrec_aes.search_embedding_dims`, the only way sequence tables
enter a search).

    .venv/bin/python tools/bench_sequences.py --seeds 0 1 2 --out runs/bench_sequences
    # a stronger signal on more rows
    .venv/bin/python tools/bench_sequences.py --rows 100000 --scale 4 --out runs/bench_sequences_4

Prints, per seed and as mean ± std: test AUC of AdaS&S's own result (its two finalists, the better on
validation), of uniform and power_rule at the same budget, and of what the tool returned; the paired
differences with 95% intervals (Poisson bootstrap over test rows); the dims AdaS&S gave each collection.
Writes `summary.md` and `results.json` into --out. Each seed's run directory is kept under --out (a rerun
resumes it); delete --out when done.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from harness import mean_std, paired_bootstrap, verdict
from torch import nn
from torchrec.datasets.utils import Batch
from torchrec.modules.embedding_configs import EmbeddingBagConfig, EmbeddingConfig
from torchrec.modules.mlp import MLP
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

import torchrec_aes

POOLED = {"user": 3000, "item": 1500, "ctx": 800}
COLLECTIONS = {"clicks": {"hist_item": 1500, "hist_cat": 60}, "noise": {"noise_seq": 4000}}
MAX_LEN = 10
RANK = 16
NUM_DENSE = 2


def make_data(seed: int, rows: int, batch_size: int, scale: float) -> dict[str, list[Batch]]:
    """Planted rows (see the module doc) as train/val/test lists of batches (80/10/10)."""
    rng = np.random.default_rng(seed)
    latent = {f: rng.normal(size=(n, RANK)) for f, n in POOLED.items()}
    # A clicked item has the item's latent vector; a category one of its own.
    latent["hist_item"] = latent["item"][: COLLECTIONS["clicks"]["hist_item"]]
    latent["hist_cat"] = rng.normal(size=(COLLECTIONS["clicks"]["hist_cat"], RANK))

    def zipf(n: int, size: int) -> np.ndarray:
        return (rng.zipf(1.2, size=size) - 1) % n

    ids = {f: zipf(n, rows) for f, n in POOLED.items()}
    lengths = {
        f: np.minimum(rng.poisson(4, size=rows), MAX_LEN) for tables in COLLECTIONS.values() for f in tables
    }
    sequences = {
        f: zipf(n, int(lengths[f].sum())) for tables in COLLECTIONS.values() for f, n in tables.items()
    }
    history = np.zeros((rows, RANK))
    for f in COLLECTIONS["clicks"]:
        sums = np.zeros((rows, RANK))
        np.add.at(sums, np.repeat(np.arange(rows), lengths[f]), latent[f][sequences[f]])
        history += sums / np.maximum(lengths[f], 1)[:, None]
    logit = scale * ((latent["user"][ids["user"]] + history) * latent["item"][ids["item"]]).sum(1) / RANK**0.5
    labels = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    dense = rng.normal(size=(rows, NUM_DENSE)).astype(np.float32)
    offsets = {f: np.concatenate([[0], np.cumsum(n)]) for f, n in lengths.items()}
    keys = [*POOLED, *(f for tables in COLLECTIONS.values() for f in tables)]

    def batch(lo: int, hi: int) -> Batch:
        values = [torch.from_numpy(ids[f][lo:hi]) for f in POOLED]
        lens = [torch.ones(hi - lo, dtype=torch.int32)] * len(POOLED)
        for tables in COLLECTIONS.values():
            for f in tables:
                values.append(torch.from_numpy(sequences[f][offsets[f][lo] : offsets[f][hi]]))
                lens.append(torch.from_numpy(lengths[f][lo:hi]).int())
        kjt = KeyedJaggedTensor(keys=keys, values=torch.cat(values).long(), lengths=torch.cat(lens))
        return Batch(torch.from_numpy(dense[lo:hi]), kjt, torch.from_numpy(labels[lo:hi]))

    n_train, n_val = int(0.8 * rows), int(0.9 * rows)
    bounds = {"train": (0, n_train), "val": (n_train, n_val), "test": (n_val, rows)}
    # Whole batches only: every batch has `batch_size` rows.
    return {
        split: [batch(lo, lo + batch_size) for lo in range(start, end - batch_size + 1, batch_size)]
        for split, (start, end) in bounds.items()
    }


def tables() -> dict[str, list]:
    return {
        "pooled": [
            EmbeddingBagConfig(name=f"{f}_emb", feature_names=[f], num_embeddings=n, embedding_dim=64)
            for f, n in POOLED.items()
        ],
        **{
            name: [
                EmbeddingConfig(name=f"{f}_seq", feature_names=[f], num_embeddings=n, embedding_dim=64)
                for f, n in features.items()
            ]
            for name, features in COLLECTIONS.items()
        },
    }


class HistoryTwoTower(nn.Module):
    """User tower: dense, pooled user and ctx, the mean of each sequence's per-id embeddings; item tower:
    the pooled item; logit = dot product. Sizes itself from the modules' dims."""

    def __init__(self, modules: dict[str, nn.Module], hidden: int = 32) -> None:
        super().__init__()
        self.ebc, self.clicks, self.noise = modules["pooled"], modules["clicks"], modules["noise"]
        dims = {f: c.embedding_dim for c in self.ebc.embedding_bag_configs() for f in c.feature_names}
        width = NUM_DENSE + dims["user"] + dims["ctx"]
        width += self.clicks.embedding_dim() * len(COLLECTIONS["clicks"]) + self.noise.embedding_dim()
        self.user_tower = MLP(width, [hidden, hidden])
        self.item_tower = MLP(dims["item"], [hidden, hidden])

    def forward(self, dense: torch.Tensor, kjt: KeyedJaggedTensor) -> torch.Tensor:
        pooled = self.ebc(kjt).to_dict()
        means = []
        for module, features in ((self.clicks, COLLECTIONS["clicks"]), (self.noise, COLLECTIONS["noise"])):
            per_id = module(kjt)
            for f in features:  # by name: the model must be torch.fx-traceable (TorchRec's train pipeline)
                total = per_id[f].to_padded_dense(MAX_LEN).sum(dim=1)
                means.append(total / per_id[f].lengths().clamp(min=1).unsqueeze(1).to(total.dtype))
        u = self.user_tower(torch.cat([dense, pooled["user"], pooled["ctx"], *means], dim=1))
        return (u * self.item_tower(pooled["item"])).sum(dim=1)


def finalist_scores(run_dir: Path, row: dict) -> np.ndarray:
    return np.load(run_dir / row["test_scores"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--rows", type=int, default=60_000)
    parser.add_argument("--budget", default="0.25 x uniform-64")
    parser.add_argument("--scale", type=float, default=2.0, help="signal scale of the planted logit")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--out", default="runs/bench_sequences")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    per_seed = []
    for seed in args.seeds:
        data = make_data(seed, args.rows, 256, args.scale)
        run_dir = out / f"seed_{seed}"
        t0 = time.perf_counter()
        config = [f"train.seed={seed}", f"train.epochs={args.epochs}", "train.batch_size=256"]
        result = torchrec_aes.search_embedding_dims(
            tables(),
            HistoryTwoTower,
            data["train"],
            data["val"],
            args.budget,
            test=data["test"],
            config=[*config, "train.progress=false"],
            run_dir=str(run_dir),
        )
        seconds = time.perf_counter() - t0
        rows = {r["label"]: r for r in result.metrics["finalists"]}
        own = max(("adass", "adass_fill"), key=lambda k: rows[k]["val"]["auc"] if k in rows else -1.0)
        chosen = next(r["label"] for r in result.metrics["finalists"] if r.get("chosen"))
        rl = result.metrics["search_log"]["rl"]
        per_seed.append(
            {
                "seed": seed,
                "seconds": seconds,
                "own": own,
                "chosen": chosen,
                "test": {k: r["test"]["auc"] for k, r in rows.items()},
                "bytes": {k: r["bytes"] for k, r in rows.items()},
                "final_dims": rl["final_dims"],
                "fill_dims": rl["fill_dims"],
                "scores": {k: finalist_scores(run_dir, r) for k, r in rows.items()},
            }
        )
        print(f"seed {seed}: {seconds:.0f} s, own={own} chosen={chosen} dims={rl['final_dims']}", flush=True)
    lines = [f"budget {args.budget}, {args.rows} rows, {len(args.seeds)} seeds", ""]
    lines.append("| | test AUC (mean ± std) |")
    lines.append("|---|---|")
    own_auc = [s["test"][s["own"]] for s in per_seed]
    lines.append(f"| AdaS&S own result | {mean_std(own_auc)} |")
    for label in ("uniform", "power_rule", "uniform_fp16"):
        if all(label in s["test"] for s in per_seed):
            lines.append(f"| {label} | {mean_std([s['test'][label] for s in per_seed])} |")
    lines.append(f"| tool's pick | {mean_std([s['test'][s['chosen']] for s in per_seed])} |")
    lines.append("")
    for label in ("uniform", "power_rule"):
        pairs = [(s["scores"][s["own"]], s["scores"][label]) for s in per_seed]
        boot = paired_bootstrap(pairs, args.bootstrap)
        p, lo, hi = boot["mean"]
        lines.append(f"- own − {label}: {p:+.4f} [{lo:+.4f}, {hi:+.4f}] ({verdict(lo, hi)})")
    for s in per_seed:
        lines.append(
            f"- seed {s['seed']}: own {s['own']}, pick {s['chosen']}, AdaS&S dims {s['final_dims']}, "
            f"fill {s['fill_dims']}, {s['seconds']:.0f} s"
        )
    noise_smallest = sum(
        int(s["final_dims"]["noise"]) <= min(int(v) for v in s["final_dims"].values()) for s in per_seed
    )
    lines.append(
        f"- noise collection at the smallest dim of AdaS&S's architecture: {noise_smallest}/{len(per_seed)}"
    )
    lines.append(f"- mean seconds per search: {statistics.mean(s['seconds'] for s in per_seed):.0f}")
    text = "\n".join(lines)
    print(text)
    (out / "summary.md").write_text(text + "\n")
    slim = [{k: v for k, v in s.items() if k != "scores"} for s in per_seed]
    (out / "results.json").write_text(json.dumps(slim, indent=1))


if __name__ == "__main__":
    main()
