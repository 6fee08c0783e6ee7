"""DDP on CPUs: ``torchrun --nproc_per_node=2`` (gloo) with batch B per process against one process with batch
2B.

Batch order is sharded like DistributedSampler and augmentation and masks are keyed per image, so
two processes with B images each see, step by step, the same 2B images with the same crops and
masks as one process with batch 2B; DDP averages their gradients, so the loss curves and the
final weights agree up to floating-point rounding. Also checked: only rank 0 writes (one
checkpoint folder, one run.json, one TensorBoard file, one copy of each log line) and a run
resumed under torchrun ends bit for bit where an uninterrupted one does.
"""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist

from helpers import assert_same_weights, load_weights, tiny_pretrain, write_images


def _gloo_problem() -> str | None:
    """Why a gloo process group cannot start here (None when it can)."""
    if not dist.is_available() or not dist.is_gloo_available():
        return "this torch build has no gloo backend"
    try:
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        tensor = torch.ones(1)
        dist.all_reduce(tensor)
    except Exception as err:  # noqa: BLE001 - any failure means: skip, naming it
        return f"gloo does not start here: {err}"
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return None


_PROBLEM = _gloo_problem()
pytestmark = pytest.mark.skipif(_PROBLEM is not None, reason=f"DDP tests need gloo: {_PROBLEM}")

B = 4  # images per process and micro-batch in the two-process runs; the single process takes 2B
PRETRAIN_SETS = [
    "optim.accum_steps=2",
    "optim.schedule=constant",
    "optim.base_lr=1e-2",
    "data.val_fraction=0.1",
]
FINETUNE_SETS = ["optim.base_lr=1e-2", "classifier.drop_path=0", "classifier.select=last"]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args: list[str], cwd: Path, cache: Path, timeout: int = 240) -> subprocess.CompletedProcess[str]:
    """``python -m torch.distributed.run --nproc_per_node=2 -m leanmae ARGS`` on this machine, offline
    (127.0.0.1)."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=1",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}",
        "-m",
        "leanmae",
        *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LEANMAE_CACHE": str(cache), "MASTER_ADDR": "127.0.0.1"}
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (
        f"torchrun failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    )
    return result


def history(out: Path) -> list[dict[str, float]]:
    with open(out / "history.csv") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def assert_same_curves(a: Path, b: Path, keys: tuple[str, ...]) -> None:
    rows_a, rows_b = history(a), history(b)
    assert len(rows_a) == len(rows_b) > 0
    for ra, rb in zip(rows_a, rows_b, strict=True):
        for key in keys:
            assert ra[key] == pytest.approx(rb[key], rel=1e-5, abs=1e-6), (
                f"epoch {int(ra['epoch'])}: {key} {ra[key]} != {rb[key]}"
            )


def assert_close_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    for key in sorted(a):
        assert torch.allclose(a[key], b[key], rtol=1e-4, atol=5e-5), f"{key} differs by up to {worst:.2e}"


# --------------------------------------------------------------------------- pretraining


def pretrain_args(runs: dict[str, Any], out: Path, epochs: int) -> list[str]:
    sets = [*runs["sets"], f"optim.batch_size={B}"]
    return [
        "pretrain",
        "--preset",
        "test",
        "--data",
        str(runs["data"]),
        "--no-progress",
        "--epochs",
        str(epochs),
        "--out",
        str(out),
        *(a for s in sets for a in ("--set", s)),
    ]


@pytest.fixture(scope="module")
def pretrain_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """2 epochs x 2 optimizer steps (2 micro-batches each): 2 processes x B against 1 process x 2B."""
    root = tmp_path_factory.mktemp("ddp-pretrain")
    runs: dict[str, Any] = {
        "root": root,
        "data": root / "images",
        "cache": root / "cache",
        "two": root / "two",
        "one": root / "one",
    }
    runs["sets"] = [f"data.cache_dir={runs['cache']}", *PRETRAIN_SETS]
    write_images(runs["data"], 40, 48)  # 36 training images: 4 micro-batches of 2B = 8 per epoch, both ways
    runs["log"] = torchrun(pretrain_args(runs, runs["two"], 2), root, runs["cache"])
    tiny_pretrain(runs["data"], runs["one"], epochs=2, sets=[*runs["sets"], f"optim.batch_size={2 * B}"])
    return runs


def test_two_processes_pretrain_like_one_process_with_twice_the_batch(pretrain_runs: dict[str, Any]) -> None:
    assert_same_curves(pretrain_runs["two"], pretrain_runs["one"], ("train_loss", "val_loss", "lr"))
    assert_close_weights(
        load_weights(pretrain_runs["two"] / "model"), load_weights(pretrain_runs["one"] / "model")
    )


def test_the_lr_rule_counts_every_process(pretrain_runs: dict[str, Any]) -> None:
    two = json.loads((pretrain_runs["two"] / "run.json").read_text())
    one = json.loads((pretrain_runs["one"] / "run.json").read_text())
    assert two["world_size"] == 2 and one["world_size"] == 1
    assert two["effective_batch"] == one["effective_batch"] == 2 * B * 2
    assert two["absolute_lr"] == pytest.approx(one["absolute_lr"]) == pytest.approx(1e-2 * 2 * B * 2 / 256)


def test_only_rank_0_writes_and_logs(pretrain_runs: dict[str, Any]) -> None:
    out: Path = pretrain_runs["two"]
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["epoch-0002"]
    assert len(list(out.rglob("run.json"))) == 1
    assert len(list((out / "tensorboard").iterdir())) == 1, "one TensorBoard event file, from rank 0"
    assert not [p for p in out.rglob(".*")], "no temporary files left behind"
    assert json.loads((out / "run.json").read_text())["status"] == "finished"
    stdout = pretrain_runs["log"].stdout
    for line in ("pretraining on", "epoch 1/2:", "epoch 2/2:", "done:"):
        assert stdout.count(line) == 1, f"{line!r} printed {stdout.count(line)} times:\n{stdout}"


def test_a_run_resumed_under_torchrun_equals_an_uninterrupted_one(pretrain_runs: dict[str, Any]) -> None:
    """1 epoch, then --resume --epochs 2, both with torchrun == 2 epochs straight (constant schedule)."""
    root, out = pretrain_runs["root"], pretrain_runs["root"] / "resumed"
    torchrun(pretrain_args(pretrain_runs, out, 1), root, pretrain_runs["cache"])
    resumed = torchrun([*pretrain_args(pretrain_runs, out, 2), "--resume"], root, pretrain_runs["cache"])
    assert resumed.stdout.count("resuming from") == 1
    assert json.loads((out / "run.json").read_text())["resumed_from_epoch"] == 1
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["epoch-0002"]
    assert_same_weights(load_weights(out / "model"), load_weights(pretrain_runs["two"] / "model"))
    for a, b in zip(history(out), history(pretrain_runs["two"]), strict=True):
        assert (a["train_loss"], a["val_loss"], a["lr"]) == (b["train_loss"], b["val_loss"], b["lr"])


# --------------------------------------------------------------------------- fine-tuning


def test_two_processes_finetune_like_one_process_with_twice_the_batch(tmp_path: Path) -> None:
    """64 training images: the batch cap (a quarter of each process's images: 8 of 32, 16 of 64) leaves B and
    2B alone."""
    from leanmae import finetune, split

    cache = tmp_path / "cache"
    write_images(tmp_path / "cells" / "a", 46, 48, seed=1)
    write_images(tmp_path / "cells" / "b", 46, 48, seed=2)
    split(tmp_path / "cells", "a,b", tmp_path / "split.csv")
    sets = [f"data.cache_dir={cache}", *FINETUNE_SETS]
    two = torchrun(
        [
            "finetune",
            "--preset",
            "test",
            "--split",
            str(tmp_path / "split.csv"),
            "--out",
            str(tmp_path / "two"),
            "--no-progress",
            "--epochs",
            "2",
            *(a for s in [*sets, f"optim.batch_size={B}"] for a in ("--set", s)),
        ],
        tmp_path,
        cache,
    )
    finetune(
        tmp_path / "split.csv",
        tmp_path / "one",
        preset="test",
        epochs=2,
        device="cpu",
        progress=False,
        set=[*sets, f"optim.batch_size={2 * B}"],
    )

    info = {n: json.loads((tmp_path / n / "run.json").read_text()) for n in ("two", "one")}
    assert (info["two"]["batch_size"], info["one"]["batch_size"]) == (B, 2 * B), (
        "the batch cap must leave both runs their batch"
    )
    assert info["two"]["absolute_lr"] == pytest.approx(info["one"]["absolute_lr"])
    assert_same_curves(tmp_path / "two", tmp_path / "one", ("train_loss", "val_loss", "val_accuracy", "lr"))
    assert len(history(tmp_path / "two")) == 2
    assert_close_weights(load_weights(tmp_path / "two" / "model"), load_weights(tmp_path / "one" / "model"))
    assert two.stdout.count("test: accuracy") == 1
    assert [p.name for p in (tmp_path / "two" / "checkpoints").iterdir()] == ["epoch-0002"]
