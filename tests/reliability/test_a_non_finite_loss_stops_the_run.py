"""A non-finite loss stops the run with a one-line message naming the epoch, and its last checkpoint
intact and resumable."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch

import leanmae.commands.finetune as finetune_command
import leanmae.training.engine as engine
from leanmae.cli import main
from leanmae.training.checkpoint import list_checkpoints


def _digest(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()
    }


def _diverging_from(first_bad_epoch: int) -> Any:
    """Fine-tuning's ``fit``, with every loss NaN from (0-based) epoch ``first_bad_epoch`` on."""
    real_fit = finetune_command.fit

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
            return value * float("nan") if current["epoch"] >= first_bad_epoch else value

        task.prepare, task.loss = prepare_noting_the_epoch, poisoned
        return real_fit(model, task, *args, **kwargs)

    return diverging_fit


def _finetune_args(cells: dict[str, Any], out: Path, epochs: int) -> list[str]:
    return [
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
        str(epochs),
    ]


def test_a_non_finite_loss_stops_the_run_naming_the_epoch_and_keeps_the_last_checkpoint(
    cells: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The loss turns NaN in epoch 2: exit code 2 with a one-line message naming epoch 2; checkpoint 1 is
    untouched and resumable."""
    out = tmp_path / "run"
    real_fit, real_history = finetune_command.fit, engine.write_history
    snapshot: dict[str, str] = {}

    def history_noting_checkpoint_1(path: Path, rows: list[dict[str, float]]) -> None:
        real_history(path, rows)
        if len(rows) == 1:
            snapshot.update(_digest(out / "checkpoints" / "epoch-0001"))

    monkeypatch.setattr(finetune_command, "fit", _diverging_from(1))
    monkeypatch.setattr(engine, "write_history", history_noting_checkpoint_1)
    args = _finetune_args(cells, out, epochs=3)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("leanmae finetune: error: loss is nan at epoch 2"), err
    assert f"the last checkpoint in {out / 'checkpoints'} (epoch 1) is intact" in err
    assert "--resume" in err and "Traceback" not in err
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["epoch-0001"]
    assert _digest(out / "checkpoints" / "epoch-0001") == snapshot, "the last checkpoint is intact"
    assert not (out / "model").exists() and not (out / "metrics.json").exists()
    assert json.loads((out / "run.json").read_text())["status"] == "running"

    monkeypatch.setattr(finetune_command, "fit", real_fit)  # the cause fixed
    assert main([*args, "--resume"]) == 0
    assert json.loads((out / "run.json").read_text())["resumed_from_epoch"] == 1


def test_a_non_finite_loss_in_the_first_epoch_says_no_checkpoint_exists_and_the_rerun_starts_afresh(
    cells: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """NaN from the first step: the message claims no checkpoint (there is none) and says to run again
    without --resume; the same command, once the cause is fixed, then trains from the start."""
    out = tmp_path / "run"
    real_fit = finetune_command.fit
    monkeypatch.setattr(finetune_command, "fit", _diverging_from(0))
    args = _finetune_args(cells, out, epochs=2)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("leanmae finetune: error: loss is nan at epoch 1, step 0"), err
    assert "no checkpoint was written yet" in err and "without --resume" in err, err
    assert "intact" not in err and err.count("\n") == 1, err
    assert not list_checkpoints(out / "checkpoints")
    assert json.loads((out / "run.json").read_text())["status"] == "failed"

    monkeypatch.setattr(finetune_command, "fit", real_fit)  # the cause fixed
    assert main(args) == 0
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "finished" and info.get("resumed_from_epoch") is None


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
