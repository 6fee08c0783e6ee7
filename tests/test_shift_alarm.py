"""The shift alarm: images unlike the training images are scored, flagged one by one, and a folder of them
raises a one-line warning and is referred whole (leanmae.evaluation.shift_alarm)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import leanmae
from helpers import read_csv, tiny_finetune
from leanmae.data.synthetic import make_synthetic_wbc
from leanmae.errors import CheckpointError
from leanmae.evaluation.shift_alarm import (
    ShiftReference,
    conformal_threshold,
    fit_reference,
    folder_alarm,
    kept_accuracy,
    mahalanobis_scores,
)

# --------------------------------------------------------------------------- scores on constructed features


def test_the_score_is_the_squared_mahalanobis_distance_to_the_nearest_class_mean() -> None:
    means = np.array([[0.0, 0.0], [10.0, 0.0]])
    precision = np.diag([1.0, 4.0])  # the second feature varies half as much
    features = np.array([[1.0, 1.0], [9.0, 0.0], [5.0, 0.0]])
    scores = mahalanobis_scores(features, means, precision)
    assert scores == pytest.approx([1 + 4, 1, 25])


def test_the_conformal_threshold_is_the_right_order_statistic_and_infinite_for_too_few_images() -> None:
    scores = np.arange(1.0, 100.0)  # 99 scores: ceil(100 * 0.95) = 95th smallest
    assert conformal_threshold(scores, 0.05) == 95.0
    assert conformal_threshold(np.arange(10.0), 0.05) == math.inf  # ceil(11 * 0.95) = 11 > 10


def _clusters(rng: np.random.Generator, n: int, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Three Gaussian classes in 16 dimensions with correlated noise; ``shift`` moves every point."""
    centres = np.zeros((3, 16))
    centres[np.arange(3), np.arange(3)] = 6.0
    mixing = np.eye(16) + 0.5 * np.ones((16, 16)) / 16
    y = rng.integers(0, 3, n)
    x = centres[y] + rng.standard_normal((n, 16)) @ mixing + shift
    return x, y


def test_held_out_points_of_the_training_distribution_are_flagged_at_about_alpha_and_raise_no_alarm() -> None:
    rng = np.random.default_rng(0)
    reference = fit_reference(*_clusters(rng, 600), _clusters(rng, 400)[0], alpha=0.05)
    fresh, _ = _clusters(rng, 4000)
    alarm = folder_alarm(mahalanobis_scores(fresh, reference.means, reference.precision), reference)
    assert 0.03 < alarm["flagged_share"] < 0.08
    assert not alarm["alarm"]


def test_a_shifted_set_raises_the_alarm_and_a_few_images_of_it_are_flagged_without_one() -> None:
    rng = np.random.default_rng(1)
    reference = fit_reference(*_clusters(rng, 600), _clusters(rng, 400)[0])
    shifted, _ = _clusters(rng, 200, shift=3.0)
    scores = mahalanobis_scores(shifted, reference.means, reference.precision)
    alarm = folder_alarm(scores, reference)
    assert alarm["alarm"] and alarm["flagged_share"] > 0.5 and alarm["p_value"] < 1e-3
    assert not folder_alarm(scores[:1], reference)["alarm"]  # one image: a flag, never an alarm


def test_fewer_training_images_than_features_still_give_a_usable_reference() -> None:
    rng = np.random.default_rng(2)
    x, y = _clusters(rng, 12)  # a 1 % run: 12 images, 16 features
    reference = fit_reference(x, y, _clusters(rng, 100)[0])
    assert np.isfinite(reference.precision).all() and np.isfinite(reference.threshold)


def test_kept_accuracy_counts_only_the_predictions_neither_check_refers() -> None:
    correct = np.array([True, True, False, False])
    by_confidence = np.array([False, False, False, True])
    referred = np.array([False, False, True, True])
    kept = kept_accuracy(correct, by_confidence, referred)
    assert kept["confidence_only"] == {"kept": 3, "coverage": 0.75, "accuracy_kept": pytest.approx(2 / 3)}
    assert kept["confidence_and_shift"] == {"kept": 2, "coverage": 0.5, "accuracy_kept": 1.0}
    assert (
        kept_accuracy(correct, by_confidence, np.ones(4, bool))["confidence_and_shift"]["accuracy_kept"]
        is None
    )


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A classifier fine-tuned on synthetic cells, and a folder of another 'lab': the same classes as flat
    colour fields with noise, nothing like a cell."""
    root = tmp_path_factory.mktemp("shift")
    data = make_synthetic_wbc(root / "cells", n_per_class=16, size=40)
    labels = sorted(p.name for p in data.iterdir() if p.is_dir())
    leanmae.split(data, classes=labels, out=root / "split.csv", ratios="0.5,0.3,0.2")
    tiny_finetune(root / "split.csv", root / "run", epochs=2)
    other = root / "other-lab"
    rng = np.random.default_rng(3)
    for label in labels:
        (other / label).mkdir(parents=True)
        for i in range(8):
            colour = np.array([230, 210, 40]) + rng.integers(-10, 10, 3)  # a yellow field
            image = np.clip(colour + rng.normal(0, 25, (40, 40, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(image).save(other / label / f"{i}.png")
    return {"root": root, "run": root / "run", "other": other, "labels": labels}


def test_fine_tuning_saves_a_shift_reference_fitted_without_labels_beyond_the_budget(
    trained: dict[str, Any],
) -> None:
    model = trained["run"] / "model"
    assert (model / "shift_reference.safetensors").exists()
    settings = json.loads((model / "leanmae.json").read_text())["shift"]
    metrics = json.loads((trained["run"] / "metrics.json").read_text())
    val_images = sum(1 for r in read_csv(trained["root"] / "split.csv") if r["split"] == "val")
    assert settings["calibration_images"] == val_images
    assert metrics["shift"]["reference"] == settings
    assert {"confidence_only", "confidence_and_shift"} <= set(metrics["shift"]["test_kept"])
    rows = read_csv(trained["run"] / "predictions.csv")
    assert {"shift_score", "unlike_training"} <= set(rows[0])


def test_a_folder_unlike_the_training_images_raises_a_one_line_warning_and_is_referred_whole(
    trained: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = leanmae.evaluate(trained["run"], data=trained["other"], out=tmp_path / "ext", device="cpu")
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "unlike the ones the model was trained on" in warnings[0]
    assert str(trained["other"]) in warnings[0]
    assert report["shift"]["alarm"]
    assert report["kept"]["confidence_and_shift"]["kept"] == 0
    rows = read_csv(tmp_path / "ext" / "predictions.csv")
    assert all(r["refer"] == "refer" and r["unlike_training"] == "unlike" for r in rows)


def test_predict_flags_the_same_images_and_warns_the_same_way(
    trained: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    rows = leanmae.predict(trained["run"], trained["other"], device="cpu", progress=False)
    assert "warning:" in capsys.readouterr().out
    assert all(r["unlike_training"] and r["refer"] and r["shift_score"] > 0 for r in rows)


def test_the_training_labs_own_test_images_raise_no_alarm(
    trained: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = leanmae.evaluate(
        trained["run"], trained["root"] / "split.csv", subset="test", out=tmp_path / "t", device="cpu"
    )
    assert not report["shift"]["alarm"]
    assert "warning:" not in capsys.readouterr().out


def test_a_model_folder_with_half_a_shift_reference_is_refused(
    trained: dict[str, Any], tmp_path: Path
) -> None:
    folder = tmp_path / "model"
    shutil.copytree(trained["run"] / "model", folder)
    (folder / "shift_reference.safetensors").unlink()
    with pytest.raises(CheckpointError, match="shift reference is incomplete"):
        leanmae.predict(folder, trained["other"], device="cpu", progress=False)


def test_a_model_whose_training_labels_missed_a_class_still_scores_shift(
    trained: dict[str, Any], tmp_path: Path
) -> None:
    """A label choice (typiclust, margin rounds) can leave a class without a training label: its reference
    has a mean for each class it saw, and the model still loads and scores (the nearest of those means), as
    the next margin round must. A reference of another width is refused."""
    from safetensors.numpy import load_file, save_file

    folder = tmp_path / "model"
    shutil.copytree(trained["run"] / "model", folder)
    saved = folder / "shift_reference.safetensors"
    arrays = load_file(saved)
    save_file({**arrays, "means": arrays["means"][1:]}, saved)
    rows = leanmae.predict(folder, trained["other"], device="cpu", progress=False)
    assert all(math.isfinite(r["shift_score"]) for r in rows)
    save_file({**arrays, "means": arrays["means"][:, 1:]}, saved)
    with pytest.raises(CheckpointError, match="for another model"):
        leanmae.predict(folder, trained["other"], device="cpu", progress=False)


def test_the_saved_reference_round_trips() -> None:
    reference = ShiftReference(np.ones((2, 3)), np.eye(3), 4.5, 0.05, 10)
    again = ShiftReference.from_saved(reference.arrays(), reference.settings())
    assert again.threshold == 4.5 and np.array_equal(again.precision, np.eye(3))
