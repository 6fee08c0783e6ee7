"""Plain helpers the tests import (``from helpers import ...``): image writers, tiny runs, weight checks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

# --------------------------------------------------------------------------- images


def smooth_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """An RGB uint8 image with low-frequency structure (blobs on a gradient): learnable, unlike white
    noise."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    image = np.zeros((height, width, 3))
    image += rng.uniform(0.3, 0.7, 3) + 0.3 * (xx / width)[..., None] * rng.uniform(-1, 1, 3)
    for _ in range(rng.integers(2, 5)):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        radius = rng.uniform(0.1, 0.3) * min(height, width)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * radius**2))
        image += blob[..., None] * rng.uniform(-0.5, 0.5, 3)
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)


def write_images(
    folder: Path, n: int, size: int | tuple[int, int] = 48, seed: int = 0, suffix: str = ".png"
) -> list[Path]:
    """Write ``n`` smooth RGB images (``size`` or (height, width)) into ``folder``; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    height, width = (size, size) if isinstance(size, int) else size
    paths = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        path = folder / f"img_{i:04d}{suffix}"
        Image.fromarray(smooth_image(rng, height, width)).save(path)
        paths.append(path)
    return paths


# --------------------------------------------------------------------------- real data


def copy_subset(source: Path, dest: Path, classes: list[str], per_class: int) -> Path:
    """Copy the first ``per_class`` images of each class of ``source`` into ``dest/<class>/`` (never into the
    repo)."""
    for name in classes:
        files = sorted((source / name).glob("*.jpg"))[:per_class]
        if len(files) < per_class:
            pytest.skip(f"real data incomplete: {source / name} holds {len(files)} images, need {per_class}")
        (dest / name).mkdir(parents=True, exist_ok=True)
        for f in files:
            shutil.copy(f, dest / name / f.name)
    return dest


# --------------------------------------------------------------------------- runs


def tiny_pretrain(data: Any, out: Path, *, sets: list[str] = (), **kwargs: Any) -> dict[str, Any]:
    """``leanmae.pretrain`` with the ``test`` preset on the CPU, quietly."""
    from leanmae import pretrain

    options: dict[str, Any] = {"preset": "test", "device": "cpu", "progress": False}
    options.update(kwargs)
    return pretrain(data=str(data) if isinstance(data, Path) else data, out=out, set=list(sets), **options)


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``model.safetensors`` file (or of the one inside a folder)."""
    path = Path(path)
    return load_file(path / "model.safetensors" if path.is_dir() else path)


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    """Bit-for-bit equal state dicts, naming the first tensor that differs."""
    assert sorted(a) == sorted(b)
    differing = [k for k in sorted(a) if not torch.equal(a[k], b[k])]
    assert not differing, f"{len(differing)} of {len(a)} tensors differ, first {differing[0]}"


def tiny_finetune(split: Path, out: Path, *, sets: list[str] = (), **kwargs: Any) -> dict[str, Any]:
    """``leanmae.finetune`` with the ``test`` preset on the CPU, quietly; returns metrics.json's content."""
    from leanmae import finetune

    options: dict[str, Any] = {"preset": "test", "device": "cpu", "progress": False}
    options.update(kwargs)
    return finetune(split=split, out=out, set=list(sets), **options)


def interrupt_after_epoch(monkeypatch: pytest.MonkeyPatch, start: Any, epoch: int = 1) -> None:
    """Run ``start()`` until the checkpoint and history of ``epoch`` are written, then stop it as Ctrl-C
    would."""
    import leanmae.training.engine as engine

    original = engine.write_history

    def interrupting(path: Path, rows: list[dict[str, float]]) -> None:
        original(path, rows)
        if len(rows) == epoch:
            raise KeyboardInterrupt

    monkeypatch.setattr(engine, "write_history", interrupting)
    with pytest.raises(KeyboardInterrupt):
        start()
    monkeypatch.setattr(engine, "write_history", original)


def read_csv(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV file with a header (comment lines starting with '#' skipped)."""
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(line for line in f if not line.startswith("#")))


# --------------------------------------------------------------------------- fake study folders

FAKE_CLASSES = ["a", "b"]
FAKE_FRACTIONS = {0.01: 10, 0.1: 100, 0.5: 500, 1.0: 1000}  # fraction -> training labels (per class: half)


def write_fake_run(
    study: Path,
    arm: str,
    fraction: float,
    seed: int,
    f1: float,
    collapsed: bool = False,
    labels_used: bool = True,
) -> None:
    """A finished fine-tuning run folder as the report reads it, with every score ``f1``."""
    folder = study / "runs" / f"{arm}_f{fraction:g}_s{seed}"
    folder.mkdir(parents=True)
    per_class = {
        c: {"precision": f1, "recall": 0.0 if collapsed and c == "b" else f1, "f1": f1, "support": 10}
        for c in FAKE_CLASSES
    }
    confidence = {c: {o: {"median": 0.7} for o in ("correct", "wrong")} for c in ["all", *FAKE_CLASSES]}
    test = {
        "accuracy": f1,
        "balanced_accuracy": f1,
        "macro_precision": f1,
        "macro_recall": f1,
        "macro_f1": f1,
        "per_class": per_class,
        "confidence": confidence,
    }
    n = FAKE_FRACTIONS[fraction]
    metrics = {
        "test": test,
        "fraction": fraction,
        "seed": seed,
        "train_images": n,
        "wall_seconds": 60.0,
        "selected_epoch": 1,
    }
    if labels_used:
        metrics["labels_used"] = {
            "train": {c: n // 2 for c in FAKE_CLASSES},
            "val": {c: 1 for c in FAKE_CLASSES},
            "total": n + 2,
            "val_mode": "honest",
        }
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "history.csv").write_text("epoch,train_loss,val_loss,val_accuracy\n1,1.0,1.1,0.5\n")
    (folder / "run.json").write_text(
        json.dumps(
            {
                "status": "finished",
                "device": "cpu",
                "world_size": 1,
                "started": "2026-11-26T05:05:02+0000",
                "versions": {"leanmae": "0.1.0", "torch": "2.13.0"},
            }
        )
    )
    rows = [
        "path,true_label,pred_label,confidence,p_a,p_b",
        "x.png,a,a,0.9,0.9,0.1",
        "y.png,b,a,0.6,0.6,0.4",
        "z.png,b,b,0.8,0.2,0.8",
    ]
    (folder / "predictions.csv").write_text("\n".join(rows) + "\n")
