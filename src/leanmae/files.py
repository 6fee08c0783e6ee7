"""Atomic writes: every file and folder leanmae writes appears whole or not at all.

A file is written to a dotted temporary name ``.NAME.tmp-PID`` beside its target, flushed and
fsynced, then renamed over the target, so a killed process or a full disk leaves either the old
content or the new, never half of one (readers skip the dotted leftovers). Folders (checkpoints,
models, caches) are filled under a temporary name the same way and appear by one rename. A system
error while writing (a full disk) names the file or folder being written.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

from safetensors import SafetensorError  # the Rust extension alone: no torch

from leanmae.errors import DataError


def temporary_name(path: Path) -> Path:
    """Where ``path`` is built before its rename: dotted, so folder scans pass over leftovers."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


# What temporary_name and atomic_dir's set-aside old folder look like: ".NAME.tmp-PID", ".NAME.old-PID".
_TEMPORARY = re.compile(r"\.(.+)\.(?:tmp|old)-(\d+)")


def remove_leftovers(folder: Path, name: str | None = None) -> None:
    """Delete the temporary files and folders killed processes left in ``folder`` (not in its subfolders);
    with ``name``, only those of that one entry.

    Only for a folder whose lock this process holds (``reporting.runinfo.claim``): while it is held no other
    leanmae command writes there, so every entry named like a temporary of another process is a leftover.
    With ``name``, the lock needs to cover that entry only (a study's run, which one job of the study writes
    while others write beside it). Their PIDs are not looked up, because a container reuses small PIDs and
    a PID from another node of a shared file system means nothing here. Nothing else is touched: a dotted
    name must end in ``.tmp-PID`` or ``.old-PID`` to go.
    """
    if not folder.is_dir():
        return
    for entry in folder.iterdir():
        found = _TEMPORARY.fullmatch(entry.name)
        if not found or int(found.group(2)) == os.getpid() or name not in (None, found.group(1)):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


# How a system error ends the text of a SafetensorError: "... No space left on device (os error 28) ...".
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def _raise_naming(err: BaseException, path: Path) -> NoReturn:
    """Raise ``err``, as an ``OSError`` naming ``path`` when it is a system error that names no file.

    Why: a failed ``write`` or ``fsync`` names no file, and safetensors gives the system's error as text,
    so a full disk would reach the user as "No space left on device" (or a traceback) without saying where.
    """
    code = None
    if isinstance(err, OSError):
        code = err.errno if err.filename is None else None
    elif isinstance(err, SafetensorError) and (found := _RUST_OS_ERROR.search(str(err))):
        code = int(found.group(1))
    if code is None:
        raise err
    raise OSError(code, os.strerror(code), str(path)) from err


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
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        _raise_naming(err, path)
    _fsync_dir(path.parent)


RUN_FILE = "run.json"


def read_json(path: Path | str) -> Any:
    """A JSON file leanmae wrote, or a one-line ``DataError`` naming it when it cannot be (a write cut
    short by a full disk or an editor, a file of another kind): a traceback would name neither."""
    try:
        return json.loads(Path(path).read_bytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(
            f"{path}: not a readable JSON file ({_first_line(err)}); rerun the command that wrote it, "
            "or delete it"
        ) from None


def _first_line(err: Exception) -> str:
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def run_info(folder: Path | str) -> dict[str, Any]:
    """A run folder's ``run.json``, or ``{}`` where there is none yet; one reader for the report and
    the robustness benchmark (both look for finished runs)."""
    path = Path(folder) / RUN_FILE
    return read_json(path) if path.exists() else {}


def weights_sha256(folder: Path | str) -> str:
    """One hash of a model folder's weights (every ``*.safetensors`` in it, by name) or of a weights file, so
    a run can record what it started from and a later command can tell when the same name holds other
    weights."""
    digest = hashlib.sha256()
    files = [Path(folder)] if Path(folder).is_file() else sorted(Path(folder).glob("*.safetensors"))
    for file in files:
        digest.update(file.name.encode())
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


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
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        _raise_naming(err, final)
