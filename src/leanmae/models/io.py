"""Model folders: saving them (Hugging Face format plus leanmae's preprocessing), and loading them only
when they are the kind of model a command needs and their weights cover the whole model."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file
from transformers import PreTrainedModel
from transformers.utils import logging as hf_logging

from leanmae.data.augment import IMAGENET_MEAN, IMAGENET_STD
from leanmae.data.cache import working_size
from leanmae.errors import CheckpointError
from leanmae.files import atomic_dir
from leanmae.models import image_processing_leanmae, modeling_leanmae_vit
from leanmae.models.card import write_card
from leanmae.models.modeling_leanmae_vit import AUTO_MAP, LeanViTConfig

PREPROCESSOR_FILE = "preprocessor_config.json"
LEANMAE_FILE = "leanmae.json"
MODELING_FILE = "modeling_leanmae_vit.py"
IMAGE_PROCESSING_FILE = "image_processing_leanmae.py"
SHIFT_FILE = "shift_reference.safetensors"  # the training images' feature statistics (shift alarm)


def save_model(
    model: PreTrainedModel,
    folder: Path,
    mean: list[float],
    std: list[float],
    extra: dict[str, Any],
    shift_reference: dict[str, np.ndarray] | None = None,
) -> Path:
    """``save_pretrained`` (config.json + model.safetensors) plus the image preprocessing, atomically.

    preprocessor_config.json holds the normalisation for ``AutoImageProcessor``: an MAE's in the
    ViTImageProcessor format, a classifier's for the image processor of image_processing_leanmae.py
    (``_classifier_processor``); leanmae.json adds what leanmae itself needs (working size, class
    names...); README.md is the model card (``leanmae.models.card``). A classifier also gets
    modeling_leanmae_vit.py and image_processing_leanmae.py, the code its auto_maps name, so that plain
    transformers loads it with ``trust_remote_code=True`` and predicts as leanmae does, and
    ``shift_reference``'s arrays (the training images' feature statistics,
    ``leanmae.evaluation.shift_alarm``) in SHIFT_FILE.
    """
    size = model.config.image_size
    classifier = getattr(model.config, "auto_map", None) == AUTO_MAP  # the code config.json points at
    if classifier:
        processor = _classifier_processor(size, mean, std, extra)
    else:
        processor = {
            "image_processor_type": "ViTImageProcessor",
            "do_resize": True,
            "size": {"height": size, "width": size},
            "resample": 2,
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": True,
            "image_mean": list(mean),
            "image_std": list(std),
        }
    hf_logging.disable_progress_bar()  # one small file; a bar per save only clutters the log
    with atomic_dir(folder) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if classifier:
            shutil.copyfile(modeling_leanmae_vit.__file__, tmp / MODELING_FILE)
            shutil.copyfile(image_processing_leanmae.__file__, tmp / IMAGE_PROCESSING_FILE)
        (tmp / PREPROCESSOR_FILE).write_text(json.dumps(processor, indent=2))
        (tmp / LEANMAE_FILE).write_text(json.dumps(extra, indent=2))
        if shift_reference is not None:
            save_file({k: np.ascontiguousarray(v) for k, v in shift_reference.items()}, tmp / SHIFT_FILE)
    write_card(Path(folder))  # refreshed by the command once the run's results exist
    return Path(folder)


def _classifier_processor(
    size: int, mean: list[float], std: list[float], extra: dict[str, Any]
) -> dict[str, Any]:
    """A classifier's preprocessor_config.json: ``LeanImageProcessor``'s settings, taken from the decode
    settings ``extra`` records for leanmae (``spec_extras``), so that both prepare an image alike.

    Why not ViTImageProcessor: it squashes a non-square image to the input square, while leanmae crops
    its centre, so ``pipeline`` gave other probabilities on every non-square image.
    """
    steps = {"a cell-centred crop": extra.get("cell_crop"), "stain normalisation": extra.get("stain_norm")}
    return {
        "image_processor_type": image_processing_leanmae.LeanImageProcessor.__name__,
        "auto_map": image_processing_leanmae.AUTO_MAP,
        "size": {"height": size, "width": size},
        "working_size": working_size(size, extra.get("cache_size")),
        "grey": bool(extra.get("grey")),
        "leanmae_only": [step for step, used in steps.items() if used],
        "image_mean": list(mean),
        "image_std": list(std),
    }


def load_preprocessing(folder: Path) -> tuple[list[float], list[float], dict[str, Any]]:
    """(mean, std, leanmae extras) saved beside a model; ImageNet statistics if the folder has none."""
    folder = Path(folder)
    mean, std = list(IMAGENET_MEAN), list(IMAGENET_STD)
    processor = _json_object(folder / PREPROCESSOR_FILE)
    mean, std = processor.get("image_mean", mean), processor.get("image_std", std)
    return mean, std, _json_object(folder / LEANMAE_FILE)


def load_shift_reference(folder: Path) -> dict[str, np.ndarray] | None:
    """The arrays of a classifier's shift reference (None for a model saved without one); a damaged file is
    a CheckpointError naming it."""
    file = Path(folder) / SHIFT_FILE
    if not file.exists():
        return None
    try:
        return load_file(file)
    except (OSError, SafetensorError) as err:
        raise CheckpointError(f"{file}: cannot be read ({err})") from None


def _json_object(file: Path) -> dict[str, Any]:
    """A JSON object file beside a model ({} if absent); a damaged one is a CheckpointError naming it."""
    if not file.exists():
        return {}
    try:
        value = json.loads(file.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{file}: not valid JSON ({err})") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{file}: expected a JSON object")
    return value


def check_model_folder(folder: Path) -> dict[str, Any]:
    """A save_pretrained folder must hold a readable config.json and safetensors weights (never a pickle);
    returns the config."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: checkpoint folder does not exist")
    missing = [name for name in ("config.json", "model.safetensors") if not (folder / name).exists()]
    if missing:
        pickles = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pt*"))
        extra = (
            f"; found {', '.join(pickles)}, which leanmae does not load (pickle files can run code)"
            if pickles
            else ""
        )
        raise CheckpointError(f"{folder}: not a usable model folder, missing {', '.join(missing)}{extra}")
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{folder / 'config.json'}: not valid JSON ({err})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{folder / 'config.json'}: expected a JSON object")
    _check_metadata(folder, config)
    return config


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _whole_or_null(value: Any) -> bool:
    return value is None or (isinstance(value, int) and not isinstance(value, bool) and value > 0)


def _stain_or_null(value: Any) -> bool:
    reference = value.get("reference") if isinstance(value, dict) else None
    return value is None or (isinstance(reference, list) and all(map(_number, reference)))


# What each value of leanmae.json and preprocessor_config.json must be (where present): outside it, every
# prediction is wrong without an error (a std of zeros or a NaN temperature makes the confidences NaN, a
# temperature of -1 inverts them). preprocessor_config.json's are per channel: one number, or one each.
EXTRA_RULES: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "temperature": ("a finite number above 0", lambda v: _number(v) and v > 0),
    "refer_threshold": ("a finite number (above 1: refer every image)", _number),
    "target_accuracy": ("a number above 0 and at most 1", lambda v: _number(v) and 0 < v <= 1),
    "energy_threshold": ("a finite number or null", lambda v: v is None or _number(v)),
    "cache_size": ("a whole number above 0 or null", _whole_or_null),
    "labels": ("a list of class names", lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v)),
    "stain_norm": ("null or a stain method with a reference of finite numbers", _stain_or_null),
}
PROCESSOR_RULES: dict[str, tuple[str, Callable[[float], bool]]] = {
    "image_mean": ("finite numbers", _number),
    "image_std": ("finite numbers above 0", lambda v: _number(v) and v > 0),
}


def _per_channel(value: Any, channels: int, check: Callable[[float], bool]) -> bool:
    """One number for every channel, or a list of ``channels`` numbers, each passing ``check``."""
    values = value if isinstance(value, list) and len(value) == channels else [value]
    return all(map(check, values))


def _check_metadata(folder: Path, config: dict[str, Any]) -> None:
    """A model folder's metadata holds usable numbers and agrees with itself, or a CheckpointError names the
    file and key.

    Why: an image_std of zeros gives NaN confidences, a non-positive temperature inverts or breaks
    them, and class names in leanmae.json that disagree with config.json's id2label name every
    prediction wrongly; each of them predicted without a word. Checked wherever a folder is read
    (``check_model_folder``), so no command uses one unchecked.
    """
    processor, extra = _json_object(folder / PREPROCESSOR_FILE), _json_object(folder / LEANMAE_FILE)
    channels = int(config.get("num_channels", 3))
    for key, (rule, check) in PROCESSOR_RULES.items():
        if key in processor and not _per_channel(processor[key], channels, check):
            raise CheckpointError(
                f"{folder / PREPROCESSOR_FILE}: {key} {processor[key]!r} must be {channels} {rule}, one per "
                "channel"
            )
    for key, (rule, check) in EXTRA_RULES.items():
        if key in extra and not check(extra[key]):
            raise CheckpointError(f"{folder / LEANMAE_FILE}: {key} {extra[key]!r} must be {rule}")
    id2label = config.get("id2label")
    if "labels" in extra and isinstance(id2label, dict):
        names = [id2label.get(str(i)) for i in range(len(id2label))]
        if names != extra["labels"]:
            raise CheckpointError(
                f"{folder}: leanmae.json's labels {extra['labels']} and config.json's id2label {names} "
                "disagree; the folder mixes the files of two models (copy the whole model folder)"
            )


KIND_NAMES = {
    "mae": "an MAE (masked autoencoder, from `leanmae pretrain`)",
    "classifier": "a classifier (from `leanmae finetune`)",
    "vit": "a ViT encoder without a classifier head",
}


def model_kind(folder: Path) -> str:
    """What a model folder holds: "mae", "classifier", "vit" (a bare encoder) or its config's model_type.

    leanmae.json says it for folders leanmae wrote; other transformers folders are told apart by
    config.json's model_type and architectures.
    """
    config = check_model_folder(folder)
    kind = load_preprocessing(folder)[2].get("kind")
    if kind:
        return str(kind)
    model_type = config.get("model_type")
    if model_type == "vit_mae":
        return "mae"
    if model_type == LeanViTConfig.model_type:
        return "classifier"
    if model_type == "vit":
        heads = [
            a
            for a in config.get("architectures") or []
            if a.endswith("ForImageClassification") or a == "LeanViTClassifier"
        ]
        return "classifier" if heads else "vit"
    return str(model_type or "unknown")


def require_kind(folder: Path, wanted: tuple[str, ...], needs: str) -> None:
    """Refuse a model folder of another kind, saying what it is and what the command needs."""
    kind = model_kind(folder)
    if kind not in wanted:
        raise CheckpointError(f"{folder}: is {KIND_NAMES.get(kind, f'a {kind!r} model')}, but {needs}")
    if kind == "classifier" and not (Path(folder) / LEANMAE_FILE).is_file():
        # An encoder from the Hub needs none (``finetune --init hf:FOLDER``); a classifier used as one does.
        raise CheckpointError(
            f"{Path(folder) / LEANMAE_FILE}: missing; a classifier's decoding, stain normalisation, "
            "calibration and refer threshold are saved there (copy the whole model folder)"
        )


def load_pretrained(cls: type[PreTrainedModel], folder: Path, **kwargs: Any) -> PreTrainedModel:
    """``cls.from_pretrained`` from safetensors, with every weight of the model found in the file.

    Why: transformers fills weights missing from a checkpoint (renamed keys, another model's file)
    with random values and only logs a warning, so a run would silently start from noise. Here
    that, a tensor of the wrong shape, a damaged file or an unreadable config is a CheckpointError.
    """
    check_model_folder(folder)
    try:
        model, info = cls.from_pretrained(folder, use_safetensors=True, output_loading_info=True, **kwargs)
    except (OSError, ValueError, RuntimeError, SafetensorError) as err:
        reason = " ".join(str(err).split())[:300]
        raise CheckpointError(f"{folder}: cannot be loaded as {cls.__name__} ({reason})") from None
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise CheckpointError(
            f"{folder}: model.safetensors lacks {len(missing)} of the model's weights (e.g. "
            f"{', '.join(missing[:3])}); it was saved from another model or its keys were renamed"
        )
    return model


def model_folder(path: str | Path) -> Path:
    """Accept a model folder or a run folder holding ``model/``."""
    path = Path(path)
    return path / "model" if (path / "model" / "config.json").exists() else path
