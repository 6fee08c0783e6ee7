"""Nothing lost, nothing silently wrong: guarded outputs, models of the right kind, one-line errors.

Each test is one case of issue 14 (docs/reliability.md lists them): a result is never replaced
without --overwrite, --overwrite never deletes an input of the same command, two commands never
write into one folder, a failed start can simply be rerun, model folders say what they are and
commands refuse the wrong kind, weights that do not cover the model are an error, spreadsheet
formulas in names are escaped, and bad input is a one-line error with exit code 2.
"""

from __future__ import annotations

import csv
import fcntl
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import leanmae
from helpers import tiny_finetune, tiny_pretrain, write_images
from leanmae.cli import main
from leanmae.config import ModelConfig
from leanmae.data.synthetic import WBC_CLASSES, make_synthetic_wbc
from leanmae.errors import CheckpointError
from leanmae.evaluation.metrics import write_predictions
from leanmae.models.classifier import build_classifier
from leanmae.models.mae import build_mae
from leanmae.reporting.runinfo import LOCK_FILE
from leanmae.safe_csv import csv_text, escape, unescape

LABELS = list(WBC_CLASSES)
QUIET = ["--preset", "test", "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A synthetic cell split, a 1-epoch MAE run on it and a 1-epoch classifier run (test preset)."""
    root = tmp_path_factory.mktemp("outputs")
    data = make_synthetic_wbc(root / "cells", n_per_class=10, size=40)
    split = root / "split.csv"
    leanmae.split(data, classes=LABELS, out=split)
    cache = [f"data.cache_dir={root / 'cache'}"]
    tiny_pretrain(data, root / "mae", epochs=1, sets=cache)
    tiny_finetune(split, root / "clf", epochs=1, sets=cache)
    return {"root": root, "data": data, "split": split, "mae": root / "mae", "clf": root / "clf"}


def one_line_error(capsys: pytest.CaptureFixture[str], *expected: str) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for text in expected:
        assert text in err, err
    return err


def sample_images(runs: dict[str, Path]) -> list[str]:
    return [str(p) for p in sorted((runs["data"] / LABELS[0]).glob("*.png"))[:2]]


# =========================================================================== results are never lost


def test_a_second_command_into_a_folder_another_command_writes_is_refused(
    image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two pretrain runs into one --out used to both exit 0 "model in X" while X held one model."""
    out = tmp_path / "run"
    out.mkdir()
    fd = os.open(out / LOCK_FILE, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # what the first command holds while it writes
    os.write(fd, b"4242")
    try:
        assert (
            main(["pretrain", "--data", str(image_folder), "--out", str(out), *QUIET, "--epochs", "1"]) == 2
        )
    finally:
        os.close(fd)
    one_line_error(capsys, "another leanmae command (process 4242) is writing into this folder")
    assert [p.name for p in out.iterdir()] == [LOCK_FILE]


def test_the_lock_is_released_and_removed_when_a_command_ends(runs: dict[str, Path]) -> None:
    assert not (runs["mae"] / LOCK_FILE).exists(), "a finished folder holds only results"
    fd = os.open(runs["mae"] / LOCK_FILE, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises BlockingIOError if anything still held it
    finally:
        os.close(fd)
        (runs["mae"] / LOCK_FILE).unlink()


def test_evaluate_into_the_run_folder_is_refused(
    runs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """``evaluate RUN --out RUN`` replaced the run's metrics.json, and then `leanmae report` failed."""
    before = (runs["clf"] / "metrics.json").read_bytes()
    assert (
        main(
            [
                "evaluate",
                str(runs["clf"]),
                "--split",
                str(runs["split"]),
                "--out",
                str(runs["clf"]),
                "--device",
                "cpu",
            ]
        )
        == 2
    )
    one_line_error(capsys, "holds a leanmae run")
    assert (runs["clf"] / "metrics.json").read_bytes() == before


def test_evaluate_replaces_its_earlier_results_only_with_overwrite(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [
        "evaluate",
        str(runs["clf"]),
        "--split",
        str(runs["split"]),
        "--out",
        str(tmp_path / "eval"),
        "--device",
        "cpu",
    ]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 2
    one_line_error(capsys, "already holds metrics.json, predictions.csv", "--overwrite")
    assert main([*args, "--overwrite"]) == 0


def test_predict_never_replaces_an_existing_file_without_overwrite(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "mine.csv"
    out.write_text("my own table\n")
    args = ["predict", str(runs["clf"]), *sample_images(runs), "--out", str(out), "--device", "cpu"]
    assert main(args) == 2
    one_line_error(capsys, "already exists; pass --overwrite")
    assert out.read_text() == "my own table\n"
    assert main([*args, "--overwrite"]) == 0
    assert out.read_text().startswith("path,predicted_label")


def test_predict_out_that_is_a_folder_returns_2(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(["predict", str(runs["clf"]), *sample_images(runs), "--out", str(tmp_path), "--device", "cpu"])
        == 2
    )
    one_line_error(capsys, "is a folder")


def test_reconstruct_into_the_pretraining_run_folder_is_refused(
    runs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    before = (runs["mae"] / "recon_metrics.json").read_bytes()
    assert (
        main(
            [
                "reconstruct",
                str(runs["mae"]),
                *sample_images(runs),
                "--out",
                str(runs["mae"]),
                "--device",
                "cpu",
            ]
        )
        == 2
    )
    one_line_error(capsys, "holds a leanmae run")
    assert (runs["mae"] / "recon_metrics.json").read_bytes() == before


def test_overwrite_never_deletes_an_input_of_the_same_command(
    runs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """``finetune --init X --out X --overwrite`` deleted the MAE it was to start from."""
    assert (
        main(
            [
                "finetune",
                "--split",
                str(runs["split"]),
                "--init",
                str(runs["mae"]),
                "--out",
                str(runs["mae"]),
                "--overwrite",
                *QUIET,
            ]
        )
        == 2
    )
    one_line_error(capsys, "--overwrite would delete", "an input of this command")
    assert (runs["mae"] / "model" / "model.safetensors").exists()


def test_a_failed_start_leaves_no_running_marker_and_the_fixed_command_starts_afresh(
    image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A typo in --probe was found after run.json said "running", and the corrected command was refused;
    it is now found before anything is written (pretraining reads the probe split to keep its val and test
    images out of the pool), and the corrected command runs."""
    out = tmp_path / "run"
    assert (
        main(
            [
                "pretrain",
                "--data",
                str(image_folder),
                "--out",
                str(out),
                *QUIET,
                "--epochs",
                "1",
                "--probe",
                str(tmp_path / "splt.csv"),
            ]
        )
        == 2
    )
    assert "splt.csv" in capsys.readouterr().err
    assert not (out / "run.json").exists()
    assert main(["pretrain", "--data", str(image_folder), "--out", str(out), *QUIET, "--epochs", "1"]) == 0, (
        capsys.readouterr().err
    )
    assert json.loads((out / "run.json").read_text())["status"] == "finished"


def test_out_that_is_a_file_returns_2(
    image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "file"
    out.write_text("x")
    assert main(["pretrain", "--data", str(image_folder), "--out", str(out), *QUIET]) == 2
    one_line_error(capsys, "is a file")


def test_out_that_cannot_be_created_returns_2(image_folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["pretrain", "--data", str(image_folder), "--out", "/proc/leanmae-cannot-write-here", *QUIET])
        == 2
    )
    one_line_error(capsys, "leanmae pretrain: error:", "/proc/leanmae-cannot-write-here")


def test_model_files_are_readable_by_the_group_as_the_umask_allows(runs: dict[str, Path]) -> None:
    """safetensors writes 0600; leanmae's other files follow the umask, and so do models now."""
    mask = os.umask(0)
    os.umask(mask)
    wanted = 0o666 & ~mask
    files = [
        runs["mae"] / "model" / "model.safetensors",
        runs["clf"] / "model" / "model.safetensors",
        *runs["mae"].glob("checkpoints/*/*.safetensors"),
    ]
    assert len(files) >= 4
    for file in files:
        assert file.stat().st_mode & 0o777 == wanted, f"{file}: {oct(file.stat().st_mode & 0o777)}"


# =========================================================================== models say what they are


def test_a_model_folder_records_its_kind(runs: dict[str, Path]) -> None:
    assert json.loads((runs["mae"] / "model" / "leanmae.json").read_text())["kind"] == "mae"
    assert json.loads((runs["clf"] / "model" / "leanmae.json").read_text())["kind"] == "classifier"


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_predict_and_evaluate_refuse_an_mae(
    command: str, runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """predict on an MAE folder wrote LABEL_0/LABEL_1 predictions from a random head."""
    args = (
        [*sample_images(runs), "--out", str(tmp_path / "p.csv")]
        if command == "predict"
        else ["--split", str(runs["split"]), "--out", str(tmp_path / "e")]
    )
    assert main([command, str(runs["mae"]), *args, "--device", "cpu"]) == 2
    one_line_error(capsys, "is an MAE", "need a classifier")
    assert not (tmp_path / "p.csv").exists() and not (tmp_path / "e").exists()


def test_reconstruct_refuses_a_classifier(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """reconstruct on a classifier used a random decoder."""
    assert (
        main(
            [
                "reconstruct",
                str(runs["clf"]),
                *sample_images(runs),
                "--out",
                str(tmp_path / "r"),
                "--device",
                "cpu",
            ]
        )
        == 2
    )
    one_line_error(capsys, "is a classifier", "reconstruct needs an MAE")


def test_pretrain_init_refuses_a_classifier(
    runs: dict[str, Path], image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(
            [
                "pretrain",
                "--data",
                str(image_folder),
                "--init",
                str(runs["clf"] / "model"),
                "--out",
                str(tmp_path / "p"),
                *QUIET,
            ]
        )
        == 2
    )
    one_line_error(capsys, "is a classifier", "needs an MAE folder")


def _test_model() -> ModelConfig:
    return ModelConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        depth=2,
        heads=2,
        mlp_ratio=2.0,
        decoder_hidden_size=32,
        decoder_depth=1,
        decoder_heads=2,
    )


def _damaged_copy(runs: dict[str, Path], tmp_path: Path, damage: str) -> Path:
    folder = tmp_path / damage
    shutil.copytree(runs["mae"] / "model", folder)
    weights = load_file(folder / "model.safetensors")
    if damage == "renamed-keys":
        save_file({f"backbone.{k}": v for k, v in weights.items()}, folder / "model.safetensors")
    elif damage == "no-encoder-keys":
        save_file(
            {k: v for k, v in weights.items() if not k.startswith("vit.")}, folder / "model.safetensors"
        )
    elif damage == "wrong-shape":
        key = next(k for k in weights if k.endswith("layernorm_before.bias"))
        save_file({**weights, key: torch.zeros(5)}, folder / "model.safetensors")
    elif damage == "damaged-safetensors":
        (folder / "model.safetensors").write_bytes(b"\xff" * 64)
    elif damage == "invalid-config-json":
        (folder / "config.json").write_text("{not json")
    return folder


DAMAGES = ["renamed-keys", "no-encoder-keys", "wrong-shape", "damaged-safetensors", "invalid-config-json"]


@pytest.mark.parametrize("damage", DAMAGES)
def test_init_weights_that_do_not_cover_the_encoder_are_an_error(
    damage: str, runs: dict[str, Path], tmp_path: Path
) -> None:
    """--init with no encoder keys (or renamed ones) trained from random weights with only a warning."""
    folder = _damaged_copy(runs, tmp_path, damage)
    with pytest.raises(CheckpointError, match=str(folder)):
        build_classifier(_test_model(), LABELS, "mean", folder)
    with pytest.raises(CheckpointError, match=str(folder)):
        build_mae(_test_model(), folder)


def test_cli_finetune_with_init_weights_of_the_wrong_shape_returns_2(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _damaged_copy(runs, tmp_path, "wrong-shape")
    assert (
        main(
            [
                "finetune",
                "--split",
                str(runs["split"]),
                "--init",
                str(folder),
                "--out",
                str(tmp_path / "ft"),
                *QUIET,
            ]
        )
        == 2
    )
    one_line_error(capsys, str(folder), "cannot be loaded")


def test_reconstruct_images_0_returns_2(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(
            [
                "reconstruct",
                str(runs["mae"]),
                *sample_images(runs),
                "--out",
                str(tmp_path / "r"),
                "--images",
                "0",
            ]
        )
        == 2
    )
    one_line_error(capsys, "--images 0")


def test_predict_skips_hidden_files_and_notebook_checkpoints_as_training_does(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    folder = tmp_path / "new"
    write_images(folder, 2, 40)
    write_images(folder / ".ipynb_checkpoints", 1, 40)
    shutil.copy(folder / "img_0000.png", folder / ".hidden.png")
    out = leanmae.predict(runs["clf"], [folder], out=tmp_path / "p.csv", device="cpu")
    with open(out) as f:
        assert [Path(row["path"]).name for row in csv.DictReader(f)] == ["img_0000.png", "img_0001.png"]


# =========================================================================== spreadsheet formulas


def test_names_that_a_spreadsheet_would_run_are_escaped_in_predictions(tmp_path: Path) -> None:
    labels = ["=1+1", "@SUM(A1)"]
    paths = ['=HYPERLINK("http://x")/a.png', "+cmd|' /C calc'!A0", "-2+3", "normal.png"]
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5], [0.6, 0.4]])
    write_predictions(
        tmp_path / "p.csv",
        paths,
        probs,
        labels,
        np.array([0, 1, 0, 1]),
        extra={"energy": ["-1.5000", "-2.0000", "-0.1000", "3.0"]},
    )
    with open(tmp_path / "p.csv", newline="") as f:
        rows = list(csv.reader(f))
    cells = [c for row in rows for c in row]
    assert not [
        c
        for c in cells
        if c[:1] in "=+@" or (c.startswith("-") and not c.replace(".", "").lstrip("-").isdigit())
    ], cells
    assert rows[1][0] == '\'=HYPERLINK("http://x")/a.png' and rows[1][1] == "'=1+1"
    assert rows[1][4] == "-1.5000", "negative numbers stay numbers"
    assert rows[0][-2:] == ["p_=1+1", "p_@SUM(A1)"]


def test_results_tables_escape_formulas_and_the_report_reads_them_back() -> None:
    text = csv_text(["class", "delta"], [["=cmd", -0.25], ["@x", "-0.5"], ["ok", 1]])
    assert text.splitlines() == ["class,delta", "'=cmd,-0.25", "'@x,-0.5", "ok,1"]
    for name in ("=cmd", "+a", "-b", "@c", "plain", "-1.5", "'quoted"):
        assert unescape(str(escape(name))) == name


# =========================================================================== one-line errors, exit code 2


@pytest.mark.parametrize(
    ("option", "key"),
    [
        (["--set", "optim.batch_size=0"], "optim.batch_size"),
        (["--set", "optim.accum_steps=0"], "optim.accum_steps"),
        (["--set", "optim.base_lr=nan"], "optim.base_lr"),
        (["--set", "run.amp=fp8"], "run.amp"),
        (["--set", "run.device=gpu"], "run.device"),
        (["--seed", "-1"], "run.seed"),
        (["--set", "model.mask_ratio=1.5"], "model.mask_ratio"),
        (["--set", "optim.betas=[0.9, 0.95"], "optim.betas"),
    ],
)
def test_a_bad_config_value_on_the_command_line_returns_2_before_anything_is_written(
    option: list[str], key: str, image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(["pretrain", "--data", str(image_folder), "--out", str(tmp_path / "run"), *QUIET, *option]) == 2
    )
    one_line_error(capsys, key)
    assert not (tmp_path / "run").exists()


def test_device_cuda_without_a_gpu_returns_2(
    image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    assert (
        main(
            [
                "pretrain",
                "--data",
                str(image_folder),
                "--out",
                str(tmp_path / "run"),
                "--preset",
                "test",
                "--device",
                "cuda",
                "--no-progress",
            ]
        )
        == 2
    )
    one_line_error(capsys, "device cuda", "no such CUDA GPU")


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        (["--fractions", "abc"], "--fractions 'abc'"),
        (["--jobs", "0"], "jobs = 0"),
        (["--fractions", "1,1.0"], "values repeat"),
    ],
)
def test_a_bad_study_option_returns_2_before_anything_is_written(
    option: list[str],
    expected: str,
    runs: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert (
        main(
            [
                "study",
                "--out",
                str(tmp_path / "s"),
                "--data",
                str(runs["data"]),
                "--classes",
                ",".join(LABELS),
                "--arms",
                "scratch",
                *option,
                "--no-progress",
            ]
        )
        == 2
    )
    one_line_error(capsys, expected)
    assert not (tmp_path / "s").exists()
