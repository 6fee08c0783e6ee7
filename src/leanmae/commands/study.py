"""``leanmae study``: the seed's label-efficiency ablation as one resumable command.

Pretrain once (or take ``--mae``), make the split once, then run the grid
fractions x arms x seeds of fine-tuning runs, and write tables, figures and report.html.
Every run is an ordinary ``pretrain`` / ``finetune`` run folder under the study folder:

    study.json                   the resolved study settings
    plan.json                    the names of the grid's runs (what "N of M finished" counts)
    split.csv                    the fixed split every run uses
    pretrain/                    the MAE (unless --mae was given)
    runs/<arm>_f<fraction>_s<seed>/   one fine-tuning run each, with its robustness.json (shifted test scores)
    search/<arm>_f<fraction>_s<seed>_c<i>/   with --search: one run per recipe candidate; search.csv says
                                 what each scored on its own val draw and which became the recipe
    results/                     tables (CSV, Markdown) and figures
    report.html                  everything in one self-contained file

Resumable: a run whose run.json says "finished" is never redone; one that was killed continues
from its last checkpoint; ``leanmae report`` rebuilds the results from whatever has finished.
Runs are launched as separate processes (``--jobs N`` at once, one torch thread each), or as
SLURM jobs through submitit with ``--launcher slurm``.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from leanmae.config import (
    ARM_CHOICES,
    PLAN_FILE,
    STUDY_CHECKS,
    FinetuneConfig,
    PretrainConfig,
    StudyConfig,
    arm_of,
    base_arm,
    build,
    leaf_keys,
    load_yaml,
    resolve,
    run_name,
    to_dict,
)
from leanmae.data.pool import collect
from leanmae.data.split import label_fraction, read_manifest, write_manifest
from leanmae.errors import ConfigError, DataError, NonFiniteLossError, OutputFolderError
from leanmae.eta import (
    Timing,
    eta_seconds,
    eta_text,
    finetune_cost,
    pretrain_cost,
    progress_line,
)
from leanmae.evaluation.robustness import Benchmark, benchmark, check_external, score_study
from leanmae.files import (
    atomic_dir,
    read_json,
    remove_leftovers,
    run_info,
    weights_sha256,
    write_atomic,
    write_json,
)
from leanmae.models.card import write_card
from leanmae.models.io import model_folder
from leanmae.progress import bar_disabled
from leanmae.reporting.runinfo import LOCK_FILE, RUN_FILE, failed_start, held
from leanmae.safe_csv import csv_text
from leanmae.tracking import MLFLOW_RUN_FILE, finish_run, study_parent, study_report_to

STUDY_FILE = "study.json"
# A --search-beyond candidate where the best stayed inside the grid (``entries``): it ends without running.
NOT_NEEDED = "not needed"
# A recipe candidate whose loss went NaN or infinite: a result of the search (that recipe does not train).
# Any other failure (a full disk, a bug) says nothing of the recipe, so the runs waiting on it wait.
DIVERGED = "diverged"
DIVERGED_EXIT = 3  # a launched job's exit status for NonFiniteLossError
ENDED = ("done", DIVERGED, NOT_NEEDED)  # a recipe candidate's states once the runs waiting on it may start
# Settings that change what the study scores, not what it trains: a study may continue with other values.
_SCORING_ONLY = ("external", "shift_reference", "note")


@dataclass
class Job:
    """One run of the study: which command, with which options, after which other jobs."""

    name: str
    command: str
    kwargs: dict[str, Any]
    out: Path
    after: list[str] = field(default_factory=list)
    # --search: the recipe candidates of this run's arm and fraction (jobs under search/); the run waits for
    # them to end and starts with the best that finished: a candidate that diverges is a result of the
    # search, not a failure of the run (DIVERGED)
    choices: list[Job] = field(default_factory=list)
    # a recipe candidate's --search entries (already in its kwargs' "set")
    search: list[str] = field(default_factory=list)
    # --search-beyond: (the last --search entry's number of alternatives, its last, the one past it). Such a
    # candidate waits for ``choices`` (the grid's candidates) and runs the best one's entries with the edge
    # moved past it, or not at all where the best did not take the edge (``entries``)
    beyond: tuple[int, list[str], list[str]] | None = None

    @property
    def tries(self) -> list[str]:
        """The job names of the recipe candidates."""
        return [candidate.name for candidate in self.choices]


def run_status(folder: Path) -> str | None:
    """ "finished", "running" (started, maybe killed) or None (never started)."""
    path = Path(folder) / RUN_FILE
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text()).get("status", "running")
    except json.JSONDecodeError:
        return "running"


POOLS = ("other", "in-domain")


def arm_pool(arm: str, pool: str) -> str | None:
    """The pretraining pool an arm's MAE comes from (None for scratch and hf: arms).

    ``mae`` and ``mae-linear`` use the study's ``--pool``; ``mae-other`` and ``mae-in-domain`` name
    theirs, so one study can compare the seed's pool with the lab's own images. A variant ``ARM+NAME``
    starts where ARM does.
    """
    arm = base_arm(arm)
    if arm in ("mae", "mae-linear"):
        return pool
    if arm.startswith("mae-") and arm[4:] in POOLS:
        return arm[4:]
    if arm == "scratch" or arm.startswith("hf:"):
        return None
    raise ConfigError(f"unknown arm {arm!r}: use {ARM_CHOICES}")


def arm_init(arm: str, maes: dict[str, Path], pool: str) -> tuple[str, bool]:
    """(--init, linear probe?) of an arm name, given the MAE folder of each pool."""
    source, base = arm_pool(arm, pool), base_arm(arm)
    if source is not None:
        return str(maes[source]), base == "mae-linear"
    return ("scratch", False) if base == "scratch" else (base[3:], False)


def given_maes(cfg: StudyConfig) -> dict[str, Path]:
    """``--mae PATH`` (the study's pool) and ``--mae POOL=PATH`` entries as {pool: folder}."""
    maes: dict[str, Path] = {}
    for entry in cfg.mae:
        pool, _, path = entry.rpartition("=") if "=" in entry else (cfg.pool, "", entry)
        if pool not in POOLS:
            raise ConfigError(f"--mae {entry!r}: the pool before '=' must be one of {', '.join(POOLS)}")
        maes[pool] = Path(path)
    return maes


def pretrain_folder(out: Path, pool: str, cfg: StudyConfig) -> Path:
    """Where the study pretrains a pool's MAE: pretrain/ for the study's --pool (as before), pretrain-POOL/
    otherwise."""
    return out / "pretrain" if pool == cfg.pool else out / f"pretrain-{pool}"


def plan(cfg: StudyConfig, out: Path) -> list[Job]:
    """The study's jobs: an MAE pretraining per pool the arms need (unless given), then the fine-tuning
    grid."""
    jobs: list[Job] = []
    common = {"preset": cfg.preset, "set": list(cfg.set), "progress": False}
    maes, waits = given_maes(cfg), {}
    for pool in dict.fromkeys(p for p in (arm_pool(a, cfg.pool) for a in cfg.arms) if p is not None):
        if pool in maes:
            continue
        sources = list(cfg.pretrain_data) + ([str(out / "split.csv")] if pool == "in-domain" else [])
        if not sources:
            raise ConfigError(
                f"the study pretrains an MAE on the {pool!r} pool but no --pretrain-data was given "
                f"(or pass --mae {pool}=CHECKPOINT)"
            )
        maes[pool] = pretrain_folder(out, pool, cfg)
        waits[pool] = maes[pool].name
        kwargs = {
            "data": sources,
            "out": str(maes[pool]),
            "epochs": cfg.pretrain_epochs,
            "probe": str(out / "split.csv"),
            **common,
        }
        jobs.append(Job(maes[pool].name, "pretrain", kwargs, maes[pool]))
    # Seed by seed: an interrupted study has whole seeds (every arm, every fraction) to report; the
    # extra seeds of the small fractions come last.
    fractions = sorted(cfg.fractions)  # smallest first: a round of margin selection follows the one before
    grid = [(seed, f) for seed in cfg.seeds for f in fractions]
    grid += [(seed, f) for seed in cfg.extra_seeds for f in fractions if f <= cfg.extra_seeds_up_to]
    earlier: dict[tuple[str, int], Job] = {}  # (arm, seed) -> its run at the previous fraction
    candidates = search_grid(cfg.search)
    last = alternatives(cfg.search[-1]) if cfg.search else []
    beyond = (len(last), last[-1], cfg.search_beyond.split(";")) if cfg.search_beyond else None
    searched: dict[tuple[str, float], list[Job]] = {}  # (arm, fraction) -> its recipe candidates' runs
    for seed, fraction in grid:
        for arm in cfg.arms:
            init, probe = arm_init(arm, maes, cfg.pool)
            name = run_name(arm, fraction, seed)
            kwargs = {
                "split": str(out / "split.csv"),
                "out": str(out / "runs" / name),
                "fraction": fraction,
                "init": init,
                "seed": seed,
                "linear_probe": probe,
                "epochs": cfg.finetune_epochs,
                "ood": list(cfg.ood_data) or None,
                **common,
            }
            kwargs["set"] = common["set"] + arm_settings(cfg, arm)
            pool = arm_pool(arm, cfg.pool)
            job = Job(name, "finetune", kwargs, out / "runs" / name, [waits[pool]] if pool in waits else [])
            if fraction >= 1 and no_run_with_all_labels(job_config(job)):
                continue  # every train image is labelled: nothing to choose or to learn unlabelled
            if "classifier.selection=margin" in kwargs["set"]:
                _chain_rounds(job, earlier.get((arm, seed)))
            earlier[(arm, seed)] = job
            if candidates:
                if (arm, fraction) not in searched:  # the first seed comes first: the candidates run at it
                    trials = [_candidate(job, entries, i) for i, entries in enumerate(candidates)]
                    if beyond:
                        past = _candidate(job, [], len(trials))
                        past.choices, past.beyond = list(trials), beyond
                        trials.append(past)
                    searched[arm, fraction] = trials
                    jobs.extend(trials)
                job.choices = searched[arm, fraction]
            jobs.append(job)
    return jobs


NO_SEMI_RUN = "no run with all labels: every train image is labelled, so classifier.semi has nothing to learn"
NO_CHOICE_RUN = (
    "no run with all labels: every train image is labelled, so classifier.selection has nothing to choose"
)


def semi_supervised(job: Job) -> bool:
    """Whether a fine-tuning job learns from unlabelled train images (``classifier.semi`` on)."""
    config = job_config(job)
    return isinstance(config, FinetuneConfig) and config.classifier.semi != "off"


def arm_settings(cfg: StudyConfig, arm: str) -> list[str]:
    """The --set entries --arm-set gives ``arm`` (its own settings, on top of the study's)."""
    return [entry.split(":", 1)[1] for entry in cfg.arm_set if entry.split(":", 1)[0] == arm]


def no_run_with_all_labels(config: PretrainConfig | FinetuneConfig) -> str | None:
    """Why a run where every train image is labelled is not made, if it is not: FixMatch would have no
    unlabelled image to learn from, and a label choice (typiclust, margin rounds) has nothing to choose: its
    run would be one of the stratified draw (with its base arm in the study, a repeat of that arm's run, the
    costliest of the study), which is no point of the choice's own curve."""
    if not isinstance(config, FinetuneConfig):
        return None
    if config.classifier.semi != "off":
        return NO_SEMI_RUN
    return NO_CHOICE_RUN if config.classifier.selection != "stratified" else None


def check_semi_pools(jobs: list[Job], manifest: Path) -> None:
    """Refuse, before any run starts, a semi-supervised run whose fraction labels every train image (a
    fraction just under 1, or classes of two images): it would fail hours into the study."""
    items = read_manifest(manifest)[1]
    train = sum(item.split == "train" for item in items)
    for job in jobs:
        fraction = job.kwargs.get("fraction", 0)
        if semi_supervised(job) and len(label_fraction(items, fraction, job.kwargs["seed"])) >= train:
            raise ConfigError(
                f"run {job.name}: {fraction:g} of the labels is every train image of this split, so "
                "classifier.semi has nothing unlabelled to learn from; use a smaller fraction for that arm"
            )


def search_grid(entries: list[str]) -> list[list[str]]:
    """Every combination of the ``--search`` entries' alternatives, as --set entries; none without one."""
    if not entries:
        return []
    return [
        [setting for alternative in combination for setting in alternative]
        for combination in itertools.product(*map(alternatives, entries))
    ]


def alternatives(entry: str) -> list[list[str]]:
    """A ``--search`` entry's alternatives as --set entries: ``KEY=V1|V2``, or settings that change together,
    ``K1=A;K2=B|K1=C;K2=D`` (twice the steps is twice the epochs *and* twice the minimum steps)."""
    key = entry.split("=", 1)[0]
    return [part.split(";") if "=" in part else [f"{key}={part}"] for part in entry.split("|")]


def _candidate(job: Job, entries: list[str], index: int) -> Job:
    """A run of recipe candidate ``index`` for ``job``'s arm and fraction, at ``job``'s seed (the study's
    first): the same labels, its own folder under search/."""
    out = job.out.parent.parent / "search" / f"{job.out.name}_c{index}"
    kwargs = {**job.kwargs, "out": str(out), "set": [*job.kwargs["set"], *entries]}
    return Job(f"search/{out.name}", "finetune", kwargs, out, list(job.after), search=entries)


def candidate_score(folder: Path) -> tuple[float, float]:
    """How a finished candidate did on its own val images (the label-honest draw of its budget unless
    ``classifier.val=full``; never the test split): macro-F1, then the lower val loss, since a draw of a
    dozen images often ties at 1.0. A NaN scores lowest."""
    metrics = read_json(folder / "metrics.json")
    with open(folder / "history.csv") as f:
        loss = {int(row["epoch"]): float(row["val_loss"]) for row in csv.DictReader(f)}
    f1, last = metrics["val"]["macro_f1"], loss[metrics["selected_epoch"]]
    return (f1 if math.isfinite(f1) else -math.inf), (-last if math.isfinite(last) else -math.inf)


def chosen(job: Job) -> list[str]:
    """The --search entries of ``job``'s best finished candidate. Refused when none finished: there is no
    recipe to run."""
    if not job.choices:
        return []
    best = best_candidate(job)
    if best is None:
        raise ConfigError(f"run {job.name}: none of its recipe candidates finished (see search/*.log)")
    return entries(best) or []


def best_candidate(job: Job) -> Job | None:
    """``job``'s finished candidate with the best ``candidate_score``; a tie keeps the earlier one (the grid's
    order, so the candidate past the edge must do better). One past an edge the best no longer takes (a
    grid candidate that failed, then finished better) is no longer a candidate."""
    finished = [c for c in job.choices if run_status(c.out) == "finished" and entries(c) is not None]
    return max(finished, key=lambda candidate: candidate_score(candidate.out), default=None)


def entries(candidate: Job) -> list[str] | None:
    """A recipe candidate's --search entries. The one of --search-beyond takes the best grid candidate's and
    moves its last entry past the grid's edge; None where the best did not take the edge (the grid already
    holds a longer, or larger, value that did worse: nothing to look past) or none has finished.

    Why: a search whose best candidate sits on the edge of its grid has not found the best value (every
    arm at 1 % chose the longest length); one step past it, by the same rule for every arm and chosen on
    the same draw, tests that without growing every grid."""
    if candidate.beyond is None:
        return candidate.search
    (count, edge, past), best = candidate.beyond, best_candidate(candidate)
    at_edge = (
        best is not None and candidate.choices.index(best) % count == count - 1
    )  # grid order: search_grid
    return [*best.search[: -len(edge)], *past] if best is not None and at_edge else None


def _chain_rounds(job: Job, previous: Job | None) -> None:
    """Margin selection as rounds over the study's fractions: the smallest fraction starts cold (typiclust);
    each larger one keeps the previous fraction's labels and adds those its model is least sure of."""
    if previous is None:
        job.kwargs["set"] = [*job.kwargs["set"], "classifier.selection=typiclust"]
        return
    job.kwargs["set"] = [*job.kwargs["set"], f"classifier.selection_from={previous.out}"]
    job.after = [*job.after, previous.name]


def train_images(manifest: Path) -> int:
    """The number of train images a split manifest lists."""
    return sum(item.split == "train" for item in read_manifest(manifest)[1])


def pool_images(sources: list[str]) -> int:
    """The size of a pretraining pool (a manifest contributes its train images); 0 if a source cannot
    be read: that run fails at once, and costs nothing."""
    try:
        return sum(train_images(Path(s)) if s.endswith(".csv") else len(collect([s])) for s in sources)
    except DataError:
        return 0


def job_config(job: Job) -> PretrainConfig | FinetuneConfig:
    """The config a job will run with (its preset, epochs and --set / --arm-set keys), resolved as its
    command will resolve it: a mistyped key fails here, before the study writes anything."""
    args = job.kwargs
    flags = {"optim": {"epochs": args["epochs"]}}
    kind = PretrainConfig if job.command == "pretrain" else FinetuneConfig
    past = job.beyond[2] if job.beyond else []  # its other entries, the grid's, are checked by the grid
    return resolve(kind, job.command, args["preset"], None, flags, [*args["set"], *past])


def job_costs(jobs: list[Job], out: Path) -> dict[str, float]:
    """Each job's cost for the study's ETA (see leanmae.eta): images handled, from its resolved config and the
    data."""
    _, items = read_manifest(out / "split.csv")
    train = sum(item.split == "train" for item in items)
    costs = {}
    for job in jobs:
        cfg = job_config(job)
        if isinstance(cfg, PretrainConfig):
            costs[job.name] = pretrain_cost(cfg.optim.epochs, pool_images(job.kwargs["data"]))
        elif _copies_its_candidate(job):
            costs[job.name] = 0.0
        else:
            costs[job.name] = finetune_cost(
                cfg.optim.epochs,
                train,
                job.kwargs["fraction"],
                cfg.optim.batch_size,
                cfg.classifier.min_steps,
                len(items),
            )
    return costs


def _copies_its_candidate(job: Job) -> bool:
    """Whether ``job`` will be a copy of its chosen candidate (``same_candidate``), as its ETA must guess
    before the search has ended: a grid run (not the candidate past the edge) at the search's seed, not
    begun."""
    at_search_seed = bool(job.choices) and job.kwargs["seed"] == job.choices[0].kwargs["seed"]
    return at_search_seed and not job.beyond and run_status(job.out) is None


def run_job(command: str, kwargs: dict[str, Any]) -> None:
    """Run one job in this process (what each launched process and each SLURM job executes)."""
    import leanmae

    if "copy_of" in kwargs:
        copy_run(Path(kwargs["copy_of"]), Path(kwargs["out"]))
        return
    getattr(leanmae, command)(**kwargs)


def copy_run(source: Path, out: Path) -> None:
    """``out`` as a copy of the finished run ``source``, appearing by one rename; its run.json names the
    source (``copy_of``), and the report counts its time once, under the source.

    Left behind: what is not the run (dotted names: a lock, a killed writer's temporaries; ``evaluate-*``,
    written into the source later by ``leanmae evaluate``) and the source's MLflow record, for the copy
    reports as a run of its own (``finish_run``). A copy a killed study left half-made is removed first:
    the study's lock keeps every other writer out of its runs."""
    remove_leftovers(out.parent, out.name)
    ignore = shutil.ignore_patterns(".*", "evaluate-*", MLFLOW_RUN_FILE)
    with atomic_dir(out) as tmp:
        shutil.copytree(source, tmp, dirs_exist_ok=True, ignore=ignore)
        info = {**read_json(tmp / RUN_FILE), "copy_of": f"{source.parent.name}/{source.name}"}
        write_json(tmp / RUN_FILE, info)
    write_card(out / "model")  # the card names the run's folder
    finish_run(out, info["config"]["run"]["report_to"], read_json(out / "metrics.json"))
    print(f"{out}: a copy of {source}, the same run (same options, seed and labels)", flush=True)


def write_search(out: Path, jobs: list[Job], states: dict[str, str]) -> None:
    """search.csv: each recipe candidate's val scores (or that it diverged) and which became its arm's recipe
    at its fraction, so the report can say what search every arm got (the same grid at every fraction)."""
    rows = {}
    for job in jobs:
        ended = {name: states.get(name) for name in job.tries}
        if "done" not in ended.values() or set(ended.values()) - set(ENDED):
            continue
        best = chosen(job)
        for candidate in job.choices:
            state = ended[candidate.name]
            settings = entries(candidate) if state != NOT_NEEDED else candidate.beyond[2]  # type: ignore[index]
            f1, loss = candidate_score(candidate.out) if state == "done" else ("", "")
            rows[candidate.out.name] = [
                arm_of(job.name),
                job.kwargs["fraction"],
                candidate.out.name,
                " ".join(settings or []),
                "finished" if state == "done" else state,
                f1,
                "" if loss == "" else -loss,
                state == "done" and settings == best,
            ]
    if rows:
        header = ["arm", "fraction", "candidate", "settings", "status", "val_macro_f1", "val_loss", "chosen"]
        write_atomic(out / "search.csv", csv_text(header, rows.values()))


def _launch_kwargs(job: Job) -> dict[str, Any]:
    """A job's options as it runs: a searched run with its chosen recipe, the candidate past the grid's edge
    with its entries (the same on every call: they read finished runs only)."""
    added = (entries(job) or []) if job.beyond else chosen(job)
    return {**job.kwargs, "set": [*job.kwargs["set"], *added]}


def same_candidate(job: Job) -> Job | None:
    """The finished recipe candidate that *is* ``job``: at the search's seed, the run of the recipe its search
    chose would train that candidate over again, step for step (same options, seed and labels; randomness
    keyed per image; on a CPU, bit for bit), so the study copies it instead: one run in seven to ten of a
    searched study. None, and the run trains, unless every option but the folder is the same, the
    candidate's own run.json holds the recipe chosen now (a candidate past the edge trained before the grid's
    best changed does not), it holds its results and model, and ``job``'s folder holds nothing yet."""
    best = best_candidate(job) if job.choices else None
    if best is None or (job.out.is_dir() and any(not p.name.startswith(".") for p in job.out.iterdir())):
        return None
    # as each would launch: the candidate past the edge adds its own longer settings, not the best's
    if {**_launch_kwargs(job), "out": ""} != {**_launch_kwargs(best), "out": ""}:
        return None
    if not all((best.out / name).exists() for name in ("metrics.json", "predictions.csv", "model")):
        return None
    return None if _settings_problem(best.out, job, entries(best) or []) else best


def _with_resume(job: Job) -> dict[str, Any]:
    """A job whose folder holds a started run continues it instead of starting over; one that would repeat
    its chosen candidate is a copy of it (``same_candidate``)."""
    if (same := same_candidate(job)) is not None:
        return {**_launch_kwargs(job), "copy_of": str(same.out)}
    return {**_launch_kwargs(job), "resume": run_status(job.out) is not None}


def run_child(parent: int, command: str, kwargs: dict[str, Any]) -> None:
    """A job launched by a local study: it stops when the study process dies.

    Without this, a study killed with SIGKILL would leave its runs training, and rerunning the
    study would put a second writer into the same run folder.
    """

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(137)

    threading.Thread(target=watch, daemon=True).start()
    try:
        run_job(command, kwargs)
    except NonFiniteLossError:
        traceback.print_exc()
        sys.exit(DIVERGED_EXIT)


def _launch_local(job: Job) -> int:
    """One job as a child process with one torch thread; its output goes to runs/<name>.log."""
    job.out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    code = (
        "import json, sys; from leanmae.commands.study import run_child; run_child(int(sys.argv[1]), "
        "sys.argv[2], json.loads(sys.argv[3]))"
    )
    args = [sys.executable, "-c", code, str(os.getpid()), job.command, json.dumps(_with_resume(job))]
    with open(job.out.parent / f"{job.out.name}.log", "a") as log:
        return subprocess.run(args, stdout=log, stderr=subprocess.STDOUT, env=env).returncode


def run_local(jobs: list[Job], workers: int, progress: bool, costs: dict[str, float]) -> dict[str, str]:
    """Run unfinished jobs, ``workers`` at a time, each once its dependencies have finished.

    After each finished job the ETA (``costs``: see job_costs) goes into the bar's postfix on a
    terminal, or into one plain line otherwise (nohup, SLURM, CI).
    """
    state = {j.name: _state_at_start(j) for j in jobs}
    todo = [j for j in jobs if state[j.name] == "todo"]
    resumed = {
        j.name for j in todo if run_status(j.out) is not None
    }  # part-done: their times would mislead the rates
    bar = tqdm(
        total=len(jobs),
        initial=len(jobs) - len(todo),
        desc="study runs",
        unit="run",
        disable=bar_disabled(progress),
    )
    running: dict[Future, Job] = {}
    started: dict[str, float] = {}
    named = {j.name: j for j in jobs}

    def before(job: Job) -> list[Job]:
        """The jobs ``job`` continues from, all the way back (each margin round chose with the last)."""
        found: dict[str, Job] = {}
        waiting = list(job.after)
        while waiting:
            name = waiting.pop()
            if name in named and name not in found:
                found[name] = named[name]
                waiting += named[name].after
        return list(found.values())

    def launched_with(job: Job) -> list[Job]:
        """The runs ``job`` must not start beside or after if they began with a stale recipe: those of its
        arm and fraction (its search's choice is theirs) and those it continues from."""
        return [j for j in jobs if j.choices and j.tries == job.tries] + before(job)

    timings: list[Timing] = []

    def show_eta() -> None:
        now = time.time()
        left = [
            Timing(j.command, costs[j.name], now - started.get(j.name, now))
            for j in jobs
            if state[j.name] in ("todo", "running")
        ]
        eta = eta_seconds(left, timings, workers)
        if bar.disable:
            finished = [j.command for j in jobs if state[j.name] == "done"]
            needed = sum(s != NOT_NEEDED for s in state.values())
            print(
                progress_line(finished, needed, sum(s == "failed" for s in state.values()), eta),
                flush=True,
            )
        else:
            bar.set_postfix_str(eta_text(eta))

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        while todo or running:
            for job in list(todo):
                if any(state[d] == "failed" for d in [*job.after, *job.tries]):
                    state[job.name] = "failed"
                    todo.remove(job)
                    bar.update(1)
                elif job.beyond and all(state[d] in ENDED for d in job.tries) and entries(job) is None:
                    state[job.name] = NOT_NEEDED  # the best stayed inside the grid: nothing to look past
                    todo.remove(job)
                    bar.update(1)
                elif job.tries and all(state[d] in (DIVERGED, NOT_NEEDED) for d in job.tries):
                    tqdm.write(f"run {job.name} not started: every recipe candidate diverged")
                    state[job.name] = "failed"
                    todo.remove(job)
                    bar.update(1)
                elif (
                    len(running) < workers
                    and all(state[d] == "done" for d in job.after)
                    and all(state[d] in ENDED for d in job.tries)
                    # a margin round waits for the rounds before to be settled: their searches too
                    and all(state[t] in ENDED for earlier in before(job) for t in earlier.tries)
                ):
                    if stale := stale_runs(launched_with(job), lambda c: state[c.name] in ENDED):
                        tqdm.write(f"run {job.name} not started: {stale[0]}")
                        state[job.name] = "failed"
                        todo.remove(job)
                        bar.update(1)
                        continue
                    state[job.name] = "running"
                    started[job.name] = time.time()
                    running[pool.submit(_launch_local, job)] = job
                    todo.remove(job)
            if not running:
                break
            finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for future in finished:
                job = running.pop(future)
                code = future.result()
                ok = code == 0 and run_status(job.out) == "finished"
                diverged = code == DIVERGED_EXIT and job.name.startswith("search/")  # a search's result
                state[job.name] = "done" if ok else DIVERGED if diverged else "failed"
                if diverged:  # kept as a result: the next call does not train it again
                    write_atomic(_diverged_file(job), "its loss went NaN or infinite (see its log)\n")
                bar.update(1)
                if not ok:
                    tqdm.write(
                        f"run {job.name} {state[job.name]}; see {job.out.parent / (job.out.name + '.log')}"
                    )
                elif job.name not in resumed and costs[job.name] > 0:  # a copy tells nothing of the rate
                    timings.append(Timing(job.command, costs[job.name], time.time() - started[job.name]))
                show_eta()
    bar.close()
    return state


def _state_at_start(job: Job) -> str:
    """A job's state when a call of the study begins: "done" if finished, DIVERGED if it is a recipe
    candidate that diverged in an earlier call, else "todo"."""
    if run_status(job.out) == "finished":
        return "done"
    return DIVERGED if _diverged_file(job).exists() else "todo"


def _diverged_file(job: Job) -> Path:
    """Beside a diverged candidate's folder and log: the study's record that it diverged (delete it with the
    folder to train that candidate again)."""
    return job.out.parent / f"{job.out.name}.diverged"


def waves(jobs: list[Job]) -> list[list[Job]]:
    """Jobs in the order their dependencies allow: a job's wave comes after the waves of the jobs it waits
    for (pretrainings, then the grid, then each next round of margin selection); a finished job, absent
    from ``jobs``, holds nothing up."""
    names, level = {j.name for j in jobs}, {}
    for job in jobs:  # plan lists a job after every job it waits for
        level[job.name] = 1 + max((level[name] for name in job.after if name in names), default=-1)
    return [[j for j in jobs if level[j.name] == k] for k in range(max(level.values(), default=-1) + 1)]


def run_slurm(jobs: list[Job], cfg: StudyConfig, out: Path) -> dict[str, str]:
    """Submit unfinished jobs through submitit, one job array per wave of dependencies (``waves``): each
    waits for the one before, on the cluster (--no-wait) or here."""
    import submitit

    opts = cfg.slurm
    executor = submitit.AutoExecutor(folder=opts.folder or str(out / "slurm"), cluster=opts.cluster)
    params: dict[str, Any] = {
        "timeout_min": opts.time_min,
        "cpus_per_task": opts.cpus_per_job,
        "mem_gb": opts.mem_gb,
        "name": "leanmae",
    }
    if executor.cluster == "slurm":
        params.update(
            slurm_partition=opts.partition,
            gpus_per_node=opts.gpus_per_job,
            slurm_array_parallelism=opts.max_parallel,
        )
        if opts.account:
            params["slurm_account"] = opts.account
    executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
    todo = [j for j in jobs if run_status(j.out) != "finished"]
    submitted: list[tuple[Job, Any]] = []
    state = {j.name: "done" for j in jobs if j not in todo}
    previous: list[Any] = []
    for wave in waves(todo):
        if previous and executor.cluster == "slurm" and not cfg.wait:
            # afterany, not afterok: one failed run must not hold back the runs that do not need it (one
            # that does fails itself, saying why)
            dependency = "afterany:" + ":".join(handle.job_id for handle in previous)
            executor.update_parameters(slurm_additional_parameters={"dependency": dependency})
        else:
            for handle in previous:
                handle.wait()  # its result (or failure) is collected below
        with executor.batch():
            previous = [executor.submit(run_job, job.command, _with_resume(job)) for job in wave]
        submitted += zip(wave, previous, strict=True)
    print(
        f"submitted {len(submitted)} job(s): "
        f"{', '.join(s.job_id for _, s in submitted[:5])}{' ...' if len(submitted) > 5 else ''}"
    )
    if not cfg.wait:
        return {**state, **{j.name: "submitted" for j, _ in submitted}}
    for job, handle in submitted:
        try:
            handle.result()
            state[job.name] = "done" if run_status(job.out) == "finished" else "failed"
        except Exception as err:  # a failed job must not stop the collection of the others
            state[job.name] = "failed"
            print(f"run {job.name} failed: {err}")
    return state


def study(
    out: str | Path,
    config: str | Path | None = None,
    data: str | None = None,
    classes: str | list[str] | None = None,
    pretrain_data: list[str] | None = None,
    ood_data: list[str] | None = None,
    external: list[str] | None = None,
    shift_reference: str | None = None,
    pool: str | None = None,
    preset: str | None = None,
    fractions: str | list[float] | None = None,
    seeds: str | list[int] | None = None,
    extra_seeds: str | list[int] | None = None,
    arms: str | list[str] | None = None,
    mae: str | list[str] | None = None,
    pretrain_epochs: int | None = None,
    finetune_epochs: int | None = None,
    jobs: int | None = None,
    launcher: str | None = None,
    wait: bool | None = None,
    slurm: dict[str, Any] | None = None,
    set: list[str] | None = None,
    arm_set: list[str] | None = None,
    search: list[str] | None = None,
    search_beyond: str | None = None,
    split: str | None = None,
    progress: bool = True,
    target: float | None = None,
    note: str | None = None,
) -> dict[str, Any]:
    """Run (or continue) a label-efficiency study in ``out`` and write its report; returns the run states.

    Settings come from the YAML ``config`` and these arguments (arguments win). Rerunning the same
    call continues an interrupted study: finished runs are kept.
    """
    from leanmae.reporting.learning import check_target

    layer = load_yaml(config) if config else {}
    given = {
        "data": data,
        "classes": _list(classes, str, "--classes"),
        "pretrain_data": pretrain_data,
        "ood_data": ood_data,
        "external": external,
        "shift_reference": shift_reference,
        "pool": pool,
        "preset": preset,
        "fractions": _list(fractions, float, "--fractions"),
        "seeds": _list(seeds, int, "--seeds"),
        "extra_seeds": _list(extra_seeds, int, "--extra-seeds"),
        "arms": _list(arms, str, "--arms"),
        "mae": [mae] if isinstance(mae, str) else mae,
        "pretrain_epochs": pretrain_epochs,
        "finetune_epochs": finetune_epochs,
        "jobs": jobs,
        "launcher": launcher,
        "wait": wait,
        "slurm": slurm,
        "set": set,
        "arm_set": arm_set,
        "search": search,
        "search_beyond": search_beyond,
        "split": split,
        "progress": progress,
        "note": note,
    }
    cfg: StudyConfig = build(
        StudyConfig, [layer, {k: v for k, v in given.items() if v is not None}], STUDY_CHECKS
    )
    _check(cfg)
    check_target(target)  # the report's macro-F1 target: refused now, not after the last run
    bench = study_benchmark(cfg)
    out = Path(out)
    jobs_list = plan(cfg, out)
    for job in jobs_list:  # every --set and --arm-set key checked before anything is written
        job_config(job)
    planned = {job.name for job in jobs_list}
    for arm in cfg.arms:
        if not any(run_name(arm, f, cfg.seeds[0]) in planned for f in cfg.fractions):
            raise ConfigError(f"--arms {arm}: {_no_full_run(cfg, arm)}, and --fractions gives it no other")
    if not (out / STUDY_FILE).exists() and out.exists() and any(p.name != LOCK_FILE for p in out.iterdir()):
        raise OutputFolderError(
            f"{out}: folder is not empty and holds no study ({STUDY_FILE}); choose a new or empty --out"
        )
    out.mkdir(parents=True, exist_ok=True)
    with held(out):  # a second study into the same folder is refused while this one runs
        return _run_study(cfg, out, jobs_list, bench, target)


def _no_full_run(cfg: StudyConfig, arm: str) -> str | None:
    """Why ``arm`` has no run with all labels (no_run_with_all_labels of its settings)."""
    settings = [*cfg.set, *arm_settings(cfg, arm)]
    return no_run_with_all_labels(resolve(FinetuneConfig, "finetune", cfg.preset, None, {}, settings))


def _run_study(
    cfg: StudyConfig, out: Path, jobs_list: list[Job], bench: Benchmark, target: float | None
) -> dict[str, str]:
    """The study with its folder held: settings checked against the saved ones, split, runs, report."""
    from leanmae.reporting.study_report import write_report

    grid = [job.name for job in jobs_list if job.command == "finetune" and not job.name.startswith("search/")]
    for arm in cfg.arms:
        if 1 in cfg.fractions and run_name(arm, 1, cfg.seeds[0]) not in grid:
            print(f"study: {arm}: {_no_full_run(cfg, arm)}")
    settings = to_dict(cfg)
    _check_saved_settings(out, settings)
    write_json(out / STUDY_FILE, settings)
    write_json(out / PLAN_FILE, {"runs": grid})  # what the report counts its finished runs against
    if not (out / "split.csv").exists():
        if cfg.split:
            root, items = read_manifest(cfg.split)
            write_manifest(items, out / "split.csv", root)
        else:
            import leanmae  # the public API: commands never import each other

            leanmae.split(cfg.data, cfg.classes, out / "split.csv", cfg.split_ratios, cfg.split_seed)
    check_inits(jobs_list)
    check_recipes(jobs_list)
    check_semi_pools(jobs_list, out / "split.csv")
    for job in jobs_list:  # a pool that overlaps itself or the split's val/test fails now, not mid-study
        if job.command == "pretrain" and run_status(job.out) != "finished":
            collect(job.kwargs["data"])
    started = time.time()
    report_to = study_report_to(cfg.set)
    with study_parent(out, report_to):
        states = (
            run_slurm(jobs_list, cfg, out)
            if cfg.launcher == "slurm"
            else run_local(jobs_list, cfg.jobs, cfg.progress, job_costs(jobs_list, out))
        )
    score_study(out, bench, cfg.progress)
    write_search(out, jobs_list, states)
    failed = sorted(name for name, s in states.items() if s == "failed")
    # a candidate that ended in this call may have beaten the recipe of runs that finished before it
    stale = stale_runs(jobs_list, lambda candidate: states.get(candidate.name) in ENDED)
    report = write_report(out, target)  # target: the report's macro-F1 target, not a study setting
    finish_run(out, report_to, {})
    lost = sum(s == DIVERGED for s in states.values())  # a diverged candidate is a result of the search
    print(
        f"study: {sum(s == 'done' for s in states.values())} of "
        f"{sum(s != NOT_NEEDED for s in states.values())} runs finished "
        f"({time.time() - started:.0f} s this call)"
        + (f"; {lost} recipe candidate(s) diverged (search.csv)" if lost else "")
        + f"; report {report}"
    )
    if stale:
        raise OutputFolderError(
            "; ".join(stale) + (f"; and {len(failed)} run(s) failed: {', '.join(failed)}" if failed else "")
        )
    if failed:
        raise RuntimeError(
            f"{len(failed)} run(s) failed: {', '.join(failed)}; fix the cause and rerun the same "
            "command to continue"
        )
    return states


def _started(out: Path) -> bool:
    """Whether a job of the study has begun: a run.json in a pretraining or run folder."""
    return (
        any(out.glob(f"*/{RUN_FILE}"))
        or any(out.glob(f"runs/*/{RUN_FILE}"))
        or any(out.glob(f"search/*/{RUN_FILE}"))
    )


def _check_saved_settings(out: Path, settings: dict[str, Any]) -> None:
    """Refuse settings that differ from the saved study's, once a job has begun.

    Growing fractions, seeds or arms is fine, and so is adding --search-beyond, or anything that only changes
    scoring. Before any job has begun nothing depends on the saved settings: a start that failed (a mistyped
    option) leaves nothing that blocks the corrected command, whose own split replaces the old one.
    """
    saved = out / STUDY_FILE
    if not saved.exists():
        return
    ignored = (*_SCORING_ONLY, "jobs", "launcher", "wait", "slurm", "progress")
    comparable = [k for k in settings if k not in ignored]
    before = read_json(saved)
    changed = sorted(
        k
        for k in comparable
        if json.dumps(before.get(k)) != json.dumps(settings[k])
        and k not in ("fractions", "seeds", "extra_seeds", "arms")
        and not (k == "search_beyond" and before.get(k) is None)  # added: check_recipes guards what ran
    )
    if not changed:
        return
    if _started(out):
        raise OutputFolderError(
            f"{out}: holds a study with other settings ({', '.join(changed)}); use a new --out "
            "(growing fractions, seeds or arms is fine)"
        )
    (out / "split.csv").unlink(missing_ok=True)


def check_inits(jobs: list[Job]) -> None:
    """Refuse continuing a study whose MAE or hf: folder holds other weights than its runs started from.

    Why: ``--mae FOLDER`` names a folder, not weights; pretraining again into it (or copying another
    model there) between two invocations would put runs of two different MAEs into one arm.
    """
    now: dict[str, str] = {}
    for job in jobs:
        recorded = run_info(job.out).get("init_sha256") if job.command == "finetune" else None
        folder = model_folder(job.kwargs["init"]) if recorded else None
        if folder is None or not folder.is_dir():
            continue
        if recorded != now.setdefault(str(folder), weights_sha256(folder)):
            raise OutputFolderError(
                f"{folder}: holds other weights than run {job.name} started from; put the model "
                "the study began with back, or start a new study (--out)"
            )


def check_recipes(jobs: list[Job]) -> None:
    """Refuse continuing a study whose run began with another recipe than its search now chooses: a
    candidate added since (--search-beyond given to a started study) did better. Why: a finished run would
    mix two recipes in one cell of the grid, a resumed one two recipes in one run."""
    stale = stale_runs(jobs, _ended)
    if stale:
        raise OutputFolderError("; ".join(stale))


def stale_runs(jobs: list[Job], ended: Callable[[Job], bool]) -> list[str]:
    """Why each begun run of the grid whose candidates have all ``ended`` must not stand: it began with
    another recipe than its search now chooses; with the begun runs that continue from it (a margin round
    chose its labels with its model), which must go with it. Also a begun candidate past the edge that
    does not hold the settings past the grid's best (one copied from the best by 4ce2419 to a79e758)."""
    found = []
    for job in jobs:
        if not job.choices or not _began(job) or not all(map(ended, job.choices)):
            continue
        problem = (
            _settings_problem(job.out, job, entries(job) or [], "as the candidate past the edge it takes")
            if job.beyond
            else recipe_problem(job)
        )
        if problem is None:
            continue
        gone, later = {job.name}, []
        for other in jobs:  # plan lists a job after every job it waits for
            if gone & set(other.after) and _began(other):
                gone.add(other.name)
                later.append(str(other.out))
        found.append(
            f"{problem}: delete it"
            + (
                f" and the runs that continue from it ({', '.join(later)}), with their logs,"
                if later
                else " and its log,"
            )
            + " then rerun the same command"
        )
    return found


def _began(job: Job) -> bool:
    """Whether a job's folder holds a run to keep or continue (not one that failed before its first
    checkpoint, which starts afresh)."""
    return run_status(job.out) is not None and not failed_start(job.out)


def recipe_problem(job: Job) -> str | None:
    """How a begun searched run's recorded settings differ from its search's choice now (None: they do
    not). Compared as JSON values, so a tuple and the list run.json holds, or 30 and 30.0, are one."""
    best = best_candidate(job)
    if best is None:
        return None  # nothing chosen (the candidates' folders were removed): nothing to compare with
    return _settings_problem(job.out, job, entries(best) or [])


def _settings_problem(
    folder: Path, job: Job, settings: list[str], takes: str = "its recipe search now chooses"
) -> str | None:
    """How the run in ``folder`` began with other values of the --search entries ``settings`` than ``job``
    ``takes`` with them (None: the same)."""
    recorded, now = run_info(folder).get("config", {}), leaf_keys(_with_search(job, settings))
    for key in map(_key, settings):
        before = _dotted(recorded, key)
        if json.loads(json.dumps(before)) != json.loads(json.dumps(now[key])):
            return f"{folder} began with {key}={before}, but {takes} {key}={now[key]}"
    return None


def _ended(candidate: Job) -> bool:
    """Whether a recipe candidate, as the study's folders show (``_state_at_start``), has nothing left to
    run: finished, diverged, or past an edge the best of the ended grid did not take. One that failed
    otherwise is run again, so it has not ended."""
    if _state_at_start(candidate) in ENDED:
        return True
    grid_ended = all(map(_ended, candidate.choices))
    return candidate.beyond is not None and grid_ended and entries(candidate) is None


def _with_search(job: Job, settings: list[str]) -> PretrainConfig | FinetuneConfig:
    """``job``'s config with these --search entries."""
    return job_config(
        Job(job.name, job.command, {**job.kwargs, "set": [*job.kwargs["set"], *settings]}, job.out)
    )


def _dotted(values: dict[str, Any], key: str) -> Any:
    """The value at a dotted key of a nested dict (a run.json's config); None where it has none."""
    for part in key.split("."):
        values = values.get(part) if isinstance(values, dict) else None  # type: ignore[assignment]
    return values


def study_benchmark(cfg: StudyConfig) -> Benchmark:
    """The robustness benchmark every finished run gets, checked before anything trains: each
    ``--external`` folder holds only folders of the study's classes, ``--shift-reference`` holds images."""
    check_external(cfg.external, cfg.classes)
    return benchmark(cfg.shift_reference, cfg.external)


def _list(value: Any, kind: type, option: str) -> list[Any] | None:
    if value is None:
        return None
    try:
        if isinstance(value, str):
            return [kind(v.strip()) for v in value.split(",") if v.strip()]
        return [kind(v) for v in value]
    except ValueError:
        raise ConfigError(f"{option} {value!r}: expected comma-separated {kind.__name__} values") from None


def _check_given_split(cfg: StudyConfig) -> None:
    """A ``--split`` manifest lists --data's images and exactly the study's classes: one of other images
    or classes would train something else than the report says; and no split ratios or split seed, which
    it would silently ignore."""
    drawn = {"split_ratios": tuple(cfg.split_ratios), "split_seed": cfg.split_seed}
    for key, value in drawn.items():
        if value != getattr(StudyConfig(), key):  # they draw a split, and --split's is not drawn
            raise ConfigError(f"--split {cfg.split}: {key} {value} has no effect on a given split; drop it")
    root, items = read_manifest(cfg.split)
    if root.resolve() != Path(cfg.data).resolve():
        raise ConfigError(f"--split {cfg.split}: its images are under {root}, not under --data {cfg.data}")
    labels = sorted({item.label for item in items})
    if labels != sorted(cfg.classes):
        raise ConfigError(
            f"--split {cfg.split}: holds the classes {', '.join(labels)}, but the study's --classes are "
            f"{', '.join(cfg.classes)}"
        )


def _same_values(cfg: StudyConfig, a: list[str], b: list[str]) -> bool:
    """Whether two lists of --set entries of the same keys give them the same values once the config has
    typed them (``60`` and ``60.0``, ``5e-4`` and ``0.0005`` are one)."""
    typed = [leaf_keys(resolve(FinetuneConfig, "finetune", cfg.preset, None, {}, x)) for x in (a, b)]
    return all(typed[0][_key(setting)] == typed[1][_key(setting)] for setting in a)


def _key(setting: str) -> str:
    """The fine-tuning key a KEY=VALUE setting sets: ``finetune.optim.lr`` and ``optim.lr`` are one."""
    return setting.split("=", 1)[0].strip().removeprefix("finetune.")


def _check(cfg: StudyConfig) -> None:
    """What the value checks (STUDY_CHECKS) cannot see: the data folder must exist, SLURM must be there."""
    if not Path(cfg.data).is_dir():
        raise DataError(f"{cfg.data}: data folder does not exist")
    if cfg.split:
        _check_given_split(cfg)
    if cfg.launcher == "slurm" and cfg.slurm.cluster is None and shutil.which("sbatch") is None:
        # submitit would quietly run every job here instead, and still say "submitted"
        raise ConfigError(
            "--launcher slurm: this machine has no SLURM (no sbatch on the PATH); start the study on a "
            "SLURM login node, or use --launcher local"
        )
    for arm in cfg.arms:
        arm_pool(arm, cfg.pool)
    if cfg.search and cfg.launcher == "slurm":
        raise ConfigError(
            "--search runs with --launcher local: each run's recipe is chosen once its candidates have "
            "finished, which a SLURM array submitted at once cannot wait for"
        )
    if cfg.search_beyond:
        past, last = cfg.search_beyond.split(";"), alternatives(cfg.search[-1]) if cfg.search else []
        keys = {_key(setting) for setting in last[-1]} if last else set()
        if {_key(setting) for setting in past} != keys:
            raise ConfigError(
                f"--search-beyond {cfg.search_beyond!r}: must set the keys of the last --search entry "
                f"({', '.join(sorted(keys)) or 'none given'}), the one it looks past the edge of"
            )
        if any(_same_values(cfg, past, alternative) for alternative in last):
            raise ConfigError(
                f"--search-beyond {cfg.search_beyond!r}: already a value of the last --search entry; give "
                "the value past its last"
            )
    searched = {_key(setting) for entry in cfg.search for choice in alternatives(entry) for setting in choice}
    for entry in [*cfg.set, *(e.split(":", 1)[1] for e in cfg.arm_set)]:
        if _key(entry) in searched:
            raise ConfigError(
                f"{entry!r} sets {_key(entry)}, which --search searches; give its values to "
                "--search or leave it out of the search"
            )
    for pool, folder in given_maes(cfg).items():
        if not folder.is_dir():
            raise DataError(f"--mae {folder}: MAE folder for the {pool!r} pool does not exist")
    folders: dict[str, str] = {}
    for arm in cfg.arms:
        other = folders.setdefault(run_name(arm, 1, 0), arm)
        if other != arm:
            raise ConfigError(
                f"--arms: {other} and {arm} would write into the same run folders; give the model "
                "folders different names"
            )
    repeated = sorted(set(cfg.extra_seeds) & set(cfg.seeds))
    if repeated:
        raise ConfigError(
            f"--extra-seeds {','.join(map(str, repeated))}: already in --seeds, so they add no run; "
            "give other seeds"
        )
    if cfg.extra_seeds and not any(f <= cfg.extra_seeds_up_to for f in cfg.fractions):
        raise ConfigError(
            f"--extra-seeds: no fraction is at or below extra_seeds_up_to ({cfg.extra_seeds_up_to:g}), "
            "so they add no run"
        )
