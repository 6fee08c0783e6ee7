"""``leanmae reconstruct``: what an MAE checkpoint makes of images it has not seen.

Writes reconstructions.png (original | masked | reconstruction | reconstruction + visible
patches) and recon_metrics.json (masked and visible MSE at the model's mask ratio and at
0.25 / 0.5 / 0.75), with a fixed mask seed so that checkpoints compare.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from leanmae.data.augment import normalize, resize, to_float
from leanmae.data.cache import DecodeSpec, finish_image, spec_from_extras
from leanmae.data.decode import decode_rgb
from leanmae.data.sources import image_files
from leanmae.errors import DataError
from leanmae.evaluation.reconstruction import mask_ratio as masking_at
from leanmae.evaluation.reconstruction import (
    reconstruction_metrics,
    reconstruction_panels,
)
from leanmae.files import write_json
from leanmae.models.io import load_preprocessing, model_folder
from leanmae.models.mae import load_mae
from leanmae.progress import bar_disabled
from leanmae.reporting.plots import reconstruction_grid
from leanmae.reporting.runinfo import result_folder
from leanmae.training.distributed import setup


def load_images(
    files: list[Path],
    spec: DecodeSpec,
    image_size: int,
    mean: list[float],
    std: list[float],
    progress: bool = True,
) -> torch.Tensor:
    """Decode as training did (``finish_image``: the model's cell-centred crop and stain normalisation
    too, from ``spec``), then resize and normalise: (N, 3, S, S)."""
    rows = [
        finish_image(decode_rgb(f), spec)
        for f in tqdm(files, desc="reading images", unit="img", disable=bar_disabled(progress))
    ]
    return normalize(resize(to_float(np.stack(rows)), image_size), mean, std)


def reconstruct(
    checkpoint: str | Path,
    inputs: list[str | Path] | str,
    out: str | Path,
    images: int = 8,
    mask_ratio: float | None = None,
    device: str | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Reconstruction figure and metrics of ``checkpoint`` on ``inputs``; returns the metrics.

    ``out`` is never a run's own folder, and earlier results there are replaced only with ``overwrite``;
    the folder is locked while it is written (``runinfo.result_folder``).
    """
    if images < 1:
        raise DataError(f"--images {images}: show at least 1 image")
    if mask_ratio is not None and not 0 < mask_ratio < 1:
        raise DataError(f"--mask-ratio {mask_ratio}: must be in (0, 1)")
    with result_folder(Path(out), RECONSTRUCT_OUTPUTS, overwrite) as folder:
        return _reconstruct(checkpoint, inputs, folder, images, mask_ratio, device)


RECONSTRUCT_OUTPUTS = ["recon_metrics.json", "reconstructions.png"]


def _reconstruct(
    checkpoint: str | Path,
    inputs: list[str | Path] | str,
    out: Path,
    images: int,
    mask_ratio: float | None,
    device: str | None,
) -> dict[str, Any]:
    """``reconstruct``'s work, in a folder this process holds."""
    ctx = setup(device or "auto")
    folder = model_folder(checkpoint)
    model = (
        load_mae(folder, "reconstruct needs an MAE (a `leanmae pretrain` run or its model/)")
        .to(ctx.device)
        .eval()
    )
    mean, std, extra = load_preprocessing(folder)
    size = model.config.image_size
    files = image_files([inputs] if isinstance(inputs, (str, Path)) else list(inputs))
    pixels = load_images(files, spec_from_extras(extra, size), size, mean, std).to(ctx.device)
    metrics = {"checkpoint": str(folder), **reconstruction_metrics(model, pixels)}
    write_json(out / "recon_metrics.json", metrics)
    if metrics["warning"]:
        print(f"warning: {metrics['warning']}")
    with masking_at(model, mask_ratio if mask_ratio is not None else model.config.mask_ratio):
        panels, note = reconstruction_panels(model, pixels[:images], mean, std)
        reconstruction_grid(panels, out / "reconstructions.png", f"MAE reconstructions ({folder}){note}")
    print(f"wrote {out / 'reconstructions.png'} and {out / 'recon_metrics.json'}")
    return metrics
