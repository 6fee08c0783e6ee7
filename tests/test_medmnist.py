"""MedMNIST ``.npz`` files as data: a small file in the official layout, made here (no download)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import leanmae
from helpers import read_csv, smooth_image, tiny_finetune, tiny_pretrain
from leanmae.data.medmnist import CLASS_NAMES, WBC_TYPES, unpack
from leanmae.data.pool import collect
from leanmae.data.split import read_manifest
from leanmae.errors import DataError

PER_SPLIT = {"train": 6, "val": 3, "test": 3}  # images per class


def write_medmnist(path: Path, classes: int = 8, size: int = 28, gray: bool = False) -> Path:
    """A BloodMNIST-shaped file: uint8 images (N, H, W, 3) and labels (N, 1) per official split."""
    arrays = {}
    for s, (split, n) in enumerate(PER_SPLIT.items()):
        images = [
            smooth_image(np.random.default_rng([s, c, i]), size, size)
            for c in range(classes)
            for i in range(n)
        ]
        stacked = np.stack(images)
        arrays[f"{split}_images"] = stacked[..., 0] if gray else stacked
        arrays[f"{split}_labels"] = np.repeat(np.arange(classes), n).reshape(-1, 1).astype(np.uint8)
    np.savez(path, **arrays)
    return path


@pytest.fixture
def blood(tmp_path: Path) -> Path:
    return write_medmnist(tmp_path / "bloodmnist.npz")


def test_split_keeps_the_official_train_val_test_with_bloodmnist_class_names(
    blood: Path, tmp_path: Path
) -> None:
    table = leanmae.split(blood, out=tmp_path / "split.csv")
    assert {split: sum(counts.values()) for split, counts in table.items()} == {
        s: 8 * n for s, n in PER_SPLIT.items()
    }
    assert sorted(table["train"]) == sorted(CLASS_NAMES["bloodmnist"])
    root, items = read_manifest(tmp_path / "split.csv")
    assert all(
        it.relpath.startswith(f"{it.split}/") for it in items
    )  # every image stays in its official split


def test_split_selects_the_five_white_cell_types(blood: Path, tmp_path: Path) -> None:
    table = leanmae.split(blood, classes=",".join(WBC_TYPES), out=tmp_path / "split.csv")
    assert sorted(table["test"]) == WBC_TYPES and sum(table["test"].values()) == 5 * PER_SPLIT["test"]


def test_unpacked_pixels_are_the_files_pixels(blood: Path) -> None:
    from leanmae.data.decode import decode_rgb

    root = unpack(blood)
    with np.load(blood) as data:
        expected = data["val_images"][PER_SPLIT["val"]]  # the first eosinophil (label 1) of val
    assert np.array_equal(
        decode_rgb(root / "val" / "eosinophil" / f"val_{PER_SPLIT['val']:06d}.png"), expected
    )


def test_unknown_class_and_wrong_layout_name_the_problem(blood: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="'monocite'.*monocyte"):
        leanmae.split(blood, classes="basophil,monocite", out=tmp_path / "s.csv")
    np.savez(tmp_path / "other.npz", images=np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(DataError, match="MedMNIST layout.*train_images"):
        leanmae.split(tmp_path / "other.npz", out=tmp_path / "s.csv")


def test_grayscale_files_of_unknown_sets_get_numbered_classes(tmp_path: Path) -> None:
    path = write_medmnist(tmp_path / "pneumoniamnist.npz", classes=2, gray=True)
    table = leanmae.split(path, out=tmp_path / "s.csv")
    assert sorted(table["train"]) == ["class_0", "class_1"]


def test_pretraining_pool_is_the_train_split_only_and_takes_a_class_subset(blood: Path) -> None:
    records = collect([f"{blood}:platelet,erythroblast"])
    assert len(records) == 2 * PER_SPLIT["train"]
    assert all(
        r.path.parent.parent.name == "train" and r.path.parent.name in ("platelet", "erythroblast")
        for r in records
    )


@pytest.mark.slow
def test_pretrain_and_finetune_run_on_a_medmnist_file(blood: Path, tmp_path: Path) -> None:
    tiny_pretrain(str(blood), tmp_path / "mae", epochs=1)
    images = json.loads((tmp_path / "mae" / "run.json").read_text())["images"]
    assert images["train"] + images["val"] == 8 * PER_SPLIT["train"]
    leanmae.split(blood, classes=",".join(WBC_TYPES), out=tmp_path / "split.csv")
    metrics = tiny_finetune(
        tmp_path / "split.csv",
        tmp_path / "ft",
        init=str(tmp_path / "mae"),
        sets=["optim.epochs=1", "classifier.min_steps=2"],
    )
    assert metrics["test"]["images"] == 5 * PER_SPLIT["test"]
    assert len(read_csv(tmp_path / "ft" / "predictions.csv")) == 5 * PER_SPLIT["test"]
