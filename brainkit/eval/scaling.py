"""Scaling laws and correlations between results (paper Fig. 1a and Fig. 4).

- :func:`fit_power_law` fits ``MAE(n) = a * n ** -b + c`` to error-vs-training-size points,
  with confidence intervals from the least-squares covariance (t intervals, delta-method
  bands) or from a bootstrap over points.
- :func:`bootstrap_correlation` gives Pearson's (or Spearman's) r between two per-model
  quantities, e.g. age MAE and downstream balanced accuracy, with a percentile bootstrap CI.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats
from scipy.optimize import OptimizeWarning, curve_fit

from brainkit.eval._validation import (
    as_1d_float,
    check_positive_int,
    check_probability,
    same_length,
)

__all__ = ["power_law", "PowerLawFit", "fit_power_law", "CorrelationResult",
           "bootstrap_correlation"]

_METHODS = ("covariance", "bootstrap")


def power_law(n, a: float, b: float, c: float) -> np.ndarray:
    """``a * n ** -b + c``.

    Parameters
    ----------
    n : array-like
        Training-set sizes (> 0).
    a, b, c : float
        Scale, exponent and asymptote.

    Returns
    -------
    ndarray, same shape as ``n``
    """
    return a * np.power(np.asarray(n, dtype=np.float64), -b) + c


@dataclass(frozen=True)
class PowerLawFit:
    """A fitted power law ``MAE(n) = a * n ** -b + c``.

    Attributes
    ----------
    a, b, c : float
        Estimates (``c`` is the error the curve levels off at).
    cov : ndarray of shape (3, 3)
        Covariance of (a, b, c) from the least-squares fit.
    params : DataFrame
        ``param, estimate, se, ci_low, ci_high`` for a, b, c.
    method : str
        ``"covariance"`` (t intervals with ``n_points - 3`` degrees of freedom) or
        ``"bootstrap"`` (percentile intervals over resampled points).
    ci : float
        Confidence level.
    n_points : int
        Points fitted.
    residual_sd : float
        Residual standard deviation.
    boot_params : ndarray of shape (n_boot_ok, 3) or None
        The bootstrap estimates (``method="bootstrap"``).
    """

    a: float
    b: float
    c: float
    cov: np.ndarray = field(repr=False)
    params: pd.DataFrame = field(repr=False)
    method: str
    ci: float
    n_points: int
    residual_sd: float
    boot_params: np.ndarray | None = field(default=None, repr=False)

    def predict(self, n) -> np.ndarray:
        """Fitted MAE at sizes ``n`` (array-like of shape (m,)); returns shape (m,)."""
        return power_law(as_1d_float(n, "n"), self.a, self.b, self.c)

    def predict_interval(self, n) -> tuple[np.ndarray, np.ndarray]:
        """Pointwise confidence band of the fitted curve at sizes ``n``.

        Delta method with the parameter covariance (``method="covariance"``), or
        percentiles of the bootstrap curves (``method="bootstrap"``).

        Returns
        -------
        (lower, upper) : tuple of ndarray of shape (m,)
        """
        n = as_1d_float(n, "n")
        if np.any(n <= 0):
            raise ValueError("n must be positive")
        if self.boot_params is not None:
            curves = np.stack([power_law(n, *p) for p in self.boot_params])
            q = 100 * (1 - self.ci) / 2
            return np.percentile(curves, q, axis=0), np.percentile(curves, 100 - q, axis=0)
        jac = np.column_stack([n ** -self.b, -self.a * n ** -self.b * np.log(n), np.ones_like(n)])
        se = np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", jac, self.cov, jac), 0.0))
        tq = stats.t.ppf(0.5 + self.ci / 2, max(self.n_points - 3, 1))
        fit = self.predict(n)
        return fit - tq * se, fit + tq * se


def _initial_guess(n: np.ndarray, y: np.ndarray) -> list[float]:
    c0 = max(0.9 * float(y.min()), 0.0)
    order = np.argsort(n)
    ys = np.maximum(y[order] - c0, 1e-6)
    slope = np.polyfit(np.log(n[order]), np.log(ys), 1)[0] if np.ptp(n) > 0 else -0.5
    b0 = float(np.clip(-slope, 0.05, 3.0))
    a0 = float(np.exp(np.mean(np.log(ys) + b0 * np.log(n[order]))))
    return [a0, b0, c0]


def _fit(n: np.ndarray, y: np.ndarray, p0) -> tuple[np.ndarray, np.ndarray]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OptimizeWarning)
        popt, pcov = curve_fit(power_law, n, y, p0=p0, bounds=([0.0, 0.0, 0.0], [np.inf, 10.0, np.inf]),
                               x_scale="jac", maxfev=20000)
    return popt, pcov


def fit_power_law(n, mae, *, ci: float = 0.95, method: str = "covariance", n_boot: int = 1000,
                  seed: int = 0, p0=None) -> PowerLawFit:
    """Fit ``MAE(n) = a * n ** -b + c`` (a, b, c >= 0) by least squares.

    Parameters
    ----------
    n : array-like of shape (n_points,)
        Training-set sizes (> 0); repeated sizes (folds, seeds) are allowed.
    mae : array-like of shape (n_points,)
        Errors at those sizes.
    ci : float, default 0.95
        Confidence level.
    method : {"covariance", "bootstrap"}, default "covariance"
        How intervals are computed (see :class:`PowerLawFit`).
    n_boot : int, default 1000
        Bootstrap resamples (``method="bootstrap"``).
    seed : int, default 0
        Bootstrap seed.
    p0 : sequence of 3 floats, optional
        Starting values (a, b, c); by default from a log-log line.

    Returns
    -------
    PowerLawFit

    Raises
    ------
    ValueError
        With fewer than 4 points or fewer than 3 distinct sizes.

    Examples
    --------
    >>> n = np.array([250, 500, 1000, 2000, 4000, 8000])
    >>> fit = fit_power_law(n, power_law(n, 40.0, 0.5, 2.0))
    >>> round(fit.a, 3), round(fit.b, 3), round(fit.c, 3)
    (40.0, 0.5, 2.0)
    """
    n = as_1d_float(n, "n")
    y = as_1d_float(mae, "mae")
    m = same_length(n=n, mae=y)
    ci = check_probability(ci, "ci")
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}; got {method!r}")
    if np.any(n <= 0):
        raise ValueError("n must be positive training-set sizes")
    if m < 4 or np.unique(n).size < 3:
        raise ValueError(f"fit_power_law needs at least 4 points and 3 distinct sizes; got {m} "
                         f"points and {np.unique(n).size} sizes")
    if p0 is None:
        p0 = _initial_guess(n, y)
    elif len(p0) != 3:
        raise ValueError(f"p0 must be (a, b, c); got {p0!r}")
    popt, pcov = _fit(n, y, p0)
    resid = y - power_law(n, *popt)
    dof = max(m - 3, 1)
    residual_sd = float(np.sqrt(np.sum(resid ** 2) / dof))
    boot = None
    if method == "covariance":
        se = np.sqrt(np.clip(np.diag(pcov), 0.0, None))
        tq = stats.t.ppf(0.5 + ci / 2, dof)
        lo, hi = popt - tq * se, popt + tq * se
    else:
        n_boot = check_positive_int(n_boot, "n_boot", minimum=10)
        rng = np.random.default_rng(seed)
        draws = []
        for _ in range(n_boot):
            idx = rng.integers(0, m, m)
            if np.unique(n[idx]).size < 3:
                continue
            try:
                draws.append(_fit(n[idx], y[idx], popt)[0])
            except RuntimeError:
                continue
        if len(draws) < 10:
            raise ValueError(f"only {len(draws)} of {n_boot} bootstrap fits succeeded; use "
                             "method='covariance' or more points")
        boot = np.asarray(draws)
        q = 100 * (1 - ci) / 2
        lo, hi = np.percentile(boot, q, axis=0), np.percentile(boot, 100 - q, axis=0)
        se = boot.std(axis=0, ddof=1)
    params = pd.DataFrame({"param": ["a", "b", "c"], "estimate": popt, "se": se,
                           "ci_low": lo, "ci_high": hi})
    return PowerLawFit(a=float(popt[0]), b=float(popt[1]), c=float(popt[2]), cov=pcov,
                       params=params, method=method, ci=ci, n_points=m,
                       residual_sd=residual_sd, boot_params=boot)


@dataclass(frozen=True)
class CorrelationResult:
    """Correlation with a bootstrap confidence interval.

    Attributes
    ----------
    r : float
        The correlation on all points.
    ci_low, ci_high : float
        Percentile bootstrap interval.
    p_value : float
        Two-sided p-value of the usual test (scipy's ``pearsonr`` / ``spearmanr``).
    n : int
        Points.
    n_boot : int
        Bootstrap resamples that gave a defined correlation (resamples where x or y is
        constant are dropped).
    method : str
        ``"pearson"`` or ``"spearman"``.
    """

    r: float
    ci_low: float
    ci_high: float
    p_value: float
    n: int
    n_boot: int
    method: str


def _corr(x: np.ndarray, y: np.ndarray, method: str) -> float:
    if method == "spearman":
        x, y = stats.rankdata(x), stats.rankdata(y)
    xc, yc = x - x.mean(), y - y.mean()
    denom = np.sqrt(np.sum(xc * xc) * np.sum(yc * yc))
    return float(np.sum(xc * yc) / denom) if denom > 0 else float("nan")


def bootstrap_correlation(x, y, *, method: str = "pearson", n_boot: int = 2000,
                          ci: float = 0.95, seed: int = 0) -> CorrelationResult:
    """Correlation between two per-model quantities with a percentile bootstrap CI.

    Parameters
    ----------
    x, y : array-like of shape (n_points,)
        E.g. each model's age MAE and its downstream balanced accuracy (paper Fig. 4).
    method : {"pearson", "spearman"}, default "pearson"
    n_boot : int, default 2000
        Bootstrap resamples of the points (pairs kept together).
    ci : float, default 0.95
    seed : int, default 0

    Returns
    -------
    CorrelationResult

    Examples
    --------
    >>> res = bootstrap_correlation([1, 2, 3, 4, 5], [1.1, 1.9, 3.2, 3.9, 5.1])
    >>> round(res.r, 3), res.ci_low > 0.9
    (0.996, True)
    """
    if method not in ("pearson", "spearman"):
        raise ValueError(f"method must be 'pearson' or 'spearman'; got {method!r}")
    x = as_1d_float(x, "x")
    y = as_1d_float(y, "y")
    m = same_length(x=x, y=y)
    if m < 3:
        raise ValueError(f"bootstrap_correlation needs at least 3 points; got {m}")
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        raise ValueError("x and y must not be constant")
    ci = check_probability(ci, "ci")
    n_boot = check_positive_int(n_boot, "n_boot", minimum=10)
    r = _corr(x, y, method)
    test = stats.pearsonr(x, y) if method == "pearson" else stats.spearmanr(x, y)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, m, (n_boot, m))
    boot = np.array([_corr(x[i], y[i], method) for i in idx])
    boot = boot[np.isfinite(boot)]
    q = 100 * (1 - ci) / 2
    lo, hi = (np.percentile(boot, [q, 100 - q]) if boot.size else (np.nan, np.nan))
    return CorrelationResult(r=r, ci_low=float(lo), ci_high=float(hi),
                             p_value=float(test[1]), n=m, n_boot=int(boot.size), method=method)
