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
from leanmae.tracking import MLFLOW_RUN_FILE

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


# What every training run writes at its top level (history, checkpoints, trackers); each command adds its own.
TRAINING_OUTPUTS = (RUN_FILE, "history.csv", "checkpoints", "tensorboard", MLFLOW_RUN_FILE)

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


def _clear(out: Path, inputs: Sequence[str | Path | None], why: str, outputs: Sequence[str]) -> None:
    """Delete what the command writes in ``out`` (``outputs``, and the temporaries of killed writers),
    unless an input of this command lies in it.

    Why only those: a run folder also collects what other commands and people put there (``evaluate``
    results in a subfolder, a notes file); replacing a run must not take them with it.
    """
    doomed = [
        out / name
        for name in dict.fromkeys((RUN_FILE, *outputs))
        if (out / name).exists() or (out / name).is_symlink()
    ]
    inside = [given for entry in doomed for given in _inside(entry, inputs)]
    if inside:
        raise OutputFolderError(
            f"{out}: {why} would delete {inside[0]}, an input of this command; choose another --out"
        )
    for entry in doomed:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    remove_leftovers(out)


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


@contextmanager
def held(out: Path) -> Iterator[None]:
    """Hold ``out``'s lock (``claim``) for a block: a study, or a result folder being written."""
    claim(out)
    try:
        yield
    finally:
        release(out)


def release(out: Path) -> None:
    """Drop this process's lock on ``out`` (if it holds one) and remove the lock file, so a finished
    folder holds only results."""
    fd = _held.pop(Path(out).resolve(), None)
    if fd is not None:
        Path(out, LOCK_FILE).unlink(missing_ok=True)  # still locked here: no other claimant can be inside
        os.close(fd)


def failed_start(out: Path) -> bool:
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
    outputs: Sequence[str] = (),
) -> bool:
    """Claim ``out`` (see ``claim``) and make it ready; returns True when an earlier run there is being
    resumed.

    An empty or new folder is used as is, and so is the folder of a start that failed before its
    first checkpoint. A folder holding a run needs ``resume`` (with the same config, apart from
    more epochs) or ``overwrite``; a resume deletes the temporaries a killed process left in the run
    and its checkpoints (``files.remove_leftovers``). A non-empty folder that holds no run is never
    deleted, even with ``overwrite``: it may be someone's data; nor is a folder holding one of ``inputs`` (the
    checkpoint a fine-tuning starts from, its manifest, its data). Replacing a run deletes only the
    entries the command writes (``outputs``: its top-level names; run.json always), so other files
    stay. The config keys in ``deferred``
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
        return _prepare_claimed(out, config, resume, overwrite, inputs, deferred, outputs)
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
    outputs: Sequence[str],
) -> bool:
    if not _entries(out):
        return False
    if failed_start(out):
        _clear(out, inputs, "starting again after a failed start", outputs)
        return False
    if overwrite:
        _clear(out, inputs, "--overwrite", outputs)
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
    "running"), so that the corrected command starts afresh; a failure before anything was written leaves
    no empty folder behind; the folder's lock is released at the end.
    """
    out = Path(out)
    held_here = False
    try:
        yield
    except BaseException as err:
        held_here = out.resolve() in _held
        if (
            held_here
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
        if held_here and out.is_dir() and not any(out.iterdir()):
            out.rmdir()


# The file that marks a folder as a leanmae run, study or model, and so every file in it as written by the
# command that made it (a model folder: also leanmae.json, or config.json beside model.safetensors).
MARKERS = {"run": RUN_FILE, "study": "study.json", "model": "config.json"}
# The files that mark a folder as holding a scoring command's results (evaluate, its --shifts, reconstruct,
# adapt); predictions.csv alone does not, since predict's own files may be replaced with --overwrite.
RESULT_MARKERS = ("metrics.json", "robustness.json", "recon_metrics.json", "adapt.json")


def leanmae_folder_kind(folder: Path) -> str | None:
    """What ``folder`` is to leanmae: "run", "study", "model", or None.

    A model folder is one leanmae wrote (leanmae.json) or a transformers folder (config.json beside
    model.safetensors): a config.json alone is too common a name to claim a folder.
    """
    if (folder / RUN_FILE).is_file():
        return "run"
    if (folder / MARKERS["study"]).is_file():
        return "study"
    if (folder / "leanmae.json").is_file() or (
        (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    ):
        return "model"
    return None


def _enclosing_leanmae_folder(path: Path) -> tuple[Path, str] | None:
    """The nearest run, study or model folder that ``path`` is or lies in, with its kind."""
    real = path.resolve()
    for folder in (real, *real.parents):
        kind = leanmae_folder_kind(folder)
        if kind:
            return folder, kind
    return None


def _input_holding(path: Path, inputs: Sequence[str | Path | None]) -> str | None:
    """The input of a command that ``path`` is, or lies in (a model folder): what writing it would destroy."""
    real = path.resolve()
    for given in inputs:
        if given is not None and real.is_relative_to(Path(given).resolve()):
            return str(given)
    return None


def check_result_folder(folder: Path, results: Sequence[str], overwrite: bool) -> None:
    """A folder that a scoring command (evaluate, reconstruct, adapt) writes ``results`` into.

    It is never a training run, a study or a model folder, nor inside a model folder (their own files
    would be replaced, or travel with every copy of the model); a subfolder of a run or study is fine
    (``RUN/evaluate-test`` is evaluate's default). Its own earlier results are replaced only with
    ``overwrite``. Commands hold the folder's lock while writing: ``result_folder``.
    """
    if folder.exists() and not folder.is_dir():
        raise OutputFolderError(f"--out {folder}: is a file; give a folder")
    owner = leanmae_folder_kind(folder)
    if owner:
        raise OutputFolderError(
            f"--out {folder}: holds a leanmae run, study or model ({MARKERS[owner]}); write these results "
            "to another folder"
        )
    enclosing = _enclosing_leanmae_folder(folder)
    if enclosing and enclosing[1] == "model":
        raise OutputFolderError(
            f"--out {folder}: inside the model folder {enclosing[0]}, which holds one model only; write "
            "these results to another folder"
        )
    existing = [name for name in results if (folder / name).exists()]
    if existing and not overwrite:
        raise OutputFolderError(
            f"--out {folder}: already holds {', '.join(existing)}; pass --overwrite to replace them"
        )


@contextmanager
def result_folder(folder: Path, results: Sequence[str], overwrite: bool) -> Iterator[Path]:
    """Check ``folder`` (``check_result_folder``), then hold its lock (``held``) while the command writes.

    Why the lock: two commands into one folder at once both passed the check, and the results of
    one replaced the other's without a word. The check runs again once the lock is held, since a
    command may have finished there in between. A folder made here that a failure leaves empty is
    removed, so a refused command leaves nothing behind.
    """
    folder = Path(folder)
    check_result_folder(folder, results, overwrite)
    made = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with held(folder):
            check_result_folder(folder, results, overwrite)
            yield folder
    finally:
        if made and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def check_output_file(
    path: Path,
    overwrite: bool,
    option: str = "--out",
    inputs: Sequence[str | Path | None] = (),
    result: bool = False,
) -> None:
    """A file a command is about to write: never a folder, never one of the command's ``inputs`` nor a file
    inside one (the model folder it reads), and an existing file only with ``overwrite``.

    A ``result`` (the file of a scoring or export command: predict, export) is also never inside a
    leanmae run, study or model folder, nor beside another command's results (``RESULT_MARKERS``):
    those files belong to the command that wrote them, and a run whose predictions.csv or
    model.safetensors is replaced is silently wrong. ``overwrite`` lifts none of this.
    """
    if path.is_dir():
        raise OutputFolderError(f"{option} {path}: is a folder; give the name of a file to write")
    if path.parent.exists() and not path.parent.is_dir():
        raise OutputFolderError(f"{option} {path}: {path.parent} is a file, not a folder")
    source = _input_holding(path, inputs)
    if source:
        raise OutputFolderError(
            f"{option} {path}: would replace {source}, an input of this command; choose another file"
        )
    if result:
        _check_not_owned(path, option)
    if path.exists() and not overwrite:
        raise OutputFolderError(f"{option} {path}: already exists; pass --overwrite to replace it")


def _check_not_owned(path: Path, option: str) -> None:
    """Refuse a file inside a leanmae run, study or model folder, or beside another command's results."""
    enclosing = _enclosing_leanmae_folder(path.parent)
    if enclosing:
        raise OutputFolderError(
            f"{option} {path}: inside the leanmae {enclosing[1]} folder {enclosing[0]} "
            f"({MARKERS[enclosing[1]]}), whose files belong to the command that wrote it; write it to "
            "another folder"
        )
    results = next((name for name in RESULT_MARKERS if (path.parent / name).is_file()), None)
    if results:
        raise OutputFolderError(
            f"{option} {path}: {path.parent} holds the results of another leanmae command ({results}); "
            "write it to another folder"
        )


def write_run_info(out: Path, command: str, config: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """Write (or update) run.json; earlier fields are kept, so the end of a run can add results."""
    path = Path(out) / RUN_FILE
    info = run_info(out)
    info.update({"command": command, "config": config, "versions": versions(), **fields})
    info.setdefault("started", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    write_json(path, info)
    return info
