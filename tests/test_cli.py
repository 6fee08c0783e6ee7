"""The ``leanmae`` command line: help, clean errors (exit code 2 and one line naming the problem)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import write_images
from leanmae.cli import main


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
    for option in (
        "--data",
        "--out",
        "--preset",
        "--resume",
        "--overwrite",
        "--skip-bad",
        "--tile",
        "--grid",
        "--set",
    ):
        assert option in out


def test_bare_leanmae_prints_the_help_with_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: leanmae")
    for command in ("pretrain", "finetune", "predict", "export", "config", "study"):
        assert command in out


def test_version_flag_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    import leanmae

    assert _exit_code(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"leanmae {leanmae.__version__}"


def test_config_show_prints_the_resolved_yaml_with_preset_file_and_set(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import yaml

    override = tmp_path / "mine.yaml"
    override.write_text("optim:\n  weight_decay: 0.01\nfinetune:\n  classifier:\n    pooling: cls\n")
    assert (
        main(
            [
                "config",
                "show",
                "finetune",
                "--preset",
                "test",
                "--config",
                str(override),
                "--set",
                "optim.base_lr=3e-3",
            ]
        )
        == 0
    )
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["model"]["image_size"] == 32  # the test preset
    assert shown["optim"]["weight_decay"] == 0.01 and shown["classifier"]["pooling"] == "cls"
    assert shown["optim"]["base_lr"] == pytest.approx(3e-3)


def test_config_show_refuses_an_unknown_key_like_the_command_does(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "show", "pretrain", "--set", "optim.base_lrr=1"]) == 2
    assert "optim.base_lr" in capsys.readouterr().err


def test_commands_are_listed_by_dir_and_document_their_options() -> None:
    import leanmae

    public = [name for name in dir(leanmae) if not name.startswith("_")]
    assert {
        "pretrain",
        "finetune",
        "split",
        "predict",
        "evaluate",
        "export",
        "show_config",
        "study",
        "report",
    } <= set(public)
    doc = leanmae.pretrain.__doc__
    assert "Options" in doc and "    lr: base learning rate" in doc and "    skip_bad:" in doc
    assert "    inputs:" in leanmae.predict.__doc__


def test_progress_bars_only_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    import io
    import sys

    from leanmae.progress import bar_disabled

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert bar_disabled(True)
    monkeypatch.setattr(sys, "stderr", Terminal())
    assert not bar_disabled(True) and bar_disabled(False)


def test_a_run_logged_to_a_file_has_one_plain_line_per_epoch(
    images: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Under nohup / SLURM / CI stderr is no terminal: no carriage-return redraws, even with progress on."""
    assert (
        main(
            [
                "pretrain",
                "--data",
                str(images),
                "--out",
                str(tmp_path / "run"),
                "--preset",
                "test",
                "--epochs",
                "2",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    out, err = capfd.readouterr()
    assert "\r" not in out + err
    assert [line.split(":")[0] for line in out.splitlines() if line.startswith("epoch ")] == [
        "epoch 1/2",
        "epoch 2/2",
    ]


def test_unknown_preset_fails_cleanly_listing_the_choices(
    images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        _exit_code(["pretrain", "--data", str(images), "--out", str(tmp_path / "run"), "--preset", "tset"])
        == 2
    )
    err = capsys.readouterr().err
    assert "'tset'" in err and "test" in err
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_tile_and_grid_together_are_refused_by_the_parser(
    images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        _exit_code(
            [
                "pretrain",
                "--data",
                str(images),
                "--out",
                str(tmp_path / "run"),
                "--tile",
                "500",
                "--grid",
                "2x2",
            ]
        )
        == 2
    )
    assert "not allowed with" in capsys.readouterr().err


def test_unknown_key_in_set_returns_2_and_names_the_key(
    images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "pretrain",
            "--data",
            str(images),
            "--out",
            str(tmp_path / "run"),
            "--preset",
            "test",
            "--set",
            "optim.base_lrr=1e-3",
            "--no-progress",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("leanmae pretrain: error: ")
    assert "optim.base_lrr" in err and "base_lr" in err
    assert "Traceback" not in err


def test_missing_data_folder_returns_2_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "pretrain",
            "--data",
            str(tmp_path / "nowhere"),
            "--out",
            str(tmp_path / "run"),
            "--preset",
            "test",
            "--no-progress",
        ]
    )
    assert code == 2
    assert "nowhere" in capsys.readouterr().err


def test_bad_grid_string_returns_2_with_a_one_line_error(
    images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--grid 2by2`` is a user error like any other: exit code 2 and a message, not a traceback."""
    code = main(
        [
            "pretrain",
            "--data",
            str(images),
            "--out",
            str(tmp_path / "run"),
            "--preset",
            "test",
            "--grid",
            "2by2",
            "--device",
            "cpu",
            "--no-progress",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "grid = '2by2'" in err and "ROWSxCOLS" in err and len(err.strip().splitlines()) == 1


def test_second_run_into_the_same_out_returns_2(
    images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "pretrain",
        "--data",
        str(images),
        "--out",
        str(tmp_path / "run"),
        "--preset",
        "test",
        "--epochs",
        "1",
        "--device",
        "cpu",
        "--no-progress",
    ]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(argv) == 2
    assert "--resume" in capsys.readouterr().err


def test_cli_options_reach_the_run_config(images: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    code = main(
        [
            "pretrain",
            "--data",
            str(images),
            "--out",
            str(out),
            "--preset",
            "test",
            "--epochs",
            "1",
            "--seed",
            "4",
            "--device",
            "cpu",
            "--no-progress",
            "--set",
            "model.mask_ratio=0.5",
            "--lr",
            "2e-3",
            "--batch-size",
            "8",
        ]
    )
    assert code == 0
    config = json.loads((out / "run.json").read_text())["config"]
    assert config["optim"]["epochs"] == 1 and config["run"]["seed"] == 4
    assert (
        config["model"]["mask_ratio"] == 0.5
        and config["optim"]["base_lr"] == pytest.approx(2e-3)
        and config["optim"]["batch_size"] == 8
    )
    assert config["run"]["progress"] is False


def test_importing_the_cli_does_not_load_torch() -> None:
    """``leanmae --help`` and light commands must not wait for torch: the CLI catches leanmae.errors only."""
    code = "import sys, leanmae.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_leanmae_split_does_not_load_torch(tmp_path: Path) -> None:
    """Making a split manifest needs only the data layer: it must not wait seconds for torch to import."""
    folder = tmp_path / "labelled"
    for seed, label in enumerate(("a", "b")):
        write_images(folder / label, 10, 24, seed=seed)
    out = tmp_path / "split.csv"
    code = (
        "import sys; from leanmae.cli import main; "
        f"code = main(['split', {str(folder)!r}, '--classes', 'a,b', '--out', {str(out)!r}]); "
        "print(code, 'torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "0 False", result.stderr
    assert out.exists()


def test_finetune_help_gives_the_pooling_default_the_config_has(capsys: pytest.CaptureFixture[str]) -> None:
    """The help said CLS was the default; classifier.pooling is mean."""
    from leanmae.config import ClassifierOptions

    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert ClassifierOptions().pooling == "mean" and "mean of the patch tokens (default" in help_text
