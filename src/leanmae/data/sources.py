"""Finding images: folders searched recursively, class-subfolder layout, class filters.

A source is written ``DIR`` or ``DIR:class1,class2``; several sources mix into one pool, which is
how the seed pretrained on pRCC + CAMELYON16 and how leanmae pretrains on LC25000 tiles plus the
non-WBC classes of PBC.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, replace
from pathlib import Path

from leanmae.data.decode import IMAGE_EXTENSIONS, not_a_regular_file
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
    """Immediate subfolders of ``root``: the class names of a class-subfolder layout.

    Two folders whose names differ only in case are refused: a labelled folder's classes are matched
    to a model's ignoring case (``labelled_folder_records``), which merged them into one class, and on
    macOS or Windows they are one folder anyway.
    """
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    seen: dict[str, str] = {}
    for name in names:
        other = seen.setdefault(name.casefold(), name)
        if other != name:
            raise DataError(
                f"{root}: class folders {other!r} and {name!r} differ only in case; merge or rename one "
                "(they would be one class on macOS and Windows, and to a model's class names)"
            )
    return names


def check_class_names(classes: list[str], where: Path | str) -> None:
    """Each class named once: ``--classes a,a,b`` listed every image of ``a`` twice."""
    repeated = next((name for i, name in enumerate(classes) if name in classes[:i]), None)
    if repeated is not None:
        raise DataError(
            f"{where}: class {repeated!r} is named twice in the classes {','.join(classes)}; name each "
            "class once"
        )


def refuse_special_file(path: Path, what: str = "an image file") -> None:
    """A FIFO, socket or device where ``what`` is expected is refused before anything opens it
    (opening a FIFO blocks until something writes to it: ``leanmae split`` hung for good)."""
    kind = not_a_regular_file(path)
    if kind:
        raise DataError(f"{path}: {kind}, not {what}; only regular files are read (move it out)")


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
            refuse_special_file(path)
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
        check_class_names(classes, root)
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
            found = sorted(
                p
                for p in item.rglob("*")
                if p.suffix.lower() in IMAGE_EXTENSIONS
                and p.exists()
                and not p.is_dir()
                and not any(part.startswith(".") for part in p.relative_to(item).parts)
            )
            for path in found:
                refuse_special_file(path)
            files.extend(found)
        elif item.exists():
            refuse_special_file(item)
            files.append(item)
        else:
            raise DataError(f"{item}: no such file or folder")
    if not files:
        raise DataError(f"no images found in {', '.join(map(str, inputs))}")
    return files


def labelled_folder_records(root: Path, labels: list[str], option: str = "--data") -> list[ImageRecord]:
    """The images of another lab's labelled folder, each labelled with the model's class its subfolder
    names (case-insensitive); a subfolder naming none of ``labels`` is an error naming ``option``."""
    if not root.is_dir():
        raise DataError(f"{option} {root}: not a folder")
    by_name = {label.lower(): label for label in labels}
    folders = class_folders(root)
    if not folders:
        raise DataError(f"{option} {root}: expected one subfolder per class (of {', '.join(labels)})")
    unknown = [f for f in folders if f.lower() not in by_name]
    if unknown:
        raise DataError(
            f"{option} {root}: folder(s) {', '.join(unknown)} match none of the model's classes "
            f"({', '.join(labels)})"
        )
    return [replace(rec, label=by_name[rec.label.lower()]) for rec in scan(root, folders, labelled=True)]
