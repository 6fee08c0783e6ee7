"""Issue 24, step 1: which factor breaks a PBC-trained classifier on another lab's cells, by controlled
experiments on a trained run (inference only; no retraining).

Both directions, each factor alone and together:
- repair: the external images moved towards PBC (the cell zoomed out to PBC's share of the frame, padded
  with the image's own border colour; colours moved to PBC's LAB statistics by Reinhard's transfer);
- break: PBC's validation images moved towards each external set (zoomed in; colours moved to the set's
  LAB statistics; blurred).
A factor that repairs the external set and breaks PBC is the one to design against.

    python docs/results/cross-lab/factors.py RUN [RUN ...] --out docs/results/cross-lab/factors.json

PBC's validation split and the external sets are development data; PBC's test split is not read.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from leanmae.data.cache import load_or_build, spec_from_extras
from leanmae.data.sources import ImageRecord, labelled_folder_records
from leanmae.data.split import read_manifest
from leanmae.data.stain import reinhard, reinhard_reference
from leanmae.evaluation.metrics import classification_report
from leanmae.evaluation.predict import predict_outputs, trained_classifier

SHARED = Path(__file__).resolve().parents[4] / "shared" / "data"
SPLIT = Path(__file__).resolve().parents[1] / "pbc-honest" / "split.csv"
EXTERNAL = ("tecom", "cellavision_blog")


def zoom(images: np.ndarray, scale: float) -> np.ndarray:
    """Each image scaled by ``scale`` about its centre: < 1 zooms out (padded with the median colour of the
    image's one-pixel border), > 1 zooms in (centre crop)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    n, _, h, w = x.shape
    side = max(2, round(h * scale))
    scaled = F.interpolate(x, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
    if scale >= 1:
        top = (side - h) // 2
        out = scaled[:, :, top : top + h, top : top + w]
    else:
        border = torch.cat([x[:, :, 0], x[:, :, -1], x[:, :, :, 0], x[:, :, :, -1]], dim=2)
        out = border.median(dim=2).values[:, :, None, None].expand(n, 3, h, w).clone()
        top = (h - side) // 2
        out[:, :, top : top + side, top : top + side] = scaled
    return out.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()


def recolour(images: np.ndarray, reference: tuple[float, ...]) -> np.ndarray:
    return np.stack([reinhard(im, reference) for im in images])


def blur(images: np.ndarray, sigma: float) -> np.ndarray:
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    radius = int(3 * sigma + 0.5)
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    x = F.pad(x, (radius,) * 4, mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(3, 1, 1, -1), groups=3)
    x = F.conv2d(x, k.view(1, 1, -1, 1).expand(3, 1, -1, 1), groups=3)
    return x.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()


def decoded(records: list[ImageRecord], extra: dict, image_size: int, labels: list[str]):
    cache = load_or_build(records, spec_from_extras(extra, image_size), progress=False)
    y = np.array([labels.index(records[s].label) for s in cache.sources])
    return np.asarray(cache.images), y


def score(trained, images: np.ndarray, y: np.ndarray) -> dict[str, float]:
    model = trained.model
    logits = predict_outputs(
        model,
        (images[i : i + 256] for i in range(0, len(images), 256)),
        model.config.image_size,
        trained.mean,
        trained.std,
    )[0]
    probs = torch.softmax(torch.from_numpy(logits) / trained.extra.get("temperature", 1.0), -1).numpy()
    counts = np.bincount(y, minlength=len(trained.labels))
    present = [int(c) for c in np.flatnonzero(counts)]
    major = [int(c) for c in np.flatnonzero(counts >= 10)]
    report = classification_report(y, probs, trained.labels, scored=present)
    return {
        "accuracy": round(report["accuracy"], 4),
        "macro_f1": round(report["macro_f1"], 4),
        "macro_f1_10plus": round(
            classification_report(y, probs, trained.labels, scored=major)["macro_f1"], 4
        ),
        "median_confidence": round(float(np.median(probs.max(1))), 4),
        "predicted": np.bincount(probs.argmax(1), minlength=len(trained.labels)).tolist(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    results = {}
    for run in args.runs:
        trained = trained_classifier(run, "cpu")
        size, labels, extra = trained.model.config.image_size, trained.labels, trained.extra
        root, items = read_manifest(SPLIT)
        val = [ImageRecord(root / it.relpath, root, it.label) for it in items if it.split == "val"]
        train = [ImageRecord(root / it.relpath, root, it.label) for it in items if it.split == "train"]
        pbc_val, pbc_y = decoded(val, extra, size, labels)
        pbc_train, _ = decoded(train[::50], extra, size, labels)
        pbc_ref = reinhard_reference(pbc_train)
        rows: dict[str, dict] = {"pbc-val": score(trained, pbc_val, pbc_y)}
        for name in EXTERNAL:
            images, y = decoded(
                labelled_folder_records(SHARED / "external_wbc" / name, labels), extra, size, labels
            )
            ref = reinhard_reference(images)
            rows[f"{name}"] = score(trained, images, y)
            for s in (0.8, 0.6):
                rows[f"{name} zoom-out {s}"] = score(trained, zoom(images, s), y)
            rows[f"{name} colour->pbc"] = score(trained, recolour(images, pbc_ref), y)
            rows[f"{name} zoom-out 0.6 + colour->pbc"] = score(
                trained, recolour(zoom(images, 0.6), pbc_ref), y
            )
            rows[f"pbc-val zoom-in 2 (like {name})"] = score(trained, zoom(pbc_val, 2.0), pbc_y)
            rows[f"pbc-val colour->{name}"] = score(trained, recolour(pbc_val, ref), pbc_y)
            rows[f"pbc-val zoom-in 2 + colour->{name}"] = score(
                trained, recolour(zoom(pbc_val, 2.0), ref), pbc_y
            )
        rows["pbc-val blur 1px"] = score(trained, blur(pbc_val, 1.0), pbc_y)
        results[run] = rows
        print(run)
        for key, r in rows.items():
            print(
                f"  {key:42s} acc {r['accuracy']:.3f}  F1 {r['macro_f1']:.3f}"
                f"  F1(>=10) {r['macro_f1_10plus']:.3f}  conf {r['median_confidence']:.2f}"
                f"  predicted {r['predicted']}"
            )
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
