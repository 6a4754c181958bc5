"""TorchX components: `torchrec-aes search` and `torchrec-aes train` on one process to many nodes.

Each component wraps TorchX's `dist.ddp` (torchrun under the hood) around `python -m torchrec_aes.cli`,
so the job is the same command a user runs locally, on N nodes x P processes. Everything after `--` is
the CLI's own arguments: the config file, then `key=value` overrides, and optionally `--run_dir DIR`.

Usage::

    # 1 node x 2 CPU processes (gloo), in the current directory
    torchx run -s local_cwd launchers/components.py:search -j 1x2 -- configs/quickstart.yaml
    torchx run -s local_cwd launchers/components.py:train -j 1x2 -- configs/synthetic_dlrm.yaml \\
        arch=runs/quickstart/architecture.yaml --run_dir runs/quickstart_train
    # Slurm: 2 nodes x 8 GPUs (nccl)
    torchx run -s slurm launchers/components.py:search -j 2x8 --gpu 8 -- configs/quickstart.yaml
    # Kubernetes (Volcano queue): torchx builds IMG + this directory with docker and pushes it to
    # -cfg image_repo=...; with an image that already holds torchrec_aes and the configs, add --workspace ""
    torchx run -s kubernetes -cfg queue=default launchers/components.py:search -j 2x8 --image IMG \\
        --gpu 8 -- configs/quickstart.yaml

`torchx run ... launchers/components.py:search --help` lists the arguments below.
"""

# TorchX reads component signatures by name: it accepts `Optional[X]`, `Dict[K, V]` and `List[X]` from
# `typing` only (not `X | None` or `dict[...]`), and needs real (not postponed) annotations.
# ruff: noqa: UP006, UP007, UP035, UP045

import os
import shlex
import shutil
import sys
from typing import Any, Dict, List, Optional

import torchx
from torchx import specs
from torchx.components import dist

ENTRY_MODULE = "torchrec_aes.cli"
"""What every replica runs under torchrun: `python -m torchrec_aes.cli <command> ...`."""

_RUN_DIR_FLAGS = ("--run_dir", "--run-dir")


def _split_cli_args(command: str, args: tuple[str, ...], run_dir: str) -> list[str]:
    """`CONFIG [k=v ...] [--run_dir DIR]` -> the CLI's arguments `<command> [--run-dir DIR] CONFIG [k=v ...]`.

    The run directory goes before the config because the CLI's positional overrides must be contiguous.
    Checked here, on the submitting machine, so a typo fails before a cluster job is queued.
    """
    rest: list[str] = []
    given_run_dir = ""
    i = 0
    while i < len(args):
        arg = args[i]
        flag, eq, value = arg.partition("=")
        if flag in _RUN_DIR_FLAGS:
            if not eq:
                if i + 1 >= len(args):
                    raise ValueError(f"{arg} needs a directory, e.g. {arg} runs/my_run")
                i += 1
                value = args[i]
            given_run_dir = value
        else:
            rest.append(arg)
        i += 1
    if given_run_dir and run_dir and given_run_dir != run_dir:
        raise ValueError(f"two run directories given: --run_dir {run_dir} and --run_dir {given_run_dir}")
    run_dir = run_dir or given_run_dir
    usage = f"usage: torchx run ... launchers/components.py:{command} -j NxP -- CONFIG [key=value ...]"
    if not rest or rest[0].startswith("-") or "=" in rest[0]:
        raise ValueError(
            f"the first argument after -- must be the config file (e.g. configs/quickstart.yaml); "
            f"got {' '.join(args) or 'nothing'}. {usage}"
        )
    config, overrides = rest[0], rest[1:]
    bad = [o for o in overrides if "=" not in o or o.startswith("-")]
    if bad:
        raise ValueError(
            f"after the config, expected key=value overrides (or --run_dir DIR); got {bad}. {usage}"
        )
    return [command, *(["--run-dir", run_dir] if run_dir else []), config, *overrides]


def _cli_app(command: str, args: tuple[str, ...], run_dir: str, name: str, **ddp_args: Any) -> specs.AppDef:
    """The AppDef of `torchrun ... -m torchrec_aes.cli <command> ...` on every replica; see `search`."""
    ddp_args["env"] = dict(ddp_args.get("env") or {})  # ddp adds to it; leave the caller's dict alone
    app = dist.ddp(
        *_split_cli_args(command, args, run_dir),
        m=ENTRY_MODULE,
        name=name or f"torchrec-aes-{command}",
        **ddp_args,
    )
    (role,) = app.roles
    role.name = command
    # ddp runs `bash -c "torchrun ..."`, so torchrun must be on the workers' PATH. `torchx` run from a venv
    # that is not activated (e.g. `.venv/bin/torchx`) does not put it there: then prepend the submitting
    # interpreter's bin directory, expanded by the worker's shell (not a fixed PATH, which would replace a
    # container's). A directory that does not exist on a worker is skipped by the lookup.
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    on_path = shutil.which("torchrun")
    if os.path.isfile(torchrun) and (on_path is None or os.path.abspath(on_path) != torchrun):
        flag, cmd = role.args
        role.args = [flag, f'PATH={shlex.quote(os.path.dirname(torchrun))}:"$PATH" {cmd}']
    return app


def search(
    *args: str,
    run_dir: str = "",
    j: str = "1x2",
    image: str = torchx.IMAGE,
    name: str = "",
    h: Optional[str] = None,
    cpu: int = 8,
    gpu: int = 0,
    memMB: int = 32768,
    env: Optional[Dict[str, str]] = None,
    max_retries: int = 0,
    rdzv_port: int = 29500,
    mounts: Optional[List[str]] = None,
    debug: bool = False,
) -> specs.AppDef:
    """Searches embedding sizes under a budget, retrains, plans and reports (`torchrec-aes search`).

    Usage: torchx run -s local_cwd launchers/components.py:search -j 1x2 -- configs/quickstart.yaml
    [key=value ...] [--run_dir DIR]

    Args:
        args: after `--`: the config file (a path relative to the job's working directory, or an iopath
            URI), then key=value overrides (e.g. train.epochs=2), optionally --run_dir DIR.
        run_dir: output directory (overrides the config's run_dir); must be shared by all nodes (rank 0
            writes it).
        j: {nnodes}x{nproc_per_node}, e.g. 1x2 (2 CPU processes with gloo) or 2x8 (2 nodes x 8 GPUs).
        image: container image with torchrec_aes installed (kubernetes); local_cwd and slurm run in the
            current directory.
        name: job name, {experiment}/{run} or {run} (default: torchrec-aes-search).
        h: a registered named resource (takes precedence over cpu, gpu and memMB).
        cpu: CPUs per node.
        gpu: GPUs per node (use nproc_per_node = gpu).
        memMB: host memory per node in MB.
        env: extra environment variables, e.g. NCCL_DEBUG=INFO,LOGLEVEL=INFO.
        max_retries: scheduler retries of a failed job (a retried run resumes from its checkpoints).
        rdzv_port: port of the c10d rendezvous on the first node (multi-node only).
        mounts: mounts for container schedulers, e.g. type=bind,src=/data,dst=/data.
        debug: set PyTorch's distributed debug flags.
    """
    return _cli_app(
        "search",
        args,
        run_dir,
        name,
        j=j,
        image=image,
        h=h,
        cpu=cpu,
        gpu=gpu,
        memMB=memMB,
        env=env,
        max_retries=max_retries,
        rdzv_port=rdzv_port,
        mounts=mounts,
        debug=debug,
    )


def train(
    *args: str,
    run_dir: str = "",
    j: str = "1x2",
    image: str = torchx.IMAGE,
    name: str = "",
    h: Optional[str] = None,
    cpu: int = 8,
    gpu: int = 0,
    memMB: int = 32768,
    env: Optional[Dict[str, str]] = None,
    max_retries: int = 0,
    rdzv_port: int = 29500,
    mounts: Optional[List[str]] = None,
    debug: bool = False,
) -> specs.AppDef:
    """Trains and evaluates an architecture, e.g. a searched one (`torchrec-aes train`).

    Usage: torchx run -s local_cwd launchers/components.py:train -j 1x2 -- configs/synthetic_dlrm.yaml
    arch=runs/quickstart/architecture.yaml [key=value ...] [--run_dir DIR]

    Args:
        args: after `--`: the config file (a path relative to the job's working directory, or an iopath
            URI), then key=value overrides (e.g. arch=RUN/architecture.yaml), optionally --run_dir DIR.
        run_dir: output directory (overrides the config's run_dir); must be shared by all nodes (rank 0
            writes it).
        j: {nnodes}x{nproc_per_node}, e.g. 1x2 (2 CPU processes with gloo) or 2x8 (2 nodes x 8 GPUs).
        image: container image with torchrec_aes installed (kubernetes); local_cwd and slurm run in the
            current directory.
        name: job name, {experiment}/{run} or {run} (default: torchrec-aes-train).
        h: a registered named resource (takes precedence over cpu, gpu and memMB).
        cpu: CPUs per node.
        gpu: GPUs per node (use nproc_per_node = gpu).
        memMB: host memory per node in MB.
        env: extra environment variables, e.g. NCCL_DEBUG=INFO,LOGLEVEL=INFO.
        max_retries: scheduler retries of a failed job (a retried run resumes from its checkpoints).
        rdzv_port: port of the c10d rendezvous on the first node (multi-node only).
        mounts: mounts for container schedulers, e.g. type=bind,src=/data,dst=/data.
        debug: set PyTorch's distributed debug flags.
    """
    return _cli_app(
        "train",
        args,
        run_dir,
        name,
        j=j,
        image=image,
        h=h,
        cpu=cpu,
        gpu=gpu,
        memMB=memMB,
        env=env,
        max_retries=max_retries,
        rdzv_port=rdzv_port,
        mounts=mounts,
        debug=debug,
    )
