"""leanmae next to the field's tools: MLflow tracking, Hub model cards and ONNX export, each checked
with the real library (a local MLflow store read back with ``MlflowClient``, onnxruntime)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

import leanmae
from helpers import read_csv, tiny_finetune, tiny_pretrain
from leanmae.data.split import read_manifest
from leanmae.data.synthetic import WBC_CLASSES, make_synthetic_wbc
from leanmae.errors import ConfigError
from leanmae.tracking import final_metrics, open_trackers

FAST = ["optim.epochs=2", "classifier.min_steps=2"]


@pytest.fixture(scope="module")
def cells(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Synthetic cells of three classes and their split manifest."""
    root = tmp_path_factory.mktemp("interop")
    data = make_synthetic_wbc(root / "cells", n_per_class=10, size=40)
    leanmae.split(data, classes=list(WBC_CLASSES[:3]), out=root / "split.csv")
    return data, root / "split.csv"


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    pytest.importorskip("mlflow", reason="mlflow is not installed (pip install -e '.[mlflow]')")
    return "sqlite:///" + str(tmp_path_factory.mktemp("mlflow") / "mlflow.db")


@pytest.fixture(scope="module")
def tracked_run(
    cells: tuple[Path, Path], mlflow_store: str, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A fine-tuning run that reports to TensorBoard and to a local MLflow store."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(
            tmp_path_factory.mktemp("cwd")
        )  # MLflow puts artifacts under ./mlruns of the working directory
        mp.setenv("MLFLOW_TRACKING_URI", mlflow_store)
        mp.setenv("MLFLOW_EXPERIMENT_NAME", "interop-test")
        out = tmp_path_factory.mktemp("runs") / "tracked"
        tiny_finetune(cells[1], out, sets=[*FAST, "run.report_to=[tensorboard, mlflow]"])
    return out


def _mlflow_run(store: str, out: Path):
    from mlflow import MlflowClient

    client = MlflowClient(store)
    run_id = json.loads((out / "mlflow.json").read_text())["run_id"]
    return client, client.get_run(run_id)


# =========================================================================== MLflow


def test_default_trackers_are_tensorboard_only(cells: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "plain"
    tiny_finetune(cells[1], out, sets=FAST)
    assert json.loads((out / "run.json").read_text())["config"]["run"]["report_to"] == ["tensorboard"]
    assert (out / "tensorboard").is_dir() and not (out / "mlflow.json").exists()


def test_unknown_tracker_is_a_config_error_naming_the_choices(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'wandb'.*tensorboard, mlflow"):
        open_trackers(["wandb"], tmp_path, 0)


def test_mlflow_run_holds_the_resolved_config_as_params(tracked_run: Path, mlflow_store: str) -> None:
    _, run = _mlflow_run(mlflow_store, tracked_run)
    config = json.loads((tracked_run / "run.json").read_text())["config"]
    assert run.data.params["optim.epochs"] == "2"
    assert run.data.params["fraction"] == str(config["fraction"])
    assert json.loads(run.data.params["run.report_to"]) == ["tensorboard", "mlflow"]
    assert run.info.run_name == "tracked" and run.info.status == "FINISHED"


def test_mlflow_has_every_epoch_of_history_and_the_final_test_metrics(
    tracked_run: Path, mlflow_store: str
) -> None:
    client, run = _mlflow_run(mlflow_store, tracked_run)
    val_loss = [
        m.value for m in sorted(client.get_metric_history(run.info.run_id, "val_loss"), key=lambda m: m.step)
    ]
    history = [float(row["val_loss"]) for row in read_csv(tracked_run / "history.csv")]
    assert len(history) == 2 and val_loss == pytest.approx(history)
    metrics = json.loads((tracked_run / "metrics.json").read_text())
    assert run.data.metrics["final.test.accuracy"] == pytest.approx(metrics["test"]["accuracy"])
    assert run.data.metrics["final.calibration.after.ece"] == pytest.approx(
        metrics["calibration"]["after"]["ece"]
    )


def test_mlflow_artifacts_hold_the_figures_results_and_model_folder(
    tracked_run: Path, mlflow_store: str
) -> None:
    client, run = _mlflow_run(mlflow_store, tracked_run)
    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {
        "metrics.json",
        "run.json",
        "history.csv",
        "reliability.png",
        "confusion_matrix.png",
        "model",
    } <= top
    model = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "model")}
    assert {"model.safetensors", "config.json", "README.md", "preprocessor_config.json"} <= model


def test_final_metrics_keep_finite_numbers_only() -> None:
    assert final_metrics(
        {"a": 1, "b": {"c": 0.5, "d": float("nan"), "e": "text", "f": True, "g": [1, 2]}}
    ) == {"a": 1.0, "b.c": 0.5}


@pytest.mark.slow
def test_a_study_is_one_parent_mlflow_run_with_a_child_per_run(
    cells: tuple[Path, Path], mlflow_store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # MLflow puts artifacts under ./mlruns of the working directory
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_store)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "interop-study")
    out = tmp_path / "study"
    leanmae.study(
        out=out,
        data=str(cells[0]),
        classes=list(WBC_CLASSES[:3]),
        arms="scratch",
        fractions=[0.5, 1.0],
        seeds=[0],
        preset="test",
        jobs=2,
        set=["run.device=cpu", "finetune.classifier.min_steps=2", "optim.epochs=1", "run.report_to=[mlflow]"],
        progress=False,
    )
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_store)
    parent = json.loads((out / "mlflow.json").read_text())["run_id"]
    experiment = client.get_experiment_by_name("interop-study").experiment_id
    children = client.search_runs([experiment], filter_string=f"tags.mlflow.parentRunId = '{parent}'")
    assert sorted(r.info.run_name for r in children) == ["scratch_f0.5_s0", "scratch_f1_s0"]
    assert "report.html" in {a.path for a in client.list_artifacts(parent)}
    assert "MLFLOW_PARENT_RUN_ID" not in __import__("os").environ


# =========================================================================== model cards


def _card(folder: Path) -> tuple[dict, str]:
    text = (folder / "README.md").read_text()
    _, meta, body = text.split("---\n", 2)
    return yaml.safe_load(meta), body


def cells_folder_name(run: Path) -> str:
    """The name of the folder a fine-tuning run's split manifest takes its images from."""
    return read_manifest(json.loads((run / "run.json").read_text())["config"]["split"])[0].name


def test_classifier_card_has_hub_metadata_and_the_runs_own_test_metrics(classifier_run: Path) -> None:
    meta, body = _card(classifier_run / "model")
    metrics = json.loads((classifier_run / "metrics.json").read_text())
    assert (
        meta["library_name"] == "transformers"
        and "leanmae" in meta["tags"]
        and meta["pipeline_tag"] == "image-classification"
    )
    reported = {m["type"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert meta["license"] == "other" and meta["datasets"] == [cells_folder_name(classifier_run)]
    assert reported["accuracy"] == pytest.approx(metrics["test"]["accuracy"], abs=1e-4)
    assert reported["ece"] == pytest.approx(metrics["calibration"]["after"]["ece"], abs=1e-4)
    assert f"| macro F1 | {metrics['test']['macro_f1']:.4f} |" in body
    assert f"T = {metrics['calibration']['temperature']:.3f}" in body


def test_classifier_card_states_data_fraction_pretraining_use_and_limits(
    classifier_run: Path, cells: tuple[Path, Path]
) -> None:
    _, body = _card(classifier_run / "model")
    for heading in (
        "## Data",
        "## Pretraining",
        "## Evaluation",
        "## Preprocessing",
        "## Intended use",
        "## Limits",
    ):
        assert heading in body
    assert "Label fraction: 100 % of the train split" in body
    assert "initialised at random" in body
    assert "not a medical device" in body
    assert ", ".join(WBC_CLASSES[:3]) in body


def test_mae_card_describes_its_pretraining_and_a_finetuned_card_cites_it(
    cells: tuple[Path, Path], tmp_path: Path
) -> None:
    mae = tmp_path / "mae"
    tiny_pretrain(cells[0], mae, epochs=1)
    meta, body = _card(mae / "model")
    assert "masked-autoencoder" in meta["tags"] and "masked-patch MSE" in body
    assert "1 epoch;" in body and "1 epochs" not in body
    assert meta["datasets"] == [cells[0].name] and "base_model" not in meta
    run = json.loads((mae / "run.json").read_text())
    assert f"{run['images']['train']} unlabelled training images" in body
    recorded = json.loads((mae / "model" / "leanmae.json").read_text())["unlabelled_images"]
    assert recorded == run["images"]["train"] + run["images"]["val"]
    ft = tmp_path / "ft"
    tiny_finetune(cells[1], ft, init=str(mae), sets=FAST)
    ft_meta, ft_body = _card(ft / "model")
    assert ft_meta["base_model"] == "mae"
    assert "masked autoencoder" in ft_body
    assert f"{run['images']['train']} unlabelled images (and {run['images']['val']} held out" in ft_body


# =========================================================================== ONNX export and in-memory
# predict


@pytest.fixture(scope="module")
def classifier_run(cells: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "classifier"
    tiny_finetune(cells[1], out, sets=FAST)
    return out


def _cell_images(cells: tuple[Path, Path], n: int = 6) -> list[Path]:
    return sorted(cells[0].rglob("*.png"))[:n]


def test_predict_takes_pil_images_and_returns_rows_without_writing(
    classifier_run: Path, cells: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from PIL import Image

    files = _cell_images(cells)
    monkeypatch.chdir(tmp_path)
    rows = leanmae.predict(classifier_run, [Image.open(f) for f in files], device="cpu", progress=False)
    assert list(tmp_path.iterdir()) == []
    from_files = leanmae.predict(classifier_run, files, device="cpu", progress=False)
    assert [r["path"] for r in rows] == [f"image {i}" for i in range(len(files))]
    assert [r["path"] for r in from_files] == [str(f) for f in files]
    for memory, disk in zip(rows, from_files, strict=True):
        assert memory["predicted_label"] == disk["predicted_label"]
        probs = [memory[f"p_{label}"] for label in WBC_CLASSES[:3]]
        assert sum(probs) == pytest.approx(1.0, abs=1e-5) and memory["confidence"] == pytest.approx(
            max(probs)
        )
        assert isinstance(memory["refer"], bool) and isinstance(memory["energy"], float)


def test_predict_refuses_an_array_that_is_not_rgb_uint8(classifier_run: Path) -> None:
    from leanmae.errors import DataError

    with pytest.raises(DataError, match=r"\(height, width, 3\) uint8"):
        leanmae.predict(classifier_run, np.zeros((8, 8), dtype=np.float32), device="cpu", progress=False)


def _pixel_values(folder: Path, files: list[Path]) -> np.ndarray:
    """The model card's preprocessing, step by step, with leanmae's own transforms."""
    from leanmae.data.augment import normalize, resize, to_float
    from leanmae.data.decode import decode_rgb, square_resize
    from leanmae.models.io import load_preprocessing

    mean, std, extra = load_preprocessing(folder)
    size = json.loads((folder / "config.json").read_text())["image_size"]
    batch = np.stack([square_resize(decode_rgb(f), extra["cache_size"]) for f in files])
    return normalize(resize(to_float(batch), size), mean, std).numpy()


def test_onnx_export_matches_leanmae_probabilities_in_onnxruntime(
    classifier_run: Path, cells: tuple[Path, Path], tmp_path: Path
) -> None:
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install -e '.[onnx]')")
    onnx_file = tmp_path / "model.onnx"
    info = leanmae.export(classifier_run, onnx=onnx_file)
    assert info["max_abs_diff"] <= 1e-4
    files = _cell_images(cells, 7)  # a batch size the export never saw
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    probabilities = session.run(
        ["probabilities"], {"pixel_values": _pixel_values(classifier_run / "model", files)}
    )[0]
    rows = leanmae.predict(classifier_run, files, device="cpu", progress=False)
    expected = np.array([[row[f"p_{label}"] for label in WBC_CLASSES[:3]] for row in rows])
    assert np.abs(probabilities - expected).max() <= 1e-4
    metadata = session.get_modelmeta().custom_metadata_map
    assert json.loads(metadata["labels"]) == list(WBC_CLASSES[:3])
    assert json.loads(metadata["image_mean"]) == pytest.approx([0.485, 0.456, 0.406])


def test_export_cli_writes_the_onnx_file(classifier_run: Path, tmp_path: Path) -> None:
    for module in ("onnx", "onnxruntime"):
        pytest.importorskip(module, reason=f"{module} is not installed (pip install -e '.[onnx]')")
    from leanmae.cli import main

    assert main(["export", str(classifier_run), "--onnx", str(tmp_path / "m.onnx")]) == 0
    assert (tmp_path / "m.onnx").stat().st_size > 1000
