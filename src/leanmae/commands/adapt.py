"""``leanmae adapt``: adapt a trained classifier to another lab's unlabelled images (test-time adaptation),
writing an adapted model folder that ``evaluate`` and ``predict`` use like any other.

No label of the new images is read: folders are read as an unlabelled pool (``data.pool.collect``),
whatever subfolders they have.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from leanmae.data.augment import normalize, resize, to_float
from leanmae.data.batches import gather
from leanmae.data.cache import load_or_build, spec_from_extras
from leanmae.data.pool import collect
from leanmae.errors import DataError
from leanmae.evaluation.predict import cached_batches, predict_outputs, trained_classifier
from leanmae.files import write_json
from leanmae.models.io import save_model
from leanmae.reporting.runinfo import result_folder
from leanmae.training.tent import adapt as tent_adapt
from leanmae.training.tent import entropy

ADAPT_OUTPUTS = ["adapt.json", "model"]


def adapt(
    model: str | Path,
    images: list[str | Path],
    out: str | Path,
    steps: int = 50,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    device: str | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """TENT (entropy minimisation of the LayerNorm affine parameters, leanmae.training.tent) on ``images``.

    Options:
        model: classifier folder (a fine-tuning run or its ``model/``).
        images: folders (searched recursively; subfolders are not read as labels) or image files.
        out: folder for the adapted ``model/`` and ``adapt.json`` (settings, entropy before and after).
        steps: Adam steps, each on ``batch_size`` images drawn at random (seeded) from ``images``.
        lr: Adam's learning rate.
        batch_size: images per step.
        seed: the draw of the batches.
        device: ``auto`` (default), ``cpu``, ``cuda`` or ``cuda:N``.
        overwrite: replace an earlier adaptation in ``out``.

    The adapted model keeps the source model's temperature, refer threshold and shift reference (all
    fitted on the training lab's images): adaptation without labels cannot refit them, and the shift
    alarm still says whether the new images look like the training images to the adapted model.
    """
    if steps < 1 or batch_size < 1 or not lr > 0:
        raise DataError(f"adapt: steps ({steps}) and batch size ({batch_size}) must be >= 1, lr ({lr}) > 0")
    with result_folder(Path(out), ADAPT_OUTPUTS, overwrite) as target:
        return _adapt(model, images, target, steps, lr, batch_size, seed, device)


def _adapt(
    model: str | Path,
    images: list[str | Path],
    target: Path,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int,
    device: str | None,
) -> dict[str, Any]:
    """``adapt``'s work, in a folder this process holds (``runinfo.result_folder``)."""
    trained = trained_classifier(model, device)
    classifier, size = trained.model, trained.model.config.image_size
    records = collect([str(p) for p in images])
    cache = load_or_build(records, spec_from_extras(trained.extra, size))
    rng = np.random.default_rng(seed)
    device_ = next(classifier.parameters()).device
    count = min(batch_size, len(cache))
    draws = [np.sort(rng.choice(len(cache), count, replace=False)) for _ in range(steps)]

    def pixels(idx: np.ndarray) -> torch.Tensor:
        return normalize(
            resize(to_float(gather(cache.images, idx), device_), size), trained.mean, trained.std
        )

    def logits(module: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
        return module(pixel_values=batch).logits.float()

    def mean_entropy() -> float:
        """Mean prediction entropy over all the new images, with the evaluation transform."""
        every = cached_batches(cache.images, np.arange(len(cache)), 256)
        outputs = predict_outputs(classifier, every, size, trained.mean, trained.std)[0]
        return float(entropy(torch.from_numpy(outputs)))

    before = mean_entropy()
    losses = tent_adapt(classifier, logits, (pixels(idx) for idx in draws), lr)
    after = mean_entropy()
    settings = {"method": "tent", "steps": steps, "lr": lr, "batch_size": count, "seed": seed}
    shift = trained.shift
    save_model(
        classifier,
        target / "model",
        trained.mean,
        trained.std,
        {**trained.extra, "adapted": {**settings, "source": str(trained.folder), "images": len(cache)}},
        shift_reference=None if shift is None else shift.arrays(),
    )
    result = {
        "source_model": str(trained.folder),
        "images": len(cache),
        **settings,
        "mean_entropy_before": before,
        "mean_entropy_after": after,
        "batch_entropy": losses,
    }
    write_json(target / "adapt.json", result)
    print(
        f"adapted {trained.folder} to {len(cache)} images (TENT, {steps} steps): mean entropy "
        f"{before:.3f} -> {after:.3f}; wrote {target / 'model'}"
    )
    return result
