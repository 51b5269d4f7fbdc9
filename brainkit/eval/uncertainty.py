"""Uncertainty for every headline number: a subject-level (cluster) bootstrap over test images,
and over training seeds when a result was trained more than once.

A brain-age test set is a sample of *subjects*: longitudinal cohorts hold several images per
subject, and those images are not independent. :func:`bootstrap_ci` therefore resamples
subjects (all of a subject's images together), never images. When a model was trained with
several seeds, the seeds are resampled too (a two-level bootstrap), so the interval carries
the training noise as well as the test-set noise: with three seeds it is the honest, wide
interval.

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

__all__ = ["Estimate", "bootstrap_ci", "mean_absolute_error", "auc", "mean_difference"]


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


def _as_rows(arrays, n_seeds: int | None) -> tuple[list[np.ndarray], list[bool], int]:
    out, per_seed, n = [], [], None
    for i, a in enumerate(arrays):
        a = np.asarray(a)
        seeded = n_seeds is not None and a.ndim == 2 and a.shape[0] == n_seeds
        rows = a.shape[1] if seeded else a.shape[0]
        if n is None:
            n = rows
        elif rows != n:
            raise ValueError(f"array {i} has {rows} rows, the first has {n}")
        out.append(a)
        per_seed.append(seeded)
    if n is None:
        raise ValueError("bootstrap_ci needs at least one array")
    return out, per_seed, n


def bootstrap_ci(statistic: Callable[..., float], *arrays, groups=None,
                 n_seeds: int | None = None, n_boot: int = 1000, level: float = 0.95,
                 random_state: int = 0) -> Estimate:
    """A statistic and its percentile interval from a subject-level bootstrap.

    Parameters
    ----------
    statistic : callable
        ``statistic(*rows) -> float`` on one resample of the arrays (one seed's arrays when
        ``n_seeds`` is given), e.g. :func:`mean_absolute_error`, :func:`auc`, or a difference
        of two such values computed on the same rows (a paired comparison).
    *arrays : array-like
        Aligned rows: shape ``(n,)`` (or ``(n, ...)``), or ``(n_seeds, n)`` for per-seed values
        (e.g. the predictions of each training seed) when ``n_seeds`` is given.
    groups : array-like of shape (n,), optional
        Subject of each row: resampling draws subjects with replacement and takes all their
        rows. Default: every row is its own subject.
    n_seeds : int, optional
        Arrays of shape ``(n_seeds, n)`` hold one row per seed; each replicate also draws
        ``n_seeds`` seeds with replacement and averages the statistic over them.
    n_boot : int, default 1000
    level : float, default 0.95
    random_state : int, default 0

    Returns
    -------
    Estimate
        Replicates where the statistic is undefined (NaN, e.g. a resample without cases) are
        dropped; with fewer than half of them defined the interval is NaN.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 10:
        raise ValueError(f"n_boot must be an integer >= 10, got {n_boot!r}")
    if n_seeds is not None and (not isinstance(n_seeds, (int, np.integer)) or n_seeds < 1):
        raise ValueError(f"n_seeds must be a positive integer, got {n_seeds!r}")
    arrays, per_seed, n = _as_rows(arrays, n_seeds)
    k = n_seeds or 1
    if groups is None:
        members = [np.array([i]) for i in range(n)]
    else:
        groups = np.asarray(groups)
        if groups.shape[0] != n:
            raise ValueError(f"groups has {groups.shape[0]} entries for {n} rows")
        _, inverse = np.unique(groups.astype(str), return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        bounds = np.flatnonzero(np.diff(inverse[order])) + 1
        members = np.split(order, bounds)
    n_groups = len(members)

    def at(seed: int, idx) -> list:
        return [a[seed][idx] if s else a[idx] for a, s in zip(arrays, per_seed)]

    everything = np.arange(n)
    value = float(np.mean([statistic(*at(s, everything)) for s in range(k)]))
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
        seeds = rng.integers(0, k, k) if k > 1 else (0,)
        reps[b] = np.mean([statistic(*at(s, idx)) for s in seeds])
    finite = reps[np.isfinite(reps)]
    if finite.size < n_boot / 2:
        low = high = math.nan
    else:
        low, high = np.quantile(finite, [(1 - level) / 2, (1 + level) / 2])
    return Estimate(value=value, low=float(low), high=float(high), level=level, n=n,
                    n_groups=n_groups, n_seeds=k)
