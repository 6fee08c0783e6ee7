"""What data a run trains on, as a few hashes in run.json, so that ``--resume`` refuses changed data.

A resumed run replays its remaining epochs from a checkpoint. If the images, the split or the
label-fraction draw changed in between, the finished run would mix two data sets while looking
like one, so a resume compares what it is about to train on with what the run recorded when it
started, and stops naming each part that changed, before any training (and, for fine-tuning,
before decoding).

The parts, each a hash plus a count (the count makes the message concrete):

- ``images``: fine-tuning, the manifest's paths with their content sha256 (verified against the
  files at every start); pretraining, every pool file's path, size and modification time, the
  identity the decode cache uses (hashing a large unlabelled pool's bytes at every start would
  cost what the cache saves, and the cache re-decodes a file whose time changed anyway).
- ``split``: the manifest's label and split (train / val / test) of every path.
- ``label draw``: the train and val images this run's fraction and seed draw.
- ``validation files``: pretraining, the files held out for the validation loss.

A run recorded before this check existed has no hashes; it resumes unchecked.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from leanmae.data.sources import ImageRecord
from leanmae.data.split import Item
from leanmae.errors import DataError

RUN_FIELD = "data_check"
DESCRIPTIONS = {
    "images": "the training images",
    "split": "the split (labels or train/val/test of the manifest's paths)",
    "label draw": "the images drawn for this label fraction and seed",
    "validation files": "the files held out for validation",
}


def part(lines: Iterable[str]) -> dict[str, Any]:
    """One recorded part: the sha256 of ``lines`` (one per image, in order) and their count."""
    digest, count = hashlib.sha256(), 0
    for line in lines:
        digest.update(line.encode() + b"\n")
        count += 1
    return {"hash": digest.hexdigest(), "count": count}


def pool_images(records: list[ImageRecord]) -> dict[str, Any]:
    """The ``images`` part of a pretraining pool: resolved path, size and modification time per file."""

    def line(record: ImageRecord) -> str:
        st = record.path.stat()
        return f"{record.path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}"

    return part(line(r) for r in records)


def manifest_parts(items: list[Item], drawn: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The ``images``, ``split`` and ``label draw`` parts of a fine-tuning run (``items`` with sha256)."""
    ordered = sorted(items, key=lambda it: it.relpath)
    return {
        "images": part(f"{it.relpath}\0{it.sha256}" for it in ordered),
        "split": part(f"{it.relpath}\0{it.label}\0{it.split}" for it in ordered),
        "label draw": part(sorted(drawn)),
    }


def check_resume(out: Path, now: dict[str, dict[str, Any]], resumed: bool) -> dict[str, dict[str, Any]]:
    """Return ``now`` (to record in run.json); when ``resumed``, first refuse any part that differs.

    The run's record is run.json's ``data_check``. Raises DataError on one line naming each changed
    part, with its count then and now.
    """
    if not resumed:
        return now
    try:
        saved = json.loads((Path(out) / "run.json").read_text()).get(RUN_FIELD) or {}
    except (OSError, ValueError):
        saved = {}
    changed = [
        f"{DESCRIPTIONS.get(name, name)} ({saved[name]['count']} then, {value['count']} now)"
        for name, value in now.items()
        if name in saved and saved[name].get("hash") != value["hash"]
    ]
    if changed:
        raise DataError(
            f"{out}: --resume refused: {'; '.join(changed)} changed since the run started; "
            "resume on the same data, or train a new run with another --out (or --overwrite)"
        )
    return now
