"""Keep issue 27's study across machines whose ignored files do not last: its ended runs' light files
(everything but weights, checkpoints and TensorBoard logs: what .gitignore keeps out of docs/results), and
the few weights the next sitting needs (below), are copied here to be committed, and copied back into a
new checkout's study folder before the study resumes.

Why: the study takes 55 to 65 hours on a 2-core CPU, in sittings of a few hours, and a sitting may start on
a new machine with only what was committed (session 16 lost 58 finished runs that way). A run's run.json
is all ``leanmae study`` reads to skip it, and its light files are all the study's choices and the report
read. What needs a run's weights is done before it is kept: the robustness benchmark of every grid run
(``score_runs``, as the study's own end does). Four things still need weights after that:

- A round of margin selection: its next round reads its model to choose labels, and so do that round's
  candidates and effort.py's doubled run of one of them. While one of them waits (the doubled run: while
  effort.csv lacks the check at its arm and fraction), ``save`` keeps the round's ``model/`` too (about
  11 MB; .gitignore lets these folders in), and drops it once none waits. Without it a new machine would
  train the chain again from its first round, which above 10 % takes longer than a sitting (the 50 % round
  after 1-25 % again: 3 to 4 hours of one core), so a chain to 50 % would never end. The grid runs seed by
  seed, so about one chain is in progress. (A chain kept before this, with no model, trains again once.)
- The seed-0 grid run that ``study`` copies from its chosen candidate: it copies only with the model
  there, and otherwise trains it, to the same result (up to float rounding).
- A run in flight that no sitting can end (at 0.025 s per image, a 100 % run at 60 epochs: about 3.1
  hours): ``save`` keeps its last checkpoint (weights and optimizer state, 33 MB) and ``restore`` brings
  it back, so the next sitting resumes it (to the same result: a resumed run equals an uninterrupted
  one); dropped once the run has ended. A shorter run in flight is not kept: it trains again.
- ``effort.py``'s whole-val scores of candidates: a search at a checked fraction can span sittings on
  several machines, so ``save`` scores each of its candidates as it is kept (``evaluate-val/``, kept
  with it) while its weights are here; a candidate kept without them cannot be scored again.

A run deleted from the study (a stale run that ``study`` names, a diverged candidate to train again) must
be deleted here too, or ``restore`` brings it back.

    PYTHONPATH=src python docs/results/pbc-current/keep.py save [STUDY]     (beside the running study)
    PYTHONPATH=src python docs/results/pbc-current/keep.py restore [STUDY]  (before it resumes)
    (STUDY: default runs/pbc-current; the kept copy is this script's folder, or $PBC_CURRENT_KEEP; the
    fractions whose candidates ``save`` scores on the whole val: effort.py's default, or
    $PBC_CURRENT_CHECKED; the hours of a sitting that train, beyond which a run in flight is kept: 2.5, or
    $PBC_CURRENT_SITTING_HOURS)
"""

from __future__ import annotations

import csv
import filecmp
import os
import shutil
import sys
from pathlib import Path

from effort import CHECKED, full_val_f1  # this script's folder: effort.py beside it

from leanmae.commands.study import Job, plan, run_status, study_benchmark
from leanmae.config import StudyConfig, arm_of, from_dict
from leanmae.evaluation.robustness import score_runs, score_study, up_to_date
from leanmae.files import atomic_dir, read_json, remove_leftovers, write_atomic
from leanmae.safe_csv import unescape
from leanmae.training.checkpoint import list_checkpoints

KEPT = Path(os.environ.get("PBC_CURRENT_KEEP") or Path(__file__).parent)  # elsewhere: the smoke test
PARTS = ("runs", "search", "effort")  # the study's grid runs, recipe candidates, effort.py's doubled runs
HEAVY = ("model", "checkpoints", "tensorboard", "best.safetensors")  # weights, resume state, event files
STUDY_FILES = ("study.json", "plan.json", "split.csv", "search.csv", "effort.csv")
SELECTION_FROM = "classifier.selection_from="
CHECKED_NOW = [float(v) for v in os.environ.get("PBC_CURRENT_CHECKED", CHECKED).split()]
SITTING_HOURS = float(os.environ.get("PBC_CURRENT_SITTING_HOURS", "2.5"))  # the part of a sitting that trains


def ended(run: Path) -> bool:
    """A run the study will not train again: finished, or a recipe candidate it recorded as diverged."""
    return run_status(run) == "finished" or run.with_name(f"{run.name}.diverged").exists()


def checked(candidate: Path) -> bool:
    """Whether effort.py's check reads the candidate: a finished one at a checked fraction."""
    finished = run_status(candidate) == "finished"
    return finished and read_json(candidate / "run.json")["config"]["fraction"] in CHECKED_NOW


def folders_of(part: Path) -> list[Path]:
    """The run folders of one part of a study (not a killed writer's dotted temporaries), by name."""
    return sorted(p for p in part.glob("*") if p.is_dir() and not p.name.startswith("."))


def light_files(run: Path, candidate: bool) -> list[Path]:
    """``run``'s files to keep, relative to it: not its weights, checkpoints, TensorBoard logs or dotted
    names (a lock, a killed writer's temporaries); no figures of a candidate (the report shows none)."""
    files = [f.relative_to(run) for f in run.rglob("*") if f.is_file()]
    return sorted(
        rel
        for rel in files
        if rel.parts[0] not in HEAVY
        and not any(part.startswith(".") for part in rel.parts)
        and not (candidate and rel.suffix == ".png")
    )


def long_in_flight(run: Path) -> Path | None:
    """The last checkpoint of a run in flight that no sitting can end: its mean epoch so far, times its
    epochs, is longer than the part of a sitting that trains ($PBC_CURRENT_SITTING_HOURS). None otherwise:
    a shorter run trains again from its start in the next sitting, which costs less than keeping 33 MB of
    weights and optimizer state in git's history every sitting."""
    for _ in range(3):
        checkpoints = list_checkpoints(run / "checkpoints")
        if ended(run) or not checkpoints:
            return None
        try:
            history = read_json(checkpoints[-1] / "trainer_state.json")["history"]
        except FileNotFoundError:  # the next epoch's checkpoint replaced it: look again
            continue
        epochs = read_json(run / "run.json")["config"]["optim"]["epochs"]
        hours = sum(row["seconds"] for row in history) / len(history) * epochs / 3600
        return checkpoints[-1] if hours > SITTING_HOURS else None
    raise SystemExit(f"{run}: its checkpoints kept changing while they were read; run save again")


def files_of(folder: Path) -> list[Path]:
    """Every file under ``folder``, relative to it: what a kept run holds."""
    return sorted(f.relative_to(folder) for f in folder.rglob("*") if f.is_file())


def read_by_waiting(study: Path) -> set[str]:
    """The names of the margin rounds whose model is still to be read to choose labels: by a round or a
    candidate that has not ended, or by effort.py's doubled run of a candidate at a checked fraction whose
    check effort.csv lacks (it trains with the candidate's settings, so it chooses the same labels)."""
    jobs = plan(from_dict(StudyConfig, read_json(study / "study.json")), study)
    done = set()
    if (study / "effort.csv").exists():
        with open(study / "effort.csv", newline="") as f:
            done = {(unescape(row["arm"]), float(row["fraction"])) for row in csv.DictReader(f)}

    def waits(job: Job) -> bool:
        if not ended(job.out):
            return True
        if job.out.parent.name != "search":  # an ended round or grid run reads nothing more
            return False
        fraction = job.kwargs["fraction"]
        return fraction in CHECKED_NOW and (arm_of(job.out.name.rsplit("_c", 1)[0]), fraction) not in done

    reads = (_selection_from(job.kwargs["set"]) for job in jobs if waits(job))
    return {read.name for read in reads if read is not None}


def records(run: Path) -> list[Path]:
    """The study's records beside a run folder that exist: its log, a candidate's ``.diverged``, a doubled
    run's settings (``effort.py``)."""
    found = (run.with_name(run.name + suffix) for suffix in (".log", ".diverged", ".json"))
    return [record for record in found if record.exists()]


def copy_run(run: Path, into: Path, files: list[Path]) -> None:
    """``files`` of ``run`` into ``into``, and its records beside it, each appearing whole (the records
    first: a kept folder is a run whose records are kept)."""
    for record in records(run):
        write_atomic(into.with_name(record.name), record.read_bytes())
    with atomic_dir(into) as tmp:
        for rel in files:
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(run / rel, tmp / rel)


def changed(run: Path, into: Path, files: list[Path]) -> bool:
    """Whether the kept copy holds other files than ``files`` (a model now kept or dropped), lacks one of
    ``run``'s records, or holds another version (a robustness file or an effort score added since). By
    content: git keeps no file times."""
    if not into.is_dir() or files_of(into) != files:
        return True
    pairs = [(run / rel, into / rel) for rel in files]
    pairs += [(record, into.with_name(record.name)) for record in records(run)]
    return any(not kept.exists() or not filecmp.cmp(source, kept, shallow=False) for source, kept in pairs)


def save(study: Path) -> None:
    """Every ended run not kept yet, or changed since; a grid run only once its robustness is scored (a run
    that ended while the benchmark ran is scored on its own before it is kept), a candidate at a checked
    fraction only once it is scored on the whole val; with its model, a margin round that a waiting round
    reads; and with its last checkpoint, a run in flight longer than a sitting."""
    cfg = from_dict(StudyConfig, read_json(study / "study.json"))
    bench = study_benchmark(cfg)
    score_study(study, bench, progress=False)
    rounds_read = read_by_waiting(study)
    kept = 0
    for part in PARTS:
        remove_leftovers(KEPT / part)
        for run in folders_of(study / part):
            if ended(run):
                if part == "runs" and (run / "model").exists() and not up_to_date(run, bench):
                    score_runs([run], study / "split.csv", bench, progress=False)
                if part == "search" and (run / "model").exists() and checked(run):
                    full_val_f1(study, run)  # scored once, then reused
            elif long_in_flight(run) is None:
                continue
            kept += keep_run(run, KEPT / part / run.name, part, rounds_read)
    for name in STUDY_FILES:
        if (study / name).exists():
            shutil.copy2(study / name, KEPT / name)
    print(f"kept {kept} run(s) of {study} in {KEPT} (light files, and the weights the next sitting needs)")


def keep_run(run: Path, into: Path, part: str, rounds_read: set[str]) -> bool:
    """Copy ``run``'s files to keep into ``into`` if they changed: its light files, and the model of a round
    that ``rounds_read`` names or the last checkpoint of a long run in flight. Whether it copied. A run in
    flight may replace its checkpoint while it is copied: then the newer one is copied."""
    for _ in range(3):
        files = light_files(run, candidate=part == "search")
        read = ended(run) and part == "runs" and run.name in rounds_read
        heavy = run / "model" if read else long_in_flight(run)
        if heavy is not None and heavy.is_dir():
            files = sorted([*files, *(heavy.relative_to(run) / f for f in files_of(heavy))])
        try:
            if not changed(run, into, files):
                return False
            copy_run(run, into, files)
            return True
        except FileNotFoundError:
            continue
    raise SystemExit(f"{run}: its files kept changing while they were copied; run save again")


def restore(study: Path) -> None:
    """Copy kept runs back into ``study`` where it has no folder of that name, except the margin rounds kept
    without their model that a round still to train reads (see the module's docstring). Run it before the
    study, never beside it."""
    if not (KEPT / "study.json").exists():
        raise SystemExit(f"nothing kept in {KEPT} yet: start the study with run.sh")
    study.mkdir(parents=True, exist_ok=True)
    for name in STUDY_FILES:  # the study rewrites the others; effort.csv keeps earlier fractions' rows
        if not (study / name).exists() and (KEPT / name).exists():
            shutil.copy2(KEPT / name, study / name)
    jobs = plan(from_dict(StudyConfig, read_json(study / "study.json")), study)
    to_restore = {job.out for job in jobs if ended(KEPT / job.out.parent.name / job.out.name)}
    waiting = {job.out for job in jobs} - to_restore
    reads = {job.out: _selection_from(job.kwargs["set"]) for job in jobs}
    with_model = {out for out in to_restore if (KEPT / out.parent.name / out.name / "model").is_dir()}
    # a waiting round's earlier rounds wait too, but for one kept with the model the waiting round reads
    while needed := ({reads[out] for out in waiting} & to_restore) - with_model:
        to_restore -= needed
        waiting |= needed
    in_flight = {out for out in waiting if (KEPT / out.parent.name / out.name / "checkpoints").is_dir()}
    to_restore |= in_flight  # a long run resumes from its kept checkpoint
    kept_effort = (p for p in folders_of(KEPT / "effort") if ended(p) or (p / "checkpoints").is_dir())
    to_restore |= {study / "effort" / p.name for p in kept_effort}
    restored = 0
    for out in sorted(to_restore):
        if not out.exists():
            kept = KEPT / out.parent.name / out.name
            copy_run(kept, out, files_of(kept))
            restored += 1
    print(
        f"restored {restored} run(s) into {study}; {len(waiting)} of its plan to run (or to train again), "
        f"{len(in_flight)} of them from a kept checkpoint"
    )


def _selection_from(settings: list[str]) -> Path | None:
    """The earlier round whose model a margin-selection run reads to choose its labels, if any."""
    given = [s[len(SELECTION_FROM) :] for s in settings if s.startswith(SELECTION_FROM)]
    return Path(given[-1]) if given else None


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3) or sys.argv[1] not in ("save", "restore"):
        raise SystemExit(__doc__)
    (save if sys.argv[1] == "save" else restore)(
        Path(sys.argv[2] if len(sys.argv) == 3 else "runs/pbc-current")
    )
