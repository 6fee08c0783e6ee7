"""Class logits and pooled features for many images: batched, in inference mode, with the eval transform."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from leanmae.data.augment import normalize, resize, to_float
from leanmae.data.batches import gather
from leanmae.errors import CheckpointError
from leanmae.evaluation.shift_alarm import ShiftReference
from leanmae.models.classifier import LeanViTClassifier, load_classifier
from leanmae.models.io import load_preprocessing, load_shift_reference, model_folder
from leanmae.progress import bar_disabled
from leanmae.training.distributed import setup


@torch.inference_mode()
def predict_outputs(
    model: LeanViTClassifier,
    batches: Iterable[np.ndarray],
    image_size: int,
    mean: list[float],
    std: list[float],
    total: int | None = None,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """(logits (N, classes), pooled features (N, width)) in one pass: the features are what the head
    sees, and what the shift score measures (``leanmae.evaluation.shift_alarm``). A DDP-wrapped model is
    unwrapped: inference needs no gradient synchronisation."""
    model = getattr(model, "module", model)
    model.eval()
    device = next(model.parameters()).device
    logits, features = [], []
    with tqdm(total=total, desc="predicting", unit="img", disable=bar_disabled(progress)) as bar:
        for batch in batches:
            pixels = normalize(resize(to_float(batch, device), image_size), mean, std)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                pooled = model.features(pixels)
                out = model.classifier(pooled)
            logits.append(out.float().cpu().numpy())
            features.append(pooled.float().cpu().numpy())
            bar.update(len(batch))
    if not logits:
        return (
            np.zeros((0, model.config.num_labels), dtype=np.float32),
            np.zeros((0, model.config.hidden_size), dtype=np.float32),
        )
    return np.concatenate(logits), np.concatenate(features)


def cached_batches(images: np.ndarray, indices: np.ndarray, batch_size: int) -> Iterable[np.ndarray]:
    """Batches of decoded images from the cache, in ``indices`` order."""
    for start in range(0, len(indices), batch_size):
        yield gather(images, indices[start : start + batch_size])


@dataclass
class TrainedClassifier:
    """A fine-tuned classifier on its device, with its preprocessing, leanmae extras and class names."""

    folder: Path
    model: LeanViTClassifier
    mean: list[float]
    std: list[float]
    extra: dict[str, Any]
    labels: list[str]
    shift: ShiftReference | None  # None for models saved before the shift alarm existed


def trained_classifier(model: str | Path, device: str | None = None) -> TrainedClassifier:
    """The classifier of a fine-tuning run (or its ``model/``) on ``device`` (auto by default)."""
    ctx = setup(device or "auto")
    folder = model_folder(model)
    classifier = load_classifier(folder).to(ctx.device)
    mean, std, extra = load_preprocessing(folder)
    labels = [classifier.config.id2label[i] for i in range(classifier.config.num_labels)]
    return TrainedClassifier(
        folder, classifier, mean, std, extra, labels, _shift_reference(folder, extra, classifier)
    )


def _shift_reference(
    folder: Path, extra: dict[str, Any], classifier: LeanViTClassifier
) -> ShiftReference | None:
    """The saved shift reference, checked for completeness and shape; None if the model has none."""
    arrays, settings = load_shift_reference(folder), extra.get("shift")
    if arrays is None and settings is None:
        return None
    try:
        reference = ShiftReference.from_saved(arrays or {}, settings or {})
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(
            f"{folder}: its shift reference is incomplete (leanmae.json's 'shift' and the arrays of "
            f"shift_reference.safetensors go together; missing {err})"
        ) from None
    classes, width = classifier.config.num_labels, classifier.config.hidden_size
    if reference.means.shape != (classes, width) or reference.precision.shape != (width, width):
        raise CheckpointError(
            f"{folder}: shift_reference.safetensors is for another model (class means "
            f"{reference.means.shape}, expected {(classes, width)})"
        )
    return reference
