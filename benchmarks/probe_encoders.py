"""How much did pretraining teach the encoder? Frozen-feature probes of MAEs against a random encoder.

For each MAE folder, and for a randomly initialised MAE of the same shape (the paper's init), the
mean patch token of the frozen encoder is computed for every image of a split manifest. Two
readings follow:

- ``val 5-fold``: kNN (k = 20, cosine) and logistic regression cross-validated inside the val
  split: the signal pretraining logs, no train or test labels involved;
- ``train f -> test``: logistic regression fitted on the label fraction f of the train split (the
  same nested draws as fine-tuning, seed 0) and scored once on the test split, the measurement the
  science issue states its aim in (probe >= random encoder + 0.15 macro-F1 at 1 %). Nothing is
  chosen on it.

    python benchmarks/probe_encoders.py --split SPLIT.csv MAE_FOLDER [MAE_FOLDER ...] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import f1_score

from leanmae.commands.reconstruct import load_images
from leanmae.config import PretrainConfig, resolve
from leanmae.data.cache import spec_from_extras
from leanmae.data.split import label_fraction, read_manifest
from leanmae.evaluation.probe import mae_features, representation_scores
from leanmae.models.io import load_preprocessing, model_folder
from leanmae.models.logistic_probe import probe_pipeline
from leanmae.models.mae import build_mae, load_mae


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("maes", nargs="+", help="MAE model folders (or pretraining run folders)")
    parser.add_argument("--split", required=True)
    parser.add_argument("--fractions", default="0.01,0.1,1")
    parser.add_argument("--preset", default="cpu", help="shape of the random encoder")
    parser.add_argument("--out", help="also write the results as JSON")
    args = parser.parse_args()
    root, items = read_manifest(args.split)
    labels = sorted({it.label for it in items})
    y = np.array([labels.index(it.label) for it in items])
    where = {it.relpath: i for i, it in enumerate(items)}
    split = np.array([it.split for it in items])

    torch.manual_seed(0)
    cfg = resolve(PretrainConfig, "pretrain", args.preset, None, {})
    first = model_folder(args.maes[0])
    encoders = {"random init": (build_mae(cfg.model).eval(), *load_preprocessing(first))}
    for path in args.maes:
        folder = model_folder(path)
        encoders[str(path)] = (load_mae(folder).eval(), *load_preprocessing(folder))
    results: dict[str, dict[str, float]] = {}
    for name, (model, mean, std, extra) in encoders.items():
        pixels = load_images(
            [root / it.relpath for it in items],
            spec_from_extras(extra, model.config.image_size),  # decoded as the MAE's training images were
            model.config.image_size,
            mean,
            std,
            progress=False,
        )
        feats = mae_features(model, pixels)
        row = {
            f"val 5-fold {k}": v
            for k, v in representation_scores(feats[split == "val"], y[split == "val"]).items()
        }
        test = split == "test"
        for fraction in map(float, args.fractions.split(",")):
            train = np.array([where[it.relpath] for it in label_fraction(items, fraction, 0)])
            probe = probe_pipeline(max_iter=3000).fit(feats[train], y[train])
            row[f"train {fraction:g} -> test macro-F1"] = float(
                f1_score(y[test], probe.predict(feats[test]), average="macro")
            )
        results[name] = row
        print(name, json.dumps({k: round(v, 3) for k, v in row.items()}), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
