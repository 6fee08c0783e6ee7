"""A checkpoint from the internet cannot run code: pickles (``pytorch_model.bin``...) are never
unpickled by any command that takes a model folder, incomplete folders are refused, remote code named
in config.json is never imported, and ``torch.load`` is only ever called with ``weights_only=True``."""

from __future__ import annotations

import ast
import json
import os
import pickle
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

import leanmae
from helpers import interrupt_after_epoch, tiny_finetune
from leanmae.cli import main
from leanmae.errors import CheckpointError

SRC = Path(leanmae.__file__).resolve().parent


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


# folder kind: (files kept from a good folder, whether pickles are planted,
#               the missing file named in the error)
BROKEN = {
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
    """Every command that takes a model folder: exit code 2 naming the missing file, no pickle loaded, nothing
    written."""
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
    """A usable folder that also carries pickles and code named in config.json's auto_map: the command works
    from the safetensors alone."""
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
    interrupt_after_epoch(monkeypatch, lambda: tiny_finetune(cells["split"], out, epochs=3))
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
    """A checkpoint damaged on disk (or replaced by a pickle) is a one-line CheckpointError naming it, not a
    traceback."""
    out = tmp_path / "run"
    interrupt_after_epoch(monkeypatch, lambda: tiny_finetune(cells["split"], out, epochs=3))
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
        "the scan saw the from_pretrained call that loads weights "
        "(every load goes through models.io.load_pretrained)"
    )
