"""docs/usage.md's Python API flow on a spawned gloo rank: a searched architecture and its saved plan in a
plain TorchRec training loop (DMP, fused row-wise Adagrad)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.types import ShardingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.optim import RowWiseAdagrad
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
from torchrec.optim.keyed import KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

import torchrec_aes
from tests.distributed.launcher import run_ranks
from tests.unit.test_api import FEATURES, _user_tables, save_run_dir

pytestmark = pytest.mark.distributed


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return save_run_dir(tmp_path)


# ---------------------------------------------------------------------------------------------------------
# The docs/usage.md flow: a plain TorchRec training loop with the searched sizes and the saved plan
# ---------------------------------------------------------------------------------------------------------


class _UserModel(nn.Module):
    """A user's model: EBC -> concatenated pooled embeddings -> linear logit (any TorchRec model will do)."""

    def __init__(self, ebc: EmbeddingBagCollection) -> None:
        super().__init__()
        self.ebc = ebc
        self.head = nn.Linear(sum(c.embedding_dim for c in ebc.embedding_bag_configs()), 1)

    def forward(self, features: KeyedJaggedTensor) -> torch.Tensor:
        return self.head(self.ebc(features).values()).squeeze(-1)


def _train_with_saved_plan(rank: int, world_size: int, run_dir: str) -> tuple[list[float], dict[str, str]]:
    # --- what docs/usage.md shows ---------------------------------------------------------------------
    arch = torchrec_aes.load_architecture(run_dir)
    tables = torchrec_aes.resize_configs(_user_tables(), arch)
    model = _UserModel(EmbeddingBagCollection(tables=tables, device=torch.device("meta")))
    apply_optimizer_in_backward(RowWiseAdagrad, model.ebc.parameters(), {"lr": 0.1})
    plan = torchrec_aes.load_plan(run_dir, module_path="ebc", arch=arch, configs=_user_tables())
    model = DistributedModelParallel(model, device=torch.device("cpu"), plan=plan)
    dense_params = dict(in_backward_optimizer_filter(model.named_parameters()))
    dense_optimizer = KeyedOptimizerWrapper(dense_params, lambda params: torch.optim.Adam(params, lr=0.02))
    # ----------------------------------------------------------------------------------------------------
    g = torch.Generator().manual_seed(rank)
    batch = 256
    ids = {f: torch.randint(0, n, (batch,), generator=g) for f, n in FEATURES.items()}
    labels = ((ids["user"] % 2) ^ (ids["item"] % 3 == 0)).float()  # learnable only through the embeddings
    features = KeyedJaggedTensor.from_lengths_sync(
        keys=list(FEATURES),
        values=torch.cat(list(ids.values())),
        lengths=torch.ones(batch * len(FEATURES), dtype=torch.int32),
    )
    losses = []
    for _ in range(15):
        dense_optimizer.zero_grad()
        loss = F.binary_cross_entropy_with_logits(model(features), labels)
        loss.backward()  # the fused row-wise Adagrad updates the tables here
        dense_optimizer.step()
        losses.append(loss.item())
    sharding = {name: ps.sharding_type for name, ps in model.plan.plan["ebc"].items()}
    return losses, sharding


def test_saved_architecture_and_plan_train_a_plain_torchrec_model(run_dir: Path) -> None:
    ((losses, sharding),) = run_ranks(_train_with_saved_plan, str(run_dir), world_size=1)
    assert sharding["city_table"] == ShardingType.DATA_PARALLEL.value and "noise_table" not in sharding
    assert losses[-1] < 0.8 * losses[0], losses
