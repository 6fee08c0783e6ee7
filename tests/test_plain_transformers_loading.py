"""A saved classifier gives the same predictions through plain transformers as through leanmae, or
transformers refuses to load it and says why.

A ``--pooling mean`` classifier reads the mean of its patch tokens through ``fc_norm``; loaded as
a plain ViT it read the CLS token and ignored ``fc_norm`` (0 of 6 top-1 predictions agreed), with
no warning. The folder now carries its own modeling file: with ``trust_remote_code=True``
transformers' auto classes and pipeline run leanmae's model, and without it transformers refuses.

Its preprocessor was ViTImageProcessor's, which squashes a non-square image to the input square
while leanmae crops its centre: the pipeline gave other probabilities on every non-square image. The
folder now carries its image processor too (image_processing_leanmae.py), which prepares images as
``leanmae predict`` does.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers.configuration_utils as configuration_utils
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline

import leanmae
from helpers import smooth_image, tiny_finetune
from leanmae.data.augment import normalize, resize, to_float
from leanmae.data.cache import finish_image, spec_from_extras
from leanmae.data.synthetic import WBC_CLASSES, make_synthetic_wbc
from leanmae.models.classifier import load_classifier
from leanmae.models.io import load_preprocessing, save_model

LABELS = list(WBC_CLASSES)


pytestmark = pytest.mark.usefixtures("hf_modules_under_tmp")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A two-epoch ``--pooling mean`` classifier on synthetic cells, and a few of its test images."""
    root = tmp_path_factory.mktemp("plain")
    data = make_synthetic_wbc(root / "cells", n_per_class=10, size=40)
    split = root / "split.csv"
    leanmae.split(data, classes=LABELS, out=split)
    tiny_finetune(split, root / "clf", epochs=2, pooling="mean")
    return {"model": root / "clf" / "model", "images": data}


def _pixels(folder: Path, images: Path) -> tuple[list[Image.Image], torch.Tensor]:
    pictures = [
        Image.open(p).convert("RGB") for label in LABELS for p in sorted((images / label).glob("*.png"))[:2]
    ]
    processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
    return pictures, processor(images=pictures, return_tensors="pt")["pixel_values"]


@torch.inference_mode()
def _leanmae_logits(folder: Path, pixels: torch.Tensor) -> torch.Tensor:
    return load_classifier(folder).eval()(pixel_values=pixels).logits


def test_the_folder_names_its_own_model_code_for_transformers(run: dict[str, Path]) -> None:
    folder = run["model"]
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "leanmae_vit" and config["pooling"] == "mean"
    assert config["auto_map"]["AutoModelForImageClassification"] == "modeling_leanmae_vit.LeanViTClassifier"
    assert config["auto_map"]["AutoConfig"] == "modeling_leanmae_vit.LeanViTConfig"
    processor = json.loads((folder / "preprocessor_config.json").read_text())
    assert processor["auto_map"]["AutoImageProcessor"] == "image_processing_leanmae.LeanImageProcessor"
    for name in ("modeling_leanmae_vit.py", "image_processing_leanmae.py"):
        tree = ast.parse((folder / name).read_text())
        imported = {
            (node.module if isinstance(node, ast.ImportFrom) else alias.name).split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, (ast.Import, ast.ImportFrom))
            for alias in node.names
        }
        allowed = {"__future__", "typing", "numpy", "PIL", "torch", "transformers"}
        assert imported <= allowed, f"{name}: the saved code must run without leanmae"


def test_auto_model_with_trust_remote_code_gives_exactly_leanmaes_logits(run: dict[str, Path]) -> None:
    folder = run["model"]
    _, pixels = _pixels(folder, run["images"])
    model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
    assert model.fc_norm is not None, "the mean-pooling head's LayerNorm is used"
    with torch.inference_mode():
        plain = model(pixel_values=pixels).logits
    ours = _leanmae_logits(folder, pixels)
    torch.testing.assert_close(plain, ours, rtol=0, atol=1e-6)
    assert not torch.allclose(ours[:, 0], ours[:, 1]), (
        "logits that differ between classes, or the test proves little"
    )


def test_the_pipeline_with_trust_remote_code_gives_leanmaes_predictions(run: dict[str, Path]) -> None:
    folder = run["model"]
    pictures, pixels = _pixels(folder, run["images"])
    classify = pipeline("image-classification", model=str(folder), trust_remote_code=True, top_k=None)
    probabilities = torch.softmax(_leanmae_logits(folder, pixels), dim=-1).numpy()
    for picture, ours in zip(pictures, probabilities, strict=True):
        scores = {row["label"]: row["score"] for row in classify(picture)}
        np.testing.assert_allclose([scores[label] for label in LABELS], ours, atol=1e-6)
        assert max(scores, key=scores.get) == LABELS[int(ours.argmax())]


def _non_square_pictures(count: int) -> list[Image.Image]:
    """Smooth random pictures of many shapes: tall and wide, from 3:1 to 1:3, smaller and larger than
    the model's working size, some square."""
    rng = np.random.default_rng(7)
    sides = [(int(rng.integers(9, 97)), int(rng.integers(9, 97))) for _ in range(count - 4)]
    sides += [(20, 60), (60, 20), (40, 40), (97, 31)]
    return [Image.fromarray(smooth_image(rng, height, width)) for height, width in sides]


def test_the_pipeline_gives_leanmae_predicts_probabilities_on_images_of_any_shape(
    run: dict[str, Path],
) -> None:
    folder = run["model"]
    pictures = _non_square_pictures(100)
    classify = pipeline("image-classification", model=str(folder), trust_remote_code=True, top_k=None)
    rows = leanmae.predict(folder, pictures, progress=False)
    ours = np.array([[row[f"p_{label}"] for label in LABELS] for row in rows])
    plain = np.array(
        [[{r["label"]: r["score"] for r in classify(p)}[label] for label in LABELS] for p in pictures]
    )
    np.testing.assert_allclose(plain, ours, rtol=0, atol=1e-5)
    assert ours.max(axis=1).min() < 0.99, "probabilities away from 0 and 1, or the test proves little"


@pytest.mark.parametrize("grey", [False, True])
def test_auto_image_processor_prepares_pixels_as_leanmae_does(
    run: dict[str, Path], tmp_path: Path, grey: bool
) -> None:
    """The same pixels to the last bit, in colour and for a model trained on greyscale inputs."""
    mean, std, extra = load_preprocessing(run["model"])
    folder = save_model(load_classifier(run["model"]), tmp_path / "model", mean, std, {**extra, "grey": grey})
    processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
    assert type(processor).__name__ == "LeanImageProcessor" and processor.grey is grey
    picture = _non_square_pictures(5)[-1]  # 97 x 31 px
    pixels = processor(images=picture, return_tensors="pt")["pixel_values"]
    size = json.loads((folder / "config.json").read_text())["image_size"]
    assert pixels.shape == (1, 3, size, size)
    square = np.stack(
        [finish_image(np.asarray(picture), spec_from_extras(load_preprocessing(folder)[2], size))]
    )
    expected = normalize(resize(to_float(square), size), mean, std)
    torch.testing.assert_close(pixels, expected, rtol=0, atol=0)


def test_a_model_that_decodes_with_a_cell_crop_is_refused_by_its_image_processor_saying_why(
    run: dict[str, Path], tmp_path: Path
) -> None:
    """A cell-centred crop (or stain normalisation) is leanmae's own code: the pipeline refuses rather than
    give other probabilities."""
    mean, std, extra = load_preprocessing(run["model"])
    save_model(load_classifier(run["model"]), tmp_path / "model", mean, std, {**extra, "cell_crop": 1.5})
    classify = pipeline("image-classification", model=str(tmp_path / "model"), trust_remote_code=True)
    with pytest.raises(ValueError, match="cell-centred crop.*leanmae.predict"):
        classify(_non_square_pictures(5)[0])


def test_loading_without_trust_remote_code_is_refused_by_transformers_saying_why(
    run: dict[str, Path],
) -> None:
    folder = run["model"]
    why = r"custom code.*trust_remote_code=True"  # transformers words it two ways (prompt or none)
    with pytest.raises(ValueError, match=why):
        AutoModelForImageClassification.from_pretrained(folder)
    with pytest.raises(ValueError, match=why):
        pipeline("image-classification", model=str(folder))


def test_leanmae_itself_loads_the_folder_without_running_its_code(run: dict[str, Path]) -> None:
    """leanmae imports its own copy of the class; the folder's file is never imported by leanmae."""
    model = load_classifier(run["model"])
    assert type(model).__module__ == "leanmae.models.modeling_leanmae_vit"
    rows = leanmae.predict(run["model"], [str(next((run["images"] / LABELS[0]).glob("*.png")))])
    assert rows[0]["predicted_label"] in LABELS


def test_a_classifier_saved_before_its_own_model_type_loads_silently_with_the_same_logits(
    run: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Folders written before ``leanmae_vit`` say ``model_type: vit`` (the label-honest study's runs):
    leanmae still reads them as its classifier, without transformers' warning about a `vit` config."""
    old = tmp_path / "old"
    old.mkdir()
    for item in run["model"].iterdir():
        if not item.name.endswith(".py"):
            (old / item.name).write_bytes(item.read_bytes())
    config = json.loads((old / "config.json").read_text())
    config["model_type"] = "vit"
    config.pop("auto_map")
    (old / "config.json").write_text(json.dumps(config))
    _, pixels = _pixels(run["model"], run["images"])
    warnings: list[str] = []
    monkeypatch.setattr(
        configuration_utils.logger, "warning", lambda message, *a, **k: warnings.append(message)
    )
    logits = _leanmae_logits(old, pixels)
    assert not [w for w in warnings if "leanmae_vit" in w], warnings
    assert torch.equal(logits, _leanmae_logits(run["model"], pixels))
