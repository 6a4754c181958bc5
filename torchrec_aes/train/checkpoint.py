"""Epoch checkpoints with `torch.distributed.checkpoint` (DCP): sharded tables, fused optimizer state,
dense weights and the trainer's own state. A rerun with the same run directory resumes from the newest
intact one.

Layout of `checkpoints/<tag>/`::

    epoch_<k>/              DCP files of epoch k (`.metadata`, `__<rank>_<i>.distcp`)
    epoch_<k>/state.json    its manifest, written last and atomically by rank 0 after every rank saved:
                            {"epoch", "state" (the trainer's), "identity", "files" (size and sha256 of
                            every DCP file)}; an epoch without one is an interrupted save and is ignored
    state.json              a copy of the newest manifest, for people and tools

Identity (`run_identity`): a checkpoint belongs to one architecture (tables), `train.seed`, data (schema
hash and examples per split) and the training-relevant config: every `model` field and every `train`
field except those that do not change the trained weights of an epoch: `progress`, `log_every`,
`checkpoint`, `resume` (bookkeeping), `epochs` and `patience` (when to stop, not what an epoch does:
raising them continues a run exactly as an uninterrupted run with the new values would have gone; search
phases rely on this to extend a training epoch by epoch). The world size is not part of it: DCP reshards a
checkpoint onto another world size (the run then differs from an uninterrupted one as 1 and 2 processes
differ). A checkpoint of another identity is refused with a one-line `CheckpointError` naming what differs,
unless `train.resume` is false, which clears the directory the first time a process uses it ("start
fresh"); later trainers of the same phase in the same process (successive halving continues a finalist
epoch by epoch) resume from what this run wrote.

Integrity: on resume, rank 0 checks the newest manifest's files (present, size, sha256) and falls back to
the next older intact epoch, saying why in one log line; if checkpoints exist but none is intact, that is a
one-line `CheckpointError`. Kept: the last two complete epochs and the best epoch (so a fallback still
finds the best epoch its state names): at most 3 checkpoints on disk, each the size of the tables with
their optimizer state plus the dense weights and optimizer state (before checksums: 2). Hashing costs one
read of the files on rank 0 per save and per resume (sha256, about 1-2 GB/s).
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import hashlib
import importlib.metadata
import json
import logging
import os
import random
import re
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

from torchrec_aes.errors import CheckpointError
from torchrec_aes.io import exists, join, load_torch, remove_tree, save_torch_atomic, write_text_atomic

logger = logging.getLogger(__name__)

MANIFEST = "state.json"
"""The manifest of an epoch (and, at the top of the directory, a copy of the newest one)."""
MANIFEST_FORMAT = 1

NOT_IDENTITY = ("progress", "log_every", "checkpoint", "resume", "epochs", "patience")
"""`train` fields that do not change what an epoch trains (see the module docstring)."""

_EPOCH_DIR = re.compile(r"epoch_(\d+)")
_CHUNK = 1 << 20
# Directories `train.resume=false` has cleared in this process (each is cleared once: see the docstring).
_STARTED_FRESH: set[str] = set()


CODE_PACKAGES = ("torchrec_aes", "torch", "torchrec", "fbgemm_gpu")
"""Packages whose versions a saved state depends on (a state from other versions may not load, or not
mean the same)."""


@functools.cache
def code_versions() -> dict[str, str]:
    """{"code.<package>": version} of `CODE_PACKAGES` ("" when not installed as a distribution); read once
    per process."""
    out = {}
    for package in CODE_PACKAGES:
        names = importlib.metadata.packages_distributions().get(package, [package])
        try:
            out[f"code.{package}"] = importlib.metadata.version(names[0])
        except importlib.metadata.PackageNotFoundError:
            out[f"code.{package}"] = ""
    return out


def run_identity(
    train: Any,
    model: Any,
    schema_hash: str,
    examples: dict[str, int],
    tables: dict[str, list[int]],
    data_fingerprint: str = "",
) -> dict[str, Any]:
    """What a checkpoint belongs to, as flat `key -> value` pairs compared one by one on resume.

    Args:
        train: the `train` config section.
        model: the `model` config section.
        schema_hash: `Schema.hash()` of the data.
        examples: examples per split (`Task.num_examples()`).
        tables: `{table name: [rows, dim]}` of the architecture trained.
        data_fingerprint: a digest of the data's content (`Task.data_fingerprint()`).
    """
    identity: dict[str, Any] = {
        "tables": tables,
        "data.schema": schema_hash,
        "data.examples": examples,
        "data.content": data_fingerprint,
        **code_versions(),
    }
    for key, value in dataclasses.asdict(train).items():
        if key not in NOT_IDENTITY:
            identity[f"train.{key}"] = value
    for key, value in dataclasses.asdict(model).items():
        identity[f"model.{key}"] = value
    # JSON round trip: what is compared on resume is what was read back from the manifest.
    return json.loads(json.dumps(identity))


def differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    out = []
    for key in sorted(set(saved) | set(current), key=lambda k: (k != "train.seed", k)):
        a, b = saved.get(key, "(unset)"), current.get(key, "(unset)")
        if a == b:
            continue
        if key == "tables" and isinstance(a, dict) and isinstance(b, dict):
            changed = [
                f"{t} {a.get(t, '(none)')} vs {b.get(t, '(none)')}"
                for t in sorted(set(a) | set(b))
                if a.get(t) != b.get(t)
            ]
            more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
            out.append(f"tables [rows, dim]: {', '.join(changed[:3])}{more}")
        else:
            out.append(f"{key} {json.dumps(a)} vs {json.dumps(b)}")
    return out


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _broadcast(obj: Any) -> Any:
    """Rank 0's `obj` on every rank (identity without a process group or in a world of one)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def saving_error(exc: CheckpointException, path: str) -> BaseException:
    """What to raise for a failed DCP save: a rank's `OSError` (disk full, I/O error, no permission) as
    an `OSError` naming the checkpoint directory (a one-line user error in the CLI), else `exc` itself.

    DCP wraps every rank's failure in a `CheckpointException`, a `BaseException` that `except Exception`
    does not catch."""
    for failure, _ in exc.failures.values():
        if isinstance(failure, OSError):
            what = failure.strerror or str(failure)
            return OSError(failure.errno or errno.EIO, f"saving a checkpoint failed: {what}", path)
    return exc


class Checkpointer:
    """Saves and restores (model, optimizer, trainer state) per epoch, with checksums and an identity.

    Every method is collective (all ranks call it); rank 0 writes manifests, verifies and prunes.

    Args:
        directory: `RUN/checkpoints/<tag>` (a local path: DCP writes files).
        is_main: whether this rank writes manifests and prunes old epochs.
        identity: what the checkpoints belong to (`run_identity`); None skips the check.
        resume: False: start fresh (clear `directory` the first time this process uses it).

    Example::

        ckpt = Checkpointer("runs/x/checkpoints/train", rank == 0, run_identity(...))
        state = ckpt.resume()  # None, or the trainer state of the newest intact epoch
        if state is not None:
            ckpt.load(state["epoch"], model, optimizer)
        ...
        ckpt.save(epoch, model, optimizer, state)
    """

    def __init__(
        self, directory: str, is_main: bool, identity: dict[str, Any] | None = None, resume: bool = True
    ) -> None:
        self.directory = directory
        self.is_main = is_main
        self.identity = identity
        self.resume_enabled = resume
        self._verified: set[int] = set()  # rank 0: epochs whose files it wrote or checked
        self._legacy_run = False  # rank 0: resumed a checkpoint written before manifests existed

    def _epoch_dir(self, epoch: int) -> str:
        return join(self.directory, f"epoch_{epoch}")

    def _epochs_on_disk(self) -> list[int]:
        if not os.path.isdir(self.directory):
            return []
        found = (_EPOCH_DIR.fullmatch(n) for n in os.listdir(self.directory))
        return sorted((int(m.group(1)) for m in found if m), reverse=True)

    # ------------------------------------------------------------------------------------------------- save

    def save(self, epoch: int, model, optimizer, trainer_state: dict[str, Any]) -> None:
        """Writes epoch `epoch`, then its manifest, then prunes to the last two epochs and the best."""
        path = self._epoch_dir(epoch)
        if self.is_main:
            remove_tree(path)  # an interrupted save, or a corrupt epoch a resume fell back from
        _barrier()
        try:
            dcp.save({"model": model.state_dict(), "optim": optimizer.state_dict()}, checkpoint_id=path)
            # Each rank's random generators: what it draws next (dropout, iHAS's gate samples) resumes
            # exactly; listed in the manifest and checked like the weights.
            save_torch_atomic(self._rng_file(epoch), rng_state())
        except CheckpointException as e:
            raise saving_error(e, path) from None
        _barrier()
        if self.is_main:
            files = {}
            for root, _, names in os.walk(path):
                for name in sorted(names):
                    full = os.path.join(root, name)
                    rel = os.path.relpath(full, path)
                    if rel != MANIFEST:
                        files[rel] = {"bytes": os.path.getsize(full), "sha256": _sha256(full)}
            manifest = {
                "format": MANIFEST_FORMAT,
                "epoch": epoch,
                "state": trainer_state,
                "identity": self.identity,
                "files": files,
            }
            text = json.dumps(manifest, indent=1)
            write_text_atomic(join(path, MANIFEST), text)
            write_text_atomic(join(self.directory, MANIFEST), text)
            self._verified.add(epoch)
            self._prune(epoch, trainer_state.get("best_epoch", epoch))
        _barrier()

    def _prune(self, epoch: int, best: int) -> None:
        older = [
            k
            for k in self._epochs_on_disk()
            if k < epoch and os.path.exists(join(self._epoch_dir(k), MANIFEST))
        ]
        keep = {epoch, best} | ({max(older)} if older else set())
        for k in self._epochs_on_disk():
            if k not in keep:  # also epochs after `epoch`: left from before a resume that fell back
                remove_tree(self._epoch_dir(k))
                self._verified.discard(k)

    # ----------------------------------------------------------------------------------------------- resume

    def resume(self) -> dict[str, Any] | None:
        """The trainer state of the newest intact checkpoint of this identity, or None to start fresh.

        Corrupt or incomplete newer epochs are skipped (one log line says which and why).

        Raises:
            CheckpointError: the checkpoints belong to another identity (the message names what differs),
                or checkpoints exist but none is intact.
        """
        if not self.resume_enabled:
            if self.is_main and self.directory not in _STARTED_FRESH and os.path.isdir(self.directory):
                logger.info("train.resume=false: removing the checkpoints in %s", self.directory)
                remove_tree(self.directory)
            _STARTED_FRESH.add(self.directory)
            _barrier()
            return None
        found: tuple[str, Any] = ("none", None)
        if self.is_main:
            try:
                found = self._find()
            except CheckpointError as e:
                found = ("error", str(e))
        kind, value = _broadcast(found)
        if kind == "error":
            raise CheckpointError(value)
        if kind == "none":
            return None
        epoch, state = value
        if self.is_main:
            self._verified.add(epoch)
        return {**state, "epoch": epoch}

    def _find(self) -> tuple[str, Any]:
        """Rank 0: ("found", (epoch, trainer state)) | ("none", None); raises CheckpointError."""
        problems: list[str] = []
        for epoch in self._epochs_on_disk():
            name = f"epoch_{epoch}"
            manifest_path = join(self._epoch_dir(epoch), MANIFEST)
            if not os.path.exists(manifest_path):
                continue  # an interrupted save: never complete, nothing lost
            try:
                with open(manifest_path, encoding="utf-8") as f:
                    manifest = json.load(f)
                if not isinstance(manifest, dict) or manifest.get("epoch") != epoch:
                    raise ValueError(f"not the manifest of epoch {epoch}")
                state, files = manifest["state"], manifest["files"]
            except (OSError, ValueError, KeyError, TypeError) as e:
                problems.append(f"{name}/{MANIFEST} unreadable ({_short(e)})")
                continue
            self._check_identity(manifest.get("identity"))
            problem = self._check_files(epoch, files)
            if problem:
                problems.append(f"{name}/{problem}")
                continue
            if problems:
                logger.warning(
                    "%s: %s; resuming from epoch %d instead", self.directory, "; ".join(problems), epoch
                )
            return "found", (epoch, state)
        legacy = self._legacy()
        if legacy is not None:
            return legacy
        if problems:
            raise CheckpointError(
                f"{self.directory}: no intact checkpoint to resume from ({'; '.join(problems)}); "
                "set train.resume=false to start fresh (ignore and replace them)"
            )
        return "none", None

    def _check_identity(self, saved: Any, keys: list[str] | None = None) -> None:
        """Raises CheckpointError naming what differs between `saved` and this run (only `keys`, if given)."""
        if self.identity is None:
            return
        current = {k: v for k, v in self.identity.items() if keys is None or k in keys}
        saved = saved if isinstance(saved, dict) else {}
        if saved == current:
            return
        raise CheckpointError(
            f"{self.directory} holds checkpoints of another architecture, config, data or "
            "seed (checkpoint vs now: "
            f"{'; '.join(differences(saved, current))}); set train.resume=false to start fresh (ignore "
            "and replace them), or use another run directory"
        )

    def _check_files(self, epoch: int, files: dict[str, Any]) -> str | None:
        """The first problem with the files of `epoch` against its manifest, or None if all match."""
        directory = self._epoch_dir(epoch)
        if not files:
            return f"{MANIFEST} lists no files"
        for rel, expected in sorted(files.items()):
            path = join(directory, rel)
            if not os.path.isfile(path):
                return f"{rel} is missing"
            size = os.path.getsize(path)
            if size != expected["bytes"]:
                return f"{rel} has {size} bytes, expected {expected['bytes']}"
            if _sha256(path) != expected["sha256"]:
                return f"{rel} does not match its sha256 (corrupt)"
        return None

    def _legacy(self) -> tuple[str, Any] | None:
        """A checkpoint written before manifests existed: `state.json` is the bare trainer state."""
        try:
            with open(join(self.directory, MANIFEST), encoding="utf-8") as f:
                state = json.load(f)
        except (OSError, ValueError):
            return None
        if not isinstance(state, dict) or "files" in state or "epoch" not in state:
            return None
        if not os.path.isdir(self._epoch_dir(state["epoch"])):
            return None
        self._check_identity({"tables": state.get("tables")}, keys=["tables"])
        self._legacy_run = True  # its epochs have no manifests to check against
        logger.warning(
            "%s: checkpoint without checksums (an older version wrote it); resuming from it", self.directory
        )
        return "found", (state["epoch"], state)

    # ------------------------------------------------------------------------------------------------- load

    def load(self, epoch: int, model, optimizer=None) -> None:
        """Loads epoch `epoch` into `model` (and `optimizer`), after checking its files once.

        Raises:
            CheckpointError: its files do not match its manifest.
        """
        # Rank 0 decides (it alone tracks what it wrote or checked) and always broadcasts, so every rank
        # takes the same path into the collective load.
        problem = None
        if self.is_main and epoch not in self._verified and not self._legacy_run:
            try:
                with open(join(self._epoch_dir(epoch), MANIFEST), encoding="utf-8") as f:
                    problem = self._check_files(epoch, json.load(f)["files"])
            except (OSError, ValueError, KeyError, TypeError) as e:
                problem = f"{MANIFEST} unreadable ({_short(e)})"
            if problem is None:
                self._verified.add(epoch)
        problem = _broadcast(problem)
        if problem:
            raise CheckpointError(f"{self._epoch_dir(epoch)}: {problem}")
        if optimizer is not None:
            # Optimizer state is created lazily on the first step: a fresh optimizer (e.g. Adam's) has
            # none, so DCP would have nothing to load into and its saved state would silently be lost.
            # A zero-gradient step creates it; the weights and state are then overwritten from the file.
            optimizer.init_state()
        state = {"model": model.state_dict()}
        if optimizer is not None:
            state["optim"] = optimizer.state_dict()
        dcp.load(state, checkpoint_id=self._epoch_dir(epoch))
        model.load_state_dict(state["model"])
        if optimizer is not None:
            optimizer.load_state_dict(state["optim"])
            # Resuming training (not restoring weights to test them): the generators continue too.
            if exists(self._rng_file(epoch)):  # checkpoints written before generator states had none
                set_rng_state(load_torch(self._rng_file(epoch), weights_only=False))

    def _rng_file(self, epoch: int) -> str:
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        return join(self._epoch_dir(epoch), f"rng_rank{rank}.pt")


def rng_state() -> dict[str, Any]:
    """This process's random generators: torch (CPU and CUDA), numpy and Python's."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Puts back what `rng_state` saved."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _short(e: BaseException) -> str:
    return " ".join(str(e).split())[:120] or type(e).__name__
