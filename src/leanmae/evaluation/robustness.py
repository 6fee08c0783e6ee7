"""The robustness benchmark: a trained classifier's macro-F1 on its test images under controlled shifts.

Why: a clean test score says nothing about the next lab's stain batch or framing (issue 16). Each
finished run gets ``robustness.json``: macro-F1 and accuracy on the test split unshifted and under
every shift of ``leanmae.evaluation.shifts``, the drop against the unshifted score, and the
scores on any external labelled folders (``--external``, scored as ``evaluate --data`` scores them).

The shifted images are the same for every model: each (shift, decoding) pair is built once into
the cache (``$LEANMAE_CACHE/shifted/``) from a decode of the test images at ``max zoom x`` the
model's working size (so that the 3x zoom shows real detail, not an enlarged 80 px image), and then
goes through the model's own decoding (``finish_image``: its cell-centred crop and stain
normalisation), exactly as an image from another lab would in ``predict``. Scoring a run is
then batched inference only. The file is written atomically and is not recomputed while the
benchmark's settings (shifts, colour reference, external sets) stay the same.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from leanmae.config import run_folders
from leanmae.data.cache import (
    DecodeSpec,
    ImageCache,
    default_cache_dir,
    finish_image,
    load_or_build,
    spec_extras,
    spec_from_extras,
    stain_spec,
)
from leanmae.data.pool import collect
from leanmae.data.sources import ImageRecord, labelled_folder_records
from leanmae.data.split import read_manifest
from leanmae.errors import DataError
from leanmae.evaluation.calibration import softmax
from leanmae.evaluation.metrics import classification_report
from leanmae.evaluation.predict import TrainedClassifier, cached_batches, predict_outputs, trained_classifier
from leanmae.evaluation.shift_alarm import folder_alarm
from leanmae.evaluation.shifts import (
    BUILTIN_REFERENCE_NAME,
    LC25000_LUNG_REFERENCE,
    SHIFT_SEED,
    SHIFTS,
    ZOOMS,
    Shift,
    apply_shift,
    image_keys,
)
from leanmae.files import read_json, run_info, write_json
from leanmae.progress import bar_disabled

ROBUSTNESS_FILE = "robustness.json"
FORMAT = 1  # bump when the shifted images or the scores change meaning: every file is then recomputed
_BATCH = 64  # images shifted and finished at once


@dataclass(frozen=True)
class Benchmark:
    """What a robustness file measures: the shifts, the colour transfer's reference, external folders."""

    reference: tuple[float, ...] = LC25000_LUNG_REFERENCE
    reference_name: str = BUILTIN_REFERENCE_NAME
    external: tuple[str, ...] = ()
    shifts: tuple[Shift, ...] = field(default=SHIFTS)

    def settings(self) -> dict[str, Any]:
        """The JSON a robustness file records; a file with other settings is recomputed."""
        return {
            "format": FORMAT,
            "shifts": [s.name for s in self.shifts],
            "hed_seed": SHIFT_SEED,
            "colour_reference": {"source": self.reference_name, "lab": [round(v, 4) for v in self.reference]},
            "external": list(self.external),
        }


def benchmark(
    shift_reference: str | Path | None = None, external: list[str] | tuple[str, ...] = ()
) -> Benchmark:
    """The benchmark with the colour transfer aimed at ``shift_reference`` (a folder of images, up to
    64 of them averaged) or at the built-in LC25000 lung reference; a bad folder is a one-line error."""
    for folder in external:
        if not Path(folder).is_dir():
            raise DataError(f"--external {folder}: not a folder")
    if not shift_reference:
        return Benchmark(external=tuple(map(str, external)))
    if not Path(shift_reference).is_dir():
        raise DataError(f"--shift-reference {shift_reference}: not a folder")
    records = collect([str(shift_reference)])
    reference = stain_spec(DecodeSpec(size=240), "reinhard", records).stain_reference
    assert reference is not None
    return Benchmark(reference, str(shift_reference), tuple(map(str, external)))


def check_external(folders: list[str] | tuple[str, ...], labels: list[str]) -> None:
    """Every external folder is a labelled folder of (some of) ``labels``: checked before a study trains."""
    for folder in folders:
        labelled_folder_records(Path(folder), labels, "--external")


class ShiftedSet:
    """A labelled image set under each shift, decoded as each model decodes; built once, cached on disk."""

    def __init__(
        self,
        records: list[ImageRecord],
        bench: Benchmark,
        cache_dir: Path | str | None = None,
        progress: bool = True,
    ) -> None:
        if not records:
            raise DataError("the robustness benchmark needs at least one labelled image")
        self.records = records
        self.bench = bench
        self.cache_dir = Path(cache_dir or default_cache_dir())
        self.progress = progress
        self.keys = image_keys([r.relpath for r in records])
        self._sources: dict[int, ImageCache] = {}

    def labels(self) -> list[str]:
        return [r.label or "" for r in self.records]

    def _source(self, size: int) -> ImageCache:
        """The images square-resized to ``size`` (the ordinary decode cache, one entry per file)."""
        if size not in self._sources:
            self._sources[size] = load_or_build(
                self.records, DecodeSpec(size=size), self.cache_dir, progress=self.progress
            )
        return self._sources[size]

    def images(self, shift: Shift, spec: DecodeSpec) -> np.ndarray:
        """(N, S, S, 3) uint8: every image under ``shift``, then decoded per ``spec`` (records' order)."""
        source = self._source(math.ceil(spec.size * max(ZOOMS)))
        reference = list(self.bench.reference) if shift.kind == "colour" else None
        key = hashlib.sha256(
            json.dumps([FORMAT, source.key, shift.name, SHIFT_SEED, reference, spec_extras(spec)]).encode()
        ).hexdigest()
        path = self.cache_dir / "shifted" / f"{key[:24]}.npy"
        if not path.exists():
            self._build(source, shift, spec, path)
        return np.load(path, mmap_mode="r")

    def _build(self, source: ImageCache, shift: Shift, spec: DecodeSpec, path: Path) -> None:
        """Write the shifted, decoded images to ``path`` through a temporary file and one rename."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.npy")
        count = len(source)
        out = np.lib.format.open_memmap(
            tmp, mode="w+", dtype=np.uint8, shape=(count, spec.size, spec.size, 3)
        )
        try:
            for start in tqdm(
                range(0, count, _BATCH),
                desc=f"shifting test images ({shift.name})",
                disable=bar_disabled(self.progress),
            ):
                stop = min(start + _BATCH, count)
                shifted = apply_shift(
                    np.array(source.images[start:stop]),  # a writable copy of the memmap's rows
                    shift,
                    self.keys[source.sources[start:stop]],
                    self.bench.reference,
                )
                out[start:stop] = np.stack([finish_image(image, spec) for image in shifted])
            out.flush()
            del out
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def scores(
    trained: TrainedClassifier, images: np.ndarray, labels: list[str], batch_size: int
) -> dict[str, Any]:
    """Macro-F1 and accuracy of ``trained`` on decoded images, over the classes present (as --data), and the
    shift alarm on them (None for a model without a shift reference)."""
    model = trained.model
    y = np.array([trained.labels.index(label) for label in labels])
    logits, features = predict_outputs(
        model,
        cached_batches(images, np.arange(len(images)), batch_size),
        model.config.image_size,
        trained.mean,
        trained.std,
    )
    present = sorted(set(y.tolist()))
    report = classification_report(y, softmax(logits), trained.labels, scored=present)
    reference = trained.shift
    return {
        "macro_f1": report["macro_f1"],
        "accuracy": report["accuracy"],
        "images": len(y),
        "classes_present": [trained.labels[i] for i in present],
        "shift_alarm": None if reference is None else folder_alarm(reference.scores(features), reference),
    }


def measure(
    trained: TrainedClassifier, shifted: ShiftedSet, batch_size: int = 256, progress: bool = True
) -> dict[str, Any]:
    """One classifier's robustness: scores per shift, drops against the unshifted images, external sets."""
    spec = spec_from_extras(trained.extra, trained.model.config.image_size)
    unknown = sorted(set(shifted.labels()) - set(trained.labels))
    if unknown:
        raise DataError(f"classes {unknown} are not among the model's classes {trained.labels}")
    result: dict[str, Any] = {"model": str(trained.folder), "benchmark": shifted.bench.settings()}
    by_shift = {}
    for shift in tqdm(shifted.bench.shifts, desc="robustness", unit="shift", disable=bar_disabled(progress)):
        by_shift[shift.name] = scores(trained, shifted.images(shift, spec), shifted.labels(), batch_size)
    clean = by_shift["clean"]["macro_f1"]
    for row in by_shift.values():
        row["drop"] = clean - row["macro_f1"]  # positive: macro-F1 lost under the shift
    result["shifts"] = by_shift
    external = {}
    for folder in shifted.bench.external:
        records = labelled_folder_records(Path(folder), trained.labels, "--external")
        cache = load_or_build(records, spec, shifted.cache_dir, progress=progress)
        labels = [records[s].label or "" for s in cache.sources]
        external[folder] = scores(trained, cache.images, labels, batch_size)
    result["external"] = external
    return result


def up_to_date(folder: Path, bench: Benchmark) -> bool:
    """Whether ``folder`` holds a robustness file measured with ``bench``'s settings (then it is kept)."""
    path = Path(folder) / ROBUSTNESS_FILE
    try:
        return read_json(path).get("benchmark") == bench.settings()
    except (OSError, ValueError):
        return False


def split_test_records(split: Path) -> list[ImageRecord]:
    """The test split of a study's manifest."""
    root, items = read_manifest(split)
    return [ImageRecord(root / it.relpath, root, it.label) for it in items if it.split == "test"]


def finished_runs(study: Path) -> list[Path]:
    """The study's fine-tuning runs that finished and saved a classifier."""
    return [
        folder
        for folder in run_folders(study)
        if run_info(folder).get("status") == "finished" and (folder / "model" / "config.json").exists()
    ]


def score_runs(
    runs: list[Path],
    split: Path,
    bench: Benchmark,
    out: Path | None = None,
    batch_size: int = 256,
    device: str | None = None,
    progress: bool = True,
) -> dict[str, dict[str, Any]]:
    """``robustness.json`` for each run in ``runs`` (into the run folder, or ``out/<run name>/``) unless it
    already holds one of this benchmark; returns every run's result by run name."""
    results: dict[str, dict[str, Any]] = {}
    shifted: ShiftedSet | None = None
    for run in tqdm(runs, desc="robustness of runs", unit="run", disable=bar_disabled(progress)):
        target = (Path(out) / run.name) if out else run
        if up_to_date(target, bench):
            results[run.name] = read_json(target / ROBUSTNESS_FILE)
            continue
        shifted = shifted or ShiftedSet(split_test_records(split), bench, progress=progress)
        results[run.name] = measure(trained_classifier(run, device), shifted, batch_size, progress=False)
        write_json(target / ROBUSTNESS_FILE, results[run.name])
    return results


def score_study(study: Path, bench: Benchmark, progress: bool = True) -> dict[str, dict[str, Any]]:
    """The robustness benchmark of every finished run of a study (``leanmae study`` runs it at the end)."""
    return score_runs(finished_runs(study), Path(study) / "split.csv", bench, progress=progress)


def summary_lines(result: dict[str, Any]) -> list[str]:
    """One printed line per shift and external set: macro-F1 and its drop."""
    lines = [
        f"  {name:16s} macro-F1 {row['macro_f1']:.4f}  drop {row['drop']:+.4f}{_alarm_text(row)}"
        for name, row in result["shifts"].items()
    ]
    lines += [
        f"  external {name}: macro-F1 {row['macro_f1']:.4f}{_alarm_text(row)}"
        for name, row in result["external"].items()
    ]
    return lines


def _alarm_text(row: dict[str, Any]) -> str:
    alarm = row.get("shift_alarm")
    if not alarm:
        return ""
    return f"  flagged {alarm['flagged_share']:.0%}" + ("  SHIFT ALARM" if alarm["alarm"] else "")


def score_shifts(
    trained: TrainedClassifier,
    records: list[ImageRecord],
    out: Path,
    shift_reference: str | Path | None = None,
    batch_size: int = 256,
) -> dict[str, Any]:
    """``evaluate --shifts``: one classifier's benchmark on any labelled images, into out/robustness.json."""
    result = measure(trained, ShiftedSet(records, benchmark(shift_reference)), batch_size)
    write_json(Path(out) / ROBUSTNESS_FILE, result)
    print("\n".join([f"robustness of {trained.folder} on {len(records)} images:", *summary_lines(result)]))
    print(f"wrote {Path(out) / ROBUSTNESS_FILE}")
    return result
