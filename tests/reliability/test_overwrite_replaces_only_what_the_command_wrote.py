"""--overwrite replaces what the command writes and nothing else: a run folder also holds what other
commands and people put there (evaluate results, notes), and replacing the run must not take them."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from reliability_helpers import RUN

import leanmae.commands.finetune as finetune_command
import leanmae.commands.pretrain as pretrain_command
from helpers import tiny_finetune, tiny_pretrain


def _entries(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if not p.name.startswith(".")}


def test_finetune_overwrite_keeps_evaluate_results_and_a_users_notes(
    cells: dict[str, Any], reference: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    (run / "notes.md").write_text("lr looked high; try 5e-4\n")
    (run / "evaluate-tecom").mkdir()
    (run / "evaluate-tecom" / "metrics.json").write_text("{}\n")
    (run / "model" / "mine.txt").write_text("inside the run's own model folder: replaced with it\n")

    tiny_finetune(cells["split"], run, overwrite=True, **RUN)

    assert (run / "notes.md").read_text() == "lr looked high; try 5e-4\n"
    assert (run / "evaluate-tecom" / "metrics.json").exists()
    assert not (run / "model" / "mine.txt").exists()
    assert (run / "model" / "model.safetensors").exists()


def test_every_entry_a_finetune_run_writes_is_one_it_declares_as_its_own(reference: Path) -> None:
    """What OUTPUTS misses would survive an --overwrite, stale beside the new run."""
    assert _entries(reference) <= set(finetune_command.OUTPUTS)


def test_every_entry_a_pretraining_run_writes_is_one_it_declares_as_its_own(
    images: Path, tmp_path: Path
) -> None:
    out = tmp_path / "mae"
    tiny_pretrain(images, out, epochs=1, sets=["run.report_to=[tensorboard]"])
    assert _entries(out) <= set(pretrain_command.OUTPUTS)
    (out / "notes.md").write_text("keep me\n")
    tiny_pretrain(images, out, epochs=1, overwrite=True)
    assert (out / "notes.md").exists()
