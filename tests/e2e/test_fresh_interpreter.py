"""What only a new Python process shows: importing the package stays cheap, and hashed ids do not depend
on PYTHONHASHSEED."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from torchrec_aes.data.preprocess import hash_ids

pytestmark = pytest.mark.e2e


def test_package_import_stays_cheap_until_the_api_is_used() -> None:
    import subprocess
    import sys

    code = "import sys, torchrec_aes; print('torchrec' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_hashing_gives_the_same_ids_in_another_process():
    values = ["68fd1e64", "80e26c9b", "", "abc", "ünïcödé"]
    here = hash_ids(np.array(values), 97).tolist()
    code = (
        "import numpy as np; from torchrec_aes.data.preprocess import hash_ids; "
        f"print(hash_ids(np.array({values!r}), 97).tolist())"
    )
    # A different PYTHONHASHSEED would change Python's salted hash(); ours must not care.
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "123"},
    )
    assert out.stdout.strip() == str(here)
