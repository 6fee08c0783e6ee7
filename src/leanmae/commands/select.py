"""``leanmae select``: the images to label next, chosen without reading a label.

A lab that can pay for N more labels asks which N cells to send to its expert. ``select`` embeds the
unlabelled images once with a model's encoder (an MAE, or a fine-tuned classifier), keeps the embedding in
the decode cache's folder for the next round, and picks N of them with a strategy of
``leanmae.evaluation.selection``: typiclust for a first set, margin once a classifier exists, random as
the reference. It writes a CSV for the person who labels them: the images in the order chosen, each with
why it was chosen. A manifest's labels and a folder's class names are never read.
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from leanmae.config import DataConfig
from leanmae.data.cache import build_cache_for, default_cache_dir, spec_from_extras
from leanmae.data.pool import collect
from leanmae.errors import ConfigError, DataError
from leanmae.evaluation.calibration import softmax
from leanmae.evaluation.predict import cached_batches, predict_outputs, trained_classifier
from leanmae.evaluation.selection import STRATEGIES, Pick, margin_picks, random_picks, typiclust_picks
from leanmae.files import atomic_dir, weights_sha256, write_atomic
from leanmae.models.classifier import encoder_of
from leanmae.models.io import load_preprocessing, model_folder, model_kind
from leanmae.reporting.runinfo import check_output_file
from leanmae.safe_csv import csv_text, unescape
from leanmae.training.distributed import setup


def _labelled_paths(listing: str | Path | None) -> set[str]:
    """The resolved paths of a CSV's ``path`` column (an earlier ``select`` output, once labelled)."""
    if listing is None:
        return set()
    with open(listing, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if rows and "path" not in rows[0]:
        raise DataError(f"--labelled {listing}: needs a 'path' column, like the CSV select writes")
    return {str(Path(unescape(row["path"])).resolve()) for row in rows}


def _outputs(folder: Path, images: np.ndarray, batch_size: int, device: str | None) -> dict[str, np.ndarray]:
    """The pooled features of every cached image under the model in ``folder`` (an MAE's encoder, or the
    features a classifier's head sees), and a classifier's probabilities."""
    if model_kind(folder) == "classifier":
        trained = trained_classifier(folder, device)
        model, mean, std = trained.model, trained.mean, trained.std
    else:
        model = encoder_of(folder).to(setup(device or "auto").device)
        mean, std, _ = load_preprocessing(folder)
    batches = cached_batches(images, np.arange(len(images)), batch_size)
    logits, features = predict_outputs(model, batches, model.config.image_size, mean, std, len(images))
    return {"probabilities": softmax(logits), "features": features}


def _embedding(
    folder: Path, images: np.ndarray, key: str, batch_size: int, device: str | None
) -> dict[str, np.ndarray]:
    """The model's outputs on the cached images, computed once: kept under the cache folder, keyed by the
    model's weights and the cache's content, so the next round (or a rerun) reads them back."""
    name = hashlib.sha256(f"{weights_sha256(folder)} {key}".encode()).hexdigest()[:32]
    saved = default_cache_dir() / "embeddings" / name
    if not (saved / "outputs.safetensors").exists():
        outputs = _outputs(folder, images, batch_size, device)
        with atomic_dir(saved, replace=False) as tmp:
            save_file(outputs, tmp / "outputs.safetensors")
    return load_file(saved / "outputs.safetensors")


def select(
    model: str | Path,
    images: list[str] | str,
    n: int,
    out: str | Path,
    strategy: str = "typiclust",
    labelled: str | Path | None = None,
    seed: int = 0,
    device: str | None = None,
    batch_size: int = 256,
    progress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Choose ``n`` images of ``images`` to label next and write them to the CSV ``out``.

    Options:
        model: an MAE or classifier folder (a run or its ``model/``); margin needs a classifier.
        images: folders of images (searched recursively, class folders or not) or split manifests (their
            train images); no label or class name is read.
        n: how many images to choose.
        strategy: typiclust (default), margin or random (leanmae.evaluation.selection).
        labelled: a CSV with a ``path`` column of images already labelled (an earlier ``select`` output):
            they are never chosen again, and typiclust fills the clusters they leave uncovered.
        seed: for k-means and the random draw.
        device, batch_size, progress: as for predict.
        overwrite: replace an existing ``out``.

    Returns the path of the CSV: ``rank, path, strategy, reason``.
    """
    if strategy not in STRATEGIES:
        raise ConfigError(f"--strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")
    folder = model_folder(model)
    if strategy == "margin" and model_kind(folder) != "classifier":
        raise ConfigError(f"--strategy margin needs a fine-tuned classifier; {folder} is an MAE")
    check_output_file(Path(out), overwrite, inputs=[folder, labelled], result=True)
    records = collect([str(s) for s in ([images] if isinstance(images, (str, Path)) else images)])
    _, _, extra = load_preprocessing(folder)
    spec = spec_from_extras(extra, int(_config(folder)["image_size"]))
    cache = build_cache_for(records, spec, DataConfig(), progress, setup(device or "auto"))
    paths = [str(cache.records[s].path) for s in cache.sources]
    done = _labelled_paths(labelled)
    already = np.array([str(Path(p).resolve()) in done for p in paths], dtype=bool)
    outputs = _embedding(folder, cache.images, cache.key, batch_size, device)
    picks = _picks(strategy, outputs, already, n, seed, folder)
    rows = [[rank, paths[p.index], strategy, p.reason] for rank, p in enumerate(picks, start=1)]
    write_atomic(out, csv_text(["rank", "path", "strategy", "reason"], rows))
    print(
        f"wrote {out}: {len(picks)} of the {len(paths) - int(already.sum())} unlabelled images, to label "
        f"next ({strategy})"
    )
    return Path(out)


def _config(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())


def _picks(
    strategy: str, outputs: dict[str, np.ndarray], labelled: np.ndarray, n: int, seed: int, folder: Path
) -> list[Pick]:
    if strategy == "random":
        return random_picks(labelled, n, seed)
    if strategy == "typiclust":
        return typiclust_picks(outputs["features"], labelled, n, seed)
    names = _config(folder)["id2label"]
    return margin_picks(outputs["probabilities"], labelled, n, [names[str(i)] for i in range(len(names))])
