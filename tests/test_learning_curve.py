"""Learning curves: the inverse power law fit, labels needed for a target, and label savings."""

from __future__ import annotations

import math

import numpy as np
import pytest

from leanmae.evaluation.learning_curve import PowerLaw, figueroa_weights, fit, fit_arms

COUNTS = [50, 100, 200, 400, 800, 1600, 3200]


def _points(law: PowerLaw, noise: float, seeds: int = 3, rng_seed: int = 0) -> dict[float, dict[int, float]]:
    rng = np.random.default_rng(rng_seed)
    return {float(n): {s: float(law(n) + rng.normal(0, noise)) for s in range(seeds)} for n in COUNTS}


def test_fit_recovers_the_parameters_of_a_known_law_from_noisy_points() -> None:
    truth = PowerLaw(a=0.95, b=2.0, c=0.6)
    points = _points(truth, noise=0.003)
    xs = [n for n, per in points.items() for _ in per]
    ys = [v for per in points.values() for v in per.values()]
    law = fit(xs, ys)
    assert law is not None
    assert law.a == pytest.approx(truth.a, abs=0.01)
    assert law.b == pytest.approx(truth.b, rel=0.25)
    assert law.c == pytest.approx(truth.c, abs=0.08)


def test_fit_needs_three_label_counts() -> None:
    assert fit([100, 100, 200, 200], [0.5, 0.52, 0.6, 0.61]) is None


def test_figueroa_weights_grow_with_the_label_count_and_ties_share_one() -> None:
    assert figueroa_weights(np.array([400, 100, 100, 200])).tolist() == [1.0, 1 / 3, 1 / 3, 2 / 3]


def test_labels_needed_inverts_the_law_and_a_target_above_the_plateau_is_never_reached() -> None:
    law = PowerLaw(a=0.9, b=1.0, c=0.5)
    assert law.labels_for(0.8) == pytest.approx(100.0)  # 0.9 - 1 / sqrt(100) = 0.8
    assert float(law(law.labels_for(0.85))) == pytest.approx(0.85)
    assert math.isinf(law.labels_for(0.9)) and math.isinf(law.labels_for(0.95))


def test_labels_needed_and_savings_on_constructed_curves() -> None:
    """Same plateau and exponent, scratch's b twice the arm's: with c = 0.5 scratch needs 4x the labels."""
    scratch, mae = PowerLaw(0.95, 2.0, 0.5), PowerLaw(0.95, 1.0, 0.5)
    curves = fit_arms({"scratch": _points(scratch, 0.0), "mae": _points(mae, 0.0)}, resamples=20)
    needed = curves.labels_needed("mae", 0.9)
    assert needed.value == pytest.approx(mae.labels_for(0.9), rel=1e-3) == pytest.approx(400, rel=1e-3)
    assert curves.labels_needed("scratch", 0.9).value == pytest.approx(1600, rel=1e-3)
    savings = curves.savings("mae", 0.9)
    assert savings.value == pytest.approx(4.0, rel=1e-3)
    assert savings.low == pytest.approx(4.0, rel=1e-3) and savings.high == pytest.approx(
        4.0, rel=1e-3
    )  # no noise: every resample agrees


def test_bootstrap_intervals_contain_the_truth_and_mark_extrapolation() -> None:
    scratch, mae = PowerLaw(0.95, 2.0, 0.5), PowerLaw(0.95, 1.0, 0.5)
    curves = fit_arms(
        {"scratch": _points(scratch, 0.004, rng_seed=1), "mae": _points(mae, 0.004, rng_seed=2)},
        resamples=100,
    )
    needed = curves.labels_needed("mae", 0.9)
    assert needed.low <= 400 <= needed.high
    savings = curves.savings("mae", 0.9)
    assert savings.low < 4.0 < savings.high and savings.low > 1
    assert not curves.extrapolated(1600) and curves.extrapolated(10_000) and curves.extrapolated(10)


def test_the_bootstrap_is_reproducible() -> None:
    points = {"scratch": _points(PowerLaw(0.9, 1.0, 0.5), 0.01)}
    first, second = fit_arms(points, seed=3, resamples=30), fit_arms(points, seed=3, resamples=30)
    assert first.labels_needed("scratch", 0.8) == second.labels_needed("scratch", 0.8)
