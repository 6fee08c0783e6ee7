"""Duplicates and leaks are caught by content: copies of an image never sit in two splits, a manifest lists
each file once however its path is spelt, pretraining never sees copies of the images a study scores on
nor the same image twice, and class folders and class names are each given once."""

from __future__ import annotations

import json
import os
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from helpers import tiny_pretrain, write_images
from leanmae.cli import main
from leanmae.data.pool import collect, distinct_images
from leanmae.data.sources import labelled_folder_records, scan
from leanmae.data.split import Item, file_hash, make_split, read_manifest, verify, write_manifest
from leanmae.errors import DataError


def _labelled(root: Path, classes: tuple[str, ...] = ("a", "b"), n: int = 10) -> Path:
    for seed, name in enumerate(classes):
        write_images(root / name, n, 16, seed=seed)
    return root


def _one_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


# --------------------------------------------------------------------------- splits


def test_split_keeps_byte_identical_copies_of_an_image_in_one_split(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Copies in two splits would score the model on images it trained on."""
    data = _labelled(tmp_path / "data")
    for original in sorted((data / "a").glob("*.png")):
        shutil.copy(original, original.with_name(f"copy_{original.name}"))
    items = make_split(data, ["a", "b"])
    splits_of = defaultdict(set)
    for it in items:
        splits_of[it.sha256].add(it.split)
    assert all(len(splits) == 1 for splits in splits_of.values())
    assert {it.split for it in items if it.label == "a"} == {"train", "val", "test"}
    assert "10 files are byte-identical copies" in capsys.readouterr().out


def test_a_manifest_with_the_same_image_in_two_splits_is_reported_naming_both_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Reported, not refused: the committed PBC studies' splits hold five such pairs (docs/reliability.md)."""
    data = _labelled(tmp_path / "data", n=4)
    shutil.copy(data / "a" / "img_0000.png", data / "a" / "twin.png")
    items = [it for it in make_split(data, ["a", "b"]) if it.relpath != "a/twin.png"]
    twin = next(it for it in items if it.relpath == "a/img_0000.png")
    other = "test" if twin.split == "train" else "train"
    manifest = tmp_path / "split.csv"
    write_manifest([*items, Item("a/twin.png", "a", other, twin.sha256)], manifest, data)
    root, listed = read_manifest(manifest)
    capsys.readouterr()
    verify(listed, root)
    err = capsys.readouterr().err
    assert "a/img_0000.png" in err and "a/twin.png" in err and "two splits" in err


@pytest.mark.parametrize("spelling", ["dot", "double-slash", "symlink", "hardlink"])
def test_a_manifest_listing_one_file_under_two_spellings_is_refused_naming_both(
    tmp_path: Path, spelling: str, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _labelled(tmp_path / "data", n=4)
    rows = [f"{it.relpath},{it.label},{it.split}" for it in make_split(data, ["a", "b"])]
    other = {"dot": "a/./img_0000.png", "double-slash": "a//img_0000.png"}.get(spelling, "a/alias.png")
    if spelling == "symlink":
        (data / "a" / "alias.png").symlink_to("img_0000.png")
    elif spelling == "hardlink":
        os.link(data / "a" / "img_0000.png", data / "a" / "alias.png")
    manifest = data / "split.csv"
    manifest.write_text("path,label,split\n" + "\n".join([*rows, f"{other},a,test"]) + "\n")
    with pytest.raises(DataError, match="listed twice") as info:
        verify(*reversed(read_manifest(manifest)))
    assert "a/img_0000.png" in str(info.value)
    code = main(["finetune", "--split", str(manifest), "--out", str(tmp_path / "run"), "--preset", "test"])
    assert code == 2 and "listed twice" in _one_line(capsys)


# --------------------------------------------------------------------------- pretraining pools


def test_a_data_folder_given_twice_is_refused_in_one_line(
    cells: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = str(cells["data"])
    code = main(
        ["pretrain", "--data", data, "--data", data, "--out", str(tmp_path / "run"), "--preset", "test"]
    )
    assert code == 2 and "given twice" in _one_line(capsys)


@pytest.mark.parametrize("second", ["subfolder", "class-filter", "symlinked-folder"])
def test_overlapping_data_sources_are_refused_naming_a_file_both_find(
    cells: dict[str, Any], tmp_path: Path, second: str
) -> None:
    data = cells["data"]
    if second == "symlinked-folder":
        (tmp_path / "alias").symlink_to(data, target_is_directory=True)
    other = {"subfolder": str(data / "basophil"), "class-filter": f"{data}:basophil"}.get(
        second, str(tmp_path / "alias")
    )
    with pytest.raises(DataError, match="found by two data sources") as info:
        collect([str(data), other])
    assert "basophil" in str(info.value) and other in str(info.value)


def test_byte_identical_files_in_a_pool_are_kept_once(cells: dict[str, Any], tmp_path: Path) -> None:
    """One copy each: a held-out validation file can then never have a twin in training."""
    shutil.copytree(cells["data"], tmp_path / "copy")
    images = len(collect([str(cells["data"])]))
    pool = distinct_images(collect([str(cells["data"]), str(tmp_path / "copy")]))
    assert len(pool.records) == len(pool.repeats) == images
    assert len({file_hash(r.path) for r in pool.records}) == images
    assert all(line.startswith(str(tmp_path / "copy")) for line in pool.repeats)


def test_a_pool_leaves_out_copies_of_the_probe_splits_val_and_test_images(cells: dict[str, Any]) -> None:
    root, items = read_manifest(cells["split"])
    scored = {file_hash(root / it.relpath) for it in items if it.split != "train"}
    everything = collect([str(cells["data"])])
    pool = distinct_images(everything, cells["split"])
    assert len(pool.probe_copies) == len(scored) == 6
    assert not scored & {file_hash(r.path) for r in pool.records}
    assert len(pool.records) == len(everything) - 6


def test_pretraining_with_a_probe_split_and_a_repeated_image_records_what_it_left_out(
    cells: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """As ``study --pretrain-data DATA`` runs it: the labelled folder itself, the study's split the probe."""
    extra = tmp_path / "extra"
    extra.mkdir()
    train_image = next(it.relpath for it in cells["items"] if it.split == "train")
    shutil.copy(cells["data"] / train_image, extra / "again.png")
    out = tmp_path / "pretrain"
    tiny_pretrain([str(cells["data"]), str(extra)], out, epochs=1, probe=cells["split"])
    info = json.loads((out / "run.json").read_text())
    assert info["probe_copies_left_out"] == 6 and info["repeated_files_left_out"] == 1
    assert info["images"]["train"] + info["images"]["val"] == len(collect([str(cells["data"])])) - 6
    printed = capsys.readouterr().out
    assert "6 files" in printed and "val or test" in printed


# --------------------------------------------------------------------------- class folders and names


def test_class_folders_that_differ_only_in_case_are_refused_naming_both(
    tmp_path: Path, model_folders: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    data = _labelled(tmp_path / "data", ("Basophil", "basophil", "eosinophil"), n=2)
    for read in (
        lambda: labelled_folder_records(data, ["basophil", "eosinophil"]),
        lambda: scan(data),
        lambda: scan(data, ["basophil", "eosinophil"]),
    ):
        with pytest.raises(DataError, match="differ only in case") as info:
            read()
        assert "'Basophil'" in str(info.value) and "'basophil'" in str(info.value)
    code = main(
        ["evaluate", str(model_folders["classifier"]), "--data", str(data), "--out", str(tmp_path / "e")]
    )
    assert code == 2 and "differ only in case" in _one_line(capsys)


def test_a_class_named_twice_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _labelled(tmp_path / "data", n=4)
    with pytest.raises(DataError, match="'a' is named twice"):
        make_split(data, ["a", "a", "b"])
    assert main(["split", str(data), "--classes", "a,a,b", "--out", str(tmp_path / "s.csv")]) == 2
    assert "named twice" in _one_line(capsys)
    assert not (tmp_path / "s.csv").exists()
