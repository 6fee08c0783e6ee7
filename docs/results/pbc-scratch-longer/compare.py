"""Tabulate the 1 % runs at 300 (pbc-honest) and 600 (this folder) optimizer steps, from their metrics.json.

Run from the repository root: ``python docs/results/pbc-scratch-longer/compare.py``; writes
``docs/results/pbc-scratch-longer/comparison.md``. Intervals are leanmae's own (``evaluation.stats``): a
t-interval over seeds on the logit scale, paired by seed for differences. Only finished runs count.
"""

from __future__ import annotations

import json
from pathlib import Path

from leanmae.evaluation.stats import estimate, paired
from leanmae.files import write_atomic

HERE = Path("docs/results/pbc-scratch-longer")
STUDY = Path("docs/results/pbc-honest/runs")
ARMS = {
    "scratch, 300 steps (pbc-honest)": (STUDY, "scratch_f0.01_s{}"),
    "scratch, 600 steps": (HERE / "runs", "scratch-min600_f0.01_s{}"),
    "MAE in-domain, 300 steps (pbc-honest)": (STUDY, "mae-in-domain_f0.01_s{}"),
    "MAE in-domain, 600 steps": (HERE / "runs", "mae-in-domain-min600_f0.01_s{}"),
}
SEEDS = range(5)


def scores(folder: Path, pattern: str, split: str) -> dict[int, float]:
    """Macro-F1 on ``split`` of each seed's finished run."""
    found = {}
    for seed in SEEDS:
        run = folder / pattern.format(seed)
        info = run / "run.json"
        if info.exists() and json.loads(info.read_text()).get("status") == "finished":
            found[seed] = json.loads((run / "metrics.json").read_text())[split]["macro_f1"]
    return found


def main() -> None:
    test = {arm: scores(*where, "test") for arm, where in ARMS.items()}
    val = {arm: scores(*where, "val") for arm, where in ARMS.items()}
    lines = [
        "Macro-F1 at 1 % of the labels (72 train + 12 val), mean ± sd over seeds [95 % interval].",
        "Validation is the run's own 12 honest val labels; test is the 2,060-image test split.",
        "",
        "| arm | seeds | val macro-F1 | test macro-F1 |",
        "| --- | --- | --- | --- |",
    ]
    for arm in ARMS:
        lines.append(
            f"| {arm} | {len(test[arm])} | {estimate(list(val[arm].values())).text()} | "
            f"{estimate(list(test[arm].values())).text()} |"
        )
    lines += [
        "",
        "Paired by seed (test macro-F1):",
        "",
        "| comparison | seeds | difference [95 % interval] |",
        "| --- | --- | --- |",
    ]
    names = list(ARMS)
    for a, b in [(names[1], names[0]), (names[3], names[2]), (names[2], names[0]), (names[3], names[1])]:
        d = paired(test[a], test[b])
        lines.append(f"| {a} − {b} | {d.n} | {d.text()} |")
    write_atomic(HERE / "comparison.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
