"""Half-written files are never read as valid (leftovers of a killed write, a half-built decode cache),
and a full disk during a write keeps the previous file or checkpoint."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from reliability_helpers import (
    RUN,
    _interrupt_after_epoch,
    assert_same_result,
)

import leanmae.files as files
import leanmae.training.checkpoint as checkpoint
from helpers import tiny_finetune
from leanmae.data.cache import DecodeSpec, load_or_build, manifest_hash
from leanmae.data.sources import scan
from leanmae.files import write_atomic
from leanmae.training.checkpoint import list_checkpoints


def test_leftover_temporary_files_of_a_killed_write_are_never_read_on_resume(
    cells: dict[str, Any], reference: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A killed writer leaves dotted ``.NAME.tmp-PID`` files and folders; resuming ignores every one of
    them."""
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
    """A cache build killed mid-way leaves ``KEY.tmp-PID``; the next run decodes afresh instead of reading
    it."""
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
    """ENOSPC while writing checkpoint 2: the OSError propagates, no temp folder is left, checkpoint 1 loads
    and resumes."""
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
