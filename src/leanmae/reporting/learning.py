"""The answer to "how many labels do I need?": learning curves per arm, labels needed, label savings.

Each arm's test macro-F1 is read against the number of labelled images (training labels, plus
validation labels where a run's validation set was a label fraction too) by
``leanmae.evaluation.learning_curve``: between the measured means (the answer) and by a fitted power law
(beside it, to show how much the answer depends on the curve). Collapsed runs (one class predicted for
everything) are left out and named; an arm with a label fraction where every run collapsed gets no
curve, because a curve without that point would describe a different experiment.

Every sentence says what a lab must bring: labelled images and the unlabelled images its pretraining
used. Any number of labels outside the label counts run carries the word "extrapolated" in the same
sentence, so no reader takes a guess beyond the runs for a measurement.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from leanmae.errors import ConfigError
from leanmae.evaluation.learning_curve import Curves, Interval, fit_arms
from leanmae.reporting.runs import BASELINE, Run, arms, labels_at, unlabelled_images
from leanmae.reporting.tables import Table

METRIC = "macro_f1"
METRIC_NAME = "macro-F1"
OWN_SHARE = 0.95  # default target: 95 % of the arm's own all-labels score
HOW = (
    "read between the measured means (the mean over seeds at each label count, made monotone by isotonic "
    "regression, joined linearly in log labels), which cannot extrapolate; the 95 % interval covers seed "
    "noise and the choice of curve: it spans the bootstrap percentile intervals (seeds drawn with "
    "replacement, paired across arms) of that reading and of a fitted inverse power law, whose own "
    "answer is shown beside it"
)


@dataclass
class Answer:
    """Everything the headline and the learning-curve figure and table say."""

    curves: Curves
    points: dict[str, dict[float, dict[int, float]]]  # arm -> labels -> seed -> score (no collapsed runs)
    top: dict[str, float]  # arm -> mean score at its largest label count
    withheld: dict[str, str]  # arm -> why it has no curve
    excluded: dict[str, list[str]]  # arm -> collapsed runs left out of its curve
    target: float | None  # the common target of the savings
    target_source: str
    classes: int
    val_mode: str
    unlabelled: dict[str, int | None]  # arm -> unlabelled images behind its start (None: not known)

    def largest(self, arm: str) -> float:
        """The most labels ``arm`` was run with: an arm may stop below the study's largest fraction (a label
        choice or FixMatch has no run with all labels), and "not reached" says nothing beyond it."""
        return max(self.points[arm])

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
    """Read every arm; None when no arm has runs at three label counts (too few for a curve)."""
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
    return Answer(
        fit_arms(points),
        points,
        top,
        withheld,
        excluded,
        target,
        source,
        classes,
        val_mode,
        unlabelled_images(runs),
    )


def count(n: float) -> str:
    return "not reached" if math.isinf(n) else f"{n:,.0f}"


def ratio(x: float) -> str:
    """A ratio to two significant figures below 1 (0.03, not 0.0), one decimal above."""
    if math.isnan(x):
        return "—"
    return "∞" if math.isinf(x) else (f"{x:.2g}" if x < 1 else f"{x:,.1f}")


def interval_text(i: Interval, fmt: Callable[[float], str] = count) -> str:
    if math.isnan(i.low):
        return "no interval"
    return f"{fmt(i.low)}–{fmt(i.high)}"


def _detail(a: Answer, i: Interval, fmt: Callable[[float], str] = count, labels: bool = True) -> str:
    """``95 % interval 195–420; power law 235``, and "extrapolated" where a number of labels lies outside
    the label counts run (``labels``: the numbers are label counts, not ratios of them)."""
    law = "no power-law answer" if math.isnan(i.power_law) else f"power law {fmt(i.power_law)}"
    outside = labels and any(a.curves.extrapolated(x) for x in (i.value, i.low, i.high, i.power_law))
    mark = (
        f"; extrapolated where outside the {a.curves.smallest:,.0f}–{a.curves.largest:,.0f} labels run"
        if outside
        else ""
    )
    return f"95 % interval {interval_text(i, fmt)}; {law}{mark}"


def unlabelled_text(n: int | None) -> str:
    if n is None:
        return "unlabelled images: unknown"
    return "no unlabelled images" if n == 0 else f"the {n:,} unlabelled images of its pretraining pool"


def learning_table(a: Answer) -> Table:
    rows = []
    for arm in a.points:
        unlabelled = a.unlabelled.get(arm)
        cells: list[str] = [arm, f"{a.top[arm]:.3f}", "unknown" if unlabelled is None else f"{unlabelled:,}"]
        if arm in a.withheld:
            rows.append([*cells, "", f"withheld: {a.withheld[arm]}", "", "", "; ".join(a.excluded[arm])])
            continue
        own = a.own_target(arm)
        common = a.needed(arm, a.target) if a.target is not None else None
        s = a.savings(arm) if arm != BASELINE else None
        rows.append(
            [
                *cells,
                f"{own:.3f}",
                _cell(a, a.needed(arm, own)),
                "" if common is None else _cell(a, common),
                "" if s is None else f"{ratio(s.value)} [{_detail(a, s, ratio, labels=False)}]",
                "; ".join(a.excluded[arm]),
            ]
        )
    target = "" if a.target is None else f"{a.target:.3f} ({a.target_source})"
    return Table(
        "labels_needed",
        "Labelled images needed, read between the measured means [95 % interval over seeds and curve "
        f"choice; a fitted power law's answer beside it]. Common target {METRIC_NAME} {target}",
        [
            "arm",
            f"{METRIC_NAME} with all labels",
            "unlabelled images",
            "own target (95 %)",
            "labels for own target",
            "labels for common target",
            "label savings vs scratch (× fewer)",
            "collapsed runs left out",
        ],
        rows,
    )


def _cell(a: Answer, i: Interval) -> str:
    point = f"at most {count(i.value)}" if i.value <= a.curves.smallest else count(i.value)
    return f"{point} [{_detail(a, i)}]"


def headline(a: Answer | None, runs: list[Run]) -> list[str]:
    """The sentences that answer the question: labels and unlabelled images per arm, and the savings."""
    if a is None and runs and all(r.collapsed() for r in runs):
        return [
            "Withheld: every run collapsed to predicting one class, so no learning curve is read "
            "and no labels-needed answer is given."
        ]
    if a is None:
        return [
            "Too few label fractions for a learning curve (three or more are needed); see the table below."
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
            lines.append(f"Withheld for {arm}: {a.withheld[arm]}, so its learning curve is not read.")
            continue
        needed, s = a.needed(arm, a.target), a.savings(arm)
        head = f"With {arm}, {_reach(a, arm, needed, a.unlabelled.get(arm))}"
        if base is None or s is None:
            lines.append(f"{head}; scratch has no curve ({a.withheld.get(BASELINE, 'not run')}).")
            continue
        scratch = f"from scratch, with no unlabelled images, {_takes(a, base)} ({_detail(a, base)})"
        if math.isnan(s.value):
            law = "" if math.isnan(s.power_law) else f" (power law, extrapolated: {ratio(s.power_law)})"
            lines.append(f"{head}; {scratch}: neither reaches it within the labels run, so no ratio{law}.")
            continue
        if _beyond(a, arm, needed, base):
            short = arm if math.isinf(needed.value) else BASELINE
            lines.append(f"{head}; {scratch}: {short} was not run with that many labels, so no ratio.")
            continue
        verdict = (
            "saves labels"
            if s.low > 1
            else ("costs labels" if s.high < 1 else "cannot be told apart from scratch")
        )
        lines.append(
            f"{head}; {scratch}, {_times(a, s, needed, base)} ({_detail(a, s, ratio, labels=False)}): "
            f"{arm} {verdict}."
        )
    if not lines and base is not None:
        lines.append(f"From scratch, {_reach(a, BASELINE, base, 0)}.")
    if any(a.excluded.values()):
        lines.append(
            "Read without the collapsed run(s) "
            + "; ".join(n for names in a.excluded.values() for n in names)
            + "."
        )
    return lines


def _reach(a: Answer, arm: str, i: Interval, unlabelled: int | None) -> str:
    """``N labelled images (about n per class) plus U unlabelled ... reach macro-F1 T (95 % interval ...)``,
    in the words the runs allow: "at most" the fewest labels run where those reach it already (no lab
    can act on a curve's 0), "not reached within" the most labels run where those do not."""
    target = f"{METRIC_NAME} {a.target:.3f}"
    plus = f" plus {unlabelled_text(unlabelled)}" if unlabelled else ""
    unknown = [unlabelled_text(None)] if unlabelled is None else []
    if math.isinf(i.value):
        run = f"the {a.largest(arm):,.0f} labelled images run{plus}"
        return f"{target} is not reached within {run}{_aside([*unknown, _detail(a, i)])}"
    if i.value <= a.curves.smallest:
        labelled = f"at most {a.curves.smallest:,.0f} labelled images"
        notes = ["the fewest run", "fewer were not measured"]
    else:
        labelled, notes = f"{count(i.value)} labelled images", [f"about {i.value / a.classes:,.0f} per class"]
    return f"{labelled}{_aside(notes + unknown)}{plus} reach {target}{_aside([_detail(a, i)])}"


def _aside(notes: list[str]) -> str:
    return f" ({'; '.join(notes)})" if notes else ""


def _beyond(a: Answer, arm: str, needed: Interval, base: Interval) -> bool:
    """Whether one of the two reaches the target only with more labels than the other was run with, the
    other not reaching it: the runs measure no ratio (not "fewer" or "more than")."""
    return (math.isinf(needed.value) and base.value > a.largest(arm)) or (
        math.isinf(base.value) and needed.value > a.largest(BASELINE)
    )


def _takes(a: Answer, base: Interval) -> str:
    if math.isinf(base.value):
        return f"it is not reached within the {a.largest(BASELINE):,.0f} labelled images run"
    return f"it takes {'at most ' if base.value <= a.curves.smallest else ''}{count(base.value)}"


def _times(a: Answer, s: Interval, needed: Interval, base: Interval) -> str:
    """How many times the arm's labels scratch needs; a bound where either answer is one ("at most" the
    fewest labels, "not reached" within the most)."""
    if math.isinf(needed.value):
        return "fewer: scratch reaches the target, this arm does not within the labels run"
    if math.isinf(base.value):
        return f"more than {a.largest(BASELINE) / needed.value:.1f} times as many"
    if base.value <= a.curves.smallest and needed.value <= a.curves.smallest:
        return "both reach it with the fewest labels run, so the runs measure no ratio"
    if base.value <= a.curves.smallest:  # scratch at most the fewest, the arm more: an upper bound
        return f"at most {ratio(s.value)} times as many"
    bound = "at least " if needed.value <= a.curves.smallest < base.value else ""
    return f"{bound}{ratio(s.value)} times as many"


def _own(a: Answer, arm: str) -> str:
    if arm in a.withheld:
        return f"{arm} withheld ({a.withheld[arm]})"
    cell = _cell(a, a.needed(arm, a.own_target(arm)))
    return f"{arm} {cell} labelled images and {unlabelled_text(a.unlabelled.get(arm))}"
