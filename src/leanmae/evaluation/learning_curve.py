"""Learning curves: how a test metric grows with the number of labelled images, and what that implies.

Labels needed for a target score are read from the measured points: the mean over seeds at each label
count, made monotone, then read linearly in log(labels) between the two counts around the target. This
reading is the point estimate because it assumes no shape the runs did not show, and it cannot
extrapolate: a target above every mean is "not reached" within the largest count run (``inf``), one
already met at the smallest count is reached "at most" there (the smallest count itself).

- Monotone by isotonic regression (pool adjacent violators, weighted by seeds), not a running maximum:
  a running maximum keeps any lucky high mean and lifts every later count to it, so seed noise could
  only ever lower the labels needed; isotonic regression averages a dip with its neighbours (the
  least-squares monotone curve), so noise moves the answer both ways.
- Linear in log(labels), not PCHIP: learning curves are close to straight over a decade of labels on a
  log axis, and a straight segment between monotone points never overshoots; PCHIP's slopes borrow
  from the neighbouring segments, which with four label counts is a guess rather than a measurement.

The second reading is the inverse power law of Figueroa et al. (2012), "Predicting sample size required
for classification performance", BMC Med Inform Decis Mak 12:8::

    score(n) = a - b * n ** (-c)        a: plateau (<= 1), b > 0, c > 0

fitted by weighted least squares with their weights (the i-th smallest of m label counts has weight
i / m: the large runs vary least between seeds and carry the plateau). It can extrapolate; where the
two readings disagree, the curve's shape is uncertain as well as the seeds.

Both readings are bootstrapped over seeds: each resample draws, at every label count, each arm's own
seeds with replacement from the same uniform numbers, so arms with the same seeds draw the same ones and
comparisons stay paired by seed. The interval reported spans
both methods' percentile intervals, so it covers seed noise and the choice of curve; the power law's
own point estimate travels beside it to show the disagreement. Label savings of an arm are the labels
scratch needs over the labels the arm needs for the same target, with the same treatment.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.optimize import OptimizeWarning, curve_fit
from sklearn.isotonic import isotonic_regression

BOOTSTRAP = 400  # resamples of the seeds; percentiles of 400 are stable to about a percent
LEVEL = 0.95
BASE = "scratch"


@dataclass(frozen=True)
class Measured:
    """The mean score at every label count run, made monotone; read linearly in log(labels) between them."""

    counts: np.ndarray
    means: np.ndarray

    @classmethod
    def of(cls, counts: list[float], means: list[float], seeds: list[int]) -> Measured:
        order = np.argsort(counts)
        monotone = isotonic_regression(np.asarray(means)[order], sample_weight=np.asarray(seeds)[order])
        return cls(np.asarray(counts, dtype=np.float64)[order], monotone)

    def labels_for(self, target: float) -> float:
        """Labels where the reading first meets ``target``: inf beyond the largest count, the smallest
        count where that one meets it already."""
        reached = np.flatnonzero(self.means >= target)
        if len(reached) == 0:
            return math.inf
        i = int(reached[0])
        if i == 0:
            return float(self.counts[0])
        between = self.counts[i - 1 : i + 1]
        log_n = np.interp(target, self.means[i - 1 : i + 1], np.log(between))
        return float(np.clip(np.exp(log_n), *between))  # exp(log(n)) may round past a count run


@dataclass(frozen=True)
class PowerLaw:
    """``score(n) = a - b * n ** -c``."""

    a: float
    b: float
    c: float

    def __call__(self, n: np.ndarray | float) -> np.ndarray:
        return _law(np.asarray(n, dtype=np.float64), self.a, self.b, self.c)

    def labels_for(self, target: float) -> float:
        """Labels needed to reach ``target``; inf where the plateau ``a`` lies at or below it. At least one
        label: a flat fit puts an easy target at 1e-40 labels, which would make any ratio absurd."""
        if target >= self.a:
            return math.inf
        return max(1.0, float((self.b / (self.a - target)) ** (1 / self.c)))


def _law(n: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    return a - b * np.power(n, -c)


def figueroa_weights(counts: np.ndarray) -> np.ndarray:
    """Weight i / m for the i-th smallest of the m distinct label counts (ties share a weight)."""
    distinct = np.unique(counts)
    return (np.searchsorted(distinct, counts) + 1) / len(distinct)


def fit(counts: np.ndarray | list[float], scores: np.ndarray | list[float]) -> PowerLaw | None:
    """Weighted least-squares fit of the inverse power law; None with fewer than three label counts.

    Three parameters need at least three distinct label counts. A failed optimisation returns None
    rather than a curve that does not describe the points.
    """
    n, y = np.asarray(counts, dtype=np.float64), np.asarray(scores, dtype=np.float64)
    if len(np.unique(n)) < 3:
        return None
    sigma = 1 / np.sqrt(figueroa_weights(n))
    top, bottom = float(y[n == n.max()].mean()), float(y[n == n.min()].mean())
    start = (min(top + 0.02, 1.0), max((top - bottom) * n.min() ** 0.5, 1e-6), 0.5)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OptimizeWarning)
            params, _ = curve_fit(
                _law, n, y, p0=start, sigma=sigma, bounds=([0.0, 0.0, 1e-3], [1.0, np.inf, 5.0]), maxfev=20000
            )
    except (RuntimeError, ValueError):
        return None
    return PowerLaw(*map(float, params))


@dataclass(frozen=True)
class Interval:
    """The measured points' answer, an interval over seeds and curve choice, the power law's answer.

    ``inf`` stands for "not reached"; ``power_law`` is nan where the power law could not be fitted.
    """

    value: float
    low: float
    high: float
    power_law: float = math.nan


@dataclass
class Curves:
    """Both readings of every arm, and of every bootstrap resample (paired across arms by seed draw)."""

    measured: dict[str, Measured | None]
    laws: dict[str, PowerLaw | None]
    boot_measured: dict[str, list[Measured | None]]
    boot_laws: dict[str, list[PowerLaw | None]]
    smallest: float
    largest: float  # the label counts run: no reading between them is an extrapolation

    def labels_needed(self, arm: str, target: float) -> Interval | None:
        return self._estimate((arm,), lambda c: c.labels_for(target))

    def savings(self, arm: str, target: float, base: str = BASE) -> Interval | None:
        """Labels ``base`` needs / labels ``arm`` needs for ``target`` (> 1: the arm saves labels)."""
        return self._estimate((base, arm), lambda b, a: _ratio(b.labels_for(target), a.labels_for(target)))

    def extrapolated(self, labels: float) -> bool:
        """A finite label count outside the runs (inf is "not reached", an answer the runs do give)."""
        return math.isfinite(labels) and not self.smallest <= labels <= self.largest

    def _estimate(self, arms: tuple[str, ...], value: Callable[..., float]) -> Interval | None:
        """``value`` of the arms' measured readings, its interval over both methods' resamples (a
        resample whose power law did not fit is left out), and ``value`` of the power laws."""
        point, laws = [self.measured.get(a) for a in arms], [self.laws.get(a) for a in arms]
        if None in point:
            return None
        ends = [
            _percentiles(
                [value(*drawn) for drawn in zip(*(boot[a] for a in arms), strict=True) if None not in drawn]
            )
            for boot in (self.boot_measured, self.boot_laws)
        ]
        lows, highs = (
            [lo for lo, _ in ends if not math.isnan(lo)],
            [hi for _, hi in ends if not math.isnan(hi)],
        )
        return Interval(
            value(*point),
            min(lows, default=math.nan),
            max(highs, default=math.nan),
            math.nan if None in laws else value(*laws),
        )


def _ratio(base: float, arm: float) -> float:
    if (math.isinf(base) and math.isinf(arm)) or base == arm == 0:
        return math.nan  # neither reaches the target, or a flat curve reaches it at once: no ratio
    return math.inf if arm == 0 else base / arm


def _percentiles(draws: list[float]) -> tuple[float, float]:
    """Percentile interval of the draws that have a value; inf draws (target not reached) sort last, so
    the interval may end at inf."""
    kept = np.array([d for d in draws if not math.isnan(d)])
    if len(kept) == 0:
        return math.nan, math.nan
    tail = (1 - LEVEL) / 2 * 100
    low, high = np.percentile(kept, [tail, 100 - tail], method="inverted_cdf")
    return float(low), float(high)


def fit_arms(
    points: dict[str, dict[float, dict[int, float]]], seed: int = 0, resamples: int = BOOTSTRAP
) -> Curves:
    """Read every arm both ways and bootstrap over seeds.

    ``points[arm][labels][seed]`` is one run's score. Each resample draws, at every label count, as many
    seeds as the arm ran there, with replacement, from its own seeds there (seeds may differ between label
    counts and arms). The draws come from the same uniform numbers for every arm, so arms with the same
    seeds draw the same ones (arm and scratch stay paired), and an arm missing a seed (a collapsed run left
    out, a study still running) still keeps a point at every count it ran.
    """
    counts = sorted({n for per in points.values() for n in per})
    most = {n: max(len(per.get(n, {})) for per in points.values()) for n in counts}
    rng = np.random.default_rng(seed)
    draws: list[dict[float, np.ndarray] | None] = [None] + [
        {n: rng.random(k) for n, k in most.items()} for _ in range(resamples)
    ]
    read = {arm: [_read(per, draw) for draw in draws] for arm, per in points.items()}
    return Curves(
        {arm: r[0][0] for arm, r in read.items()},
        {arm: r[0][1] for arm, r in read.items()},
        {arm: [m for m, _ in r[1:]] for arm, r in read.items()},
        {arm: [law for _, law in r[1:]] for arm, r in read.items()},
        float(min(counts, default=math.nan)),
        float(max(counts, default=math.nan)),
    )


def _read(
    per: dict[float, dict[int, float]], draw: dict[float, np.ndarray] | None
) -> tuple[Measured | None, PowerLaw | None]:
    """Both readings of the mean score at every label count, over the seeds as run (``draw`` None) or over
    the seeds ``draw``'s uniform numbers pick from this arm's own."""
    xs, ys, seeds = [], [], []
    for n, by_seed in per.items():
        own = sorted(by_seed)
        picks = own if draw is None else [own[int(u * len(own))] for u in draw[n][: len(own)]]
        chosen = [by_seed[s] for s in picks]
        if chosen:
            xs.append(n)
            ys.append(float(np.mean(chosen)))
            seeds.append(len(chosen))
    return (Measured.of(xs, ys, seeds) if xs else None), fit(xs, ys)
