"""Encoders labs already have as --init, without downloads: a small random DINOv2 saved by transformers, the
same weights in its authors' ``.pth`` names and in timm's names (safetensors). Each gives exactly the features
transformers' own Dinov2Model computes (LayerScale folded into the ViT), and fine-tunes at its own shape."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file
from transformers import Dinov2Config, Dinov2Model

import leanmae
from helpers import tiny_finetune
from leanmae.data.synthetic import make_synthetic_wbc
from leanmae.errors import CheckpointError
from leanmae.models.classifier import encoder_of

SIZE, PATCH = 32, 8


def _dinov2() -> Dinov2Model:
    torch.manual_seed(0)
    config = Dinov2Config(
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=512,
        image_size=SIZE,
        patch_size=PATCH,
    )
    model = Dinov2Model(config).eval()
    with torch.no_grad():  # LayerScale away from 1, so that folding it is tested
        for layer in model.encoder.layer:
            layer.layer_scale1.lambda1.uniform_(0.1, 2.0)
            layer.layer_scale2.lambda1.uniform_(0.1, 2.0)
    return model


def _authors_names(model: Dinov2Model, timm: bool) -> dict[str, torch.Tensor]:
    """The model's weights as DINOv2's own code (or timm, with its head and fc_norm) names them."""
    w = model.state_dict()
    out = {
        "cls_token": w["embeddings.cls_token"],
        "pos_embed": w["embeddings.position_embeddings"],
        "mask_token": w["embeddings.mask_token"][0],
        "patch_embed.proj.weight": w["embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": w["embeddings.patch_embeddings.projection.bias"],
        "norm.weight": w["layernorm.weight"],
        "norm.bias": w["layernorm.bias"],
    }
    for i in range(len(model.encoder.layer)):
        src, dst = f"encoder.layer.{i}.", f"blocks.{i}."
        for end in ("weight", "bias"):
            out[f"{dst}attn.qkv.{end}"] = torch.cat([w[f"{src}attention.{n}_proj.{end}"] for n in "qkv"])
            for old, new in (("norm1", "norm1"), ("norm2", "norm2"), ("attention.o_proj", "attn.proj")):
                out[f"{dst}{new}.{end}"] = w[f"{src}{old}.{end}"]
            for fc in ("fc1", "fc2"):
                out[f"{dst}mlp.{fc}.{end}"] = w[f"{src}mlp.{fc}.{end}"]
        out[f"{dst}ls1.gamma"] = w[f"{src}layer_scale1.lambda1"]
        out[f"{dst}ls2.gamma"] = w[f"{src}layer_scale2.lambda1"]
    if timm:
        out.pop("mask_token")
        out |= {"head.weight": torch.zeros(10, 128), "head.bias": torch.zeros(10)}
    return out


@pytest.fixture(scope="module")
def encoders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("encoders")
    model = _dinov2()
    model.save_pretrained(root / "dinov2")
    (root / "dinov2" / "preprocessor_config.json").write_text(
        json.dumps(
            {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225], "crop_size": SIZE}
        )
    )
    torch.save(_authors_names(model, timm=False), root / "dinov2_authors.pth")
    save_file(
        {k: v.contiguous() for k, v in _authors_names(model, timm=True).items()}, root / "timm.safetensors"
    )
    return {"model": model, "root": root}


@pytest.mark.parametrize("form", ["dinov2", "dinov2_authors.pth", "timm.safetensors"])
def test_each_format_gives_exactly_the_features_of_dinov2_itself(encoders: dict[str, Any], form: str) -> None:
    pixels = torch.randn(3, 3, SIZE, SIZE)
    with torch.no_grad():
        expected = encoders["model"](pixel_values=pixels).last_hidden_state
        ours = encoder_of(encoders["root"] / form).eval().vit(pixels).last_hidden_state
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


def test_a_dinov2_folder_fine_tunes_at_its_own_shape_input_size_and_normalisation(
    encoders: dict[str, Any], tmp_path: Path
) -> None:
    data = make_synthetic_wbc(tmp_path / "cells", n_per_class=6, size=40)
    split = tmp_path / "split.csv"
    leanmae.split(data, classes=["basophil", "eosinophil"], out=split)
    out = tmp_path / "run"
    tiny_finetune(split, out, init=encoders["root"] / "dinov2", epochs=1)
    model = json.loads((out / "run.json").read_text())["config"]["model"]
    assert (model["patch_size"], model["hidden_size"], model["image_size"]) == (PATCH, 128, SIZE)
    assert model["layer_norm_eps"] == 1e-6
    processor = json.loads((out / "model" / "preprocessor_config.json").read_text())
    assert processor["image_std"] == [0.229, 0.224, 0.225]


def test_register_tokens_are_refused_in_one_line(encoders: dict[str, Any], tmp_path: Path) -> None:
    weights = _authors_names(encoders["model"], timm=False) | {"register_tokens": torch.zeros(1, 4, 128)}
    torch.save(weights, tmp_path / "with_registers.pth")
    with pytest.raises(CheckpointError, match="register tokens"):
        encoder_of(tmp_path / "with_registers.pth")


def test_a_file_that_is_not_a_state_dict_is_refused_naming_it(tmp_path: Path) -> None:
    (tmp_path / "notes.pth").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="notes.pth"):
        encoder_of(tmp_path / "notes.pth")
