"""LP-FT (``classifier.lp_ft``): a linear probe on the frozen encoder, then full fine-tuning from its head.

Kumar et al. (ICLR 2022): a random head's early gradients distort pretrained features; starting full
fine-tuning from a fitted probe avoids it. Checked here on synthetic cells with the tiny ``test``
preset: the head at step 0 of fine-tuning is the probe (and not the default head), the encoder it
starts from is the MAE's and then trains, the option is recorded and uses no more labels, a run
stopped in either stage resumes to the same weights, and the command line takes it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import leanmae
import leanmae.commands.finetune as finetune_command
import leanmae.training.engine as engine
from helpers import assert_same_weights, load_weights, tiny_finetune, tiny_pretrain
from leanmae.cli import main
from leanmae.data.synthetic import WBC_CLASSES, make_synthetic_wbc
from leanmae.errors import ConfigError
from leanmae.models.classifier import LeanViTClassifier
from leanmae.models.linear_probe import ProbeHead

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


def _recorded_run(cells: dict[str, Path], name: str, sets: list[str]) -> dict[str, Any]:
    """A fine-tuning from the MAE, recording each engine run's module and its weights before and after."""
    calls: list[dict[str, Any]] = []
    original = finetune_command.fit

    def recording(module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        call = {"module": module, "before": _snapshot(module)}
        result = original(module, *args, **kwargs)
        calls.append({**call, "after": _snapshot(module)})
        return result

    out = cells["root"] / name
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(finetune_command, "fit", recording)
        metrics = tiny_finetune(cells["split"], out, init=cells["mae"], sets=sets, **OPTIONS)
    return {"out": out, "metrics": metrics, "calls": calls}


@pytest.fixture(scope="module")
def runs(cells: dict[str, Path]) -> dict[str, dict[str, Any]]:
    return {
        "lp_ft": _recorded_run(cells, "lp-ft", LP_FT),
        "plain": _recorded_run(cells, "plain", []),
    }


def test_the_probe_is_trained_before_full_finetuning(runs: dict[str, dict[str, Any]]) -> None:
    kinds = [type(call["module"]) for call in runs["lp_ft"]["calls"]]
    assert kinds == [ProbeHead, LeanViTClassifier]
    assert [type(call["module"]) for call in runs["plain"]["calls"]] == [LeanViTClassifier]
    assert (runs["lp_ft"]["out"] / "probe" / "history.csv").is_file()


def test_finetuning_starts_with_the_fitted_probe_as_its_head(runs: dict[str, dict[str, Any]]) -> None:
    """The probe (BatchNorm on running statistics, then linear) and the classifier's head at step 0 give
    the same logits on any pooled features: the head is the probe, folded."""
    probe_call, finetune_call = runs["lp_ft"]["calls"]
    start = finetune_call["before"]
    probe = ProbeHead(start["classifier.weight"].shape[1], start["classifier.weight"].shape[0])
    probe.load_state_dict(probe_call["after"])
    assert not torch.equal(probe_call["after"]["linear.weight"], probe_call["before"]["linear.weight"]), (
        "the probe trained"
    )
    features = torch.randn(16, probe.linear.in_features, generator=torch.Generator().manual_seed(0))
    head = torch.nn.functional.linear(features, start["classifier.weight"], start["classifier.bias"])
    with torch.no_grad():
        torch.testing.assert_close(head, probe.eval()(features), rtol=1e-5, atol=1e-5)


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
    assert lp_ft["metrics"]["labels_used"] == plain["metrics"]["labels_used"]


@pytest.fixture
def interrupt_after_first_epoch(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """Stop the run just after the first epoch's checkpoint of the stage whose folder name is set in the
    returned dict (``stage``), as a killed process would."""
    original, where = engine.write_history, {"stage": ""}

    def interrupting(path: Path, rows: list[dict[str, float]]) -> None:
        original(path, rows)
        if Path(path).parent.name == where["stage"] and len(rows) == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(engine, "write_history", interrupting)
    yield where
    monkeypatch.setattr(engine, "write_history", original)


@pytest.mark.parametrize("stage", ["probe", "run"])
def test_a_run_stopped_in_either_stage_resumes_to_the_same_weights(
    stage: str,
    cells: dict[str, Path],
    runs: dict[str, dict[str, Any]],
    tmp_path: Path,
    interrupt_after_first_epoch: dict[str, str],
) -> None:
    out = tmp_path / "run"
    interrupt_after_first_epoch["stage"] = stage
    with pytest.raises(KeyboardInterrupt):
        tiny_finetune(cells["split"], out, init=cells["mae"], sets=LP_FT, **OPTIONS)
    interrupt_after_first_epoch["stage"] = ""
    info = json.loads((out / "run.json").read_text())
    # A killed process cannot mark its start as failed (that needs an exception), so its run stays
    # "running" and --resume continues the probe from its own checkpoint.
    (out / "run.json").write_text(json.dumps({**info, "status": "running"}))
    assert [p.name for p in (out / "probe" / "checkpoints").iterdir()] == [
        "epoch-0001" if stage == "probe" else "epoch-0002"
    ]

    metrics = tiny_finetune(cells["split"], out, init=cells["mae"], sets=LP_FT, resume=True, **OPTIONS)
    assert_same_weights(load_weights(out / "model"), load_weights(runs["lp_ft"]["out"] / "model"))
    assert metrics["test"] == runs["lp_ft"]["metrics"]["test"]


def test_lp_ft_runs_from_the_command_line(cells: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "cli"
    args = ["finetune", "--preset", "test", "--split", str(cells["split"]), "--init", str(cells["mae"])]
    args += ["--out", str(out), "--device", "cpu", "--no-progress", "--epochs", "1", "--set", LP_FT[0]]
    assert main(args) == 0
    assert json.loads((out / "metrics.json").read_text())["lp_ft"] is True
    assert (out / "probe" / "history.csv").is_file()


def test_lp_ft_with_the_linear_probe_alone_is_refused(cells: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="classifier.lp_ft .* contradicts classifier.linear_probe"):
        tiny_finetune(cells["split"], tmp_path / "both", init=cells["mae"], linear_probe=True, sets=LP_FT)
    assert not (tmp_path / "both").exists()
