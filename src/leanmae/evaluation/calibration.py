"""Confidence you can act on: calibration, temperature scaling, refer-to-expert thresholds, OOD flags.

The seed found MAE-initialised models more confident, also when wrong. In a blood-smear workflow
a confident wrong answer is worse than "please check this cell", so every fine-tuning run measures
how far its confidence can be trusted and turns it into two safe actions:

- calibration: ECE (15 equal-width bins) and maximum calibration error (torchmetrics), negative
  log-likelihood and Brier score (scikit-learn), before and after temperature scaling. The
  temperature is fitted on the validation split only; it divides the logits, so the predicted class,
  accuracy and F1 do not change.
- refer to expert: the risk-coverage curve and its area (AURC); a confidence threshold chosen on the
  validation split so that the predictions kept reach a target accuracy (default 99 %); below it,
  ``predict`` answers "refer".
- out of distribution: images of classes the model never saw (PBC's erythroblasts, immature
  granulocytes, platelets) scored by maximum softmax probability and by the energy score; AUROC of
  telling them from the test cells, and a threshold on validation cells (95 % of them kept).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

# scikit-learn and torchmetrics are imported inside the functions that use them: `predict` on a few images
# should not wait seconds for imports it never needs.

N_BINS = 15


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    return torch.softmax(torch.as_tensor(logits, dtype=torch.float64) / temperature, dim=-1).numpy()


def calibration(probs: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """ECE and MCE (15 equal-width bins), NLL and multiclass Brier score of predicted probabilities."""
    from sklearn.metrics import brier_score_loss, log_loss
    from torchmetrics.functional.classification import multiclass_calibration_error

    classes = probs.shape[1]
    p, t = torch.as_tensor(probs, dtype=torch.float64), torch.as_tensor(y)
    return {
        "ece": float(multiclass_calibration_error(p, t, num_classes=classes, n_bins=N_BINS, norm="l1")),
        "mce": float(multiclass_calibration_error(p, t, num_classes=classes, n_bins=N_BINS, norm="max")),
        "nll": float(log_loss(y, probs, labels=list(range(classes)))),
        "brier": float(brier_score_loss(y, probs, labels=list(range(classes)))),
    }


def fit_temperature(logits: np.ndarray, y: np.ndarray, prior_sd: float | None = 0.5) -> float:
    """The temperature minimising validation NLL (Guo et al. 2017), by L-BFGS on log T.

    ``prior_sd``: a normal prior on log T centred on 0 (T = 1), so the fit is a MAP estimate. Why: a
    run at 1 % of the labels calibrates on ~10 validation images, where plain NLL can drive T to an
    extreme; with a thousand images the prior is negligible. None fits plain NLL.
    """
    z = torch.as_tensor(logits, dtype=torch.float64)
    t = torch.as_tensor(y)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.exp(), t, reduction="sum")
        if prior_sd:
            loss = loss + log_t.square().sum() / (2 * prior_sd**2)
        loss = loss / len(t)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().exp().clamp(0.05, 20.0))


def reliability_bins(probs: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """Per confidence bin: mean confidence, accuracy and count (for the reliability diagram)."""
    confidence, correct = probs.max(1), probs.argmax(1) == y
    edges = np.linspace(0, 1, N_BINS + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, N_BINS - 1)
    count = np.bincount(which, minlength=N_BINS)
    with np.errstate(invalid="ignore"):
        mean_conf = np.bincount(which, confidence, N_BINS) / count
        accuracy = np.bincount(which, correct.astype(float), N_BINS) / count
    return {"edges": edges, "confidence": mean_conf, "accuracy": accuracy, "count": count}


def risk_coverage(probs: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(coverage, risk, AURC): keeping the k most confident predictions, for every k."""
    order = np.argsort(-probs.max(1), kind="stable")
    errors = (probs.argmax(1) != y)[order]
    k = np.arange(1, len(y) + 1)
    risk = np.cumsum(errors) / k
    return k / len(y), risk, float(risk.mean())


def refer_threshold(probs: np.ndarray, y: np.ndarray, target_accuracy: float) -> float:
    """The lowest confidence threshold at which the kept (>= threshold) predictions reach ``target_accuracy``.

    Chosen on validation data, it keeps as many predictions as the target allows; if none does,
    the threshold is above 1 and everything is referred.
    """
    confidence = probs.max(1)
    order = np.argsort(-confidence, kind="stable")
    sorted_conf = confidence[order]
    accuracy = np.cumsum((probs.argmax(1) == y)[order]) / np.arange(1, len(y) + 1)
    end_of_tie = np.r_[sorted_conf[1:] != sorted_conf[:-1], True]  # a threshold keeps whole tie groups
    ok = np.flatnonzero(end_of_tie & (accuracy >= target_accuracy))
    return float(sorted_conf[ok[-1]]) if len(ok) else 1.0 + 1e-9


def refer_images_needed(target_accuracy: float) -> float:
    """The validation images a refer threshold needs to show ``target_accuracy``: 3 / (1 - a), 300 for 99 %.

    Even with no mistake among n validation images, the 95 % upper bound on the error rate is about 3 / n
    (the rule of three). On fewer, the threshold only keeps what is surer than every validation mistake
    (often nothing, or everything).
    """
    # rounded before ceil: 3 / (1 - 0.9) is 30.000000000000007 in floating point, which would ask for 31
    return math.inf if target_accuracy == 1 else math.ceil(round(3 / (1 - target_accuracy), 6))


def refer_check(validation_images: int, target_accuracy: float) -> str | None:
    """Why a refer threshold chosen on ``validation_images`` cannot show ``target_accuracy``, or None."""
    least = refer_images_needed(target_accuracy)
    if validation_images >= least:
        return None
    needed = "no finite number" if least == math.inf else f"at least {least}"
    return (
        f"the refer-to-expert threshold is chosen on {validation_images} validation images, too few to show "
        f"{target_accuracy:.1%} accuracy ({needed} needed even with no mistake): treat its coverage and kept "
        "accuracy as rough"
    )


def selective(probs: np.ndarray, y: np.ndarray, threshold: float) -> dict[str, float]:
    """Coverage (share of predictions kept) and accuracy of the kept ones at ``threshold``."""
    kept = probs.max(1) >= threshold
    return {
        "coverage": float(kept.mean()),
        "accuracy_kept": float((probs.argmax(1)[kept] == y[kept]).mean()) if kept.any() else float("nan"),
    }


def energy(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Negative free energy T * logsumexp(logits / T): higher for inputs like the training data (Liu et al.
    2020)."""
    return (
        temperature
        * torch.logsumexp(torch.as_tensor(logits, dtype=torch.float64) / temperature, dim=-1).numpy()
    )


def ood_scores(logits: np.ndarray, temperature: float) -> dict[str, np.ndarray]:
    """In-distribution scores (higher = more like the training classes)."""
    return {"msp": softmax(logits, temperature).max(1), "energy": energy(logits)}


def ood_report(
    in_logits: np.ndarray,
    out_logits: np.ndarray,
    val_logits: np.ndarray,
    temperature: float,
    keep: float = 0.95,
) -> dict[str, Any]:
    """AUROC of MSP and energy for in-distribution test vs OOD images, and the energy threshold that keeps
    ``keep`` of validation cells."""
    from sklearn.metrics import (
        roc_auc_score,
    )

    inside, outside = ood_scores(in_logits, temperature), ood_scores(out_logits, temperature)
    labels = np.r_[np.ones(len(in_logits)), np.zeros(len(out_logits))]
    threshold = float(np.quantile(energy(val_logits), 1 - keep))
    return {
        "ood_images": int(len(out_logits)),
        "auroc_msp": float(roc_auc_score(labels, np.r_[inside["msp"], outside["msp"]])),
        "auroc_energy": float(roc_auc_score(labels, np.r_[inside["energy"], outside["energy"]])),
        "energy_threshold": threshold,
        "kept_in_distribution_validation": keep,
        "test_flagged": float((inside["energy"] < threshold).mean()),
        "ood_flagged": float((outside["energy"] < threshold).mean()),
    }


def confidence_report(
    val_logits: np.ndarray,
    y_val: np.ndarray,
    test_logits: np.ndarray,
    y_test: np.ndarray,
    target_accuracy: float,
    ood_logits: np.ndarray | None = None,
    prior_sd: float | None = 0.5,
) -> dict[str, Any]:
    """Everything metrics.json says about confidence; validation data chooses, test data only measures."""
    temperature = fit_temperature(val_logits, y_val, prior_sd)
    raw, scaled = softmax(test_logits), softmax(test_logits, temperature)
    val_scaled = softmax(val_logits, temperature)
    threshold = refer_threshold(val_scaled, y_val, target_accuracy)
    report: dict[str, Any] = {
        "calibration": {
            "temperature": temperature,
            "temperature_prior_sd": prior_sd,
            "fitted_on": int(len(y_val)),
            "bins": N_BINS,
            "before": calibration(raw, y_test),
            "after": calibration(scaled, y_test),
        },
        "refer": {
            "target_accuracy": target_accuracy,
            "threshold": threshold,
            "aurc_before": risk_coverage(raw, y_test)[2],
            "aurc": risk_coverage(scaled, y_test)[2],
            "validation": selective(val_scaled, y_val, threshold),
            "test": selective(scaled, y_test, threshold),
        },
    }
    if ood_logits is not None and len(ood_logits):
        report["ood"] = ood_report(test_logits, ood_logits, val_logits, temperature)
    return report


def confidence_columns(
    logits: np.ndarray, temperature: float, threshold: float, energy_threshold: float | None
) -> dict[str, list[Any]]:
    """Extra predictions.csv columns: calibrated confidence, refer flag, energy score and OOD flag."""
    scaled = softmax(logits, temperature).max(1)
    scores = energy(logits)
    return {
        "confidence_calibrated": [f"{c:.6f}" for c in scaled],
        "refer": ["refer" if c < threshold else "" for c in scaled],
        "energy": [f"{e:.4f}" for e in scores],
        "ood": ["" if energy_threshold is None else ("ood" if e < energy_threshold else "") for e in scores],
    }
