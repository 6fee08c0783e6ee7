"""Learning curves: labels needed for a target read between the measured points, the inverse power law
beside it, intervals over seeds and curve choice, and label savings."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import brentq

from leanmae.evaluation.learning_curve import Measured, PowerLaw, figueroa_weights, fit, fit_arms

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


# --------------------------------------------------------------------------- read between the measured points


def test_between_measured_points_labels_are_read_linearly_in_log_labels() -> None:
    """On a curve straight in log(labels) the reading is exact: 0.65 lies halfway between 10 and 100."""
    measured = Measured.of([10, 100, 1000], [0.6, 0.7, 0.8], [3, 3, 3])
    assert measured.labels_for(0.65) == pytest.approx(10**1.5)
    assert measured.labels_for(0.8) == pytest.approx(1000)


def test_a_dip_is_averaged_with_its_neighbour_not_a_lucky_mean_carried_forward() -> None:
    """Isotonic regression pools 0.75 and 0.72 (weighted by seeds) rather than keeping the lucky 0.75."""
    measured = Measured.of([10, 100, 1000, 10_000], [0.6, 0.75, 0.72, 0.9], [3, 3, 3, 3])
    assert measured.means.tolist() == pytest.approx([0.6, 0.735, 0.735, 0.9])
    weighted = Measured.of([10, 100, 1000, 10_000], [0.6, 0.75, 0.72, 0.9], [3, 1, 5, 3])
    assert weighted.means[1] == pytest.approx((0.75 + 5 * 0.72) / 6)
    assert measured.labels_for(0.8) == pytest.approx(10 ** (3 + (0.8 - 0.735) / (0.9 - 0.735)))


def test_a_flat_curve_reaches_a_lower_target_at_the_fewest_labels_and_a_higher_one_never() -> None:
    measured = Measured.of([10, 100, 1000], [0.9, 0.9, 0.9], [3, 3, 3])
    assert measured.labels_for(0.85) == 10  # "at most" the fewest run: fewer were not measured
    assert math.isinf(measured.labels_for(0.95))  # not reached within the largest run: no extrapolation


def test_the_measured_reading_is_the_answer_and_the_power_law_stands_beside_it() -> None:
    """On a log-linear truth the two readings disagree; the answer is the measured one, the power law's is
    kept, and the interval spans both."""
    points = {"scratch": {float(n): {s: 0.45 + 0.13 * math.log10(n) for s in range(3)} for n in COUNTS}}
    needed = fit_arms(points, resamples=10).labels_needed("scratch", 0.85)
    assert needed.value == pytest.approx(10 ** (0.4 / 0.13), rel=1e-6)
    assert needed.power_law != pytest.approx(needed.value, rel=0.05)
    assert (
        needed.low
        <= min(needed.value, needed.power_law)
        <= max(needed.value, needed.power_law)
        <= needed.high
    )


def _log_linear(n: float) -> float:
    return 0.45 + 0.13 * math.log10(n)


def _piecewise(n: float) -> float:
    return min(0.55 + 0.2 * math.log10(n / 84), 0.95)


@pytest.mark.parametrize("truth", [_log_linear, _piecewise], ids=["log-linear", "piecewise"])
def test_the_interval_covers_the_truth_where_the_power_law_is_wrong(truth) -> None:
    """50 seeded synthetic studies (the seed study's label counts and seeds, seed noise 0.02): the
    interval over seeds and curve choice covers the true labels needed in at least 80 % of them, while
    the power law's own bootstrap interval, on a curve it cannot describe, mostly misses."""
    counts, seeds, target = [84, 822, 4118, 8238], [5, 5, 3, 3], 0.85
    true = brentq(lambda n: truth(n) - target, 84, 8238)
    covered = law_covered = 0
    for draw in range(50):
        rng = np.random.default_rng(draw)
        points = {
            "scratch": {
                float(n): {s: truth(n) + rng.normal(0, 0.02) for s in range(k)}
                for n, k in zip(counts, seeds, strict=True)
            }
        }
        curves = fit_arms(points, seed=draw, resamples=40)
        needed = curves.labels_needed("scratch", target)
        covered += needed.low <= true <= needed.high
        law = np.percentile([b.labels_for(target) for b in curves.boot_laws["scratch"] if b], [2.5, 97.5])
        law_covered += law[0] <= true <= law[1]
    assert covered >= 40, covered
    assert law_covered < 25, law_covered


def test_beyond_the_largest_count_the_reading_says_not_reached_and_the_power_law_extrapolates() -> None:
    """A target above every measured mean: the answer is inf (not reached within the runs), the power
    law's finite number lies beyond the largest count, which ``extrapolated`` says."""
    law = PowerLaw(0.95, 2.0, 0.5)
    curves = fit_arms({"scratch": _points(law, 0.0)}, resamples=10)
    needed = curves.labels_needed("scratch", 0.93)  # the truth: 10,000 labels, beyond 3,200
    assert math.isinf(needed.value)
    assert needed.power_law == pytest.approx(10_000, rel=1e-3) and curves.extrapolated(needed.power_law)
    assert not curves.extrapolated(needed.value)  # "not reached" is what the runs say, not a guess


def test_an_arm_missing_a_seed_keeps_its_point_at_that_count_in_every_resample() -> None:
    """Seeds are drawn from each arm's own: an arm without seed 1 or 2 at one count (a collapsed run left
    out, a study still running) must not lose that count in the resamples that draw them, which would fake
    'not reached'."""
    law = PowerLaw(0.95, 2.0, 0.5)
    scratch = _points(law, noise=0.002)
    mae = _points(law, noise=0.002, rng_seed=1)
    mae[3200.0] = {0: mae[3200.0][0]}
    target = float(law(2500))
    needed = fit_arms({"scratch": scratch, "mae": mae}).labels_needed("mae", target)
    assert needed is not None and math.isfinite(needed.high)


def test_arms_with_the_same_seeds_are_drawn_alike() -> None:
    """Pairing: the same seeds at every count for both arms, so identical scores give a ratio of exactly 1
    in every resample."""
    points = _points(PowerLaw(0.95, 2.0, 0.5), noise=0.01)
    savings = fit_arms({"scratch": points, "mae": points}).savings("mae", 0.9)
    assert savings is not None and savings.low == savings.high == 1.0


def test_a_flat_power_law_never_claims_less_than_one_label() -> None:
    assert PowerLaw(0.95, 1e-9, 0.5).labels_for(0.5) == 1.0
