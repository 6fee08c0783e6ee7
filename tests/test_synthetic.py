"""Specification of the synthetic blood-smear data used by the offline demo.

``leanmae.data.synthetic`` must produce, with no network and in a few seconds:

* a labelled WBC set laid out ImageFolder-style, ``out/<class>/<class>_0000.png``;
* unlabelled smear tiles, ``out/tile_0000.png``;
* a ``SYNTHETIC.txt`` notice in both, so nobody mistakes them for patient data;
* RGB PNGs of the requested size, deterministic for a seed;
* classes that differ in colour / morphology enough to be learnable.
"""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from leanmae.data.synthetic import WBC_CLASSES, make_synthetic_tiles, make_synthetic_wbc


def _load(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def _class_images(root: Path, cls: str) -> np.ndarray:
    return np.stack([_load(p).astype(np.float64) for p in sorted((root / cls).glob("*.png"))])


@pytest.fixture(scope="module")
def wbc_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 images per class at the default 96 px: enough for stable class statistics."""
    return make_synthetic_wbc(tmp_path_factory.mktemp("wbc"), n_per_class=20, seed=0)


# --------------------------------------------------------------------------- #
# API and layout
# --------------------------------------------------------------------------- #
def test_classes_are_the_five_wbc_types_in_label_order() -> None:
    assert WBC_CLASSES == ("basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil")
    assert list(WBC_CLASSES) == sorted(WBC_CLASSES), "must match ImageFolder's sorted label order"


def test_wbc_layout_is_one_folder_per_class_with_numbered_pngs(tmp_path: Path) -> None:
    out = tmp_path / "nested" / "wbc"  # parents are created
    returned = make_synthetic_wbc(out, n_per_class=3, size=48, seed=0)

    assert returned == out
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == list(WBC_CLASSES)
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == ["SYNTHETIC.txt"]
    for cls in WBC_CLASSES:
        names = sorted(p.name for p in (out / cls).iterdir())
        assert names == [f"{cls}_{i:04d}.png" for i in range(3)]


def test_tiles_layout_is_flat_numbered_pngs(tmp_path: Path) -> None:
    returned = make_synthetic_tiles(tmp_path, n=4, size=64, seed=0)

    assert returned == tmp_path
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["SYNTHETIC.txt"] + [f"tile_{i:04d}.png" for i in range(4)]


@pytest.mark.parametrize("make", [make_synthetic_wbc, make_synthetic_tiles])
def test_synthetic_notice_says_not_patient_data(tmp_path: Path, make) -> None:
    make(tmp_path, 1, 32, 0)
    text = (tmp_path / "SYNTHETIC.txt").read_text(encoding="utf-8").lower()
    assert "synthetic" in text
    assert "leanmae" in text
    assert "not real patient data" in text


def test_images_are_rgb_of_the_requested_size(tmp_path: Path) -> None:
    make_synthetic_wbc(tmp_path / "wbc", n_per_class=2, size=72, seed=3)
    make_synthetic_tiles(tmp_path / "tiles", n=3, size=80, seed=3)

    wbc = sorted((tmp_path / "wbc").glob("*/*.png"))
    tiles = sorted((tmp_path / "tiles").glob("*.png"))
    assert len(wbc) == 2 * len(WBC_CLASSES) and len(tiles) == 3
    for paths, size in ((wbc, 72), (tiles, 80)):
        for p in paths:
            with Image.open(p) as im:
                assert im.format == "PNG"
                assert im.mode == "RGB"
                assert im.size == (size, size)


def test_default_sizes_are_96_for_cells_and_128_for_tiles(tmp_path: Path) -> None:
    make_synthetic_wbc(tmp_path / "wbc", n_per_class=1)
    make_synthetic_tiles(tmp_path / "tiles", n=1)
    assert _load(tmp_path / "wbc" / "basophil" / "basophil_0000.png").shape == (96, 96, 3)
    assert _load(tmp_path / "tiles" / "tile_0000.png").shape == (128, 128, 3)


def test_zero_images_still_writes_notice_and_bad_arguments_are_rejected(tmp_path: Path) -> None:
    make_synthetic_wbc(tmp_path / "w", n_per_class=0)
    make_synthetic_tiles(tmp_path / "t", n=0)
    assert (tmp_path / "w" / "SYNTHETIC.txt").is_file()
    assert not list((tmp_path / "t").glob("*.png"))
    with pytest.raises(ValueError):
        make_synthetic_wbc(tmp_path / "x", n_per_class=-1)
    with pytest.raises(ValueError):
        make_synthetic_tiles(tmp_path / "y", n=1, size=4)


# --------------------------------------------------------------------------- #
# Determinism
# --------------------------------------------------------------------------- #
def _all_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png"))}


def test_same_seed_gives_identical_files(tmp_path: Path) -> None:
    for run in ("a", "b"):
        make_synthetic_wbc(tmp_path / run / "wbc", n_per_class=2, size=48, seed=11)
        make_synthetic_tiles(tmp_path / run / "tiles", n=3, size=48, seed=11)
    a, b = _all_bytes(tmp_path / "a"), _all_bytes(tmp_path / "b")
    assert len(a) == 2 * len(WBC_CLASSES) + 3
    assert a == b


def test_different_seed_gives_different_images(tmp_path: Path) -> None:
    for seed in (0, 1):
        make_synthetic_wbc(tmp_path / f"s{seed}" / "wbc", n_per_class=2, size=48, seed=seed)
        make_synthetic_tiles(tmp_path / f"s{seed}" / "tiles", n=2, size=48, seed=seed)
    a, b = _all_bytes(tmp_path / "s0"), _all_bytes(tmp_path / "s1")
    assert a.keys() == b.keys()
    for name in a:
        assert a[name] != b[name], f"{name} did not change with the seed"


def test_images_within_one_run_differ(tmp_path: Path) -> None:
    make_synthetic_wbc(tmp_path, n_per_class=3, size=48, seed=0)
    imgs = [_load(p) for p in sorted(tmp_path.glob("*/*.png"))]
    for x, y in combinations(imgs, 2):
        assert not np.array_equal(x, y)


def test_image_i_does_not_depend_on_how_many_are_generated(tmp_path: Path) -> None:
    make_synthetic_wbc(tmp_path / "few", n_per_class=1, size=48, seed=5)
    make_synthetic_wbc(tmp_path / "many", n_per_class=3, size=48, seed=5)
    for cls in WBC_CLASSES:
        name = f"{cls}/{cls}_0000.png"
        assert (tmp_path / "few" / name).read_bytes() == (tmp_path / "many" / name).read_bytes()


# --------------------------------------------------------------------------- #
# Learnability: classes differ in ways a classifier can pick up
# --------------------------------------------------------------------------- #
def _centre(imgs: np.ndarray) -> np.ndarray:
    """Central half of each image, where the white cell sits."""
    s = imgs.shape[1]
    return imgs[:, s // 4 : 3 * s // 4, s // 4 : 3 * s // 4]


def test_eosinophils_are_redder_than_lymphocytes_and_monocytes(wbc_set: Path) -> None:
    """Orange-red granules vs. sky-blue / grey-blue cytoplasm."""
    redness = {}
    for c in ("eosinophil", "lymphocyte", "monocyte"):
        centre = _centre(_class_images(wbc_set, c))
        redness[c] = float((centre[..., 0] - centre[..., 2]).mean())
    assert redness["eosinophil"] > redness["lymphocyte"] + 10
    assert redness["eosinophil"] > redness["monocyte"] + 10


def test_basophils_have_more_dark_pixels_than_neutrophils_and_monocytes(wbc_set: Path) -> None:
    """Dense blue-black granules vs. pale cytoplasm / light lacy nucleus."""

    def dark_fraction(cls: str) -> float:
        return float((_centre(_class_images(wbc_set, cls)).mean(-1) < 120).mean())

    baso, neut, mono, lymph = (dark_fraction(c) for c in ("basophil", "neutrophil", "monocyte", "lymphocyte"))
    assert baso > 1.5 * neut
    assert baso > 10 * mono
    # The lymphocyte's dark nucleus is also far darker than the monocyte's.
    assert lymph > 10 * mono


def test_most_class_pairs_have_different_mean_colour(wbc_set: Path) -> None:
    means = {c: _centre(_class_images(wbc_set, c)).mean(axis=(0, 1, 2)) for c in WBC_CLASSES}
    far = [(a, b) for a, b in combinations(WBC_CLASSES, 2) if np.linalg.norm(means[a] - means[b]) > 4.0]
    assert len(far) >= 6, f"only {far} differ in mean colour"


def test_stain_jitter_varies_between_images_of_a_class(wbc_set: Path) -> None:
    """Each image gets its own stain, so colour alone is not a per-class constant."""
    imgs = _class_images(wbc_set, "lymphocyte")
    background = np.median(imgs.reshape(len(imgs), -1, 3), axis=1)  # mostly plasma/glass
    assert background.std(axis=0).min() > 3.0
