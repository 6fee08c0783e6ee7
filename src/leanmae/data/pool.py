"""The unlabelled pretraining pool: folders, MedMNIST files and split manifests mixed in one list.

It sits above ``sources`` (finding files), ``medmnist`` and ``split`` (manifests) because it
combines all three; keeping it apart is what lets those modules import ``sources`` without a cycle.
"""

from __future__ import annotations

import os

from leanmae.data.medmnist import is_npz, pool_folders
from leanmae.data.sources import ImageRecord, parse_source, scan
from leanmae.data.split import read_manifest, verify
from leanmae.errors import DataError


def collect(specs: list[str]) -> list[ImageRecord]:
    """The unlabelled pool of several sources, in a fixed order.

    A source is a folder (``DIR`` or ``DIR:classes``), a MedMNIST file (``PATH.npz[:classes]``, its
    train split only) or a split manifest (``split.csv``), of which
    only the train images are taken: this is how a study adds its own task's training images to the
    pretraining pool ("in-domain") without ever letting validation or test images in.
    """
    if not specs:
        raise DataError("no data given: pass --data DIR (repeatable)")
    records: list[ImageRecord] = []
    for spec in specs:
        if spec.endswith(".csv") and os.path.isfile(spec):
            root, items = read_manifest(spec)
            train = [it for it in items if it.split == "train"]
            verify(train, root)  # a file changed since the split must not silently change pretraining
            records.extend(ImageRecord(root / it.relpath, root, None) for it in train)
            continue
        if is_npz(spec):  # a MedMNIST file: its train images, unpacked once
            folder, classes = pool_folders(spec)
        else:
            folder, classes = parse_source(spec)
        records.extend(scan(folder, classes))
    return records
