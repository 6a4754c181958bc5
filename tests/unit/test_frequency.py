"""Frequency buckets (kind `frequency`): ranks from the training split, the id remap, the per-feature
pooling, the architecture's checks, and the `mde` / `hashed` baselines under budgets down to 1/64."""

import dataclasses

import pytest
import torch
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from tests.helpers import tiny_config, tiny_splits
from torchrec_aes.architecture import Architecture, kind_of
from torchrec_aes.data.dataset import CTRData, Splits
from torchrec_aes.models.ctr import build_ctr_model
from torchrec_aes.models.frequency import (
    FrequencyLookup,
    block_ends,
    bucket_key,
    check_frequency,
    feature_ranks,
    frequency_architecture,
    ranks_from_counts,
)
from torchrec_aes.planning.memory import Budget, arch_bytes
from torchrec_aes.search.base import SearchContext, get_method
from torchrec_aes.search.baselines import fit_hashed, fit_mde, mde_buckets
from torchrec_aes.tasks.ctr import CTRTask
from torchrec_aes.train.trainer import Trainer

pytestmark = pytest.mark.usefixtures("single_thread")


def test_ranks_put_the_most_frequent_first_and_break_ties_by_id():
    counts = torch.tensor([3, 0, 7, 3, 1])
    assert ranks_from_counts(counts).tolist() == [1, 4, 0, 2, 3]


def test_ranks_come_from_the_training_split_only():
    splits = tiny_splits(2000)
    task = CTRTask(tiny_config(), splits)
    before = {k: v.clone() for k, v in feature_ranks(task).items()}
    # Other validation and test rows: the same ranks.
    val = splits.val
    shuffled = CTRData(val.dense, torch.zeros_like(val.sparse), val.labels)
    other = CTRTask(tiny_config(), Splits(splits.schema, splits.train, shuffled, shuffled))
    assert all(torch.equal(before[k], v) for k, v in feature_ranks(other).items())
    # The counts behind them are the training rows' own.
    counts = torch.bincount(splits.train.sparse[:, 2], minlength=1000)
    assert torch.equal(feature_ranks(task)["c2"], ranks_from_counts(counts))


def _arch(schema, dims=(16, 8), hashed_rows=None):
    """Two buckets per feature: the 10 most frequent ids exactly, the rest (hashed to `hashed_rows`)."""
    spec = {}
    for f in schema.sparse:
        if f.num_embeddings <= 10:
            spec[f.name] = [(f.num_embeddings, f.num_embeddings, dims[0])]
        else:
            rest = f.num_embeddings - 10
            spec[f.name] = [(10, 10, dims[0]), (f.num_embeddings, min(rest, hashed_rows or rest), dims[1])]
    return frequency_architecture(schema, spec)


def test_remap_sends_every_id_to_its_bucket_row_and_keeps_bags():
    schema = tiny_splits(100).schema
    arch = _arch(schema, hashed_rows=7)
    n = {f.name: f.num_embeddings for f in schema.sparse}
    ranks = {
        name: torch.randperm(size, generator=torch.Generator().manual_seed(1)) for name, size in n.items()
    }
    lookup = FrequencyLookup(arch, ranks)
    # Bags of 0, 1 and 3 ids of feature c1 (the other features one id each).
    keys = [f.name for f in schema.sparse]
    bags = {k: [[0], [1], [2]] for k in keys}
    bags["c1"] = [[], [5], [3, 40, 99]]
    values = torch.tensor([i for k in keys for bag in bags[k] for i in bag])
    lengths = torch.tensor([len(bag) for k in keys for bag in bags[k]], dtype=torch.int32)
    out = lookup.remap(
        KeyedJaggedTensor.from_lengths_sync(keys=keys, values=values, lengths=lengths)
    ).to_dict()
    for k in keys:
        for row, bag in enumerate(bags[k]):
            got: list[tuple[int, int]] = []
            for b in range(2 if n[k] > 10 else 1):
                jt = out[bucket_key(k, b)]
                offsets = jt.offsets()
                got += [(b, int(v)) for v in jt.values()[offsets[row] : offsets[row + 1]]]
            want = []
            for i in bag:
                r = int(ranks[k][i])
                want.append((0, r) if r < 10 or n[k] <= 10 else (1, (r - 10) % 7))
            assert sorted(got) == sorted(want), (k, row)


def test_pooled_embedding_is_the_ids_row_zero_padded_to_the_widest_bucket():
    schema = tiny_splits(100).schema
    arch = _arch(schema, dims=(8, 4))
    ranks = {f.name: torch.arange(f.num_embeddings) for f in schema.sparse}
    lookup = FrequencyLookup(arch, ranks)
    tables = lookup.wrap(EmbeddingBagCollection(tables=arch.to_ebc_configs()))
    assert {c.name: c.embedding_dim for c in tables.embedding_bag_configs()} == {
        f"t_{f.name}": 8 for f in schema.sparse
    }
    keys = [f.name for f in schema.sparse]
    ids = torch.tensor([[3, 3, 3, 3, 3], [0, 50, 500, 20, 400]])  # a hot id and a cold one per feature
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=keys, values=ids.t().reshape(-1), lengths=torch.ones(ids.numel(), dtype=torch.int32)
    )
    pooled = tables(lookup.remap(kjt)).to_dict()
    weights = {name.removeprefix("embedding_bags."): w for name, w in tables.inner.state_dict().items()}
    for i, k in enumerate(keys):
        hot = weights[f"t_{bucket_key(k, 0)}.weight"][3]
        assert torch.allclose(pooled[k][0], hot)
        cold_id = int(ids[1, i])
        if cold_id < 10:
            assert torch.allclose(pooled[k][1], weights[f"t_{bucket_key(k, 0)}.weight"][cold_id])
        else:
            row = weights[f"t_{bucket_key(k, 1)}.weight"][cold_id - 10]
            assert torch.allclose(pooled[k][1], torch.cat([row, torch.zeros(4)]))


def test_one_exact_bucket_per_feature_scores_like_one_table_per_feature():
    splits = tiny_splits(600)
    cfg = tiny_config()
    schema = splits.schema
    freq = frequency_architecture(
        schema, {f.name: [(f.num_embeddings, f.num_embeddings, 8)] for f in schema.sparse}
    )
    task = CTRTask(cfg, splits)
    ranks = feature_ranks(task)
    lookup = FrequencyLookup(freq, ranks)
    torch.manual_seed(0)
    plain = build_ctr_model(
        "dlrm", EmbeddingBagCollection(Architecture.uniform(schema, 8).to_ebc_configs()), 4, cfg.model
    )
    model = build_ctr_model("dlrm", lookup.wrap(EmbeddingBagCollection(freq.to_ebc_configs())), 4, cfg.model)
    state = plain.state_dict()
    own = {}
    for name in model.state_dict():
        if name.startswith("sparse_arch.inner."):
            feature = name.split("embedding_bags.t_")[1].split("__b")[0]
            rows = state[f"sparse_arch.embedding_bags.t_{feature}.weight"]
            own[name] = torch.empty_like(rows)
            own[name][ranks[feature]] = rows  # the bucket table's row rank[id] holds id's row
        else:
            own[name] = state[name]
    model.load_state_dict(own)
    batch = next(splits.test.batches([f.name for f in schema.sparse], 32))
    remapped = lookup.batch(batch)
    assert torch.allclose(
        model(remapped.dense_features, remapped.sparse_features),
        plain(batch.dense_features, batch.sparse_features),
        atol=1e-5,
    )


def test_check_refuses_what_does_not_cover_the_data():
    schema = tiny_splits(100).schema
    arch = _arch(schema)
    check_frequency(arch, schema)
    bad = dataclasses.replace(arch, extra={"frequency": {**arch.extra["frequency"], "c1": [10, 99]}})
    with pytest.raises(ValueError, match=r"extra.frequency.c1: \[10, 99\]; .* 100 ids"):
        check_frequency(bad, schema)
    tables = [dataclasses.replace(t, num_embeddings=91) if t.name == "t_c1__b1" else t for t in arch.tables]
    with pytest.raises(ValueError, match=r"'t_c1__b1' has 91 rows; its bucket holds ranks \[10, 100\)"):
        check_frequency(dataclasses.replace(arch, tables=tables), schema)
    with pytest.raises(ValueError, match="no table 't_c2__b1'"):
        check_frequency(
            dataclasses.replace(arch, tables=[t for t in arch.tables if t.name != "t_c2__b1"]), schema
        )


def test_saved_architecture_loads_and_trains_as_its_kind(tmp_path):
    splits = tiny_splits(3000)
    cfg = tiny_config()
    cfg.train.epochs = 2
    arch = _arch(splits.schema)
    path = str(tmp_path / "architecture.yaml")
    arch.save(path)
    loaded = Architecture.load(path)
    assert loaded.kind == "frequency" and loaded.extra == arch.extra
    train_arch, hooks = kind_of(loaded).training_form(loaded, path, splits.schema)
    assert hooks is None
    result = Trainer(cfg, CTRTask(cfg, splits), train_arch, str(tmp_path), "train").fit()
    # Feature c1's parity drives the label: every id has its own row in one of its two buckets.
    assert result["test"]["auc"] > 0.9


def _ctx(text: str, precision: str = "fp32") -> SearchContext:
    splits = tiny_splits(3000)
    cfg = tiny_config()
    cfg.search.precision = precision
    return SearchContext(cfg, CTRTask(cfg, splits), Budget.parse(text, splits.schema))


def test_block_ends_and_mde_dims_shrink_with_frequency():
    assert block_ends(1000, [0.01, 0.1, 1.0]) == [10, 100, 1000]
    assert block_ends(10, [0.01, 0.1, 1.0]) == [1, 10]
    counts = torch.tensor([100] * 10 + [10] * 90 + [0] * 900)
    buckets = mde_buckets(counts, [10, 100, 1000], alpha=0.5, scale=400.0, high=64)
    dims = [d for _, _, d in buckets]
    assert dims[0] >= dims[1] and buckets[2] == (1000, 1, 4)  # never-seen ids share one row


@pytest.mark.parametrize("fraction", [1 / 16, 1 / 64])
@pytest.mark.parametrize("fit", [fit_mde, fit_hashed])
def test_frequency_baselines_fill_budgets_below_every_uniform_table(fit, fraction):
    ctx = _ctx(f"{fraction} x uniform-64")
    with pytest.raises(ValueError, match="below the smallest possible architecture"):
        get_method("uniform").check_floor(ctx)
    arch = fit(ctx)
    assert arch is not None and arch.kind == "frequency"
    assert ctx.budget.fits(arch)
    # hashed fills the budget to a row; MDE's blocks move in whole blocks (a cold block of 900 ids goes
    # from one shared row to 900 rows at dim 4), so it uses more than its floor, not all of the budget.
    floor = ctx.budget.used(get_method(fit.__name__.removeprefix("fit_")).floor(ctx)[0])
    used = ctx.budget.used(arch)
    assert used >= 0.9 * ctx.budget.bytes if fit is fit_hashed else used > 2 * floor
    check_frequency(arch, ctx.schema)


def test_floor_counts_the_precision_asked_for():
    ctx = _ctx("0.05 x uniform-64", precision="fp16")
    # fp32 dim 4 (20 B/row) is over 5% of uniform-64 (13 B/row); fp16 dim 4 (12 B/row) is not.
    assert arch_bytes(Architecture.uniform(ctx.schema, 4)) > ctx.budget.bytes
    get_method("uniform").check_floor(ctx)
    assert get_method("uniform")(ctx).arch.data_types[0] == "fp16"
    tiny = _ctx("99B")
    with pytest.raises(ValueError, match=r"every feature one row of dim 4 in fp32\), which needs 100 B"):
        get_method("mde").check_floor(tiny)


def test_plans_name_the_bucket_tables_where_the_model_holds_them():
    splits = tiny_splits(300)
    task = CTRTask(tiny_config(), splits)
    arch = _arch(splits.schema)
    module, ebc = task.build(arch)
    assert task.ebc_path_for(arch) == task.ebc_path == "model.sparse_arch.inner"
    assert module.get_submodule(task.ebc_path_for(arch)) is ebc
    plain = Architecture.uniform(splits.schema, 8)
    module, ebc = task.build(plain)
    assert module.get_submodule(task.ebc_path_for(plain)) is ebc and task.ebc_path == "model.sparse_arch"
