"""Uncertainty for every headline number: a subject-level (cluster) bootstrap over test images,
and over training seeds when a result was trained more than once.

A brain-age test set is a sample of *subjects*: longitudinal cohorts hold several images per
subject, and those images are not independent. :func:`bootstrap_ci` therefore resamples
subjects (all of a subject's images together), never images. When a model was trained with
several seeds (:class:`Replicates`), the seeds are resampled too (a two-level bootstrap), so
the interval carries the training noise as well as the test-set noise: with three seeds it is
the honest, wide interval.

Examples
--------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> age = rng.uniform(20, 80, 200)
>>> pred = age + rng.normal(0, 5, 200)
>>> est = bootstrap_ci(mean_absolute_error, age, pred, n_boot=500)
>>> est.low < est.value < est.high
True
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["Estimate", "Replicates", "bootstrap_ci", "mean_absolute_error", "auc",
           "mean_difference", "balanced_accuracy"]


@dataclass(frozen=True)
class Estimate:
    """A statistic with its bootstrap interval.

    Attributes
    ----------
    value : float
        The statistic on the data (the mean over seeds of the per-seed statistic).
    low, high : float
        Percentile bootstrap interval at ``level``.
    level : float
    n : int
        Rows (images) the statistic was computed on.
    n_groups : int
        Independent units resampled (subjects).
    n_seeds : int
        Training seeds (1 when the result was trained once).
    """

    value: float
    low: float
    high: float
    level: float = 0.95
    n: int = 0
    n_groups: int = 0
    n_seeds: int = 1

    def __str__(self) -> str:
        return self.format()

    def format(self, digits: int = 2, scale: float = 1.0) -> str:
        """``"4.12 [3.85, 4.40]"`` (values times ``scale``)."""
        v, lo, hi = (scale * x for x in (self.value, self.low, self.high))
        return f"{v:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"

    def excludes(self, value: float = 0.0) -> bool:
        """True when ``value`` lies outside the interval."""
        return not self.low <= value <= self.high

    def to_dict(self, prefix: str = "") -> dict:
        return {f"{prefix}value": self.value, f"{prefix}low": self.low,
                f"{prefix}high": self.high, f"{prefix}n": self.n,
                f"{prefix}n_subjects": self.n_groups, f"{prefix}n_seeds": self.n_seeds}


def mean_absolute_error(y_true, y_pred) -> float:
    """Plain-numpy MAE (fast enough to be called thousands of times)."""
    return float(np.mean(np.abs(np.asarray(y_pred, float) - np.asarray(y_true, float))))


def balanced_accuracy(y_true, y_pred) -> float:
    """Mean recall over the classes present in ``y_true`` (sklearn's definition), in numpy."""
    y_true = np.asarray(y_true).astype(str)
    y_pred = np.asarray(y_pred).astype(str)
    classes, inverse = np.unique(y_true, return_inverse=True)
    hits = np.bincount(inverse, weights=(y_true == y_pred).astype(float), minlength=len(classes))
    return float(np.mean(hits / np.bincount(inverse, minlength=len(classes))))


def mean_difference(values, is_case) -> float:
    """Mean of ``values`` where ``is_case`` minus the mean where not."""
    values = np.asarray(values, float)
    is_case = np.asarray(is_case, bool)
    if is_case.all() or not is_case.any():
        return math.nan
    return float(values[is_case].mean() - values[~is_case].mean())


def auc(scores, is_case) -> float:
    """Area under the ROC curve of ``scores`` for ``is_case`` (Mann-Whitney, ties count 1/2)."""
    scores = np.asarray(scores, float)
    is_case = np.asarray(is_case, bool)
    n1 = int(is_case.sum())
    n0 = is_case.size - n1
    if n1 == 0 or n0 == 0:
        return math.nan
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(scores.size)
    sorted_scores = scores[order]
    # average ranks of ties
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_scores)) + 1]
    ends = np.r_[starts[1:], scores.size]
    avg = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(avg, ends - starts)
    return float((ranks[is_case].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


class Replicates:
    """Mark an array of shape ``(k, n)`` as ``k`` replicates (training seeds) of ``n`` rows.

    :func:`bootstrap_ci` resamples the rows (subjects) of every array together and, for a
    ``Replicates`` array, also its ``k`` replicates with replacement, independently of other
    ``Replicates`` arrays (e.g. two losses trained with different seeds). The statistic then
    receives a 2-D array ``(k, n')`` for it.
    """

    def __init__(self, values):
        values = np.asarray(values)
        if values.ndim != 2 or values.shape[0] < 1:
            raise ValueError(f"Replicates needs an array of shape (k, n), got {values.shape}")
        self.values = values

    def __len__(self) -> int:
        return self.values.shape[1]


def _rows(arrays) -> int:
    n = None
    for i, a in enumerate(arrays):
        rows = len(a) if isinstance(a, Replicates) else np.asarray(a).shape[0]
        if n is None:
            n = rows
        elif rows != n:
            raise ValueError(f"array {i} has {rows} rows, the first has {n}")
    if n is None:
        raise ValueError("bootstrap_ci needs at least one array")
    return n


def bootstrap_ci(statistic: Callable[..., float], *arrays, groups=None, n_boot: int = 1000,
                 level: float = 0.95, random_state: int = 0) -> Estimate:
    """A statistic and its percentile interval from a subject-level bootstrap.

    Parameters
    ----------
    statistic : callable
        ``statistic(*arrays) -> float`` on one resample, e.g. :func:`mean_absolute_error`,
        :func:`auc`, or a difference of two such values on the same rows (a paired
        comparison). A :class:`Replicates` argument arrives as a 2-D array ``(k, n')``;
        average the per-replicate statistic over its first axis.
    *arrays : array-like or Replicates
        Aligned rows: shape ``(n,)`` (or ``(n, ...)``), or :class:`Replicates` of shape
        ``(k, n)`` (one row per training seed).
    groups : array-like of shape (n,), optional
        Subject of each row: resampling draws subjects with replacement and takes all their
        rows. Default: every row is its own subject.
    n_boot : int, default 1000
    level : float, default 0.95
    random_state : int, default 0

    Returns
    -------
    Estimate
        ``n_seeds`` is the largest replicate count. Replicates where the statistic is
        undefined (NaN, e.g. a resample without cases) are dropped; with fewer than half of
        them defined the interval is NaN.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 10:
        raise ValueError(f"n_boot must be an integer >= 10, got {n_boot!r}")
    n = _rows(arrays)
    values = [a.values if isinstance(a, Replicates) else np.asarray(a) for a in arrays]
    seeded = [isinstance(a, Replicates) for a in arrays]
    if groups is None:
        members = [np.array([i]) for i in range(n)]
    else:
        groups = np.asarray(groups)
        if groups.shape[0] != n:
            raise ValueError(f"groups has {groups.shape[0]} entries for {n} rows")
        _, inverse = np.unique(groups.astype(str), return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        members = np.split(order, np.flatnonzero(np.diff(inverse[order])) + 1)
    n_groups = len(members)
    value = float(statistic(*values))
    rng = np.random.default_rng(random_state)
    lengths = np.array([len(m) for m in members])
    flat = np.concatenate(members)
    starts = np.r_[0, np.cumsum(lengths)[:-1]]
    reps = np.empty(n_boot)
    for b in range(n_boot):
        chosen = rng.integers(0, n_groups, n_groups)
        if groups is None:
            idx = chosen
        else:   # all rows of each chosen subject, without a Python loop over subjects
            size = lengths[chosen]
            within = np.arange(size.sum()) - np.repeat(np.cumsum(size) - size, size)
            idx = flat[np.repeat(starts[chosen], size) + within]
        args = []
        for v, s in zip(values, seeded):
            if s:
                k = v.shape[0]
                args.append(v[rng.integers(0, k, k)][:, idx] if k > 1 else v[:, idx])
            else:
                args.append(v[idx])
        reps[b] = statistic(*args)
    finite = reps[np.isfinite(reps)]
    if finite.size < n_boot / 2:
        low = high = math.nan
    else:
        low, high = np.quantile(finite, [(1 - level) / 2, (1 + level) / 2])
    n_seeds = max([v.shape[0] for v, s in zip(values, seeded) if s], default=1)
    return Estimate(value=value, low=float(low), high=float(high), level=level, n=n,
                    n_groups=n_groups, n_seeds=n_seeds)
