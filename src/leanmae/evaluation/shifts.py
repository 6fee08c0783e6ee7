"""Controlled shifts of a labelled image set: what another lab's stain, colours or framing would do.

A model is only useful to a lab if it survives the next stain batch, microscope or camera (issue 16:
a PBC model scored macro-F1 0.05 on another lab's tight, lavender crops). The robustness benchmark
scores every model on its test images under three families of shift, applied to the images as they
come off the scanner, before the model's own decoding (so a model's stain normalisation or
cell-centred crop gets its chance to undo them):

- ``hed-H``: Tellez et al. 2019's stain perturbation at strength H (each stain's optical density
  x U(1-H, 1+H) + U(-H, H), the draws of ``augment.hed``), at rising H: 0.05 ("light" in
  Tellez), 0.1, 0.2 ("strong"). The draws are keyed by the image's path, with the same draws
  scaled for every H, so an image is pushed the same way, further, as H rises, and reruns give
  identical numbers;
- ``colour-transfer``: Reinhard's colour transfer of every image to another image set's CIELAB
  statistics; by default a built-in reference measured on LC25000 lung H&E tiles (a tissue stain
  far from a blood smear's: bluer and more saturated), or any folder's;
- ``zoom-Zx``: the centre 1/Z of the image, enlarged back to its size (1.5x, 2x, 3x): the cell
  fills more of the frame, as in a lab that crops tightly.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from leanmae.data.colour import hed_perturb
from leanmae.data.rand import COLOUR_STREAM, uniform
from leanmae.data.stain import reinhard

HED_LEVELS = (0.05, 0.1, 0.2)
ZOOMS = (1.5, 2.0, 3.0)
SHIFT_SEED = 16  # the HED draws' key: fixed, so every rerun and every model sees the same shifted images

# Reinhard reference (CIELAB mean L, a, b, then std L, a, b) of 64 LC25000 lung tiles (a fixed draw,
# square-resized to 240 px), measured with leanmae.data.stain.reinhard_reference; docs/robustness.md
# has the command. 64 of PBC's white-cell images average (78.7, 11.4, 6.6, 15.8, 8.8, 13.6).
LC25000_LUNG_REFERENCE = (62.44, 31.08, -37.97, 13.37, 12.31, 11.89)
BUILTIN_REFERENCE_NAME = "LC25000 lung H&E tiles (built-in)"


@dataclass(frozen=True)
class Shift:
    """One controlled shift: ``kind`` clean, hed, colour or zoom; ``strength`` the HED H or zoom factor."""

    kind: str
    strength: float = 0.0

    @property
    def name(self) -> str:
        if self.kind == "hed":
            return f"hed-{self.strength:g}"
        if self.kind == "zoom":
            return f"zoom-{self.strength:g}x"
        return "colour-transfer" if self.kind == "colour" else "clean"


CLEAN = Shift("clean")
SHIFTS = (
    CLEAN,
    *(Shift("hed", h) for h in HED_LEVELS),
    Shift("colour"),
    *(Shift("zoom", z) for z in ZOOMS),
)


def image_keys(names: list[str]) -> np.ndarray:
    """A stable 63-bit key per image from its name (a path relative to its set's root): the same image
    gets the same perturbation whatever set, order or batch it comes in."""
    return np.array(
        [int.from_bytes(hashlib.sha256(n.encode()).digest()[:8], "little") >> 1 for n in names],
        dtype=np.uint64,
    )


def apply_shift(
    images: np.ndarray, shift: Shift, keys: np.ndarray, reference: tuple[float, ...] | list[float]
) -> np.ndarray:
    """A (B, S, S, 3) uint8 batch under ``shift`` (uint8, same shape); ``keys`` from ``image_keys``,
    ``reference`` the colour transfer's six CIELAB numbers."""
    if shift.kind == "clean":
        return images
    if shift.kind == "colour":  # scikit-image's CIELAB conversion, as decode-time normalisation uses
        return np.stack([reinhard(image, reference) for image in images])
    tensor = torch.as_tensor(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(255.0)
    if shift.kind == "hed":
        spread = torch.as_tensor(
            2 * uniform(SHIFT_SEED, 0, keys, 6, stream=COLOUR_STREAM) - 1, dtype=torch.float32
        )
        tensor = hed_perturb(tensor, 1 + shift.strength * spread[:, :3], shift.strength * spread[:, 3:])
    elif shift.kind == "zoom":
        tensor = zoom_in(tensor, shift.strength)
    else:
        raise ValueError(f"unknown shift kind {shift.kind!r}")
    return tensor.mul(255.0).add_(0.5).clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def zoom_in(images: torch.Tensor, factor: float) -> torch.Tensor:
    """The centre square of side S / ``factor`` of a (B, 3, S, S) batch, enlarged back to S (bilinear)."""
    size = images.shape[-1]
    side = max(1, round(size / factor))
    start = (size - side) // 2
    centre = images[..., start : start + side, start : start + side]
    return F.interpolate(centre, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
