"""Configs that lie: a YAML word read as a number, a repeated key, a scalar for a list, a file that is not
UTF-8, a key of another command's section nobody checks, a device torch cannot use. Each is refused in one
line naming the key, file or option, before anything is trained, loaded or written. And a setting the data
cannot honour (more accumulation than the data has batches) is fitted to it, not scaled for."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

import leanmae
from helpers import tiny_finetune
from leanmae.cli import main
from leanmae.config import (
    FinetuneConfig,
    OptimConfig,
    PretrainConfig,
    absolute_lr,
    load_yaml,
    parse_override,
    resolve,
)
from leanmae.errors import ConfigError
from leanmae.models import classifier as classifier_module
from leanmae.models import mae as mae_module


def pretrain_config(*sets: str, config: Path | None = None) -> PretrainConfig:
    return resolve(PretrainConfig, "pretrain", "test", config, {}, list(sets))


def finetune_config(*sets: str, config: Path | None = None) -> FinetuneConfig:
    return resolve(FinetuneConfig, "finetune", "test", config, {}, list(sets))


def study_yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(f"data: {tmp_path}\n{text}")
    return path


def one_line_error(capsys: pytest.CaptureFixture[str], command: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith(f"leanmae {command}: error: ") and err.count("\n") == 1, err
    return err


# --------------------------------------------------------------------------- values keep their type


@pytest.mark.parametrize(
    "override",
    [
        "optim.epochs=yes",
        "optim.base_lr=on",
        "optim.epochs=true",
        "run.seed=false",
        "optim.betas=[true, 0.9]",
    ],
)
def test_a_yaml_word_or_a_boolean_is_never_a_number(override: str) -> None:
    """``--set optim.epochs=yes`` trained one epoch (YAML 1.1 reads yes as true, and int(True) is 1)."""
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=f"^{re.escape(key)}: expected"):
        pretrain_config(override)


def test_a_boolean_seed_in_a_study_yaml_is_refused_naming_the_key(tmp_path: Path) -> None:
    """``seeds: [true]`` ran seed 1."""
    with pytest.raises(ConfigError, match=r"^seeds: expected a whole number, got True"):
        leanmae.study(out=tmp_path / "s", config=study_yaml(tmp_path, "seeds: [true]\n"), progress=False)
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("word", ["yes", "no", "on", "off", "y", "n", "Yes", "OFF"])
def test_yaml_1_1_words_stay_text_in_set_and_in_yaml_files(word: str, tmp_path: Path) -> None:
    path = tmp_path / "my.yaml"
    path.write_text(f"data: {{cache_dir: {word}}}\n")
    assert load_yaml(path) == {"data": {"cache_dir": word}}
    assert parse_override(f"data.cache_dir={word}") == {"data": {"cache_dir": word}}
    assert pretrain_config(f"data.cache_dir={word}").data.cache_dir == word


@pytest.mark.parametrize(("override", "value"), [("run.seed=010", 10), ("optim.epochs=1e3", 1000)])
def test_numbers_are_read_as_yaml_1_2_reads_them(override: str, value: int) -> None:
    """YAML 1.1 reads 010 as octal 8 and 1:30 as 90; 1e3 as text."""
    cfg = pretrain_config(override)
    assert (cfg.run.seed if override.startswith("run") else cfg.optim.epochs) == value


@pytest.mark.parametrize("override", ["run.seed=1:30", "run.seed=1_000", "optim.base_lr='0.1'"])
def test_text_is_never_a_number(override: str) -> None:
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=f"^{re.escape(key)}: expected"):
        pretrain_config(override)


@pytest.mark.parametrize("value", ["yes", "1", "0", "on"])
def test_a_switch_is_only_true_or_false(value: str) -> None:
    with pytest.raises(ConfigError, match=r"^run\.progress: expected true or false"):
        pretrain_config(f"run.progress={value}")


def test_a_switch_given_as_the_text_true_or_false_is_accepted() -> None:
    assert pretrain_config("run.progress='False'").run.progress is False
    assert pretrain_config("run.progress=true").run.progress is True


@pytest.mark.parametrize("override", ["data.cache_dir=true", "data.cache_dir=[a]", "data.cache_dir={a: 1}"])
def test_a_text_key_refuses_a_switch_a_list_or_a_mapping(override: str) -> None:
    """``data.cache_dir=[a]`` cached into a folder named "['a']"."""
    with pytest.raises(ConfigError, match=r"^data\.cache_dir: expected text"):
        pretrain_config(override)


# --------------------------------------------------------------------------- repeated keys


@pytest.mark.parametrize(
    ("text", "key", "lines"),
    [
        ("optim: {epochs: 3}\nrun: {seed: 1}\noptim: {base_lr: 0.1}\n", "optim", "lines 1 and 3"),
        ("optim:\n  epochs: 3\n  epochs: 5\n", "epochs", "lines 2 and 3"),
    ],
    ids=["top-level", "nested"],
)
def test_a_key_repeated_in_a_yaml_file_is_refused_naming_it_and_the_file(
    text: str, key: str, lines: str, tmp_path: Path
) -> None:
    """The second ``optim:`` section silently replaced the first (epochs 3 was dropped)."""
    path = tmp_path / "my.yaml"
    path.write_text(text)
    with pytest.raises(
        ConfigError, match=f"^{re.escape(str(path))}: key '{key}' appears twice \\({lines}\\)"
    ):
        load_yaml(path)


def test_a_key_repeated_in_a_set_value_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"--set 'optim=\{epochs: 1, epochs: 2\}'.*'epochs' appears twice"):
        pretrain_config("optim={epochs: 1, epochs: 2}")


# --------------------------------------------------------------------------- lists given one value


def test_a_number_for_a_list_key_is_a_one_line_error(
    cells: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--set run.report_to=5`` was a TypeError traceback."""
    args = ["pretrain", "--data", str(cells["data"]), "--out", str(tmp_path / "run"), "--preset", "test"]
    assert main([*args, "--set", "run.report_to=5"]) == 2
    assert "run.report_to: expected a list such as [a, b], got 5" in one_line_error(capsys, "pretrain")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("text", ["fractions: 0.5\n", "seeds: 3\n", "classes: {a: 1}\n"])
def test_a_number_or_a_mapping_for_a_study_list_is_refused(text: str, tmp_path: Path) -> None:
    """``seeds: 3`` could mean seed 3 or three seeds: neither is guessed."""
    key = text.split(":")[0]
    with pytest.raises(ConfigError, match=rf"^{key}: expected a list"):
        leanmae.study(out=tmp_path / "s", config=study_yaml(tmp_path, text), progress=False)


def test_one_text_for_a_list_key_is_a_list_of_one() -> None:
    """A name or a path is not ambiguous: ``run.report_to=mlflow`` is ``[mlflow]``."""
    assert pretrain_config("run.report_to=mlflow").run.report_to == ["mlflow"]


@pytest.mark.parametrize("override", ["finetune=5", "pretrain=[1]"])
def test_a_command_section_that_is_not_a_mapping_is_refused(override: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{override.split('=')[0]}: expected a mapping"):
        pretrain_config(override)


# --------------------------------------------------------------------------- files that are not UTF-8


@pytest.mark.parametrize(
    "content",
    [b"optim: {epochs: 3}\nrun: {device: caf\xe9}\n", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe"],
    ids=["latin-1", "binary"],
)
def test_a_config_file_that_is_not_utf8_is_a_one_line_error_naming_it(
    content: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "my.yaml"
    path.write_bytes(content)
    assert main(["config", "show", "pretrain", "--config", str(path)]) == 2
    err = one_line_error(capsys, "show_config")
    assert f"{path}: not UTF-8 text" in err


# --------------------------------------------------------------------------- every key is checked


def test_a_misspelt_key_in_another_commands_set_section_is_refused() -> None:
    """``pretrain --set finetune.classifier.min_stepz=5`` was accepted (finetune's section went unchecked)."""
    with pytest.raises(
        ConfigError,
        match=r"unknown config key 'finetune\.classifier\.min_stepz'; did you mean "
        r"'finetune\.classifier\.min_steps'\?",
    ):
        pretrain_config("finetune.classifier.min_stepz=5")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("pretrain: {recon_imagez: 3}\n", "'pretrain.recon_imagez'; did you mean 'pretrain.recon_images'"),
        ("pretrain: {optim: {epochs: yes}}\n", "pretrain.optim.epochs: expected a whole number"),
        ("pretrain: {model: {mask_ratio: 1.5}}\n", "pretrain.model.mask_ratio = 1.5: must be"),
        ("study: {seedz: [1]}\n", "'study.seedz'; did you mean 'study.seeds'"),
    ],
)
def test_another_commands_section_in_a_yaml_file_is_checked_against_its_config(
    text: str, message: str, tmp_path: Path
) -> None:
    path = tmp_path / "my.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(message)):
        finetune_config(config=path)


def test_a_misspelt_key_in_another_commands_section_is_refused_on_the_command_line(
    cells: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["pretrain", "--data", str(cells["data"]), "--out", str(tmp_path / "run"), "--preset", "test"]
    assert main([*args, "--set", "finetune.classifier.min_stepz=5"]) == 2
    assert "did you mean 'finetune.classifier.min_steps'?" in one_line_error(capsys, "pretrain")
    assert not (tmp_path / "run").exists()


def test_an_arm_set_entry_for_an_arm_the_study_does_not_have_is_refused(tmp_path: Path) -> None:
    """``--arm-set mae-other:optim.epochs=3`` in a study of scratch and mae changed nothing, silently."""
    with pytest.raises(
        ConfigError, match=r"^arm_set 'mae-other:optim\.epochs=3': the study has no arm 'mae-other'"
    ):
        leanmae.study(
            out=tmp_path / "s",
            data=str(tmp_path),
            arms=["scratch", "mae"],
            arm_set=["mae-other:optim.epochs=3"],
            progress=False,
        )
    assert not (tmp_path / "s").exists()


def test_config_show_study_resolves_with_the_study_checks(tmp_path: Path) -> None:
    """``leanmae config show study`` was refused for every study: it checked the settings with the run
    configs' checks ("data: no value check is defined")."""
    cfg = leanmae.show_config(
        "study", config=study_yaml(tmp_path, ""), set=["finetune.classifier.min_steps=5"], echo=False
    )
    assert cfg["data"] == str(tmp_path) and cfg["set"] == ["finetune.classifier.min_steps=5"]


# --------------------------------------------------------------------------- --device


@pytest.mark.parametrize("device", ["tpu", "cuda:abc", "mps", "meta"])
@pytest.mark.parametrize("command", ["predict", "evaluate", "reconstruct", "adapt"])
def test_a_device_torch_cannot_use_is_a_one_line_error_before_any_model_is_loaded(
    command: str,
    device: str,
    model_folders: dict[str, Path],
    cells: dict[str, Any],
    images: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Training commands refused these; predict, evaluate and reconstruct gave a torch traceback."""

    def no_loading(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a model was loaded before --device was checked")

    for module in (classifier_module, mae_module):
        monkeypatch.setattr(module, "load_pretrained", no_loading)
    out = tmp_path / "out"
    args = {
        "predict": [
            "predict",
            str(model_folders["classifier"]),
            str(images),
            "--out",
            str(tmp_path / "p.csv"),
        ],
        "evaluate": [
            "evaluate",
            str(model_folders["classifier"]),
            "--data",
            str(cells["data"]),
            "--out",
            str(out),
        ],
        "reconstruct": ["reconstruct", str(model_folders["mae"]), str(images), "--out", str(out)],
        "adapt": ["adapt", str(model_folders["classifier"]), str(images), "--out", str(out)],
    }[command]
    assert main([*args, "--device", device]) == 2
    err = one_line_error(capsys, command)
    assert f"--device {device!r}: use auto, cpu, cuda or cuda:N" in err
    assert not out.exists() and not (tmp_path / "p.csv").exists()


def test_training_commands_refuse_the_same_devices_with_the_same_words() -> None:
    with pytest.raises(ConfigError, match=r"run\.device = 'cuda:abc': use auto, cpu, cuda or cuda:N"):
        pretrain_config("run.device=cuda:abc")


def test_accumulation_never_counts_more_images_than_the_data_holds(
    cells: dict[str, Any], tmp_path: Path
) -> None:
    """14 training images with accum_steps=50 made an "effective batch" of 150, and the lr scaled for it."""
    out = tmp_path / "run"
    tiny_finetune(cells["split"], out, epochs=1, sets=["optim.accum_steps=50"])
    info = json.loads((out / "run.json").read_text())
    used = info["config"]["optim"]
    assert used["batch_size"] * used["accum_steps"] <= info["images"]["train"]
    assert info["absolute_lr"] == pytest.approx(
        absolute_lr(OptimConfig(**{**used, "betas": tuple(used["betas"])}), 1)
    )
