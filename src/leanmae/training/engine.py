"""The one training engine that pretraining and fine-tuning share.

A task gives the engine three things: the batches of an epoch, a loss for one batch, and a validation
function. The engine owns the rest: AdamW and its per-iteration schedule, gradient accumulation (without DDP
gradient sync on non-final micro-steps), clipping, autocast, the non-finite-loss stop, progress bars,
history.csv and the trackers of ``run.report_to`` (TensorBoard, MLflow), atomic checkpoints every epoch and
resuming from them.

While a step trains, the next batch is prepared on a background thread (``run.prefetch``,
``leanmae.training.prefetch``); ``TrainStep`` is the step itself, which benchmarks time too.

Reproducibility: batch order is seeded by (seed, epoch), augmentation and masks are keyed by
(seed, epoch, image) (``leanmae.data.rand``), and dropout / drop path by (seed, epoch, rank) at the
start of each epoch. A run resumed from the checkpoint
of epoch k therefore replays epoch k+1 exactly, and ends with the same weights as a run that
was never interrupted.
"""

from __future__ import annotations

import csv
import io
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from leanmae.config import OptimConfig, RunConfig, absolute_lr
from leanmae.errors import NonFiniteLossError
from leanmae.files import write_atomic
from leanmae.progress import bar_disabled
from leanmae.tracking import open_trackers
from leanmae.training.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from leanmae.training.distributed import Context, autocast_dtype
from leanmae.training.losses import CHECK_EVERY, StepLosses
from leanmae.training.prefetch import Inputs


def param_groups(
    model: nn.Module, weight_decay: float, layer_scale: Callable[[str], float] | None = None
) -> list[dict[str, Any]]:
    """AdamW groups: no weight decay on biases, norms, tokens and position embeddings (as in MAE).

    ``layer_scale(name)`` gives a per-parameter lr multiplier (layer-wise lr decay in fine-tuning).
    """
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = param.ndim <= 1 or name.endswith(("cls_token", "position_embeddings", "mask_token"))
        key = (0.0 if no_decay else weight_decay, layer_scale(name) if layer_scale else 1.0)
        groups.setdefault(key, []).append(param)
    return [
        {"params": params, "weight_decay": wd, "lr_scale": scale}
        for (wd, scale), params in sorted(groups.items(), key=lambda kv: kv[0])
    ]


def lr_at(step: int, peak: float, optim: OptimConfig, steps_per_epoch: int) -> float:
    """Linear warmup, then cosine decay to ``min_lr`` or constant; one value per optimizer step."""
    warmup = optim.warmup_epochs * steps_per_epoch
    total = optim.epochs * steps_per_epoch
    if step < warmup:
        return peak * min(1.0, (step + 1) / warmup)  # a fractional warmup never overshoots the peak
    if optim.schedule == "constant":
        return peak
    progress = (step - warmup) / max(1.0, total - warmup)
    return optim.min_lr + (peak - optim.min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def prefetching(run: RunConfig, device: torch.device) -> bool:
    """Whether batches are prepared ahead on a thread: ``run.prefetch``, or by default on CUDA only.

    Why not on CPUs: the thread needs the same cores as the step (a study's jobs have one each), so
    it can only compete; on an H100 it cut ViT-B/16's data wait from 25 % to 2.7 % of a step, but made
    the tiny cpu preset 0.75x as fast (docs/performance.md).
    """
    return run.prefetch if run.prefetch is not None else device.type == "cuda"


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """One integer per (seed, epoch, rank): the root of all randomness of that epoch on that process."""
    return (seed * 1_000_003 + epoch * 10_007 + rank) % (2**63)


@dataclass
class TrainResult:
    history: list[dict[str, float]]
    best_epoch: int | None
    best_value: float | None
    seconds: float
    resumed_from: int | None = None


@dataclass
class Task:
    """What a command hands the engine.

    ``batches(epoch)`` lists this process's batches (cheap index arrays) for one epoch;
    ``prepare(batch, epoch)`` turns one into model inputs (gather, augment, masks; the engine runs it
    one batch ahead on a background thread, so it must not draw from torch's global generator, and
    logs the time a step waited for it as ``data_seconds``); ``loss(model, inputs)`` returns the mean
    loss of one batch; ``validate(model, epoch)`` returns metrics (at least ``val_loss``) on rank 0
    after ``epoch`` epochs (the same keys every epoch: history.csv has one header). ``select`` names
    the validation metric to maximise for model selection (None: the last epoch is kept);
    ``on_best(model)`` is called on rank 0 when it improves.
    """

    batches: Callable[[int], Sequence[Any]]
    prepare: Callable[[Any, int], Any]
    loss: Callable[[nn.Module, Any], torch.Tensor]
    validate: Callable[[nn.Module, int], dict[str, float]]
    select: str | None = None
    on_best: Callable[[nn.Module], None] | None = None


def write_history(path: Path, rows: list[dict[str, float]]) -> None:
    if not rows:
        return
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0].keys()))
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, buffer.getvalue())


def build_optimizer(
    model: nn.Module,
    optim: OptimConfig,
    lr: float,
    device: torch.device,
    layer_scale: Callable[[str], float] | None = None,
    **flags: bool,
) -> torch.optim.AdamW:
    """AdamW over ``param_groups``; ``flags`` (foreach/fused) override the engine's choice (benchmarks)."""
    # Fused by default: one kernel per step, measured here at 2.7 ms against 7.9 (foreach) and 7.2
    # (for-loop) for the cpu preset's MAE and 55 / 385 / 191 ms for ViT-B/16 (docs/performance.md).
    flags = flags or {"fused": True if device.type in ("cpu", "cuda") else None}
    return torch.optim.AdamW(
        param_groups(model, optim.weight_decay, layer_scale), lr=lr, betas=optim.betas, **flags
    )


class TrainStep:
    """One optimizer step exactly as ``fit`` takes it; public so that benchmarks time the engine's own step.

    It owns the DDP wrapper, ``torch.compile`` (``compile_model``), autocast and the fp16 GradScaler
    around ``optimizer``: set every group's lr (times its ``lr_scale``); for each micro-batch, the loss
    under autocast and backward of loss / micro-batches (DDP syncs gradients on the last micro-batch
    only); then unscale, clip, step and zero the gradients. Nothing in it waits for the device: the
    losses stay device tensors, and ``fit`` checks them for non-finite values every few steps
    (``leanmae.training.losses``).

    ``compile_model`` (``run.compile``) compiles the model with ``torch.compile``; meant for CUDA. It
    brings nothing on CPUs (measured by the project), and its first steps compile (tens of seconds),
    which benchmarks exclude from timing as warm-up.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        optim: OptimConfig,
        amp: torch.dtype | None,
        ctx: Context,
        compile_model: bool = False,
    ) -> None:
        self.model, self.optimizer, self.clip_grad, self.amp, self.device = (
            model,
            optimizer,
            optim.clip_grad,
            amp,
            ctx.device,
        )
        self.distributed = ctx.distributed
        self.trained = torch.compile(model) if compile_model else model
        if ctx.distributed:
            self.trained = nn.parallel.DistributedDataParallel(
                self.trained, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None
            )
        self.scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 else None

    def __call__(
        self,
        loss: Callable[[nn.Module, Any], torch.Tensor],
        inputs: Iterator[Any],
        micro_batches: int,
        lr: float,
    ) -> list[torch.Tensor]:
        """Train on the next ``micro_batches`` items of ``inputs`` (taken one at a time, so that they
        can still be in preparation) at learning rate ``lr``; returns their losses, detached, on the device.
        """
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
        values = []
        for i in range(micro_batches):
            batch = next(inputs)
            sync = i == micro_batches - 1 or not self.distributed
            with self.trained.no_sync() if not sync else nullcontext():  # type: ignore[operator]
                with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
                    batch_loss = loss(self.trained, batch)
                scaled = batch_loss / micro_batches
                (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            values.append(batch_loss.detach())
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        if self.clip_grad:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return values


def after_non_finite_loss(epoch: int, out_dir: Path) -> str:
    """What is left after a non-finite loss in (0-based) ``epoch``, and how to go on from there.

    A checkpoint is written at the end of every epoch, so one exists exactly when the run stopped after
    its first epoch; before that there is nothing to resume, and the failed start lets the corrected
    command start afresh (``reporting.runinfo.guarded_output``).
    """
    fix = "Lower the learning rate (optim.base_lr) or set optim.clip_grad"
    if epoch == 0:
        return (
            f"no checkpoint was written yet (it stopped in the first epoch). {fix}, "
            "then run the command again without --resume."
        )
    return (
        f"the last checkpoint in {out_dir / 'checkpoints'} (epoch {epoch}) is intact. {fix}, then --resume."
    )


def checked_losses(pending: StepLosses, epoch: int, out_dir: Path) -> list[float]:
    """The loss of each pending step (the sum of its micro-batches, as ``train_loss`` adds them up).

    Raises ``NonFiniteLossError`` naming the first step whose loss is NaN or infinite; nothing has been
    saved since the last checkpoint, if there is one (``after_non_finite_loss``).
    """
    sums = []
    for step, values in pending.read():
        for value in values:
            if not math.isfinite(value):
                where = f"epoch {epoch + 1}, step {step}"
                raise NonFiniteLossError(
                    f"loss is {value} at {where}; {after_non_finite_loss(epoch, out_dir)}"
                )
        sums.append(sum(values))
    return sums


def fit(
    model: nn.Module,
    task: Task,
    optim: OptimConfig,
    run: RunConfig,
    ctx: Context,
    out_dir: Path,
    steps_per_epoch: int,
    layer_scale: Callable[[str], float] | None = None,
) -> TrainResult:
    """Train ``model`` on ``task`` for ``optim.epochs`` epochs, resuming from ``out_dir/checkpoints``."""
    out_dir = Path(out_dir)
    peak_lr = absolute_lr(optim, ctx.world_size)
    optimizer = build_optimizer(model, optim, peak_lr, ctx.device, layer_scale)
    amp = autocast_dtype(run.amp, ctx.device)

    start_epoch, history, best_epoch, best_value, resumed_from = 0, [], None, None, None
    checkpoints = list_checkpoints(out_dir / "checkpoints")
    seen = ctx.gather(checkpoints[-1].name if checkpoints else None)
    if (
        len(set(seen)) > 1
    ):  # every process must resume from the same epoch, or DDP's collectives fall out of step
        raise RuntimeError(
            f"processes see different checkpoints in {out_dir / 'checkpoints'} "
            f"({', '.join(f'rank {r}: {n}' for r, n in enumerate(seen))}); "
            "with several nodes, --out must be on a file system they all share"
        )
    if checkpoints:
        state = load_checkpoint(checkpoints[-1], model, optimizer, ctx.device)
        start_epoch = state["epoch"]
        history, best_epoch, best_value = state["history"], state["best_epoch"], state["best_value"]
        resumed_from = start_epoch
        if ctx.is_main:
            print(f"resuming from {checkpoints[-1]} (epoch {start_epoch} of {optim.epochs} done)")

    train_step = TrainStep(model, optimizer, optim, amp, ctx, compile_model=run.compile)
    trackers = open_trackers(run.report_to, out_dir, start_epoch * steps_per_epoch) if ctx.is_main else None

    started = time.perf_counter()
    for epoch in range(start_epoch, optim.epochs):
        torch.manual_seed(
            epoch_seed(run.seed, epoch, ctx.rank)
        )  # dropout / drop path; data randomness is keyed per image
        batches = task.batches(epoch)
        train_step.trained.train()
        epoch_start, loss_sum, pending = time.perf_counter(), 0.0, StepLosses()
        step = epoch * steps_per_epoch
        bar = tqdm(
            total=len(batches),
            desc=f"epoch {epoch + 1}/{optim.epochs}",
            unit="batch",
            disable=bar_disabled(ctx.is_main and run.progress),
            leave=False,
        )
        # One epoch at a time: the next epoch's first batch is prepared after validation and the checkpoint,
        # as without prefetching.
        with Inputs(
            lambda batch, epoch=epoch: task.prepare(batch, epoch),
            batches,
            ctx.device,
            ahead=prefetching(run, ctx.device),
        ) as inputs:
            for group_start in range(0, len(batches), optim.accum_steps):
                micro_batches = len(batches[group_start : group_start + optim.accum_steps])
                lr = lr_at(step, peak_lr, optim, steps_per_epoch)
                pending.add(step, train_step(task.loss, inputs, micro_batches, lr))
                bar.update(micro_batches)
                step += 1
                if len(pending) >= CHECK_EVERY or group_start + optim.accum_steps >= len(batches):
                    # The loop's only host synchronisation: every CHECK_EVERY steps and at the epoch's end.
                    losses = checked_losses(pending, epoch, out_dir)
                    for value in losses:  # one at a time, as before: the same float sum, the same history
                        loss_sum += value
                    bar.set_postfix(loss=f"{losses[-1]:.4f}", lr=f"{lr:.2e}")
        data_time = (
            inputs.waited
        )  # the time steps waited for their inputs: all of prepare without prefetching
        bar.close()
        train_loss = ctx.mean(loss_sum / max(1, len(batches)))
        seconds = time.perf_counter() - epoch_start

        metrics: dict[str, float] = {}
        if ctx.is_main:
            model.eval()
            with torch.inference_mode(), torch.autocast(ctx.device.type, dtype=amp, enabled=amp is not None):
                metrics = task.validate(model, epoch + 1)
            row = {
                "epoch": epoch + 1,
                "train_loss": train_loss,
                **metrics,
                "lr": lr,
                "seconds": seconds,
                "data_seconds": data_time,
            }
            history.append(row)
            if task.select is not None and (best_value is None or metrics[task.select] > best_value):
                best_epoch, best_value = epoch + 1, metrics[task.select]
                if task.on_best:
                    task.on_best(model)
            state = {"history": history, "best_epoch": best_epoch, "best_value": best_value, "step": step}
            save_checkpoint(out_dir / "checkpoints", epoch + 1, model, optimizer, state)
            write_history(out_dir / "history.csv", history)
            trackers.log_epoch(row, step)  # type: ignore[union-attr]
            print(
                f"epoch {epoch + 1}/{optim.epochs}: "
                + ", ".join(
                    f"{k} {v:.4f}"
                    for k, v in row.items()
                    if k not in ("epoch", "lr", "seconds", "data_seconds")
                )
                + f", {seconds:.0f}s"
            )
        ctx.barrier()
    if trackers:
        trackers.close()
    return TrainResult(
        history=history,
        best_epoch=best_epoch,
        best_value=best_value,
        seconds=time.perf_counter() - started,
        resumed_from=resumed_from,
    )
