"""Sharding plans for an architecture: topology, per-table constraints, TorchRec's planner."""

from __future__ import annotations

import torch.distributed as dist
from torch import nn
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
from torchrec.distributed.types import ModuleSharder, ShardingPlan, ShardingType

from torchrec_aes.architecture import Architecture

GiB = 1024**3


def make_topology(world_size: int, device: str = "cpu", hbm_gb: float = 0.0, ddr_gb: float = 0.0) -> Topology:
    """A TorchRec `Topology`; caps of 0 keep TorchRec's defaults."""
    return Topology(
        world_size=world_size,
        compute_device=device,
        hbm_cap=int(hbm_gb * GiB) if hbm_gb else None,
        ddr_cap=int(ddr_gb * GiB) if ddr_gb else None,
    )


def constraints_for(arch: Architecture) -> dict[str, ParameterConstraints]:
    """Planner constraints per table.

    FBGEMM's fused kernels need every (column-shard) dim to be a multiple of 4, so other dims are pinned
    to data_parallel (dense, unfused) sharding.
    """
    constraints = {}
    for t in arch.active_tables:
        if t.embedding_dim % 4:
            constraints[t.name] = ParameterConstraints(sharding_types=[ShardingType.DATA_PARALLEL.value])
    return constraints


def default_sharders() -> list[ModuleSharder[nn.Module]]:
    return [EmbeddingBagCollectionSharder()]


def plan_model(
    model: nn.Module,
    arch: Architecture,
    topology: Topology,
    batch_size: int,
    sharders: list[ModuleSharder[nn.Module]] | None = None,
    pg: dist.ProcessGroup | None = None,
) -> ShardingPlan:
    """Plans `model` (built on the meta device) with TorchRec's `EmbeddingShardingPlanner`.

    With a process group the plan is computed collectively (rank 0 plans and broadcasts), so every rank
    gets the same plan.
    """
    planner = EmbeddingShardingPlanner(
        topology=topology, batch_size=batch_size, constraints=constraints_for(arch), debug=False
    )
    sharders = sharders or default_sharders()
    if pg is not None:
        return planner.collective_plan(model, sharders, pg)
    return planner.plan(model, sharders)
