"""Sharding plans: planned on the meta device, stored in our JSON schema and loaded back (DMP training with
a loaded plan on 2 ranks: tests/distributed/test_plan_distributed.py)."""

from __future__ import annotations

import json

import pytest

from torchrec_aes.architecture import Architecture
from torchrec_aes.data.schema import Schema, SparseFeature
from torchrec_aes.planning.memory import arch_bytes
from torchrec_aes.planning.plan import (
    PlanError,
    format_plan_summary,
    make_topology,
    plan_architecture,
    plan_summary,
)
from torchrec_aes.planning.plan_io import load_plan, save_plan

CARDINALITIES = [10, 1000, 100_000, 7]


def make_arch() -> Architecture:
    """Four tables; dim 6 is not a multiple of 4, so that table must be data-parallel (FBGEMM's fused
    kernels need x4). Also the distributed tier's (tests/distributed/test_plan_distributed.py)."""
    schema = Schema(sparse=[SparseFeature(f"c{i}", n) for i, n in enumerate(CARDINALITIES)])
    return Architecture.from_dims(schema, [8, 16, 12, 6])


@pytest.fixture
def arch() -> Architecture:
    return make_arch()


@pytest.mark.parametrize(("world_size", "device"), [(2, "cpu"), (4, "cuda")])
def test_plan_round_trips_through_json(arch: Architecture, tmp_path, world_size: int, device: str) -> None:
    plan = plan_architecture(arch, world_size, device, module_path="model.ebc")
    path = str(tmp_path / "plan.json")
    save_plan(plan, path, metadata={"world_size": world_size, "device": device})
    loaded = load_plan(path)
    assert loaded.plan == plan.plan
    assert set(loaded.plan) == {"model.ebc"}
    assert loaded.plan["model.ebc"]["t_c3"].sharding_type == "data_parallel"  # type: ignore[index]


def test_plan_file_errors_name_the_file_and_key(arch: Architecture, tmp_path) -> None:
    plan = plan_architecture(arch, 2)
    path = tmp_path / "plan.json"
    save_plan(plan, str(path))
    data = json.loads(path.read_text())
    data["plan"][""]["t_c0"]["sharding_type"] = "diagonal"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"plan.json: plan\[''\]\['t_c0'\]: sharding_type 'diagonal'"):
        load_plan(str(path))
    data["plan"][""]["t_c0"]["colour"] = "red"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"unknown keys \['colour'\]"):
        load_plan(str(path))


def test_too_small_cap_says_needed_and_available(arch: Architecture) -> None:
    needed = arch_bytes(arch)
    ddr_gb = 0.0005
    available = 2 * int(ddr_gb * 1024**3)
    with pytest.raises(PlanError, match=rf"need {needed} B .* has {available} B .* short") as info:
        plan_architecture(arch, 2, "cpu", ddr_gb=ddr_gb)
    assert isinstance(info.value, ValueError)


def test_summary_adds_up_to_our_bytes_plus_replicas(arch: Architecture) -> None:
    topology = make_topology(2, "cpu")
    plan = plan_architecture(arch, 2, "cpu")
    rows = plan_summary(plan, arch, topology, batch_size=0)
    assert [r.rank for r in rows] == [0, 1]
    per_rank = {t for r in rows for t in r.tables}
    assert per_rank == {t.name for t in arch.active_tables}
    # Data-parallel tables live on every rank; everything else once.
    replicas = sum(
        arch_bytes(Architecture([t]))
        for t in arch.tables
        if plan.plan[""][t.name].sharding_type == "data_parallel"
    )
    assert sum(r.ddr_bytes for r in rows) == arch_bytes(arch) + replicas * (2 - 1)
    assert all(r.hbm_bytes == 0 for r in rows)
    # The planner's per-batch buffers come on top at a real batch size.
    busy = plan_summary(plan, arch, topology, batch_size=512)
    assert sum(r.ddr_bytes for r in busy) > sum(r.ddr_bytes for r in rows)
    text = format_plan_summary(rows, topology)
    assert "total" in text and "t_c3" in text
