"""One fixed, stratified train / val / test split, and nested label fractions inside train.

The split is made once per study and saved as a manifest (relative path, label, split, content
hash) that every fine-tuning run reuses, so the test images are the same for every arm, fraction
and seed, and a file changed on disk after the split is detected by its hash.

Label fractions are drawn per class from one fixed shuffle of that class's training images:
the 1 % set is the first k_1 of them, the 10 % set the first k_10 >= k_1, and so on, so the sets
are nested by construction. Every class keeps at least two images (one where it has only one):
the seed's 1 % run collapsed to a single class, and a fraction must never silently drop one.
"""

from __future__ import annotations

import csv
import hashlib
import io
import sys
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

import numpy as np

from leanmae.config import ratios_problem
from leanmae.data.sources import refuse_special_file, scan
from leanmae.errors import DataError
from leanmae.files import write_atomic

SPLITS = ("train", "val", "test")
MIN_PER_CLASS = 2


@dataclass(frozen=True)
class Item:
    relpath: str
    label: str
    split: str
    sha256: str


def _class_rng(seed: int, label: str) -> np.random.Generator:
    """One generator per (seed, class): adding or reordering classes leaves each class's draw unchanged."""
    return np.random.default_rng([seed, int(hashlib.sha256(label.encode()).hexdigest()[:8], 16)])


def file_hash(path: Path) -> str:
    """The sha256 of a file's bytes; a FIFO or device is refused, never opened."""
    refuse_special_file(path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_text(path: Path, what: str) -> str:
    """The text of ``path``, which must be UTF-8 (a byte-order mark, as spreadsheets write, is dropped).

    Why one reader: a manifest saved by a spreadsheet in Latin-1 or Windows-1252 gave a traceback.
    """
    refuse_special_file(path, what)
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(
            f"{path}: {what} is not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start}); "
            'save it as UTF-8 (a spreadsheet\'s "CSV UTF-8")'
        ) from None


def make_split(
    root: Path | str,
    classes: list[str],
    ratios: tuple[float, float, float] = (0.7, 0.1, 0.2),
    seed: int = 0,
    drop_conflicts: bool = False,
) -> list[Item]:
    """Stratified split of the class folders ``classes`` under ``root``; each class in every split.

    The same image in two classes is an error, since one of its labels is wrong; ``drop_conflicts`` leaves
    every copy of such an image out instead, saying which (the way to split data one may not edit, such
    as PBC, which holds one such pair). Without conflicts the split is the same either way. Byte-identical
    copies within a class are split as one image, so they never sit in two splits (a test image would be
    one the model trained on); PBC holds a few such copies.
    """
    problem = ratios_problem(ratios)
    if problem:
        raise DataError(f"split ratios {','.join(f'{r:g}' for r in ratios)}: {problem}")
    if len(classes) < 2:
        raise DataError(f"a classification task needs at least two classes, got {classes}")
    if not 0 <= seed < 2**32:
        raise DataError(f"split seed {seed}: must be in 0 .. 2**32-1")
    root = Path(root)
    hashed = [
        Item(rec.relpath, rec.label, "", file_hash(rec.path)) for rec in scan(root, classes, labelled=True)
    ]
    conflicts = [(a, b) for a, b in content_twins(hashed) if a.label != b.label]
    if conflicts and not drop_conflicts:
        a, b = conflicts[0]
        raise DataError(
            f"{root / a.relpath} ({a.label}) and {root / b.relpath} ({b.label}) are the same image "
            "in two classes; remove one of them (or the one that is mislabelled) and split again, or "
            "pass --drop-conflicts to leave every copy out"
        )
    dropped = {it.sha256 for pair in conflicts for it in pair}
    for it in hashed:
        if it.sha256 in dropped:
            print(f"left out {root / it.relpath} ({it.label}): the same image is in another class")
    kept = [it for it in hashed if it.sha256 not in dropped]
    _note_copies(kept, root)
    items: list[Item] = []
    for label in classes:
        images = _copies_together([it for it in kept if it.label == label])
        if len(images) < 3:
            raise DataError(
                f"{root / label}: {len(images)} image(s); a class needs at least 3 to appear in "
                "train, val and test"
            )
        order = _class_rng(seed, label).permutation(
            len(images)
        )  # a class's split does not depend on the others
        n_val = max(1, round(ratios[1] * len(images)))
        n_test = max(1, round(ratios[2] * len(images)))
        if n_val + n_test >= len(images):
            raise DataError(
                f"{root / label}: {len(images)} images cannot give train, val and test one each with "
                f"ratios {ratios}"
            )
        for rank, idx in enumerate(order):
            split = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
            items.extend(replace(copy, split=split) for copy in images[idx])
    return sorted(items, key=lambda it: (SPLITS.index(it.split), it.label, it.relpath))


def _copies_together(items: list[Item]) -> list[list[Item]]:
    """``items`` grouped by content, in the order of each content's first file: one group per image."""
    groups: dict[str, list[Item]] = {}
    for it in items:
        groups.setdefault(it.sha256, []).append(it)
    return list(groups.values())


def _note_copies(items: list[Item], root: Path) -> None:
    """Say how many files repeat another's bytes (each such image is split as one)."""
    twins = content_twins(items)
    if twins:
        a, b = twins[0]
        print(
            f"note: {len(twins)} files are byte-identical copies of another file of the same class (e.g. "
            f"{root / b.relpath} = {root / a.relpath}); the copies of an image are kept in one split"
        )


MANIFEST_COLUMNS = ["path", "label", "split", "sha256", "root"]
LEGACY_ROOT_LINE = "# root: "  # manifests before 0.1.1 named their root in a first comment line


def write_manifest(items: list[Item], path: Path | str, root: Path | str) -> None:
    """A plain CSV (path, label, split, sha256, root) that csv.DictReader and pandas read as is.

    Every row repeats the absolute data root, so the file stays self-contained when copied;
    ``--data-root`` overrides it when the data moves.
    """
    path = Path(path)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(MANIFEST_COLUMNS)
    data_root = str(Path(root).resolve())
    writer.writerows([it.relpath, it.label, it.split, it.sha256, data_root] for it in items)
    write_atomic(path, buffer.getvalue())


def read_manifest(path: Path | str, root: Path | str | None = None) -> tuple[Path, list[Item]]:
    """(data root, items) of a manifest: ``leanmae split``'s, or a hand-written ``path,label,split`` CSV.

    The root is ``root`` if given, else the manifest's root column (or an old manifest's
    ``# root:`` first line), else the manifest's folder. Paths must stay inside the root (absolute
    paths and '..' are refused), and each path is listed once, with one label and one split.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: split manifest does not exist (make one with `leanmae split`)")
    lines = read_text(path, "a split manifest").splitlines()
    legacy_root = (
        lines[0][len(LEGACY_ROOT_LINE) :] if lines and lines[0].startswith(LEGACY_ROOT_LINE) else None
    )
    reader = csv.DictReader(lines[1:] if legacy_root is not None else lines)
    try:
        missing = [c for c in ("path", "label", "split") if c not in (reader.fieldnames or [])]
        rows = list(reader)
    except csv.Error as err:
        raise DataError(f"{path}: not a CSV split manifest ({err})") from None
    if missing:
        raise DataError(
            f"{path}: manifest lacks the column(s) {', '.join(missing)}; expected a header "
            "path,label,split[,sha256][,root]"
        )
    roots = {row.get("root") or "" for row in rows} - {""}
    if len(roots) > 1:
        raise DataError(
            f"{path}: the root column holds {len(roots)} different folders; a manifest has one data root"
        )
    data_root = Path(root or legacy_root or next(iter(roots), None) or path.parent)
    items = []
    spellings: dict[str, str] = {}
    for line, row in enumerate(rows, start=2):
        written = (row["path"] or "").strip()
        rel = PurePosixPath(written)
        if not written or rel.is_absolute() or ".." in rel.parts:
            raise DataError(
                f"{path}: path {row['path']!r} (row {line}) leaves the data root; manifest paths "
                "must be relative and inside it"
            )
        relpath = rel.as_posix()  # "a/./x.png" and "a//x.png" are "a/x.png"
        first = spellings.setdefault(relpath, written)
        if first != written:
            raise DataError(
                f"{path}: {written!r} (row {line}) and {first!r} are one file listed twice; list each "
                "image once"
            )
        if row["split"] not in SPLITS:
            raise DataError(f"{path}: unknown split {row['split']!r} for {relpath}; use {', '.join(SPLITS)}")
        if not (row["label"] or "").strip():
            raise DataError(f"{path}: {relpath} (row {line}) has no label")
        items.append(Item(relpath, row["label"], row["split"], (row.get("sha256") or "").strip()))
    if not items:
        raise DataError(f"{path}: manifest lists no images")
    check_listing(items, path)
    return data_root, items


def check_listing(items: list[Item], where: Path | str) -> None:
    """Each path listed once: a repeated row, a path with two labels or in two splits is an error."""
    first: dict[str, Item] = {}
    for it in items:
        seen = first.setdefault(it.relpath, it)
        if seen is it:
            continue
        if seen.label != it.label:
            raise DataError(
                f"{where}: {it.relpath} is listed with two labels ({seen.label}, {it.label}); give "
                "each image one label"
            )
        if seen.split != it.split:
            raise DataError(
                f"{where}: {it.relpath} is in both {seen.split} and {it.split}; an image belongs to one split"
            )
        raise DataError(f"{where}: {it.relpath} is listed twice; list each image once")


def content_twins(items: list[Item]) -> list[tuple[Item, Item]]:
    """(first, later) pairs of listed files with the same content (sha256): one image under two names.

    Its two labels or two splits are what make it a problem: two answers for one image, or a test
    image the model trained on. Items without a hash (a hand-written manifest before ``verify``) are
    passed over.
    """
    first: dict[str, Item] = {}
    twins = []
    for it in items:
        seen = first.setdefault(it.sha256, it) if it.sha256 else it
        if seen is not it:
            twins.append((seen, it))
    return twins


def _report_twins(items: list[Item], root: Path) -> None:
    """Warn, on stderr, of images listed under two classes (each pair) or in two splits (a count and one).

    Warned, not refused: committed studies' splits hold one two-class pair and five train / test or
    train / val pairs of PBC, and their runs must stay reproducible; ``leanmae split`` makes neither.
    """
    twins = content_twins(items)
    for a, b in twins:
        if a.label != b.label:
            print(
                f"warning: {root / a.relpath} ({a.label}) and {root / b.relpath} ({b.label}) are the "
                "same image in two classes",
                file=sys.stderr,
            )
    leaks = [(a, b) for a, b in twins if a.label == b.label and a.split != b.split]
    if leaks:
        a, b = leaks[0]
        print(
            f"warning: {len(leaks)} image(s) are listed in two splits under two names, e.g. "
            f"{root / a.relpath} ({a.split}) and {root / b.relpath} ({b.split}) are the same image in two "
            "splits: val and test scores count images the model trained on; `leanmae split` keeps copies "
            "in one split",
            file=sys.stderr,
        )


def verify(items: list[Item], root: Path) -> list[Item]:
    """Every listed file exists, lies inside ``root`` and still has the hash recorded at split time.

    A hand-written manifest without hashes is hashed here instead; returns the items with their
    hashes. One file listed under two names (a link, or a name differing only in case on such a file
    system) is refused; files with the same content in two classes or two splits are reported on
    stderr (``_report_twins``).
    """
    real_root = root.resolve()
    hashed = []
    files: dict[tuple[int, int], Item] = {}
    for it in items:
        file = root / it.relpath
        if not file.exists():
            raise DataError(
                f"{file}: listed in the split manifest but missing on disk"
                + (" (a dangling symbolic link)" if file.is_symlink() else "")
            )
        if not file.resolve().is_relative_to(real_root):
            raise DataError(f"{file}: resolves outside the data root {root} (symbolic link?); refusing it")
        refuse_special_file(file)
        if not file.is_file():
            raise DataError(f"{file}: listed in the split manifest but not a file")
        status = file.stat()
        other = files.setdefault((status.st_dev, status.st_ino), it)
        if other is not it:
            raise DataError(
                f"{root / other.relpath} and {file} are one file listed twice (a link, or a name that "
                "differs in case); list each image once"
            )
        digest = file_hash(file)
        if it.sha256 and digest != it.sha256:
            raise DataError(
                f"{file}: content changed since the split was made (hash mismatch); make a new split "
                "or restore the file"
            )
        hashed.append(Item(it.relpath, it.label, it.split, digest))
    _report_twins(hashed, root)
    return hashed


def label_fraction(items: list[Item], fraction: float, seed: int, split: str = "train") -> list[Item]:
    """The images of one label fraction of ``split``: stratified, nested across fractions, every class
    present.

    With ``split="val"`` this is a run's label-honest validation set: a run that may use 1 % of the
    training labels also sees only 1 % of the validation labels (at least two per class) for
    choosing and calibrating, as a lab with that budget would.
    """
    if not 0 < fraction <= 1:
        raise DataError(f"--fraction {fraction}: must be in (0, 1]")
    if split == "test":
        raise DataError("label fractions are drawn from train or val, never from the test split")
    pool = [it for it in items if it.split == split]
    chosen: list[Item] = []
    for label in sorted({it.label for it in pool}):
        group = sorted((it for it in pool if it.label == label), key=lambda it: it.relpath)
        order = _class_rng(seed, label).permutation(len(group))
        k = min(len(group), max(MIN_PER_CLASS, round(fraction * len(group))))
        chosen.extend(group[i] for i in order[:k])
    return chosen


def counts(items: list[Item]) -> dict[str, dict[str, int]]:
    """{split: {label: images}} for data summaries."""
    table: dict[str, Counter] = {s: Counter() for s in SPLITS}
    for it in items:
        table[it.split][it.label] += 1
    return {s: dict(sorted(c.items())) for s, c in table.items()}
