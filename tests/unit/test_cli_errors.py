"""The CLI tells user errors (one line, exit 2) from bugs (traceback plus a line saying so, exit 1), and
hides library warnings without hiding ours."""

from __future__ import annotations

import json
import warnings

import pytest

from tests.conftest import REPO
from torchrec_aes import cli
from torchrec_aes.errors import UserError, user_error_message

TINY = str(REPO / "configs" / "tests" / "tiny.yaml")


def _main(monkeypatch, tmp_path, capsys, error: BaseException) -> tuple[int | str | None, str]:
    def fail(cfg):
        raise error

    monkeypatch.setattr("torchrec_aes.runs.run_train", fail)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", TINY, "--run-dir", str(tmp_path / "run")])
    return exit_info.value.code, capsys.readouterr().err


def test_a_library_value_error_is_reported_as_a_bug_with_its_traceback(monkeypatch, tmp_path, capsys):
    try:
        json.loads("{not json")  # a ValueError raised inside a library, not by torchrec_aes
    except ValueError as e:
        error = e
    code, err = _main(monkeypatch, tmp_path, capsys, error)
    assert code == 1
    assert "Traceback" in err and "internal error: JSONDecodeError" in err and "bug" in err


def test_user_errors_and_path_errors_are_one_line_and_exit_2(monkeypatch, tmp_path, capsys):
    for error, text in [
        (UserError("train.seed: bad"), "train.seed: bad"),
        (PermissionError(13, "Permission denied", "/data/x"), "/data/x: Permission denied"),
        (OSError(30, "Read-only file system", "/ro/run"), "/ro/run: Read-only file system"),
    ]:
        code, err = _main(monkeypatch, tmp_path, capsys, error)
        assert code == 2 and err.splitlines() == [f"torchrec-aes train: error: {text}"]


def test_other_os_errors_and_runtime_errors_are_bugs():
    assert user_error_message(OSError(24, "Too many open files")) is None
    assert user_error_message(RuntimeError("gloo timeout")) is None
    assert user_error_message(EOFError()) is None


def test_library_warnings_are_hidden_and_ours_are_not():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli._quiet()
        warnings.warn_explicit("noise", UserWarning, "x.py", 1, module="torchrec.distributed.x")
        warnings.warn_explicit("noise", FutureWarning, "y.py", 1, module="fbgemm_gpu")
        warnings.warn_explicit("ours", UserWarning, "z.py", 1, module="torchrec_aes.search.adass")
    assert [str(w.message) for w in caught] == ["ours"]
