"""A bad file never silently changes a study: one-class data, a misspelt class, a file changed after the
split (also in an in-domain pretraining pool), unknown YAML keys and a checkpoint of another shape are
clear errors."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from reliability_helpers import (
    MEAN,
    STD,
    _small_split,
    _test_model,
)

import leanmae
from helpers import tiny_finetune, tiny_pretrain
from leanmae.cli import main
from leanmae.errors import ConfigError, DataError
from leanmae.models.io import save_model
from leanmae.models.mae import build_mae


def test_an_unknown_key_in_a_yaml_config_is_refused_suggesting_the_nearest(
    cells: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "my.yaml"
    path.write_text("optim:\n  base_lrr: 1.0e-3\n")
    code = main(
        [
            "finetune",
            "--split",
            str(cells["split"]),
            "--config",
            str(path),
            "--out",
            str(tmp_path / "run"),
            "--preset",
            "test",
            "--device",
            "cpu",
            "--no-progress",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "'optim.base_lrr'" in err and "did you mean 'optim.base_lr'?" in err
    assert not (tmp_path / "run").exists(), "nothing is written before the config is valid"


def test_an_unknown_key_in_a_study_yaml_is_refused_suggesting_the_nearest(tmp_path: Path) -> None:
    path = tmp_path / "study.yaml"
    path.write_text("fraction: [0.1, 1.0]\n")
    with pytest.raises(ConfigError, match="'fraction'.*did you mean 'fractions'"):
        leanmae.study(out=tmp_path / "s", config=path, progress=False)
    assert not (tmp_path / "s").exists()


def test_a_manifest_of_a_single_class_is_refused_before_training(
    cells: dict[str, Any], tmp_path: Path
) -> None:
    """A split hand-edited (or filtered) down to one class would train a model that is 'always right'."""
    lines = cells["split"].read_text().splitlines()
    one = tmp_path / "one-class.csv"
    one.write_text("\n".join(line for line in lines if ",eosinophil," not in line) + "\n")
    with pytest.raises(DataError, match="at least two classes"):
        tiny_finetune(one, tmp_path / "run", epochs=1)
    assert not (tmp_path / "run" / "checkpoints").exists(), "refused before any training"


def test_a_study_naming_a_missing_class_suggests_the_nearest(cells: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no class folder 'eosinophl'; did you mean 'eosinophil'"):
        leanmae.study(
            out=tmp_path / "s",
            data=str(cells["data"]),
            classes=["basophil", "eosinophl"],
            arms=["scratch"],
            preset="test",
            progress=False,
        )
    assert not (tmp_path / "s" / "runs").exists()


def test_evaluate_refuses_a_test_file_changed_after_the_split(
    model_folders: dict[str, Path], tmp_path: Path
) -> None:
    data, split, items = _small_split(tmp_path)
    changed = next(it for it in items if it.split == "test")
    other = next(it for it in items if it.relpath != changed.relpath)
    (data / changed.relpath).write_bytes((data / other.relpath).read_bytes())
    with pytest.raises(DataError, match=re.escape(Path(changed.relpath).name) + ".*content changed"):
        leanmae.evaluate(model_folders["classifier"], split=split, out=tmp_path / "eval", device="cpu")
    assert not (tmp_path / "eval").exists()


def test_in_domain_pretraining_refuses_a_train_file_changed_after_the_split(tmp_path: Path) -> None:
    """A study's in-domain pool is its split.csv: a changed train file must stop pretraining as it stops
    fine-tuning."""
    data, split, items = _small_split(tmp_path)
    changed = next(it for it in items if it.split == "train")
    other = next(it for it in items if it.relpath != changed.relpath)
    (data / changed.relpath).write_bytes((data / other.relpath).read_bytes())
    with pytest.raises(DataError, match="content changed"):
        tiny_pretrain([str(split)], tmp_path / "mae", epochs=1)
    assert not (tmp_path / "mae" / "model").exists()


def test_pretrain_init_from_a_checkpoint_of_another_patch_size_is_refused(
    images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import dataclasses

    other = save_model(
        build_mae(dataclasses.replace(_test_model(), patch_size=4)),
        tmp_path / "patch4",
        MEAN,
        STD,
        {"kind": "mae"},
    )
    code = main(
        [
            "pretrain",
            "--data",
            str(images),
            "--init",
            str(other),
            "--out",
            str(tmp_path / "run"),
            "--preset",
            "test",
            "--device",
            "cpu",
            "--no-progress",
            "--epochs",
            "1",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "patch_size is 4" in err and "8" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "model").exists()
