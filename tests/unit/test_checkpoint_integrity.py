"""Checkpoints are checked before they are trusted: a corrupt newest epoch falls back to the previous one
(and the run still equals an uninterrupted one), a checkpoint of another run is refused naming what
differs, and `train.resume=false` starts fresh."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from tests.helpers import tiny_config, tiny_splits
from torchrec_aes.architecture import Architecture
from torchrec_aes.errors import CheckpointError
from torchrec_aes.tasks.ctr import CTRTask
from torchrec_aes.train.trainer import Trainer

EPOCHS = 3


def _fit(run: Path, epochs: int = EPOCHS, n: int = 3000, **train: object) -> dict:
    splits = tiny_splits(n=n)
    cfg = tiny_config()
    cfg.train.epochs, cfg.train.patience = epochs, 5
    for key, value in train.items():
        setattr(cfg.train, key, value)
    arch = Architecture.uniform(splits.schema, 8)
    return Trainer(cfg, CTRTask(cfg, splits), arch, str(run)).fit()


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[dict, Path]:
    """(an uninterrupted 3-epoch run, a run directory "killed" after epoch 1 with epochs 0 and 1 kept)."""
    root = tmp_path_factory.mktemp("ckpt")
    whole = _fit(root / "whole")
    _fit(root / "part", epochs=2)
    return whole, root / "part"


def _copy(part: Path, tmp_path: Path) -> tuple[Path, Path]:
    run = tmp_path / "run"
    shutil.copytree(part, run)
    return run, run / "checkpoints" / "train"


def _same_run(a: dict, b: dict) -> None:
    assert [h["epoch"] for h in a["history"]] == list(range(EPOCHS))
    assert [h["train_loss"] for h in a["history"]] == [h["train_loss"] for h in b["history"]]
    assert a["test"] == b["test"]


def _our_warnings(caplog) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and r.name.startswith("torchrec_aes")
    ]


def _flip_bytes(path: Path, count: int = 400) -> None:
    data = bytearray(path.read_bytes())
    start = len(data) // 3
    for i in range(start, min(start + count, len(data))):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _distcp(epoch_dir: Path) -> Path:
    return max(epoch_dir.glob("*.distcp"), key=lambda p: p.stat().st_size)


CORRUPTIONS = {
    "400 flipped bytes in a .distcp file": (lambda d: _flip_bytes(_distcp(d / "epoch_1")), "sha256"),
    "a truncated .distcp file": (lambda d: _truncate(_distcp(d / "epoch_1")), "bytes, expected"),
    "a deleted .metadata file": (lambda d: (d / "epoch_1" / ".metadata").unlink(), ".metadata is missing"),
    "a deleted .distcp file": (lambda d: _distcp(d / "epoch_1").unlink(), "is missing"),
    "a truncated epoch state.json": (lambda d: _truncate(d / "epoch_1" / "state.json"), "unreadable"),
    "an empty epoch state.json": (lambda d: (d / "epoch_1" / "state.json").write_text(""), "unreadable"),
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_corrupt_newest_checkpoint_falls_back_to_the_previous_epoch_and_equals_an_uninterrupted_run(
    runs, tmp_path, caplog, corruption
) -> None:
    whole, part = runs
    run, ckpt = _copy(part, tmp_path)
    corrupt, reason = CORRUPTIONS[corruption]
    corrupt(ckpt)
    with caplog.at_level(logging.INFO, logger="torchrec_aes"):
        resumed = _fit(run)
    warnings = _our_warnings(caplog)
    assert len(warnings) == 1 and "\n" not in warnings[0], warnings
    assert "epoch_1/" in warnings[0] and reason in warnings[0] and "resuming from epoch 0" in warnings[0]
    assert "resumed train after epoch 0" in caplog.text
    _same_run(resumed, whole)
    assert json.loads((ckpt / "state.json").read_text())["epoch"] == EPOCHS - 1


def test_truncated_top_level_state_json_loses_nothing(runs, tmp_path, caplog) -> None:
    # The top-level state.json is a copy of the newest manifest; each epoch's own manifest is what counts.
    whole, part = runs
    run, ckpt = _copy(part, tmp_path)
    _truncate(ckpt / "state.json")
    with caplog.at_level(logging.INFO, logger="torchrec_aes"):
        resumed = _fit(run)
    assert "resumed train after epoch 1" in caplog.text
    _same_run(resumed, whole)


def test_no_intact_checkpoint_is_a_one_line_error_naming_each(runs, tmp_path) -> None:
    _, part = runs
    run, ckpt = _copy(part, tmp_path)
    _flip_bytes(_distcp(ckpt / "epoch_1"))
    (ckpt / "epoch_0" / "state.json").write_text("{")
    with pytest.raises(CheckpointError) as error:
        _fit(run)
    message = str(error.value)
    assert "\n" not in message and "no intact checkpoint" in message
    assert "epoch_1/" in message and "epoch_0/state.json unreadable" in message
    assert "train.resume=false" in message


def test_interrupted_save_without_manifest_is_ignored_silently(runs, tmp_path, caplog) -> None:
    # A run killed while DCP wrote epoch 2 leaves files but no manifest: not corruption, nothing lost.
    whole, part = runs
    run, ckpt = _copy(part, tmp_path)
    shutil.copytree(ckpt / "epoch_1", ckpt / "epoch_2")
    (ckpt / "epoch_2" / "state.json").unlink()
    with caplog.at_level(logging.INFO, logger="torchrec_aes"):
        resumed = _fit(run)
    assert not _our_warnings(caplog)
    assert "resumed train after epoch 1" in caplog.text
    _same_run(resumed, whole)


@pytest.mark.parametrize(
    "change, differs",
    [
        ({"seed": 1}, "train.seed 0 vs 1"),
        ({"dense_lr": 0.5}, "train.dense_lr 0.01 vs 0.5"),
        ({"n": 4000}, "data.examples"),
    ],
)
def test_checkpoint_of_another_run_is_refused_naming_what_differs(runs, tmp_path, change, differs) -> None:
    _, part = runs
    run, _ = _copy(part, tmp_path)
    with pytest.raises(CheckpointError) as error:
        _fit(run, **change)  # type: ignore[arg-type]
    message = str(error.value)
    assert "\n" not in message and differs in message and "train.resume=false" in message


def test_resume_false_starts_fresh_and_replaces_the_checkpoints(runs, tmp_path) -> None:
    _, part = runs
    run, ckpt = _copy(part, tmp_path)
    fresh = _fit(run, seed=1, resume=False)
    reference = _fit(tmp_path / "reference", seed=1)
    _same_run(fresh, reference)
    manifest = json.loads((ckpt / "state.json").read_text())
    assert manifest["identity"]["train.seed"] == 1
    # The replaced checkpoints now resume like any other (resume=false clears a directory once per process).
    again = _fit(run, seed=1, resume=False)
    assert again["history"] == fresh["history"]


def test_keeps_the_last_two_epochs_and_the_best(tmp_path) -> None:
    result = _fit(tmp_path / "run", epochs=4)
    kept = sorted(p.name for p in (tmp_path / "run" / "checkpoints" / "train").glob("epoch_*"))
    expected = {f"epoch_{e}" for e in (2, 3, result["best_epoch"])}
    assert set(kept) == expected
    for name in kept:
        manifest = json.loads((tmp_path / "run" / "checkpoints" / "train" / name / "state.json").read_text())
        assert manifest["files"] and all(len(f["sha256"]) == 64 for f in manifest["files"].values())


def test_checkpoint_of_an_older_version_without_manifests_still_resumes(runs, tmp_path, caplog) -> None:
    # Before manifests, state.json was the bare trainer state (with the tables) and epochs had none.
    whole, part = runs
    run, ckpt = _copy(part, tmp_path)
    manifest = json.loads((ckpt / "state.json").read_text())
    legacy = {**manifest["state"], "tables": manifest["identity"]["tables"]}
    (ckpt / "state.json").write_text(json.dumps(legacy))
    for epoch_manifest in ckpt.glob("epoch_*/state.json"):
        epoch_manifest.unlink()
    with caplog.at_level(logging.INFO, logger="torchrec_aes"):
        resumed = _fit(run)
    assert any("without checksums" in w for w in _our_warnings(caplog))
    assert "resumed train after epoch 1" in caplog.text
    _same_run(resumed, whole)


def test_a_disk_full_checkpoint_save_is_a_one_line_error_naming_the_checkpoint():
    """DCP wraps a rank's OSError in a CheckpointException (a BaseException the CLI's handler would
    miss); the checkpointer turns it into an OSError naming the checkpoint directory."""
    import errno  # only this test needs it

    from torch.distributed.checkpoint.api import CheckpointException, _wrap_exception

    from torchrec_aes.errors import user_error_message
    from torchrec_aes.train.checkpoint import saving_error

    try:
        raise OSError(errno.ENOSPC, "No space left on device")
    except OSError as e:
        wrapped = CheckpointException("save failed", {0: _wrap_exception(e)})
    error = saving_error(wrapped, "/runs/x/checkpoints/train/epoch_3")
    assert isinstance(error, OSError) and error.errno == errno.ENOSPC
    message = user_error_message(error)
    assert message == "/runs/x/checkpoints/train/epoch_3: saving a checkpoint failed: No space left on device"
    other = CheckpointException("save failed", {0: _wrap_exception(RuntimeError("a bug"))})
    assert saving_error(other, "p") is other  # not a user error: the traceback stays


def test_a_full_disk_while_writing_a_file_names_the_file_not_a_temporary_one(tmp_path, monkeypatch):
    """Atomic writes go through a temporary file; the kernel's ENOSPC (from /dev/full) is reported for
    the file the caller asked for, and nothing is left behind."""
    import errno  # only this test needs it
    import os
    import tempfile

    from torchrec_aes.errors import user_error_message
    from torchrec_aes.io import write_text_atomic

    real = tempfile.mkstemp

    def to_dev_full(dir=None, prefix=None):  # noqa: A002 (tempfile's own parameter name)
        fd, name = real(dir=dir, prefix=prefix)
        os.close(fd)
        return os.open("/dev/full", os.O_WRONLY), name

    monkeypatch.setattr(tempfile, "mkstemp", to_dev_full)
    target = tmp_path / "plan.json"
    with pytest.raises(OSError) as e:
        write_text_atomic(str(target), "x" * 100_000)
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(target)
    assert user_error_message(e.value) == f"{target}: No space left on device"
    assert list(tmp_path.iterdir()) == []  # neither the file nor its temporary
