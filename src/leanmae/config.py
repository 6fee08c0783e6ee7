"""Typed configuration: dataclasses, presets shipped with the package, YAML files and overrides.

A run's configuration is built in layers, each overriding the one before:
defaults -> preset (``--preset NAME``) -> YAML file (``--config``) -> flags.
Every layer is checked against the dataclass fields, so a misspelt key is an error
(with the nearest valid key suggested) instead of a setting that silently does nothing.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration key, value or preset that cannot be used; the message names it."""


# Encoder sizes of the ViT family (Dosovitskiy et al.; MAE uses base/large/huge).
MODEL_SIZES: dict[str, dict[str, int]] = {
    "tiny": {"hidden_size": 192, "depth": 12, "heads": 3},
    "small": {"hidden_size": 384, "depth": 12, "heads": 6},
    "base": {"hidden_size": 768, "depth": 12, "heads": 12},
    "large": {"hidden_size": 1024, "depth": 24, "heads": 16},
}


@dataclass
class ModelConfig:
    """The ViT encoder and the MAE decoder. ``size`` expands to width/depth/heads (see MODEL_SIZES)."""

    size: str = "custom"
    image_size: int = 224
    patch_size: int = 16
    hidden_size: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    decoder_hidden_size: int = 512
    decoder_depth: int = 8
    decoder_heads: int = 16
    mask_ratio: float = 0.75
    norm_pix_loss: bool = False


@dataclass
class DataConfig:
    """Where images come from and how they are decoded once into the cache."""

    sources: list[str] = field(default_factory=list)
    tile: int | None = None
    grid: str | None = None
    min_tile_size: int = 64
    cache_size: int | None = None  # working size kept in the cache; default 1.25 x image_size
    cache_dir: str | None = None  # default: $LEANMAE_CACHE or ~/.cache/leanmae
    val_fraction: float = 0.05
    skip_bad: bool = False
    workers: int = 2  # decoding processes when the cache is built


@dataclass
class AugmentConfig:
    """Batch augmentation. Cells have no orientation, so both flips are on; colour is left alone."""

    crop_scale: tuple[float, float] = (0.2, 1.0)
    crop_ratio: tuple[float, float] = (0.75, 1.3333333)
    hflip: bool = True
    vflip: bool = True
    normalize: str = "imagenet"  # or "dataset": mean/std measured on the training images


@dataclass
class OptimConfig:
    """AdamW with a per-iteration warmup + cosine/constant schedule; lr follows the MAE rule."""

    epochs: int = 20
    batch_size: int = 64  # per process
    accum_steps: int = 1
    base_lr: float = 1.5e-4  # absolute lr = base_lr * effective batch / 256
    min_lr: float = 0.0
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_epochs: float = 1.0
    schedule: str = "cosine"  # or "constant" (after warmup)
    clip_grad: float | None = None
    lr_scaling: str = "linear"  # lr = base_lr x (effective batch / 256): linear (MAE rule), sqrt, or none


@dataclass
class RunConfig:
    """What every training run shares: seed, device, threads, output handling."""

    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int | None = None  # torch threads per CPU process; default: OMP_NUM_THREADS, else cores / processes on the node
    amp: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp16 | fp32
    progress: bool = True
    prefetch: bool = True  # prepare the next batch on a background thread while a step trains (same results either way)
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])  # experiment trackers: tensorboard, mlflow (leanmae.tracking)


@dataclass
class PretrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    recon_images: int = 8  # validation images shown in reconstructions.png
    probe_split: str | None = None  # split manifest whose val images (with labels) score the frozen encoder (kNN, linear probe)
    probe_every: int = 5  # epochs between those scores (and always after the last epoch)


@dataclass
class ClassifierOptions:
    """Fine-tuning recipe (MAE paper, scaled to small data sets); see README 'Fine-tuning'."""

    pooling: str = "mean"  # mean (mean of the patch tokens + LayerNorm, MAE's fine-tuning) | cls
    drop_path: float = 0.1
    label_smoothing: float = 0.1
    mixup: float = 0.0  # Beta(alpha, alpha); 0 = off (the default: it hurts at 1 % of the labels)
    cutmix: float = 0.0
    layer_decay: float = 0.75
    balance: str = "sqrt"  # sqrt (loss weights 1/sqrt(class count)) | loss (1/count) | sampler (class-balanced sampling) | none
    select: str = "last"  # keep the last epoch, or val_macro_f1 (the best epoch on the run's validation images)
    val: str = "honest"  # honest: the run's share of the val split (as many as its label fraction, nested, >= 2 per class) | full: all of it (uses more labels than the budget)
    temperature_prior: float | None = 0.5  # sd of the normal prior on log T for temperature scaling (MAP); None: plain NLL
    linear_probe: bool = False  # frozen encoder, features computed once, linear head only
    min_steps: int = 300  # small fractions repeat passes per epoch to reach this many optimizer steps
    eval_batch_size: int = 256
    target_accuracy: float = 0.99  # refer-to-expert threshold: kept predictions reach this accuracy on validation
    ood_data: list[str] = field(default_factory=list)  # DIR[:classes] of images from classes never trained on


@dataclass
class FinetuneConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=lambda: AugmentConfig(crop_scale=(0.35, 1.0)))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(base_lr=1e-3, weight_decay=0.05, betas=(0.9, 0.999), warmup_epochs=2, min_lr=1e-6, lr_scaling="sqrt"))
    run: RunConfig = field(default_factory=RunConfig)
    classifier: ClassifierOptions = field(default_factory=ClassifierOptions)


def preset_names() -> list[str]:
    """Presets shipped inside the package (``leanmae/presets/*.yaml``)."""
    folder = resources.files("leanmae") / "presets"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_yaml(path: str | Path) -> dict[str, Any]:
    text = Path(path).read_text()
    try:
        loaded = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values")
    return loaded


def load_preset(name: str) -> dict[str, Any]:
    names = preset_names()
    if name not in names:
        hint = difflib.get_close_matches(name, names, n=1)
        raise ConfigError(
            f"unknown preset {name!r}" + (f"; did you mean {hint[0]!r}?" if hint else "") + f" (available: {', '.join(names)})"
        )
    return load_yaml(resources.files("leanmae") / "presets" / f"{name}.yaml")  # type: ignore[arg-type]


COMMAND_SECTIONS = ("pretrain", "finetune", "study")


def section(layer: dict[str, Any], command: str) -> dict[str, Any]:
    """The part of a preset or YAML file that applies to ``command``.

    Shared sections (model, data, run) apply to every command; a section named after the
    command (``pretrain:``, ``finetune:``) holds that command's own keys and wins.
    Sections for other commands are ignored, so one preset file serves all commands.
    """
    out = {k: v for k, v in layer.items() if k not in COMMAND_SECTIONS}
    own = layer.get(command) or {}
    return merge(out, own)


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; ``over`` wins."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            value = merge(out[key], value)
        out[key] = value
    return out


def parse_override(text: str) -> dict[str, Any]:
    """``"optim.base_lr=0.001"`` -> ``{"optim": {"base_lr": 0.001}}`` (value parsed as YAML; typed fields convert it)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, for example optim.base_lr=1e-3")
    key, raw = text.split("=", 1)
    value = yaml.safe_load(raw)
    nested: dict[str, Any] = {}
    cursor = nested
    parts = key.strip().split(".")
    for part in parts[:-1]:
        cursor = cursor.setdefault(part, {})
    cursor[parts[-1]] = value
    return nested


def _expand_model_size(layer: dict[str, Any]) -> dict[str, Any]:
    model = layer.get("model")
    if not isinstance(model, dict) or model.get("size") in (None, "custom"):
        return layer
    size = model["size"]
    if size not in MODEL_SIZES:
        hint = difflib.get_close_matches(str(size), list(MODEL_SIZES), n=1)
        raise ConfigError(f"model.size: unknown size {size!r}" + (f"; did you mean {hint[0]!r}?" if hint else ""))
    return {**layer, "model": {**MODEL_SIZES[size], **model}}


def build(cls: type, layers: list[dict[str, Any]]) -> Any:
    """Merge ``layers`` (first = lowest priority) and turn the result into a ``cls`` instance."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged = merge(merged, _expand_model_size(layer))
    return from_dict(cls, merged)


def from_dict(cls: type, values: dict[str, Any], where: str = "") -> Any:
    """Typed construction with unknown-key errors and light type coercion (YAML ints for floats...)."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        path = f"{where}{key}"
        if key not in names:
            hint = difflib.get_close_matches(key, names, n=1)
            raise ConfigError(f"unknown config key {path!r}" + (f"; did you mean {(where + hint[0])!r}?" if hint else ""))
        kwargs[key] = _coerce(hints[key], value, path)
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, path: str) -> Any:
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping")
        return from_dict(hint, value, where=f"{path}.")
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if value is None:
        if type(None) in args or hint is Any:
            return None
        raise ConfigError(f"{path}: a value is required")
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, path)
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{path}: expected {len(args)} values, got {value!r}")
        return tuple(_coerce(a, v, path) for a, v in zip(args, value))
    if origin is list:
        if isinstance(value, str):
            value = [value]
        return [_coerce(args[0], v, path) for v in value]
    try:
        if hint is bool:
            if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
                return value.lower() in ("true", "yes", "1")
            if not isinstance(value, bool):
                raise TypeError
            return value
        if hint in (int, float, str):
            if hint is int and isinstance(value, float) and not value.is_integer():
                raise TypeError
            return hint(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{path}: expected {hint.__name__}, got {value!r}") from None
    return value


def to_dict(cfg: Any) -> dict[str, Any]:
    """A config as nested plain dicts (the form run.json stores)."""
    return dataclasses.asdict(cfg)


def effective_batch(optim: OptimConfig, world_size: int) -> int:
    """Images per optimizer step across all processes: batch x accumulation x processes."""
    return optim.batch_size * optim.accum_steps * world_size


def absolute_lr(optim: OptimConfig, world_size: int) -> float:
    """lr = base_lr x scale(effective batch / 256): linear is the MAE rule; sqrt keeps small batches
    (a 1 % label budget trains at batch ~18) from being starved of learning rate."""
    ratio = effective_batch(optim, world_size) / 256
    scale = {"linear": ratio, "sqrt": ratio**0.5, "none": 1.0}.get(optim.lr_scaling)
    if scale is None:
        raise ConfigError(f"optim.lr_scaling {optim.lr_scaling!r}: use linear, sqrt or none")
    return optim.base_lr * scale


def lr_rule(optim: OptimConfig, world_size: int) -> str:
    """The lr rule in words, as printed at start: 'lr = 0.001 x sqrt(18 / 256) = 0.000265'."""
    batch = effective_batch(optim, world_size)
    factor = {"linear": f"{batch} / 256", "sqrt": f"sqrt({batch} / 256)", "none": "1"}[optim.lr_scaling]
    return f"lr = {optim.base_lr:g} x {factor} = {absolute_lr(optim, world_size):.3g}"


def resolve(cls: type, command: str, preset: str | None, config_file: str | Path | None, flags: dict[str, Any], sets: list[str] | tuple[str, ...] = ()) -> Any:
    """The config of one command: defaults <- preset <- YAML file <- flags <- ``--set KEY=VALUE``.

    ``flags`` is a nested dict of explicit options (None values are "not given" and skipped).
    A ``--set`` key may start with a command's name (``finetune.classifier.min_steps=60``) to
    apply to that command only, as in preset files; a study passes its overrides to every run.
    """
    layers = []
    if preset:
        layers.append(section(load_preset(preset), command))
    if config_file:
        layers.append(section(load_yaml(config_file), command))
    layers.append(_drop_none(flags))
    layers.extend(section(parse_override(s), command) for s in sets)
    return build(cls, layers)


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            value = _drop_none(value)
            if value:
                out[key] = value
        elif value is not None:
            out[key] = value
    return out
