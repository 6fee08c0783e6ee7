"""The ``leanmae`` command line: help, clean errors (exit code 2 and one line naming the problem)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from leanmae.cli import main

from helpers import write_images


@pytest.fixture
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    write_images(folder, 12, 40)
    return folder


def _exit_code(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as info:
        main(argv)
    return info.value.code


def test_top_level_help_exits_0_and_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert _exit_code(["--help"]) == 0
    out = capsys.readouterr().out
    assert "pretrain" in out and "reconstruct" in out and "--set KEY=VALUE" in out


def test_pretrain_help_exits_0_and_lists_its_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert _exit_code(["pretrain", "--help"]) == 0
    out = capsys.readouterr().out
    for option in ("--data", "--out", "--preset", "--resume", "--overwrite", "--skip-bad", "--tile", "--grid", "--set"):
        assert option in out


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert _exit_code([]) == 2
    assert "usage" in capsys.readouterr().err


def test_unknown_preset_fails_cleanly_listing_the_choices(images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _exit_code(["pretrain", "--data", str(images), "--out", str(tmp_path / "run"), "--preset", "tset"]) == 2
    err = capsys.readouterr().err
    assert "'tset'" in err and "test" in err
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_tile_and_grid_together_are_refused_by_the_parser(images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _exit_code(["pretrain", "--data", str(images), "--out", str(tmp_path / "run"), "--tile", "500", "--grid", "2x2"]) == 2
    assert "not allowed with" in capsys.readouterr().err


def test_unknown_key_in_set_returns_2_and_names_the_key(images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["pretrain", "--data", str(images), "--out", str(tmp_path / "run"), "--preset", "test", "--set", "optim.base_lrr=1e-3", "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("leanmae pretrain: error: ")
    assert "optim.base_lrr" in err and "base_lr" in err
    assert "Traceback" not in err


def test_missing_data_folder_returns_2_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["pretrain", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "run"), "--preset", "test", "--no-progress"])
    assert code == 2
    assert "nowhere" in capsys.readouterr().err


def test_bad_grid_string_returns_2_with_a_one_line_error(images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--grid 2by2`` is a user error like any other: exit code 2 and a message, not a traceback."""
    code = main(["pretrain", "--data", str(images), "--out", str(tmp_path / "run"), "--preset", "test", "--grid", "2by2", "--device", "cpu", "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert "grid = '2by2'" in err and "ROWSxCOLS" in err and len(err.strip().splitlines()) == 1


def test_second_run_into_the_same_out_returns_2(images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["pretrain", "--data", str(images), "--out", str(tmp_path / "run"), "--preset", "test", "--epochs", "1", "--device", "cpu", "--no-progress"]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(argv) == 2
    assert "--resume" in capsys.readouterr().err


def test_cli_options_reach_the_run_config(images: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    code = main(["pretrain", "--data", str(images), "--out", str(out), "--preset", "test", "--epochs", "1", "--seed", "4", "--device", "cpu",
                 "--no-progress", "--set", "model.mask_ratio=0.5", "--set", "optim.base_lr=2e-3"])
    assert code == 0
    config = json.loads((out / "run.json").read_text())["config"]
    assert config["optim"]["epochs"] == 1 and config["run"]["seed"] == 4
    assert config["model"]["mask_ratio"] == 0.5 and config["optim"]["base_lr"] == pytest.approx(2e-3)
    assert config["run"]["progress"] is False
