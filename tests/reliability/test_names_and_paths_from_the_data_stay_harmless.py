"""Names from the data are escaped in report.html, and manifest paths and symlinks stay inside the data
root."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from reliability_helpers import (
    _small_split,
)

from helpers import tiny_finetune, write_images
from leanmae.data.sources import scan
from leanmae.data.split import make_split
from leanmae.errors import DataError
from leanmae.reporting.tables import Table


def test_class_and_folder_names_are_escaped_in_the_study_report(reference_study: Path) -> None:
    """A class folder named ``<script>alert(1)`` and a data folder named ``<img src=x onerror=alert(1)>`` show
    as text."""
    text = (reference_study / "report.html").read_text()
    assert "<script" not in text.lower() and "<img src=x" not in text
    assert "&lt;script&gt;alert(1)" in text, "the class name is shown, escaped"
    assert "&lt;img src=x onerror=alert(1)&gt;" in text, "the data folder is shown, escaped"


def test_class_names_are_escaped_in_the_studys_markdown_tables(reference_study: Path) -> None:
    """results/tables.md shows the class ``<script>alert(1)`` as text, not as a tag a renderer would run."""
    text = (reference_study / "results" / "tables.md").read_text()
    assert "<script" not in text.lower()
    assert "&lt;script&gt;alert(1)" in text, "the class name is shown, escaped"


def test_names_with_pipes_and_line_breaks_keep_their_markdown_cell() -> None:
    """A ``|`` or a line break in a name would split the cell or end the table; a backslash before a ``|``
    would unescape it."""
    names = ["a|b", "two\nlines", "back\\", "x\\|y", "<b>&amp;"]
    table = Table("t", "Per class <i>", ["class", "f1"], [[name, 0.5] for name in names])
    lines = table.markdown().splitlines()
    assert lines[0] == "### Per class &lt;i&gt;"
    rows = lines[4:]
    assert len(rows) == len(names), "a line break in a name did not end the table"
    cell_borders = r"(?<!\\)(?:\\\\)*\|"  # a pipe after an even number of backslashes (none, too)
    assert all(len(re.findall(cell_borders, row)) == 3 for row in rows), rows
    assert rows == [
        "| a\\|b | 0.5 |",
        "| two lines | 0.5 |",
        "| back\\\\ | 0.5 |",
        "| x\\\\\\|y | 0.5 |",
        "| &lt;b&gt;&amp;amp; | 0.5 |",
    ]


def _outside_class(tmp_path: Path) -> Path:
    """A data root whose class folder 'c' is a symbolic link to a folder outside it."""
    root = tmp_path / "root"
    for i, name in enumerate(("a", "b")):
        write_images(root / name, 4, 24, seed=i)
    write_images(tmp_path / "elsewhere" / "c", 4, 24, seed=2)
    (root / "c").symlink_to(tmp_path / "elsewhere" / "c", target_is_directory=True)
    return root


def test_a_class_folder_that_is_a_symlink_leading_outside_the_data_root_is_refused(tmp_path: Path) -> None:
    root = _outside_class(tmp_path)
    with pytest.raises(DataError, match="outside"):
        scan(root, ["a", "c"], labelled=True)
    with pytest.raises(DataError, match="outside"):
        make_split(root, ["a", "b", "c"])
    with pytest.raises(DataError, match="outside"):
        scan(root)  # an unlabelled pool: the linked folder is neither followed nor silently left out


def test_a_manifest_file_that_became_a_symlink_leading_outside_the_root_is_refused(tmp_path: Path) -> None:
    """Same bytes, so the hash matches: the symlink itself must be refused."""
    data, split, items = _small_split(tmp_path)
    target = data / next(it for it in items if it.split == "train").relpath
    outside = tmp_path / "outside.png"
    shutil.copy(target, outside)
    target.unlink()
    target.symlink_to(outside)
    with pytest.raises(DataError, match="outside the data root"):
        tiny_finetune(split, tmp_path / "run", epochs=1)
    assert not (tmp_path / "run" / "checkpoints").exists()
