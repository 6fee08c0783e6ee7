"""No host synchronisation inside a training step: losses stay on the device between checks.

``engine.TrainStep`` returns its losses as device tensors; ``engine.fit`` reads them back every
``losses.CHECK_EVERY`` optimizer steps and at the end of an epoch. These tests pin down that a step
reads nothing back, that a non-finite loss between two checks is still named at its own step, and
that the checked values are exactly those ``.item()`` gives.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import leanmae.training.engine as engine
from leanmae.config import OptimConfig, RunConfig
from leanmae.training.distributed import Context
from leanmae.training.engine import NonFiniteLossError, Task, TrainStep, build_optimizer, fit
from leanmae.training.losses import StepLosses

CPU = Context(device=torch.device("cpu"))
BATCHES = 10  # per epoch


def regression_task(poison_step: int | None = None) -> Task:
    """A toy regression whose loss turns NaN at batch ``poison_step`` of the second epoch (and after)."""

    def prepare(batch: np.ndarray, epoch: int) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        rng = np.random.default_rng([3, epoch, int(batch[0])])
        x = torch.as_tensor(rng.normal(size=(8, 4)), dtype=torch.float32)
        return x, x.sum(1, keepdim=True), epoch, int(batch[0])

    def loss(model: nn.Module, inputs: tuple[torch.Tensor, torch.Tensor, int, int]) -> torch.Tensor:
        x, y, epoch, k = inputs
        value = nn.functional.mse_loss(model(x), y)
        poisoned = poison_step is not None and epoch == 1 and k >= poison_step
        return value * float("nan") if poisoned else value

    return Task(
        batches=lambda epoch: [np.array([k]) for k in range(BATCHES)],
        prepare=prepare,
        loss=loss,
        validate=lambda model, epoch: {"val_loss": 0.0},
    )


def optim_config(epochs: int = 2) -> OptimConfig:
    return OptimConfig(epochs=epochs, batch_size=8, base_lr=0.05, warmup_epochs=0.5, schedule="constant")


def test_a_training_step_never_reads_a_value_back_to_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.GELU(), nn.Linear(16, 1))
    optim = optim_config()
    step = TrainStep(model, build_optimizer(model, optim, 0.01, CPU.device), optim, None, CPU)
    task = regression_task()
    inputs = iter([task.prepare(batch, 0) for batch in task.batches(0)[:2]])

    def no_item(tensor: torch.Tensor) -> float:
        raise AssertionError("a training step read a value back to the host")

    monkeypatch.setattr(torch.Tensor, "item", no_item)
    losses = step(task.loss, inputs, 2, 0.01)
    monkeypatch.undo()
    assert [value.shape for value in losses] == [torch.Size([]), torch.Size([])]
    assert not any(value.requires_grad for value in losses), "the returned losses keep no graph alive"


@pytest.mark.parametrize("check_every", [1, 4, 50])
def test_a_non_finite_loss_between_two_checks_is_named_at_its_own_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, check_every: int
) -> None:
    monkeypatch.setattr(engine, "CHECK_EVERY", check_every)
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    run = RunConfig(seed=0, device="cpu", progress=False, prefetch=False)
    # Batch 6 of epoch 2 is optimizer step 10 + 6 = 16, noticed after step 16 (every step), 17 (every 4) or 19
    # (the epoch's end).
    with pytest.raises(NonFiniteLossError, match=r"^loss is nan at epoch 2, step 16;"):
        fit(model, regression_task(poison_step=6), optim_config(), run, CPU, tmp_path, BATCHES)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["epoch-0001"]


@pytest.mark.parametrize("check_every", [1, 3])
def test_the_history_does_not_depend_on_how_often_losses_are_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, check_every: int
) -> None:
    histories = []
    for every in (check_every, 1000):
        monkeypatch.setattr(engine, "CHECK_EVERY", every)
        torch.manual_seed(0)
        model = nn.Linear(4, 1)
        run = RunConfig(seed=0, device="cpu", progress=False, prefetch=False)
        result = fit(model, regression_task(), optim_config(), run, CPU, tmp_path / str(every), BATCHES)
        histories.append([{k: v for k, v in row.items() if "seconds" not in k} for row in result.history])
    assert histories[0] == histories[1]


def test_losses_read_back_equal_what_item_gives_in_every_dtype() -> None:
    pending = StepLosses()
    values = [
        torch.tensor(0.1, dtype=torch.float32),
        torch.tensor(1 / 3, dtype=torch.bfloat16),
        torch.tensor([2.5e-8], dtype=torch.float16),
    ]
    pending.add(7, values[:2])
    pending.add(8, values[2:])
    assert pending.read() == [(7, [values[0].item(), values[1].item()]), (8, [values[2].item()])]
    assert len(pending) == 0 and pending.read() == []
