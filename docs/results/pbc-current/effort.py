"""Issue 27's under-training check: does doubling a recipe's training length change validation macro-F1 by
under 0.01? It reads each arm's recipe candidates at each fraction (run at the first seed) and scores the
chosen candidate beside the next shorter and the next longer candidate of its recipe (learning rate and
every other setting but the length) on PBC's whole validation split: the development data, never test. The
next longer is the aim's own question, "would more training have changed it?": where the search chose the
longest length it ran (the grid's, or --search-beyond's past it), the chosen candidate is trained again
at twice its length (same seed, labels and settings: its run.json's config, lengths doubled;
STUDY/effort/CANDIDATE-x2). The search itself chose on each
candidate's label-honest draw of a dozen images; this check spends the full split, as a diagnostic of the
study's effort, not as a choice.

    PYTHONPATH=src python docs/results/pbc-current/effort.py [STUDY] [FRACTIONS]
    (defaults: runs/pbc-current, "0.01 0.1"; writes STUDY/effort.csv, scores kept in each run's
    evaluate-val/ and reused; a killed doubled run resumes)
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import leanmae
from leanmae.commands.study import run_status
from leanmae.config import arm_of, candidate_folders
from leanmae.files import read_json, write_atomic
from leanmae.safe_csv import csv_text, unescape

LENGTH = (("optim", "epochs"), ("classifier", "min_steps"))  # the settings that say how long a run trains
CHECKED = "0.01 0.1"  # the fractions checked by default (the smallest budget and a middle one)


def full_val_f1(study: Path, run: Path) -> float:
    """The run's macro-F1 on the study split's whole validation subset (scored once, then reused)."""
    scored = run / "evaluate-val" / "metrics.json"
    if not scored.exists():
        leanmae.evaluate(run, split=study / "split.csv", subset="val")
    return float(read_json(scored)["val"]["macro_f1"])


def config_of(run: Path) -> dict:
    """A run's resolved settings, as its run.json records them."""
    return read_json(run / "run.json")["config"]


def recipe(study: Path, candidate: str) -> tuple[str, tuple[int, int], float]:
    """(the candidate's resolved config without its length, its length as (epochs, min_steps), its learning
    rate), read from its run.json, so that a default left implicit in --search pairs with the same value
    written out."""
    config = config_of(study / "search" / candidate)
    length = tuple(config[section].pop(key) for section, key in LENGTH)
    return json.dumps(config, sort_keys=True), length, config["optim"]["base_lr"]  # type: ignore[return-value]


def doubled(study: Path, candidate: str) -> Path:
    """The candidate trained again at twice its length, everything else as its run.json's config says (so the
    same labels: a selection is keyed by the same seed and inputs); trained once, resumed if killed."""
    run = read_json(study / "search" / candidate / "run.json")
    config = run["config"]
    for section, key in LENGTH:
        config[section][key] *= 2
    out = study / "effort" / f"{candidate}-x2"
    if (out / "metrics.json").exists() and read_json(out / "run.json")["config"] != config:
        raise SystemExit(f"{out}: trained with other settings than {candidate}'s at twice its length")
    if not (out / "metrics.json").exists():
        settings = {k: v for k, v in config.items() if isinstance(v, dict)}  # not fraction, init, split
        write_atomic(out.parent / f"{out.name}.json", json.dumps(settings, indent=1))
        leanmae.finetune(
            study / "split.csv",
            out,
            fraction=config["fraction"],
            init=config["init"],
            preset=None,
            config=out.parent / f"{out.name}.json",
            seed=run["seed"],
            resume=True,
            progress=False,
        )
    if (out / "labelled.csv").read_text() != (study / "search" / candidate / "labelled.csv").read_text():
        raise SystemExit(f"{out}: its labels are not {candidate}'s, so the two do not compare")
    return out


def searched(study: Path, fractions: list[float]) -> dict[tuple[str, float], list[str]]:
    """Each (arm, fraction)'s finished candidates, in the grid's order, where the search has ended: its
    seed-0 grid run has started, which the study does only once every candidate has ended. Read from the
    folders rather than search.csv, which a study writes only when a call of it ends, so that the check
    can run beside a study still going."""
    groups: dict[tuple[str, float], list[str]] = {}
    for folder in candidate_folders(study):
        run = folder.name.rsplit("_c", 1)[0]
        if run_status(folder) == "finished" and run_status(study / "runs" / run):
            config = config_of(folder)
            if config["fraction"] in fractions:
                groups.setdefault((arm_of(run), config["fraction"]), []).append(folder.name)
    return groups


def main(study: Path, fractions: list[float]) -> None:
    out = []
    for (arm, fraction), group in sorted(searched(study, fractions).items()):
        recipes = {name: recipe(study, name) for name in group}
        # the recipe the study uses: its seed-0 grid run's settings are the chosen candidate's
        used = config_of(study / "runs" / group[0].rsplit("_c", 1)[0])
        matches = [name for name in group if config_of(study / "search" / name) == used]
        if len(matches) != 1:
            print(f"{arm} at {fraction:g}: {len(matches)} candidates have its grid run's settings; skipped")
            continue
        best = matches[0]
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
        search = study / "search"
        tried = [(length, search / name) for length, name in same]  # one recipe, shortest first
        rate = recipes[same[0][1]][2]
        names = [run.name for _, run in tried]
        at = names.index(best) if best in names else None
        if at is None:  # the chosen recipe ran at one length only: the recipe that ran at two
            pairs = [(*tried[0], *tried[-1])]
        else:  # the chosen candidate beside the next shorter and the next longer of its recipe
            pairs = [(*tried[at - 1], *tried[at])] if at > 0 else []
            if at + 1 < len(tried):  # a longer one ran (--search-beyond's, where the best took the edge)
                pairs.append((*tried[at], *tried[at + 1]))
            else:  # is the longest tried long enough?
                long = tried[at][0]
                pairs.append((*tried[at], (2 * long[0], 2 * long[1]), doubled(study, best)))
        for a, run_a, b, run_b in pairs:
            f1_a, f1_b = full_val_f1(study, run_a), full_val_f1(study, run_b)
            change = f1_b - f1_a
            chosen = {run_b.name: "the longer", run_a.name: "the shorter"}.get(best, "another recipe")
            trained = "trained for this check" if run_b.parent.name == "effort" else "one of the candidates"
            out.append(
                [arm, fraction, rate, *a, *b, chosen, trained, *(round(v, 4) for v in (f1_a, f1_b, change))]
            )
            print(
                f"{arm:>20} at {fraction:g}: lr {rate:g}, {a[0]} -> {b[0]} epochs "
                f"({a[1]} -> {b[1]} steps at least; the study uses {chosen}; the longer is {trained}): "
                f"whole-val macro-F1 {f1_a:.3f} -> {f1_b:.3f}, "
                f"{change:+.3f} ({'under' if abs(change) < 0.01 else 'NOT under'} 0.01)"
            )
    header = ["arm", "fraction", "base_lr", "epochs", "min_steps", "epochs_long", "min_steps_long", "chosen"]
    header.append("longer_run")
    header += ["val_macro_f1", "val_macro_f1_long", "change"]
    write_atomic(study / "effort.csv", csv_text(header, earlier_rows(study, fractions) + out))


def earlier_rows(study: Path, fractions: list[float]) -> list[list[str]]:
    """effort.csv's rows of the fractions not checked in this call: each fraction is checked once its search
    has ended, so an earlier call's rows stay."""
    if not (study / "effort.csv").exists():
        return []
    with open(study / "effort.csv", newline="") as f:
        header, *rows = csv.reader(f)
    at = [unescape(cell) for cell in header].index("fraction")
    return [[unescape(cell) for cell in row] for row in rows if float(row[at]) not in fractions]


if __name__ == "__main__":
    main(
        Path(sys.argv[1] if len(sys.argv) > 1 else "runs/pbc-current"),
        [float(v) for v in (sys.argv[2] if len(sys.argv) > 2 else CHECKED).split()],
    )
