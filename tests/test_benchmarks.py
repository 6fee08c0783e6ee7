"""Every benchmark and documented results script runs end to end on tiny sizes, so CI fails when one breaks.

They run as a user runs them (a subprocess from the repository root), with the ``test`` preset, a tiny
synthetic split and a tiny MAE where they train, and their outputs in a temporary folder.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import leanmae
from helpers import interrupt_after_epoch, tiny_pretrain
from leanmae.commands.study import plan, run_job
from leanmae.config import StudyConfig, from_dict
from leanmae.data.synthetic import WBC_CLASSES, make_synthetic_wbc
from leanmae.files import read_json

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
# the GPU plan of the throughput benchmark at the smallest sizes, cpu-preset MAE only
TINY_GPU_PLAN = ["--gpu-batch", "2", "--gpu-steps", "1", "--gpu-images", "16", "--only", "pretrain/cpu"]


def run(cmd: list[str], env: dict[str, str] | None = None) -> str:
    """Run ``cmd`` from the repository root with leanmae's source importable; its output, or a failure
    showing it."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", **(env or {})}
    done = subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A synthetic white-cell split, a test-preset MAE, and a labelled 'external' folder with both sets."""
    root = tmp_path_factory.mktemp("bench")
    cells = make_synthetic_wbc(root / "cells", n_per_class=10, size=40)
    leanmae.split(cells, classes=list(WBC_CLASSES), out=root / "split.csv", ratios="0.6,0.2,0.2")
    tiny_pretrain(root / "split.csv", root / "mae", sets=["optim.epochs=1"])
    external = root / "external"
    for name, seed in (("tecom", 5), ("cellavision_blog", 6)):
        make_synthetic_wbc(external / name, n_per_class=2, size=48, seed=seed)
    return {"root": root, "split": root / "split.csv", "mae": root / "mae" / "model", "external": external}


def test_the_throughput_benchmark_runs_its_gpu_plan_on_the_cpu_with_the_shared_pbc_split(
    tmp_path: Path,
) -> None:
    """The plan gpu_check.sh runs, at tiny sizes; with ../shared/data/pbc present its epoch uses a fresh PBC
    split (which once died on PBC's pair of identical images in two classes)."""
    out = run(
        [
            sys.executable,
            "benchmarks/throughput.py",
            "--plan",
            "gpu",
            "--device",
            "cpu",
            *TINY_GPU_PLAN,
            "--jsonl",
            str(tmp_path / "t.jsonl"),
        ]
    )
    lines = [json.loads(line) for line in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert any(str(line.get("case")).startswith("epoch/") for line in lines), out[-2000:]


def test_the_throughput_profile_groups_a_training_steps_time(tmp_path: Path) -> None:
    run(
        [sys.executable, "benchmarks/throughput.py", "--profile", "finetune/cpu", "--profile-steps", "1",
         "--jsonl", str(tmp_path / "p.jsonl")]
    )  # fmt: skip
    record = json.loads((tmp_path / "p.jsonl").read_text().splitlines()[-1])
    assert record["case"] == "profile/finetune/cpu" and sum(record["share"].values()) == pytest.approx(1)


def test_gpu_check_runs_end_to_end_with_device_cpu(tmp_path: Path) -> None:
    run(
        [
            "bash",
            "benchmarks/gpu_check.sh",
            *TINY_GPU_PLAN,
            "--no-epoch",
        ],
        env={"DEVICE": "cpu", "OUT": str(tmp_path), "PYTHON": sys.executable},
    )
    assert list(tmp_path.glob("cpu-*.jsonl")) and list(tmp_path.glob("cpu-*.txt"))


def test_the_recipe_ablation_trains_scores_on_val_and_tabulates(tiny: dict[str, Any], tmp_path: Path) -> None:
    run(
        [
            sys.executable,
            "benchmarks/recipe_ablation.py",
            "--split",
            str(tiny["split"]),
            "--mae",
            str(tiny["mae"]),
            "--out",
            str(tmp_path),
            "--fractions",
            "1",
            "--steps",
            "0,4",
            "--arms",
            "mae,scratch",
            "--jobs",
            "1",
            "--preset",
            "test",
        ]
    )
    rows = json.loads((tmp_path / "ablation.json").read_text())
    assert len(rows) == 4 and all(0 <= r["val_f1"] <= 1 for r in rows)


def test_the_encoder_probe_scores_a_random_and_a_pretrained_encoder(
    tiny: dict[str, Any], tmp_path: Path
) -> None:
    run(
        [
            sys.executable,
            "benchmarks/probe_encoders.py",
            "--split",
            str(tiny["split"]),
            str(tiny["mae"]),
            "--fractions",
            "1",
            "--preset",
            "test",
            "--out",
            str(tmp_path / "probe.json"),
        ]
    )
    assert len(json.loads((tmp_path / "probe.json").read_text())) == 2


def _script_env(tiny: dict[str, Any], tmp_path: Path) -> dict[str, str]:
    """What a results script's variables point to in a smoke test: the tiny split and MAE, temp folders."""
    return {
        "SPLIT": str(tiny["split"]),
        "PRESET": "test",
        "MAE": str(tiny["mae"]),
        "RUNS": str(tmp_path / "runs"),
        "KEEP": str(tmp_path / "keep"),
        "EXTERNAL": str(tiny["external"]),
        "PY": sys.executable,
    }


@pytest.mark.parametrize("script", ["pbc-robustness", "cross-lab"])
def test_the_results_run_scripts_run_on_a_tiny_split(
    tiny: dict[str, Any], tmp_path: Path, script: str
) -> None:
    env = _script_env(tiny, tmp_path)
    recipe = "aug" if script == "pbc-robustness" else "default"
    run(["sh", f"docs/results/{script}/run.sh", recipe, "0", "mae"], env=env)
    kept = next((tmp_path / "keep").iterdir())
    assert (kept / "metrics.json").exists()
    expected = "robustness.json" if script == "pbc-robustness" else "tecom.json"
    assert (kept / expected).exists()
    if script == "cross-lab":  # TENT on that run, scored on each external set
        run(["sh", "docs/results/cross-lab/tent.sh", "mae-default-s0"], env=env)
        assert (tmp_path / "keep" / "tent-mae-default-s0" / "tecom-adapt.json").exists()


def test_the_label_choice_run_script_runs_on_a_tiny_split(tiny: dict[str, Any], tmp_path: Path) -> None:
    run(
        ["sh", "docs/results/label-choice/run.sh", "typiclust", "fixmatch", "0.5", "0"],
        env=_script_env(tiny, tmp_path),
    )
    kept = tmp_path / "keep" / "mae-typiclust-fixmatch-f0.5-s0"
    assert {"metrics.json", "val.json", "time.txt"} <= {p.name for p in kept.iterdir()}


def test_the_current_study_s_runs_are_kept_without_weights_and_a_new_machine_resumes_from_them(
    tiny: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/results/pbc-current: keep.py keeps a study's ended runs without weights, scored for robustness
    first, except the model of a margin round whose next round has not ended and the last checkpoint of a
    run in flight longer than a sitting; restored into a new folder, the study trains only what was not
    kept, resumes the run in flight, to the same predictions, and the kept weights go once their run or
    reader has ended; effort.py scores the search's lengths on the whole val, also where the candidates'
    weights stayed on the first machine (keep.py scored them as it kept them)."""
    settings: dict[str, Any] = {
        "data": str(tiny["root"] / "cells"),
        "split": str(tiny["split"]),
        "arms": ["scratch", "mae+margin"],
        "mae": [str(tiny["mae"])],
        "arm_set": ["mae+margin:classifier.selection=margin"],
        "fractions": [0.2, 0.5],
        "seeds": [0, 1],
        "search": ["optim.epochs=1|optim.epochs=2"],
        "external": [str(tiny["external"] / "tecom")],
        "preset": "test",
        "set": ["run.device=cpu", "finetune.classifier.min_steps=2"],
        "progress": False,
    }
    first, kept, later = tmp_path / "study", tmp_path / "kept", tmp_path / "later"
    leanmae.study(out=first, **settings)
    env = {"PBC_CURRENT_KEEP": str(kept), "PBC_CURRENT_CHECKED": "0.5"}
    keep = [sys.executable, "docs/results/pbc-current/keep.py"]
    run([sys.executable, "docs/results/pbc-current/effort.py", str(first), "0.2"])
    assert (first / "effort.csv").read_text().count("\n") >= 3  # a header and a row per arm
    (first / "runs" / "scratch_f0.5_s1" / "robustness.json").unlink()  # ended after the study scored
    last_round = "mae+margin_f0.5_s1"
    later.mkdir()  # as if the sitting had ended before the chain's last round
    for moved in (last_round, f"{last_round}.log"):
        (first / "runs" / moved).rename(later / moved)
    candidate = first / "search" / "scratch_f0.2_s0_c1"  # 2 epochs: in flight after the first, as if long
    finished = (candidate / "predictions.csv").read_bytes()
    shutil.rmtree(candidate)
    jobs = plan(from_dict(StudyConfig, read_json(first / "study.json")), first)
    job = next(job for job in jobs if job.out.name == candidate.name)
    interrupt_after_epoch(monkeypatch, lambda: run_job(job.command, job.kwargs))
    env["PBC_CURRENT_SITTING_HOURS"] = "0"
    run([*keep, "save", str(first)], env=env)
    grid = sorted(p.name for p in (first / "runs").iterdir() if p.is_dir())
    assert sorted(p.name for p in (kept / "runs").iterdir() if p.is_dir()) == grid
    assert all((kept / "runs" / name / "robustness.json").exists() for name in grid)
    heavy = {p for p in kept.rglob("*") if p.name in ("model", "checkpoints", "best.safetensors")}
    read = {kept / "runs" / f"mae+margin_f0.2_s{seed}" / "model" for seed in (0, 1)}  # s0: effort.py's
    assert heavy == {*read, kept / "search" / candidate.name / "checkpoints"}
    in_repo = [str(Path("docs/results/pbc-current") / p.relative_to(kept) / "f") for p in heavy]
    ignored = subprocess.run(["git", "check-ignore", *in_repo], cwd=ROOT, capture_output=True, text=True)
    assert not ignored.stdout  # .gitignore lets in what keep.py keeps, or the next machine would lack it
    assert not list((kept / "search").rglob("*.png")) and list((kept / "runs").rglob("*.png"))
    assert "kept 0 run(s)" in run([*keep, "save", str(first)], env=env)  # nothing changed since
    at_half = [p for p in (kept / "search").glob("*_f0.5_*") if p.is_dir()]
    assert at_half and all((p / "evaluate-val" / "metrics.json").exists() for p in at_half)

    first.rename(tmp_path / "gone")  # a new machine: the same study folder, holding only what was kept
    again = first
    out = run([*keep, "restore", str(again)], env=env)
    assert (again / "runs" / "mae+margin_f0.2_s1" / "model").is_dir()  # kept with its model
    assert "1 of them from a kept checkpoint" in out and (again / "effort.csv").exists()
    leanmae.study(out=again, **settings)
    assert read_json(again / "search" / candidate.name / "run.json")["resumed_from_epoch"] == 1
    assert (again / "search" / candidate.name / "predictions.csv").read_bytes() == finished
    assert (again / "runs" / last_round / "model").is_dir()  # trained
    same = (later / last_round / "predictions.csv").read_bytes()
    assert (again / "runs" / last_round / "predictions.csv").read_bytes() == same
    restored = [name for name in grid if name not in ("mae+margin_f0.2_s0", "mae+margin_f0.2_s1")]
    assert not [name for name in restored if (again / "runs" / name / "model").exists()]  # none trained
    assert not [p for p in (again / "search").glob("*_f0.5_*/model")]  # the weights stayed behind
    run([sys.executable, "docs/results/pbc-current/effort.py", str(again), "0.5"])
    rows = (again / "effort.csv").read_text().splitlines()[1:]
    assert {row.split(",")[1] for row in rows} == {"0.2", "0.5"}  # the earlier check's rows stay
    run([*keep, "save", str(again)], env=env)
    assert not [p for p in kept.rglob("*") if p.name in ("model", "checkpoints")]  # none is to be read
