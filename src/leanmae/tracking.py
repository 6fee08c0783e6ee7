"""Experiment trackers: where a run's numbers go besides history.csv (``run.report_to``).

The engine talks to one ``Trackers`` object (log an epoch, close), so adding a tracker never adds
branches to the training loop. ``tensorboard`` writes event files into the run folder (the
default); ``mlflow`` logs to MLflow, which people already use to compare runs across projects:

- params: the resolved config from run.json (written before training starts);
- metrics: every history.csv column per epoch, then the final numbers (``finish_run``);
- artifacts: the run's figures, JSON/CSV results and the model folder;
- a study is a parent run and each of its runs a child (``MLFLOW_PARENT_RUN_ID``, set by the study).

MLflow's own rules pick the store: ``MLFLOW_TRACKING_URI`` when set, otherwise its local default in
the working directory (``mlflow.db`` with artifacts under ``./mlruns``; MLflow 3 has retired the
plain-folder store). The experiment is ``MLFLOW_EXPERIMENT_NAME`` or ``leanmae``. The MLflow run id
is kept in the run folder (``mlflow.json``), so ``--resume`` continues the same MLflow run.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from leanmae.errors import ConfigError
from leanmae.files import write_json

TRACKERS = ("tensorboard", "mlflow")
MLFLOW_RUN_FILE = "mlflow.json"
PARENT_ENV = "MLFLOW_PARENT_RUN_ID"
DEFAULT_EXPERIMENT = "leanmae"
ARTIFACT_SUFFIXES = (".png", ".json", ".csv", ".html", ".md")
ARTIFACT_FOLDERS = ("model", "results")


class Tracker(Protocol):
    def log_epoch(self, row: dict[str, float], step: int) -> None: ...

    def close(self) -> None: ...


def check_report_to(report_to: list[str]) -> None:
    """Unknown tracker names fail before training starts, naming the choices."""
    unknown = [name for name in report_to if name not in TRACKERS]
    if unknown:
        raise ConfigError(
            f"run.report_to: unknown tracker(s) {', '.join(map(repr, unknown))}; use {', '.join(TRACKERS)}"
        )
    if "mlflow" in report_to:
        _mlflow()


def _mlflow() -> Any:
    try:
        import mlflow
    except ImportError:
        raise ConfigError("run.report_to: mlflow is not installed; pip install 'leanmae[mlflow]'") from None
    return mlflow


class TensorBoardTracker:
    def __init__(self, out_dir: Path, start_step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(out_dir / "tensorboard"), purge_step=start_step)

    def log_epoch(self, row: dict[str, float], step: int) -> None:
        for key, value in row.items():
            if key != "epoch":
                self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class MlflowTracker:
    """One MLflow run per leanmae run folder, logged through ``MlflowClient`` (no global active run,
    so notebooks and parallel study jobs never log into each other's runs)."""

    def __init__(self, out_dir: Path) -> None:
        self.client = _mlflow().MlflowClient()
        self.run_id = mlflow_run_id(out_dir, self.client)

    def log_epoch(self, row: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        stamp = _now_ms()
        metrics = [
            Metric(key, float(value), stamp, step)
            for key, value in row.items()
            if key != "epoch" and math.isfinite(float(value))
        ]
        self.client.log_batch(self.run_id, metrics=metrics)

    def close(self) -> None:
        """The run stays open: the command logs its final results and artifacts (``finish_run``)."""


class Trackers:
    """All trackers of a run behind one interface."""

    def __init__(self, trackers: list[Tracker]) -> None:
        self.trackers = trackers

    def log_epoch(self, row: dict[str, float], step: int) -> None:
        for tracker in self.trackers:
            tracker.log_epoch(row, step)

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()


def open_trackers(report_to: list[str], out_dir: Path, start_step: int) -> Trackers:
    """The trackers named in ``run.report_to`` for the run in ``out_dir``; TensorBoard purges events past
    ``start_step`` (resume)."""
    check_report_to(report_to)
    makers = {
        "tensorboard": lambda: TensorBoardTracker(out_dir, start_step),
        "mlflow": lambda: MlflowTracker(out_dir),
    }
    return Trackers([makers[name]() for name in dict.fromkeys(report_to)])


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)


def _experiment_id(client: Any) -> str:
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME", DEFAULT_EXPERIMENT)
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name)
    except Exception:  # another study job created it a moment ago
        return client.get_experiment_by_name(name).experiment_id


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as ``a.b.c`` keys (MLflow params and metrics are flat)."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def mlflow_run_id(out_dir: Path, client: Any) -> str:
    """The MLflow run of ``out_dir``: the one recorded there (resume), or a new one with the run's config as
    params."""
    record = Path(out_dir) / MLFLOW_RUN_FILE
    if record.exists():
        return json.loads(record.read_text())["run_id"]
    info = _run_info(Path(out_dir))
    tags = {"leanmae.command": str(info.get("command", "")), "leanmae.folder": str(Path(out_dir).resolve())}
    if os.environ.get(PARENT_ENV):
        tags["mlflow.parentRunId"] = os.environ[PARENT_ENV]
    run = client.create_run(_experiment_id(client), run_name=Path(out_dir).name, tags=tags)
    _log_params(client, run.info.run_id, info.get("config", {}))
    write_json(record, {"run_id": run.info.run_id, "tracking_uri": _mlflow().get_tracking_uri()})
    return run.info.run_id


def _run_info(folder: Path) -> dict[str, Any]:
    """The command and config of a run folder (run.json) or of a study folder (study.json)."""
    if (folder / "run.json").exists():
        return json.loads((folder / "run.json").read_text())
    if (folder / "study.json").exists():
        return {"command": "study", "config": json.loads((folder / "study.json").read_text())}
    return {}


def _log_params(client: Any, run_id: str, config: dict[str, Any]) -> None:
    from mlflow.entities import Param

    params = [
        Param(key, json.dumps(value) if isinstance(value, (list, tuple, dict)) else str(value))
        for key, value in flatten(config).items()
    ]
    for start in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
        client.log_batch(run_id, params=params[start : start + 100])


def final_metrics(results: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of a run's results (metrics.json or the pretraining summary), flattened."""
    return {
        key: float(value)
        for key, value in flatten(results).items()
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    }


def finish_run(out_dir: Path, report_to: list[str], results: dict[str, Any]) -> None:
    """End of a command: final metrics, the run's figures and result files, and ``model/`` as artifacts."""
    if "mlflow" not in report_to:
        return
    from mlflow.entities import Metric

    out_dir = Path(out_dir)
    client = _mlflow().MlflowClient()
    run_id = mlflow_run_id(out_dir, client)
    stamp = _now_ms()
    metrics = [Metric(f"final.{key}", value, stamp, 0) for key, value in final_metrics(results).items()]
    for start in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[start : start + 1000])
    for path in sorted(out_dir.iterdir()):
        if path.is_file() and path.suffix in ARTIFACT_SUFFIXES and path.name != MLFLOW_RUN_FILE:
            client.log_artifact(run_id, str(path))
    for folder in ARTIFACT_FOLDERS:
        if (out_dir / folder).is_dir():
            client.log_artifacts(run_id, str(out_dir / folder), artifact_path=folder)
    client.set_terminated(run_id, "FINISHED")


def study_report_to(sets: list[str]) -> list[str]:
    """The trackers a study's runs report to, from its ``--set run.report_to=...`` overrides (default:
    TensorBoard)."""
    from leanmae.config import parse_override

    wanted = ["tensorboard"]
    for text in sets:
        run = parse_override(text).get("run", {})
        if isinstance(run, dict) and "report_to" in run:
            value = run["report_to"]
            wanted = [value] if isinstance(value, str) else list(value)
    return wanted


@contextmanager
def study_parent(study_dir: Path, report_to: list[str]) -> Iterator[None]:
    """A study that reports to MLflow is one parent run; its jobs (child processes) find it through
    ``MLFLOW_PARENT_RUN_ID`` and become its children. The variable is restored afterwards."""
    if "mlflow" not in report_to:
        yield
        return
    before = os.environ.get(PARENT_ENV)
    os.environ[PARENT_ENV] = mlflow_run_id(study_dir, _mlflow().MlflowClient())
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(PARENT_ENV, None)
        else:
            os.environ[PARENT_ENV] = before
