"""Process and device setup: one code path for CPU, one GPU and torchrun's several processes.

Under ``torchrun`` the usual environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT)
is present and a process group is started: NCCL on GPUs, gloo on CPUs. Without it, the run is a
single process and world size 1, and nothing distributed is touched.

Rank 0 alone decodes the cache, validates, writes checkpoints and reports while the other
processes wait at a barrier, so collectives get a long timeout (``LEANMAE_DIST_TIMEOUT`` minutes,
default 120) instead of torch's 10 (NCCL) or 30 (gloo) minutes. A process that fails ends the run:
torchrun stops the others.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from leanmae.config import check_device
from leanmae.errors import ConfigError


@dataclass(frozen=True)
class Context:
    """Where this process runs and who it is among the processes of the run."""

    device: torch.device
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Only rank 0 writes logs, checkpoints, figures and reports."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def mean(self, value: float) -> float:
        """The mean of ``value`` over all processes (for logging losses of a sharded epoch)."""
        if not self.distributed:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.item() / self.world_size

    def gather(self, value: Any) -> list[Any]:
        """``value`` of every process, in rank order (a small picklable object)."""
        if not self.distributed:
            return [value]
        found: list[Any] = [None] * self.world_size
        dist.all_gather_object(found, value)
        return found


def setup(device: str = "auto", threads: int | None = None) -> Context:
    """Start the process group if launched by torchrun and pick this process's device.

    On CPUs each process takes its share of the cores (``cpu_threads``) unless ``threads`` is set.
    Every command picks its device here, so ``device`` is checked here, before any model is loaded.
    """
    check_device(device)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        device = f"cuda:{local_rank}"
    chosen = torch.device(device)
    if chosen.type == "cuda" and (chosen.index or 0) >= torch.cuda.device_count():
        raise ConfigError(
            f"device {device}: no such CUDA GPU here ({torch.cuda.device_count()} found); use "
            "--device cpu or auto"
        )
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        torch.set_num_threads(threads or cpu_threads())
    if world_size > 1 and not dist.is_initialized():
        minutes = float(os.environ.get("LEANMAE_DIST_TIMEOUT", "120"))
        dist.init_process_group(
            backend="nccl" if chosen.type == "cuda" else "gloo", timeout=timedelta(minutes=minutes)
        )
        atexit.register(teardown)
    return Context(device=chosen, rank=rank, local_rank=local_rank, world_size=world_size)


def cpu_threads() -> int:
    """Torch threads for one CPU process: its share of the cores, unless OMP_NUM_THREADS says otherwise.

    Measured on a 2-core machine (docs/performance.md): a lone process trains ~1.7x faster with 2
    threads than with 1, but threads that compete with another busy process for the same cores are
    several times slower. So each process gets cores / processes-on-this-node; a study's jobs run
    with OMP_NUM_THREADS=1 because they share the machine.
    """
    if os.environ.get("OMP_NUM_THREADS"):
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    return max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """bf16 on GPUs by default; fp32 on CPUs (bf16 autocast ran ~10x slower on CPUs without bf16 units)."""
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[amp]


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
