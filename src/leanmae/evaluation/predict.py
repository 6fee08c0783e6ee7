"""Class logits for many images: batched, in inference mode, with the evaluation transform."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from leanmae.data.augment import normalize, resize, to_float
from leanmae.data.batches import gather
from leanmae.models.classifier import LeanViTClassifier, load_classifier
from leanmae.models.io import load_preprocessing, model_folder
from leanmae.progress import bar_disabled
from leanmae.training.distributed import setup


@torch.inference_mode()
def predict_logits(
    model: torch.nn.Module,
    batches: Iterable[np.ndarray],
    image_size: int,
    mean: list[float],
    std: list[float],
    total: int | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Logits (N, classes) for uint8 (B, H, W, 3) batches: resize, normalise, forward."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    with tqdm(total=total, desc="predicting", unit="img", disable=bar_disabled(progress)) as bar:
        for batch in batches:
            pixels = normalize(resize(to_float(batch, device), image_size), mean, std)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                logits = model(pixel_values=pixels).logits
            out.append(logits.float().cpu().numpy())
            bar.update(len(batch))
    return np.concatenate(out) if out else np.zeros((0, model.config.num_labels), dtype=np.float32)


def cached_batches(images: np.ndarray, indices: np.ndarray, batch_size: int) -> Iterable[np.ndarray]:
    """Batches of decoded images from the cache, in ``indices`` order."""
    for start in range(0, len(indices), batch_size):
        yield gather(images, indices[start : start + batch_size])


def trained_classifier(
    model: str | Path, device: str | None
) -> tuple[Path, LeanViTClassifier, list[float], list[float], dict[str, Any], list[str]]:
    """A fine-tuned classifier on its device, with its preprocessing, leanmae extras and class names."""
    ctx = setup(device or "auto")
    folder = model_folder(model)
    classifier = load_classifier(folder).to(ctx.device)
    mean, std, extra = load_preprocessing(folder)
    labels = [classifier.config.id2label[i] for i in range(classifier.config.num_labels)]
    return folder, classifier, mean, std, extra, labels
