"""Prefetching: the engine prepares batch k+1 on a background thread while step k trains.

A toy task with a deliberately slow step (its loss sleeps) and a slow ``prepare`` shows that the
next batch is ready when a step ends, so the step hardly waits for data, and that training with
and without prefetching ends with the same weights and the same history.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from leanmae.config import OptimConfig, RunConfig
from leanmae.errors import NonFiniteLossError
from leanmae.training.distributed import Context
from leanmae.training.engine import Task, fit
from leanmae.training.prefetch import Inputs

BATCHES = 6  # per epoch
PREPARE_SECONDS = (
    0.05  # each prepare sleeps this long: without prefetching an epoch waits >= BATCHES x this for data
)
STEP_SECONDS = 0.1  # each loss sleeps at least this long: a slow step


class SlowTask:
    """A regression task whose ``prepare`` and ``loss`` are slow on purpose; it notes which batches are
    prepared.

    Inputs are drawn from generators keyed by (epoch, batch), as leanmae's augmentation is keyed per image.
    With ``wait_for_next`` the loss of batch k does not return before batch k+1 is prepared (within 30 s):
    only a prepare running while the step runs can make that happen.
    """

    def __init__(self, wait_for_next: bool = False, poison_from_epoch: int | None = None) -> None:
        self.wait_for_next, self.poison_from_epoch = wait_for_next, poison_from_epoch
        self.prepared: dict[tuple[int, int], threading.Event] = {}
        self.current = (0, 0)

    def _ready(self, epoch: int, k: int) -> threading.Event:
        return self.prepared.setdefault((epoch, k), threading.Event())

    def batches(self, epoch: int) -> list[np.ndarray]:
        return [np.array([epoch, k]) for k in range(BATCHES)]

    def prepare(self, batch: np.ndarray, epoch: int) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        time.sleep(PREPARE_SECONDS)
        rng = np.random.default_rng([7, epoch, int(batch[1])])
        x = torch.as_tensor(rng.normal(size=(8, 4)), dtype=torch.float32)
        y = x.sum(1, keepdim=True) + torch.as_tensor(rng.normal(scale=0.1, size=(8, 1)), dtype=torch.float32)
        self._ready(epoch, int(batch[1])).set()
        return x, y, epoch, int(batch[1])

    def loss(self, model: nn.Module, inputs: tuple[torch.Tensor, torch.Tensor, int, int]) -> torch.Tensor:
        x, y, epoch, k = inputs
        time.sleep(STEP_SECONDS)
        if self.wait_for_next and k + 1 < BATCHES:
            assert self._ready(epoch, k + 1).wait(timeout=30), (
                f"batch {k + 1} was not prepared while step {k} ran"
            )
        value = nn.functional.mse_loss(model(x), y)
        return (
            value * float("nan")
            if self.poison_from_epoch is not None and epoch >= self.poison_from_epoch
            else value
        )

    def validate(self, model: nn.Module, epoch: int) -> dict[str, float]:
        x = torch.linspace(-1, 1, 32).view(8, 4)
        return {"val_loss": nn.functional.mse_loss(model(x), x.sum(1, keepdim=True)).item()}

    def as_task(self) -> Task:
        return Task(batches=self.batches, prepare=self.prepare, loss=self.loss, validate=self.validate)


def train(
    task: SlowTask, out: Path, prefetch: bool, accum_steps: int = 1, epochs: int = 2
) -> tuple[dict[str, torch.Tensor], list[dict[str, float]]]:
    """``engine.fit`` on the toy task (dropout included, so the main thread's torch generator is in play);
    a constant schedule, so that a 1-epoch run is the first epoch of a longer one."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.2), nn.Linear(16, 1))
    optim = OptimConfig(
        epochs=epochs,
        batch_size=8,
        accum_steps=accum_steps,
        base_lr=0.05,
        warmup_epochs=0.5,
        schedule="constant",
    )
    run = RunConfig(seed=0, device="cpu", progress=False, prefetch=prefetch)
    steps = -(-BATCHES // accum_steps)
    result = fit(model, task.as_task(), optim, run, Context(device=torch.device("cpu")), out, steps)
    return {k: v.clone() for k, v in model.state_dict().items()}, result.history


def test_with_prefetch_the_next_batch_is_ready_when_a_slow_step_ends(tmp_path: Path) -> None:
    _, history = train(SlowTask(wait_for_next=True), tmp_path / "ahead", prefetch=True)
    _, inline = train(SlowTask(), tmp_path / "inline", prefetch=False)
    for row, slow in zip(history, inline, strict=True):
        # Inline, every prepare is waited for; ahead, only the epoch's first (nothing runs before it) and the
        # hand-overs. Compared with the inline run, not with a wall-clock budget: on a loaded machine every
        # sleep and hand-over stretches alike (the proof that batches are prepared during steps is the
        # task's own ``wait_for_next``; speed itself is for benchmarks).
        assert slow["data_seconds"] >= BATCHES * PREPARE_SECONDS
        assert row["data_seconds"] < slow["data_seconds"] / 3, (
            f"a step waited {row['data_seconds']:.3f} s for data in epoch {row['epoch']}, inline "
            f"{slow['data_seconds']:.3f} s"
        )


@pytest.mark.parametrize("accum_steps", [1, 4])
def test_training_with_and_without_prefetch_ends_with_identical_weights_and_history(
    tmp_path: Path, accum_steps: int
) -> None:
    weights, history = train(SlowTask(), tmp_path / "ahead", prefetch=True, accum_steps=accum_steps)
    inline_weights, inline_history = train(
        SlowTask(), tmp_path / "inline", prefetch=False, accum_steps=accum_steps
    )
    for key, value in weights.items():
        assert torch.equal(value, inline_weights[key]), key
    timeless = [{k: v for k, v in row.items() if k not in ("seconds", "data_seconds")} for row in history]
    assert timeless == [
        {k: v for k, v in row.items() if k not in ("seconds", "data_seconds")} for row in inline_history
    ]


def test_a_resumed_run_with_prefetch_equals_an_uninterrupted_one(tmp_path: Path) -> None:
    weights, history = train(SlowTask(), tmp_path / "whole", prefetch=True, epochs=3)
    train(SlowTask(), tmp_path / "resumed", prefetch=True, epochs=1)
    resumed, resumed_history = train(SlowTask(), tmp_path / "resumed", prefetch=True, epochs=3)
    for key, value in weights.items():
        assert torch.equal(value, resumed[key]), key
    assert [r["train_loss"] for r in resumed_history] == [r["train_loss"] for r in history]


def test_a_non_finite_loss_still_stops_the_run_and_the_prefetch_thread(tmp_path: Path) -> None:
    with pytest.raises(NonFiniteLossError, match=r"^loss is nan at epoch 2, step 6"):
        train(SlowTask(poison_from_epoch=1), tmp_path / "run", prefetch=True)
    assert not [t for t in threading.enumerate() if t.name == "leanmae-prefetch"], (
        "the prefetch thread outlived the run"
    )
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["epoch-0001"]


def test_an_error_in_prepare_on_the_prefetch_thread_reaches_the_consumer_in_order() -> None:
    def prepare(item: int) -> int:
        if item == 2:
            raise ValueError("bad batch 2")
        return item * 10

    inputs = Inputs(prepare, range(5), torch.device("cpu"))
    assert [next(inputs), next(inputs)] == [0, 10]
    with pytest.raises(ValueError, match="bad batch 2"):
        next(inputs)
    inputs.close()


@pytest.mark.parametrize("ahead", [True, False])
def test_inputs_come_in_the_order_of_the_batches_and_then_stop(ahead: bool) -> None:
    with Inputs(lambda item: item * item, range(20), torch.device("cpu"), ahead=ahead) as inputs:
        assert list(inputs) == [i * i for i in range(20)]
        assert next(inputs, None) is None


def test_an_abandoned_prefetcher_stops_its_thread() -> None:
    inputs = Inputs(lambda item: item, iter(int, 1), torch.device("cpu"))  # endless items
    thread = inputs._thread
    assert next(inputs) == 0
    del inputs
    assert thread is not None
    thread.join(timeout=5)
    assert not thread.is_alive()
