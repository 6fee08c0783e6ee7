"""Choosing which images to label (``leanmae select``, ``leanmae.evaluation.selection``): TypiClust covers the
data's clusters with their most typical members, margin takes what a classifier is least sure of, and no
label is ever read."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

import leanmae
from helpers import read_csv
from leanmae.cli import main
from leanmae.config import FinetuneConfig, resolve
from leanmae.data.split import read_manifest
from leanmae.data.synthetic import make_synthetic_wbc
from leanmae.errors import DataError
from leanmae.evaluation.selection import margin_picks, random_picks, typiclust_picks
from leanmae.models.io import save_model
from leanmae.models.mae import build_mae

CENTRES = 5


def _blobs(per_blob: int = 40, dims: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Five tight, well separated clusters on the unit sphere (axis directions), and each point's blob."""
    rng = np.random.default_rng(0)
    blob = np.repeat(np.arange(CENTRES), per_blob)
    points = np.eye(dims)[blob] * 10 + rng.normal(0, 1, (len(blob), dims))
    return points, blob


def test_typiclust_picks_one_image_per_cluster_and_the_most_typical_of_each() -> None:
    points, blob = _blobs()
    picks = typiclust_picks(points, np.zeros(len(points), dtype=bool), CENTRES, seed=0)
    chosen = [p.index for p in picks]
    assert sorted(blob[chosen]) == list(range(CENTRES))
    for i in chosen:  # among the quarter of its blob closest to the blob's centre
        members = np.flatnonzero(blob == blob[i])
        unit = points / np.linalg.norm(points, axis=1, keepdims=True)
        centre = unit[members].mean(0)
        distance = np.linalg.norm(unit[members] - centre, axis=1)
        assert distance[members == i][0] <= np.quantile(distance, 0.25)


def test_typiclust_fills_the_clusters_the_labelled_images_leave_uncovered() -> None:
    points, blob = _blobs()
    labelled = np.isin(np.arange(len(points)), [0, 40])  # one image of blobs 0 and 1
    picks = typiclust_picks(points, labelled, 3, seed=0)
    assert sorted(blob[[p.index for p in picks]]) == [2, 3, 4]


def test_margin_takes_the_images_the_classifier_is_least_sure_of_and_says_between_what() -> None:
    probabilities = np.array([[0.9, 0.1], [0.55, 0.45], [0.2, 0.8], [0.51, 0.49]])
    picks = margin_picks(probabilities, np.array([False, False, False, True]), 2, ["a", "b"])
    assert [p.index for p in picks] == [1, 2]
    assert picks[0].reason == "margin 0.100 between a and b"


def test_random_picks_are_seeded_and_never_an_image_already_labelled() -> None:
    labelled = np.arange(100) < 50
    first = [p.index for p in random_picks(labelled, 10, seed=3)]
    assert first == [p.index for p in random_picks(labelled, 10, seed=3)]
    assert min(first) >= 50 and len(set(first)) == 10


def test_a_budget_larger_than_the_unlabelled_images_is_refused() -> None:
    with pytest.raises(DataError, match="cannot choose 5 images"):
        random_picks(np.array([True, False, False]), 5, seed=0)


@pytest.fixture(scope="module")
def mae(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = resolve(FinetuneConfig, "finetune", "test", None, {}).model
    mean, std = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]
    return save_model(build_mae(model), tmp_path_factory.mktemp("mae") / "mae", mean, std, {"kind": "mae"})


def test_select_on_a_manifest_reads_no_label(mae: Path, tmp_path: Path) -> None:
    """The same choice with the manifest's labels scrambled: the labels are never read."""
    data = make_synthetic_wbc(tmp_path / "cells", n_per_class=12, size=32)
    split = tmp_path / "split.csv"
    leanmae.split(data, classes=["basophil", "eosinophil"], out=split)
    with open(split, newline="") as f:
        rows = list(csv.DictReader(f))
    scrambled = tmp_path / "scrambled.csv"
    labels = [row["label"] for row in rows]
    with open(scrambled, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**row, "label": label} for row, label in zip(rows, labels[::-1], strict=True))
    assert [it.label for it in read_manifest(scrambled)[1]] != [it.label for it in read_manifest(split)[1]]
    chosen = [
        read_csv(leanmae.select(mae, [str(s)], 4, tmp_path / f"{s.stem}-picks.csv", progress=False))
        for s in (split, scrambled)
    ]
    assert [r["path"] for r in chosen[0]] == [r["path"] for r in chosen[1]]
    assert len(chosen[0]) == 4 and all("typical" in r["reason"] for r in chosen[0])


def test_select_on_a_plain_folder_skips_what_was_labelled_in_an_earlier_round(
    mae: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = make_synthetic_wbc(tmp_path / "cells", n_per_class=10, size=32)
    first = tmp_path / "round-1.csv"
    assert main(["select", str(mae), str(data), "--n", "3", "--out", str(first), "--no-progress"]) == 0
    second = tmp_path / "round-2.csv"
    args = ["select", str(mae), str(data), "--n", "3", "--labelled", str(first), "--out", str(second)]
    assert main([*args, "--no-progress"]) == 0
    before = {r["path"] for r in read_csv(first)}
    after = {r["path"] for r in read_csv(second)}
    assert len(after) == 3 and not before & after
    assert "3 of the 47 unlabelled images" in capsys.readouterr().out


def test_margin_on_an_mae_is_refused(mae: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [
        "select",
        str(mae),
        str(tmp_path),
        "--n",
        "3",
        "--strategy",
        "margin",
        "--out",
        str(tmp_path / "x.csv"),
    ]
    assert main(args) == 2
    assert "needs a fine-tuned classifier" in capsys.readouterr().err
