"""``leanmae finetune``: a ViT classifier from scratch or from an MAE encoder, at a fraction of the labels.

The seed's method: the MAE's encoder with a new classifier head, the whole network fine-tuned
(``--linear-probe`` trains only the head on frozen features instead; ``classifier.lp_ft`` fits a
logistic-regression probe first and fine-tunes from it as the head). Training uses the train
split's images of one label fraction; the model is selected on the validation split (best
macro-F1, or the last epoch); the test split is scored once, at the end, and never used for a
choice. Output folder:

    run.json, history.csv, tensorboard/, checkpoints/   as in pretraining
    model/                  the selected classifier (transformers save_pretrained + preprocessing)
    metrics.json            test (and validation) accuracy, balanced accuracy, macro P/R/F1,
                            per class P/R/F1/support, confusion matrix, confidence statistics;
                            calibration before/after temperature scaling, refer-to-expert threshold
                            and its test coverage, out-of-distribution AUROC (with --ood)
    predictions.csv         test images: path, true, predicted, confidence, calibrated confidence,
                            refer, energy, ood, every class's probability
    training_curves.png, confusion_matrix.png, confidence.png, reliability.png, risk_coverage.png
"""

from __future__ import annotations

import csv
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from leanmae.config import (
    CHECKS,
    FinetuneConfig,
    absolute_lr,
    check_values,
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
    mix,
    normalize,
    random_resized_crop,
    resize,
    to_float,
)
from leanmae.data.batches import epoch_order, gather, split_batches
from leanmae.data.cache import DecodeSpec, working_size
from leanmae.data.colour import augment_colour
from leanmae.data.fingerprint import check_resume, manifest_parts, part
from leanmae.data.labelled import LabelledData, class_weights, labels_used, load_labelled
from leanmae.data.pool import collect
from leanmae.data.rand import AUGMENT_STREAM, uniform
from leanmae.data.sources import ImageRecord
from leanmae.data.split import counts, file_hash, read_manifest
from leanmae.errors import ConfigError, DataError
from leanmae.evaluation.calibration import refer_check, softmax
from leanmae.evaluation.final import final_evaluation, headline
from leanmae.evaluation.metrics import summary
from leanmae.evaluation.predict import cached_batches, predict_outputs, trained_classifier
from leanmae.evaluation.selection import Pick, margin_picks, random_picks, typiclust_picks
from leanmae.files import weights_sha256, write_atomic, write_json
from leanmae.models.card import write_card
from leanmae.models.classifier import (
    LeanViTClassifier,
    add_drop_path,
    build_classifier,
    layer_decay_scale,
    own_shape,
)
from leanmae.models.io import load_preprocessing, model_folder
from leanmae.models.linear_probe import ProbeHead, fold_probe_into
from leanmae.models.logistic_probe import LogisticProbe, fit_logistic_probe, set_probe_as_head
from leanmae.reporting.classifier_figures import write_test_figures
from leanmae.reporting.plots import training_curves
from leanmae.reporting.runinfo import (
    TRAINING_OUTPUTS,
    check_resumed_value,
    guarded_output,
    prepare_output,
    write_run_info,
)
from leanmae.safe_csv import csv_text, unescape
from leanmae.tracking import finish_run
from leanmae.training.checkpoint import save_weights
from leanmae.training.distributed import Context, setup
from leanmae.training.engine import Task, fit
from leanmae.training.fixmatch import fixmatch_loss, unlabelled_batches, weak_view


def finetune(
    split: str | Path,
    out: str | Path,
    fraction: float = 1.0,
    init: str | Path = "scratch",
    preset: str | None = "cpu",
    config: str | Path | None = None,
    epochs: int | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    seed: int | None = None,
    linear_probe: bool = False,
    pooling: str | None = None,
    ood: list[str] | None = None,
    data_root: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    skip_bad: bool = False,
    device: str | None = None,
    set: list[str] | tuple[str, ...] = (),
    progress: bool = True,
) -> dict[str, Any]:
    """Fine-tune a classifier on ``fraction`` of the train split of ``split``; returns metrics.json's content.

    ``init`` is ``"scratch"``, a pretraining run folder, an MAE model folder, or a local
    transformers ViT / ViT-MAE folder; ``ood`` names folders (``DIR[:classes]``) of images from
    classes the model never trains on, for the out-of-distribution report. Same options as
    ``leanmae finetune``.
    """
    flags = {
        "optim": {"epochs": epochs, "base_lr": lr, "batch_size": batch_size},
        "run": {"seed": seed, "device": device, "progress": progress},
        "data": {"skip_bad": skip_bad or None},
        "classifier": {
            "linear_probe": linear_probe or None,
            "pooling": pooling,
            "ood_data": list(ood) if ood else None,
        },
    }
    cfg = resolve(FinetuneConfig, "finetune", preset, config, flags, set)
    with guarded_output(out):
        return run_finetune(
            cfg,
            split_path=Path(split),
            out=Path(out),
            fraction=fraction,
            init=init,
            data_root=data_root,
            resume=resume,
            overwrite=overwrite,
            preset=preset,
        )


def check_ood(records: list[ImageRecord], split_path: Path, data_root: str | Path | None) -> None:
    """Refuse --ood images that are images of the split (by content): a class the model trains on, given as
    "unknown", would make the out-of-distribution AUROC measure nothing."""
    root, items = read_manifest(split_path, data_root)
    listed = {item.sha256 for item in items}
    shared = [r.path for r in records if file_hash(r.path) in listed]
    if shared:
        raise DataError(
            f"--ood: {len(shared)} of its {len(records)} images are images of the split, for example "
            f"{shared[0]}; out-of-distribution images must come from classes the model does not learn"
        )


LABELLED_FILE = "labelled.csv"

# What a fine-tuning run writes at its top level (the module docstring's list): --overwrite replaces these
# and nothing else. robustness.json is the study's scores of this run's model, stale once it is replaced.
OUTPUTS = (
    *TRAINING_OUTPUTS,
    "best.safetensors",
    "model",
    "metrics.json",
    "predictions.csv",
    LABELLED_FILE,
    "robustness.json",
    "training_curves.png",
    "confusion_matrix.png",
    "confidence.png",
    "reliability.png",
    "risk_coverage.png",
)


def run_finetune(
    cfg: FinetuneConfig,
    *,
    split_path: Path,
    out: Path,
    fraction: float,
    init: str | Path,
    data_root: str | Path | None,
    resume: bool,
    overwrite: bool,
    preset: str | None,
) -> dict[str, Any]:
    check_values(cfg, CHECKS)  # also for a config built in Python rather than resolved
    if cfg.classifier.lp_ft and cfg.classifier.linear_probe:
        raise ConfigError(
            "classifier.lp_ft (a linear probe, then full fine-tuning) contradicts classifier.linear_probe "
            "(the probe alone); set one of them"
        )
    if (cfg.classifier.selection == "margin") != bool(cfg.classifier.selection_from):
        raise ConfigError(
            "classifier.selection=margin and classifier.selection_from (the earlier round's run) go together"
        )
    if cfg.classifier.selection == "typiclust" and str(init) == "scratch":
        raise ConfigError(
            "classifier.selection=typiclust chooses with an encoder's features; give --init an MAE or a "
            "pretrained model (or use random)"
        )
    if (cfg.classifier.linear_probe or cfg.classifier.lp_ft) and str(init) == "scratch":
        raise ConfigError(
            "--linear-probe (and classifier.lp_ft) on a random encoder measures nothing; give --init an "
            "MAE or a pretrained model"
        )
    if cfg.classifier.ood_data:
        check_ood(collect(cfg.classifier.ood_data), split_path, data_root)  # now, not after training
    ctx = setup(cfg.run.device, cfg.run.threads)
    run_keys = {"fraction": fraction, "init": str(init), "split": str(split_path)}
    init_folder = None if str(init) == "scratch" else model_folder(init)
    shaped = None if init_folder is None else own_shape(cfg.model, init_folder)
    if shaped is not None:
        cfg = replace(cfg, model=shaped)
        print(
            f"{init_folder}: an encoder of its own shape (patch {cfg.model.patch_size}, width "
            f"{cfg.model.hidden_size}, {cfg.model.depth} blocks), fine-tuned at its input size "
            f"{cfg.model.image_size} px with its own normalisation"
        )
    resumed = ctx.is_main and prepare_output(
        out,
        {**to_dict(cfg), **run_keys},
        resume,
        overwrite,
        inputs=[split_path, init_folder, data_root],
        deferred=["optim.batch_size", "optim.accum_steps"],  # fitted to the data below, then checked
        outputs=OUTPUTS,
    )
    # What the run starts from, by content: a folder of the same name may hold other weights later.
    init_hash = None if init_folder is None else weights_sha256(init_folder)
    if resumed and init_hash is not None:
        check_resumed_value(out, "--init weights (sha256)", "init_sha256", init_hash)
    ctx.barrier()
    data_check: dict[str, Any] = {}
    opts, image_size = cfg.classifier, cfg.model.image_size
    data = load_labelled(
        split_path,
        data_root=data_root,
        fraction=fraction,
        seed=cfg.run.seed,
        spec=DecodeSpec(
            size=working_size(image_size, cfg.data.cache_size),
            cell_crop=cfg.data.cell_crop,
            grey=cfg.data.grey,
        ),
        cfg=cfg,
        ctx=ctx,
        before_decode=lambda items, drawn: data_check.update(
            check_resume(out, manifest_parts(items, drawn), resumed)
        ),
    )
    labels, train_idx = data.labels, data.index["train"]
    used = labels_used(data, opts.val)  # recorded in run.json at the start and in metrics.json at the end

    if init_folder is not None:
        mean, std, _ = load_preprocessing(init_folder)  # the MAE's own normalisation
    elif cfg.augment.normalize == "dataset":
        mean, std = dataset_stats(data.cache.images, train_idx)
    else:
        mean, std = list(IMAGENET_MEAN), list(IMAGENET_STD)

    torch.manual_seed(cfg.run.seed)
    model = build_classifier(cfg.model, labels, opts.pooling, init_folder).to(ctx.device)
    if opts.selection != "stratified":
        select_labels(data, model, mean, std, cfg)
        train_idx, used = data.index["train"], labels_used(data, opts.val)
        chosen = sorted(data.paths("train"))
        data_check |= (
            check_resume(out, {"selected train images": part(chosen)}, resumed) if ctx.is_main else {}
        )
    class_counts = np.bincount(data.y[train_idx], minlength=len(labels))
    weights = class_weights(class_counts, opts.balance)
    class_weight = None if weights is None else torch.tensor(weights, dtype=torch.float32, device=ctx.device)
    sample_weight = (1.0 / class_counts[data.y[train_idx]]) if opts.balance == "sampler" else None

    # Small fractions: a batch no larger than a quarter of the data, and enough passes per epoch
    # to reach ``min_steps`` optimizer steps; the lr follows the batch (optim.lr_scaling).
    per_rank = math.ceil(len(train_idx) / ctx.world_size)
    batch_size = max(1, min(cfg.optim.batch_size, per_rank // 4 or 1))
    optim = fit_accumulation(replace(cfg.optim, batch_size=batch_size), per_rank // batch_size or 1)
    steps_per_pass = math.ceil((per_rank // batch_size or 1) / optim.accum_steps)
    passes = max(1, math.ceil(opts.min_steps / (cfg.optim.epochs * steps_per_pass)))
    if resumed:
        check_resumed_value(out, "optim.batch_size", "batch_size", batch_size)
        check_resumed_value(out, "optim.accum_steps", "accum_steps", optim.accum_steps)
    # run.json records the config the run used: the fitted batch, not the one asked for.
    used_config = {**to_dict(replace(cfg, optim=optim)), **run_keys}

    task_options = {
        "cfg": cfg,
        "mean": mean,
        "std": std,
        "ctx": ctx,
        "batch_size": batch_size,
        "passes_per_epoch": passes,
        "sample_weight": sample_weight,
        "class_weight": class_weight,
    }
    if opts.linear_probe:
        trained, task = _linear_probe_task(model, data, **task_options)
        layer_scale = None
    else:
        add_drop_path(model, opts.drop_path)
        trained, task = finetune_task(model, data, **task_options)
        layer_scale = layer_decay_scale(model, opts.layer_decay) if opts.layer_decay < 1 else None

    if ctx.is_main:
        print(
            f"fine-tuning ({_mode(opts.linear_probe, opts.lp_ft)}) from {init}: "
            f"{len(train_idx)} training images ({fraction:g} of train, per class "
            f"{dict(zip(labels, class_counts.tolist(), strict=True))}), {len(data.index['val'])} val "
            f"({opts.val}), {len(data.index['test'])} test; "
            f"batch {batch_size} x {passes} pass(es)/epoch; {lr_rule(optim, ctx.world_size)}"
        )
        if rough := refer_check(len(data.index["val"]), opts.target_accuracy):
            print(f"warning: {rough}")
        write_run_info(
            out,
            "finetune",
            used_config,
            preset=preset,
            seed=cfg.run.seed,
            device=str(ctx.device),
            world_size=ctx.world_size,
            data_hash=data.cache.key,
            data_check=data_check,
            init_sha256=init_hash,
            skipped_files=data.cache.skipped,
            images={"train": len(train_idx), "val": len(data.index["val"]), "test": len(data.index["test"])},
            split_counts=counts(data.items),
            labels_used=used,
            batch_size=batch_size,
            accum_steps=optim.accum_steps,
            passes_per_epoch=passes,
            absolute_lr=absolute_lr(optim, ctx.world_size),
            status="running",
        )
        # Which images this run had labels for: what a lab labelled, and what a next round must not choose.
        rows = [[path, split] for split in ("train", "val") for path in data.paths(split)]
        write_atomic(out / LABELLED_FILE, csv_text(["path", "split"], rows))

    started = time.time()
    probe = (
        start_from_probe(model, data, cfg, mean, std, ctx, class_weight, sample_weight)
        if opts.lp_ft
        else None
    )
    task.on_best = lambda module: save_weights(module, out / "best.safetensors")
    steps_per_epoch = math.ceil(len(task.batches(0)) / optim.accum_steps)
    result = fit(trained, task, optim, cfg.run, ctx, out, steps_per_epoch, layer_scale)

    metrics: dict[str, Any] = {}
    if ctx.is_main:
        if opts.select != "last" and (out / "best.safetensors").exists():
            trained.load_state_dict(load_file(out / "best.safetensors", device=str(ctx.device)))
        if opts.linear_probe:
            fold_probe_into(model, trained)
        metrics, test_logits = final_evaluation(
            model,
            data,
            cfg=cfg,
            mean=mean,
            std=std,
            out=out,
            selected_epoch=result.best_epoch if opts.select != "last" else len(result.history),
        )
        write_test_figures(out, metrics, labels, data.y[data.index["test"]], test_logits)
        metrics.update(
            {
                "fraction": fraction,
                "init": str(init),
                "seed": cfg.run.seed,
                "linear_probe": opts.linear_probe,
                "lp_ft": opts.lp_ft,
                "lp_ft_probe": probe.train if probe else None,
                "train_images": int(len(train_idx)),
                "labels_used": used,
                "train_seconds": result.seconds,
                "wall_seconds": time.time() - started,
            }
        )
        write_json(out / "metrics.json", metrics)
        name = f"{'MAE' if init_folder else 'scratch'}, {fraction:g} of labels, seed {cfg.run.seed}"
        training_curves(result.history, out / "training_curves.png", f"fine-tuning ({name})")
        write_run_info(
            out,
            "finetune",
            used_config,
            status="finished",
            resumed_from_epoch=result.resumed_from,
            test=headline(metrics["test"]),
            wall_seconds=metrics["wall_seconds"],
        )
        write_card(out / "model")
        finish_run(out, cfg.run.report_to, metrics)
        t = metrics["test"]
        print(
            f"test: accuracy {t['accuracy']:.4f}, macro-F1 {t['macro_f1']:.4f} (model of epoch "
            f"{metrics['selected_epoch']}); results in {out}"
        )
    ctx.barrier()
    return metrics


def _mode(linear_probe: bool, lp_ft: bool) -> str:
    return "linear probe" if linear_probe else "linear probe, then full" if lp_ft else "full"


def start_from_probe(
    model: LeanViTClassifier,
    data: LabelledData,
    cfg: FinetuneConfig,
    mean: list[float],
    std: list[float],
    ctx: Context,
    class_weight: torch.Tensor | None,
    sample_weight: np.ndarray | None,
) -> LogisticProbe:
    """LP-FT's first stage (Kumar et al., ICLR 2022): make ``model``'s head a converged logistic-regression
    probe of the frozen encoder's features of the run's training images; returns the probe.

    Why: a random head's large early gradients distort the pretrained features before the head fits;
    a head that already fits them leaves the encoder to adapt gently. The features are ``--linear-probe``'s
    (``_features``: computed once in eval mode, without augmentation or drop path, the pooled and
    normalised output the head reads), so at step 0 of fine-tuning the classifier's logits are the
    probe's decision function. The probe's loss is weighted like the run's (``classifier.balance``: its
    class weights, or the sampler's inverse class frequencies); label smoothing and mixup are not
    applied to it. Only the run's training images are used: nothing is selected, so no validation
    labels are needed. The fit is deterministic: a resumed run refits the same probe, and the engine
    then loads the fine-tuning checkpoint over it. Under DDP every rank fits it on the same features,
    and rank 0's head wins anyway: DDP broadcasts rank 0's parameters when it wraps the model.
    """
    features = _features(model, data, "train", mean, std, cfg.classifier.eval_batch_size)
    y = data.y[data.index["train"]]
    weights = sample_weight if class_weight is None else class_weight.cpu().numpy()[y]
    probe = fit_logistic_probe(features.cpu().numpy(), y, weights)
    set_probe_as_head(model, probe)
    if ctx.is_main:
        print(f"LP-FT: logistic-regression probe on frozen features first: {probe.train}")
    return probe


def _targets(y: torch.Tensor, classes: int, smoothing: float) -> torch.Tensor:
    """Label-smoothed one-hot rows (soft targets, so that mixup/cutmix can mix them)."""
    return F.one_hot(y, classes).float() * (1 - smoothing) + smoothing / classes


def _val_metrics(logits: torch.Tensor, y: np.ndarray, labels: list[str]) -> dict[str, float]:
    loss = F.cross_entropy(logits.float(), torch.as_tensor(y, device=logits.device)).item()
    scores = summary(y, logits.argmax(1).cpu().numpy(), labels)
    return {"val_loss": loss, "val_accuracy": scores["accuracy"], "val_macro_f1": scores["macro_f1"]}


def _selected_metric(cfg: FinetuneConfig) -> str | None:
    """The validation metric that picks the model (``Task.select``); None keeps the last epoch."""
    return None if cfg.classifier.select == "last" else cfg.classifier.select


def select_labels(
    data: LabelledData, model: LeanViTClassifier, mean: list[float], std: list[float], cfg: FinetuneConfig
) -> None:
    """Replace the stratified draw's train images with as many chosen by ``classifier.selection`` among all
    train images, reading no label: the study's simulation of a lab choosing what to label (the chosen
    images' labels are revealed only afterwards). typiclust embeds with the init encoder."""
    candidates, budget = data.all_of("train"), len(data.index["train"])
    unlabelled = np.zeros(len(candidates), dtype=bool)
    batches = cached_batches(data.cache.images, candidates, cfg.classifier.eval_batch_size)
    if cfg.classifier.selection == "random":
        picks = random_picks(unlabelled, budget, cfg.run.seed)
    elif cfg.classifier.selection == "typiclust":
        features = predict_outputs(model, batches, cfg.model.image_size, mean, std)[1]
        picks = typiclust_picks(features, unlabelled, budget, cfg.run.seed)
    else:  # margin: the earlier round's labels kept, the rest chosen by its model's uncertainty
        earlier = Path(cfg.classifier.selection_from)
        kept = _labelled_train(earlier)
        labelled = np.array([data.items[s].relpath in kept for s in data.cache.sources[candidates]])
        if labelled.sum() >= budget:
            raise ConfigError(
                f"classifier.selection_from {earlier}: that round already labelled {int(labelled.sum())} "
                f"train images, at least this run's {budget}; a next round needs a larger fraction"
            )
        trained = trained_classifier(earlier, str(next(model.parameters()).device))
        logits = predict_outputs(
            trained.model, batches, trained.model.config.image_size, trained.mean, trained.std
        )[0]
        picks = [Pick(int(i), "") for i in np.flatnonzero(labelled)]
        picks += margin_picks(softmax(logits), labelled, budget - int(labelled.sum()), trained.labels)
    data.index["train"] = np.sort(candidates[[p.index for p in picks]])
    missing = [label for i, label in enumerate(data.labels) if i not in set(data.y[data.index["train"]])]
    if missing:
        print(f"warning: {cfg.classifier.selection} selection chose no image of {', '.join(missing)}")


def _labelled_train(run: Path) -> set[str]:
    """The train images an earlier fine-tuning run had labels for (its labelled.csv)."""
    listing = run / LABELLED_FILE
    if not listing.is_file():
        raise ConfigError(
            f"classifier.selection_from {run}: no {LABELLED_FILE}; give a finished fine-tuning run"
        )
    with open(listing, newline="", encoding="utf-8") as f:
        return {unescape(row["path"]) for row in csv.DictReader(f) if row["split"] == "train"}


class Step(NamedTuple):
    """One micro-batch: ``key``, the pass it belongs to, keys its augmentation (a repeated pass draws new
    crops and colours); its labelled images; and, with semi-supervised fine-tuning, its unlabelled ones."""

    key: int
    labelled: np.ndarray
    unlabelled: np.ndarray | None = None


def finetune_task(
    model: LeanViTClassifier,
    data: LabelledData,
    *,
    cfg: FinetuneConfig,
    mean: list[float],
    std: list[float],
    ctx: Context,
    batch_size: int,
    passes_per_epoch: int,
    sample_weight: np.ndarray | None,
    class_weight: torch.Tensor | None,
) -> tuple[nn.Module, Task]:
    """What the engine needs to fine-tune ``model`` on ``data``'s train split: ``passes_per_epoch``
    passes of batches per epoch (weighted by ``sample_weight`` if given), augmentation and mixup keyed
    per image and pass, the (class-weighted) cross-entropy (with ``classifier.semi``, FixMatch's loss on
    the train split's unlabelled images too) and the validation metrics. Public so that benchmarks time
    the very task ``run_finetune`` trains."""
    opts, aug, image_size = cfg.classifier, cfg.augment, cfg.model.image_size
    train_idx, classes, seed = data.index["train"], len(data.labels), cfg.run.seed
    pool = semi_pool(data) if opts.semi == "fixmatch" else None
    # The threshold is a share of the highest confidence the label-smoothed targets train towards (0.92 for
    # 5 classes at smoothing 0.1): 0.95 of 1 would pass almost no prediction of a smoothed model.
    threshold = opts.semi_threshold * (1 - opts.label_smoothing + opts.label_smoothing / classes)

    def batches(epoch: int) -> list[Step]:
        steps = []
        for p in range(passes_per_epoch):
            key = epoch * passes_per_epoch + p
            order = epoch_order(train_idx, key, seed, ctx.rank, ctx.world_size, sample_weight)
            labelled = split_batches(order, batch_size, drop_last=True)
            unlabelled: list[np.ndarray | None] = [None] * len(labelled)
            if pool is not None:
                size = opts.semi_ratio * batch_size
                unlabelled = list(
                    unlabelled_batches(pool, key, seed, ctx.rank, ctx.world_size, len(labelled), size)
                )
            steps += [Step(key, lab, unl) for lab, unl in zip(labelled, unlabelled, strict=True)]
        return steps

    def pixels(batch: np.ndarray) -> torch.Tensor:
        return to_float(gather(data.cache.images, batch), ctx.device)

    def augmented(images: torch.Tensor, batch: np.ndarray, key: int) -> torch.Tensor:
        draws = uniform(seed, key, batch, AUGMENT_DRAWS, stream=AUGMENT_STREAM)
        images = random_resized_crop(
            images, image_size, aug.crop_scale, aug.crop_ratio, aug.hflip, aug.vflip, draws, aug.crop_shift
        )
        return normalize(augment_colour(images, aug, seed, key, batch), mean, std)

    def prepare(step: Step, epoch: int) -> tuple[torch.Tensor, ...]:
        targets = _targets(
            torch.as_tensor(data.y[step.labelled], device=ctx.device), classes, opts.label_smoothing
        )
        rng = np.random.default_rng([seed, step.key, int(step.labelled[0])])
        images = augmented(pixels(step.labelled), step.labelled, step.key)
        labelled = mix(images, targets, opts.mixup, opts.cutmix, rng)
        if step.unlabelled is None:
            return labelled
        unlabelled = pixels(step.unlabelled)  # gathered once, for both views
        weak = normalize(weak_view(unlabelled, step.unlabelled, seed, step.key, image_size, aug), mean, std)
        return (*labelled, weak, augmented(unlabelled, step.unlabelled, step.key))

    def loss(trained: nn.Module, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        if len(inputs) == 4:
            return fixmatch_loss(trained, *inputs, threshold, opts.semi_weight, class_weight)
        pixels, targets = inputs
        return F.cross_entropy(trained(pixel_values=pixels).logits.float(), targets, weight=class_weight)

    def validate(module: nn.Module, epoch: int) -> dict[str, float]:
        idx = data.index["val"]
        logits = predict_outputs(
            module, cached_batches(data.cache.images, idx, opts.eval_batch_size), image_size, mean, std
        )[0]
        return _val_metrics(torch.as_tensor(logits), data.y[idx], data.labels)

    return model, Task(
        batches=batches,
        prepare=prepare,
        loss=loss,
        validate=validate,
        select=_selected_metric(cfg),
    )


def semi_pool(data: LabelledData) -> np.ndarray:
    """The train split's images without a label in this run: what semi-supervised fine-tuning learns from
    (never a validation or test image)."""
    pool = np.setdiff1d(data.all_of("train"), data.index["train"])
    if not len(pool):
        raise ConfigError(
            "classifier.semi: every train image is labelled at this fraction, so there is nothing unlabelled "
            "to learn from; use a fraction below 1 or classifier.semi=off"
        )
    return pool


@torch.inference_mode()
def _features(
    model: LeanViTClassifier,
    data: LabelledData,
    split: str,
    mean: list[float],
    std: list[float],
    batch_size: int,
) -> torch.Tensor:
    device = next(model.parameters()).device
    model.eval()
    chunks = [
        model.features(normalize(resize(to_float(b, device), model.config.image_size), mean, std))
        for b in cached_batches(data.cache.images, data.index[split], batch_size)
    ]
    return torch.cat(chunks).float()


def _linear_probe_task(
    model: LeanViTClassifier,
    data: LabelledData,
    *,
    cfg: FinetuneConfig,
    mean: list[float],
    std: list[float],
    ctx: Context,
    batch_size: int,
    passes_per_epoch: int,
    sample_weight: np.ndarray | None,
    class_weight: torch.Tensor | None,
) -> tuple[nn.Module, Task]:
    """Frozen encoder: features of every image computed once, then only the head trains on them."""
    model.requires_grad_(False)
    feats = {
        s: _features(model, data, s, mean, std, cfg.classifier.eval_batch_size) for s in ("train", "val")
    }
    head = ProbeHead(model.config.hidden_size, len(data.labels)).to(ctx.device)
    positions = np.arange(len(data.index["train"]))
    y_train = torch.as_tensor(data.y[data.index["train"]], device=ctx.device)

    def batches(epoch: int) -> list[np.ndarray]:
        return [
            b
            for p in range(passes_per_epoch)
            for b in split_batches(
                epoch_order(
                    positions,
                    epoch * passes_per_epoch + p,
                    cfg.run.seed,
                    ctx.rank,
                    ctx.world_size,
                    sample_weight,
                ),
                batch_size,
                drop_last=True,
            )
        ]

    def prepare(batch: np.ndarray, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.as_tensor(batch, device=ctx.device)
        return feats["train"][index], y_train[index]

    def loss(trained: nn.Module, inputs: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return F.cross_entropy(trained(inputs[0]), inputs[1], weight=class_weight)

    def validate(module: nn.Module, epoch: int) -> dict[str, float]:
        return _val_metrics(module(feats["val"]), data.y[data.index["val"]], data.labels)

    return head, Task(
        batches=batches, prepare=prepare, loss=loss, validate=validate, select=_selected_metric(cfg)
    )
