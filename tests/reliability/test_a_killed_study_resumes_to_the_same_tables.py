"""A killed ``leanmae study`` reports only its finished runs and, rerun, ends with the tables of an
uninterrupted study; killing the study process alone stops the run it launched; a study killed while
writing its report keeps the old one."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from reliability_helpers import (
    STUDY_EPOCHS,
    _kill_group,
    _start,
    _study_args,
    _study_kwargs,
    _wait_for,
)

import leanmae
import leanmae.reporting.study_report as study_report
from helpers import assert_same_weights, load_weights, read_csv
from leanmae.training.checkpoint import list_checkpoints


def _results(study: Path) -> dict[str, Any]:
    """Every results/*.csv but times.csv (runs.csv without its timing column) and findings.md."""
    found: dict[str, Any] = {"findings.md": (study / "results" / "findings.md").read_text()}
    for path in sorted(p for p in (study / "results").glob("*.csv") if p.name != "times.csv"):
        found[path.name] = [{k: v for k, v in row.items() if k != "seconds"} for row in read_csv(path)]
    return found


def test_a_study_killed_mid_way_reports_only_finished_runs_and_resumes_to_the_same_tables(
    study_data: Path, reference_study: Path, tmp_path: Path
) -> None:
    """Kill ``leanmae study`` (and its run) while its second run trains; the report lists the finished run
    only; rerunning completes it identically."""
    out = tmp_path / "study"
    second = out / "runs" / "scratch_f1_s1"
    epoch = random.Random("kill-study").randint(1, STUDY_EPOCHS - 2)
    proc = _start(_study_args(study_data, out), tmp_path / "proc")
    try:
        _wait_for(
            proc,
            tmp_path / "proc",
            lambda: [
                p for p in list_checkpoints(second / "checkpoints") if int(p.name.split("-")[1]) >= epoch
            ],
            timeout=180,
        )
        _kill_group(proc)
    finally:
        if proc.poll() is None:
            _kill_group(proc)
    assert proc.returncode == -signal.SIGKILL
    assert json.loads((out / "runs" / "scratch_f1_s0" / "run.json").read_text())["status"] == "finished"
    assert (
        json.loads((second / "run.json").read_text())["status"] == "running"
        and not (second / "metrics.json").exists()
    )

    leanmae.report(out)  # what `leanmae report` shows of the interrupted study
    assert [(r["arm"], r["seed"]) for r in read_csv(out / "results" / "runs.csv")] == [("scratch", "0")]
    text = (out / "report.html").read_text()
    assert "1 of 2 fine-tuning runs finished" in text and "not complete" in text

    states = leanmae.study(out=out, jobs=1, **_study_kwargs(study_data))
    assert set(states.values()) == {"done"}
    assert "resuming from" in (out / "runs" / "scratch_f1_s1.log").read_text()
    assert _results(out) == _results(reference_study)
    assert_same_weights(
        load_weights(second / "model"), load_weights(reference_study / "runs" / "scratch_f1_s1" / "model")
    )
    assert "2 of 2 fine-tuning runs finished" in (out / "report.html").read_text()


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(
    not Path("/proc/self/stat").exists(), reason="needs /proc to find the study's child processes"
)
def test_killing_the_study_process_alone_also_stops_the_run_it_launched(
    study_data: Path, tmp_path: Path
) -> None:
    """``kill -9 <study pid>`` must not leave its run training on: rerunning the study would put a second
    writer into the same run folder."""
    out = tmp_path / "study"
    proc = _start(_study_args(study_data, out, epochs=2000, seeds="0"), tmp_path / "proc")
    try:
        children = _wait_for(
            proc, tmp_path / "proc", lambda: _children(proc.pid), timeout=180
        )  # the run's process has started
        os.kill(proc.pid, signal.SIGKILL)  # the study process only, as `kill -9 PID` does
        proc.wait(timeout=60)
        # The run polls its parent once a second; 30 s leaves room for a machine loaded by other work
        # (5 s failed once beside a running study), while a run left training would still be caught.
        deadline = time.monotonic() + 30
        while any(_alive(c) for c in children) and time.monotonic() < deadline:
            time.sleep(0.05)
        orphans = [c for c in children if _alive(c)]
        assert not orphans, (
            f"process(es) {orphans} of the study's run kept running after the study was killed; "
            f"they go on training into {out / 'runs' / 'scratch_f1_s0'}"
        )
    finally:
        _kill_group(proc)  # the run is still in the study's process group


def test_a_study_killed_while_writing_its_report_keeps_the_old_report_and_rebuilds_it(
    reference_study: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kill inside the report.html write leaves the previous report (and a dotted temp file); `leanmae
    report` rebuilds the same one."""
    study = tmp_path / "study"
    shutil.copytree(reference_study, study)
    leanmae.report(study)  # the report names its folder in the study command: build it here first
    before = (study / "report.html").read_bytes()
    tables_before = _results(study)
    real = study_report.write_atomic

    def killed_while_writing_the_report(path: Path | str, data: str | bytes) -> None:
        if Path(path).name == "report.html":
            Path(path).with_name(".report.html.tmp-999").write_text(
                str(data)[: len(data) // 2]
            )  # what SIGKILL leaves behind
            raise KeyboardInterrupt
        real(path, data)

    monkeypatch.setattr(study_report, "write_atomic", killed_while_writing_the_report)
    with pytest.raises(KeyboardInterrupt):
        leanmae.report(study)
    assert (study / "report.html").read_bytes() == before, "the previous report is untouched"
    assert _results(study) == tables_before, "every results file is complete"
    monkeypatch.setattr(study_report, "write_atomic", real)
    leanmae.report(study)
    assert (study / "report.html").read_bytes() == before
