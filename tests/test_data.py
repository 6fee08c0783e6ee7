"""Data: finding images, tiling, the decode-once cache, batch order and batch augmentation."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import leanmae.data.cache as cache_module
from helpers import write_images
from leanmae.data.augment import AUGMENT_DRAWS, random_resized_crop, to_float
from leanmae.data.batches import epoch_order, gather, split_batches
from leanmae.data.cache import DecodeSpec, load_or_build
from leanmae.data.decode import decode_rgb, square_resize, tile_boxes
from leanmae.data.pool import collect
from leanmae.data.rand import uniform
from leanmae.data.sources import parse_source, scan
from leanmae.errors import DataError

# --------------------------------------------------------------------------- sources


@pytest.fixture
def class_root(tmp_path: Path) -> Path:
    """root/alpha (3 images), root/beta (2 images), root/empty (no images)."""
    root = tmp_path / "classes"
    write_images(root / "alpha", 3, 40, seed=1)
    write_images(root / "beta", 2, 40, seed=2)
    (root / "empty").mkdir()
    (root / "empty" / "notes.txt").write_text("not an image")
    return root


def test_scan_finds_images_recursively_with_their_class_folder(class_root: Path) -> None:
    records = scan(class_root)
    assert len(records) == 5
    assert [r.label for r in records] == ["alpha"] * 3 + ["beta"] * 2
    assert records[0].relpath == "alpha/img_0000.png"


def test_scan_with_a_class_filter_keeps_only_those_classes(class_root: Path) -> None:
    assert {r.label for r in scan(class_root, ["beta"])} == {"beta"}


def test_source_spec_with_classes_is_parsed() -> None:
    assert parse_source("/data/pbc:erythroblast, ig") == (Path("/data/pbc"), ["erythroblast", "ig"])
    assert parse_source("/data/pbc") == (Path("/data/pbc"), None)


def test_collect_mixes_several_sources_in_order(class_root: Path) -> None:
    records = collect([f"{class_root}:beta", f"{class_root}:alpha"])
    assert [r.label for r in records] == ["beta"] * 2 + ["alpha"] * 3


def test_class_filter_naming_a_missing_class_suggests_the_nearest(class_root: Path) -> None:
    with pytest.raises(DataError, match=r"no class folder 'alpah'.*did you mean 'alpha'"):
        collect([f"{class_root}:alpah"])


def test_empty_class_folder_named_in_a_filter_is_a_data_error(class_root: Path) -> None:
    with pytest.raises(DataError, match="empty.*holds no images"):
        scan(class_root, ["alpha", "empty"])


def test_empty_class_folder_in_a_labelled_layout_is_a_data_error(class_root: Path) -> None:
    with pytest.raises(DataError, match="empty"):
        scan(class_root, labelled=True)


def test_folder_without_images_is_a_data_error(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "readme.txt").write_text("hello")
    with pytest.raises(DataError, match="no images found"):
        scan(tmp_path / "docs")


def test_missing_folder_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        scan(tmp_path / "nowhere")


def test_no_sources_at_all_is_a_data_error() -> None:
    with pytest.raises(DataError, match="no data given"):
        collect([])


def test_symlink_leading_outside_the_data_folder_is_refused(tmp_path: Path) -> None:
    outside = write_images(tmp_path / "outside", 1, 40)[0]
    root = tmp_path / "root"
    write_images(root, 1, 40)
    (root / "link.png").symlink_to(outside)
    with pytest.raises(DataError, match="symbolic link"):
        scan(root)


# --------------------------------------------------------------------------- tiling


def test_tile_500_cuts_a_2000_pixel_image_into_16_tiles() -> None:
    boxes = tile_boxes(2000, 2000, 500, None, 64)
    assert len(boxes) == 16
    assert all((right - left, bottom - top) == (500, 500) for left, top, right, bottom in boxes)
    assert boxes[0] == (0, 0, 500, 500) and boxes[-1] == (1500, 1500, 2000, 2000)


def test_tiles_cover_the_image_without_overlap() -> None:
    boxes = tile_boxes(2000, 1000, 500, None, 64)
    covered = np.zeros((1000, 2000), dtype=int)
    for left, top, right, bottom in boxes:
        covered[top:bottom, left:right] += 1
    assert (covered == 1).all()


def test_grid_2x2_cuts_four_equal_quadrants() -> None:
    assert tile_boxes(2000, 2000, None, "2x2", 64) == [
        (0, 0, 1000, 1000),
        (1000, 0, 2000, 1000),
        (0, 1000, 1000, 2000),
        (1000, 1000, 2000, 2000),
    ]


def test_grid_is_rows_by_columns() -> None:
    boxes = tile_boxes(300, 200, None, "2x3", 10)
    assert len(boxes) == 6
    assert all((right - left, bottom - top) == (100, 100) for left, top, right, bottom in boxes)


def test_without_tile_or_grid_the_whole_image_is_one_box() -> None:
    assert tile_boxes(640, 480, None, None, 64) == [(0, 0, 640, 480)]


def test_edge_tiles_under_the_minimum_size_are_dropped() -> None:
    # 2030 = 4 x 500 + 30: the 30 px edge column is dropped, the full tiles stay
    assert len(tile_boxes(2030, 2000, 500, None, 64)) == 16
    # a 100 px edge is above the minimum and kept (shorter side 100 >= 64)
    boxes = tile_boxes(2100, 2000, 500, None, 64)
    assert len(boxes) == 20
    assert (2000, 0, 2100, 500) in boxes


def test_tiles_smaller_than_the_minimum_everywhere_leave_nothing() -> None:
    assert tile_boxes(100, 100, None, "4x4", 64) == []


def test_tile_and_grid_together_are_an_error() -> None:
    with pytest.raises(ValueError, match="one of them"):
        tile_boxes(2000, 2000, 500, "2x2", 64)


@pytest.mark.parametrize("grid", ["2by2", "2x", "x2", "2x2x2", "0x2", "-1x2"])
def test_bad_grid_string_is_an_error_naming_it(grid: str) -> None:
    with pytest.raises(ValueError, match="--grid"):
        tile_boxes(2000, 2000, None, grid, 64)


def test_square_resize_centre_crops_then_resizes() -> None:
    image = np.zeros((60, 100, 3), dtype=np.uint8)
    image[:, 20:80] = 200  # the centre 60 x 60 square
    out = square_resize(image, 30)
    assert out.shape == (30, 30, 3) and out.dtype == np.uint8
    assert (out == 200).all()


# --------------------------------------------------------------------------- cache


@pytest.fixture
def decode_counter(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Paths decoded by the cache builder (it decodes in this process for fewer than 64 files)."""
    calls: list[str] = []
    original = cache_module._decode_file

    def counting(path: str, spec: DecodeSpec):
        calls.append(path)
        return original(path, spec)

    monkeypatch.setattr(cache_module, "_decode_file", counting)
    return calls


def test_cache_decodes_once_and_reuses_the_same_folder(
    image_folder: Path, tmp_path: Path, decode_counter: list[str]
) -> None:
    records = scan(image_folder)
    spec = DecodeSpec(size=40)
    first = load_or_build(records, spec, tmp_path / "cache", workers=1, progress=False)
    assert len(decode_counter) == len(records)
    second = load_or_build(records, spec, tmp_path / "cache", workers=1, progress=False)
    assert len(decode_counter) == len(records), "the second call must not decode again"
    assert second.key == first.key
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [first.key[:24]]
    np.testing.assert_array_equal(np.asarray(first.images), np.asarray(second.images))


def test_cache_entries_are_rgb_uint8_at_the_working_size(image_folder: Path, tmp_path: Path) -> None:
    records = scan(image_folder)
    cache = load_or_build(records, DecodeSpec(size=40), tmp_path / "cache", workers=1, progress=False)
    assert cache.images.shape == (len(records), 40, 40, 3)
    assert cache.images.dtype == np.uint8
    np.testing.assert_array_equal(cache.images[3], square_resize(decode_rgb(records[3].path), 40))


def test_cache_uses_leanmae_cache_env_by_default(image_folder: Path, _isolated_cache: Path) -> None:
    cache = load_or_build(scan(image_folder), DecodeSpec(size=40), workers=1, progress=False)
    assert (_isolated_cache / cache.key[:24] / "index.json").exists()


def test_changed_file_invalidates_the_cache(
    image_folder: Path, tmp_path: Path, decode_counter: list[str]
) -> None:
    records = scan(image_folder)
    spec = DecodeSpec(size=40)
    before = load_or_build(records, spec, tmp_path / "cache", workers=1, progress=False)
    old_entry = np.array(before.images[5])

    changed = records[5].path
    stat = changed.stat()
    Image.fromarray(np.full((48, 48, 3), 17, dtype=np.uint8)).save(changed)
    os.utime(
        changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000)
    )  # a later mtime, whatever the clock granularity
    decode_counter.clear()

    after = load_or_build(records, spec, tmp_path / "cache", workers=1, progress=False)
    assert after.key != before.key
    assert len(decode_counter) == len(records)
    assert (after.images[5] == 17).all()
    assert not np.array_equal(old_entry, after.images[5])


def test_touched_file_alone_invalidates_the_cache(image_folder: Path, tmp_path: Path) -> None:
    records = scan(image_folder)
    spec = DecodeSpec(size=40)
    before = load_or_build(records, spec, tmp_path / "cache", workers=1, progress=False)
    stat = records[0].path.stat()
    os.utime(records[0].path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    assert load_or_build(records, spec, tmp_path / "cache", workers=1, progress=False).key != before.key


@pytest.mark.parametrize(
    "other",
    [
        DecodeSpec(size=32),
        DecodeSpec(size=40, grid="2x2", min_tile_size=8),
        DecodeSpec(size=40, tile=24, min_tile_size=8),
    ],
)
def test_different_decoding_settings_make_a_different_cache(
    image_folder: Path, tmp_path: Path, other: DecodeSpec
) -> None:
    records = scan(image_folder)
    base = load_or_build(records, DecodeSpec(size=40), tmp_path / "cache", workers=1, progress=False)
    changed = load_or_build(records, other, tmp_path / "cache", workers=1, progress=False)
    assert changed.key != base.key
    assert changed.images.shape[1:] == (other.size, other.size, 3)
    assert len(list((tmp_path / "cache").iterdir())) == 2


def test_tiles_are_recorded_with_source_index_and_box(tmp_path: Path) -> None:
    paths = write_images(tmp_path / "slides", 2, (120, 200))  # height 120, width 200
    records = scan(tmp_path / "slides")
    cache = load_or_build(
        records, DecodeSpec(size=32, tile=64, min_tile_size=64), tmp_path / "cache", workers=1, progress=False
    )
    # columns 0, 64, 128 are full; the 8 px column and the 56 px row are under the minimum and dropped
    boxes = [(0, 0, 64, 64), (64, 0, 128, 64), (128, 0, 192, 64)]
    assert len(cache) == 6
    assert cache.sources.tolist() == [0, 0, 0, 1, 1, 1]
    assert [tuple(b) for b in cache.boxes.tolist()] == boxes * 2
    rgb = decode_rgb(paths[1])
    np.testing.assert_array_equal(cache.images[4], square_resize(rgb[0:64, 64:128], 32))


def test_image_too_small_for_any_tile_leaves_no_usable_images(tmp_path: Path) -> None:
    write_images(tmp_path / "small", 2, 40)
    with pytest.raises(DataError, match="no usable images"):
        load_or_build(
            scan(tmp_path / "small"),
            DecodeSpec(size=32, tile=500, min_tile_size=64),
            tmp_path / "cache",
            workers=1,
            progress=False,
        )
    assert not list((tmp_path / "cache").glob("*")), "a failed build leaves no folder behind"


def test_parallel_decoding_gives_the_same_cache_as_serial(tmp_path: Path) -> None:
    write_images(tmp_path / "many", 70, 24)  # 64 or more files use the process pool
    records = scan(tmp_path / "many")
    serial = load_or_build(records, DecodeSpec(size=16), tmp_path / "serial", workers=1, progress=False)
    parallel = load_or_build(records, DecodeSpec(size=16), tmp_path / "parallel", workers=2, progress=False)
    np.testing.assert_array_equal(np.asarray(serial.images), np.asarray(parallel.images))
    assert serial.sources.tolist() == parallel.sources.tolist()


# --------------------------------------------------------------------------- batches


def test_epoch_order_is_deterministic_for_seed_and_epoch() -> None:
    indices = np.arange(100)
    np.testing.assert_array_equal(epoch_order(indices, 3, 7), epoch_order(indices, 3, 7))


def test_epoch_order_is_a_permutation_that_differs_between_epochs_and_seeds() -> None:
    indices = np.arange(100) * 2
    a, b, c = epoch_order(indices, 0, 7), epoch_order(indices, 1, 7), epoch_order(indices, 0, 8)
    assert sorted(a.tolist()) == indices.tolist()
    assert not np.array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize(("n", "world"), [(12, 3), (10, 3), (7, 4), (5, 8)])
def test_ranks_get_equal_shards_that_cover_every_index(n: int, world: int) -> None:
    indices = np.arange(100, 100 + n)
    shards = [epoch_order(indices, 2, 0, rank, world) for rank in range(world)]
    per_rank = -(-n // world)
    assert all(len(s) == per_rank for s in shards), "every process takes the same number of steps"
    merged = np.concatenate(shards)
    assert set(merged.tolist()) == set(indices.tolist())
    padding = per_rank * world - n
    counts = np.bincount(merged - 100)
    assert (counts >= 1).all() and counts.sum() - n == padding
    if padding == 0:
        assert len(set(merged.tolist())) == n, "without padding the shards are disjoint"


def test_shards_are_the_single_process_order_dealt_round_robin() -> None:
    indices = np.arange(12)
    full = epoch_order(indices, 5, 1)
    shards = [epoch_order(indices, 5, 1, rank, 3) for rank in range(3)]
    np.testing.assert_array_equal(np.stack(shards, axis=1).reshape(-1), full)


def test_weighted_order_draws_in_proportion_to_weights() -> None:
    indices = np.arange(4)
    order = epoch_order(indices, 0, 0, weights=np.array([0.0, 0.0, 1.0, 0.0]))
    assert order.tolist() == [2, 2, 2, 2]


@pytest.mark.parametrize(
    ("n", "batch", "drop_last", "sizes"),
    [
        (10, 4, True, [4, 4]),
        (10, 4, False, [4, 4, 2]),
        (3, 16, True, [3]),
        (3, 16, False, [3]),
        (16, 16, True, [16]),
    ],
)
def test_split_batches_never_returns_zero_batches(
    n: int, batch: int, drop_last: bool, sizes: list[int]
) -> None:
    batches = split_batches(np.arange(n), batch, drop_last)
    assert [len(b) for b in batches] == sizes
    assert np.concatenate(batches).tolist() == list(range(sum(sizes)))


def test_gather_returns_rows_in_batch_order() -> None:
    images = np.arange(10 * 2 * 2 * 3, dtype=np.uint8).reshape(10, 2, 2, 3)
    batch = np.array([7, 2, 9, 2])
    np.testing.assert_array_equal(gather(images, batch), images[batch])


# --------------------------------------------------------------------------- augmentation


def test_to_float_makes_channels_first_floats_in_unit_range() -> None:
    batch = np.full((2, 5, 6, 3), 255, dtype=np.uint8)
    out = to_float(batch)
    assert out.shape == (2, 3, 5, 6) and out.dtype == torch.float32
    assert torch.all(out == 1.0)


def _images(b: int = 8, size: int = 40) -> torch.Tensor:
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(0))


def _draws(b: int, seed: int) -> np.ndarray:
    return uniform(seed, 0, np.arange(b), AUGMENT_DRAWS)


def test_random_resized_crop_output_shape() -> None:
    out = random_resized_crop(_images(5, 40), 32, (0.2, 1.0), (0.75, 1.333), True, True, _draws(5, 1))
    assert out.shape == (5, 3, 32, 32)
    assert torch.isfinite(out).all()


def test_random_resized_crop_is_deterministic_for_the_same_draws() -> None:
    images = _images()
    args = (32, (0.2, 1.0), (0.75, 1.333), True, True)
    a = random_resized_crop(images, *args, _draws(len(images), 5))
    b = random_resized_crop(images, *args, _draws(len(images), 5))
    c = random_resized_crop(images, *args, _draws(len(images), 6))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_full_crop_without_flips_is_the_identity() -> None:
    images = _images()
    out = random_resized_crop(images, 40, (1.0, 1.0), (1.0, 1.0), False, False, _draws(len(images), 0))
    torch.testing.assert_close(out, images, atol=1e-5, rtol=0)


def test_crop_shift_zero_takes_the_centre_and_one_moves_crops_off_it() -> None:
    images = _images(16)
    centre = images[:, :, 10:30, 10:30]  # a quarter of the area, square, in the middle
    args = (20, (0.25, 0.25), (1.0, 1.0), False, False, _draws(len(images), 3))
    torch.testing.assert_close(random_resized_crop(images, *args, shift=0.0), centre, atol=1e-5, rtol=0)
    moved = random_resized_crop(images, *args, shift=1.0)
    assert all(not torch.allclose(m, c, atol=1e-3) for m, c in zip(moved, centre, strict=True))


def test_horizontal_flips_really_flip() -> None:
    images = _images(32)
    out = random_resized_crop(images, 40, (1.0, 1.0), (1.0, 1.0), True, False, _draws(len(images), 0))
    flipped = []
    for original, result in zip(images, out, strict=True):
        if torch.allclose(result, original, atol=1e-5):
            flipped.append(False)
        else:
            torch.testing.assert_close(result, original.flip(-1), atol=1e-5, rtol=0)
            flipped.append(True)
    assert any(flipped) and not all(flipped), "about half the images are flipped"


def test_vertical_flips_really_flip() -> None:
    images = _images(32)
    out = random_resized_crop(images, 40, (1.0, 1.0), (1.0, 1.0), False, True, _draws(len(images), 0))
    flipped = []
    for original, result in zip(images, out, strict=True):
        if torch.allclose(result, original, atol=1e-5):
            flipped.append(False)
        else:
            torch.testing.assert_close(result, original.flip(-2), atol=1e-5, rtol=0)
            flipped.append(True)
    assert any(flipped) and not all(flipped)


def test_both_flips_give_one_of_the_four_orientations() -> None:
    images = _images(32)
    out = random_resized_crop(images, 40, (1.0, 1.0), (1.0, 1.0), True, True, _draws(len(images), 0))
    seen = set()
    for original, result in zip(images, out, strict=True):
        variants = {
            "none": original,
            "h": original.flip(-1),
            "v": original.flip(-2),
            "hv": original.flip(-1).flip(-2),
        }
        match = [name for name, v in variants.items() if torch.allclose(result, v, atol=1e-5)]
        assert len(match) == 1
        seen.add(match[0])
    assert seen == {"none", "h", "v", "hv"}


def test_crop_of_a_constant_image_stays_constant() -> None:
    images = torch.full((4, 3, 40, 40), 0.25)
    out = random_resized_crop(images, 32, (0.2, 1.0), (0.75, 1.333), True, True, _draws(len(images), 0))
    torch.testing.assert_close(out, torch.full_like(out, 0.25))
