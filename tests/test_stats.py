"""Intervals over seeds: they stay inside the metric's range, also for few seeds and values at a bound."""

from __future__ import annotations

import math

import pytest

from leanmae.evaluation.stats import estimate, paired


def test_estimate_gives_mean_sample_sd_and_an_interval_around_it() -> None:
    e = estimate([0.80, 0.85, 0.90])
    assert e.mean == pytest.approx(0.85) and e.std == pytest.approx(0.05) and e.n == 3
    assert e.low < 0.80 and 0.90 < e.high < 1.0
    raw_half = 4.302652729911275 * 0.05 / math.sqrt(3)  # the raw t-interval's half width
    assert e.high - e.low == pytest.approx(
        2 * raw_half, rel=0.1
    )  # near 0.85 the logit scale changes the width little


@pytest.mark.parametrize(
    "values",
    [
        [1.0, 1.0],
        [1.0, 1.0, 1.0],
        [0.0, 0.0],
        [1.0, 0.99],
        [0.0, 0.02],
        [0.5, 1.0],
        [0.0, 1.0],
        [0.94, 0.99, 0.999],
    ],
)
def test_intervals_stay_inside_0_and_1_on_extreme_inputs(values: list[float]) -> None:
    e = estimate(values)
    assert 0.0 <= e.low <= e.high <= 1.0


def test_all_seeds_at_one_give_the_point_interval() -> None:
    e = estimate([1.0, 1.0])
    assert (e.low, e.high) == (1.0, 1.0)


def test_the_seed_studys_accuracy_kept_stays_below_one() -> None:
    """The case the raw t-interval got wrong: [0.639, 1.308] for three seeds near 1."""
    e = estimate([0.995, 0.97, 0.99])
    assert e.high < 1.0 and e.low > 0.0


def test_paired_differences_stay_inside_minus_one_and_one() -> None:
    g = paired({0: 1.0, 1: 1.0}, {0: 0.0, 1: 0.3})
    assert -1.0 <= g.low <= g.high <= 1.0 and g.mean == pytest.approx(0.85)


def test_one_seed_has_no_interval_and_says_so() -> None:
    e = estimate([0.7])
    assert e.n == 1 and math.isnan(e.low) and "1 seed" in e.text()
    assert not e.excludes_zero()


def test_paired_gain_uses_only_seeds_both_arms_have() -> None:
    g = paired({0: 0.9, 1: 0.8, 2: 0.85}, {0: 0.7, 1: 0.7})
    assert g.n == 2 and g.mean == pytest.approx(0.15)


def test_a_value_outside_the_range_is_refused() -> None:
    with pytest.raises(ValueError, match="outside the metric's range"):
        estimate([0.5, 1.5])
