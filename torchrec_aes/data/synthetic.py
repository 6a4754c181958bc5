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
    schema, data, ranks = generate(SyntheticConfig(num_examples=10_000), seed=0)
    populations = load_populations(cfg.data, cache_dir="data_cache")  # {"train": [N_train] int64, ...}
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math

import numpy as np
import torch

from torchrec_aes.config import DataConfig, SyntheticConfig
from torchrec_aes.data.dataset import CTRData, Splits, split_rows
from torchrec_aes.data.schema import Schema, SparseFeature
from torchrec_aes.io import exists, join, load_torch, read_text, save_torch_atomic, write_text_atomic

DEFAULT_RANK_PATTERN: list[int] = [0, 4, 32, 2, 0, 8, 32, 0, 0, 0, 2, 0, 8, 32, 4, 0, 2, 8, 4, 32]
"""Planted ranks used when `true_ranks` is None, cycled over the fields (see the module docstring)."""

TARGET_POSITIVE_RATE = 0.25
"""Mean of sigmoid(logit) that the bias is fitted to."""

SIGNAL_HEAD = 100.0
"""Popularity rank k at which an id's latent amplitude (1 + k / SIGNAL_HEAD)^-2 has fallen to 1/4."""

_INTERACTION_WEIGHT = 3.0
_DENSE_WEIGHT = 0.5
# Bump when the generated bytes change for the same config and seed, so stale caches are not reused.
_GENERATOR_VERSION = 2
_MASK64 = (1 << 64) - 1

# Stream tags of the per-purpose random generators; each (seed, tag, field) gets its own stream, so adding
# a field or a dense feature never changes the values drawn for the others.
_TAG_IDS, _TAG_PERM, _TAG_DENSE, _TAG_LABEL, _TAG_LATENT, _TAG_WEIGHTS = 1, 2, 3, 4, 5, 6
_TAG_POPULATION = 7
_MAX_RANK = 2**15  # latent_vectors' counter gives each id 2^16 uniforms, two per entry


def _rng(seed: int, tag: int, index: int = 0, *more: int) -> np.random.Generator:
    # `more` must not end in 0: SeedSequence pads short entropy with zeros, so [.., i, 0] = [.., i].
    return np.random.default_rng([seed & _MASK64, tag, index, *more])


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on uint64 arrays (wrapping arithmetic): a cheap, well-mixed hash."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def hash_uniform(key: np.ndarray) -> np.ndarray:
    """Uniform floats in (0, 1) from uint64 keys, 53 random bits each."""
    bits = _splitmix64(_splitmix64(key)) >> np.uint64(11)
    return (bits.astype(np.float64) + 0.5) * 2.0**-53


def latent_vectors(
    seed: int, field_index: int, ids: np.ndarray, rank: int, population: int = 0
) -> np.ndarray:
    """The hidden model's latent vectors L_f[id] for the given ids, computed from a hash of the id.

    Args:
        seed: generator seed.
        field_index: f, the sparse field's position.
        ids: [U] int64 ids of field f.
        rank: r_f.
        population: p; population 0 has the single-population vectors, p > 0 its own (p enters the hash).

    Returns:
        [U, r_f] float64 with iid N(0, 1) entries (Box-Muller on two hashed uniforms per entry).
    """
    base = int(_splitmix64(np.array([(seed & _MASK64) ^ (_TAG_LATENT << 56)], dtype=np.uint64))[0])
    base = int(_splitmix64(np.array([base ^ field_index], dtype=np.uint64))[0])
    if population:
        base = int(_splitmix64(np.array([base ^ ((population << 32) & _MASK64)], dtype=np.uint64))[0])
    # Counter (id, k) -> id * 2^16 + k: entry j uses uniforms k = 2j, 2j + 1, so a rank-r vector is the
    # prefix of the same id's rank-R vector for R > r (lower ranks are truncations, not new draws).
    counter = (ids.astype(np.uint64)[:, None] << np.uint64(16)) + np.arange(2 * rank, dtype=np.uint64)
    u = hash_uniform(np.bitwise_xor(counter, np.uint64(base)))
    return np.sqrt(-2.0 * np.log(u[:, 0::2])) * np.cos(2.0 * math.pi * u[:, 1::2])


def resolve_ranks(cfg: SyntheticConfig) -> list[int]:
    """The planted rank of each sparse field: `cfg.true_ranks`, or the default pattern cycled; with
    populations, the per-field maximum over the populations' ranks (`resolve_population_ranks`).

    Raises:
        ValueError: `true_ranks` or `population_ranks` is invalid (the message names the key).
    """
    if cfg.populations != 1 or cfg.population_ranks is not None:
        return [max(column) for column in zip(*resolve_population_ranks(cfg), strict=True)]
    return _single_ranks(cfg)


def _single_ranks(cfg: SyntheticConfig) -> list[int]:
    """`cfg.true_ranks`, or the default pattern cycled."""
    num_fields = len(cfg.cardinalities)
    if cfg.true_ranks is None:
        return [DEFAULT_RANK_PATTERN[f % len(DEFAULT_RANK_PATTERN)] for f in range(num_fields)]
    if len(cfg.true_ranks) != num_fields:
        raise ValueError(
            f"data.synthetic.true_ranks: has {len(cfg.true_ranks)} entries but data.synthetic.cardinalities "
            f"has {num_fields}; give one rank per field (0 = no signal) or null for the default pattern"
        )
    bad = [r for r in cfg.true_ranks if not 0 <= r < _MAX_RANK]
    if bad:
        raise ValueError(f"data.synthetic.true_ranks: ranks must be in [0, 2^15), got {cfg.true_ranks}")
    return list(cfg.true_ranks)


def resolve_population_ranks(cfg: SyntheticConfig) -> list[list[int]]:
    """The planted rank of each sparse field for each population: [populations][F].

    `cfg.population_ranks`, or the single-population ranks (`true_ranks` or the default pattern) rotated
    left by p * (F // populations) fields for population p, so population 0 keeps them unchanged.

    Raises:
        ValueError: `populations` < 1, or `population_ranks` is not `populations` lists of one rank in
            [0, 2^15) per field, or is given together with `true_ranks` (the message names the key).
    """
    num_pops, num_fields = cfg.populations, len(cfg.cardinalities)
    if isinstance(num_pops, bool) or not isinstance(num_pops, int) or num_pops < 1:
        raise ValueError(f"data.synthetic.populations: must be an integer >= 1, got {num_pops!r}")
    given = cfg.population_ranks
    if given is None:
        base = _single_ranks(cfg)
        shifts = [p * (num_fields // num_pops) for p in range(num_pops)]
        return [base[s:] + base[:s] for s in shifts]
    key = "data.synthetic.population_ranks"
    if cfg.true_ranks is not None:
        raise ValueError(f"{key}: give either it or data.synthetic.true_ranks, not both")
    if not isinstance(given, list | tuple) or len(given) != num_pops:
        count = len(given) if isinstance(given, list | tuple) else type(given).__name__
        raise ValueError(
            f"{key}: needs one list per population (data.synthetic.populations = {num_pops}), got {count}"
        )
    for p, ranks in enumerate(given):
        if not isinstance(ranks, list | tuple) or len(ranks) != num_fields:
            raise ValueError(
                f"{key}[{p}]: needs one rank per field ({num_fields} = len(data.synthetic.cardinalities)), "
                f"got {ranks!r}"
            )
        if not all(isinstance(r, int) and not isinstance(r, bool) and 0 <= r < _MAX_RANK for r in ranks):
            raise ValueError(f"{key}[{p}]: ranks must be integers in [0, 2^15), got {list(ranks)}")
    return [list(ranks) for ranks in given]


def _validate(cfg: SyntheticConfig) -> None:
    if cfg.num_examples <= 0:
        raise ValueError(f"data.synthetic.num_examples: must be positive, got {cfg.num_examples}")
    if cfg.num_dense < 0:
        raise ValueError(f"data.synthetic.num_dense: must be >= 0, got {cfg.num_dense}")
    if not cfg.cardinalities or min(cfg.cardinalities) < 1:
        raise ValueError(
            "data.synthetic.cardinalities: need at least one field, each with >= 1 row, "
            f"got {cfg.cardinalities}"
        )
    if not cfg.zipf_exponent > 0:
        raise ValueError(f"data.synthetic.zipf_exponent: must be positive, got {cfg.zipf_exponent}")
    if not cfg.signal_scale >= 0:
        raise ValueError(f"data.synthetic.signal_scale: must be >= 0, got {cfg.signal_scale}")
    resolve_population_ranks(cfg)


def _draw_populations(seed: int, populations: int, n: int) -> np.ndarray | None:
    """[n] int64 hidden population of each row, uniform over [0, populations); None for one population."""
    if populations == 1:
        return None
    return _rng(seed, _TAG_POPULATION).integers(0, populations, size=n, dtype=np.int64)


def population_ids(cfg: SyntheticConfig, seed: int) -> torch.Tensor | None:
    """[num_examples] int64 population of each row that `generate(cfg, seed)` makes (in its row order),
    without generating the rows; None with one population.

    Raises:
        ValueError: an invalid synthetic config value (the message names the key).
    """
    _validate(cfg)
    population = _draw_populations(seed, cfg.populations, cfg.num_examples)
    return None if population is None else torch.from_numpy(population)


def _zipf_ids(
    seed: int,
    field_index: int,
    cardinality: int,
    exponent: float,
    n: int,
    population: np.ndarray | None = None,
    num_populations: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Ids of one field: Zipf popularity ranks mapped through a seeded permutation (one per population:
    population 0 uses the single-population permutation, p > 0 its own).

    Returns:
        ids [n] int64 and their popularity ranks [n] int64 (0 = most popular).
    """
    weights = np.arange(1, cardinality + 1, dtype=np.float64) ** -exponent
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]
    u = _rng(seed, _TAG_IDS, field_index).random(n)
    popularity_rank = np.minimum(np.searchsorted(cdf, u, side="right"), cardinality - 1)
    perm = _rng(seed, _TAG_PERM, field_index).permutation(cardinality)
    if population is None:
        return perm[popularity_rank].astype(np.int64), popularity_rank.astype(np.int64)
    ids = np.empty(n, dtype=np.int64)
    for p in range(num_populations):
        rows = population == p
        perm_p = perm if p == 0 else _rng(seed, _TAG_PERM, field_index, p).permutation(cardinality)
        ids[rows] = perm_p[popularity_rank[rows]]
    return ids, popularity_rank.astype(np.int64)


def head_amplitude(popularity: np.ndarray) -> np.ndarray:
    """Scale of an id's latent vector by its Zipf popularity rank k (0 = most popular): (1 + k/K)^-2.

    Why: with ~10^5 rows only the head of a big field is seen often enough to learn an r_f-dim vector;
    planting the same signal in ids seen once or twice would make it unlearnable (wide fields would
    not need wide embeddings in practice). Fields of <= K ids keep amplitude >= 1/4 on every id.
    """
    return (1.0 + popularity / SIGNAL_HEAD) ** -2.0


def _dense_features(seed: int, num_dense: int, n: int) -> np.ndarray:
    """[n, num_dense] float32 log(x + 1) of zero-inflated discretised log-normal counts."""
    out = np.empty((n, num_dense), dtype=np.float32)
    for j in range(num_dense):
        rng = _rng(seed, _TAG_DENSE, j)
        zero_prob, mu, sigma = rng.uniform(0.05, 0.5), rng.uniform(0.0, 5.0), rng.uniform(0.5, 1.5)
        counts = np.floor(np.exp(mu + sigma * rng.standard_normal(n)))
        counts[rng.random(n) < zero_prob] = 0.0
        out[:, j] = np.log1p(counts)
    return out


def _interaction_score(
    seed: int, ids: np.ndarray, popularity: np.ndarray, ranks: list[int], population: int = 0
) -> np.ndarray:
    """[N] sum over field pairs of <v_f, v_g> with centred, zero-padded latent vectors (see module doc).

    Args:
        seed: generator seed.
        ids: [N, F] ids (all rows of one population).
        popularity: [N, F] Zipf popularity rank (0 = most popular) of each id.
        ranks: r_f per field.
        population: p, whose latent vectors are used.
    """
    n = ids.shape[0]
    r_max = max(ranks, default=0)
    total = np.zeros((n, r_max))  # sum_f v_f, [N, R_max]
    squares = np.zeros(n)  # sum_f ||v_f||^2, [N]
    for f, rank in enumerate(ranks):
        if rank == 0:
            continue
        unique, inverse = np.unique(ids[:, f], return_inverse=True)
        table = latent_vectors(seed, f, unique, rank, population)  # [U, r_f]: only ids that occur
        unique_popularity = np.empty(len(unique))
        unique_popularity[inverse] = popularity[:, f]
        table *= head_amplitude(unique_popularity)[:, None]
        # Centre by the row-weighted mean so the field has no first-order effect on the label.
        table -= np.bincount(inverse, minlength=len(unique)) @ table / n
        v = table[inverse]  # [N, r_f]
        total[:, :rank] += v
        squares += np.einsum("nr,nr->n", v, v)
    return 0.5 * (np.einsum("nr,nr->n", total, total) - squares)


def _standardised(x: np.ndarray) -> np.ndarray:
    std = x.std()
    return (x - x.mean()) / std if std > 0 else np.zeros_like(x)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # no overflow for large |x|, unlike 1 / (1 + exp(-x))


def _fit_bias(logit: np.ndarray, target: float) -> float:
    """b with mean(sigmoid(logit + b)) = target, by bisection (monotone in b)."""
    span = 50.0 + float(np.abs(logit).max(initial=0.0))
    lo, hi = -span, span
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if _sigmoid(logit + mid).mean() < target else (lo, mid)
    return 0.5 * (lo + hi)


def generate(cfg: SyntheticConfig, seed: int) -> tuple[Schema, CTRData, list[int]]:
    """Generates all rows of the synthetic data set (see the module docstring for the model).

    Args:
        cfg: sizes, cardinalities, planted ranks, Zipf exponent, signal scale and populations.
        seed: generator seed; the same (cfg, seed) gives the same bytes.

    Returns:
        The schema (dense `d0..`, sparse `c0..` with `num_embeddings` = cardinality, label "label"), the
        rows (dense [N, num_dense] float32, sparse [N, F] int64, labels [N] float32) and the planted rank
        of each sparse field (with populations: the maximum over them; the rows' populations are
        `population_ids(cfg, seed)`).

    Raises:
        ValueError: an invalid synthetic config value (the message names the key).
    """
    schema, data, ranks, _ = _generate(cfg, seed)
    return schema, data, ranks


def _generate(cfg: SyntheticConfig, seed: int) -> tuple[Schema, CTRData, list[int], np.ndarray | None]:
    """`generate`, plus the [N] int64 population of each row (None with one population)."""
    _validate(cfg)
    pop_ranks = resolve_population_ranks(cfg)
    ranks = resolve_ranks(cfg)
    n = cfg.num_examples
    population = _draw_populations(seed, cfg.populations, n)
    drawn = [
        _zipf_ids(seed, f, card, cfg.zipf_exponent, n, population, cfg.populations)
        for f, card in enumerate(cfg.cardinalities)
    ]
    ids = np.stack([d[0] for d in drawn], axis=1)  # [N, F]
    popularity = np.stack([d[1] for d in drawn], axis=1)  # [N, F]
    del drawn
    dense = _dense_features(seed, cfg.num_dense, n)  # [N, num_dense]

    if population is None:
        score = _interaction_score(seed, ids, popularity, pop_ranks[0])
    else:  # each population over its own rows: its ranks, its vectors, its centring
        score = np.zeros(n)
        for p, ranks_p in enumerate(pop_ranks):
            rows = np.flatnonzero(population == p)
            if rows.size:
                score[rows] = _interaction_score(seed, ids[rows], popularity[rows], ranks_p, p)
    interaction = _standardised(score)
    dense_term = np.zeros(n)
    if cfg.num_dense:
        weights = _rng(seed, _TAG_WEIGHTS).standard_normal(cfg.num_dense)
        z = dense.astype(np.float64)
        std = z.std(axis=0)
        z = (z - z.mean(axis=0)) / np.where(std > 0, std, 1.0)
        dense_term = _standardised(z @ weights)
    logit = cfg.signal_scale * (_INTERACTION_WEIGHT * interaction + _DENSE_WEIGHT * dense_term)
    logit = logit + _fit_bias(logit, TARGET_POSITIVE_RATE)
    prob = _sigmoid(logit)
    labels = (_rng(seed, _TAG_LABEL).random(n) < prob).astype(np.float32)

    schema = Schema(
        dense_names=[f"d{j}" for j in range(cfg.num_dense)],
        sparse=[SparseFeature(f"c{f}", card) for f, card in enumerate(cfg.cardinalities)],
        label="label",
    )
    data = CTRData(torch.from_numpy(dense), torch.from_numpy(ids), torch.from_numpy(labels))
    return schema, data, ranks, population


def _config_spec(cfg: SyntheticConfig) -> dict:
    """`cfg` as a dict; without the population keys when they are at their defaults (one population), so
    single-population cache keys and `planted.json` files are those of the generator before populations."""
    spec = dataclasses.asdict(cfg)
    if cfg.populations == 1 and cfg.population_ranks is None:
        del spec["populations"], spec["population_ranks"]
    return spec


def cache_key(cfg: SyntheticConfig, seed: int) -> str:
    """A short hash of everything that determines the generated bytes (config, resolved ranks, seed)."""
    spec = dataclasses.asdict(cfg)
    spec["true_ranks"] = resolve_ranks(cfg)
    # One population: population_ranks [r] gives the bytes of true_ranks r, and keys stay as before.
    del spec["populations"], spec["population_ranks"]
    if cfg.populations > 1:
        spec["populations"] = cfg.populations
        spec["population_ranks"] = resolve_population_ranks(cfg)
    payload = json.dumps({"synthetic": spec, "seed": seed, "version": _GENERATOR_VERSION}, sort_keys=True)
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
    data = CTRData(blob["dense"], blob["sparse"], blob["labels"])
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
        schema, data, ranks, population = _generate(cfg.synthetic, seed)
        if directory:
            _save(directory, cfg.synthetic, seed, schema, data, ranks, population)
    train, val, test = split_rows(len(data), cfg.split, cfg.split_seed)
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
        schema, data, ranks, drawn = _generate(cfg.synthetic, seed)
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
