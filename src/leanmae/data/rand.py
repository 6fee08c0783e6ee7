"""Counter-based random numbers keyed by (seed, epoch, image): the same draws however data is sharded.

Augmentation parameters and MAE masks are drawn per image from a hash of (seed, epoch, image
index, stream), not from a generator advanced batch by batch. An image therefore gets the same
crop, flips and mask whether it lands in one process's batch of 2B or in one of two DDP processes'
batches of B, and whether or not the run was interrupted and resumed. This is what makes
``torchrun --nproc_per_node=2`` with batch B reproduce one process with batch 2B.
"""

from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)

# Separate streams so that crop parameters and masks of one image are independent.
AUGMENT_STREAM = 0
MASK_STREAM = 1 << 20
COLOUR_STREAM = 2 << 20  # stain and colour perturbation (leanmae.data.colour)
WEAK_STREAM = (
    3 << 20
)  # semi-supervised fine-tuning's weak view of an unlabelled image (leanmae.training.fixmatch)
UNLABELLED_STREAM = 4 << 20  # the order of the unlabelled images in an epoch (leanmae.training.fixmatch)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = x + _GOLDEN
    x = (x ^ (x >> np.uint64(30))) * _MIX1
    x = (x ^ (x >> np.uint64(27))) * _MIX2
    return x ^ (x >> np.uint64(31))


def uniform(seed: int, epoch: int, ids: np.ndarray, count: int, stream: int = 0) -> np.ndarray:
    """(len(ids), count) floats in [0, 1): ``count`` independent draws for each image id."""
    with np.errstate(over="ignore"):
        key = _splitmix64(
            np.uint64(seed & 0xFFFFFFFF) * np.uint64(0x100000001B3) + np.uint64(epoch & 0xFFFFFFFF)
        )
        base = _splitmix64(key ^ (np.asarray(ids, dtype=np.uint64) * _MIX2))
        counters = np.arange(stream, stream + count, dtype=np.uint64)
        bits = _splitmix64(base[:, None] ^ (counters[None, :] * _GOLDEN))
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
