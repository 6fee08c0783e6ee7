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
    CLASSES,
    RUN,
    assert_same_result,
)
from safetensors import SafetensorError

import leanmae.files as files
import leanmae.training.checkpoint as checkpoint
from helpers import interrupt_after_epoch, tiny_finetune
from leanmae.cli import main
from leanmae.data.cache import DecodeSpec, load_or_build, manifest_hash
from leanmae.data.sources import scan
from leanmae.errors import OutputFolderError
from leanmae.files import write_atomic
from leanmae.reporting.runinfo import LOCK_FILE, prepare_output, release, write_run_info
from leanmae.training.checkpoint import list_checkpoints


def test_leftover_temporary_files_of_a_killed_write_are_never_read_on_resume(
    cells: dict[str, Any], reference: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A killed writer leaves dotted ``.NAME.tmp-PID`` files and folders; resuming ignores every one of
    them."""
    out = tmp_path / "run"
    interrupt_after_epoch(monkeypatch, lambda: tiny_finetune(cells["split"], out, **RUN))
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


def _run_folder_with_leftovers(out: Path, config: dict[str, Any]) -> tuple[set[str], set[str]]:
    """A resumable run folder holding what killed writers leave, and dotted names that are not theirs;
    returns (leftovers, everything else), as paths relative to ``out``."""
    write_run_info(out, "finetune", config, status="running")
    checkpoint_1 = out / "checkpoints" / "epoch-0001"
    checkpoint_1.mkdir(parents=True)
    (checkpoint_1 / "trainer_state.json").write_text('{"epoch": 1}')
    folders = [".model.tmp-4242", "checkpoints/.epoch-0002.tmp-4242", "checkpoints/.epoch-0001.old-77"]
    files = [".history.csv.tmp-4242", ".run.json.tmp-1", ".best.safetensors.tmp-31337"]
    for name in folders:
        (out / name).mkdir()
        (out / name / "model.safetensors").write_bytes(b"\x00" * 7)
    for name in files:
        (out / name).write_text("half")
    others = [
        ".notes",
        ".tmp-12",
        ".data.tmp-x",
        "notes.tmp-12",
        "checkpoints/.keep",
        "model/.config.json.tmp-9",
    ]
    (out / "model").mkdir()
    for name in others:
        (out / name).write_text("mine")
    return {*folders, *files}, {*others, "checkpoints", "checkpoints/epoch-0001", "run.json", "model"}


def _entries(out: Path) -> set[str]:
    return {p.relative_to(out).as_posix() for p in out.glob("*")} | {
        p.relative_to(out).as_posix() for p in out.glob("*/*") if p.parent.name in ("checkpoints", "model")
    }


def test_resuming_deletes_the_temporaries_killed_writers_left_and_nothing_else(tmp_path: Path) -> None:
    """``--resume`` (the folder locked by this process) removes ``.NAME.tmp-PID`` and ``.NAME.old-PID``
    entries in the run folder and its checkpoints; other dotted names, and names in other subfolders, stay."""
    out, config = tmp_path / "run", {"optim": {"epochs": 2}}
    leftovers, others = _run_folder_with_leftovers(out, config)
    assert leftovers <= _entries(out)
    try:
        assert prepare_output(out, config, resume=True, overwrite=False) is True
        assert _entries(out) - {LOCK_FILE} == others
    finally:
        release(out)


def test_a_refused_resume_deletes_no_temporaries(tmp_path: Path) -> None:
    """Without --resume, or with another config, the folder is left exactly as it was."""
    out, config = tmp_path / "run", {"optim": {"epochs": 2}}
    leftovers, others = _run_folder_with_leftovers(out, config)
    with pytest.raises(OutputFolderError, match="already holds a run"):
        prepare_output(out, config, resume=False, overwrite=False)
    with pytest.raises(OutputFolderError, match="different config"):
        prepare_output(out, {"optim": {"epochs": 2, "base_lr": 1.0}}, resume=True, overwrite=False)
    assert _entries(out) == leftovers | others


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


def _split_args(cells: dict[str, Any], out: Path) -> list[str]:
    return ["split", str(cells["data"]), "--classes", ",".join(CLASSES), "--out", str(out)]


def _failing_fsync(code: int | None) -> Any:
    """os.fsync as a failing disk gives it: an OSError with ``code`` naming no file, like the real one."""

    def fsync(fd: int) -> None:
        raise OSError(code, os.strerror(code)) if code is not None else OSError("the device went away")

    return fsync


@pytest.mark.parametrize(
    "code", [errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS], ids=errno.errorcode.get
)
def test_a_full_disk_or_a_missing_permission_is_one_line_naming_the_file(
    code: int,
    cells: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Exit code 2 and ``leanmae CMD: error: PATH: the system's words``, never a traceback."""
    out = tmp_path / "split.csv"
    monkeypatch.setattr(files.os, "fsync", _failing_fsync(code))
    assert main(_split_args(cells, out)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"leanmae split: error: {out}: {os.strerror(code)}"), err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert ("free some space" in err) == (code in (errno.ENOSPC, errno.EDQUOT))
    assert not out.exists()


def test_a_full_disk_while_safetensors_writes_a_checkpoint_is_one_line_naming_the_checkpoint(
    cells: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """safetensors reports the system's error as a SafetensorError whose text ends in "(os error 28)"."""

    def disk_full(tensors: dict[str, torch.Tensor], path: str | Path, *args: Any, **kwargs: Any) -> None:
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(checkpoint, "save_file", disk_full)
    out = tmp_path / "run"
    args = ["finetune", "--split", str(cells["split"]), "--out", str(out), "--preset", "test"]
    assert main([*args, "--device", "cpu", "--no-progress", "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    checkpoint_1 = out / "checkpoints" / "epoch-0001"
    assert err.startswith(f"leanmae finetune: error: {checkpoint_1}: No space left on device; free some"), err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("code", [errno.EBADF, None], ids=["EBADF", "no-errno"])
def test_a_system_error_that_points_to_a_bug_keeps_its_traceback(
    code: int | None, cells: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bad file descriptor, or an OSError without an errno, is leanmae's fault: main lets it through."""
    monkeypatch.setattr(files.os, "fsync", _failing_fsync(code))
    with pytest.raises(OSError) as raised:
        main(_split_args(cells, tmp_path / "split.csv"))
    assert raised.value.errno == code
