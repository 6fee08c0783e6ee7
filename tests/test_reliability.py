"""Reliability and security, read as a specification.

* A killed run resumes to the same result: ``leanmae finetune`` killed with SIGKILL during an
  epoch, while writing a checkpoint or while writing its final model, then ``--resume``d, ends
  with the weights, metrics and predictions of a run that was never interrupted; so does a
  ``leanmae study`` killed between its runs. Half-written files are never read as valid, a full
  disk during a write keeps the previous file, and a non-finite loss stops the run with its last
  checkpoint intact.
* A bad file never silently changes a study: one-class data, a misspelt class, a file changed
  after the split (also in an in-domain pretraining pool), unknown YAML keys and incomplete model
  folders are clear errors.
* A checkpoint from the internet cannot run code: pickles (``pytorch_model.bin``...) are never
  unpickled by any command that takes a model folder, remote code named in config.json is never
  imported, ``torch.load`` is only ever called with ``weights_only=True``, names from the data are
  escaped in report.html, and manifest paths and symlinks stay inside the data root.

Kill tests start real processes (``python -m leanmae ...``) and kill them with SIGKILL; the moments
"while writing a checkpoint" and "while writing the model" are made observable by a wrapper that
pauses the process inside that write (see ``PAUSING_CLI``), the moment "during an epoch" is a
seeded random delay after the first checkpoint.
"""

from __future__ import annotations

import ast
import errno
import hashlib
import json
import os
import pickle
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import leanmae
import leanmae.commands.finetune as finetune_command
import leanmae.commands.study as study_command
import leanmae.files as files
import leanmae.reporting.study_report as study_report
import leanmae.training.checkpoint as checkpoint
import leanmae.training.engine as engine
from helpers import assert_same_weights, load_weights, read_csv, tiny_finetune, tiny_pretrain, write_images
from leanmae.cli import main
from leanmae.config import FinetuneConfig, resolve
from leanmae.data.cache import DecodeSpec, load_or_build, manifest_hash
from leanmae.data.sources import scan
from leanmae.data.split import make_split, read_manifest
from leanmae.data.synthetic import make_synthetic_wbc
from leanmae.errors import CheckpointError, ConfigError, DataError
from leanmae.files import write_atomic
from leanmae.models.classifier import build_classifier
from leanmae.models.io import save_model
from leanmae.models.mae import build_mae
from leanmae.training.checkpoint import list_checkpoints

SRC = Path(leanmae.__file__).resolve().parent
CLASSES = ["basophil", "eosinophil"]
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]

# The fine-tuning run every kill test interrupts and compares with (16 short epochs, drop path on,
# so that a resumed run must replay the random draws of the epochs it redoes).
EPOCHS = 16
RUN = {"epochs": EPOCHS, "seed": 0, "sets": ["classifier.drop_path=0.1"]}
RUN_FLAGS = [
    "--preset",
    "test",
    "--device",
    "cpu",
    "--no-progress",
    "--epochs",
    str(EPOCHS),
    "--seed",
    "0",
    "--set",
    "classifier.drop_path=0.1",
]

# Runs ``leanmae.cli.main`` like ``python -m leanmae``, but pauses for a minute inside one write,
# named by LEANMAE_TEST_PAUSE: "epoch-NNNN" pauses after that checkpoint's model.safetensors is
# written (the checkpoint is half on disk), "model" pauses after the final model folder is filled
# but before it is renamed into place. The test kills the process during the pause.
PAUSING_CLI = r"""
import os, sys, time
from contextlib import contextmanager
import leanmae.models.io as model_io
import leanmae.files as files
import leanmae.training.checkpoint as checkpoint

where = os.environ["LEANMAE_TEST_PAUSE"]
real_save_file, real_atomic_dir = checkpoint.save_file, model_io.atomic_dir

def pausing_save_file(tensors, path, *args, **kwargs):
    real_save_file(tensors, path, *args, **kwargs)
    if os.path.basename(os.path.dirname(str(path))).startswith("." + where + ".tmp-"):
        time.sleep(60)

@contextmanager
def pausing_atomic_dir(final):
    with real_atomic_dir(final) as tmp:
        yield tmp
        if os.path.basename(str(final)) == where:
            time.sleep(60)

checkpoint.save_file, model_io.atomic_dir = pausing_save_file, pausing_atomic_dir
from leanmae.cli import main
sys.exit(main(sys.argv[1:]))
"""


# =========================================================================== helpers


class RunsCode:
    """Unpickling this object calls ``os.mkdir(marker)``: the proof that a pickle was (or was not) loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (self.marker,))


def _plant_pickles(folder: Path, marker: Path) -> None:
    """Every pickle file name a transformers / PyTorch checkpoint may carry, each running code when loaded."""
    torch.save({"vit.embeddings.cls_token": RunsCode(marker)}, folder / "pytorch_model.bin")
    torch.save({"state": RunsCode(marker)}, folder / "optimizer.pt")
    (folder / "training_args.bin").write_bytes(pickle.dumps(RunsCode(marker)))
    (folder / "model.pkl").write_bytes(pickle.dumps(RunsCode(marker)))


def _plant_remote_code(folder: Path, marker: Path) -> None:
    """config.json pointing at Python code in the folder (what ``trust_remote_code=True`` would import)."""
    (folder / "evil_model.py").write_text(f"import os\nos.mkdir({str(marker)!r})\n")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {
        "AutoConfig": "evil_model.EvilConfig",
        "AutoModel": "evil_model.EvilModel",
        "AutoModelForImageClassification": "evil_model.EvilModel",
    }
    (folder / "config.json").write_text(json.dumps(config))


def _digest(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()
    }


def _without_timing(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if "seconds" not in k}


def assert_same_result(run: Path, reference: Path) -> None:
    """The same model (bit for bit), metrics.json, history.csv and predictions.csv, apart from timings."""
    assert_same_weights(load_weights(run / "model"), load_weights(reference / "model"))
    metrics, expected = (json.loads((p / "metrics.json").read_text()) for p in (run, reference))
    assert _without_timing(metrics) == _without_timing(expected)
    assert [_without_timing(r) for r in read_csv(run / "history.csv")] == [
        _without_timing(r) for r in read_csv(reference / "history.csv")
    ]
    assert (run / "predictions.csv").read_text() == (reference / "predictions.csv").read_text()


def _start(args: list[str], cwd: Path, pause: str | None = None) -> subprocess.Popen:
    """``python -m leanmae ARGS`` (or the pausing wrapper) in its own process group, output to cwd/*.txt."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "leanmae", *args]
    if pause:
        env["LEANMAE_TEST_PAUSE"] = pause
        command = [sys.executable, "-c", PAUSING_CLI, *args]
    cwd.mkdir(parents=True, exist_ok=True)
    with open(cwd / "stdout.txt", "ab") as out, open(cwd / "stderr.txt", "ab") as err:
        return subprocess.Popen(command, env=env, cwd=cwd, stdout=out, stderr=err, start_new_session=True)


def _wait_for(proc: subprocess.Popen, cwd: Path, condition: Callable[[], Any], timeout: float = 120) -> Any:
    """Poll ``condition`` every few ms until it holds; fail (showing stderr) if the process ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        if proc.poll() is not None:
            pytest.fail(
                f"the process ended (code {proc.returncode}) before the moment to kill it: {(cwd / 'stderr.txt').read_text()[-3000:]}"
            )
        time.sleep(0.005)
    pytest.fail(
        f"timed out waiting for the moment to kill the process: {(cwd / 'stderr.txt').read_text()[-3000:]}"
    )


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process we started and everything in its process group (its children)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=60)


def _tmp_entries(folder: Path, stem: str) -> list[Path]:
    return sorted(folder.glob(f".{stem}.tmp-*")) if folder.is_dir() else []


# =========================================================================== data and models


@pytest.fixture(scope="module")
def cells(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """20 synthetic 32 px cells of two classes and their split (7 train, 1 val, 2 test per class)."""
    root = tmp_path_factory.mktemp("reliability")
    data = make_synthetic_wbc(root / "cells", n_per_class=10, size=32)
    split = root / "split.csv"
    leanmae.split(data, classes=CLASSES, out=split)
    return {"root": root, "data": data, "split": split, "items": read_manifest(split)[1]}


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("images") / "images"
    write_images(folder, 16, 40)
    return folder


@pytest.fixture(scope="module")
def reference(cells: dict[str, Any]) -> Path:
    """The uninterrupted run every interrupted one must reproduce."""
    out = cells["root"] / "reference"
    tiny_finetune(cells["split"], out, **RUN)
    return out


def _test_model():
    return resolve(FinetuneConfig, "finetune", "test", None, {}).model


@pytest.fixture(scope="module")
def model_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An MAE folder and a classifier folder (untrained, test preset shape) as leanmae saves them."""
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    mae = save_model(build_mae(_test_model()), root / "mae", MEAN, STD, {"kind": "mae", "cache_size": 40})
    classifier = save_model(
        build_classifier(_test_model(), CLASSES),
        root / "classifier",
        MEAN,
        STD,
        {"kind": "classifier", "labels": CLASSES, "cache_size": 40},
    )
    return {"mae": mae, "classifier": classifier}


def _finetune_args(cells: dict[str, Any], out: Path) -> list[str]:
    return ["finetune", "--split", str(cells["split"]), "--out", str(out), *RUN_FLAGS]


# =========================================================================== killed runs resume to the same result


KILL_MOMENTS = ["during-an-epoch", "while-writing-a-checkpoint", "while-writing-the-model"]


@pytest.mark.parametrize("moment", KILL_MOMENTS)
def test_a_finetune_killed_with_sigkill_resumes_to_the_result_of_an_uninterrupted_run(
    cells: dict[str, Any], reference: Path, tmp_path: Path, moment: str
) -> None:
    """SIGKILL ``leanmae finetune`` at a seeded moment, ``--resume`` it: same weights, metrics and predictions."""
    rng = random.Random(f"kill-{moment}")
    out = tmp_path / "run"
    checkpoints = out / "checkpoints"
    epoch = rng.randint(2, EPOCHS - 1)
    pause = {
        "during-an-epoch": None,
        "while-writing-a-checkpoint": f"epoch-{epoch:04d}",
        "while-writing-the-model": "model",
    }[moment]
    proc = _start(_finetune_args(cells, out), tmp_path / "proc", pause=pause)
    try:
        if moment == "during-an-epoch":
            _wait_for(proc, tmp_path / "proc", lambda: list_checkpoints(checkpoints))
            time.sleep(rng.uniform(0.0, 0.3))
        elif moment == "while-writing-a-checkpoint":
            _wait_for(
                proc,
                tmp_path / "proc",
                lambda: [
                    p
                    for p in _tmp_entries(checkpoints, f"epoch-{epoch:04d}")
                    if (p / "model.safetensors").exists()
                ],
            )
        else:
            _wait_for(proc, tmp_path / "proc", lambda: _tmp_entries(out, "model"))
        assert proc.poll() is None, "the run finished before it could be killed"
        _kill_group(proc)
    finally:
        if proc.poll() is None:
            _kill_group(proc)
    assert proc.returncode == -signal.SIGKILL
    assert json.loads((out / "run.json").read_text())["status"] == "running"
    assert not (out / "metrics.json").exists()

    done = list_checkpoints(checkpoints)
    if moment == "while-writing-a-checkpoint":
        half = _tmp_entries(checkpoints, f"epoch-{epoch:04d}")
        assert half and not (half[0] / "trainer_state.json").exists(), (
            "the checkpoint was half written when killed"
        )
        assert [p.name for p in done] == [f"epoch-{epoch - 1:04d}"], (
            "the half-written checkpoint is not listed; the one before it is"
        )
    elif moment == "while-writing-the-model":
        assert _tmp_entries(out, "model") and not (out / "model").exists(), (
            "the model folder appears only when complete"
        )
        assert [p.name for p in done] == [f"epoch-{EPOCHS:04d}"]
    else:
        assert done, "killed after the first checkpoint"

    assert main([*_finetune_args(cells, out), "--resume"]) == 0
    assert_same_result(out, reference)
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "finished" and info["resumed_from_epoch"] == int(done[-1].name.split("-")[1])


def test_a_pretrain_killed_while_writing_a_checkpoint_resumes_to_identical_weights(
    images: Path, tmp_path: Path
) -> None:
    """(A pretraining run killed during an epoch is tests/test_pretrain.py's SIGKILL test.)"""
    epochs, epoch = 6, random.Random("kill-pretrain").randint(2, 5)
    out = tmp_path / "run"
    args = [
        "pretrain",
        "--data",
        str(images),
        "--out",
        str(out),
        "--preset",
        "test",
        "--device",
        "cpu",
        "--no-progress",
        "--epochs",
        str(epochs),
    ]
    proc = _start(args, tmp_path / "proc", pause=f"epoch-{epoch:04d}")
    try:
        _wait_for(
            proc,
            tmp_path / "proc",
            lambda: [
                p
                for p in _tmp_entries(out / "checkpoints", f"epoch-{epoch:04d}")
                if (p / "model.safetensors").exists()
            ],
        )
        _kill_group(proc)
    finally:
        if proc.poll() is None:
            _kill_group(proc)
    assert proc.returncode == -signal.SIGKILL
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == [f"epoch-{epoch - 1:04d}"]

    assert main([*args, "--resume"]) == 0
    tiny_pretrain(images, tmp_path / "straight", epochs=epochs)
    assert_same_weights(load_weights(out / "model"), load_weights(tmp_path / "straight" / "model"))
    history = [
        [_without_timing(r) for r in read_csv(p / "history.csv")] for p in (out, tmp_path / "straight")
    ]
    assert history[0] == history[1]
    assert json.loads((out / "run.json").read_text())["resumed_from_epoch"] == epoch - 1


STUDY_EPOCHS = 12
EVIL_CLASS = "<script>alert(1)"  # '/' cannot be part of a file name, so no closing tag
EVIL_DIR = "<img src=x onerror=alert(1)>"


def _study_kwargs(cells: Path, **extra: Any) -> dict[str, Any]:
    settings = {
        "data": str(cells),
        "classes": ["basophil", EVIL_CLASS],
        "arms": ["scratch"],
        "fractions": [1.0],
        "seeds": [0, 1],
        "preset": "test",
        "finetune_epochs": STUDY_EPOCHS,
        "set": ["run.device=cpu"],
        "progress": False,
    }
    return {**settings, **extra}


def _study_args(cells: Path, out: Path, epochs: int = STUDY_EPOCHS, seeds: str = "0,1") -> list[str]:
    return [
        "study",
        "--out",
        str(out),
        "--data",
        str(cells),
        "--classes",
        f"basophil,{EVIL_CLASS}",
        "--arms",
        "scratch",
        "--fractions",
        "1",
        "--seeds",
        seeds,
        "--preset",
        "test",
        "--finetune-epochs",
        str(epochs),
        "--jobs",
        "1",
        "--set",
        "run.device=cpu",
        "--no-progress",
    ]


@pytest.fixture(scope="module")
def study_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic cells under a folder named like an HTML tag, one class named like a script tag."""
    root = tmp_path_factory.mktemp("study-data")
    try:
        (root / EVIL_DIR).mkdir()
        (root / EVIL_DIR / EVIL_CLASS).mkdir()
        (root / EVIL_DIR / EVIL_CLASS).rmdir()
    except OSError:
        pytest.skip("this file system does not allow '<', '>' or '(' in names")
    cells = make_synthetic_wbc(root / EVIL_DIR / "cells", n_per_class=8, size=32)
    (cells / "eosinophil").rename(cells / EVIL_CLASS)
    first = sorted((cells / EVIL_CLASS).glob("*.png"))[0]
    first.rename(first.with_name("<script>alert(2)<.png"))
    return cells


def _run_in_this_process(job: study_command.Job) -> int:
    """What ``_launch_local`` does, without starting a Python process per run (a few seconds each here)."""
    job.out.mkdir(parents=True, exist_ok=True)
    try:
        study_command.run_job(job.command, study_command._with_resume(job))
    except Exception:
        return 1
    return 0


@pytest.fixture(scope="module")
def reference_study(study_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted study (its runs in this process: the same code, deterministic, only faster to start)."""
    out = tmp_path_factory.mktemp("reference-study") / "study"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(study_command, "_launch_local", _run_in_this_process)
        leanmae.study(out=out, jobs=1, **_study_kwargs(study_data))
    return out


def _results(study: Path) -> dict[str, Any]:
    """Every results/*.csv but times.csv (runs.csv without its timing column) and findings.md."""
    found: dict[str, Any] = {"findings.md": (study / "results" / "findings.md").read_text()}
    for path in sorted(p for p in (study / "results").glob("*.csv") if p.name != "times.csv"):
        found[path.name] = [{k: v for k, v in row.items() if k != "seconds"} for row in read_csv(path)]
    return found


def test_a_study_killed_mid_way_reports_only_finished_runs_and_resumes_to_the_same_tables(
    study_data: Path, reference_study: Path, tmp_path: Path
) -> None:
    """Kill ``leanmae study`` (and its run) while its second run trains; the report lists the finished run only; rerunning completes it identically."""
    out = tmp_path / "study"
    second = out / "runs" / "scratch_f1_s1"
    epoch = random.Random("kill-study").randint(1, STUDY_EPOCHS - 2)
    proc = _start(_study_args(study_data, out), tmp_path / "proc")
    try:
        _wait_for(
            proc,
            tmp_path / "proc",
            lambda: [
                p for p in list_checkpoints(second / "checkpoints") if int(p.name.split("-")[1]) >= epoch
            ],
            timeout=180,
        )
        _kill_group(proc)
    finally:
        if proc.poll() is None:
            _kill_group(proc)
    assert proc.returncode == -signal.SIGKILL
    assert json.loads((out / "runs" / "scratch_f1_s0" / "run.json").read_text())["status"] == "finished"
    assert (
        json.loads((second / "run.json").read_text())["status"] == "running"
        and not (second / "metrics.json").exists()
    )

    leanmae.report(out)  # what `leanmae report` shows of the interrupted study
    assert [(r["arm"], r["seed"]) for r in read_csv(out / "results" / "runs.csv")] == [("scratch", "0")]
    text = (out / "report.html").read_text()
    assert "1 of 2 fine-tuning runs finished" in text and "not complete" in text

    states = leanmae.study(out=out, jobs=1, **_study_kwargs(study_data))
    assert set(states.values()) == {"done"}
    assert "resuming from" in (out / "runs" / "scratch_f1_s1.log").read_text()
    assert _results(out) == _results(reference_study)
    assert_same_weights(
        load_weights(second / "model"), load_weights(reference_study / "runs" / "scratch_f1_s1" / "model")
    )
    assert "2 of 2 fine-tuning runs finished" in (out / "report.html").read_text()


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(
    not Path("/proc/self/stat").exists(), reason="needs /proc to find the study's child processes"
)
def test_killing_the_study_process_alone_also_stops_the_run_it_launched(
    study_data: Path, tmp_path: Path
) -> None:
    """``kill -9 <study pid>`` must not leave its run training on: rerunning the study would put a second writer into the same run folder."""
    out = tmp_path / "study"
    proc = _start(_study_args(study_data, out, epochs=2000, seeds="0"), tmp_path / "proc")
    try:
        children = _wait_for(
            proc, tmp_path / "proc", lambda: _children(proc.pid), timeout=180
        )  # the run's process has started
        os.kill(proc.pid, signal.SIGKILL)  # the study process only, as `kill -9 PID` does
        proc.wait(timeout=60)
        deadline = time.monotonic() + 5
        while any(_alive(c) for c in children) and time.monotonic() < deadline:
            time.sleep(0.05)
        orphans = [c for c in children if _alive(c)]
        assert not orphans, (
            f"process(es) {orphans} of the study's run kept running after the study was killed; they go on training into {out / 'runs' / 'scratch_f1_s0'}"
        )
    finally:
        _kill_group(proc)  # the run is still in the study's process group


def test_a_study_killed_while_writing_its_report_keeps_the_old_report_and_rebuilds_it(
    reference_study: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kill inside the report.html write leaves the previous report (and a dotted temp file); `leanmae report` rebuilds the same one."""
    study = tmp_path / "study"
    shutil.copytree(reference_study, study)
    leanmae.report(study)  # the report names its folder in the study command: build it here first
    before = (study / "report.html").read_bytes()
    tables_before = _results(study)
    real = study_report.write_atomic

    def killed_while_writing_the_report(path: Path | str, data: str | bytes) -> None:
        if Path(path).name == "report.html":
            Path(path).with_name(".report.html.tmp-999").write_text(
                str(data)[: len(data) // 2]
            )  # what SIGKILL leaves behind
            raise KeyboardInterrupt
        real(path, data)

    monkeypatch.setattr(study_report, "write_atomic", killed_while_writing_the_report)
    with pytest.raises(KeyboardInterrupt):
        leanmae.report(study)
    assert (study / "report.html").read_bytes() == before, "the previous report is untouched"
    assert _results(study) == tables_before, "every results file is complete"
    monkeypatch.setattr(study_report, "write_atomic", real)
    leanmae.report(study)
    assert (study / "report.html").read_bytes() == before


# =========================================================================== half-written files, full disk, non-finite loss


def _interrupt_after_epoch(monkeypatch: pytest.MonkeyPatch, epoch: int) -> Callable[[], None]:
    """Stop the next run (KeyboardInterrupt) just after checkpoint ``epoch``; returns a function restoring the engine."""
    original = engine.write_history

    def interrupt(path: Path, rows: list[dict[str, float]]) -> None:
        original(path, rows)
        if len(rows) == epoch:
            raise KeyboardInterrupt

    monkeypatch.setattr(engine, "write_history", interrupt)
    return lambda: monkeypatch.setattr(engine, "write_history", original)


def test_leftover_temporary_files_of_a_killed_write_are_never_read_on_resume(
    cells: dict[str, Any], reference: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A killed writer leaves dotted ``.NAME.tmp-PID`` files and folders; resuming ignores every one of them."""
    out = tmp_path / "run"
    restore = _interrupt_after_epoch(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        tiny_finetune(cells["split"], out, **RUN)
    restore()
    checkpoints = out / "checkpoints"
    half = checkpoints / ".epoch-0002.tmp-123"  # a checkpoint killed mid-write: claims epoch 2, holds garbage
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"\x00" * 7)
    (half / "trainer_state.json").write_text('{"epoch": 2, "history": [')
    old = checkpoints / ".epoch-0001.old-77"
    old.mkdir()
    (old / "model.safetensors").write_bytes(b"garbage")
    (out / ".history.csv.tmp-1").write_text("epoch,train_loss,val_loss\n1,nan,nan\n2,na")
    (out / ".run.json.tmp-1").write_text('{"status": "fini')
    (out / ".metrics.json.tmp-1").write_text('{"test": {"accuracy": 1.0')
    (out / ".best.safetensors.tmp-1").write_bytes(b"\x00" * 7)
    (out / ".model.tmp-1").mkdir()
    (out / ".model.tmp-1" / "config.json").write_text("{")
    assert [p.name for p in list_checkpoints(checkpoints)] == ["epoch-0001"]

    metrics = tiny_finetune(cells["split"], out, resume=True, **RUN)
    assert json.loads((out / "run.json").read_text())["resumed_from_epoch"] == 1
    assert metrics["selected_epoch"] == json.loads((reference / "metrics.json").read_text())["selected_epoch"]
    assert_same_result(out, reference)


def test_a_half_built_decode_cache_is_never_used(images: Path, tmp_path: Path) -> None:
    """A cache build killed mid-way leaves ``KEY.tmp-PID``; the next run decodes afresh instead of reading it."""
    records = scan(images)
    spec = DecodeSpec(size=24)
    key = manifest_hash(records, spec)
    half = tmp_path / "cache" / f"{key[:24]}.tmp-999"
    half.mkdir(parents=True)
    (half / "images.u8").write_bytes(b"\xff" * (len(records) * 24 * 24 * 3))
    (half / "index.json").write_text(
        json.dumps(
            {
                "count": len(records),
                "size": 24,
                "sources": list(range(len(records))),
                "boxes": [[0, 0, 1, 1]] * len(records),
                "skipped": [],
            }
        )
    )
    cache = load_or_build(records, spec, cache_dir=tmp_path / "cache", workers=1, progress=False)
    assert not (cache.images == 255).all(), "the garbage of the half-built cache was read"


def test_a_full_disk_during_a_checkpoint_write_keeps_the_previous_checkpoint_and_stops(
    cells: dict[str, Any], reference: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC while writing checkpoint 2: the OSError propagates, no temp folder is left, checkpoint 1 loads and resumes."""
    real = checkpoint.save_file

    def disk_full_at_epoch_2(
        tensors: dict[str, torch.Tensor], path: str | Path, *args: Any, **kwargs: Any
    ) -> None:
        if Path(path).parent.name.startswith(".epoch-0002.tmp-"):
            real(tensors, path, *args, **kwargs)  # a partial file is on disk...
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))  # ...when the disk fills up
        real(tensors, path, *args, **kwargs)

    out = tmp_path / "run"
    monkeypatch.setattr(checkpoint, "save_file", disk_full_at_epoch_2)
    with pytest.raises(OSError) as info:
        tiny_finetune(cells["split"], out, **RUN)
    assert info.value.errno == errno.ENOSPC
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["epoch-0001"], (
        "the previous checkpoint stays, no temp folder"
    )
    assert not (out / "model").exists() and json.loads((out / "run.json").read_text())["status"] == "running"
    state = json.loads((out / "checkpoints" / "epoch-0001" / "trainer_state.json").read_text())
    assert state["epoch"] == 1 and len(state["history"]) == 1

    monkeypatch.setattr(checkpoint, "save_file", real)  # space freed
    tiny_finetune(cells["split"], out, resume=True, **RUN)
    assert json.loads((out / "run.json").read_text())["resumed_from_epoch"] == 1
    assert_same_result(out, reference)


def test_a_full_disk_while_rewriting_a_file_keeps_its_previous_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """history.csv, run.json, metrics.json, results and report.html all go through write_atomic."""
    path = tmp_path / "history.csv"
    write_atomic(path, "epoch,loss\n1,0.5\n")

    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files.os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        write_atomic(path, "epoch,loss\n1,0.5\n2,0.4\n")
    assert path.read_text() == "epoch,loss\n1,0.5\n"
    assert [p.name for p in tmp_path.iterdir()] == ["history.csv"], "no temp file is left behind"


def test_a_non_finite_loss_stops_the_run_naming_the_epoch_and_keeps_the_last_checkpoint(
    cells: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The loss turns NaN in epoch 2: exit code 2 with a one-line message naming epoch 2; checkpoint 1 is untouched and resumable."""
    out = tmp_path / "run"
    real_fit, real_history = finetune_command.fit, engine.write_history
    snapshot: dict[str, str] = {}

    def diverging_fit(
        model: torch.nn.Module, task: engine.Task, *args: Any, **kwargs: Any
    ) -> engine.TrainResult:
        current: dict[str, int] = {}
        prepare, loss = task.prepare, task.loss

        def prepare_noting_the_epoch(batch: Any, epoch: int) -> Any:
            current["epoch"] = epoch
            return prepare(batch, epoch)

        def poisoned(module: torch.nn.Module, inputs: Any) -> torch.Tensor:
            value = loss(module, inputs)
            return value * float("nan") if current["epoch"] >= 1 else value

        task.prepare, task.loss = prepare_noting_the_epoch, poisoned
        return real_fit(model, task, *args, **kwargs)

    def history_noting_checkpoint_1(path: Path, rows: list[dict[str, float]]) -> None:
        real_history(path, rows)
        if len(rows) == 1:
            snapshot.update(_digest(out / "checkpoints" / "epoch-0001"))

    monkeypatch.setattr(finetune_command, "fit", diverging_fit)
    monkeypatch.setattr(engine, "write_history", history_noting_checkpoint_1)
    args = [
        "finetune",
        "--split",
        str(cells["split"]),
        "--out",
        str(out),
        "--preset",
        "test",
        "--device",
        "cpu",
        "--no-progress",
        "--epochs",
        "3",
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("leanmae finetune: error: loss is nan at epoch 2"), err
    assert "--resume" in err and "Traceback" not in err
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["epoch-0001"]
    assert _digest(out / "checkpoints" / "epoch-0001") == snapshot, "the last checkpoint is intact"
    assert not (out / "model").exists() and not (out / "metrics.json").exists()
    assert json.loads((out / "run.json").read_text())["status"] == "running"

    monkeypatch.setattr(finetune_command, "fit", real_fit)  # the cause fixed
    assert main([*args, "--resume"]) == 0
    assert json.loads((out / "run.json").read_text())["resumed_from_epoch"] == 1


@pytest.mark.parametrize("command", ["pretrain", "finetune"])
def test_an_absurd_learning_rate_returns_2_with_a_clear_message(
    command: str, cells: dict[str, Any], images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = ["--data", str(images)] if command == "pretrain" else ["--split", str(cells["split"])]
    code = main(
        [
            command,
            *source,
            "--out",
            str(tmp_path / "run"),
            "--preset",
            "test",
            "--device",
            "cpu",
            "--no-progress",
            "--epochs",
            "2",
            "--set",
            "optim.base_lr=1e30",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert re.match(rf"leanmae {command}: error: loss is -?(nan|inf) at epoch \d", err), err
    assert "optim.base_lr" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "model").exists()


# =========================================================================== bad input never silently changes a study


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


def _small_split(tmp_path: Path) -> tuple[Path, Path, list]:
    data = make_synthetic_wbc(tmp_path / "cells", n_per_class=5, size=24)
    split = tmp_path / "split.csv"
    leanmae.split(data, classes=CLASSES, out=split)
    return data, split, read_manifest(split)[1]


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
    """A study's in-domain pool is its split.csv: a changed train file must stop pretraining as it stops fine-tuning."""
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


# =========================================================================== checkpoints from the internet cannot run code


def test_the_pickle_trap_is_armed(tmp_path: Path) -> None:
    """Loading these files the unsafe way does run code: the tests below prove something."""
    _plant_pickles(tmp_path, tmp_path / "marker")
    torch.load(tmp_path / "pytorch_model.bin", weights_only=False)
    assert (tmp_path / "marker").exists()
    with pytest.raises(pickle.UnpicklingError):
        torch.load(tmp_path / "optimizer.pt", weights_only=True)


def _command(entry: str, folder: Path, cells: dict[str, Any], images: Path, out: Path) -> list[str]:
    cpu = ["--device", "cpu"]
    train = ["--preset", "test", "--no-progress", "--epochs", "1", *cpu]
    return {
        "pretrain --init": [
            "pretrain",
            "--data",
            str(images),
            "--init",
            str(folder),
            "--out",
            str(out),
            *train,
        ],
        "finetune --init": [
            "finetune",
            "--split",
            str(cells["split"]),
            "--init",
            str(folder),
            "--out",
            str(out),
            *train,
        ],
        "reconstruct": ["reconstruct", str(folder), str(images), "--out", str(out), *cpu],
        "evaluate": ["evaluate", str(folder), "--split", str(cells["split"]), "--out", str(out), *cpu],
        "predict": ["predict", str(folder), str(images), "--out", str(out / "predictions.csv"), *cpu],
    }[entry]


ENTRIES = {
    "pretrain --init": "mae",
    "finetune --init": "mae",
    "reconstruct": "mae",
    "evaluate": "classifier",
    "predict": "classifier",
}
BROKEN = {  # folder kind: (files kept from a good folder, whether pickles are planted, the missing file named in the error)
    "pickle-only": (["config.json"], True, "model.safetensors"),
    "config-without-weights": (
        ["config.json", "preprocessor_config.json", "leanmae.json"],
        False,
        "model.safetensors",
    ),
    "weights-without-config": (["model.safetensors"], False, "config.json"),
}


@pytest.mark.parametrize("kind", list(BROKEN))
@pytest.mark.parametrize("entry", list(ENTRIES))
def test_an_incomplete_or_pickled_model_folder_is_refused_without_running_code(
    entry: str,
    kind: str,
    model_folders: dict[str, Path],
    cells: dict[str, Any],
    images: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Every command that takes a model folder: exit code 2 naming the missing file, no pickle loaded, nothing written."""
    keep, pickles, missing = BROKEN[kind]
    folder = tmp_path / "downloaded"
    folder.mkdir()
    for name in keep:
        shutil.copy(model_folders[ENTRIES[entry]] / name, folder / name)
    marker = tmp_path / "code-ran"
    if pickles:
        _plant_pickles(folder, marker)
    out = tmp_path / "out"
    assert main(_command(entry, folder, cells, images, out)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"leanmae {entry.split()[0]}: error: ") and "Traceback" not in err
    assert f"missing {missing}" in err
    if pickles:
        assert "pytorch_model.bin" in err and "pickle" in err
    assert not marker.exists(), "a pickle was loaded"
    assert (
        not (out / "model").exists()
        and not (out / "metrics.json").exists()
        and not (out / "predictions.csv").exists()
    )


@pytest.mark.parametrize("entry", list(ENTRIES))
def test_pickles_and_remote_code_beside_safetensors_weights_are_never_loaded(
    entry: str, model_folders: dict[str, Path], cells: dict[str, Any], images: Path, tmp_path: Path
) -> None:
    """A usable folder that also carries pickles and code named in config.json's auto_map: the command works from the safetensors alone."""
    folder = tmp_path / "downloaded"
    shutil.copytree(model_folders[ENTRIES[entry]], folder)
    marker = tmp_path / "code-ran"
    _plant_pickles(folder, marker)
    _plant_remote_code(folder, marker)
    assert main(_command(entry, folder, cells, images, tmp_path / "out")) == 0
    assert not marker.exists(), "a pickle was unpickled or remote code imported"


def test_a_pickle_disguised_as_a_checkpoint_is_never_unpickled_on_resume(
    cells: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    restore = _interrupt_after_epoch(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        tiny_finetune(cells["split"], out, epochs=3)
    restore()
    marker = tmp_path / "code-ran"
    last = out / "checkpoints" / "epoch-0001"
    for name in ("model.safetensors", "optimizer.safetensors"):
        torch.save({"weights": RunsCode(marker)}, last / name)
    with pytest.raises(CheckpointError, match="unreadable checkpoint file"):
        tiny_finetune(cells["split"], out, epochs=3, resume=True)
    assert not marker.exists(), "a pickle was loaded"
    assert not (out / "model").exists()


def test_a_corrupt_checkpoint_on_resume_returns_2_naming_the_file(
    cells: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A checkpoint damaged on disk (or replaced by a pickle) is a one-line CheckpointError naming it, not a traceback."""
    out = tmp_path / "run"
    restore = _interrupt_after_epoch(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        tiny_finetune(cells["split"], out, epochs=3)
    restore()
    (out / "checkpoints" / "epoch-0001" / "model.safetensors").write_bytes(pickle.dumps({"w": [1, 2, 3]}))
    args = [
        "finetune",
        "--split",
        str(cells["split"]),
        "--out",
        str(out),
        "--preset",
        "test",
        "--device",
        "cpu",
        "--no-progress",
        "--epochs",
        "3",
        "--resume",
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "epoch-0001" in err and "model.safetensors" in err and "Traceback" not in err


def _constant(node: ast.expr | None, value: object) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def unsafe_loads(source: str, where: str = "<source>") -> tuple[list[str], int]:
    """(problems, number of model from_pretrained calls) of one Python source.

    Problems: a pickle library imported; ``torch.load`` (under any alias) without ``weights_only=True``;
    ``allow_pickle`` or ``trust_remote_code`` not literally False; a model's ``from_pretrained``
    (not a config's or processor's) without ``use_safetensors=True``.
    """
    tree = ast.parse(source)
    problems, model_loads = [], 0
    torch_modules, torch_loads = {"torch"}, set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            )
            if any(
                n.split(".")[0]
                in ("pickle", "_pickle", "cPickle", "dill", "joblib", "cloudpickle", "shelve", "marshal")
                for n in names
            ):
                problems.append(f"{where}:{node.lineno}: imports a pickle library")
        if isinstance(node, ast.Import):
            torch_modules |= {a.asname for a in node.names if a.name == "torch" and a.asname}
        if isinstance(node, ast.ImportFrom) and node.module in ("torch", "torch.serialization"):
            torch_loads |= {a.asname or a.name for a in node.names if a.name == "load"}
    for call in (node for node in ast.walk(tree) if isinstance(node, ast.Call)):
        func = ast.unparse(call.func)
        keywords = {k.arg: k.value for k in call.keywords if k.arg}
        if (
            func in torch_loads
            or func in {f"{m}.load" for m in torch_modules}
            or func.endswith("serialization.load")
        ):
            if not _constant(keywords.get("weights_only"), True):
                problems.append(f"{where}:{call.lineno}: {func}(...) without weights_only=True")
        for unsafe in ("allow_pickle", "trust_remote_code"):
            if unsafe in keywords and not _constant(keywords[unsafe], False):
                problems.append(f"{where}:{call.lineno}: {func}(..., {unsafe}=...)")
        if func.endswith(".from_pretrained") and not re.search(
            r"(Config|Processor|Tokenizer)$", func.rsplit(".", 1)[0]
        ):
            model_loads += 1
            if not _constant(keywords.get("use_safetensors"), True):
                problems.append(f"{where}:{call.lineno}: {func}(...) without use_safetensors=True")
    return problems, model_loads


UNSAFE_EXAMPLE = """
import pickle
import numpy as np
import torch
import torch as T
from torch import load as tload
from transformers import AutoModel, ViTConfig
torch.load("a.bin")
T.load("a.bin", weights_only=False)
tload("a.bin")
torch.load("a.bin", weights_only=True)
np.load("a.npy", allow_pickle=True)
AutoModel.from_pretrained("x", trust_remote_code=True, use_safetensors=True)
AutoModel.from_pretrained("x")
ViTConfig.from_pretrained("x")
"""


def test_the_source_scan_finds_every_kind_of_unsafe_load() -> None:
    problems, model_loads = unsafe_loads(UNSAFE_EXAMPLE)
    assert model_loads == 2
    assert len(problems) == 7, "\n".join(
        problems
    )  # pickle import, 3 torch.load, allow_pickle, trust_remote_code, no use_safetensors


def test_the_source_never_unpickles_and_loads_weights_from_safetensors_only() -> None:
    """Every ``torch.load`` passes ``weights_only=True``; no pickle/joblib/dill, no ``allow_pickle=True``,
    no ``trust_remote_code=True``; every model ``from_pretrained`` passes ``use_safetensors=True``."""
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 10, f"the scan found the sources under {SRC}"
    problems, model_loads = [], 0
    for path in files:
        found, loads = unsafe_loads(path.read_text(), str(path.relative_to(SRC.parent)))
        problems += found
        model_loads += loads
    assert not problems, "\n".join(problems)
    assert model_loads >= 1, (
        "the scan saw the from_pretrained call that loads weights (every load goes through models.io.load_pretrained)"
    )


# =========================================================================== names from the data, paths outside the root


def test_class_and_folder_names_are_escaped_in_the_study_report(reference_study: Path) -> None:
    """A class folder named ``<script>alert(1)`` and a data folder named ``<img src=x onerror=alert(1)>`` show as text."""
    text = (reference_study / "report.html").read_text()
    assert "<script" not in text.lower() and "<img src=x" not in text
    assert "&lt;script&gt;alert(1)" in text, "the class name is shown, escaped"
    assert "&lt;img src=x onerror=alert(1)&gt;" in text, "the data folder is shown, escaped"


def _outside_class(tmp_path: Path) -> Path:
    """A data root whose class folder 'c' is a symbolic link to a folder outside it."""
    root = tmp_path / "root"
    for i, name in enumerate(("a", "b")):
        write_images(root / name, 4, 24, seed=i)
    write_images(tmp_path / "elsewhere" / "c", 4, 24, seed=2)
    (root / "c").symlink_to(tmp_path / "elsewhere" / "c", target_is_directory=True)
    return root


def test_a_class_folder_that_is_a_symlink_leading_outside_the_data_root_is_refused(tmp_path: Path) -> None:
    root = _outside_class(tmp_path)
    with pytest.raises(DataError, match="outside"):
        scan(root, ["a", "c"], labelled=True)
    with pytest.raises(DataError, match="outside"):
        make_split(root, ["a", "b", "c"])
    with pytest.raises(DataError, match="outside"):
        scan(root)  # an unlabelled pool: the linked folder is neither followed nor silently left out


def test_a_manifest_file_that_became_a_symlink_leading_outside_the_root_is_refused(tmp_path: Path) -> None:
    """Same bytes, so the hash matches: the symlink itself must be refused."""
    data, split, items = _small_split(tmp_path)
    target = data / next(it for it in items if it.split == "train").relpath
    outside = tmp_path / "outside.png"
    shutil.copy(target, outside)
    target.unlink()
    target.symlink_to(outside)
    with pytest.raises(DataError, match="outside the data root"):
        tiny_finetune(split, tmp_path / "run", epochs=1)
    assert not (tmp_path / "run" / "checkpoints").exists()
