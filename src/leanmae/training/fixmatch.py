"""FixMatch (Sohn et al. 2020): learning from unlabelled images while fine-tuning, one algorithm, one step.

Each step adds ``ratio`` unlabelled images per labelled one. The model's prediction on a weak view of
an unlabelled image (flips only, the whole cell), where it is confident (``threshold``), becomes the
target of a strong view of the same image (the fine-tuning augmentation: zoomed crop, stain and colour
jitter). So the model learns from cells nobody labelled that its answer should not change under the
perturbations another lab's images bring. The unlabelled images are the train split's images without
a label in this run, never validation or test images. Their order and views are keyed by (seed, pass,
image) like every other draw (``leanmae.data.rand``), so a resumed or distributed run is exact.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from leanmae.config import AugmentConfig
from leanmae.data.augment import AUGMENT_DRAWS, random_resized_crop
from leanmae.data.batches import epoch_order
from leanmae.data.rand import UNLABELLED_STREAM, WEAK_STREAM, uniform


def unlabelled_batches(
    pool: np.ndarray, key: int, seed: int, rank: int, world_size: int, batches: int, size: int
) -> list[np.ndarray]:
    """``batches`` batches of ``size`` unlabelled images for one pass: the pool shuffled for ``key``, repeated
    where one pass needs more images than the pool holds."""
    order = epoch_order(pool, key, seed, rank, world_size, stream=UNLABELLED_STREAM)
    return np.split(np.resize(order, batches * size), batches)


def weak_view(
    images: torch.Tensor, ids: np.ndarray, seed: int, key: int, size: int, aug: AugmentConfig
) -> torch.Tensor:
    """The whole image, resized, with the augmentation's flips: the view whose prediction becomes a target."""
    draws = uniform(seed, key, ids, AUGMENT_DRAWS, stream=WEAK_STREAM)
    return random_resized_crop(images, size, (1.0, 1.0), (1.0, 1.0), aug.hflip, aug.vflip, draws)


def fixmatch_loss(
    model: nn.Module,
    labelled: torch.Tensor,
    targets: torch.Tensor,
    weak: torch.Tensor,
    strong: torch.Tensor,
    threshold: float,
    weight: float,
    class_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy on the labelled images plus ``weight`` x the strong views' cross-entropy with the weak
    views' confident predictions (those under ``threshold`` count zero), averaged over all unlabelled images
    as in FixMatch."""
    with torch.no_grad():
        confidence, pseudo = F.softmax(model(pixel_values=weak).logits.float(), dim=1).max(dim=1)
    logits = model(pixel_values=torch.cat([labelled, strong])).logits.float()
    supervised = F.cross_entropy(logits[: len(labelled)], targets, weight=class_weight)
    unsupervised = F.cross_entropy(logits[len(labelled) :], pseudo, reduction="none")
    return supervised + weight * (unsupervised * (confidence >= threshold)).mean()
