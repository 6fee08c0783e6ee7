"""Classification metrics (through scikit-learn) and the seed's "confidence" statistics.

Confidence is the probability of the predicted class. The seed compared its distribution per
cell type for correct and for wrong predictions; here it is summarised the same way, grouped by
the true class, with count, median, quartiles and mean (empty groups report count 0 and nulls).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from leanmae.files import write_atomic
from leanmae.safe_csv import csv_text

# scikit-learn is imported inside the functions that use it: `predict` on a few images should not wait
# seconds for imports it never needs.


def summary(y_true: np.ndarray, y_pred: np.ndarray, labels: list[str]) -> dict[str, float]:
    from sklearn.metrics import (
        accuracy_score,
        f1_score,
    )

    """Accuracy and macro-F1: what model selection on the validation split looks at."""
    classes = list(range(len(labels)))
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=classes, average="macro", zero_division=0)),
    }


def _stats(values: np.ndarray) -> dict[str, Any]:
    if len(values) == 0:
        return {"count": 0, "median": None, "q1": None, "q3": None, "mean": None}
    q1, median, q3 = np.percentile(values, [25, 50, 75])
    return {
        "count": int(len(values)),
        "median": float(median),
        "q1": float(q1),
        "q3": float(q3),
        "mean": float(values.mean()),
    }


def confidence_stats(
    y_true: np.ndarray, probs: np.ndarray, labels: list[str]
) -> dict[str, dict[str, dict[str, Any]]]:
    """{true class or "all": {"correct" | "wrong": stats of confidence}}."""
    y_pred = probs.argmax(1)
    confidence = probs.max(1)
    correct = y_pred == y_true
    groups: dict[str, dict[str, dict[str, Any]]] = {}
    for name, rows in [("all", np.ones_like(correct))] + [
        (label, y_true == i) for i, label in enumerate(labels)
    ]:
        rows = rows.astype(bool)
        groups[name] = {
            "correct": _stats(confidence[rows & correct]),
            "wrong": _stats(confidence[rows & ~correct]),
        }
    return groups


def classification_report(
    y_true: np.ndarray, probs: np.ndarray, labels: list[str], scored: list[int] | None = None
) -> dict[str, Any]:
    """Everything metrics.json holds about one set of predictions.

    ``scored`` (class indices; default all) limits the per-class and macro metrics to those classes,
    for an external set that holds only some of the model's classes; the confusion matrix keeps them all.
    """
    from sklearn.metrics import (
        accuracy_score,
        balanced_accuracy_score,
        confusion_matrix,
        precision_recall_fscore_support,
    )

    classes = list(range(len(labels)))
    scored = classes if scored is None else list(scored)
    y_pred = probs.argmax(1)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=scored, zero_division=0
    )
    macro = precision_recall_fscore_support(y_true, y_pred, labels=scored, average="macro", zero_division=0)
    # Balanced accuracy is the mean recall over the classes the set holds; a model predicting a class the
    # set lacks (an external lab's folder) is the expected case, not one to warn a user about.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        balanced_accuracy = float(balanced_accuracy_score(y_true, y_pred))
    return {
        "images": int(len(y_true)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": balanced_accuracy,
        "macro_precision": float(macro[0]),
        "macro_recall": float(macro[1]),
        "macro_f1": float(macro[2]),
        "per_class": {
            labels[c]: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, c in enumerate(scored)
        },
        "confusion_matrix": {
            "labels": labels,
            "rows_true_cols_predicted": confusion_matrix(y_true, y_pred, labels=classes).tolist(),
        },
        "confidence": confidence_stats(y_true, probs, labels),
    }


def write_predictions(
    path: Path,
    paths: list[str],
    probs: np.ndarray,
    labels: list[str],
    y_true: np.ndarray | None = None,
    extra: dict[str, list[Any]] | None = None,
    blank_rows: set[int] | frozenset[int] = frozenset(),
) -> None:
    """predictions.csv: path, [true label], predicted label, confidence, extra columns, probability of every
    class.

    Rows in ``blank_rows`` (files that could not be read) get no prediction, only their extra columns.
    """
    extra = extra or {}
    header = (
        ["path"]
        + (["true_label"] if y_true is not None else [])
        + ["predicted_label", "confidence"]
        + list(extra)
        + [f"p_{label}" for label in labels]
    )
    predicted = probs.argmax(1)
    rows = []
    for i, image in enumerate(paths):
        blank = i in blank_rows
        row = [image] + ([labels[y_true[i]]] if y_true is not None else [])
        row += ["", ""] if blank else [labels[predicted[i]], f"{probs[i].max():.6f}"]
        row += [values[i] for values in extra.values()]
        row += [""] * len(labels) if blank else [f"{p:.6f}" for p in probs[i]]
        rows.append(row)
    write_atomic(path, csv_text(header, rows))  # names starting with = + - @ are escaped for spreadsheets
