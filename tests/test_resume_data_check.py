"""``--resume`` checks the data: a run records hashes of its images, split and label draw when it
starts, and a resume on changed data stops with a one-line error naming what changed, before training.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import leanmae.data.labelled as labelled_module
from helpers import tiny_finetune, tiny_pretrain, write_images
from leanmae.cli import main
from leanmae.data.synthetic import WBC_CLASSES, make_synthetic_wbc
from leanmae.errors import DataError

LABELS = list(WBC_CLASSES)
QUIET = ["--preset", "test", "--device", "cpu", "--no-progress"]


def _history_epochs(run: Path) -> int:
    with open(run / "history.csv") as f:
        return len(list(csv.DictReader(f)))


# --------------------------------------------------------------------------- pretraining


@pytest.fixture
def mae_run(tmp_path: Path) -> tuple[Path, Path]:
    data = tmp_path / "pool"
    write_images(data, 12, 48)
    out = tmp_path / "mae"
    tiny_pretrain(data, out, epochs=1)
    return data, out


def test_a_pretraining_run_records_the_hash_of_its_images_and_validation_files(
    mae_run: tuple[Path, Path],
) -> None:
    info = json.loads((mae_run[1] / "run.json").read_text())
    assert info["data_check"]["images"]["count"] == 12
    assert len(info["data_check"]["images"]["hash"]) == 64
    assert info["data_check"]["validation files"]["count"] == 1


def test_resuming_a_pretraining_run_after_an_image_was_added_is_refused_before_training(
    mae_run: tuple[Path, Path],
) -> None:
    data, out = mae_run
    write_images(data / "more", 1, 48, seed=9)
    with pytest.raises(DataError, match=r"the training images \(12 then, 13 now\) changed"):
        tiny_pretrain(data, out, epochs=2, resume=True)
    assert _history_epochs(out) == 1
    assert json.loads((out / "run.json").read_text())["status"] == "finished"  # still the run it was


def test_resuming_a_pretraining_run_after_an_image_changed_returns_2_on_one_line(
    mae_run: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    data, out = mae_run
    first = sorted(data.glob("*.png"))[0]
    Image.fromarray(np.zeros((48, 48, 3), np.uint8)).save(first)
    capsys.readouterr()
    code = main(["pretrain", "--data", str(data), "--out", str(out), "--epochs", "2", "--resume", *QUIET])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "--resume refused" in err and "the training images" in err
    assert _history_epochs(out) == 1


def test_resuming_a_pretraining_run_on_the_same_data_continues(mae_run: tuple[Path, Path]) -> None:
    data, out = mae_run
    assert tiny_pretrain(data, out, epochs=2, resume=True)["epochs"] == 2


# --------------------------------------------------------------------------- fine-tuning


@pytest.fixture
def classifier_run(tmp_path: Path) -> tuple[Path, Path]:
    """A one-epoch run on a hand-written ``path,label,split`` manifest (no sha256 column)."""
    data = make_synthetic_wbc(tmp_path / "cells", n_per_class=6, size=40)
    rows = []
    for label in LABELS:
        files = sorted((data / label).glob("*.png"))
        splits = ["val", "test"] + ["train"] * (len(files) - 2)
        rows += [(f.relative_to(data).as_posix(), label, s) for f, s in zip(files, splits, strict=False)]
    split = data / "split.csv"
    _write_manifest(split, rows)
    out = tmp_path / "clf"
    tiny_finetune(split, out, epochs=1)
    return split, out


def _write_manifest(path: Path, rows: list[tuple[str, str, str]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "split"])
        writer.writerows(rows)


def _rows(path: Path) -> list[tuple[str, str, str]]:
    with open(path, newline="") as f:
        return [(r["path"], r["label"], r["split"]) for r in csv.DictReader(f)]


def test_a_finetuning_run_records_the_hash_of_its_images_split_and_label_draw(
    classifier_run: tuple[Path, Path],
) -> None:
    check = json.loads((classifier_run[1] / "run.json").read_text())["data_check"]
    assert {k: v["count"] for k, v in check.items()} == {"images": 30, "split": 30, "label draw": 25}


def test_resuming_a_finetuning_run_after_the_split_changed_is_refused_before_decoding(
    classifier_run: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    split, out = classifier_run
    rows = _rows(split)
    val, train = (
        rows.index(next(r for r in rows if r[2] == "val")),
        rows.index(next(r for r in rows if r[2] == "train")),
    )
    rows[val], rows[train] = (rows[val][0], rows[val][1], "train"), (rows[train][0], rows[train][1], "val")
    _write_manifest(split, rows)

    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("decoded images before refusing the resume")

    monkeypatch.setattr(labelled_module, "build_cache_for", no_decoding)
    with pytest.raises(DataError, match=r"--resume refused: the split .* changed") as caught:
        tiny_finetune(split, out, epochs=2, resume=True)
    assert "the training images" not in str(caught.value)
    assert _history_epochs(out) == 1


def test_resuming_a_finetuning_run_after_an_image_changed_is_refused(
    classifier_run: tuple[Path, Path],
) -> None:
    split, out = classifier_run
    first = split.parent / _rows(split)[0][0]
    Image.fromarray(np.full((40, 40, 3), 200, np.uint8)).save(
        first
    )  # no sha256 column: only the record can tell
    with pytest.raises(DataError, match=r"the training images \(30 then, 30 now\) changed"):
        tiny_finetune(split, out, epochs=2, resume=True)


def test_resuming_a_finetuning_run_whose_label_draw_changed_is_refused(
    classifier_run: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    split, out = classifier_run
    draw = labelled_module.label_fraction

    def another_draw(items, fraction, seed, split="train"):  # as a changed drawing rule would
        return draw(items, fraction, seed, split)[1:]

    monkeypatch.setattr(labelled_module, "label_fraction", another_draw)
    with pytest.raises(
        DataError, match=r"the images drawn for this label fraction and seed \(25 then, 23 now\)"
    ):
        tiny_finetune(split, out, epochs=2, resume=True)


def test_resuming_a_finetuning_run_on_the_same_data_continues(classifier_run: tuple[Path, Path]) -> None:
    split, out = classifier_run
    tiny_finetune(split, out, epochs=2, resume=True)
    assert _history_epochs(out) == 2


def test_a_finetuning_resume_refusal_returns_2_on_one_line(
    classifier_run: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    split, out = classifier_run
    _write_manifest(split, _rows(split)[:-1])
    capsys.readouterr()
    code = main(["finetune", "--split", str(split), "--out", str(out), "--epochs", "2", "--resume", *QUIET])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "the training images (30 then, 29 now)" in err and "the split" in err
