"""Model cards: a README.md in every saved model folder, in the Hugging Face Hub's format.

The card is generated from the files the run wrote (config.json, leanmae.json, the preprocessing,
and the run folder's run.json / metrics.json / recon_metrics.json), never written by hand, so that
what a model folder says about itself is the run's own numbers. ``save_model`` writes a first card;
the commands refresh it at the end of the run, once the test metrics exist. Every name and path from
the data or the run (classes, folders, manifests) goes in through ``markdown_text``: shown as written,
never as HTML or as a table's cell border.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from leanmae.data.cache import working_size
from leanmae.data.split import read_manifest
from leanmae.files import write_atomic
from leanmae.safe_csv import markdown_text

CARD_FILE = "README.md"
LIMITS = (
    "Research use only. This model is **not a medical device** and must not be used for diagnosis or "
    "to guide treatment. It was trained and tested on one data set and split; images from other "
    "scanners, stains, magnifications or laboratories may be classified worse without warning, and "
    "its confidence is calibrated only on this run's validation images."
)


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text()) if path.exists() else {}
    except json.JSONDecodeError:
        return {}


def _run_folder_of(folder: Path) -> Path | None:
    """The run folder a model folder belongs to (its parent, when that holds run.json)."""
    parent = Path(folder).resolve().parent
    return parent if (parent / "run.json").exists() else None


def _sources(data: dict[str, Any]) -> str:
    """The pretraining pool's folders, as the card shows them."""
    return ", ".join(map(markdown_text, data.get("sources", []))) or "unrecorded sources"


def _pct(value: float) -> str:
    return f"{100 * value:.1f} %"


def _epochs(n: Any) -> str:
    return f"{n} epoch" + ("" if n == 1 else "s")


def _hub_name(name: str) -> str:
    """A folder name as a Hub metadata id (letters, digits, ``.``, ``_``, ``-``): names come from the data,
    and the card's front matter must not carry markup into a page."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-")


def _datasets(run: dict[str, Any]) -> list[str]:
    """The names of the folders the model's images came from: the pool's sources, or the split's data root."""
    config = run.get("config", {})
    sources = [str(s).rsplit(":", 1)[0] for s in config.get("data", {}).get("sources", [])]
    split = config.get("split")
    if not sources and split and Path(split).is_file():
        sources = [str(read_manifest(split)[0])]
    return sorted({_hub_name(Path(s).name) for s in sources} - {""})


def _architecture(config: dict[str, Any]) -> str:
    return (
        f"ViT, {config.get('image_size')} px input, patch {config.get('patch_size')}, "
        f"width {config.get('hidden_size')}, {config.get('num_hidden_layers')} blocks, "
        f"{config.get('num_attention_heads')} heads"
    )


def _preprocessing(processor: dict[str, Any], extra: dict[str, Any], image_size: int) -> str:
    mean = ", ".join(f"{m:.4f}" for m in processor.get("image_mean", []))
    std = ", ".join(f"{s:.4f}" for s in processor.get("image_std", []))
    working = working_size(image_size, extra.get("cache_size"))
    return (
        "1. decode to RGB (8 bit);\n"
        f"2. centre-crop to a square and resize to {working} x {working} px (bicubic, antialiased);\n"
        f"3. resize to {image_size} x {image_size} px (bilinear, antialiased) and scale to [0, 1];\n"
        f"4. normalise per channel with mean ({mean}) and std ({std});\n"
        f"5. feed as float32 `pixel_values` of shape (N, 3, {image_size}, {image_size}).\n\n"
        "`leanmae predict` and `leanmae.predict` do exactly this"
        + (
            "; so does `image_processing_leanmae.py` for transformers (`AutoImageProcessor` and `pipeline` "
            "with `trust_remote_code=True`), on images of any shape."
            if "auto_map" in processor
            else "; `preprocessor_config.json` holds the normalisation in the `ViTImageProcessor` format."
        )
    )


def _pretraining(run: dict[str, Any]) -> str:
    """How the encoder was initialised: scratch, an MAE run (with its own numbers), or another checkpoint."""
    init = str(run.get("config", {}).get("init", "scratch"))
    if init == "scratch":
        return (
            "None: the encoder was initialised at random and trained on the labelled images only (the "
            "*scratch* arm)."
        )
    source = Path(init)
    mae_run = next(
        (
            p
            for p in (source, source.parent)
            if (p / "run.json").exists() and _read(p / "run.json").get("command") == "pretrain"
        ),
        None,
    )
    if mae_run is None:
        return f"The encoder was initialised from the checkpoint {markdown_text(init)}."
    info = _read(mae_run / "run.json")
    model, data = info.get("config", {}).get("model", {}), info.get("config", {}).get("data", {})
    images = info.get("images", {})
    # A study's report counts the whole pool a lab collects (train + val); say where the val images went.
    held_out = f" (and {images['val']} held out for its reconstruction loss)" if images.get("val") else ""
    text = (
        "The encoder comes from a masked autoencoder (MAE, He et al. 2022) pretrained by leanmae "
        f"({markdown_text(init)}) on {images.get('train', '?')} unlabelled images{held_out} from "
        f"{_sources(data)}, "
        f"for {_epochs(info.get('epochs', '?'))} at mask ratio {model.get('mask_ratio')}"
    )
    if "val_loss_first" in info:
        text += (
            f"; its held-out reconstruction loss fell from {info['val_loss_first']:.4f} to "
            f"{info['val_loss_last']:.4f}"
        )
    return text + "."


def _classifier_sections(
    extra: dict[str, Any], run: dict[str, Any], metrics: dict[str, Any]
) -> tuple[list[str], list[dict[str, Any]]]:
    """Body sections and model-index metrics of a classifier card."""
    labels = extra.get("labels", [])
    config = run.get("config", {})
    fraction = config.get("fraction")
    used = metrics.get("labels_used") or run.get("labels_used") or {}
    lines = [f"- Classes ({len(labels)}): {', '.join(map(markdown_text, labels))}."]
    if fraction is not None:
        lines.append(
            f"- Split manifest: {markdown_text(config.get('split', '?'))} (fixed, stratified train / val / "
            "test)."
        )
        lines.append(
            f"- Label fraction: {100 * fraction:g} % of the train split"
            + (f", {used['total']} labelled images in all (train + validation)." if used else ".")
        )
    if used:
        lines.append(
            "- Training images per class: "
            f"{', '.join(f'{markdown_text(k)} {v}' for k, v in used['train'].items())}."
        )
    sections = ["## Data\n\n" + "\n".join(lines)]
    index: list[dict[str, Any]] = []
    test = metrics.get("test")
    if test:
        rows = [
            ("accuracy", test["accuracy"]),
            ("balanced accuracy", test["balanced_accuracy"]),
            ("macro precision", test["macro_precision"]),
            ("macro recall", test["macro_recall"]),
            ("macro F1", test["macro_f1"]),
        ]
        table = "| metric | test |\n| --- | --- |\n" + "".join(
            f"| {name} | {value:.4f} |\n" for name, value in rows
        )
        per_class = (
            "| class | precision | recall | F1 | support |\n| --- | --- | --- | --- | --- |\n"
            + "".join(
                f"| {markdown_text(name)} | {c['precision']:.3f} | {c['recall']:.3f} | {c['f1']:.3f} | "
                f"{c['support']} |\n"
                for name, c in test.get("per_class", {}).items()
            )
        )
        text = (
            f"## Evaluation\n\nScored once on the held-out test split ({test.get('images', '?')} "
            f"images), never used for a choice.\n\n{table}\n{per_class}"
        )
        calibration = metrics.get("calibration")
        if calibration:
            before, after = calibration["before"], calibration["after"]
            text += (
                "\n**Calibration** (15 bins, test split): expected calibration error "
                f"{before['ece']:.4f} before and {after['ece']:.4f} after temperature scaling "
                f"(T = {calibration['temperature']:.3f}, fitted on validation); "
                f"NLL {before['nll']:.4f} -> {after['nll']:.4f}, "
                f"Brier {before['brier']:.4f} -> {after['brier']:.4f}.\n"
            )
        refer = metrics.get("refer")
        if refer and "test" in refer:
            kept = refer["test"]
            outcome = (
                f"keeps {_pct(kept['coverage'])} of the images at {_pct(kept['accuracy_kept'])} accuracy"
                if kept["coverage"] > 0
                else "refers every image"
            )
            text += (
                f"\n**Refer to an expert**: below a calibrated confidence of {refer['threshold']:.3f} "
                f"(chosen on validation for {_pct(extra.get('target_accuracy', 0.99))} accuracy) a "
                f"prediction is flagged `refer`; on test this {outcome}.\n"
            )
        sections.append(text)
        index = [
            {"type": key, "value": round(float(test[key]), 4), "name": f"test {name}"}
            for key, name in (
                ("accuracy", "accuracy"),
                ("balanced_accuracy", "balanced accuracy"),
                ("macro_f1", "macro F1"),
            )
        ]
        if calibration:
            index.append(
                {
                    "type": "ece",
                    "value": round(float(calibration["after"]["ece"]), 4),
                    "name": "test ECE after temperature scaling",
                }
            )
    else:
        sections.append("## Evaluation\n\nNot yet scored: the test metrics are added when the run finishes.")
    return sections, index


def _mae_sections(run: dict[str, Any], recon: dict[str, Any]) -> list[str]:
    data = run.get("config", {}).get("data", {})
    text = (
        "## Data\n\n"
        f"- {run.get('images', {}).get('train', '?')} unlabelled training images "
        f"({run.get('images', {}).get('val', '?')} held out for the validation loss) from "
        f"{_sources(data)}.\n\n## Training\n\n"
    )
    if "val_loss_first" in run:
        text += (
            f"{_epochs(run.get('epochs'))}; held-out reconstruction loss {run['val_loss_first']:.4f} -> "
            f"{run['val_loss_last']:.4f}.\n"
        )
    by_ratio = recon.get("by_mask_ratio", {})
    if by_ratio:
        text += "\n| mask ratio | masked-patch MSE | visible-patch MSE |\n| --- | --- | --- |\n" + "".join(
            f"| {ratio} | {v['masked_mse']:.4f} | {v['visible_mse']:.4f} |\n" for ratio, v in by_ratio.items()
        )
    return [text]


def model_card(folder: Path) -> str:
    """The card of the model in ``folder``, from the files there and in its run folder."""
    folder = Path(folder)
    config, extra, processor = (
        _read(folder / "config.json"),
        _read(folder / "leanmae.json"),
        _read(folder / "preprocessor_config.json"),
    )
    run_dir = _run_folder_of(folder)
    run = _read(run_dir / "run.json") if run_dir else {}
    classifier = extra.get("kind") == "classifier"
    image_size = int(config.get("image_size", 224))
    tags = ["leanmae", "vision", "vit", "pathology", "medical-imaging"] + (
        ["image-classification"] if classifier else ["masked-autoencoder", "self-supervised"]
    )
    if classifier:
        metrics = _read(run_dir / "metrics.json") if run_dir else {}
        body, index = _classifier_sections(extra, run, metrics)
        what = (
            f"A Vision Transformer classifier ({_architecture(config)}; {config.get('pooling', 'cls')} "
            f"pooling) for {len(extra.get('labels', []))} classes, fine-tuned by leanmae"
            + (
                " as a linear probe on a frozen encoder"
                if run.get("config", {}).get("classifier", {}).get("linear_probe")
                else ""
            )
            + ". It is a transformers checkpoint (safetensors) with its model code in "
            "`modeling_leanmae_vit.py`: "
            "`AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True)` and "
            "`pipeline('image-classification', model=folder, trust_remote_code=True)` give leanmae's "
            "predictions (without `trust_remote_code` transformers refuses it, rather than read it as a "
            "plain ViT with another head); `leanmae predict` adds the calibrated confidence, the "
            "refer-to-expert flag and the out-of-distribution flag saved in `leanmae.json`."
        )
        body.insert(1, "## Pretraining\n\n" + _pretraining(run))
        use = (
            "Research on label efficiency and confidence of pathology image classifiers; a baseline to "
            "compare with."
        )
    else:
        body = _mae_sections(run, _read(run_dir / "recon_metrics.json") if run_dir else {})
        index = []
        what = (
            f"A masked autoencoder (MAE, He et al. 2022; {_architecture(config)}) pretrained by leanmae "
            "on unlabelled images; a transformers `ViTMAEForPreTraining` checkpoint (safetensors)."
        )
        use = "Research: an encoder to fine-tune (`leanmae finetune --init`) or to probe on pathology images."
    meta: dict[str, Any] = {
        "library_name": "transformers",
        "pipeline_tag": "image-classification" if classifier else "image-feature-extraction",
        "tags": tags,
        # The weights carry the terms of the images they were trained on, which leanmae cannot know.
        "license": "other",
        "license_name": "terms-of-the-training-images",
    }
    init = str(run.get("config", {}).get("init", "scratch"))
    if classifier and init != "scratch":
        base = _hub_name(Path(init).parent.name if Path(init).name == "model" else Path(init).name)
        if base:
            meta["base_model"] = base
    if _datasets(run):
        meta["datasets"] = _datasets(run)
    if index:
        meta["metrics"] = sorted({m["type"] for m in index})
        meta["model-index"] = [
            {
                "name": run_dir.name if run_dir else folder.name,
                "results": [
                    {
                        "task": {"type": "image-classification"},
                        "dataset": {"name": "leanmae split", "type": "imagefolder"},
                        "metrics": index,
                    }
                ],
            }
        ]
    versions = run.get("versions", {})
    parts = [
        "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---",
        f"# {markdown_text(run_dir.name if run_dir else folder.name)}",
        "*This card was generated by leanmae from the run's own files; do not edit it by hand.*",
        "## Model\n\n" + what,
        *body,
        "## Preprocessing\n\n" + _preprocessing(processor, extra, image_size),
        "## Intended use\n\n" + use,
        "## Limits\n\n" + LIMITS,
        "## Reproducing\n\n"
        + (
            f"Seed {run.get('seed')}, preset {markdown_text(run.get('preset'))}, device "
            f"{markdown_text(run.get('device'))}; "
            if run
            else ""
        )
        + (
            f"torch {versions.get('torch')}, transformers {versions.get('transformers')}, leanmae "
            f"{versions.get('leanmae')}. "
            if versions
            else ""
        )
        + "The resolved configuration is in the run folder's `run.json`.",
    ]
    return "\n\n".join(parts) + "\n"


def write_card(folder: Path) -> Path:
    """Write (or refresh) ``folder/README.md`` atomically; returns its path."""
    path = Path(folder) / CARD_FILE
    write_atomic(path, model_card(folder))
    return path
