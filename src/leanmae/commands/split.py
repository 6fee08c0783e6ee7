"""``leanmae split``: the study's fixed train/val/test manifest of a labelled folder or a MedMNIST file.

It needs no model and no torch: only the data layer and the output-file guard.
"""

from __future__ import annotations

from pathlib import Path

from leanmae.data.medmnist import is_npz, official_split
from leanmae.data.split import (
    SPLITS,
    counts,
    make_split,
    write_manifest,
)
from leanmae.errors import DataError
from leanmae.reporting.runinfo import check_output_file


def split(
    data: str | Path,
    classes: str | list[str] | None = None,
    out: str | Path = "split.csv",
    ratios: str | tuple[float, float, float] = (0.7, 0.1, 0.2),
    seed: int = 0,
    overwrite: bool = False,
    drop_conflicts: bool = False,
) -> dict[str, dict[str, int]]:
    """Make the study's fixed split manifest of ``data``: a folder of class subfolders (stratified
    train/val/test by ``ratios`` and ``seed``) or a MedMNIST ``.npz`` file (its official split kept;
    ``ratios`` and ``seed`` do not apply). ``classes`` keeps a subset (required for a folder).
    An existing ``out`` is replaced only with ``overwrite``: a study's runs are tied to its split.
    The same image in two class folders is an error; ``drop_conflicts`` leaves every copy out, each
    named in a line (for data one cannot edit).
    """
    names = (
        ([c.strip() for c in classes.split(",") if c.strip()] if isinstance(classes, str) else list(classes))
        if classes
        else []
    )
    check_output_file(Path(out), overwrite)
    if is_npz(data):
        root, items = official_split(data, names or None)
        write_manifest(items, out, root)
    else:
        if not names:
            raise DataError(f"{data}: pass --classes (comma-separated class folders) for a folder")
        try:
            parts = (
                tuple(float(r) for r in ratios.split(","))
                if isinstance(ratios, str)
                else tuple(float(r) for r in ratios)
            )
        except ValueError:
            parts = ()
        if len(parts) != 3:
            raise DataError(f"--ratios {ratios!r}: expected three numbers train,val,test such as 0.7,0.1,0.2")
        items = make_split(Path(data), names, parts, seed, drop_conflicts)  # type: ignore[arg-type]
        write_manifest(items, out, data)
    table = counts(items)
    print(f"wrote {out}: " + "; ".join(f"{s} {sum(table[s].values())}" for s in SPLITS))
    for s in SPLITS:
        print(f"  {s:5s} " + ", ".join(f"{k} {v}" for k, v in table[s].items()))
    return table
