"""The ViT classifier: transformers' ViTForImageClassification, started from scratch or from an MAE.

The MAE's encoder (``vit.*`` in ViTMAEForPreTraining) has exactly the parameter names of
ViTForImageClassification's ``vit.*``, so transfer is a state-dict copy; only the classifier head
is new. ``config.pooling`` chooses the head's input: the mean of the patch tokens followed by a
LayerNorm (``fc_norm``; the MAE paper's fine-tuning default, and leanmae's: MAE pretraining never
trains the CLS token) or the CLS token (transformers' behaviour). The model class lives in
``modeling_leanmae_vit``, a file saved into every classifier folder so that plain transformers
loads it (with ``trust_remote_code=True``) and predicts exactly as leanmae does. Stochastic
depth (drop path), which transformers' ViT lacks, is added with forward hooks on each block's
attention and MLP branches, so the saved weights are a plain ViT's plus ``fc_norm``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn
from transformers import PretrainedConfig, ViTMAEConfig, ViTModel

from leanmae.config import ModelConfig
from leanmae.errors import CheckpointError
from leanmae.models.foundation import foundation_model, foundation_weights, is_foundation
from leanmae.models.io import check_model_folder, load_pretrained, require_kind
from leanmae.models.mae import check_encoder_shape, encoder_kwargs, interpolate_positions, load_mae
from leanmae.models.modeling_leanmae_vit import AUTO_MAP, LeanViTClassifier, LeanViTConfig

__all__ = ["LeanViTClassifier", "build_classifier", "load_classifier"]


def vit_config(model: ModelConfig, labels: list[str], pooling: str) -> LeanViTConfig:
    config = LeanViTConfig(
        **encoder_kwargs(model),
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
        pooling=pooling,
        num_register_tokens=model.num_register_tokens,
    )
    config.auto_map = dict(
        AUTO_MAP
    )  # plain transformers loads it with trust_remote_code=True (see the module)
    return config


def encoder_weights(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """``vit.*`` weights and shape of a local MAE (vit_mae) or ViT (vit) folder, read from safetensors, or of
    an encoder labs already have (DINOv2, timm: ``leanmae.models.foundation``)."""
    if is_foundation(Path(folder)):
        weights, shape = foundation_weights(Path(folder))
        return {f"vit.{k}": v for k, v in weights.items()}, shape
    config = check_model_folder(folder)
    model_type = config.get("model_type")
    if model_type == "vit_mae":
        source: nn.Module = load_mae(folder)
        vit = source.vit
    elif config.get("num_register_tokens"):  # a leanmae classifier with registers, which ViTModel lacks
        source = load_pretrained(LeanViTClassifier, folder)
        vit = source.vit
    elif model_type in ("vit", LeanViTConfig.model_type):  # a leanmae classifier's encoder is a plain ViT's
        source = load_pretrained(ViTModel, folder, add_pooling_layer=False)
        vit = source
    else:
        raise CheckpointError(
            f"{folder}: model_type {model_type!r} is neither an MAE (vit_mae) nor a ViT (vit)"
        )
    return {f"vit.{k}": v for k, v in vit.state_dict().items()}, _shape(source.config)


def _shape(cfg: PretrainedConfig) -> dict[str, float]:
    """An encoder's shape, in ModelConfig's names, from its transformers config."""
    return {
        "patch_size": cfg.patch_size,
        "hidden_size": cfg.hidden_size,
        "depth": cfg.num_hidden_layers,
        "heads": cfg.num_attention_heads,
        "image_size": cfg.image_size,
        "mlp_ratio": cfg.intermediate_size / cfg.hidden_size,
        "num_register_tokens": getattr(cfg, "num_register_tokens", 0),
        "layer_norm_eps": cfg.layer_norm_eps,
    }


def own_shape(model: ModelConfig, folder: Path) -> ModelConfig | None:
    """``model`` at the shape of an encoder that brings its own: one labs already have (DINOv2, timm), or an
    MAE continued from one (``learned_positions``). None for leanmae's own MAEs and ViTs, which follow the
    preset: a mismatch there is a mistake that ``check_encoder_shape`` names."""
    if is_foundation(folder):
        return foundation_model(model, folder)
    if not check_model_folder(folder).get("learned_positions", False):
        return None
    # the shape from the config alone: build_classifier reads the weights once, later
    return dataclasses.replace(model, size="custom", **_shape(ViTMAEConfig.from_pretrained(folder)))


def encoder_of(folder: Path) -> LeanViTClassifier:
    """The encoder of an MAE or ViT folder at its own shape, under a head of no use: what embeds images
    where no preset says the shape (``leanmae select`` with an MAE)."""
    _, shape = encoder_weights(folder)
    return build_classifier(ModelConfig(**shape), ["unused", "head"], "mean", folder)


def build_classifier(
    model: ModelConfig, labels: list[str], pooling: str = "cls", init: str | Path | None = None
) -> LeanViTClassifier:
    """A classifier for ``labels``: random weights, or the encoder of the MAE/ViT folder ``init``.

    The encoder's patch size, width, depth and heads come from ``model``; a checkpoint that
    differs in any of them is an error naming both values. A different image size is fine: the
    position embeddings are interpolated to the new patch grid.
    """
    classifier = LeanViTClassifier(vit_config(model, labels, pooling))
    if init is None:
        return classifier
    weights, shape = encoder_weights(Path(init))
    check_encoder_shape(init, shape, model)
    key = "vit.embeddings.position_embeddings"
    weights[key] = interpolate_positions(weights[key], model.image_size // model.patch_size)
    own = classifier.state_dict()
    weights = {k: v for k, v in weights.items() if k in own}
    missing = [k for k in own if k.startswith("vit.") and k not in weights]
    if missing:
        raise CheckpointError(
            f"{init}: encoder weights missing from the checkpoint: {', '.join(missing[:4])}"
        )
    classifier.load_state_dict(weights, strict=False)
    return classifier


def add_drop_path(model: LeanViTClassifier, rate: float) -> None:
    """Stochastic depth: drop each block's attention / MLP branch per sample, rate rising linearly with
    depth."""
    if rate <= 0:
        return
    layers = model.vit.layers
    for i, layer in enumerate(layers):
        p = rate * i / max(1, len(layers) - 1)
        if p == 0:
            continue

        def hook(module: nn.Module, args: object, output: object, p: float = p) -> object:
            if not module.training:
                return output
            tensor = output[0] if isinstance(output, tuple) else output
            keep = torch.empty(tensor.shape[0], *([1] * (tensor.ndim - 1)), device=tensor.device).bernoulli_(
                1 - p
            ) / (1 - p)
            scaled = tensor * keep.to(tensor.dtype)
            return (scaled, *output[1:]) if isinstance(output, tuple) else scaled

        layer.attention.register_forward_hook(hook)
        layer.mlp.register_forward_hook(hook)


def layer_decay_scale(model: LeanViTClassifier, decay: float):
    """Layer-wise lr decay (BEiT/MAE): lr x decay^(depth + 1 - layer id); the head gets the full lr."""
    depth = model.config.num_hidden_layers

    def scale(name: str) -> float:
        if name.startswith("vit.embeddings"):
            layer = 0
        elif name.startswith("vit.layers."):
            layer = int(name.split(".")[2]) + 1
        else:
            layer = depth + 1
        return decay ** (depth + 1 - layer)

    return scale


def load_classifier(folder: Path) -> LeanViTClassifier:
    """A fine-tuned classifier saved by leanmae (pooling is read from its config.json); an MAE or bare encoder
    is refused."""
    require_kind(
        folder,
        ("classifier",),
        "predict and evaluate need a classifier (a `leanmae finetune` run or its model/)",
    )
    config = check_model_folder(folder)
    if config.get("model_type") == "vit":
        # Saved before classifiers had their own model type: the same weights and keys, read into
        # LeanViTConfig directly, so transformers does not warn that a `vit` config makes a `leanmae_vit`.
        return load_pretrained(LeanViTClassifier, folder, config=LeanViTConfig.from_dict(config))
    return load_pretrained(LeanViTClassifier, folder)
