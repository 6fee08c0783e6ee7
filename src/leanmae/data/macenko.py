"""Macenko stain normalisation at decode time: each image's two stains re-expressed in a reference's.

Why beside Reinhard (``leanmae.data.stain``): Reinhard matches an image's colour mean and spread, so
how much of the frame a cell fills changes its colours (a 2x zoom cost 0.61 macro-F1,
docs/robustness.md). Macenko et al. 2009 ("A method for normalizing histology slides for
quantitative analysis", ISBI) instead estimate the image's two stain colours as the extreme
directions of its stained pixels' optical density, and the stain amounts by least squares; the
amounts are rescaled so each stain's 99th percentile matches the reference's, and the image is rebuilt
with the reference's stain colours. Extremes and upper percentiles move little when the share of
nucleus, cytoplasm and background in the frame changes.

The steps, per image (an RGB uint8 array):
- optical density ``OD = -ln((I + 1) / 256)`` (light intensity I0 = 256, so white, 255, is OD 0 and
  the rebuild ``256 exp(-OD) - 1`` inverts it exactly);
- pixels with OD below ``BETA`` = 0.15 in any channel are near-transparent background and are dropped;
- the remaining ODs are projected on the plane of the two largest eigenvectors of their covariance;
  the angles at the ``ALPHA`` = 1 and 99 percentiles give the two stain vectors, ordered to match the
  reference's (when taking the reference: the one with the larger red OD first, haematoxylin-like, as
  torchstain orders them). Matching matters for blood smears: their two stain colours often absorb
  red alike, and on PBC the red-OD rule alone swapped the stains between a frame and its 2x zoom;
- concentrations by least squares for every pixel; each stain's 99th percentile over the stained
  pixels is scaled to the reference's (over stained pixels, not all pixels, so a frame that is mostly
  background does not pull the percentile into the background);
- an image without enough stained pixels or with one stain colour only (blank or single-colour
  tiles) has no two stains to estimate and is returned unchanged.

Why not torchstain's ``MacenkoNormalizer(backend="numpy")``, which needs only NumPy: it raises on a
blank tile (LinAlgError from the covariance of no pixels) and turns a single-colour tile dark instead
of leaving it alone, and its only public entry points refit or rebuild the whole image, so guarding
them would mean repeating its optical density and least squares beside it; its percentile runs over
all pixels, background included. The algorithm is a few vectorised NumPy lines, written here.

The reference (``macenko_reference``) is the per-component median of the estimates of the training
images (stain vectors renormalised to unit length): each image is normalised by its own estimate,
so the reference is a typical such estimate, and a median ignores a few odd images where pooling all
pixels would let the most strongly stained images dominate. It is eight numbers, haematoxylin's
OD vector, eosin's, and their two maximum concentrations, saved in leanmae.json as Reinhard's are.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

BETA = 0.15  # OD below this in any channel: near-transparent, not stained
ALPHA = 1.0  # percentile of the angles that gives the extreme stain directions
MIN_STAINED = 0.01  # least share of stained pixels (and at least MIN_PIXELS) to estimate stains from
MIN_PIXELS = 16
MIN_ANGLE = 0.05  # radians between the two stain vectors: below this the image has one colour only


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """(N, 3) optical densities of an RGB uint8 image's pixels."""
    return -np.log((rgb.reshape(-1, 3).astype(np.float64) + 1.0) / 256.0)


def estimate(
    rgb: np.ndarray, like: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(stains (3, 2), concentrations (2, N), 99th-percentile concentrations (2,)) of an image, or
    None where it has too few stained pixels or a single stain colour. The stains are in the order
    that best matches ``like``'s (3, 2) where given, else haematoxylin-like first."""
    od = optical_density(rgb)
    stained = np.all(od >= BETA, axis=1)
    if stained.sum() < max(MIN_PIXELS, MIN_STAINED * len(od)):
        return None
    tissue = od[stained]
    plane = np.linalg.eigh(np.cov(tissue.T))[1][:, 1:3]  # second and largest eigenvector
    if plane[:, 1].sum() < 0:
        plane[:, 1] = -plane[:, 1]  # the largest points into positive OD: angles in (0, pi), no wrap
    projected = tissue @ plane
    angles = np.arctan2(projected[:, 1], projected[:, 0])
    low, high = np.percentile(angles, [ALPHA, 100 - ALPHA])
    if high - low < MIN_ANGLE:
        return None
    stains = plane @ np.array([[np.cos(low), np.cos(high)], [np.sin(low), np.sin(high)]])
    if _swapped(stains, like):
        stains = stains[:, ::-1]
    concentrations = np.linalg.lstsq(stains, od.T, rcond=None)[0]
    maxima = np.percentile(concentrations[:, stained], 99, axis=1)
    if not np.all(maxima > 1e-6):
        return None
    return stains, concentrations, maxima


def _swapped(stains: np.ndarray, like: np.ndarray | None) -> bool:
    """Whether the two stain vectors should change places: to lie closer to ``like``'s (the reference's,
    which holds whatever the two stains are, even where both absorb red alike), else so that the one
    absorbing more red (haematoxylin-like) comes first."""
    if like is None:
        return bool(stains[0, 0] < stains[0, 1])
    cos = stains.T @ (like / np.linalg.norm(like, axis=0))
    return bool(cos[0, 1] + cos[1, 0] > cos[0, 0] + cos[1, 1])


def macenko_reference(images: Iterable[np.ndarray]) -> tuple[float, ...]:
    """The reference of a set of images: the median of their estimates (8 numbers: haematoxylin's OD
    vector, eosin's, their 99th-percentile concentrations); images without two stains are left out."""
    images = list(images)
    found = [e for e in map(estimate, images) if e is not None]
    if not found:
        raise ValueError("a Macenko stain reference needs at least one image with two stains")
    stains = np.median([s for s, _, _ in found], axis=0)
    found = [e for e in (estimate(rgb, stains) for rgb in images) if e is not None]  # one order for all
    stains = np.median([s for s, _, _ in found], axis=0)
    stains = stains / np.linalg.norm(stains, axis=0)
    maxima = np.median([m for _, _, m in found], axis=0)
    return tuple(float(v) for v in (*stains[:, 0], *stains[:, 1], *maxima))


def macenko(rgb: np.ndarray, reference: tuple[float, ...] | list[float]) -> np.ndarray:
    """``rgb`` (uint8) rebuilt with ``reference``'s stain vectors and maximum concentrations; uint8 out,
    the image itself where it has no two stains to estimate."""
    ref = np.asarray(reference, dtype=np.float64)
    ref_stains, ref_maxima = ref[:6].reshape(2, 3).T, ref[6:]
    found = estimate(rgb, ref_stains)
    if found is None:
        return rgb
    _, concentrations, maxima = found
    scaled = concentrations * (ref_maxima / maxima)[:, None]
    out = 256.0 * np.exp(-(ref_stains @ scaled)) - 1.0
    return (np.clip(out.T, 0, 255) + 0.5).astype(np.uint8).reshape(rgb.shape)
