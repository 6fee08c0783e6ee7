"""Every exception leanmae raises on purpose, in one module that imports nothing heavy.

The CLI turns each of these into a one-line ``leanmae CMD: error: ...`` and exit status 2; keeping
them here lets it catch them without loading torch, and lets any layer raise them without importing
a layer above it.
"""

from __future__ import annotations

import errno
from pathlib import Path


class ConfigError(ValueError):
    """A configuration key, value or preset that cannot be used; the message names it."""


class DataError(ValueError):
    """A data folder, class or manifest that cannot be used; the message names it."""


class BadImageError(ValueError):
    """An image file that cannot be used; ``path`` and ``reason`` say which and why."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


class UnsupportedImageError(ValueError):
    """A readable image whose pixels cannot become RGB without guessing (decode_rgb names the file)."""


class CheckpointError(ValueError):
    """A checkpoint or model folder that cannot be used; the message names it and says why."""


class OutputFolderError(ValueError):
    """An output folder that already holds something the command would overwrite."""


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message says whether a checkpoint is left to resume from."""


# The errors a command reports as one line instead of a traceback (see cli.main).
USER_ERRORS: tuple[type[Exception], ...] = (
    ConfigError,
    DataError,
    BadImageError,
    CheckpointError,
    OutputFolderError,
    NonFiniteLossError,
)


# System errors that describe the machine rather than a bug in leanmae: a full or read-only disk, a
# missing permission, a failing device. Any of them is worth one line; the path kinds below need a
# named path to be (a missing file with no name says nothing the user can act on).
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
_DISK_OR_PERMISSION = _NO_SPACE | {errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}
_PATH = frozenset({errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENAMETOOLONG, errno.ELOOP})


def os_error_line(err: OSError) -> str | None:
    """The one line the command line prints for ``err``: the path (when known) and the system's words.

    None for any other ``OSError`` (a broken pipe, a bad file descriptor, one without an errno): those are
    bugs, and their traceback is what a report of them needs.
    """
    if err.errno not in _DISK_OR_PERMISSION and not (err.errno in _PATH and err.filename):
        return None
    where = f"{err.filename}: " if err.filename else ""
    hint = (
        "; free some space, then run the command again (a training run continues with --resume)"
        if err.errno in _NO_SPACE
        else ""
    )
    return f"{where}{err.strerror or err}{hint}"
