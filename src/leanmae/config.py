"""Typed configuration: dataclasses, presets shipped with the package, YAML files and overrides.

A run's configuration is built in layers, each overriding the one before:
defaults -> preset (``--preset NAME``) -> YAML file (``--config``) -> flags.
Every layer is checked against the dataclass fields, so a misspelt key is an error
(with the nearest valid key suggested) instead of a setting that silently does nothing.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
import os
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from leanmae.errors import ConfigError

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
    layer_norm_eps: float = 1e-12  # transformers' ViT default; DINOv2 and timm encoders use 1e-6
    num_register_tokens: int = 0  # learned tokens after CLS (DINOv2 with registers); read from such weights


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
    # at decode time, to a reference from the training images (saved with the model): reinhard moves the
    # colours to their LAB statistics, macenko re-expresses each image's two stains in theirs
    stain_norm: str = "none"
    # k: crop a square of k x the nucleus extent around it at decode time (saved with the model); None = off
    cell_crop: float | None = None
    # greyscale inputs at decode time (saved with the model): a model that never sees colour cannot be
    # fooled by another lab's stain or background colour (docs/robustness.md, cross-lab)
    grey: bool = False


@dataclass
class AugmentConfig:
    """Batch augmentation. Cells have no orientation, so both flips are on.

    These defaults (used by pretraining) have no stain or colour perturbation; fine-tuning's
    (``FINETUNE_AUGMENT``) adds them, chosen by the robustness benchmark (docs/robustness.md).
    Tellez et al. 2019 used HED strengths of 0.05 ("light") to 0.2 ("strong").
    """

    crop_scale: tuple[float, float] = (0.2, 1.0)
    crop_ratio: tuple[float, float] = (0.75, 1.3333333)
    # how far a crop's centre may sit from the image's, as a fraction of the room it has: 1 anywhere it
    # fits (torchvision), 0 always centred; below 1, zoomed-in crops keep a centred cell whole
    crop_shift: float = 1.0
    hflip: bool = True
    vflip: bool = True
    normalize: str = "imagenet"  # or "dataset": mean/std measured on the training images
    hed: float = 0.0  # stain perturbation: each HED optical density x U(1-hed, 1+hed) + U(-hed, hed); 0 = off
    brightness: float = 0.0  # x U(1-b, 1+b)
    contrast: float = 0.0  # blend with the image's mean grey, factor U(1-c, 1+c)
    saturation: float = 0.0  # blend with the greyscale image, factor U(1-s, 1+s)
    hue: float = 0.0  # hue rotation by U(-h, h) turns (at most 0.5)
    blur: float = 0.0  # Gaussian blur of sigma U(0, blur) pixels of the training image


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
    threads: int | None = (
        None  # torch threads per CPU process; default: OMP_NUM_THREADS, else cores / processes on the node
    )
    amp: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp16 | fp32
    progress: bool = True
    # prepare the next batch on a background thread while a step trains (same results either way);
    # None: on CUDA only
    prefetch: bool | None = None
    report_to: list[str] = field(
        default_factory=lambda: ["tensorboard"]
    )  # experiment trackers: tensorboard, mlflow (leanmae.tracking)
    # torch.compile the model: for CUDA (nothing gained on CPUs); its first steps compile.
    compile: bool = False


@dataclass
class PretrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    recon_images: int = 8  # validation images shown in reconstructions.png
    probe_split: str | None = (
        None  # split manifest whose val images (with labels) score the frozen encoder (kNN, linear probe)
    )
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
    # sqrt (loss weights 1/sqrt(class count)) | loss (1/count) | sampler (class-balanced sampling) | none
    balance: str = "sqrt"
    select: str = (
        "last"  # keep the last epoch, or val_macro_f1 (the best epoch on the run's validation images)
    )
    # honest: the run's share of the val split (as many as its label fraction, nested, >= 2 per class) |
    # full: all of it (uses more labels than the budget)
    val: str = "honest"
    temperature_prior: float | None = (
        0.5  # sd of the normal prior on log T for temperature scaling (MAP); None: plain NLL
    )
    linear_probe: bool = False  # frozen encoder, features computed once, linear head only
    # LP-FT: fit a logistic-regression probe of the frozen encoder first, then fine-tune the whole
    # network starting from it as the head
    lp_ft: bool = False
    # small fractions repeat passes per epoch to reach this many optimizer steps (600: the stain, colour
    # and zoom augmentation of FINETUNE_AUGMENT needs them to keep the clean score; docs/robustness.md)
    min_steps: int = 600
    eval_batch_size: int = 256
    target_accuracy: float = (
        0.99  # refer-to-expert threshold: kept predictions reach this accuracy on validation
    )
    ood_data: list[str] = field(default_factory=list)  # DIR[:classes] of images from classes never trained on
    # Which train images get labels (leanmae.evaluation.selection), as many as the stratified draw at the
    # run's fraction: stratified (the reference: it needs the labels it saves) | random | typiclust (the
    # init encoder's features). Selection reads no label; the val draw stays stratified.
    selection: str = "stratified"
    # margin: a next round (Doucet et al. 2024): the earlier round's labels (this run folder's labelled.csv)
    # kept, the rest of the budget the train images its model is least sure of
    selection_from: str | None = None
    # Semi-supervised fine-tuning on the train split's unlabelled images (never val or test): off | fixmatch
    # (Sohn et al. 2020: a weak view's confident prediction is the target of a strong view).
    semi: str = "off"
    semi_ratio: int = 2  # unlabelled images per labelled image in a step (FixMatch's mu; 7 in the paper)
    # The confidence a weak view's prediction needs to become a target, as a share of the highest one the
    # label-smoothed targets allow (FixMatch's 0.95 of 1).
    semi_threshold: float = 0.95
    semi_weight: float = 1.0  # the unlabelled loss's weight (FixMatch's lambda_u)


# Fine-tuning's augmentation, chosen by the robustness benchmark on PBC (docs/robustness.md): HED stain
# and colour jitter keep a model working under another lab's stain, and zoomed-in crops that keep the
# cell near the centre (crop_shift 0.5) under another lab's tighter framing.
FINETUNE_AUGMENT = AugmentConfig(
    crop_scale=(0.1, 1.0), crop_shift=0.5, hed=0.1, brightness=0.1, contrast=0.1, saturation=0.1, hue=0.02
)


@dataclass
class FinetuneConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=lambda: dataclasses.replace(FINETUNE_AUGMENT))
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(
            base_lr=1e-3,
            weight_decay=0.05,
            betas=(0.9, 0.999),
            warmup_epochs=2,
            min_lr=1e-6,
            lr_scaling="sqrt",
        )
    )
    run: RunConfig = field(default_factory=RunConfig)
    classifier: ClassifierOptions = field(default_factory=ClassifierOptions)


def preset_names() -> list[str]:
    """Presets shipped inside the package (``leanmae/presets/*.yaml``)."""
    folder = resources.files("leanmae") / "presets"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


class DuplicateKeyError(yaml.YAMLError):
    """A key given twice in one mapping: YAML keeps the last and drops the first without a word."""

    def __init__(self, key: Any, first: int, second: int) -> None:
        super().__init__(f"key {key!r} appears twice (lines {first} and {second}); keep one")


class Yaml12Loader(yaml.SafeLoader):
    """YAML as the 1.2 core schema reads it, and each key once per mapping.

    Why: YAML 1.1 (PyYAML's default) turns words and digits into values nobody meant: yes/no/on/off become
    booleans (``--set optim.epochs=yes`` trained 1 epoch), 010 is octal 8, 1:30 is 90, 1_000 is 1000,
    2024-01-01 a date. Here only true/false are booleans, numbers are decimal (or 0o/0x), the rest is text.
    """

    yaml_implicit_resolvers: dict[Any, Any] = {}  # PyYAML's table of implicit types, refilled below

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key, line = self.construct_object(key_node), key_node.start_mark.line + 1
                if key in seen:
                    raise DuplicateKeyError(key, seen[key], line)
                seen[key] = line
        return super().construct_mapping(node, deep)

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        text = self.construct_scalar(node)
        return int(text, {"0o": 8, "0x": 16}.get(text[:2], 10))


for _tag, _regex, _first in (
    ("bool", r"true|True|TRUE|false|False|FALSE", "tTfF"),
    ("null", r"~|null|Null|NULL|", ["~", "n", "N", ""]),
    ("int", r"[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+", "-+0123456789"),
    (
        "float",
        r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)",
        "-+0123456789.",
    ),
    ("merge", r"<<", "<"),
):
    Yaml12Loader.add_implicit_resolver(
        f"tag:yaml.org,2002:{_tag}", re.compile(f"^(?:{_regex})$"), list(_first)
    )
Yaml12Loader.add_constructor("tag:yaml.org,2002:int", Yaml12Loader.construct_yaml_int)


def parse_yaml(text: str, where: str, advice: str = "") -> Any:
    """``text`` read by ``Yaml12Loader`` (safe: it builds plain values only); a syntax error or a repeated
    key is a ConfigError naming ``where``."""
    try:
        return yaml.load(text, Loader=Yaml12Loader)
    except DuplicateKeyError as err:
        raise ConfigError(f"{where}: {err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{where}: not valid YAML ({_one_line(err)}){advice}") from None


def _one_line(err: Exception) -> str:
    """A parser's multi-line message on one line: errors are printed as a single line."""
    return " ".join(str(err).split())


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML config file as a mapping; a file that is not UTF-8 text, not YAML or not a mapping is a
    ConfigError naming it."""
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte {err.object[err.start]:#04x} at offset {err.start}); a config "
            "file is YAML saved as UTF-8"
        ) from None
    loaded = parse_yaml(text, str(path))
    if loaded is None:  # an empty file
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values, got {loaded!r}")
    return loaded


def load_preset(name: str) -> dict[str, Any]:
    names = preset_names()
    if name not in names:
        hint = difflib.get_close_matches(name, names, n=1)
        raise ConfigError(
            f"unknown preset {name!r}"
            + (f"; did you mean {hint[0]!r}?" if hint else "")
            + f" (available: {', '.join(names)})"
        )
    return load_yaml(resources.files("leanmae") / "presets" / f"{name}.yaml")  # type: ignore[arg-type]


def section(layer: dict[str, Any], command: str) -> dict[str, Any]:
    """The part of a preset or YAML file that applies to ``command``.

    Shared sections (model, data, run) apply to every command; a section named after the
    command (``pretrain:``, ``finetune:``) holds that command's own keys and wins.
    Sections for other commands are not applied, so one preset file serves all commands, but they are
    checked against that command's config (``check_section``): a misspelt key there would otherwise do
    nothing, silently, in every command.
    """
    own: dict[str, Any] = {}
    for name in COMMAND_CONFIGS:
        values = {} if layer.get(name) is None else layer[name]  # ``finetune:`` with nothing under it
        if not isinstance(values, dict):
            raise ConfigError(f"{name}: expected a mapping of keys to values, got {values!r}")
        if name == command:
            own = values
        else:
            check_section(name, values)
    return merge({k: v for k, v in layer.items() if k not in COMMAND_CONFIGS}, own)


def check_section(command: str, values: dict[str, Any]) -> None:
    """Every key of ``command``'s section exists in its config and has a value it accepts (each key on its
    own: how the keys combine is checked when that command resolves them with the rest of its config)."""
    cls, checks = COMMAND_CONFIGS[command]
    where = f"{command}."
    given = _dotted_keys(values)
    leaves = leaf_keys(from_dict(cls, values, where))
    _check_leaves({key: value for key, value in leaves.items() if key in given}, checks, where)


def _dotted_keys(values: dict[str, Any], where: str = "") -> set[str]:
    """The dotted names of the values given in a nested mapping (``{"optim": {"epochs": 3}}`` ->
    ``{"optim.epochs"}``)."""
    keys: set[str] = set()
    for key, value in values.items():
        keys |= _dotted_keys(value, f"{where}{key}.") if isinstance(value, dict) else {f"{where}{key}"}
    return keys


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; ``over`` wins."""
    out = dict(base)
    for key, value in over.items():
        if value is None and isinstance(out.get(key), dict):
            continue  # an empty YAML section (``optim:``) keeps the values below it
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            value = merge(out[key], value)
        out[key] = value
    return out


def parse_override(text: str) -> dict[str, Any]:
    """``"optim.base_lr=0.001"`` -> ``{"optim": {"base_lr": 0.001}}`` (value parsed as YAML; typed fields
    convert it)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, for example optim.base_lr=1e-3")
    key, raw = text.split("=", 1)
    value = parse_yaml(raw, f"--set {text!r}", f"; quote it, for example {key}='...'")
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
        raise ConfigError(
            f"model.size: unknown size {size!r}" + (f"; did you mean {hint[0]!r}?" if hint else "")
        )
    return {**layer, "model": {**MODEL_SIZES[size], **model}}


def build(cls: type, layers: list[dict[str, Any]], checks: dict[str, Check] | None = None) -> Any:
    """Merge ``layers`` (first = lowest priority) into a ``cls`` instance whose values pass ``checks``
    (default: the checks of ``cls``, see COMMAND_CONFIGS)."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged = merge(merged, _expand_model_size(layer))
    cfg = from_dict(cls, merged)
    check_values(cfg, checks if checks is not None else checks_of(cls))
    return cfg


def from_dict(cls: type, values: dict[str, Any], where: str = "") -> Any:
    """Typed construction with unknown-key errors; each value must already have its field's type (see
    ``_scalar``)."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        path = f"{where}{key}"
        if key not in names:
            hint = difflib.get_close_matches(str(key), names, n=1)
            raise ConfigError(
                f"unknown config key {path!r}" + (f"; did you mean {(where + hint[0])!r}?" if hint else "")
            )
        kwargs[key] = _coerce(hints[key], value, path)
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, path: str) -> Any:
    if dataclasses.is_dataclass(hint):
        value = {} if value is None else value  # ``optim:`` with nothing under it
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
        return tuple(_coerce(a, v, path) for a, v in zip(args, value, strict=True))
    if origin is list:
        return [_coerce(args[0], v, path) for v in _as_list(value, path)]
    return value if hint is Any else _scalar(hint, value, path)


def _as_list(value: Any, path: str) -> list[Any]:
    """A list value; one text is a list of one (a path or a name means the same either way).

    Any other single value is refused rather than guessed: ``seeds: 3`` could mean seed 3 or three seeds,
    and a mapping would become the list of its keys.
    """
    if isinstance(value, (str, os.PathLike)):
        return [value]
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{path}: expected a list such as [a, b], got {value!r}")
    return list(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)  # True is an int in Python


# What each scalar field accepts: in words, and the test of a value.
_SCALARS: dict[type, tuple[str, Callable[[Any], bool]]] = {
    bool: ("true or false", lambda v: isinstance(v, bool)),
    int: (
        "a whole number",
        lambda v: _is_number(v) and (isinstance(v, numbers.Integral) or float(v).is_integer()),
    ),
    float: ("a number", _is_number),
    str: ("text", lambda v: isinstance(v, (str, os.PathLike))),  # a Path from Python is a path's text
}


def _scalar(hint: type, value: Any, path: str) -> Any:
    """``value`` as a ``hint`` field (bool, int, float or str) only where it already means one.

    Why: Python converts anything (``int(True)`` is 1, ``str([1])`` is "[1]", ``float("nan")``), so a
    converted value can silently differ from what was written. A bool field also takes the text
    true/false (a quoted YAML value), an int field a whole float (1e3), a float field an int.
    """
    if hint is bool and isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    words, fits = _SCALARS[hint]
    if not fits(value):
        raise ConfigError(f"{path}: expected {words}, got {value!r}")
    return os.fspath(value) if isinstance(value, os.PathLike) else hint(value)


def to_dict(cfg: Any) -> dict[str, Any]:
    """A config as nested plain dicts (the form run.json stores)."""
    return dataclasses.asdict(cfg)


def effective_batch(optim: OptimConfig, world_size: int) -> int:
    """Images per optimizer step across all processes: batch x accumulation x processes."""
    return optim.batch_size * optim.accum_steps * world_size


def fit_accumulation(optim: OptimConfig, batches_per_pass: int) -> OptimConfig:
    """``optim`` with ``accum_steps`` no larger than the batches one pass over the data holds.

    Why: accumulating past the end of the data only counts the same images again, and the lr rule
    would then scale for images that do not exist (28 images, accum_steps 50: "effective batch 800").
    """
    return dataclasses.replace(optim, accum_steps=max(1, min(optim.accum_steps, batches_per_pass)))


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


def resolve(
    cls: type,
    command: str,
    preset: str | None,
    config_file: str | Path | None,
    flags: dict[str, Any],
    sets: list[str] | tuple[str, ...] = (),
) -> Any:
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


# --------------------------------------------------------------------------- value checks
#
# Why: a value of the right type can still be meaningless (mask_ratio 1.5, batch_size 0) or a
# misspelt choice that code further down would treat as its default ("cosnie" ran as cosine).
# Every leaf key of the configs has a check here, and ``build`` applies them when a config is
# resolved, so a bad value from a preset, YAML file, flag or ``--set`` stops the command before
# anything is written, with one line naming the key and what it accepts.

Check = Callable[[Any], "str | None"]  # returns what is wrong, or None


def choice(*allowed: str, optional: bool = False) -> Check:
    """One of ``allowed``; ``optional`` also accepts None."""
    return lambda v: (
        None
        if v in allowed or (v is None and optional)
        else f"use one of {', '.join(allowed)}" + (" or null" if optional else "")
    )


def number(
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    optional: bool = False,
) -> Check:
    """A finite number in [low, high] (or open at either end); ``optional`` also accepts None."""
    left, right = "(" if low_open else "[", ")" if high_open else "]"
    interval = (
        f"{left}{'-inf' if low is None else f'{low:g}'}, {'inf' if high is None else f'{high:g}'}{right}"
    )

    def check(v: Any) -> str | None:
        if v is None:
            return None if optional else "a value is required"
        if (
            not math.isfinite(v)
            or (low is not None and (v <= low if low_open else v < low))
            or (high is not None and (v >= high if high_open else v > high))
        ):
            return f"must be a finite number in {interval}" + (" or null" if optional else "")
        return None

    return check


def ordered_pair(inner: Check) -> Check:
    """Two values (low, high), each passing ``inner``, with low <= high."""

    def check(v: tuple[float, float]) -> str | None:
        problem = inner(v[0]) or inner(v[1])
        if problem:
            return f"each value {problem}"
        return None if v[0] <= v[1] else "expected [low, high] with low <= high"

    return check


def each(inner: Check, unique: bool = False, non_empty: bool = False) -> Check:
    """Every element of a list passes ``inner``; optionally no repeats and at least one element."""

    def check(values: list[Any] | tuple[Any, ...]) -> str | None:
        v = list(values)
        if non_empty and not v:
            return "give at least one value"
        for item in v:
            problem = inner(item)
            if problem:
                return f"{item!r}: {problem}"
        if unique and len(set(v)) != len(v):
            return (
                f"values repeat ({', '.join(map(str, sorted({x for x in v if v.count(x) > 1})))}); give "
                "each once"
            )
        return None

    return check


def text(optional: bool = False, missing: str = "must not be empty") -> Check:
    """A non-empty string (a path, a name); ``optional`` also accepts None; ``missing`` says what to give
    instead."""
    return lambda v: None if (v is None and optional) or (isinstance(v, str) and v.strip()) else missing


def pattern(regex: str, example: str, optional: bool = False) -> Check:
    return lambda v: (
        None if (v is None and optional) or re.fullmatch(regex, str(v)) else f"expected the form {example}"
    )


def is_bool(v: Any) -> str | None:
    return None if isinstance(v, bool) else "expected true or false"


DEVICE_USE = "use auto, cpu, cuda or cuda:N"


def device_problem(device: Any) -> str | None:
    """What is wrong with a device name, or None. leanmae runs on CPUs and CUDA GPUs; torch knows more names
    (mps, meta, xla...) that would fail, or compute nothing, somewhere inside a command."""
    return None if isinstance(device, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?", device) else DEVICE_USE


def check_device(device: str) -> None:
    """The one check of ``--device`` (and ``run.device``) for every command, before any model is loaded."""
    problem = device_problem(device)
    if problem:
        raise ConfigError(f"--device {device!r}: {problem}")


SEED = number(0, 2**32 - 1)
POSITIVE_INT = number(1)
SHARE = number(0, 1, low_open=True, high_open=True)

CHECKS: dict[str, Check] = {
    "model.size": choice("custom", *MODEL_SIZES),
    "model.image_size": POSITIVE_INT,
    "model.patch_size": POSITIVE_INT,
    "model.hidden_size": POSITIVE_INT,
    "model.depth": POSITIVE_INT,
    "model.heads": POSITIVE_INT,
    "model.mlp_ratio": number(0, low_open=True),
    "model.decoder_hidden_size": POSITIVE_INT,
    "model.decoder_depth": POSITIVE_INT,
    "model.decoder_heads": POSITIVE_INT,
    "model.mask_ratio": SHARE,
    "model.norm_pix_loss": is_bool,
    "model.layer_norm_eps": number(0, 1, low_open=True),
    "model.num_register_tokens": number(0),
    "data.sources": each(text()),
    "data.tile": number(1, optional=True),
    "data.grid": pattern(r"[1-9]\d*[xX][1-9]\d*", "ROWSxCOLS such as 2x2", optional=True),
    "data.min_tile_size": POSITIVE_INT,
    "data.cache_size": number(1, optional=True),
    "data.cache_dir": text(optional=True),
    "data.val_fraction": number(0, 1, high_open=True),
    "data.skip_bad": is_bool,
    "data.workers": POSITIVE_INT,
    "data.stain_norm": choice("none", "reinhard", "macenko"),
    "data.cell_crop": number(1, 10, optional=True),
    "data.grey": is_bool,
    "augment.crop_scale": ordered_pair(number(0, 1, low_open=True)),
    "augment.crop_ratio": ordered_pair(number(0, low_open=True)),
    "augment.crop_shift": number(0, 1),
    "augment.hflip": is_bool,
    "augment.vflip": is_bool,
    "augment.normalize": choice("imagenet", "dataset"),
    "augment.hed": number(0, 1),
    "augment.brightness": number(0, 1),
    "augment.contrast": number(0, 1),
    "augment.saturation": number(0, 1),
    "augment.hue": number(0, 0.5),
    "augment.blur": number(0, 10),
    "optim.epochs": POSITIVE_INT,
    "optim.batch_size": POSITIVE_INT,
    "optim.accum_steps": POSITIVE_INT,
    "optim.base_lr": number(0, low_open=True),
    "optim.min_lr": number(0),
    "optim.weight_decay": number(0),
    "optim.betas": each(number(0, 1, high_open=True)),
    "optim.warmup_epochs": number(0),
    "optim.schedule": choice("cosine", "constant"),
    "optim.clip_grad": number(0, low_open=True, optional=True),
    "optim.lr_scaling": choice("linear", "sqrt", "none"),
    "run.seed": SEED,
    "run.device": device_problem,
    "run.threads": number(1, optional=True),
    "run.amp": choice("auto", "bf16", "fp16", "fp32"),
    "run.progress": is_bool,
    "run.prefetch": lambda v: (
        None if v is None or isinstance(v, bool) else "true, false or null (on CUDA only)"
    ),
    "run.report_to": each(choice("tensorboard", "mlflow"), unique=True),
    "run.compile": is_bool,
    "recon_images": number(0),
    "probe_split": text(optional=True),
    "probe_every": POSITIVE_INT,
    "classifier.pooling": choice("mean", "cls"),
    "classifier.drop_path": number(0, 1, high_open=True),
    "classifier.label_smoothing": number(0, 1, high_open=True),
    "classifier.mixup": number(0),
    "classifier.cutmix": number(0),
    "classifier.layer_decay": number(0, 1, low_open=True),
    "classifier.balance": choice("sqrt", "loss", "sampler", "none"),
    "classifier.select": choice("last", "val_macro_f1"),
    "classifier.val": choice("honest", "full"),
    "classifier.temperature_prior": number(0, low_open=True, optional=True),
    "classifier.linear_probe": is_bool,
    "classifier.lp_ft": is_bool,
    "classifier.min_steps": number(0),
    "classifier.eval_batch_size": POSITIVE_INT,
    "classifier.target_accuracy": number(0, 1, low_open=True),
    "classifier.ood_data": each(text()),
    "classifier.selection": choice("stratified", "random", "typiclust", "margin"),
    "classifier.selection_from": text(optional=True),
    "classifier.semi": choice("off", "fixmatch"),
    "classifier.semi_ratio": POSITIVE_INT,
    "classifier.semi_threshold": number(0, 1),
    "classifier.semi_weight": number(0),
}


def leaf_keys(cfg: Any, where: str = "") -> dict[str, Any]:
    """Every leaf key of a config as a dotted name, with its value."""
    found: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            found.update(leaf_keys(value, f"{where}{f.name}."))
        else:
            found[f"{where}{f.name}"] = value
    return found


def check_values(cfg: Any, checks: dict[str, Check]) -> None:
    """Every value of ``cfg`` within its range or among its choices; the first that is not is a ConfigError.

    A key with no entry in ``checks`` is refused too, so a new config key cannot skip its check.
    """
    _check_leaves(leaf_keys(cfg), checks)
    if isinstance(cfg, StudyConfig):
        check_arm_sets(cfg)
    model = getattr(cfg, "model", None)
    if isinstance(model, ModelConfig):
        for size, count, names in (
            (model.image_size, model.patch_size, "model.image_size / model.patch_size"),
            (model.hidden_size, model.heads, "model.hidden_size / model.heads"),
            (
                model.decoder_hidden_size,
                model.decoder_heads,
                "model.decoder_hidden_size / model.decoder_heads",
            ),
        ):
            if size % count:
                raise ConfigError(f"{names} = {size} / {count}: must divide evenly")


def _check_leaves(leaves: dict[str, Any], checks: dict[str, Check], where: str = "") -> None:
    """Each dotted key's value passes its check; ``where`` is the section the keys sit in, for the message."""
    for key, value in leaves.items():
        if key not in checks:
            raise ConfigError(
                f"{where}{key}: no value check is defined for this key (add one to the config checks)"
            )
        problem = checks[key](value)
        if problem:
            raise ConfigError(f"{where}{key} = {value!r}: {problem}")


def ratios_problem(ratios: tuple[float, ...] | list[float]) -> str | None:
    """What is wrong with train,val,test shares, or None: three finite shares above 0 that sum to 1.

    A zero share is refused rather than rounded up: every class still needs one val and one test
    image, so "0.7,0.3,0" would silently make a test split the user asked not to have.
    """
    if len(ratios) != 3:
        return "expected three shares train,val,test such as 0.7,0.1,0.2"
    if not all(math.isfinite(r) and r > 0 for r in ratios) or abs(sum(ratios) - 1) > 1e-6:
        return "train, val and test each need a share above 0, and the shares must sum to 1"
    return None


# The study's arms, defined once: the study plans them, the report reads them back from run names.
BASELINE_ARM = "scratch"  # from random initialisation: what every other arm is compared with
ARMS = (BASELINE_ARM, "mae", "mae-in-domain", "mae-other", "mae-linear")  # plus "hf:FOLDER"
ARM_CHOICES = ", ".join(ARMS) + " or hf:FOLDER, each optionally +VARIANT"
# A variant of an arm, ``ARM+NAME``: the same start (init, pool), its own settings from --arm-set ARM+NAME:...
# (e.g. ``mae-in-domain+fixmatch``), so one study compares recipes of one arm side by side.
_VARIANT = re.compile(r"(.+)\+([a-z0-9][a-z0-9-]*)")


def base_arm(arm: str) -> str:
    """The arm a variant ``ARM+NAME`` starts from (an arm without a variant is its own base)."""
    found = _VARIANT.fullmatch(arm)
    return found.group(1) if found else arm


def arm_problem(arm: str) -> str | None:
    """What is wrong with an arm name, or None."""
    base = base_arm(arm)
    return None if base in ARMS or re.fullmatch(r"hf:.+", base) else f"unknown arm; use {ARM_CHOICES}"


def run_name(arm: str, fraction: float, seed: int) -> str:
    """A study run's folder name, ``ARM_fFRACTION_sSEED`` (``hf:path/x`` -> ``hf-x``; a variant keeps
    its ``+NAME``)."""
    label = "hf-" + Path(arm[3:]).name if arm.startswith("hf:") else arm
    return f"{label}_f{fraction:g}_s{seed}"


PLAN_FILE = "plan.json"  # a study's grid run names, rewritten by every call (arms and fractions may grow)


def run_folders(study: Path | str) -> list[Path]:
    """A study's run folders (named by ``run_name``), sorted; the report and the robustness benchmark
    both start from them. Not their logs, nor a dotted temporary a killed process left (``files``)."""
    found = (Path(study) / "runs").glob("*_f*_s*")
    return sorted(p for p in found if p.is_dir() and not p.name.startswith("."))


def candidate_folders(study: Path | str) -> list[Path]:
    """A study's recipe-candidate folders (``search/RUN_cI``, as ``study --search`` names them), in the
    grid's order; as ``run_folders``, not their logs nor a temporary a killed process left (``.NAME.tmp-PID``:
    no number after ``_c``)."""
    named = [(p, p.name.rsplit("_c", 1)) for p in (Path(study) / "search").glob("*_c*")]
    kept = [(int(i), run, p) for p, (run, i) in named if p.is_dir() and i.isdigit()]
    return [p for _, _, p in sorted(kept)]


def arm_of(run_folder: str) -> str:
    """The arm of a run folder named by ``run_name``."""
    return run_folder.rsplit("_f", 1)[0]


@dataclass
class SlurmOptions:
    """Where submitit sends the runs of ``--launcher slurm``."""

    partition: str | None = None
    account: str | None = None
    gpus_per_job: int = 1
    cpus_per_job: int = 8
    mem_gb: int = 32
    time_min: int = 240
    max_parallel: int = 32
    folder: str | None = None  # submitit logs; default <study>/slurm
    cluster: str | None = (
        None  # None: SLURM where available; "local" runs the same jobs as local processes (tests)
    )


@dataclass
class StudyConfig:
    """Every key but ``STUDY_CONFIG_ONLY``'s is also a flag of ``leanmae study`` (lists comma-separated or
    repeated; ``slurm``'s as --partition, --account...)."""

    data: str = ""
    classes: list[str] = field(
        default_factory=lambda: ["basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil"]
    )
    pretrain_data: list[str] = field(default_factory=list)
    ood_data: list[str] = field(
        default_factory=list
    )  # images of classes never trained on, for the OOD report
    external: list[str] = field(default_factory=list)  # other labs' labelled folders, scored by every run
    shift_reference: str | None = None  # the robustness colour transfer's target images (None: built-in)
    # the "mae" arm's pool. other: only --pretrain-data (the seed's setting) | in-domain: also the train
    # split, unlabelled
    pool: str = "other"
    preset: str = "cpu"
    fractions: list[float] = field(default_factory=lambda: [0.01, 0.1, 0.5, 1.0])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    extra_seeds: list[int] = field(
        default_factory=list
    )  # more seeds for the small fractions (<= extra_seeds_up_to), where runs vary most
    extra_seeds_up_to: float = 0.1
    arms: list[str] = field(default_factory=lambda: [BASELINE_ARM, "mae"])  # any of ARMS, or hf:FOLDER
    mae: list[str] = field(
        default_factory=list
    )  # MAE folders to use instead of pretraining: PATH (the --pool's) or POOL=PATH
    split_ratios: tuple[float, float, float] = (0.7, 0.1, 0.2)
    split_seed: int = 0
    # a split manifest of --data's images to use as it is (a lab's fixed split, or an earlier study's, whose
    # train images an in-domain MAE already saw) instead of drawing one with split_ratios and split_seed
    split: str | None = None
    pretrain_epochs: int | None = None
    finetune_epochs: int | None = None
    jobs: int = 2
    launcher: str = "local"  # local | slurm
    wait: bool = True
    slurm: SlurmOptions = field(default_factory=SlurmOptions)
    set: list[str] = field(default_factory=list)  # KEY=VALUE overrides for every run
    arm_set: list[str] = field(
        default_factory=list
    )  # ARM:KEY=VALUE overrides for one arm's runs (each arm its own best recipe)
    # KEY=V1|V2|... (or K1=A;K2=B|K1=C;K2=D: settings that change together) fine-tuning values every arm
    # searches at every fraction (the same budget for each arm):
    # each combination runs once, at the first seed, and the one its own label-honest val draw scores best
    # becomes the recipe of that arm and fraction
    search: list[str] = field(default_factory=list)
    # K1=A;K2=B: one more value of the last --search entry, past its last (e.g. twice the longest length),
    # tried at each arm and fraction whose best candidate took that last value, with the best's other settings
    search_beyond: str | None = None
    # One line shown first in the report (the demo's "SYNTHETIC"); scoring only: it may change between calls.
    note: str = ""
    progress: bool = True


# StudyConfig keys with no flag of ``leanmae study``: given in its --config YAML file
STUDY_CONFIG_ONLY = ("extra_seeds_up_to", "split_ratios", "split_seed")

STUDY_CHECKS: dict[str, Check] = {
    "data": text(missing="the study needs --data (a folder with one subfolder per class)"),
    "classes": each(text(), unique=True, non_empty=True),
    "pretrain_data": each(text()),
    "ood_data": each(text()),
    "external": each(text()),
    "shift_reference": text(optional=True),
    "pool": choice("other", "in-domain"),
    "preset": choice(*preset_names()),
    "fractions": each(number(0, 1, low_open=True), unique=True, non_empty=True),
    "seeds": each(number(0, 2**32 - 1), unique=True, non_empty=True),
    "extra_seeds": each(number(0, 2**32 - 1), unique=True),
    "extra_seeds_up_to": number(0, 1, low_open=True),
    "arms": each(arm_problem, unique=True, non_empty=True),
    "mae": each(text()),
    "split_ratios": ratios_problem,
    "split_seed": number(0, 2**32 - 1),
    "split": text(optional=True),
    "pretrain_epochs": number(1, optional=True),
    "finetune_epochs": number(1, optional=True),
    "jobs": number(1),
    "launcher": choice("local", "slurm"),
    "wait": is_bool,
    **{f"slurm.{key}": text(optional=True) for key in ("partition", "account", "folder")},
    **{
        f"slurm.{key}": number(1)
        for key in ("gpus_per_job", "cpus_per_job", "mem_gb", "time_min", "max_parallel")
    },
    "slurm.cluster": choice("slurm", "local", "debug", optional=True),
    "set": each(pattern(r"[^=]+=.*", "KEY=VALUE")),
    "arm_set": each(pattern(r"[^:=]+:[^=]+=.*", "ARM:KEY=VALUE")),
    "search": each(
        pattern(r"[^=|;]+=[^|]+(\|[^|]+)+", "KEY=V1|V2|... or K1=A;K2=B|K1=C;K2=D (two or more)"), unique=True
    ),
    "search_beyond": pattern(
        r"[^=|;]+=[^|;]+(;[^=|;]+=[^|;]+)*", "KEY=V or K1=A;K2=B (one value)", optional=True
    ),
    "note": lambda v: None if isinstance(v, str) and "\n" not in v else "one line of text",
    "progress": is_bool,
}


def check_arm_sets(cfg: StudyConfig) -> None:
    """Every ``arm_set`` entry names an arm of the study: one for another arm would change nothing."""
    for entry in cfg.arm_set:
        arm = entry.split(":", 1)[0]
        if arm not in cfg.arms:
            raise ConfigError(
                f"arm_set {entry!r}: the study has no arm {arm!r} (arms: {', '.join(cfg.arms)}), so it would "
                "change nothing; add the arm to arms or leave the entry out"
            )


def checks_of(cls: type) -> dict[str, Check]:
    """The value checks of a command's config class."""
    return next(checks for config, checks in COMMAND_CONFIGS.values() if config is cls)


# Each command's config and its value checks: ``build`` checks a config with its own, and ``section``
# checks a section for another command (``finetune:`` read by pretrain) with that command's.
COMMAND_CONFIGS: dict[str, tuple[type, dict[str, Check]]] = {
    "pretrain": (PretrainConfig, CHECKS),
    "finetune": (FinetuneConfig, CHECKS),
    "study": (StudyConfig, STUDY_CHECKS),
}
