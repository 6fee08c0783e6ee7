"""``leanmae split``, ``leanmae evaluate`` and ``leanmae predict``: the data split and using a trained classifier (also on other labs' images)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from leanmae.commands.finetune import confidence_columns
from leanmae.commands.reconstruct import image_files, model_folder
from leanmae.data.cache import DecodeSpec, finish_image, load_or_build, spec_from_extras
from leanmae.data.decode import decode_rgb, pil_to_rgb
from leanmae.data.medmnist import is_npz, official_split
from leanmae.data.sources import ImageRecord, class_folders, scan
from leanmae.data.split import (
    SPLITS,
    counts,
    make_split,
    read_manifest,
    verify,
    write_manifest,
)
from leanmae.errors import BadImageError, DataError
from leanmae.evaluation.calibration import calibration, softmax
from leanmae.evaluation.metrics import classification_report, write_predictions
from leanmae.evaluation.predict import cached_batches, predict_logits
from leanmae.files import write_json
from leanmae.models.classifier import LeanViTClassifier, load_classifier
from leanmae.models.io import load_preprocessing
from leanmae.progress import bar_disabled
from leanmae.reporting.plots import confusion_plot
from leanmae.reporting.runinfo import check_output_file, check_result_folder
from leanmae.training.distributed import setup


def _trained_classifier(
    model: str | Path, device: str | None
) -> tuple[Path, LeanViTClassifier, list[float], list[float], dict[str, Any], list[str]]:
    """A fine-tuned classifier on its device, with its preprocessing, leanmae extras and class names."""
    ctx = setup(device or "auto")
    folder = model_folder(model)
    classifier = load_classifier(folder).to(ctx.device)
    mean, std, extra = load_preprocessing(folder)
    labels = [classifier.config.id2label[i] for i in range(classifier.config.num_labels)]
    return folder, classifier, mean, std, extra, labels


def split(
    data: str | Path,
    classes: str | list[str] | None = None,
    out: str | Path = "split.csv",
    ratios: str | tuple[float, float, float] = (0.7, 0.1, 0.2),
    seed: int = 0,
    overwrite: bool = False,
) -> dict[str, dict[str, int]]:
    """Make the study's fixed split manifest of ``data``: a folder of class subfolders (stratified
    train/val/test by ``ratios`` and ``seed``) or a MedMNIST ``.npz`` file (its official split kept;
    ``ratios`` and ``seed`` do not apply). ``classes`` keeps a subset (required for a folder).
    An existing ``out`` is replaced only with ``overwrite``: a study's runs are tied to its split.
    """
    names = (
        ([c.strip() for c in classes.split(",") if c.strip()] if isinstance(classes, str) else list(classes))
        if classes
        else []
    )
    check_output_file(Path(out), overwrite)
    if is_npz(data):
        root, items = official_split(data, names or None)
        write_manifest(items, out, root)
    else:
        if not names:
            raise DataError(f"{data}: pass --classes (comma-separated class folders) for a folder")
        try:
            parts = (
                tuple(float(r) for r in ratios.split(","))
                if isinstance(ratios, str)
                else tuple(float(r) for r in ratios)
            )
        except ValueError:
            parts = ()
        if len(parts) != 3:
            raise DataError(f"--ratios {ratios!r}: expected three numbers train,val,test such as 0.7,0.1,0.2")
        items = make_split(Path(data), names, parts, seed)  # type: ignore[arg-type]
        write_manifest(items, out, data)
    table = counts(items)
    print(f"wrote {out}: " + "; ".join(f"{s} {sum(table[s].values())}" for s in SPLITS))
    for s in SPLITS:
        print(f"  {s:5s} " + ", ".join(f"{k} {v}" for k, v in table[s].items()))
    return table


def evaluate(
    model: str | Path,
    split: str | Path | None = None,
    subset: str = "test",
    out: str | Path | None = None,
    data_root: str | Path | None = None,
    batch_size: int = 256,
    device: str | None = None,
    overwrite: bool = False,
    data: str | Path | None = None,
) -> dict[str, Any]:
    """Score a trained classifier on one subset of a split manifest (``split``) or on any labelled
    image folder (``data``: one subfolder per class); writes metrics.json, predictions.csv and
    confusion_matrix.png to ``out``, as the test split of a run.

    A folder's class subfolders are matched to the model's classes by name, ignoring case; a
    subset of the classes is fine (macro metrics are then over the classes present), a folder
    naming no class of the model is an error. ``out`` (default RUN/evaluate-SUBSET or
    RUN/evaluate-FOLDERNAME) is never a run's own folder, and earlier results there are replaced
    only with ``overwrite``.
    """
    if (split is None) == (data is None):
        raise DataError(
            "evaluate: give either --split (a split manifest) or --data (a labelled image folder)"
        )
    if split is not None and subset not in SPLITS:
        raise DataError(f"--subset {subset!r}: expected one of {', '.join(SPLITS)}")
    folder, classifier, mean, std, extra, labels = _trained_classifier(model, device)
    name = subset if split is not None else "external"
    target = (
        Path(out)
        if out
        else folder.parent / (f"evaluate-{subset}" if split is not None else f"evaluate-{Path(data).name}")
    )
    check_result_folder(target, EVALUATE_OUTPUTS, overwrite)
    records = (
        _split_records(split, subset, data_root, labels)
        if split is not None
        else _folder_records(Path(data), labels)
    )
    cache = load_or_build(records, spec_from_extras(extra, classifier.config.image_size))
    entries = np.arange(len(cache))
    y = np.array([labels.index(records[s].label) for s in cache.sources])
    logits = predict_logits(
        classifier,
        cached_batches(cache.images, entries, batch_size),
        classifier.config.image_size,
        mean,
        std,
        total=len(entries),
        progress=True,
    )
    probs = softmax(logits)
    present = sorted(set(y.tolist()))
    report = classification_report(y, probs, labels, scored=present)
    temperature = extra.get("temperature", 1.0)
    report["calibration"] = {
        "temperature": temperature,
        "before": calibration(probs, y),
        "after": calibration(softmax(logits, temperature), y),
    }
    source = (
        {"subset": subset, "split": str(split)}
        if split is not None
        else {"subset": name, "data": str(data), "classes_present": [labels[i] for i in present]}
    )
    write_json(target / "metrics.json", {"model": str(folder), **source, name: report})
    extras = confidence_columns(
        logits, temperature, extra.get("refer_threshold", 0.0), extra.get("energy_threshold")
    )
    write_predictions(
        target / "predictions.csv",
        [records[s].relpath for s in cache.sources],
        probs,
        labels,
        y,
        extra=extras,
    )
    confusion_plot(
        report["confusion_matrix"]["rows_true_cols_predicted"],
        labels,
        target / "confusion_matrix.png",
        f"{name}: {split or data}",
    )
    print(
        f"{name}: accuracy {report['accuracy']:.4f}, macro-F1 {report['macro_f1']:.4f} on {len(y)} images of {len(present)} classes; wrote {target}"
    )
    return report


EVALUATE_OUTPUTS = ["metrics.json", "predictions.csv", "confusion_matrix.png"]


def _split_records(
    split: str | Path, subset: str, data_root: str | Path | None, labels: list[str]
) -> list[ImageRecord]:
    """The images of one subset of a split manifest, verified against their checksums."""
    root, items = read_manifest(split, data_root)
    items = [it for it in items if it.split == subset]
    verify(items, root)
    unknown = sorted({it.label for it in items} - set(labels))
    if unknown:
        raise DataError(f"{split}: classes {unknown} are not among the model's classes {labels}")
    return [ImageRecord(root / it.relpath, root, it.label) for it in items]


def _folder_records(root: Path, labels: list[str]) -> list[ImageRecord]:
    """The images of a labelled folder, each labelled with the model's class its subfolder names (case-insensitive)."""
    if not root.is_dir():
        raise DataError(f"--data {root}: not a folder")
    by_name = {label.lower(): label for label in labels}
    folders = class_folders(root)
    if not folders:
        raise DataError(f"--data {root}: expected one subfolder per class (of {', '.join(labels)})")
    unknown = [f for f in folders if f.lower() not in by_name]
    if unknown:
        raise DataError(
            f"--data {root}: folder(s) {', '.join(unknown)} match none of the model's classes ({', '.join(labels)})"
        )
    return [replace(rec, label=by_name[rec.label.lower()]) for rec in scan(root, folders, labelled=True)]


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
    """Stream images decoded as in training (``finish_image``) in batches, so that thousands of files never sit in memory at once."""
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
    """Inputs as a flat list (folders searched recursively) and their names (paths, or ``image N`` for in-memory images)."""
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
    """One dict per image: the CSV's columns with numbers as floats, flags as booleans, None where a file was unreadable."""
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
        row["error"] = errors.get(i, "")
        row.update({f"p_{label}": None if blank else float(p) for label, p in zip(labels, probs[i])})
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
        overwrite: replace an existing ``out`` (refused otherwise).

    Each row: ``path``, ``predicted_label``, ``confidence`` (softmax maximum),
    ``confidence_calibrated`` (temperature fitted on validation), ``refer`` (calibrated confidence under
    the threshold chosen for the target accuracy), ``energy`` and ``ood`` (under the out-of-distribution
    threshold of models trained with ``--ood``), ``error`` and ``p_<class>`` for every class.
    Returns the rows (``out=None``) or the path of the CSV written.
    """
    if batch_size < 1:
        raise DataError(f"--batch-size {batch_size}: must be at least 1")
    if out is not None:
        check_output_file(Path(out), overwrite)
    folder, classifier, mean, std, extra, labels = _trained_classifier(model, device)
    items, names = _expand(inputs)
    errors: dict[int, str] = {}
    spec = spec_from_extras(extra, classifier.config.image_size)
    with tqdm(total=len(items), desc="classifying", unit="img", disable=bar_disabled(progress)) as bar:

        def counted() -> Iterator[np.ndarray]:
            for batch in _decoded_batches(items, spec, batch_size, skip_bad, errors):
                bar.update(len(batch))
                yield batch

        logits = predict_logits(classifier, counted(), classifier.config.image_size, mean, std)
    probs = softmax(logits)
    columns = confidence_columns(
        logits,
        extra.get("temperature", 1.0),
        extra.get("refer_threshold", 0.0),
        extra.get("energy_threshold"),
    )
    for values in columns.values():  # unreadable files get no prediction, only their error
        for i in errors:
            values[i] = ""
    if out is None:
        return _rows(names, probs, labels, columns, errors)
    columns["error"] = [errors.get(i, "") for i in range(len(items))]
    write_predictions(Path(out), names, probs, labels, extra=columns, blank_rows=set(errors))
    referred = sum(1 for flag in columns["refer"] if flag)
    flagged = sum(1 for flag in columns["ood"] if flag)
    print(
        f"wrote {out}: {len(items)} images, {referred} to refer to an expert, {flagged} flagged out-of-distribution, {len(errors)} unreadable"
    )
    return Path(out)
