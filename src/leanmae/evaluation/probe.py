"""Cheap signals of what a frozen encoder has learned: kNN and linear-probe accuracy.

An MAE's reconstruction loss says little about whether its features separate the classes a lab
cares about (the committed study's MAE lowered its loss yet its linear probe was barely above a
random encoder's). These two scores are measured during and after pretraining on a small labelled
set (a study's validation images), by stratified 5-fold cross-validation inside that set, so no
training label is used and nothing is selected on them: they are for reading, not for choosing.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.neighbors import KNeighborsClassifier
from transformers import ViTMAEForPreTraining

from leanmae.evaluation.reconstruction import mask_ratio
from leanmae.models.logistic_probe import probe_pipeline

KNN_NEIGHBOURS = 20


@torch.inference_mode()
def mae_features(model: ViTMAEForPreTraining, pixels: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """Mean of the encoder's patch tokens with nothing masked (the representation fine-tuning pools)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    chunks = []
    with mask_ratio(model, 0.0):
        for start in range(0, len(pixels), batch_size):
            batch = pixels[start : start + batch_size].to(device)
            in_order = torch.arange(
                model.vit.embeddings.patch_embeddings.num_patches, device=device, dtype=torch.float32
            ).expand(len(batch), -1)
            hidden = model.vit(pixel_values=batch, noise=in_order).last_hidden_state
            chunks.append(hidden[:, 1:].float().mean(1).cpu().numpy())
    model.train(was_training)
    return np.concatenate(chunks)


def representation_scores(features: np.ndarray, labels: np.ndarray, seed: int = 0) -> dict[str, float]:
    """kNN (k = 20, cosine) and logistic-regression accuracy / macro-F1, 5-fold cross-validated."""
    folds = min(5, int(np.bincount(labels).min()))
    if folds < 2:
        return {}
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    k = min(KNN_NEIGHBOURS, int(len(labels) * (folds - 1) / folds) - 1)
    models = {
        "knn": KNeighborsClassifier(n_neighbors=max(1, k), metric="cosine"),
        "probe": probe_pipeline(max_iter=2000),
    }
    scores: dict[str, float] = {}
    for name, estimator in models.items():
        predicted = cross_val_predict(estimator, features, labels, cv=cv)
        scores[f"{name}_accuracy"] = float(accuracy_score(labels, predicted))
        scores[f"{name}_macro_f1"] = float(f1_score(labels, predicted, average="macro"))
    return scores
