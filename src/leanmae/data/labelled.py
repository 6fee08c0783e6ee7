"""A split's labelled images for a classifier: decoded once, with integer labels and the index sets of
one label fraction.

Why a module of its own: fine-tuning, the throughput benchmark and the tests all need the same view
of a split (which cache entries train, validate and test, at which label fraction), and none of it
depends on the model or the training engine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from leanmae.config import FinetuneConfig
from leanmae.data.cache import DecodeSpec, ImageCache, Node, build_cache_for, stain_spec
from leanmae.data.sources import ImageRecord
from leanmae.data.split import Item, label_fraction, read_manifest, verify
from leanmae.errors import DataError


@dataclass
class LabelledData:
    """The split's images in the decode-once cache, with integer labels and index sets per split."""

    root: Path
    items: list[Item]
    labels: list[str]
    cache: ImageCache
    y: np.ndarray  # cache entry -> class index
    index: dict[str, np.ndarray]  # "train" (this fraction), "val", "test" -> cache entries
    spec: DecodeSpec  # how the images were decoded (with the stain reference of the train split)

    def paths(self, split: str) -> list[str]:
        return [self.items[s].relpath for s in self.cache.sources[self.index[split]]]

    def all_of(self, split: str) -> np.ndarray:
        """Every cache entry of ``split``, whatever this run's label draw: for uses that read no label."""
        return np.flatnonzero([self.items[s].split == split for s in self.cache.sources])


def load_labelled(
    split_path: Path,
    *,
    data_root: str | Path | None,
    fraction: float,
    seed: int,
    spec: DecodeSpec,
    cfg: FinetuneConfig,
    ctx: Node,
    before_decode: Callable[[list[Item], set[str]], None] | None = None,
) -> LabelledData:
    """Read and verify the manifest, decode its images once, and pick this run's label fraction.

    ``before_decode`` sees the verified items (with their sha256) and the drawn train / val paths
    before anything is decoded (on the main process): the resume check of the data.
    """
    root, items = read_manifest(split_path, data_root)
    hashed = verify(items, root) if ctx.is_main else items
    labels = sorted({it.label for it in items})
    if len(labels) < 2:
        raise DataError(
            f"{split_path}: the manifest lists images of a single class ({labels[0]}); a "
            "classification task needs at least two classes"
        )
    chosen = {it.relpath for it in label_fraction(items, fraction, seed)}
    if cfg.classifier.val == "honest":
        chosen |= {it.relpath for it in label_fraction(items, fraction, seed, split="val")}
    if before_decode is not None and ctx.is_main:
        before_decode(hashed, chosen)
    records = [ImageRecord(root / it.relpath, root, it.label) for it in items]
    spec = stain_spec(
        spec, cfg.data.stain_norm, [r for r, it in zip(records, items, strict=True) if it.split == "train"]
    )
    cache = build_cache_for(records, spec, cfg.data, cfg.run.progress, ctx)
    item_of_entry = [items[s] for s in cache.sources]
    y = np.array([labels.index(it.label) for it in item_of_entry], dtype=np.int64)
    index = {
        "train": np.array(
            [i for i, it in enumerate(item_of_entry) if it.split == "train" and it.relpath in chosen],
            dtype=np.int64,
        ),
        "val": np.array(
            [
                i
                for i, it in enumerate(item_of_entry)
                if it.split == "val" and (cfg.classifier.val == "full" or it.relpath in chosen)
            ],
            dtype=np.int64,
        ),
        "test": np.array([i for i, it in enumerate(item_of_entry) if it.split == "test"], dtype=np.int64),
    }
    for name, idx in index.items():
        missing = set(range(len(labels))) - set(y[idx].tolist())
        if missing:
            raise DataError(
                f"{split_path}: the {name} images lack class(es) "
                f"{', '.join(labels[m] for m in sorted(missing))}"
            )
    return LabelledData(root, items, labels, cache, y, index, spec)


def labels_used(data: LabelledData, val_mode: str) -> dict[str, Any]:
    """The labels a run used, as counts: train and val per class and in total (metrics.json, tables)."""
    per = {
        s: dict(
            zip(
                data.labels,
                np.bincount(data.y[data.index[s]], minlength=len(data.labels)).tolist(),
                strict=True,
            )
        )
        for s in ("train", "val")
    }
    return {
        "train": per["train"],
        "val": per["val"],
        "total": int(len(data.index["train"]) + len(data.index["val"])),
        "val_mode": val_mode,
    }


def class_weights(counts: np.ndarray, balance: str) -> np.ndarray | None:
    """Loss weights per class, mean 1 over the training images: 1/count (loss) or 1/sqrt(count) (sqrt).

    Why sqrt by default: full inverse-frequency weights over-correct on tiny, uneven label sets (a
    1 % run predicted one class three times as often as it occurs); the square root halves the pull.
    """
    power = {"loss": 1.0, "sqrt": 0.5}.get(balance)
    if power is None:
        return None
    # A class without a label (a selection that chose none of it) has no image to weigh: weight 0.
    weights = np.where(counts > 0, np.maximum(counts, 1).astype(np.float64) ** -power, 0.0)
    return weights * counts.sum() / (weights * counts).sum()
