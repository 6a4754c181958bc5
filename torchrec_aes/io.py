"""File I/O for run directories: local paths or any iopath URI, with atomic writes.

Artifacts are written to a temporary name and renamed, so a killed run never leaves half a file. Remote
iopath backends (object stores) publish whole objects on close, which is atomic already.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile

import numpy as np
from iopath.common.file_io import g_pathmgr


def is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


def _local(path: str) -> str:
    return path[len("file://") :] if path.startswith("file://") else path


def join(*parts: str) -> str:
    return os.path.join(*parts)


def exists(path: str) -> bool:
    return g_pathmgr.exists(path)


def makedirs(path: str) -> None:
    g_pathmgr.mkdirs(path)


def remove_tree(path: str) -> None:
    """Deletes a local directory and everything in it, or a local file, if it exists (DCP checkpoints
    and saved search phases are local files)."""
    local = _local(path)
    if os.path.isfile(local):
        os.remove(local)
    else:
        shutil.rmtree(local, ignore_errors=True)


def read_text(path: str) -> str:
    if not g_pathmgr.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    with g_pathmgr.open(path, "r") as f:
        return f.read()


def read_bytes(path: str) -> bytes:
    if not g_pathmgr.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    with g_pathmgr.open(path, "rb") as f:
        return f.read()


def write_bytes_atomic(path: str, data: bytes) -> None:
    """Writes `data` to `path` via a temporary file and a rename (local) or one object put (remote)."""
    if not is_local(path):
        with g_pathmgr.open(path, "wb") as f:
            f.write(data)
        return
    path = _local(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-" + os.path.basename(path))
    except OSError as e:  # a read-only or full directory: name the file asked for, not a temporary one
        raise OSError(e.errno, e.strerror, path) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise OSError(e.errno, e.strerror, path) from None
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text_atomic(path: str, text: str) -> None:
    write_bytes_atomic(path, text.encode())


def save_numpy_atomic(path: str, array) -> None:
    buf = io.BytesIO()
    np.save(buf, array)
    write_bytes_atomic(path, buf.getvalue())


def load_numpy(path: str):
    return np.load(io.BytesIO(read_bytes(path)))


def save_torch_atomic(path: str, obj) -> None:
    """`torch.save` of `obj` to `path`, atomically (checkpoints and caches of the searches)."""
    import torch  # start-up time: the config loader imports this module and must not load torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes_atomic(path, buf.getvalue())


def load_torch(path: str, weights_only: bool = True):
    import torch  # start-up time, as in `save_torch_atomic`

    return torch.load(io.BytesIO(read_bytes(path)), weights_only=weights_only)
