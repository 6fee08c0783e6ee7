"""Image folders from labs are rarely clean: every bad file is a clear error naming it (or, with
skip_bad, a counted skip), and every odd-but-valid image mode converts to RGB uint8."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from PIL import Image

from helpers import smooth_image, tiny_pretrain, write_images
from leanmae.data.cache import DecodeSpec, load_or_build
from leanmae.data.decode import decode_rgb
from leanmae.data.sources import scan
from leanmae.errors import BadImageError


def _jpeg_bytes(size: int = 64) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(smooth_image(np.random.default_rng(0), size, size)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _png_bytes(size: int = 64) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(smooth_image(np.random.default_rng(0), size, size)).save(buffer, "PNG")
    return buffer.getvalue()


def _random_bytes(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def write_corrupt_header_jpeg(path: Path) -> None:
    """A JPEG start-of-image and APP0 header followed by random bytes."""
    path.write_bytes(_jpeg_bytes()[:20] + _random_bytes(4000))


def write_zero_byte(path: Path) -> None:
    path.write_bytes(b"")


def write_text_as_png(path: Path) -> None:
    path.write_text("this is a lab note saved with an image name\n" * 20)


def write_truncated_png(path: Path) -> None:
    data = _png_bytes()
    path.write_bytes(data[: len(data) // 2])


def write_truncated_jpeg(path: Path) -> None:
    data = _jpeg_bytes()
    path.write_bytes(data[: len(data) // 2])


BAD_FILES: dict[str, tuple[str, Callable[[Path], None], str]] = {
    "corrupt-jpeg-header": ("corrupt.jpg", write_corrupt_header_jpeg, "not an image PIL can identify"),
    "zero-byte": ("empty.jpg", write_zero_byte, "empty file"),
    "text-named-png": ("notes.png", write_text_as_png, "not an image PIL can identify"),
    "truncated-png": ("cut.png", write_truncated_png, "truncated"),
    "truncated-jpeg": ("cut.jpg", write_truncated_jpeg, "truncated"),
}


@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_bad_file_is_a_bad_image_error_naming_the_file(tmp_path: Path, kind: str) -> None:
    name, write, reason = BAD_FILES[kind]
    path = tmp_path / name
    write(path)
    with pytest.raises(BadImageError) as info:
        decode_rgb(path)
    assert info.value.path == str(path)
    assert str(path) in str(info.value)
    assert reason in info.value.reason


def test_corrupt_jpeg_scan_data_is_a_bad_image_error(tmp_path: Path) -> None:
    """Complete JPEG headers (through start-of-scan) followed by random bytes instead of the image data.

    libjpeg only *warns* about corrupt entropy-coded data and fills the rest with grey, so without
    an explicit check this decodes "successfully" into a garbage image and is silently trained on.
    """
    data = _jpeg_bytes()
    start_of_scan = data.index(b"\xff\xda")
    path = tmp_path / "scrambled.jpg"
    path.write_bytes(data[: start_of_scan + 14] + _random_bytes(len(data) - start_of_scan - 14, seed=1))
    with pytest.raises(BadImageError) as info:
        decode_rgb(path)
    assert info.value.path == str(path)


def test_missing_file_is_a_bad_image_error(tmp_path: Path) -> None:
    with pytest.raises(BadImageError, match="cannot be read"):
        decode_rgb(tmp_path / "gone.png")


@pytest.mark.parametrize("pixels", [64 * 64, 40 * 40], ids=["over-twice-the-limit", "just-over-the-limit"])
def test_image_over_the_decompression_bomb_limit_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pixels: int
) -> None:
    side = int(pixels**0.5)
    path = tmp_path / "bomb.png"
    Image.fromarray(np.zeros((side, side, 3), dtype=np.uint8)).save(path)
    monkeypatch.setattr(
        PIL.Image, "MAX_IMAGE_PIXELS", 1000
    )  # PIL warns above 1000 and errors above 2000 pixels
    with pytest.raises(BadImageError, match="decompression bomb") as info:
        decode_rgb(path)
    assert info.value.path == str(path)


# --------------------------------------------------------------------------- bad files in the cache


@pytest.fixture
def folder_with_one_bad_file(tmp_path: Path, request: pytest.FixtureRequest) -> tuple[Path, Path]:
    folder = tmp_path / "mixed"
    write_images(folder, 3, 40)
    name, write, _ = BAD_FILES[request.param]
    bad = folder / f"zz_{name}"
    write(bad)
    return folder, bad


@pytest.mark.parametrize("folder_with_one_bad_file", list(BAD_FILES), indirect=True)
def test_cache_build_stops_at_a_bad_file_naming_it(
    folder_with_one_bad_file: tuple[Path, Path], tmp_path: Path
) -> None:
    folder, bad = folder_with_one_bad_file
    with pytest.raises(BadImageError) as info:
        load_or_build(scan(folder), DecodeSpec(size=32), tmp_path / "cache", workers=1, progress=False)
    assert info.value.path == str(bad)
    assert "--skip-bad" in str(info.value)
    assert not any(p.name.endswith("index.json") for p in (tmp_path / "cache").rglob("*")), (
        "no cache is left that could be read as valid"
    )


@pytest.mark.parametrize("folder_with_one_bad_file", list(BAD_FILES), indirect=True)
def test_skip_bad_leaves_the_file_out_and_lists_it(
    folder_with_one_bad_file: tuple[Path, Path], tmp_path: Path
) -> None:
    folder, bad = folder_with_one_bad_file
    records = scan(folder)
    cache = load_or_build(
        records, DecodeSpec(size=32), tmp_path / "cache", skip_bad=True, workers=1, progress=False
    )
    assert len(cache) == 3
    assert len(cache.skipped) == 1
    assert cache.skipped[0].startswith(f"{bad}: ")
    bad_index = [r.path for r in records].index(bad)
    assert bad_index not in cache.sources.tolist()


def test_a_cache_built_with_skip_bad_still_refuses_the_bad_file_without_it(tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    write_images(folder, 3, 40)
    write_zero_byte(folder / "empty.png")
    records = scan(folder)
    load_or_build(records, DecodeSpec(size=32), tmp_path / "cache", skip_bad=True, workers=1, progress=False)
    with pytest.raises(BadImageError, match="empty.png"):
        load_or_build(
            records, DecodeSpec(size=32), tmp_path / "cache", skip_bad=False, workers=1, progress=False
        )


def test_pretraining_with_skip_bad_records_the_skipped_files_in_run_json(tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    write_images(folder, 12, 40)
    write_text_as_png(folder / "notes.png")
    tiny_pretrain(folder, tmp_path / "run", skip_bad=True, epochs=1)
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert len(info["skipped_files"]) == 1
    assert info["skipped_files"][0].startswith(str(folder / "notes.png"))


def test_pretraining_without_skip_bad_stops_at_the_bad_file(tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    write_images(folder, 12, 40)
    write_text_as_png(folder / "notes.png")
    with pytest.raises(BadImageError, match="notes.png"):
        tiny_pretrain(folder, tmp_path / "run", epochs=1)


# --------------------------------------------------------------------------- modes that are not errors


def _rgb(seed: int = 0, size: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def test_rgb_is_decoded_unchanged(tmp_path: Path) -> None:
    pixels = _rgb()
    Image.fromarray(pixels).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(decode_rgb(tmp_path / "rgb.png"), pixels)


def test_grayscale_becomes_three_equal_channels(tmp_path: Path) -> None:
    gray = _rgb()[..., 0]
    Image.fromarray(gray, mode="L").save(tmp_path / "gray.png")
    out = decode_rgb(tmp_path / "gray.png")
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], gray)


def test_rgba_is_composited_on_white(tmp_path: Path) -> None:
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[0, 0] = (0, 0, 0, 0)  # fully transparent -> white
    rgba[0, 1] = (255, 0, 0, 255)  # opaque red stays red
    rgba[0, 2] = (0, 0, 0, 128)  # half-transparent black -> mid grey
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    out = decode_rgb(tmp_path / "rgba.png")
    assert out.shape == (4, 4, 3) and out.dtype == np.uint8
    assert out[0, 0].tolist() == [255, 255, 255]
    assert out[0, 1].tolist() == [255, 0, 0]
    assert all(abs(v - 127) <= 1 for v in out[0, 2].tolist())


def test_cmyk_becomes_rgb(tmp_path: Path) -> None:
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(
        tmp_path / "cmyk.tif"
    )  # no cyan, full magenta + yellow: red
    out = decode_rgb(tmp_path / "cmyk.tif")
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8
    assert out[0, 0].tolist() == [255, 0, 0]


def test_cmyk_jpeg_becomes_rgb(tmp_path: Path) -> None:
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    out = decode_rgb(tmp_path / "cmyk.jpg")
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8


def test_palette_becomes_rgb(tmp_path: Path) -> None:
    palette = Image.fromarray(_rgb()).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    palette.save(tmp_path / "palette.png")
    out = decode_rgb(tmp_path / "palette.png")
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.asarray(palette.convert("RGB")))


def test_palette_with_transparency_is_composited_on_white(tmp_path: Path) -> None:
    image = Image.new("P", (4, 4), 0)
    image.putpalette([0, 0, 0, 200, 0, 0] + [0] * 762)
    image.putpixel((1, 0), 1)
    image.info["transparency"] = 0
    image.save(tmp_path / "ptrans.png", transparency=0)
    out = decode_rgb(tmp_path / "ptrans.png")
    assert out[0, 0].tolist() == [255, 255, 255]
    assert out[0, 1].tolist() == [200, 0, 0]


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_sixteen_bit_grayscale_is_scaled_to_eight_bits(tmp_path: Path, suffix: str) -> None:
    values = np.zeros((8, 8), dtype=np.uint16)
    values[0, :3] = (0, 32768, 65535)
    Image.fromarray(values).save(tmp_path / f"deep{suffix}")
    with Image.open(tmp_path / f"deep{suffix}") as check:
        assert check.mode == "I;16"
    out = decode_rgb(tmp_path / f"deep{suffix}")
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8
    assert out[0, :3, 0].tolist() == [0, 128, 255]
    assert (out[..., 0] == out[..., 2]).all()


def test_grayscale_with_alpha_is_composited_on_white(tmp_path: Path) -> None:
    la = np.zeros((4, 4, 2), dtype=np.uint8)
    la[..., 0] = 50
    la[0, 0, 1] = 0
    la[0, 1, 1] = 255
    Image.fromarray(la, mode="LA").save(tmp_path / "la.png")
    out = decode_rgb(tmp_path / "la.png")
    assert out[0, 0].tolist() == [255, 255, 255]
    assert out[0, 1].tolist() == [50, 50, 50]


def test_odd_modes_go_through_the_cache_as_rgb(tmp_path: Path) -> None:
    folder = tmp_path / "modes"
    folder.mkdir()
    Image.fromarray(_rgb()[..., 0], mode="L").save(folder / "a_gray.png")
    Image.fromarray(np.dstack([_rgb(), np.full((16, 16), 255, np.uint8)]), mode="RGBA").save(
        folder / "b_rgba.png"
    )
    Image.new("CMYK", (16, 16), (10, 20, 30, 0)).save(folder / "c_cmyk.jpg")
    Image.fromarray(_rgb()).convert("P").save(folder / "d_palette.png")
    Image.fromarray(np.full((16, 16), 40000, dtype=np.uint16)).save(folder / "e_deep.png")
    cache = load_or_build(scan(folder), DecodeSpec(size=16), tmp_path / "cache", workers=1, progress=False)
    assert len(cache) == 5 and cache.skipped == []
    assert cache.images.dtype == np.uint8 and cache.images.shape == (5, 16, 16, 3)
