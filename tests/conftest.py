"""Shared by every tier: the repository's paths, one intra-op thread for a test, and search methods
registered for one test.

Tiers: `tests/unit` runs in-process (no subprocess, no spawned ranks); `tests/distributed` spawns gloo
ranks (`tests/distributed/launcher.py`); `tests/e2e` runs the CLI and TorchX in subprocesses. Test data
builders (tiny splits and configs) are in `tests/helpers.py`.
"""

from __future__ import annotations

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
