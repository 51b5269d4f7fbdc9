"""Prediction intervals for brain age: split conformal prediction.

A brain-age model gives one number per image. Split conformal prediction (Vovk et al. 2005;
Lei et al. 2018; Angelopoulos & Bates 2023) turns it into an interval with a guarantee that
needs no model assumption: fitted on held-out *calibration* pairs ``(age, predicted_age)``
of healthy controls, the interval ``interval(predicted_age)`` of a new healthy control from
the same population contains that person's chronological age with probability at least
``coverage``, averaged over calibration sets (exchangeability is all it assumes). Read the
other way round, a brain-age gap outside the interval is unusual at level ``1 - coverage``
for a healthy control; for patients, that is the point.

The calibration predictions must come from a model that did not train on them (held-out
or out-of-fold predictions), and the interval applies to the same kind of prediction it was
calibrated on (uncorrected, or bias-corrected with the same correction).

MAPIE (``mapie``, scikit-learn-contrib) is the field's scikit-learn-compatible library for
conformal prediction, with many more scores and strategies (jackknife+, CV+, conformalised
quantile regression, Mondrian); :class:`ConformalInterval` is the split-conformal core that
brain-age tables need, without the dependency.

References
----------
Vovk V., Gammerman A., Shafer G. *Algorithmic Learning in a Random World*. Springer (2005).
Lei J., G'Sell M., Rinaldo A., Tibshirani R., Wasserman L. Distribution-free predictive
inference for regression. *JASA* 113 (2018).
Angelopoulos A.N., Bates S. Conformal prediction: a gentle introduction. *Foundations and
Trends in Machine Learning* 16 (2023).
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from brainkit.eval._validation import as_1d_float, check_positive_int, same_length

__all__ = ["ConformalInterval"]


def _order_statistic(values: np.ndarray, k: int) -> float:
    """The ``k``-th smallest of ``values`` (1-based)."""
    return float(np.partition(values, k - 1)[k - 1])


def _rank(n: int, level: float) -> int:
    """``ceil((n + 1) * level)``, robust to the float error in the product."""
    return math.ceil((n + 1) * level - 1e-9)


class ConformalInterval:
    """Split-conformal prediction intervals for predicted ages.

    Fit on held-out healthy controls' ``(age, predicted_age)`` (the calibration set); then
    ``interval(predicted_age)`` gives ``(low, high)`` bounds on the chronological age.

    Parameters
    ----------
    coverage : float, default 0.95
        Nominal coverage ``1 - alpha``, in (0, 1).
    method : {"absolute", "binned"}, default "absolute"
        - ``"absolute"``: the same width everywhere. The conformity score is the absolute
          residual ``|age - predicted_age|``; the half-width is its ``k``-th smallest
          calibration value, ``k = ceil((n + 1) * coverage)``, so that
          ``coverage <= P(covered) < coverage + 1 / (n + 1)`` (the upper bound for
          continuous residuals). Needs ``n >= coverage / (1 - coverage)`` (19 for 0.95).
        - ``"binned"``: width and centre depend on the predicted age (Mondrian conformal
          prediction over predicted-age bins). The calibration predictions are split into
          equal-count bins (at most ``n_bins``, each of at least ``min_bin_size`` images);
          within each bin the signed residuals ``age - predicted_age`` give a lower bound at
          rank ``floor((n_b + 1) * alpha / 2)`` and an upper bound at rank
          ``ceil((n_b + 1) * (1 - alpha / 2))``, so the interval is asymmetric where the
          model is biased (regression to the mean) and wider where it is noisier. Coverage
          holds within each bin (hence overall) up to the bins' edges being drawn from the
          calibration predictions themselves (an effect of order ``1 / n_b``). Each bin needs
          ``n_b >= 2 / alpha - 1`` images (39 for 0.95). A new prediction outside the
          calibration range uses the first or last bin.
    n_bins : int, default 4
        Most bins for ``"binned"`` (ignored by ``"absolute"``).
    min_bin_size : int, default 100
        Fewest calibration images per bin for ``"binned"``: the method uses
        ``min(n_bins, n // min_bin_size)`` bins, and one bin (a global asymmetric interval)
        when ``n < 2 * min_bin_size``.

    Attributes
    ----------
    n_calibration_ : int
        Calibration pairs the intervals were fitted on.
    bin_edges_ : ndarray of shape (n_bins_ + 1,)
        Predicted-age edges of the bins; the first is ``-inf`` and the last ``inf``
        (``[-inf, inf]`` for ``"absolute"``).
    bin_counts_ : ndarray of int, shape (n_bins_,)
        Calibration images per bin.
    offsets_ : ndarray of shape (n_bins_, 2)
        The interval of a prediction ``p`` in bin ``b`` is
        ``(p + offsets_[b, 0], p + offsets_[b, 1])`` (``[-q, q]`` for ``"absolute"``).
    width_ : float or ndarray of shape (n_bins_,)
        Interval width in years (``high - low``): one number for ``"absolute"``, one per bin
        for ``"binned"``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> age = rng.uniform(20, 80, 1000)
    >>> pred = age + rng.normal(0, 5, 1000)
    >>> conformal = ConformalInterval(coverage=0.9).fit(age[:500], pred[:500])
    >>> round(conformal.width_, 1)                       # 2 * 1.645 * 5 = 16.4 in theory
    16.8
    >>> low, high = conformal.interval(pred[500:])
    >>> round(float(np.mean((low <= age[500:]) & (age[500:] <= high))), 2)
    0.9
    """

    _METHODS = ("absolute", "binned")

    def __init__(self, coverage: float = 0.95, method: str = "absolute", n_bins: int = 4,
                 min_bin_size: int = 100):
        self.coverage = coverage
        self.method = method
        self.n_bins = n_bins
        self.min_bin_size = min_bin_size

    def _check_params(self) -> float:
        if isinstance(self.coverage, bool) or not isinstance(self.coverage, numbers.Real):
            raise TypeError(f"coverage must be a number in (0, 1); got {self.coverage!r}")
        if not 0.0 < float(self.coverage) < 1.0:
            raise ValueError(f"coverage must be in (0, 1), e.g. 0.95; got {self.coverage!r}")
        if self.method not in self._METHODS:
            raise ValueError(f"method must be one of {self._METHODS}; got {self.method!r}")
        check_positive_int(self.n_bins, "n_bins")
        check_positive_int(self.min_bin_size, "min_bin_size")
        return float(self.coverage)

    def fit(self, age, predicted_age) -> ConformalInterval:
        """Calibrate on held-out healthy controls.

        Parameters
        ----------
        age : array-like of shape (n_samples,)
            Chronological ages of the calibration images.
        predicted_age : array-like of shape (n_samples,)
            Their predicted ages, from a model that did not train on them.

        Returns
        -------
        self

        Raises
        ------
        ValueError
            Too few calibration pairs for the coverage (the message gives the minimum).
        """
        coverage = self._check_params()
        age = as_1d_float(age, "age")
        predicted_age = as_1d_float(predicted_age, "predicted_age")
        n = same_length(age=age, predicted_age=predicted_age)
        alpha = 1.0 - coverage
        residual = age - predicted_age
        if self.method == "absolute":
            k = _rank(n, coverage)
            if k > n:
                need = math.ceil(coverage / alpha - 1e-9)
                raise ValueError(f"{n} calibration pairs are too few for coverage {coverage:g} "
                                 f"with method='absolute': the conformal quantile needs at "
                                 f"least {need}")
            q = _order_statistic(np.abs(residual), k)
            self.bin_edges_ = np.array([-np.inf, np.inf])
            self.bin_counts_ = np.array([n])
            self.offsets_ = np.array([[-q, q]])
            self.width_ = 2.0 * q
        else:
            need = math.ceil(2.0 / alpha - 1.0 - 1e-9)
            bins = max(1, min(int(self.n_bins), n // int(self.min_bin_size)))
            order = np.argsort(predicted_age, kind="stable")
            cut = np.cumsum([len(c) for c in np.array_split(order, bins)])[:-1]
            sorted_pred = predicted_age[order]
            edges = np.r_[-np.inf, (sorted_pred[cut - 1] + sorted_pred[cut]) / 2.0, np.inf]
            which = np.searchsorted(edges[1:-1], predicted_age, side="right")
            counts = np.bincount(which, minlength=bins)
            if counts.min() < need:
                raise ValueError(f"{counts.min()} calibration pairs in a predicted-age bin are "
                                 f"too few for coverage {coverage:g} with method='binned': each "
                                 f"bin needs at least {need} (got {n} pairs in {bins} bin(s); "
                                 "use more calibration data, a larger min_bin_size or "
                                 "method='absolute')")
            offsets = np.empty((bins, 2))
            for b in range(bins):
                r = residual[which == b]
                nb = r.size
                offsets[b, 0] = _order_statistic(r, math.floor((nb + 1) * alpha / 2 + 1e-9))
                offsets[b, 1] = _order_statistic(r, _rank(nb, 1.0 - alpha / 2))
            self.bin_edges_ = edges
            self.bin_counts_ = counts
            self.offsets_ = offsets
            self.width_ = offsets[:, 1] - offsets[:, 0]
        self.n_calibration_ = int(n)
        return self

    def interval(self, predicted_age) -> tuple[np.ndarray, np.ndarray]:
        """Bounds on the chronological age of new images.

        Parameters
        ----------
        predicted_age : array-like of shape (n_samples,)
            Predicted ages (of the same kind as the calibration predictions).

        Returns
        -------
        low, high : ndarray of shape (n_samples,)
            Each contains the chronological age of a new healthy control from the
            calibration population with probability at least ``coverage``.
        """
        if not hasattr(self, "offsets_"):
            raise RuntimeError("this ConformalInterval is not fitted yet; call "
                               "fit(age, predicted_age) on held-out healthy controls first")
        predicted_age = as_1d_float(np.atleast_1d(predicted_age), "predicted_age")
        which = np.searchsorted(self.bin_edges_[1:-1], predicted_age, side="right")
        return (predicted_age + self.offsets_[which, 0],
                predicted_age + self.offsets_[which, 1])

    def empirical_coverage(self, age, predicted_age) -> float:
        """Fraction of ``age`` inside ``interval(predicted_age)`` (e.g. on a test set)."""
        age = as_1d_float(age, "age")
        predicted_age = as_1d_float(predicted_age, "predicted_age")
        same_length(age=age, predicted_age=predicted_age)
        low, high = self.interval(predicted_age)
        return float(np.mean((low <= age) & (age <= high)))

    def to_dict(self) -> dict:
        """The fitted intervals, for a JSON file (:meth:`from_dict` reads them back)."""
        if not hasattr(self, "offsets_"):
            raise RuntimeError("this ConformalInterval is not fitted yet")
        return {"coverage": float(self.coverage), "method": self.method,
                "n_bins": int(self.n_bins), "min_bin_size": int(self.min_bin_size),
                "inner_edges": [float(e) for e in self.bin_edges_[1:-1]],
                "bin_counts": [int(c) for c in self.bin_counts_],
                "offsets": [[float(a), float(b)] for a, b in self.offsets_],
                "n_calibration": int(self.n_calibration_)}

    @classmethod
    def from_dict(cls, state: dict) -> ConformalInterval:
        out = cls(state["coverage"], state["method"], state["n_bins"], state["min_bin_size"])
        out._check_params()
        out.bin_edges_ = np.r_[-np.inf, np.asarray(state["inner_edges"], dtype=float), np.inf]
        out.bin_counts_ = np.asarray(state["bin_counts"], dtype=int)
        out.offsets_ = np.asarray(state["offsets"], dtype=float).reshape(-1, 2)
        out.width_ = (2.0 * out.offsets_[0, 1] if out.method == "absolute"
                      else out.offsets_[:, 1] - out.offsets_[:, 0])
        out.n_calibration_ = int(state["n_calibration"])
        return out

    def __repr__(self) -> str:
        return (f"ConformalInterval(coverage={self.coverage!r}, method={self.method!r}, "
                f"n_bins={self.n_bins!r}, min_bin_size={self.min_bin_size!r})")
