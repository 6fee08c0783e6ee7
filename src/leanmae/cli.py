"""The ``leanmae`` command line: a thin layer that parses flags and calls the Python functions.

Every subcommand is a function in ``leanmae`` with the same option names (``leanmae pretrain
--data X --out Y`` is ``leanmae.pretrain(data=["X"], out="Y")``), so notebooks and the shell
run the same code.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from leanmae import __version__
from leanmae.config import preset_names
from leanmae.errors import USER_ERRORS, os_error_line

EPILOG = (
    "Any config key can also be set with --set KEY=VALUE (repeatable), e.g. --set optim.base_lr=1e-3 "
    "--set model.mask_ratio=0.5."
)


def _training_options(parser: argparse.ArgumentParser, default_preset: str = "cpu") -> None:
    """Options shared by the training commands."""
    parser.add_argument(
        "--out",
        required=True,
        help="output folder for this run (refused if it holds another run, see --resume/--overwrite)",
    )
    parser.add_argument(
        "--preset",
        default=default_preset,
        choices=preset_names(),
        help=f"shipped settings (default: {default_preset}); see README 'Presets'",
    )
    parser.add_argument(
        "--config",
        help="YAML file overriding the preset (sections: model, data, augment, optim, run, pretrain, "
        "finetune)",
    )
    parser.add_argument("--epochs", type=int, help="number of epochs (overrides the preset)")
    parser.add_argument(
        "--lr",
        type=float,
        help="base learning rate, optim.base_lr (scaled by the effective batch as printed at start)",
    )
    parser.add_argument("--batch-size", type=int, help="images per batch and process, optim.batch_size")
    parser.add_argument("--seed", type=int, help="random seed (default: the preset's, 0)")
    parser.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its last checkpoint"
    )
    group.add_argument("--overwrite", action="store_true", help="delete the run in --out and start again")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override any config key"
    )
    parser.add_argument(
        "--no-progress", dest="progress", action="store_false", help="no progress bars (for logs)"
    )


def _data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--skip-bad",
        action="store_true",
        help="skip unreadable images with a warning (listed in run.json) instead of stopping",
    )
    tiling = parser.add_mutually_exclusive_group()
    tiling.add_argument(
        "--tile", type=int, help="cut large images into TILE x TILE pixel tiles before training"
    )
    tiling.add_argument(
        "--grid", help="cut each image into ROWSxCOLS equal tiles, e.g. 2x2 (the seed's quadrants)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="leanmae",
        description="MAE pretraining and label-efficiency studies for pathology images.",
        epilog=EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"leanmae {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "pretrain", help="pretrain a ViT as a masked autoencoder on unlabelled images", epilog=EPILOG
    )
    p.add_argument(
        "--data",
        action="append",
        required=True,
        metavar="DIR[:CLASSES]",
        help="image folder, searched recursively, or a MedMNIST PATH.npz (its train images); repeatable; "
        "DIR:a,b keeps only classes a and b",
    )
    p.add_argument(
        "--init",
        help="start from a local MAE folder (save_pretrained format), or continue pretraining an encoder a "
        "lab already has (a transformers DINOv2 folder, a DINOv2 .pth or a timm state dict: the encoder's "
        "shape comes from its weights, the decoder starts fresh) instead of random weights",
    )
    p.add_argument(
        "--probe",
        metavar="SPLIT.csv",
        help="score the frozen encoder (kNN, linear probe) on this split manifest's labelled val images "
        "while pretraining",
    )
    _data_options(p)
    _training_options(p)
    p.set_defaults(func="pretrain")

    p = sub.add_parser(
        "reconstruct", help="reconstruction figure and masked/visible errors of an MAE checkpoint"
    )
    p.add_argument(
        "checkpoint", help="MAE model folder (a pretraining run's model/ or the run folder itself)"
    )
    p.add_argument("inputs", nargs="+", help="image files or folders")
    p.add_argument("--out", required=True, help="folder for reconstructions.png and recon_metrics.json")
    p.add_argument("--images", type=int, default=8, help="images shown in the figure (default 8)")
    p.add_argument("--mask-ratio", type=float, help="mask ratio of the figure (default: the model's)")
    p.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--overwrite", action="store_true", help="replace earlier results in --out")
    p.set_defaults(func="reconstruct")

    p = sub.add_parser(
        "split", help="make the fixed stratified train/val/test split manifest of a labelled folder"
    )
    p.add_argument(
        "data",
        help="folder with one subfolder per class, or a MedMNIST .npz file (its official train/val/test "
        "split is kept)",
    )
    p.add_argument(
        "--classes",
        help="comma-separated classes, e.g. basophil,eosinophil,lymphocyte,monocyte,neutrophil (required "
        "for a folder; default for .npz: all)",
    )
    p.add_argument("--out", required=True, help="manifest CSV to write (path, label, split, sha256, root)")
    p.add_argument("--ratios", default="0.7,0.1,0.2", help="train,val,test shares (default 0.7,0.1,0.2)")
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the split (default 0); keep it fixed for a study"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument(
        "--drop-conflicts",
        action="store_true",
        help="leave out every copy of an image found in two class folders (an error otherwise), naming each",
    )
    p.set_defaults(func="split")

    p = sub.add_parser(
        "finetune",
        help="fine-tune a ViT classifier from scratch or from an MAE at a fraction of the labels",
        epilog=EPILOG,
    )
    p.add_argument("--split", required=True, help="split manifest from `leanmae split`")
    p.add_argument(
        "--fraction",
        type=float,
        default=1.0,
        help="share of the train split's labels to use, stratified and nested (default 1.0)",
    )
    p.add_argument(
        "--init",
        default="scratch",
        help="scratch (default), a pretraining run folder, an MAE model folder, or a local transformers "
        "ViT/ViT-MAE folder",
    )
    p.add_argument(
        "--linear-probe",
        action="store_true",
        help="train only a linear head on frozen encoder features (computed once)",
    )
    p.add_argument(
        "--pooling",
        choices=["cls", "mean"],
        help="head input: mean of the patch tokens (default; MAE never trains the CLS token) or CLS token",
    )
    p.add_argument(
        "--ood",
        action="append",
        metavar="DIR[:CLASSES]",
        help="images of classes never trained on (e.g. pbc:erythroblast,ig,platelet) for the "
        "out-of-distribution report and flag; repeatable",
    )
    p.add_argument(
        "--data-root",
        help="image folder the manifest's paths are relative to (default: the one recorded in it)",
    )
    p.add_argument(
        "--skip-bad",
        action="store_true",
        help="leave out unreadable images (listed in run.json) instead of stopping",
    )
    _training_options(p)
    p.set_defaults(func="finetune")

    p = sub.add_parser(
        "evaluate",
        help="score a trained classifier on a subset of a split or on any labelled image folder (e.g. "
        "another lab's)",
    )
    p.add_argument("model", help="classifier folder (a fine-tuning run or its model/)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--split", help="split manifest")
    source.add_argument(
        "--data",
        help="labelled image folder: one subfolder per class, named as the model's classes (case ignored; "
        "a subset of them is fine)",
    )
    p.add_argument(
        "--subset",
        default="test",
        choices=["train", "val", "test"],
        help="which split to score with --split (default test)",
    )
    p.add_argument(
        "--out",
        help="folder for metrics.json, predictions.csv and confusion_matrix.png (default: "
        "RUN/evaluate-SUBSET or RUN/evaluate-FOLDERNAME)",
    )
    p.add_argument("--data-root", help="image folder the manifest's paths are relative to")
    p.add_argument(
        "--shifts",
        action="store_true",
        help="the robustness benchmark instead: macro-F1 under stain, colour and zoom shifts "
        "(robustness.json)",
    )
    p.add_argument(
        "--shift-reference",
        metavar="FOLDER",
        help="with --shifts: images whose colours the colour-transfer shift aims at (default: built-in "
        "LC25000 lung)",
    )
    p.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--overwrite", action="store_true", help="replace earlier results in --out")
    p.set_defaults(func="evaluate")

    p = sub.add_parser(
        "adapt",
        help="adapt a trained classifier to another lab's unlabelled images (TENT test-time adaptation)",
    )
    p.add_argument("model", help="classifier folder (a fine-tuning run or its model/)")
    p.add_argument(
        "images",
        nargs="+",
        help="image files or folders of the new lab (searched recursively; no labels read)",
    )
    p.add_argument("--out", required=True, help="folder for the adapted model/ and adapt.json")
    p.add_argument(
        "--steps", type=int, default=50, help="Adam steps on the LayerNorm parameters (default 50)"
    )
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate (default 0.001)")
    p.add_argument("--batch-size", type=int, default=64, help="images per step (default 64)")
    p.add_argument("--seed", type=int, default=0, help="seed of the batch draws (default 0)")
    p.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier adaptation in --out")
    p.set_defaults(func="adapt")

    p = sub.add_parser("select", help="choose which unlabelled images to label next (no labels read)")
    p.add_argument(
        "model", help="MAE or classifier folder (a run or its model/) whose encoder embeds the images"
    )
    p.add_argument(
        "images",
        nargs="+",
        help="folders of unlabelled images (searched recursively) or split manifests (their train images)",
    )
    p.add_argument("--n", type=int, required=True, help="how many images to choose")
    p.add_argument("--out", required=True, help="CSV to write: rank, path, strategy, reason")
    p.add_argument(
        "--strategy",
        default="typiclust",
        help="typiclust (default: typical images of uncovered clusters, for a first set), margin (the "
        "images a trained classifier is least sure of, for later rounds) or random",
    )
    p.add_argument(
        "--labelled",
        metavar="CSV",
        help="images already labelled (a CSV with a path column, e.g. an earlier --out)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of k-means and the random draw (default 0)")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass (default 256)")
    p.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.set_defaults(func="select")

    p = sub.add_parser("predict", help="classify new images with a trained classifier")
    p.add_argument("model", help="classifier folder (a fine-tuning run or its model/)")
    p.add_argument("inputs", nargs="+", help="image files or folders (searched recursively)")
    p.add_argument("--out", default="predictions.csv", help="CSV to write (default predictions.csv)")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass (default 256)")
    p.add_argument(
        "--skip-bad", action="store_true", help="write unreadable files as error rows instead of stopping"
    )
    p.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.set_defaults(func="predict")

    p = sub.add_parser(
        "export", help="export a trained classifier to ONNX (checked against PyTorch with onnxruntime)"
    )
    p.add_argument("model", help="classifier folder (a fine-tuning run or its model/)")
    p.add_argument(
        "--onnx",
        required=True,
        metavar="FILE",
        help="the .onnx file to write; input pixel_values as in the model card's Preprocessing",
    )
    p.add_argument("--opset", type=int, default=17, help="ONNX opset version (default 17)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --onnx file")
    p.set_defaults(func="export")

    p = sub.add_parser(
        "config",
        help="print the resolved configuration of a command (defaults <- preset <- --config <- --set)",
    )
    p.add_argument("action", choices=["show"], help="show: print the resolved config as YAML")
    p.add_argument(
        "for_command",
        metavar="COMMAND",
        choices=["pretrain", "finetune", "study"],
        help="pretrain, finetune or study",
    )
    p.add_argument("--preset", choices=preset_names(), help="preset (default: cpu for pretrain and finetune)")
    p.add_argument("--config", help="YAML file as given to the command")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config key")
    p.set_defaults(func="show_config")

    p = sub.add_parser(
        "study",
        help="the label-efficiency study: pretrain once, split once, fine-tune fractions x arms x seeds, "
        "report",
    )
    p.add_argument(
        "--out", required=True, help="study folder (rerun the same command to continue an interrupted study)"
    )
    p.add_argument("--config", help="YAML file with any of the keys below (flags win)")
    p.add_argument("--data", help="labelled folder with one subfolder per class")
    p.add_argument(
        "--classes",
        help="comma-separated classes (default: basophil,eosinophil,lymphocyte,monocyte,neutrophil)",
    )
    p.add_argument(
        "--pretrain-data",
        action="append",
        metavar="DIR[:CLASSES]",
        help="unlabelled pretraining pool; repeatable",
    )
    p.add_argument(
        "--ood-data",
        action="append",
        metavar="DIR[:CLASSES]",
        help="images of classes never trained on, for out-of-distribution AUROC (e.g. "
        "pbc:erythroblast,ig,platelet); repeatable",
    )
    p.add_argument(
        "--pool",
        choices=["other", "in-domain"],
        help="other: only --pretrain-data (the seed's setting, default); in-domain: also the train "
        "split's images, unlabelled",
    )
    p.add_argument(
        "--external",
        action="append",
        metavar="DIR",
        help="another lab's labelled folder (class subfolders named as --classes) every run is also "
        "scored on; repeatable",
    )
    p.add_argument(
        "--shift-reference",
        metavar="DIR",
        help="images whose colours the robustness benchmark's colour transfer aims at (default: built-in "
        "LC25000 lung)",
    )
    p.add_argument("--preset", choices=preset_names(), help="preset of every run (default cpu)")
    p.add_argument("--fractions", help="label fractions, comma-separated (default 0.01,0.1,0.5,1.0)")
    p.add_argument("--seeds", help="seeds, comma-separated (default 0,1,2)")
    p.add_argument(
        "--extra-seeds",
        help="more seeds for the small fractions (<= extra_seeds_up_to, default 0.1), e.g. 3,4",
    )
    p.add_argument(
        "--arms",
        help="comma-separated: scratch, mae (the --pool's MAE), mae-in-domain, mae-other, mae-linear, "
        "hf:FOLDER (default scratch,mae); ARM+NAME is a variant of ARM with its own --arm-set settings, "
        "e.g. mae+fixmatch",
    )
    p.add_argument(
        "--mae",
        action="append",
        metavar="[POOL=]FOLDER",
        help="use this MAE instead of pretraining one: FOLDER for the --pool's, in-domain=FOLDER or "
        "other=FOLDER; repeatable",
    )
    p.add_argument("--pretrain-epochs", type=int, help="MAE epochs (default: the preset's)")
    p.add_argument("--finetune-epochs", type=int, help="fine-tuning epochs (default: the preset's)")
    p.add_argument(
        "--jobs",
        type=int,
        help="runs at once with the local launcher (default 2: one per core on a 2-core CPU)",
    )
    p.add_argument(
        "--launcher",
        choices=["local", "slurm"],
        help="local processes (default) or SLURM jobs through submitit",
    )
    p.add_argument(
        "--no-wait",
        dest="wait",
        action="store_false",
        default=None,
        help="with --launcher slurm: submit and return at once",
    )
    p.add_argument("--partition", help="SLURM partition")
    p.add_argument("--account", help="SLURM account")
    p.add_argument("--gpus-per-job", type=int, help="GPUs per SLURM job (default 1)")
    p.add_argument("--time-min", type=int, help="SLURM time limit per job in minutes (default 240)")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="config override for every run, e.g. optim.base_lr=5e-4",
    )
    p.add_argument(
        "--arm-set",
        action="append",
        metavar="ARM:KEY=VALUE",
        help="config override for one arm's fine-tuning runs, e.g. scratch:classifier.min_steps=600 (each "
        "arm its own recipe); repeatable",
    )
    p.add_argument(
        "--split",
        metavar="MANIFEST",
        help="use this split manifest of --data's images as it is (a lab's fixed split, or an earlier "
        "study's, whose train images an in-domain MAE saw) instead of drawing one",
    )
    p.add_argument(
        "--search",
        action="append",
        metavar="KEY=V1|V2",
        help="fine-tuning values every arm searches at every fraction (the same budget for each arm), e.g. "
        "'optim.base_lr=5e-4|1e-3|2e-3', or settings that change together: "
        "'optim.epochs=15;classifier.min_steps=600|optim.epochs=30;classifier.min_steps=1200'; each "
        "combination runs once at the first seed and the one its own label-honest val draw scores best is "
        "used; repeatable (combinations multiply)",
    )
    p.add_argument(
        "--search-beyond",
        metavar="K1=A;K2=B",
        help="one more value of the last --search entry, past its last: where an arm's best candidate took "
        "that last value (the grid's edge), one more candidate with the best's other settings and this value "
        "runs, and the best of all is used, e.g. 'optim.epochs=60;classifier.min_steps=2400'",
    )
    p.add_argument("--note", help="one line the report shows first (e.g. what the data is)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.add_argument(
        "--target",
        type=float,
        help="macro-F1 the report's labels-needed answer aims at (default: 95 %% of scratch's score with "
        "all labels)",
    )
    p.set_defaults(func="study")

    p = sub.add_parser(
        "report", help="rebuild a study's tables, figures and report.html from its finished runs"
    )
    p.add_argument("study", help="study folder")
    p.add_argument(
        "--target",
        type=float,
        help="macro-F1 the labels-needed answer aims at (default: 95 %% of scratch's score with all labels)",
    )
    p.set_defaults(func="report")

    p = sub.add_parser(
        "demo", help="the whole pipeline on built-in synthetic data; no download, a few minutes on a laptop"
    )
    p.add_argument("--out", default="demo-output", help="output folder (default: demo-output)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier demo in --out")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.set_defaults(func="demo")
    return parser


def options_doc(command: str, parameters: Sequence[str]) -> str:
    """The "Options:" section of a Python function's docstring, from its CLI command's help texts
    (one source for both, so ``help(leanmae.pretrain)`` lists what ``leanmae pretrain --help`` does)."""
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    lines = []
    for action in sub.choices[command]._actions:
        if action.dest in parameters and action.help and action.help != argparse.SUPPRESS:
            text = (
                f"True by default; False: {action.help}"
                if isinstance(action, argparse._StoreFalseAction)
                else action.help
            )
            lines.append(f"    {action.dest}: {text}")
    return "Options (as the command line's):\n" + "\n".join(lines) if lines else ""


def _call(name: str, args: dict[str, Any]) -> Any:
    import leanmae

    func: Callable[..., Any] = getattr(leanmae, name)
    return func(**args)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    if args.get("command") is None:  # a bare ``leanmae`` shows what it can do
        parser.print_help()
        return 0
    name = args.pop("func")
    args.pop("command")
    if name == "show_config":
        args.pop("action")
        args["command"] = args.pop("for_command")
    if name == "study":
        slurm = {k: args.pop(k) for k in ("partition", "account", "gpus_per_job", "time_min")}
        args["slurm"] = {k: v for k, v in slurm.items() if v is not None} or None
    try:
        _call(name, args)
    except USER_ERRORS as err:
        print(f"leanmae {name}: error: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:
        if name not in ("study", "export"):
            raise
        print(f"leanmae {name}: error: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        line = os_error_line(err)  # a full or read-only disk, a permission: one line; anything else is a bug
        if line is None:
            raise
        print(f"leanmae {name}: error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"leanmae {name}: interrupted; the last complete checkpoint is kept (continue with --resume)",
            file=sys.stderr,
        )
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
