"""MedMNIST ``.npz`` files as data: unpacked once into image files, then used like any folder.

A MedMNIST file holds ``train_images``, ``train_labels``, ``val_images``, ``val_labels``,
``test_images``, ``test_labels`` (images (N, H, W) or (N, H, W, 1) grayscale or (N, H, W, 3) uint8,
labels (N, 1)).
BloodMNIST is the PBC data set (Acevedo et al. 2020) at 28-224 px, so leanmae's numbers on it
compare with MedMNIST's published benchmark when its official split is kept.

Why unpack to PNG files rather than read the arrays directly: everything downstream (split
manifests with SHA-256, the decode-once cache keyed by files, ``--skip-bad``, predict) then works
unchanged. The unpacking is lossless and happens once per file, in the cache folder
(``$LEANMAE_CACHE/medmnist/<hash of the file>``), built in a temporary folder and renamed into place.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image

from leanmae.data.cache import default_cache_dir
from leanmae.data.sources import check_class_names, refuse_special_file
from leanmae.data.split import SPLITS, Item, file_hash
from leanmae.errors import DataError
from leanmae.files import atomic_dir

# Class names from MedMNIST's INFO, in label order; short names as in the PBC folders.
CLASS_NAMES = {
    "bloodmnist": [
        "basophil",
        "eosinophil",
        "erythroblast",
        "ig",
        "lymphocyte",
        "monocyte",
        "neutrophil",
        "platelet",
    ],
}
WBC_TYPES = [
    "basophil",
    "eosinophil",
    "lymphocyte",
    "monocyte",
    "neutrophil",
]  # the five white-cell types of BloodMNIST


def is_npz(source: str | Path) -> bool:
    return str(source).split(":", 1)[0].endswith(".npz")


def class_names(path: Path, count: int) -> list[str]:
    """Names of the ``count`` classes: MedMNIST's own for a known data set (by file name), else class_0,
    class_1, ..."""
    for flag, names in CLASS_NAMES.items():
        if path.name.lower().startswith(flag) and len(names) >= count:
            return names
    return [f"class_{i}" for i in range(count)]


def _grayscale_as_2d(images: np.ndarray) -> np.ndarray:
    """(N, H, W, 1) grayscale, as some MedMNIST-style files store it, as (N, H, W): one picture per image."""
    return images[..., 0] if images.ndim == 4 and images.shape[-1] == 1 else images


def _arrays(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        with np.load(path) as data:
            missing = [
                f"{s}_{kind}"
                for s in SPLITS
                for kind in ("images", "labels")
                if f"{s}_{kind}" not in data.files
            ]
            if missing:
                raise DataError(f"{path}: not in the MedMNIST layout (missing {', '.join(missing)})")
            return {s: (_grayscale_as_2d(data[f"{s}_images"]), data[f"{s}_labels"]) for s in SPLITS}
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: not a readable .npz file ({err})") from None


def _labels(path: Path, split: str, labels: np.ndarray, images: np.ndarray) -> np.ndarray:
    flat = labels.reshape(len(labels), -1)
    if flat.shape[1] != 1:
        raise DataError(
            f"{path}: {split}_labels has {flat.shape[1]} labels per image (multi-label); leanmae "
            "needs one class per image"
        )
    colour = images.ndim == 4 and images.shape[-1] == 3
    if len(flat) != len(images) or images.dtype != np.uint8 or not (images.ndim == 3 or colour):
        raise DataError(
            f"{path}: {split}_images must be uint8 (N, H, W), (N, H, W, 1) or (N, H, W, 3) with one label "
            f"each (found {images.dtype} {images.shape})"
        )
    return flat[:, 0].astype(np.int64)


def unpack(path: str | Path, cache_dir: str | Path | None = None) -> Path:
    """The folder ``<split>/<class>/<split>_NNNNNN.png`` holding the file's images, built once."""
    path = Path(path)
    refuse_special_file(path, "a MedMNIST .npz file")
    stat = path.stat() if path.is_file() else None
    if stat is None:
        raise DataError(f"{path}: no such file")
    key = hashlib.sha256(f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()[:24]
    folder = Path(cache_dir or default_cache_dir()) / "medmnist" / key
    if (folder / "DONE").exists():
        return folder
    arrays = _arrays(path)
    counts = {s: _labels(path, s, labels, images) for s, (images, labels) in arrays.items()}
    names = class_names(path, int(max(c.max(initial=0) for c in counts.values())) + 1)
    with atomic_dir(folder, replace=False) as tmp:
        for split, (images, _) in arrays.items():
            for name in names:
                (tmp / split / name).mkdir(parents=True, exist_ok=True)
            for i, (image, label) in enumerate(zip(images, counts[split], strict=True)):
                Image.fromarray(image).save(tmp / split / names[label] / f"{split}_{i:06d}.png")
        (tmp / "DONE").write_text(str(path.resolve()))
    return folder


def official_split(
    path: str | Path, classes: list[str] | None = None, cache_dir: str | Path | None = None
) -> tuple[Path, list[Item]]:
    """(root, manifest items) of the file's own train / val / test split, keeping only ``classes`` (default:
    all)."""
    root = unpack(path, cache_dir)
    present = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    chosen = classes or present
    check_class_names(chosen, path)
    unknown = [c for c in chosen if c not in present]
    if unknown:
        raise DataError(f"{path}: no class {', '.join(map(repr, unknown))} (classes: {', '.join(present)})")
    items = [
        Item(f"{split}/{label}/{file.name}", label, split, file_hash(file))
        for split in SPLITS
        for label in chosen
        for file in sorted((root / split / label).glob("*.png"))
    ]
    for split in SPLITS:
        empty = [c for c in chosen if not any(it.split == split and it.label == c for it in items)]
        if empty:
            raise DataError(f"{path}: the {split} split has no image of class(es) {', '.join(empty)}")
    return root, items


def pool_folders(source: str) -> tuple[Path, list[str] | None]:
    """``PATH.npz[:classes]`` as a pretraining source: the unpacked train split (never val or test),
    optionally a class subset."""
    path, _, classes = source.partition(":")
    root = unpack(path)
    return root / "train", [c.strip() for c in classes.split(",") if c.strip()] or None
