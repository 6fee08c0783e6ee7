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

Register tokens (``num_register_tokens``, DINOv2 with registers): learned tokens placed after the CLS
token and before the patches, without a position embedding, as DINOv2's authors and transformers'
``Dinov2WithRegistersModel`` place them. They give attention a place to store global information
that would otherwise overwrite some patch tokens; they are read by neither pooling (CLS: token 0;
mean: the patch tokens only). With none, the model is exactly a ViT plus ``fc_norm``.

Keep this file free of leanmae imports: it must run where only torch and transformers exist.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import ViTConfig, ViTForImageClassification
from transformers.modeling_outputs import ImageClassifierOutput
from transformers.models.vit.modeling_vit import ViTEmbeddings

# config.json's pointer from transformers' auto classes to the classes of this file.
AUTO_MAP = {
    "AutoConfig": "modeling_leanmae_vit.LeanViTConfig",
    "AutoModelForImageClassification": "modeling_leanmae_vit.LeanViTClassifier",
}


class LeanViTConfig(ViTConfig):
    """A ViT config plus ``pooling``: "mean" (patch tokens + LayerNorm) or "cls" (the CLS token), and
    ``num_register_tokens`` (0: none; folders saved before registers existed have none)."""

    model_type = "leanmae_vit"

    def __init__(self, pooling: str = "cls", num_register_tokens: int = 0, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.pooling = pooling
        self.num_register_tokens = num_register_tokens


class LeanViTEmbeddings(ViTEmbeddings):
    """ViT's embeddings (CLS, patches, position embeddings) with the register tokens inserted after CLS."""

    def __init__(self, config: LeanViTConfig) -> None:
        super().__init__(config)
        # zeros, as transformers initialises DINOv2's registers; a model started from weights overwrites them
        self.register_tokens = nn.Parameter(torch.zeros(1, config.num_register_tokens, config.hidden_size))

    def forward(
        self,
        pixel_values: torch.Tensor,
        bool_masked_pos: torch.BoolTensor | None = None,
        interpolate_pos_encoding: bool = False,
    ) -> torch.Tensor:
        embeddings = super().forward(pixel_values, bool_masked_pos, interpolate_pos_encoding)
        registers = self.register_tokens.expand(embeddings.shape[0], -1, -1)
        return torch.cat((embeddings[:, :1], registers, embeddings[:, 1:]), dim=1)


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
        self.registers = getattr(config, "num_register_tokens", 0)
        if self.registers:
            self.vit.embeddings = LeanViTEmbeddings(config)
            self.post_init()  # transformers initialises the new embeddings (only: the rest is marked done)

    def forward(self, pixel_values: torch.Tensor) -> ImageClassifierOutput:  # type: ignore[override]
        """Logits only: leanmae's training computes its own (class-weighted, mixed) loss, so there is no
        ``labels`` argument; a caller that passes one gets a TypeError rather than a silent ``loss=None``."""
        return ImageClassifierOutput(logits=self.classifier(self.features(pixel_values)))

    def features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The pooled representation the head sees (used by the linear probe)."""
        hidden = self.vit(pixel_values, interpolate_pos_encoding=False).last_hidden_state
        if self.fc_norm is None:
            return hidden[:, 0]
        return self.fc_norm(hidden[:, 1 + self.registers :].mean(dim=1))
