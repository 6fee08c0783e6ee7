"""Encoders labs already have as --init, without downloads: a small random DINOv2 saved by transformers, the
same weights in its authors' ``.pth`` names and in timm's names (safetensors). Each gives exactly the features
transformers' own Dinov2Model computes (LayerScale folded into the ViT), and fine-tunes at its own shape. The
same holds for DINOv2 with register tokens (Dinov2WithRegistersModel), whose classifier folder plain
transformers loads with the same logits; and an MAE's pretraining continues from such an encoder (without
registers), its encoder computing DINOv2's features before the first step."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file
from transformers import (
    AutoModelForImageClassification,
    Dinov2Config,
    Dinov2Model,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersModel,
)

import leanmae
from helpers import tiny_finetune, tiny_pretrain, write_images
from leanmae.config import ModelConfig
from leanmae.data.synthetic import make_synthetic_wbc
from leanmae.errors import CheckpointError
from leanmae.evaluation.reconstruction import mask_ratio
from leanmae.models import foundation
from leanmae.models.classifier import build_classifier, encoder_of, load_classifier
from leanmae.models.foundation import foundation_model
from leanmae.models.io import save_model
from leanmae.models.mae import build_mae, load_mae

SIZE, PATCH, REGISTERS = 32, 8, 4
FORMS = ["dinov2", "dinov2_authors.pth", "timm.safetensors"]
REGISTER_FORMS = ["dinov2", "dinov2_authors.pth", "timm.safetensors", "timm_no_embed_class.safetensors"]


def _dinov2(registers: int = 0) -> Dinov2Model | Dinov2WithRegistersModel:
    """A small random DINOv2 (with ``registers`` register tokens: Dinov2WithRegistersModel)."""
    torch.manual_seed(0)
    shape = {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": SIZE}
    if registers:
        model = Dinov2WithRegistersModel(
            Dinov2WithRegistersConfig(**shape, patch_size=PATCH, num_register_tokens=registers)
        )
    else:
        model = Dinov2Model(Dinov2Config(**shape, patch_size=PATCH, intermediate_size=512))
    with torch.no_grad():  # LayerScale away from 1 and registers away from 0, so that both are tested
        for layer in model.encoder.layer:
            layer.layer_scale1.lambda1.uniform_(0.1, 2.0)
            layer.layer_scale2.lambda1.uniform_(0.1, 2.0)
        if registers:
            model.embeddings.register_tokens.normal_()
    return model.eval()


def _authors_names(model: Dinov2Model, timm: bool, no_embed_class: bool = False) -> dict[str, torch.Tensor]:
    """The model's weights as DINOv2's own code (or timm, with its head and fc_norm) names them. timm gives
    registers position rows of their own (the registers' values split between token and row here), or,
    with ``no_embed_class``, gives CLS and registers none (CLS's folded into its token)."""
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
    registers = w.get("embeddings.register_tokens")
    if registers is not None:
        out["reg_token" if timm else "register_tokens"] = registers
    if timm:
        out.pop("mask_token")
        out |= {"head.weight": torch.zeros(10, 128), "head.bias": torch.zeros(10)}
    positions = out["pos_embed"]
    if timm and no_embed_class:
        out["cls_token"], out["pos_embed"] = out["cls_token"] + positions[:, :1], positions[:, 1:]
    elif timm and registers is not None:
        rows = torch.randn_like(registers)
        out["reg_token"] = registers - rows
        out["pos_embed"] = torch.cat([positions[:, :1], rows, positions[:, 1:]], dim=1)
    return out


def _save_forms(model: Dinov2Model, folder: Path) -> None:
    """The model as a transformers folder (with a processor), its authors' .pth and timm safetensors."""
    model.save_pretrained(folder / "dinov2")
    (folder / "dinov2" / "preprocessor_config.json").write_text(
        json.dumps(
            {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225], "crop_size": SIZE}
        )
    )
    torch.save(_authors_names(model, timm=False), folder / "dinov2_authors.pth")
    for name, no_embed_class in (("timm", False), ("timm_no_embed_class", True)):
        weights = _authors_names(model, timm=True, no_embed_class=no_embed_class)
        save_file({k: v.contiguous() for k, v in weights.items()}, folder / f"{name}.safetensors")


@pytest.fixture(scope="module")
def encoders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("encoders")
    model = _dinov2()
    _save_forms(model, root)
    return {"model": model, "root": root}


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The same forms of a DINOv2 with register tokens."""
    root = tmp_path_factory.mktemp("registers")
    model = _dinov2(REGISTERS)
    _save_forms(model, root)
    return {"model": model, "root": root}


@pytest.fixture(scope="module")
def cells_split(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cells")
    data = make_synthetic_wbc(root / "cells", n_per_class=6, size=40)
    split = root / "split.csv"
    leanmae.split(data, classes=["basophil", "eosinophil"], out=split)
    return split


@pytest.mark.parametrize("form", FORMS)
def test_each_format_gives_exactly_the_features_of_dinov2_itself(encoders: dict[str, Any], form: str) -> None:
    pixels = torch.randn(3, 3, SIZE, SIZE)
    with torch.no_grad():
        expected = encoders["model"](pixel_values=pixels).last_hidden_state
        ours = encoder_of(encoders["root"] / form).eval().vit(pixels).last_hidden_state
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


def test_a_dinov2_folder_fine_tunes_at_its_own_shape_input_size_and_normalisation(
    encoders: dict[str, Any], cells_split: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    tiny_finetune(cells_split, out, init=encoders["root"] / "dinov2", epochs=1)
    model = json.loads((out / "run.json").read_text())["config"]["model"]
    assert (model["patch_size"], model["hidden_size"], model["image_size"]) == (PATCH, 128, SIZE)
    assert model["layer_norm_eps"] == 1e-6
    processor = json.loads((out / "model" / "preprocessor_config.json").read_text())
    assert processor["image_std"] == [0.229, 0.224, 0.225]


@pytest.mark.parametrize("form", REGISTER_FORMS)
def test_each_format_with_register_tokens_gives_exactly_the_features_of_dinov2_with_registers(
    registered: dict[str, Any], form: str
) -> None:
    """Registers sit after CLS, before the patches; CLS pooling reads token 0, mean pooling patches only."""
    path = registered["root"] / form
    pixels = torch.randn(3, 3, SIZE, SIZE)
    mean_pooled = encoder_of(path).eval()
    model = foundation_model(ModelConfig(), path)
    assert model.num_register_tokens == REGISTERS
    cls_pooled = build_classifier(model, ["a", "b"], "cls", path).eval()
    with torch.no_grad():
        expected = registered["model"](pixel_values=pixels)
        patches = expected.last_hidden_state[:, 1 + REGISTERS :]
        ours = mean_pooled.vit(pixels).last_hidden_state
        torch.testing.assert_close(ours, expected.last_hidden_state, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(cls_pooled.features(pixels), expected.pooler_output, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(
            mean_pooled.features(pixels), mean_pooled.fc_norm(patches.mean(1)), atol=1e-5, rtol=1e-5
        )


def test_a_classifier_with_registers_saves_predicts_and_loads_in_plain_transformers_with_the_same_logits(
    registered: dict[str, Any], cells_split: Path, tmp_path: Path, hf_modules_under_tmp: None
) -> None:
    """A linear probe on the frozen encoder's mean-pooled features (computed once), saved as a classifier."""
    out = tmp_path / "run"
    metrics = tiny_finetune(
        cells_split, out, init=registered["root"] / "dinov2", epochs=1, linear_probe=True, pooling="mean"
    )
    assert 0 <= metrics["test"]["accuracy"] <= 1
    folder = out / "model"
    assert json.loads((folder / "config.json").read_text())["num_register_tokens"] == REGISTERS
    pixels = torch.randn(4, 3, SIZE, SIZE)
    plain = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
    classifier = load_classifier(folder).eval()
    with torch.no_grad():
        ours = classifier(pixel_values=pixels).logits
        torch.testing.assert_close(plain(pixel_values=pixels).logits, ours, rtol=0, atol=1e-6)
        hidden = classifier.vit(pixels).last_hidden_state
        again = (
            encoder_of(folder).eval().vit(pixels).last_hidden_state
        )  # the folder as an init, registers too
        torch.testing.assert_close(again, hidden, rtol=0, atol=0)
    image = next(cells_split.parent.glob("cells/basophil/*.png"))
    assert leanmae.predict(folder, [str(image)], progress=False)[0]["predicted_label"] in (
        "basophil",
        "eosinophil",
    )


def test_a_classifier_with_registers_exports_to_onnx_with_the_same_probabilities(
    registered: dict[str, Any], tmp_path: Path
) -> None:
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install -e '.[onnx]')")
    path = registered["root"] / "dinov2"
    classifier = build_classifier(foundation_model(ModelConfig(), path), ["a", "b"], "mean", path)
    extra = {"kind": "classifier", "labels": ["a", "b"]}
    save_model(classifier, tmp_path / "model", [0.5] * 3, [0.25] * 3, extra)
    info = leanmae.export(tmp_path / "model", tmp_path / "model.onnx")  # checked against PyTorch to 1e-4
    assert info["max_abs_diff"] < 1e-5


def test_a_swiglu_mlp_is_refused_in_one_line(encoders: dict[str, Any], tmp_path: Path) -> None:
    weights = _authors_names(encoders["model"], timm=False) | {"blocks.0.mlp.w12.weight": torch.zeros(8, 128)}
    torch.save(weights, tmp_path / "vit_g.pth")
    with pytest.raises(CheckpointError, match="SwiGLU"):
        encoder_of(tmp_path / "vit_g.pth")


def test_a_run_reads_the_file_once_for_the_shape_and_the_weights_and_again_once_it_changes(
    encoders: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "encoder.pth"
    shutil.copyfile(encoders["root"] / "dinov2_authors.pth", path)
    reads = []
    monkeypatch.setattr(foundation, "_read_state_dict", lambda p: reads.append(p) or torch.load(p))
    model = foundation_model(ModelConfig(), path)  # as fine-tuning does: the shape, then the classifier
    build_classifier(model, ["a", "b"], "cls", path)
    assert len(reads) == 1
    os.utime(path, ns=(1, 1))  # another file under the same name
    build_classifier(model, ["a", "b"], "cls", path)
    assert len(reads) == 2


def test_a_file_that_is_not_a_state_dict_is_refused_naming_it(tmp_path: Path) -> None:
    (tmp_path / "notes.pth").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="notes.pth"):
        encoder_of(tmp_path / "notes.pth")


def test_an_mae_started_from_dinov2_encodes_exactly_as_dinov2_before_its_first_step(
    encoders: dict[str, Any],
) -> None:
    path = encoders["root"] / "dinov2"
    mae = build_mae(foundation_model(ModelConfig(decoder_hidden_size=32, decoder_heads=2), path), path).eval()
    pixels = torch.randn(3, 3, SIZE, SIZE)
    in_order = torch.arange((SIZE // PATCH) ** 2, dtype=torch.float32).expand(3, -1)
    with torch.no_grad(), mask_ratio(mae, 0.0):
        ours = mae.vit(pixel_values=pixels, noise=in_order).last_hidden_state
        expected = encoders["model"](pixel_values=pixels).last_hidden_state
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)
    assert mae.config.decoder_hidden_size == 32, "the decoder is a new one, of the configured shape"


def test_pretraining_continues_from_a_dinov2_folder_at_its_shape_keeping_its_learned_positions(
    encoders: dict[str, Any], cells_split: Path, tmp_path: Path
) -> None:
    """The encoder's shape, input size and normalisation come from the folder; its position embeddings stay
    as DINOv2 learned them (frozen, as the MAE's own), also when the saved MAE is loaded again, and the
    continued MAE fine-tunes at that shape with no --set (the preset's shape is not the encoder's)."""
    write_images(tmp_path / "images", 8, 40)
    out = tmp_path / "run"
    tiny_pretrain(tmp_path / "images", out, init=encoders["root"] / "dinov2", epochs=1)
    model = json.loads((out / "run.json").read_text())["config"]["model"]
    assert (model["patch_size"], model["hidden_size"], model["depth"], model["image_size"]) == (
        PATCH,
        128,
        2,
        SIZE,
    )
    assert model["layer_norm_eps"] == 1e-6
    processor = json.loads((out / "model" / "preprocessor_config.json").read_text())
    assert processor["image_std"] == [0.229, 0.224, 0.225]
    learned = encoders["model"].embeddings.position_embeddings
    again = build_mae(ModelConfig(**model), out / "model")  # a next round of pretraining
    for mae in (load_mae(out / "model"), again, encoder_of(out / "model")):
        torch.testing.assert_close(mae.vit.embeddings.position_embeddings, learned)
    tiny_finetune(cells_split, tmp_path / "tuned", init=out / "model", epochs=1)
    tuned = json.loads((tmp_path / "tuned" / "run.json").read_text())["config"]["model"]
    assert {k: tuned[k] for k in ("patch_size", "hidden_size", "depth", "image_size")} == {
        k: model[k] for k in ("patch_size", "hidden_size", "depth", "image_size")
    }


def test_pretraining_from_an_encoder_with_registers_is_refused_in_one_line_before_writing(
    registered: dict[str, Any], tmp_path: Path
) -> None:
    write_images(tmp_path / "images", 4, 40)
    with pytest.raises(CheckpointError, match="no register tokens"):
        tiny_pretrain(tmp_path / "images", tmp_path / "run", init=registered["root"] / "dinov2_authors.pth")
    assert not (tmp_path / "run").exists()
