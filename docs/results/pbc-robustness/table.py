"""Tabulate the robustness benchmark of the option runs beside the default recipe: macro-F1 per shift.

Run from the repository root: ``python docs/results/pbc-robustness/table.py``; writes ``table.md``
beside it. A recipe's runs are this folder's ``RECIPE-sSEED/robustness.json`` (in-domain MAE) and
``scratch-RECIPE-sSEED/robustness.json`` (scratch), made by ``run.sh``; the default recipe's are the
label-honest study's own 10 % runs of the same arm. Each cell is the mean
over the recipe's seeds (± sd where there are several); in brackets the mean change against the
same runs' unshifted images. The last column pairs each recipe's clean score with the default's on
the same seeds.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from leanmae.files import write_atomic

HERE = Path("docs/results/pbc-robustness")
STUDY_RUNS = Path("docs/results/pbc-honest/runs")
ARMS = {"mae": ("MAE in-domain", "mae-in-domain", ""), "scratch": ("Scratch", "scratch", "scratch-")}
RECIPES = {
    "aug": "+ HED 0.1 + colour jitter, crops 0.1-1",
    "aug-long": "+ HED 0.1 + colour jitter, crops 0.1-1, min_steps 600",
    "aug-long-centred": "+ HED 0.1 + colour jitter, crops 0.1-1 shift 0.5, min_steps 600",
    "aug-long-hires": "+ HED 0.1 + colour jitter, crops 0.1-1, min_steps 600, cache size 112",
    "cellcrop-aug": "+ cell-centred crop 2.5, HED 0.1 + colour jitter, crops 0.1-1",
    "stain-norm-aug": "+ Reinhard stain norm, HED 0.1 + colour jitter, crops 0.1-1",
    "macenko-aug": "+ Macenko stain norm, HED 0.1 + colour jitter, crops 0.1-1",
}


def seeds_of(arm: str, recipe: str | None) -> dict[int, dict]:
    """seed -> robustness.json of an arm's runs of a recipe (None: the default recipe's study runs)."""
    _, study_arm, prefix = ARMS[arm]
    if recipe is None:
        files = {s: STUDY_RUNS / f"{study_arm}_f0.1_s{s}" / "robustness.json" for s in range(10)}
    else:
        files = {s: HERE / f"{prefix}{recipe}-s{s}" / "robustness.json" for s in range(10)}
    return {s: json.loads(f.read_text()) for s, f in files.items() if f.exists()}


def cell(values: list[float], signed: bool = False) -> str:
    fmt = "{:+.3f}" if signed else "{:.3f}"
    text = fmt.format(np.mean(values))
    return text + (f" ± {np.std(values, ddof=1):.3f}" if len(values) > 1 else "")


def arm_table(arm: str) -> list[str]:
    """The markdown table of one arm: the default recipe's row, then each recipe with finished runs."""
    default = seeds_of(arm, None)
    shifts = next(iter(default.values()))["benchmark"]["shifts"]
    lines = [
        f"{ARMS[arm][0]}, 10 % of the labels: test macro-F1 under each shift, mean ± sd over seeds "
        "(in brackets: the change against clean).",
        "",
        "| recipe | seeds | " + " | ".join(shifts) + " | clean vs default, same seeds |",
        "| --- | --- |" + " --- |" * (len(shifts) + 1),
    ]
    for recipe, name in [(None, "default recipe (the pbc-honest study's runs)"), *RECIPES.items()]:
        runs = seeds_of(arm, recipe)
        if not runs:
            continue
        cells = []
        for shift in shifts:
            scores = [r["shifts"][shift]["macro_f1"] for r in runs.values()]
            drops = [-r["shifts"][shift]["drop"] for r in runs.values()]
            cells.append(cell(scores) + ("" if shift == "clean" else f" ({cell(drops, signed=True)})"))
        paired = [
            r["shifts"]["clean"]["macro_f1"] - default[s]["shifts"]["clean"]["macro_f1"]
            for s, r in runs.items()
            if s in default
        ]
        vs_default = "" if recipe is None else cell(paired, signed=True)
        lines.append(f"| {name} | {','.join(map(str, runs))} | " + " | ".join(cells) + f" | {vs_default} |")
    return lines


def main() -> None:
    lines = [*arm_table("mae"), "", *arm_table("scratch")]
    write_atomic(HERE / "table.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
