"""A search method's saved state (a supernet's evaluator, an RL policy, BET's replay set), saved and resumed
the way the trainer's checkpoints are: every file carries the identity of the run it belongs to and the
size and sha256 of its bytes. A resume in another setting (seed, data, training or model config, the
method's own settings, the budget) is refused in one line naming what differs; a damaged or unverifiable
file is said so in one log line and its phase starts fresh.

Layout: `<path>` holds the `torch.save` bytes, `<path>.json` its manifest (written last, atomically):
{"format", "identity", "size", "sha256"}.

Example::

    identity = state_identity(cfg, task, {"candidates": [4, 8, 16]}, budget_bytes=budget.bytes)
    blob = load_state(path, identity)          # None: nothing to resume (or a damaged file)
    save_state(path, {"update": 3}, identity)
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
from typing import Any

import torch

from torchrec_aes.config import Config
from torchrec_aes.errors import CheckpointError
from torchrec_aes.io import exists, read_bytes, read_text, write_bytes_atomic, write_text_atomic
from torchrec_aes.tasks.base import Task
from torchrec_aes.train.checkpoint import code_versions, differences
from torchrec_aes.train.distributed import broadcast_object, init_distributed

logger = logging.getLogger(__name__)

FORMAT = 1
_BOOKKEEPING = ("progress", "log_every", "checkpoint", "resume")


def state_identity(
    cfg: Config, task: Task, settings: dict[str, Any], budget_bytes: int | None = None
) -> dict[str, Any]:
    """What a method's saved state depends on: the data (the `data` section, schema hash, examples per
    split), every `train` and `model` field but bookkeeping, the method's `settings` that shape this state
    (the method chooses them: a supernet does not depend on the RL's knobs) and the budget (in the budget's
    unit) when the state depends on it. As flat JSON `key -> value` pairs, compared one by one on resume."""
    identity: dict[str, Any] = {
        "data": dataclasses.asdict(cfg.data),
        "data.schema": task.schema.hash(),
        "data.examples": task.num_examples(),
        "data.content": task.data_fingerprint(),
        **code_versions(),
        **{f"train.{k}": v for k, v in dataclasses.asdict(cfg.train).items() if k not in _BOOKKEEPING},
        **{f"model.{k}": v for k, v in dataclasses.asdict(cfg.model).items()},
        **{f"search.{k}": v for k, v in settings.items()},
    }
    if budget_bytes is not None:
        identity["search.budget"] = budget_bytes
    return json.loads(json.dumps(identity, default=str))


def save_state(path: str, obj: Any, identity: dict[str, Any]) -> None:
    """Writes `obj` (`torch.save`) and then its manifest, each atomically (call on one rank)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getvalue()
    write_bytes_atomic(path, data)
    manifest = {
        "format": FORMAT,
        "identity": identity,
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    write_text_atomic(path + ".json", json.dumps(manifest, indent=1))


def load_state(path: str, identity: dict[str, Any], weights_only: bool = True) -> Any:
    """The state saved at `path` by this run, or None when there is none, or when it is damaged or cannot
    be verified (one log line says which; the phase then starts fresh).

    Raises:
        CheckpointError: the state belongs to another run (seed, data, config, budget, ...), naming what
            differs; rerun in a new run directory or with `train.resume=false`.
    """
    if not exists(path):
        return None
    try:
        manifest = json.loads(read_text(path + ".json"))
        saved = manifest["identity"]
        size, sha = int(manifest["size"]), str(manifest["sha256"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        logger.warning("%s: no readable manifest (%s); starting this phase fresh", path, type(e).__name__)
        return None
    if saved != identity:
        raise CheckpointError(
            f"{path}: saved by another run ({'; '.join(differences(saved, identity)[:3])}); use a new run "
            "directory, or train.resume=false to start fresh"
        )
    data = read_bytes(path)
    if len(data) != size or hashlib.sha256(data).hexdigest() != sha:
        logger.warning("%s: its bytes do not match its manifest (damaged); starting this phase fresh", path)
        return None
    try:
        return torch.load(io.BytesIO(data), weights_only=weights_only)
    except Exception as e:  # noqa: BLE001 -- any unreadable payload: start the phase fresh
        logger.warning("%s: unreadable (%s); starting this phase fresh", path, type(e).__name__)
        return None


def load_state_on_main(path: str, identity: dict[str, Any], weights_only: bool = True) -> tuple[Any, bool]:
    """`load_state` on rank 0 (where method state lives), its verdict on every rank: (the state on rank 0,
    else None; whether there is one to resume). A state of another run is a `CheckpointError` on every
    rank, so no rank waits for one that stopped."""
    env = init_distributed()
    blob, error = None, None
    if env.is_main and path:
        try:
            blob = load_state(path, identity, weights_only)
        except CheckpointError as e:
            error = str(e)
    found, error = broadcast_object((blob is not None, error))
    if error:
        raise CheckpointError(error)
    return blob, found
