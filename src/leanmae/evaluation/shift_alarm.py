"""Are these images like the ones the model was trained on? A per-image shift score and a folder alarm.

Why: on another lab's cells (``external_wbc/tecom``) a PBC-trained model is 9 % accurate at a median
calibrated confidence of 0.96, so no confidence threshold can warn. The model's own features can: an
image from another lab lands far from every class of the training images in feature space.

- Per image: the Mahalanobis distance (squared) of the pooled feature the head sees to the nearest
  class mean of the training images, under one covariance shared by the classes (Lee et al. 2018,
  "A simple unified framework for detecting out-of-distribution samples"), estimated with Ledoit-Wolf
  shrinkage (scikit-learn) because a 1 % run has fewer images than feature dimensions.
- Flag: a score above the conformal (1 - alpha) quantile of the scores of held-out images of the
  training lab (the validation split's images; their labels are not read), so an image like those
  is flagged with probability at most alpha (Vovk et al. 2005; Angelopoulos and Bates 2021).
- Folder alarm: more flagged images than alpha explains, by a one-sided binomial test at ``P_ALARM``.
  It needs no labels of the folder, and with 2,000 images of the training lab it stays quiet.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import binom

# scikit-learn is imported inside the functions that use it: `predict` on a few images should not wait
# seconds for imports it never needs.

ALPHA = 0.05  # share of the training lab's held-out images flagged one by one
P_ALARM = 1e-3  # the folder alarm's false-alarm rate on images of the training lab


@dataclass(frozen=True)
class ShiftReference:
    """What the score needs from training: class means, shared precision, and the calibrated threshold."""

    means: np.ndarray  # (classes, features)
    precision: np.ndarray  # (features, features)
    threshold: float  # an image scoring above it is flagged
    alpha: float
    calibration_images: int

    def scores(self, features: np.ndarray) -> np.ndarray:
        """Each image's shift score: its squared Mahalanobis distance to the nearest class mean."""
        return mahalanobis_scores(features, self.means, self.precision)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"means": self.means.astype(np.float32), "precision": self.precision.astype(np.float32)}

    def settings(self) -> dict[str, Any]:
        return {
            "method": "mahalanobis",
            "threshold": self.threshold,
            "alpha": self.alpha,
            "calibration_images": self.calibration_images,
        }

    @classmethod
    def from_saved(cls, arrays: dict[str, np.ndarray], settings: dict[str, Any]) -> ShiftReference:
        return cls(
            arrays["means"].astype(np.float64),
            arrays["precision"].astype(np.float64),
            float(settings["threshold"]),
            float(settings["alpha"]),
            int(settings["calibration_images"]),
        )


def mahalanobis_scores(features: np.ndarray, means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """Squared Mahalanobis distance of each row of ``features`` to the nearest of ``means``."""
    x = np.asarray(features, dtype=np.float64)
    diff = x[:, None, :] - means[None, :, :]  # (N, C, D)
    return np.einsum("ncd,de,nce->nc", diff, precision, diff).min(axis=1)


def conformal_threshold(scores: np.ndarray, alpha: float) -> float:
    """The ceil((n + 1)(1 - alpha))-th smallest score: a new exchangeable score exceeds it with probability at
    most alpha; infinite when n is too small for alpha."""
    n = len(scores)
    rank = math.ceil((n + 1) * (1 - alpha))
    return float(np.sort(scores)[rank - 1]) if rank <= n else math.inf


def fit_reference(
    train_features: np.ndarray,
    train_y: np.ndarray,
    calibration_features: np.ndarray,
    alpha: float = ALPHA,
) -> ShiftReference:
    """Class means and shared precision from labelled training features; the threshold from held-out ones."""
    classes = np.unique(train_y)
    x = np.asarray(train_features, dtype=np.float64)
    means = np.stack([x[train_y == c].mean(0) for c in classes])
    centred = x - means[np.searchsorted(classes, train_y)]
    from sklearn.covariance import (
        LedoitWolf,
    )

    precision = LedoitWolf(assume_centered=True).fit(centred).precision_
    threshold = conformal_threshold(mahalanobis_scores(calibration_features, means, precision), alpha)
    return ShiftReference(means, precision, threshold, alpha, len(calibration_features))


def folder_alarm(scores: np.ndarray, reference: ShiftReference) -> dict[str, Any]:
    """How many images are flagged, how many alpha explains, and whether the folder as a whole is unlike the
    training images (binomial tail below ``P_ALARM``)."""
    n, flagged = len(scores), int((scores > reference.threshold).sum())
    p_value = float(binom.sf(flagged - 1, n, reference.alpha)) if n else 1.0
    return {
        "images": n,
        "flagged": flagged,
        "flagged_share": flagged / n if n else 0.0,
        "expected_share": reference.alpha,
        "p_value": p_value,
        "alarm": bool(n and p_value < P_ALARM),
        "median_score": float(np.median(scores)) if n else None,
        "threshold": reference.threshold,
    }


def alarm_message(where: str, alarm: dict[str, Any]) -> str:
    """The one-line warning when a folder's images are unlike the training images."""
    return (
        f"warning: {where}: {alarm['flagged']} of {alarm['images']} images "
        f"({alarm['flagged_share']:.0%}; {alarm['expected_share']:.0%} expected) lie outside the training "
        "images' features: these images are unlike the ones the model was trained on (another lab, stain "
        "or scanner?); its predictions and confidences cannot be trusted here, so every image is referred"
    )


def kept_accuracy(
    correct: np.ndarray, referred_by_confidence: np.ndarray, referred: np.ndarray
) -> dict[str, dict[str, float]]:
    """Coverage and accuracy of the predictions kept by the confidence threshold alone, and by the threshold,
    the per-image shift flag and the folder alarm together (``referred``, from ``shift_columns``); the
    accuracy is None where nothing is kept."""

    def kept(mask: np.ndarray) -> dict[str, float]:
        return {
            "kept": int(mask.sum()),
            "coverage": float(mask.mean()) if len(mask) else 0.0,
            "accuracy_kept": float(correct[mask].mean()) if mask.any() else None,
        }

    return {"confidence_only": kept(~referred_by_confidence), "confidence_and_shift": kept(~referred)}


def shift_columns(
    columns: dict[str, list[Any]], scores: np.ndarray, reference: ShiftReference, alarm: bool
) -> dict[str, list[Any]]:
    """predictions.csv's columns with the shift score and flag added, and every flagged image (all of them
    when the folder alarm fired) referred to an expert: a confident answer on an image unlike the training
    images is not one to keep."""
    unlike = (scores > reference.threshold) | alarm
    return {
        **columns,
        "refer": ["refer" if u else r for r, u in zip(columns["refer"], unlike, strict=True)],
        "shift_score": [f"{s:.3f}" for s in scores],
        "unlike_training": ["unlike" if u else "" for u in unlike],
    }


def screen(
    columns: dict[str, list[Any]], features: np.ndarray, reference: ShiftReference | None
) -> tuple[dict[str, list[Any]], dict[str, Any] | None]:
    """predictions.csv's columns screened for shift (``shift_columns``) and the folder's alarm; unchanged
    columns and None for a model saved without a shift reference."""
    if reference is None:
        return columns, None
    scores = reference.scores(features)
    alarm = folder_alarm(scores, reference)
    return shift_columns(columns, scores, reference, alarm["alarm"]), alarm


NO_REFERENCE = (
    "note: {model} has no shift reference (it was trained before leanmae scored shift): images unlike its "
    "training images are not flagged; fine-tune it again to get the shift alarm"
)
