"""The elastic (supernet) EBC: a masked supernet computes exactly what the sliced small model computes."""

from __future__ import annotations

import pytest
import torch
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from tests.helpers import tiny_config, tiny_splits
from torchrec_aes.architecture import Architecture
from torchrec_aes.data.dataset import make_batch
from torchrec_aes.models.ctr import MixedDimDCN, MixedDimDLRM, build_ctr_model
from torchrec_aes.supernet.elastic import ElasticEmbeddingBagCollection

CANDIDATES = [4, 8, 16]
DIMS = [4, 16, 8, 4, 8]  # per table of tests.helpers' 5-feature schema


def _supernet(model_type: str, shared: bool = False):
    splits = tiny_splits(n=200)
    cfg = tiny_config(model_type)
    torch.manual_seed(0)
    ebc = EmbeddingBagCollection(tables=Architecture.uniform(splits.schema, 16).to_ebc_configs())
    output_dim = cfg.model.dense_arch[-1] if model_type == "dlrm" else None
    elastic = ElasticEmbeddingBagCollection(ebc, CANDIDATES, output_dim=output_dim, shared_projection=shared)
    model = build_ctr_model(model_type, elastic, splits.schema.num_dense, cfg.model)  # type: ignore[arg-type]
    batch = make_batch(splits.train, torch.arange(64), splits.schema.sparse_names)
    return cfg, splits, elastic, model, batch


def _small_ebc(splits, big: EmbeddingBagCollection) -> EmbeddingBagCollection:
    small = EmbeddingBagCollection(tables=Architecture.from_dims(splits.schema, DIMS).to_ebc_configs())
    for name, d in zip([f"t_{f.name}" for f in splits.schema.sparse], DIMS, strict=True):
        small.embedding_bags[name].weight.data.copy_(big.embedding_bags[name].weight.data[:, :d])
    return small


@pytest.mark.parametrize("shared", [False, True])
@torch.no_grad()
def test_masked_dlrm_supernet_equals_the_sliced_small_model(shared):
    cfg, splits, elastic, model, batch = _supernet("dlrm", shared)
    elastic.set_dims(DIMS)
    small = MixedDimDLRM(
        _small_ebc(splits, elastic.ebc), splits.schema.num_dense, cfg.model.dense_arch, cfg.model.over_arch
    )
    small.dense_arch.load_state_dict(model.dense_arch.state_dict())
    small.over_arch.load_state_dict(model.over_arch.state_dict())
    for feature, d in zip(splits.schema.sparse_names, DIMS, strict=True):
        # The small model's projection of a d-dim table is the supernet's (table, d) projection, or the
        # first d input columns of the shared one.
        if shared:
            weight = elastic.projections[f"{feature}__d16"].weight[:, :d]
            small.projections[feature] = torch.nn.Linear(d, weight.shape[0], bias=False)
            small.projections[feature].weight.copy_(weight)
        else:
            small.projections[feature].load_state_dict(elastic.projections[f"{feature}__d{d}"].state_dict())
    model.eval()
    got = model(batch.dense_features, batch.sparse_features)
    want = small(batch.dense_features, batch.sparse_features)
    torch.testing.assert_close(got, want)


@torch.no_grad()
def test_masked_dcn_supernet_equals_the_sliced_small_model():
    cfg, splits, elastic, model, batch = _supernet("dcn")
    elastic.set_dims(DIMS)
    small = MixedDimDCN(
        _small_ebc(splits, elastic.ebc),
        splits.schema.num_dense,
        cfg.model.cross_layers,
        cfg.model.cross_rank,
        cfg.model.over_arch,
    )
    # Input positions the small model has: all dense ones, then the first d_f of each d_max-wide block.
    nd = splits.schema.num_dense
    keep = list(range(nd)) + [nd + 16 * i + j for i, d in enumerate(DIMS) for j in range(d)]
    idx = torch.tensor(keep)
    big_cross, small_cross = model.crossnet, small.crossnet
    for layer in range(cfg.model.cross_layers):
        small_cross.W_kernels[layer].copy_(big_cross.W_kernels[layer][idx])
        small_cross.V_kernels[layer].copy_(big_cross.V_kernels[layer][:, idx])
        small_cross.bias[layer].copy_(big_cross.bias[layer][idx])
    small_state = small.over_arch.state_dict()
    for key, value in model.over_arch.state_dict().items():
        first = key == next(iter(small_state))
        small_state[key].copy_(value[:, idx] if first else value)
    model.eval()
    got = model(batch.dense_features, batch.sparse_features)
    want = small(batch.dense_features, batch.sparse_features)
    torch.testing.assert_close(got, want)


def test_zero_dim_zeroes_a_table_and_outputs_keep_their_width():
    _, _, elastic, _, batch = _supernet("dlrm")
    elastic.set_dims({"t_c1": 0, "t_c2": 4})
    out = elastic(batch.sparse_features).to_dict()
    assert set(out) == set(elastic.feature_names)
    assert all(v.shape == (64, 8) for v in out.values())
    assert torch.count_nonzero(out["c1"]) == 0
    assert torch.count_nonzero(out["c0"]) > 0


def test_zero_padding_keeps_only_the_prefix_columns():
    _, _, elastic, _, batch = _supernet("dcn")
    full = elastic(batch.sparse_features).to_dict()["c2"]
    elastic.set_dims({"t_c2": 4})
    masked = elastic(batch.sparse_features).to_dict()["c2"]
    torch.testing.assert_close(masked[:, :4], full[:, :4])
    assert torch.count_nonzero(masked[:, 4:]) == 0


def test_set_dims_rejects_a_dim_that_is_not_a_candidate():
    _, _, elastic, _, _ = _supernet("dcn")
    with pytest.raises(ValueError, match="not 0 or a candidate"):
        elastic.set_dims({"t_c0": 12})
    with pytest.raises(ValueError, match="unknown table"):
        elastic.set_dims({"nope": 4})


def test_tables_must_be_at_the_largest_candidate_dim():
    ebc = EmbeddingBagCollection(
        tables=[EmbeddingBagConfig(name="t", embedding_dim=8, num_embeddings=10, feature_names=["f"])]
    )
    with pytest.raises(ValueError, match="largest candidate dim 16"):
        ElasticEmbeddingBagCollection(ebc, [4, 16])
    with pytest.raises(ValueError, match="multiples of 4"):
        ElasticEmbeddingBagCollection(ebc, [6, 8])
