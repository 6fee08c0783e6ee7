"""The tutorial notebook (docs/tutorial.ipynb) runs from top to bottom, so it cannot rot."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_tutorial_notebook_runs_from_top_to_bottom(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    why = "the notebook's test needs nbclient, nbformat and ipykernel (pip install -e '.[notebook]')"
    nbformat = pytest.importorskip("nbformat", reason=why)
    nbclient = pytest.importorskip("nbclient", reason=why)
    pytest.importorskip("ipykernel", reason=why)
    # The notebook keeps its work folder for the reader (tempfile.mkdtemp); its kernel inherits TMPDIR,
    # so under the test that folder lands in tmp_path, not in the machine's /tmp.
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    notebook = nbformat.read(ROOT / "docs" / "tutorial.ipynb", as_version=4)
    nbclient.NotebookClient(notebook, timeout=600, resources={"metadata": {"path": str(ROOT)}}).execute()
    printed = "".join(
        output.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    )
    assert "labels used:" in printed and "macro_f1" in printed
    assert "eosinophil" in printed or "SYNTHETIC" in printed
