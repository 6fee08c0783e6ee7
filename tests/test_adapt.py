"""``leanmae adapt``: TENT on another lab's unlabelled images writes an adapted model folder, moving only the
LayerNorm parameters and reading no label of the new images."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import leanmae
from helpers import load_weights, tiny_finetune
from leanmae.cli import main
from leanmae.data.synthetic import make_synthetic_wbc
from leanmae.errors import DataError, OutputFolderError
from leanmae.training.tent import entropy, norm_parameters


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("adapt")
    data = make_synthetic_wbc(root / "cells", n_per_class=10, size=40)
    labels = sorted(p.name for p in data.iterdir() if p.is_dir())
    leanmae.split(data, classes=labels, out=root / "split.csv", ratios="0.6,0.2,0.2")
    tiny_finetune(root / "split.csv", root / "run", epochs=1)
    new_lab = make_synthetic_wbc(root / "new-lab", n_per_class=4, size=52, seed=11)
    return {"root": root, "run": root / "run", "new_lab": new_lab, "labels": labels}


def test_only_the_layernorm_scales_and_shifts_move(trained: dict[str, Any], tmp_path: Path) -> None:
    result = leanmae.adapt(trained["run"], [trained["new_lab"]], tmp_path / "a", steps=3, device="cpu")
    before, after = load_weights(trained["run"] / "model"), load_weights(tmp_path / "a" / "model")
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(("norm" in k) for k in changed), changed
    assert result["images"] == 20 and len(result["batch_entropy"]) == 3
    saved = json.loads((tmp_path / "a" / "adapt.json").read_text())
    assert saved["method"] == "tent" and saved["mean_entropy_after"] == result["mean_entropy_after"]
    assert (tmp_path / "a" / "model" / "shift_reference.safetensors").exists()


def test_adaptation_reads_no_label_of_the_new_images(trained: dict[str, Any], tmp_path: Path) -> None:
    """The same images, in the same order, under class folders that name the wrong class and under no class
    folder, adapt to the same weights."""
    scrambled, flat = tmp_path / "scrambled", tmp_path / "flat"
    files = sorted(trained["new_lab"].rglob("*.png"))
    order = np.random.default_rng(0).permutation(len(files))  # classes mixed across the folders
    per_folder = len(files) // len(trained["labels"])
    for i, j in enumerate(order):
        folder = scrambled / trained["labels"][i // per_folder]
        folder.mkdir(parents=True, exist_ok=True)
        flat.mkdir(exist_ok=True)
        shutil.copy(files[j], folder / f"{i:03d}.png")
        shutil.copy(files[j], flat / f"{i:03d}.png")
    for name, folder in (("a", scrambled), ("b", flat)):
        leanmae.adapt(trained["run"], [folder], tmp_path / name, steps=2, device="cpu")
    a, b = load_weights(tmp_path / "a" / "model"), load_weights(tmp_path / "b" / "model")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_adapted_model_is_evaluated_like_any_other(trained: dict[str, Any], tmp_path: Path) -> None:
    assert main(["adapt", str(trained["run"]), str(trained["new_lab"]), "--out", str(tmp_path / "a"),
                 "--steps", "2", "--device", "cpu"]) == 0  # fmt: skip
    report = leanmae.evaluate(tmp_path / "a", data=trained["new_lab"], out=tmp_path / "e", device="cpu")
    assert report["images"] == 20


def test_entropy_minimisation_lowers_the_entropy_on_a_fixed_batch() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 4))
    x = torch.randn(32, 8)
    params = norm_parameters(model)
    assert len(params) == 2 and not any(p.requires_grad for p in model[0].parameters())
    optimizer = torch.optim.Adam(params, lr=1e-2)
    start = float(entropy(model(x)).detach())
    for _ in range(20):
        optimizer.zero_grad()
        entropy(model(x)).backward()
        optimizer.step()
    assert float(entropy(model(x)).detach()) < start


def test_bad_settings_and_a_run_folder_as_out_are_refused(trained: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(DataError, match="steps"):
        leanmae.adapt(trained["run"], [trained["new_lab"]], tmp_path / "a", steps=0, device="cpu")
    with pytest.raises(OutputFolderError, match="holds a leanmae run"):
        leanmae.adapt(trained["run"], [trained["new_lab"]], trained["run"], steps=1, device="cpu")
