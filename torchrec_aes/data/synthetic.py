"""The embedded default data set: Criteo-shaped synthetic CTR data with planted per-field ranks.

The generator makes `num_examples` rows, each with `num_dense` dense count features and one id per
sparse field `c0..c{F-1}`, and a binary label drawn from a hidden model in which every sparse field f has
a known *true rank* r_f. A good embedding-size search gives r_f = 0 fields the smallest size and the
high-rank fields the largest, so the planted ranks double as the searches' correctness test.

Features:

- Dense: d_j = log(x_j + 1) (float32) of a zero-inflated, discretised log-normal count x_j >= 0, with
  per-feature parameters drawn from the seed; stored already transformed, like the Criteo reader's.
- Sparse: the id of field f is Zipf-distributed over its n_f rows: the k-th most popular id has
  probability proportional to k^-s (s = `zipf_exponent`), and a seeded per-field permutation of
  [0, n_f) decides which id is the k-th most popular (so popular ids are not simply 0, 1, 2).

Hidden model (the label):

- Each id x of a field with r_f > 0 has a latent vector L_f[x] in R^{r_f} with iid N(0, 1) entries,
  computed from a counter-based hash of (seed, f, x, j). Only the ids that occur are ever materialised,
  so a 10^6-row field costs no more than the ids drawn for it; L_f[x] does not depend on how many rows
  are generated, and a rank-r vector is the prefix of the same id's rank-R vector (R > r).
- Head amplitude: L_f[x] is scaled by a(k) = (1 + k / SIGNAL_HEAD)^-2, k the id's popularity rank
  (0 = most popular, SIGNAL_HEAD = 100). With ~10^5 rows only the head of a big field is seen often
  enough to learn an r_f-dim vector; planting full-strength signal in ids seen once would make wide
  fields unlearnable at this size, so dim 32 would not beat dim 4 in practice. Real logs behave alike:
  the tail's embeddings hardly matter. (Row-wise searches such as BET can recover this: popular rows of
  a wide field need wide embeddings, tail rows almost none.)
- Vectors are centred per field over the rows (v_f = a L_f[x] - its row mean) and zero-padded into a
  shared R^{R_max}, R_max = max_f r_f. The interaction score of a row is the sum over field pairs
  (f < g) of their dot products:

      I = sum_{f<g} <v_f, v_g> = (||sum_f v_f||^2 - sum_f ||v_f||^2) / 2

  so the pair (f, g) interacts through min(r_f, r_g) dimensions and an embedding of field f needs r_f
  columns to carry all of it (a field of n_f ids can only realise min(r_f, n_f - 1) of them after
  centring; `planted.json` records that as `effective_rank`). Centring removes first-order effects:
  E[I | x_f] = 0 for every field, because the other fields are independent of f and have mean zero, so
  a per-id scalar bias learns nothing and the signal lives only in the interactions, where rank is
  what an embedding dimension must cover.
- Dense term: D = sum_j w_j z_j, z_j the standardised d_j, w_j ~ N(0, 1).
- logit = signal_scale * (3 * I / std(I) + 0.5 * D / std(D)) + b, with b fitted by bisection so that
  mean(sigmoid(logit)) = TARGET_POSITIVE_RATE (0.25), and label ~ Bernoulli(sigmoid(logit)). The scales
  and b are fitted on the generated rows, so the positive rate is ~25% for any size and `signal_scale`.
- Fields with r_f = 0 never enter the label: their ids are drawn from their own random stream and are
  independent of the label and of every other feature.
- Multi-hot fields (`multi_hot_fields`): a row holds a bag of Poisson(`mean_bag_length`) ids of the field
  (its lengths from their own stream, the ids Zipf-drawn like a one-hot field's), and the field's v_f is
  the mean of the bag's amplitude-scaled vectors (0 for an empty bag), centred over the rows; so these
  fields pool by mean. The other fields draw exactly the ids they draw without multi-hot fields.

What this gives (default config, 100k rows, 80k train / 20k test, a plain factorisation machine trained
with Adagrad, mean of 3 seeds): test AUC 0.765 with all fields at dim 4, 0.799 at dim 32, 0.828 with the
wide fields at 32 and the rest at 4, 0.858 with each field at its planted rank (signal-free fields
dropped). The hidden interaction score itself ranks the labels with AUC 0.92 (0.81 with every rank
capped at 4).

Default ranks (`true_ranks: null`) cycle `DEFAULT_RANK_PATTERN`; with the default cardinalities
([10, 30, 100, ..., 10^6] twice) that gives

    field  c0  c1  c2   c3  c4  c5  c6   c7  c8    c9   c10 c11 c12  c13  c14 c15 c16  c17  c18   c19
    rows   10  30  100  300 1k  3k  10k  30k 100k  1M   10  30  100  300  1k  3k  10k  30k  100k  1M
    rank   0   4   32   2   0   8   32   0   0     0    2   0   8    32   4   0   2    8    4     32

i.e. 7 signal-free fields (10 to 10^6 rows), 4 wide fields (100, 300, 10k and 10^6 rows) and 9 fields
of rank 2-8.

Populations (`populations: P > 1`, for instance-wise searches such as iHAS): every row belongs to a hidden
population p, drawn uniformly from [0, P) by its own random stream; p is not a column of the data. Two
things differ between populations:

- Popular ids: field f of population p maps Zipf popularity ranks to ids through its own seeded
  permutation (population 0 keeps the single-population one), so the popular ids of a field differ
  between populations and a row's ids reveal its population.
- Informative fields: population p has its own planted ranks r_{p,f} (`population_ranks`; by default the
  single-population ranks rotated by p * (F // P) fields, so with the default 20 fields population 1
  plants the pattern's second half on c0..c9 and its first half on c10..c19) and its own latent vectors
  (population 0 keeps the single-population ones; p > 0 folds p into the hash seed).

The interaction score I of a row is computed as above within its population only, with that population's
ranks and vectors centred over that population's rows; the scores of all rows are then standardised
together and the dense term and label follow as above. `generate` returns the per-field maximum of the
ranks over populations (the `fields` of `planted.json`); the rows' population ids are saved in the cache's
`data.pt` under "population" (`load_populations` returns them per split) and `planted.json` gets a
`populations` list of {population, share of rows, fields (the planted table of its ranks)}. A field's ids
now also carry the row's population, so a field of rank 0 in one population is independent of the label
only within that population (the label's mean may differ slightly between populations). With P = 1
nothing of this happens: the output is byte-identical to the single-population generator.

Example::

    splits, ranks = load_synthetic(cfg.data, cache_dir="data_cache")
    schema, data, ranks = generate(SyntheticConfig(num_examples=10_000), seed=0)  # data/planted.py
    populations = load_populations(cfg.data, cache_dir="data_cache")  # {"train": [N_train] int64, ...}
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import torch

from torchrec_aes.config import DataConfig, SyntheticConfig
from torchrec_aes.data.dataset import CTRData, Splits, split_rows
from torchrec_aes.data.planted import (
    GENERATOR_VERSION,
    generate_with_populations,
    population_ids,
    resolve_population_ranks,
    resolve_ranks,
)
from torchrec_aes.data.schema import Schema
from torchrec_aes.io import exists, join, load_torch, read_text, save_torch_atomic, write_text_atomic


def _config_spec(cfg: SyntheticConfig) -> dict:
    """`cfg` as a dict; without the population keys when they are at their defaults (one population), so
    single-population cache keys and `planted.json` files are those of the generator before populations."""
    spec = dataclasses.asdict(cfg)
    if cfg.populations == 1 and cfg.population_ranks is None:
        del spec["populations"], spec["population_ranks"]
    if not cfg.multi_hot_fields:
        del spec["multi_hot_fields"], spec["mean_bag_length"]
    return spec


def cache_key(cfg: SyntheticConfig, seed: int) -> str:
    """A short hash of everything that determines the generated bytes (config, resolved ranks, seed)."""
    spec = dataclasses.asdict(cfg)
    spec["true_ranks"] = resolve_ranks(cfg)
    # One population: population_ranks [r] gives the bytes of true_ranks r, and keys stay as before.
    del spec["populations"], spec["population_ranks"], spec["multi_hot_fields"], spec["mean_bag_length"]
    if cfg.multi_hot_fields:  # one-hot configs keep the keys they had
        spec["multi_hot_fields"], spec["mean_bag_length"] = sorted(cfg.multi_hot_fields), cfg.mean_bag_length
    if cfg.populations > 1:
        spec["populations"] = cfg.populations
        spec["population_ranks"] = resolve_population_ranks(cfg)
    payload = json.dumps({"synthetic": spec, "seed": seed, "version": GENERATOR_VERSION}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def planted_table(schema: Schema, ranks: list[int]) -> list[dict]:
    """Per sparse field: name, cardinality, true (planted) rank and the rank its ids can realise."""
    return [
        {
            "name": feat.name,
            "cardinality": feat.num_embeddings,
            "true_rank": rank,
            # Centring removes one direction, and n ids span at most n dims.
            "effective_rank": min(rank, max(feat.num_embeddings - 1, 0)),
        }
        for feat, rank in zip(schema.sparse, ranks, strict=True)
    ]


def _save(
    directory: str,
    cfg: SyntheticConfig,
    seed: int,
    schema: Schema,
    data: CTRData,
    ranks: list[int],
    population: np.ndarray | None,
) -> None:
    blob = {
        "schema": schema.to_dict(),
        "dense": data.dense,
        "sparse": data.sparse,
        "labels": data.labels,
        "true_ranks": ranks,
    }
    if data.lengths is not None:
        blob["lengths"] = data.lengths
    if population is not None:
        dtype = np.int8 if cfg.populations <= np.iinfo(np.int8).max + 1 else np.int64
        blob["population"] = torch.from_numpy(population.astype(dtype))
    save_torch_atomic(join(directory, "data.pt"), blob)
    # planted.json goes last: a cache entry counts as complete only when both files exist.
    planted = {
        "seed": seed,
        "num_examples": len(data),
        "positive_rate": float(data.labels.mean()),
        "synthetic": _config_spec(cfg),
        "fields": planted_table(schema, ranks),
    }
    if population is not None:
        shares = np.bincount(population, minlength=cfg.populations) / len(population)
        planted["populations"] = [
            {"population": p, "share": float(shares[p]), "fields": planted_table(schema, ranks_p)}
            for p, ranks_p in enumerate(resolve_population_ranks(cfg))
        ]
    write_text_atomic(join(directory, "planted.json"), json.dumps(planted, indent=2) + "\n")


def _load(directory: str) -> tuple[Schema, CTRData, list[int], torch.Tensor | None]:
    blob = load_torch(join(directory, "data.pt"))
    data = CTRData(blob["dense"], blob["sparse"], blob["labels"], blob.get("lengths"))
    population = blob.get("population")
    population = None if population is None else population.to(torch.int64)
    return Schema.from_dict(blob["schema"]), data, list(blob["true_ranks"]), population


def _is_cached(directory: str) -> bool:
    return bool(directory) and exists(join(directory, "data.pt")) and exists(join(directory, "planted.json"))


def synthetic_cache_dir(cache_dir: str, cfg: SyntheticConfig, seed: int) -> str:
    """Where `load_synthetic` caches (cfg, seed): `<cache_dir>/synthetic-<hash>/{data.pt,planted.json}`."""
    return join(cache_dir, f"synthetic-{cache_key(cfg, seed)}")


def load_synthetic(cfg: DataConfig, cache_dir: str) -> tuple[Splits, list[int]]:
    """The synthetic data set of `cfg.synthetic` with seed `cfg.split_seed`, split by `cfg.split`.

    Generated rows are cached in `synthetic_cache_dir(cache_dir, ...)` together with `planted.json`
    (per field: name, cardinality, true rank; with populations also per population, and the rows'
    population ids in `data.pt`, see `load_populations`); a later call with the same synthetic config and
    seed reads the cache instead of generating. Both files are written atomically.

    Args:
        cfg: the data config (`synthetic`, `split`, `split_seed` are used).
        cache_dir: local directory or iopath URI; "" disables caching.

    Returns:
        The train/val/test splits and the planted rank of each sparse field.
    """
    seed = cfg.split_seed
    directory = synthetic_cache_dir(cache_dir, cfg.synthetic, seed) if cache_dir else ""
    if _is_cached(directory):
        schema, data, ranks, _ = _load(directory)
    else:
        schema, data, ranks, population = generate_with_populations(cfg.synthetic, seed)
        if directory:
            _save(directory, cfg.synthetic, seed, schema, data, ranks, population)
    train, val, test = split_rows(len(data), cfg.split, cfg.split_seed)
    schema = schema.configured(cfg.pooling, cfg.shared_tables)
    return Splits(schema, data.subset(train), data.subset(val), data.subset(test)), ranks


def load_populations(cfg: DataConfig, cache_dir: str) -> dict[str, torch.Tensor] | None:
    """The hidden population of every row of the splits of `load_synthetic(cfg, cache_dir)`.

    Reads the cache entry of `load_synthetic` (`data.pt`, key "population"); without one, generates the
    rows and writes the entry exactly as `load_synthetic` does, so a later `load_synthetic` reads it.
    With `cache_dir` "" only the population stream is drawn (no rows are generated).

    Args:
        cfg: the data config (`synthetic`, `split`, `split_seed` are used).
        cache_dir: local directory or iopath URI; "" disables caching.

    Returns:
        {"train", "val", "test"}: [rows of the split] int64 population ids, in the splits' row order; None
        when `cfg.synthetic.populations` is 1.

    Raises:
        ValueError: an invalid synthetic config value (the message names the key).
    """
    if cfg.synthetic.populations == 1:
        return None
    seed = cfg.split_seed
    directory = synthetic_cache_dir(cache_dir, cfg.synthetic, seed) if cache_dir else ""
    population = _load(directory)[3] if _is_cached(directory) else None
    if population is None and directory:  # no entry (or one without populations): write it
        schema, data, ranks, drawn = generate_with_populations(cfg.synthetic, seed)
        _save(directory, cfg.synthetic, seed, schema, data, ranks, drawn)
        population = population_ids(cfg.synthetic, seed)  # the same stream as `drawn`, as int64
    elif population is None:
        population = population_ids(cfg.synthetic, seed)
    assert population is not None  # populations > 1
    train, val, test = split_rows(len(population), cfg.split, cfg.split_seed)
    return {"train": population[train], "val": population[val], "test": population[test]}


def read_planted(cache_dir: str, cfg: DataConfig) -> list[dict]:
    """The `fields` table of the cached `planted.json` for `cfg` (after `load_synthetic` wrote it)."""
    path = join(synthetic_cache_dir(cache_dir, cfg.synthetic, cfg.split_seed), "planted.json")
    return json.loads(read_text(path))["fields"]
