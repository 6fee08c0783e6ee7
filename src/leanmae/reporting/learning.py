"""The answer to "how many labels do I need?": learning curves per arm, labels needed, label savings.

Each arm's test macro-F1 is fitted against the number of labelled images (training labels, plus
validation labels where a run's validation set was a label fraction too) with the inverse power
law of ``leanmae.evaluation.learning_curve``. Collapsed runs (one class predicted for everything)
are left out of the fit and named; an arm with a label fraction where every run collapsed gets no
curve, because a fit without that point would describe a different experiment.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from leanmae.errors import ConfigError
from leanmae.evaluation.learning_curve import Curves, Interval, fit_arms
from leanmae.reporting.runs import BASELINE, Run, arms, labels_at
from leanmae.reporting.tables import Table

METRIC = "macro_f1"
METRIC_NAME = "macro-F1"
OWN_SHARE = 0.95  # default target: 95 % of the arm's own all-labels score


@dataclass
class Answer:
    """Everything the headline and the learning-curve figure and table say."""

    curves: Curves
    points: dict[
        str, dict[float, dict[int, float]]
    ]  # arm -> labels -> seed -> score (collapsed runs left out)
    top: dict[str, float]  # arm -> mean score at its largest label count
    withheld: dict[str, str]  # arm -> why it has no curve
    excluded: dict[str, list[str]]  # arm -> collapsed runs left out of its fit
    target: float | None  # the common target of the savings
    target_source: str
    classes: int
    val_mode: str

    def own_target(self, arm: str) -> float:
        return OWN_SHARE * self.top[arm]

    def needed(self, arm: str, target: float) -> Interval | None:
        return None if arm in self.withheld else self.curves.labels_needed(arm, target)

    def savings(self, arm: str) -> Interval | None:
        if self.target is None or arm in self.withheld or BASELINE in self.withheld:
            return None
        return self.curves.savings(arm, self.target)


def check_target(target: float | None) -> None:
    """A --target the answer can use; a study checks it before training, not after its last run."""
    if target is not None and not 0 < target < 1:
        raise ConfigError(f"--target {target}: a {METRIC_NAME} target lies between 0 and 1")


def answer(runs: list[Run], target: float | None = None) -> Answer | None:
    """Fit every arm; None when no arm has runs at three label counts (too few to fit a curve)."""
    points: dict[str, dict[float, dict[int, float]]] = {}
    withheld, excluded, top = {}, {}, {}
    for arm in arms(runs):
        mine = [r for r in runs if r.arm == arm]
        fine = [r for r in mine if not r.collapsed()]
        excluded[arm] = [r.name for r in mine if r.collapsed()]
        lost = sorted({r.fraction for r in mine} - {r.fraction for r in fine})
        if lost:
            withheld[arm] = (
                "every run at " + ", ".join(f"{f * 100:g} %" for f in lost) + " collapsed to one class"
            )
        per: dict[float, dict[int, float]] = {}
        for r in fine:
            per.setdefault(float(r.labels.total or r.metrics["train_images"]), {})[r.seed] = r.test[METRIC]
        if per:
            points[arm] = per
            top[arm] = sum(per[max(per)].values()) / len(per[max(per)])
    if not points or max(len(per) for per in points.values()) < 3:
        return None
    for arm in [arm for arm, per in points.items() if len(per) < 3]:  # e.g. a study still running
        withheld.setdefault(
            arm, f"runs at only {len(points[arm])} label count(s); a curve needs three or more"
        )
        del points[arm]
    check_target(target)
    source = "set with --target"
    if target is None and BASELINE in top:
        largest = max(r.fraction for r in runs if r.arm == BASELINE)
        target, source = (
            OWN_SHARE * top[BASELINE],
            f"95 % of scratch's {METRIC_NAME} "
            + (
                "with all labels"
                if largest == 1
                else f"at {largest:.0%} of the labels, its largest run so far"
            ),
        )
    classes = len(runs[0].test["per_class"])
    val_mode = next(iter(labels_at(runs).values())).val_mode
    return Answer(fit_arms(points), points, top, withheld, excluded, target, source, classes, val_mode)


def count(n: float) -> str:
    return "not reached" if math.isinf(n) else f"{n:,.0f}"


def interval_text(i: Interval, fmt=count) -> str:
    if math.isnan(i.low):
        return "no interval"
    return f"{fmt(i.low)}–{fmt(i.high)}"


def _ratio(x: float) -> str:
    return "—" if math.isnan(x) else ("∞" if math.isinf(x) else f"{x:.1f}")


def _mark(a: Answer, needed: Interval) -> str:
    if math.isinf(needed.value):
        return "the fitted plateau lies below the target"
    if a.curves.extrapolated(needed.value):
        return f"extrapolated (runs span {a.curves.smallest:,.0f}–{a.curves.largest:,.0f} labels)"
    return ""


def learning_table(a: Answer) -> Table:
    rows = []
    for arm in a.points:
        if arm in a.withheld:
            rows.append(
                [
                    arm,
                    f"{a.top[arm]:.3f}",
                    "",
                    f"withheld: {a.withheld[arm]}",
                    "",
                    "",
                    "; ".join(a.excluded[arm]),
                ]
            )
            continue
        own = a.own_target(arm)
        needed_own = a.needed(arm, own)
        needed_common = a.needed(arm, a.target) if a.target is not None else None
        s = a.savings(arm) if arm != BASELINE else None
        rows.append(
            [
                arm,
                f"{a.top[arm]:.3f}",
                f"{own:.3f}",
                f"{count(needed_own.value)} [{interval_text(needed_own)}] {_mark(a, needed_own)}".strip(),
                ""
                if needed_common is None
                else (
                    f"{count(needed_common.value)} [{interval_text(needed_common)}] {_mark(a, needed_common)}"
                ).strip(),
                "" if s is None else f"{_ratio(s.value)} [{interval_text(s, _ratio)}]",
                "; ".join(a.excluded[arm]),
            ]
        )
    target = "" if a.target is None else f"{a.target:.3f} ({a.target_source})"
    return Table(
        "labels_needed",
        "Labelled images needed, from the fitted learning curves (inverse power law, weighted least "
        f"squares; [95 % percentile interval, bootstrap over seeds]). Common target {METRIC_NAME} "
        f"{target}",
        [
            "arm",
            f"{METRIC_NAME} with all labels",
            "own target (95 %)",
            "labels for own target",
            "labels for common target",
            "label savings vs scratch (× fewer)",
            "collapsed runs left out",
        ],
        rows,
    )


def headline(a: Answer | None, runs: list[Run]) -> list[str]:
    """One or two sentences that answer the question, computed from the fit."""
    if a is None and runs and all(r.collapsed() for r in runs):
        return [
            "Withheld: every run collapsed to predicting one class, so no learning curve is fitted "
            "and no labels-needed answer is given."
        ]
    if a is None:
        return [
            "Too few label fractions to fit a learning curve (three or more are needed); see the table below."
        ]
    if a.target is None:
        return [
            f"Labels needed for {METRIC_NAME} {OWN_SHARE:.0%} of each arm's own all-labels score: "
            + "; ".join(_own(a, arm) for arm in a.points)
            + "."
        ]
    lines = []
    base = a.needed(BASELINE, a.target) if BASELINE in a.points else None
    for arm in dict.fromkeys([*a.points, *a.withheld]):
        if arm == BASELINE:
            continue
        if arm in a.withheld:
            lines.append(f"Withheld for {arm}: {a.withheld[arm]}, so its learning curve is not fitted.")
            continue
        needed, s = a.needed(arm, a.target), a.savings(arm)
        head = (
            f"With {arm}, {_labelled(a, needed.value)} reach "
            f"{METRIC_NAME} {a.target:.3f} (95 % interval {interval_text(needed)}{_note(a, needed)})"
        )
        if base is None or s is None:
            lines.append(
                head
                + (
                    f"; scratch has no curve ({a.withheld.get(BASELINE, 'not run')})."
                    if base is None or BASELINE in a.withheld
                    else "."
                )
            )
            continue
        verdict = (
            "saves labels"
            if s.low > 1
            else ("costs labels" if s.high < 1 else "cannot be told apart from scratch")
        )
        lines.append(
            head + f"; from scratch it takes {count(base.value)} (95 % interval "
            f"{interval_text(base)}{_note(a, base)}), {_ratio(s.value)} times as many (95 % interval "
            f"{interval_text(s, _ratio)}): {arm} {verdict}."
        )
    if not lines and base is not None:
        lines.append(
            f"From scratch, {_labelled(a, base.value)} reach "
            f"{METRIC_NAME} {a.target:.3f} (95 % interval {interval_text(base)}{_note(a, base)})."
        )
    if any(a.excluded.values()):
        lines.append(
            "Fitted without the collapsed run(s) "
            + "; ".join(n for names in a.excluded.values() for n in names)
            + "."
        )
    return lines


def _labelled(a: Answer, n: float) -> str:
    """``n`` labels in words; below the fewest labels run, only what was measured: a curve fitted to runs
    that all reach the target puts it at 0 labels, which no lab can act on."""
    if n < a.curves.smallest:
        return f"at most {a.curves.smallest:,.0f} labelled images (the fewest run; fewer were not measured)"
    per_class = "" if math.isinf(n) else f" (about {n / a.classes:,.0f} per class)"
    return f"{count(n)} labelled images{per_class}"


def _note(a: Answer, i: Interval) -> str:
    mark = _mark(a, i)
    return f"; {mark}" if mark else ""


def _own(a: Answer, arm: str) -> str:
    if arm in a.withheld:
        return f"{arm} withheld ({a.withheld[arm]})"
    needed = a.needed(arm, a.own_target(arm))
    return f"{arm} {count(needed.value)} [{interval_text(needed)}]"
