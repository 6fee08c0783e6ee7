"""Resumable training checkpoints, in safetensors and JSON only, written atomically (leanmae.files).

A checkpoint is a folder ``checkpoints/epoch-NNNN`` that appears only by rename once complete;
resuming takes the newest such folder. Optimizer state goes into safetensors too, so resuming
never unpickles anything.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save, save_file

from leanmae.errors import CheckpointError
from leanmae.files import atomic_dir, write_atomic


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state_dict into tensors (for safetensors) and plain values (for JSON)."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, Any] = {"param_groups": state["param_groups"], "state": {}}
    for pid, entries in state["state"].items():
        for name, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"{pid}.{name}"] = value.detach().cpu().contiguous()
            else:
                plain["state"].setdefault(str(pid), {})[name] = value
    return tensors, plain


def _restore_optimizer(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], plain: dict[str, Any]
) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    for pid, entries in plain["state"].items():
        state.setdefault(int(pid), {}).update(entries)
    optimizer.load_state_dict({"state": state, "param_groups": plain["param_groups"]})


def model_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


CHECKPOINT_NAME = re.compile(r"^epoch-(\d{4,})$")


def save_checkpoint(
    folder: Path,
    epoch: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    keep: int = 1,
) -> Path:
    """Write ``folder/epoch-NNNN`` atomically, then drop older checkpoints beyond ``keep``."""
    target = Path(folder) / f"epoch-{epoch:04d}"
    with atomic_dir(target) as tmp:
        save_file(model_tensors(model), tmp / "model.safetensors")
        tensors, plain = _optimizer_tensors(optimizer)
        save_file(tensors, tmp / "optimizer.safetensors")
        (tmp / "optimizer.json").write_text(json.dumps(plain))
        (tmp / "trainer_state.json").write_text(json.dumps({**state, "epoch": epoch}, default=str))
    for old in list_checkpoints(folder)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def list_checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary folders of a killed write are ignored)."""
    if not Path(folder).is_dir():
        return []
    found = [p for p in Path(folder).iterdir() if p.is_dir() and CHECKPOINT_NAME.match(p.name)]
    return sorted(found, key=lambda p: int(CHECKPOINT_NAME.match(p.name).group(1)))  # type: ignore[union-attr]


def load_checkpoint(
    path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, map_location: torch.device
) -> dict[str, Any]:
    """Restore model and optimizer from one checkpoint folder; returns its trainer state."""
    weights = _read(path / "model.safetensors", map_location)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: checkpoint does not fit this model (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    try:
        plain, state = (
            json.loads((path / "optimizer.json").read_text()),
            json.loads((path / "trainer_state.json").read_text()),
        )
    except (OSError, ValueError) as err:
        raise CheckpointError(
            f"{path}: checkpoint state is unreadable ({err}); delete this folder to resume from the "
            "one before"
        ) from err
    _restore_optimizer(optimizer, _read(path / "optimizer.safetensors", map_location), plain)
    return state


def _read(file: Path, map_location: torch.device) -> dict[str, torch.Tensor]:
    """Tensors of one safetensors file; a damaged file is an error naming it, never a traceback."""
    try:
        return load_file(file, device=str(map_location))
    except (OSError, SafetensorError) as err:
        raise CheckpointError(
            f"{file}: unreadable checkpoint file ({err}); delete its folder to resume from the one before"
        ) from err


def save_weights(module: torch.nn.Module, path: Path | str) -> None:
    """One module's weights as safetensors, replaced atomically."""
    write_atomic(path, save(model_tensors(module)))
