"""Fine-tuning a ViT classifier (from scratch or from an MAE encoder) and using it afterwards.

Four layers, each read as a specification:

* the classifier model: MAE weights land in it unchanged, shape mismatches and pickle checkpoints
  are refused, position embeddings follow the image size, CLS / mean pooling, drop path, layer decay;
* the metrics: what metrics.json reports, checked against scikit-learn on hand-made predictions;
* ``leanmae.finetune`` end to end on synthetic cells with the tiny ``test`` preset: outputs, model
  selection on validation only, label fractions, linear probe, exact resumption, and
  ``leanmae.evaluate`` / ``leanmae.predict`` on the result;
* a short run on real PBC images (skipped without the shared data) and the command line.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pickle
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
)
from transformers import ViTForImageClassification, ViTMAEForPreTraining, ViTModel

import leanmae
from helpers import (
    assert_same_weights,
    copy_subset,
    interrupt_after_epoch,
    load_weights,
    read_csv,
    tiny_finetune,
    tiny_pretrain,
)
from leanmae.cli import main
from leanmae.config import FinetuneConfig, ModelConfig, resolve
from leanmae.data.split import label_fraction, read_manifest
from leanmae.data.synthetic import WBC_CLASSES, make_synthetic_wbc
from leanmae.errors import BadImageError, CheckpointError, ConfigError, DataError, OutputFolderError
from leanmae.evaluation.metrics import classification_report
from leanmae.models.classifier import (
    add_drop_path,
    build_classifier,
    layer_decay_scale,
    load_classifier,
    vit_config,
)
from leanmae.models.io import save_model
from leanmae.models.mae import build_mae

LABELS = list(WBC_CLASSES)  # alphabetical: the classifier's label order
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def _test_model() -> ModelConfig:
    """The ``test`` preset's encoder (32 px, patch 8, width 32, 2 blocks, 2 heads)."""
    return resolve(FinetuneConfig, "finetune", "test", None, {}).model


def _encoder(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in weights.items() if k.startswith("vit.")}


def _mae_weights(folder: Path) -> dict[str, torch.Tensor]:
    """An MAE folder's tensors as the model holds them (transformers may store other names in the file)."""
    return ViTMAEForPreTraining.from_pretrained(folder, use_safetensors=True).state_dict()


def _classifier_weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_classifier(folder).state_dict()


# =========================================================================== the classifier model


@pytest.fixture(scope="module")
def mae_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained MAE of the test preset's shape, saved as leanmae saves one (safetensors +
    preprocessing)."""
    torch.manual_seed(1)
    folder = tmp_path_factory.mktemp("mae") / "model"
    save_model(build_mae(_test_model()), folder, MEAN, STD, {"kind": "mae", "cache_size": 40})
    return folder


def _saved_mae(folder: Path, **shape: Any) -> Path:
    save_model(build_mae(dataclasses.replace(_test_model(), **shape)), folder, MEAN, STD, {"kind": "mae"})
    return folder


def test_the_mae_encoder_weights_land_in_the_classifier_unchanged(mae_folder: Path) -> None:
    mae = _encoder(_mae_weights(mae_folder))
    classifier = build_classifier(_test_model(), LABELS, "cls", mae_folder).state_dict()
    own = _encoder(classifier)
    assert set(own) <= set(mae), "every encoder tensor of the classifier comes from the MAE"
    for key, value in own.items():
        assert torch.equal(value, mae[key]), f"{key} differs from the MAE's"
    assert classifier["classifier.weight"].shape == (len(LABELS), _test_model().hidden_size), (
        "only the head is new"
    )


def test_a_transformers_vit_folder_is_also_an_init(tmp_path: Path) -> None:
    torch.manual_seed(2)
    vit = ViTModel(vit_config(_test_model(), LABELS, "cls"), add_pooling_layer=False)
    vit.save_pretrained(tmp_path / "vit")
    classifier = build_classifier(_test_model(), LABELS, "cls", tmp_path / "vit").state_dict()
    for key, value in vit.state_dict().items():
        assert torch.equal(classifier[f"vit.{key}"], value), key


def test_without_init_the_classifier_starts_from_random_weights(mae_folder: Path) -> None:
    torch.manual_seed(0)
    scratch = build_classifier(_test_model(), LABELS).state_dict()
    mae = _mae_weights(mae_folder)
    assert not torch.equal(scratch["vit.layers.0.mlp.fc1.weight"], mae["vit.layers.0.mlp.fc1.weight"])


@pytest.mark.parametrize(
    ("shape", "key"),
    [({"patch_size": 4}, "patch_size"), ({"hidden_size": 48}, "hidden_size"), ({"depth": 3}, "depth")],
)
def test_a_checkpoint_of_another_shape_is_refused_naming_both_values(
    tmp_path: Path, shape: dict[str, int], key: str
) -> None:
    folder = _saved_mae(tmp_path / "other", **shape)
    wanted = getattr(_test_model(), key)
    with pytest.raises(
        CheckpointError, match=rf"{key} is {shape[key]} but the preset/config asks for {wanted}"
    ):
        build_classifier(_test_model(), LABELS, "cls", folder)


def test_another_image_size_interpolates_the_position_embeddings(mae_folder: Path) -> None:
    """MAE at 32 px (4 x 4 patches), classifier at 48 px (6 x 6): 1 + 36 positions, the CLS position kept."""
    mae = _mae_weights(mae_folder)
    model = dataclasses.replace(_test_model(), image_size=48)
    classifier = build_classifier(model, LABELS, "cls", mae_folder)
    positions = classifier.state_dict()["vit.embeddings.position_embeddings"]
    assert positions.shape == (1, 1 + 6 * 6, model.hidden_size)
    assert torch.equal(positions[:, 0], mae["vit.embeddings.position_embeddings"][:, 0])
    assert torch.equal(
        classifier.state_dict()["vit.embeddings.patch_embeddings.projection.weight"],
        mae["vit.embeddings.patch_embeddings.projection.weight"],
    )
    classifier.eval()
    assert classifier(pixel_values=torch.zeros(2, 3, 48, 48)).logits.shape == (2, len(LABELS))


class _Payload:
    """Unpickling this runs os.mkdir: proof that a pickle was (or was not) loaded."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (self.path,))


def test_a_folder_with_only_a_pickle_checkpoint_is_refused_without_unpickling_it(
    mae_folder: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text((mae_folder / "config.json").read_text())
    sentinel = tmp_path / "code-ran"
    with open(folder / "pytorch_model.bin", "wb") as f:
        pickle.dump({"vit.embeddings.cls_token": _Payload(str(sentinel))}, f)
    with pytest.raises(CheckpointError, match=r"missing model\.safetensors.*pytorch_model\.bin.*pickle"):
        build_classifier(_test_model(), LABELS, "cls", folder)
    assert not sentinel.exists(), "the pickle was loaded"


def test_a_folder_that_is_neither_mae_nor_vit_is_refused(mae_folder: Path, tmp_path: Path) -> None:
    folder = tmp_path / "bert"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes((mae_folder / "model.safetensors").read_bytes())
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(CheckpointError, match="'bert' is neither an MAE"):
        build_classifier(_test_model(), LABELS, "cls", folder)


def test_a_missing_init_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        build_classifier(_test_model(), LABELS, "cls", tmp_path / "nowhere")


def test_a_finetune_refused_for_a_missing_init_leaves_no_empty_folder(
    cells: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    args = [
        "finetune",
        "--split",
        str(cells["split"]),
        "--init",
        str(tmp_path / "nowhere"),
        "--out",
        str(out),
    ]
    assert main([*args, "--preset", "test", "--device", "cpu", "--no-progress"]) == 2
    assert "nowhere" in capsys.readouterr().err and not out.exists()


def _twins() -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(3)
    cls = build_classifier(_test_model(), LABELS, "cls").eval()
    torch.manual_seed(3)
    mean = build_classifier(_test_model(), LABELS, "mean").eval()
    return cls, mean


def test_mean_and_cls_pooling_feed_the_head_different_tokens() -> None:
    """CLS pooling reads token 0; mean pooling (MAE's fine-tuning) averages the patch tokens, then a
    LayerNorm."""
    cls, mean = _twins()
    shared = {k: v for k, v in mean.state_dict().items() if not k.startswith("fc_norm.")}
    assert_same_weights(cls.state_dict(), shared)
    assert cls.fc_norm is None and isinstance(mean.fc_norm, torch.nn.LayerNorm)
    pixels = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        hidden = cls.vit(pixels).last_hidden_state
        pooled = mean.fc_norm(hidden[:, 1:].mean(dim=1))
        assert torch.allclose(cls(pixel_values=pixels).logits, cls.classifier(hidden[:, 0]), atol=1e-6)
        assert torch.allclose(mean(pixel_values=pixels).logits, mean.classifier(pooled), atol=1e-5)
        assert not torch.allclose(
            cls(pixel_values=pixels).logits, mean(pixel_values=pixels).logits, atol=1e-4
        )
        assert torch.allclose(mean.features(pixels), pooled, atol=1e-5)


def test_the_classifier_returns_logits_only_and_refuses_labels() -> None:
    """Training computes its own weighted loss, so forward has no labels argument: passing one fails
    loudly instead of returning loss=None."""
    cls, _ = _twins()
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert cls(pixel_values=pixels).loss is None
        with pytest.raises(TypeError, match="labels"):
            cls(pixel_values=pixels, labels=torch.tensor([0, 1]))


def test_pooling_is_saved_with_the_model(tmp_path: Path) -> None:
    _, mean = _twins()
    save_model(mean, tmp_path / "model", MEAN, STD, {})
    assert load_classifier(tmp_path / "model").config.pooling == "mean"


def test_drop_path_acts_in_training_only() -> None:
    torch.manual_seed(4)
    model = build_classifier(_test_model(), LABELS, "cls")
    pixels = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.eval()
        before = model(pixel_values=pixels).logits
        add_drop_path(model, 0.5)
        assert torch.equal(model(pixel_values=pixels).logits, before), (
            "evaluation is unaffected and deterministic"
        )
        assert torch.equal(model(pixel_values=pixels).logits, before)
        model.train()
        first, second = model(pixel_values=pixels).logits, model(pixel_values=pixels).logits
    assert not torch.allclose(first, before, atol=1e-5), "training drops branches"
    assert not torch.allclose(first, second, atol=1e-5), "a new draw every forward pass"


def test_drop_path_zero_changes_nothing_in_training() -> None:
    torch.manual_seed(5)
    model = build_classifier(_test_model(), LABELS, "cls")
    pixels = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    add_drop_path(model, 0.0)
    with torch.no_grad():
        model.train()
        train = model(pixel_values=pixels).logits
        model.eval()
        assert torch.equal(model(pixel_values=pixels).logits, train)


def test_layer_decay_gives_the_head_the_full_lr_and_the_embeddings_decay_to_the_depth_plus_one() -> None:
    model = build_classifier(dataclasses.replace(_test_model(), depth=3), LABELS)
    scale = layer_decay_scale(model, 0.5)
    assert scale("classifier.weight") == scale("classifier.bias") == 1.0
    assert scale("vit.layernorm.weight") == 1.0, "the final norm sits with the head"
    for name in (
        "vit.embeddings.cls_token",
        "vit.embeddings.position_embeddings",
        "vit.embeddings.patch_embeddings.projection.weight",
    ):
        assert scale(name) == pytest.approx(0.5**4), name
    assert [scale(f"vit.layers.{i}.mlp.fc1.weight") for i in range(3)] == pytest.approx([0.5**3, 0.5**2, 0.5])
    for name, _ in model.named_parameters():
        assert 0 < scale(name) <= 1, name


# =========================================================================== metrics

# Ten hand-made predictions over three classes (rows: true class, predicted class, confidence).
HAND = [(0, 0, 0.9), (0, 0, 0.8), (0, 0, 0.6), (0, 1, 0.5),
        (1, 1, 0.7), (1, 0, 0.4), (1, 2, 0.6),
        (2, 2, 0.95), (2, 2, 0.85), (2, 2, 0.75)]  # fmt: skip
HAND_LABELS = ["a", "b", "c"]


def _hand() -> tuple[np.ndarray, np.ndarray]:
    y = np.array([t for t, _, _ in HAND])
    probs = np.zeros((len(HAND), 3))
    for i, (_, p, conf) in enumerate(HAND):
        probs[i] = (1 - conf) / 2
        probs[i, p] = conf
    return y, probs


def test_the_report_agrees_with_scikit_learn() -> None:
    y, probs = _hand()
    pred = probs.argmax(1)
    assert pred.tolist() == [p for _, p, _ in HAND]
    report = classification_report(y, probs, HAND_LABELS)
    precision, recall, f1, support = precision_recall_fscore_support(
        y, pred, labels=[0, 1, 2], zero_division=0
    )
    macro = precision_recall_fscore_support(y, pred, labels=[0, 1, 2], average="macro", zero_division=0)
    assert report["images"] == 10
    assert report["accuracy"] == pytest.approx(accuracy_score(y, pred)) == pytest.approx(0.7)
    assert report["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert (report["macro_precision"], report["macro_recall"], report["macro_f1"]) == pytest.approx(macro[:3])
    for i, label in enumerate(HAND_LABELS):
        row = report["per_class"][label]
        assert (row["precision"], row["recall"], row["f1"]) == pytest.approx(
            (precision[i], recall[i], f1[i])
        ), label
        assert row["support"] == support[i]
    assert [report["per_class"][k]["support"] for k in HAND_LABELS] == [4, 3, 3]
    assert report["confusion_matrix"] == {
        "labels": HAND_LABELS,
        "rows_true_cols_predicted": confusion_matrix(y, pred).tolist(),
    }
    assert report["confusion_matrix"]["rows_true_cols_predicted"] == [[3, 1, 0], [1, 1, 1], [0, 0, 3]]


def test_a_class_never_predicted_scores_zero_not_nan() -> None:
    y = np.array([0, 0, 1, 1, 2])
    probs = np.eye(3)[[0, 0, 1, 1, 1]]  # class c never predicted
    report = classification_report(y, probs, HAND_LABELS)
    assert report["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert report["macro_precision"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    json.dumps(report, allow_nan=False)


def test_a_set_lacking_a_class_the_model_predicts_is_scored_without_a_warning() -> None:
    """An external lab's folder holds some classes only; its balanced accuracy is the mean recall over
    those, and predicting an absent class is the expected case, not one to warn about."""
    y = np.array([0, 0, 1, 1])
    probs = np.eye(3)[[0, 2, 1, 1]]  # one image predicted as class c, which the set lacks
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = classification_report(y, probs, HAND_LABELS, scored=[0, 1])
    assert report["balanced_accuracy"] == pytest.approx((1 / 2 + 1) / 2)


def test_confidence_is_summarised_per_true_class_for_correct_and_wrong_predictions() -> None:
    y, probs = _hand()
    confidence = classification_report(y, probs, HAND_LABELS)["confidence"]
    assert set(confidence) == {"all", *HAND_LABELS}
    a_right = confidence["a"]["correct"]
    assert a_right["count"] == 3
    assert (a_right["median"], a_right["q1"], a_right["q3"], a_right["mean"]) == pytest.approx(
        (0.8, 0.7, 0.85, (0.9 + 0.8 + 0.6) / 3)
    )
    assert confidence["a"]["wrong"] == pytest.approx(
        {"count": 1, "median": 0.5, "q1": 0.5, "q3": 0.5, "mean": 0.5}
    )
    b_wrong = confidence["b"]["wrong"]
    assert (
        b_wrong["count"] == 2
        and b_wrong["median"] == pytest.approx(0.5)
        and b_wrong["mean"] == pytest.approx(0.5)
    )
    assert (b_wrong["q1"], b_wrong["q3"]) == pytest.approx((0.45, 0.55))
    everything = confidence["all"]
    assert everything["correct"]["count"] == 7 and everything["wrong"]["count"] == 3
    right = [c for t, p, c in HAND if t == p]
    assert everything["correct"]["median"] == pytest.approx(np.median(right))
    assert everything["correct"]["mean"] == pytest.approx(np.mean(right))


def test_an_empty_group_reports_count_0_and_nulls() -> None:
    y, probs = _hand()
    report = classification_report(y, probs, HAND_LABELS)
    assert report["confidence"]["c"]["wrong"] == {
        "count": 0,
        "median": None,
        "q1": None,
        "q3": None,
        "mean": None,
    }, "c is always right"
    # a class with no images at all: both groups empty
    probs4 = np.hstack([probs, np.zeros((len(probs), 1))])
    report4 = classification_report(y, probs4, HAND_LABELS + ["d"])
    for group in ("correct", "wrong"):
        assert report4["confidence"]["d"][group] == {
            "count": 0,
            "median": None,
            "q1": None,
            "q3": None,
            "mean": None,
        }
    assert '"median": null' in json.dumps(report4["confidence"]["d"])


# =========================================================================== leanmae.finetune end to end


@pytest.fixture(scope="module")
def cells(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """100 synthetic 40 px cells (20 per WBC class) and their split: 14 train, 2 val, 4 test per class."""
    root = tmp_path_factory.mktemp("cells")
    data = make_synthetic_wbc(root / "cells", n_per_class=20, size=40)
    split = root / "split.csv"
    leanmae.split(data, classes=LABELS, out=split)
    _, items = read_manifest(split)
    return {"root": root, "data": data, "split": split, "items": items}


# The configuration the scratch run, the interrupted run and the relabelled-test run share.
SCRATCH = {"epochs": 3, "seed": 0, "sets": ["classifier.drop_path=0.1", "classifier.select=val_macro_f1"]}


@pytest.fixture(scope="module")
def scratch_run(cells: dict[str, Any]) -> dict[str, Any]:
    """3 epochs from scratch on every training image (with drop path, so that resumption must replay its
    draws)."""
    out = cells["root"] / "scratch"
    metrics = tiny_finetune(cells["split"], out, **SCRATCH)
    return {"out": out, "metrics": metrics, "history": read_csv(out / "history.csv")}


@pytest.fixture(scope="module")
def mae_run(cells: dict[str, Any]) -> Path:
    """A pretraining run folder (1 epoch of the test preset on the cell images)."""
    out = cells["root"] / "mae"
    tiny_pretrain(cells["data"], out, epochs=1)
    return out


def test_a_run_writes_every_documented_output(scratch_run: dict[str, Any]) -> None:
    out: Path = scratch_run["out"]
    for name in (
        "run.json",
        "history.csv",
        "metrics.json",
        "predictions.csv",
        "model/config.json",
        "model/model.safetensors",
        "model/preprocessor_config.json",
        "training_curves.png",
        "confusion_matrix.png",
        "confidence.png",
    ):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, f"{name} missing"
    for name in ("training_curves.png", "confusion_matrix.png", "confidence.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert (out / "checkpoints" / "epoch-0003").is_dir()


def test_history_has_one_row_per_epoch_with_validation_scores(scratch_run: dict[str, Any]) -> None:
    rows = scratch_run["history"]
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    for row in rows:
        assert {"train_loss", "val_loss", "val_accuracy", "val_macro_f1", "lr", "seconds"} <= set(row)
        assert math.isfinite(float(row["train_loss"])) and float(row["train_loss"]) > 0
        assert math.isfinite(float(row["val_loss"]))
        assert 0 <= float(row["val_accuracy"]) <= 1 and 0 <= float(row["val_macro_f1"]) <= 1
        assert float(row["lr"]) > 0


def test_metrics_json_holds_the_test_and_validation_reports(scratch_run: dict[str, Any]) -> None:
    metrics = json.loads((scratch_run["out"] / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(scratch_run["metrics"])), (
        "finetune returns metrics.json's content"
    )
    assert (
        metrics["fraction"] == 1.0
        and metrics["init"] == "scratch"
        and metrics["seed"] == 0
        and metrics["linear_probe"] is False
    )
    assert metrics["train_images"] == 70
    for subset, images in (("test", 20), ("val", 10)):
        report = metrics[subset]
        assert {
            "accuracy",
            "balanced_accuracy",
            "macro_precision",
            "macro_recall",
            "macro_f1",
            "per_class",
            "confusion_matrix",
            "confidence",
        } <= set(report)
        assert report["images"] == images
        assert list(report["per_class"]) == LABELS
        assert sum(row["support"] for row in report["per_class"].values()) == images
        assert np.array(report["confusion_matrix"]["rows_true_cols_predicted"]).sum() == images


def test_the_model_is_selected_on_validation_macro_f1_and_never_on_test(scratch_run: dict[str, Any]) -> None:
    metrics, rows = scratch_run["metrics"], scratch_run["history"]
    assert metrics["selection"] == "val_macro_f1"
    f1 = [float(r["val_macro_f1"]) for r in rows]
    assert metrics["selected_epoch"] == 1 + int(np.argmax(f1)), (
        "the first epoch with the best validation macro-F1"
    )
    assert not [c for c in rows[0] if "test" in c], "the test split is not scored during training"
    # the saved model is that epoch's model: its validation score is the one in the history
    assert metrics["val"]["macro_f1"] == pytest.approx(f1[metrics["selected_epoch"] - 1], abs=1e-6)
    assert metrics["val"]["accuracy"] == pytest.approx(
        float(rows[metrics["selected_epoch"] - 1]["val_accuracy"]), abs=1e-6
    )


def test_the_test_labels_cannot_influence_the_trained_model(
    cells: dict[str, Any], scratch_run: dict[str, Any]
) -> None:
    """Shuffle the labels of the test images in the manifest: the same weights come out, only the test score
    moves."""
    lines = cells["split"].read_text().splitlines(keepends=True)
    test_rows = [i for i, line in enumerate(lines) if ",test," in line]
    labels = [lines[i].split(",")[1] for i in test_rows]
    rotated = labels[4:] + labels[:4]  # every test image gets another class
    assert all(a != b for a, b in zip(labels, rotated, strict=True))
    for i, label in zip(test_rows, rotated, strict=True):
        path, _, split, *rest = lines[i].split(",")
        lines[i] = ",".join([path, label, split, *rest])
    relabelled = cells["root"] / "relabelled-test.csv"
    relabelled.write_text("".join(lines))
    out = cells["root"] / "relabelled-run"
    metrics = tiny_finetune(relabelled, out, **SCRATCH)
    assert_same_weights(load_weights(out / "model"), load_weights(scratch_run["out"] / "model"))
    for name in (
        "config.json",
        "preprocessor_config.json",
        "leanmae.json",
    ):  # nothing saved with the model (calibration...) saw the test labels
        assert (out / "model" / name).read_text() == (scratch_run["out"] / "model" / name).read_text(), name
    assert metrics["selected_epoch"] == scratch_run["metrics"]["selected_epoch"]
    assert metrics["val"] == scratch_run["metrics"]["val"]
    before, after = read_csv(scratch_run["out"] / "predictions.csv"), read_csv(out / "predictions.csv")
    assert [r["predicted_label"] for r in after] == [r["predicted_label"] for r in before], (
        "the same predictions..."
    )
    assert all(a["true_label"] != b["true_label"] for a, b in zip(after, before, strict=True)), (
        "...scored against the shuffled labels"
    )


def test_predictions_csv_lists_every_test_image_with_probabilities_summing_to_1(
    cells: dict[str, Any], scratch_run: dict[str, Any]
) -> None:
    rows = read_csv(scratch_run["out"] / "predictions.csv")
    test = {it.relpath: it.label for it in cells["items"] if it.split == "test"}
    assert list(rows[0])[:4] == ["path", "true_label", "predicted_label", "confidence"]
    assert [c for c in rows[0] if c.startswith("p_")] == [f"p_{c}" for c in LABELS], (
        "one probability column per class, in label order"
    )
    assert {r["path"]: r["true_label"] for r in rows} == test
    for row in rows:
        p = np.array([float(row[f"p_{c}"]) for c in LABELS])
        assert p.sum() == pytest.approx(1.0, abs=1e-5)
        assert row["predicted_label"] == LABELS[int(p.argmax())]
        assert float(row["confidence"]) == pytest.approx(p.max(), abs=1e-6)
    accuracy = np.mean([r["predicted_label"] == r["true_label"] for r in rows])
    assert accuracy == pytest.approx(scratch_run["metrics"]["test"]["accuracy"])


def test_the_saved_model_is_a_transformers_classifier_with_the_class_names(
    scratch_run: dict[str, Any],
) -> None:
    folder = scratch_run["out"] / "model"
    model = ViTForImageClassification.from_pretrained(folder)
    assert [model.config.id2label[i] for i in range(len(LABELS))] == LABELS
    assert model.config.image_size == 32 and model.config.patch_size == 8
    processor = json.loads((folder / "preprocessor_config.json").read_text())
    assert processor["size"] == {"height": 32, "width": 32}
    assert processor["image_mean"] == pytest.approx(MEAN) and processor["image_std"] == pytest.approx(STD)
    assert_same_weights(
        _classifier_weights(folder), load_file(scratch_run["out"] / "best.safetensors")
    )  # the selected epoch's weights


def test_run_json_records_the_run(cells: dict[str, Any], scratch_run: dict[str, Any]) -> None:
    info = json.loads((scratch_run["out"] / "run.json").read_text())
    assert info["command"] == "finetune" and info["status"] == "finished" and info["preset"] == "test"
    assert info["images"] == {"train": 70, "val": 10, "test": 20}
    assert (
        info["config"]["fraction"] == 1.0
        and info["config"]["init"] == "scratch"
        and info["config"]["split"] == str(cells["split"])
    )
    assert info["test"]["accuracy"] == pytest.approx(scratch_run["metrics"]["test"]["accuracy"])
    assert info["resumed_from_epoch"] is None


def test_one_percent_of_the_labels_still_trains_every_class(cells: dict[str, Any], tmp_path: Path) -> None:
    """14 training images per class at 1 %: two per class, and every epoch takes optimizer steps (at least
    min_steps in all)."""
    chosen = label_fraction(cells["items"], 0.01, seed=0)
    assert {c: sum(it.label == c for it in chosen) for c in LABELS} == dict.fromkeys(LABELS, 2)
    metrics = tiny_finetune(
        cells["split"], tmp_path / "run", fraction=0.01, epochs=2, sets=["classifier.min_steps=12"]
    )
    assert metrics["train_images"] == 10 and metrics["fraction"] == 0.01
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["images"]["train"] == 10
    assert 1 <= info["batch_size"] <= max(1, 10 // 4), "the batch is at most a quarter of the training images"
    state = json.loads((tmp_path / "run" / "checkpoints" / "epoch-0002" / "trainer_state.json").read_text())
    assert state["step"] >= 12, f"{state['step']} optimizer steps in 2 epochs"
    for row in read_csv(tmp_path / "run" / "history.csv"):
        assert float(row["train_loss"]) > 0, "an epoch without a single training step"


def test_run_json_config_records_the_fitted_batch_and_a_resume_accepts_it(
    cells: dict[str, Any], tmp_path: Path
) -> None:
    """At 1 % (10 training images) the preset's batch of 16 is cut to a quarter of the images: the
    config in run.json is the one the run used, and resuming with the same options still matches it."""
    out = tmp_path / "run"
    tiny_finetune(cells["split"], out, fraction=0.01, epochs=1)
    info = json.loads((out / "run.json").read_text())
    assert info["batch_size"] == 2 and info["config"]["optim"]["batch_size"] == 2
    tiny_finetune(cells["split"], out, fraction=0.01, epochs=2, resume=True)
    info = json.loads((out / "run.json").read_text())
    assert info["resumed_from_epoch"] == 1 and info["config"]["optim"]["batch_size"] == 2


def test_resuming_with_a_batch_size_that_changes_the_fitted_batch_is_refused(
    cells: dict[str, Any], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    tiny_finetune(cells["split"], out, fraction=0.01, epochs=1)
    with pytest.raises(
        OutputFolderError, match=r"--resume with a different config \(optim.batch_size: 2 -> 1\)"
    ):
        tiny_finetune(cells["split"], out, fraction=0.01, epochs=2, batch_size=1, resume=True)
    assert not (out / "checkpoints" / "epoch-0002").exists()


def test_finetuning_from_an_mae_run_trains_its_encoder_with_its_normalisation(
    cells: dict[str, Any], mae_run: Path, tmp_path: Path
) -> None:
    metrics = tiny_finetune(cells["split"], tmp_path / "run", init=mae_run, epochs=2)
    assert metrics["init"] == str(mae_run)
    mae, tuned = _mae_weights(mae_run / "model"), _classifier_weights(tmp_path / "run" / "model")
    assert not torch.equal(tuned["vit.layers.0.mlp.fc1.weight"], mae["vit.layers.0.mlp.fc1.weight"]), (
        "full fine-tuning moves the encoder"
    )
    saved = json.loads((tmp_path / "run" / "model" / "preprocessor_config.json").read_text())
    pretrained = json.loads((mae_run / "model" / "preprocessor_config.json").read_text())
    assert (saved["image_mean"], saved["image_std"]) == (pretrained["image_mean"], pretrained["image_std"])


def test_the_linear_probe_trains_the_head_only(cells: dict[str, Any], mae_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "probe"
    metrics = tiny_finetune(
        cells["split"], out, init=mae_run / "model", linear_probe=True, pooling="mean", epochs=3
    )
    assert metrics["linear_probe"] is True
    mae, probe = _mae_weights(mae_run / "model"), _classifier_weights(out / "model")
    encoder = _encoder(probe)
    assert encoder, "the probe's model has an encoder"
    for key, value in encoder.items():
        assert torch.equal(value, mae[key]), f"{key} changed in a linear probe"
    assert load_classifier(out / "model").config.pooling == "mean"
    # the probe (BatchNorm + linear, folded into the head) scores on validation exactly as during training
    rows = read_csv(out / "history.csv")
    assert metrics["val"]["macro_f1"] == pytest.approx(
        float(rows[metrics["selected_epoch"] - 1]["val_macro_f1"]), abs=1e-6
    )


def test_a_run_interrupted_after_its_first_epoch_resumes_to_identical_weights(
    cells: dict[str, Any], scratch_run: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Interrupt the scratch run's configuration just after the epoch-1 checkpoint, resume it, compare."""
    out = tmp_path / "run"
    interrupt_after_epoch(monkeypatch, lambda: tiny_finetune(cells["split"], out, **SCRATCH))
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["epoch-0001"]
    assert not (out / "model").exists() and not (out / "metrics.json").exists()
    assert json.loads((out / "run.json").read_text())["status"] == "running"

    metrics = tiny_finetune(cells["split"], out, resume=True, **SCRATCH)
    assert_same_weights(load_weights(out / "model"), load_weights(scratch_run["out"] / "model"))
    assert metrics["selected_epoch"] == scratch_run["metrics"]["selected_epoch"]
    assert metrics["test"] == scratch_run["metrics"]["test"]
    history = [
        (r["epoch"], r["train_loss"], r["val_loss"], r["val_macro_f1"]) for r in read_csv(out / "history.csv")
    ]
    assert history == [
        (r["epoch"], r["train_loss"], r["val_loss"], r["val_macro_f1"]) for r in scratch_run["history"]
    ]
    assert json.loads((out / "run.json").read_text())["resumed_from_epoch"] == 1

    again = tiny_finetune(
        cells["split"], out, resume=True, **SCRATCH
    )  # resuming a finished run changes nothing
    assert again["test"] == metrics["test"]
    assert_same_weights(load_weights(out / "model"), load_weights(scratch_run["out"] / "model"))


def test_finetuning_with_prefetch_gives_the_same_weights_and_history(
    cells: dict[str, Any], scratch_run: dict[str, Any], tmp_path: Path
) -> None:
    """The scratch run prepared its batches inline (the CPU default); on the prefetch thread no number
    changes."""
    out = tmp_path / "inline"
    tiny_finetune(cells["split"], out, **{**SCRATCH, "sets": [*SCRATCH["sets"], "run.prefetch=true"]})
    assert_same_weights(load_weights(out / "model"), load_weights(scratch_run["out"] / "model"))
    history = [(r["train_loss"], r["val_loss"], r["val_macro_f1"]) for r in read_csv(out / "history.csv")]
    assert history == [(r["train_loss"], r["val_loss"], r["val_macro_f1"]) for r in scratch_run["history"]]


def test_a_file_changed_after_the_split_stops_finetuning(tmp_path: Path) -> None:
    data = make_synthetic_wbc(tmp_path / "cells", n_per_class=4, size=24)
    leanmae.split(data, classes=LABELS[:2], out=tmp_path / "split.csv")
    (data / "basophil" / "basophil_0000.png").write_bytes(
        (data / "basophil" / "basophil_0001.png").read_bytes()
    )
    with pytest.raises(DataError, match="basophil_0000.png.*content changed"):
        tiny_finetune(tmp_path / "split.csv", tmp_path / "run", epochs=1)


def test_a_pickle_only_init_folder_stops_finetuning(
    cells: dict[str, Any], mae_folder: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text((mae_folder / "config.json").read_text())
    torch.save(load_weights(mae_folder), folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pickle"):
        tiny_finetune(cells["split"], tmp_path / "run", init=folder, epochs=1)
    assert not (tmp_path / "run" / "model").exists()


# --------------------------------------------------------------------------- evaluate and predict


def test_evaluate_reproduces_the_test_metrics_of_the_run(
    cells: dict[str, Any], scratch_run: dict[str, Any], tmp_path: Path
) -> None:
    report = leanmae.evaluate(
        scratch_run["out"], cells["split"], subset="test", out=tmp_path / "eval", device="cpu"
    )
    expected = scratch_run["metrics"]["test"]
    assert report["confusion_matrix"] == expected["confusion_matrix"]
    for label in LABELS:
        assert report["per_class"][label] == pytest.approx(expected["per_class"][label]), label
    for key in ("images", "accuracy", "balanced_accuracy", "macro_precision", "macro_recall", "macro_f1"):
        assert report[key] == pytest.approx(expected[key]), key
    assert (
        report["confidence"]["all"]["correct"]["count"] == expected["confidence"]["all"]["correct"]["count"]
    )
    assert report["confidence"]["all"]["correct"]["mean"] == pytest.approx(
        expected["confidence"]["all"]["correct"]["mean"], abs=1e-5
    )
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["subset"] == "test" and saved["test"]["accuracy"] == pytest.approx(expected["accuracy"])
    assert {r["path"] for r in read_csv(tmp_path / "eval" / "predictions.csv")} == {
        r["path"] for r in read_csv(scratch_run["out"] / "predictions.csv")
    }


def test_evaluate_on_val_reproduces_the_validation_metrics(
    cells: dict[str, Any], scratch_run: dict[str, Any], tmp_path: Path
) -> None:
    report = leanmae.evaluate(
        scratch_run["out"] / "model", cells["split"], subset="val", out=tmp_path / "eval", device="cpu"
    )
    assert report["confusion_matrix"] == scratch_run["metrics"]["val"]["confusion_matrix"]
    assert report["macro_f1"] == pytest.approx(scratch_run["metrics"]["val"]["macro_f1"])


def test_evaluate_refuses_an_unknown_subset(cells: dict[str, Any], scratch_run: dict[str, Any]) -> None:
    with pytest.raises(DataError, match="'testing'"):
        leanmae.evaluate(scratch_run["out"], cells["split"], subset="testing", device="cpu")


@pytest.fixture
def new_images(cells: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    """The run's test images, named directly, plus one file that is not an image."""
    files = [cells["data"] / it.relpath for it in cells["items"] if it.split == "test"]
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"this is not a PNG file")
    return {"files": files, "bad": bad}


def test_predict_labels_new_images_as_the_run_did(
    scratch_run: dict[str, Any], new_images: dict[str, Any], tmp_path: Path
) -> None:
    out = leanmae.predict(scratch_run["out"], new_images["files"], out=tmp_path / "pred.csv", device="cpu")
    rows = read_csv(out)
    assert len(rows) == len(new_images["files"])
    assert list(rows[0])[:3] == ["path", "predicted_label", "confidence"]
    assert "error" in rows[0] and [c for c in rows[0] if c.startswith("p_")] == [f"p_{c}" for c in LABELS]
    assert all(r["error"] == "" for r in rows)
    run = {r["path"]: r for r in read_csv(scratch_run["out"] / "predictions.csv")}
    for row in rows:
        same = run["/".join(Path(row["path"]).parts[-2:])]
        assert row["predicted_label"] == same["predicted_label"], row["path"]
        assert float(row["confidence"]) == pytest.approx(float(same["confidence"]), abs=1e-4)
        assert sum(float(row[f"p_{c}"]) for c in LABELS) == pytest.approx(1.0, abs=1e-5)


def test_predict_with_skip_bad_lists_an_unreadable_file_as_an_error_row(
    scratch_run: dict[str, Any], new_images: dict[str, Any], tmp_path: Path
) -> None:
    files = [*new_images["files"][:3], new_images["bad"]]
    rows = read_csv(
        leanmae.predict(scratch_run["out"], files, out=tmp_path / "pred.csv", skip_bad=True, device="cpu")
    )
    assert [r["path"] for r in rows] == [str(f) for f in files]
    assert all(r["error"] == "" and r["predicted_label"] in LABELS for r in rows[:3])
    assert rows[3]["error"], "the unreadable file's row says why"


def test_an_error_row_carries_no_prediction(
    scratch_run: dict[str, Any], new_images: dict[str, Any], tmp_path: Path
) -> None:
    """An unreadable file has no class: its row must not show a label or probabilities made up from a blank
    image,
    or counts of predicted labels would include files that were never read."""
    rows = read_csv(
        leanmae.predict(
            scratch_run["out"],
            [new_images["files"][0], new_images["bad"]],
            out=tmp_path / "pred.csv",
            skip_bad=True,
            device="cpu",
        )
    )
    bad = rows[1]
    assert bad["error"]
    assert bad["predicted_label"] == "" and bad["confidence"] == "", (
        f"error row predicts {bad['predicted_label']!r} at {bad['confidence']}"
    )
    assert all(bad[f"p_{c}"] == "" for c in LABELS)


def test_predict_without_skip_bad_stops_at_an_unreadable_file(
    scratch_run: dict[str, Any], new_images: dict[str, Any], tmp_path: Path
) -> None:
    with pytest.raises(BadImageError, match=r"broken\.png.*--skip-bad"):
        leanmae.predict(
            scratch_run["out"],
            [new_images["files"][0], new_images["bad"]],
            out=tmp_path / "pred.csv",
            device="cpu",
        )
    assert not (tmp_path / "pred.csv").exists()


# =========================================================================== real images


def test_a_short_finetune_on_real_white_blood_cells_beats_chance(pbc_dir: Path, tmp_path: Path) -> None:
    """40 PBC images per WBC class (28 train, 4 val, 8 test), the tiny test model at 32 px: better than 1 in
    5."""
    data = copy_subset(pbc_dir, tmp_path / "pbc", LABELS, 40)
    leanmae.split(data, classes=LABELS, out=tmp_path / "split.csv")
    metrics = tiny_finetune(
        tmp_path / "split.csv",
        tmp_path / "run",
        epochs=20,
        sets=[
            "optim.base_lr=2e-2",
            "classifier.pooling=mean",
            "classifier.min_steps=400",
            "augment.crop_scale=[0.8,1.0]",
            "augment.normalize=dataset",
        ],
    )
    assert metrics["test"]["images"] == 40
    assert metrics["test"]["accuracy"] > 0.3, f"test accuracy {metrics['test']['accuracy']:.3f} (chance 0.2)"


# =========================================================================== command line


def _exit_code(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as info:
        main(argv)
    return info.value.code


def test_finetune_help_exits_0_and_lists_its_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert _exit_code(["finetune", "--help"]) == 0
    out = capsys.readouterr().out
    for option in (
        "--split",
        "--fraction",
        "--init",
        "--linear-probe",
        "--pooling",
        "--data-root",
        "--resume",
        "--overwrite",
        "--set",
    ):
        assert option in out


def test_cli_finetune_with_a_checkpoint_of_another_patch_size_returns_2(
    cells: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wrong = _saved_mae(tmp_path / "patch4", patch_size=4)
    code = main(
        [
            "finetune",
            "--split",
            str(cells["split"]),
            "--init",
            str(wrong),
            "--out",
            str(tmp_path / "run"),
            "--preset",
            "test",
            "--device",
            "cpu",
            "--no-progress",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("leanmae finetune: error: ")
    assert "patch_size is 4" in err and "asks for 8" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "model").exists()


def test_cli_finetune_then_evaluate(
    cells: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    assert (
        main(
            [
                "finetune",
                "--split",
                str(cells["split"]),
                "--fraction",
                "0.5",
                "--out",
                str(run),
                "--preset",
                "test",
                "--epochs",
                "1",
                "--device",
                "cpu",
                "--no-progress",
                "--set",
                "classifier.select=last",
            ]
        )
        == 0
    )
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["fraction"] == 0.5 and metrics["selection"] == "last" and metrics["selected_epoch"] == 1
    assert main(["evaluate", str(run), "--split", str(cells["split"]), "--device", "cpu"]) == 0
    assert json.loads((run / "evaluate-test" / "metrics.json").read_text())["test"][
        "accuracy"
    ] == pytest.approx(metrics["test"]["accuracy"])


# --------------------------------------------------------------------------- label-honest protocol


def _labels_of(items: list[Any], chosen: list[Any]) -> dict[str, int]:
    from collections import Counter

    return dict(sorted(Counter(it.label for it in chosen).items()))


def test_a_run_at_a_fraction_uses_that_share_of_the_val_labels_and_records_the_counts(tmp_path: Path) -> None:
    """Label-honest by default: selection and calibration see the run's own val draw, and metrics.json says
    how many."""
    from leanmae.data.split import label_fraction

    data = make_synthetic_wbc(tmp_path / "cells", n_per_class=60, size=40)
    split = tmp_path / "split.csv"
    leanmae.split(data, classes=LABELS, out=split)
    _, items = read_manifest(split)
    metrics = tiny_finetune(split, tmp_path / "run", fraction=0.2, epochs=1, seed=3)
    used = metrics["labels_used"]
    assert used["val_mode"] == "honest"
    assert used["train"] == _labels_of(items, label_fraction(items, 0.2, 3))
    assert used["val"] == _labels_of(items, label_fraction(items, 0.2, 3, split="val"))
    assert sum(used["val"].values()) < sum(1 for it in items if it.split == "val"), (
        "fewer val labels than the whole split"
    )
    assert used["total"] == sum(used["train"].values()) + sum(used["val"].values())
    assert metrics["calibration"]["fitted_on"] == sum(used["val"].values())
    assert json.loads((tmp_path / "run" / "run.json").read_text())["labels_used"] == used

    full = tiny_finetune(
        split, tmp_path / "full", fraction=0.2, epochs=1, seed=3, sets=["classifier.val=full"]
    )
    assert full["labels_used"]["val_mode"] == "full"
    assert sum(full["labels_used"]["val"].values()) == sum(1 for it in items if it.split == "val")


def test_an_unknown_recipe_choice_is_refused_before_any_work(cells: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="classifier.val = 'half'"):
        tiny_finetune(cells["split"], tmp_path / "x", sets=["classifier.val=half"])
    with pytest.raises(ConfigError, match="optim.lr_scaling"):
        tiny_finetune(cells["split"], tmp_path / "y", sets=["optim.lr_scaling=cubic"])
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_sqrt_class_weights_pull_half_as_hard_as_inverse_frequency() -> None:
    from leanmae.data.labelled import class_weights

    counts = np.array([10, 40])
    inverse, sqrt = class_weights(counts, "loss"), class_weights(counts, "sqrt")
    assert inverse[0] / inverse[1] == pytest.approx(4.0) and sqrt[0] / sqrt[1] == pytest.approx(2.0)
    for weights in (inverse, sqrt):
        assert (weights * counts).sum() == pytest.approx(counts.sum()), (
            "mean weight 1 over the training images"
        )
    assert class_weights(counts, "none") is None and class_weights(counts, "sampler") is None


def test_a_misspelt_ood_class_is_refused_before_training(cells: dict[str, Any], tmp_path: Path) -> None:
    """It used to be refused only after training, and the corrected command could not resume."""
    with pytest.raises(DataError):
        tiny_finetune(cells["split"], tmp_path / "run", ood=[f"{cells['data']}:basofil"])
    assert not (tmp_path / "run" / "checkpoints").exists()
    assert not (tmp_path / "run" / "run.json").exists()


def test_a_refer_threshold_on_too_few_validation_images_is_named_as_rough() -> None:
    """Rule of three: showing 99 % accuracy needs at least 300 validation images even with no mistake."""
    from leanmae.evaluation.calibration import refer_check

    assert refer_check(300, 0.99) is None
    assert "12 validation images" in refer_check(12, 0.99) and "at least 300" in refer_check(299, 0.99)
    assert refer_check(6, 0.5) is None and "no finite number" in refer_check(10**6, 1.0)


def test_finetuning_warns_before_training_when_its_refer_threshold_will_be_rough(
    cells: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tiny_finetune(cells["split"], tmp_path / "rough", epochs=1)
    out = capsys.readouterr().out
    warning = out.index("warning: the refer-to-expert threshold is chosen on 10 validation images")
    assert warning < out.index("macro-F1"), "the warning comes before any result"
    tiny_finetune(cells["split"], tmp_path / "fine", epochs=1, sets=["classifier.target_accuracy=0.7"])
    assert "refer-to-expert" not in capsys.readouterr().out
