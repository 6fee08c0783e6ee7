"""``leanmae evaluate``: score a trained classifier on a split's subset or on another lab's labelled
folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from leanmae.data.cache import load_or_build, spec_from_extras
from leanmae.data.sources import ImageRecord, labelled_folder_records
from leanmae.data.split import SPLITS, file_hash, read_manifest, verify
from leanmae.errors import DataError
from leanmae.evaluation.calibration import calibration, confidence_columns, softmax
from leanmae.evaluation.metrics import classification_report, write_predictions
from leanmae.evaluation.predict import (
    TrainedClassifier,
    cached_batches,
    predict_outputs,
    seen_in_training,
    trained_classifier,
)
from leanmae.evaluation.robustness import ROBUSTNESS_FILE, score_shifts
from leanmae.evaluation.shift_alarm import NO_REFERENCE, alarm_message, kept_accuracy, screen
from leanmae.files import write_json
from leanmae.reporting.plots import confusion_plot
from leanmae.reporting.runinfo import result_folder


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
    shifts: bool = False,
    shift_reference: str | Path | None = None,
) -> dict[str, Any]:
    """Score a trained classifier on one subset of a split manifest (``split``) or on any labelled
    image folder (``data``: one subfolder per class); writes metrics.json, predictions.csv and
    confusion_matrix.png to ``out``, as the test split of a run.

    A folder's class subfolders are matched to the model's classes by name, ignoring case; a
    subset of the classes is fine (macro metrics are then over the classes present), a folder
    naming no class of the model is an error. ``out`` (default RUN/evaluate-SUBSET or
    RUN/evaluate-FOLDERNAME) is never a run's own folder, and earlier results there are replaced
    only with ``overwrite``; it is locked while written (``runinfo.result_folder``). With ``shifts``
    it writes the robustness benchmark of those images instead (robustness.json, default folder
    RUN/robustness-SUBSET; see leanmae.evaluation.robustness). Scored images that the model was
    trained or validated on (matched by content with its run's manifest) are named in a warning and
    counted in metrics.json's ``seen_in_training``.
    """
    if (split is None) == (data is None):
        raise DataError(
            "evaluate: give either --split (a split manifest) or --data (a labelled image folder)"
        )
    if split is not None and subset not in SPLITS:
        raise DataError(f"--subset {subset!r}: expected one of {', '.join(SPLITS)}")
    if shift_reference and not shifts:
        raise DataError("--shift-reference: only used with --shifts")
    trained = trained_classifier(model, device)
    prefix = "robustness" if shifts else "evaluate"
    target = (
        Path(out)
        if out
        else trained.folder.parent
        / (f"{prefix}-{subset}" if split is not None else f"{prefix}-{Path(data).name}")
    )
    with result_folder(target, [ROBUSTNESS_FILE] if shifts else EVALUATE_OUTPUTS, overwrite):
        if split is not None:
            records, hashes = _split_records(split, subset, data_root, trained.labels)
        else:
            records = labelled_folder_records(Path(data), trained.labels)
            hashes = [file_hash(r.path) for r in records]
        seen = _training_images_among(trained, hashes)
        if shifts:
            return score_shifts(trained, records, target, shift_reference, batch_size)
        source = {"subset": subset, "split": str(split)} if split is not None else {"data": str(data)}
        return _score(trained, records, target, batch_size, {**source, "seen_in_training": seen})


def _training_images_among(trained: TrainedClassifier, hashes: list[str]) -> dict[str, Any] | None:
    """``seen_in_training`` of the scored images, said in one line when any was trained on (a warning, not
    a refusal: scoring a model on its training split can be meant, as a check of its fit)."""
    try:
        seen = seen_in_training(trained.folder, trained.extra, hashes)
    except DataError as err:
        print(f"note: cannot check whether these images include {trained.folder}'s training images: {err}")
        return None
    if seen and seen["train"] + seen["val"]:
        print(
            f"warning: {seen['train'] + seen['val']} of {len(hashes)} images scored were seen by "
            f"{trained.folder} in training ({seen['train']} trained on, {seen['val']} validation images it "
            f"was selected and calibrated on; from {seen['split']}, matched by content): its scores on "
            "them are optimistic"
        )
    return seen


def _score(
    trained: TrainedClassifier,
    records: list[ImageRecord],
    target: Path,
    batch_size: int,
    source: dict[str, Any],
) -> dict[str, Any]:
    """Score ``records`` and write metrics.json (with ``source``: what was scored), predictions.csv and
    confusion_matrix.png to ``target``; returns the classification report."""
    folder, classifier, extra, labels = trained.folder, trained.model, trained.extra, trained.labels
    name = source.get("subset", "external")
    where = f"{source['split']} ({name})" if "split" in source else source["data"]
    cache = load_or_build(records, spec_from_extras(extra, classifier.config.image_size))
    entries = np.arange(len(cache))
    y = np.array([labels.index(records[s].label) for s in cache.sources])
    logits, features = predict_outputs(
        classifier,
        cached_batches(cache.images, entries, batch_size),
        classifier.config.image_size,
        trained.mean,
        trained.std,
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
    extras = confidence_columns(
        logits, temperature, extra.get("refer_threshold", 0.0), extra.get("energy_threshold")
    )
    by_confidence = np.array([r == "refer" for r in extras["refer"]])
    extras, alarm = screen(extras, features, trained.shift)
    report["shift"] = alarm
    report["kept"] = kept_accuracy(
        probs.argmax(1) == y, by_confidence, np.array([r == "refer" for r in extras["refer"]])
    )
    if alarm is None:
        print(NO_REFERENCE.format(model=folder))
    elif alarm["alarm"]:
        print(alarm_message(where, alarm))
    if "data" in source:
        source = {"subset": name, **source, "classes_present": [labels[i] for i in present]}
    write_json(target / "metrics.json", {"model": str(folder), **source, name: report})
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
        f"{name}: {source.get('split') or source['data']}",
    )
    kept = report["kept"]["confidence_and_shift"]
    kept_text = f"accuracy {kept['accuracy_kept']:.4f}" if kept["kept"] else "every image referred"
    print(
        f"{name}: accuracy {report['accuracy']:.4f}, macro-F1 {report['macro_f1']:.4f} on {len(y)} "
        f"images of {len(present)} classes; {kept['kept']} kept (not referred), {kept_text}; wrote {target}"
    )
    return report


EVALUATE_OUTPUTS = ["metrics.json", "predictions.csv", "confusion_matrix.png"]


def _split_records(
    split: str | Path, subset: str, data_root: str | Path | None, labels: list[str]
) -> tuple[list[ImageRecord], list[str]]:
    """The images of one subset of a split manifest, verified against their checksums, and those sha256."""
    root, items = read_manifest(split, data_root)
    items = verify([it for it in items if it.split == subset], root)
    unknown = sorted({it.label for it in items} - set(labels))
    if unknown:
        raise DataError(f"{split}: classes {unknown} are not among the model's classes {labels}")
    return [ImageRecord(root / it.relpath, root, it.label) for it in items], [it.sha256 for it in items]
