#!/usr/bin/env python
"""Training throughput: leanmae's own path against a plain transformers-example training loop.

Each case trains the same transformers model two ways and alternates them (ABBA order), so that
load from other jobs on the machine falls on both alike; the ratio of each repetition pair is
what to read, not the absolute numbers.

* **leanmae**: the model from ``leanmae.models`` builders, batches from the decode-once cache,
  batched tensor augmentation, fused AdamW with ``engine.param_groups``, the torch thread count
  ``training.distributed.setup`` gives a lone process on CPUs (bf16 autocast and TF32 on GPUs), and
  the engine's own step: ``engine.TrainStep`` fed by ``prefetch.Inputs`` (the next batch prepared on
  a background thread), as ``engine.fit`` runs them. On CPUs the 1-thread figure is reported beside it.
* **reference**: the way transformers' ``run_mae.py`` / ``run_image_classification.py`` train:
  JPEG/PNG files decoded every epoch, per-image PIL RandomResizedCrop + flip + ToTensor + Normalize
  (written here with PIL and numpy: torchvision is not a dependency), a DataLoader with its default
  ``num_workers=0``, ``torch.optim.AdamW`` with its defaults, torch's default thread count, fp32,
  gradient clipping at 1.0 (the Trainer's default ``max_grad_norm``).

Also reported: model FLOPs per image (forward + backward, counted by FlopCounterMode), achieved
GFLOP/s as a share of the matmul peak measured here at the same thread count, the share of step
time spent waiting for data (host time, as history.csv's data_seconds), memory, and the time of one whole
epoch through ``engine.fit``.

    python benchmarks/throughput.py --quick        # <= 5 minutes on a 2-core CPU
    python benchmarks/throughput.py                # longer, steadier, whole epochs
    python benchmarks/throughput.py --ablate       # what each optimisation buys (CPU)
    python benchmarks/throughput.py --ablate threads adamw                    # some of them
    python benchmarks/throughput.py --device cuda --without-prefetch --with-compile
        --gpu-batch 128 384 --jsonl benchmarks/results/<device>-<date>.jsonl
        # GPU plan: ViT-B/16 and cpu-preset MAE, leanmae bf16 (as by default, without prefetching, compiled)
        # vs the fp32 reference; benchmarks/gpu_check.sh runs it

Output: one JSON line per case, then a table. Data: the PBC white-cell images at
../shared/data/pbc when present, otherwise synthetic smear tiles (leanmae.data.synthetic).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import io
import json
import math
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

DEFAULT_THREADS = torch.get_num_threads()  # torch's own default, read before anything changes it

from leanmae.commands.finetune import finetune_task  # noqa: E402
from leanmae.commands.pretrain import eval_pixels, pretrain_task  # noqa: E402
from leanmae.config import FinetuneConfig, ModelConfig, OptimConfig, PretrainConfig, absolute_lr, resolve  # noqa: E402
from leanmae.data.augment import (  # noqa: E402
    AUGMENT_DRAWS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    normalize,
    random_resized_crop,
    to_float,
)  # noqa: E402
from leanmae.data.batches import gather  # noqa: E402
from leanmae.data.cache import DecodeSpec, ImageCache, load_or_build  # noqa: E402
from leanmae.data.decode import decode_rgb, square_resize  # noqa: E402
from leanmae.data.labelled import LabelledData  # noqa: E402
from leanmae.data.rand import AUGMENT_STREAM, uniform  # noqa: E402
from leanmae.data.sources import ImageRecord, scan  # noqa: E402
from leanmae.data.split import make_split  # noqa: E402
from leanmae.data.synthetic import make_synthetic_tiles  # noqa: E402
from leanmae.models.classifier import add_drop_path, build_classifier, layer_decay_scale  # noqa: E402
from leanmae.models.mae import build_mae  # noqa: E402
from leanmae.training.distributed import Context, autocast_dtype, cpu_threads  # noqa: E402
from leanmae.training.engine import Task, TrainStep, build_optimizer, fit, prefetching  # noqa: E402
from leanmae.training.prefetch import Inputs  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PBC = REPO.parent / "shared" / "data" / "pbc"
WBC = ["basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil"]
WBC_TRAIN_IMAGES = (
    7208  # the train split (70 %) of PBC's five white-cell classes, used to extrapolate without the data
)

# Model shapes, as --set overrides of the cpu preset (which also gives the optimizer recipe).
MODELS: dict[str, list[str]] = {
    "cpu": [],
    "vit-s16": [
        "model.size=small",
        "model.image_size=224",
        "model.patch_size=16",
        "model.decoder_hidden_size=512",
        "model.decoder_depth=8",
        "model.decoder_heads=16",
        "data.cache_size=null",
    ],
    "vit-b16": [
        "model.size=base",
        "model.image_size=224",
        "model.patch_size=16",
        "model.decoder_hidden_size=512",
        "model.decoder_depth=8",
        "model.decoder_heads=16",
        "data.cache_size=null",
    ],
}


@dataclass(frozen=True)
class Case:
    """One row of the table: a task and model, timed ``reps`` times per path for ``steps`` steps each."""

    task: str  # pretrain | finetune
    model: str  # a key of MODELS
    batch: int
    steps: int
    reps: int
    warmup: int = 1
    one_thread: bool = (
        False  # also time both paths at 1 thread (CPU), to separate the thread count from the rest
    )

    @property
    def name(self) -> str:
        return f"{self.task}/{self.model}"


def cpu_cases(quick: bool) -> list[Case]:
    """The CPU plan: the cpu preset at its own batch sizes, ViT-S/16 and ViT-B/16 at 224 px with small
    batches.

    ``--quick`` takes fewer and shorter repetitions and skips ViT-B/16 (one reference step of it took
    over a minute on the loaded 2-core machine this was written on).
    """
    if quick:
        return [
            Case("pretrain", "cpu", 128, 1, 3, one_thread=True),
            Case("finetune", "cpu", 64, 1, 3, one_thread=True),
            Case("pretrain", "vit-s16", 8, 1, 1),
            Case("finetune", "vit-s16", 8, 1, 1),
        ]
    return [
        Case("pretrain", "cpu", 128, 3, 5, one_thread=True),
        Case("finetune", "cpu", 64, 4, 5, one_thread=True),
        Case("pretrain", "vit-s16", 16, 2, 3, one_thread=True),
        Case("finetune", "vit-s16", 16, 2, 3, one_thread=True),
        Case("pretrain", "vit-b16", 8, 1, 3),
        Case("finetune", "vit-b16", 4, 1, 3),
    ]


def leanmae_config(task: str, model: str, device: str = "cpu") -> PretrainConfig | FinetuneConfig:
    """The config a ``leanmae pretrain|finetune --preset cpu`` run would resolve, with the model shape of
    ``model``."""
    cls = PretrainConfig if task == "pretrain" else FinetuneConfig
    return resolve(cls, task, "cpu", None, {"run": {"progress": False, "device": device}}, MODELS[model])


def cache_size(cfg: PretrainConfig | FinetuneConfig) -> int:
    """The cache's working size, as the commands choose it (data.cache_size, else 1.25 x the image size)."""
    return cfg.data.cache_size or round(cfg.model.image_size * 1.25)


JSONL: list[Path] = []  # --jsonl: files that get every JSON line too


def emit(record: dict[str, Any]) -> None:
    """One JSON line on stdout (and appended to the ``--jsonl`` file)."""
    line = json.dumps(record, default=float)
    print(line, flush=True)
    for path in JSONL:
        with open(path, "a") as f:
            f.write(line + "\n")


def sync(device: torch.device) -> None:
    """Wait for the GPU's queued work (no-op on CPU), so that wall-clock time covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def use_threads(n: int) -> None:
    """Set torch's intra-op thread count (only when it changes: resizing the pool is not free)."""
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


# --------------------------------------------------------------------------- images


@dataclass
class ImageSet:
    """Image files with integer labels: what both paths train on (entry i of a cache built from them is file
    i)."""

    records: list[ImageRecord]
    labels: np.ndarray
    names: list[str]
    source: str


def benchmark_images(n: int, work: Path, pbc: Path | None, seed: int = 0) -> ImageSet:
    """``n`` PBC white-cell JPEGs (a fixed random choice) if the folder is there, else ``n`` synthetic 160 px
    PNG tiles."""
    if pbc is not None and pbc.is_dir():
        records = scan(pbc, WBC, labelled=True)
        pick = np.sort(np.random.default_rng(seed).permutation(len(records))[: min(n, len(records))])
        records = [records[i] for i in pick]
        return ImageSet(
            records, np.array([WBC.index(r.label) for r in records]), WBC, f"PBC white cells ({pbc})"
        )
    folder = work / f"synthetic-{n}"
    if not folder.exists():
        make_synthetic_tiles(folder, n=n, size=160, seed=seed)
    records = scan(folder)
    return ImageSet(
        records,
        np.arange(len(records)) % 5,
        [f"class{i}" for i in range(5)],
        "synthetic smear tiles (160 px PNG; PBC not found)",
    )


def wbc_train_split(pbc: Path | None, limit: int | None, work: Path) -> tuple[ImageSet, int]:
    """The train split of PBC's white cells (make_split, 70/10/20, leaving out the pair of identical images
    PBC files under two classes, as ``leanmae split --drop-conflicts`` does) or up to ``limit`` of it; and
    the full split's size."""
    if pbc is None or not pbc.is_dir():
        images = benchmark_images(min(limit or 1000, 512), work, None)
        return images, WBC_TRAIN_IMAGES
    train = [it for it in make_split(pbc, WBC, drop_conflicts=True) if it.split == "train"]
    full = len(train)
    if limit and limit < full:
        pick = np.sort(np.random.default_rng(1).permutation(full)[:limit])
        train = [train[i] for i in pick]
    records = [ImageRecord(pbc / it.relpath, pbc, it.label) for it in train]
    return ImageSet(
        records, np.array([WBC.index(r.label) for r in records]), WBC, f"PBC white cells, train split ({pbc})"
    ), full


def decode_once(images: ImageSet, size: int, work: Path) -> tuple[ImageCache, float]:
    """leanmae's decode-once cache of ``images`` at working size ``size``, and the seconds building it
    took."""
    started = time.perf_counter()
    cache = load_or_build(
        images.records, DecodeSpec(size=size), cache_dir=work / "cache", workers=2, progress=False
    )
    return cache, time.perf_counter() - started


# --------------------------------------------------------------------------- leanmae's path


def engine_optimizer(
    model: nn.Module,
    optim: OptimConfig,
    layer_scale: Callable[[str], float] | None,
    device: torch.device,
    variant: str = "engine",
) -> torch.optim.Optimizer:
    """AdamW as ``engine.fit`` builds it (``variant="engine"``), or with ``variant`` "for-loop" /
    "foreach" / "fused" for the ablation; lr already scaled per group as ``engine.fit`` does."""
    flags = {
        "engine": {},
        "for-loop": {"foreach": False},
        "foreach": {"foreach": True},
        "fused": {"fused": True},
    }[variant]
    optimizer = build_optimizer(model, optim, absolute_lr(optim, 1), device, layer_scale, **flags)
    for group in optimizer.param_groups:
        group["lr"] = group["lr"] * group["lr_scale"]
    return optimizer


def endless(task: Task) -> Iterator[tuple[np.ndarray, int]]:
    """(batch, epoch) of ``task``, epoch after epoch."""
    epoch = 0
    while True:
        for batch in task.batches(epoch):
            yield batch, epoch
        epoch += 1


COMPILE_WARMUP = 3  # untimed steps of a compiled path: the first compiles, a second may recompile


class LeanmaePath:
    """leanmae's training step: the model from its builders, the Task its commands build, and the engine's
    own ``TrainStep`` fed by its ``Inputs`` (the next batch prepared on a background thread where
    ``engine.prefetching`` says so: by default on CUDA only), exactly as ``engine.fit`` runs them."""

    def __init__(
        self,
        task: str,
        cfg: PretrainConfig | FinetuneConfig,
        images: ImageSet,
        cache: ImageCache,
        batch: int,
        device: str = "cpu",
        threads: int | None = None,
        attention: str | None = None,
        rank: int = 0,
        world_size: int = 1,
        name: str = "leanmae",
    ) -> None:
        self.device = torch.device(device)
        self.name, self.batch, self.prefetch = name, batch, prefetching(cfg.run, self.device)
        self.compiled = cfg.run.compile
        self.warmup = COMPILE_WARMUP if self.compiled else 0  # at least this many untimed steps
        self.threads = threads or cpu_threads()  # what ``setup`` gives a lone run
        ctx = Context(device=self.device, rank=rank, world_size=world_size)
        torch.manual_seed(cfg.run.seed)
        train = np.arange(len(cache))
        if task == "pretrain":
            self.model = build_mae(cfg.model).to(self.device)
            mean, std = list(IMAGENET_MEAN), list(IMAGENET_STD)
            val_pixels = eval_pixels(
                cache, train[:1], cfg.model.image_size, mean, std, ctx.device
            )  # never validated here
            self.task = pretrain_task(cfg, self.model, cache, train, val_pixels, mean, std, ctx, batch)
            self.layer_scale = None
        else:
            self.model = build_classifier(cfg.model, images.names, cfg.classifier.pooling).to(self.device)
            add_drop_path(self.model, cfg.classifier.drop_path)
            y = images.labels[cache.sources]
            val = train[: min(64, len(train))]
            data = LabelledData(
                root=Path("."),
                items=[],
                labels=images.names,
                cache=cache,
                y=y,
                index={"train": train, "val": val, "test": val},
                spec=DecodeSpec(size=cache.images.shape[1]),  # the working size it was decoded at
            )
            counts = np.bincount(y, minlength=len(images.names)).clip(min=1)
            class_weight = torch.tensor(
                len(train) / (len(images.names) * counts), dtype=torch.float32, device=self.device
            )
            _, self.task = finetune_task(
                self.model,
                data,
                cfg=cfg,
                mean=list(IMAGENET_MEAN),
                std=list(IMAGENET_STD),
                ctx=ctx,
                batch_size=batch,
                passes_per_epoch=1,
                sample_weight=None,
                class_weight=class_weight,
            )
            self.layer_scale = layer_decay_scale(self.model, cfg.classifier.layer_decay)
        if attention:
            self.model.set_attn_implementation(attention)
        self.model.train()
        self.cfg = cfg
        self.optimizer = engine_optimizer(self.model, cfg.optim, self.layer_scale, self.device)
        self.train_step = TrainStep(
            self.model,
            self.optimizer,
            cfg.optim,
            autocast_dtype(cfg.run.amp, self.device),
            ctx,
            compile_model=cfg.run.compile,
        )
        self.lr = absolute_lr(cfg.optim, world_size)
        self._items = endless(self.task)
        self.inputs = self._inputs()

    def _inputs(self) -> Inputs:
        prepare = self.task.prepare  # not a method of self: the thread must not keep this path alive
        return Inputs(lambda item: prepare(*item), self._items, self.device, ahead=self.prefetch)

    def enter(self) -> None:
        """Process-wide settings as ``training.distributed.setup`` makes them, and no batch prepared yet:
        a timed repetition starts as an epoch does, instead of with a batch prepared while another path was
        timed."""
        self.inputs.close()
        self.inputs = self._inputs()
        if self.device.type == "cpu":
            use_threads(self.threads)
        else:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True

    def step(self) -> float:
        """One optimizer step of ``engine.TrainStep`` (accum_steps 1); returns the seconds it waited for its
        inputs,
        as ``engine.fit`` counts ``data_seconds`` (host time; with prefetching the batch is usually ready)."""
        waited = self.inputs.waited
        self.train_step(self.task.loss, self.inputs, 1, self.lr)
        return self.inputs.waited - waited


# --------------------------------------------------------------------------- the reference path


class PilTrainTransform:
    """torchvision's RandomResizedCrop(bicubic) + RandomHorizontalFlip + ToTensor + Normalize, one PIL image
    at a time."""

    def __init__(
        self,
        size: int,
        scale: tuple[float, float],
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        seed: int = 0,
    ) -> None:
        self.size, self.scale, self.ratio = size, scale, ratio
        self.mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
        self.rng = random.Random(seed)

    def crop_box(self, width: int, height: int) -> tuple[int, int, int, int]:
        """torchvision's RandomResizedCrop.get_params: ten tries at a random area and aspect, else a centre
        crop."""
        area, log_ratio = width * height, (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * self.rng.uniform(*self.scale)
            aspect = math.exp(self.rng.uniform(*log_ratio))
            w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
            if 0 < w <= width and 0 < h <= height:
                left, top = self.rng.randint(0, width - w), self.rng.randint(0, height - h)
                return left, top, left + w, top + h
        w, h = width, height
        if width / height < self.ratio[0]:
            h = round(w / self.ratio[0])
        elif width / height > self.ratio[1]:
            w = round(h * self.ratio[1])
        left, top = (width - w) // 2, (height - h) // 2
        return left, top, left + w, top + h

    def __call__(self, image: Image.Image) -> torch.Tensor:
        image = image.convert("RGB")
        image = image.crop(self.crop_box(*image.size)).resize(
            (self.size, self.size), Image.Resampling.BICUBIC
        )
        if self.rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        tensor = (
            torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).contiguous().float().div(255)
        )
        return tensor.sub_(self.mean).div_(self.std)


class ImageFiles(torch.utils.data.Dataset):
    """Image files decoded on every access (every epoch), as a datasets/ImageFolder pipeline does."""

    def __init__(
        self, paths: list[Path], labels: np.ndarray, transform: Callable[[Image.Image], torch.Tensor]
    ) -> None:
        self.paths, self.labels, self.transform = paths, labels, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict[str, Any]:
        with Image.open(self.paths[i]) as image:
            return {"pixel_values": self.transform(image), "labels": int(self.labels[i])}


def reference_model(task: str, model: ModelConfig, labels: int, attention: str | None = None) -> nn.Module:
    """The same transformers architecture built from a plain config (transformers' default attention unless
    given)."""
    from transformers import ViTConfig, ViTForImageClassification, ViTMAEConfig, ViTMAEForPreTraining

    shape = {
        "image_size": model.image_size,
        "patch_size": model.patch_size,
        "hidden_size": model.hidden_size,
        "num_hidden_layers": model.depth,
        "num_attention_heads": model.heads,
        "intermediate_size": int(model.hidden_size * model.mlp_ratio),
    }
    extra = {"attn_implementation": attention} if attention else {}
    if task == "pretrain":
        return ViTMAEForPreTraining(
            ViTMAEConfig(
                **shape,
                decoder_hidden_size=model.decoder_hidden_size,
                decoder_num_hidden_layers=model.decoder_depth,
                decoder_num_attention_heads=model.decoder_heads,
                decoder_intermediate_size=int(model.decoder_hidden_size * model.mlp_ratio),
                mask_ratio=model.mask_ratio,
                norm_pix_loss=model.norm_pix_loss,
                **extra,
            )
        )
    return ViTForImageClassification(ViTConfig(**shape, num_labels=labels, **extra))


class ReferencePath:
    """A plain eager loop as transformers' example scripts train: files decoded per epoch, PIL transforms per
    image,
    DataLoader defaults (num_workers=0), default AdamW, default threads, fp32, clipping at 1.0."""

    def __init__(
        self,
        task: str,
        cfg: PretrainConfig | FinetuneConfig,
        images: ImageSet,
        batch: int,
        device: str = "cpu",
    ) -> None:
        self.name, self.task, self.batch, self.threads, self.prefetch = (
            "reference",
            task,
            batch,
            DEFAULT_THREADS,
            False,
        )
        self.device = torch.device(device)
        torch.manual_seed(0)
        self.model = reference_model(task, cfg.model, len(images.names)).to(self.device)
        self.model.train()
        transform = PilTrainTransform(cfg.model.image_size, cfg.augment.crop_scale)
        self.loader = torch.utils.data.DataLoader(
            ImageFiles([r.path for r in images.records], images.labels, transform),
            batch_size=batch,
            shuffle=True,
        )
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=absolute_lr(cfg.optim, 1))
        self._batches = self._cycle()

    def _cycle(self) -> Iterator[dict[str, torch.Tensor]]:
        while True:
            yield from self.loader

    def enter(self) -> None:
        """torch's defaults: all cores' threads, no TF32 matmuls."""
        if self.device.type == "cpu":
            use_threads(self.threads)
        else:
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = True

    def step(self) -> float:
        """Next batch from the DataLoader, forward, backward, clip, step; returns the seconds spent waiting
        for the batch."""
        t0 = time.perf_counter()
        batch = {k: v.to(self.device) for k, v in next(self._batches).items()}
        if self.task == "pretrain":
            del batch["labels"]
        sync(self.device)
        data = time.perf_counter() - t0
        loss = self.model(**batch).loss
        loss.backward()
        nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        loss.item()
        return data


# --------------------------------------------------------------------------- measuring


def cpu_snapshot() -> tuple[float, float, float]:
    """(wall clock, busy CPU seconds of the whole machine, CPU seconds of this process) now.

    Busy = user + nice + system + irq + softirq + steal from /proc/stat (steal: time the hypervisor
    gave to other machines). NaN where /proc/stat is missing.
    """
    busy = float("nan")
    try:
        with open("/proc/stat") as f:
            user, nice, system, idle, iowait, irq, softirq, steal = (
                int(v) for v in f.readline().split()[1:9]
            )
        busy = (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        pass
    return time.perf_counter(), busy, time.process_time()


def others_cores(
    before: tuple[float, float, float], after: tuple[float, float, float], own_extra: float = 0.0
) -> float:
    """How many cores other processes kept busy between two snapshots (``own_extra``: CPU seconds of our own
    child processes)."""
    wall = after[0] - before[0]
    return max(0.0, (after[1] - before[1]) - (after[2] - before[2]) - own_extra) / wall


def _rss_bytes() -> int | None:
    """Resident memory of this process (Linux /proc), or None elsewhere."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None


def _trim_heap() -> None:
    """Hand freed heap back to the OS (glibc), so that a path's RSS peak is not the other path's leftovers."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class MemoryProbe:
    """Peak memory while a block runs: process RSS sampled every 10 ms on CPUs, the CUDA allocator's peak on
    GPUs.

    ``extra_mib`` is the peak above what was resident when the block started (activations, gradients,
    data in flight); ``peak_mib`` is the absolute peak of the process. The sampling thread slowed a
    1-thread training step by about 25 % here, so memory is measured on a separate, untimed step.
    """

    def __init__(self, device: torch.device) -> None:
        self.device, self.peak_mib, self.extra_mib = device, float("nan"), float("nan")

    def __enter__(self) -> MemoryProbe:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
            return self
        _trim_heap()
        self._base = self._peak = _rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            now = _rss_bytes()
            if now is not None and self._peak is not None:
                self._peak = max(self._peak, now)

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated()
            self.peak_mib, self.extra_mib = peak / 2**20, (peak - self._base) / 2**20
            return
        self._stop.set()
        self._thread.join()
        if self._base is not None:
            self.peak_mib, self.extra_mib = self._peak / 2**20, (self._peak - self._base) / 2**20


@dataclass
class PathResult:
    """One path's timed repetitions of one case."""

    images_per_s: list[float]
    data_share: list[float]
    others_cores: list[float]  # cores kept busy by other processes during each repetition
    warmup_seconds: float = 0.0  # the untimed warm-up steps (with torch.compile: mostly compiling)

    @property
    def median(self) -> float:
        return statistics.median(self.images_per_s)


class Variant:
    """A path run under another name and thread count (the same model and optimizer: throughput only)."""

    def __init__(self, path: LeanmaePath | ReferencePath, name: str, threads: int) -> None:
        self.path, self.name, self.threads = path, name, threads
        self.device, self.batch, self.prefetch = path.device, path.batch, path.prefetch

    def enter(self) -> None:
        self.path.enter()
        use_threads(self.threads)

    def step(self) -> float:
        return self.path.step()


def matmul_gflops(threads: int, n: int = 2048, count: int = 2) -> float:
    """fp32 GFLOP/s of ``count`` n x n x n matmuls (after one untimed) at ``threads`` torch threads."""
    use_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    started = time.perf_counter()
    for _ in range(count):
        a @ b
    return count * 2 * n**3 / (time.perf_counter() - started) / 1e9


def matmul_peak(threads: list[int], reps: int = 4) -> dict[int, float]:
    """Best fp32 matmul GFLOP/s at each thread count over ``reps`` interleaved tries (the least-disturbed
    one)."""
    best = {t: 0.0 for t in threads}
    for rep in range(reps):
        for t in threads if rep % 2 == 0 else threads[::-1]:
            best[t] = max(best[t], matmul_gflops(t))
    return best


def interleaved(
    paths: list[Any], steps: int, reps: int, warmup: int, peak_threads: tuple[int, ...] = ()
) -> tuple[dict[str, PathResult], dict[int, list[float]]]:
    """Time every path ``reps`` times for ``steps`` steps each, alternating the order (ABBA...) to share out
    drifting load.

    With ``peak_threads`` each repetition also times a large matmul at those thread counts, so that
    "share of peak" compares numbers taken under the same load; returns those GFLOP/s too.
    Nothing else runs during a timed block (a memory-sampling thread cost 25 % here: see MemoryProbe).
    """
    device = paths[0].device
    warmed: dict[str, float] = {}
    for path in paths:
        path.enter()
        sync(device)
        started = time.perf_counter()
        for _ in range(max(warmup, getattr(path, "warmup", 0))):
            path.step()
        sync(device)
        warmed[path.name] = time.perf_counter() - started
    runs: dict[str, list[tuple[float, float, float]]] = {p.name: [] for p in paths}
    peaks: dict[int, list[float]] = {t: [] for t in peak_threads}
    for rep in range(reps):
        for path in paths if rep % 2 == 0 else paths[::-1]:
            path.enter()
            sync(device)
            before = cpu_snapshot()
            data = sum(path.step() for _ in range(steps))
            sync(device)
            after = cpu_snapshot()
            seconds = after[0] - before[0]
            runs[path.name].append(
                (path.batch * steps / seconds, data / seconds, others_cores(before, after))
            )
        for t in peak_threads:
            peaks[t].append(matmul_gflops(t))
    results = {
        name: PathResult(*(list(column) for column in zip(*rs, strict=True)), warmup_seconds=warmed[name])
        for name, rs in runs.items()
    }
    return results, peaks


def step_memory(path: LeanmaePath | ReferencePath) -> MemoryProbe:
    """Memory of one extra, untimed step of ``path`` (1 thread on CPUs; memory hardly depends on the thread
    count)."""
    path.enter()
    if path.device.type == "cpu":
        use_threads(1)
    with MemoryProbe(path.device) as memory:
        path.step()
    return memory


def pair_ratio(a: PathResult, b: PathResult) -> float:
    """Median over repetition pairs of a's images/s over b's (each pair ran back to back)."""
    return statistics.median(x / y for x, y in zip(a.images_per_s, b.images_per_s, strict=True))


def gpu_bf16_peak(n: int = 8192, iters: int = 20) -> float:
    """Best bf16 TFLOP/s of n x n x n matmuls on the current GPU."""
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    best = 0.0
    for _ in range(3):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            a @ b
        end.record()
        torch.cuda.synchronize()
        best = max(best, 2 * n**3 * iters / (start.elapsed_time(end) / 1e3) / 1e12)
    return best


def flops_per_image(task: str, model: ModelConfig, labels: int) -> float:
    """FLOPs of one training forward + backward per image, counted by FlopCounterMode on the meta device.

    Counted with eager attention: its matmuls are counted, while the CPU SDPA kernel is not; both do
    the same arithmetic. Elementwise work, normalisation and the optimizer are not counted.
    """
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        net = reference_model(task, model, labels, attention="eager")
        pixels = torch.randn(2, 3, model.image_size, model.image_size)
        with FlopCounterMode(display=False) as counter:
            kwargs = {"labels": torch.zeros(2, dtype=torch.long)} if task == "finetune" else {}
            net(pixel_values=pixels, **kwargs).loss.backward()
    return counter.get_total_flops() / 2


# --------------------------------------------------------------------------- the benchmark


def run_case(
    case: Case,
    images: ImageSet,
    work: Path,
    best_peak: dict[int, float] | None = None,
    device: str = "cpu",
    gpu_peak_tflops: float | None = None,
    without_prefetch: bool = False,
    with_compile: bool = False,
) -> dict[str, Any]:
    """Measure one case on both paths (on CPUs at the default thread count, and at 1 thread where asked; with
    ``without_prefetch`` also leanmae preparing each batch inline, with ``with_compile`` also leanmae with
    ``run.compile``, its compilation excluded from the timing as warm-up); returns (and prints) its JSON
    record, then one short JSON line per path (``variant_line``).

    Share of peak (CPU), two ways: over the matmul GFLOP/s measured at the path's thread count in the
    same repetitions (median; the load was the same), and over the best matmul GFLOP/s seen in the
    whole run (``best_peak``, updated here; the least-disturbed core). GPU: over the bf16 matmul peak.
    """
    cfg = leanmae_config(case.task, case.model, device)
    cache, _ = decode_once(images, cache_size(cfg), work)
    lean, reference = (
        LeanmaePath(case.task, cfg, images, cache, case.batch, device),
        ReferencePath(case.task, cfg, images, case.batch, device),
    )
    bases: list[Any] = [lean, reference]
    if without_prefetch:
        inline = replace(cfg, run=replace(cfg.run, prefetch=False))
        bases.append(
            LeanmaePath(case.task, inline, images, cache, case.batch, device, name="leanmae_no_prefetch")
        )
    if with_compile:
        compiled = replace(cfg, run=replace(cfg.run, compile=True))
        bases.append(
            LeanmaePath(case.task, compiled, images, cache, case.batch, device, name="leanmae_compiled")
        )
    one_thread = (
        [Variant(lean, "leanmae_1thread", 1), Variant(reference, "reference_1thread", 1)]
        if case.one_thread and device == "cpu"
        else []
    )
    paths = bases + one_thread
    thread_counts = tuple(sorted({p.threads for p in paths})) if device == "cpu" else ()
    results, samples = interleaved(paths, case.steps, case.reps, case.warmup, thread_counts)
    for t, values in samples.items():
        best_peak[t] = max([best_peak.get(t, 0.0), *values])  # type: ignore[index]
    memory = {p.name: step_memory(p) for p in bases}
    flops = flops_per_image(case.task, cfg.model, len(images.names))
    record: dict[str, Any] = {
        "case": case.name,
        "batch": case.batch,
        "steps_per_rep": case.steps,
        "reps": case.reps,
        "gflop_per_image": flops / 1e9,
    }
    for path in paths:
        r = results[path.name]
        achieved = flops * r.median / 1e9
        if device == "cpu":
            peak, peak_of = (
                statistics.median(samples[path.threads]),
                f"fp32 matmul at {path.threads} thread(s), same repetitions",
            )
            best = {
                "best_peak_gflop_per_s": best_peak[path.threads],
                "share_of_best_peak": achieved / best_peak[path.threads],
            }  # type: ignore[index]
        else:
            peak, peak_of, best = gpu_peak_tflops * 1e3, "bf16 matmul peak", {}
        mem = memory[getattr(path, "path", path).name]
        record[path.name] = {
            "images_per_s": r.median,
            "images_per_s_reps": r.images_per_s,
            "threads": path.threads if device == "cpu" else None,
            "prefetch": path.prefetch,
            "compile": getattr(getattr(path, "path", path), "compiled", False),
            "warmup_seconds": r.warmup_seconds,
            "gflop_per_s": achieved,
            "peak_gflop_per_s": peak,
            "share_of_peak": achieved / peak,
            "peak": peak_of,
            **best,
            "data_wait_share": statistics.median(r.data_share),
            "step_extra_mib": mem.extra_mib,
            "peak_mib": mem.peak_mib,
            "others_cores_reps": r.others_cores,
        }
    record["others_load_cores"] = statistics.median(c for r in results.values() for c in r.others_cores)
    record["ratio"] = pair_ratio(results["leanmae"], results["reference"])
    if one_thread:
        record["ratio_1thread"] = pair_ratio(results["leanmae_1thread"], results["reference_1thread"])
    if without_prefetch:
        record["prefetch_gain"] = pair_ratio(results["leanmae"], results["leanmae_no_prefetch"])
    if with_compile:
        record["compile_gain"] = pair_ratio(results["leanmae_compiled"], results["leanmae"])
    emit(record)
    for path in paths:
        emit(variant_line(record, path.name))
    del paths, bases, one_thread, lean, reference
    if with_compile:
        torch.compiler.reset()  # drop the compiled code and the models it holds on to
    gc.collect()
    return record


def variant_line(record: dict[str, Any], name: str) -> dict[str, Any]:
    """The figures of issue 18 for one path of a case, on one short JSON line: images/s, share of the
    peak (on GPUs the measured bf16 matmul peak) and the share of step time spent waiting for data."""
    path = record[name]
    return {
        "case": "variant",
        "of": record["case"],
        "batch": record["batch"],
        "variant": name,
        "compile": path["compile"],
        "prefetch": path["prefetch"],
        "images_per_s": path["images_per_s"],
        "share_of_peak": path["share_of_peak"],
        "peak": path["peak"],
        "data_wait_share": path["data_wait_share"],
        "warmup_seconds": path["warmup_seconds"],
    }


def engine_epoch(
    task: str, images: ImageSet, full_images: int, work: Path, device: str = "cpu"
) -> dict[str, Any]:
    """One epoch through ``engine.fit`` itself (cpu preset, batch from the preset), from the decode-once
    cache.

    Returns fit's own epoch seconds and data seconds; when ``images`` is a subset of ``full_images``
    the time is extrapolated by images trained (and the record says so).
    """
    cfg = leanmae_config(task, "cpu", device)
    cfg.optim = replace(cfg.optim, epochs=1)
    cache, decode_seconds = decode_once(images, cache_size(cfg), work)
    batch = min(cfg.optim.batch_size, len(cache))
    path = LeanmaePath(task, cfg, images, cache, batch, device)
    path.enter()
    path.inputs.close()  # fit prepares its own inputs
    steps = len(path.task.batches(0))
    ctx = Context(device=torch.device(device))
    out = work / f"epoch-{task}"
    shutil.rmtree(out, ignore_errors=True)
    before = cpu_snapshot()
    with contextlib.redirect_stdout(io.StringIO()):  # fit prints a line per epoch; keep stdout to JSON lines
        result = fit(
            path.model,
            path.task,
            replace(cfg.optim, batch_size=batch),
            cfg.run,
            ctx,
            out,
            steps,
            path.layer_scale,
        )
    others = others_cores(before, cpu_snapshot())
    row = result.history[0]
    trained = steps * batch
    full_trained = (full_images // batch) * batch
    record = {
        "case": f"epoch/{task}/cpu",
        "device": device,
        "images": len(cache),
        "batch": batch,
        "images_trained": trained,
        "seconds": row["seconds"],
        "data_seconds": row["data_seconds"],
        "images_per_s": trained / row["seconds"],
        "data_wait_share": row["data_seconds"] / row["seconds"],
        "decode_once_seconds": decode_seconds,
        "full_epoch_images": full_images,
        "extrapolated": len(cache) < full_images,
        "source": images.source,
        "full_epoch_seconds": row["seconds"] * full_trained / trained,
        "others_load_cores": others,
    }
    emit(record)
    return record


def gpu_driver() -> str | None:
    """The NVIDIA driver version as nvidia-smi reports it (None without nvidia-smi)."""
    try:
        found = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return found.stdout.strip().splitlines()[0] if found.returncode == 0 and found.stdout.strip() else None


def machine_record(peak: dict[int, float] | None, device: str) -> dict[str, Any]:
    """The first JSON line: processor, cores, load, versions, thread default, matmul rates."""
    info: dict[str, Any] = {
        "case": "machine",
        "device": device,
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "torch": torch.__version__,
        "default_threads": DEFAULT_THREADS,
        "leanmae_threads": cpu_threads(),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    try:
        info["cpu"] = next(
            line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    if peak:
        info["fp32_matmul_peak_gflops"] = {str(k): v for k, v in peak.items()}
    if device == "cuda":
        info |= {
            "gpu": torch.cuda.get_device_name(),
            "torch_cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
            "driver": gpu_driver(),
        }
    import transformers

    info["transformers"] = transformers.__version__
    return info


def table(records: list[dict[str, Any]]) -> str:
    """The short human-readable table printed after the JSON lines."""

    def share(path: dict[str, Any]) -> str:
        return f"{path['share_of_peak']:.0%}" + (
            f" / {path['share_of_best_peak']:.0%}" if "share_of_best_peak" in path else ""
        )

    def rate(r: dict[str, Any], name: str, ratio: str) -> str:
        return f"{r[name]['images_per_s']:.1f} ({r[ratio]:.2f}x)" if name in r else "-"

    header = [
        "case",
        "batch",
        "leanmae img/s",
        "reference img/s",
        "ratio",
        "leanmae / reference at 1 thread img/s (ratio)",
        "leanmae without prefetch img/s (prefetch gain)",
        "leanmae compiled img/s (compile gain)",
        "GFLOP/img",
        "leanmae GFLOP/s (% peak: same load / best)",
        "reference GFLOP/s (% peak: same load / best)",
        "data wait leanmae / ref.",
        "step memory MiB leanmae / ref.",
        "others' load (cores)",
    ]
    lines = [markdown_row(header), markdown_row(["---"] + ["---:"] * (len(header) - 1))]
    for r in records:
        if "ratio" not in r:
            continue
        lean, ref = r["leanmae"], r["reference"]
        one = (
            f"{r['leanmae_1thread']['images_per_s']:.1f} / {r['reference_1thread']['images_per_s']:.1f}"
            f" ({r['ratio_1thread']:.2f}x)"
            if "ratio_1thread" in r
            else "-"
        )
        cells = [
            r["case"],
            r["batch"],
            f"{lean['images_per_s']:.1f}",
            f"{ref['images_per_s']:.1f}",
            f"{r['ratio']:.2f}x",
            one,
            rate(r, "leanmae_no_prefetch", "prefetch_gain"),
            rate(r, "leanmae_compiled", "compile_gain"),
            f"{r['gflop_per_image']:.2f}",
            f"{lean['gflop_per_s']:.0f} ({share(lean)})",
            f"{ref['gflop_per_s']:.0f} ({share(ref)})",
            f"{lean['data_wait_share']:.1%} / {ref['data_wait_share']:.1%}",
            f"{lean['step_extra_mib']:.0f} / {ref['step_extra_mib']:.0f}",
            f"{r['others_load_cores']:.1f}",
        ]
        lines.append(markdown_row(cells))
    epochs = [r for r in records if r["case"].startswith("epoch/")]
    if epochs:
        header = [
            "engine.fit epoch",
            "images",
            "seconds",
            "img/s",
            "data wait",
            "full epoch (s)",
            "decode once (s)",
            "others' load (cores)",
        ]
        lines += ["", markdown_row(header), markdown_row(["---"] + ["---:"] * (len(header) - 1))]
        for r in epochs:
            full = f"{r['full_epoch_seconds']:.0f}" + (
                f" (extrapolated from {r['images']} to {r['full_epoch_images']})" if r["extrapolated"] else ""
            )
            cells = [
                r["case"],
                r["images"],
                f"{r['seconds']:.1f}",
                f"{r['images_per_s']:.1f}",
                f"{r['data_wait_share']:.1%}",
                full,
                f"{r['decode_once_seconds']:.1f}",
                f"{r['others_load_cores']:.1f}",
            ]
            lines.append(markdown_row(cells))
    return "\n".join(lines)


def markdown_row(cells: list[Any]) -> str:
    """One row of a markdown table."""
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def run_cpu(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    """The CPU benchmark: matmul peaks, every case, whole-epoch times."""
    peak = matmul_peak(sorted({1, cpu_threads(), DEFAULT_THREADS}), reps=4 if args.quick else 6)
    records = [machine_record(peak, "cpu")]
    emit(records[0])
    images = benchmark_images(256 if args.quick else 512, work, args.pbc)
    emit({"case": "data", "source": images.source, "images": len(images.records)})
    for case in cpu_cases(args.quick):
        if args.only and case.name not in args.only:
            continue
        records.append(
            run_case(
                case,
                images,
                work,
                peak,
                without_prefetch=args.without_prefetch,
                with_compile=args.with_compile,
            )
        )
    if not args.no_epoch:
        subset, full = wbc_train_split(args.pbc, 1000 if args.quick else None, work)
        for task in ("pretrain", "finetune"):
            records.append(engine_epoch(task, subset, full, work))
    records.append(
        {
            "case": "process",
            "best_fp32_matmul_gflops": {str(k): v for k, v in peak.items()},
            "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "load_average_end": os.getloadavg(),
        }
    )
    emit(records[-1])
    return records


def gpu_cases(args: argparse.Namespace) -> list[Case]:
    """The GPU plan: ViT-B/16 224 px MAE pretraining at each ``--gpu-batch``, and the cpu preset's MAE at its
    own batch size."""
    cpu_batch = leanmae_config("pretrain", "cpu").optim.batch_size
    return [
        *(
            Case("pretrain", "vit-b16", batch, steps=args.gpu_steps, reps=3, warmup=3)
            for batch in args.gpu_batch
        ),
        Case("pretrain", "cpu", min(cpu_batch, args.gpu_images), steps=args.gpu_steps, reps=3, warmup=3),
    ]


def run_gpu_plan(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    """The GPU plan (``gpu_cases``, then one whole epoch of the cpu preset's MAE through ``engine.fit``) on
    ``--device``:
    leanmae (bf16 autocast on CUDA) against the fp32 reference. On a CPU (``--plan gpu --device cpu``,
    with tiny sizes) it only checks that the plan runs end to end; share of peak is then of the fp32 matmul
    rate."""
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device is visible to torch")
    gpu_peak = gpu_bf16_peak() if device == "cuda" else None
    cpu_peak = {} if device == "cuda" else matmul_peak(sorted({1, cpu_threads(), DEFAULT_THREADS}), reps=2)
    records = [
        machine_record(cpu_peak or None, device) | ({"bf16_matmul_peak_tflops": gpu_peak} if gpu_peak else {})
    ]
    emit(records[0])
    images = benchmark_images(args.gpu_images, work, args.pbc)
    emit({"case": "data", "source": images.source, "images": len(images.records)})
    for case in gpu_cases(args):
        if args.only and case.name not in args.only:
            continue
        records.append(
            run_case(
                case,
                images,
                work,
                cpu_peak,
                device=device,
                gpu_peak_tflops=gpu_peak,
                without_prefetch=args.without_prefetch,
                with_compile=args.with_compile,
            )
        )
    if not args.no_epoch:
        subset, full = wbc_train_split(args.pbc, args.gpu_images, work)
        records.append(engine_epoch("pretrain", subset, full, work, device))
    return records


# --------------------------------------------------------------------------- profile (CPU)


def profile_step(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Where one leanmae training step of ``--profile TASK/MODEL`` spends its time (torch.profiler, CPU):
    self time per operator, grouped into matmuls, attention, norms, the optimizer, augmentation and the
    rest, over ``--profile-steps`` steps after two untimed ones."""
    task, model = args.profile.split("/")
    cfg = leanmae_config(task, model)
    batch = cfg.optim.batch_size
    images = benchmark_images(max(2 * batch, 128), work, args.pbc)
    cache, _ = decode_once(images, cache_size(cfg), work)
    path = LeanmaePath(task, cfg, images, cache, batch)
    path.enter()
    for _ in range(2):
        path.step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(args.profile_steps):
            path.step()
    groups = {
        "matmul (linear, bmm, addmm, mm)": ("addmm", "mm", "bmm", "linear", "matmul", "baddbmm"),
        "attention (softmax, sdpa)": ("softmax", "attention", "scaled_dot"),
        "layer norm": ("layer_norm",),
        "gelu": ("gelu",),
        "optimizer (adamw)": ("adam",),
        "augmentation (crop, colour, resize)": ("grid_sampler", "upsample", "interpolate", "conv2d", "clamp"),
    }
    totals: dict[str, float] = dict.fromkeys([*groups, "other"], 0.0)
    top = []
    for event in prof.key_averages():
        us = event.self_cpu_time_total
        name = event.key.lower()
        top.append((us, event.key))
        group = next((g for g, keys in groups.items() if any(k in name for k in keys)), "other")
        totals[group] += us
    total = sum(totals.values()) or 1.0
    record = {
        "case": f"profile/{args.profile}",
        "batch": batch,
        "steps": args.profile_steps,
        "threads": path.threads,
        "ms_per_step": total / 1000 / args.profile_steps,
        "share": {g: v / total for g, v in totals.items()},
        "top_ops_ms_per_step": {
            k: us / 1000 / args.profile_steps for us, k in sorted(top, reverse=True)[:12]
        },
    }
    emit(record)
    return record


# --------------------------------------------------------------------------- ablations (CPU)


def data_ablation(
    images: ImageSet, work: Path, reps: int, model: str = "cpu", batch: int = 128
) -> dict[str, Any]:
    """ms per batch of normalised, augmented training inputs of ``model`` made four ways, 1 thread,
    interleaved."""
    cfg = leanmae_config("pretrain", model)
    size, aug = cache_size(cfg), cfg.augment
    cache, _ = decode_once(images, size, work)
    index = np.arange(min(batch, len(cache)))
    paths = [images.records[i].path for i in index]
    pil = PilTrainTransform(cfg.model.image_size, aug.crop_scale)
    loader = torch.utils.data.DataLoader(ImageFiles(paths, images.labels[index], pil), batch_size=len(index))

    def batched(uint8: np.ndarray) -> torch.Tensor:
        draws = uniform(0, 0, index, AUGMENT_DRAWS, stream=AUGMENT_STREAM)
        return normalize(
            random_resized_crop(
                to_float(uint8),
                cfg.model.image_size,
                aug.crop_scale,
                aug.crop_ratio,
                aug.hflip,
                aug.vflip,
                draws,
            ),
            IMAGENET_MEAN,
            IMAGENET_STD,
        )

    ways: dict[str, Callable[[], torch.Tensor]] = {
        "cache + batched tensor augmentation (leanmae)": lambda: batched(gather(cache.images, index)),
        "decode files every epoch + batched tensor augmentation": lambda: batched(
            np.stack([square_resize(decode_rgb(p), size) for p in paths])
        ),
        "cache + per-image PIL augmentation": lambda: torch.stack(
            [pil(Image.fromarray(row)) for row in gather(cache.images, index)]
        ),
        "decode files every epoch + per-image PIL augmentation (reference DataLoader)": lambda: next(
            iter(loader)
        )["pixel_values"],
    }
    use_threads(1)
    times: dict[str, list[float]] = {k: [] for k in ways}
    for rep in range(reps):
        for name in ways if rep % 2 == 0 else list(ways)[::-1]:
            started = time.perf_counter()
            ways[name]()
            times[name].append(time.perf_counter() - started)
    return {
        "ablation": "data",
        "case": f"{model} ({cfg.model.image_size} px from a {size} px cache)",
        "batch": len(index),
        "source": images.source,
        "ms_per_batch": {k: 1e3 * statistics.median(v) for k, v in times.items()},
    }


def threads_ablation(images: ImageSet, work: Path, quick: bool) -> list[dict[str, Any]]:
    """leanmae's step in one process with 1 torch thread against DEFAULT_THREADS: the cpu preset and ViT-S/16.

    The answer depends on what else runs: each repetition records the cores other processes used.
    """
    out = []
    for task, model, batch, steps in (
        ("pretrain", "cpu", 128, 2),
        ("finetune", "cpu", 64, 2),
        ("finetune", "vit-s16", 8, 1),
    ):
        cfg = leanmae_config(task, model)
        cache, _ = decode_once(images, cache_size(cfg), work)
        path = LeanmaePath(task, cfg, images, cache, batch)
        variants = [
            Variant(path, "1 thread", 1),
            Variant(path, f"{DEFAULT_THREADS} threads", DEFAULT_THREADS),
        ]
        res, _ = interleaved(variants, steps if quick else 2 * steps, 4 if quick else 6, 1)
        out.append(
            {
                "ablation": "threads",
                "case": f"{task}/{model}",
                "batch": batch,
                "images_per_s": {k: v.median for k, v in res.items()},
                "ratio_1_over_n": pair_ratio(res["1 thread"], res[f"{DEFAULT_THREADS} threads"]),
                "reps": {
                    k: [
                        {"images_per_s": i, "others_cores": o}
                        for i, o in zip(v.images_per_s, v.others_cores, strict=True)
                    ]
                    for k, v in res.items()
                },
                "others_load_cores": statistics.median(o for v in res.values() for o in v.others_cores),
            }
        )
        del path, variants
        gc.collect()
    return out


def attention_ablation(images: ImageSet, work: Path, quick: bool) -> list[dict[str, Any]]:
    """The cpu preset's leanmae step with SDPA attention (leanmae's setting) against transformers' eager
    attention."""
    out = []
    for task, batch in (("pretrain", 128), ("finetune", 64)):
        cfg = leanmae_config(task, "cpu")
        cache, _ = decode_once(images, cache_size(cfg), work)
        variants = [
            LeanmaePath(task, cfg, images, cache, batch, name="sdpa"),
            LeanmaePath(task, cfg, images, cache, batch, attention="eager", name="eager"),
        ]
        res, _ = interleaved(variants, 2 if quick else 4, 4 if quick else 6, 1)
        out.append(
            {
                "ablation": "attention",
                "case": f"{task}/cpu",
                "images_per_s": {k: v.median for k, v in res.items()},
                "ratio_sdpa_over_eager": pair_ratio(res["sdpa"], res["eager"]),
                "others_load_cores": statistics.median(o for v in res.values() for o in v.others_cores),
            }
        )
    return out


def adamw_ablation(reps: int) -> list[dict[str, Any]]:
    """ms per AdamW step (param groups as the engine makes them, 1 thread): for-loop (torch's CPU default),
    foreach, fused (leanmae)."""
    out = []
    use_threads(1)
    for model in ("cpu", "vit-b16"):
        cfg = leanmae_config("pretrain", model)
        net = build_mae(cfg.model)
        for p in net.parameters():
            p.grad = torch.randn_like(p) * 1e-3
        optimizers = {
            v: engine_optimizer(net, cfg.optim, None, torch.device("cpu"), v)
            for v in ("for-loop", "foreach", "fused")
        }
        times: dict[str, list[float]] = {v: [] for v in optimizers}
        for opt in optimizers.values():
            opt.step()
        for rep in range(reps):
            for name in optimizers if rep % 2 == 0 else list(optimizers)[::-1]:
                started = time.perf_counter()
                optimizers[name].step()
                times[name].append(time.perf_counter() - started)
        params = sum(p.numel() for p in net.parameters())
        out.append(
            {
                "ablation": "adamw",
                "case": f"pretrain/{model}",
                "parameters": params,
                "ms_per_step": {k: 1e3 * statistics.median(v) for k, v in times.items()},
            }
        )
        del net, optimizers
        gc.collect()
    return out


def _ddp_worker(
    rank: int,
    world: int,
    rendezvous: str,
    images: ImageSet,
    work: str,
    batch: int,
    steps: int,
    reps: int,
    queue: Any,
) -> None:
    """One of two 1-thread DDP (gloo) processes running the cpu preset's leanmae MAE step; reports its rates
    and CPU use."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    cfg = leanmae_config("pretrain", "cpu")
    cache, _ = decode_once(images, cache_size(cfg), Path(work))
    path = LeanmaePath("pretrain", cfg, images, cache, batch, threads=1, rank=rank, world_size=world)
    path.step()
    rates = []
    dist.barrier()
    before = cpu_snapshot()
    for _ in range(reps):
        dist.barrier()
        started = time.perf_counter()
        for _ in range(steps):
            path.step()
        dist.barrier()
        rates.append(world * batch * steps / (time.perf_counter() - started))
    queue.put((rank, rates, before, cpu_snapshot()))
    dist.destroy_process_group()


def processes_ablation(images: ImageSet, work: Path, quick: bool) -> dict[str, Any]:
    """cpu-preset MAE, effective batch 128: one 1-thread process; one 2-thread process; two 1-thread DDP
    processes (batch 64 each).

    Single-process runs are measured before and after the two-process run (which starts fresh processes).
    """
    import torch.multiprocessing as mp

    steps, reps = (2, 3) if quick else (4, 4)
    cfg = leanmae_config("pretrain", "cpu")
    cache, _ = decode_once(images, cache_size(cfg), work)
    path = LeanmaePath("pretrain", cfg, images, cache, 128)
    variants = [
        Variant(path, "one process, 1 thread", 1),
        Variant(path, f"one process, {DEFAULT_THREADS} threads", DEFAULT_THREADS),
    ]
    before, _ = interleaved(variants, steps, reps, 1)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    rendezvous = work / f"rendezvous-{time.time_ns()}"
    workers = [
        ctx.Process(
            target=_ddp_worker, args=(r, 2, str(rendezvous), images, str(work), 64, steps, reps, queue)
        )
        for r in range(2)
    ]
    for w in workers:
        w.start()
    reports = sorted(queue.get(timeout=900) for _ in workers)
    for w in workers:
        w.join()
    after, _ = interleaved(variants, steps, reps, 0)
    (_, two, start0, end0), (_, _, start1, end1) = reports
    wall = end0[0] - start0[0]
    two_others = max(0.0, (end0[1] - start0[1]) - (end0[2] - start0[2]) - (end1[2] - start1[2])) / wall
    single = {
        v.name: statistics.median(before[v.name].images_per_s + after[v.name].images_per_s) for v in variants
    }
    others = {
        v.name: statistics.median(before[v.name].others_cores + after[v.name].others_cores) for v in variants
    }
    name = "two DDP processes, 1 thread each (aggregate)"
    return {
        "ablation": "processes",
        "case": "pretrain/cpu",
        "effective_batch": 128,
        "images_per_s": single | {name: statistics.median(two)},
        "two_process_reps": two,
        "others_load_cores": others | {name: two_others},
    }


ABLATIONS = ("data", "threads", "attention", "adamw", "processes")


def run_ablations(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    """The ablations named in ``--ablate`` (all without names), each printed as soon as it is measured."""
    records = [machine_record(None, "cpu")]
    emit(records[0])
    images = benchmark_images(256, work, args.pbc)
    reps = 5 if args.quick else 9

    def keep(*found: dict[str, Any]) -> None:
        for record in found:
            emit(record)
            records.append(record)

    chosen = set(args.ablate) or set(ABLATIONS)
    if "data" in chosen:
        keep(data_ablation(images, work, reps))
        keep(data_ablation(images, work, reps, "vit-s16", 32))
    if "threads" in chosen:
        keep(*threads_ablation(images, work, args.quick))
    if "attention" in chosen:
        keep(*attention_ablation(images, work, args.quick))
    if "adamw" in chosen:
        keep(*adamw_ablation(reps))
    if "processes" in chosen:
        keep(processes_ablation(images, work, args.quick))
    return records


def ablation_table(records: list[dict[str, Any]]) -> str:
    """The ablations as one table: a row per variant (others' load: cores other processes used meanwhile)."""
    lines = [
        "| ablation | case | variant | value | others' load (cores) |",
        "| --- | --- | --- | ---: | ---: |",
    ]
    for r in records:
        if "ablation" not in r:
            continue
        values = r.get("ms_per_batch") or r.get("ms_per_step")
        unit = "ms" if values else "img/s"
        load = r.get("others_load_cores")
        for k, v in (values or r["images_per_s"]).items():
            others = load.get(k) if isinstance(load, dict) else load
            lines.append(
                markdown_row(
                    [
                        r["ablation"],
                        r.get("case", ""),
                        k,
                        f"{v:.1f} {unit}",
                        "" if others is None else f"{others:.1f}",
                    ]
                )
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Parse the options and run the CPU benchmark, the ablations or the GPU benchmark in a temporary
    folder."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="fewer, shorter repetitions, no ViT-B/16, a 1,000-image epoch extrapolated to the whole set "
        "(<= 5 min on 2 cores)",
    )
    parser.add_argument(
        "--ablate",
        nargs="*",
        choices=ABLATIONS,
        default=None,
        metavar="NAME",
        help="measure what each optimisation buys instead of the main table (CPU); "
        f"names: {', '.join(ABLATIONS)} (default: all)",
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--plan",
        choices=["cpu", "gpu"],
        default=None,
        help="which cases: the CPU plan or the GPU plan (ViT-B/16 and cpu-preset MAE, one cpu-preset epoch); "
        "default: the --device's own; "
        "'--plan gpu --device cpu' with tiny --gpu-* sizes checks the GPU plan end to end without a GPU",
    )
    parser.add_argument(
        "--only", nargs="*", default=None, help="case names to run, e.g. pretrain/cpu finetune/vit-s16"
    )
    parser.add_argument("--no-epoch", action="store_true", help="skip the whole-epoch timing")
    parser.add_argument(
        "--profile",
        metavar="TASK/MODEL",
        help="instead: where leanmae's training step spends its time (torch.profiler), e.g. finetune/cpu",
    )
    parser.add_argument("--profile-steps", type=int, default=10, help="profiled steps (default 10)")
    parser.add_argument(
        "--without-prefetch",
        action="store_true",
        help="also time leanmae with run.prefetch=false (each batch prepared inline), "
        "interleaved with the others",
    )
    parser.add_argument(
        "--with-compile",
        action="store_true",
        help="also time leanmae with run.compile=true "
        "(torch.compile; its warm-up steps, which compile, are not timed)",
    )
    parser.add_argument(
        "--jsonl",
        type=Path,
        default=None,
        help="also append every JSON line to this file (e.g. benchmarks/results/<device>-<date>.jsonl)",
    )
    parser.add_argument(
        "--pbc",
        type=Path,
        default=PBC,
        help="PBC folder (default ../shared/data/pbc; synthetic images when absent)",
    )
    parser.add_argument(
        "--gpu-batch",
        type=int,
        nargs="+",
        default=[128],
        help="GPU plan: ViT-B/16 batch sizes, one case each (default 128)",
    )
    parser.add_argument(
        "--gpu-steps", type=int, default=10, help="GPU plan: steps per timed repetition (default 10)"
    )
    parser.add_argument(
        "--gpu-images",
        type=int,
        default=512,
        help="GPU plan: images in the benchmark set and the epoch (default 512)",
    )
    args = parser.parse_args(argv)
    if not args.pbc.is_dir():
        args.pbc = None
    if args.jsonl:
        args.jsonl.parent.mkdir(parents=True, exist_ok=True)
        JSONL.append(args.jsonl)
    work = Path(tempfile.mkdtemp(prefix="leanmae-bench-"))
    started = time.perf_counter()
    try:
        if args.profile:
            record = profile_step(args, work)
            print(f"\n{record['case']}: {record['ms_per_step']:.0f} ms of operator self time per step")
            for group, share in sorted(record["share"].items(), key=lambda kv: -kv[1]):
                print(f"  {group:40s} {share:6.1%}")
        elif args.ablate is not None:
            records = run_ablations(args, work)
            print("\n" + ablation_table(records))
        elif (args.plan or ("gpu" if args.device == "cuda" else "cpu")) == "gpu":
            records = run_gpu_plan(args, work)
            print("\n" + table(records))
        else:
            records = run_cpu(args, work)
            print("\n" + table(records))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n(total {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
