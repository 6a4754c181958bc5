"""The synthetic generator: determinism, Criteo shape, Zipf ids, planted ranks, caching, learnability,
hidden populations."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from torchrec_aes.config import ConfigError, DataConfig, SyntheticConfig, load_config
from torchrec_aes.data.dataset import CTRData, split_rows
from torchrec_aes.data.planted import (
    DEFAULT_RANK_PATTERN,
    generate,
    population_ids,
    resolve_population_ranks,
    resolve_ranks,
)
from torchrec_aes.data.synthetic import cache_key, load_populations, load_synthetic, synthetic_cache_dir

# Small but structured: a 30-id wide field to stratify on, signal-free fields from 10 to 10^5 rows.
MIXED = SyntheticConfig(
    num_examples=50_000,
    num_dense=4,
    cardinalities=[10, 30, 1_000, 100, 300, 100_000, 1_000],
    true_ranks=[0, 32, 0, 8, 32, 0, 2],
)


@pytest.fixture(scope="module")
def mixed() -> tuple[CTRData, list[int]]:
    _, data, ranks = generate(MIXED, seed=0)
    return data, ranks


def _tensor_bytes(data: CTRData) -> bytes:
    return b"".join(t.numpy().tobytes() for t in (data.dense, data.sparse, data.labels))


def test_same_seed_gives_identical_bytes_and_other_seed_differs() -> None:
    cfg = SyntheticConfig(num_examples=3_000, num_dense=3, cardinalities=[10, 1_000, 100_000])
    _, a, _ = generate(cfg, seed=7)
    _, b, _ = generate(cfg, seed=7)
    _, c, _ = generate(cfg, seed=8)
    assert _tensor_bytes(a) == _tensor_bytes(b)
    assert not torch.equal(a.sparse, c.sparse)
    assert not torch.equal(a.labels, c.labels)
    assert not torch.equal(a.dense, c.dense)


def test_rows_are_criteo_shaped_with_ids_inside_each_table(mixed) -> None:
    data, ranks = mixed
    schema, _, _ = generate(SyntheticConfig(num_examples=10, num_dense=4, cardinalities=[10, 30]), 0)
    assert schema.dense_names == ["d0", "d1", "d2", "d3"]
    assert schema.sparse_names == ["c0", "c1"] and schema.label == "label"
    assert [f.num_embeddings for f in schema.sparse] == [10, 30]

    n, num_fields = MIXED.num_examples, len(MIXED.cardinalities)
    assert data.dense.shape == (n, 4) and data.dense.dtype == torch.float32
    assert data.sparse.shape == (n, num_fields) and data.sparse.dtype == torch.int64
    assert data.labels.shape == (n,) and data.labels.dtype == torch.float32
    assert ranks == MIXED.true_ranks
    assert set(data.labels.unique().tolist()) == {0.0, 1.0}
    # Dense features are log(count + 1): finite, non-negative, with exact zeros for zero counts.
    assert torch.isfinite(data.dense).all() and (data.dense >= 0).all() and (data.dense == 0).any()
    assert (data.sparse >= 0).all()
    assert (data.sparse < torch.tensor(MIXED.cardinalities)).all()


def test_positive_rate_is_between_20_and_30_percent_for_the_default_fields() -> None:
    for seed in (0, 1):
        _, data, _ = generate(SyntheticConfig(num_examples=20_000), seed)
        assert 0.2 <= float(data.labels.mean()) <= 0.3
    _, strong, _ = generate(SyntheticConfig(num_examples=20_000, signal_scale=4.0), 0)
    assert 0.2 <= float(strong.labels.mean()) <= 0.3


def test_ids_of_a_million_row_field_are_zipf_skewed_and_popular_ids_are_scattered() -> None:
    _, data, _ = generate(SyntheticConfig(num_examples=20_000, num_dense=1, cardinalities=[1_000_000]), 0)
    counts = torch.bincount(data.sparse[:, 0], minlength=1_000_000).sort(descending=True).values
    top_share = float(counts[:10_000].sum()) / 20_000  # the top 1% of the table's ids
    assert top_share > 0.6, f"top 1% of ids cover only {top_share:.0%} of rows"
    top_ids = torch.bincount(data.sparse[:, 0]).topk(10).indices
    assert int(top_ids.max()) > 1_000, "popular ids are not permuted away from 0, 1, 2, ..."


def _top_codes(x: np.ndarray, m: int) -> np.ndarray:
    """Codes 0..m-1 for the m most frequent values of x, m for the rest."""
    values, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    code_of_value = np.full(len(values), m)
    top = np.argsort(-counts, kind="stable")[:m]
    code_of_value[top] = np.arange(len(top))
    return code_of_value[inverse]


def _dependence_z(field: np.ndarray, strata: np.ndarray, labels: np.ndarray) -> float:
    """Chi-square test of label ⫫ field (top 20 ids) within strata of another field (top 10 ids).

    Returns (chi2 - df) / sqrt(2 df): about N(0, 1) under independence, large when the field's ids
    shift the label either on their own or through an interaction with the stratifying field.
    """
    a, s = _top_codes(field, 20), _top_codes(strata, 10)
    chi2, df = 0.0, 0
    for stratum in np.unique(s):
        in_s = s == stratum
        p = labels[in_s].mean()
        n = np.bincount(a[in_s], minlength=21)
        k = np.bincount(a[in_s], weights=labels[in_s], minlength=21)
        seen = n > 0
        chi2 += float(((k[seen] - n[seen] * p) ** 2 / (n[seen] * p * (1 - p))).sum())
        df += int(seen.sum()) - 1
    return (chi2 - df) / np.sqrt(2 * df)


def test_signal_free_fields_are_independent_of_the_label_and_signal_fields_are_not(mixed) -> None:
    data, ranks = mixed
    ids, labels = data.sparse.numpy(), data.labels.numpy()
    stratifier = 1  # a 30-id, rank-32 field: every signal field interacts with it
    no_strata = np.zeros(len(labels), dtype=np.int64)
    for f, rank in enumerate(ranks):
        if f == stratifier:
            continue
        z_within = _dependence_z(ids[:, f], ids[:, stratifier], labels)
        z_marginal = _dependence_z(ids[:, f], no_strata, labels)
        if rank == 0:
            assert z_within < 4 and z_marginal < 4, f"signal-free c{f}: z = {z_within:.1f}, {z_marginal:.1f}"
        else:
            # The same statistic detects a planted field, so the check above has power.
            assert z_within > 10, f"c{f} (rank {rank}) looks independent of the label: z = {z_within:.1f}"


def test_default_ranks_mix_signal_free_wide_and_narrow_fields_across_cardinalities() -> None:
    cfg = SyntheticConfig()
    ranks = resolve_ranks(cfg)
    assert ranks == DEFAULT_RANK_PATTERN
    free = [c for c, r in zip(cfg.cardinalities, ranks, strict=True) if r == 0]
    wide = [c for c, r in zip(cfg.cardinalities, ranks, strict=True) if r >= 32]
    narrow = [r for r in ranks if 0 < r < 32]
    assert 5 <= len(free) <= 8 and 3 <= len(wide) <= 5
    assert all(2 <= r <= 8 for r in narrow)
    for group in (free, wide):
        assert min(group) <= 100 and max(group) == 1_000_000


def test_true_ranks_of_the_wrong_length_are_rejected_naming_the_key() -> None:
    with pytest.raises(ValueError, match="data.synthetic.true_ranks"):
        generate(SyntheticConfig(num_examples=10, cardinalities=[10, 10], true_ranks=[4]), 0)
    with pytest.raises(ValueError, match="data.synthetic.cardinalities"):
        generate(SyntheticConfig(num_examples=10, cardinalities=[10, 0]), 0)


def test_load_writes_planted_ranks_next_to_the_data_and_splits_8_1_1(tmp_path) -> None:
    cfg = DataConfig(split_seed=3, synthetic=SyntheticConfig(num_examples=2_000, cardinalities=[10, 300, 5]))
    splits, ranks = load_synthetic(cfg, str(tmp_path))
    directory = Path(synthetic_cache_dir(str(tmp_path), cfg.synthetic, 3))
    assert sorted(p.name for p in directory.iterdir()) == ["data.pt", "planted.json"]
    planted = json.loads((directory / "planted.json").read_text())
    assert planted["fields"] == [
        {"name": "c0", "cardinality": 10, "true_rank": 0, "effective_rank": 0},
        {"name": "c1", "cardinality": 300, "true_rank": 4, "effective_rank": 4},
        # 5 ids centred span at most 4 dims.
        {"name": "c2", "cardinality": 5, "true_rank": 32, "effective_rank": 4},
    ]
    assert ranks == [0, 4, 32] and planted["seed"] == 3
    assert (len(splits.train), len(splits.val), len(splits.test)) == (1_600, 200, 200)
    _, full, _ = generate(cfg.synthetic, seed=3)
    rows = torch.cat([splits.train.sparse, splits.val.sparse, splits.test.sparse])
    assert torch.equal(rows.sort(dim=0).values, full.sparse.sort(dim=0).values)


def test_cache_hit_returns_identical_tensors_without_rewriting(tmp_path) -> None:
    cfg = DataConfig(synthetic=SyntheticConfig(num_examples=2_000, cardinalities=[10, 1_000]))
    first, _ = load_synthetic(cfg, str(tmp_path))
    data_file = Path(synthetic_cache_dir(str(tmp_path), cfg.synthetic, 0)) / "data.pt"
    stamp = data_file.stat().st_mtime_ns
    second, ranks = load_synthetic(cfg, str(tmp_path))
    assert data_file.stat().st_mtime_ns == stamp
    for a, b in ((first.train, second.train), (first.val, second.val), (first.test, second.test)):
        assert _tensor_bytes(a) == _tensor_bytes(b)
    assert second.schema == first.schema and ranks == resolve_ranks(cfg.synthetic)
    # Another seed is another cache entry.
    load_synthetic(DataConfig(split_seed=1, synthetic=cfg.synthetic), str(tmp_path))
    assert len(list(tmp_path.iterdir())) == 2


def test_empty_cache_dir_generates_without_writing(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    splits, _ = load_synthetic(DataConfig(synthetic=SyntheticConfig(num_examples=100)), "")
    assert len(splits.train) == 80 and list(tmp_path.iterdir()) == []


def _auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """ROC AUC by the rank-sum (Mann-Whitney) formula; scores have no ties in practice."""
    ranks = torch.empty_like(scores)
    ranks[scores.argsort()] = torch.arange(1, len(scores) + 1, dtype=scores.dtype)
    pos = labels.bool()
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _factorisation_machine_auc(data: CTRData, dim: int, seed: int, epochs: int = 3) -> float:
    """Test AUC of a plain-torch FM (pairwise dot products of dim-`dim` embeddings + dense linear)."""
    torch.manual_seed(seed)
    n_train = int(0.8 * len(data))
    compact, sizes = [], []
    for f in range(data.sparse.shape[1]):  # renumber to the ids that occur: small tables
        values, inverse = data.sparse[:, f].unique(return_inverse=True)
        compact.append(inverse + sum(sizes))
        sizes.append(len(values))
    ids = torch.stack(compact, dim=1)  # [N, F]
    table = torch.nn.Embedding(sum(sizes), dim, sparse=True)
    torch.nn.init.normal_(table.weight, std=0.1 / dim**0.5)
    linear = torch.nn.Linear(data.dense.shape[1], 1)
    sparse_opt = torch.optim.Adagrad(table.parameters(), lr=0.05)
    dense_opt = torch.optim.Adam(linear.parameters(), lr=0.01)

    def logits(rows: torch.Tensor) -> torch.Tensor:
        e = table(ids[rows])  # [B, F, dim]
        s = e.sum(dim=1)
        return linear(data.dense[rows]).squeeze(1) + 0.5 * ((s * s).sum(1) - (e * e).sum((1, 2)))

    for _ in range(epochs):
        for rows in torch.randperm(n_train).split(256):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits(rows), data.labels[rows])
            sparse_opt.zero_grad()
            dense_opt.zero_grad()
            loss.backward()
            sparse_opt.step()
            dense_opt.step()
    test = torch.arange(n_train, len(data))
    with torch.no_grad():
        return _auc(logits(test), data.labels[test])


@pytest.mark.filterwarnings("ignore:Sparse invariant checks")
@pytest.mark.usefixtures("single_thread")  # tiny ops: measured 50x slower with 2 contending threads
def test_wide_fields_need_wide_embeddings_dim_32_beats_dim_4() -> None:
    cfg = SyntheticConfig(
        num_examples=50_000,
        num_dense=4,
        cardinalities=[100, 300, 1_000, 30, 10_000, 100],
        true_ranks=[32, 32, 32, 4, 0, 0],
    )
    _, data, _ = generate(cfg, seed=0)
    auc = {dim: float(np.mean([_factorisation_machine_auc(data, dim, s) for s in (0, 1)])) for dim in (4, 32)}
    print(f"FM test AUC: dim 4 {auc[4]:.4f}, dim 32 {auc[32]:.4f}")
    assert auc[4] > 0.7, "the planted signal is not learnable"
    assert auc[32] > auc[4] + 0.02


# --- Populations ---------------------------------------------------------------------------------------


def _sha(t: torch.Tensor) -> str:
    return hashlib.sha256(t.numpy().tobytes()).hexdigest()[:16]


def test_one_population_gives_the_bytes_of_the_generator_before_populations() -> None:
    # Hashes recorded from the generator before populations existed: caches must keep their content/key.
    cfg = SyntheticConfig(num_examples=2_000, num_dense=3, cardinalities=[10, 100, 1_000, 100_000])
    _, data, ranks = generate(cfg, seed=5)
    assert ranks == [0, 4, 32, 2]
    assert _sha(data.sparse) == "fef9332fe19d7270"
    assert _sha(data.dense) == "45b07a5317fd83e4"
    assert _sha(data.labels) == "3274a3ec2a905a32"
    assert cache_key(cfg, 5) == "e22c4f4b7afb0bd8"
    assert population_ids(cfg, 5) is None
    # population_ranks with one population is true_ranks by another name.
    same = SyntheticConfig(
        num_examples=2_000, num_dense=3, cardinalities=cfg.cardinalities, population_ranks=[ranks]
    )
    assert _tensor_bytes(generate(same, seed=5)[1]) == _tensor_bytes(data)
    assert cache_key(same, 5) == cache_key(cfg, 5)


def test_default_population_ranks_rotate_the_pattern_by_a_share_of_the_fields() -> None:
    pattern = DEFAULT_RANK_PATTERN
    assert resolve_population_ranks(SyntheticConfig()) == [pattern]
    two = resolve_population_ranks(SyntheticConfig(populations=2))
    assert two == [pattern, pattern[10:] + pattern[:10]]
    three = resolve_population_ranks(SyntheticConfig(populations=3))
    assert three[1] == pattern[6:] + pattern[:6] and three[2] == pattern[12:] + pattern[:12]
    # Reports show the per-field maximum.
    assert resolve_ranks(SyntheticConfig(populations=2)) == [max(a, b) for a, b in zip(*two, strict=True)]
    cfg = SyntheticConfig(
        num_examples=100, cardinalities=[10, 20, 30, 40], true_ranks=[8, 0, 2, 0], populations=2
    )
    assert resolve_population_ranks(cfg) == [[8, 0, 2, 0], [2, 0, 8, 0]]
    assert generate(cfg, 0)[2] == [8, 0, 8, 0]


def test_two_populations_split_rows_evenly_and_have_different_popular_ids() -> None:
    cfg = SyntheticConfig(num_examples=4_000, num_dense=2, cardinalities=[100, 1_000, 10], populations=2)
    _, data, ranks = generate(cfg, seed=0)
    population = population_ids(cfg, seed=0)
    assert population is not None and population.shape == (4_000,) and population.dtype == torch.int64
    # The population is hidden: the columns are those of a single-population data set.
    assert data.sparse.shape == (4_000, 3) and data.dense.shape == (4_000, 2)
    share = float((population == 1).float().mean())
    assert 0.45 < share < 0.55 and set(population.unique().tolist()) == {0, 1}
    # Population 0 keeps the single-population ids; population 1 draws through its own permutation.
    _, single, _ = generate(dataclasses.replace(cfg, populations=1), seed=0)
    zero = population == 0
    assert torch.equal(data.sparse[zero], single.sparse[zero])
    assert not torch.equal(data.sparse[~zero, 0], single.sparse[~zero, 0])
    # The population is recoverable from the ids: each has its own most popular id of the 100-id field.
    top = [int(torch.bincount(data.sparse[population == p, 0]).argmax()) for p in (0, 1)]
    assert top[0] != top[1]
    assert torch.equal(generate(cfg, seed=0)[1].sparse, data.sparse)  # still deterministic


def test_each_population_s_label_depends_only_on_its_own_informative_fields() -> None:
    # Rotation by 3 of 6 fields: population 0 plants on c0-c2, population 1 on c3-c5.
    cfg = SyntheticConfig(
        num_examples=40_000,
        num_dense=2,
        cardinalities=[30, 100, 300, 30, 100, 300],
        true_ranks=[32, 8, 4, 0, 0, 0],
        populations=2,
    )
    _, data, ranks = generate(cfg, seed=0)
    population = population_ids(cfg, seed=0)
    assert population is not None
    per_population = resolve_population_ranks(cfg)
    assert per_population == [[32, 8, 4, 0, 0, 0], [0, 0, 0, 32, 8, 4]] and ranks == [32, 8, 4, 32, 8, 4]
    ids, labels = data.sparse.numpy(), data.labels.numpy()
    for p, stratifier in ((0, 0), (1, 3)):  # each population's 30-id rank-32 field
        rows = (population == p).numpy()
        for f, rank in enumerate(per_population[p]):
            if f == stratifier:
                continue
            z = _dependence_z(ids[rows, f], ids[rows, stratifier], labels[rows])
            if rank == 0:  # informative in the other population only
                assert z < 4, f"population {p}: c{f} (rank 0 here) depends on the label: z = {z:.1f}"
            else:
                assert z > 10, f"population {p}: c{f} (rank {rank}) looks independent: z = {z:.1f}"


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"populations": 0}, "data.synthetic.populations"),
        ({"populations": 2, "population_ranks": [[0, 4]]}, "data.synthetic.population_ranks"),
        ({"populations": 2, "population_ranks": [[0, 4], [4]]}, "data.synthetic.population_ranks"),
        ({"populations": 2, "population_ranks": [[0, 4], [4, -1]]}, "data.synthetic.population_ranks"),
        ({"populations": 2, "population_ranks": [[0, 4], [4, 0]], "true_ranks": [0, 4]}, "population_ranks"),
    ],
)
def test_invalid_population_settings_are_one_line_errors_naming_the_key(changes, key) -> None:
    cfg = dataclasses.replace(SyntheticConfig(num_examples=10, cardinalities=[10, 10]), **changes)
    with pytest.raises(ValueError, match=key) as info:
        generate(cfg, 0)
    assert "\n" not in str(info.value)


def test_config_checks_populations_and_population_ranks_at_load() -> None:
    cfg = load_config(None, ["data.synthetic.populations=2", "data.synthetic.population_ranks=[[0,4],[4,0]]"])
    assert cfg.data.synthetic.populations == 2 and cfg.data.synthetic.population_ranks == [[0, 4], [4, 0]]
    with pytest.raises(ConfigError, match="data.synthetic.population_ranks") as info:
        load_config(None, ["data.synthetic.populations=2", "data.synthetic.population_ranks=[[0,4],[4,-1]]"])
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="data.synthetic.populations"):
        load_config(None, ["data.synthetic.populations=0"])


def test_load_populations_gives_the_ids_of_each_split_and_uses_the_cache(tmp_path) -> None:
    synthetic = SyntheticConfig(num_examples=2_000, num_dense=2, cardinalities=[10, 100, 30], populations=2)
    cfg = DataConfig(split_seed=4, synthetic=synthetic)
    assert load_populations(DataConfig(synthetic=dataclasses.replace(synthetic, populations=1)), "") is None

    populations = load_populations(cfg, str(tmp_path))  # no cache yet: generates and writes it
    assert populations is not None
    directory = Path(synthetic_cache_dir(str(tmp_path), synthetic, 4))
    data_file = directory / "data.pt"
    stamp = data_file.stat().st_mtime_ns
    splits, ranks = load_synthetic(cfg, str(tmp_path))  # a cache hit
    assert data_file.stat().st_mtime_ns == stamp
    assert [len(populations[k]) for k in ("train", "val", "test")] == [1_600, 200, 200]
    assert (len(splits.train), len(splits.val), len(splits.test)) == (1_600, 200, 200)
    assert all(t.dtype == torch.int64 for t in populations.values())

    # The ids are those of the generator's rows, in the order of load_synthetic's splits.
    full = population_ids(synthetic, 4)
    assert full is not None
    train, val, test = split_rows(2_000, cfg.split, 4)
    assert torch.equal(populations["train"], full[train]) and torch.equal(populations["test"], full[test])
    assert torch.equal(populations["val"], full[val])
    blob = torch.load(data_file, weights_only=True)
    assert blob["population"].dtype == torch.int8 and torch.equal(blob["population"].long(), full)
    assert torch.equal(splits.train.sparse, generate(synthetic, 4)[1].sparse[train])

    planted = json.loads((directory / "planted.json").read_text())
    assert [entry["population"] for entry in planted["populations"]] == [0, 1]
    assert sum(entry["share"] for entry in planted["populations"]) == pytest.approx(1.0)
    assert planted["populations"][1]["share"] == pytest.approx(float(full.float().mean()))
    per_population = resolve_population_ranks(synthetic)
    for entry, expected in zip(planted["populations"], per_population, strict=True):
        assert [field["true_rank"] for field in entry["fields"]] == expected
    assert [field["true_rank"] for field in planted["fields"]] == ranks == resolve_ranks(synthetic)

    again = load_populations(cfg, str(tmp_path))  # read, not regenerated
    assert again is not None and data_file.stat().st_mtime_ns == stamp
    assert all(torch.equal(again[k], populations[k]) for k in populations)
    uncached = load_populations(cfg, "")
    assert uncached is not None and all(torch.equal(uncached[k], populations[k]) for k in populations)
