"""Issue 26's table, computed from the run folders run.sh filled: for each label choice (selection x
semi-supervision) at each fraction, macro-F1 on PBC's whole validation split (where choices are made) and on
its test split (scored once per run), mean and sd over seeds; the paired gain over the stratified draw
without semi-supervision, and over random selection with the same semi-supervision (issue 26's aim
compares a selection with random); same seed, t-interval on the logit scale (leanmae.evaluation.stats);
and the training time of a run: its median epoch in history.csv times its epochs (one torch thread, beside
another run), which survives a resume and an epoch paused while CI ran, unlike the process's own time.
Writes table.md here; runs still missing are counted, not guessed.

    python docs/results/label-choice/table.py
"""

from __future__ import annotations

import csv
import json
import re
import statistics
from collections import defaultdict
from pathlib import Path

from leanmae.evaluation.stats import estimate, paired

HERE = Path(__file__).resolve().parent
NAME = re.compile(
    r"(?P<arm>mae|scratch)-(?P<selection>\w+)-(?P<semi>\w+)-f(?P<fraction>[\d.]+)-s(?P<seed>\d+)"
)
REFERENCE = ("mae", "stratified", "off")


def runs() -> dict[tuple[str, str, str, float], dict[int, dict[str, float]]]:
    """(arm, selection, semi, fraction) -> seed -> val and test macro-F1, labels used and seconds."""
    found: dict[tuple[str, str, str, float], dict[int, dict[str, float]]] = defaultdict(dict)
    for folder in sorted(HERE.iterdir()):
        name = NAME.fullmatch(folder.name)
        if not name or not (folder / "val.json").exists():
            continue
        metrics = json.loads((folder / "metrics.json").read_text())
        with open(folder / "history.csv") as f:
            epochs = [float(row["seconds"]) for row in csv.DictReader(f)]
        seconds = statistics.median(epochs) * len(epochs)
        key = (name["arm"], name["selection"], name["semi"], float(name["fraction"]))
        found[key][int(name["seed"])] = {
            "val": json.loads((folder / "val.json").read_text())["val"]["macro_f1"],
            "test": metrics["test"]["macro_f1"],
            "labels": metrics["labels_used"]["total"],
            "seconds": seconds,
        }
    return found


def cell(values: dict[int, float], paired_with: dict[int, float] | None = None) -> str:
    """Mean ± sd [95 % interval] over seeds; with ``paired_with``, of the paired difference."""
    e = paired(values, paired_with) if paired_with is not None else estimate(list(values.values()))
    if e.n < 2:
        return f"{e.mean:+.3f} (1 seed)" if paired_with is not None else f"{e.mean:.3f} (1 seed)"
    sign = "+" if paired_with is not None else ""
    return f"{e.mean:{sign}.3f} ± {e.std:.3f} [{e.low:{sign}.3f}, {e.high:{sign}.3f}]"


def table() -> str:
    found = runs()
    rows = [
        "| arm | labels chosen by | semi-supervised | fraction (labels) | seeds | val macro-F1 | "
        "test macro-F1 | paired val gain over stratified, no semi | paired gain over random, same semi "
        "(val; test) | training minutes per run |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for (arm, selection, semi, fraction), seeds in sorted(found.items(), key=lambda kv: (kv[0][3], kv[0])):
        reference = found.get((*REFERENCE, fraction), {})
        common = sorted(set(seeds) & set(reference))
        gain = (
            cell({s: seeds[s]["val"] for s in common}, {s: reference[s]["val"] for s in common})
            if common and (arm, selection, semi) != REFERENCE
            else ""
        )
        random = found.get((arm, "random", semi, fraction), {}) if selection != "random" else {}
        pairs = sorted(set(seeds) & set(random))
        over_random = (
            "; ".join(
                cell({s: seeds[s][split] for s in pairs}, {s: random[s][split] for s in pairs})
                for split in ("val", "test")
            )
            if pairs
            else ""
        )
        labels = sorted({v["labels"] for v in seeds.values()})
        minutes = sum(v["seconds"] for v in seeds.values()) / len(seeds) / 60
        rows.append(
            f"| {arm} | {selection} | {semi} | {fraction:.0%} ({'/'.join(map(str, labels))}) | "
            f"{len(seeds)} | {cell({s: v['val'] for s, v in seeds.items()})} | "
            f"{cell({s: v['test'] for s, v in seeds.items()})} | {gain} | {over_random} | {minutes:.0f} |"
        )
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    (HERE / "table.md").write_text(table())
    print(table())
