"""Issue 24's tables, computed from the run folders run.sh filled: every recipe on PBC's validation split and
both external sets (macro-F1 over all classes and over the classes with at least 10 images, as the data's
README asks), the shift alarm on each, and the accuracy of the cells a model keeps. Writes table.md here
and the same text into docs/robustness.md between its cross-lab markers.

    python docs/results/cross-lab/table.py
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DOC = HERE.parents[1] / "robustness.md"
BEGIN, END = "<!-- cross-lab tables: begin -->", "<!-- cross-lab tables: end -->"
SETS = ("tecom", "cellavision_blog")


def f1_10plus(report: dict) -> float:
    """Macro-F1 over the classes with at least 10 images."""
    return float(np.mean([c["f1"] for c in report["per_class"].values() if c["support"] >= 10]))


def one_run(folder: Path) -> dict:
    """What a run's files say: PBC val, both external sets, the alarm and the kept cells' accuracy."""
    arm, _, rest = folder.name.partition("-")
    recipe, _, seed = rest.rpartition("-s")
    if arm == "mae" and recipe.startswith("target-"):
        arm, recipe = "mae-target", recipe[len("target-") :]
    row = {"arm": arm, "recipe": recipe, "seed": int(seed), "folder": folder.name}
    val = json.loads((folder / "val.json").read_text())["val"]
    row["pbc val"] = val["macro_f1"]
    row["pbc val flagged"] = None if val.get("shift") is None else val["shift"]["flagged_share"]
    row["pbc val alarm"] = None if val.get("shift") is None else val["shift"]["alarm"]
    test = json.loads((folder / "metrics.json").read_text()).get("shift", {}).get("test")
    row["pbc test alarm"] = None if test is None else test["alarm"]
    row["pbc test flagged"] = None if test is None else test["flagged_share"]
    for name in SETS:
        report = json.loads((folder / f"{name}.json").read_text())["external"]
        row[name] = report["macro_f1"]
        row[f"{name} >=10"] = f1_10plus(report)
        row[f"{name} accuracy"] = report["accuracy"]
        shift, kept = report.get("shift"), report.get("kept")
        row[f"{name} flagged"] = None if shift is None else shift["flagged_share"]
        row[f"{name} alarm"] = None if shift is None else shift["alarm"]
        by_confidence = kept["confidence_only"] if kept else None
        row[f"{name} kept by confidence"] = by_confidence
        row[f"{name} kept"] = None if kept is None else kept["confidence_and_shift"]
    return row


def runs() -> list[dict]:
    folders = sorted(p for p in HERE.glob("*-s[0-9]*") if (p / "val.json").exists())
    return [one_run(p) for p in folders]


def mean_sd(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}"


def kept_text(kept: dict | None) -> str:
    if kept is None:
        return "—"
    accuracy = kept["accuracy_kept"]
    if not kept["kept"] or accuracy is None or (isinstance(accuracy, float) and math.isnan(accuracy)):
        return "none (all referred)"
    return f"{kept['kept']} ({accuracy:.2f})"


def summary(rows: list[dict]) -> str:
    """Mean ± sd over seeds per arm and recipe."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["arm"], r["recipe"]), []).append(r)
    lines = [
        "| arm | recipe | seeds | PBC val macro-F1 (1,030) | tecom macro-F1 (300) | tecom, classes >= 10 | "
        "cellavision macro-F1 (100) | cellavision, classes >= 10 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for (arm, recipe), group in sorted(groups.items()):
        cells = [mean_sd([r[k] for r in group]) for k in ("pbc val", "tecom", "tecom >=10")]
        cells += [mean_sd([r[k] for r in group]) for k in ("cellavision_blog", "cellavision_blog >=10")]
        seeds = ",".join(str(r["seed"]) for r in group)
        lines.append(f"| {arm} | {recipe} | {seeds} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def alarm_table(rows: list[dict]) -> str:
    """Per run: share of images flagged and whether the folder alarm fired; cells kept (accuracy)."""
    lines = [
        "| run | PBC val flagged (1,030) | PBC test flagged (2,060) | tecom flagged | cellavision flagged "
        "| tecom kept by confidence alone | tecom kept with the alarm "
        "| cellavision kept by confidence alone | cellavision kept with the alarm |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]

    def flag(share: float | None, alarm: bool | None) -> str:
        return "—" if share is None else f"{share:.0%}" + (" **alarm**" if alarm else ", no alarm")

    for r in rows:
        cells = [
            flag(r["pbc val flagged"], r["pbc val alarm"]),
            flag(r["pbc test flagged"], r["pbc test alarm"]),
            flag(r["tecom flagged"], r["tecom alarm"]),
            flag(r["cellavision_blog flagged"], r["cellavision_blog alarm"]),
            kept_text(r["tecom kept by confidence"]),
            kept_text(r["tecom kept"]),
            kept_text(r["cellavision_blog kept by confidence"]),
            kept_text(r["cellavision_blog kept"]),
        ]
        lines.append(f"| {r['folder']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def tent_table(rows: list[dict]) -> str:
    """TENT (tent.sh) against no adaptation, per run and external set."""
    lines = [
        "| run | set | macro-F1 before | after TENT | mean entropy before -> after "
        "| flagged after | alarm after |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    before = {r["folder"]: r for r in rows}
    for folder in sorted(HERE.glob("tent-*")):
        name = folder.name[len("tent-") :]
        for set_name in SETS:
            adapted = json.loads((folder / f"{set_name}.json").read_text())["external"]
            settings = json.loads((folder / f"{set_name}-adapt.json").read_text())
            lines.append(
                f"| {name} | {set_name} | {before[name][set_name]:.3f} | {adapted['macro_f1']:.3f} "
                f"| {settings['mean_entropy_before']:.3f} -> {settings['mean_entropy_after']:.3f} "
                f"| {adapted['shift']['flagged_share']:.0%} "
                f"| {'yes' if adapted['shift']['alarm'] else 'no'} |"
            )
    return "\n".join(lines)


def main() -> None:
    rows = runs()
    text = (
        "Macro-F1, mean ± sd over seeds (one value: one seed); in-domain MAE (`mae`), the same MAE continued "
        "on the external images (`mae-target`) or scratch, 10 % of PBC's labels (822), pbc-honest split. "
        "Recipes are chosen on these columns; PBC's test split is not among them.\n\n"
        + summary(rows)
        + "\n\nThe shift alarm (share of images flagged, one by one, and whether the folder alarm fired) and "
        "the cells kept, as count (accuracy): by the refer-to-expert confidence threshold alone, and with "
        "the shift flags and alarm.\n\n"
        + alarm_table(rows)
        + "\n\nTest-time adaptation (TENT, `leanmae adapt`, 50 steps of 64 images, lr 0.001; tent.sh) "
        "against none, on each external set's own unlabelled images.\n\n" + tent_table(rows) + "\n"
    )
    (HERE / "table.md").write_text(text)
    doc = DOC.read_text()
    if BEGIN in doc:
        head, rest = doc.split(BEGIN)
        DOC.write_text(head + BEGIN + "\n" + text + END + rest.split(END)[1])
    print(text)


if __name__ == "__main__":
    main()
