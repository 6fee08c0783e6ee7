"""A study refuses what would go wrong later before it writes anything: a mistyped key, a target the report
cannot use, options that add no run, two arms sharing run folders, a second study in the same folder, and an
MAE folder that now holds other weights than its runs started from. Fine-tuning refuses a linear probe of a
random encoder and "unknown" images that the model trains on."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from reliability_helpers import CLASSES

import leanmae
import leanmae.commands.study as study_command
from helpers import tiny_finetune
from leanmae.config import run_name
from leanmae.errors import ConfigError, DataError, OutputFolderError
from leanmae.files import write_json
from leanmae.reporting.runinfo import LOCK_FILE


def _study(cells: dict[str, Any], out: Path, **extra: Any) -> dict[str, str]:
    settings = {
        "data": str(cells["data"]),
        "classes": CLASSES,
        "arms": ["scratch"],
        "fractions": [1.0],
        "seeds": [0],
        "preset": "test",
        "finetune_epochs": 1,
        "set": ["run.device=cpu"],
        "progress": False,
    }
    return leanmae.study(out=out, **{**settings, **extra})


@pytest.mark.parametrize(
    "option",
    [
        {"set": ["run.device=cpu", "finetune.classifier.min_stepz=5"]},
        {"arm_set": ["scratch:optim.base_lrr=1e-3"]},
        {"target": 5.0},
        {"target": float("nan")},
    ],
    ids=["mistyped-set", "mistyped-arm-set", "target-5", "target-nan"],
)
def test_a_study_refuses_a_bad_option_before_writing_anything(
    cells: dict[str, Any], tmp_path: Path, option: dict[str, Any]
) -> None:
    """The corrected command must find nothing that blocks it ("holds a study with other settings")."""
    out = tmp_path / "study"
    with pytest.raises(ConfigError):
        _study(cells, out, **option)
    assert not out.exists() or not any(out.iterdir())


def test_a_study_whose_runs_never_began_takes_the_corrected_settings(
    cells: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "study"
    out.mkdir()
    write_json(out / "study.json", {"data": "/a/mistyped/folder", "classes": ["x"], "seeds": [0]})
    monkeypatch.setattr(study_command, "run_local", lambda *args: {})  # the runs themselves are not the point
    _study(cells, out)
    assert json.loads((out / "study.json").read_text())["data"] == str(cells["data"])


@pytest.mark.parametrize(
    ("option", "words"),
    [
        ({"arm_set": ["mae:optim.base_lr=1e-3"]}, "no arm 'mae'"),
        ({"seeds": [0, 1], "extra_seeds": [1]}, "already in --seeds"),
        ({"extra_seeds": [5]}, "no fraction is at or below"),
        ({"arms": ["hf:/models/a/vit", "hf:/models/b/vit"]}, "same run folders"),
    ],
    ids=["arm-set-for-an-arm-not-run", "extra-seed-in-seeds", "extra-seeds-for-no-fraction", "hf-same-name"],
)
def test_options_that_would_add_no_run_or_collide_are_refused(
    cells: dict[str, Any], tmp_path: Path, option: dict[str, Any], words: str
) -> None:
    with pytest.raises(ConfigError, match=words):
        _study(cells, tmp_path / "study", **option)
    assert not (tmp_path / "study").exists()


def test_a_second_study_into_a_folder_another_study_is_writing_is_refused(
    cells: dict[str, Any], tmp_path: Path
) -> None:
    out = tmp_path / "study"
    out.mkdir()
    write_json(out / "study.json", {})
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys, time; f = open(sys.argv[1], 'w'); fcntl.flock(f, fcntl.LOCK_EX); "
            "print('held', flush=True); time.sleep(60)",
            str(out / LOCK_FILE),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputFolderError, match="another leanmae command"):
            _study(cells, out)
    finally:
        holder.kill()
        holder.wait()


def test_a_study_whose_mae_folder_now_holds_other_weights_is_refused(
    cells: dict[str, Any], model_folders: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pretraining again into --mae FOLDER between two invocations would mix two MAEs in one arm."""
    out, settings = tmp_path / "study", {"arms": ["mae"], "mae": str(model_folders["mae"])}
    monkeypatch.setattr(study_command, "run_local", lambda *args: {})
    _study(cells, out, **settings)
    run = out / "runs" / run_name("mae", 1.0, 0)
    run.mkdir(parents=True)
    write_json(run / "run.json", {"status": "finished", "init_sha256": "0" * 64})  # another MAE's
    monkeypatch.setattr(study_command, "run_local", lambda *args: pytest.fail("no run may start"))
    with pytest.raises(OutputFolderError, match="other weights than run"):
        _study(cells, out, **settings)


def test_resuming_a_finetuning_whose_init_folder_now_holds_other_weights_is_refused(
    cells: dict[str, Any], model_folders: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    tiny_finetune(cells["split"], out, init=model_folders["mae"], epochs=1)
    recorded = json.loads((out / "run.json").read_text())["init_sha256"]
    info = json.loads((out / "run.json").read_text())
    write_json(out / "run.json", {**info, "status": "running", "init_sha256": "0" * 64})
    with pytest.raises(OutputFolderError, match="--init weights"):
        tiny_finetune(cells["split"], out, init=model_folders["mae"], epochs=1, resume=True)
    assert len(recorded) == 64


def test_a_linear_probe_of_a_random_encoder_is_refused(cells: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="random encoder"):
        tiny_finetune(cells["split"], tmp_path / "run", init="scratch", linear_probe=True)
    assert not (tmp_path / "run").exists()


def test_ood_images_that_are_images_of_the_split_are_refused(cells: dict[str, Any], tmp_path: Path) -> None:
    """--ood naming a class the model trains on: the AUROC would compare a class with itself."""
    with pytest.raises(DataError, match="images of the split"):
        tiny_finetune(cells["split"], tmp_path / "run", ood=[f"{cells['data']}:basophil"])
    assert not (tmp_path / "run").exists()
