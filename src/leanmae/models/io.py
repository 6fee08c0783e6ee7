"""Saving finished models as Hugging Face folders that also record leanmae's preprocessing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel
from transformers.utils import logging as hf_logging

from leanmae.models.card import write_card
from leanmae.training.checkpoint import atomic_dir

PREPROCESSOR_FILE = "preprocessor_config.json"
LEANMAE_FILE = "leanmae.json"


def save_model(model: PreTrainedModel, folder: Path, mean: list[float], std: list[float], extra: dict[str, Any]) -> Path:
    """``save_pretrained`` (config.json + model.safetensors) plus the image preprocessing, atomically.

    preprocessor_config.json is the ViTImageProcessor format, so ``AutoImageProcessor`` reproduces
    the normalisation; leanmae.json adds what leanmae itself needs (working size, class names...);
    README.md is the model card (``leanmae.models.card``).
    """
    size = model.config.image_size
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
        (tmp / PREPROCESSOR_FILE).write_text(json.dumps(processor, indent=2))
        (tmp / LEANMAE_FILE).write_text(json.dumps(extra, indent=2))
    write_card(Path(folder))  # refreshed by the command once the run's results exist
    return Path(folder)


def load_preprocessing(folder: Path) -> tuple[list[float], list[float], dict[str, Any]]:
    """(mean, std, leanmae extras) saved beside a model; ImageNet statistics if the folder has none."""
    folder = Path(folder)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    if (folder / PREPROCESSOR_FILE).exists():
        processor = json.loads((folder / PREPROCESSOR_FILE).read_text())
        mean, std = processor.get("image_mean", mean), processor.get("image_std", std)
    extra = json.loads((folder / LEANMAE_FILE).read_text()) if (folder / LEANMAE_FILE).exists() else {}
    return mean, std, extra
