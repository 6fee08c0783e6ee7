"""Fixtures shared by the reliability tests: a tiny labelled data set and its split, an image folder,
the uninterrupted fine-tuning run and study every interrupted one must reproduce, and saved model
folders. Session-scoped: built once, as when these tests were one module."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from reliability_helpers import (
    CLASSES,
    EVIL_CLASS,
    EVIL_DIR,
    MEAN,
    RUN,
    STD,
    _run_in_this_process,
    _study_kwargs,
    _test_model,
)

import leanmae
import leanmae.commands.study as study_command
from helpers import tiny_finetune, write_images
from leanmae.data.split import read_manifest
from leanmae.data.synthetic import make_synthetic_wbc
from leanmae.models.classifier import build_classifier
from leanmae.models.io import save_model
from leanmae.models.mae import build_mae


@pytest.fixture(scope="session")
def cells(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """20 synthetic 32 px cells of two classes and their split (7 train, 1 val, 2 test per class)."""
    root = tmp_path_factory.mktemp("reliability")
    data = make_synthetic_wbc(root / "cells", n_per_class=10, size=32)
    split = root / "split.csv"
    leanmae.split(data, classes=CLASSES, out=split)
    return {"root": root, "data": data, "split": split, "items": read_manifest(split)[1]}


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("images") / "images"
    write_images(folder, 16, 40)
    return folder


@pytest.fixture(scope="session")
def reference(cells: dict[str, Any]) -> Path:
    """The uninterrupted run every interrupted one must reproduce."""
    out = cells["root"] / "reference"
    tiny_finetune(cells["split"], out, **RUN)
    return out


@pytest.fixture(scope="session")
def model_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An MAE folder and a classifier folder (untrained, test preset shape) as leanmae saves them."""
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    mae = save_model(build_mae(_test_model()), root / "mae", MEAN, STD, {"kind": "mae", "cache_size": 40})
    classifier = save_model(
        build_classifier(_test_model(), CLASSES),
        root / "classifier",
        MEAN,
        STD,
        {"kind": "classifier", "labels": CLASSES, "cache_size": 40},
    )
    return {"mae": mae, "classifier": classifier}


@pytest.fixture(scope="session")
def study_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic cells under a folder named like an HTML tag, one class named like a script tag."""
    root = tmp_path_factory.mktemp("study-data")
    try:
        (root / EVIL_DIR).mkdir()
        (root / EVIL_DIR / EVIL_CLASS).mkdir()
        (root / EVIL_DIR / EVIL_CLASS).rmdir()
    except OSError:
        pytest.skip("this file system does not allow '<', '>' or '(' in names")
    cells = make_synthetic_wbc(root / EVIL_DIR / "cells", n_per_class=8, size=32)
    (cells / "eosinophil").rename(cells / EVIL_CLASS)
    first = sorted((cells / EVIL_CLASS).glob("*.png"))[0]
    first.rename(first.with_name("<script>alert(2)<.png"))
    return cells


@pytest.fixture(scope="session")
def reference_study(study_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted study (its runs in this process: the same code, deterministic, only faster to
    start)."""
    out = tmp_path_factory.mktemp("reference-study") / "study"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(study_command, "_launch_local", _run_in_this_process)
        leanmae.study(out=out, jobs=1, **_study_kwargs(study_data))
    return out
