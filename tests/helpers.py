"""Tiny data and configs shared by tests (fixtures and paths: `tests/conftest.py`)."""

from __future__ import annotations

import torch

from torchrec_aes.config import Config
from torchrec_aes.data.dataset import CTRData, Splits
from torchrec_aes.data.schema import Schema, SparseFeature

CARDINALITIES = [10, 100, 1000, 50, 500]


def tiny_splits(n: int = 6000, seed: int = 0) -> Splits:
    """A learnable toy task: the label's logit adds feature 1's id parity and dense feature 0."""
    g = torch.Generator().manual_seed(seed)
    schema = Schema(
        [f"d{i}" for i in range(4)], [SparseFeature(f"c{i}", c) for i, c in enumerate(CARDINALITIES)]
    )
    ids = torch.stack([torch.randint(0, c, (n,), generator=g) for c in CARDINALITIES], 1)
    dense = torch.rand(n, 4, generator=g)
    logit = 3.0 * (2.0 * (ids[:, 1] % 2) - 1.0) + 3.0 * (2.0 * dense[:, 0] - 1.0)
    labels = torch.bernoulli(torch.sigmoid(logit), generator=g)
    data = CTRData(dense, ids, labels)
    a, b = int(0.8 * n), int(0.9 * n)
    return Splits(
        schema, data.subset(torch.arange(a)), data.subset(torch.arange(a, b)), data.subset(torch.arange(b, n))
    )


def tiny_config(model_type: str = "dlrm") -> Config:
    cfg = Config()
    cfg.model.type = model_type
    cfg.model.dense_arch = [16, 8]
    cfg.model.over_arch = [16]
    cfg.train.batch_size = 64
    cfg.train.epochs = 3
    cfg.train.progress = False
    cfg.train.embedding_lr = 0.1
    cfg.train.dense_lr = 0.01
    return cfg
