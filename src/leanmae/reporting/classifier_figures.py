"""The figures of one fine-tuned classifier on the test split: confusion matrix, confidence, reliability
and risk against coverage.

Why here and not with the scoring (``evaluation.final``): figures are reporting, the layer above
evaluation; they are drawn from what the scoring returned and change no number.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from leanmae.evaluation.calibration import reliability_bins, risk_coverage, softmax
from leanmae.reporting.plots import (
    confidence_boxplot,
    confusion_plot,
    reliability_figure,
    risk_coverage_figure,
)


def write_test_figures(
    out: Path, metrics: dict[str, Any], labels: list[str], truth: np.ndarray, logits: np.ndarray
) -> None:
    """Write the four test-split figures into ``out`` from metrics.json's content, the test split's true
    classes and the selected model's logits on it."""
    calibration = metrics["calibration"]
    temperature = calibration["temperature"]
    probs, scaled = softmax(logits), softmax(logits, temperature)
    confusion_plot(
        metrics["test"]["confusion_matrix"]["rows_true_cols_predicted"],
        labels,
        out / "confusion_matrix.png",
        "test split",
    )
    confidence_boxplot(
        {"test": {"true": truth, "probs": probs}},
        labels,
        out / "confidence.png",
        "confidence on the test split (correct vs wrong, per true class)",
    )
    eces = (calibration["before"]["ece"], calibration["after"]["ece"])
    reliability_figure(
        reliability_bins(probs, truth),
        reliability_bins(scaled, truth),
        eces,
        temperature,
        out / "reliability.png",
        "reliability on the test split (temperature fitted on validation)",
    )
    kept = metrics["refer"]["test"]
    risk_coverage_figure(
        {
            "before scaling": risk_coverage(probs, truth),
            "after scaling": risk_coverage(scaled, truth),
        },
        (kept["coverage"], 1 - kept["accuracy_kept"]) if kept["coverage"] > 0 else None,
        out / "risk_coverage.png",
        "refer to expert: risk against coverage (test)",
    )
