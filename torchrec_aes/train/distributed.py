"""Process-group set-up that works for 1 process, `torchrun` on CPU (gloo) and GPUs (nccl)."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistEnv:
    """Where this process runs.

    Args:
        rank: global rank.
        world_size: number of ranks.
        device: this rank's compute device (cuda:LOCAL_RANK when CUDA is available, else cpu).
        pg: the default process group.
    """

    rank: int
    world_size: int
    device: torch.device
    pg: dist.ProcessGroup

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed() -> DistEnv:
    """Joins (or creates) the default process group and picks the device.

    Under torchrun the usual environment variables are set; a plain `python` run becomes a world of one
    (DMP and the planner need a process group even then). Idempotent: searches call the trainer many
    times in one process.
    """
    if torch.cuda.is_available():
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
        if "OMP_NUM_THREADS" not in os.environ:
            # Like torchrun, one intra-op thread per process: these models are small, and extra threads
            # only contend for the cores (measured 24x slower on 2 busy cores, see tools/bench_train.py).
            torch.set_num_threads(1)
    if not dist.is_initialized():
        if "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ:
            dist.init_process_group(backend)
        else:
            dist.init_process_group(
                backend, init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1
            )
    pg = dist.group.WORLD
    assert pg is not None
    return DistEnv(rank=dist.get_rank(), world_size=dist.get_world_size(), device=device, pg=pg)


def shutdown_distributed() -> None:
    """Leaves the process group cleanly at the end of a command: a barrier, so no rank exits while another
    still talks to it, then the group is destroyed before the interpreter tears its threads down (exiting
    with a live gloo group now and then aborted a rank with "terminate called without an active
    exception" after a successful run). A later `init_distributed` in the same process joins afresh."""
    if dist.is_initialized():
        if dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()


def broadcast_object(obj, src: int = 0):
    """Rank `src`'s object on every rank (identity in a world of one)."""
    if dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_sum(values: list[float]) -> list[float]:
    """Sums of `values` over all ranks (float64; the values themselves in a world of one)."""
    t = torch.tensor(values, dtype=torch.float64)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t.tolist()
