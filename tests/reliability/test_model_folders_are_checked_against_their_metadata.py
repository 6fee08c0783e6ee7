"""A model folder is used only when its files agree with each other and hold usable numbers; what it says
about itself (the model card) shows names from the data as text; and scoring a model on the images it
was trained on is said, not silent."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from reliability_helpers import CLASSES, MEAN, STD, _test_model

import leanmae
from leanmae.cli import main
from leanmae.errors import CheckpointError
from leanmae.models.classifier import build_classifier
from leanmae.models.io import save_model
from leanmae.models.mae import build_mae, encoder_kwargs

CPU = ["--device", "cpu"]


def edit_json(path: Path, **changes: Any) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.fixture
def classifier(model_folders: dict[str, Path], tmp_path: Path) -> Path:
    return Path(shutil.copytree(model_folders["classifier"], tmp_path / "classifier"))


# file, changed keys, the key the error names
BAD_METADATA = {
    "image_std of zeros": ("preprocessor_config.json", {"image_std": [0, 0, 0]}, "image_std"),
    "image_std not finite": ("preprocessor_config.json", {"image_std": [float("nan")] * 3}, "image_std"),
    "image_mean of one channel": ("preprocessor_config.json", {"image_mean": [0.5]}, "image_mean"),
    "negative temperature": ("leanmae.json", {"temperature": -1}, "temperature"),
    "zero temperature": ("leanmae.json", {"temperature": 0}, "temperature"),
    "infinite temperature": ("leanmae.json", {"temperature": float("inf")}, "temperature"),
    "refer threshold not finite": ("leanmae.json", {"refer_threshold": float("nan")}, "refer_threshold"),
    "energy threshold not a number": ("leanmae.json", {"energy_threshold": "high"}, "energy_threshold"),
    "negative cache size": ("leanmae.json", {"cache_size": -5}, "cache_size"),
    "labels in another order": ("leanmae.json", {"labels": CLASSES[::-1]}, "labels"),
    "a label more": ("leanmae.json", {"labels": [*CLASSES, "monocyte"]}, "labels"),
    "id2label renamed": ("config.json", {"id2label": {"0": CLASSES[0], "1": "lymphocyte"}}, "id2label"),
}


@pytest.mark.parametrize("case", list(BAD_METADATA))
def test_a_classifier_whose_metadata_is_unusable_or_disagrees_is_refused_naming_file_and_key(
    case: str, classifier: Path, images: Path
) -> None:
    """A std of zeros gave NaN confidences, a negative temperature inverted them, labels that disagree
    named every prediction wrongly: each predicted without a word."""
    file, changes, key = BAD_METADATA[case]
    edit_json(classifier / file, **changes)
    with pytest.raises(CheckpointError, match=rf"{re.escape(file)}.*{key}"):
        leanmae.predict(classifier, images, device="cpu", progress=False)


def test_a_classifier_folder_without_leanmae_json_is_refused_naming_it(
    classifier: Path, images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without leanmae.json a classifier predicted without its stain normalisation, calibration or refer
    threshold."""
    (classifier / "leanmae.json").unlink()
    out = tmp_path / "p.csv"
    assert main(["predict", str(classifier), str(images), "--out", str(out), *CPU]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "leanmae.json" in err and "missing" in err, err
    assert not out.exists()


@pytest.mark.parametrize("command", ["evaluate", "export", "adapt", "reconstruct"])
def test_every_command_that_reads_a_model_checks_its_metadata(
    command: str,
    model_folders: dict[str, Path],
    cells: dict[str, Any],
    images: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    kind = "mae" if command == "reconstruct" else "classifier"
    model = Path(shutil.copytree(model_folders[kind], tmp_path / "model"))
    edit_json(model / "preprocessor_config.json", image_std=[0, 0, 0])
    out = tmp_path / "out"
    args = {
        "evaluate": ["evaluate", str(model), "--split", str(cells["split"]), "--out", str(out), *CPU],
        "export": ["export", str(model), "--onnx", str(out)],
        "adapt": ["adapt", str(model), str(images), "--out", str(out), "--steps", "1", *CPU],
        "reconstruct": ["reconstruct", str(model), str(images), "--out", str(out), *CPU],
    }[command]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "preprocessor_config.json" in err and "image_std" in err, err
    assert not out.exists()


def test_hub_encoders_without_leanmae_json_still_initialise_fine_tuning(tmp_path: Path) -> None:
    """``finetune --init hf:FOLDER`` takes a Hub ViT or MAE as it is: only its encoder is used."""
    from transformers import ViTConfig, ViTModel

    model = _test_model()
    config = ViTConfig(**encoder_kwargs(model))
    ViTModel(config, add_pooling_layer=False).save_pretrained(tmp_path / "vit")
    build_mae(model).save_pretrained(tmp_path / "mae")
    for name in ("vit", "mae"):
        assert not (tmp_path / name / "leanmae.json").exists()
        build_classifier(model, CLASSES, init=tmp_path / name)


# =========================================================================== the model card


EVIL_LABELS = ["<img src=x onerror=alert(1)>", "a|b"]


def test_names_from_the_data_are_escaped_in_the_model_card(tmp_path: Path) -> None:
    """A class named ``<img src=x onerror=...>`` went into README.md as raw HTML, and ``a|b`` split its
    per-class table."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(
        json.dumps({"config": {"fraction": 1.0, "split": "<i>split.csv", "init": "<u>mae"}})
    )
    scores = {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    test = {
        **{k: 0.5 for k in ("accuracy", "balanced_accuracy", "macro_precision", "macro_recall", "macro_f1")},
        "images": 4,
        "per_class": dict.fromkeys(EVIL_LABELS, scores),
    }
    used = {"train": dict.fromkeys(EVIL_LABELS, 3), "total": 8}
    (run / "metrics.json").write_text(json.dumps({"test": test, "labels_used": used}))
    torch.manual_seed(0)
    folder = save_model(
        build_classifier(_test_model(), EVIL_LABELS),
        run / "model",
        MEAN,
        STD,
        {"kind": "classifier", "labels": EVIL_LABELS},
    )
    card = (folder / "README.md").read_text()
    assert "<img" not in card and "<i>" not in card and "<u>" not in card
    assert "&lt;img src=x onerror=alert(1)&gt;" in card, "the class is shown, as text"
    rows = [line for line in card.splitlines() if line.endswith(" | 2 |")]  # the per-class table
    assert len(rows) == 2
    cell_borders = r"(?<!\\)(?:\\\\)*\|"
    assert all(len(re.findall(cell_borders, row)) == 6 for row in rows), rows


# =========================================================================== training images scored


def _copies_of(items: list[Any], source: Path, dest: Path, prefix: str) -> list[str]:
    """Copy the images of ``items`` under other names; their manifest rows, all in the test split."""
    rows = []
    for it in items:
        target = dest / it.label / f"{prefix}-{Path(it.relpath).name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source / it.relpath, target)
        rows.append(f"{it.label}/{target.name},{it.label},test\n")
    return rows


def test_evaluating_a_model_on_images_it_was_trained_on_warns_and_records_it(
    reference: Path, cells: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``evaluate MODEL --split OTHER.csv`` scored the model on its own training images without a word;
    renamed copies are found by their content."""
    data = tmp_path / "other"
    seen = [it for it in cells["items"] if it.split in ("train", "val")]
    unseen = [it for it in cells["items"] if it.split == "test"]
    rows = _copies_of(seen, cells["data"], data, "copy") + _copies_of(unseen, cells["data"], data, "new")
    manifest = data / "other.csv"
    manifest.write_text("path,label,split\n" + "".join(rows))
    out = tmp_path / "evaluated"
    assert main(["evaluate", str(reference), "--split", str(manifest), "--out", str(out), *CPU]) == 0
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning:")]
    train = sum(it.split == "train" for it in seen)
    assert len(warnings) == 1, warnings
    assert f"{len(seen)} of {len(rows)} images" in warnings[0] and str(cells["split"]) in warnings[0]
    recorded = json.loads((out / "metrics.json").read_text())["seen_in_training"]
    assert recorded == {"train": train, "val": len(seen) - train, "split": str(cells["split"])}


def test_evaluating_a_model_on_its_own_test_split_gives_no_training_images_warning(
    reference: Path, cells: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "evaluated"
    assert main(["evaluate", str(reference), "--split", str(cells["split"]), "--out", str(out), *CPU]) == 0
    assert "trained" not in capsys.readouterr().out
    assert json.loads((out / "metrics.json").read_text())["seen_in_training"] == {
        "train": 0,
        "val": 0,
        "split": str(cells["split"]),
    }
