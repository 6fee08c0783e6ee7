"""Decoding one image file to RGB uint8, with a clear error for every way a file can be bad.

Image folders from labs are rarely clean: zero-byte files, truncated uploads, text saved as .png,
16-bit TIFFs from scanners, RGBA screenshots. Every such case either converts to RGB or raises
``BadImageError`` naming the file, so a study never silently trains on a different set of images.
"""

from __future__ import annotations

import io
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile

from leanmae.errors import BadImageError, ConfigError, UnsupportedImageError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp"})

# A truncated file must fail loudly, not decode as a grey bottom half.
ImageFile.LOAD_TRUNCATED_IMAGES = False


def _to_eight_bits(values: np.ndarray, mode: str) -> np.ndarray:
    """One-channel 16-bit, 32-bit or float pixels as uint8, scaled by the range their type implies.

    16-bit images (``I;16*``) are divided by 65535. Float (``F``) images whose values all lie in
    0-1 are the usual float convention and are multiplied by 255 (before, a 0-1 float TIFF came out
    black). Other values are taken as 8-bit when they lie in 0-255 and as 16-bit when they lie in
    0-65535 (32-bit ``I`` images too). Anything else (negative values, larger ones, NaN or inf) has
    no range to scale by: it is refused, since stretching each image to its own minimum and maximum
    would silently change contrast from image to image.
    """
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if not (np.isfinite(low) and np.isfinite(high)) or low < 0 or high > 65535:
        raise UnsupportedImageError(
            f"{mode} pixel values {low:g} .. {high:g} have no known range to scale to 8 bits "
            "(leanmae scales 0-1, 0-255 and 0-65535); convert the file to 8-bit RGB"
        )
    if mode.startswith("I;16"):
        top = 65535.0
    elif mode == "F" and high <= 1.0:
        top = 1.0
    else:
        top = 255.0 if high <= 255 else 65535.0
    return np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8)


def pil_to_rgb(image: Image.Image) -> np.ndarray:
    """Any PIL mode to RGB uint8: 16-bit and float scaled to 8 bits (``_to_eight_bits``), alpha on white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        gray = _to_eight_bits(np.asarray(image, dtype=np.float64), image.mode)
        return np.repeat(gray[..., None], 3, axis=2)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


_FILE_KINDS = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFDIR: "a folder",
}


def not_a_regular_file(path: Path | str) -> str | None:
    """What ``path`` is when it is not a regular file ("a FIFO", "a socket", ...), else None.

    Why ask before opening: opening a FIFO for reading blocks until something writes to it, so a named
    pipe saved with an image name made ``leanmae split`` hang for good; a device may never end. Only
    regular files hold images or manifests. A missing path is not this function's concern (None).
    """
    try:
        mode = Path(path).stat().st_mode
    except OSError:
        return None
    return None if stat.S_ISREG(mode) else _FILE_KINDS.get(stat.S_IFMT(mode), "not a regular file")


@dataclass(frozen=True)
class _Layout:
    """What the JPEG checks need of a picture: its frame header (SOFn) and its entropy-coded segments."""

    height_at: int  # offset of the frame's two-byte height
    height: int
    mcu_rows: int  # pixel rows of a minimum coded unit
    huffman: (
        bool  # Huffman-coded (baseline, extended, progressive): libjpeg leaves blocks past the data blank
    )
    sequential: bool  # not progressive: no refinement scans
    segments: list[tuple[int, int]]  # (start, end) of each scan's data and restart interval
    scan_ends: list[int]  # indices into segments of those that close a scan


_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xD8)})  # markers without a length field
_FRAME_MARKERS = frozenset({*range(0xC0, 0xC4), *range(0xC5, 0xC8), *range(0xC9, 0xCC), *range(0xCD, 0xD0)})
_HUFFMAN_FRAMES = frozenset({0xC0, 0xC1, 0xC2})
_SEQUENTIAL_FRAMES = frozenset({0xC0, 0xC1})


def _jpeg_layout(path: Path, data: bytes) -> _Layout:
    """The layout of the first picture in ``data``, found by walking its markers.

    A file that ends inside its image data (no end-of-image marker after it) is truncated.
    """
    frame: dict | None = None
    segments: list[tuple[int, int]] = []
    scan_ends: list[int] = []
    pos = 2  # after the start-of-image marker
    while True:
        pos = data.find(b"\xff", pos)
        while 0 <= pos < len(data) - 1 and data[pos + 1] == 0xFF:  # fill bytes before a marker
            pos += 1
        if pos < 0 or pos + 1 >= len(data):
            raise BadImageError(
                path, "corrupt or truncated JPEG (no end-of-image marker after the image data)"
            )
        marker = data[pos + 1]
        if marker == 0xD9 and frame is not None:
            return _Layout(**frame, segments=segments, scan_ends=scan_ends)
        if marker in _STANDALONE_MARKERS:
            pos += 2
            continue
        after = pos + 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker in _FRAME_MARKERS and frame is None:
            frame = _frame(data, pos)
        if marker == 0xDA:
            segments += _scan_segments(data, after)
            scan_ends.append(len(segments) - 1)
            after = segments[-1][1]
        pos = after


def _frame(data: bytes, at: int) -> dict:
    """The fields of ``_Layout`` that the frame header at ``at`` gives."""
    count = data[at + 9]
    vertical = max(data[at + 11 + 3 * c] & 15 for c in range(count)) if count > 1 else 1
    return {
        "height_at": at + 5,
        "height": int.from_bytes(data[at + 5 : at + 7], "big"),
        "mcu_rows": 8 * vertical,  # a single component has one block per MCU
        "huffman": data[at + 1] in _HUFFMAN_FRAMES,
        "sequential": data[at + 1] in _SEQUENTIAL_FRAMES,
    }


def _scan_segments(data: bytes, start: int) -> list[tuple[int, int]]:
    """(start, end) of the segments of the scan whose data starts at ``start``: cut at each restart marker,
    ended by the first other marker (or the end of the file)."""
    segments, pos = [], start
    while True:
        pos = data.find(b"\xff", pos)
        if pos < 0 or pos + 1 >= len(data):
            return [*segments, (start, len(data))]
        marker = data[pos + 1]
        if marker in (0x00, 0xFF):  # a stuffed 0xFF data byte, or fill before a marker
            pos += 2 if marker == 0x00 else 1
        elif 0xD0 <= marker <= 0xD7:
            segments.append((start, pos))
            start = pos = pos + 2
        else:
            return [*segments, (start, pos)]


# Put before every segment's closing marker to see whether the decoder reads past it: libjpeg fills
# missing data with zero bits, so a decoder that runs short decodes these bytes differently. No 0xFF.
_PADDING = bytes([0xA5, 0x5A]) * 16


def _decode_bytes(data: bytes) -> np.ndarray:
    """A changed copy of a JPEG, decoded; it is at most two MCU rows larger than the file already decoded,
    so PIL's decompression-bomb warning is not repeated for it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return np.asarray(image)


def _padded(data: bytes, layout: _Layout) -> bytes:
    """``data`` with ``_PADDING`` before the marker closing every segment."""
    ends = [end for _, end in layout.segments]
    return _PADDING.join(data[a:b] for a, b in zip([0, *ends], [*ends, len(data)], strict=True))


def _taller_without_last_bytes(data: bytes, layout: _Layout, height: int) -> bytes:
    """``data`` with the frame ``height`` pixels tall and the last data byte of every scan removed (a
    stuffed 0xFF with its 0x00)."""
    pieces, last = [], 0
    for index in layout.scan_ends:
        start, end = layout.segments[index]
        cut = end - (2 if data[end - 2 : end] == b"\xff\x00" else 1) if end > start else end
        pieces.append(data[last:cut])
        last = end
    copy = b"".join([*pieces, data[last:]])
    return copy[: layout.height_at] + height.to_bytes(2, "big") + copy[layout.height_at + 2 :]


def _leftover_data_shows(data: bytes, layout: _Layout) -> bool:
    """Whether some scan holds data after its picture is complete, seen in a copy two MCU rows taller.

    libjpeg decodes the added rows of each scan from whatever follows its picture's data, and once a
    scan runs out of data it leaves every later block empty. With the last data byte of each scan
    removed, a sound scan runs out inside its own picture, so the added rows come out as one flat
    value; data left over decodes into them instead. The two rows below the picture are not looked
    at: upsampling blends them with the picture's last row.
    """
    top = -(-layout.height // layout.mcu_rows) * layout.mcu_rows
    taller = top + 2 * layout.mcu_rows
    if layout.height == 0 or taller > 0xFFFF:
        return False  # height given later (DNL), or no room under the format's limit to look
    added = _decode_bytes(_taller_without_last_bytes(data, layout, taller))[top + 2 : taller]
    return bool((added != added[0, 0]).any())


def _check_jpeg_scans(path: Path, data: bytes, pixels: np.ndarray) -> None:
    """Refuse a JPEG whose scan data does not fit its picture, as libjpeg's "Corrupt JPEG data" warnings do.

    libjpeg only *warns* when damaged scan data runs out before the picture is complete (it fills the
    rest with grey) or when the picture is complete before its data ends (the rest is skipped), and
    PIL never shows those warnings, so a damaged file decoded to a garbage picture and trained. Both
    are seen exactly (pixels equal or not, never a threshold) in changed copies decoded in memory:
    padding put after every segment must change nothing, else the decoder was reading past its data;
    and, in a sequential (not progressive) file, a copy two MCU rows taller must leave them blank
    (``_leftover_data_shows``; a progressive file's refinement scans write into them even so). Damage
    that keeps the stream consistent (most flipped bits: JPEG's codes fall back into step), data left
    over in a restart interval that is not a scan's last or in a progressive scan, cannot be seen
    without a checksum; for split data the manifest's sha256 is that checksum. Arithmetic-coded files
    (rare) are not checked: their decoder reads zeros past the end of a scan instead of leaving blocks
    blank.
    """
    layout = _jpeg_layout(path, data)
    if not layout.huffman:
        return
    if not np.array_equal(_decode_bytes(_padded(data, layout)), pixels):
        raise BadImageError(
            path, "corrupt JPEG: its image data ends before the picture does (damaged scan data)"
        )
    if layout.sequential and _leftover_data_shows(data, layout):
        raise BadImageError(
            path, "corrupt JPEG: the picture ends before its image data does (damaged scan data)"
        )


def _refuse_several_frames(path: Path, image: Image.Image) -> None:
    """A multi-page TIFF or an animated PNG / GIF is refused, naming the file and its frame count.

    Why not take the first frame: which page is "the image" cannot be known. A multi-page TIFF
    from a scanner is often a pyramid (full resolution first, then thumbnails, or the reverse), a
    z-stack or one page per channel, and an animation's first frame is arbitrary; training on
    page 1 would silently use a different picture than the user sees. Refusing works like any bad
    file: ``--skip-bad`` leaves it out and lists it in run.json. (A JPEG in the MPO format, as
    some cameras write, holds its primary picture first by definition and is decoded.)
    """
    frames = getattr(image, "n_frames", 1)
    if frames > 1 and image.format != "MPO":
        raise BadImageError(
            path,
            f"holds {frames} frames (a multi-page {image.format} or an animation); leanmae reads single "
            "pictures: save the page or frame you mean as its own file",
        )


def decode_rgb(path: Path | str) -> np.ndarray:
    """Decode ``path`` to an (H, W, 3) uint8 array or raise BadImageError naming it."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as err:
        raise BadImageError(path, f"cannot be read ({err.strerror})") from err
    kind = not_a_regular_file(path)
    if kind:
        raise BadImageError(path, f"{kind}, not an image file; only regular files are read")
    if size == 0:
        raise BadImageError(path, "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # PIL warns, then errors, above its pixel limit; both mean "decompression bomb".
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                _refuse_several_frames(path, image)
                image.load()
                if image.format in ("JPEG", "MPO"):
                    _check_jpeg_scans(path, path.read_bytes(), np.asarray(image))
                return pil_to_rgb(image)
    except BadImageError:
        raise
    except UnsupportedImageError as err:
        raise BadImageError(path, str(err)) from err
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise BadImageError(path, f"refused as a possible decompression bomb ({err})") from err
    except Image.UnidentifiedImageError as err:
        raise BadImageError(
            path, "not an image PIL can identify (corrupt, or another format under an image name)"
        ) from err
    except (OSError, SyntaxError, ValueError) as err:
        raise BadImageError(path, f"corrupt or truncated image ({err})") from err


def tile_boxes(
    width: int, height: int, tile: int | None, grid: str | None, min_size: int
) -> list[tuple[int, int, int, int]]:
    """Boxes (left, top, right, bottom) that cut a large image into tiles before training.

    ``tile=500`` cuts 500x500 tiles; ``grid="2x2"`` cuts rows x columns equal parts (the seed cut
    its 2000x2000 pRCC slides into four quadrants). Edge pieces or tiles whose shorter side is
    under ``min_size`` are dropped: they would be mostly upsampling artefacts.
    Without either option the whole image is one box.
    """
    if tile is not None and grid:
        raise ConfigError("--tile and --grid cut images two different ways; give one of them")
    if tile is not None and tile < 1:
        raise ConfigError(f"--tile {tile}: must be a positive number of pixels")
    if grid:
        try:
            rows, cols = (int(v) for v in grid.lower().split("x"))
        except ValueError:
            raise ConfigError(f"--grid {grid!r}: expected ROWSxCOLS, for example 2x2") from None
        if rows < 1 or cols < 1:
            raise ConfigError(f"--grid {grid!r}: rows and columns must be at least 1")
        tw, th = width // cols, height // rows
        boxes = [(c * tw, r * th, (c + 1) * tw, (r + 1) * th) for r in range(rows) for c in range(cols)]
    elif tile:
        boxes = [
            (left, top, min(left + tile, width), min(top + tile, height))
            for top in range(0, height, tile)
            for left in range(0, width, tile)
        ]
    else:
        return [(0, 0, width, height)]
    return [b for b in boxes if min(b[2] - b[0], b[3] - b[1]) >= min_size]


def square_resize(rgb: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop to a square, then resize to ``size`` (bicubic when shrinking with antialiasing).

    Cells in PBC and tiles in LC25000 are centred and square already; for other images the
    centre crop keeps the middle, as the usual ViT evaluation transform does.
    """
    h, w = rgb.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = Image.fromarray(rgb[top : top + side, left : left + side])
    if side != size:
        square = square.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=None)
    return np.asarray(square, dtype=np.uint8)
