"""``leanmae pretrain``: a ViT trained as a masked autoencoder on unlabelled images.

Data: one or more folders mixed into a pool, decoded once into the cache; about 5 % of the
source files (a fixed choice, the same for every seed) are held out for the validation loss and
the reconstructions. Output folder:

    run.json            resolved config, versions, seed, device, data hash, skipped files,
                        files without a tile, files left out as copies (probe_copies_left_out,
                        repeated_files_left_out), results
    history.csv         per epoch: train_loss, val_loss, lr, seconds, data_seconds
    tensorboard/        the same as TensorBoard events
    checkpoints/        the last complete epoch, for --resume
    model/              the final MAE (transformers save_pretrained + preprocessing)
    loss.png            loss curves
    reconstructions.png original | masked | reconstruction | reconstruction + visible, validation images
    recon_metrics.json  masked / visible MSE at the training mask ratio and at 0.25, 0.5, 0.75
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import ViTMAEForPreTraining

from leanmae.config import (
    PretrainConfig,
    absolute_lr,
    effective_batch,
    fit_accumulation,
    lr_rule,
    resolve,
    to_dict,
)
from leanmae.data.augment import (
    AUGMENT_DRAWS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    dataset_stats,
    normalize,
    random_resized_crop,
    resize,
    to_float,
)
from leanmae.data.batches import epoch_order, gather, split_batches
from leanmae.data.cache import DecodeSpec, ImageCache, build_cache_for, spec_extras, stain_spec, working_size
from leanmae.data.colour import augment_colour
from leanmae.data.decode import tile_boxes
from leanmae.data.fingerprint import check_resume, part, pool_images
from leanmae.data.pool import DistinctPool, collect, distinct_images, is_manifest
from leanmae.data.rand import AUGMENT_STREAM, uniform
from leanmae.data.sources import ImageRecord
from leanmae.data.split import read_manifest
from leanmae.errors import DataError
from leanmae.evaluation.probe import mae_features, representation_scores
from leanmae.evaluation.reconstruction import (
    reconstruction_metrics,
    reconstruction_panels,
)
from leanmae.files import write_json
from leanmae.models.card import write_card
from leanmae.models.foundation import foundation_model, is_foundation
from leanmae.models.io import load_preprocessing, save_model
from leanmae.models.mae import build_mae, mae_config, masking_noise
from leanmae.reporting.plots import loss_curve, reconstruction_grid
from leanmae.reporting.runinfo import TRAINING_OUTPUTS, guarded_output, prepare_output, write_run_info
from leanmae.tracking import finish_run
from leanmae.training.distributed import Context, setup
from leanmae.training.engine import Task, fit


def pretrain(
    data: str | list[str],
    out: str | Path,
    preset: str | None = "cpu",
    config: str | Path | None = None,
    epochs: int | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    skip_bad: bool = False,
    tile: int | None = None,
    grid: str | None = None,
    init: str | Path | None = None,
    seed: int | None = None,
    device: str | None = None,
    probe: str | Path | None = None,
    set: list[str] | tuple[str, ...] = (),
    progress: bool = True,
) -> dict[str, Any]:
    """Pretrain an MAE on the images under ``data`` and write the run to ``out``.

    Same options as ``leanmae pretrain``; ``set`` takes ``KEY=VALUE`` overrides of any config key
    (for example ``["optim.base_lr=1e-3", "model.mask_ratio=0.5"]``). Returns the run's summary.
    """
    flags = {
        "data": {
            "sources": [data] if isinstance(data, (str, Path)) else list(data),
            "tile": tile,
            "grid": grid,
            "skip_bad": skip_bad or None,
        },
        "optim": {"epochs": epochs, "base_lr": lr, "batch_size": batch_size},
        "run": {"seed": seed, "device": device, "progress": progress},
        "probe_split": str(probe) if probe else None,
    }
    flags["data"]["sources"] = [str(s) for s in flags["data"]["sources"]]
    cfg = resolve(PretrainConfig, "pretrain", preset, config, flags, set)
    with guarded_output(out):
        return run_pretrain(cfg, Path(out), resume=resume, overwrite=overwrite, init=init, preset=preset)


@dataclass
class Pool:
    """The decoded pool and its fixed train / validation division (by source file, so tiles of one slide stay
    together)."""

    cache: ImageCache
    train: np.ndarray
    val: np.ndarray


def pretraining_pool(cfg: PretrainConfig, say: bool = True) -> DistinctPool:
    """The pool's files, one per content, none a copy of an image that the probe split (or a manifest
    source) scores on: its val and test images.

    A study passes its split as ``probe``; with ``--pretrain-data`` the labelled folder itself, the MAE
    would otherwise pretrain on the very val and test images the study scores. Each kind left out is
    said in one line (with ``say``) and counted in run.json.
    """
    manifests = [s for s in cfg.data.sources if is_manifest(s)] + (
        [cfg.probe_split] if cfg.probe_split else []
    )
    scored = list(dict.fromkeys(manifests))  # a study's in-domain pool names its probe split as a source too
    pool = distinct_images(collect(cfg.data.sources), *scored)
    if say and pool.probe_copies:
        print(
            f"left out {len(pool.probe_copies)} files that are copies of val or test images of "
            f"{', '.join(map(str, scored))}, so that pretraining never sees an image the study scores on "
            f"(e.g. {pool.probe_copies[0]})"
        )
    if say and pool.repeats:
        print(
            f"left out {len(pool.repeats)} files whose bytes repeat another file of the pool (e.g. "
            f"{pool.repeats[0]})"
        )
    return pool


def split_pool(cache: ImageCache, val_fraction: float) -> Pool:
    """Hold out ``val_fraction`` of the source files with a fixed seed: the same slice for every run seed.

    Only files that gave cache entries count (a bad file skipped, or one too small for any tile,
    is not held out in place of a usable one), taken in one fixed order of all files, so the
    slice is the same as before whenever every file is usable. Validation never falls back to a
    training image: a pool of fewer than two usable files is an error.
    """
    usable = set(np.unique(cache.sources).tolist())
    if len(usable) < 2:
        raise DataError(
            f"pretraining needs at least two usable image files (one is held out for the validation loss), "
            f"found {len(usable)} of {len(cache.records)} ({len(cache.skipped)} bad, "
            f"{len(cache.untiled)} without a tile)"
        )
    n_val = min(len(usable) - 1, max(1, round(val_fraction * len(usable))))
    order = np.random.default_rng(20220511).permutation(len(cache.records))
    held_out = [f for f in order.tolist() if f in usable][:n_val]
    is_val = np.isin(cache.sources, held_out)
    return Pool(cache=cache, train=np.flatnonzero(~is_val), val=np.flatnonzero(is_val))


# What a pretraining run writes at its top level (the module docstring's list): --overwrite replaces these
# and nothing else.
OUTPUTS = (*TRAINING_OUTPUTS, "model", "loss.png", "reconstructions.png", "recon_metrics.json")

PROBE_KEYS = ("knn_accuracy", "knn_macro_f1", "probe_accuracy", "probe_macro_f1")


def probe_set(
    cfg: PretrainConfig, spec: DecodeSpec, mean: list[float], std: list[float], ctx: Context
) -> tuple[torch.Tensor, np.ndarray] | None:
    """The labelled validation images of ``cfg.probe_split`` (never its train or test images), decoded."""
    if not cfg.probe_split:
        return None
    root, items = read_manifest(cfg.probe_split)
    val = [it for it in items if it.split == "val"]
    labels = sorted({it.label for it in val})
    cache = build_cache_for(
        [ImageRecord(root / it.relpath, root, it.label) for it in val], spec, cfg.data, cfg.run.progress, ctx
    )
    y = np.array([labels.index(val[s].label) for s in cache.sources], dtype=np.int64)
    return eval_pixels(cache, np.arange(len(cache)), cfg.model.image_size, mean, std, ctx.device), y


def eval_pixels(
    cache: ImageCache,
    indices: np.ndarray,
    image_size: int,
    mean: list[float],
    std: list[float],
    device: torch.device,
) -> torch.Tensor:
    """The evaluation transform for a set of cache entries: resize whole image, normalise."""
    return normalize(resize(to_float(gather(cache.images, indices), device), image_size), mean, std)


def pretrain_task(
    cfg: PretrainConfig,
    model: ViTMAEForPreTraining,
    cache: ImageCache,
    train: np.ndarray,
    val_pixels: torch.Tensor,
    mean: list[float],
    std: list[float],
    ctx: Context,
    batch_size: int,
    probe: tuple[torch.Tensor, np.ndarray] | None = None,
) -> Task:
    """What the engine needs to pretrain ``model``: the epoch's batches of ``train`` entries, their
    augmentation and masks (keyed per image), the masked-patch loss, and the validation loss on
    ``val_pixels`` with the same masks every epoch so that losses compare across epochs.

    ``probe`` (labelled pixels, labels) adds kNN and linear-probe scores of the frozen encoder every
    ``cfg.probe_every`` epochs and after the last (NaN in between, so history.csv keeps one header)."""
    image_size, aug = cfg.model.image_size, cfg.augment

    def batches(epoch: int) -> list[np.ndarray]:
        return split_batches(
            epoch_order(train, epoch, cfg.run.seed, ctx.rank, ctx.world_size), batch_size, drop_last=True
        )

    def prepare(batch: np.ndarray, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        images = to_float(gather(cache.images, batch), ctx.device)
        draws = uniform(cfg.run.seed, epoch, batch, AUGMENT_DRAWS, stream=AUGMENT_STREAM)
        images = random_resized_crop(
            images, image_size, aug.crop_scale, aug.crop_ratio, aug.hflip, aug.vflip, draws, aug.crop_shift
        )
        images = augment_colour(images, aug, cfg.run.seed, epoch, batch)
        return normalize(images, mean, std), masking_noise(
            cfg.run.seed, epoch, batch, model.config, ctx.device
        )

    def loss(trained: torch.nn.Module, inputs: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        pixels, noise = inputs
        return trained(pixel_values=pixels, noise=noise).loss

    def validate(module: torch.nn.Module, epoch: int) -> dict[str, float]:
        total = 0.0
        for start in range(0, len(val_pixels), 256):
            chunk = val_pixels[start : start + 256]
            noise = masking_noise(0, 0, np.arange(start, start + len(chunk)), model.config, ctx.device)
            total += module(pixel_values=chunk, noise=noise).loss.item() * len(chunk)
        row = {"val_loss": total / len(val_pixels)}
        if probe is not None:
            due = epoch % max(1, cfg.probe_every) == 0 or epoch == cfg.optim.epochs
            scores = representation_scores(mae_features(module, probe[0]), probe[1]) if due else {}
            row.update({key: scores.get(key, float("nan")) for key in PROBE_KEYS})
        return row

    return Task(batches=batches, prepare=prepare, loss=loss, validate=validate)


def run_pretrain(
    cfg: PretrainConfig,
    out: Path,
    resume: bool = False,
    overwrite: bool = False,
    init: str | Path | None = None,
    preset: str | None = None,
) -> dict[str, Any]:
    tile_boxes(1, 1, cfg.data.tile, cfg.data.grid, 0)  # a bad --tile/--grid fails before anything is written
    encoder = init is not None and is_foundation(Path(init))
    if encoder:  # continued pretraining: the encoder's own shape and input size, as fine-tuning takes them
        cfg = replace(cfg, model=foundation_model(cfg.model, Path(init)))
    mae_config(cfg.model)  # a shape the MAE cannot take (registers) fails before anything is written too
    ctx = setup(cfg.run.device, cfg.run.threads)
    config_dict = to_dict(cfg)
    resumed = ctx.is_main and prepare_output(
        out,
        config_dict,
        resume,
        overwrite,
        inputs=[*cfg.data.sources, init, cfg.probe_split],
        outputs=OUTPUTS,
    )
    ctx.barrier()
    spec = DecodeSpec(
        size=working_size(cfg.model.image_size, cfg.data.cache_size),
        tile=cfg.data.tile,
        grid=cfg.data.grid,
        min_tile_size=cfg.data.min_tile_size,
        cell_crop=cfg.data.cell_crop,
        grey=cfg.data.grey,
    )
    distinct = pretraining_pool(cfg, say=ctx.is_main)
    records = distinct.records
    data_check = check_resume(out, {"images": pool_images(records)}, resumed) if ctx.is_main else {}
    spec = stain_spec(spec, cfg.data.stain_norm, records)
    pool = split_pool(build_cache_for(records, spec, cfg.data, cfg.run.progress, ctx), cfg.data.val_fraction)
    cache = pool.cache
    if ctx.is_main:
        held_out = sorted({str(records[s].path.resolve()) for s in cache.sources[pool.val]})
        data_check |= check_resume(out, {"validation files": part(held_out)}, resumed)
    if encoder:
        mean, std, _ = load_preprocessing(Path(init))  # the normalisation the encoder was trained with
    elif cfg.augment.normalize == "dataset":
        mean, std = dataset_stats(cache.images, pool.train)
    else:
        mean, std = list(IMAGENET_MEAN), list(IMAGENET_STD)

    torch.manual_seed(cfg.run.seed)
    model = build_mae(cfg.model, init).to(ctx.device)
    per_rank = max(1, len(pool.train) // ctx.world_size)
    batch_size = min(cfg.optim.batch_size, per_rank)
    # A batch (and an accumulation) capped by small data lowers the lr too.
    optim = fit_accumulation(replace(cfg.optim, batch_size=batch_size), per_rank // batch_size)
    lr = absolute_lr(optim, ctx.world_size)
    if ctx.is_main:
        print(
            f"pretraining on {len(pool.train)} images ({len(pool.val)} held out for validation), "
            f"{len(cache.skipped)} bad files skipped, {len(cache.untiled)} files without a tile; "
            f"device {ctx.device} x {ctx.world_size} process(es); effective batch "
            f"{effective_batch(optim, ctx.world_size)} -> {lr_rule(optim, ctx.world_size)}"
        )
        if cache.untiled:
            print(
                f"warning: {len(cache.untiled)} files gave no tile and are left out (run.json lists them "
                f"under files_without_tiles), e.g. {cache.untiled[0]}"
            )
        write_run_info(
            out,
            "pretrain",
            config_dict,
            preset=preset,
            seed=cfg.run.seed,
            device=str(ctx.device),
            world_size=ctx.world_size,
            data_hash=cache.key,
            data_check=data_check,
            images={"train": len(pool.train), "val": len(pool.val)},
            skipped_files=cache.skipped,
            files_without_tiles=cache.untiled,
            probe_copies_left_out=len(distinct.probe_copies),
            repeated_files_left_out=len(distinct.repeats),
            absolute_lr=lr,
            effective_batch=effective_batch(optim, ctx.world_size),
            init=str(init) if init else None,
            status="running",
        )

    val_pixels = eval_pixels(cache, pool.val[:1024], cfg.model.image_size, mean, std, ctx.device)
    probe = probe_set(cfg, spec, mean, std, ctx)
    task = pretrain_task(cfg, model, cache, pool.train, val_pixels, mean, std, ctx, batch_size, probe)
    steps_per_epoch = math.ceil(len(task.batches(0)) / optim.accum_steps)
    started = time.time()
    result = fit(model, task, optim, cfg.run, ctx, out, steps_per_epoch)

    summary: dict[str, Any] = {}
    if ctx.is_main:
        # the pool travels with the model folder, so a study of a copied MAE still says what it was built on
        pool_size = {"unlabelled_images": len(pool.train) + len(pool.val)}
        save_model(model, out / "model", mean, std, {"kind": "mae", **pool_size, **spec_extras(spec)})
        history = result.history
        loss_curve(history, out / "loss.png", f"MAE pretraining ({len(pool.train)} images)")
        recon = reconstruction_metrics(model, val_pixels)
        if probe is not None:
            recon["representation"] = {key: history[-1][key] for key in PROBE_KEYS}
        write_json(out / "recon_metrics.json", recon)
        if recon["warning"]:
            print(f"warning: {recon['warning']}")
        panels, note = reconstruction_panels(model, val_pixels[: cfg.recon_images], mean, std)
        reconstruction_grid(
            panels,
            out / "reconstructions.png",
            f"MAE reconstructions of held-out images, epoch {len(history)}{note}",
        )
        first, last = history[0]["val_loss"], history[-1]["val_loss"]
        summary = {
            "status": "finished",
            "epochs": len(history),
            "val_loss_first": first,
            "val_loss_last": last,
            "val_loss_drop": 1 - last / first if first else 0.0,
            "train_seconds": result.seconds,
            "wall_seconds": time.time() - started,
            "resumed_from_epoch": result.resumed_from,
            "reconstruction": recon["by_mask_ratio"],
        }
        write_run_info(out, "pretrain", config_dict, **summary)
        write_card(out / "model")
        finish_run(out, cfg.run.report_to, summary)
        print(
            f"done: val loss {first:.4f} -> {last:.4f} ({summary['val_loss_drop']:.0%} lower); model "
            f"in {out / 'model'}"
        )
    ctx.barrier()
    return summary
