"""Test-time adaptation by entropy minimisation (TENT; Wang et al. 2021, "Tent: Fully test-time adaptation
by entropy minimization", ICLR), for a classifier meeting another lab's unlabelled images.

Why: a lab has many images of its own and no labels for them; TENT uses only those. It lowers the entropy
of the model's predictions on them by updating the affine parameters (scale and shift) of the
normalisation layers and nothing else, so the features are re-centred for the new images while what the
model learnt from labels stays. A ViT's normalisation is LayerNorm, which keeps no batch statistics, so
only the affine parameters move (the original also re-estimates BatchNorm statistics).

Its known failure: when the model is confidently wrong on most images, lowering the entropy makes it
more so (docs/robustness.md measures this on another lab's cells).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn


def norm_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Make the LayerNorm scales and shifts the only trainable parameters, and return them."""
    model.requires_grad_(False)
    params = []
    for module in model.modules():
        if isinstance(module, nn.LayerNorm) and module.elementwise_affine:
            module.requires_grad_(True)
            params += [module.weight, module.bias]
    return params


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean Shannon entropy of the softmax predictions of a batch."""
    return -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1).mean()


def adapt(
    model: nn.Module,
    forward: Callable[[nn.Module, torch.Tensor], torch.Tensor],
    batches: Iterable[torch.Tensor],
    lr: float,
) -> list[float]:
    """One Adam step on the norm parameters per batch, minimising the entropy of ``forward(model, batch)``
    (logits); returns each batch's entropy before its step. Dropout and drop path stay off (eval mode):
    the predictions being sharpened are the ones the model will make."""
    optimizer = torch.optim.Adam(norm_parameters(model), lr=lr)
    model.eval()
    losses = []
    for batch in batches:
        loss = entropy(forward(model, batch))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    model.requires_grad_(True)
    return losses
