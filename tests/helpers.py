"""Tiny data and configs shared by tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from torchrec_aes.config import Config
from torchrec_aes.data.dataset import CTRData, Splits
from torchrec_aes.data.schema import Schema, SparseFeature

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
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


@pytest.fixture
def single_thread():
    """Torch on one intra-op thread for the test: on a loaded 2-core machine torch's pool spins against
    other processes (backward ran 100x slower); one thread keeps tests fast and changes no result.
    Modules use it as `pytestmark = pytest.mark.usefixtures("single_thread")` after importing it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
