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
from leanmae.data.fingerprint import RUN_FIELD, manifest_parts
from leanmae.data.split import label_fraction, read_manifest, verify
from leanmae.errors import CheckpointError, DataError
from leanmae.evaluation.shift_alarm import ShiftReference
from leanmae.files import run_info
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
    # a mean per class the training labels held: a label choice (typiclust, margin) can leave a class out
    classes, width = classifier.config.num_labels, classifier.config.hidden_size
    means = reference.means.shape
    fits = len(means) == 2 and means[1] == width and 1 <= means[0] <= classes
    if not fits or reference.precision.shape != (width, width):
        raise CheckpointError(
            f"{folder}: shift_reference.safetensors is for another model (class means "
            f"{reference.means.shape} and precision {reference.precision.shape}; expected up to {classes} "
            f"means of width {width} and a {width} x {width} precision)"
        )
    return reference


def seen_in_training(folder: Path, extra: dict[str, Any], scored: list[str]) -> dict[str, Any] | None:
    """How many of the images ``scored`` (their sha256) the classifier in ``folder`` was trained on ("train")
    or chose its epoch and calibration on ("val"), with the manifest that says so ("split").

    Why by content: a copy of a training image under another name, in another folder or manifest,
    scores as well as the original, so the scores it adds are as optimistic. The images come from
    the run folder above the model (run.json: its manifest, label fraction, seed and validation
    mode; an adapted model's source run); None when there is none (a model folder on its own).
    Raises DataError when the manifest cannot tell: gone, or changed since the run recorded it
    (run.json's ``data_check``).
    """
    source = (extra.get("adapted") or {}).get("source")
    if source:  # an adapted model learnt its classes from the source model's run
        return seen_in_training(Path(source), load_preprocessing(Path(source))[2], scored)
    info = run_info(Path(folder).parent)
    config = info.get("config") or {}
    if info.get("command") != "finetune" or not config.get("split"):
        return None
    split = str(config["split"])
    root, items = read_manifest(split)
    if not all(it.sha256 for it in items):  # a hand-written manifest: hash its files as training did
        items = verify(items, root)
    seed = config.get("run", {}).get("seed", info.get("seed", 0))
    drawn = {it.relpath for it in label_fraction(items, config.get("fraction", 1.0), seed)}
    honest = config.get("classifier", {}).get("val", "honest") == "honest"
    if honest:
        drawn |= {it.relpath for it in label_fraction(items, config.get("fraction", 1.0), seed, "val")}
    recorded = info.get(RUN_FIELD) or {}
    changed = [
        name
        for name, part in manifest_parts(items, drawn).items()
        if name in recorded and recorded[name].get("hash") != part["hash"]
    ]
    if changed:
        raise DataError(
            f"{split}: its {', '.join(changed)} changed since {folder} was trained on it, so which images "
            "it trained on is unknown"
        )
    train = {it.sha256 for it in items if it.split == "train" and it.relpath in drawn}
    val = {it.sha256 for it in items if it.split == "val" and (it.relpath in drawn or not honest)} - train
    return {"train": sum(h in train for h in scored), "val": sum(h in val for h in scored), "split": split}
