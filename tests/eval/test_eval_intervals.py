"""Split-conformal intervals: coverage over repeated draws, the finite-sample rank, bins."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest

import brainkit.eval.intervals as intervals_module
from brainkit.eval import ConformalInterval


def draw(rng, n, *, noise="normal", slope=1.0, hetero=False):
    """Ages 20-80 and predictions; optional regression to the mean (slope < 1), heavy tails
    (Student t, 3 df) and noise growing with age (sd 1 at 20 to 10 at 80)."""
    age = rng.uniform(20, 80, n)
    sd = 1.0 + 0.15 * (age - 20) if hetero else 5.0
    eps = rng.standard_t(3, n) if noise == "t" else rng.normal(size=n)
    return age, 50 + slope * (age - 50) + sd * eps


@pytest.mark.parametrize("method", ["absolute", "binned"])
def test_coverage_over_repeated_calibration_sets_is_nominal(method):
    rng = np.random.default_rng(1)
    coverage = []
    for _ in range(200):
        age_cal, pred_cal = draw(rng, 500, slope=0.8)
        age_te, pred_te = draw(rng, 2000, slope=0.8)
        fitted = ConformalInterval(coverage=0.9, method=method, min_bin_size=125).fit(
            age_cal, pred_cal)
        coverage.append(fitted.empirical_coverage(age_te, pred_te))
    coverage = np.array(coverage)
    # in expectation: >= 0.9, and at most 0.9 + 1/(n+1) (absolute) or + 2/(n_b+1) (binned)
    assert 0.895 <= coverage.mean() <= 0.915, coverage.mean()
    # and each draw near it (spread ~ sqrt(0.09 / n) from the calibration set)
    assert np.mean((coverage >= 0.87) & (coverage <= 0.95)) >= 0.95


@pytest.mark.parametrize("n, coverage", [(15, 0.9), (19, 0.95), (40, 0.8)])
def test_finite_sample_rank_is_exact_in_expectation_for_any_noise(n, coverage):
    # For continuous scores P(covered) = k / (n + 1), k = ceil((n + 1) * coverage), whatever
    # the noise distribution (here heavy tailed): >= coverage, and exactly that rank.
    rng = np.random.default_rng(2)
    reps = 4000
    hits = 0
    for _ in range(reps):
        age, pred = draw(rng, n + 1, noise="t")
        fitted = ConformalInterval(coverage=coverage).fit(age[:n], pred[:n])
        low, high = fitted.interval(pred[n:])
        hits += int(low[0] <= age[n] <= high[0])
    expected = math.ceil((n + 1) * coverage - 1e-9) / (n + 1)
    se = math.sqrt(expected * (1 - expected) / reps)
    assert expected >= coverage
    assert abs(hits / reps - expected) < 4 * se, (hits / reps, expected)


def test_absolute_width_is_the_conformal_quantile_of_the_absolute_residuals():
    age = np.arange(20.0)
    pred = age + np.r_[np.arange(1.0, 20.0), 100.0] * np.where(np.arange(20) % 2, 1, -1)
    fitted = ConformalInterval(coverage=0.9).fit(age, pred)
    # |residuals| are 1..19 and 100; k = ceil(21 * 0.9) = 19 -> the 19th smallest is 19
    assert fitted.width_ == pytest.approx(38.0)
    assert fitted.n_calibration_ == 20
    assert fitted.coverage == 0.9
    low, high = fitted.interval([50.0, 60.0])
    np.testing.assert_allclose(low, [31.0, 41.0])
    np.testing.assert_allclose(high, [69.0, 79.0])


def test_binned_widths_follow_the_noise_and_keep_coverage_within_bins():
    rng = np.random.default_rng(3)
    age_cal, pred_cal = draw(rng, 2000, hetero=True, slope=0.8)
    age_te, pred_te = draw(rng, 20000, hetero=True, slope=0.8)
    binned = ConformalInterval(coverage=0.9, method="binned", n_bins=4,
                               min_bin_size=200).fit(age_cal, pred_cal)
    absolute = ConformalInterval(coverage=0.9).fit(age_cal, pred_cal)
    assert binned.bin_counts_.tolist() == [500] * 4
    # older predicted age, wider interval (the top bin is capped by the oldest age, 80)
    assert binned.width_[0] < binned.width_[1] < binned.width_[2]
    assert binned.width_[2:].min() > 1.5 * binned.width_[0]
    which = np.searchsorted(binned.bin_edges_[1:-1], pred_te, side="right")
    within = [binned.empirical_coverage(age_te[which == b], pred_te[which == b])
              for b in range(4)]
    assert min(within) >= 0.85 and max(within) <= 0.95, within   # ~3.5 sd of a 500-image bin
    # the constant width over-covers the quiet bin and under-covers a noisy one
    constant = [absolute.empirical_coverage(age_te[which == b], pred_te[which == b])
                for b in range(4)]
    assert constant[0] > 0.97 and min(constant) < 0.85, constant
    # outside the calibration range the first / last bin is used
    low, high = binned.interval([-100.0, 500.0])
    np.testing.assert_allclose(high - low, binned.width_[[0, -1]])


def test_binned_uses_fewer_bins_for_small_calibration_sets():
    rng = np.random.default_rng(4)
    age, pred = draw(rng, 250)
    fitted = ConformalInterval(coverage=0.9, method="binned", n_bins=4,
                               min_bin_size=100).fit(age, pred)
    assert fitted.bin_counts_.tolist() == [125, 125]     # 250 // 100 = 2 bins
    assert fitted.bin_edges_.shape == (3,) and fitted.width_.shape == (2,)
    one = ConformalInterval(coverage=0.9, method="binned").fit(age[:60], pred[:60])
    assert one.bin_counts_.tolist() == [60]


def test_too_few_calibration_points_and_bad_arguments_are_refused():
    age = np.linspace(20, 80, 40)
    with pytest.raises(ValueError, match="18 calibration pairs are too few for coverage 0.95 "
                                         "with method='absolute'.*at least 19"):
        ConformalInterval(coverage=0.95).fit(age[:18], age[:18])
    ConformalInterval(coverage=0.95).fit(age[:19], age[:19])          # exactly enough
    with pytest.raises(ValueError, match="each bin needs at least 39"):
        ConformalInterval(coverage=0.95, method="binned").fit(age[:38], age[:38])
    with pytest.raises(ValueError, match="each bin needs at least 39"):
        ConformalInterval(coverage=0.95, method="binned", min_bin_size=20).fit(age, age)
    for bad in (0.0, 1.0, 95):
        with pytest.raises(ValueError, match="coverage must be in \\(0, 1\\)"):
            ConformalInterval(coverage=bad).fit(age, age)
    with pytest.raises(TypeError, match="coverage must be a number"):
        ConformalInterval(coverage="high").fit(age, age)
    with pytest.raises(ValueError, match="method must be one of"):
        ConformalInterval(method="scaled").fit(age, age)
    with pytest.raises(ValueError, match="min_bin_size must be >= 1"):
        ConformalInterval(method="binned", min_bin_size=0).fit(age, age)
    with pytest.raises(ValueError, match="same number of samples"):
        ConformalInterval().fit(age, age[:-1])
    with pytest.raises(ValueError, match="predicted_age must be finite"):
        ConformalInterval().fit(age, np.r_[age[:-1], np.nan])
    with pytest.raises(RuntimeError, match="not fitted yet"):
        ConformalInterval().interval(age)


def test_docstring_examples_run():
    assert doctest.testmod(intervals_module, extraglobs={"np": np}).failed == 0
