"""Decode once: every image (or tile) decoded, converted to RGB and resized into a uint8 memmap.

Decoding JPEGs costs more than a small ViT's step on this kind of machine, so it happens once
per data set and working size, not every epoch. The cache key hashes each file's path, size and
modification time plus the decoding settings: a changed file, working size or tiling makes a new
cache instead of reusing a stale one. The cache is built in a temporary folder and renamed into
place, so a killed build leaves nothing that could be read as valid.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from leanmae.config import DataConfig
from leanmae.data.cellcrop import cell_centred_crop
from leanmae.data.decode import decode_rgb, square_resize, tile_boxes
from leanmae.data.sources import ImageRecord
from leanmae.data.stain import NORMALISERS, REFERENCES
from leanmae.errors import BadImageError, DataError
from leanmae.files import atomic_dir
from leanmae.progress import bar_disabled

CACHE_VERSION = 1


def default_cache_dir() -> Path:
    return Path(os.environ.get("LEANMAE_CACHE", Path.home() / ".cache" / "leanmae"))


@dataclass(frozen=True)
class DecodeSpec:
    """How files become cache entries: working size, tiling, cell-centred crop and stain normalisation.

    ``cell_crop`` (k) and ``stain_reference`` (Reinhard's six LAB numbers or Macenko's eight,
    ``stain_method`` says which) change the pixels, so they are part of the cache key and are saved
    with a model (``spec_extras``), so that ``predict`` decodes its images exactly as training did
    (``finish_image``).
    """

    size: int
    tile: int | None = None
    grid: str | None = None
    min_tile_size: int = 64
    cell_crop: float | None = None
    stain_reference: tuple[float, ...] | None = None
    stain_method: str = "reinhard"  # which normalisation stain_reference is for
    grey: bool = False  # luma in all three channels, after stain normalisation


# settings left out of the cache key while they hold these values, so caches built before them keep theirs
_UNKEYED_VALUES = {"cell_crop": None, "stain_reference": None, "stain_method": "reinhard", "grey": False}


def finish_image(region: np.ndarray, spec: DecodeSpec) -> np.ndarray:
    """One decoded image (or tile) as the model sees it: cell-centred crop, square resize, stain
    normalisation, greyscale."""
    if spec.cell_crop:
        region = cell_centred_crop(region, spec.cell_crop)
    square = square_resize(region, spec.size)
    if spec.stain_reference:
        square = NORMALISERS[spec.stain_method](square, spec.stain_reference)
    return grey_rgb(square) if spec.grey else square


def grey_rgb(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma (as PIL's "L" mode) in all three channels: the model's input shape is unchanged, and
    an MAE pretrained on colour images still fits."""
    luma = np.asarray(Image.fromarray(rgb).convert("L"))
    return np.repeat(luma[..., None], 3, axis=2)


def stain_spec(spec: DecodeSpec, method: str, training: list[ImageRecord], limit: int = 64) -> DecodeSpec:
    """``spec`` with the stain reference of ``method`` taken from (up to ``limit``, a fixed choice of) the
    training images, in colour (greyscale comes after normalisation)."""
    if method == "none":
        return spec
    colour = replace(spec, grey=False)
    pick = np.sort(np.random.default_rng(0).permutation(len(training))[:limit])
    images = []
    for i in pick:
        try:
            images.append(finish_image(decode_rgb(training[i].path), colour))
        except BadImageError:
            continue  # the cache build reports (or skips) bad files itself
    if not images:
        raise DataError("no readable training image to take the stain reference from")
    try:
        reference = REFERENCES[method](images)
    except ValueError as err:  # Macenko: no training image shows two stains
        raise DataError(f"data.stain_norm={method}: {err}") from err
    return replace(spec, stain_reference=reference, stain_method=method)


def working_size(image_size: int, cache_size: int | None = None) -> int:
    """The side images are decoded to once (the cache): ``cache_size``, else 1.25 x the model's input,
    leaving room for random-resized crops. A saved model records its own (leanmae.json), so this
    default also decodes the inputs of a model that predates that record as it was trained."""
    return int(cache_size) if cache_size else round(1.25 * image_size)


def spec_extras(spec: DecodeSpec) -> dict[str, Any]:
    """What leanmae.json records about decoding, so a saved model's inputs are decoded as in training."""
    return {
        "cache_size": spec.size,
        "cell_crop": spec.cell_crop,
        "stain_norm": {"method": spec.stain_method, "reference": list(spec.stain_reference)}
        if spec.stain_reference
        else None,
        "grey": spec.grey,
    }


def spec_from_extras(extra: dict[str, Any], image_size: int) -> DecodeSpec:
    """The DecodeSpec a saved model was trained with (leanmae.json; older models: size only)."""
    stain = extra.get("stain_norm") or {}
    reference = tuple(stain["reference"]) if stain.get("reference") else None
    return DecodeSpec(
        size=working_size(image_size, extra.get("cache_size")),
        cell_crop=extra.get("cell_crop"),
        stain_reference=reference,
        stain_method=stain.get("method", "reinhard"),
        grey=bool(extra.get("grey", False)),
    )


def _decode_file(
    path: str, spec: DecodeSpec
) -> tuple[list[np.ndarray], list[tuple[int, int, int, int]]] | str:
    """Worker: tiles of one file, finished as the model sees them; a bad file returns its error message
    instead."""
    try:
        rgb = decode_rgb(path)
    except BadImageError as err:
        return str(err)
    boxes = tile_boxes(rgb.shape[1], rgb.shape[0], spec.tile, spec.grid, spec.min_tile_size)
    tiles = [finish_image(rgb[top:bottom, left:right], spec) for (left, top, right, bottom) in boxes]
    return tiles, boxes


def manifest_hash(records: list[ImageRecord], spec: DecodeSpec) -> str:
    """Hash of the file list (path, size, mtime) and decoding settings: the cache key."""
    settings = {k: v for k, v in spec.__dict__.items() if k not in _UNKEYED_VALUES or v != _UNKEYED_VALUES[k]}
    digest = hashlib.sha256(json.dumps([CACHE_VERSION, settings]).encode())
    for rec in records:
        st = rec.path.stat()
        digest.update(f"{rec.path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


@dataclass
class ImageCache:
    """Decoded images: ``images[i]`` is an (S, S, 3) uint8 tile of ``records[sources[i]]``."""

    images: np.ndarray
    sources: np.ndarray  # entry -> index into records
    boxes: np.ndarray  # entry -> (left, top, right, bottom) in the source image
    records: list[ImageRecord]
    skipped: list[str]  # "path: reason" for files skipped with skip_bad
    key: str
    untiled: list[str] = field(default_factory=list)  # "path: reason" for files that gave no tile

    def __len__(self) -> int:
        return len(self.images)


def load_or_build(
    records: list[ImageRecord],
    spec: DecodeSpec,
    cache_dir: Path | str | None = None,
    skip_bad: bool = False,
    workers: int = 2,
    progress: bool = True,
) -> ImageCache:
    """The cache for ``records`` decoded per ``spec``, built on first use.

    A bad file raises BadImageError naming it; with ``skip_bad`` it is left out and listed in
    ``skipped`` (which run.json records), so the change to the data set is visible.
    """
    key = manifest_hash(records, spec)
    folder = Path(cache_dir or default_cache_dir()) / key[:24]
    if not (folder / "index.json").exists():
        _build(records, spec, folder, skip_bad, workers, progress)
    index = json.loads((folder / "index.json").read_text())
    if index["skipped"] and not skip_bad:
        first = index["skipped"][0]
        raise BadImageError(
            first.split(": ", 1)[0], first.split(": ", 1)[-1] + " (pass --skip-bad to leave bad files out)"
        )
    count = index["count"]
    images = np.memmap(folder / "images.u8", dtype=np.uint8, mode="r", shape=(count, spec.size, spec.size, 3))
    sources = np.asarray(index["sources"], dtype=np.int64)
    return ImageCache(
        images=images,
        sources=sources,
        boxes=np.asarray(index["boxes"], dtype=np.int64).reshape(-1, 4),
        records=records,
        skipped=index["skipped"],
        key=key,
        untiled=_untiled(records, sources, index["skipped"], spec),
    )


def _untiled(
    records: list[ImageRecord], sources: np.ndarray, skipped: list[str], spec: DecodeSpec
) -> list[str]:
    """The files that decoded but gave no tile (every piece under ``min_tile_size``), as "path: reason".

    Found from the index (files with no entry that were not skipped as bad), so caches built
    before this was reported tell it too; commands count and list them, never drop them silently.
    """
    bad = {entry.split(": ", 1)[0] for entry in skipped}
    used = set(sources.tolist())
    cut = f"--tile {spec.tile}" if spec.tile else f"--grid {spec.grid}"
    return [
        f"{rec.path}: gives no tile of at least {spec.min_tile_size} px with {cut} (data.min_tile_size)"
        for i, rec in enumerate(records)
        if i not in used and str(rec.path) not in bad
    ]


def _build(
    records: list[ImageRecord], spec: DecodeSpec, folder: Path, skip_bad: bool, workers: int, progress: bool
) -> None:
    sources: list[int] = []
    boxes: list[tuple[int, int, int, int]] = []
    skipped: list[str] = []
    paths = [str(r.path) for r in records]
    with atomic_dir(folder, replace=False) as tmp:
        with open(tmp / "images.u8", "wb") as out:
            results = _map(paths, spec, workers)
            for i, result in enumerate(
                tqdm(
                    results,
                    total=len(paths),
                    desc="decoding images (once)",
                    unit="img",
                    disable=bar_disabled(progress),
                )
            ):
                if isinstance(result, str):
                    if not skip_bad:
                        path, reason = result.split(": ", 1)
                        raise BadImageError(path, reason + " (pass --skip-bad to leave bad files out)")
                    skipped.append(result)
                    continue
                for tile, box in zip(*result, strict=True):
                    out.write(tile.tobytes())
                    sources.append(i)
                    boxes.append(box)
        if not sources:
            raise DataError("no usable images: every file was bad or every tile was under the minimum size")
        index = {
            "count": len(sources),
            "size": spec.size,
            "sources": sources,
            "boxes": boxes,
            "skipped": skipped,
        }
        (tmp / "index.json").write_text(json.dumps(index))


def _map(paths: list[str], spec: DecodeSpec, workers: int):
    """Decode in ``workers`` processes (in order); one worker decodes in this process."""
    if workers <= 1 or len(paths) < 64:
        return (_decode_file(p, spec) for p in paths)

    def generate():
        with ProcessPoolExecutor(max_workers=workers) as pool:
            yield from pool.map(_decode_file, paths, [spec] * len(paths), chunksize=32)

    return generate()


class Node(Protocol):
    """What the cache needs of a distributed run (``training.distributed.Context`` is one)."""

    local_rank: int

    @property
    def is_main(self) -> bool: ...

    def barrier(self) -> None: ...


def build_cache_for(
    records: list[ImageRecord], spec: DecodeSpec, data: DataConfig, progress: bool, ctx: Node
) -> ImageCache:
    """The first process of each node decodes; the others wait and then open the finished cache."""
    kwargs = {
        "cache_dir": data.cache_dir,
        "skip_bad": data.skip_bad,
        "workers": data.workers,
        "progress": progress and ctx.is_main,
    }
    if ctx.local_rank == 0:
        cache = load_or_build(records, spec, **kwargs)
    ctx.barrier()
    if ctx.local_rank != 0:
        cache = load_or_build(records, spec, **kwargs)
    return cache
