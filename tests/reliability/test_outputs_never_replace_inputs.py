"""An output never replaces an input of its command, nor a file of a leanmae run, study or model folder,
nor another command's results: export and predict write files only where nothing of leanmae's lies,
evaluate, reconstruct and adapt write result folders only under their lock."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from leanmae.cli import main
from leanmae.models.classifier import load_classifier
from leanmae.reporting.runinfo import LOCK_FILE

CPU = ["--device", "cpu"]


def one_line_error(capsys: pytest.CaptureFixture[str], *words: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert all(word in err for word in words), err
    return err


@pytest.fixture
def run_copy(reference: Path, tmp_path: Path) -> Path:
    """A finished fine-tuning run of its own, so that a test that fails cannot damage the shared one."""
    return Path(shutil.copytree(reference, tmp_path / "run"))


@pytest.fixture
def model_copy(model_folders: dict[str, Path], tmp_path: Path) -> Path:
    return Path(shutil.copytree(model_folders["classifier"], tmp_path / "model"))


# =========================================================================== export --onnx


def test_export_never_replaces_an_existing_file_without_overwrite(
    model_folders: dict[str, Path], cells: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``export --onnx split.csv`` replaced the manifest with an ONNX graph, without being asked to."""
    manifest = Path(shutil.copy(cells["split"], tmp_path / "split.csv"))
    before = manifest.read_bytes()
    assert main(["export", str(model_folders["classifier"]), "--onnx", str(manifest)]) == 2
    one_line_error(capsys, "--onnx", str(manifest), "already exists", "--overwrite")
    assert manifest.read_bytes() == before


def test_export_never_writes_over_the_weights_of_the_model_it_exports(
    model_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``export RUN --onnx RUN/model/model.safetensors --overwrite`` made the model unloadable."""
    weights = model_copy / "model.safetensors"
    before = weights.read_bytes()
    assert main(["export", str(model_copy), "--onnx", str(weights), "--overwrite"]) == 2
    one_line_error(capsys, "--onnx", "model.safetensors", "input of this command")
    assert weights.read_bytes() == before
    load_classifier(model_copy)


@pytest.mark.parametrize("where", ["run folder", "model folder of the run", "subfolder of the run"])
def test_export_never_writes_into_a_leanmae_run_or_model_folder_even_with_overwrite(
    where: str,
    run_copy: Path,
    model_folders: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A run's and a model's folders hold what their own command wrote; another command's file there would
    be taken for theirs (or replace it)."""
    target = {
        "run folder": run_copy / "model.onnx",
        "model folder of the run": run_copy / "model" / "model.onnx",
        "subfolder of the run": run_copy / "exports" / "model.onnx",
    }[where]
    args = ["export", str(model_folders["classifier"]), "--onnx", str(target), "--overwrite"]
    assert main(args) == 2
    one_line_error(capsys, "--onnx", str(target), "inside the leanmae", "another folder")
    assert not target.exists()


# =========================================================================== predict --out


def test_predict_never_replaces_a_finished_runs_predictions_even_with_overwrite(
    run_copy: Path, images: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``predict RUN ... --out RUN/predictions.csv --overwrite`` replaced the run's test predictions, and
    ``leanmae report`` then failed on the missing true_label column."""
    predictions = run_copy / "predictions.csv"
    before = predictions.read_bytes()
    args = ["predict", str(run_copy), str(images), "--out", str(predictions), "--overwrite", *CPU]
    assert main(args) == 2
    one_line_error(capsys, "--out", str(predictions), "inside the leanmae run", "another folder")
    assert predictions.read_bytes() == before


def test_predict_never_writes_into_another_commands_result_folder(
    model_folders: dict[str, Path], images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A folder holding evaluate's results (metrics.json) is evaluate's: predictions.csv there is its own."""
    results = tmp_path / "evaluated"
    results.mkdir()
    (results / "metrics.json").write_text("{}\n")
    (results / "predictions.csv").write_text("path,true_label,predicted_label\n")
    out = results / "predictions.csv"
    args = ["predict", str(model_folders["classifier"]), str(images), "--out", str(out), "--overwrite", *CPU]
    assert main(args) == 2
    one_line_error(capsys, "--out", "metrics.json")
    assert out.read_text() == "path,true_label,predicted_label\n"


def test_predict_never_writes_over_one_of_its_input_images(
    model_folders: dict[str, Path], images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = Path(shutil.copytree(images, tmp_path / "images"))
    image = sorted(folder.glob("*.png"))[0]
    before = image.read_bytes()
    model = str(model_folders["classifier"])
    args = ["predict", model, str(folder), "--out", str(image), "--overwrite", *CPU]
    assert main(args) == 2
    one_line_error(capsys, "--out", image.name, "input of this command")
    assert image.read_bytes() == before


# =========================================================================== result folders


@pytest.mark.parametrize("command", ["evaluate", "reconstruct", "adapt"])
def test_a_result_folder_is_never_inside_a_model_folder(
    command: str,
    model_folders: dict[str, Path],
    cells: dict[str, Any],
    images: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A model folder holds one model: results in a subfolder of it travel with every copy of the model."""
    kind = "mae" if command == "reconstruct" else "classifier"
    model = Path(shutil.copytree(model_folders[kind], tmp_path / "model"))
    out = model / "results"
    assert main(_result_command(command, model, out, cells, images)) == 2
    one_line_error(capsys, "--out", str(out), "model folder")
    assert not out.exists()


@pytest.fixture
def held_lock(tmp_path: Path) -> Iterator[Path]:
    """A folder whose lock another process holds, as a command still writing into it does."""
    folder = tmp_path / "busy"
    folder.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            f"fd = os.open({str(folder / LOCK_FILE)!r}, os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "os.write(fd, str(os.getpid()).encode())\n"
            "print('locked', flush=True)\n"
            "time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        yield folder
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("command", ["evaluate", "reconstruct", "adapt"])
def test_a_second_command_into_a_result_folder_being_written_is_refused(
    command: str,
    held_lock: Path,
    model_folders: dict[str, Path],
    cells: dict[str, Any],
    images: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Two evaluate commands into one --out at once both exited 0 and one result was lost."""
    kind = "mae" if command == "reconstruct" else "classifier"
    assert main(_result_command(command, model_folders[kind], held_lock, cells, images)) == 2
    one_line_error(capsys, str(held_lock), "another leanmae command")
    assert sorted(os.listdir(held_lock)) == [LOCK_FILE]


def test_a_finished_evaluate_leaves_no_lock_and_a_refused_one_no_folder(
    model_folders: dict[str, Path], cells: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "evaluated"
    assert main(_result_command("evaluate", model_folders["classifier"], out, cells, tmp_path)) == 0
    assert not (out / LOCK_FILE).exists() and (out / "metrics.json").exists()
    missing = tmp_path / "no-split.csv"
    refused = tmp_path / "refused"
    model = str(model_folders["classifier"])
    args = ["evaluate", model, "--split", str(missing), "--out", str(refused), *CPU]
    assert main(args) == 2
    assert not refused.exists()


def _result_command(command: str, model: Path, out: Path, cells: dict[str, Any], images: Path) -> list[str]:
    """The command line of a command that writes a result folder ``out``."""
    return {
        "evaluate": ["evaluate", str(model), "--split", str(cells["split"]), "--out", str(out)],
        "reconstruct": ["reconstruct", str(model), str(images), "--out", str(out)],
        "adapt": ["adapt", str(model), str(images), "--out", str(out), "--steps", "1"],
    }[command] + CPU
