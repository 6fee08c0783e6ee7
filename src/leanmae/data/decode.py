"""Decoding one image file to RGB uint8, with a clear error for every way a file can be bad.

Image folders from labs are rarely clean: zero-byte files, truncated uploads, text saved as .png,
16-bit TIFFs from scanners, RGBA screenshots. Every such case either converts to RGB or raises
``BadImageError`` naming the file, so a study never silently trains on a different set of images.
"""

from __future__ import annotations

import stat
import warnings
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


# The colour space libjpeg-turbo decodes each JPEG mode to in the strict check (only its warnings matter).
_JPEG_SPACES = {"L": "GRAY", "CMYK": "CMYK"}
# libjpeg's words for damaged data; other refusals of its TurboJPEG API (an unusual chroma subsampling) are
# about what that API decodes, not about the file, and PIL has decoded the file already.
_DAMAGE = ("Corrupt JPEG data", "Premature end", "Unsupported marker", "Bogus", "Huffman", "Invalid JPEG")


def _check_jpeg_data(path: Path, data: bytes, mode: str) -> None:
    """Refuse a JPEG whose image data libjpeg finds damaged: its "Corrupt JPEG data" and "Premature end"
    warnings become errors (libjpeg-turbo's strict mode, through simplejpeg).

    Why: libjpeg only warns when damaged scan data runs out before the picture is complete (it fills the
    rest with grey) or when data is left over, and PIL never shows those warnings, so a damaged file
    decoded to a garbage picture and trained. Damage that keeps the stream consistent (most flipped bits:
    JPEG's codes fall back into step) cannot be seen without a checksum; for split data the manifest's
    sha256 is that checksum. A JPEG libjpeg-turbo cannot decode at all is left to PIL, which did.
    """
    import simplejpeg  # the libjpeg-turbo wheel: only needed when a JPEG is decoded

    try:
        simplejpeg.decode_jpeg(data, colorspace=_JPEG_SPACES.get(mode, "RGB"), strict=True)
    except ValueError as err:
        if any(words in str(err) for words in _DAMAGE):
            raise BadImageError(path, f"corrupt JPEG: damaged image data ({err})") from None


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
                    _check_jpeg_data(path, path.read_bytes(), image.mode)
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
