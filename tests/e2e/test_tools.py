"""The scripts in tools/ as a user runs them."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.e2e


def test_make_synthetic_tool_writes_the_cache_and_prints_the_ranks(tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "tools" / "make_synthetic.py"), "--out", str(tmp_path), "--rows", "500"],
        capture_output=True,
        text=True,
        check=True,
    )
    lines = result.stdout.splitlines()
    assert "500 rows" in lines[1]
    table = {line.split()[0]: line.split() for line in lines[3:]}
    assert table["c2"][1:3] == ["100", "32"] and table["c0"][1:3] == ["10", "0"]
    (directory,) = tmp_path.iterdir()
    assert sorted(p.name for p in directory.iterdir()) == ["data.pt", "planted.json"]
