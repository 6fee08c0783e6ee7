"""Augmentation on whole batches of tensors, on the training device.

RandomResizedCrop and both flips are one affine transform per image; ``affine_grid`` + ``grid_sample`` apply a
whole batch of them in a single call, with no per-image Python work and no PIL round trip. The random draws
are keyed by (seed, epoch, image), so a resumed run sees exactly the augmentations an uninterrupted run would
have seen, and DDP processes see what one process would.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
AUGMENT_DRAWS = 6  # area, aspect, centre x, centre y, horizontal flip, vertical flip


def to_float(batch: np.ndarray | torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """(B, H, W, 3) uint8 from the cache -> (B, 3, H, W) float in [0, 1] on ``device``."""
    tensor = torch.as_tensor(np.ascontiguousarray(batch)) if isinstance(batch, np.ndarray) else batch
    if torch.device(device).type == "cuda" and tensor.device.type == "cpu":
        tensor = (
            tensor.pin_memory()
        )  # from pageable memory the copy would wait for the stream; from pinned memory it is queued
    tensor = tensor.to(device, non_blocking=True)
    return tensor.permute(0, 3, 1, 2).float().div_(255.0)


def random_resized_crop(
    images: torch.Tensor,
    out_size: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    hflip: bool,
    vflip: bool,
    draws: np.ndarray,
    shift: float = 1.0,
) -> torch.Tensor:
    """torchvision's RandomResizedCrop (+ flips) for a whole (B, 3, H, W) batch at once.

    ``draws`` holds AUGMENT_DRAWS uniform numbers per image (see ``leanmae.data.rand``).
    Area fraction and log aspect ratio are drawn as torchvision draws them; a crop that would not
    fit is shrunk to fit instead of retried. ``shift`` scales how far the crop's centre may move from
    the image's (1: anywhere the crop fits, as torchvision; 0: centred). Bilinear sampling; the
    cache's working size is only a little above ``out_size``, so aliasing stays small.
    """
    b = images.shape[0]
    u = torch.as_tensor(draws, dtype=torch.float32)
    area = scale[0] + (scale[1] - scale[0]) * u[:, 0]
    aspect = torch.exp(math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[:, 1])
    width = torch.sqrt(area * aspect).clamp(max=1.0)  # fractions of the image side
    height = torch.sqrt(area / aspect).clamp(max=1.0)
    cx = (u[:, 2] * 2 - 1) * (1 - width) * shift  # centre in [-1, 1] coordinates
    cy = (u[:, 3] * 2 - 1) * (1 - height) * shift
    fx = torch.where(u[:, 4] < 0.5, -1.0, 1.0) if hflip else torch.ones(b)
    fy = torch.where(u[:, 5] < 0.5, -1.0, 1.0) if vflip else torch.ones(b)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = width * fx
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = height * fy
    theta[:, 1, 2] = cy
    theta = theta.to(images.device)
    grid = F.affine_grid(theta, [b, 3, out_size, out_size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def resize(images: torch.Tensor, out_size: int) -> torch.Tensor:
    """The evaluation transform: the whole (already square) image resized with antialiasing."""
    if images.shape[-1] == out_size:
        return images
    return F.interpolate(
        images, size=(out_size, out_size), mode="bilinear", antialias=True, align_corners=False
    )


def normalize(
    images: torch.Tensor, mean: tuple[float, ...] | list[float], std: tuple[float, ...] | list[float]
) -> torch.Tensor:
    m = torch.as_tensor(mean, device=images.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, device=images.device).view(1, -1, 1, 1)
    return (images - m) / s


def dataset_stats(
    images: np.ndarray, indices: np.ndarray, limit: int = 2000, seed: int = 0
) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of (up to ``limit`` of) the cached uint8 ``images[indices]``, in [0, 1]
    units."""
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(indices, size=min(limit, len(indices)), replace=False))
    pixels = np.asarray(images[pick], dtype=np.float64).reshape(-1, 3) / 255.0
    return pixels.mean(0).tolist(), pixels.std(0).clip(min=1e-3).tolist()


def mix(
    images: torch.Tensor, targets: torch.Tensor, mixup: float, cutmix: float, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup or CutMix (one of them per batch, as timm does) with the batch mixed with its reverse.

    ``targets`` are one-hot (or smoothed) rows; they are mixed in the same proportion as the pixels.
    """
    if mixup <= 0 and cutmix <= 0:
        return images, targets
    use_cutmix = cutmix > 0 and (mixup <= 0 or rng.random() < 0.5)
    lam = float(rng.beta(cutmix, cutmix) if use_cutmix else rng.beta(mixup, mixup))
    flipped = images.flip(0)
    if use_cutmix:
        h, w = images.shape[-2:]
        cut_h, cut_w = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
        cy, cx = int(rng.integers(h)), int(rng.integers(w))
        y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, h)
        x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, w)
        images = images.clone()
        images[:, :, y0:y1, x0:x1] = flipped[:, :, y0:y1, x0:x1]
        lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)
    else:
        images = lam * images + (1 - lam) * flipped
    return images, lam * targets + (1 - lam) * targets.flip(0)
