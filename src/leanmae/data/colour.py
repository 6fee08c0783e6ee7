"""Stain and colour augmentation on whole batches of tensors, on the training device.

A model trained on one lab's stain batch and camera fails on another's (issue 16: a PBC model
scored macro-F1 0.05 on another lab's cells). Tellez et al. 2019 ("Quantifying the effects of
data augmentation and stain color normalization in convolutional neural networks for
computational pathology", Medical Image Analysis) found stain perturbation in the
haematoxylin-eosin-DAB space plus brightness / contrast / saturation / hue jitter the strongest
single defence. Everything here is batched matrix products and one grouped convolution, with
no per-image Python work: scikit-image's ``rgb2hed`` / ``hed2rgb`` are per-image NumPy calls,
so only their conversion matrices are used. The draws are keyed by (seed, epoch, image) through
``leanmae.data.rand`` (``COLOUR_STREAM``), so resume and DDP see exactly the same perturbations.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from skimage.color.colorconv import hed_from_rgb, rgb_from_hed

from leanmae.config import AugmentConfig
from leanmae.data.rand import COLOUR_STREAM, uniform

# HED scale (3) and shift (3), brightness, contrast, saturation, hue, blur sigma.
COLOUR_DRAWS = 11
_EPS = 1e-6  # skimage's floor before the logarithm: black stays finite
_GREY = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as torchvision's rgb_to_grayscale


def colour_active(aug: AugmentConfig) -> bool:
    """Whether any stain or colour perturbation is switched on (all are off by default)."""
    return any(v > 0 for v in (aug.hed, aug.brightness, aug.contrast, aug.saturation, aug.hue, aug.blur))


def augment_colour(
    images: torch.Tensor, aug: AugmentConfig, seed: int, epoch: int, ids: np.ndarray
) -> torch.Tensor:
    """The configured perturbations of a (B, 3, H, W) [0, 1] batch, drawn per image id; unchanged when all are
    off.

    Order: HED stain perturbation, brightness, contrast, saturation, hue, blur (fixed, so that a
    draw means the same thing in every batch). The result stays in [0, 1].
    """
    if not colour_active(aug):
        return images
    u = torch.as_tensor(
        uniform(seed, epoch, ids, COLOUR_DRAWS, stream=COLOUR_STREAM),
        dtype=torch.float32,
        device=images.device,
    )
    spread = 2 * u - 1  # uniform in [-1, 1)
    if aug.hed > 0:
        images = hed_perturb(images, 1 + aug.hed * spread[:, 0:3], aug.hed * spread[:, 3:6])
    if aug.brightness > 0:
        images = (images * (1 + aug.brightness * spread[:, 6]).view(-1, 1, 1, 1)).clamp(0, 1)
    if aug.contrast > 0:
        mean = grey(images).mean(dim=(1, 2, 3), keepdim=True)
        images = _blend(images, mean, 1 + aug.contrast * spread[:, 7])
    if aug.saturation > 0:
        images = _blend(images, grey(images), 1 + aug.saturation * spread[:, 8])
    if aug.hue > 0:
        images = rotate_hue(images, aug.hue * spread[:, 9])
    if aug.blur > 0:
        images = gaussian_blur(images, aug.blur * u[:, 10], aug.blur)
    return images


def hed_perturb(images: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Tellez's HED augmentation: each stain's optical density becomes ``density * scale + shift`` (per image,
    (B, 3) each).

    Optical density is -ln(RGB); it is projected onto the haematoxylin, eosin and DAB stain
    vectors of Ruifrok and Johnston (scikit-image's matrices), changed, and projected back.
    """
    density = -torch.log(images.clamp(min=_EPS))  # (B, 3, H, W)
    to_hed = torch.as_tensor(hed_from_rgb, dtype=images.dtype, device=images.device)
    to_rgb = torch.as_tensor(rgb_from_hed, dtype=images.dtype, device=images.device)
    stains = torch.einsum("bchw,cs->bshw", density, to_hed)
    stains = stains * scale.view(-1, 3, 1, 1) + shift.view(-1, 3, 1, 1)
    return torch.exp(-torch.einsum("bshw,sc->bchw", stains, to_rgb)).clamp(0, 1)


def grey(images: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) luma."""
    weights = torch.as_tensor(_GREY, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images * weights).sum(1, keepdim=True)


def _blend(images: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """torchvision's blend: ``factor`` x images + (1 - factor) x other, per image, clamped to [0, 1]."""
    f = factor.view(-1, 1, 1, 1)
    return (f * images + (1 - f) * other).clamp(0, 1)


def rotate_hue(images: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """Hue shifted by ``turns`` (fractions of a full turn, per image) as a rotation about the grey axis.

    A rotation in YIQ's chroma plane is one 3x3 matrix per image (a batched product), where
    torchvision's HSV round trip needs branches per pixel; the two agree closely for small shifts.
    """
    angle = 2 * math.pi * turns
    cos, sin = torch.cos(angle), torch.sin(angle)
    # RGB -> YIQ, rotate I/Q, YIQ -> RGB, folded into one matrix per image.
    to_yiq = torch.tensor(
        [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]],
        dtype=images.dtype,
        device=images.device,
    )
    rotation = torch.zeros(len(turns), 3, 3, dtype=images.dtype, device=images.device)
    rotation[:, 0, 0] = 1
    rotation[:, 1, 1], rotation[:, 1, 2] = cos, -sin
    rotation[:, 2, 1], rotation[:, 2, 2] = sin, cos
    matrix = torch.linalg.inv(to_yiq) @ rotation @ to_yiq  # (B, 3, 3)
    return torch.einsum("bij,bjhw->bihw", matrix, images).clamp(0, 1)


def gaussian_blur(images: torch.Tensor, sigma: torch.Tensor, max_sigma: float) -> torch.Tensor:
    """A Gaussian blur of per-image ``sigma`` (pixels; 0 = unchanged) as one grouped separable convolution."""
    b, c, h, w = images.shape
    radius = max(1, min(math.ceil(3 * max_sigma), h - 1, w - 1))  # reflect padding needs radius < side
    offsets = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    safe = sigma.clamp(min=1e-3).view(-1, 1)
    kernel = torch.exp(-0.5 * (offsets / safe) ** 2)
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (B*3, K)
    flat = F.pad(images.reshape(1, b * c, h, w), (radius, radius, radius, radius), mode="reflect")
    flat = F.conv2d(flat, kernel.view(b * c, 1, 1, -1), groups=b * c)
    flat = F.conv2d(flat, kernel.view(b * c, 1, -1, 1), groups=b * c)
    return flat.view(b, c, h, w)
