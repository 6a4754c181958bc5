"""The synthetic generator: determinism, Criteo shape, Zipf ids, planted ranks, caching, learnability."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from torchrec_aes.config import DataConfig, SyntheticConfig
from torchrec_aes.data.dataset import CTRData
from torchrec_aes.data.synthetic import (
    DEFAULT_RANK_PATTERN,
    generate,
    load_synthetic,
    resolve_ranks,
    synthetic_cache_dir,
)

REPO = Path(__file__).parents[2]

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


@pytest.fixture
def one_thread():
    # Tiny ops: OpenMP threads only contend on a shared machine (measured 50x slower with 2 threads).
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.mark.filterwarnings("ignore:Sparse invariant checks")
def test_wide_fields_need_wide_embeddings_dim_32_beats_dim_4(one_thread) -> None:
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


def test_make_synthetic_tool_writes_the_cache_and_prints_the_ranks(tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "tools" / "make_synthetic.py"), "--out", str(tmp_path), "--rows", "500"],
        capture_output=True,
        text=True,
        check=True,
    )
    lines = result.stdout.splitlines()
    assert "500 rows" in lines[1]
    table = {line.split()[0]: line.split() for line in lines[3:]}
    assert table["c2"][1:3] == ["100", "32"] and table["c0"][1:3] == ["10", "0"]
    (directory,) = tmp_path.iterdir()
    assert sorted(p.name for p in directory.iterdir()) == ["data.pt", "planted.json"]
