"""Which cache entries go into which batch: seeded, sharded across processes, never empty.

Batches are arrays of indices into the decode-once cache; gathering them is one fancy-indexing
call on the memmap. The order depends only on (seed, epoch), the way DistributedSampler's
``set_epoch`` works, so a resumed epoch replays the same batches and every process of a DDP run
sees its own disjoint shard.
"""

from __future__ import annotations

import numpy as np


def epoch_order(
    indices: np.ndarray,
    epoch: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    weights: np.ndarray | None = None,
    stream: int = 0,
) -> np.ndarray:
    """This process's share of one epoch's shuffled ``indices``.

    With ``weights`` (class-balanced sampling) the epoch draws ``len(indices)`` samples with
    replacement in proportion to the weights. The list is padded by wrapping to a multiple of
    ``world_size``, as DistributedSampler does, so every process takes the same number of steps.
    A ``stream`` other than 0 shuffles independently of stream 0 (a second set of images in one step).
    """
    rng = np.random.default_rng([seed, epoch, stream] if stream else [seed, epoch])
    if weights is None:
        order = indices[rng.permutation(len(indices))]
    else:
        order = rng.choice(indices, size=len(indices), replace=True, p=weights / weights.sum())
    total = -(-len(order) // world_size) * world_size
    order = np.resize(order, total)
    return order[rank::world_size]


def split_batches(order: np.ndarray, batch_size: int, drop_last: bool) -> list[np.ndarray]:
    """Cut an epoch's order into batches; ``drop_last`` never drops the only batch."""
    n_full = len(order) // batch_size
    if drop_last and n_full > 0:
        order = order[: n_full * batch_size]
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def gather(images: np.ndarray, batch: np.ndarray) -> np.ndarray:
    """Rows of the memmap for one batch, read in file order (sequential reads), returned in batch order."""
    order = np.argsort(batch, kind="stable")
    rows = np.empty((len(batch),) + images.shape[1:], dtype=images.dtype)
    rows[order] = images[batch[order]]
    return rows
