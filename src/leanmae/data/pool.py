"""The unlabelled pretraining pool: folders, MedMNIST files and split manifests mixed in one list.

It sits above ``sources`` (finding files), ``medmnist`` and ``split`` (manifests) because it
combines all three; keeping it apart is what lets those modules import ``sources`` without a cycle.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from leanmae.data.medmnist import is_npz, pool_folders
from leanmae.data.sources import ImageRecord, parse_source, scan
from leanmae.data.split import file_hash, read_manifest, verify
from leanmae.errors import DataError


def is_manifest(spec: str | Path) -> bool:
    """Whether a data source is a split manifest (an existing ``.csv`` file)."""
    return str(spec).endswith(".csv") and os.path.isfile(spec)


def _source_records(spec: str) -> list[ImageRecord]:
    """The images of one source: a manifest's train images (verified), a MedMNIST file's train split, or a
    folder (with its class filter)."""
    if is_manifest(spec):
        root, items = read_manifest(spec)
        train = [it for it in items if it.split == "train"]
        verify(train, root)  # a file changed since the split must not silently change pretraining
        return [ImageRecord(root / it.relpath, root, None) for it in train]
    if is_npz(spec):  # a MedMNIST file: its train images, unpacked once
        folder, classes = pool_folders(spec)
    else:
        folder, classes = parse_source(spec)
    return scan(folder, classes)


def collect(specs: list[str]) -> list[ImageRecord]:
    """The unlabelled pool of several sources, in a fixed order.

    A source is a folder (``DIR`` or ``DIR:classes``), a MedMNIST file (``PATH.npz[:classes]``, its
    train split only) or a split manifest (``split.csv``), of which
    only the train images are taken: this is how a study adds its own task's training images to the
    pretraining pool ("in-domain") without ever letting validation or test images in.

    A source given twice, or two sources that find the same file (a folder and a folder inside it, a
    folder and its classes, a link to a folder), are refused: every image would count twice.
    """
    if not specs:
        raise DataError("no data given: pass --data DIR (repeatable)")
    repeated = next((spec for i, spec in enumerate(specs) if spec in specs[:i]), None)
    if repeated is not None:
        raise DataError(f"data source {repeated!r} is given twice; give each source once")
    records: list[ImageRecord] = []
    found_by: dict[Path, str] = {}
    for spec in specs:
        for record in _source_records(spec):
            first = found_by.setdefault(record.path.resolve(), spec)
            if first != spec:
                raise DataError(
                    f"{record.path}: found by two data sources, {first!r} and {spec!r}; give each image "
                    "folder once (not also a folder inside it, its classes or a link to it)"
                )
            records.append(record)
    return records


@dataclass
class DistinctPool:
    """A pool with one file per content, none of them an image that a manifest scores."""

    records: list[ImageRecord]
    repeats: list[str] = field(default_factory=list)  # "path (same bytes as path)", left out
    probe_copies: list[str] = field(default_factory=list)  # "path (same bytes as path (split))", left out


def distinct_images(records: list[ImageRecord], *manifests: str | Path) -> DistinctPool:
    """``records`` without content twins: a file whose bytes repeat an earlier pool file's, or those of a
    val or test image of one of ``manifests``, is left out.

    Why by content: byte-identical copies under other names (a folder copied beside itself, PBC's own
    copies) doubled images, and let the held-out validation files have twins in training; a labelled
    folder used as pretraining data put the images a study scores on into pretraining. Only files whose
    size equals another's are hashed, so a pool of distinct sizes costs a stat per file.
    """
    scored: dict[str, tuple[Path, str]] = {}  # sha256 -> (file, split)
    for manifest in manifests:
        root, items = read_manifest(manifest)
        for it in verify([it for it in items if it.split != "train"], root):
            scored.setdefault(it.sha256, (root / it.relpath, it.split))
    sizes = [os.path.getsize(r.path) for r in records]
    to_hash = {size for size, count in Counter(sizes).items() if count > 1}
    to_hash |= {os.path.getsize(path) for path, _ in scored.values()}
    pool = DistinctPool(records=[])
    first: dict[str, Path] = {}
    for record, size in zip(records, sizes, strict=True):
        digest = file_hash(record.path) if size in to_hash else ""
        if digest in scored:
            path, split = scored[digest]
            pool.probe_copies.append(f"{record.path} (same bytes as {path}, {split})")
        elif digest in first:
            pool.repeats.append(f"{record.path} (same bytes as {first[digest]})")
        else:
            if digest:
                first[digest] = record.path
            pool.records.append(record)
    return pool
