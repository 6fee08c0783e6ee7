"""Damaged or wrong-kind files fail in one line: a JPEG whose scan data was damaged behind an intact end
marker, a FIFO or socket where an image or manifest should be (never opened, so nothing blocks), a
manifest saved in another encoding than UTF-8, and a MedMNIST file of grayscale images with a channel
axis (accepted)."""

from __future__ import annotations

import io
import os
import signal
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import leanmae
from helpers import smooth_image, write_images
from leanmae.cli import main
from leanmae.data.decode import decode_rgb
from leanmae.data.medmnist import unpack
from leanmae.data.pool import collect
from leanmae.data.sources import image_files
from leanmae.data.split import file_hash, make_split, read_manifest, verify
from leanmae.errors import BadImageError, DataError

# --------------------------------------------------------------------------- damaged JPEG scan data

LAYOUTS = {
    "baseline": {},
    "progressive": {"progressive": True},
    "restart-markers": {"restart_marker_rows": 1},
}


def _jpeg(layout: str) -> bytes:
    buffer = io.BytesIO()
    image = Image.fromarray(smooth_image(np.random.default_rng(0), 64, 64))
    image.save(buffer, "JPEG", quality=90, **LAYOUTS[layout])
    return buffer.getvalue()


def _first_scan_end(data: bytes) -> int:
    """Where the first scan's data ends: at the first marker that is neither stuffing nor a restart."""
    sos = data.index(b"\xff\xda")
    pos = sos + 2 + int.from_bytes(data[sos + 2 : sos + 4], "big")
    while True:
        pos = data.index(b"\xff", pos)
        if data[pos + 1] != 0 and not 0xD0 <= data[pos + 1] <= 0xD7:
            return pos
        pos += 2


def _cut_the_scans_tail(data: bytes, end: int, seed: int) -> bytes:
    """The last 8 to 24 bytes of the scan's data are lost: the picture needs data that is not there."""
    lost = int(np.random.default_rng(seed).integers(8, 25))
    return data[: end - lost] + data[end:]


def _garbage_before_the_marker(data: bytes, end: int, seed: int) -> bytes:
    """8 to 24 bytes (never 0xFF) inserted at the scan's end: data the picture never uses."""
    rng = np.random.default_rng(seed)
    extra = rng.integers(0, 255, int(rng.integers(8, 25)), dtype=np.uint8).tobytes()
    return data[:end] + extra + data[end:]


DAMAGE: dict[str, Callable[[bytes, int, int], bytes]] = {
    "tail-lost": _cut_the_scans_tail,
    "garbage-added": _garbage_before_the_marker,
}


@pytest.mark.parametrize(
    ("layout", "damage"),
    [
        (layout, damage)
        for layout in LAYOUTS
        for damage in DAMAGE
        if (layout, damage) != ("progressive", "garbage-added")
    ],
)
def test_a_jpeg_with_damaged_scan_data_behind_an_intact_end_marker_is_refused_naming_it(
    tmp_path: Path, layout: str, damage: str
) -> None:
    """libjpeg only warns about such data and decodes grey or shifted blocks; leanmae must not train on
    them. Five seeded damages of each kind at the end of the first scan (with restart markers, in its
    last interval: data left over inside an earlier interval is skipped at the next marker, unseen; data
    left over in a progressive file is not seen either)."""
    data = _jpeg(layout)
    end = _first_scan_end(data)
    for seed in range(5):
        path = tmp_path / f"{damage}-{seed}.jpg"
        path.write_bytes(DAMAGE[damage](data, end, seed))
        assert path.read_bytes().endswith(b"\xff\xd9")  # the end marker is intact
        with pytest.raises(BadImageError, match="corrupt JPEG") as info:
            decode_rgb(path)
        assert info.value.path == str(path)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_an_intact_jpeg_of_every_layout_still_decodes_to_the_same_pixels(tmp_path: Path, layout: str) -> None:
    path = tmp_path / "intact.jpg"
    path.write_bytes(_jpeg(layout))
    with Image.open(path) as image:
        assert np.array_equal(decode_rgb(path), np.asarray(image.convert("RGB")))


@pytest.mark.parametrize("side", [8, 9, 15, 17, 23, 31, 33])
@pytest.mark.parametrize("subsampling", [0, 1, 2])
def test_intact_jpegs_of_odd_sizes_are_never_taken_for_damaged_ones(
    tmp_path: Path, side: int, subsampling: int
) -> None:
    """Odd sizes leave most of the last block outside the picture: the checks must still see it whole."""
    for seed in range(4):
        path = tmp_path / f"{side}-{subsampling}-{seed}.jpg"
        pixels = smooth_image(np.random.default_rng([side, seed]), side, side + seed)
        Image.fromarray(pixels).save(path, quality=70 + 7 * seed, subsampling=subsampling)
        decode_rgb(path)


def test_a_jpeg_with_no_end_marker_is_still_refused(tmp_path: Path) -> None:
    data = _jpeg("baseline")
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) - 40])
    with pytest.raises(BadImageError, match="corrupt or truncated"):
        decode_rgb(path)


# --------------------------------------------------------------------------- FIFOs, sockets and devices


@contextmanager
def _must_return_within(seconds: float) -> Iterator[None]:
    """Fail instead of hanging: opening a FIFO for reading blocks until a writer comes, which never does."""

    def give_up(*_: Any) -> None:
        raise TimeoutError(f"still blocked after {seconds} s (a FIFO was opened)")

    previous = signal.signal(signal.SIGALRM, give_up)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _fifo(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)
    return path


def _socket(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.close()  # the socket file stays behind
    return path


SPECIAL = {"fifo": (_fifo, "a FIFO"), "socket": (_socket, "a socket")}


def _labelled(tmp_path: Path) -> Path:
    for seed, name in enumerate(("a", "b")):
        write_images(tmp_path / "data" / name, 4, 16, seed=seed)
    return tmp_path / "data"


@pytest.mark.parametrize("kind", SPECIAL)
def test_split_refuses_a_fifo_or_socket_in_a_class_folder_naming_it_without_opening_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    make, words = SPECIAL[kind]
    special = make(_labelled(tmp_path) / "a" / "x.jpg")
    with _must_return_within(5):
        code = main(["split", str(tmp_path / "data"), "--classes", "a,b", "--out", str(tmp_path / "s.csv")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert str(special) in err and words in err
    assert not (tmp_path / "s.csv").exists()


@pytest.mark.parametrize("kind", SPECIAL)
def test_every_reader_of_images_and_manifests_refuses_a_fifo_or_socket_naming_it(
    tmp_path: Path, kind: str
) -> None:
    """Folder scans (pretraining pools, predict's folders), decoding, hashing, manifests, MedMNIST files."""
    make, words = SPECIAL[kind]
    data = _labelled(tmp_path)
    special = make(data / "b" / "y.png")
    manifest = make(tmp_path / "split.csv")
    npz = make(tmp_path / "blood.npz")
    readers: dict[str, Callable[[], Any]] = {
        "pool": lambda: collect([str(data)]),
        "make_split": lambda: make_split(data, ["a", "b"]),
        "predict folder": lambda: image_files([data]),
        "decode": lambda: decode_rgb(special),
        "hash": lambda: file_hash(special),
        "manifest": lambda: read_manifest(manifest),
        "manifest row": lambda: verify(read_manifest(_manifest_of(tmp_path, "b/y.png"))[1], data),
        "npz": lambda: unpack(npz, tmp_path / "cache"),
    }
    for name, read in readers.items():
        with _must_return_within(5), pytest.raises((DataError, BadImageError)) as info:
            read()
        message = str(info.value)
        assert words in message, name
        assert any(str(p) in message for p in (special, manifest, npz)), name


def _manifest_of(tmp_path: Path, relpath: str) -> Path:
    manifest = tmp_path / "listing.csv"
    manifest.write_text(f"path,label,split\n{relpath},b,train\n")
    return manifest


# --------------------------------------------------------------------------- text encodings


def test_a_latin_1_manifest_from_a_spreadsheet_is_one_line_naming_the_file_and_asking_for_utf_8(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_images(tmp_path / "data" / "a", 1, 16)
    manifest = tmp_path / "split.csv"
    manifest.write_bytes("path,label,split\na/img_0000.png,Zellkern größer,train\n".encode("latin-1"))
    with pytest.raises(DataError, match="UTF-8") as info:
        read_manifest(manifest)
    assert str(manifest) in str(info.value)
    assert (
        main(["finetune", "--split", str(manifest), "--out", str(tmp_path / "run"), "--preset", "test"]) == 2
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(manifest) in err and "UTF-8" in err


def test_a_manifest_a_spreadsheet_saved_as_utf_8_with_a_byte_order_mark_reads(tmp_path: Path) -> None:
    manifest = tmp_path / "split.csv"
    manifest.write_bytes("path,label,split\na/x.png,größer,train\n".encode("utf-8-sig"))
    _, items = read_manifest(manifest)
    assert [(it.relpath, it.label) for it in items] == [("a/x.png", "größer")]


# ------------------------------------------------------------------ MedMNIST grayscale with a channel axis


def test_a_medmnist_file_of_grayscale_images_with_a_channel_axis_splits_as_grayscale(tmp_path: Path) -> None:
    arrays = {}
    for s, split in enumerate(("train", "val", "test")):
        images = np.stack([smooth_image(np.random.default_rng([s, i]), 28, 28)[..., 0] for i in range(2 * 3)])
        arrays[f"{split}_images"] = images[..., None]  # N x 28 x 28 x 1
        arrays[f"{split}_labels"] = np.repeat(np.arange(2), 3).reshape(-1, 1).astype(np.uint8)
    npz = tmp_path / "organmnist.npz"
    np.savez(npz, **arrays)
    table = leanmae.split(npz, out=tmp_path / "split.csv")
    assert table["train"] == {"class_0": 3, "class_1": 3}
    root, items = read_manifest(tmp_path / "split.csv")
    item = items[0]
    number = int(Path(item.relpath).stem.rsplit("_", 1)[1])
    rgb = decode_rgb(root / item.relpath)
    assert rgb.shape == (28, 28, 3)
    assert all(np.array_equal(rgb[..., c], arrays[f"{item.split}_images"][number, ..., 0]) for c in range(3))
