"""Decode-time stain normalisation and cell-centred crops: what they do to constructed images, and
that training, evaluate and predict decode an image identically (the settings travel in leanmae.json)."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import pytest

import leanmae
from helpers import read_csv, smooth_image, tiny_finetune, write_images
from leanmae.data.cache import (
    CACHE_VERSION,
    DecodeSpec,
    finish_image,
    load_or_build,
    manifest_hash,
    spec_extras,
    spec_from_extras,
    stain_spec,
)
from leanmae.data.cellcrop import cell_centred_crop, find_nucleus
from leanmae.data.decode import decode_rgb, square_resize
from leanmae.data.sources import scan
from leanmae.data.split import read_manifest
from leanmae.data.stain import lab_stats, reinhard, reinhard_reference
from leanmae.data.synthetic import make_synthetic_wbc

BACKGROUND = (238, 222, 226)  # pale pink, as a blood smear's plasma
NUCLEUS = (92, 52, 140)  # haematoxylin purple
RED_CELL = (226, 150, 160)  # eosin-pink, little haematoxylin


def _disc(image: np.ndarray, cy: float, cx: float, radius: float, colour: tuple[int, int, int]) -> None:
    yy, xx = np.mgrid[0 : image.shape[0], 0 : image.shape[1]]
    image[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = colour


def _field(height: int, width: int, cy: float, cx: float, radius: float) -> np.ndarray:
    """A light field with a purple nucleus off-centre, a smaller purple blob and two pink red cells."""
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[:] = BACKGROUND
    _disc(image, height * 0.8, width * 0.15, radius * 0.9, RED_CELL)
    _disc(image, height * 0.2, width * 0.1, radius * 0.8, RED_CELL)
    _disc(image, height * 0.85, width * 0.85, radius * 0.25, NUCLEUS)  # a platelet-sized distractor
    _disc(image, cy, cx, radius, NUCLEUS)
    return image


def _nucleus_frame(crop: np.ndarray) -> tuple[float, float, float]:
    """(centre row, centre column, diameter) of the purple pixels as shares of a 64 px resize of ``crop``."""
    small = square_resize(crop, 64).astype(int)
    purple = np.abs(small - np.array(NUCLEUS)).sum(-1) < 60
    rows, cols = np.nonzero(purple)
    return rows.mean() / 64, cols.mean() / 64, (cols.max() - cols.min() + 1) / 64


# --------------------------------------------------------------------------- cell-centred crop


@pytest.mark.parametrize(
    "field",
    [
        _field(200, 300, 60, 200, 20),  # wide field, nucleus upper right
        _field(400, 600, 260, 150, 40),  # the same at twice the scale, nucleus lower left
        _field(100, 110, 48, 58, 40),  # a tight crop: the cell fills the frame
    ],
    ids=["wide", "wide-2x", "tight"],
)
def test_the_cell_centred_crop_centres_the_nucleus_at_the_same_relative_size(field: np.ndarray) -> None:
    row, col, diameter = _nucleus_frame(cell_centred_crop(field, k=2.0))
    assert row == pytest.approx(0.5, abs=0.04) and col == pytest.approx(0.5, abs=0.04)
    assert diameter == pytest.approx(0.5, abs=0.05)


def test_the_nucleus_found_is_the_largest_purple_blob_not_a_red_cell() -> None:
    cy, cx, extent, background = find_nucleus(_field(200, 300, 60, 200, 20))
    assert (cy, cx) == (pytest.approx(60, abs=3), pytest.approx(200, abs=3))
    assert extent == pytest.approx(40, abs=4)
    assert np.abs(background - np.array(BACKGROUND)).max() < 10


def test_an_image_without_a_nucleus_falls_back_to_the_centre_square() -> None:
    plain = np.full((30, 50, 3), 200, dtype=np.uint8)
    assert cell_centred_crop(plain, 2.0).shape == (30, 30, 3)


# --------------------------------------------------------------------------- stain normalisation


def test_reinhard_moves_an_image_to_the_reference_statistics() -> None:
    rng = np.random.default_rng(0)
    reference = reinhard_reference([smooth_image(rng, 48, 48) for _ in range(4)])
    out = reinhard(smooth_image(np.random.default_rng(9), 48, 48), reference)
    mean, std = lab_stats(out)
    assert out.dtype == np.uint8 and out.shape == (48, 48, 3)
    np.testing.assert_allclose(mean, reference[:3], atol=2.0)
    np.testing.assert_allclose(std, reference[3:], rtol=0.15, atol=1.0)


def test_a_colour_moved_outside_srgb_is_clipped_without_a_warning() -> None:
    """A dark, very yellow reference moves every pixel out of gamut (negative Z): the clip is the intended
    mapping, so a user never sees skimage's warning about it."""
    image = smooth_image(np.random.default_rng(0), 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = reinhard(image, (10.0, 0.0, 100.0, 5.0, 5.0, 5.0))
    assert out.dtype == np.uint8 and out.shape == image.shape


def test_two_stain_batches_of_one_image_normalise_to_nearly_the_same_image() -> None:
    image = smooth_image(np.random.default_rng(1), 48, 48).astype(float)
    bluish = np.clip(image * [0.8, 0.85, 1.1] + [0, 0, 10], 0, 255).astype(np.uint8)
    reddish = np.clip(image * [1.1, 0.9, 0.85] + [15, 0, 0], 0, 255).astype(np.uint8)
    reference = reinhard_reference([image.astype(np.uint8)])
    before = np.abs(bluish.astype(int) - reddish).mean()
    after = np.abs(reinhard(bluish, reference).astype(int) - reinhard(reddish, reference)).mean()
    assert after < before / 3


def test_unset_options_keep_the_cache_key_of_caches_built_before_them(tmp_path: Path) -> None:
    records = scan(tmp_path) if write_images(tmp_path / "a", 2, 24) else []
    old_style = hashlib.sha256(
        json.dumps([CACHE_VERSION, {"size": 24, "tile": None, "grid": None, "min_tile_size": 64}]).encode()
    )
    for rec in records:
        st = rec.path.stat()
        old_style.update(f"{rec.path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    assert manifest_hash(records, DecodeSpec(size=24)) == old_style.hexdigest()
    assert manifest_hash(records, DecodeSpec(size=24, cell_crop=2.0)) != old_style.hexdigest()
    assert (
        manifest_hash(records, stain_spec(DecodeSpec(size=24), "reinhard", records)) != old_style.hexdigest()
    )


STAIN_NUMBERS = {"reinhard": 6, "macenko": 8}  # the reference: LAB means and stds; two stain vectors, maxima


@pytest.mark.parametrize("method", STAIN_NUMBERS)
def test_cache_entries_equal_what_a_saved_models_decoding_makes_of_the_file(
    tmp_path: Path, method: str
) -> None:
    write_images(tmp_path / "imgs", 4, (50, 70))
    records = scan(tmp_path / "imgs")
    spec = stain_spec(DecodeSpec(size=32, cell_crop=2.5), method, records)
    cache = load_or_build(records, spec, cache_dir=tmp_path / "cache", workers=1, progress=False)
    restored = spec_from_extras(json.loads(json.dumps(spec_extras(spec))), image_size=999)
    assert restored == spec
    for i, rec in enumerate(records):
        np.testing.assert_array_equal(cache.images[i], finish_image(decode_rgb(rec.path), restored))
    unnormalised = DecodeSpec(size=32, cell_crop=2.5)
    assert any(  # the normalisation did change pixels
        not np.array_equal(cache.images[i], finish_image(decode_rgb(rec.path), unnormalised))
        for i, rec in enumerate(records)
    )


def test_grey_inputs_carry_the_luma_in_every_channel_and_round_trip_through_a_saved_model(
    tmp_path: Path,
) -> None:
    write_images(tmp_path / "imgs", 3, (40, 60))
    records = scan(tmp_path / "imgs")
    spec = DecodeSpec(size=32, grey=True)
    cache = load_or_build(records, spec, cache_dir=tmp_path / "cache", workers=1, progress=False)
    assert spec_from_extras(json.loads(json.dumps(spec_extras(spec))), image_size=999) == spec
    images = np.asarray(cache.images)
    assert (images[..., 0] == images[..., 1]).all() and (images[..., 1] == images[..., 2]).all()
    colour = finish_image(decode_rgb(records[0].path), DecodeSpec(size=32))
    luma = colour.astype(float) @ np.array([0.299, 0.587, 0.114])  # ITU-R 601, not one channel
    assert np.abs(images[0, ..., 0] - luma).max() <= 1
    assert manifest_hash(records, spec) != manifest_hash(records, DecodeSpec(size=32))


@pytest.mark.parametrize("method", STAIN_NUMBERS)
def test_a_model_trained_with_normalisation_and_cell_crops_predicts_its_test_images_as_its_run_did(
    tmp_path: Path, method: str
) -> None:
    data = make_synthetic_wbc(tmp_path / "cells", n_per_class=10, size=40)
    split = tmp_path / "split.csv"
    classes = sorted(p.name for p in data.iterdir() if p.is_dir())
    leanmae.split(data, classes=classes, out=split, ratios="0.6,0.2,0.2")
    out = tmp_path / "run"
    tiny_finetune(
        split,
        out,
        epochs=1,
        sets=[
            f"data.stain_norm={method}",
            "data.cell_crop=2.0",
            "augment.hed=0.05",
            "augment.brightness=0.1",
            "augment.blur=0.5",
            "data.grey=true",
        ],
    )
    saved = json.loads((out / "model" / "leanmae.json").read_text())
    assert (
        saved["grey"] is True
        and saved["cell_crop"] == 2.0
        and saved["stain_norm"]["method"] == method
        and len(saved["stain_norm"]["reference"]) == STAIN_NUMBERS[method]
    )
    _, items = read_manifest(split)
    files = [data / it.relpath for it in items if it.split == "test"]
    rows = leanmae.predict(out, files, device="cpu", progress=False)
    run = {r["path"]: r for r in read_csv(out / "predictions.csv")}
    for row, file in zip(rows, files, strict=True):
        same = run[f"{file.parent.name}/{file.name}"]
        assert row["predicted_label"] == same["predicted_label"]
        assert row["confidence"] == pytest.approx(float(same["confidence"]), abs=1e-4)
