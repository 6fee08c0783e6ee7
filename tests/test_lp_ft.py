"""LP-FT (``classifier.lp_ft``): a converged logistic-regression probe of the frozen encoder, then full
fine-tuning from it as the head.

Kumar et al. (ICLR 2022): a random head's early gradients distort pretrained features; starting full
fine-tuning from a probe fitted to convergence avoids it. Checked here on synthetic cells with the tiny
``test`` preset: at step 0 of fine-tuning the model's logits are the probe's decision function (and
not the default head's), the probe's loss is weighted like the run's, the encoder it starts from is the
MAE's and then trains, the option is recorded and uses no more labels, a stopped run resumes to the
same weights, and the command line takes it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

import leanmae
import leanmae.commands.finetune as finetune_command
import leanmae.training.engine as engine
from helpers import assert_same_weights, load_weights, tiny_finetune, tiny_pretrain
from leanmae.cli import main
from leanmae.data.labelled import class_weights
from leanmae.data.synthetic import WBC_CLASSES, make_synthetic_wbc
from leanmae.errors import ConfigError
from leanmae.models.classifier import LeanViTClassifier
from leanmae.models.logistic_probe import MAX_ITER, fit_logistic_probe, set_probe_as_head

LP_FT = ["classifier.lp_ft=true"]
OPTIONS = {"epochs": 2, "seed": 0}


@pytest.fixture(scope="module")
def cells(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """60 synthetic 40 px cells (12 per WBC class), their split, and a 1-epoch MAE pretrained on them."""
    root = tmp_path_factory.mktemp("lp-ft")
    data = make_synthetic_wbc(root / "cells", n_per_class=12, size=40)
    leanmae.split(data, classes=list(WBC_CLASSES), out=root / "split.csv")
    tiny_pretrain(data, root / "mae", epochs=1)
    return {"root": root, "split": root / "split.csv", "mae": root / "mae" / "model"}


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@torch.no_grad()
def _logits_and_features(model: LeanViTClassifier) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's logits, and the pooled features its head reads, for fixed random pixels (eval mode)."""
    size = model.config.image_size
    pixels = torch.randn(8, 3, size, size, generator=torch.Generator().manual_seed(0))
    was_training = model.training
    model.eval()
    logits, features = model(pixel_values=pixels).logits, model.features(pixels)
    model.train(was_training)
    return logits, features


def _recorded_run(cells: dict[str, Path], name: str, sets: list[str]) -> dict[str, Any]:
    """A fine-tuning from the MAE, recording each engine run's module, its weights before and after and
    its logits at step 0, and (with LP-FT) the probe and the sample weights it was fitted with."""
    calls: list[dict[str, Any]] = []
    probes: list[dict[str, Any]] = []
    original_fit, original_probe = finetune_command.fit, finetune_command.fit_logistic_probe

    def recording_fit(module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        call = {"module": module, "before": _snapshot(module), "start": _logits_and_features(module)}
        result = original_fit(module, *args, **kwargs)
        calls.append({**call, "after": _snapshot(module)})
        return result

    def recording_probe(features: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None) -> Any:
        probe = original_probe(features, y, sample_weight)
        probes.append({"probe": probe, "y": y, "sample_weight": sample_weight})
        return probe

    out = cells["root"] / name
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(finetune_command, "fit", recording_fit)
        patch.setattr(finetune_command, "fit_logistic_probe", recording_probe)
        metrics = tiny_finetune(cells["split"], out, init=cells["mae"], sets=sets, **OPTIONS)
    return {"out": out, "metrics": metrics, "calls": calls, "probes": probes}


@pytest.fixture(scope="module")
def runs(cells: dict[str, Path]) -> dict[str, dict[str, Any]]:
    return {
        "lp_ft": _recorded_run(cells, "lp-ft", LP_FT),
        "plain": _recorded_run(cells, "plain", []),
    }


def test_the_probe_is_fitted_once_and_only_the_whole_network_trains_with_the_engine(
    runs: dict[str, dict[str, Any]],
) -> None:
    assert len(runs["lp_ft"]["probes"]) == 1 and not runs["plain"]["probes"]
    for run in runs.values():
        assert [type(call["module"]) for call in run["calls"]] == [LeanViTClassifier]
    assert not (runs["lp_ft"]["out"] / "probe").exists(), "a deterministic fit needs no stage folder"


def test_finetuning_starts_with_logits_equal_to_the_probes_decision_function(
    runs: dict[str, dict[str, Any]],
) -> None:
    probe = runs["lp_ft"]["probes"][0]["probe"]
    logits, features = runs["lp_ft"]["calls"][0]["start"]
    expected = torch.as_tensor(probe.pipeline.decision_function(features.numpy()), dtype=torch.float32)
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)


def test_the_probe_is_converged_on_the_runs_training_images(runs: dict[str, dict[str, Any]]) -> None:
    fitted = runs["lp_ft"]["probes"][0]
    assert fitted["probe"].train["iterations"] < MAX_ITER, "lbfgs stopped at its ceiling, not converged"
    assert len(fitted["y"]) == runs["lp_ft"]["metrics"]["train_images"]
    majority = np.bincount(fitted["y"]).max() / len(fitted["y"])
    assert fitted["probe"].train["train_accuracy"] > majority


def test_the_probes_loss_is_weighted_like_the_runs(runs: dict[str, dict[str, Any]]) -> None:
    """The default ``classifier.balance=sqrt``: each image weighs its class's weight."""
    fitted = runs["lp_ft"]["probes"][0]
    weights = class_weights(np.bincount(fitted["y"], minlength=len(WBC_CLASSES)), "sqrt")
    np.testing.assert_allclose(fitted["sample_weight"], weights[fitted["y"]], rtol=1e-6)


@pytest.mark.parametrize("classes", [2, 5])
def test_the_head_computes_the_probes_decision_function(classes: int) -> None:
    """Exactly, standardisation folded in; two classes get -z/2 and z/2 so the softmax is predict_proba."""
    rng = np.random.default_rng(classes)
    features = rng.normal(3.0, 2.0, (60, 16)) * rng.uniform(0.1, 5, 16)
    y = np.arange(60) % classes
    probe = fit_logistic_probe(features, y, rng.uniform(0.5, 2, 60))
    model = SimpleNamespace(classifier=torch.nn.Linear(16, classes).double())
    set_probe_as_head(model, probe)
    with torch.no_grad():
        logits = model.classifier(torch.as_tensor(features)).numpy()
    decision = probe.pipeline.decision_function(features)
    np.testing.assert_allclose(logits[:, 1] - logits[:, 0] if classes == 2 else logits, decision, atol=1e-9)
    np.testing.assert_allclose(
        torch.softmax(torch.as_tensor(logits), 1).numpy(), probe.pipeline.predict_proba(features), atol=1e-9
    )


def test_the_probe_head_replaces_the_default_head_and_nothing_else(runs: dict[str, dict[str, Any]]) -> None:
    lp_ft, plain = runs["lp_ft"]["calls"][-1]["before"], runs["plain"]["calls"][-1]["before"]
    assert sorted(lp_ft) == sorted(plain)
    assert not torch.allclose(lp_ft["classifier.weight"], plain["classifier.weight"])
    assert not torch.allclose(lp_ft["classifier.bias"], plain["classifier.bias"])
    for key in (k for k in plain if not k.startswith("classifier.")):
        assert torch.equal(lp_ft[key], plain[key]), f"{key}: the probe stage changed the encoder"


def test_after_the_probe_the_whole_network_is_fine_tuned(runs: dict[str, dict[str, Any]]) -> None:
    call = runs["lp_ft"]["calls"][-1]
    assert all(p.requires_grad for p in call["module"].parameters()), "the probe stage left weights frozen"
    moved = [
        k
        for k in call["before"]
        if k.startswith("vit.") and not torch.equal(call["before"][k], call["after"][k])
    ]
    assert "vit.layers.0.mlp.fc1.weight" in moved


def test_lp_ft_is_recorded_and_uses_no_more_labels(runs: dict[str, dict[str, Any]]) -> None:
    lp_ft, plain = runs["lp_ft"], runs["plain"]
    assert json.loads((lp_ft["out"] / "run.json").read_text())["config"]["classifier"]["lp_ft"] is True
    assert json.loads((plain["out"] / "run.json").read_text())["config"]["classifier"]["lp_ft"] is False
    assert (lp_ft["metrics"]["lp_ft"], plain["metrics"]["lp_ft"]) == (True, False)
    assert lp_ft["metrics"]["lp_ft_probe"] == lp_ft["probes"][0]["probe"].train
    assert plain["metrics"]["lp_ft_probe"] is None
    assert lp_ft["metrics"]["labels_used"] == plain["metrics"]["labels_used"]


@pytest.fixture
def interrupt_after_first_epoch(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, bool]]:
    """Stop the run just after its first epoch's checkpoint, as a killed process would, while the
    returned dict's ``on`` is true."""
    original, switch = engine.write_history, {"on": True}

    def interrupting(path: Path, rows: list[dict[str, float]]) -> None:
        original(path, rows)
        if switch["on"] and len(rows) == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(engine, "write_history", interrupting)
    yield switch
    monkeypatch.setattr(engine, "write_history", original)


def test_a_stopped_run_resumes_to_the_same_weights(
    cells: dict[str, Path],
    runs: dict[str, dict[str, Any]],
    tmp_path: Path,
    interrupt_after_first_epoch: dict[str, bool],
) -> None:
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        tiny_finetune(cells["split"], out, init=cells["mae"], sets=LP_FT, **OPTIONS)
    interrupt_after_first_epoch["on"] = False
    info = json.loads((out / "run.json").read_text())
    # A killed process cannot mark its start as failed (that needs an exception), so its run stays
    # "running" and --resume continues from the fine-tuning's checkpoint.
    (out / "run.json").write_text(json.dumps({**info, "status": "running"}))
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["epoch-0001"]

    metrics = tiny_finetune(cells["split"], out, init=cells["mae"], sets=LP_FT, resume=True, **OPTIONS)
    assert_same_weights(load_weights(out / "model"), load_weights(runs["lp_ft"]["out"] / "model"))
    assert metrics["test"] == runs["lp_ft"]["metrics"]["test"]
    assert metrics["lp_ft_probe"] == runs["lp_ft"]["metrics"]["lp_ft_probe"], "the refit is the same probe"


def test_lp_ft_runs_from_the_command_line(cells: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "cli"
    args = ["finetune", "--preset", "test", "--split", str(cells["split"]), "--init", str(cells["mae"])]
    args += ["--out", str(out), "--device", "cpu", "--no-progress", "--epochs", "1", "--set", LP_FT[0]]
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["lp_ft"] is True
    assert 0 < metrics["lp_ft_probe"]["train_accuracy"] <= 1


def test_lp_ft_with_the_linear_probe_alone_is_refused(cells: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="classifier.lp_ft .* contradicts classifier.linear_probe"):
        tiny_finetune(cells["split"], tmp_path / "both", init=cells["mae"], linear_probe=True, sets=LP_FT)
    assert not (tmp_path / "both").exists()
