"""Calibration of probabilistic classifiers (paper Fig. 3): ECE, reliability, Brier, temperature.

Binning follows :func:`sklearn.calibration.calibration_curve`: ``strategy="uniform"`` uses
``n_bins`` equal-width bins on [0, 1]; ``strategy="quantile"`` uses the score quantiles as
edges (equal-count bins). A score ``s`` falls in bin ``searchsorted(inner_edges, s,
side="right")``, so bins are ``[lower, upper)`` except the last, which includes 1.

Two ECE variants:

- ``variant="positive"``: score = probability of the positive class, outcome = label (the
  reliability diagram of a binary classifier);
- ``variant="top_label"``: score = confidence of the predicted class (``max`` probability),
  outcome = whether the prediction is correct (Guo et al. 2017).

``ECE = sum_b (n_b / n) * |accuracy_b - confidence_b|`` over non-empty bins.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar
from scipy.special import expit, logsumexp, softmax

from brainkit.eval._validation import as_1d_float, as_binary, as_labels, check_positive_int

__all__ = [
    "reliability_curve",
    "expected_calibration_error",
    "brier_score",
    "TemperatureScaler",
]

_STRATEGIES = ("uniform", "quantile")
_VARIANTS = ("positive", "top_label")


def _scores_and_outcomes(y_true, prob, variant: str) -> tuple[np.ndarray, np.ndarray]:
    if variant not in _VARIANTS:
        raise ValueError(f"variant must be one of {_VARIANTS}; got {variant!r}")
    p = np.asarray(prob, dtype=np.float64)
    if p.ndim not in (1, 2):
        raise ValueError(f"prob must have shape (n,) or (n, n_classes); got {p.shape}")
    if not np.all(np.isfinite(p)) or p.min(initial=0.0) < 0.0 or p.max(initial=0.0) > 1.0:
        raise ValueError("prob must hold probabilities in [0, 1]")
    if p.ndim == 2:
        if p.shape[1] < 2:
            raise ValueError(f"prob of shape (n, n_classes) needs n_classes >= 2; got {p.shape}")
        if not np.allclose(p.sum(axis=1), 1.0, atol=1e-6):
            raise ValueError("rows of prob (n, n_classes) must sum to 1")
    if len(np.asarray(y_true)) != p.shape[0]:
        raise ValueError(f"y_true and prob must have the same number of samples; got "
                         f"{len(np.asarray(y_true))} and {p.shape[0]}")
    if p.shape[0] == 0:
        raise ValueError("prob is empty")
    if p.ndim == 1 or p.shape[1] == 2:
        y = as_binary(y_true, "y_true")
        pos = p if p.ndim == 1 else p[:, 1]
        if variant == "positive":
            return pos, y.astype(np.float64)
        pred = (pos >= 0.5).astype(np.int64)
        return np.maximum(pos, 1.0 - pos), (pred == y).astype(np.float64)
    if variant == "positive":
        raise ValueError("variant='positive' needs binary probabilities (n,) or (n, 2); "
                         f"got {p.shape[1]} classes: use variant='top_label'")
    y = as_labels(y_true, "y_true")
    if y.dtype.kind not in "iu" or y.min() < 0 or y.max() >= p.shape[1]:
        raise ValueError(f"y_true must hold class indices 0..{p.shape[1] - 1} for prob of shape "
                         f"{p.shape}")
    return p.max(axis=1), (p.argmax(axis=1) == y).astype(np.float64)


def _edges(scores: np.ndarray, n_bins: int, strategy: str) -> np.ndarray:
    if strategy not in _STRATEGIES:
        raise ValueError(f"strategy must be one of {_STRATEGIES}; got {strategy!r}")
    if strategy == "uniform":
        return np.linspace(0.0, 1.0, n_bins + 1)
    return np.percentile(scores, np.linspace(0.0, 100.0, n_bins + 1))


def reliability_curve(y_true, prob, *, n_bins: int = 15, strategy: str = "uniform",
                      variant: str = "positive") -> pd.DataFrame:
    """Per-bin confidence and observed accuracy (the reliability diagram's data).

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        0/1 labels (binary) or class indices (``prob`` of shape (n, n_classes)).
    prob : array-like of shape (n_samples,) or (n_samples, n_classes)
        Probability of the positive class, or class probabilities (rows sum to 1).
    n_bins : int, default 15
    strategy : {"uniform", "quantile"}, default "uniform"
    variant : {"positive", "top_label"}, default "positive"

    Returns
    -------
    DataFrame
        Non-empty bins only: ``bin, lower, upper, count, confidence, accuracy``.
        ``confidence`` is the mean score in the bin, ``accuracy`` the observed frequency of
        the outcome (for ``variant="positive"`` the fraction of positives). With binary
        input and ``variant="positive"`` these equal ``prob_pred`` and ``prob_true`` of
        :func:`sklearn.calibration.calibration_curve`.
    """
    n_bins = check_positive_int(n_bins, "n_bins")
    scores, outcome = _scores_and_outcomes(y_true, prob, variant)
    edges = _edges(scores, n_bins, strategy)
    ids = np.searchsorted(edges[1:-1], scores, side="right")
    count = np.bincount(ids, minlength=n_bins)
    conf = np.bincount(ids, weights=scores, minlength=n_bins)
    acc = np.bincount(ids, weights=outcome, minlength=n_bins)
    keep = count > 0
    b = np.flatnonzero(keep)
    return pd.DataFrame({
        "bin": b, "lower": edges[b], "upper": edges[b + 1], "count": count[keep],
        "confidence": conf[keep] / count[keep], "accuracy": acc[keep] / count[keep],
    })


def expected_calibration_error(y_true, prob, n_bins: int = 15, strategy: str = "uniform",
                               variant: str = "positive") -> float:
    """Expected calibration error.

    Parameters
    ----------
    y_true, prob, n_bins, strategy, variant
        As in :func:`reliability_curve`.

    Returns
    -------
    float
        ``sum_b (n_b / n) |accuracy_b - confidence_b|``, in [0, 1].

    Examples
    --------
    >>> round(expected_calibration_error([0, 1, 1, 1], [0.2, 0.8, 0.8, 0.8], n_bins=10), 6)
    0.2
    """
    curve = reliability_curve(y_true, prob, n_bins=n_bins, strategy=strategy, variant=variant)
    w = curve["count"].to_numpy() / curve["count"].sum()
    return float(np.sum(w * np.abs(curve["accuracy"] - curve["confidence"]).to_numpy()))


def brier_score(y_true, prob) -> float:
    """Brier score ``mean((prob - y_true) ** 2)`` of binary probabilities.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        0/1 labels.
    prob : array-like of shape (n_samples,) or (n_samples, 2)
        Probability of the positive class (or both columns).

    Returns
    -------
    float
        0 is perfect; 0.25 is an uninformative 0.5 everywhere.

    Examples
    --------
    >>> brier_score([0, 1], [0.5, 0.5])
    0.25
    """
    y = as_binary(y_true, "y_true")
    p = np.asarray(prob, dtype=np.float64)
    if p.ndim == 2 and p.shape[1] == 2:
        p = p[:, 1]
    p = as_1d_float(p, "prob")
    if len(p) != len(y):
        raise ValueError(f"y_true and prob must have the same length; got {len(y)} and {len(p)}")
    if p.min() < 0 or p.max() > 1:
        raise ValueError("prob must hold probabilities in [0, 1]")
    return float(np.mean((p - y) ** 2))


class TemperatureScaler:
    """Temperature scaling (Guo et al. 2017): divide logits by one fitted ``T > 0``.

    Fit it on a **validation split only** (images not used to train the classifier and not
    in the test set); it changes confidence, not the predicted class.

    Parameters
    ----------
    bounds : tuple of float, default (0.05, 20.0)
        Search interval for the temperature.

    Attributes
    ----------
    temperature_ : float
        The fitted temperature (> 1 softens over-confident predictions).
    nll_before_, nll_after_ : float
        Mean negative log-likelihood on the fitting data at T = 1 and at ``temperature_``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> z = rng.normal(0, 2, 5000)
    >>> y = (rng.random(5000) < 1 / (1 + np.exp(-z))).astype(int)
    >>> ts = TemperatureScaler().fit(3 * z, y)   # logits three times too confident
    >>> bool(abs(ts.temperature_ - 3) < 0.3)
    True
    """

    def __init__(self, bounds: tuple[float, float] = (0.05, 20.0)):
        self.bounds = bounds

    @staticmethod
    def _logits(logits) -> np.ndarray:
        z = np.asarray(logits, dtype=np.float64)
        if z.ndim == 2 and z.shape[1] == 1:
            z = z[:, 0]
        if z.ndim not in (1, 2) or z.shape[0] == 0:
            raise ValueError(f"logits must have shape (n,) (binary) or (n, n_classes); got {z.shape}")
        if not np.all(np.isfinite(z)):
            raise ValueError("logits must be finite")
        return z

    @staticmethod
    def _nll(z: np.ndarray, y: np.ndarray) -> float:
        if z.ndim == 1:
            return float(np.mean(np.logaddexp(0.0, z) - y * z))
        return float(np.mean(logsumexp(z, axis=1) - z[np.arange(len(y)), y]))

    def fit(self, logits, y) -> TemperatureScaler:
        """Fit the temperature by minimising the negative log-likelihood.

        Parameters
        ----------
        logits : array-like of shape (n,) or (n, n_classes)
            Validation logits (binary: logit of the positive class).
        y : array-like of shape (n,)
            0/1 labels (binary) or class indices.

        Returns
        -------
        self
        """
        lo, hi = (float(v) for v in self.bounds)
        if not 0 < lo < hi:
            raise ValueError(f"bounds must be (low, high) with 0 < low < high; got {self.bounds!r}")
        z = self._logits(logits)
        if z.ndim == 1:
            y = as_binary(y, "y")
        else:
            y = as_labels(y, "y")
            if y.dtype.kind not in "iu" or y.min() < 0 or y.max() >= z.shape[1]:
                raise ValueError(f"y must hold class indices 0..{z.shape[1] - 1}")
        if len(y) != z.shape[0]:
            raise ValueError(f"logits and y must have the same number of samples; got "
                             f"{z.shape[0]} and {len(y)}")
        opt = minimize_scalar(lambda log_t: self._nll(z / np.exp(log_t), y),
                              bounds=(np.log(lo), np.log(hi)), method="bounded",
                              options={"xatol": 1e-6})
        self.temperature_ = float(np.exp(opt.x))
        self.nll_before_ = self._nll(z, y)
        self.nll_after_ = self._nll(z / self.temperature_, y)
        return self

    def transform(self, logits) -> np.ndarray:
        """Scaled logits ``logits / temperature_`` (same shape as the input)."""
        if not hasattr(self, "temperature_"):
            raise RuntimeError("this TemperatureScaler is not fitted yet; call fit(logits, y) "
                               "on a validation split")
        return self._logits(logits) / self.temperature_

    def predict_proba(self, logits) -> np.ndarray:
        """Calibrated class probabilities.

        Returns
        -------
        ndarray of shape (n, 2) for binary logits (n,), else (n, n_classes)
        """
        z = self.transform(logits)
        if z.ndim == 1:
            p = expit(z)
            return np.column_stack([1.0 - p, p])
        return softmax(z, axis=1)
