"""Images decoded right or refused by name: float TIFFs scaled by their range, multi-frame files
refused rather than read as their first frame, and files that give no tile counted and reported.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import tiny_pretrain, write_images
from leanmae.commands.pretrain import split_pool
from leanmae.data.cache import DecodeSpec, load_or_build
from leanmae.data.decode import decode_rgb
from leanmae.data.sources import scan
from leanmae.errors import BadImageError, DataError

GRADIENT = np.linspace(0.0, 1.0, 32 * 32, dtype=np.float32).reshape(32, 32)


def _float_tiff(path: Path, values: np.ndarray) -> Path:
    Image.fromarray(values.astype(np.float32), mode="F").save(path)
    return path


# --------------------------------------------------------------------------- float and 16-bit pixels


def test_a_float_tiff_with_values_0_to_1_decodes_to_the_image_not_black(tmp_path: Path) -> None:
    rgb = decode_rgb(_float_tiff(tmp_path / "float01.tif", GRADIENT))
    expected = np.round(GRADIENT * 255).astype(np.uint8)
    assert rgb.shape == (32, 32, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[..., 0], expected)
    assert rgb.max() == 255 and rgb.mean() == pytest.approx(127.5, abs=1)


def test_a_float_tiff_with_values_0_to_255_is_taken_as_8_bit(tmp_path: Path) -> None:
    rgb = decode_rgb(_float_tiff(tmp_path / "float255.tif", GRADIENT * 200))
    np.testing.assert_array_equal(rgb[..., 1], np.round(GRADIENT * 200).astype(np.uint8))


def test_a_float_tiff_with_values_up_to_65535_is_taken_as_16_bit(tmp_path: Path) -> None:
    rgb = decode_rgb(_float_tiff(tmp_path / "float16.tif", GRADIENT * 65535))
    np.testing.assert_array_equal(rgb[..., 2], np.round(GRADIENT * 255).astype(np.uint8))


@pytest.mark.parametrize("values", [GRADIENT - 0.5, GRADIENT * 1e6], ids=["negative", "beyond-16-bit"])
def test_a_float_tiff_without_a_known_range_is_refused_naming_the_file(
    tmp_path: Path, values: np.ndarray
) -> None:
    path = _float_tiff(tmp_path / "odd.tif", values)
    with pytest.raises(BadImageError, match=r"odd\.tif: F pixel values .* no known range"):
        decode_rgb(path)


def test_a_sixteen_bit_tiff_is_scaled_to_eight_bits(tmp_path: Path) -> None:
    path = tmp_path / "sixteen.tif"
    Image.fromarray((GRADIENT * 65535).astype(np.uint16)).save(path)
    difference = decode_rgb(path)[..., 0].astype(int) - np.round(GRADIENT * 255)
    assert np.abs(difference).max() <= 1  # the uint16 conversion truncates


# --------------------------------------------------------------------------- several frames


def _frames(colours: list[int]) -> list[Image.Image]:
    return [Image.new("RGB", (32, 32), (c, c, c)) for c in colours]


def _multi_frame(path: Path, **options: object) -> Path:
    first, *rest = _frames([0, 255])
    first.save(path, save_all=True, append_images=rest, **options)
    return path


@pytest.mark.parametrize(
    ("name", "options"),
    [("pages.tif", {}), ("animated.png", {"duration": 100}), ("animated.gif", {"duration": 100})],
    ids=["multi-page-tiff", "apng", "animated-gif"],
)
def test_a_file_of_several_frames_is_refused_naming_it_instead_of_using_its_first_frame(
    tmp_path: Path, name: str, options: dict[str, object]
) -> None:
    path = _multi_frame(tmp_path / name, **options)
    assert Image.open(path).n_frames == 2
    with pytest.raises(BadImageError, match=re.escape(f"{name}: holds 2 frames")):
        decode_rgb(path)


def test_a_single_page_tiff_still_decodes(tmp_path: Path) -> None:
    path = tmp_path / "one.tif"
    _frames([90])[0].save(path)
    assert decode_rgb(path).max() == 90


def test_with_skip_bad_a_multi_page_tiff_is_left_out_and_listed(tmp_path: Path) -> None:
    write_images(tmp_path / "pool", 3, 40)
    _multi_frame(tmp_path / "pool" / "stack.tif")
    records = scan(tmp_path / "pool")
    spec, cache_dir = DecodeSpec(size=32), tmp_path / "cache"
    with pytest.raises(BadImageError, match="stack.tif: holds 2 frames"):
        load_or_build(records, spec, cache_dir, workers=1, progress=False)
    cache = load_or_build(records, spec, cache_dir, skip_bad=True, workers=1, progress=False)
    assert len(cache) == 3 and len(cache.skipped) == 1 and "stack.tif: holds 2 frames" in cache.skipped[0]


# --------------------------------------------------------------------------- files that give no tile


def _mixed_pool(folder: Path, small: list[int]) -> list[Path]:
    """Six files; those at positions ``small`` are 40 px (no 64 px tile), the others 128 px (four tiles)."""
    paths = []
    for i in range(6):
        size = 40 if i in small else 128
        paths += write_images(folder / f"f{i}", 1, size, seed=i)
    return paths


TILED = DecodeSpec(size=32, tile=64, min_tile_size=64)


def test_files_that_give_no_tile_are_counted_and_named(tmp_path: Path) -> None:
    paths = _mixed_pool(tmp_path / "pool", small=[1, 4])
    cache = load_or_build(scan(tmp_path / "pool"), TILED, tmp_path / "cache", workers=1, progress=False)
    assert len(cache) == 16
    assert [entry.split(": ")[0] for entry in cache.untiled] == [str(paths[1]), str(paths[4])]
    assert "no tile of at least 64 px with --tile 64" in cache.untiled[0]
    assert cache.skipped == []


def test_validation_never_falls_back_to_a_training_image_when_the_held_out_file_gives_no_tile(
    tmp_path: Path,
) -> None:
    held_out = int(np.random.default_rng(20220511).permutation(6)[0])  # the file split_pool holds out first
    _mixed_pool(tmp_path / "pool", small=[held_out])
    cache = load_or_build(scan(tmp_path / "pool"), TILED, tmp_path / "cache", workers=1, progress=False)
    pool = split_pool(cache, val_fraction=0.05)
    assert len(pool.val) > 0
    assert not set(pool.val.tolist()) & set(pool.train.tolist()), "a validation entry is also trained on"
    assert set(cache.sources[pool.val].tolist()).isdisjoint(cache.sources[pool.train].tolist())


def test_a_pool_with_a_single_usable_file_is_refused_rather_than_validated_on_its_training_tiles(
    tmp_path: Path,
) -> None:
    _mixed_pool(tmp_path / "pool", small=[0, 1, 2, 3, 4])
    cache = load_or_build(scan(tmp_path / "pool"), TILED, tmp_path / "cache", workers=1, progress=False)
    with pytest.raises(
        DataError, match=r"at least two usable image files .* found 1 of 6 \(0 bad, 5 without a tile\)"
    ):
        split_pool(cache, val_fraction=0.05)


def test_pretraining_lists_the_files_without_a_tile_in_run_json(tmp_path: Path) -> None:
    paths = _mixed_pool(tmp_path / "pool", small=[2])
    tiny_pretrain(tmp_path / "pool", tmp_path / "run", epochs=1, tile=64, sets=["data.min_tile_size=64"])
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert [entry.split(": ")[0] for entry in info["files_without_tiles"]] == [str(paths[2])]
    assert info["images"]["train"] + info["images"]["val"] == 20
