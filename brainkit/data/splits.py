"""Subject-level splits: age-stratified K-fold, leakage checks, the OpenBHB official split.

A subject's images never cross a split: every function here works on subjects and returns
positional indices into the cohort table.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from .cohort import SPLITS

__all__ = ["LeakageError", "subject_kfold", "subject_subset", "calibration_split",
           "check_no_leakage", "official_split"]


class LeakageError(AssertionError):
    """A subject appears on both sides of a split."""


def _age_bins(subject_age: np.ndarray, folds: int) -> np.ndarray:
    """Quantile bins of subject ages, as many as the data allow (each bin >= folds)."""
    n_bins = max(1, min(10, len(subject_age) // folds))
    while n_bins > 1:
        edges = np.unique(np.quantile(subject_age, np.linspace(0, 1, n_bins + 1)))
        bins = np.clip(np.searchsorted(edges, subject_age, side="right") - 1, 0, len(edges) - 2)
        if np.bincount(bins).min() >= folds:
            return bins
        n_bins -= 1
    return np.zeros(len(subject_age), dtype=int)


def subject_kfold(table: pd.DataFrame, folds: int = 5, *, seed: int = 0,
                  indices=None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Subject-level K-fold, stratified by age (``StratifiedGroupKFold``).

    Parameters
    ----------
    table : pandas.DataFrame
        Cohort table with ``subject_id`` and ``age``.
    folds : int, default 5
        Number of folds (the paper uses 5).
    seed : int, default 0
        Shuffling seed; the same seed gives the same folds.
    indices : array-like of int, optional
        Restrict the split to these rows (e.g. healthy controls only). Returned indices are
        still positions in the full table.

    Returns
    -------
    list of (train_idx, test_idx)
        Positional indices into ``table``; no subject appears in both sides of any fold, and
        every selected row is in exactly one test fold.
    """
    if not isinstance(folds, (int, np.integer)) or folds < 2:
        raise ValueError(f"folds must be an integer >= 2, got {folds!r}")
    for column in ("subject_id", "age"):
        if column not in table:
            raise ValueError(f"table has no {column!r} column (needed for subject_kfold)")
    rows = np.arange(len(table)) if indices is None else np.asarray(indices, dtype=np.int64)
    sub = table.iloc[rows]
    subjects = sub["subject_id"].astype(str).to_numpy()
    n_subjects = len(np.unique(subjects))
    if n_subjects < folds:
        raise ValueError(f"cannot make {folds} subject-level folds from {n_subjects} subjects")
    # Stratify on each subject's baseline (first) age so a subject carries one label.
    baseline = (sub.assign(_s=subjects).groupby("_s", sort=False)["age"].min())
    bins_by_subject = pd.Series(_age_bins(baseline.to_numpy(), folds), index=baseline.index)
    strata = bins_by_subject.loc[subjects].to_numpy()
    cv = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    out = []
    for train, test in cv.split(np.zeros(len(rows)), strata, groups=subjects):
        tr, te = rows[train], rows[test]
        check_no_leakage(table, tr, te)
        out.append((tr, te))
    return out


def subject_subset(table: pd.DataFrame, indices, size: int, *, seed: int = 0,
                   strata=None) -> np.ndarray:
    """Whole subjects, drawn in a stratified random order, until ``size`` images are taken.

    Subjects are ordered by ``(r + u) / m``: ``r`` a random rank within the subject's stratum,
    ``u`` a uniform jitter and ``m`` the stratum's size (systematic stratified sampling), so
    every prefix of the order holds each stratum in about its share. The subset is the
    shortest prefix with at least ``size`` images (the last subject is taken whole).

    Parameters
    ----------
    table : pandas.DataFrame
        Cohort table with ``subject_id`` and ``age``.
    indices : array-like of int
        Candidate rows (positions in ``table``).
    size : int
        Images wanted (>= 1); all candidates when it exceeds their number.
    seed : int, default 0
    strata : array-like of shape (len(table),), optional
        A label per row (e.g. the site); a subject's stratum is that of its first row.
        Default: deciles of the subjects' baseline ages.

    Returns
    -------
    numpy.ndarray of int
        Sorted positions in ``table``, a subset of ``indices``.
    """
    rows = np.sort(np.asarray(indices, dtype=np.int64))
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size must be an integer >= 1, got {size!r}")
    if size >= len(rows):
        return rows
    subjects = table["subject_id"].astype(str).to_numpy()[rows]
    first = pd.Series(np.arange(len(rows))).groupby(subjects, sort=True).first()
    if strata is None:
        baseline = pd.Series(table["age"].to_numpy(dtype=float)[rows]).groupby(
            subjects, sort=True).min().to_numpy()
        key = _age_bins(baseline, 1)
    else:
        key = np.asarray(strata)[rows][first.to_numpy()]
    rng = np.random.default_rng(np.random.SeedSequence([seed, 7]))
    position = np.empty(len(first))
    for value in pd.unique(key):
        members = np.flatnonzero(key == value)
        rank = rng.permutation(len(members))
        position[members] = (rank + rng.random(len(members))) / len(members)
    order = first.index.to_numpy()[np.argsort(position, kind="stable")]
    counts = pd.Series(subjects).value_counts().reindex(order).to_numpy()
    take = order[:int(np.searchsorted(np.cumsum(counts), size) + 1)]
    return rows[np.isin(subjects, take)]


def calibration_split(table: pd.DataFrame, fraction: float, *, seed: int = 0,
                      indices=None) -> tuple[np.ndarray, np.ndarray]:
    """Hold out whole healthy subjects to calibrate a model on: ``(train, held_out)``.

    The held-out part is ``fraction`` of the healthy-control images, drawn as whole subjects
    healthy at every session (:func:`subject_subset`, stratified by baseline age); it is what
    the bias correction and the prediction intervals of a run are fitted on
    (:class:`brainkit.eval.BrainAgeModel`), so the model never trains on it. Every other row
    (patients included) trains.

    Parameters
    ----------
    table : pandas.DataFrame
        Cohort table (``subject_id``, ``age``, ``diagnosis``).
    fraction : float
        In (0, 1): the share of healthy-control images to hold out.
    seed : int, default 0
    indices : array-like of int, optional
        Rows to split (default: all).

    Returns
    -------
    train, held_out : numpy.ndarray of int
        Sorted, disjoint positions; no subject in both.
    """
    from ..errors import InputError

    if isinstance(fraction, bool) or not isinstance(fraction, (int, float, np.floating)) \
            or not 0.0 < float(fraction) < 1.0:
        raise InputError(f"hold-out fraction must be in (0, 1), e.g. 0.2; got {fraction!r}")
    rows = np.arange(len(table)) if indices is None else np.sort(np.asarray(indices, np.int64))
    subjects = table["subject_id"].astype(str).to_numpy()
    healthy = table["diagnosis"].astype(str).to_numpy() == "HC"
    always = pd.Series(healthy[rows]).groupby(subjects[rows]).all()
    candidates = rows[always.loc[subjects[rows]].to_numpy()]
    size = int(round(float(fraction) * len(candidates)))
    if size < 1 or len(candidates) - size < 0:
        raise InputError(f"hold-out fraction {fraction}: {len(candidates)} healthy-control "
                         "image(s) give no held-out image; use a larger fraction or cohort")
    held = subject_subset(table, candidates, size, seed=seed)
    train = np.setdiff1d(rows, held)
    check_no_leakage(table, train, held)
    return train, held


def check_no_leakage(table: pd.DataFrame, train_idx, test_idx, *, subject: str = "subject_id") -> None:
    """Raise :class:`LeakageError` if a subject has images on both sides.

    Parameters
    ----------
    table : pandas.DataFrame
    train_idx, test_idx : array-like of int
        Positional indices into ``table``.
    subject : str, default "subject_id"
    """
    ids = table[subject].astype(str).to_numpy()
    shared = np.intersect1d(ids[np.asarray(train_idx, dtype=np.int64)],
                            ids[np.asarray(test_idx, dtype=np.int64)])
    if shared.size:
        raise LeakageError(f"{shared.size} subject(s) on both sides of the split, e.g. "
                           f"{shared[:5].tolist()}")


def official_split(table: pd.DataFrame) -> dict[str, np.ndarray]:
    """The OpenBHB official split carried by the ``split`` column.

    Returns
    -------
    dict
        ``{"train": idx, "internal_test": idx, "external_test": idx}``, positional indices.
    """
    if "split" not in table:
        raise ValueError("table has no 'split' column: the official OpenBHB split needs the "
                         "participants table's split (train / internal_test / external_test)")
    split = table["split"].astype(str).to_numpy()
    out = {name: np.flatnonzero(split == name) for name in SPLITS}
    check_no_leakage(table, out["train"], np.concatenate([out["internal_test"],
                                                          out["external_test"]]))
    return out
