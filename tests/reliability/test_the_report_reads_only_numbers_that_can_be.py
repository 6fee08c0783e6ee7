"""The report never puts an impossible number into its tables (a score of 7.5 or NaN, a damaged JSON file),
and never says a lab needs 0 labels: where every run reaches the target it says what was measured."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

import leanmae
from helpers import FAKE_FRACTIONS, write_fake_run
from leanmae.cli import main
from leanmae.errors import DataError
from leanmae.reporting.learning import answer, headline
from leanmae.reporting.robustness import robustness_tables
from leanmae.reporting.runs import load_runs


def _study(root: Path, every_run: float | None = None) -> Path:
    """Two arms whose macro-F1 rises with the labels, or is ``every_run`` at every fraction."""
    study = root / "study"
    for arm in ("scratch", "mae"):
        for fraction, labels in FAKE_FRACTIONS.items():
            for seed in (0, 1):
                f1 = 0.5 + 0.1 * math.log10(labels) if every_run is None else every_run
                write_fake_run(study, arm, fraction, seed, f1)
    (study / "study.json").write_text(json.dumps({"arms": ["scratch", "mae"], "data": "cells"}))
    return study


@pytest.mark.parametrize(("key", "value"), [("accuracy", 7.5), ("macro_f1", math.nan), ("macro_f1", "0.9")])
def test_a_run_with_an_impossible_score_is_refused_naming_its_file(
    tmp_path: Path, key: str, value: object
) -> None:
    study = _study(tmp_path)
    metrics_file = next((study / "runs").glob("mae_f0.1_s0")) / "metrics.json"
    metrics = json.loads(metrics_file.read_text())
    metrics["test"][key] = value
    metrics_file.write_text(json.dumps(metrics))
    with pytest.raises(DataError, match=rf"{metrics_file}: test\.{key} is"):
        leanmae.report(study)


@pytest.mark.parametrize("name", ["runs/mae_f0.1_s0/run.json", "study.json", "runs/mae_f0.1_s0/metrics.json"])
def test_a_truncated_json_file_is_one_line_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    study = _study(tmp_path)
    damaged = study / name
    damaged.write_text(damaged.read_text()[:20])
    assert main(["report", str(study)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(damaged) in err and "Traceback" not in err


def test_a_truncated_robustness_file_is_one_line_naming_it(tmp_path: Path) -> None:
    study = _study(tmp_path)
    damaged = study / "runs" / "mae_f0.1_s0" / "robustness.json"
    damaged.write_text('{"benchmark": {"shif')
    with pytest.raises(DataError, match=str(damaged)):
        robustness_tables(load_runs(study))


def test_when_every_run_reaches_the_target_the_answer_is_the_fewest_labels_measured(tmp_path: Path) -> None:
    """A curve through runs that all score 1.0 puts the target at 0 labels, which no lab can act on."""
    runs = load_runs(_study(tmp_path, every_run=1.0))
    lines = headline(answer(runs, target=0.95), runs)
    fewest = min(FAKE_FRACTIONS.values()) + 2  # training labels plus the two honest validation labels
    assert not any(" 0 labelled images" in line or "about 0 per class" in line for line in lines)
    assert any(f"at most {fewest} labelled images" in line for line in lines)
