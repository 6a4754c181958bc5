"""What a user can fix versus what is a bug.

A *user error* is something the person running a command can fix: a config value, a missing or unreadable
file, a malformed data row, an infeasible budget, a checkpoint of another run. The CLI prints it as one
line naming the key or file, the value and what is allowed, and exits 2. Anything else is a bug in this
package or a library it calls: the CLI prints the traceback and a line saying so, and exits 1.

Which exceptions are user errors (`user_error_message`):

* `UserError` (and its subclasses `ConfigError`, `CheckpointError`, ...), raised anywhere;
* any other `ValueError` raised by this package's own code (the house rule: user errors raise
  `ValueError`, internal invariants `assert`). A `ValueError` raised inside TorchRec, torch or matplotlib
  is not one: those libraries also use it for their own internal failures;
* YAML syntax errors (config, architecture files);
* `OSError`s about a path: missing, a directory where a file is expected (or the reverse), no permission,
  read-only file system, disk full, an I/O error, name too long.

Example::

    try:
        run()
    except Exception as e:
        message = user_error_message(e)
        if message is None:
            raise  # a bug: keep the traceback
        print(f"error: {message}")
"""

from __future__ import annotations

import errno
import os

import yaml

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep

# OSErrors that say something about a path the user gave rather than about this program.
_PATH_ERRORS = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError)
_PATH_ERRNOS = {
    errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENAMETOOLONG, errno.EACCES, errno.EPERM, errno.EIO,
}  # fmt: skip


class UserError(ValueError):
    """Something the user can fix; the message names the key or file, the value and what is allowed.

    A `ValueError`, so code catching `ValueError` keeps working.
    """


class ConfigError(UserError):
    """A config file or override is invalid; the message names the dotted key, the value and what is
    allowed."""


class ConfigFileNotFoundError(ConfigError, FileNotFoundError):
    """The config file does not exist (a user error that callers catching `FileNotFoundError` still see)."""


class CheckpointError(UserError):
    """A checkpoint cannot be used: corrupt, incomplete, or written by another config, data or seed."""


def _raised_in_package(exc: BaseException) -> bool:
    """True if the innermost Python frame of `exc`'s traceback is in this package."""
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(_PACKAGE_DIR)


def _os_error_message(exc: OSError) -> str | None:
    if not isinstance(exc, _PATH_ERRORS) and exc.errno not in _PATH_ERRNOS:
        return None
    if exc.filename is None:  # our own FileNotFoundError("PATH: no such file") carries its message
        return str(exc)
    what = exc.strerror or str(exc)
    if isinstance(exc, FileExistsError | NotADirectoryError):
        what = f"{what} (a file is in the way of a directory)"
    return f"{exc.filename}: {what}"


def user_error_message(exc: BaseException) -> str | None:
    """The one-line message of `exc` if it is a user error (see the module docstring), else None."""
    if isinstance(exc, UserError):
        return _one_line(str(exc))
    try:
        if isinstance(exc, yaml.YAMLError):
            return _one_line(f"not valid YAML: {exc}")
    except ImportError:  # pragma: no cover - yaml is a dependency
        pass
    if isinstance(exc, OSError):
        message = _os_error_message(exc)
        return None if message is None else _one_line(message)
    if isinstance(exc, ValueError) and _raised_in_package(exc):
        return _one_line(str(exc))
    return None


def _one_line(text: str) -> str:
    return " ".join(text.split())


def yaml_error(path: str, exc: Exception) -> UserError:
    """A one-line `UserError` for a YAML syntax error in `path`: `PATH:LINE:COLUMN: not valid YAML: ...`."""
    mark = getattr(exc, "problem_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else path
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    return UserError(_one_line(f"{where}: not valid YAML: {problem}" + (f" ({context})" if context else "")))
