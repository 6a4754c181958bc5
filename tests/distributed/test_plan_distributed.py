"""A sharding plan saved in our JSON schema and loaded back drives DMP training on 2 gloo ranks."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.types import ShardingEnv
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from tests.distributed.launcher import run_ranks
from tests.unit.test_plan import make_arch
from torchrec_aes.architecture import Architecture
from torchrec_aes.planning.memory import meta_ebc
from torchrec_aes.planning.plan import default_sharders, plan_architecture
from torchrec_aes.planning.plan_io import load_plan, save_plan

pytestmark = pytest.mark.distributed


@pytest.fixture
def arch() -> Architecture:
    return make_arch()


class _TinyModel(nn.Module):
    def __init__(self, arch: Architecture) -> None:
        super().__init__()
        self.ebc = meta_ebc(arch.to_ebc_configs(), "rowwise_adagrad")
        self.head = nn.Linear(sum(t.embedding_dim for t in arch.active_tables), 1, device="meta")

    def forward(self, kjt: KeyedJaggedTensor) -> torch.Tensor:
        return self.head(self.ebc(kjt).values()).squeeze(1)


def _train_two_steps(rank: int, world_size: int, arch_dict: dict, plan_path: str) -> list[float]:
    arch = Architecture.from_dict(arch_dict)
    model = _TinyModel(arch)
    dmp = DistributedModelParallel(
        model,
        env=ShardingEnv.from_process_group(dist.group.WORLD),
        device=torch.device("cpu"),
        plan=load_plan(plan_path),
        sharders=default_sharders(),
    )
    g = torch.Generator().manual_seed(rank)
    keys = [t.feature_names[0] for t in arch.active_tables]
    batch = 4
    values = torch.cat(
        [torch.randint(0, t.num_embeddings, (batch,), generator=g) for t in arch.active_tables]
    )
    kjt = KeyedJaggedTensor.from_lengths_sync(keys, values, torch.ones(len(keys) * batch, dtype=torch.long))
    losses = []
    for _ in range(2):
        loss = dmp(kjt).pow(2).mean()
        loss.backward()  # the fused table optimizer steps inside backward
        losses.append(loss.item())
    return losses


def test_loaded_plan_trains_under_dmp_on_two_ranks(arch: Architecture, tmp_path) -> None:
    plan = plan_architecture(arch, 2, "cpu", module_path="ebc")
    path = str(tmp_path / "plan.json")
    save_plan(plan, path)
    results = run_ranks(_train_two_steps, arch.to_dict(), path, world_size=2)
    for first, second in results:
        assert torch.isfinite(torch.tensor([first, second])).all()
        assert second != first  # the tables were updated by the fused optimizer
