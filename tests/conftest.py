"""Shared by every tier: the repository's paths, one intra-op thread for a test, search methods
registered for one test, and the CLI run in a subprocess as a user runs it.

Tiers: `tests/unit` runs in-process (no subprocess, no spawned ranks); `tests/distributed` spawns gloo
ranks (`tests/distributed/launcher.py`); `tests/e2e` runs the CLI and TorchX in subprocesses. Test data
builders (tiny splits and configs) are in `tests/helpers.py`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from torchrec_aes.config import register_section, unregister_section
from torchrec_aes.search.base import register, unregister

REPO = Path(__file__).resolve().parents[1]
"""The repository's root: configs, tools and launchers are read from here, and subprocesses run here."""
SHARED_DATA = REPO.parent / "shared" / "data"
"""Real data samples (`../shared/data`); tests that need one skip with a clear reason if it is absent."""
BIN = Path(sys.executable).parent
"""The environment's scripts: `torchrec-aes`, `torchrun`, `torchx`."""


@pytest.fixture
def single_thread():
    """Torch on one intra-op thread for the test: on a loaded 2-core machine torch's pool spins against
    other processes (backward ran 100x slower); one thread keeps tests fast and changes no result.
    Modules use it as `pytestmark = pytest.mark.usefixtures("single_thread")`."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class Registry:
    """Registers search methods and their config sections through the public interface (`register`,
    `register_section`) and unregisters them (`unregister`, `unregister_section`) when the test ends."""

    def __init__(self) -> None:
        self._undo: list[Callable[[], None]] = []

    def section(self, name: str, cls: type) -> None:
        """Registers config section `search.<name>` (a dataclass)."""
        register_section(name, cls)
        self._undo.append(lambda: unregister_section(name))

    def method(
        self, name: str, fn: Callable, tasks: tuple[str, ...] = ("ctr", "cf"), section: str | None = None
    ) -> None:
        """Registers `fn` as `search.method=<name>` (arguments as `torchrec_aes.search.base.register`)."""
        register(name, tasks=tasks, section=section)(fn)
        self._undo.append(lambda: unregister(name))

    def close(self) -> None:
        while self._undo:
            self._undo.pop()()


@pytest.fixture
def registry() -> Iterator[Registry]:
    """A `Registry` whose methods and sections exist for this test only."""
    registered = Registry()
    yield registered
    registered.close()


def cli_env() -> dict[str, str]:
    """A CLI subprocess's environment: this one with `BIN` first on PATH (so torchrun is found), unbuffered
    output, and no RANK / WORLD_SIZE that would make the CLI join a launched job."""
    env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}", PYTHONUNBUFFERED="1")
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    return env


def cli_argv(*args: str, procs: int = 1) -> list[str]:
    """`torchrec-aes ARGS`, or on `procs` > 1 processes `torchrun --standalone --nproc_per_node PROCS -m
    torchrec_aes.cli ARGS`."""
    if procs > 1:
        torchrun = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", str(procs)]
        return [*torchrun, "-m", "torchrec_aes.cli", *args]
    return [str(BIN / "torchrec-aes"), *args]


def cli(
    tmp: Path | None,
    *args: str,
    procs: int = 1,
    env: dict[str, str] | None = None,
    check: bool = True,
    timeout: float = 300,
) -> subprocess.CompletedProcess:
    """Runs the CLI (`cli_argv`) from `REPO` in `cli_env()` and returns the finished process, output as text.

    Args:
        tmp: a test's tmp directory: `data.cache_dir=<tmp>/cache` is appended to `args`, so generated data
            stays with the test. None appends nothing (`plan` takes no config overrides).
        procs: processes; more than one runs under torchrun.
        env: variables set on top of `cli_env()`.
        check: a non-zero exit fails the test, showing the exit code, stdout and the end of stderr.
        timeout: seconds before the process is killed and the test fails.
    """
    argv = cli_argv(*args, *([f"data.cache_dir={tmp / 'cache'}"] if tmp is not None else []), procs=procs)
    proc = subprocess.run(
        argv, cwd=REPO, env={**cli_env(), **(env or {})}, capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
        )
    return proc
