"""``leanmae split``, ``leanmae evaluate`` and ``leanmae predict``: the data split and using a trained classifier."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from leanmae.commands.finetune import confidence_columns
from leanmae.commands.reconstruct import image_files, model_folder
from leanmae.data.cache import DecodeSpec, load_or_build
from leanmae.data.decode import BadImageError, decode_rgb, square_resize
from leanmae.data.sources import DataError, ImageRecord
from leanmae.data.split import SPLITS, counts, make_split, read_manifest, verify, write_manifest
from leanmae.evaluation.metrics import classification_report, write_predictions
from leanmae.evaluation.calibration import calibration, softmax
from leanmae.evaluation.predict import cached_batches, predict_logits
from leanmae.models.classifier import LeanViTClassifier, load_classifier
from leanmae.models.io import load_preprocessing
from leanmae.reporting.runinfo import check_output_file, check_result_folder
from leanmae.training.checkpoint import write_json
from leanmae.training.distributed import setup


def _trained_classifier(model: str | Path, device: str | None) -> tuple[Path, LeanViTClassifier, list[float], list[float], dict[str, Any], list[str]]:
    """A fine-tuned classifier on its device, with its preprocessing, leanmae extras and class names."""
    ctx = setup(device or "auto")
    folder = model_folder(model)
    classifier = load_classifier(folder).to(ctx.device)
    mean, std, extra = load_preprocessing(folder)
    labels = [classifier.config.id2label[i] for i in range(classifier.config.num_labels)]
    return folder, classifier, mean, std, extra, labels


def split(data: str | Path, classes: str | list[str], out: str | Path, ratios: str | tuple[float, float, float] = (0.7, 0.1, 0.2), seed: int = 0, overwrite: bool = False) -> dict[str, dict[str, int]]:
    """Make the study's fixed stratified train/val/test split of the class folders ``classes`` under ``data``.

    An existing ``out`` is replaced only with ``overwrite``: a study's runs are tied to its split.
    """
    names = [c.strip() for c in classes.split(",")] if isinstance(classes, str) else list(classes)
    try:
        parts = tuple(float(r) for r in ratios.split(",")) if isinstance(ratios, str) else tuple(float(r) for r in ratios)
    except ValueError:
        parts = ()
    if len(parts) != 3:
        raise DataError(f"--ratios {ratios!r}: expected three numbers train,val,test such as 0.7,0.1,0.2")
    check_output_file(Path(out), overwrite)
    items = make_split(Path(data), names, parts, seed)  # type: ignore[arg-type]
    write_manifest(items, out, data)
    table = counts(items)
    print(f"wrote {out}: " + "; ".join(f"{s} {sum(table[s].values())}" for s in SPLITS))
    for s in SPLITS:
        print(f"  {s:5s} " + ", ".join(f"{k} {v}" for k, v in table[s].items()))
    return table


def evaluate(model: str | Path, split: str | Path, subset: str = "test", out: str | Path | None = None, data_root: str | Path | None = None, batch_size: int = 256, device: str | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Re-score a trained classifier on one subset of a split manifest; writes metrics.json and predictions.csv to ``out``.

    ``out`` (default RUN/evaluate-SUBSET) is never a run's own folder, and earlier results there
    are replaced only with ``overwrite``.
    """
    if subset not in SPLITS:
        raise DataError(f"--subset {subset!r}: expected one of {', '.join(SPLITS)}")
    folder, classifier, mean, std, extra, labels = _trained_classifier(model, device)
    target = Path(out) if out else folder.parent / f"evaluate-{subset}"
    check_result_folder(target, ["metrics.json", "predictions.csv"], overwrite)
    root, items = read_manifest(split, data_root)
    items = [it for it in items if it.split == subset]
    verify(items, root)
    unknown = sorted({it.label for it in items} - set(labels))
    if unknown:
        raise DataError(f"{split}: classes {unknown} are not among the model's classes {labels}")
    cache = load_or_build([ImageRecord(root / it.relpath, root, it.label) for it in items], DecodeSpec(size=extra.get("cache_size", classifier.config.image_size)))
    entries = np.arange(len(cache))
    y = np.array([labels.index(items[s].label) for s in cache.sources])
    logits = predict_logits(classifier, cached_batches(cache.images, entries, batch_size), classifier.config.image_size, mean, std, total=len(entries), progress=True)
    probs = softmax(logits)
    report = classification_report(y, probs, labels)
    temperature = extra.get("temperature", 1.0)
    report["calibration"] = {"temperature": temperature, "before": calibration(probs, y), "after": calibration(softmax(logits, temperature), y)}
    write_json(target / "metrics.json", {"model": str(folder), "subset": subset, subset: report})
    extras = confidence_columns(logits, temperature, extra.get("refer_threshold", 0.0), extra.get("energy_threshold"))
    write_predictions(target / "predictions.csv", [items[s].relpath for s in cache.sources], probs, labels, y, extra=extras)
    print(f"{subset}: accuracy {report['accuracy']:.4f}, macro-F1 {report['macro_f1']:.4f} on {len(y)} images; wrote {target}")
    return report


def _decoded_batches(files: list[Path], size: int, batch_size: int, skip_bad: bool, errors: dict[int, str]) -> Iterator[np.ndarray]:
    """Stream decoded images in batches so that thousands of files never sit in memory at once."""
    batch: list[np.ndarray] = []
    for i, file in enumerate(files):
        try:
            batch.append(square_resize(decode_rgb(file), size))
        except BadImageError as err:
            if not skip_bad:
                raise BadImageError(err.path, err.reason + " (pass --skip-bad to list it as an error row instead)") from err
            errors[i] = err.reason
            batch.append(np.zeros((size, size, 3), dtype=np.uint8))
        if len(batch) == batch_size:
            yield np.stack(batch)
            batch = []
    if batch:
        yield np.stack(batch)


def predict(model: str | Path, inputs: list[str | Path] | str, out: str | Path = "predictions.csv", batch_size: int = 256, skip_bad: bool = False, device: str | None = None, overwrite: bool = False) -> Path:
    """Classify new images (files or folders) with the model's own preprocessing; writes ``out`` (CSV).

    Columns: predicted label, confidence, calibrated confidence (temperature fitted on validation),
    ``refer`` where the calibrated confidence is under the threshold chosen for the target accuracy,
    energy score and ``ood`` where it is under the out-of-distribution threshold (models trained
    with ``--ood``), an error for unreadable files (with ``skip_bad``), and every class's probability.
    An existing ``out`` is replaced only with ``overwrite``.
    """
    if batch_size < 1:
        raise DataError(f"--batch-size {batch_size}: must be at least 1")
    check_output_file(Path(out), overwrite)
    folder, classifier, mean, std, extra, labels = _trained_classifier(model, device)
    files = image_files([inputs] if isinstance(inputs, (str, Path)) else list(inputs))
    errors: dict[int, str] = {}
    size = extra.get("cache_size", classifier.config.image_size)
    with tqdm(total=len(files), desc="classifying", unit="img") as bar:

        def counted() -> Iterator[np.ndarray]:
            for batch in _decoded_batches(files, size, batch_size, skip_bad, errors):
                bar.update(len(batch))
                yield batch

        logits = predict_logits(classifier, counted(), classifier.config.image_size, mean, std)
    columns = confidence_columns(logits, extra.get("temperature", 1.0), extra.get("refer_threshold", 0.0), extra.get("energy_threshold"))
    for values in columns.values():  # unreadable files get no prediction, only their error
        for i in errors:
            values[i] = ""
    columns["error"] = [errors.get(i, "") for i in range(len(files))]
    write_predictions(Path(out), [str(f) for f in files], softmax(logits), labels, extra=columns, blank_rows=set(errors))
    referred = sum(1 for flag in columns["refer"] if flag)
    flagged = sum(1 for flag in columns["ood"] if flag)
    print(f"wrote {out}: {len(files)} images, {referred} to refer to an expert, {flagged} flagged out-of-distribution, {len(errors)} unreadable")
    return Path(out)
