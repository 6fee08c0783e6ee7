"""Plain-language findings computed from the numbers; never drawn from collapsed or failed runs.

Runs that collapsed (one class predicted for the whole test split) or failed are named first. A
finding about a fraction where any run of the compared arms collapsed is withheld, with the reason,
instead of being stated from numbers that describe a broken model.
"""

from __future__ import annotations

import numpy as np

from leanmae.evaluation.stats import estimate, paired
from leanmae.reporting.runs import BASELINE, Run, arms, by_cell, pct
from leanmae.reporting.tables import gain, pretrained


def wrong_confidence(run: Run) -> float | None:
    return run.test["confidence"]["all"]["wrong"]["median"]


def problems(runs: list[Run], failed: list[str] | None = None) -> list[str]:
    """The collapsed and failed runs, named: what the reader must know before any number."""
    lines = [
        f"Failed run: {name} (its run.json says failed; rerun the study to retry it)."
        for name in failed or []
    ]
    for arm in arms(runs):
        for f in sorted({r.fraction for r in runs}):
            collapsed = [r.seed for r in by_cell(runs).get((arm, f), []) if r.collapsed()]
            if collapsed:
                lines.append(
                    f"Collapsed: {arm} at {pct(f)} predicted a single class for seed(s) {collapsed}; "
                    "findings that depend on it are withheld."
                )
    return lines


def _collapsed_in(runs: list[Run], f: float, *names: str) -> list[str]:
    return [r.name for r in runs if r.fraction == f and r.arm in names and r.collapsed()]


def findings(runs: list[Run], failed: list[str] | None = None) -> list[str]:
    """Plain-language statements computed from the numbers, after the named problems."""
    if not runs:
        return ["No fine-tuning run has finished yet."]
    groups = by_cell(runs)
    fractions = sorted({r.fraction for r in runs})
    lines = problems(runs, failed)
    for arm in pretrained(runs):
        for f in fractions:
            g = gain(runs, "macro_f1", f, arm)
            if g.n == 0:
                continue
            broken = _collapsed_in(runs, f, arm, BASELINE)
            if broken:
                lines.append(
                    f"Withheld: {arm} minus scratch macro-F1 at {pct(f)} of the labels, because "
                    f"{', '.join(broken)} collapsed."
                )
            elif g.n == 1:
                lines.append(
                    f"At {pct(f)} of the labels, {arm} minus scratch macro-F1 is {g.mean:+.3f} from "
                    "one seed: no interval, so it cannot be told from noise."
                )
            elif g.excludes_zero():
                verb = "adds" if g.mean > 0 else "costs"
                lines.append(
                    f"At {pct(f)} of the labels, {arm} initialisation {verb} {abs(g.mean):.3f} "
                    f"macro-F1 (95 % interval {g.low:+.3f} to {g.high:+.3f}, {g.n} seeds)."
                )
            else:
                lines.append(
                    f"At {pct(f)} of the labels, the macro-F1 difference {arm} minus scratch "
                    f"({g.mean:+.3f}, 95 % interval {g.low:+.3f} to {g.high:+.3f}, {g.n} seeds) is "
                    "within noise."
                )
        for f in fractions:
            if _collapsed_in(runs, f, arm, BASELINE):
                continue
            a = {
                r.seed: wrong_confidence(r)
                for r in groups.get((arm, f), [])
                if wrong_confidence(r) is not None
            }
            b = {
                r.seed: wrong_confidence(r)
                for r in groups.get((BASELINE, f), [])
                if wrong_confidence(r) is not None
            }
            d = paired(a, b)
            if d.n == 0:
                continue
            direction = "more" if d.mean > 0 else "less"
            certainty = (
                "beyond the interval"
                if d.excludes_zero()
                else ("within noise" if d.n > 1 else "one seed, no interval")
            )
            lines.append(
                f"At {pct(f)} of the labels, wrong predictions of {arm} models are {direction} "
                f"confident than from scratch: median confidence {np.mean(list(a.values())):.2f} vs "
                f"{np.mean(list(b.values())):.2f} ({d.mean:+.2f}, {certainty})."
            )
    top = max(fractions)
    for arm in arms(runs):
        rs = [r for r in groups.get((arm, top), []) if "calibration" in r.metrics]
        if not rs:
            continue
        if _collapsed_in(runs, top, arm):
            lines.append(
                f"Withheld: calibration of {arm} at {pct(top)} of the labels, because "
                f"{', '.join(_collapsed_in(runs, top, arm))} collapsed."
            )
            continue
        before = estimate([r.metrics["calibration"]["before"]["ece"] for r in rs])
        after = estimate([r.metrics["calibration"]["after"]["ece"] for r in rs])
        coverage = estimate([r.metrics["refer"]["test"]["coverage"] for r in rs])
        target = rs[0].metrics["refer"]["target_accuracy"]
        lines.append(
            f"{arm} at {pct(top)} of the labels: expected calibration error {before.mean:.3f} before "
            f"and {after.mean:.3f} after temperature scaling; referring predictions under the "
            f"validation-chosen threshold keeps {coverage.mean:.0%} of test images for a {target:.0%} "
            "accuracy target."
        )
    return lines
