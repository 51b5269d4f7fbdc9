"""Regression metrics used throughout the paper: MAE, R^2 and Pearson's r.

All take ``(y_true, y_pred)`` like :mod:`sklearn.metrics` and return a Python float.
"""

from __future__ import annotations

import numpy as np

from brainkit.eval._validation import as_1d_float, same_length

__all__ = ["mae", "r2", "pearson_r"]


def _pair(y_true, y_pred, minimum: int) -> tuple[np.ndarray, np.ndarray]:
    y_true = as_1d_float(y_true, "y_true")
    y_pred = as_1d_float(y_pred, "y_pred")
    n = same_length(y_true=y_true, y_pred=y_pred)
    if n < minimum:
        raise ValueError(f"need at least {minimum} samples; got {n}")
    return y_true, y_pred


def mae(y_true, y_pred) -> float:
    """Mean absolute error, ``mean(|y_pred - y_true|)``.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        Chronological ages (or any ground truth).
    y_pred : array-like of shape (n_samples,)
        Predictions.

    Returns
    -------
    float
        In the units of ``y`` (years for brain age).

    Examples
    --------
    >>> mae([20, 30, 40], [22, 30, 37])
    1.6666666666666667
    """
    y_true, y_pred = _pair(y_true, y_pred, 1)
    return float(np.mean(np.abs(y_pred - y_true)))


def r2(y_true, y_pred) -> float:
    """Coefficient of determination ``1 - SS_res / SS_tot`` (sklearn's ``r2_score``).

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
    y_pred : array-like of shape (n_samples,)

    Returns
    -------
    float
        1 for a perfect fit, 0 for predicting the mean of ``y_true``, negative when worse.

    Raises
    ------
    ValueError
        If ``y_true`` is constant (R^2 is undefined).

    Examples
    --------
    >>> r2([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    1.0
    """
    y_true, y_pred = _pair(y_true, y_pred, 2)
    ss_tot = float(np.sum((y_true - y_true.mean()) ** 2))
    if ss_tot == 0.0:
        raise ValueError("r2 is undefined when y_true is constant")
    ss_res = float(np.sum((y_true - y_pred) ** 2))
    return 1.0 - ss_res / ss_tot


def pearson_r(y_true, y_pred) -> float:
    """Pearson correlation between ``y_true`` and ``y_pred``.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
    y_pred : array-like of shape (n_samples,)

    Returns
    -------
    float
        In [-1, 1].

    Raises
    ------
    ValueError
        If either input is constant (r is undefined).

    Examples
    --------
    >>> round(pearson_r([1, 2, 3, 4], [2, 4, 6, 8]), 6)
    1.0
    """
    y_true, y_pred = _pair(y_true, y_pred, 2)
    a = y_true - y_true.mean()
    b = y_pred - y_pred.mean()
    denom = float(np.sqrt(np.sum(a * a) * np.sum(b * b)))
    if denom == 0.0:
        raise ValueError("pearson_r is undefined when y_true or y_pred is constant")
    return float(np.clip(np.sum(a * b) / denom, -1.0, 1.0))
