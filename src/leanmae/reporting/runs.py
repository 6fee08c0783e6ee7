"""Finding a study's runs and what each one used: labels as counts, collapse, failure, MAE folders.

The report reads everything from the study folder, so it works for studies written by older
versions too: runs without ``labels_used`` in metrics.json get their training labels recomputed from
the split manifest (the draw is deterministic), and those runs chose their epoch on the whole
validation split ("full" validation).
"""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from leanmae.config import BASELINE_ARM, PLAN_FILE, arm_of, run_folders
from leanmae.errors import DataError
from leanmae.files import read_json, run_info

BASELINE = BASELINE_ARM


@dataclass(frozen=True)
class Labels:
    """The labelled images one run used, per class: its training labels and, if honest, its validation
    labels."""

    train: dict[str, int]
    val: dict[str, int]
    val_mode: str  # "honest": val is a label fraction too; "full": the whole val split was used

    @property
    def total(self) -> int:
        """The labels a lab with this budget needs: training labels plus honest validation labels."""
        return sum(self.train.values()) + (sum(self.val.values()) if self.val_mode == "honest" else 0)

    def per_class(self) -> dict[str, int]:
        counted = dict(self.train)
        if self.val_mode == "honest":
            for label, n in self.val.items():
                counted[label] = counted.get(label, 0) + n
        return counted


@dataclass
class Run:
    """One finished fine-tuning run of the study."""

    folder: Path
    arm: str
    fraction: float
    seed: int
    metrics: dict[str, Any]
    history: list[dict[str, float]]
    info: dict[str, Any]  # its run.json
    labels: Labels

    @property
    def test(self) -> dict[str, Any]:
        return self.metrics["test"]

    @property
    def name(self) -> str:
        return f"{self.arm} at {pct(self.fraction)}, seed {self.seed}"

    @property
    def val_images(self) -> int | None:
        """The validation images its epoch and refer threshold were chosen on (None if unrecorded)."""
        recorded = self.info.get("images", {}).get("val")
        if recorded is None and self.labels.val_mode == "honest":
            return sum(self.labels.val.values())
        return recorded

    @property
    def selection(self) -> str:
        """How its training labels were chosen (``classifier.selection``; older runs drew them stratified)."""
        return self.info.get("config", {}).get("classifier", {}).get("selection", "stratified")

    def collapsed(self) -> bool:
        """True when the run predicts a single class for the whole test split (at most one class recalled)."""
        return sum(1 for c in self.test["per_class"].values() if c["recall"] > 0) <= 1


def pct(fraction: float) -> str:
    """The one wording of a label fraction: ``1 %``, ``10 %``, ``100 %``."""
    return f"{fraction * 100:g} %"


# The scores the report's tables and curves show; each lies between 0 and 1 by definition.
SCORES = ("accuracy", "balanced_accuracy", "macro_precision", "macro_recall", "macro_f1")
PER_CLASS_SCORES = ("precision", "recall", "f1")


def check_scores(metrics: dict[str, Any], path: Path) -> None:
    """Refuse a metrics.json whose scores cannot be (7.5, NaN, text), naming the file and the key.

    Why: leanmae never writes such a value, so one means an edited or damaged file, and a report would
    put it into its tables and fit curves to it without a word.
    """
    for split in ("test", "val"):
        scores = metrics.get(split)
        if scores is None and split == "val":
            continue
        if not isinstance(scores, dict):
            raise DataError(f"{path}: has no {split!r} scores; rerun the run or delete its folder")
        found = {key: scores.get(key) for key in SCORES}
        for label, per in (scores.get("per_class") or {}).items():
            found.update({f"per_class.{label}.{key}": per.get(key) for key in PER_CLASS_SCORES})
        for key, value in found.items():
            if not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1):
                raise DataError(
                    f"{path}: {split}.{key} is {value!r}, not a score between 0 and 1; rerun the run or "
                    "delete its folder"
                )


def _labels(metrics: dict[str, Any], manifest: list[Any] | None) -> Labels:
    used = metrics.get("labels_used")
    if used:
        return Labels(dict(used["train"]), dict(used.get("val", {})), used.get("val_mode", "full"))
    if manifest is None:
        return Labels({}, {}, "full")
    from leanmae.data.split import label_fraction

    train: dict[str, int] = defaultdict(int)
    for item in label_fraction(manifest, float(metrics["fraction"]), int(metrics["seed"])):
        train[item.label] += 1
    return Labels(dict(sorted(train.items())), {}, "full")


def _manifest(study: Path) -> list[Any] | None:
    if not (study / "split.csv").exists():
        return None
    from leanmae.data.split import read_manifest

    return read_manifest(study / "split.csv")[1]


def load_runs(study: Path) -> list[Run]:
    """Finished runs (run.json status "finished"), scratch first, then the other arms sorted; by fraction,
    seed."""
    runs, manifest = [], _manifest(study)
    for folder in run_folders(study):
        details, metrics_file = run_info(folder), folder / "metrics.json"
        if not metrics_file.exists() or details.get("status") != "finished":
            continue
        metrics = read_json(metrics_file)
        check_scores(metrics, metrics_file)
        history = read_history(folder / "history.csv")
        arm = arm_of(folder.name)
        runs.append(
            Run(
                folder,
                arm,
                float(metrics["fraction"]),
                int(metrics["seed"]),
                metrics,
                history,
                details,
                _labels(metrics, manifest),
            )
        )
    order = arms(runs)
    return sorted(runs, key=lambda r: (order.index(r.arm), r.fraction, r.seed))


def read_history(path: Path) -> list[dict[str, float]]:
    """A run's history.csv, one dict of numbers per epoch."""
    with open(path) as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def planned_runs(study: Path) -> list[str] | None:
    """The grid's run names the study's last call planned (plan.json); None for a study from before it."""
    plan = study / PLAN_FILE
    return read_json(plan)["runs"] if plan.exists() else None


def failed_runs(study: Path) -> dict[str, bool]:
    """Run folders whose run.json says the run failed (not those still running or waiting), each with
    whether the study still plans it: rerunning the study retries those, and leaves the others (an older
    call's arms or fractions) as they are."""
    planned = planned_runs(study)
    return {
        folder.name: planned is None or folder.name in planned
        for folder in run_folders(study)
        if run_info(folder).get("status") == "failed"
    }


def arms(runs: list[Run]) -> list[str]:
    """Scratch (the baseline) first, then every other arm in name order."""
    return sorted({r.arm for r in runs}, key=lambda a: (a != BASELINE, a))


def by_cell(runs: list[Run]) -> dict[tuple[str, float], list[Run]]:
    groups: dict[tuple[str, float], list[Run]] = defaultdict(list)
    for run in runs:
        groups[(run.arm, run.fraction)].append(run)
    return groups


def labels_at(runs: list[Run]) -> dict[float, Labels]:
    """The labels of each fraction (the same for every seed and arm: the draw is stratified by count)."""
    found: dict[float, Labels] = {}
    for run in runs:
        found.setdefault(run.fraction, run.labels)
    return found


def label_text(labels: Labels | None, fraction: float) -> str:
    """``1 % (72 labels, 9-23 per class)``: the percentage always beside the counts."""
    if labels is None or not labels.train:
        return pct(fraction)
    per = labels.per_class().values()
    return f"{pct(fraction)} ({labels.total} labels, {min(per)}–{max(per)} per class)"


def pretrain_folders(study: Path, settings: dict[str, Any]) -> dict[str, Path]:
    """The study's MAE pretraining folders that exist, by pool name: ``pretrain/``, ``pretrain-<pool>/``,
    study.json's ``mae``.

    ``mae`` may be a path, or a list of paths or ``pool=PATH`` strings; a relative path is looked up
    as given and then inside the study folder.
    """
    found: dict[str, Path] = {}
    for pool, folder in _given_maes(study, settings):
        if folder.is_dir():
            found[pool or folder.name] = folder
    for folder in sorted(study.glob("pretrain*")):
        if folder.is_dir() and (folder / "run.json").exists():
            found.setdefault(folder.name.removeprefix("pretrain").lstrip("-") or "pretrain", folder)
    return found


def missing_maes(study: Path, settings: dict[str, Any]) -> list[str]:
    """The MAEs study.json names (``mae``) that are not found from here: a relative path is read from the
    folder the study ran in, so a report built elsewhere would drop their section without a word."""
    return [
        f"MAE {pool + '=' if pool else ''}{folder}: not found from {Path.cwd()}; build the report from the "
        "folder the study ran in to show its pretraining"
        for pool, folder in _given_maes(study, settings)
        if not folder.is_dir()
    ]


def _given_maes(study: Path, settings: dict[str, Any]) -> list[tuple[str, Path]]:
    """(pool, folder) of each MAE study.json names; the pool is "" for a bare path."""
    given = settings.get("mae") or []
    pairs = [entry.rpartition("=") for entry in ([given] if isinstance(given, str) else given)]
    return [(pool, _pretrain_run(study, path)) for pool, _, path in pairs]


def _pretrain_run(study: Path, path: str) -> Path:
    """The folder of a pretraining a study names: as given, else inside the study folder; a run's model/
    stands for the run, whose curves and run.json sit one level up."""
    folder = Path(path)
    if not folder.exists() and (study / path).exists():
        folder = study / path
    if folder.name == "model" and (folder.parent / "run.json").exists():
        folder = folder.parent
    return folder


def unlabelled_images(runs: list[Run]) -> dict[str, int | None]:
    """The unlabelled images behind each arm's starting weights, so that a lab sees all it must collect.

    0 from scratch; for an MAE, its pretraining pool (train + val images in the pretraining's run.json,
    found from the runs' ``init``, else the ``unlabelled_images`` its model folder's leanmae.json records);
    None where neither says: an encoder from elsewhere (an hf: folder that records no pool), or runs of
    one arm that started from different folders.
    """
    found: dict[str, int | None] = {}
    for arm in arms(runs):
        inits = {
            r.metrics.get("init") or (BASELINE if arm == BASELINE else None) for r in runs if r.arm == arm
        }
        init = inits.pop() if len(inits) == 1 else None
        if init == BASELINE:
            found[arm] = 0
            continue
        folder = _pretrain_run(runs[0].folder.parent.parent, init) if init else None
        images = run_info(folder).get("images") if folder else None
        found[arm] = sum(images.values()) if isinstance(images, dict) and images else _recorded_pool(folder)
    return found


def _recorded_pool(folder: Path | None) -> int | None:
    """The pool size (train + val images, as run.json counts them) an MAE folder, or its run's model/,
    records in leanmae.json; None if it records none."""
    for model in [folder, folder / "model"] if folder else []:
        extra = model / "leanmae.json"
        value = read_json(extra).get("unlabelled_images") if extra.is_file() else None
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return None
