"""Learning curves: how a test metric grows with the number of labelled images, and what that implies.

The model is the inverse power law of Figueroa et al. (2012), "Predicting sample size required for
classification performance", BMC Med Inform Decis Mak 12:8::

    score(n) = a - b * n ** (-c)        a: plateau (<= 1), b > 0, c > 0

fitted by weighted non-linear least squares with their weights, which grow with the label count
(the i-th smallest of m label counts has weight i / m): the large runs vary least between seeds and
carry the curve's plateau. The uncertainty comes from the seeds: a bootstrap draws seeds with
replacement at every label count (the same draw for every arm, so comparisons stay paired by
seed), refits, and takes percentiles. From a fit follow the labels needed to reach a target score
(the inverse of the law) and the label savings of a pretrained arm: the labels scratch needs over
the labels the arm needs for the same target.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy.optimize import OptimizeWarning, curve_fit

BOOTSTRAP = 400  # resamples of the seeds; percentiles of 400 are stable to about a percent
LEVEL = 0.95


@dataclass(frozen=True)
class PowerLaw:
    """``score(n) = a - b * n ** -c``."""

    a: float
    b: float
    c: float

    def __call__(self, n: np.ndarray | float) -> np.ndarray:
        return self.a - self.b * np.power(np.asarray(n, dtype=np.float64), -self.c)

    def labels_for(self, target: float) -> float:
        """Labels needed to reach ``target``; inf where the plateau ``a`` lies at or below it."""
        if target >= self.a:
            return math.inf
        return float((self.b / (self.a - target)) ** (1 / self.c))


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
    """A point estimate with a percentile interval; ``inf`` stands for "not reached"."""

    value: float
    low: float
    high: float


@dataclass
class Curves:
    """The fitted curve of every arm, and the bootstrap refits (paired across arms by seed draw)."""

    fits: dict[str, PowerLaw | None]
    boot: dict[str, list[PowerLaw | None]]
    largest: float  # the largest label count run: labels needed beyond it are extrapolations
    smallest: float

    def labels_needed(self, arm: str, target: float) -> Interval | None:
        law = self.fits.get(arm)
        if law is None:
            return None
        draws = np.array([b.labels_for(target) if b is not None else math.inf for b in self.boot[arm]])
        return Interval(law.labels_for(target), *_percentiles(draws))

    def savings(self, arm: str, target: float, base: str = "scratch") -> Interval | None:
        """Labels ``base`` needs / labels ``arm`` needs for ``target`` (> 1: the arm saves labels)."""
        if self.fits.get(arm) is None or self.fits.get(base) is None:
            return None
        point = _ratio(self.fits[base].labels_for(target), self.fits[arm].labels_for(target))
        draws = np.array(
            [
                _ratio(b.labels_for(target), a.labels_for(target))
                if a is not None and b is not None
                else math.nan
                for a, b in zip(self.boot[arm], self.boot[base], strict=True)
            ]
        )
        return Interval(point, *_percentiles(draws[~np.isnan(draws)]))

    def extrapolated(self, labels: float) -> bool:
        return not self.smallest <= labels <= self.largest


def _ratio(base: float, arm: float) -> float:
    if (math.isinf(base) and math.isinf(arm)) or base == arm == 0:
        return math.nan  # neither reaches the target, or a flat curve reaches it at once: no ratio
    return math.inf if arm == 0 else base / arm


def _percentiles(draws: np.ndarray) -> tuple[float, float]:
    """Percentile interval; inf draws (target not reached) sort last, so the interval may end at inf."""
    if len(draws) == 0:
        return math.nan, math.nan
    tail = (1 - LEVEL) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail], method="inverted_cdf")
    return float(low), float(high)


def fit_arms(
    points: dict[str, dict[float, dict[int, float]]], seed: int = 0, resamples: int = BOOTSTRAP
) -> Curves:
    """Fit every arm and bootstrap over seeds.

    ``points[arm][labels][seed]`` is one run's score. Each resample draws, at every label count,
    as many seeds as were run there, with replacement, from the seeds run there (seeds may differ
    between label counts); every arm uses the same draw, so arm and scratch stay paired.
    """
    counts = sorted({n for per in points.values() for n in per})
    seeds_at = {n: sorted({s for per in points.values() for s in per.get(n, {})}) for n in counts}
    rng = np.random.default_rng(seed)
    boot: dict[str, list[PowerLaw | None]] = {arm: [] for arm in points}
    for _ in range(resamples):
        draw = {n: rng.choice(seeds_at[n], size=len(seeds_at[n])) for n in counts}
        for arm, per in points.items():
            xs, ys = _drawn(per, draw)
            boot[arm].append(fit(xs, ys))
    fits = {
        arm: fit(*_drawn(per, {n: np.array(sorted(s)) for n, s in per.items()}))
        for arm, per in points.items()
    }
    return Curves(
        fits, boot, float(max(counts)) if counts else math.nan, float(min(counts)) if counts else math.nan
    )


def _drawn(
    per: dict[float, dict[int, float]], draw: dict[float, np.ndarray]
) -> tuple[list[float], list[float]]:
    """The (label count, mean score) of every label count over the drawn seeds this arm has."""
    xs, ys = [], []
    for n, by_seed in per.items():
        chosen = [by_seed[s] for s in draw.get(n, []) if s in by_seed]
        if chosen:
            xs.append(n)
            ys.append(float(np.mean(chosen)))
    return xs, ys
