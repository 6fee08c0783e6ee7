"""What the MAE reconstructs, measured and drawn.

The seed judged a "masked versus unmasked trade-off" by eye from reconstruction figures.
Here it is measured: the mean squared error on masked patches and on visible patches,
separately, at several mask ratios, with a fixed mask seed so that numbers and figures
compare across checkpoints. Errors are in the space the model is trained in: normalised
pixels, and per-patch normalised targets when the model uses the normalised-pixel loss.

A masked-patch error means little on its own, so two predictors that learn nothing are scored
on the same masks beside it: every masked patch painted in the mean colour of the image's
visible patches, and in the mean colour of its visible 4-neighbours (interpolation). An MAE
whose error is not clearly below both has not learned image structure.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import ViTMAEForPreTraining

from leanmae.models.mae import masking_noise

MASK_SEED = 1234
EVAL_RATIOS = (0.25, 0.5, 0.75)


@contextmanager
def mask_ratio(model: ViTMAEForPreTraining, ratio: float) -> Iterator[None]:
    """Temporarily mask a different share of patches (the config object is shared by the embeddings)."""
    saved = model.config.mask_ratio
    model.config.mask_ratio = ratio
    try:
        yield
    finally:
        model.config.mask_ratio = saved


def _targets(
    model: ViTMAEForPreTraining, pixels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Patchified targets as the loss sees them, plus the per-patch mean and std used to normalise them."""
    target = model.patchify(pixels)
    if model.config.norm_pix_loss:
        mean = target.mean(dim=-1, keepdim=True)
        std = (target.var(dim=-1, keepdim=True) + 1.0e-6) ** 0.5
        return (target - mean) / std, mean, std
    return target, torch.zeros_like(target[..., :1]), torch.ones_like(target[..., :1])


def trivial_errors(
    target: torch.Tensor, mask: torch.Tensor, grid: int, channels: int = 3
) -> tuple[float, float, float]:
    """Summed masked-patch squared errors of the two trivial predictors, and the masked-patch count.

    ``target``: (B, N, p*p*C) patches as the loss sees them (transformers' patchify: channel last);
    ``mask``: (B, N), 1 where masked. Returns (visible-mean sum, neighbour sum, masked patches).
    """
    b, n, _ = target.shape
    colour = target.reshape(b, n, -1, channels).mean(2)  # (B, N, C) mean colour of each patch
    visible = (1 - mask).unsqueeze(-1)
    image_mean = (colour * visible).sum(1, keepdim=True) / visible.sum(1, keepdim=True).clamp(min=1)
    # Sum and count of the visible 4-neighbours of every patch, as one convolution on the patch grid.
    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0]], device=target.device).view(
        1, 1, 3, 3
    )
    planes = (
        torch.cat([colour * visible, visible], dim=-1)
        .permute(0, 2, 1)
        .reshape(b * (channels + 1), 1, grid, grid)
    )
    sums = F.conv2d(planes, kernel, padding=1).reshape(b, channels + 1, n).permute(0, 2, 1)
    found = sums[..., -1:]
    neighbour = torch.where(found > 0, sums[..., :-1] / found.clamp(min=1), image_mean.expand_as(colour))

    def masked_sum(predicted: torch.Tensor) -> float:
        error = ((target.reshape(b, n, -1, channels) - predicted.unsqueeze(2)) ** 2).mean((2, 3))
        return float((error * mask).sum())

    return masked_sum(image_mean.expand_as(colour)), masked_sum(neighbour), float(mask.sum())


@torch.inference_mode()
def reconstruction_errors(
    model: ViTMAEForPreTraining, pixels: torch.Tensor, ratios: list[float], batch_size: int = 64
) -> dict[str, dict[str, float]]:
    """{ratio: {masked_mse, visible_mse, visible_mean_mse, neighbour_mse}} over ``pixels`` (normalised, B x 3
    x H x W).

    The last two are the trivial predictors' masked-patch errors on the same masks (``trivial_errors``).
    """
    model.eval()
    results: dict[str, dict[str, float]] = {}
    device = next(model.parameters()).device
    for ratio in ratios:
        sums = np.zeros(2)
        counts = np.zeros(2)
        trivial = np.zeros(3)
        with mask_ratio(model, ratio):
            for start in range(0, len(pixels), batch_size):
                batch = pixels[start : start + batch_size].to(device)
                ids = np.arange(start, start + len(batch))
                out = model(pixel_values=batch, noise=masking_noise(MASK_SEED, 0, ids, model.config, device))
                target, _, _ = _targets(model, batch)
                error = ((out.logits.float() - target) ** 2).mean(-1)
                mask = out.mask
                sums += [(error * mask).sum().item(), (error * (1 - mask)).sum().item()]
                counts += [mask.sum().item(), (1 - mask).sum().item()]
                trivial += trivial_errors(
                    target.float(),
                    mask.float(),
                    model.config.image_size // model.config.patch_size,
                    model.config.num_channels,
                )
        masked, visible = sums / np.maximum(counts, 1)
        results[f"{ratio:g}"] = {
            "masked_mse": float(masked),
            "visible_mse": float(visible) if counts[1] else float("nan"),
            "visible_mean_mse": float(trivial[0] / max(trivial[2], 1)),
            "neighbour_mse": float(trivial[1] / max(trivial[2], 1)),
        }
    return results


def trivial_warning(errors: dict[str, dict[str, float]], ratio: float, factor: float = 0.7) -> str | None:
    """A sentence when the masked error at ``ratio`` is not below ``factor`` x the better trivial
    predictor."""
    row = errors.get(f"{ratio:g}")
    if not row or "neighbour_mse" not in row:
        return None
    best = min(row["visible_mean_mse"], row["neighbour_mse"])
    if row["masked_mse"] <= factor * best:
        return None
    return (
        f"the MAE's masked-patch error at mask ratio {ratio:g} ({row['masked_mse']:.3f}) is not "
        f"below {factor:g} x the better trivial predictor ({best:.3f}: mean colour of the visible "
        f"patches {row['visible_mean_mse']:.3f}, of the visible neighbours {row['neighbour_mse']:.3f}); "
        "it has learned little image structure: pretrain longer or on more images"
    )


def reconstruction_metrics(model: ViTMAEForPreTraining, pixels: torch.Tensor) -> dict[str, Any]:
    """recon_metrics.json's body, the same for ``pretrain`` and ``reconstruct``: masked and visible
    errors at the training mask ratio and at EVAL_RATIOS, and the warning when a trivial predictor
    does as well."""
    ratio = model.config.mask_ratio
    metrics: dict[str, Any] = {
        "space": "per-patch normalised pixels" if model.config.norm_pix_loss else "normalised pixels",
        "mask_seed": MASK_SEED,
        "images": len(pixels),
        "training_mask_ratio": ratio,
        "by_mask_ratio": reconstruction_errors(model, pixels, sorted({ratio, *EVAL_RATIOS})),
    }
    metrics["warning"] = trivial_warning(metrics["by_mask_ratio"], ratio)
    return metrics


@torch.inference_mode()
def reconstruction_panels(
    model: ViTMAEForPreTraining,
    pixels: torch.Tensor,
    mean: list[float],
    std: list[float],
) -> tuple[dict[str, np.ndarray], str]:
    """The panels of reconstructions.png, (N, H, W, 3) in [0, 1] each: original, masked input,
    reconstruction, reconstruction with the visible patches pasted back; and a note for the title."""
    model.eval()
    device = next(model.parameters()).device
    pixels = pixels.to(device)
    out = model(
        pixel_values=pixels, noise=masking_noise(MASK_SEED, 0, np.arange(len(pixels)), model.config, device)
    )
    _, patch_mean, patch_std = _targets(model, pixels)
    predicted = out.logits.float() * patch_std + patch_mean  # back to normalised-pixel space
    mask = out.mask.unsqueeze(-1).expand_as(predicted)
    target = model.patchify(pixels)
    size = (model.config.image_size, model.config.image_size)
    recon = model.unpatchify(predicted, size)
    masked_input = model.unpatchify(target * (1 - mask), size)
    pasted = model.unpatchify(target * (1 - mask) + predicted * mask, size)

    m = torch.as_tensor(mean, device=device).view(1, 3, 1, 1)
    s = torch.as_tensor(std, device=device).view(1, 3, 1, 1)

    def show(x: torch.Tensor) -> np.ndarray:
        return (x * s + m).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()

    masked_show = show(masked_input)
    masked_show[model.unpatchify(mask, size).permute(0, 2, 3, 1).cpu().numpy() > 0.5] = (
        0.5  # grey masked patches
    )
    panels = {
        "original": show(pixels),
        f"masked {model.config.mask_ratio:.0%}": masked_show,
        "reconstruction": show(recon),
        "reconstruction + visible": show(pasted),
    }
    note = (
        " (normalised-pixel loss: output de-normalised with each patch's own mean/std)"
        if model.config.norm_pix_loss
        else ""
    )
    return panels, note
