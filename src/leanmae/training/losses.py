"""Training losses kept on the device, read back to the host only every few steps.

Why: ``loss.item()`` after every step makes the host wait until the device has finished that step,
so the host cannot queue the next step's kernels while the device computes; on a GPU the device
then idles between steps (issue 18). The engine keeps each step's losses as device tensors and
reads them back in one transfer every ``CHECK_EVERY`` optimizer steps and at the end of an epoch.

The non-finite stop still names the first bad step exactly. What changes is when it is noticed: up
to ``CHECK_EVERY - 1`` steps later, after those steps have trained on the bad values. Nothing is
written in between (checkpoints are written after the epoch's last check), so the last checkpoint
stays intact and resumable. The values read back are the ones ``.item()`` gave (float32 and bf16 are
exact in float64), so train_loss and history.csv do not change.
"""

from __future__ import annotations

import torch

# Optimizer steps between host reads: rare enough not to stall a GPU, soon enough to stop a diverged run.
CHECK_EVERY = 50


class StepLosses:
    """The losses of the optimizer steps since the last ``read``, by step number, still on the device."""

    def __init__(self) -> None:
        self._steps: list[tuple[int, list[torch.Tensor]]] = []

    def add(self, step: int, values: list[torch.Tensor]) -> None:
        """Note the micro-batch losses of optimizer step ``step`` (detached, so no graph is kept)."""
        self._steps.append((step, [value.detach().reshape(()) for value in values]))

    def __len__(self) -> int:
        return len(self._steps)

    def read(self) -> list[tuple[int, list[float]]]:
        """Every noted step with its losses as Python floats (one device synchronisation); forgets them."""
        steps, self._steps = self._steps, []
        if not steps:
            return []
        flat = torch.stack([value.to(torch.float64) for _, values in steps for value in values]).tolist()
        out, start = [], 0
        for step, values in steps:
            out.append((step, flat[start : start + len(values)]))
            start += len(values)
        return out
