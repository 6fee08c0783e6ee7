"""The study's ETA: job costs before they run, seconds per cost learned per kind, the progress line."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from leanmae.commands import study as study_module
from leanmae.commands.study import Job, StudyConfig, job_costs, plan, run_local
from leanmae.data.synthetic import make_synthetic_tiles
from leanmae.eta import (
    Timing,
    duration_text,
    eta_seconds,
    finetune_cost,
    pretrain_cost,
    progress_line,
    rates,
)
from leanmae.reporting.runinfo import RUN_FILE

PRE, FINE = "pretrain", "finetune"


def test_pretraining_costs_epochs_times_pool_images() -> None:
    assert pretrain_cost(epochs=20, pool_images=5000) == 100_000


def test_a_large_fraction_costs_epochs_times_its_labelled_images() -> None:
    assert (
        finetune_cost(
            epochs=20, train_images=7000, fraction=1.0, batch_size=64, min_steps=300, split_images=0
        )
        == 20 * 7000
    )


def test_a_small_fraction_costs_min_steps_of_its_shrunken_batch() -> None:
    # 1 % of 7000 = 70 images: batch min(64, 70 // 4) = 17, and passes repeat up to 300 steps.
    assert (
        finetune_cost(
            epochs=20, train_images=7000, fraction=0.01, batch_size=64, min_steps=300, split_images=0
        )
        == 300 * 17
    )


def test_fine_tuning_cost_grows_with_the_label_fraction() -> None:
    costs = [finetune_cost(20, 7000, f, 64, 300, 10_000) for f in (0.01, 0.1, 0.5, 1.0)]
    assert costs == sorted(costs) and costs[0] < costs[-1]


def test_every_fine_tune_also_handles_the_whole_split_once() -> None:
    # Loading the split's images and predicting validation and test: a fixed part of every run.
    assert finetune_cost(20, 7000, 1.0, 64, 300, split_images=10_000) == 20 * 7000 + 10_000


def test_rates_are_learned_per_kind() -> None:
    done = [Timing(PRE, 1000, 2000.0), Timing(FINE, 100, 10.0), Timing(FINE, 300, 30.0)]
    assert rates(done) == {PRE: 2.0, FINE: 0.1}


def test_a_kind_without_finished_jobs_borrows_the_other_kinds_rate() -> None:
    assert rates([Timing(FINE, 100, 50.0)]) == {PRE: 0.5, FINE: 0.5}


def test_no_finished_job_gives_no_estimate() -> None:
    assert eta_seconds([Timing(FINE, 100)], [], workers=2) is None


def test_nothing_left_is_zero_seconds_left() -> None:
    assert eta_seconds([], [], workers=2) == 0.0


def test_a_long_pretraining_does_not_inflate_the_fine_tunes_left() -> None:
    done = [Timing(PRE, 1000, 2000.0), Timing(FINE, 100, 10.0)]
    left = [Timing(FINE, 100)] * 4
    # Averaging seconds per run would say 1005 s x 4 runs / 2 workers = 2010 s.
    assert eta_seconds(left, done, workers=2) == pytest.approx(4 * 10.0 / 2)


def test_the_work_left_is_shared_by_the_workers() -> None:
    done = [Timing(FINE, 100, 10.0)]
    assert eta_seconds([Timing(FINE, 100)] * 6, done, workers=3) == pytest.approx(20.0)


def test_the_wait_is_never_shorter_than_the_longest_job_left() -> None:
    done = [Timing(PRE, 1000, 2000.0), Timing(FINE, 100, 10.0)]
    left = [Timing(PRE, 1000), Timing(FINE, 100)]
    assert eta_seconds(left, done, workers=2) == pytest.approx(2000.0)


def test_time_already_spent_on_a_running_job_is_subtracted_but_never_below_zero() -> None:
    done = [Timing(FINE, 100, 10.0)]
    assert eta_seconds([Timing(FINE, 100, 4.0)], done, workers=1) == pytest.approx(6.0)
    assert eta_seconds([Timing(FINE, 100, 40.0)], done, workers=1) == 0.0


def test_durations_read_in_hours_and_minutes() -> None:
    assert duration_text(3 * 3600 + 10 * 60) == "3 h 10 min"
    assert duration_text(25 * 60 + 10) == "25 min"
    assert duration_text(5) == "1 min"


def test_the_progress_line_counts_runs_by_kind_and_states_the_time_left() -> None:
    finished = [PRE] * 2 + [FINE] * 5
    line = progress_line(finished, total=48, failed=0, eta=3 * 3600 + 10 * 60)
    assert line == "study: 7 of 48 runs done (2 pretraining, 5 fine-tuning), ~3 h 10 min left"


def test_the_progress_line_names_failures_and_omits_an_unknown_estimate() -> None:
    assert (
        progress_line([FINE], total=3, failed=1, eta=None)
        == "study: 1 of 3 runs done (1 fine-tuning), 1 failed"
    )


def test_job_costs_follow_the_preset_the_pool_and_the_split(tmp_path: Path) -> None:
    pool = make_synthetic_tiles(tmp_path / "tiles", n=6, size=16, seed=0)
    rows = [f"c{i % 2}/{i}.png,c{i % 2},{'train' if i < 80 else 'test'}" for i in range(100)]
    (tmp_path / "split.csv").write_text("path,label,split\n" + "\n".join(rows) + "\n")
    cfg = StudyConfig(
        data="x", pretrain_data=[str(pool)], preset="test", fractions=[0.1, 1.0], seeds=[0], arms=["mae"]
    )
    costs = job_costs(plan(cfg, tmp_path), tmp_path)
    # The test preset: 2 epochs for both, fine-tuning batch 16 and min_steps 4 (8 labelled images: batch 2);
    # every fine-tune also handles the split's 100 images once.
    assert costs == {"pretrain": 2 * 6, "mae_f0.1_s0": 2 * 8 + 100, "mae_f1_s0": 2 * 80 + 100}


def test_the_run_a_search_copies_costs_nothing_and_every_candidate_costs_its_training(tmp_path: Path) -> None:
    """The grid run at the search's seed is a copy of its chosen candidate (free), unless it has begun; the
    other seeds and every candidate, the one past the grid's edge too, train."""
    rows = [f"c{i % 2}/{i}.png,c{i % 2},{'train' if i < 80 else 'test'}" for i in range(100)]
    (tmp_path / "split.csv").write_text("path,label,split\n" + "\n".join(rows) + "\n")
    cfg = StudyConfig(
        data="x",
        preset="test",
        fractions=[1.0],
        seeds=[0, 1],
        arms=["scratch"],
        search=["optim.base_lr=1e-3|2e-3"],
        search_beyond="optim.base_lr=4e-3",
    )
    costs = job_costs(plan(cfg, tmp_path), tmp_path)
    assert costs["scratch_f1_s0"] == 0 and costs["scratch_f1_s1"] == 2 * 80 + 100
    assert [costs[f"search/scratch_f1_s0_c{i}"] for i in range(3)] == [2 * 80 + 100] * 3
    (tmp_path / "runs" / "scratch_f1_s0").mkdir(parents=True)
    (tmp_path / "runs" / "scratch_f1_s0" / RUN_FILE).write_text(json.dumps({"status": "running"}))
    assert job_costs(plan(cfg, tmp_path), tmp_path)["scratch_f1_s0"] == 2 * 80 + 100  # begun: it trains


def test_without_a_terminal_each_finished_run_prints_one_progress_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    clock = SimpleNamespace(now=0.0)
    took = {"pretrain": 3600.0, "a": 60.0, "b": 60.0}

    def fake_launch(job: Job) -> int:  # a run that takes its time on a fake clock, then is finished
        clock.now += took[job.name]
        job.out.mkdir(parents=True)
        (job.out / RUN_FILE).write_text(json.dumps({"status": "finished"}))
        return 0

    monkeypatch.setattr(study_module, "_launch_local", fake_launch)
    monkeypatch.setattr(study_module, "time", SimpleNamespace(time=lambda: clock.now))
    jobs = [
        Job("pretrain", PRE, {}, tmp_path / "pretrain"),
        Job("a", FINE, {}, tmp_path / "a", ["pretrain"]),
        Job("b", FINE, {}, tmp_path / "b", ["pretrain"]),
    ]
    run_local(jobs, workers=1, progress=False, costs={"pretrain": 100.0, "a": 10.0, "b": 10.0})
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        # the fine-tunes borrow pretraining's 36 s per image
        "study: 1 of 3 runs done (1 pretraining), ~12 min left",
        # now their own 6 s per image
        "study: 2 of 3 runs done (1 pretraining, 1 fine-tuning), ~1 min left",
        "study: 3 of 3 runs done (1 pretraining, 2 fine-tuning)",
    ]
