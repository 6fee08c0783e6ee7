"""The robustness benchmark's controlled shifts: shapes and ranges kept, deterministic per image, the
strength rising as named, the zoom cropping the centre by its factor, the colour transfer on target."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import smooth_image
from leanmae.data.stain import lab_stats
from leanmae.evaluation.shifts import (
    HED_LEVELS,
    LC25000_LUNG_REFERENCE,
    SHIFTS,
    Shift,
    apply_shift,
    image_keys,
    zoom_in,
)

NAMES = [f"class/img_{i}.png" for i in range(4)]


@pytest.fixture
def batch() -> np.ndarray:
    return np.stack([smooth_image(np.random.default_rng(i), 40, 40) for i in range(4)])


def test_the_benchmark_names_every_shift_once() -> None:
    names = [s.name for s in SHIFTS]
    assert names == [
        "clean",
        "hed-0.05",
        "hed-0.1",
        "hed-0.2",
        "colour-transfer",
        "zoom-1.5x",
        "zoom-2x",
        "zoom-3x",
    ]


@pytest.mark.parametrize("shift", SHIFTS, ids=lambda s: s.name)
def test_every_shift_keeps_shape_and_uint8_range_and_changes_the_images(
    shift: Shift, batch: np.ndarray
) -> None:
    out = apply_shift(batch, shift, image_keys(NAMES), LC25000_LUNG_REFERENCE)
    assert out.shape == batch.shape and out.dtype == np.uint8
    assert 0 < out.mean() < 255, "not saturated to black or white"
    if shift.kind == "clean":
        assert np.array_equal(out, batch)
    else:
        assert np.abs(out.astype(int) - batch).mean() > 0.5


@pytest.mark.parametrize("shift", [s for s in SHIFTS if s.kind != "clean"], ids=lambda s: s.name)
def test_a_shift_is_the_same_for_an_image_whatever_its_batch_and_position(
    shift: Shift, batch: np.ndarray
) -> None:
    keys = image_keys(NAMES)
    whole = apply_shift(batch, shift, keys, LC25000_LUNG_REFERENCE)
    again = apply_shift(batch, shift, keys, LC25000_LUNG_REFERENCE)
    reversed_ = apply_shift(batch[::-1].copy(), shift, keys[::-1].copy(), LC25000_LUNG_REFERENCE)[::-1]
    alone = apply_shift(batch[2:3], shift, keys[2:3], LC25000_LUNG_REFERENCE)
    assert np.array_equal(whole, again)
    assert np.array_equal(whole, reversed_)
    assert np.array_equal(whole[2:3], alone)


def test_image_keys_follow_the_name_not_the_position() -> None:
    assert np.array_equal(image_keys(NAMES)[::-1], image_keys(NAMES[::-1]))
    assert len(set(image_keys(NAMES).tolist())) == len(NAMES)


def test_hed_shifts_move_images_further_as_the_strength_rises(batch: np.ndarray) -> None:
    keys = image_keys(NAMES)
    moved = [
        np.abs(apply_shift(batch, Shift("hed", h), keys, LC25000_LUNG_REFERENCE).astype(int) - batch).mean()
        for h in HED_LEVELS
    ]
    assert moved == sorted(moved) and moved[-1] > 2 * moved[0]


def test_hed_shifts_differ_between_images(batch: np.ndarray) -> None:
    same = np.repeat(batch[:1], 4, axis=0)
    out = apply_shift(same, Shift("hed", 0.2), image_keys(NAMES), LC25000_LUNG_REFERENCE)
    assert not np.array_equal(out[0], out[1])


@pytest.mark.parametrize("factor", [1.5, 2.0, 3.0])
def test_zoom_shows_the_centre_square_of_side_size_over_factor(factor: float) -> None:
    size = 60
    columns = torch.linspace(0, 1, size).view(1, 1, 1, size).expand(1, 3, size, size)
    rows = torch.linspace(0, 1, size).view(1, 1, size, 1).expand(1, 3, size, size)
    image = torch.cat([columns, rows], 0)  # x gradient, y gradient
    zoomed = zoom_in(image, factor)
    side = round(size / factor)
    start = (size - side) // 2
    expect_low, expect_high = image[0, 0, 0, start].item(), image[0, 0, 0, start + side - 1].item()
    assert zoomed.shape == image.shape
    assert zoomed[0, 0, 0, 0].item() == pytest.approx(expect_low, abs=0.5 / size)
    assert zoomed[0, 0, 0, -1].item() == pytest.approx(expect_high, abs=0.5 / size)
    assert zoomed[1, 0, 0, 0].item() == pytest.approx(expect_low, abs=0.5 / size)
    assert zoomed[1, 0, -1, 0].item() == pytest.approx(expect_high, abs=0.5 / size)


def test_a_2x_zoom_of_a_framed_square_shows_only_the_square() -> None:
    image = np.zeros((1, 40, 40, 3), dtype=np.uint8)
    image[:, 10:30, 10:30] = (200, 40, 120)  # the centre half
    out = apply_shift(image, Shift("zoom", 2.0), image_keys(NAMES[:1]), LC25000_LUNG_REFERENCE)
    assert np.all(out == (200, 40, 120))


def test_the_colour_transfer_gives_every_image_the_reference_colour_statistics(batch: np.ndarray) -> None:
    out = apply_shift(batch, Shift("colour"), image_keys(NAMES), LC25000_LUNG_REFERENCE)
    for image in out:
        mean, std = lab_stats(image)
        assert mean == pytest.approx(LC25000_LUNG_REFERENCE[:3], abs=3.0)
        assert std == pytest.approx(LC25000_LUNG_REFERENCE[3:], abs=3.0)
