"""Synthetic blood-smear-like images for the offline demo.

``leanmae demo`` has to run end to end with no network and no real patient data,
in a few seconds on a laptop CPU. This module draws small images that look
roughly like May-Grünwald-Giemsa stained peripheral blood smears:

* :func:`make_synthetic_wbc` writes a labelled, ImageFolder-style data set with
  one white blood cell (WBC) per image, five classes, for the fine-tuning stage;
* :func:`make_synthetic_tiles` writes unlabelled smear-field tiles (mostly red
  cells) for the MAE pretraining stage.

How it draws: every image is built in optical-density (OD) space, the way light
is absorbed by stained material (Beer-Lambert): transmitted colour
``c = exp(-OD)``. Overlapping red cells therefore add their OD and look darker
where they overlap, as on a real slide, while the white cell is composited
*over* the red cells (it lies on top of them). Shapes are soft-edged discs and
ellipses evaluated with numpy coordinate grids inside small bounding boxes, so
there are no per-pixel Python loops; only per-object loops (a few dozen discs
or granules per image). Each image gets a random "stain" (per-channel OD and
RGB gain jitter, mild gaussian noise) drawn from the same distribution for every
class, so the stain alone never reveals the label; morphology and the colours
of the cell's parts do.

Only numpy and Pillow are used. Each image has its own generator seeded from
``(seed, stream, class, index)``, so output is byte-for-byte deterministic for a
seed, and image ``i`` does not change when ``n_per_class``/``n`` changes.

The images are synthetic: they carry no real patient data and are not
suitable for any clinical or scientific conclusion.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["WBC_CLASSES", "make_synthetic_wbc", "make_synthetic_tiles"]

#: The five WBC classes, in label order (alphabetical, as ImageFolder sorts them).
WBC_CLASSES: tuple[str, ...] = ("basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil")

_NOTICE = (
    "SYNTHETIC DATA\n"
    "\n"
    "The images in this folder are synthetic. They were generated procedurally by\n"
    "leanmae (leanmae.data.synthetic) for the offline demo and for tests.\n"
    "They are NOT real patient data, not derived from any patient or slide, and must\n"
    "not be used for any clinical, diagnostic or scientific conclusion.\n"
)

# Stream tags keep the labelled set and the tiles on independent random streams.
_STREAM_WBC = 1
_STREAM_TILES = 2


def _od(rgb: tuple[float, float, float]) -> np.ndarray:
    """Optical density of a transmitted colour (components in (0, 1])."""
    return -np.log(np.asarray(rgb, dtype=np.float32))


# Colours as transmitted light (what the eye sees on a white-lit slide).
_BG = _od((0.96, 0.91, 0.91))  # pale pinkish plasma / glass
_RBC = _od((0.93, 0.64, 0.64)) - _BG  # pale red, added on top of the background

# Per-class cell palettes: cytoplasm, nucleus, granules (None = no coarse granules).
_PALETTE: dict[str, dict[str, np.ndarray | None]] = {
    "basophil": {
        "cyto": _od((0.86, 0.79, 0.91)),
        "nuc": _od((0.55, 0.42, 0.70)),
        "gran": _od((0.20, 0.14, 0.38)),  # dense blue-black
    },
    "eosinophil": {
        "cyto": _od((0.95, 0.86, 0.84)),
        "nuc": _od((0.44, 0.27, 0.58)),
        "gran": _od((0.97, 0.50, 0.33)),  # orange-red
    },
    "lymphocyte": {
        "cyto": _od((0.68, 0.81, 0.95)),  # sky blue
        "nuc": _od((0.31, 0.19, 0.48)),  # dark purple
        "gran": None,
    },
    "monocyte": {
        "cyto": _od((0.78, 0.80, 0.87)),  # grey-blue
        "nuc": _od((0.58, 0.46, 0.73)),  # lighter purple
        "gran": None,
    },
    "neutrophil": {
        "cyto": _od((0.93, 0.85, 0.91)),  # pale pink / lilac
        "nuc": _od((0.40, 0.24, 0.55)),
        "gran": _od((0.80, 0.66, 0.80)),  # fine faint lilac granules
    },
}

# Cell radius relative to the red-cell radius (roughly: RBC 7.5 um, lymphocyte
# 8-10, basophil 10-14, neutrophil 12-15, eosinophil 12-17, monocyte 15-20).
_REL_RADIUS: dict[str, float] = {
    "basophil": 1.55,
    "eosinophil": 1.80,
    "lymphocyte": 1.15,
    "monocyte": 2.15,
    "neutrophil": 1.70,
}


# --------------------------------------------------------------------------- #
# Shape primitives (vectorised over pixels and over objects)
# --------------------------------------------------------------------------- #
def _ellipses(
    shape: tuple[int, int],
    cy: np.ndarray,
    cx: np.ndarray,
    ry: np.ndarray,
    rx: np.ndarray,
    theta: np.ndarray | float = 0.0,
    soft: float = 1.0,
) -> np.ndarray:
    """Soft-edged union (max) of N rotated ellipses as an (H, W) alpha in [0, 1].

    Evaluated only inside the objects' joint bounding box, broadcasting over
    (pixels x objects), so the cost is proportional to the drawn area, not the
    image. ``soft`` is the edge ramp width in pixels (anti-aliasing).
    """
    h, w = shape
    cy, cx, ry, rx = (np.atleast_1d(np.asarray(a, dtype=np.float32)) for a in (cy, cx, ry, rx))
    theta = np.broadcast_to(np.asarray(theta, dtype=np.float32), cy.shape)
    out = np.zeros(shape, dtype=np.float32)
    rmax = np.maximum(ry, rx) + soft + 1.0
    y0 = int(max(0, np.floor((cy - rmax).min())))
    y1 = int(min(h, np.ceil((cy + rmax).max()) + 1))
    x0 = int(max(0, np.floor((cx - rmax).min())))
    x1 = int(min(w, np.ceil((cx + rmax).max()) + 1))
    if y0 >= y1 or x0 >= x1:
        return out
    yy, xx = np.ogrid[y0:y1, x0:x1]
    dy = yy[..., None].astype(np.float32) - cy  # (h, 1, N) -> broadcasts
    dx = xx[..., None].astype(np.float32) - cx  # (1, w, N)
    c, s = np.cos(theta), np.sin(theta)
    u = dx * c + dy * s
    v = -dx * s + dy * c
    rho = np.sqrt((u / rx) ** 2 + (v / ry) ** 2)
    # Approximate signed distance to the boundary in pixels.
    dist = (1.0 - rho) * np.sqrt(rx * ry)
    alpha = np.clip(dist / soft + 0.5, 0.0, 1.0)
    out[y0:y1, x0:x1] = alpha.max(axis=-1)
    return out


def _discs(shape: tuple[int, int], cy, cx, r, soft: float = 1.0) -> np.ndarray:
    """Soft-edged union of N discs (see :func:`_ellipses`)."""
    return _ellipses(shape, cy, cx, r, r, 0.0, soft)


def _noise(rng: np.random.Generator, shape: tuple[int, int], cell: float) -> np.ndarray:
    """Smooth value noise in [0, 1] with feature size ~``cell`` pixels.

    A coarse random grid upsampled bilinearly by Pillow: cheap texture for
    chromatin, fine granularity and uneven illumination.
    """
    h, w = shape
    gh, gw = max(2, int(np.ceil(h / cell)) + 1), max(2, int(np.ceil(w / cell)) + 1)
    grid = rng.random((gh, gw), dtype=np.float32)
    img = Image.fromarray(grid).resize((w, h), Image.BILINEAR)
    return np.asarray(img, dtype=np.float32)


def _paint(od: np.ndarray, alpha: np.ndarray, color_od: np.ndarray) -> None:
    """Composite ``color_od`` over ``od`` with coverage ``alpha`` (in place).

    ``color_od`` is a (3,) colour or an (H, W, 3) per-pixel (textured) colour.
    """
    a = alpha[..., None]
    od += a * (color_od - od)


def _points_in_disc(rng: np.random.Generator, n: int, cy: float, cx: float, r: float):
    """``n`` uniform random points inside a disc (for granules / vacuoles)."""
    rad = r * np.sqrt(rng.random(n))
    ang = rng.uniform(0.0, 2.0 * np.pi, n)
    return cy + rad * np.sin(ang), cx + rad * np.cos(ang)


def _chain(p: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``k`` points evenly spaced strictly between p and q (for nuclear strands)."""
    t = np.linspace(0.0, 1.0, k + 2)[1:-1, None]
    pts = p[None, :] * (1 - t) + q[None, :] * t
    return pts[:, 0], pts[:, 1]


# --------------------------------------------------------------------------- #
# Scene elements
# --------------------------------------------------------------------------- #
def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Plasma/glass background OD with gentle uneven illumination."""
    shape = (size, size)
    illum = _noise(rng, shape, size / 2.0) - 0.5
    od = np.broadcast_to(_BG, (size, size, 3)).astype(np.float32).copy()
    od += (0.05 * illum)[..., None]
    return od


def _red_cells(rng: np.random.Generator, od: np.ndarray, n: int, r_rbc: float) -> None:
    """Add ``n`` red blood cells: pale-red discs with a lighter centre (pallor).

    OD is *added*, so overlapping cells are darker where they overlap.
    """
    size = od.shape[0]
    shape = od.shape[:2]
    for _ in range(n):
        r = r_rbc * rng.uniform(0.88, 1.12)
        ecc = rng.uniform(0.9, 1.0)
        cy, cx = rng.uniform(-0.5 * r, size + 0.5 * r, 2)
        th = rng.uniform(0, np.pi)
        body = _ellipses(shape, cy, cx, r * ecc, r, th, soft=1.0)
        pallor = _ellipses(shape, cy, cx, 0.5 * r * ecc, 0.5 * r, th, soft=0.35 * r)
        dens = rng.uniform(0.85, 1.15)
        od += (dens * body * (1.0 - 0.55 * pallor))[..., None] * _RBC


def _platelets(rng: np.random.Generator, od: np.ndarray, u: float) -> None:
    """Add a small clump of platelets: pale lilac halo with purple granulomere."""
    size = od.shape[0]
    shape = od.shape[:2]
    cy, cx = rng.uniform(0.05 * size, 0.95 * size, 2)
    k = int(rng.integers(1, 4))
    py, px = _points_in_disc(rng, k, cy, cx, 3.0 * u)
    halo = _discs(shape, py, px, rng.uniform(1.6, 2.4, k) * u)
    _paint(od, 0.8 * halo, _od((0.86, 0.76, 0.88)))
    m = int(rng.integers(3, 8)) * k
    gy, gx = _points_in_disc(rng, m, cy, cx, 3.5 * u)
    gran = _discs(shape, gy, gx, np.full(m, 0.7 * u), soft=0.8) * halo
    _paint(od, gran, _od((0.45, 0.28, 0.58)))


def _lobes(
    rng: np.random.Generator,
    n: int,
    cy: float,
    cx: float,
    arc_r: float,
    lobe_r: float,
    span_deg: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Centres (and strand points) of ``n`` nuclear lobes along a curved path.

    Returns (lobe_y, lobe_x, lobe_r, strand_y, strand_x). Lobes sit on an arc
    around the cell centre, jittered, so the nucleus reads as connected blobs.
    """
    a0 = rng.uniform(0, 2 * np.pi)
    span = np.deg2rad(span_deg) * rng.uniform(0.85, 1.15)
    ang = a0 + np.linspace(-span / 2, span / 2, n) + rng.normal(0, 0.12, n)
    rad = arc_r * rng.uniform(0.8, 1.15, n)
    ly = cy + rad * np.sin(ang)
    lx = cx + rad * np.cos(ang)
    lr = lobe_r * rng.uniform(0.85, 1.15, n)
    sy, sx = [], []
    for i in range(n - 1):
        y, x = _chain(np.array([ly[i], lx[i]]), np.array([ly[i + 1], lx[i + 1]]), 4)
        sy.append(y)
        sx.append(x)
    if sy:
        return ly, lx, lr, np.concatenate(sy), np.concatenate(sx)
    return ly, lx, lr, np.zeros(0), np.zeros(0)


def _white_cell(
    rng: np.random.Generator,
    od: np.ndarray,
    cls: str,
    cy: float,
    cx: float,
    R: float,
    u: float,
) -> None:
    """Composite one white blood cell of class ``cls`` over ``od`` (in place).

    ``R`` is the cell radius in pixels and ``u`` the pixel scale (pixels per
    nominal unit, ~size/96), used for granule and strand sizes so that the
    texture scale follows the image size.
    """
    shape = od.shape[:2]
    pal = _PALETTE[cls]
    th = rng.uniform(0, np.pi)
    ecc = rng.uniform(0.9, 1.0)

    # Cell body (cytoplasm), composited over the red cells beneath it.
    body = _ellipses(shape, cy, cx, R * ecc, R, th, soft=1.0)
    cyto_tex = 0.85 + 0.3 * _noise(rng, shape, max(2.0, 3.0 * u))
    _paint(od, body, pal["cyto"] * cyto_tex[..., None])

    chrom = 0.75 + 0.5 * _noise(rng, shape, max(1.5, 2.0 * u))  # chromatin clumping
    nuc_col = pal["nuc"] * chrom[..., None]
    strand_r = max(0.8, 0.07 * R)

    if cls == "lymphocyte":
        # Large round dark nucleus, slightly eccentric, thin rim of blue cytoplasm.
        off = rng.uniform(0.0, 0.1) * R
        a = rng.uniform(0, 2 * np.pi)
        nr = R * rng.uniform(0.74, 0.86)
        nuc = _ellipses(
            shape,
            cy + off * np.sin(a),
            cx + off * np.cos(a),
            nr * rng.uniform(0.9, 1.0),
            nr,
            rng.uniform(0, np.pi),
        )
        _paint(od, nuc * body, nuc_col)

    elif cls == "monocyte":
        # Kidney / horseshoe nucleus: an ellipse with a bite taken out of one side.
        a = rng.uniform(0, 2 * np.pi)
        off = 0.12 * R
        ny, nx = cy + off * np.sin(a), cx + off * np.cos(a)
        ry, rx = 0.52 * R * rng.uniform(0.9, 1.1), 0.68 * R * rng.uniform(0.9, 1.1)
        nuc = _ellipses(shape, ny, nx, ry, rx, a + np.pi / 2)
        # Bite: a disc of radius b on the concave side; the notch goes ``f`` of
        # the way across the nucleus (kidney at small f, horseshoe at large f).
        f = rng.uniform(0.2, 0.42)
        b = 0.8 * ry * rng.uniform(0.9, 1.1)
        d = ry * (1.0 - 2.0 * f) + b
        bite = _discs(shape, ny - d * np.sin(a), nx - d * np.cos(a), b, soft=1.5)
        nuc = nuc * (1.0 - bite)
        lacy = 0.8 + 0.4 * _noise(rng, shape, max(1.5, 1.5 * u))  # lacier chromatin
        _paint(od, nuc * body, nuc_col * lacy[..., None])
        # A few vacuoles in the cytoplasm.
        k = int(rng.integers(0, 5))
        if k:
            vy, vx = _points_in_disc(rng, k, cy, cx, 0.85 * R)
            vac = _discs(shape, vy, vx, rng.uniform(0.8, 1.6, k) * u) * body * (1.0 - nuc)
            _paint(od, 0.7 * vac, _BG * 0.5)

    elif cls == "neutrophil":
        # Fine faint lilac granules: many tiny, low-contrast dots in the pale cytoplasm.
        m = int(rng.integers(90, 130) * (R / (14.5 * u)) ** 2)
        gy, gx = _points_in_disc(rng, m, cy, cx, 0.93 * R)
        fine = _discs(shape, gy, gx, np.full(m, 0.55 * u), soft=0.8)
        _paint(od, body * 0.45 * fine, pal["gran"])
        n = int(rng.integers(3, 6))
        ly, lx, lr, sy, sx = _lobes(rng, n, cy, cx, 0.45 * R, 0.24 * R, 55.0 * (n - 1))
        nuc = np.maximum(
            _discs(shape, ly, lx, lr),
            _discs(shape, sy, sx, np.full(sy.shape, strand_r)) if sy.size else 0.0,
        )
        _paint(od, nuc * body, nuc_col)

    elif cls == "eosinophil":
        # Bilobed ("spectacle") nucleus.
        ly, lx, lr, sy, sx = _lobes(rng, 2, cy, cx, 0.42 * R, 0.30 * R, 150.0)
        nuc = np.maximum(_discs(shape, ly, lx, lr), _discs(shape, sy, sx, np.full(sy.shape, strand_r)))
        # Cytoplasm packed with coarse orange-red granules (beneath the nucleus).
        m = int(rng.integers(110, 150) * (R / (18.0 * u)) ** 2)
        gy, gx = _points_in_disc(rng, m, cy, cx, 0.93 * R)
        gran = _discs(shape, gy, gx, rng.uniform(1.1, 1.5, m) * u, soft=0.8)
        gran_col = pal["gran"] * (0.85 + 0.3 * _noise(rng, shape, 2.0))[..., None]
        _paint(od, gran * body * 0.95, gran_col)
        _paint(od, nuc * body, nuc_col)

    elif cls == "basophil":
        # Lobed, lighter nucleus mostly hidden under dense dark granules.
        n = int(rng.integers(2, 4))
        ly, lx, lr, sy, sx = _lobes(rng, n, cy, cx, 0.35 * R, 0.32 * R, 70.0 * (n - 1))
        nuc = np.maximum(_discs(shape, ly, lx, lr), _discs(shape, sy, sx, np.full(sy.shape, strand_r)))
        _paint(od, nuc * body, nuc_col)
        m = int(rng.integers(55, 85) * (R / (15.5 * u)) ** 2)
        gy, gx = _points_in_disc(rng, m, cy, cx, 0.95 * R)
        gran = _discs(shape, gy, gx, rng.uniform(1.2, 2.0, m) * u, soft=0.8)
        _paint(od, gran * body * rng.uniform(0.85, 0.98), pal["gran"])

    else:  # pragma: no cover - guarded by callers
        raise ValueError(f"unknown WBC class {cls!r}")


def _finish(rng: np.random.Generator, od: np.ndarray) -> np.ndarray:
    """Apply a random stain and camera, return an RGB uint8 image.

    Stain jitter: per-channel OD gain (stain strength / hue) and per-channel
    RGB gain (white balance), both ~0.85-1.15, then mild gaussian pixel noise.
    Drawn identically for every class, so the stain carries no label.
    """
    od_gain = rng.uniform(0.85, 1.15, 3).astype(np.float32)
    # White balance: a shared brightness factor times a milder per-channel tint,
    # so the overall range is ~0.85-1.15 per channel without garish casts.
    rgb_gain = (rng.uniform(0.90, 1.06) * rng.uniform(0.94, 1.06, 3)).astype(np.float32)
    rgb = np.exp(-od * od_gain) * rgb_gain
    rgb += rng.normal(0.0, rng.uniform(0.008, 0.025), rgb.shape).astype(np.float32)
    return (np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _wbc_image(rng: np.random.Generator, cls: str, size: int) -> np.ndarray:
    """One labelled image: red-cell background plus one centred WBC of ``cls``."""
    u = size / 96.0
    r_rbc = 8.5 * u
    od = _background(rng, size)
    _red_cells(rng, od, int(rng.integers(7, 14) * (size / 96.0) ** 2), r_rbc)
    if rng.random() < 0.25:
        _platelets(rng, od, u)
    R = r_rbc * _REL_RADIUS[cls] * rng.uniform(0.85, 1.15)
    cy, cx = size / 2.0 + rng.uniform(-0.1, 0.1, 2) * size
    _white_cell(rng, od, cls, cy, cx, R, u)
    return _finish(rng, od)


def _tile_image(rng: np.random.Generator, size: int) -> np.ndarray:
    """One unlabelled smear-field tile: many red cells, sometimes platelets / a WBC."""
    u = 1.0 * size / 128.0
    r_rbc = 8.5 * u
    od = _background(rng, size)
    # Red-cell density varies from the thin feathered edge to the thicker body.
    _red_cells(rng, od, int(rng.integers(12, 40) * (size / 128.0) ** 2), r_rbc)
    for _ in range(int(rng.poisson(0.8))):
        _platelets(rng, od, u)
    if rng.random() < 0.3:
        cls = WBC_CLASSES[int(rng.integers(len(WBC_CLASSES)))]
        R = r_rbc * _REL_RADIUS[cls] * rng.uniform(0.85, 1.15)
        cy, cx = rng.uniform(0.1 * size, 0.9 * size, 2)
        _white_cell(rng, od, cls, cy, cx, R, u)
    return _finish(rng, od)


def _write_notice(out_dir: Path) -> None:
    """Mark the folder as synthetic so nobody mistakes it for patient data."""
    (out_dir / "SYNTHETIC.txt").write_text(_NOTICE, encoding="utf-8")


# --------------------------------------------------------------------------- #
# Public API
# --------------------------------------------------------------------------- #
def _prepare(out_dir: Path, count: int, size: int) -> Path:
    """Check the arguments, create ``out_dir`` and write the SYNTHETIC notice."""
    if count < 0:
        raise ValueError("the number of images must be >= 0")
    if size < 16:
        raise ValueError("size must be >= 16 pixels")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_notice(out_dir)
    return out_dir


def make_synthetic_wbc(out_dir: Path, n_per_class: int = 60, size: int = 96, seed: int = 0) -> Path:
    """Write out_dir/<class>/<class>_0000.png ... for the five WBC classes; returns out_dir.

    Why: the offline demo and the tests need a labelled WBC classification set
    without downloading anything. The layout is ImageFolder-compatible (one
    sub-folder per class in :data:`WBC_CLASSES`), RGB ``size`` x ``size`` PNGs.
    Each image shows pale red cells and one white cell near the centre whose
    morphology (size, nucleus shape, cytoplasm and granule colour) depends on
    the class; the stain jitter is class-independent, so a model has to look at
    the cell. Deterministic for a given ``seed``. Also writes ``SYNTHETIC.txt``.
    """
    out_dir = _prepare(out_dir, n_per_class, size)
    for ci, cls in enumerate(WBC_CLASSES):
        cdir = out_dir / cls
        cdir.mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            rng = np.random.default_rng([seed, _STREAM_WBC, ci, i])
            Image.fromarray(_wbc_image(rng, cls, size)).save(cdir / f"{cls}_{i:04d}.png")
    return out_dir


def make_synthetic_tiles(out_dir: Path, n: int = 200, size: int = 128, seed: int = 0) -> Path:
    """Unlabelled smear-field tiles (several red cells, occasional platelets / nucleated cells),
    out_dir/tile_0000.png ...; returns out_dir.

    Why: MAE pretraining in the demo needs unlabelled pathology-like images
    with the same stain statistics and cell scale as the labelled set, but
    without labels (about 30% of tiles contain a white cell of a random class).
    RGB ``size`` x ``size`` PNGs, deterministic for a given ``seed``. Also writes
    ``SYNTHETIC.txt``.
    """
    out_dir = _prepare(out_dir, n, size)
    for i in range(n):
        rng = np.random.default_rng([seed, _STREAM_TILES, i])
        Image.fromarray(_tile_image(rng, size)).save(out_dir / f"tile_{i:04d}.png")
    return out_dir
