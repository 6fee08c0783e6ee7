"""Issue 27's under-training check: does doubling a recipe's training length change validation macro-F1 by
under 0.01? It reads the study's search.csv (each arm's recipe candidates at each fraction, run at the first
seed) and scores the candidates at the chosen learning rate, both lengths, on PBC's whole validation split:
the development data, never test. The search itself chose on each candidate's label-honest draw of a dozen
images; this check spends the full split, as a diagnostic of the study's effort, not as a choice.

    PYTHONPATH=src python docs/results/pbc-current/effort.py [STUDY] [FRACTIONS]
    (defaults: runs/pbc-current, "0.01 0.1"; writes STUDY/effort.csv, scores kept in each candidate's
    evaluate-val/ and reused)
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import leanmae
from leanmae.files import read_json, write_atomic
from leanmae.safe_csv import csv_text

LENGTH_KEYS = ("optim.epochs", "classifier.min_steps")  # the settings that say how long a candidate trains


def full_val_f1(study: Path, candidate: str) -> float:
    """The candidate's macro-F1 on the study split's whole validation subset (scored once, then reused)."""
    run = study / "search" / candidate
    scored = run / "evaluate-val" / "metrics.json"
    if not scored.exists():
        leanmae.evaluate(run, split=study / "split.csv", subset="val")
    return float(read_json(scored)["val"]["macro_f1"])


def split_settings(settings: str) -> tuple[str, str]:
    """(the recipe without its length, the length) of a candidate's space-separated KEY=VALUE settings."""
    entries = settings.split()
    length = [e for e in entries if e.split("=", 1)[0] in LENGTH_KEYS]
    return " ".join(e for e in entries if e not in length), " ".join(length)


def main(study: Path, fractions: list[float]) -> None:
    with open(study / "search.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["status"] == "finished"]
    rows = [r for r in rows if float(r["fraction"]) in fractions]
    out = []
    for arm, fraction in sorted({(r["arm"], float(r["fraction"])) for r in rows}):
        group = [r for r in rows if r["arm"] == arm and float(r["fraction"]) == fraction]
        best = next(r for r in group if r["chosen"] == "True")
        recipe, chosen_length = split_settings(best["settings"])
        lengths = sorted(
            (r for r in group if split_settings(r["settings"])[0] == recipe),
            key=lambda r: int(dict(e.split("=", 1) for e in r["settings"].split())["classifier.min_steps"]),
        )
        if len(lengths) < 2:
            print(f"{arm} at {fraction:g}: only one length of {recipe!r} finished; nothing to compare")
            continue
        shorter, longer = (full_val_f1(study, r["candidate"]) for r in (lengths[0], lengths[-1]))
        change = longer - shorter
        out.append([arm, fraction, recipe, chosen_length, *(round(v, 4) for v in (shorter, longer, change))])
        print(
            f"{arm:>16} at {fraction:g}: {recipe} (chosen length: {chosen_length}); full-val macro-F1 "
            f"{shorter:.3f} -> {longer:.3f} when doubled: {change:+.3f} "
            f"({'under' if abs(change) < 0.01 else 'NOT under'} 0.01)"
        )
    header = ["arm", "fraction", "recipe", "chosen_length", "val_macro_f1_1x", "val_macro_f1_2x", "change"]
    write_atomic(study / "effort.csv", csv_text(header, out))


if __name__ == "__main__":
    main(
        Path(sys.argv[1] if len(sys.argv) > 1 else "runs/pbc-current"),
        [float(v) for v in (sys.argv[2] if len(sys.argv) > 2 else "0.01 0.1").split()],
    )
