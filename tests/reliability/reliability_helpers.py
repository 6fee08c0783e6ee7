"""Helpers shared by the reliability tests: the fine-tuning run and the study they interrupt, starting
``python -m leanmae`` in its own process group (optionally paused inside a write, ``PAUSING_CLI``) and
killing it, comparing a resumed result with the uninterrupted one, and a small split."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import leanmae
import leanmae.commands.study as study_command
from helpers import assert_same_weights, load_weights, read_csv
from leanmae.config import FinetuneConfig, resolve
from leanmae.data.split import read_manifest
from leanmae.data.synthetic import make_synthetic_wbc

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
                f"the process ended (code {proc.returncode}) before the moment to kill it: "
                f"{(cwd / 'stderr.txt').read_text()[-3000:]}"
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


def _test_model():
    return resolve(FinetuneConfig, "finetune", "test", None, {}).model


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


def _run_in_this_process(job: study_command.Job) -> int:
    """What ``_launch_local`` does, without starting a Python process per run (a few seconds each here)."""
    job.out.mkdir(parents=True, exist_ok=True)
    try:
        study_command.run_job(job.command, study_command._with_resume(job))
    except Exception:
        return 1
    return 0


def _small_split(tmp_path: Path) -> tuple[Path, Path, list]:
    data = make_synthetic_wbc(tmp_path / "cells", n_per_class=5, size=24)
    split = tmp_path / "split.csv"
    leanmae.split(data, classes=CLASSES, out=split)
    return data, split, read_manifest(split)[1]
