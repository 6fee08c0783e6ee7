"""Fine-tuning that chooses its labels (``classifier.selection``) and learns from the unlabelled train images
(``classifier.semi=fixmatch``): selection reads no label and spends no more labels than the stratified draw;
FixMatch never sees a validation or test image, and a resumed run is exact."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import leanmae
from helpers import assert_same_weights, interrupt_after_epoch, load_weights, tiny_finetune
from leanmae.commands.finetune import finetune_task
from leanmae.config import FinetuneConfig, resolve
from leanmae.data.cache import DecodeSpec
from leanmae.data.labelled import load_labelled
from leanmae.data.synthetic import make_synthetic_wbc
from leanmae.errors import ConfigError
from leanmae.models.classifier import build_classifier
from leanmae.models.io import save_model
from leanmae.models.mae import build_mae
from leanmae.training.distributed import setup
from leanmae.training.fixmatch import fixmatch_loss

LABELS = ["basophil", "eosinophil", "lymphocyte"]
SEMI = ["classifier.semi=fixmatch", "classifier.semi_threshold=0.0", "classifier.drop_path=0.1"]


@pytest.fixture(scope="module")
def cells(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("cells")
    data = make_synthetic_wbc(root / "cells", n_per_class=20, size=40)
    split = root / "split.csv"
    leanmae.split(data, classes=LABELS, out=split)
    torch.manual_seed(0)
    config = resolve(FinetuneConfig, "finetune", "test", None, {})
    mae = save_model(build_mae(config.model), root / "mae", [0.5] * 3, [0.25] * 3, {"kind": "mae"})
    return {"root": root, "split": split, "mae": mae}


def _task(cells: dict[str, Any], sets: list[str], passes: int = 1) -> tuple[Any, Any]:
    cfg = resolve(FinetuneConfig, "finetune", "test", None, {}, ["run.device=cpu", *sets])
    ctx = setup("cpu")
    data = load_labelled(
        cells["split"], data_root=None, fraction=0.25, seed=0, spec=DecodeSpec(size=40), cfg=cfg, ctx=ctx
    )
    model = build_classifier(cfg.model, data.labels, "mean")
    _, task = finetune_task(
        model,
        data,
        cfg=cfg,
        mean=[0.5] * 3,
        std=[0.25] * 3,
        ctx=ctx,
        batch_size=2,
        passes_per_epoch=passes,
        sample_weight=None,
        class_weight=None,
    )
    return data, task


def test_fixmatch_learns_only_from_train_images_without_a_label_in_this_run(cells: dict[str, Any]) -> None:
    data, task = _task(cells, SEMI)
    unlabelled = np.concatenate([step.unlabelled for epoch in range(3) for step in task.batches(epoch)])
    train = set(data.all_of("train").tolist())
    assert set(unlabelled.tolist()) <= train - set(data.index["train"].tolist())
    held_out = set(data.index["val"].tolist()) | set(data.index["test"].tolist())
    assert not set(unlabelled.tolist()) & held_out
    assert all(len(step.unlabelled) == 2 * len(step.labelled) for step in task.batches(0))


def test_each_pass_of_an_epoch_draws_new_augmentations(cells: dict[str, Any]) -> None:
    """Small fractions repeat passes to reach min_steps; each repeated pass used to get the same crops."""
    data, task = _task(cells, [], passes=2)
    steps = task.batches(0)
    first, second = steps[0], next(s for s in steps if s.key == 1)
    image = int(first.labelled[0])
    again = next(s for s in steps[len(steps) // 2 :] if image in s.labelled)
    views = [task.prepare(step, 0)[0][list(step.labelled).index(image)] for step in (first, again)]
    assert second.key == 1 and not torch.equal(views[0], views[1])


def test_the_fixmatch_loss_adds_only_confident_unlabelled_images() -> None:
    torch.manual_seed(0)
    cfg = resolve(FinetuneConfig, "finetune", "test", None, {})
    model = build_classifier(cfg.model, LABELS, "mean").eval()
    size = cfg.model.image_size
    labelled, weak, strong = (torch.randn(n, 3, size, size) for n in (2, 4, 4))
    targets = torch.eye(3)[[0, 1]]
    supervised = torch.nn.functional.cross_entropy(model(pixel_values=labelled).logits, targets)
    nobody_sure = fixmatch_loss(model, labelled, targets, weak, strong, threshold=1.01, weight=1.0)
    everyone = fixmatch_loss(model, labelled, targets, weak, strong, threshold=0.0, weight=1.0)
    assert nobody_sure.item() == pytest.approx(supervised.item(), rel=1e-5)
    assert everyone.item() > supervised.item()


def test_a_fixmatch_run_resumed_after_its_first_epoch_is_exact(
    cells: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = {"fraction": 0.25, "epochs": 2, "seed": 0, "sets": SEMI}
    whole = tmp_path / "whole"
    tiny_finetune(cells["split"], whole, **options)
    out = tmp_path / "resumed"
    interrupt_after_epoch(monkeypatch, lambda: tiny_finetune(cells["split"], out, **options))
    tiny_finetune(cells["split"], out, resume=True, **options)
    assert_same_weights(load_weights(out / "model"), load_weights(whole / "model"))


def _chosen(cells: dict[str, Any], split: Path, out: Path, selection: str) -> tuple[str, dict[str, Any]]:
    tiny_finetune(
        split, out, init=cells["mae"], fraction=0.25, epochs=1, sets=[f"classifier.selection={selection}"]
    )
    info = json.loads((out / "run.json").read_text())
    return info["data_check"]["selected train images"]["hash"], info["labels_used"]


@pytest.mark.parametrize("selection", ["typiclust", "random"])
def test_selection_reads_no_label_and_spends_the_stratified_draws_budget(
    cells: dict[str, Any], tmp_path: Path, selection: str
) -> None:
    """The same images are chosen with the train labels scrambled (class counts, and so the budget, kept)."""
    with open(cells["split"], newline="") as f:
        rows = list(csv.DictReader(f))
    train = [i for i, row in enumerate(rows) if row["split"] == "train"]
    labels = [rows[i]["label"] for i in train]
    for i, label in zip(train, np.random.default_rng(0).permutation(labels), strict=True):
        rows[i] = {**rows[i], "label": str(label)}
    scrambled = tmp_path / "scrambled.csv"
    with open(scrambled, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    first, used = _chosen(cells, cells["split"], tmp_path / "a", selection)
    second, _ = _chosen(cells, scrambled, tmp_path / "b", selection)
    stratified = json.loads((tmp_path / "a" / "run.json").read_text())["images"]["train"]
    assert first == second
    assert sum(used["train"].values()) == stratified


def test_typiclust_selection_from_a_random_encoder_is_refused(cells: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="typiclust"):
        tiny_finetune(cells["split"], tmp_path / "run", sets=["classifier.selection=typiclust"])


def _labelled(run: Path, split: str = "train") -> set[str]:
    with open(run / "labelled.csv", newline="") as f:
        return {row["path"] for row in csv.DictReader(f) if row["split"] == split}


def test_a_margin_round_keeps_the_earlier_rounds_labels_and_adds_what_its_model_is_least_sure_of(
    cells: dict[str, Any], tmp_path: Path
) -> None:
    first, second = tmp_path / "round-1", tmp_path / "round-2"
    tiny_finetune(
        cells["split"],
        first,
        init=cells["mae"],
        fraction=0.25,
        epochs=1,
        sets=["classifier.selection=typiclust"],
    )
    sets = ["classifier.selection=margin", f"classifier.selection_from={first}"]
    tiny_finetune(cells["split"], second, init=cells["mae"], fraction=0.5, epochs=1, sets=sets)
    stratified = json.loads((second / "run.json").read_text())["images"]["train"]
    assert _labelled(first) < _labelled(second) and len(_labelled(second)) == stratified
    assert _labelled(first, "val") <= _labelled(second, "val")


def test_a_margin_round_needs_the_earlier_run(cells: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="go together"):
        tiny_finetune(
            cells["split"], tmp_path / "run", init=cells["mae"], sets=["classifier.selection=margin"]
        )
