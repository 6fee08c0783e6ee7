"""``leanmae evaluate MODEL --data FOLDER``: a model scored on another lab's labelled folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

import leanmae
from helpers import read_csv, tiny_finetune
from leanmae.cli import main
from leanmae.data.synthetic import make_synthetic_wbc
from leanmae.errors import DataError


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A one-epoch classifier on synthetic cells, and an 'external' folder holding two of its classes in other
    letter case."""
    root = tmp_path_factory.mktemp("external")
    data = make_synthetic_wbc(root / "cells", n_per_class=10, size=40)
    labels = sorted(p.name for p in data.iterdir() if p.is_dir())
    leanmae.split(data, classes=labels, out=root / "split.csv", ratios="0.6,0.2,0.2")
    tiny_finetune(root / "split.csv", root / "run", epochs=1)
    external = root / "other-lab"
    shutil.copytree(
        make_synthetic_wbc(root / "fresh", n_per_class=3, size=52, seed=7) / labels[0],
        external / labels[0].upper(),
    )
    shutil.copytree(root / "fresh" / labels[2], external / labels[2].capitalize())
    return {"root": root, "run": root / "run", "labels": labels, "external": external}


def test_a_folder_with_some_classes_in_another_case_is_scored_over_the_classes_present(
    trained: dict[str, Any], tmp_path: Path
) -> None:
    labels = trained["labels"]
    report = leanmae.evaluate(trained["run"], data=trained["external"], out=tmp_path / "ext", device="cpu")
    assert list(report["per_class"]) == [labels[0], labels[2]]
    assert report["images"] == 6
    assert report["macro_f1"] == pytest.approx(
        sum(c["f1"] for c in report["per_class"].values()) / 2, abs=1e-9
    )
    saved = json.loads((tmp_path / "ext" / "metrics.json").read_text())
    assert (
        saved["classes_present"] == [labels[0], labels[2]]
        and saved["external"]["macro_f1"] == report["macro_f1"]
    )
    rows = read_csv(tmp_path / "ext" / "predictions.csv")
    assert len(rows) == 6 and {r["true_label"] for r in rows} == {labels[0], labels[2]}
    assert (tmp_path / "ext" / "confusion_matrix.png").stat().st_size > 0


def test_a_folder_naming_no_class_of_the_model_is_an_error_naming_it(
    trained: dict[str, Any], tmp_path: Path
) -> None:
    folder = tmp_path / "lab"
    shutil.copytree(trained["external"], folder)
    (folder / "megakaryocyte").mkdir()
    shutil.copy(next((folder / trained["labels"][0].upper()).iterdir()), folder / "megakaryocyte" / "x.png")
    with pytest.raises(DataError, match="megakaryocyte"):
        leanmae.evaluate(trained["run"], data=folder, out=tmp_path / "ext", device="cpu")


def test_evaluate_needs_exactly_one_of_split_and_data(trained: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(DataError, match="either --split"):
        leanmae.evaluate(trained["run"], out=tmp_path / "ext", device="cpu")
    with pytest.raises(DataError, match="either --split"):
        leanmae.evaluate(
            trained["run"],
            trained["root"] / "split.csv",
            data=trained["external"],
            out=tmp_path / "ext",
            device="cpu",
        )


def test_cli_evaluate_data_writes_next_to_the_run_by_default(
    trained: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["evaluate", str(trained["run"]), "--data", str(trained["external"]), "--device", "cpu"]) == 0
    assert (trained["run"] / "evaluate-other-lab" / "metrics.json").exists()
    assert "external: accuracy" in capsys.readouterr().out
