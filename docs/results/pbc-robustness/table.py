"""Tabulate the robustness.json files of this folder's runs: macro-F1 per shift and its drop.

Run from the repository root: ``python docs/results/pbc-robustness/table.py``; writes ``table.md``
beside it. Each run folder holds the ``robustness.json`` that ``leanmae evaluate RUN --split SPLIT
--shifts`` (or a study) wrote for it.
"""

from __future__ import annotations

import json
from pathlib import Path

from leanmae.files import write_atomic

HERE = Path("docs/results/pbc-robustness")
RUNS = {
    "default recipe (pbc-honest mae-in-domain_f0.1_s0)": "default",
    "+ Reinhard stain norm, HED 0.1 + colour jitter, crops 0.1-1": "stain-norm-aug",
    "+ HED 0.1 + colour jitter, crops 0.1-1 (no stain norm)": "aug",
}


def main() -> None:
    found = {name: HERE / folder / "robustness.json" for name, folder in RUNS.items()}
    found = {name: json.loads(path.read_text()) for name, path in found.items() if path.exists()}
    shifts = next(iter(found.values()))["benchmark"]["shifts"]
    lines = [
        "MAE in-domain, 10 % of the labels, seed 0: test macro-F1 under each shift (change against clean).",
        "",
        "| recipe | " + " | ".join(shifts) + " |",
        "| --- |" + " --- |" * len(shifts),
    ]
    for name, result in found.items():
        cells = []
        for shift in shifts:
            score = result["shifts"][shift]
            change = "" if shift == "clean" else f" ({-score['drop']:+.3f})"
            cells.append(f"{score['macro_f1']:.3f}{change}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    write_atomic(HERE / "table.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
