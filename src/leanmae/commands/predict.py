"""``leanmae predict``: classify new images (files, folders, PIL images, arrays) with a trained model.

Images are decoded exactly as the model's training cache decoded them (``finish_image`` with the
model's stored decode settings), streamed in batches so thousands of files never sit in memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from leanmae.data.cache import DecodeSpec, finish_image, spec_from_extras
from leanmae.data.decode import decode_rgb, pil_to_rgb
from leanmae.data.sources import image_files
from leanmae.errors import BadImageError, DataError
from leanmae.evaluation.calibration import confidence_columns, softmax
from leanmae.evaluation.metrics import write_predictions
from leanmae.evaluation.predict import predict_outputs, trained_classifier
from leanmae.evaluation.shift_alarm import NO_REFERENCE, alarm_message, screen
from leanmae.models.io import model_folder
from leanmae.progress import bar_disabled
from leanmae.reporting.runinfo import check_output_file


def _load(item: Any) -> np.ndarray:
    """One input as RGB uint8: a file (decoded as the cache does), a PIL image or an (H, W, 3) uint8 array."""
    if isinstance(item, Image.Image):
        return pil_to_rgb(item)
    if isinstance(item, np.ndarray):
        if item.ndim != 3 or item.shape[2] != 3 or item.dtype != np.uint8:
            raise DataError(
                f"an array image must be (height, width, 3) uint8 RGB, got {item.shape} {item.dtype}"
            )
        return item
    return decode_rgb(item)


def _decoded_batches(
    items: list[Any], spec: DecodeSpec, batch_size: int, skip_bad: bool, errors: dict[int, str]
) -> Iterator[np.ndarray]:
    """Stream images decoded as in training (``finish_image``) in batches, so that thousands of files never
    sit in memory at once."""
    batch: list[np.ndarray] = []
    for i, item in enumerate(items):
        try:
            batch.append(finish_image(_load(item), spec))
        except BadImageError as err:
            if not skip_bad:
                raise BadImageError(
                    err.path, err.reason + " (pass --skip-bad to list it as an error row instead)"
                ) from err
            errors[i] = err.reason
            batch.append(np.zeros((spec.size, spec.size, 3), dtype=np.uint8))
        if len(batch) == batch_size:
            yield np.stack(batch)
            batch = []
    if batch:
        yield np.stack(batch)


def _expand(inputs: Any) -> tuple[list[Any], list[str]]:
    """Inputs as a flat list (folders searched recursively) and their names (paths, or ``image N`` for
    in-memory images)."""
    single = isinstance(inputs, (str, Path, Image.Image, np.ndarray))
    items, names = [], []
    for i, item in enumerate([inputs] if single else list(inputs)):
        if isinstance(item, (str, Path)):
            files = image_files([item])
            items.extend(files)
            names.extend(map(str, files))
        else:
            items.append(item)
            names.append(f"image {i}")
    if not items:
        raise DataError("predict: no images given")
    return items, names


def _rows(
    names: list[str],
    probs: np.ndarray,
    labels: list[str],
    columns: dict[str, list[Any]],
    errors: dict[int, str],
) -> list[dict[str, Any]]:
    """One dict per image: the CSV's columns with numbers as floats, flags as booleans, None where a file was
    unreadable."""
    rows = []
    for i, name in enumerate(names):
        blank = i in errors
        row: dict[str, Any] = {
            "path": name,
            "predicted_label": None if blank else labels[int(probs[i].argmax())],
            "confidence": None if blank else float(probs[i].max()),
        }
        row["confidence_calibrated"] = float(columns["confidence_calibrated"][i]) if not blank else None
        row["refer"] = columns["refer"][i] == "refer"
        row["energy"] = float(columns["energy"][i]) if not blank else None
        row["ood"] = columns["ood"][i] == "ood"
        if "shift_score" in columns:
            row["shift_score"] = float(columns["shift_score"][i]) if not blank else None
            row["unlike_training"] = columns["unlike_training"][i] == "unlike"
        row["error"] = errors.get(i, "")
        row.update(
            {f"p_{label}": None if blank else float(p) for label, p in zip(labels, probs[i], strict=True)}
        )
        rows.append(row)
    return rows


def predict(
    model: str | Path,
    inputs: Any,
    out: str | Path | None = None,
    batch_size: int = 256,
    skip_bad: bool = False,
    device: str | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> list[dict[str, Any]] | Path:
    """Classify images with the model's own preprocessing.

    Options:
        model: classifier folder (a fine-tuning run or its ``model/``).
        inputs: one or a list of image files, folders (searched recursively), PIL images or
            (H, W, 3) uint8 RGB arrays; in-memory images are named ``image N`` in the rows.
        out: CSV file to write; None (the default in Python) returns the rows instead and writes
            nothing. The CLI writes ``predictions.csv`` by default.
        batch_size: images per forward pass (default 256).
        skip_bad: unreadable files become rows with only an ``error`` instead of stopping.
        device: ``auto`` (default), ``cpu``, ``cuda`` or ``cuda:N``.
        progress: a progress bar (on a terminal only).
        overwrite: replace an existing ``out`` (refused otherwise); never one of the images, a file
            of the model, or a file in a leanmae run, study, model or result folder.

    Each row: ``path``, ``predicted_label``, ``confidence`` (softmax maximum),
    ``confidence_calibrated`` (temperature fitted on validation), ``refer`` (calibrated confidence under
    the threshold chosen for the target accuracy, or the image unlike the training images), ``energy``
    and ``ood`` (under the out-of-distribution threshold of models trained with ``--ood``),
    ``shift_score`` and ``unlike_training`` (the image's distance from the training images' features
    above the threshold calibrated on held-out images of the training lab, or the whole set so far from
    them that the shift alarm fired: leanmae.evaluation.shift_alarm), ``error`` and ``p_<class>``.
    Returns the rows (``out=None``) or the path of the CSV written.
    """
    if batch_size < 1:
        raise DataError(f"--batch-size {batch_size}: must be at least 1")
    items, names = _expand(inputs)
    if out is not None:
        files = [item for item in items if isinstance(item, Path)]
        check_output_file(Path(out), overwrite, inputs=[model_folder(model), *files], result=True)
    trained = trained_classifier(model, device)
    classifier, extra = trained.model, trained.extra
    errors: dict[int, str] = {}
    spec = spec_from_extras(extra, classifier.config.image_size)
    with tqdm(total=len(items), desc="classifying", unit="img", disable=bar_disabled(progress)) as bar:

        def counted() -> Iterator[np.ndarray]:
            for batch in _decoded_batches(items, spec, batch_size, skip_bad, errors):
                bar.update(len(batch))
                yield batch

        logits, features = predict_outputs(
            classifier, counted(), classifier.config.image_size, trained.mean, trained.std
        )
    probs = softmax(logits)
    columns = confidence_columns(
        logits,
        extra.get("temperature", 1.0),
        extra.get("refer_threshold", 0.0),
        extra.get("energy_threshold"),
    )
    readable = np.setdiff1d(np.arange(len(items)), list(errors))
    screened, alarm = screen(
        {k: [v[i] for i in readable] for k, v in columns.items()}, features[readable], trained.shift
    )
    columns = {k: [""] * len(items) for k in screened}
    for k, values in screened.items():
        for i, value in zip(readable, values, strict=True):
            columns[k][i] = value
    if alarm is None:
        print(NO_REFERENCE.format(model=trained.folder))
    elif alarm["alarm"]:
        print(alarm_message(f"{len(readable)} images given to predict", alarm))
    for values in columns.values():  # unreadable files get no prediction, only their error
        for i in errors:
            values[i] = ""
    if out is None:
        return _rows(names, probs, trained.labels, columns, errors)
    columns["error"] = [errors.get(i, "") for i in range(len(items))]
    write_predictions(Path(out), names, probs, trained.labels, extra=columns, blank_rows=set(errors))
    referred = sum(1 for flag in columns["refer"] if flag)
    flagged = sum(1 for flag in columns["ood"] if flag)
    print(
        f"wrote {out}: {len(items)} images, {referred} to refer to an expert, {flagged} flagged "
        f"out-of-distribution, {len(errors)} unreadable"
    )
    return Path(out)
