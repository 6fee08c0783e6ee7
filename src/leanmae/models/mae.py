"""The masked autoencoder: transformers' ViTMAEForPreTraining, built from a ModelConfig.

Using the transformers model (rather than a copy of models_mae.py) means every checkpoint
leanmae writes is a plain ``save_pretrained`` folder (config.json + model.safetensors) that
transformers, and any tool built on it, loads directly; measured here it trains as fast as a
hand-written MAE. Weights are only ever read from safetensors (or, for an encoder labs already
have, as ``leanmae.models.foundation`` reads it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import ViTMAEConfig, ViTMAEForPreTraining
from transformers.models.vit_mae.modeling_vit_mae import (
    build_2d_sinusoidal_position_embedding,
)

from leanmae.config import ModelConfig
from leanmae.data.rand import MASK_STREAM, uniform
from leanmae.errors import CheckpointError
from leanmae.models.foundation import foundation_weights, is_foundation
from leanmae.models.io import load_pretrained, require_kind


def mae_config(model: ModelConfig) -> ViTMAEConfig:
    if model.image_size % model.patch_size:
        raise CheckpointError(
            f"model.image_size {model.image_size} is not a multiple of model.patch_size {model.patch_size}"
        )
    if model.hidden_size % model.heads or model.decoder_hidden_size % model.decoder_heads:
        raise CheckpointError("hidden sizes must be multiples of their number of attention heads")
    if model.num_register_tokens:
        raise CheckpointError(
            f"model.num_register_tokens is {model.num_register_tokens}: leanmae's MAE (transformers' ViTMAE) "
            "has no register tokens; fine-tune an encoder with registers directly (finetune --init)"
        )
    return ViTMAEConfig(
        **encoder_kwargs(model),
        decoder_hidden_size=model.decoder_hidden_size,
        decoder_num_hidden_layers=model.decoder_depth,
        decoder_num_attention_heads=model.decoder_heads,
        decoder_intermediate_size=int(model.decoder_hidden_size * model.mlp_ratio),
        mask_ratio=model.mask_ratio,
        norm_pix_loss=model.norm_pix_loss,
    )


def encoder_kwargs(model: ModelConfig) -> dict[str, object]:
    """The encoder's shape in transformers' names, shared by the MAE and the classifier configs."""
    return {
        "image_size": model.image_size,
        "patch_size": model.patch_size,
        "hidden_size": model.hidden_size,
        "num_hidden_layers": model.depth,
        "num_attention_heads": model.heads,
        "intermediate_size": int(model.hidden_size * model.mlp_ratio),
        "layer_norm_eps": model.layer_norm_eps,
        "attn_implementation": "sdpa",
    }


def check_encoder_shape(init: str | Path, shape: dict[str, float], model: ModelConfig) -> None:
    """The encoder weights at ``init`` (``shape``) fit ``model``, or a CheckpointError names both values."""
    wanted = {
        "patch_size": model.patch_size,
        "hidden_size": model.hidden_size,
        "depth": model.depth,
        "heads": model.heads,
        "num_register_tokens": model.num_register_tokens,
        "layer_norm_eps": model.layer_norm_eps,  # another epsilon runs, with other features
    }
    for key, value in wanted.items():
        if shape[key] != value:
            raise CheckpointError(
                f"{init}: the checkpoint's {key} is {shape[key]} but the preset/config asks for "
                f"{value}; use the preset the MAE was pretrained with (or --set model.{key}={shape[key]})"
            )


def interpolate_positions(weight: torch.Tensor, grid: int) -> torch.Tensor:
    """Resize (1, 1 + g*g, D) position embeddings to a ``grid`` x ``grid`` patch grid (bicubic, as timm/MAE
    do)."""
    cls, patches = weight[:, :1], weight[:, 1:]
    old = int(patches.shape[1] ** 0.5)
    if old == grid:
        return weight
    patches = patches.reshape(1, old, old, -1).permute(0, 3, 1, 2)
    patches = F.interpolate(patches.float(), size=(grid, grid), mode="bicubic", align_corners=False)
    return torch.cat([cls, patches.permute(0, 2, 3, 1).reshape(1, grid * grid, -1).to(weight.dtype)], dim=1)


def build_mae(model: ModelConfig, init: str | Path | None = None) -> ViTMAEForPreTraining:
    """A fresh MAE, one whose weights start from the local MAE folder ``init``, or one whose encoder starts
    from an encoder labs already have (``init`` a DINOv2 folder or a state dict: ``_from_encoder``).

    The folder's encoder and decoder must have the configured shapes: a different patch size or
    width is an error naming both, never a silent partial load.
    """
    config = mae_config(model)
    if init is None:
        return set_fixed_positions(init_mae_weights(ViTMAEForPreTraining(config)))
    folder = Path(init)
    if is_foundation(folder):
        return _from_encoder(model, config, folder)
    require_kind(
        folder, ("mae",), "--init of pretraining needs an MAE folder, a DINOv2 folder or a state dict"
    )
    saved = ViTMAEConfig.from_pretrained(folder)
    for key in (
        "patch_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "decoder_hidden_size",
        "decoder_num_hidden_layers",
    ):
        if getattr(saved, key) != getattr(config, key):
            raise CheckpointError(
                f"{folder}: {key} is {getattr(saved, key)} in the checkpoint but "
                f"{getattr(config, key)} in this config"
            )
    if getattr(saved, "learned_positions", False):  # an MAE continued from an encoder (``_from_encoder``)
        config.learned_positions = True
    return set_fixed_positions(load_pretrained(ViTMAEForPreTraining, folder, config=config))


def _from_encoder(model: ModelConfig, config: ViTMAEConfig, path: Path) -> ViTMAEForPreTraining:
    """Continued pretraining: the encoder at ``path`` with a new decoder (the MAE paper's initialisation).

    The encoder keeps the position embeddings it learned (resized to the input's grid as fine-tuning
    does), frozen as the MAE keeps its own: the sine-cosine table would be another encoding than the one
    its weights were trained with. ``learned_positions`` in the config keeps every later load from
    writing that table over them (``set_fixed_positions``).
    """
    weights, shape = foundation_weights(path)
    check_encoder_shape(path, shape, model)
    config.learned_positions = True
    mae = set_fixed_positions(init_mae_weights(ViTMAEForPreTraining(config)))
    key = "embeddings.position_embeddings"
    weights[key] = interpolate_positions(weights[key], model.image_size // model.patch_size)
    missing, unexpected = mae.vit.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: its encoder does not fit the MAE's (missing {', '.join(missing[:3]) or 'none'}; "
            f"unexpected {', '.join(unexpected[:3]) or 'none'})"
        )
    return mae


def init_mae_weights(mae: ViTMAEForPreTraining) -> ViTMAEForPreTraining:
    """The MAE paper's initialisation (``models_mae.py``: ``initialize_weights``, ``_init_weights``).

    Why: transformers 5 builds a fresh ViTMAEForPreTraining with its generic ViT init (every
    linear layer N(0, 0.02)) and, because the patch projection is flagged as initialised, it skips
    the MAE's own embedding init, leaving a zero CLS token and mask token. The paper uses Xavier-
    uniform for every linear layer and for the patch projection (viewed as a linear layer),
    N(0, 0.02) for the CLS and mask tokens, and LayerNorm at weight 1, bias 0.
    """
    std = mae.config.initializer_range
    with torch.no_grad():
        for module in mae.modules():
            if isinstance(module, torch.nn.Linear):
                torch.nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, torch.nn.LayerNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()
        weight = mae.vit.embeddings.patch_embeddings.projection.weight
        torch.nn.init.xavier_uniform_(weight.view(weight.shape[0], -1))
        mae.vit.embeddings.patch_embeddings.projection.bias.zero_()
        torch.nn.init.normal_(mae.vit.embeddings.cls_token, std=std)
        torch.nn.init.normal_(mae.decoder.mask_token, std=std)
    return mae


def load_mae(
    folder: str | Path, needs: str = "this command needs an MAE (a `leanmae pretrain` run or its model/)"
) -> ViTMAEForPreTraining:
    """A saved MAE (safetensors only, every weight present), with its fixed position embeddings made right."""
    require_kind(Path(folder), ("mae",), needs)
    return set_fixed_positions(load_pretrained(ViTMAEForPreTraining, Path(folder)))


def sincos_positions(grid: int, dim: int) -> torch.Tensor:
    """The MAE's fixed 2-D sine-cosine position embedding (1, 1 + grid*grid, dim), with a zero CLS row.

    Laid out as transformers' pretrained ViT-MAE checkpoints are (width block before height block).
    """
    table = build_2d_sinusoidal_position_embedding(height=grid, width=grid, embed_dim=dim, cls_token=True)
    half = table.shape[-1] // 2
    return torch.cat([table[..., half:], table[..., :half]], dim=-1).unsqueeze(0)


def set_fixed_positions(mae: ViTMAEForPreTraining) -> ViTMAEForPreTraining:
    """Write the fixed sine-cosine position embeddings into encoder and decoder.

    Why: in transformers 5.x a freshly built ViTMAEForPreTraining leaves both (frozen) position
    embeddings at zero (its weight-init pass skips them), so the decoder cannot tell masked patches
    apart and learns to paint every one with the image's mean colour (measured here: reconstructions
    were flat and validation loss stalled from the 4th epoch). The embeddings are a fixed function of
    the patch grid, never trained, so writing them is right for loaded checkpoints too; except the
    encoder's of an MAE started from an encoder with learned ones (``learned_positions``), kept as saved.
    """
    grid = mae.config.image_size // mae.config.patch_size
    with torch.no_grad():
        if not getattr(mae.config, "learned_positions", False):
            mae.vit.embeddings.position_embeddings.copy_(sincos_positions(grid, mae.config.hidden_size))
        mae.decoder.decoder_pos_embed.copy_(sincos_positions(grid, mae.config.decoder_hidden_size))
    return mae


def num_patches(config: ViTMAEConfig) -> int:
    return (config.image_size // config.patch_size) ** 2


def masking_noise(
    seed: int, epoch: int, ids: np.ndarray, config: ViTMAEConfig, device: torch.device | str
) -> torch.Tensor:
    """Noise that decides which patches of each image are masked, keyed by (seed, epoch, image id)."""
    draws = uniform(seed, epoch, ids, num_patches(config), stream=MASK_STREAM)
    return torch.as_tensor(draws, dtype=torch.float32).to(device)
