"""The whole-study ETA: a cost for every job before it runs, and seconds per unit cost learned per kind.

A bar over runs averages one long MAE pretraining with many short fine-tunes, so its rate (and its ETA) means
nothing. Here a job's cost is the number of images it handles (mostly epochs x images per epoch), known from
its config and data before it starts; the seconds per image are learned separately for pretraining and
fine-tuning from the jobs that finished in this call (a kind with none yet borrows the other's rate; with no
finished job there is no ETA). Costs are approximate: evaluation, start-up and the linear probe's cheaper
steps are modelled coarsely or not at all; the estimate sharpens as jobs finish.
"""

from __future__ import annotations

from dataclasses import dataclass

KINDS = {"pretrain": "pretraining", "finetune": "fine-tuning"}


@dataclass(frozen=True)
class Timing:
    """One job for the estimate: its kind ("pretrain" / "finetune"), its cost, and the seconds it took
    (a finished job) or has spent so far (a running one; 0 for one still waiting)."""

    kind: str
    cost: float
    seconds: float = 0.0


def pretrain_cost(epochs: int, pool_images: int) -> float:
    """Images an MAE pretraining trains on: every pool image once per epoch."""
    return float(epochs * pool_images)


def finetune_cost(
    epochs: int, train_images: int, fraction: float, batch_size: int, min_steps: int, split_images: int
) -> float:
    """Images a fine-tune handles: max(epochs x its labelled images, min_steps x its batch), plus every
    image of the split once.

    Why the max: ``finetune`` caps a small fraction's batch at a quarter of its labelled images and
    repeats passes within each epoch until the run reaches ``min_steps`` optimizer steps. Why the
    split: every run loads the split's decoded images and predicts validation and test, a fixed part
    that on the committed PBC study (docs/results/pbc-cpu) makes a 1 % run take 215 s against a full
    run's 1474 s, not 1/20 of it. Rounding and gradient accumulation are left out.
    """
    labelled = max(1.0, fraction * train_images)
    batch = max(1.0, min(batch_size, labelled // 4))
    return max(epochs * labelled, min_steps * batch) + split_images


def rates(done: list[Timing]) -> dict[str, float]:
    """Seconds per unit cost of each kind; a kind without a finished job borrows the other kind's rate."""
    own = {}
    for kind in KINDS:
        cost = sum(t.cost for t in done if t.kind == kind)
        if cost > 0:
            own[kind] = sum(t.seconds for t in done if t.kind == kind) / cost
    if not own:
        return {}
    fallback = next(iter(own.values()))
    return {kind: own.get(kind, fallback) for kind in KINDS}


def eta_seconds(left: list[Timing], done: list[Timing], workers: int) -> float | None:
    """Seconds until the jobs in ``left`` have run, ``workers`` at a time; None with nothing to learn from.

    Each job still needs its rate x cost less the seconds it has already spent (never below 0). The
    sum is shared by the workers, but the wait is never shorter than the longest single job left
    (dependencies, such as fine-tunes waiting for their MAE, are not modelled).
    """
    if not left:
        return 0.0
    rate = rates(done)
    if not rate:
        return None
    each = [max(0.0, rate[t.kind] * t.cost - t.seconds) for t in left]
    return max(sum(each) / max(1, workers), max(each))


def duration_text(seconds: float) -> str:
    """``3 h 10 min``, ``25 min``; at least ``1 min`` (the estimate is not finer than that)."""
    hours, minutes = divmod(max(1, round(seconds / 60)), 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min"


def eta_text(eta: float | None) -> str:
    """``~3 h 10 min left``, or "" when there is no estimate or nothing is left."""
    return f"~{duration_text(eta)} left" if eta else ""


def progress_line(finished: list[str], total: int, failed: int, eta: float | None) -> str:
    """``study: 7 of 48 runs done (2 pretraining, 5 fine-tuning), ~3 h 10 min left``.

    ``finished`` holds the kind of every finished job; kinds with none are left out of the brackets.
    """
    kinds = ", ".join(f"{finished.count(kind)} {name}" for kind, name in KINDS.items() if kind in finished)
    parts = [f"study: {len(finished)} of {total} runs done" + (f" ({kinds})" if kinds else "")]
    parts += [f"{failed} failed"] if failed else []
    parts += [eta_text(eta)]
    return ", ".join(p for p in parts if p)
