"""The robustness benchmark of finished runs: robustness.json written once and kept, evaluate --shifts,
the study report's table (and an old study's report without it), --external checked before training,
and reconstruct decoding as training did."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import leanmae
from helpers import tiny_finetune, tiny_pretrain
from leanmae.cli import main
from leanmae.data.cache import finish_image, spec_from_extras
from leanmae.data.decode import decode_rgb
from leanmae.data.synthetic import make_synthetic_tiles, make_synthetic_wbc
from leanmae.evaluation.robustness import (
    ROBUSTNESS_FILE,
    benchmark,
    finished_runs,
    score_study,
    up_to_date,
)
from leanmae.evaluation.shifts import SHIFTS
from leanmae.models.io import load_preprocessing
from leanmae.reporting.study_report import write_report

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A study folder laid out as `leanmae study` writes it, with one finished one-epoch run, and an
    external folder holding two of the classes."""
    root = tmp_path_factory.mktemp("robustness")
    data = make_synthetic_wbc(root / "cells", n_per_class=8, size=40)
    labels = sorted(p.name for p in data.iterdir() if p.is_dir())
    folder = root / "study"
    folder.mkdir()
    leanmae.split(data, classes=labels, out=folder / "split.csv", ratios="0.5,0.25,0.25")
    (folder / "study.json").write_text(json.dumps({"arms": ["scratch"], "fractions": [1.0], "seeds": [0]}))
    tiny_finetune(folder / "split.csv", folder / "runs" / "scratch_f1_s0", epochs=1)
    external = root / "other-lab"
    fresh = make_synthetic_wbc(root / "fresh", n_per_class=2, size=48, seed=5)
    for label in labels[:2]:
        shutil.copytree(fresh / label, external / label.upper())
    return {"study": folder, "run": folder / "runs" / "scratch_f1_s0", "labels": labels, "external": external}


def test_every_finished_run_gets_a_robustness_file_with_every_shift(study: dict[str, Any]) -> None:
    results = score_study(study["study"], benchmark(external=[str(study["external"])]), progress=False)
    saved = json.loads((study["run"] / ROBUSTNESS_FILE).read_text())
    assert results["scratch_f1_s0"] == saved
    assert list(saved["shifts"]) == [s.name for s in SHIFTS]
    assert saved["shifts"]["clean"]["drop"] == 0
    for row in saved["shifts"].values():
        assert 0 <= row["macro_f1"] <= 1 and row["images"] == saved["shifts"]["clean"]["images"]
        assert row["drop"] == pytest.approx(saved["shifts"]["clean"]["macro_f1"] - row["macro_f1"])
    external = saved["external"][str(study["external"])]
    assert external["images"] == 4 and external["classes_present"] == study["labels"][:2]
    for row in [*saved["shifts"].values(), external]:  # the study scores the shift alarm on each too
        assert row["shift_alarm"]["images"] == row["images"] and isinstance(row["shift_alarm"]["alarm"], bool)


def test_a_finished_runs_robustness_file_is_not_recomputed(study: dict[str, Any]) -> None:
    bench = benchmark(external=[str(study["external"])])
    score_study(study["study"], bench, progress=False)
    stamp = (study["run"] / ROBUSTNESS_FILE).stat().st_mtime_ns
    score_study(study["study"], bench, progress=False)
    assert (study["run"] / ROBUSTNESS_FILE).stat().st_mtime_ns == stamp
    assert up_to_date(study["run"], bench)
    assert not up_to_date(study["run"], benchmark()), "another benchmark (no external set) is recomputed"


def test_scores_are_identical_when_recomputed(study: dict[str, Any], tmp_path: Path) -> None:
    copy = tmp_path / "study"
    shutil.copytree(study["study"], copy)
    (copy / "runs" / "scratch_f1_s0" / ROBUSTNESS_FILE).unlink(missing_ok=True)
    again = score_study(copy, benchmark(), progress=False)["scratch_f1_s0"]
    first = score_study(study["study"], benchmark(), progress=False)["scratch_f1_s0"]
    assert again["shifts"] == first["shifts"]


def test_only_finished_runs_with_a_model_are_scored(study: dict[str, Any], tmp_path: Path) -> None:
    copy = tmp_path / "study"
    shutil.copytree(study["study"], copy)
    running = copy / "runs" / "scratch_f1_s1"
    shutil.copytree(copy / "runs" / "scratch_f1_s0", running)
    info = json.loads((running / "run.json").read_text())
    (running / "run.json").write_text(json.dumps({**info, "status": "running"}))
    assert finished_runs(copy) == [copy / "runs" / "scratch_f1_s0"]


def test_the_report_shows_the_robustness_table_and_figure_when_runs_have_them(study: dict[str, Any]) -> None:
    score_study(study["study"], benchmark(), progress=False)
    text = write_report(study["study"]).read_text()
    assert "Robustness to other labs" in text and "zoom-2x" in text and "colour-transfer" in text
    rows = (study["study"] / "results" / "robustness.csv").read_text().splitlines()
    assert rows[0].startswith("fraction,arm,set,runs,macro_f1_mean")
    assert len([r for r in rows if ",scratch," in r]) == len(SHIFTS)
    assert (study["study"] / "results" / "robustness.png").exists()


def test_an_old_studys_report_without_robustness_files_stays_valid(
    study: dict[str, Any], tmp_path: Path
) -> None:
    copy = tmp_path / "old"
    shutil.copytree(
        study["study"], copy, ignore=shutil.ignore_patterns(ROBUSTNESS_FILE, "results", "report.html")
    )
    text = write_report(copy).read_text()
    assert "Robustness to other labs" not in text and text.rstrip().endswith("</html>")
    assert not (copy / "results" / "robustness.csv").exists()


def test_evaluate_shifts_writes_the_same_file_for_one_model(study: dict[str, Any], tmp_path: Path) -> None:
    code = main(
        ["evaluate", str(study["run"]), "--split", str(study["study"] / "split.csv"), "--shifts"]
        + ["--out", str(tmp_path / "rob"), "--device", "cpu"]
    )
    assert code == 0
    saved = json.loads((tmp_path / "rob" / ROBUSTNESS_FILE).read_text())
    score_study(study["study"], benchmark(), progress=False)
    in_run = json.loads((study["run"] / ROBUSTNESS_FILE).read_text())
    assert saved["shifts"] == in_run["shifts"] and saved["benchmark"] == in_run["benchmark"]


def test_evaluate_shift_reference_without_shifts_is_a_one_line_error(
    study: dict[str, Any], capsys: Any
) -> None:
    code = main(
        ["evaluate", str(study["run"]), "--split", str(study["study"] / "split.csv")]
        + ["--shift-reference", str(study["external"]), "--device", "cpu"]
    )
    message = capsys.readouterr().err.strip()
    assert code == 2 and "--shift-reference" in message and "\n" not in message


def test_a_shift_reference_folder_changes_the_colour_transfer_target(study: dict[str, Any]) -> None:
    own = benchmark(shift_reference=str(study["external"]))
    assert own.reference != benchmark().reference and own.reference_name == str(study["external"])


def test_study_external_with_an_unknown_class_folder_fails_before_training(
    study: dict[str, Any], tmp_path: Path, capsys: Any
) -> None:
    bad = tmp_path / "bad-lab"
    shutil.copytree(study["external"], bad)
    (bad / "megakaryocyte").mkdir()
    shutil.copy(next((bad / study["labels"][0].upper()).iterdir()), bad / "megakaryocyte" / "x.png")
    data = study["study"] / "split.csv"  # any existing folder will do for --data; the check comes first
    code = main(
        ["study", "--out", str(tmp_path / "s"), "--data", str(data.parent), "--preset", "test"]
        + [
            "--classes",
            ",".join(study["labels"]),
            "--arms",
            "scratch",
            "--external",
            str(bad),
            "--no-progress",
        ]
    )
    message = capsys.readouterr().err.strip()
    assert code == 2 and "--external" in message and "megakaryocyte" in message and "\n" not in message
    assert not (tmp_path / "s").exists(), "nothing is written before the check"


def test_reconstruct_decodes_images_as_the_mae_was_trained(tmp_path: Path, monkeypatch: Any) -> None:
    """An MAE trained with stain normalisation and cell-centred crops sees its images decoded that way."""
    tiles = make_synthetic_tiles(tmp_path / "tiles", n=16, size=64, seed=2)
    run = tmp_path / "mae"
    tiny_pretrain(tiles, run, sets=["data.stain_norm=reinhard", "data.cell_crop=2.5", "optim.epochs=1"])
    _, _, extra = load_preprocessing(run / "model")
    assert extra["stain_norm"] and extra["cell_crop"] == 2.5
    seen: dict[str, Any] = {}
    import leanmae.commands.reconstruct as module

    original = module.load_images
    monkeypatch.setattr(
        module,
        "load_images",
        lambda files, spec, *a, **k: seen.update(spec=spec) or original(files, spec, *a, **k),
    )
    files = sorted(tiles.rglob("*.png"))[:3]
    leanmae.reconstruct(run, [str(f) for f in files], tmp_path / "recon", images=2, device="cpu")
    spec = seen["spec"]
    assert spec == spec_from_extras(extra, 0)
    expected = finish_image(decode_rgb(files[0]), spec)
    plain = finish_image(decode_rgb(files[0]), spec_from_extras({"cache_size": extra["cache_size"]}, 0))
    assert not np.array_equal(expected, plain), "the model's decoding changes these images"
