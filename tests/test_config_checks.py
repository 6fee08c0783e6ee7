"""Config values are checked when the config is resolved: every key, from a preset, YAML file, flag or --set.

The walk below gives every leaf key of the pretraining, fine-tuning and study configs a wrong
value and expects a one-line ConfigError naming that key; a key added without a check (or
without a wrong value here) fails ``test_every_config_key_has_a_wrong_value_in_this_walk``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from leanmae.commands.study import STUDY_CHECKS, StudyConfig, study
from leanmae.config import CHECKS, FinetuneConfig, PretrainConfig, leaf_keys, resolve
from leanmae.errors import ConfigError

# One wrong value per key (as a --set / YAML value); each has the right type where a type exists,
# so that the value check, not the type coercion, must catch it.
WRONG: dict[str, Any] = {
    "model.size": "huge-ish",
    "model.image_size": 0,
    "model.patch_size": 0,
    "model.hidden_size": -8,
    "model.depth": 0,
    "model.heads": 0,
    "model.mlp_ratio": 0,
    "model.decoder_hidden_size": 0,
    "model.decoder_depth": 0,
    "model.decoder_heads": 0,
    "model.mask_ratio": 1.5,
    "model.norm_pix_loss": "maybe",
    "model.layer_norm_eps": 0,
    "model.num_register_tokens": -1,
    "data.sources": [""],
    "data.tile": 0,
    "data.grid": "2y2",
    "data.min_tile_size": 0,
    "data.cache_size": 0,
    "data.cache_dir": "",
    "data.val_fraction": 2,
    "data.skip_bad": "maybe",
    "data.workers": 0,
    "augment.crop_scale": [0.9, 0.1],
    "augment.crop_ratio": [0, 1],
    "augment.crop_shift": 1.5,
    "augment.hflip": "maybe",
    "augment.vflip": "maybe",
    "augment.normalize": "imagnet",
    "data.stain_norm": "macenko-ish",
    "data.cell_crop": 0.5,
    "data.grey": "maybe",
    "augment.hed": -0.1,
    "augment.brightness": 2.0,
    "augment.contrast": -1,
    "augment.saturation": 1.5,
    "augment.hue": 0.6,
    "augment.blur": -1,
    "optim.epochs": 0,
    "optim.batch_size": 0,
    "optim.accum_steps": 0,
    "optim.base_lr": float("nan"),
    "optim.min_lr": -1,
    "optim.weight_decay": -0.1,
    "optim.betas": [0.9, 1.5],
    "optim.warmup_epochs": -1,
    "optim.schedule": "cosnie",
    "optim.clip_grad": 0,
    "optim.lr_scaling": "quadratic",
    "run.seed": -1,
    "run.device": "gpu",
    "run.threads": 0,
    "run.amp": "fp8",
    "run.progress": "maybe",
    "run.prefetch": "sometimes",
    "run.report_to": ["wandb"],
    "run.compile": "always",
    "recon_images": -1,
    "probe_split": "",
    "probe_every": 0,
    "classifier.pooling": "max",
    "classifier.drop_path": 1.0,
    "classifier.label_smoothing": -0.1,
    "classifier.mixup": -1,
    "classifier.cutmix": -1,
    "classifier.layer_decay": 0,
    "classifier.balance": "off",
    "classifier.select": "best",
    "classifier.val": "half",
    "classifier.temperature_prior": 0,
    "classifier.linear_probe": "maybe",
    "classifier.lp_ft": "maybe",
    "classifier.min_steps": -1,
    "classifier.eval_batch_size": 0,
    "classifier.target_accuracy": 1.5,
    "classifier.ood_data": [""],
    "classifier.selection": "coreset",
    "classifier.selection_from": "",
    "classifier.semi": "meanteacher",
    "classifier.semi_ratio": 0,
    "classifier.semi_threshold": 1.5,
    "classifier.semi_weight": -1,
}

STUDY_WRONG: dict[str, Any] = {
    "data": "",
    "classes": ["a", "a"],
    "pretrain_data": [""],
    "ood_data": [""],
    "external": [""],
    "shift_reference": "",
    "pool": "everything",
    "preset": "tset",
    "fractions": [1, 1.0],
    "seeds": [-1],
    "extra_seeds": [3, 3],
    "extra_seeds_up_to": 0,
    "arms": ["scrach"],
    "mae": [""],
    "arm_set": ["scratch=classifier.min_steps"],
    "search": ["optim.base_lr=1e-3"],
    "search_beyond": "optim.base_lr=1e-3|2e-3",
    "split_ratios": [0.7, 0.3, 0],
    "split_seed": 2**32,
    "split": "",
    "pretrain_epochs": 0,
    "finetune_epochs": 0,
    "jobs": 0,
    "launcher": "kubernetes",
    "wait": "maybe",
    "slurm.partition": "",
    "slurm.account": "",
    "slurm.gpus_per_job": 0,
    "slurm.cpus_per_job": 0,
    "slurm.mem_gb": 0,
    "slurm.time_min": 0,
    "slurm.max_parallel": 0,
    "slurm.folder": "",
    "slurm.cluster": "pbs",
    "set": ["optim.base_lr"],
    "progress": "maybe",
    "note": "two\nlines",
}


def nested(key: str, value: Any) -> dict[str, Any]:
    """``"optim.epochs", 0`` -> ``{"optim": {"epochs": 0}}`` (a YAML file's layout)."""
    head, _, rest = key.partition(".")
    return {head: nested(rest, value) if rest else value}


def training_config(key: str) -> type:
    return FinetuneConfig if key.startswith("classifier.") else PretrainConfig


def test_every_config_key_has_a_wrong_value_in_this_walk() -> None:
    keys = set(leaf_keys(PretrainConfig())) | set(leaf_keys(FinetuneConfig()))
    assert keys == set(WRONG), (
        f"keys without a wrong value here: {sorted(keys - set(WRONG))}; stale: {sorted(set(WRONG) - keys)}"
    )
    assert keys <= set(CHECKS), f"keys without a value check: {sorted(keys - set(CHECKS))}"
    study_keys = set(leaf_keys(StudyConfig()))
    assert study_keys == set(STUDY_WRONG) == set(STUDY_CHECKS)


@pytest.mark.parametrize("key", sorted(WRONG))
def test_a_wrong_value_of_any_config_key_is_a_one_line_error_naming_it(key: str, tmp_path: Path) -> None:
    path = tmp_path / "wrong.yaml"
    path.write_text(yaml.safe_dump(nested(key, WRONG[key])))
    with pytest.raises(ConfigError) as info:
        resolve(training_config(key), training_config(key).__name__[:-6].lower(), "test", path, {})
    message = str(info.value)
    assert message.startswith(key), message
    assert "\n" not in message


@pytest.mark.parametrize("key", sorted(STUDY_WRONG))
def test_a_wrong_value_of_any_study_key_is_a_one_line_error_naming_it(key: str, tmp_path: Path) -> None:
    values = {"data": str(tmp_path), **nested(key, STUDY_WRONG[key])}
    progress = values.pop("progress", False)  # always passed as an argument, which wins over the file
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(values))
    with pytest.raises(ConfigError) as info:
        study(out=tmp_path / "study", config=path, progress=progress)
    message = str(info.value)
    assert key in message and "\n" not in message, message
    assert not (tmp_path / "study").exists(), "nothing is written before the settings are checked"


@pytest.mark.parametrize(
    ("override", "allowed"),
    [
        ("optim.schedule=cosnie", "cosine, constant"),
        ("augment.normalize=imagnet", "imagenet, dataset"),
        ("run.amp=fp8", "auto, bf16, fp16, fp32"),
        ("run.device=gpu", "auto, cpu, cuda or cuda:N"),
        ("finetune.classifier.balance=off", "sqrt, loss, sampler, none"),
        ("finetune.classifier.pooling=max", "mean, cls"),
    ],
)
def test_a_misspelt_choice_names_the_allowed_values(override: str, allowed: str) -> None:
    with pytest.raises(ConfigError, match=allowed):
        resolve(FinetuneConfig, "finetune", "test", None, {}, [override])


def test_the_same_checks_apply_to_set_flags_and_yaml(tmp_path: Path) -> None:
    for flags, sets in (({"run": {"seed": -1}}, []), ({}, ["run.seed=-1"])):
        with pytest.raises(ConfigError, match=r"^run\.seed = -1"):
            resolve(PretrainConfig, "pretrain", "test", None, flags, sets)


def test_a_seed_beyond_32_bits_is_refused() -> None:
    with pytest.raises(ConfigError, match="run.seed"):
        resolve(PretrainConfig, "pretrain", "test", None, {"run": {"seed": int(1e20)}})


def test_image_size_must_be_a_multiple_of_the_patch_size() -> None:
    with pytest.raises(ConfigError, match="model.image_size / model.patch_size = 32 / 7"):
        resolve(PretrainConfig, "pretrain", "test", None, {}, ["model.patch_size=7"])


def test_every_shipped_preset_passes_the_checks() -> None:
    from leanmae.config import preset_names

    for name in preset_names():
        resolve(PretrainConfig, "pretrain", name, None, {})
        resolve(FinetuneConfig, "finetune", name, None, {})


def test_an_empty_optim_section_in_yaml_keeps_the_presets_values(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("optim:\nfinetune:\n  classifier:\n")
    preset = resolve(FinetuneConfig, "finetune", "test", None, {})
    assert resolve(FinetuneConfig, "finetune", "test", path, {}) == preset


def test_a_set_value_that_is_not_yaml_is_a_one_line_error() -> None:
    with pytest.raises(ConfigError) as info:
        resolve(PretrainConfig, "pretrain", "test", None, {}, ["optim.betas=[0.9, 0.95"])
    assert "optim.betas" in str(info.value) and "not valid YAML" in str(info.value)
    assert "\n" not in str(info.value)


def test_study_fractions_that_are_not_numbers_are_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--fractions 'abc'"):
        study(out=tmp_path / "s", data=str(tmp_path), fractions="abc", progress=False)
