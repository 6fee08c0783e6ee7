"""``leanmae pretrain`` end to end with the tiny ``test`` preset: what a run writes, the output-folder
rules, exact resumption (also after SIGKILL), and learning on real blood-cell images."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file
from transformers import ViTMAEForPreTraining

from helpers import assert_same_weights, interrupt_after_epoch, load_weights, tiny_pretrain, write_images
from leanmae.errors import OutputFolderError

# --------------------------------------------------------------------------- one finished run


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A 2-epoch run of the test preset on 24 synthetic images, trained at mask ratio 0.6."""
    root = tmp_path_factory.mktemp("finished-run")
    data = root / "images"
    write_images(data, 24, 48)
    out = root / "run"
    summary = tiny_pretrain(
        data,
        out,
        seed=3,
        sets=[f"data.cache_dir={root / 'cache'}", "data.val_fraction=0.2", "model.mask_ratio=0.6"],
    )
    return {"out": out, "data": data, "summary": summary}


def test_run_writes_every_documented_output(finished_run: dict[str, Any]) -> None:
    out: Path = finished_run["out"]
    for name in (
        "run.json",
        "history.csv",
        "loss.png",
        "reconstructions.png",
        "recon_metrics.json",
        "model/config.json",
        "model/model.safetensors",
    ):
        assert (out / name).is_file(), f"{name} missing"
        assert (out / name).stat().st_size > 0
    assert (out / "checkpoints" / "epoch-0002" / "model.safetensors").is_file()
    assert (out / "tensorboard").is_dir()


def test_figures_are_png_files(finished_run: dict[str, Any]) -> None:
    for name in ("loss.png", "reconstructions.png"):
        assert (finished_run["out"] / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_run_json_records_config_versions_seed_device_and_data_hash(finished_run: dict[str, Any]) -> None:
    info = json.loads((finished_run["out"] / "run.json").read_text())
    assert info["command"] == "pretrain"
    assert info["status"] == "finished"
    assert info["preset"] == "test"
    assert info["seed"] == 3
    assert info["device"] == "cpu"
    assert info["world_size"] == 1
    assert len(info["data_hash"]) == 64
    assert {"python", "leanmae", "torch", "transformers", "numpy"} <= set(info["versions"])
    config = info["config"]
    assert config["model"]["mask_ratio"] == 0.6
    assert config["optim"]["epochs"] == 2
    assert config["run"]["seed"] == 3
    assert config["data"]["sources"] == [str(finished_run["data"])]
    assert info["images"]["train"] + info["images"]["val"] == 24
    assert info["skipped_files"] == []
    assert info["epochs"] == 2


def test_run_json_records_the_lr_rule(finished_run: dict[str, Any]) -> None:
    info = json.loads((finished_run["out"] / "run.json").read_text())
    optim = info["config"]["optim"]
    assert info["effective_batch"] == optim["batch_size"] * optim["accum_steps"]
    assert info["absolute_lr"] == pytest.approx(optim["base_lr"] * info["effective_batch"] / 256)


def test_history_has_one_row_per_epoch_with_losses_and_lr(finished_run: dict[str, Any]) -> None:
    with open(finished_run["out"] / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    for row in rows:
        assert {"train_loss", "val_loss", "lr", "seconds", "data_seconds"} <= set(row)
        assert math.isfinite(float(row["train_loss"])) and math.isfinite(float(row["val_loss"]))
        assert float(row["lr"]) > 0


def test_summary_reports_first_and_last_validation_loss(finished_run: dict[str, Any]) -> None:
    summary = finished_run["summary"]
    with open(finished_run["out"] / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert summary["status"] == "finished" and summary["epochs"] == 2
    assert summary["val_loss_first"] == pytest.approx(float(rows[0]["val_loss"]))
    assert summary["val_loss_last"] == pytest.approx(float(rows[-1]["val_loss"]))
    assert summary["resumed_from_epoch"] is None


def test_recon_metrics_has_masked_and_visible_error_at_each_ratio(finished_run: dict[str, Any]) -> None:
    metrics = json.loads((finished_run["out"] / "recon_metrics.json").read_text())
    assert metrics["training_mask_ratio"] == 0.6
    assert set(metrics["by_mask_ratio"]) == {"0.25", "0.5", "0.6", "0.75"}
    for ratio, errors in metrics["by_mask_ratio"].items():
        assert errors["masked_mse"] > 0 and math.isfinite(errors["masked_mse"]), ratio
        assert errors["visible_mse"] >= 0 and math.isfinite(errors["visible_mse"]), ratio
    assert metrics["images"] == json.loads((finished_run["out"] / "run.json").read_text())["images"]["val"]


def test_saved_model_loads_with_transformers_and_equals_the_trained_weights(
    finished_run: dict[str, Any],
) -> None:
    out: Path = finished_run["out"]
    model = ViTMAEForPreTraining.from_pretrained(out / "model")
    assert model.config.image_size == 32 and model.config.patch_size == 8 and model.config.mask_ratio == 0.6
    trained = load_file(out / "checkpoints" / "epoch-0002" / "model.safetensors")
    loaded = {k: v.detach() for k, v in model.state_dict().items()}
    assert_same_weights(loaded, trained)


def test_saved_model_records_the_preprocessing(finished_run: dict[str, Any]) -> None:
    folder = finished_run["out"] / "model"
    processor = json.loads((folder / "preprocessor_config.json").read_text())
    assert processor["image_mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert processor["size"] == {"height": 32, "width": 32}
    assert json.loads((folder / "leanmae.json").read_text())["cache_size"] == 40


def test_the_same_seed_gives_the_same_weights(finished_run: dict[str, Any], tmp_path: Path) -> None:
    root = finished_run["out"].parent
    tiny_pretrain(
        finished_run["data"],
        tmp_path / "again",
        seed=3,
        sets=[f"data.cache_dir={root / 'cache'}", "data.val_fraction=0.2", "model.mask_ratio=0.6"],
    )
    assert_same_weights(
        load_weights(tmp_path / "again" / "model"), load_weights(finished_run["out"] / "model")
    )


def test_pretraining_with_prefetch_gives_the_same_weights_and_losses(
    finished_run: dict[str, Any], tmp_path: Path
) -> None:
    """The finished run prepared its batches inline (the CPU default); on the prefetch thread no number
    changes."""
    root = finished_run["out"].parent
    sets = [
        f"data.cache_dir={root / 'cache'}",
        "data.val_fraction=0.2",
        "model.mask_ratio=0.6",
        "run.prefetch=true",
    ]
    tiny_pretrain(finished_run["data"], tmp_path / "inline", seed=3, sets=sets)
    assert_same_weights(
        load_weights(tmp_path / "inline" / "model"), load_weights(finished_run["out"] / "model")
    )
    with open(tmp_path / "inline" / "history.csv") as fa, open(finished_run["out"] / "history.csv") as fb:
        assert [(r["train_loss"], r["val_loss"]) for r in csv.DictReader(fa)] == [
            (r["train_loss"], r["val_loss"]) for r in csv.DictReader(fb)
        ]


def test_pretraining_on_tiles_uses_every_tile(tmp_path: Path) -> None:
    write_images(tmp_path / "slides", 6, 128)
    tiny_pretrain(tmp_path / "slides", tmp_path / "run", epochs=1, grid="2x2", sets=["data.min_tile_size=32"])
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["images"]["train"] + info["images"]["val"] == 24
    assert info["images"]["val"] % 4 == 0, "tiles of one source image stay on the same side of the split"


def test_a_data_set_smaller_than_one_batch_still_trains(tmp_path: Path) -> None:
    write_images(tmp_path / "few", 5, 40)
    summary = tiny_pretrain(tmp_path / "few", tmp_path / "run", epochs=2)  # the test preset's batch is 16
    assert summary["epochs"] == 2
    assert math.isfinite(summary["val_loss_last"])


# --------------------------------------------------------------------------- output-folder rules


@pytest.fixture
def data_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    write_images(folder, 20, 40)
    return folder


def test_a_second_run_into_the_same_folder_is_refused(data_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    tiny_pretrain(data_folder, out, epochs=1)
    before = (out / "model" / "model.safetensors").read_bytes()
    with pytest.raises(OutputFolderError, match="--resume.*--overwrite"):
        tiny_pretrain(data_folder, out, epochs=1)
    assert (out / "model" / "model.safetensors").read_bytes() == before, "the refused run changed nothing"


def test_overwrite_replaces_the_earlier_run(data_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    tiny_pretrain(data_folder, out, epochs=2)
    (out / "notes.txt").write_text("not written by pretrain")
    summary = tiny_pretrain(data_folder, out, epochs=1, overwrite=True)
    assert summary["epochs"] == 1
    assert (out / "notes.txt").exists(), "--overwrite replaces only what the command writes"
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["epoch-0001"]
    assert json.loads((out / "run.json").read_text())["config"]["optim"]["epochs"] == 1


def test_a_non_empty_folder_without_run_json_is_refused_even_with_overwrite(
    data_folder: Path, tmp_path: Path
) -> None:
    out = tmp_path / "someone-elses"
    out.mkdir()
    (out / "thesis.docx").write_text("precious")
    for options in ({}, {"overwrite": True}, {"resume": True}):
        with pytest.raises(OutputFolderError, match="holds no leanmae run"):
            tiny_pretrain(data_folder, out, epochs=1, **options)
    assert (out / "thesis.docx").read_text() == "precious"


def test_an_empty_existing_folder_is_used(data_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "empty"
    out.mkdir()
    tiny_pretrain(data_folder, out, epochs=1)
    assert (out / "run.json").exists()


def test_resume_with_a_changed_config_is_refused(data_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    tiny_pretrain(data_folder, out, epochs=1)
    with pytest.raises(OutputFolderError, match=r"optim\.base_lr"):
        tiny_pretrain(data_folder, out, epochs=2, resume=True, sets=["optim.base_lr=0.01"])
    with pytest.raises(OutputFolderError, match=r"run\.seed"):
        tiny_pretrain(data_folder, out, epochs=2, resume=True, seed=5)


def test_resume_with_more_epochs_is_allowed_and_continues(data_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    tiny_pretrain(data_folder, out, epochs=1)
    summary = tiny_pretrain(data_folder, out, epochs=2, resume=True)
    assert summary["resumed_from_epoch"] == 1
    assert summary["epochs"] == 2
    with open(out / "history.csv") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [1, 2]


def test_resuming_a_finished_run_with_the_same_epochs_keeps_its_weights(
    data_folder: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    tiny_pretrain(data_folder, out, epochs=2)
    before = load_weights(out / "model")
    summary = tiny_pretrain(data_folder, out, epochs=2, resume=True)
    assert summary["epochs"] == 2 and summary["resumed_from_epoch"] == 2
    assert_same_weights(load_weights(out / "model"), before)


def test_resume_and_overwrite_together_are_refused(data_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    tiny_pretrain(data_folder, out, epochs=1)
    with pytest.raises(OutputFolderError, match="contradict"):
        tiny_pretrain(data_folder, out, epochs=1, resume=True, overwrite=True)


# --------------------------------------------------------------------------- exact resumption


def test_resuming_a_constant_schedule_run_for_more_epochs_equals_an_uninterrupted_run(
    data_folder: Path, tmp_path: Path
) -> None:
    """2 epochs, then --resume --epochs 3 == 3 epochs straight (the constant schedule does not depend on the
    epoch count)."""
    sets = ["optim.schedule=constant"]
    tiny_pretrain(data_folder, tmp_path / "a", epochs=3, sets=sets)
    tiny_pretrain(data_folder, tmp_path / "b", epochs=2, sets=sets)
    summary = tiny_pretrain(data_folder, tmp_path / "b", epochs=3, resume=True, sets=sets)
    assert summary["resumed_from_epoch"] == 2
    assert_same_weights(load_weights(tmp_path / "b" / "model"), load_weights(tmp_path / "a" / "model"))
    with open(tmp_path / "a" / "history.csv") as fa, open(tmp_path / "b" / "history.csv") as fb:
        rows_a, rows_b = list(csv.DictReader(fa)), list(csv.DictReader(fb))
    assert [(r["train_loss"], r["val_loss"]) for r in rows_a] == [
        (r["train_loss"], r["val_loss"]) for r in rows_b
    ]


def test_a_run_interrupted_after_epoch_2_and_resumed_equals_an_uninterrupted_run(
    data_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default cosine schedule: interrupt a 3-epoch run just after its epoch-2 checkpoint, resume,
    compare."""
    tiny_pretrain(data_folder, tmp_path / "a", epochs=3)

    interrupt_after_epoch(monkeypatch, lambda: tiny_pretrain(data_folder, tmp_path / "b", epochs=3), epoch=2)
    assert [p.name for p in (tmp_path / "b" / "checkpoints").iterdir()] == ["epoch-0002"]
    assert not (tmp_path / "b" / "model").exists()

    summary = tiny_pretrain(data_folder, tmp_path / "b", epochs=3, resume=True)
    assert summary["resumed_from_epoch"] == 2
    assert_same_weights(load_weights(tmp_path / "b" / "model"), load_weights(tmp_path / "a" / "model"))


def _cli(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "leanmae", *args]


def test_a_run_killed_with_sigkill_resumes_to_identical_weights(tmp_path: Path) -> None:
    """Kill ``python -m leanmae pretrain`` once its first checkpoint exists, resume it, compare with an
    uninterrupted run."""
    data = tmp_path / "images"
    write_images(data, 64, 40)
    epochs = 15
    common = [
        "--data",
        str(data),
        "--preset",
        "test",
        "--epochs",
        str(epochs),
        "--device",
        "cpu",
        "--no-progress",
        "--set",
        "optim.batch_size=8",
        "--set",
        f"data.cache_dir={tmp_path / 'cache'}",
    ]
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        _cli(["pretrain", *common, "--out", str(out)]),
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        first = out / "checkpoints" / "epoch-0001"
        while proc.poll() is None and not first.exists():
            try:
                proc.wait(timeout=0.02)
            except subprocess.TimeoutExpired:
                pass
        assert proc.poll() is None, (
            f"the run ended before its first checkpoint: {proc.stderr.read().decode()[-2000:]}"
        )
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    done = int(sorted(p.name for p in (out / "checkpoints").glob("epoch-*"))[-1].split("-")[1])
    assert 1 <= done < epochs, "killed mid-run"
    assert not (out / "model").exists()

    resumed = subprocess.run(
        _cli(["pretrain", *common, "--out", str(out), "--resume"]),
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout

    tiny_pretrain(
        data,
        tmp_path / "straight",
        epochs=epochs,
        sets=["optim.batch_size=8", f"data.cache_dir={tmp_path / 'cache'}"],
    )
    assert_same_weights(load_weights(out / "model"), load_weights(tmp_path / "straight" / "model"))
    assert json.loads((out / "run.json").read_text())["resumed_from_epoch"] == done


# --------------------------------------------------------------------------- real images


def test_pretraining_on_real_platelet_and_erythroblast_images_lowers_the_validation_loss(pbc_subset) -> None:
    data = pbc_subset(["platelet", "erythroblast"], 20)
    out = data.parent / "run"
    summary = tiny_pretrain(
        f"{data}:platelet,erythroblast",
        out,
        epochs=5,
        sets=["optim.base_lr=1e-2", "optim.batch_size=8", "data.val_fraction=0.2"],
    )
    info = json.loads((out / "run.json").read_text())
    assert info["images"] == {"train": 32, "val": 8}
    assert summary["val_loss_last"] < 0.98 * summary["val_loss_first"], (
        f"val loss {summary['val_loss_first']:.4f} -> {summary['val_loss_last']:.4f}"
    )


def test_grid_tiles_of_real_lung_images_are_cached_with_their_boxes(
    lc25000_dir: Path, tmp_path: Path
) -> None:
    from leanmae.data.cache import DecodeSpec, load_or_build
    from leanmae.data.sources import scan

    records = scan(lc25000_dir, ["lung_n"])[:3]
    cache = load_or_build(
        records, DecodeSpec(size=40, grid="2x2"), tmp_path / "cache", workers=1, progress=False
    )
    assert len(cache) == 12
    assert cache.sources.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert [tuple(b) for b in cache.boxes[:4].tolist()] == [
        (0, 0, 112, 112),
        (112, 0, 224, 112),
        (0, 112, 112, 224),
        (112, 112, 224, 224),
    ]
