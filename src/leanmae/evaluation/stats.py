"""Results over seeds: mean, standard deviation and a 95 % interval that stays inside the metric's range.

A gain measured on one seed cannot be told from noise. Every number the study reports is a mean
over seeds with its spread and an interval; the MAE gain is a paired comparison (the MAE and
scratch runs of one seed share the same labelled subset), which removes the subset's own luck.

Why the logit scale: the metrics are bounded (accuracy, F1, ECE, AUROC lie in [0, 1]; a paired
difference in [-1, 1]) and a study has few seeds. A Student-t interval on the raw values of three
seeds runs past the bounds (accuracy kept [0.64, 1.31]); a percentile bootstrap over three seeds has
ten distinct resamples and is too narrow. A t-interval computed on the logit of the value (mapped
onto (0, 1) from the metric's range) and mapped back keeps the t's honest width for few seeds and
can never leave the range. Values exactly at a bound are pulled in by ``EDGE`` (of the range) first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

UNIT = (0.0, 1.0)  # range of accuracy, precision, recall, F1, ECE, AUROC, coverage, confidence
DIFFERENCE = (-1.0, 1.0)  # range of a paired difference of two such metrics
EDGE = 1e-3  # share of the range a value at a bound is pulled in by before the logit
METHOD = "t-interval over seeds on the logit scale of the metric's range (paired by seed for differences)"


@dataclass(frozen=True)
class Estimate:
    """Mean over ``n`` values with sample standard deviation and a two-sided interval inside the range."""

    mean: float
    std: float
    n: int
    low: float
    high: float

    def excludes_zero(self) -> bool:
        return self.n > 1 and (self.low > 0 or self.high < 0)

    def text(self, digits: int = 3) -> str:
        """``0.912 ± 0.011 [0.885, 0.939]``; a single value is shown alone."""
        if self.n == 0:
            return "—"
        if self.n == 1:
            return f"{self.mean:.{digits}f} (1 seed)"
        return (
            f"{self.mean:.{digits}f} ± {self.std:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"
        )


def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p / (1 - p))


def _expit(z: float) -> float:
    return float(1 / (1 + math.exp(-z))) if z > -700 else 0.0


def bounded_interval(x: np.ndarray, bounds: tuple[float, float], level: float = 0.95) -> tuple[float, float]:
    """t-interval of ``x`` (two or more values) on the logit scale of ``bounds``, mapped back inside them."""
    lo, hi = bounds
    if np.all(x == x[0]):
        return float(x[0]), float(x[0])  # no spread: nothing to widen, and the mean is the value itself
    unit = np.clip((x - lo) / (hi - lo), EDGE, 1 - EDGE)
    z = _logit(unit)
    half = float(stats.t.ppf(0.5 + level / 2, df=len(z) - 1)) * float(z.std(ddof=1)) / math.sqrt(len(z))
    centre = float(z.mean())
    return lo + (hi - lo) * _expit(centre - half), lo + (hi - lo) * _expit(centre + half)


def estimate(
    values: list[float] | np.ndarray, level: float = 0.95, bounds: tuple[float, float] = UNIT
) -> Estimate:
    """Mean, sample std (ddof=1) and bounded interval of ``values``; no interval (nan) for fewer than two."""
    x = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=np.float64)
    n = len(x)
    if n == 0:
        return Estimate(math.nan, math.nan, 0, math.nan, math.nan)
    mean = float(x.mean())
    if n == 1:
        return Estimate(mean, math.nan, 1, math.nan, math.nan)
    if x.min() < bounds[0] or x.max() > bounds[1]:
        raise ValueError(f"values {x.min():g}..{x.max():g} lie outside the metric's range {bounds}")
    low, high = bounded_interval(x, bounds, level)
    return Estimate(mean, float(x.std(ddof=1)), n, low, high)


def paired(a: dict[int, float], b: dict[int, float], level: float = 0.95) -> Estimate:
    """Estimate of a - b over the seeds both have (a paired comparison), inside [-1, 1]."""
    seeds = sorted(set(a) & set(b))
    return estimate([a[s] - b[s] for s in seeds], level, DIFFERENCE)
