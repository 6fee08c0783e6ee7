"""leanmae's ViT classifier, in one self-contained file (torch and transformers only).

This file is copied into every classifier folder leanmae saves, and config.json's ``auto_map``
names it, so that plain transformers gives exactly leanmae's predictions::

    AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True)
    pipeline("image-classification", model=folder, trust_remote_code=True)

Why custom code: leanmae's default head reads the mean of the patch tokens through a LayerNorm
(``fc_norm``, the MAE paper's fine-tuning), which transformers' ``ViTForImageClassification``
lacks. Loaded as a plain ViT, the folder would read the CLS token and ignore ``fc_norm``, giving
other predictions without a word. The config's own model type (``leanmae_vit``) keeps transformers
from doing that: without ``trust_remote_code=True`` it refuses the folder with its own error,
which says that the folder holds custom code that must run to load the model correctly.

Keep this file free of leanmae imports: it must run where only torch and transformers exist.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import ViTConfig, ViTForImageClassification
from transformers.modeling_outputs import ImageClassifierOutput

# config.json's pointer from transformers' auto classes to the classes of this file.
AUTO_MAP = {
    "AutoConfig": "modeling_leanmae_vit.LeanViTConfig",
    "AutoModelForImageClassification": "modeling_leanmae_vit.LeanViTClassifier",
}


class LeanViTConfig(ViTConfig):
    """A ViT config plus ``pooling``: "mean" (patch tokens + LayerNorm) or "cls" (the CLS token)."""

    model_type = "leanmae_vit"

    def __init__(self, pooling: str = "cls", **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.pooling = pooling


class LeanViTClassifier(ViTForImageClassification):
    """ViTForImageClassification with a choice of pooling (``config.pooling``): mean + LayerNorm, or CLS."""

    config_class = LeanViTConfig

    def __init__(self, config: ViTConfig) -> None:
        super().__init__(config)
        self.fc_norm = (
            nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
            if getattr(config, "pooling", "cls") == "mean"
            else None
        )

    def forward(self, pixel_values: torch.Tensor) -> ImageClassifierOutput:  # type: ignore[override]
        """Logits only: leanmae's training computes its own (class-weighted, mixed) loss, so there is no
        ``labels`` argument; a caller that passes one gets a TypeError rather than a silent ``loss=None``."""
        return ImageClassifierOutput(logits=self.classifier(self.features(pixel_values)))

    def features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The pooled representation the head sees (used by the linear probe)."""
        hidden = self.vit(pixel_values, interpolate_pos_encoding=False).last_hidden_state
        return hidden[:, 0] if self.fc_norm is None else self.fc_norm(hidden[:, 1:].mean(dim=1))
