"""Metrics against naive loops written from the definitions, and their properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from brainkit.eval import mae, pearson_r, r2


def naive_mae(t, p):
    return sum(abs(b - a) for a, b in zip(t, p)) / len(t)


def naive_r2(t, p):
    m = sum(t) / len(t)
    return 1 - sum((a - b) ** 2 for a, b in zip(t, p)) / sum((a - m) ** 2 for a in t)


def naive_pearson(t, p):
    mt, mp = sum(t) / len(t), sum(p) / len(p)
    cov = sum((a - mt) * (b - mp) for a, b in zip(t, p))
    return cov / math.sqrt(sum((a - mt) ** 2 for a in t) * sum((b - mp) ** 2 for b in p))


@pytest.mark.parametrize("n", [2, 5, 50])
def test_metrics_match_naive_loops(rng, n):
    t = rng.uniform(6, 90, n)
    p = t + rng.normal(0, 5, n)
    assert mae(t, p) == pytest.approx(naive_mae(t, p), rel=1e-12)
    assert r2(t, p) == pytest.approx(naive_r2(t, p), rel=1e-12)
    assert pearson_r(t, p) == pytest.approx(naive_pearson(t, p), rel=1e-12)


def test_known_values():
    assert mae([20, 30, 40], [22, 30, 37]) == pytest.approx(5 / 3)
    assert r2([1, 2, 3], [2, 2, 2]) == pytest.approx(0.0)
    assert r2([1, 2, 3], [3, 2, 1]) == pytest.approx(-3.0)
    assert pearson_r([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)


@settings(max_examples=40, deadline=None)
@given(arrays(np.float64, st.integers(3, 30), elements=finite),
       st.floats(0.1, 10), st.floats(-50, 50))
def test_pearson_is_invariant_to_positive_affine_maps(x, scale, shift):
    y = np.sin(x) + 0.1 * x
    if np.ptp(x) < 1e-3 or np.ptp(y) < 1e-3:
        return
    r = pearson_r(x, y)
    assert -1.0 <= r <= 1.0
    assert pearson_r(scale * x + shift, y) == pytest.approx(r, abs=1e-7)
    assert pearson_r(-x, y) == pytest.approx(-r, abs=1e-7)


@settings(max_examples=40, deadline=None)
@given(arrays(np.float64, st.integers(2, 30), elements=finite))
def test_perfect_prediction(y):
    assert mae(y, y) == 0.0
    if np.sum((y - y.mean()) ** 2) > 0:  # not constant, even after underflow
        assert r2(y, y) == 1.0
    else:
        with pytest.raises(ValueError, match="constant"):
            r2(y, y)


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="same number of samples"):
        mae([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="y_pred must be finite"):
        mae([1, 2], [1, np.nan])
    with pytest.raises(ValueError, match="y_true must be 1-D"):
        r2(np.ones((3, 2)), np.ones(3))
    with pytest.raises(ValueError, match="constant"):
        r2([1, 1, 1], [1, 2, 3])
    with pytest.raises(ValueError, match="constant"):
        pearson_r([1, 2, 3], [5, 5, 5])
    with pytest.raises(TypeError, match="y_true must be numeric"):
        mae(["a", "b"], [1, 2])
