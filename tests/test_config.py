"""Configuration: presets, YAML files and --set overrides in layers, checked keys, the MAE lr rule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from leanmae.config import (
    FINETUNE_AUGMENT,
    MODEL_SIZES,
    FinetuneConfig,
    OptimConfig,
    PretrainConfig,
    absolute_lr,
    effective_batch,
    from_dict,
    parse_override,
    preset_names,
    resolve,
    to_dict,
)
from leanmae.errors import ConfigError


def pretrain_config(
    preset: str | None = "test",
    config_file: Path | None = None,
    flags: dict | None = None,
    sets: list[str] = (),
) -> PretrainConfig:
    return resolve(PretrainConfig, "pretrain", preset, config_file, flags or {}, sets)


# --------------------------------------------------------------------------- presets


def test_the_shipped_presets_include_test_cpu_and_the_seed_experiments() -> None:
    assert {"test", "cpu", "seed-exp1", "seed-exp2", "seed-exp3"} <= set(preset_names())


@pytest.mark.parametrize("name", preset_names())
def test_every_shipped_preset_resolves_to_a_pretrain_config(name: str) -> None:
    cfg = resolve(PretrainConfig, "pretrain", name, None, {})
    assert isinstance(cfg, PretrainConfig)
    assert cfg.model.image_size % cfg.model.patch_size == 0
    assert cfg.model.hidden_size % cfg.model.heads == 0
    assert cfg.optim.epochs >= 1 and cfg.optim.batch_size >= 1


def test_the_test_preset_is_a_tiny_model() -> None:
    cfg = pretrain_config("test")
    assert (cfg.model.image_size, cfg.model.patch_size, cfg.model.hidden_size, cfg.model.depth) == (
        32,
        8,
        32,
        2,
    )
    assert cfg.optim.epochs == 2  # from the preset's pretrain: section


def test_seed_experiment_presets_expand_size_base() -> None:
    cfg = pretrain_config("seed-exp1")
    assert (cfg.model.hidden_size, cfg.model.depth, cfg.model.heads) == (768, 12, 12)
    assert cfg.optim.accum_steps == 8


@pytest.mark.parametrize("preset", [None, "cpu", "test"])
def test_fine_tuning_perturbs_stain_and_colour_and_zooms_in_by_default_and_pretraining_does_not(
    preset: str | None,
) -> None:
    """The defaults the robustness benchmark chose (docs/robustness.md) hold without a preset and in the
    shipped cpu and test presets; the MAE's pretraining crops stay colour-free."""
    fine = resolve(FinetuneConfig, "finetune", preset, None, {})
    assert fine.augment == FINETUNE_AUGMENT
    assert (
        FINETUNE_AUGMENT.hed > 0 and FINETUNE_AUGMENT.crop_shift < 1 and FINETUNE_AUGMENT.crop_scale[0] <= 0.1
    )
    pre = pretrain_config(preset).augment
    assert (pre.hed, pre.brightness, pre.hue, pre.crop_shift) == (0.0, 0.0, 0.0, 1.0)


def test_fine_tuning_takes_600_steps_by_default_and_in_the_cpu_preset() -> None:
    assert resolve(FinetuneConfig, "finetune", "cpu", None, {}).classifier.min_steps == 600
    assert FinetuneConfig().classifier.min_steps == 600


@pytest.mark.parametrize("name", ["seed-exp1", "seed-exp2", "seed-exp3"])
def test_the_seed_experiment_presets_keep_the_seeds_colour_free_fine_tuning(name: str) -> None:
    aug = resolve(FinetuneConfig, "finetune", name, None, {}).augment
    assert (aug.hed, aug.brightness, aug.contrast, aug.saturation, aug.hue) == (0.0,) * 5
    assert (aug.crop_scale, aug.crop_shift) == ((0.35, 1.0), 1.0)


def test_unknown_preset_is_an_error_suggesting_the_nearest() -> None:
    with pytest.raises(ConfigError, match=r"unknown preset 'tset'.*did you mean 'test'"):
        pretrain_config("tset")


def test_no_preset_gives_the_dataclass_defaults() -> None:
    assert pretrain_config(None) == PretrainConfig()


# --------------------------------------------------------------------------- layers


def test_yaml_file_overrides_the_preset_and_keeps_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "my.yaml"
    path.write_text(
        "model: {hidden_size: 64}\npretrain:\n  optim: {epochs: 7}\nfinetune:\n  optim: {epochs: 99}\n"
    )
    cfg = pretrain_config("test", path)
    assert cfg.model.hidden_size == 64
    assert cfg.optim.epochs == 7, "the pretrain: section applies, the finetune: section is ignored"
    assert cfg.model.patch_size == 8, "keys the file does not name keep the preset's values"
    assert cfg.optim.base_lr == pytest.approx(1e-3)


def test_set_overrides_yaml_file_and_flags(tmp_path: Path) -> None:
    path = tmp_path / "my.yaml"
    path.write_text("optim: {epochs: 7, base_lr: 0.5}\n")
    cfg = pretrain_config(
        "test", path, flags={"optim": {"epochs": 9}}, sets=["optim.epochs=11", "model.mask_ratio=0.5"]
    )
    assert cfg.optim.epochs == 11
    assert cfg.optim.base_lr == pytest.approx(0.5)
    assert cfg.model.mask_ratio == pytest.approx(0.5)


def test_flags_override_yaml_and_none_flags_mean_not_given(tmp_path: Path) -> None:
    path = tmp_path / "my.yaml"
    path.write_text("optim: {epochs: 7}\nrun: {seed: 3}\n")
    cfg = pretrain_config("test", path, flags={"optim": {"epochs": 9}, "run": {"seed": None}})
    assert cfg.optim.epochs == 9
    assert cfg.run.seed == 3


def test_set_values_are_parsed_as_yaml_then_typed() -> None:
    assert parse_override("optim.warmup_epochs=0.5") == {"optim": {"warmup_epochs": 0.5}}
    cfg = pretrain_config(
        sets=["optim.base_lr=1e-3", "augment.crop_scale=[0.5, 1.0]", "run.progress=false", "data.tile=256"]
    )
    assert cfg.optim.base_lr == pytest.approx(1e-3), "YAML reads 1e-3 as a string; the float field coerces it"
    assert cfg.augment.crop_scale == (0.5, 1.0)
    assert cfg.run.progress is False
    assert cfg.data.tile == 256


def test_set_without_equals_sign_is_an_error() -> None:
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        pretrain_config(sets=["optim.base_lr"])


def test_invalid_yaml_file_is_a_config_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("model: {hidden_size: [\n")
    with pytest.raises(ConfigError, match="broken.yaml"):
        pretrain_config("test", path)


# --------------------------------------------------------------------------- key and value checks


def test_unknown_key_is_an_error_suggesting_the_nearest_key() -> None:
    with pytest.raises(ConfigError, match="base_lrr") as info:
        pretrain_config(sets=["optim.base_lrr=1e-3"])
    assert "base_lr'" in str(info.value), "the nearest valid key is suggested"


def test_unknown_key_suggestion_is_the_full_dotted_key_in_quotes() -> None:
    """The hint must read ``did you mean 'optim.base_lr'?`` (a key one can paste into --set)."""
    with pytest.raises(ConfigError) as info:
        pretrain_config(sets=["optim.base_lrr=1e-3"])
    assert "did you mean 'optim.base_lr'?" in str(info.value)


def test_unknown_section_is_an_error_suggesting_the_nearest_section() -> None:
    with pytest.raises(ConfigError, match="'modle'.*'model'"):
        pretrain_config(sets=["modle.hidden_size=64"])


def test_unknown_key_in_a_yaml_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "my.yaml"
    path.write_text("optim: {epoch: 3}\n")
    with pytest.raises(ConfigError, match="optim.epoch"):
        pretrain_config("test", path)


@pytest.mark.parametrize(
    "override", ["optim.epochs=abc", "optim.epochs=2.5", "run.progress=maybe", "optim.betas=[0.9]"]
)
def test_values_of_the_wrong_type_are_errors_naming_the_key(override: str) -> None:
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        pretrain_config(sets=[override])


def test_yaml_ints_are_accepted_for_floats() -> None:
    cfg = pretrain_config(sets=["optim.base_lr=1", "optim.warmup_epochs=2"])
    assert cfg.optim.base_lr == 1.0 and isinstance(cfg.optim.base_lr, float)


def test_required_value_cannot_be_null() -> None:
    with pytest.raises(ConfigError, match="optim.epochs"):
        pretrain_config(sets=["optim.epochs=null"])


# --------------------------------------------------------------------------- model sizes


@pytest.mark.parametrize("size", sorted(MODEL_SIZES))
def test_model_size_expands_to_width_depth_and_heads(size: str) -> None:
    cfg = pretrain_config(sets=[f"model.size={size}"])
    expected = MODEL_SIZES[size]
    assert (cfg.model.hidden_size, cfg.model.depth, cfg.model.heads) == (
        expected["hidden_size"],
        expected["depth"],
        expected["heads"],
    )


def test_model_size_small_is_hidden_384() -> None:
    cfg = pretrain_config(sets=["model.size=small"])
    assert cfg.model.size == "small"
    assert cfg.model.hidden_size == 384
    assert cfg.model.image_size == 32, "size only sets width/depth/heads; the rest stays the preset's"


def test_explicit_width_in_the_same_layer_wins_over_size(tmp_path: Path) -> None:
    path = tmp_path / "my.yaml"
    path.write_text("model: {size: small, hidden_size: 512, heads: 8}\n")
    cfg = pretrain_config("test", path)
    assert (cfg.model.hidden_size, cfg.model.heads, cfg.model.depth) == (512, 8, 12)


def test_unknown_model_size_suggests_the_nearest() -> None:
    with pytest.raises(ConfigError, match="did you mean 'small'"):
        pretrain_config(sets=["model.size=smal"])


# --------------------------------------------------------------------------- lr rule


def test_effective_batch_is_batch_times_accumulation_times_processes() -> None:
    optim = OptimConfig(batch_size=48, accum_steps=8)
    assert effective_batch(optim, 1) == 384
    assert effective_batch(optim, 4) == 1536


@pytest.mark.parametrize(
    ("base_lr", "batch", "accum", "world", "expected"),
    [
        (1.5e-4, 256, 1, 1, 1.5e-4),
        (1.5e-4, 64, 8, 4, 1.2e-3),
        (1e-3, 16, 1, 1, 6.25e-5),
        (5e-5, 48, 4, 2, 7.5e-5),
    ],
)
def test_absolute_lr_follows_the_mae_rule(
    base_lr: float, batch: int, accum: int, world: int, expected: float
) -> None:
    optim = OptimConfig(base_lr=base_lr, batch_size=batch, accum_steps=accum)
    assert absolute_lr(optim, world) == pytest.approx(expected)
    assert absolute_lr(optim, world) == pytest.approx(base_lr * batch * accum * world / 256)


# --------------------------------------------------------------------------- serialisation


@pytest.mark.parametrize("name", preset_names())
def test_to_dict_round_trips_through_from_dict(name: str) -> None:
    cfg = pretrain_config(name)
    assert from_dict(PretrainConfig, to_dict(cfg)) == cfg


def test_to_dict_round_trips_through_json_as_run_json_stores_it() -> None:
    cfg = pretrain_config("test", sets=["augment.crop_scale=[0.5, 1.0]", "data.sources=[a, b]"])
    restored = from_dict(PretrainConfig, json.loads(json.dumps(to_dict(cfg))))
    assert restored == cfg
    assert restored.augment.crop_scale == (0.5, 1.0)
