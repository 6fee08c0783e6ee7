"""Every exception leanmae raises on purpose, in one module that imports nothing heavy.

The CLI turns each of these into a one-line ``leanmae CMD: error: ...`` and exit status 2; keeping
them here lets it catch them without loading torch, and lets any layer raise them without importing
a layer above it.
"""

from __future__ import annotations

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
