"""run.json and the output-folder rules every command follows.

run.json makes a result traceable: the resolved config, package versions, seed, device, world
size and the hash of the data manifest. The same file is what marks a folder as holding a run,
so a second command pointed at it is refused unless the user says --resume or --overwrite; a
lock refuses a second command while the first still writes.
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

from leanmae.errors import OutputFolderError
from leanmae.files import RUN_FILE, remove_leftovers, run_info, write_json

# Keys that may change between a run and its resumption: more epochs, another progress display, other
# trackers.
RESUMABLE_CHANGES = ("optim.epochs", "run.progress", "run.prefetch", "run.report_to")


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in ("leanmae", "torch", "transformers", "numpy", "safetensors", "scikit-learn"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return flat


LOCK_FILE = ".leanmae.lock"
_held: dict[Path, int] = {}  # output folders this process has claimed -> open lock file descriptor


def _entries(out: Path) -> list[Path]:
    return [p for p in out.iterdir() if p.name != LOCK_FILE]


def _inside(folder: Path, inputs: Sequence[str | Path | None]) -> list[str]:
    """The inputs that lie in ``folder`` (a source written ``DIR:classes`` counts by its DIR)."""
    real = folder.resolve()
    found = []
    for given in filter(None, inputs):
        candidates = {Path(given), Path(str(given).rsplit(":", 1)[0])}
        if any(c.resolve() == real or c.resolve().is_relative_to(real) for c in candidates):
            found.append(str(given))
    return found


def _clear(out: Path, inputs: Sequence[str | Path | None], why: str) -> None:
    """Delete what ``out`` holds (not its lock), unless an input of this command lies in it."""
    doomed = _inside(out, inputs)
    if doomed:
        raise OutputFolderError(
            f"{out}: {why} would delete {doomed[0]}, an input of this command; choose another --out"
        )
    for entry in _entries(out):
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def claim(out: Path) -> None:
    """Lock ``out`` for this process, so that two commands never write into one folder at once.

    The lock is an ``flock`` on ``out/.leanmae.lock``: the system drops it when the process ends,
    however it ends, so a killed run never leaves a stale lock behind.
    """
    key = out.resolve()
    if key in _held:
        return
    fd = os.open(out / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise OutputFolderError(
            f"{out}: another leanmae command (process {holder}) is writing into this folder; wait "
            "for it to end or choose another --out"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    _held[key] = fd


def release(out: Path) -> None:
    """Drop this process's lock on ``out`` (if it holds one) and remove the lock file, so a finished
    folder holds only results."""
    fd = _held.pop(Path(out).resolve(), None)
    if fd is not None:
        Path(out, LOCK_FILE).unlink(missing_ok=True)  # still locked here: no other claimant can be inside
        os.close(fd)


def _failed_start(out: Path) -> bool:
    """A run that stopped before its first checkpoint: nothing in it is worth keeping."""
    info = _read_info(out)
    return info.get("status") == "failed" and not any((out / "checkpoints").glob("epoch-*"))


def _read_info(out: Path) -> dict[str, Any]:
    try:
        return json.loads((out / RUN_FILE).read_text())
    except (OSError, ValueError):
        return {}


def prepare_output(
    out: Path,
    config: dict[str, Any],
    resume: bool,
    overwrite: bool,
    inputs: Sequence[str | Path | None] = (),
    deferred: Sequence[str] = (),
) -> bool:
    """Claim ``out`` (see ``claim``) and make it ready; returns True when an earlier run there is being
    resumed.

    An empty or new folder is used as is, and so is the folder of a start that failed before its
    first checkpoint. A folder holding a run needs ``resume`` (with the same config, apart from
    more epochs) or ``overwrite``; a resume deletes the temporaries a killed process left in the run
    and its checkpoints (``files.remove_leftovers``). A non-empty folder that holds no run is never
    deleted, even with ``overwrite``: it may be someone's data; nor is a folder holding one of ``inputs`` (the
    checkpoint a fine-tuning starts from, its manifest, its data). The config keys in ``deferred``
    are left out of the resume comparison: the command fits them to the data and checks the fitted
    value itself (``check_resumed_value``).
    """
    if resume and overwrite:
        raise OutputFolderError("--resume and --overwrite contradict each other; give one")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputFolderError(f"{out}: is a file; --out must be a folder")
    if out.is_dir() and _entries(out) and not (out / RUN_FILE).exists():
        raise OutputFolderError(
            f"{out}: folder is not empty and holds no leanmae run ({RUN_FILE}); choose a new or empty --out"
        )
    out.mkdir(parents=True, exist_ok=True)
    claim(out)
    try:
        return _prepare_claimed(out, config, resume, overwrite, inputs, deferred)
    except BaseException:
        release(out)
        raise


def _prepare_claimed(
    out: Path,
    config: dict[str, Any],
    resume: bool,
    overwrite: bool,
    inputs: Sequence[str | Path | None],
    deferred: Sequence[str],
) -> bool:
    if not _entries(out):
        return False
    if _failed_start(out):
        _clear(out, inputs, "starting again after a failed start")
        return False
    if overwrite:
        _clear(out, inputs, "--overwrite")
        return False
    if not resume:
        raise OutputFolderError(
            f"{out}: already holds a run; pass --resume to continue it or --overwrite to replace it"
        )
    saved = _flatten(_read_info(out).get("config", {}))
    now = _flatten(config)
    changed = sorted(
        k
        for k in set(saved) | set(now)
        if saved.get(k) != now.get(k) and k not in RESUMABLE_CHANGES and k not in deferred
    )
    if changed:
        details = "; ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in changed[:5])
        raise OutputFolderError(
            f"{out}: --resume with a different config ({details}); use the run's own settings or a new --out"
        )
    for folder in (out, out / "checkpoints"):  # the killed process's half-written files and folders
        remove_leftovers(folder)
    return True


def check_resumed_value(out: Path, key: str, field: str, value: Any) -> None:
    """Refuse resuming a run whose ``value`` of the deferred config ``key`` differs from the one it used.

    The comparison is with run.json's top-level ``field``, which has recorded the used value since
    before the config did (a run without it resumes unchecked).
    """
    saved = _read_info(out).get(field)
    if saved is not None and saved != value:
        raise OutputFolderError(
            f"{out}: --resume with a different config ({key}: {saved!r} -> {value!r}); "
            "use the run's own settings or a new --out"
        )


@contextmanager
def guarded_output(out: str | Path) -> Iterator[None]:
    """Around a training command: on failure before the first checkpoint, run.json says "failed" (not
    "running"), so that the corrected command starts afresh; the folder's lock is released at the end.
    """
    out = Path(out)
    try:
        yield
    except BaseException as err:
        if (
            out.resolve() in _held
            and _read_info(out).get("status") == "running"
            and not any((out / "checkpoints").glob("epoch-*"))
        ):
            write_json(
                out / RUN_FILE,
                {**_read_info(out), "status": "failed", "error": f"{type(err).__name__}: {err}"},
            )
        raise
    finally:
        release(out)


def check_result_folder(folder: Path, results: Sequence[str], overwrite: bool) -> None:
    """A folder that a scoring command (evaluate, reconstruct) writes ``results`` into.

    It never writes into a training run, a study or a model folder (their own results would be
    replaced), and replaces its own earlier results only with ``overwrite``.
    """
    if folder.exists() and not folder.is_dir():
        raise OutputFolderError(f"--out {folder}: is a file; give a folder")
    owner = next((name for name in (RUN_FILE, "study.json", "config.json") if (folder / name).exists()), None)
    if owner:
        raise OutputFolderError(
            f"--out {folder}: holds a leanmae run, study or model ({owner}); write these results to "
            "another folder"
        )
    existing = [name for name in results if (folder / name).exists()]
    if existing and not overwrite:
        raise OutputFolderError(
            f"--out {folder}: already holds {', '.join(existing)}; pass --overwrite to replace them"
        )


def check_output_file(path: Path, overwrite: bool, option: str = "--out") -> None:
    """A file a command is about to write: never a folder, and an existing one only with ``overwrite``."""
    if path.is_dir():
        raise OutputFolderError(f"{option} {path}: is a folder; give the name of a file to write")
    if path.exists() and not overwrite:
        raise OutputFolderError(f"{option} {path}: already exists; pass --overwrite to replace it")
    if path.parent.exists() and not path.parent.is_dir():
        raise OutputFolderError(f"{option} {path}: {path.parent} is a file, not a folder")


def write_run_info(out: Path, command: str, config: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """Write (or update) run.json; earlier fields are kept, so the end of a run can add results."""
    path = Path(out) / RUN_FILE
    info = run_info(out)
    info.update({"command": command, "config": config, "versions": versions(), **fields})
    info.setdefault("started", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    write_json(path, info)
    return info
