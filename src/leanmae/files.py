"""Atomic writes: every file and folder leanmae writes appears whole or not at all.

A file is written to a dotted temporary name ``.NAME.tmp-PID`` beside its target, flushed and
fsynced, then renamed over the target, so a killed process or a full disk leaves either the old
content or the new, never half of one (readers skip the dotted leftovers). Folders (checkpoints,
models, caches) are filled under a temporary name the same way and appear by one rename.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def temporary_name(path: Path) -> Path:
    """Where ``path`` is built before its rename: dotted, so folder scans pass over leftovers."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (some file systems cannot open a folder: then skip)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@functools.cache
def umask_mode() -> int:
    """The permissions a new file gets under this process's umask (0o644 under the usual 022); read once."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_atomic(path: Path | str, data: str | bytes) -> None:
    """Replace ``path`` with ``data`` in one rename; the previous content survives any failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_json(path: Path | str, obj: Any) -> None:
    """``obj`` as indented JSON, atomically; values JSON does not know (paths, dates) as text."""
    write_atomic(path, json.dumps(obj, indent=2, default=str) + "\n")


@contextmanager
def atomic_dir(final: Path | str, replace: bool = True) -> Iterator[Path]:
    """Yield an empty temporary folder to fill; on success it becomes ``final`` in one rename.

    Every file in it is fsynced and given the umask's permissions first (safetensors writes 0600;
    the group should read models as it reads the rest). With ``replace=False`` a ``final`` that
    already exists wins (another process built the same cache first) and the new folder is dropped.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(final)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        for file in sorted(tmp.rglob("*")):
            if file.is_file():
                os.chmod(file, umask_mode())
                with open(file, "rb") as f:
                    os.fsync(f.fileno())
        if final.exists() and not replace:
            shutil.rmtree(tmp)
            return
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
        _fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
