"""Results over seeds: mean, standard deviation and a 95 % confidence interval, and paired gains.

A gain measured on one seed cannot be told from noise. Every number the study reports is a mean
over seeds with its spread and a Student-t interval; the MAE gain is a paired comparison (the MAE
and scratch runs of one seed share the same labelled subset), which removes the subset's own luck.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Estimate:
    """Mean over ``n`` values with sample standard deviation and a two-sided ``level`` t-interval."""

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
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def estimate(values: list[float] | np.ndarray, level: float = 0.95) -> Estimate:
    """Mean, sample std (ddof=1) and t-interval of ``values``; no interval (nan) for fewer than two."""
    x = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=np.float64)
    n = len(x)
    if n == 0:
        return Estimate(math.nan, math.nan, 0, math.nan, math.nan)
    mean = float(x.mean())
    if n == 1:
        return Estimate(mean, math.nan, 1, math.nan, math.nan)
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, df=n - 1)) * std / math.sqrt(n)
    return Estimate(mean, std, n, mean - half, mean + half)


def paired(a: dict[int, float], b: dict[int, float], level: float = 0.95) -> Estimate:
    """Estimate of a - b over the seeds both have (a paired comparison)."""
    seeds = sorted(set(a) & set(b))
    return estimate([a[s] - b[s] for s in seeds], level)
