"""The one look at the test split: a fine-tuned classifier scored on it, its confidence tools fitted on
validation, and the classifier saved with them.

Why apart from the command: this is the only place a run touches its test labels, after training
and model selection are over; keeping it in a module of its own makes that easy to check.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from leanmae.config import FinetuneConfig
from leanmae.data.cache import load_or_build, spec_extras
from leanmae.data.labelled import LabelledData
from leanmae.data.pool import collect
from leanmae.evaluation.calibration import confidence_columns, confidence_report, softmax
from leanmae.evaluation.metrics import classification_report, write_predictions
from leanmae.evaluation.predict import cached_batches, predict_outputs
from leanmae.evaluation.shift_alarm import fit_reference, kept_accuracy, screen
from leanmae.models.classifier import LeanViTClassifier
from leanmae.models.io import save_model


def final_evaluation(
    model: LeanViTClassifier,
    data: LabelledData,
    *,
    cfg: FinetuneConfig,
    mean: list[float],
    std: list[float],
    out: Path,
    selected_epoch: int | None,
) -> tuple[dict[str, Any], np.ndarray]:
    """Score the selected model once on the test split, fit its confidence tools on validation, save it.

    Writes model/ (with temperature, thresholds and the shift reference) and predictions.csv; returns
    metrics.json's content (without the run's bookkeeping) and the test logits (for the figures).
    The shift reference takes the run's training images (whose labels the run has) and the validation
    split's images without their labels (leanmae.evaluation.shift_alarm), so no label beyond the budget.
    """
    opts, labels, spec = cfg.classifier, data.labels, data.spec
    index = {**data.index, "held_out": data.all_of("val")}
    outputs = {
        s: _class_outputs(model, data.cache.images, idx, mean, std, opts.eval_batch_size, cfg.run.progress)
        for s, idx in index.items()
    }
    logits = {s: outputs[s][0] for s in ("val", "test")}
    truth = {s: data.y[data.index[s]] for s in ("val", "test")}
    reference = fit_reference(outputs["train"][1], data.y[data.index["train"]], outputs["held_out"][1])
    ood_logits = None
    if opts.ood_data:
        ood = load_or_build(
            collect(opts.ood_data),
            spec,
            cfg.data.cache_dir,
            cfg.data.skip_bad,
            cfg.data.workers,
            cfg.run.progress,
        )
        ood_logits = _class_outputs(
            model, ood.images, np.arange(len(ood)), mean, std, opts.eval_batch_size, cfg.run.progress
        )[0]
    confidence = confidence_report(
        logits["val"],
        truth["val"],
        logits["test"],
        truth["test"],
        opts.target_accuracy,
        ood_logits,
        opts.temperature_prior,
    )
    temperature, threshold = confidence["calibration"]["temperature"], confidence["refer"]["threshold"]
    probs = {s: softmax(v) for s, v in logits.items()}
    metrics = {
        "selection": opts.select,
        "selected_epoch": selected_epoch,
        "test": classification_report(truth["test"], probs["test"], labels),
        "val": classification_report(truth["val"], probs["val"], labels),
        **confidence,
    }
    energy_threshold = confidence.get("ood", {}).get("energy_threshold")
    save_model(
        model,
        out / "model",
        mean,
        std,
        {
            "kind": "classifier",
            "labels": labels,
            **spec_extras(spec),
            "temperature": temperature,
            "refer_threshold": threshold,
            "target_accuracy": opts.target_accuracy,
            "energy_threshold": energy_threshold,
            "shift": reference.settings(),
        },
        shift_reference=reference.arrays(),
    )
    columns = confidence_columns(logits["test"], temperature, threshold, energy_threshold)
    by_confidence = np.array([r == "refer" for r in columns["refer"]])
    columns, test_alarm = screen(columns, outputs["test"][1], reference)
    metrics["shift"] = {
        "reference": reference.settings(),
        "test": test_alarm,
        "test_kept": kept_accuracy(
            probs["test"].argmax(1) == truth["test"],
            by_confidence,
            np.array([r == "refer" for r in columns["refer"]]),
        ),
    }
    write_predictions(
        out / "predictions.csv",
        data.paths("test"),
        probs["test"],
        labels,
        truth["test"],
        extra=columns,
    )
    return metrics, logits["test"]


def headline(report: dict[str, Any]) -> dict[str, float]:
    """The scores of a classification report that run.json shows at a glance."""
    return {
        k: report[k] for k in ("accuracy", "balanced_accuracy", "macro_precision", "macro_recall", "macro_f1")
    }


def _class_outputs(
    model: LeanViTClassifier,
    images: np.ndarray,
    idx: np.ndarray,
    mean: list[float],
    std: list[float],
    batch_size: int,
    progress: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """The classifier's logits and pooled features for the cached images ``images[idx]``, in batches."""
    return predict_outputs(
        model,
        cached_batches(images, idx, batch_size),
        model.config.image_size,
        mean,
        std,
        total=len(idx),
        progress=progress,
    )
