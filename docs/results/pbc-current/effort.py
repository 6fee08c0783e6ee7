"""Issue 27's under-training check: does doubling a recipe's training length change validation macro-F1 by
under 0.01? It reads the study's search.csv (each arm's recipe candidates at each fraction, run at the first
seed) and scores the chosen candidate's recipe at its shortest and longest length on PBC's whole validation
split: the development data, never test. The search itself chose on each candidate's label-honest draw of a
dozen images; this check spends the full split, as a diagnostic of the study's effort, not as a choice.

    PYTHONPATH=src python docs/results/pbc-current/effort.py [STUDY] [FRACTIONS]
    (defaults: runs/pbc-current, "0.01 0.1"; writes STUDY/effort.csv, scores kept in each candidate's
    evaluate-val/ and reused)
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import leanmae
from leanmae.files import read_json, write_atomic
from leanmae.safe_csv import csv_text

LENGTH = (("optim", "epochs"), ("classifier", "min_steps"))  # the settings that say how long a run trains


def full_val_f1(study: Path, candidate: str) -> float:
    """The candidate's macro-F1 on the study split's whole validation subset (scored once, then reused)."""
    run = study / "search" / candidate
    scored = run / "evaluate-val" / "metrics.json"
    if not scored.exists():
        leanmae.evaluate(run, split=study / "split.csv", subset="val")
    return float(read_json(scored)["val"]["macro_f1"])


def recipe(study: Path, candidate: str) -> tuple[str, tuple[int, int], float]:
    """(the candidate's resolved config without its length, its length as (epochs, min_steps), its learning
    rate), read from its run.json, so that a default left implicit in --search pairs with the same value
    written out."""
    config = read_json(study / "search" / candidate / "run.json")["config"]
    length = tuple(config[section].pop(key) for section, key in LENGTH)
    return json.dumps(config, sort_keys=True), length, config["optim"]["base_lr"]  # type: ignore[return-value]


def main(study: Path, fractions: list[float]) -> None:
    with open(study / "search.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["status"] == "finished"]
    rows = [r for r in rows if float(r["fraction"]) in fractions]
    out = []
    for arm, fraction in sorted({(r["arm"], float(r["fraction"])) for r in rows}):
        group = {r["candidate"]: r for r in rows if r["arm"] == arm and float(r["fraction"]) == fraction}
        recipes = {name: recipe(study, name) for name in group}
        best = next(name for name, r in group.items() if r["chosen"] == "True")
        lengths: dict[str, list[tuple[tuple[int, int], str]]] = {}  # recipe -> its (length, candidate)s
        for name, (key, length, _) in recipes.items():
            lengths.setdefault(key, []).append((length, name))
        # the chosen recipe at two lengths; else (a search that doubles only the default rate's length)
        # the recipe that has two
        order = sorted(lengths.values(), key=lambda tried: best not in {name for _, name in tried})
        same = next((sorted(tried) for tried in order if len({length for length, _ in tried}) > 1), None)
        if same is None:
            print(f"{arm} at {fraction:g}: no recipe finished at two lengths; nothing to compare")
            continue
        (short, shorter), (long, longer) = same[0], same[-1]
        rate = recipes[shorter][2]
        f1_short, f1_long = full_val_f1(study, shorter), full_val_f1(study, longer)
        change = f1_long - f1_short
        chosen = "the longer" if best == longer else "the shorter" if best == shorter else "another recipe"
        out.append(
            [arm, fraction, rate, *short, *long, chosen, *(round(v, 4) for v in (f1_short, f1_long, change))]
        )
        print(
            f"{arm:>16} at {fraction:g}: lr {rate:g}, {short[0]} -> {long[0]} epochs "
            f"({short[1]} -> {long[1]} steps at least; {chosen} was chosen): "
            f"whole-val macro-F1 {f1_short:.3f} -> {f1_long:.3f}, "
            f"{change:+.3f} ({'under' if abs(change) < 0.01 else 'NOT under'} 0.01)"
        )
    header = ["arm", "fraction", "base_lr", "epochs", "min_steps", "epochs_long", "min_steps_long", "chosen"]
    header += ["val_macro_f1", "val_macro_f1_long", "change"]
    write_atomic(study / "effort.csv", csv_text(header, out))


if __name__ == "__main__":
    main(
        Path(sys.argv[1] if len(sys.argv) > 1 else "runs/pbc-current"),
        [float(v) for v in (sys.argv[2] if len(sys.argv) > 2 else "0.01 0.1").split()],
    )
