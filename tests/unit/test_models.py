import pytest
import torch
from torch import nn
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from tests.helpers import tiny_config, tiny_splits
from torchrec_aes.architecture import Architecture
from torchrec_aes.data.dataset import make_batch
from torchrec_aes.models.ctr import MixedDimDCN, MixedDimDLRM, build_ctr_model


def _model(model_type: str, dims: list[int]):
    splits = tiny_splits(200)
    cfg = tiny_config(model_type)
    arch = Architecture.from_dims(splits.schema, dims)
    ebc = EmbeddingBagCollection(tables=arch.to_ebc_configs(), device=torch.device("cpu"))
    keys = [n for t in arch.active_tables for n in t.feature_names]
    cols = [splits.schema.sparse_names.index(k) for k in keys]
    data = splits.train
    data = type(data)(data.dense, data.sparse[:, cols], data.labels)
    batch = make_batch(data, torch.arange(32), keys)
    return build_ctr_model(model_type, ebc, splits.schema.num_dense, cfg.model), batch


@pytest.mark.parametrize("model_type", ["dlrm", "dcn"])
def test_mixed_dim_models_give_one_logit_per_example(model_type):
    model, batch = _model(model_type, [4, 8, 12, 8, 16])
    logits = model(batch.dense_features, batch.sparse_features)
    assert logits.shape == (32,)
    logits.sum().backward()  # every table receives a gradient
    for name, p in model.sparse_arch.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_dlrm_projects_only_tables_whose_dim_differs_from_the_common_dim():
    model, _ = _model("dlrm", [4, 8, 12, 8, 16])  # common dim = dense_arch[-1] = 8
    assert isinstance(model, MixedDimDLRM)
    kinds = {n: type(m) for n, m in model.projections.items()}
    assert kinds == {"c0": nn.Linear, "c1": nn.Identity, "c2": nn.Linear, "c3": nn.Identity, "c4": nn.Linear}
    assert model.projections["c4"].weight.shape == (8, 16)


def test_dropped_table_is_not_part_of_the_model():
    model, batch = _model("dcn", [4, 0, 12, 8, 16])
    assert isinstance(model, MixedDimDCN)
    assert model.feature_names == ["c0", "c2", "c3", "c4"]
    assert model(batch.dense_features, batch.sparse_features).shape == (32,)


def test_unknown_model_type_is_rejected():
    splits = tiny_splits(50)
    ebc = EmbeddingBagCollection(tables=Architecture.uniform(splits.schema, 8).to_ebc_configs())
    with pytest.raises(ValueError, match="not a CTR model"):
        build_ctr_model("lightgcn", ebc, 4, tiny_config().model)
