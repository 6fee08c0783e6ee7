"""run.json and the output-folder rules every command follows.

run.json makes a result traceable: the resolved config, package versions, seed, device, world
size and the hash of the data manifest. The same file is what marks a folder as holding a run,
so a second command pointed at it is refused unless the user says --resume or --overwrite.
"""

from __future__ import annotations

import json
import platform
import shutil
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from leanmae.training.checkpoint import write_json

RUN_FILE = "run.json"
# Keys that may change between a run and its resumption: more epochs, another progress display.
RESUMABLE_CHANGES = ("optim.epochs", "run.progress")


class OutputFolderError(ValueError):
    """An output folder that already holds something the command would overwrite."""


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


def prepare_output(out: Path, config: dict[str, Any], resume: bool, overwrite: bool) -> bool:
    """Make ``out`` ready; returns True when an earlier run there is being resumed.

    An empty or new folder is used as is. A folder holding a run needs ``resume`` (with the same
    config, apart from more epochs) or ``overwrite``. A non-empty folder that holds no run is
    never deleted, even with ``overwrite``: it may be someone's data.
    """
    if resume and overwrite:
        raise OutputFolderError("--resume and --overwrite contradict each other; give one")
    out = Path(out)
    if not out.exists() or not any(out.iterdir()):
        out.mkdir(parents=True, exist_ok=True)
        return False
    run_file = out / RUN_FILE
    if not run_file.exists():
        raise OutputFolderError(f"{out}: folder is not empty and holds no leanmae run ({RUN_FILE}); choose a new or empty --out")
    if overwrite:
        shutil.rmtree(out)
        out.mkdir(parents=True)
        return False
    if not resume:
        raise OutputFolderError(f"{out}: already holds a run; pass --resume to continue it or --overwrite to replace it")
    saved = _flatten(json.loads(run_file.read_text()).get("config", {}))
    now = _flatten(config)
    changed = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k) and k not in RESUMABLE_CHANGES)
    if changed:
        details = "; ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in changed[:5])
        raise OutputFolderError(f"{out}: --resume with a different config ({details}); use the run's own settings or a new --out")
    return True


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
    info = json.loads(path.read_text()) if path.exists() else {}
    info.update({"command": command, "config": config, "versions": versions(), **fields})
    info.setdefault("started", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    write_json(path, info)
    return info
