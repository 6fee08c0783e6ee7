"""Keep issue 27's study across machines whose ignored files do not last: its finished runs' light files
(everything but weights, checkpoints and TensorBoard logs: what .gitignore keeps out of docs/results) are
copied here to be committed, and copied back into a new checkout's study folder before the study resumes.

Why: the study takes 55 to 65 hours on a 2-core CPU, in sittings of a few hours, and a sitting may start on
a new machine with only what was committed (session 16 lost 58 finished runs that way). A finished run's
run.json is all ``leanmae study`` reads to skip it, and its light files are all the report reads; what
needs weights is done before they are kept: the robustness benchmark of every grid run (``score_study``,
as the study's own end does), and nothing else of a kept run needs them, except

- a round of margin selection, whose next round reads its model to choose labels: while a round of a
  chain waits, the rounds before it are not restored, so that chain trains again from its first round (to
  the same labels and weights, on a CPU). The grid runs seed by seed, so about one chain is in progress;
- the seed-0 grid run copied from its chosen candidate (``study`` copies it only with the model there, and
  trains it otherwise, to the same result on a CPU) and ``effort.py``'s whole-val scores (kept in
  ``evaluate-val/`` once made: a kept candidate without them cannot be scored again, so run the effort
  check in the sitting whose search ends at its fraction).

    PYTHONPATH=src python docs/results/pbc-current/keep.py save [STUDY]     (beside the running study)
    PYTHONPATH=src python docs/results/pbc-current/keep.py restore [STUDY]  (before it resumes)
    (STUDY: default runs/pbc-current; the kept copy is this script's folder)
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from leanmae.commands.study import plan, run_status, study_benchmark
from leanmae.config import StudyConfig, from_dict
from leanmae.evaluation.robustness import score_study
from leanmae.files import atomic_dir, read_json

KEPT = Path(__file__).parent
PARTS = ("runs", "search", "effort")  # the study's grid runs, recipe candidates, effort.py's doubled runs
HEAVY = ("model", "checkpoints", "tensorboard")  # weights, resume state, event files
SELECTION_FROM = "classifier.selection_from="


def ended(run: Path) -> bool:
    """A run the study will not train again: finished, or a recipe candidate it recorded as diverged."""
    return run_status(run) == "finished" or run.with_name(f"{run.name}.diverged").exists()


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


def beside(run: Path) -> list[Path]:
    """The study's records beside a run folder: its log, a candidate's ``.diverged``, a doubled run's
    settings (``effort.py``)."""
    return [run.with_name(run.name + suffix) for suffix in (".log", ".diverged", ".json")]


def copy_run(run: Path, into: Path, files: list[Path]) -> None:
    """``files`` of ``run`` into ``into`` (appearing in one rename), and its records beside it."""
    with atomic_dir(into) as tmp:
        for rel in files:
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(run / rel, tmp / rel)  # copy2 keeps the time: ``changed`` compares it
    for record in beside(run):
        if record.exists():
            shutil.copy2(record, into.with_name(record.name))


def changed(run: Path, into: Path, files: list[Path]) -> bool:
    """Whether the kept copy lacks one of ``files`` or holds an older one (a robustness file or an effort
    score added since)."""
    return any(
        not (into / rel).exists() or (run / rel).stat().st_mtime > (into / rel).stat().st_mtime
        for rel in files
    )


def save(study: Path) -> None:
    """Every ended run not kept yet, or changed since, after the robustness benchmark of the grid runs."""
    cfg = from_dict(StudyConfig, read_json(study / "study.json"))
    score_study(study, study_benchmark(cfg), progress=False)
    kept = 0
    for part in PARTS:
        for run in sorted(p for p in (study / part).glob("*") if p.is_dir() and not p.name.startswith(".")):
            files = light_files(run, candidate=part == "search")
            if ended(run) and changed(run, KEPT / part / run.name, files):
                copy_run(run, KEPT / part / run.name, files)
                kept += 1
    for name in ("study.json", "plan.json", "split.csv", "search.csv", "effort.csv"):
        if (study / name).exists():
            shutil.copy2(study / name, KEPT / name)
    print(f"kept {kept} run(s) of {study} in {KEPT} (light files only)")


def restore(study: Path) -> None:
    """Copy kept runs back into ``study`` where it has no folder of that name, except the margin rounds a
    round still to train reads (see the module's docstring). Run it before the study, never beside it."""
    if not (study / "study.json").exists():
        if not (KEPT / "study.json").exists():
            raise SystemExit(f"nothing kept in {KEPT} yet: start the study with run.sh")
        study.mkdir(parents=True, exist_ok=True)
        shutil.copy2(KEPT / "study.json", study / "study.json")
    cfg = from_dict(StudyConfig, read_json(study / "study.json"))
    jobs = plan(cfg, study)
    kept = {job.out for job in jobs if ended(KEPT / job.out.parent.name / job.out.name)}
    waiting = {job.out for job in jobs} - kept
    reads = {job.out: _selection_from(job.kwargs["set"]) for job in jobs}
    while needed := {reads[out] for out in waiting} & kept:
        kept -= needed
        waiting |= needed
    kept |= {study / "effort" / p.name for p in (KEPT / "effort").glob("*") if p.is_dir() and ended(p)}
    restored = 0
    for out in sorted(kept):
        if not out.exists():
            source = KEPT / out.parent.name / out.name
            copy_run(source, out, light_files(source, candidate=False))
            restored += 1
    print(f"restored {restored} run(s) into {study}; {len(waiting)} of its plan to run (or to train again)")


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
