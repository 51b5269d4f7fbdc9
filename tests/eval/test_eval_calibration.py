"""Calibration: analytic ECE of simulated classifiers, sklearn agreement, temperature scaling."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import expit, softmax
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss

from brainkit.eval import (
    TemperatureScaler,
    brier_score,
    expected_calibration_error,
    reliability_curve,
)

N = 200_000


def naive_ece(y, p, n_bins):
    """ECE from the definition, uniform bins [k/B, (k+1)/B), the last closed."""
    total = 0.0
    for k in range(n_bins):
        lo, hi = k / n_bins, (k + 1) / n_bins
        m = (p >= lo) & ((p < hi) if k < n_bins - 1 else (p <= hi))
        if m.any():
            total += m.sum() / len(p) * abs(y[m].mean() - p[m].mean())
    return total


def test_calibrated_classifier_has_ece_near_zero(rng):
    p = rng.random(N)
    y = (rng.random(N) < p).astype(int)
    for strategy in ("uniform", "quantile"):
        for variant in ("positive", "top_label"):
            assert expected_calibration_error(y, p, strategy=strategy, variant=variant) < 0.01


def test_known_miscalibration_matches_analytic_ece(rng):
    p = rng.random(N)
    # True probability p**2 < p: |p - p**2| has one sign, so ECE = E[p - p**2] = 1/6 for any bins.
    y = (rng.random(N) < p ** 2).astype(int)
    assert expected_calibration_error(y, p) == pytest.approx(1 / 6, abs=0.005)
    assert expected_calibration_error(y, p, strategy="quantile") == pytest.approx(1 / 6, abs=0.005)
    # Over-confidence: true probability 0.5 + (p - 0.5) / 2. Top-label ECE = E|p - 0.5| / 2 = 1/8.
    y = (rng.random(N) < 0.5 + (p - 0.5) / 2).astype(int)
    assert expected_calibration_error(y, p, variant="top_label") == pytest.approx(1 / 8, abs=0.005)
    assert expected_calibration_error(y, p, variant="positive") == pytest.approx(1 / 8, abs=0.005)


@pytest.mark.parametrize("n_bins", [1, 5, 15])
def test_ece_matches_naive_definition(rng, n_bins):
    p = np.r_[rng.random(300), [0.0, 1.0, 0.2, 0.4]]
    y = (rng.random(p.size) < p ** 1.5).astype(int)
    assert expected_calibration_error(y, p, n_bins=n_bins) == pytest.approx(naive_ece(y, p, n_bins))


@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
def test_reliability_curve_matches_sklearn(rng, strategy):
    p = rng.beta(2, 3, 2000)
    y = (rng.random(2000) < p).astype(int)
    curve = reliability_curve(y, p, n_bins=10, strategy=strategy)
    prob_true, prob_pred = calibration_curve(y, p, n_bins=10, strategy=strategy)
    np.testing.assert_allclose(curve["accuracy"], prob_true)
    np.testing.assert_allclose(curve["confidence"], prob_pred)
    assert curve["count"].sum() == 2000
    assert (curve["lower"] < curve["upper"]).all()
    if strategy == "quantile":
        assert curve["count"].max() - curve["count"].min() <= 2


def test_top_label_multiclass_against_naive(rng):
    logits = rng.normal(0, 2, (500, 3))
    prob = softmax(logits, axis=1)
    y = rng.integers(0, 3, 500)
    conf, correct = prob.max(1), (prob.argmax(1) == y).astype(float)
    assert expected_calibration_error(y, prob, n_bins=10, variant="top_label") == pytest.approx(
        naive_ece(correct, conf, 10))
    # A two-column binary input equals its positive column.
    p = rng.random(100)
    yb = rng.integers(0, 2, 100)
    assert expected_calibration_error(yb, np.c_[1 - p, p]) == expected_calibration_error(yb, p)


def test_brier_matches_sklearn(rng):
    p = rng.random(500)
    y = rng.integers(0, 2, 500)
    assert brier_score(y, p) == pytest.approx(brier_score_loss(y, p))
    assert brier_score(y, np.c_[1 - p, p]) == pytest.approx(brier_score_loss(y, p))


def test_temperature_scaling_recovers_planted_temperature(rng):
    z = rng.normal(0, 2, 20_000)
    y = (rng.random(z.size) < expit(z)).astype(int)
    val, test = slice(0, 10_000), slice(10_000, None)
    ts = TemperatureScaler().fit(3.0 * z[val], y[val])  # logits 3x over-confident
    assert ts.temperature_ == pytest.approx(3.0, rel=0.08)
    assert ts.nll_after_ < ts.nll_before_
    before = expected_calibration_error(y[test], expit(3.0 * z[test]))
    after = expected_calibration_error(y[test], ts.predict_proba(3.0 * z[test])[:, 1])
    assert after < 0.02 < before
    # It never changes the predicted class.
    np.testing.assert_array_equal(ts.predict_proba(3.0 * z).argmax(1), (z > 0).astype(int))


def test_temperature_scaling_multiclass(rng):
    logits = rng.normal(0, 1.5, (8000, 4))
    y = np.array([rng.choice(4, p=row) for row in softmax(logits, axis=1)])
    ts = TemperatureScaler().fit(logits / 2.0, y)  # under-confident by a factor 2
    assert ts.temperature_ == pytest.approx(0.5, rel=0.1)
    assert ts.predict_proba(logits).shape == (8000, 4)


def test_argument_errors():
    with pytest.raises(ValueError, match="strategy must be one of"):
        expected_calibration_error([0, 1], [0.2, 0.8], strategy="kmeans")
    with pytest.raises(ValueError, match="variant must be one of"):
        expected_calibration_error([0, 1], [0.2, 0.8], variant="all")
    with pytest.raises(ValueError, match=r"probabilities in \[0, 1\]"):
        expected_calibration_error([0, 1], [0.2, 1.8])
    with pytest.raises(ValueError, match="only 0/1"):
        expected_calibration_error([0, 2], [0.2, 0.8])
    with pytest.raises(ValueError, match="variant='top_label'"):
        expected_calibration_error([0, 1, 2], np.full((3, 3), 1 / 3))
    with pytest.raises(ValueError, match="same number of samples"):
        reliability_curve([0, 1, 1], [0.2, 0.8])
    with pytest.raises(RuntimeError, match="validation split"):
        TemperatureScaler().transform([0.1])
    with pytest.raises(ValueError, match="bounds must be"):
        TemperatureScaler(bounds=(2.0, 1.0)).fit([0.1, 0.2], [0, 1])
