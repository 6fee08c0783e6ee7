"""leanmae's evaluation preprocessing as a transformers image processor, in one self-contained file.

This file is copied into every classifier folder leanmae saves, beside ``modeling_leanmae_vit.py``,
and preprocessor_config.json's ``auto_map`` names it, so that plain transformers prepares an image
exactly as ``leanmae predict`` does, whatever its shape::

    AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
    pipeline("image-classification", model=folder, trust_remote_code=True)

Why not transformers' ViTImageProcessor: it resizes the whole image to the input size, squashing a
non-square one, while leanmae crops the centred square, resizes it to the working size it decoded its
training images to (PIL bicubic), then to the input size (bilinear, antialiased, in torch) and
normalises. These steps are ``leanmae.data.decode.square_resize``, ``leanmae.data.cache.grey_rgb`` and
``leanmae.data.augment.resize`` / ``normalize``, step for step; tests/test_plain_transformers_loading.py
holds the two to the same probabilities on images of many shapes. What this file cannot do (a
cell-centred crop or stain normalisation at decode time: leanmae's own code) makes it refuse in one
line rather than give other probabilities.

The pipeline hands it the image as transformers loads a file (turned by its EXIF orientation,
transparency dropped); ``leanmae predict`` reads the file as stored and puts transparency on white.

Keep this file free of leanmae imports: it must run where only torch and transformers exist.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature

# preprocessor_config.json's pointer from transformers' AutoImageProcessor to the class of this file.
AUTO_MAP = {"AutoImageProcessor": "image_processing_leanmae.LeanImageProcessor"}


class LeanImageProcessor(BaseImageProcessor):
    """Centre square, ``working_size`` (bicubic), ``size`` (bilinear, antialiased), grey if ``grey``,
    [0, 1], then ``(x - image_mean) / image_std``; ``leanmae_only`` lists decode steps only leanmae has."""

    model_input_names = ["pixel_values"]

    def __init__(
        self,
        size: dict[str, int],
        working_size: int,
        image_mean: list[float],
        image_std: list[float],
        grey: bool = False,
        leanmae_only: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.size = size
        self.working_size = working_size
        self.image_mean = image_mean
        self.image_std = image_std
        self.grey = grey
        self.leanmae_only = leanmae_only or []

    def preprocess(self, images: Any, return_tensors: str | None = None) -> BatchFeature:
        """``pixel_values`` (N, 3, size, size) of a PIL image, an (H, W, 3) uint8 RGB array, or a list."""
        if self.leanmae_only:
            raise ValueError(
                f"this model decodes images with {' and '.join(self.leanmae_only)}, which only leanmae "
                "does: use leanmae.predict (or `leanmae predict`) for its predictions"
            )
        images = images if isinstance(images, (list, tuple)) else [images]
        pixels = torch.stack([self._pixels(_rgb(image)) for image in images])
        return BatchFeature({"pixel_values": pixels}, tensor_type=return_tensors)

    def _pixels(self, rgb: np.ndarray) -> torch.Tensor:
        height, width = rgb.shape[:2]
        side, working = min(height, width), self.working_size
        top, left = (height - side) // 2, (width - side) // 2
        square = Image.fromarray(rgb[top : top + side, left : left + side])
        if side != working:
            square = square.resize((working, working), Image.Resampling.BICUBIC, reducing_gap=None)
        if self.grey:  # ITU-R 601 luma in all three channels
            square = square.convert("L").convert("RGB")
        pixels = torch.from_numpy(np.array(square)).permute(2, 0, 1).float().div(255.0)[None]
        size = self.size["height"]
        if pixels.shape[-1] != size:
            pixels = F.interpolate(
                pixels, size=(size, size), mode="bilinear", antialias=True, align_corners=False
            )
        mean = torch.as_tensor(self.image_mean).view(-1, 1, 1)
        std = torch.as_tensor(self.image_std).view(-1, 1, 1)
        return (pixels[0] - mean) / std


def _rgb(image: Any) -> np.ndarray:
    """A PIL image as RGB, or an (H, W, 3) uint8 array as it is (leanmae predict's two in-memory forms)."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(
            f"an image must be PIL or (height, width, 3) uint8 RGB, got {array.shape} {array.dtype}"
        )
    return array
