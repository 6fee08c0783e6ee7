"""Finding images: folders searched recursively, class-subfolder layout, class filters.

A source is written ``DIR`` or ``DIR:class1,class2``; several sources mix into one pool, which is
how the seed pretrained on pRCC + CAMELYON16 and how leanmae pretrains on LC25000 tiles plus the
non-WBC classes of PBC.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path

from leanmae.data.decode import IMAGE_EXTENSIONS
from leanmae.errors import DataError


@dataclass(frozen=True)
class ImageRecord:
    """One image file: where it is, the root it was found under, and its class folder if any."""

    path: Path
    root: Path
    label: str | None

    @property
    def relpath(self) -> str:
        return self.path.relative_to(self.root).as_posix()


def parse_source(spec: str) -> tuple[Path, list[str] | None]:
    """``"../pbc:erythroblast,ig"`` -> (Path("../pbc"), ["erythroblast", "ig"])."""
    if os.path.isdir(spec) or ":" not in spec:
        return Path(spec), None
    folder, classes = spec.rsplit(":", 1)
    names = [c.strip() for c in classes.split(",") if c.strip()]
    return Path(folder), names or None


def class_folders(root: Path) -> list[str]:
    """Immediate subfolders of ``root``: the class names of a class-subfolder layout."""
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images_under(folder: Path, root: Path) -> list[Path]:
    """Image files under ``folder``, sorted; symlinks that lead outside ``root`` are refused."""
    found = []
    real_root = root.resolve()
    if not folder.resolve().is_relative_to(real_root):
        raise DataError(
            f"{folder}: symbolic link leads outside the data folder {root}; refusing to follow it"
        )
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in dirnames:
            sub = Path(dirpath) / name
            if sub.is_symlink() and not sub.resolve().is_relative_to(real_root):
                raise DataError(
                    f"{sub}: symbolic link leads outside the data folder {root}; refusing to follow it"
                )
        for name in sorted(filenames):
            if name.startswith(".") or Path(name).suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            path = Path(dirpath) / name
            if path.is_symlink() and not path.resolve().is_relative_to(real_root):
                raise DataError(
                    f"{path}: symbolic link leads outside the data folder {root}; refusing to follow it"
                )
            found.append(path)
    return found


def scan(root: Path | str, classes: list[str] | None = None, labelled: bool = False) -> list[ImageRecord]:
    """All images under ``root``; with ``classes``, only those class subfolders (each must hold images).

    With ``labelled=True`` every image must sit in a class subfolder (the layout fine-tuning needs).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: data folder does not exist")
    available = class_folders(root)
    if classes:
        for name in classes:
            if name not in available:
                hint = difflib.get_close_matches(name, available, n=1)
                raise DataError(
                    f"{root}: no class folder {name!r}"
                    + (f"; did you mean {hint[0]!r}?" if hint else "")
                    + f" (found: {', '.join(available) or 'none'})"
                )
    wanted = classes if classes else (available if labelled else None)
    records: list[ImageRecord] = []
    if wanted is None:
        for path in _images_under(root, root):
            rel = path.relative_to(root).parts
            records.append(ImageRecord(path, root, rel[0] if len(rel) > 1 else None))
    else:
        for name in wanted:
            paths = _images_under(root / name, root)
            if not paths:
                raise DataError(
                    f"{root / name}: class folder holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})"
                )
            records.extend(ImageRecord(p, root, name) for p in paths)
    if not records:
        raise DataError(f"{root}: no images found ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    return records


def image_files(inputs: list[str | Path]) -> list[Path]:
    """Image files named directly or found (recursively, sorted) under named folders."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():  # hidden files and folders (.ipynb_checkpoints) are skipped, as training skips them
            files.extend(
                sorted(
                    p
                    for p in item.rglob("*")
                    if p.suffix.lower() in IMAGE_EXTENSIONS
                    and p.is_file()
                    and not any(part.startswith(".") for part in p.relative_to(item).parts)
                )
            )
        elif item.is_file():
            files.append(item)
        else:
            raise DataError(f"{item}: no such file or folder")
    if not files:
        raise DataError(f"no images found in {', '.join(map(str, inputs))}")
    return files
