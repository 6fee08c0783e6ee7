"""The MAE paper's linear probe head, and how it becomes an ordinary classifier head once trained.

Linear probing trains only this head on frozen encoder features; folding its BatchNorm into the
linear layer afterwards leaves a plain ``LeanViTClassifier`` that saves, loads and predicts like a
fine-tuned one.
"""

from __future__ import annotations

import torch
from torch import nn

from leanmae.models.classifier import LeanViTClassifier


class ProbeHead(nn.Module):
    """The MAE paper's linear probe: BatchNorm without affine parameters, then a linear layer."""

    def __init__(self, dim: int, classes: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(dim, affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(features))


def fold_probe_into(model: LeanViTClassifier, head: ProbeHead) -> None:
    """Fold the probe's BatchNorm into one linear layer and make it the classifier's head."""
    scale = torch.sqrt(head.norm.running_var + head.norm.eps)
    fold_standardised_head(model, head.linear.weight, head.linear.bias, head.norm.running_mean, scale)


def fold_standardised_head(
    model: LeanViTClassifier,
    weight: torch.Tensor,
    bias: torch.Tensor,
    mean: torch.Tensor,
    scale: torch.Tensor,
) -> None:
    """Make the classifier's head compute ``weight @ ((x - mean) / scale) + bias`` as one linear layer."""
    folded = weight / scale
    with torch.no_grad():
        model.classifier.weight.copy_(folded)
        model.classifier.bias.copy_(bias - folded @ mean)
