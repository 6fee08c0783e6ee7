"""Macenko stain normalisation (data.stain_norm=macenko) on images built from known stain vectors and
concentrations: it finds the stains, undoes another stain batch, keeps a cell's colours when the frame
zooms in (where Reinhard does not), leaves stainless tiles alone, and keeps Reinhard's cache key."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from leanmae.data.cache import CACHE_VERSION, DecodeSpec, manifest_hash, stain_spec
from leanmae.data.decode import square_resize
from leanmae.data.macenko import estimate, macenko, macenko_reference
from leanmae.data.sources import scan
from leanmae.data.stain import reinhard, reinhard_reference
from leanmae.errors import DataError


def _unit(*vectors: list[float]) -> np.ndarray:
    stains = np.array(vectors, dtype=np.float64).T
    return stains / np.linalg.norm(stains, axis=0)


# (3, 2) optical-density vectors, haematoxylin-like (more red absorbed) first: a blood-smear-like batch
# and another lab's
STAINS = _unit([0.55, 0.80, 0.25], [0.30, 0.60, 0.75])
OTHER_STAINS = _unit([0.65, 0.70, 0.30], [0.25, 0.75, 0.62])


def _render(concentrations: np.ndarray, stains: np.ndarray) -> np.ndarray:
    """Beer-Lambert: an RGB uint8 image from per-pixel stain amounts (H, W, 2) and stain vectors."""
    return np.clip(256 * np.exp(-(concentrations @ stains.T)) - 0.5, 0, 255).astype(np.uint8)


def _mixtures(n: int, seed: int) -> np.ndarray:
    """Random amounts of both stains, with a quarter of the rows nearly pure in each."""
    concentrations = np.random.default_rng(seed).uniform(0, 1.2, (n, n, 2))
    concentrations[: n // 4, :, 1] *= 0.02
    concentrations[n // 4 : n // 2, :, 0] *= 0.02
    return concentrations


def _cell(n: int, seed: int) -> np.ndarray:
    """Stain amounts of a centred white cell (haematoxylin-rich nucleus, mixed cytoplasm) among red
    cells (eosin) on an unstained background, with a little per-pixel variation."""
    yy, xx = np.mgrid[0:n, 0:n] / n
    concentrations = np.zeros((n, n, 2))
    centre = np.hypot(yy - 0.5, xx - 0.5)
    concentrations[centre < 0.22] = (0.25, 0.45)
    concentrations[centre < 0.12] = (1.3, 0.25)
    for cy, cx in [(0.15, 0.15), (0.85, 0.2), (0.2, 0.85), (0.8, 0.8), (0.5, 0.92)]:
        concentrations[np.hypot(yy - cy, xx - cx) < 0.1] = (0.05, 0.8)
    return concentrations * np.random.default_rng(seed).uniform(0.85, 1.15, (n, n, 1))


def _zoom(image: np.ndarray) -> np.ndarray:
    """The centre half of ``image`` resized back to its size: a 2x zoom on the cell."""
    n = image.shape[0]
    return square_resize(image[n // 4 : n - n // 4, n // 4 : n - n // 4], n)


def _difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(int) - b).mean())


def test_the_estimated_stain_vectors_are_the_ones_the_image_was_made_of_haematoxylin_first() -> None:
    found = estimate(_render(_mixtures(64, seed=0), STAINS))
    assert found is not None
    stains, _, maxima = found
    np.testing.assert_allclose((stains * STAINS).sum(0), 1.0, atol=1e-3)  # cosines, in this order
    np.testing.assert_allclose(maxima, 1.2 * 0.99, rtol=0.02)  # the 99th percentile of U(0, 1.2)


def test_another_stain_batch_of_the_same_tissue_normalises_to_the_reference_colours() -> None:
    reference_image = _render(_mixtures(64, seed=1), STAINS)
    other_batch = _render(_mixtures(64, seed=1) * [1.3, 0.7], OTHER_STAINS)
    before = _difference(other_batch, reference_image)
    after = _difference(macenko(other_batch, macenko_reference([reference_image])), reference_image)
    assert before > 10 and after < 1.0


def test_a_zoomed_in_cell_keeps_its_colours_far_better_under_macenko_than_reinhard() -> None:
    """Reinhard matches each image's own colour mean and spread, so a frame the cell fills gets other
    colours than the same cell in a wide field; Macenko's extreme stain directions and upper
    percentiles barely move."""
    field = _render(_cell(96, seed=2), OTHER_STAINS)
    reference_image = _render(_cell(96, seed=3), STAINS)
    moved = {}
    for name, normalise, reference in [
        ("macenko", macenko, macenko_reference([reference_image])),
        ("reinhard", reinhard, reinhard_reference([reference_image])),
    ]:
        moved[name] = _difference(_zoom(normalise(field, reference)), normalise(_zoom(field), reference))
    assert moved["macenko"] < 10 and moved["macenko"] < moved["reinhard"] / 2, moved


@pytest.mark.parametrize(
    "image",
    [
        np.full((32, 32, 3), 255, dtype=np.uint8),  # blank
        np.full((32, 32, 3), (120, 60, 140), dtype=np.uint8),  # one colour: a single stain
        _render(np.pad(np.full((2, 2, 2), 1.0), ((15, 15), (15, 15), (0, 0))), STAINS),  # 4 stained pixels
    ],
    ids=["blank", "single-colour", "almost-no-tissue"],
)
def test_an_image_without_two_stains_comes_back_unchanged(image: np.ndarray) -> None:
    reference = macenko_reference([_render(_mixtures(32, seed=4), STAINS)])
    assert estimate(image) is None
    np.testing.assert_array_equal(macenko(image, reference), image)


def test_training_images_without_two_stains_are_refused_with_the_option_named(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    for i in range(2):
        Image.fromarray(np.full((24, 24, 3), 255, dtype=np.uint8)).save(tmp_path / "a" / f"{i}.png")
    with pytest.raises(DataError, match="data.stain_norm=macenko"):
        stain_spec(DecodeSpec(size=24), "macenko", scan(tmp_path))


def test_reinhard_keeps_its_cache_key_and_macenko_gets_its_own(tmp_path: Path) -> None:
    folder = tmp_path / "a"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(_render(_mixtures(24, seed=i), STAINS)).save(folder / f"{i}.png")
    records = scan(folder)
    spec = stain_spec(DecodeSpec(size=24), "reinhard", records)
    settings = {"size": 24, "tile": None, "grid": None, "min_tile_size": 64}
    before_macenko = hashlib.sha256(
        json.dumps([CACHE_VERSION, {**settings, "stain_reference": list(spec.stain_reference)}]).encode()
    )
    for rec in records:
        st = rec.path.stat()
        before_macenko.update(f"{rec.path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    assert manifest_hash(records, spec) == before_macenko.hexdigest()
    macenko_spec = stain_spec(DecodeSpec(size=24), "macenko", records)
    assert macenko_spec.stain_method == "macenko" and len(macenko_spec.stain_reference) == 8
    assert manifest_hash(records, macenko_spec) != manifest_hash(records, spec)
