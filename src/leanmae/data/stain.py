"""Stain normalisation at decode time: Reinhard here (every image's colour statistics moved to a
reference's), Macenko in ``leanmae.data.macenko``, both reached through ``REFERENCES`` and ``NORMALISERS``.

Why at decode time: a classifier that sees every image, in training and in ``predict``, mapped to
the same colour statistics no longer depends on which lab stained it. Reinhard et al. 2001
("Color transfer between images") match the per-channel mean and standard deviation in a
perceptual colour space; this uses CIELAB through scikit-image (``rgb2lab`` / ``lab2rgb``), as
common stain-normalisation packages do. The reference (six numbers) is taken from the training
images, enters the cache key, and is saved with the model (leanmae.json) so ``predict`` and
``evaluate`` apply the same mapping.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable

import numpy as np
from skimage.color import lab2rgb, rgb2lab

from leanmae.data.macenko import macenko, macenko_reference


def lab_stats(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of an RGB uint8 image in CIELAB."""
    lab = rgb2lab(rgb).reshape(-1, 3)
    return lab.mean(0), lab.std(0)


def reinhard_reference(images: Iterable[np.ndarray]) -> tuple[float, ...]:
    """The reference of a set of images: the average of their LAB means, then of their LAB stds (6
    numbers)."""
    stats = [lab_stats(rgb) for rgb in images]
    if not stats:
        raise ValueError("a stain reference needs at least one image")
    means = np.mean([m for m, _ in stats], axis=0)
    stds = np.mean([s for _, s in stats], axis=0)
    return tuple(float(v) for v in (*means, *stds))


def reinhard(rgb: np.ndarray, reference: tuple[float, ...] | list[float]) -> np.ndarray:
    """``rgb`` (uint8) with its LAB mean and std per channel moved to ``reference``'s; uint8 out."""
    ref = np.asarray(reference, dtype=np.float64)
    lab = rgb2lab(rgb)
    mean, std = lab.reshape(-1, 3).mean(0), lab.reshape(-1, 3).std(0)
    lab = (lab - mean) / np.maximum(std, 1e-6) * ref[3:] + ref[:3]
    # A moved colour can fall outside sRGB; clipping it is the intended gamut mapping, so skimage's
    # warning that it clipped negative Z values would only alarm a user about a deliberate step.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Conversion from CIE-LAB", category=UserWarning)
        rgb_out = lab2rgb(lab)
    return (np.clip(rgb_out, 0, 1) * 255 + 0.5).astype(np.uint8)


# method -> how its reference is taken from training images, and how an image is moved to it
REFERENCES: dict[str, Callable[[Iterable[np.ndarray]], tuple[float, ...]]] = {
    "reinhard": reinhard_reference,
    "macenko": macenko_reference,
}
NORMALISERS: dict[str, Callable[[np.ndarray, tuple[float, ...] | list[float]], np.ndarray]] = {
    "reinhard": reinhard,
    "macenko": macenko,
}
