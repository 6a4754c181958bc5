"""Shared by every tier: the repository's paths and one intra-op thread for a test.

Tiers: `tests/unit` runs in-process (no subprocess, no spawned ranks); `tests/distributed` spawns gloo
ranks (`tests/distributed/launcher.py`); `tests/e2e` runs the CLI and TorchX in subprocesses. Test data
builders (tiny splits and configs) are in `tests/helpers.py`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

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
