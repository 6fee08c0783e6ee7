"""The label-efficiency study: grid runner, resumption, statistics, tables and the report."""

from __future__ import annotations

import csv
import html
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

import leanmae
import leanmae.commands.study as study_module
from leanmae.commands.study import (
    DIVERGED_EXIT,
    ENDED,
    Job,
    StudyConfig,
    check_recipes,
    chosen,
    entries,
    plan,
    run_local,
    run_name,
    stale_runs,
)
from leanmae.data.split import read_manifest
from leanmae.data.synthetic import make_synthetic_tiles, make_synthetic_wbc
from leanmae.errors import ConfigError, OutputFolderError
from leanmae.reporting.study_report import findings, load_runs, tables, times_table

FAST = ["run.device=cpu", "finetune.classifier.min_steps=2", "optim.epochs=1"]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("study-data")
    cells = make_synthetic_wbc(root / "cells", n_per_class=12, size=48, seed=0)
    tiles = make_synthetic_tiles(root / "tiles", n=24, size=64, seed=1)
    return cells, tiles


def scratch_at_all_labels(out: Path, cells: Path, **settings: Any) -> dict[str, str]:
    """A two-run study (scratch, all labels, seeds 0 and 1): the smallest that trains."""
    return leanmae.study(
        out=out,
        data=str(cells),
        arms=["scratch"],
        fractions=[1.0],
        seeds=[0, 1],
        preset="test",
        set=FAST,
        progress=False,
        **settings,
    )


@pytest.fixture(scope="module")
def finished_study(synthetic: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    cells, tiles = synthetic
    out = tmp_path_factory.mktemp("study") / "s"
    leanmae.study(
        out=out,
        data=str(cells),
        pretrain_data=[str(tiles)],
        preset="test",
        fractions=[0.5, 1.0],
        seeds=[0, 1],
        jobs=2,
        set=FAST,
        progress=False,
    )
    return out


def test_plan_pretrains_once_and_runs_fractions_times_arms_times_seeds(tmp_path: Path) -> None:
    cfg = StudyConfig(
        data="x", pretrain_data=["pool"], fractions=[0.01, 0.1], seeds=[0, 1, 2], arms=["scratch", "mae"]
    )
    jobs = plan(cfg, tmp_path)
    assert [j.name for j in jobs].count("pretrain") == 1
    finetunes = [j for j in jobs if j.command == "finetune"]
    assert len(finetunes) == 2 * 2 * 3
    assert all(j.after == ["pretrain"] for j in finetunes if j.name.startswith("mae"))
    assert all(j.after == [] for j in finetunes if j.name.startswith("scratch"))


def test_plan_runs_seed_by_seed_so_an_interrupted_study_has_whole_seeds(tmp_path: Path) -> None:
    cfg = StudyConfig(
        data="x", pretrain_data=["pool"], fractions=[0.01, 1.0], seeds=[0, 1], arms=["scratch", "mae"]
    )
    names = [j.name for j in plan(cfg, tmp_path) if j.command == "finetune"]
    assert names[:4] == ["scratch_f0.01_s0", "mae_f0.01_s0", "scratch_f1_s0", "mae_f1_s0"]
    assert all(name.endswith("_s1") for name in names[4:])


def test_in_domain_pool_adds_the_train_split_and_never_val_or_test(tmp_path: Path) -> None:
    cfg = StudyConfig(data="x", pretrain_data=["pool"], pool="in-domain")
    pretrain = plan(cfg, tmp_path)[0]
    assert pretrain.kwargs["data"] == [
        "pool",
        str(tmp_path / "split.csv"),
    ]  # a manifest source contributes train images only


def test_each_pool_arm_gets_its_own_pretraining_with_the_split_as_probe(tmp_path: Path) -> None:
    """mae-in-domain and mae-other pretrain on their own pools; in-domain adds the split's train images."""
    jobs = plan(
        StudyConfig(
            data="x",
            pretrain_data=["pool"],
            fractions=[0.1],
            seeds=[0],
            arms=["scratch", "mae-in-domain", "mae-other"],
        ),
        tmp_path,
    )
    pretrains = {j.name: j for j in jobs if j.command == "pretrain"}
    assert set(pretrains) == {"pretrain", "pretrain-in-domain"}  # the study's --pool (other) keeps pretrain/
    assert pretrains["pretrain"].kwargs["data"] == ["pool"]
    assert pretrains["pretrain-in-domain"].kwargs["data"] == ["pool", str(tmp_path / "split.csv")]
    assert all(j.kwargs["probe"] == str(tmp_path / "split.csv") for j in pretrains.values())
    runs = {j.name: j for j in jobs if j.command == "finetune"}
    assert runs["mae-in-domain_f0.1_s0"].kwargs["init"] == str(tmp_path / "pretrain-in-domain")
    assert runs["mae-in-domain_f0.1_s0"].after == ["pretrain-in-domain"]
    assert runs["mae-other_f0.1_s0"].after == ["pretrain"] and runs["scratch_f0.1_s0"].after == []


def test_given_maes_per_pool_skip_their_pretraining(tmp_path: Path) -> None:
    cfg = StudyConfig(
        data="x",
        pretrain_data=["pool"],
        fractions=[1.0],
        seeds=[0],
        arms=["mae-in-domain", "mae-other"],
        mae=["in-domain=a/mae", "other=b/mae"],
    )
    jobs = plan(cfg, tmp_path)
    assert [j.command for j in jobs] == ["finetune", "finetune"]
    assert {j.name: j.kwargs["init"] for j in jobs} == {
        "mae-in-domain_f1_s0": "a/mae",
        "mae-other_f1_s0": "b/mae",
    }
    with pytest.raises(ConfigError, match="pool before"):
        plan(StudyConfig(data="x", arms=["mae"], mae=["lung=c/mae"]), tmp_path)


def test_extra_seeds_run_only_at_the_small_fractions_after_the_main_seeds(tmp_path: Path) -> None:
    cfg = StudyConfig(
        data="x", fractions=[0.01, 0.1, 1.0], seeds=[0, 1, 2], extra_seeds=[3, 4], arms=["scratch"]
    )
    names = [j.name for j in plan(cfg, tmp_path)]
    assert len(names) == 3 * 3 + 2 * 2
    assert names[-4:] == ["scratch_f0.01_s3", "scratch_f0.1_s3", "scratch_f0.01_s4", "scratch_f0.1_s4"]


def test_arm_set_gives_one_arm_its_own_recipe(tmp_path: Path) -> None:
    """Each arm its own best recipe: an ARM:KEY=VALUE override reaches that arm's runs only, after the common
    --set."""
    cfg = StudyConfig(
        data="x",
        fractions=[0.01],
        seeds=[0],
        arms=["scratch", "mae"],
        mae=["m"],
        set=["optim.epochs=3"],
        arm_set=["scratch:classifier.min_steps=600"],
    )
    runs = {j.name: j.kwargs["set"] for j in plan(cfg, tmp_path)}
    assert runs == {
        "scratch_f0.01_s0": ["optim.epochs=3", "classifier.min_steps=600"],
        "mae_f0.01_s0": ["optim.epochs=3"],
    }


def test_a_variant_arm_starts_where_its_arm_does_with_its_own_settings(tmp_path: Path) -> None:
    """``mae+fixmatch``: the MAE arm's init and pool, FixMatch on top; the report shows it as an arm. It has
    no run with all labels, where no train image is left unlabelled for it."""
    cfg = StudyConfig(
        data="x",
        fractions=[0.01, 1.0],
        seeds=[0],
        arms=["scratch", "mae", "mae+fixmatch", "mae-linear+long"],
        mae=["m"],
        arm_set=["mae+fixmatch:classifier.semi=fixmatch", "mae-linear+long:classifier.min_steps=1200"],
    )
    runs = {
        j.name: (j.kwargs["init"], j.kwargs["linear_probe"], j.kwargs["set"]) for j in plan(cfg, tmp_path)
    }
    assert runs == {
        "scratch_f0.01_s0": ("scratch", False, []),
        "mae_f0.01_s0": ("m", False, []),
        "mae+fixmatch_f0.01_s0": ("m", False, ["classifier.semi=fixmatch"]),
        "mae-linear+long_f0.01_s0": ("m", True, ["classifier.min_steps=1200"]),
        "scratch_f1_s0": ("scratch", False, []),
        "mae_f1_s0": ("m", False, []),
        "mae-linear+long_f1_s0": ("m", True, ["classifier.min_steps=1200"]),
    }


def test_margin_rounds_chain_the_fractions_of_one_arm_and_seed(tmp_path: Path) -> None:
    """1 % chosen cold (typiclust), 2 % and 5 % each keep the round before and add its model's least sure."""
    cfg = StudyConfig(
        data="x",
        fractions=[0.05, 0.01, 0.02],
        seeds=[0],
        arms=["mae+rounds"],
        mae=["m"],
        arm_set=["mae+rounds:classifier.selection=margin"],
    )
    jobs = {j.name: j for j in plan(cfg, tmp_path)}
    first, second, third = (jobs[f"mae+rounds_f{f}_s0"] for f in ("0.01", "0.02", "0.05"))
    assert first.kwargs["set"][-1] == "classifier.selection=typiclust" and first.after == []
    assert second.kwargs["set"][-1] == f"classifier.selection_from={first.out}" and second.after == [
        first.name
    ]
    assert third.after == [second.name]


def test_an_arm_that_chooses_its_labels_has_no_run_with_all_labels(tmp_path: Path) -> None:
    """With every train image labelled a label choice chooses nothing: its run would repeat its arm's run
    without the choice (the costliest of the study), so neither it nor its recipe candidates are planned."""
    cfg = StudyConfig(
        data="x",
        fractions=[0.01, 1.0],
        seeds=[0],
        arms=["mae", "mae+rounds", "mae+typiclust"],
        mae=["m"],
        arm_set=["mae+rounds:classifier.selection=margin", "mae+typiclust:classifier.selection=typiclust"],
        search=["optim.base_lr=5e-4|1e-3"],
    )
    grid = {j.name for j in plan(cfg, tmp_path) if not j.name.startswith("search/")}
    assert grid == {"mae_f0.01_s0", "mae_f1_s0", "mae+rounds_f0.01_s0", "mae+typiclust_f0.01_s0"}
    assert not any("_f1_" in j.name and "+" in j.name for j in plan(cfg, tmp_path))  # no candidates either


def test_search_gives_every_arm_the_same_candidates_at_every_fraction_at_the_first_seed(
    tmp_path: Path,
) -> None:
    """Equal effort: each (arm, fraction) gets the whole grid (2 x 2 here), run at the first seed; every run
    of that arm and fraction waits for them and takes the winner's settings."""
    cfg = StudyConfig(
        data="x",
        fractions=[0.01, 0.1],
        seeds=[3, 4],
        arms=["scratch", "mae"],
        mae=["m"],
        search=[
            "optim.base_lr=5e-4|1e-3",
            "optim.epochs=15;classifier.min_steps=600|optim.epochs=30;classifier.min_steps=1200",
        ],
    )
    jobs = {j.name: j for j in plan(cfg, tmp_path)}
    trials = [j for j in jobs.values() if j.name.startswith("search/")]
    assert len(trials) == 2 * 2 * 4 and {t.kwargs["seed"] for t in trials} == {3}
    assert all(t.out.parent == tmp_path / "search" for t in trials)
    mine = sorted(t.kwargs["set"][-3:] for t in trials if t.name.startswith("search/mae_f0.1_"))
    assert mine == sorted(
        [f"optim.base_lr={lr}", f"optim.epochs={epochs}", f"classifier.min_steps={steps}"]
        for lr in ("5e-4", "1e-3")
        for epochs, steps in ((15, 600), (30, 1200))
    )
    for seed in (3, 4):
        run = jobs[f"mae_f0.1_s{seed}"]
        assert sorted(run.tries) == sorted(t.name for t in trials if t.name.startswith("search/mae_f0.1_"))
        assert run.kwargs["set"] == [] and len(run.choices) == 4


def _trial(folder: Path, entries: list[str]) -> Job:
    """A recipe candidate's job with these --search entries."""
    return Job(f"search/{folder.name}", "finetune", {}, folder, search=entries)


def _candidate_run(folder: Path, f1: float, loss: float, config: dict[str, Any] | None = None) -> Path:
    """A finished candidate's scores as a run folder holds them (metrics.json, history.csv), and the
    settings it recorded (run.json)."""
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({"val": {"macro_f1": f1}, "selected_epoch": 2}))
    (folder / "history.csv").write_text(f"epoch,val_loss\n1,9.0\n2,{loss}\n")
    (folder / "run.json").write_text(json.dumps({"status": "finished", "config": config or {}}))
    return folder


PAST = {"optim": {"base_lr": 0.002}}  # what _searched_cell's candidate past the edge records


def test_the_recipe_is_chosen_on_val_macro_f1_then_val_loss_and_a_tie_keeps_the_grid_order(
    tmp_path: Path,
) -> None:
    def pick(*scores: tuple[float, float]) -> list[str]:
        folders = [_candidate_run(tmp_path / f"{len(list(tmp_path.iterdir()))}", *s) for s in scores]
        job = Job("a_f0.1_s0", "finetune", {}, tmp_path / "run")
        job.choices = [_trial(folder, [f"optim.base_lr={i}"]) for i, folder in enumerate(folders)]
        return chosen(job)

    assert pick((0.8, 0.5), (0.9, 0.9), (0.85, 0.1)) == ["optim.base_lr=1"]
    assert pick((1.0, 0.5), (1.0, 0.3)) == [
        "optim.base_lr=1"
    ]  # a small val draw ties at 1.0: the loss decides
    assert pick((1.0, 0.3), (1.0, 0.3)) == ["optim.base_lr=0"]


def test_a_searched_study_runs_its_candidates_and_says_what_each_arm_got(
    synthetic: tuple[Path, Path], tmp_path: Path
) -> None:
    cells, _ = synthetic
    out = tmp_path / "s"
    scratch_at_all_labels(out, cells, search=["optim.base_lr=1e-5|1e-3|1e12"])
    rows = (out / "search.csv").read_text().splitlines()
    assert rows[0] == "arm,fraction,candidate,settings,status,val_macro_f1,val_loss,chosen" and len(rows) == 4
    assert rows[3].split(",")[3:5] == ["optim.base_lr=1e12", "diverged"]  # a diverging candidate is a result
    winner = next(row.split(",")[3] for row in rows[1:] if row.endswith("True"))
    for seed in (0, 1):
        config = json.loads((out / "runs" / run_name("scratch", 1.0, seed) / "run.json").read_text())[
            "config"
        ]
        assert config["optim"]["base_lr"] == float(winner.split("=")[1])
    page = (out / "report.html").read_text()
    assert "Recipe search" in page and f"<td>{winner}</td>" in page


def test_the_run_at_the_search_seed_is_a_copy_of_its_chosen_candidate_which_it_would_train_again(
    synthetic: tuple[Path, Path], tmp_path: Path
) -> None:
    """At the search's seed the grid run of the chosen recipe has the candidate's options, seed and labels:
    the study copies the candidate instead of training it twice, counts its time once, and keeps the copy
    on a rerun. The premise is checked too: trained again as the study launches runs, it is the same run."""
    import os
    import subprocess
    import sys

    cells, _ = synthetic
    out = tmp_path / "s"
    search = ["optim.base_lr=1e-5|1e-3"]
    scratch_at_all_labels(out, cells, search=search)
    first, second = (out / "runs" / run_name("scratch", 1.0, seed) for seed in (0, 1))
    source = Path(json.loads((first / "run.json").read_text())["copy_of"])
    (winner,) = [
        row["candidate"] for row in csv.DictReader(open(out / "search.csv")) if row["chosen"] == "True"
    ]
    assert source == Path("search") / winner
    source = out / source
    assert "copy_of" not in json.loads((second / "run.json").read_text())  # another seed trains
    for name in ("predictions.csv", "history.csv", "metrics.json", "model/model.safetensors"):
        assert (first / name).read_bytes() == (source / name).read_bytes(), name
    times = {
        (row["run"], row["labels"]): row["runs"]
        for row in csv.DictReader(open(out / "results" / "times.csv"))
    }
    assert times["scratch", "100 %"] == "1" and times["recipe candidates (search/)", "100 %"] == "2"
    seconds = {row["seed"]: row["seconds"] for row in csv.DictReader(open(out / "results" / "runs.csv"))}
    assert seconds["0"] == "copy" and seconds["1"] != "copy"
    assert "# scratch_f1_s0\n" in (first / "model" / "README.md").read_text()  # its own card
    # a lock and an MLflow record in the candidate, and a half-made copy of a killed study, stay out
    (source / ".leanmae.lock").write_text("123")
    (source / "mlflow.json").write_text("{}")
    shutil.rmtree(first)
    (out / "runs" / ".scratch_f1_s0.tmp-999").mkdir()
    (out / "runs" / ".scratch_f1_s1.tmp-999").mkdir()  # another job's: its own job removes it
    assert set(scratch_at_all_labels(out, cells, search=search).values()) == {"done"}
    assert json.loads((first / "run.json").read_text())["copy_of"] == f"search/{winner}"
    assert not [p.name for p in first.iterdir() if p.name.startswith(".") or p.name == "mlflow.json"]
    assert not list((out / "runs").glob(".scratch_f1_s0.*"))
    assert (out / "runs" / ".scratch_f1_s1.tmp-999").is_dir()

    cfg = StudyConfig(
        data=str(cells), arms=["scratch"], fractions=[1.0], seeds=[0, 1], preset="test", set=FAST
    )
    cfg.search = search
    (job,) = [j for j in plan(cfg, out) if j.name == run_name("scratch", 1.0, 0)]
    assert study_module.same_candidate(job) is None  # its folder holds a run: nothing is copied over it
    shutil.rmtree(first)
    assert study_module.same_candidate(job) == next(c for c in job.choices if c.out == source)
    info = json.loads((source / "run.json").read_text())
    (source / "run.json").write_text(
        json.dumps({**info, "config": {**info["config"], "optim": {"base_lr": 9}}})
    )
    assert study_module.same_candidate(job) is None  # trained with another recipe than the one chosen now
    (source / "run.json").write_text(json.dumps(info))
    kwargs = {**study_module._launch_kwargs(job), "out": str(tmp_path / "again"), "resume": False}
    code = (
        "import json, sys; from leanmae.commands.study import run_child; run_child(int(sys.argv[1]), "
        "sys.argv[2], json.loads(sys.argv[3]))"
    )
    subprocess.run(
        [sys.executable, "-c", code, str(os.getpid()), "finetune", json.dumps(kwargs)],
        env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
        check=True,
        capture_output=True,
    )
    assert (tmp_path / "again" / "predictions.csv").read_bytes() == (source / "predictions.csv").read_bytes()


def test_only_a_diverged_candidate_is_a_result_of_the_search(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A candidate that fails otherwise (a full disk) says nothing of its recipe: the run waiting on it does
    not start with the others' best, and the study names it failed; the same call, once the cause is fixed,
    continues, without training the diverged candidate again."""
    grid = [_trial(tmp_path / f"c{i}", [f"optim.base_lr={i}"]) for i in range(3)]
    run = Job("a_f0.1_s0", "finetune", {}, tmp_path / "run")
    run.choices = grid
    exits = {"search/c0": 0, "search/c1": DIVERGED_EXIT, "search/c2": 1, "a_f0.1_s0": 0}
    launched = []

    def launch(job: Job) -> int:
        launched.append(job.name)
        if exits[job.name] == 0:
            _candidate_run(job.out, 0.9, 0.1)
        return exits[job.name]

    monkeypatch.setattr(study_module, "_launch_local", launch)
    jobs = [*grid, run]
    states = run_local(jobs, 1, False, {job.name: 1.0 for job in jobs})
    assert states == {
        "search/c0": "done",
        "search/c1": "diverged",
        "search/c2": "failed",
        "a_f0.1_s0": "failed",
    }
    exits["search/c2"] = 0
    launched.clear()
    states = run_local(jobs, 1, False, {job.name: 1.0 for job in jobs})
    assert states["a_f0.1_s0"] == "done" and states["search/c1"] == "diverged"
    assert launched == ["search/c2", "a_f0.1_s0"]


def test_where_every_grid_candidate_diverged_nothing_runs_past_the_edge_and_the_run_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    grid = [_trial(tmp_path / f"c{i}", [f"optim.base_lr={i}"]) for i in range(2)]
    past = Job("search/c2", "finetune", {}, tmp_path / "c2", beyond=(2, grid[1].search, ["optim.base_lr=2"]))
    past.choices = grid
    run = Job("a_f0.1_s0", "finetune", {}, tmp_path / "run")
    run.choices = [*grid, past]
    monkeypatch.setattr(study_module, "_launch_local", lambda job: DIVERGED_EXIT)
    jobs = [*grid, past, run]
    states = run_local(jobs, 1, False, {job.name: 1.0 for job in jobs})
    assert [states[job.name] for job in jobs] == ["diverged", "diverged", "not needed", "failed"]
    assert "run a_f0.1_s0 not started: every recipe candidate diverged" in capsys.readouterr().out


def test_a_margin_round_waits_for_every_round_before_it_to_be_settled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Round 1 finished in an earlier call, but a candidate past its edge had not: round 2 (and round 3,
    which chose with round 2) must not start on round 1's model until it is known to stand; here the
    candidate wins, so none of them starts."""
    grid, past, first, _ = _searched_cell(tmp_path)
    second = Job("a_f0.2_s0", "finetune", {}, tmp_path / "r2", after=[first.name])
    third = Job("a_f0.5_s0", "finetune", {}, tmp_path / "r3", after=[second.name])
    _finished_run(second.out, {})
    launched = []

    def launch(job: Job) -> int:
        launched.append(job.name)
        _candidate_run(past.out, 0.9, 0.2, PAST)
        return 0

    monkeypatch.setattr(study_module, "_launch_local", launch)
    jobs = [grid, past, first, second, third]
    states = run_local(jobs, 2, False, {job.name: 1.0 for job in jobs})  # a worker free for round 3
    assert launched == [past.name] and states[third.name] == "failed"


LENGTHS = "optim.epochs=15;classifier.min_steps=600|optim.epochs=30;classifier.min_steps=1200"


def test_search_beyond_adds_one_candidate_per_arm_and_fraction_that_waits_for_the_grid(
    tmp_path: Path,
) -> None:
    cfg = StudyConfig(
        data="x",
        fractions=[0.01, 0.1],
        seeds=[0, 1],
        arms=["scratch"],
        search=["optim.base_lr=5e-4|1e-3", LENGTHS],
        search_beyond="optim.epochs=60;classifier.min_steps=2400",
    )
    jobs = {j.name: j for j in plan(cfg, tmp_path)}
    past = jobs["search/scratch_f0.1_s0_c4"]
    grid = [jobs[f"search/scratch_f0.1_s0_c{i}"] for i in range(4)]
    assert past.choices == grid and past.beyond == (
        2,
        ["optim.epochs=30", "classifier.min_steps=1200"],
        ["optim.epochs=60", "classifier.min_steps=2400"],
    )
    assert past.after == [] and past.kwargs["set"] == []  # its entries come when the grid has ended
    assert jobs["scratch_f0.1_s1"].choices == [*grid, past]
    assert len([j for j in jobs if j.startswith("search/")]) == 2 * 5


def test_the_candidate_past_the_edge_runs_only_where_the_best_took_the_edge_and_wins_only_by_doing_better(
    tmp_path: Path,
) -> None:
    """Grid: learning rate 1 or 2 x length 30 or 60 (the edge); past it: length 120."""

    def search(scores: list[tuple[float, float]], past_score: tuple[float, float] | None = None) -> Job:
        folder = tmp_path / f"{len(list(tmp_path.iterdir()))}"
        grid = [
            _trial(
                _candidate_run(folder / f"c{i}", *score), [f"optim.base_lr={lr}", f"optim.epochs={epochs}"]
            )
            for i, (score, (lr, epochs)) in enumerate(
                zip(scores, [(1, 30), (1, 60), (2, 30), (2, 60)], strict=True)
            )
        ]
        past = Job(
            "search/c4", "finetune", {}, folder / "c4", beyond=(2, ["optim.epochs=60"], ["optim.epochs=120"])
        )
        past.choices = grid
        if past_score is not None:
            _candidate_run(past.out, *past_score)
        run = Job("a_f0.1_s0", "finetune", {}, folder / "run")
        run.choices = [*grid, past]
        return run

    inside = search([(0.9, 0.2), (0.8, 0.2), (0.7, 0.2), (0.7, 0.2)])
    assert entries(inside.choices[-1]) is None  # the best took length 30: 60 did worse already
    assert chosen(inside) == ["optim.base_lr=1", "optim.epochs=30"]
    edge = search([(0.7, 0.2), (0.8, 0.2), (0.7, 0.2), (0.9, 0.2)], past_score=(0.95, 0.2))
    assert entries(edge.choices[-1]) == ["optim.base_lr=2", "optim.epochs=120"]
    assert chosen(edge) == ["optim.base_lr=2", "optim.epochs=120"]
    tie = search([(0.7, 0.2), (0.8, 0.2), (0.7, 0.2), (0.9, 0.2)], past_score=(0.9, 0.2))
    assert chosen(tie) == ["optim.base_lr=2", "optim.epochs=60"]  # a tie keeps the grid's own


def _searched_cell(tmp_path: Path) -> tuple[Job, Job, Job, Job]:
    """One arm and fraction searched over one learning rate (0.001, the edge) and one past it (0.002):
    (grid candidate, candidate past the edge, seed-0 run finished with 0.001, seed-1 run not begun)."""
    kwargs = {"epochs": None, "preset": "test", "set": []}
    grid = _trial(_candidate_run(tmp_path / "c0", 0.8, 0.2), ["optim.base_lr=0.001"])
    grid.kwargs = kwargs
    past = Job(
        "search/c1", "finetune", kwargs, tmp_path / "c1", beyond=(1, grid.search, ["optim.base_lr=0.002"])
    )
    past.choices = [grid]
    runs = [Job(f"a_f0.1_s{seed}", "finetune", kwargs, tmp_path / f"s{seed}") for seed in (0, 1)]
    for run in runs:
        run.choices = [grid, past]
    _finished_run(runs[0].out, {"optim": {"base_lr": 0.001}})
    return grid, past, *runs


def _finished_run(folder: Path, config: dict[str, Any]) -> None:
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"status": "finished", "config": config}))


def test_a_run_whose_search_now_chooses_another_recipe_is_refused_with_the_runs_that_continue_from_it(
    tmp_path: Path,
) -> None:
    """--search-beyond added to a started study: a run trained with the grid's best is not mixed with seeds
    trained with the better candidate past the edge, nor is a margin round that chose labels with it kept."""
    grid, past, first, second = _searched_cell(tmp_path)
    later = Job("a_f0.2_s0", "finetune", {}, tmp_path / "next", after=[first.name])
    _finished_run(later.out, {})
    jobs = [grid, past, first, second, later]
    check_recipes(jobs)  # the candidate past the edge has not run: nothing to compare with yet
    _candidate_run(past.out, 0.9, 0.2, PAST)
    with pytest.raises(OutputFolderError) as refused:
        check_recipes(jobs)
    assert re.fullmatch(
        rf"{first.out} began with optim.base_lr=0.001, but its recipe search now chooses "
        rf"optim.base_lr=0.002: delete it and the runs that continue from it \({later.out}\), with their "
        "logs, then rerun the same command",
        str(refused.value),
    )
    (first.out / "run.json").write_text(
        json.dumps({"status": "finished", "config": {"optim": {"base_lr": 2e-3}}})
    )
    check_recipes(jobs)  # the candidate itself, with its own recipe, is no run to refuse


def test_a_candidate_past_the_edge_that_holds_the_best_s_settings_instead_is_refused(tmp_path: Path) -> None:
    """A study from 4ce2419 to a79e758 copied the grid's best into the candidate past the edge: it tied
    with the best and so never won. Its recorded settings say so; it is named, to be trained again."""
    grid, past, first, second = _searched_cell(tmp_path)
    _candidate_run(past.out, 0.8, 0.2)
    (past.out / "run.json").write_text(
        json.dumps({"status": "finished", "config": {"optim": {"base_lr": 0.001}}, "copy_of": "search/c0"})
    )
    assert stale_runs([grid, past, first, second], lambda candidate: True) == [
        f"{past.out} began with optim.base_lr=0.001, but as the candidate past the edge it takes "
        "optim.base_lr=0.002: delete it and its log, then rerun the same command"
    ]


def test_a_candidate_past_the_edge_that_wins_during_a_call_stops_the_seeds_that_would_mix_recipes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    grid, past, first, second = _searched_cell(tmp_path)

    def launch(job: Job) -> int:
        if job is past:
            _candidate_run(past.out, 0.9, 0.2, PAST)
        else:
            _finished_run(job.out, {"optim": {"base_lr": 0.002}})
        return 0

    monkeypatch.setattr(study_module, "_launch_local", launch)
    jobs = [grid, past, first, second]
    states = run_local(jobs, 1, False, {job.name: 1.0 for job in jobs})
    assert states[past.name] == "done" and states[second.name] == "failed" and not second.out.exists()
    assert stale_runs(jobs, lambda candidate: states[candidate.name] in ENDED) == [
        f"{first.out} began with optim.base_lr=0.001, but its recipe search now chooses optim.base_lr=0.002: "
        "delete it and its log, then rerun the same command"
    ]


def test_a_search_past_the_edge_runs_end_to_end_and_says_what_it_tried(
    synthetic: tuple[Path, Path], tmp_path: Path
) -> None:
    """The grid's edge (1e-3) is its best, as 1e12 diverges: one more candidate runs past it."""
    cells, _ = synthetic
    out = tmp_path / "s"
    settings = {"search": ["optim.base_lr=1e12|1e-3"], "search_beyond": "optim.base_lr=2e-3"}
    scratch_at_all_labels(out, cells, **settings)
    rows = [row.split(",") for row in (out / "search.csv").read_text().splitlines()[1:]]
    assert [row[3:5] for row in rows] == [
        ["optim.base_lr=1e12", "diverged"],
        ["optim.base_lr=1e-3", "finished"],
        ["optim.base_lr=2e-3", "finished"],
    ]
    winner = next(row[3] for row in rows if row[-1] == "True")
    config = json.loads((out / "runs" / run_name("scratch", 1.0, 1) / "run.json").read_text())["config"]
    assert config["optim"]["base_lr"] == float(winner.split("=")[1])
    past = json.loads((out / "search" / "scratch_f1_s0_c2" / "run.json").read_text())
    assert past["config"]["optim"]["base_lr"] == 2e-3 and "copy_of" not in past  # trained, not copied
    page = html.unescape((out / "report.html").read_text())
    assert "one more candidate ran with the best's other settings and optim.base_lr=2e-3" in page
    assert set(scratch_at_all_labels(out, cells, **settings).values()) == {
        "done",
        "diverged",
    }  # rerun: as it is


def test_no_candidate_runs_past_an_edge_the_best_did_not_take(
    synthetic: tuple[Path, Path], tmp_path: Path
) -> None:
    cells, _ = synthetic
    out = tmp_path / "s"
    states = scratch_at_all_labels(
        out, cells, search=["optim.base_lr=1e-3|1e12"], search_beyond="optim.base_lr=1e13"
    )
    assert (
        states["search/scratch_f1_s0_c2"] == "not needed"
        and not (out / "search" / "scratch_f1_s0_c2").exists()
    )
    assert (out / "search.csv").read_text().splitlines()[3].split(",")[3:5] == [
        "optim.base_lr=1e13",
        "not needed",
    ]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"search": ["optim.base_lr=1e-3"]}, "KEY=V1|V2"),
        (
            {"search": ["optim.base_lr=1e-3|2e-3"], "search_beyond": "optim.epochs=3"},
            "keys of the last --search",
        ),
        ({"search_beyond": "optim.epochs=3"}, "keys of the last --search entry (none given)"),
        ({"search": ["optim.base_lr=1e-3|2e-3"], "search_beyond": "optim.base_lr=1|3"}, "one value"),
        ({"search": ["optim.base_lr=1e-3|2e-3"], "search_beyond": "optim.base_lr=1e-3"}, "already a value"),
        ({"search": ["optim.base_lr=1e-3|2e-3"], "search_beyond": "optim.base_lr=0.002"}, "already a value"),
        ({"search": ["optim.base_lr=1e-3|2e-3"], "set": ["optim.base_lr=5e-4"]}, "which --search searches"),
        ({"search": ["optim.base_lr=1e-3|2e-3"], "set": ["finetune.optim.base_lr=5e-4"]}, "searches"),
        (
            {"search": ["optim.epochs=1;optim.base_lr=1e-3|optim.epochs=2"], "set": ["optim.base_lr=5e-4"]},
            "searches",
        ),
        (
            {"search": ["optim.base_lr=1e-3|2e-3"], "launcher": "slurm", "slurm": {"cluster": "local"}},
            "local",
        ),
    ],
)
def test_a_search_that_cannot_work_is_refused_before_anything_runs(
    synthetic: tuple[Path, Path], tmp_path: Path, settings: dict, message: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        leanmae.study(
            out=tmp_path / "s", data=str(synthetic[0]), arms=["scratch"], progress=False, **settings
        )
    assert not (tmp_path / "s").exists()


def test_given_mae_checkpoint_skips_pretraining(tmp_path: Path) -> None:
    jobs = plan(StudyConfig(data="x", mae=["some/mae"]), tmp_path)
    assert all(j.command == "finetune" for j in jobs)
    assert {j.kwargs["init"] for j in jobs if j.name.startswith("mae")} == {"some/mae"}


def test_pretraining_without_a_pool_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="pretrain-data"):
        plan(StudyConfig(data="x"), tmp_path)


def test_unknown_arm_is_rejected(synthetic: tuple[Path, Path], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown arm"):
        leanmae.study(
            out=tmp_path / "s", data=str(synthetic[0]), arms=["scratch", "imagenet"], progress=False
        )


def test_a_tiny_study_runs_end_to_end(finished_study: Path) -> None:
    runs = load_runs(finished_study)
    assert {(r.arm, r.fraction, r.seed) for r in runs} == {
        (a, f, s) for a in ("scratch", "mae") for f in (0.5, 1.0) for s in (0, 1)
    }
    assert (finished_study / "pretrain" / "model" / "model.safetensors").exists()
    for name in ("summary", "paired", "per_class_f1", "confidence", "runs"):
        assert (finished_study / "results" / f"{name}.csv").exists()
    for figure in (
        "label_efficiency.png",
        "training_curves.png",
        "confidence_f0.5.png",
        "confidence_f1.png",
        "mae_recon_errors.png",
    ):
        assert (finished_study / "results" / figure).exists(), figure
    assert "| labels |" in (finished_study / "results" / "tables.md").read_text()
    assert all((r.folder / "robustness.json").exists() for r in runs), "every finished run is benchmarked"
    assert (finished_study / "results" / "robustness.csv").exists()


def test_a_study_runs_label_choice_and_semi_supervision_as_arms_of_their_own(
    synthetic: tuple[Path, Path], finished_study: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 26's arms in a study: a label choice and FixMatch are variant arms (``ARM+NAME``) of the same
    MAE, each trained as it says and reported beside the plain arm (its labels needed too, read as any
    arm's: test_report.py); neither has a run with all labels."""
    variants = {"mae+typiclust": "classifier.selection=typiclust", "mae+fixmatch": "classifier.semi=fixmatch"}
    out = tmp_path / "s"
    leanmae.study(
        out=out,
        data=str(synthetic[0]),
        split=str(finished_study / "split.csv"),
        mae=[str(finished_study / "pretrain")],
        arms=["scratch", "mae", *variants],
        arm_set=[f"{arm}:{setting}" for arm, setting in variants.items()],
        preset="test",
        fractions=[0.5, 1.0],
        seeds=[0],
        set=FAST,
        progress=False,
    )
    for arm, setting in variants.items():
        key, value = setting.split("=")
        section, name = key.split(".")
        config = json.loads((out / "runs" / f"{arm}_f0.5_s0" / "run.json").read_text())["config"]
        assert config[section][name] == value
    with open(out / "results" / "runs.csv") as f:
        ran = {(row["arm"], row["labels"]) for row in csv.DictReader(f)}
    assert ran == {(arm, f) for arm in ("scratch", "mae", *variants) for f in ("50 %", "100 %")} - {
        ("mae+fixmatch", "100 %"),
        ("mae+typiclust", "100 %"),
    }
    assert "6 of 6 fine-tuning runs finished" in (out / "report.html").read_text()
    said = [line for line in capsys.readouterr().out.splitlines() if "no run with all labels" in line]
    assert sorted(said) == [
        "study: mae+fixmatch: no run with all labels: every train image is labelled, so classifier.semi has "
        "nothing to learn",
        "study: mae+typiclust: no run with all labels: every train image is labelled, so "
        "classifier.selection has nothing to choose",
    ]


@pytest.mark.parametrize(
    ("fractions", "message"),
    [
        ([1.0], "--arms mae+fixmatch: no run with all labels"),
        ([0.99], "0.99 of the labels is every train image"),
    ],
)
def test_a_semi_supervised_arm_with_nothing_unlabelled_is_refused_before_any_run(
    synthetic: tuple[Path, Path], finished_study: Path, tmp_path: Path, fractions: list[float], message: str
) -> None:
    """FixMatch needs unlabelled train images: an arm left with no run, or a fraction that labels every
    train image of the split (8 a class here), is refused before anything trains, not hours in."""
    with pytest.raises(ConfigError, match=re.escape(message)):
        leanmae.study(
            out=tmp_path / "s",
            data=str(synthetic[0]),
            mae=[str(finished_study / "pretrain")],
            arms=["mae+fixmatch"],
            arm_set=["mae+fixmatch:classifier.semi=fixmatch"],
            preset="test",
            fractions=fractions,
            seeds=[0],
            set=FAST,
            progress=False,
        )
    assert not list(tmp_path.glob("s/*/*/run.json"))


def test_every_mae_run_starts_from_the_study_mae(finished_study: Path) -> None:
    for run in load_runs(finished_study):
        expected = str(finished_study / "pretrain") if run.arm == "mae" else "scratch"
        assert run.metrics["init"] == expected


def test_report_is_self_contained(finished_study: Path) -> None:
    text = (finished_study / "report.html").read_text()
    assert "<img" in text
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", text), "no external references"
    assert "<script" not in text and "<link" not in text
    assert all(src.startswith("data:image/png;base64,") for src in re.findall(r'src="([^"]+)"', text))
    assert "Findings" in text and "Images per class per split" in text


def test_rerunning_a_finished_study_redoes_nothing(finished_study: Path) -> None:
    stamps = {p: p.stat().st_mtime_ns for p in (finished_study / "runs").glob("*/metrics.json")}
    states = leanmae.study(
        out=finished_study,
        data=str(json.loads((finished_study / "study.json").read_text())["data"]),
        pretrain_data=json.loads((finished_study / "study.json").read_text())["pretrain_data"],
        preset="test",
        fractions=[0.5, 1.0],
        seeds=[0, 1],
        set=FAST,
        progress=False,
    )
    assert set(states.values()) == {"done"}
    assert stamps == {p: p.stat().st_mtime_ns for p in (finished_study / "runs").glob("*/metrics.json")}


def test_a_study_folder_refuses_other_settings(finished_study: Path) -> None:
    settings = json.loads((finished_study / "study.json").read_text())
    with pytest.raises(OutputFolderError, match="other settings"):
        leanmae.study(
            out=finished_study,
            data=settings["data"],
            pretrain_data=settings["pretrain_data"],
            preset="cpu",
            fractions=[0.5, 1.0],
            seeds=[0, 1],
            set=FAST,
            progress=False,
        )


def test_an_unfinished_run_is_continued_and_the_report_covers_finished_runs_only(
    synthetic: tuple[Path, Path], tmp_path: Path
) -> None:
    cells, _ = synthetic
    out = tmp_path / "s"
    scratch_at_all_labels(out, cells)
    # Pretend seed 1 was killed: its run.json says running, its metrics are gone.
    killed = out / "runs" / run_name("scratch", 1.0, 1)
    info = json.loads((killed / "run.json").read_text())
    (killed / "run.json").write_text(json.dumps({**info, "status": "running"}))
    (killed / "metrics.json").unlink()
    leanmae.report(out)
    assert "1 of 2 fine-tuning runs finished" in (out / "report.html").read_text()
    scratch_at_all_labels(out, cells)
    assert json.loads((killed / "run.json").read_text())["status"] == "finished"
    assert "2 of 2 fine-tuning runs finished" in (out / "report.html").read_text()


def test_run_times_cover_pretraining_every_cell_and_the_total(finished_study: Path) -> None:
    runs = load_runs(finished_study)
    rows = {(r[0], r[1]): r for r in times_table(runs, finished_study / "pretrain").rows}
    assert rows[("MAE pretraining", "")][2] == 1
    assert {key for key in rows if key[1]} == {(a, f) for a in ("scratch", "mae") for f in ("50 %", "100 %")}
    cells = [float(r[5]) for key, r in rows.items() if key[1]]
    total = rows[("all runs", "")]
    assert total[2] == 9 and float(total[5]) == pytest.approx(
        sum(cells) + float(rows[("MAE pretraining", "")][5]), abs=0.2
    )
    assert float(rows[("elapsed, first start to last finish", "")][5]) > 0
    assert "Run times" in (finished_study / "report.html").read_text()


def test_findings_state_gains_with_intervals_or_withhold_them_where_runs_collapsed(
    finished_study: Path,
) -> None:
    """The tiny study's runs may collapse to one class: a gain at such a fraction is withheld, never
    stated."""
    runs = load_runs(finished_study)
    lines = findings(runs)
    for fraction, words in ((0.5, "50 % of the labels"), (1.0, "100 % of the labels")):
        (line,) = [line for line in lines if words in line and "macro-F1" in line]
        if any(r.collapsed() for r in runs if r.fraction == fraction):
            assert line.startswith("Withheld:"), line
        else:
            assert "2 seeds" in line, line
    summary = tables(runs)[0]
    assert summary.headers[0] == "labels" and any("MAE gain" in h for h in summary.headers)


def test_file_and_class_names_are_escaped_in_the_report(tmp_path: Path) -> None:
    from leanmae.reporting.study_report import Table

    html = Table(
        "x", "<b>title</b>", ["<script>alert(1)</script>.png"], [["<img src=x onerror=alert(1)>"]]
    ).html()
    assert "<script>" not in html and "&lt;script&gt;" in html and "<img" not in html


def test_the_slurm_launcher_on_a_machine_without_slurm_is_refused_before_anything_is_written(
    synthetic: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """submitit would run every job on this machine and still print "submitted 2 job(s)"."""
    monkeypatch.setenv("PATH", str(tmp_path / "no-programs"))
    with pytest.raises(ConfigError, match="no SLURM"):
        leanmae.study(out=tmp_path / "s", data=str(synthetic[0]), launcher="slurm", mae=["m"], progress=False)
    assert not (tmp_path / "s").exists()


def test_the_slurm_launcher_runs_the_grid_through_submitit(
    synthetic: tuple[Path, Path], tmp_path: Path
) -> None:
    """submitit's local executor runs the same jobs a SLURM cluster would, into the same folders."""
    pytest.importorskip("submitit")
    cells, tiles = synthetic
    out = tmp_path / "s"
    states = leanmae.study(
        out=out,
        data=str(cells),
        pretrain_data=[str(tiles)],
        preset="test",
        fractions=[1.0],
        seeds=[0],
        launcher="slurm",
        slurm={"cluster": "local", "time_min": 10},
        set=FAST,
        progress=False,
    )
    assert states == {"pretrain": "done", "scratch_f1_s0": "done", "mae_f1_s0": "done"}
    assert any((out / "slurm").iterdir()), "submitit's job logs"
    assert {(r.arm, r.fraction) for r in load_runs(out)} == {("scratch", 1.0), ("mae", 1.0)}
    assert "2 of 2 fine-tuning runs finished" in (out / "report.html").read_text()


def test_the_slurm_launcher_submits_margin_rounds_after_the_round_before(
    synthetic: tuple[Path, Path], finished_study: Path, tmp_path: Path
) -> None:
    """Each wave of dependencies is its own array: the 50 % round starts once the 25 % round has finished,
    and keeps its labels (submitit's local executor, as on a cluster with --wait)."""
    pytest.importorskip("submitit")
    out = tmp_path / "s"
    states = leanmae.study(
        out=out,
        data=str(synthetic[0]),
        mae=[str(finished_study / "pretrain")],
        arms=["mae+rounds"],
        arm_set=["mae+rounds:classifier.selection=margin"],
        preset="test",
        fractions=[0.25, 0.5],
        seeds=[0],
        launcher="slurm",
        slurm={"cluster": "local", "time_min": 10},
        set=FAST,
        progress=False,
    )
    assert states == {"mae+rounds_f0.25_s0": "done", "mae+rounds_f0.5_s0": "done"}
    first, second = (
        (out / "runs" / f"mae+rounds_f{f}_s0" / "labelled.csv").read_text() for f in ("0.25", "0.5")
    )
    assert set(first.splitlines()[1:]) < set(second.splitlines()[1:])


def test_a_study_uses_a_given_split_as_it_is(synthetic: tuple[Path, Path], tmp_path: Path) -> None:
    """--split: an earlier study's split (whose train images an in-domain MAE saw) stays the split, not a
    new draw."""
    cells, _ = synthetic
    given = tmp_path / "given.csv"
    leanmae.split(str(cells), StudyConfig().classes, given, (0.5, 0.25, 0.25), 7)
    scratch_at_all_labels(tmp_path / "s", cells, split=str(given))
    assert read_manifest(tmp_path / "s" / "split.csv") == read_manifest(given)


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"classes": ["a", "b"]}, "holds the classes"),
        ({"data": "other"}, "not under --data"),
        ({"split_seed": 3}, "split_seed 3 has no effect"),
        ({"split_ratios": [0.8, 0.1, 0.1]}, "split_ratios"),
    ],
)
def test_a_given_split_of_other_images_or_classes_or_with_draw_settings_is_refused(
    synthetic: tuple[Path, Path], tmp_path: Path, given: dict[str, object], message: str
) -> None:
    """The draw's settings (config-file keys) would be ignored by a given split: refused, not ignored."""
    cells, _ = synthetic
    manifest = tmp_path / "given.csv"
    leanmae.split(str(cells), StudyConfig().classes, manifest)
    (tmp_path / "other").mkdir()
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump({k: v for k, v in given.items() if k.startswith("split_")}))
    data = str(tmp_path / str(given["data"])) if "data" in given else str(cells)
    with pytest.raises(ConfigError, match=message):
        leanmae.study(
            out=tmp_path / "s",
            config=config,
            data=data,
            classes=given.get("classes"),  # type: ignore[arg-type]
            split=str(manifest),
            progress=False,
        )
    assert not (tmp_path / "s").exists()


def test_a_study_whose_recipe_candidates_began_refuses_other_settings(tmp_path: Path) -> None:
    """Candidates run first: once one has begun, the study has begun, and another --search (or --split)
    would reuse its folders under other settings."""
    from leanmae.commands.study import _check_saved_settings

    (tmp_path / "study.json").write_text(json.dumps({"search": ["optim.base_lr=1e-3|2e-3"]}))
    (tmp_path / "search" / "scratch_f0.01_s0_c0").mkdir(parents=True)
    (tmp_path / "search" / "scratch_f0.01_s0_c0" / "run.json").write_text(json.dumps({"status": "running"}))
    with pytest.raises(OutputFolderError, match="other settings"):
        _check_saved_settings(tmp_path, {"search": ["optim.base_lr=1e-4|2e-3"]})
