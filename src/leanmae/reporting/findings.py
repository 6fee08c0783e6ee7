"""Plain-language findings computed from the numbers; never drawn from collapsed or failed runs.

Runs that collapsed (one class predicted for the whole test split) or failed are named first. A
finding about a fraction where any run of the compared arms collapsed is withheld, with the reason,
instead of being stated from numbers that describe a broken model.
"""

from __future__ import annotations

import math

import numpy as np

from leanmae.evaluation.calibration import refer_check, refer_images_needed
from leanmae.evaluation.stats import estimate, paired
from leanmae.reporting.runs import BASELINE, Run, arms, by_cell, pct
from leanmae.reporting.tables import count_range, gain, pretrained


def wrong_confidence(run: Run) -> float | None:
    return run.test["confidence"]["all"]["wrong"]["median"]


def problems(runs: list[Run], failed: dict[str, bool] | None = None) -> list[str]:
    """The collapsed and failed runs, named: what the reader must know before any number. ``failed`` maps
    each failed run to whether the study still plans it (``failed_runs``)."""
    lines = [
        f"Failed run: {name} (its run.json says failed; rerun the study to retry it)."
        if planned
        else f"Failed run outside the study's current plan: {name} (rerunning the study leaves it; delete "
        "its folder to drop this line)."
        for name, planned in (failed or {}).items()
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


def findings(runs: list[Run], failed: dict[str, bool] | None = None) -> list[str]:
    """Plain-language statements computed from the numbers, after the named problems: one line per finding
    and arm, over every label fraction, so that the list reads as findings rather than a table."""
    if not runs:
        return ["No fine-tuning run has finished yet."]
    fractions = sorted({r.fraction for r in runs})
    lines = problems(runs, failed)
    for arm in pretrained(runs):
        kept = []
        for f in fractions:
            broken = _collapsed_in(runs, f, arm, BASELINE)
            if broken:
                lines.append(
                    f"Withheld: {arm} minus scratch macro-F1 at {pct(f)} of the labels, because "
                    f"{', '.join(broken)} collapsed."
                )
            else:
                kept.append(f)
        # a variant arm (ARM+NAME: its own label choice or semi-supervision) differs from scratch in more
        # than its start
        subject = f"{arm} initialisation" if "+" not in arm else f"{arm} against scratch"
        lines += _merged(subject, [_gain(runs, arm, f) for f in kept])
        lines += _merged(f"Wrong predictions of {arm} models", [_wrong(runs, arm, f) for f in kept])
    return lines + _calibration(runs, max(fractions)) + _rough_refer(runs)


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _merged(subject: str, found: list[tuple[float, str, str] | None]) -> list[str]:
    """One line for a finding over the label fractions, each verdict with the fractions it holds at and
    their numbers; no line where no fraction has one. ``found``: (fraction, verdict, numbers)."""
    verdicts: dict[str, list[str]] = {}
    for f, verdict, numbers in (item for item in found if item is not None):
        verdicts.setdefault(verdict, []).append(f"{pct(f)} of the labels ({numbers})")
    if not verdicts:
        return []
    return [f"{subject} " + "; ".join(f"{verdict} at {_and(at)}" for verdict, at in verdicts.items()) + "."]


def _gain(runs: list[Run], arm: str, f: float) -> tuple[float, str, str] | None:
    g = gain(runs, "macro_f1", f, arm)
    if g.n == 0:
        return None
    if g.n == 1:
        return f, "has one seed, no interval, so cannot be told from noise", f"{g.mean:+.3f}"
    verdict = (("adds" if g.mean > 0 else "costs") + " macro-F1") if g.excludes_zero() else "is within noise"
    return f, verdict, f"{g.mean:+.3f}, 95 % interval {g.low:+.3f} to {g.high:+.3f}, {g.n} seeds"


def _wrong(runs: list[Run], arm: str, f: float) -> tuple[float, str, str] | None:
    """How confident the arm's wrong predictions are against scratch's (median confidence, paired by seed)."""
    groups = by_cell(runs)
    a, b = (
        {r.seed: wrong_confidence(r) for r in groups.get((name, f), []) if wrong_confidence(r) is not None}
        for name in (arm, BASELINE)
    )
    d = paired(a, b)
    if d.n == 0:
        return None
    # the direction as the numbers show it (two decimals): a difference that rounds to zero is none
    direction = (
        "as confident as" if round(d.mean, 2) == 0 else ("more" if d.mean > 0 else "less") + " confident than"
    )
    verdict = (
        f"are {direction} from scratch"
        if d.excludes_zero()
        else (
            "differ from scratch within noise"
            if d.n > 1
            else f"are {direction} from scratch (one seed, no interval)"
        )
    )
    means = f"{np.mean(list(a.values())):.2f} vs {np.mean(list(b.values())):.2f}"
    return f, verdict, f"median confidence {means}, {d.mean:+.2f}"


def _calibration(runs: list[Run], top: float) -> list[str]:
    """Calibration and the refer-to-expert share of every arm at the largest label fraction, in one line."""
    lines, said = [], []
    for arm in arms(runs):
        rs = [r for r in by_cell(runs).get((arm, top), []) if "calibration" in r.metrics]
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
        said.append(
            f"{arm} {before.mean:.3f} before, {after.mean:.3f} after, keeping {coverage.mean:.0%} for "
            f"{target:.0%}"
        )
    if said:
        lines.append(
            f"At {pct(top)} of the labels, expected calibration error before and after temperature scaling, "
            "and the share of test images the validation-chosen refer-to-expert threshold keeps for an "
            f"accuracy target: {'; '.join(said)}."
        )
    return lines


def _rough_refer(runs: list[Run]) -> list[str]:
    """Where the refer-to-expert threshold was chosen on too few validation images to show its target (the
    rule of three): a lab reading coverage at a small label budget must know it is rough."""
    rough = [
        r
        for r in runs
        if "refer" in r.metrics
        and r.val_images is not None
        and refer_check(r.val_images, r.metrics["refer"]["target_accuracy"]) is not None
    ]
    if not rough:
        return []
    target = max(r.metrics["refer"]["target_accuracy"] for r in rough)
    needed = refer_images_needed(target)
    ask = "no finite number of images" if math.isinf(needed) else f"at least {needed}"
    return [
        f"Rough: at {_and([pct(f) for f in sorted({r.fraction for r in rough})])} of the labels the "
        f"refer-to-expert threshold was chosen on {count_range([r.val_images for r in rough])} validation "
        f"images, too few to show {pct(target)} accuracy ({ask} even with no mistake); read its coverage "
        "and kept accuracy there as rough."
    ]
