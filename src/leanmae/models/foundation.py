"""Encoders labs already have, as a ViT leanmae fine-tunes: DINOv2 (a transformers ``dinov2`` folder, or its
authors' ``.pth``), and timm ViT state dicts (``.safetensors``, or ``.bin`` / ``.pth`` read with
``weights_only=True``). DinoBloom, UNI, Phikon-v2 and an ImageNet ViT come in these forms; nothing is
downloaded, the user brings the folder or file.

Why convert rather than add architectures: these encoders are ViTs. Their one difference, LayerScale (a
learned per-channel factor on each block's attention and MLP output), is a linear map. Folding it into the
attention's output projection and the MLP's second layer gives exactly the same function with transformers'
plain ViT weights. So the classifier, its saved folder and its remote code stay one architecture. Register
tokens (DINOv2 with registers, timm's ``reg_token``) are learned tokens that leanmae's ViT places as DINOv2
does (``modeling_leanmae_vit``); a position embedding that timm gives them is added to them here, which is
the same sum. What cannot be expressed is refused in one line: SwiGLU MLPs (ViT-g). The encoder's shape
is read from the weights: patch size, width, depth, MLP ratio and registers from the tensors, the heads
from the config (a state dict has none: width / 64, the head size of every DINOv2 and timm ViT).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from leanmae.config import ModelConfig
from leanmae.errors import CheckpointError

STATE_DICT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
FOUNDATION_TYPES = ("dinov2", "dinov2_with_registers")
HEAD_SIZE = 64
EPS = 1e-6  # DINOv2's and timm's LayerNorm epsilon


def is_foundation(path: Path) -> bool:
    """Whether ``path`` is a state-dict file or a transformers DINOv2 folder (not a leanmae or ViT one)."""
    if path.is_file():
        return path.suffix in STATE_DICT_SUFFIXES
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):  # no folder or no readable config: check_model_folder says which
        return False
    return isinstance(config, dict) and config.get("model_type") in FOUNDATION_TYPES


def foundation_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """The encoder at ``path`` as transformers ViT weights (without the ``vit.`` prefix), and its shape.

    Read once per version of the file: a run asks for the shape (``foundation_model``), then for the
    weights (``build_classifier``, ``build_mae``), and a large encoder takes seconds to read and convert.
    The last encoder read is kept; each call gets new dicts of its tensors, which callers copy into a model.
    """
    file = path if path.is_file() else path / "model.safetensors"
    version = file.stat().st_mtime_ns if file.exists() else None  # a missing file: _read_encoder says so
    weights, shape = _read_encoder(path, version)
    return dict(weights), dict(shape)


@functools.lru_cache(maxsize=1)
def _read_encoder(path: Path, version: int | None) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    if path.is_file():
        weights, heads, size = _from_state_dict(path, _read_state_dict(path)), None, None
    else:
        weights, heads, size = _from_transformers(path)
    width, patch = weights["embeddings.patch_embeddings.projection.weight"].shape[::3]
    grid = int((weights["embeddings.position_embeddings"].shape[1] - 1) ** 0.5)
    registers = weights.get("embeddings.register_tokens")
    shape = {
        "patch_size": patch,
        "hidden_size": width,
        "depth": len({k.split(".")[1] for k in weights if k.startswith("layers.")}),
        "heads": heads or width // HEAD_SIZE,
        "mlp_ratio": weights["layers.0.mlp.fc1.weight"].shape[0] / width,
        "image_size": size or grid * patch,  # a state dict's own size: the grid its positions were trained on
        "layer_norm_eps": EPS,
        "num_register_tokens": 0 if registers is None else registers.shape[1],
    }
    return weights, shape


def foundation_model(model: ModelConfig, path: Path) -> ModelConfig:
    """``model`` with the encoder's own shape, input size and LayerNorm epsilon: a DINOv2 ViT-S/14 is
    fine-tuned as it was trained, not at a preset's 64 px in 8 px patches."""
    _, shape = foundation_weights(path)
    return dataclasses.replace(model, size="custom", **shape)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from safetensors, or a pickle file read with ``weights_only=True`` (tensors, no code)."""
    try:
        if path.suffix == ".safetensors":
            return load_file(path)
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - every reader error means the same thing to the user
        raise CheckpointError(f"{path}: not a readable state dict ({type(err).__name__}: {err})") from None
    for key in ("model", "state_dict", "teacher", "student"):  # training checkpoints wrap the weights
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            loaded = loaded[key]
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise CheckpointError(f"{path}: holds no state dict of tensors")
    return loaded


# A transformers (hub) DINOv2 block's modules by the names of transformers' ViT in memory, which
# ``encoder_weights`` returns for every other encoder too.
_BLOCK_NAMES = {
    "norm1": "layernorm_before",
    "norm2": "layernorm_after",
    "attention.attention.query": "attention.q_proj",
    "attention.attention.key": "attention.k_proj",
    "attention.attention.value": "attention.v_proj",
    "attention.output.dense": "attention.o_proj",
}


def _from_transformers(folder: Path) -> tuple[dict[str, torch.Tensor], int, int]:
    """A transformers ``dinov2`` folder's weights in ViT names, its heads and its input size."""
    config = json.loads((folder / "config.json").read_text())
    if config.get("use_swiglu_ffn"):
        raise CheckpointError(f"{folder}: a SwiGLU MLP (DINOv2 ViT-g); leanmae's ViT has a GELU MLP")
    if not (folder / "model.safetensors").is_file():
        raise CheckpointError(f"{folder}: missing model.safetensors (leanmae reads safetensors only)")
    prefix = f"{config['model_type']}."  # a model with a head (...ForImageClassification) nests the encoder
    source = {k.removeprefix(prefix): v for k, v in load_file(folder / "model.safetensors").items()}
    weights: dict[str, torch.Tensor] = {}
    for key, value in source.items():
        if key.startswith("encoder.layer."):
            _, _, layer, rest = key.split(".", 3)
            module, end = rest.rsplit(".", 1)
            weights[f"layers.{layer}.{_BLOCK_NAMES.get(module, module)}.{end}"] = value
        elif key.startswith(("embeddings.", "layernorm.")) and key != "embeddings.mask_token":
            weights[key] = value
    for layer in {k.split(".")[1] for k in weights if k.startswith("layers.")}:
        _fold(
            weights, f"layers.{layer}.attention.o_proj", weights.pop(f"layers.{layer}.layer_scale1.lambda1")
        )
        _fold(weights, f"layers.{layer}.mlp.fc2", weights.pop(f"layers.{layer}.layer_scale2.lambda1"))
    processor = folder / "preprocessor_config.json"
    crop = json.loads(processor.read_text()).get("crop_size", {}) if processor.is_file() else {}
    size = crop.get("height", crop) if isinstance(crop, dict) else crop
    return weights, int(config["num_attention_heads"]), int(size) if size else int(config["image_size"])


def _from_state_dict(path: Path, source: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A DINOv2 (its authors' code) or timm ViT state dict in ViT names, LayerScale folded in."""
    prefix = next((k[: -len("cls_token")] for k in source if k.endswith("cls_token")), None)
    if prefix is None:
        raise CheckpointError(f"{path}: no cls_token: not a ViT state dict in DINOv2's or timm's names")
    source = {k[len(prefix) :]: v for k, v in source.items() if k.startswith(prefix)}
    if any(".w12." in k or ".w3." in k for k in source):
        raise CheckpointError(f"{path}: a SwiGLU MLP (DINOv2 ViT-g); leanmae's ViT has a GELU MLP")
    registers = source.get("register_tokens", source.get("reg_token"))  # DINOv2's name, timm's name
    positions, registers = _cls_and_patch_positions(path, source["pos_embed"], registers)
    weights = {
        "embeddings.cls_token": source["cls_token"],
        "embeddings.position_embeddings": positions,
        "embeddings.patch_embeddings.projection.weight": source["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.projection.bias": source["patch_embed.proj.bias"],
        "layernorm.weight": source["norm.weight"],
        "layernorm.bias": source["norm.bias"],
    }
    names = {"norm1": "layernorm_before", "norm2": "layernorm_after", "attn.proj": "attention.o_proj"}
    for layer in sorted({int(k.split(".")[1]) for k in source if k.startswith("blocks.")}):
        block, out = f"blocks.{layer}.", f"layers.{layer}."
        for end in ("weight", "bias"):
            parts = source[f"{block}attn.qkv.{end}"].chunk(3)  # timm and DINOv2 fuse q, k and v
            weights |= {f"{out}attention.{n}_proj.{end}": t for n, t in zip("qkv", parts, strict=True)}
            for old, new in (*names.items(), ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")):
                weights[f"{out}{new}.{end}"] = source[f"{block}{old}.{end}"]
        for scale, target in (("ls1", "attention.o_proj"), ("ls2", "mlp.fc2")):
            if f"{block}{scale}.gamma" in source:
                _fold(weights, f"{out}{target}", source[f"{block}{scale}.gamma"])
    if registers is not None:
        weights["embeddings.register_tokens"] = registers
    return weights


def _cls_and_patch_positions(
    path: Path, positions: torch.Tensor, registers: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Position embeddings as (1, 1 + patches, D) rows for CLS and the patches, and the registers.

    DINOv2 gives CLS and the patches positions; timm with ``no_embed_class`` the patches only (CLS gets a
    zero row); timm without it also the registers, whose rows are added to the tokens themselves (a
    register's position never changes, so token + position is one learned vector).
    """
    count = 0 if registers is None else registers.shape[1]
    rows = positions.shape[1]
    prefix = next(
        (n for n in (1, 0, 1 + count) if rows > n and int((rows - n) ** 0.5) ** 2 == rows - n), None
    )
    if prefix is None:
        raise CheckpointError(f"{path}: pos_embed has {rows} rows, which fit no square grid of patches")
    if prefix == 0:
        return torch.cat([torch.zeros_like(positions[:, :1]), positions], dim=1), registers
    if prefix > 1:  # timm's rows of the registers
        registers = registers + positions[:, 1:prefix]
    return torch.cat([positions[:, :1], positions[:, prefix:]], dim=1), registers


def _fold(weights: dict[str, torch.Tensor], linear: str, scale: torch.Tensor) -> None:
    """``scale * linear(x)`` as one linear layer: its output rows and bias multiplied by ``scale``."""
    weights[f"{linear}.weight"] = weights[f"{linear}.weight"] * scale[:, None]
    weights[f"{linear}.bias"] = weights[f"{linear}.bias"] * scale
