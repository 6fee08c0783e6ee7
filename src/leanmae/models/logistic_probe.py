"""LP-FT's probe: L2-regularised logistic regression on frozen features, fitted to convergence, as a head.

Kumar et al. (ICLR 2022) fit LP-FT's linear probe to convergence (scikit-learn's logistic regression)
before fine-tuning. A probe trained like a network instead (a few short epochs at the fine-tuning lr)
underfits where LP-FT should help most: at 1 % of PBC's labels it ended with train loss 0.95 and
started fine-tuning from a poor head. The fit here is deterministic, so a resumed run refits it rather
than storing it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, log_loss
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from leanmae.models.classifier import LeanViTClassifier
from leanmae.models.linear_probe import fold_standardised_head

# Inverse L2 strength on standardised features, fixed: nothing is selected (a sweep would need val
# labels the label-honest protocol keeps for model choice). C = 1 is the project's one linear probe
# (``probe_pipeline``: also the MAE's representation signal in evaluation/probe.py and
# benchmarks/probe_encoders.py, the 0.60 macro-F1 at 1 % of PBC). The penalty does not grow
# with the data, so it matters most where labels are fewest.
PROBE_C = 1.0
MAX_ITER = 10_000  # lbfgs converges in hundreds of iterations on standardised features; a ceiling only


def probe_pipeline(max_iter: int = MAX_ITER) -> Pipeline:
    """The project's linear probe, unfitted: standardised features, then multinomial logistic
    regression with ``PROBE_C``; standardising first makes one C mean the same for every encoder."""
    return make_pipeline(StandardScaler(), LogisticRegression(C=PROBE_C, max_iter=max_iter))


@dataclass(frozen=True)
class LogisticProbe:
    """The fitted probe (standardisation, then multinomial logistic regression) and its training fit."""

    pipeline: Pipeline
    # C, iterations, accuracy and unweighted mean cross-entropy on the training images
    train: dict[str, float]


def fit_logistic_probe(
    features: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None
) -> LogisticProbe:
    """Fit the probe on ``features`` (one row per training image) with per-image loss weights.

    The features are standardised first, like the MAE paper's BatchNorm probe, so that one C means the
    same for every encoder and pooling; the standardisation folds into the head exactly.
    """
    weights = None if sample_weight is None else sample_weight * len(sample_weight) / sample_weight.sum()
    pipeline = probe_pipeline()
    pipeline.fit(features, y, logisticregression__sample_weight=weights)
    probabilities = pipeline.predict_proba(features)
    train = {
        "C": PROBE_C,
        "iterations": int(pipeline[-1].n_iter_.max()),
        "train_accuracy": float(accuracy_score(y, pipeline.classes_[probabilities.argmax(1)])),
        "train_loss": float(log_loss(y, probabilities, labels=pipeline.classes_)),
    }
    return LogisticProbe(pipeline, train)


def set_probe_as_head(model: LeanViTClassifier, probe: LogisticProbe) -> None:
    """Make ``model``'s head compute the probe's decision function on the features the head reads.

    Binary problems: scikit-learn fits one logit difference z; the head gets -z/2 and z/2, so its
    softmax is the probe's ``predict_proba`` and its logit difference the decision function.
    """
    scaler, regression = probe.pipeline[0], probe.pipeline[-1]
    classes = model.classifier.out_features
    if not np.array_equal(regression.classes_, np.arange(classes)):
        raise ValueError(f"the probe saw classes {regression.classes_.tolist()}, the head has {classes}")
    coef, intercept = regression.coef_, regression.intercept_
    if classes == 2:
        coef, intercept = np.concatenate([-coef, coef]) / 2, np.concatenate([-intercept, intercept]) / 2
    fold_standardised_head(
        model,
        *(torch.as_tensor(a, dtype=torch.float64) for a in (coef, intercept, scaler.mean_, scaler.scale_)),
    )
