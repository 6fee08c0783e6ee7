"""Model inputs prepared one batch ahead, on a background thread, while the current step trains.

Why: ``Task.prepare`` (gather from the decode-once cache, augment, masks) used to run on the
critical path, and on an H200 30-46 % of each ViT-B/16 MAE step waited for it
(docs/performance.md). Here a thread prepares batch k+1 while the caller trains on batch k;
numpy and torch release the GIL inside their kernels, so the two overlap.

Results do not change: inputs are handed over in the order of the batches, augmentation and masks
are keyed by (seed, epoch, image) (``leanmae.data.rand``) and no ``prepare`` draws from torch's
global generator, so which thread prepares a batch, and when, cannot change a number.

On CUDA the thread queues its work on a stream of its own; the consumer's stream waits for an
event recorded after each batch (GPU-side, the host does not block) and the input tensors are
recorded on the consumer's stream, so that the caching allocator never hands their memory back to
the prefetch stream while a step may still read it.
"""

from __future__ import annotations

import queue
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

_END = object()  # the batches are exhausted


class _Failed:
    """An exception raised by ``prepare`` in the thread, re-raised in the consumer."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


class Inputs(Iterator[Any]):
    """Model inputs of ``items``, in order; ``waited`` counts the seconds the consumer spent waiting for them.

    ``ahead=False`` prepares each batch when it is asked for, on the caller's thread: the caller
    waits for all of it (the engine's behaviour before prefetching, kept as ``run.prefetch: false``).
    ``ahead=True`` prepares the next batch on a background thread while the caller works. Close it
    (or use it as a context manager) to stop the thread early; it also stops once garbage-collected.
    """

    def __init__(
        self, prepare: Callable[[Any], Any], items: Iterable[Any], device: torch.device, ahead: bool = True
    ) -> None:
        self.waited = 0.0
        self._prepare, self._items, self._device = prepare, iter(items), device
        self._thread: threading.Thread | None = None
        self._done = False
        if not ahead:
            return
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=1)
        stop = threading.Event()
        stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        # The thread holds no reference to self, so that an abandoned Inputs is collected and stops it.
        self._thread = threading.Thread(
            target=_work,
            args=(prepare, self._items, self._queue, stop, device, stream),
            daemon=True,
            name="leanmae-prefetch",
        )
        self._finalizer = weakref.finalize(self, stop.set)
        self._thread.start()

    def __next__(self) -> Any:
        if self._done:
            raise StopIteration
        started = time.perf_counter()
        try:
            if self._thread is None:
                return self._prepare(next(self._items))
            item = self._queue.get()
        except StopIteration:
            self._done = True
            raise
        finally:
            self.waited += time.perf_counter() - started
        if item is _END:
            self._done = True
            raise StopIteration
        if isinstance(item, _Failed):
            self._done = True
            raise item.error
        inputs, ready = item
        if ready is not None:
            stream = torch.cuda.current_stream(self._device)
            stream.wait_event(ready)
            for tensor in _tensors(inputs):
                if tensor.is_cuda:
                    tensor.record_stream(stream)
        return inputs

    def close(self) -> None:
        """Stop the background thread (it finishes the batch it is preparing) and wait for it."""
        self._done = True
        if self._thread is not None:
            self._finalizer()
            self._thread.join()

    def __enter__(self) -> Inputs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _work(
    prepare: Callable[[Any], Any],
    items: Iterator[Any],
    out: queue.Queue[Any],
    stop: threading.Event,
    device: torch.device,
    stream: Any,
) -> None:
    """The thread: prepare every item in order and queue it (one ahead), then ``_END``; hand over any
    exception."""
    try:
        for item in items:
            if stream is None:
                prepared = (prepare(item), None)
            else:
                with torch.cuda.device(device), torch.cuda.stream(stream):
                    inputs = prepare(item)
                    ready = torch.cuda.Event()
                    ready.record(stream)
                prepared = (inputs, ready)
            if not _put(out, prepared, stop):
                return
    except BaseException as error:  # noqa: BLE001 - every failure belongs to the consumer, which re-raises it
        _put(out, _Failed(error), stop)
        return
    _put(out, _END, stop)


def _put(out: queue.Queue[Any], item: Any, stop: threading.Event) -> bool:
    """Queue ``item`` once there is room; False if the consumer stopped meanwhile."""
    while not stop.is_set():
        try:
            out.put(item, timeout=0.05)
            return True
        except queue.Full:
            continue
    return False


def _tensors(inputs: Any) -> Iterator[torch.Tensor]:
    """Every tensor in a (nested) tuple, list or dict of model inputs."""
    if isinstance(inputs, torch.Tensor):
        yield inputs
    elif isinstance(inputs, (tuple, list)):
        for value in inputs:
            yield from _tensors(value)
    elif isinstance(inputs, dict):
        for value in inputs.values():
            yield from _tensors(value)
