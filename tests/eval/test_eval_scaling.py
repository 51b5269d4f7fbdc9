"""Power-law fits and bootstrap correlations on planted curves and correlations."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from brainkit.eval import bootstrap_correlation, fit_power_law, power_law

SIZES = np.array([250, 500, 1000, 2000, 4000, 8000, 16000])
TRUE = (40.0, 0.5, 2.0)


def test_power_law_formula():
    assert power_law(100, 10.0, 0.5, 1.0) == pytest.approx(10.0 / 10 + 1.0)
    np.testing.assert_allclose(power_law([1, 4], 2.0, 0.5, 0.0), [2.0, 1.0])


def test_noiseless_fit_is_exact():
    fit = fit_power_law(SIZES, power_law(SIZES, *TRUE))
    assert (fit.a, fit.b, fit.c) == pytest.approx(TRUE, rel=1e-6)
    assert fit.residual_sd < 1e-8


def test_noisy_fit_covers_the_truth_with_repeated_folds(rng):
    n = np.repeat(SIZES, 5)
    y = power_law(n, *TRUE) + rng.normal(0, 0.05, n.size)
    fit = fit_power_law(n, y)
    params = fit.params.set_index("param")
    for name, true in zip("abc", TRUE):
        assert params.loc[name, "ci_low"] < true < params.loc[name, "ci_high"], name
    assert fit.residual_sd == pytest.approx(0.05, rel=0.3)
    grid = np.geomspace(250, 16000, 20)
    lo, hi = fit.predict_interval(grid)
    truth = power_law(grid, *TRUE)
    assert np.all(lo < fit.predict(grid)) and np.all(fit.predict(grid) < hi)
    assert np.mean((lo < truth) & (truth < hi)) > 0.9


def test_bootstrap_intervals_cover_the_truth(rng):
    n = np.repeat(SIZES, 3)
    y = power_law(n, *TRUE) + rng.normal(0, 0.05, n.size)
    fit = fit_power_law(n, y, method="bootstrap", n_boot=200, seed=1)
    assert fit.method == "bootstrap" and fit.boot_params.shape[1] == 3
    params = fit.params.set_index("param")
    for name, true in zip("abc", TRUE):
        assert params.loc[name, "ci_low"] < true < params.loc[name, "ci_high"], name
    lo, hi = fit.predict_interval(SIZES)
    assert np.all(lo <= hi)


def test_power_law_errors():
    with pytest.raises(ValueError, match="at least 4 points and 3 distinct sizes"):
        fit_power_law([100, 100, 200, 200], [3.0, 3.1, 2.5, 2.6])
    with pytest.raises(ValueError, match="positive"):
        fit_power_law([0, 100, 200, 400], [4.0, 3.0, 2.5, 2.2])
    with pytest.raises(ValueError, match="method must be one of"):
        fit_power_law(SIZES, power_law(SIZES, *TRUE), method="jackknife")


@pytest.mark.parametrize("rho", [0.0, 0.6, -0.9])
def test_bootstrap_correlation_covers_planted_rho(rng, rho):
    x = rng.normal(size=300)
    y = rho * x + np.sqrt(1 - rho ** 2) * rng.normal(size=300)
    res = bootstrap_correlation(x, y, n_boot=500, seed=0)
    assert res.r == pytest.approx(stats.pearsonr(x, y)[0])
    assert res.p_value == pytest.approx(stats.pearsonr(x, y)[1])
    assert res.ci_low < rho < res.ci_high
    assert res.ci_high - res.ci_low < 0.3
    sp = bootstrap_correlation(x, y, method="spearman", n_boot=100)
    assert sp.r == pytest.approx(stats.spearmanr(x, y)[0])


def test_bootstrap_correlation_small_samples_and_errors():
    res = bootstrap_correlation([3.1, 2.9, 2.6, 2.4, 2.2], [0.70, 0.72, 0.75, 0.79, 0.80], n_boot=300)
    assert res.r < -0.9 and res.n == 5 and 0 < res.n_boot <= 300
    with pytest.raises(ValueError, match="at least 3 points"):
        bootstrap_correlation([1, 2], [1, 2])
    with pytest.raises(ValueError, match="constant"):
        bootstrap_correlation([1, 1, 1], [1, 2, 3])
    with pytest.raises(ValueError, match="method must be"):
        bootstrap_correlation([1, 2, 3], [1, 2, 3], method="kendall")
