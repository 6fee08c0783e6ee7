"""A killed run resumes to the same result: ``leanmae finetune`` killed with SIGKILL during an epoch,
while writing a checkpoint or while writing its final model, then ``--resume``d, ends with the weights,
metrics and predictions of a run that was never interrupted; so does ``leanmae pretrain`` killed while
writing a checkpoint.

Kill tests start real processes (``python -m leanmae ...``) and kill them with SIGKILL; the moments
"while writing a checkpoint" and "while writing the model" are made observable by a wrapper that
pauses the process inside that write (see ``PAUSING_CLI``), the moment "during an epoch" is a
seeded random delay after the first checkpoint.
"""

from __future__ import annotations

import json
import random
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from reliability_helpers import (
    EPOCHS,
    RUN_FLAGS,
    _kill_group,
    _start,
    _wait_for,
    _without_timing,
    assert_same_result,
)

from helpers import assert_same_weights, load_weights, read_csv, tiny_pretrain
from leanmae.cli import main
from leanmae.training.checkpoint import list_checkpoints


def _tmp_entries(folder: Path, stem: str) -> list[Path]:
    return sorted(folder.glob(f".{stem}.tmp-*")) if folder.is_dir() else []


def _finetune_args(cells: dict[str, Any], out: Path) -> list[str]:
    return ["finetune", "--split", str(cells["split"]), "--out", str(out), *RUN_FLAGS]


KILL_MOMENTS = ["during-an-epoch", "while-writing-a-checkpoint", "while-writing-the-model"]


@pytest.mark.parametrize("moment", KILL_MOMENTS)
def test_a_finetune_killed_with_sigkill_resumes_to_the_result_of_an_uninterrupted_run(
    cells: dict[str, Any], reference: Path, tmp_path: Path, moment: str
) -> None:
    """SIGKILL ``leanmae finetune`` at a seeded moment, ``--resume`` it: same weights, metrics and
    predictions."""
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
    assert not _tmp_entries(out, "*") and not _tmp_entries(checkpoints, "*"), (
        "the killed writes' leftovers are gone"
    )
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
