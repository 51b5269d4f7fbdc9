"""Statistics of the book's claims, computed on the designs' tidy per-image predictions.

Each function takes a table of predictions (one row per test image and training seed, with
``image_id``, ``subject_id``, ``seed`` and the design's columns) and returns an
:class:`~brainkit.eval.Estimate` from a subject-level bootstrap that also resamples seeds
(:func:`brainkit.eval.bootstrap_ci`). The findings ledger (:mod:`.findings`), the chapter
summaries (:mod:`.summaries`) and the real-data analyses (:mod:`.realdata`) all use them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..eval.uncertainty import (
    Estimate,
    Replicates,
    auc,
    balanced_accuracy,
    bootstrap_ci,
)

__all__ = [
    "mae_change",
    "mae_difference",
    "site_gap",
    "auc_difference",
    "group_difference",
    "slope_difference",
    "correlation",
    "ece",
    "transfer_difference",
    "truth_checks",
]


def _replicates(preds: pd.DataFrame, ids: np.ndarray, column: str = "age_pred") -> np.ndarray:
    """(k, n) array of ``column`` for images ``ids``, one row per seed (sorted)."""
    wide = preds.pivot_table(index="seed", columns="image_id", values=column, aggfunc="first")
    return wide.reindex(columns=ids).sort_index().to_numpy(dtype=float)


def _labels(preds: pd.DataFrame, ids: np.ndarray, column: str) -> np.ndarray:
    """(k, n) array of string labels (e.g. predicted sites), one row per seed."""
    wide = preds.pivot_table(index="seed", columns="image_id", values=column, aggfunc="first",
                             dropna=False)
    return wide.reindex(columns=ids).sort_index().to_numpy().astype(str)


def _aligned(preds: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image ids, ages and subjects of a tidy prediction table (one row per image)."""
    first = preds.drop_duplicates("image_id").sort_values("image_id")
    return (first["image_id"].to_numpy(), first["age"].to_numpy(dtype=float),
            first["subject_id"].astype(str).to_numpy())


def _mae_rows(age, pred) -> float:
    pred = np.atleast_2d(pred)
    return float(np.mean(np.abs(pred - age[None, :]).mean(axis=1)))


def mae_change(preds: pd.DataFrame, *, loss: str, n_small: int | None = None,
               n_large: int | None = None, subset: str = "external", n_boot: int = 1000,
               random_state: int = 0) -> Estimate:
    """MAE with the smallest training set minus MAE with the largest, on the same images.

    ``preds`` is :func:`~brainkit.experiments.designs.scaling_predictions`; positive means
    more data helped.
    """
    rows = preds[(preds["loss"] == loss) & (preds["set"] == subset)]
    if rows.empty:
        raise ValueError(f"no {subset!r} predictions for loss {loss!r}")
    sizes = sorted(rows["n_train"].unique())
    n_small = sizes[0] if n_small is None else n_small
    n_large = sizes[-1] if n_large is None else n_large
    ids, age, subjects = _aligned(rows)
    small = _replicates(rows[rows["n_train"] == n_small], ids)
    large = _replicates(rows[rows["n_train"] == n_large], ids)
    return bootstrap_ci(lambda a, s, lg: _mae_rows(a, s) - _mae_rows(a, lg), age,
                        Replicates(small), Replicates(large), groups=subjects, n_boot=n_boot,
                        random_state=random_state)


def mae_difference(preds: pd.DataFrame, *, loss: str, baseline: str, n_boot: int = 1000,
                   random_state: int = 0, **filters) -> Estimate:
    """MAE of ``loss`` minus MAE of ``baseline`` on the same test images (negative: ``loss``
    is better). ``filters`` select rows (e.g. ``scheme="merge"``)."""
    rows = preds
    for key, value in filters.items():
        rows = rows[rows[key] == value]
    a = rows[rows["loss"] == loss]
    b = rows[rows["loss"] == baseline]
    if a.empty or b.empty:
        raise ValueError(f"mae_difference needs predictions of {loss!r} and {baseline!r}")
    ids, age, subjects = _aligned(a)
    return bootstrap_ci(lambda y, p, q: _mae_rows(y, p) - _mae_rows(y, q), age,
                        Replicates(_replicates(a, ids)), Replicates(_replicates(b, ids)),
                        groups=subjects, n_boot=n_boot, random_state=random_state)


def site_gap(preds: pd.DataFrame, *, loss: str, others: Sequence[str], n_train: int | None = None,
             n_boot: int = 1000, random_state: int = 0) -> Estimate:
    """Site BAcc of ``loss`` minus the lowest site BAcc among ``others`` (percentage points),
    on the internal test images, at training size ``n_train`` (default: the largest)."""
    rows = preds[preds["set"] == "internal"]
    n_train = rows["n_train"].max() if n_train is None else n_train
    rows = rows[rows["n_train"] == n_train]
    ids, _, subjects = _aligned(rows[rows["loss"] == loss])
    site = rows.drop_duplicates("image_id").set_index("image_id").loc[ids, "site"].to_numpy()
    names = [loss] + [o for o in others if o in set(rows["loss"])]
    if len(names) < 2:
        raise ValueError(f"site_gap needs at least one of {list(others)} besides {loss!r}")
    reps = [Replicates(_labels(rows[rows["loss"] == n], ids, "site_pred")) for n in names]

    def stat(truth, *preds_):
        accs = [np.mean([balanced_accuracy(truth, p) for p in rep]) for rep in preds_]
        return 100.0 * (accs[0] - min(accs[1:]))

    return bootstrap_ci(stat, site, *reps, groups=subjects, n_boot=n_boot,
                        random_state=random_state)


def _auc_rows(case, scores) -> float:
    return float(np.mean([auc(s, case) for s in np.atleast_2d(scores)]))


def auc_difference(gaps: pd.DataFrame, *, dataset: str | None, loss: str = "exp",
                   baseline: str = "l1", case: str = "AD", control: str = "HC",
                   value: str = "bag_corrected", n_boot: int = 1000,
                   random_state: int = 0) -> Estimate:
    """AUC of ``value`` for ``case`` vs ``control``: ``loss`` minus ``baseline`` (paired)."""
    rows = gaps if dataset is None else gaps[gaps["dataset"] == dataset]
    rows = rows[rows["diagnosis"].isin([case, control])]
    a, b = rows[rows["loss"] == loss], rows[rows["loss"] == baseline]
    if a.empty or b.empty:
        raise ValueError(f"auc_difference needs gaps of {loss!r} and {baseline!r}")
    first = a.drop_duplicates("image_id").sort_values("image_id")
    ids = first["image_id"].to_numpy()
    is_case = (first["diagnosis"] == case).to_numpy()
    return bootstrap_ci(lambda c, p, q: _auc_rows(c, p) - _auc_rows(c, q), is_case,
                        Replicates(_replicates(a, ids, value)),
                        Replicates(_replicates(b, ids, value)),
                        groups=first["subject_id"].astype(str).to_numpy(), n_boot=n_boot,
                        random_state=random_state)


def group_difference(gaps: pd.DataFrame, *, loss: str, case: str, control: str = "HC",
                     value: str = "bag_corrected", dataset: str | None = None,
                     n_boot: int = 1000, random_state: int = 0) -> Estimate:
    """Mean ``value`` of ``case`` minus that of ``control`` (years), over subjects and seeds."""
    rows = gaps[(gaps["loss"] == loss) & gaps["diagnosis"].isin([case, control])]
    if dataset is not None:
        rows = rows[rows["dataset"] == dataset]
    first = rows.drop_duplicates("image_id").sort_values("image_id")
    ids = first["image_id"].to_numpy()
    is_case = (first["diagnosis"] == case).to_numpy()

    def stat(c, v):
        v = np.atleast_2d(v)
        if c.all() or not c.any():
            return math.nan
        return float(np.mean(v[:, c].mean(axis=1) - v[:, ~c].mean(axis=1)))

    return bootstrap_ci(stat, is_case, Replicates(_replicates(rows, ids, value)),
                        groups=first["subject_id"].astype(str).to_numpy(), n_boot=n_boot,
                        random_state=random_state)


def slope_difference(fit, group: str) -> Estimate:
    """A group's gap slope minus the reference's, from a
    :func:`brainkit.eval.fit_bag_trajectories` fit (Wald 95 % interval of the mixed model)."""
    rows = fit.slope_differences.set_index("group")
    if group not in rows.index:
        raise ValueError(f"the fit has no slope difference for {group!r}")
    row = rows.loc[group]
    return Estimate(value=float(row["difference"]), low=float(row["ci_low"]),
                    high=float(row["ci_high"]), n=int(fit.n_obs), n_groups=int(fit.n_subjects))


def correlation(points: pd.DataFrame, *, loss: str, x: str = "mae",
                y: str = "balanced_accuracy", baseline: str | None = None,
                n_boot: int = 2000, random_state: int = 0) -> Estimate:
    """Pearson r of (-x, y) over one loss's models (minus the baseline's r if given),
    with a bootstrap over models (points)."""
    def r_of(frame) -> float:
        if len(frame) < 3 or frame[x].nunique() < 2 or frame[y].nunique() < 2:
            return math.nan
        return float(np.corrcoef(-frame[x].to_numpy(float), frame[y].to_numpy(float))[0, 1])

    a = points[points["loss"] == loss].reset_index(drop=True)
    b = None if baseline is None else points[points["loss"] == baseline].reset_index(drop=True)
    rng = np.random.default_rng(random_state)
    value = r_of(a) - (r_of(b) if b is not None else 0.0)
    reps = []
    for _ in range(n_boot):
        ra = r_of(a.iloc[rng.integers(0, len(a), len(a))])
        rb = r_of(b.iloc[rng.integers(0, len(b), len(b))]) if b is not None else 0.0
        reps.append(ra - rb)
    reps = np.asarray(reps)
    finite = reps[np.isfinite(reps)]
    low, high = (np.quantile(finite, [0.025, 0.975]) if finite.size >= n_boot / 2
                 else (math.nan, math.nan))
    return Estimate(value=float(value), low=float(low), high=float(high), n=len(a),
                    n_groups=len(a))


def ece(predictions: pd.DataFrame, *, loss: str, source: str, target: str, n_bins: int = 10,
        n_boot: int = 1000, random_state: int = 0) -> Estimate:
    """Expected calibration error (%) of fine-tuned predictions, bootstrap over images."""
    from ..eval import expected_calibration_error

    rows = predictions[(predictions["loss"] == loss) & (predictions["source"] == source)
                       & (predictions["target"] == target)]
    if rows.empty:
        raise ValueError(f"no fine-tuning predictions for {loss!r} {source} -> {target}")
    groups = rows["image_id"].astype(str).to_numpy() if "image_id" in rows else None
    return bootstrap_ci(lambda y, p: 100.0 * expected_calibration_error(y, p, n_bins=n_bins),
                        rows["y_true"].to_numpy(), rows["prob"].to_numpy(), groups=groups,
                        n_boot=n_boot, random_state=random_state)


def transfer_difference(predictions: pd.DataFrame, *, loss: str = "exp", baseline: str = "l1",
                        n_boot: int = 1000, random_state: int = 0) -> Estimate:
    """Cross-dataset balanced accuracy after fine-tuning: ``loss`` minus ``baseline``
    (percentage points), averaged over directions and folds; bootstrap over target images."""
    rows = predictions[predictions["source"] != predictions["target"]]
    keys = ["source", "target", "fold", "image_id"]
    a = rows[rows["loss"] == loss].set_index(keys)
    b = rows[rows["loss"] == baseline].set_index(keys)
    both = a.join(b[["prob"]], rsuffix="_b", how="inner").reset_index()
    if both.empty:
        raise ValueError(f"no cross-dataset predictions shared by {loss!r} and {baseline!r}")
    direction = (both["source"] + ">" + both["target"] + "#" + both["fold"].astype(str))
    labels = direction.to_numpy()

    def bacc(truth, prob) -> float:
        pred = prob >= 0.5
        if truth.all() or not truth.any():
            return math.nan
        return 0.5 * (np.mean(pred[truth]) + np.mean(~pred[~truth]))

    def stat(d, y, p, q):
        out = []
        for name in np.unique(d):
            m = d == name
            out.append(bacc(y[m], p[m]) - bacc(y[m], q[m]))
        return 100.0 * float(np.nanmean(out))

    return bootstrap_ci(stat, labels, both["y_true"].to_numpy().astype(bool),
                        both["prob"].to_numpy(), both["prob_b"].to_numpy(),
                        groups=both["image_id"].astype(str).to_numpy(), n_boot=n_boot,
                        random_state=random_state)


def truth_checks(gaps: pd.DataFrame, *, n_boot: int = 1000) -> pd.DataFrame:
    """Synthetic data only: how well each loss's corrected gap recovers the planted true gap.

    Returns
    -------
    pandas.DataFrame
        One row per loss: ``r`` (Pearson r of corrected and true gap, all held-out images,
        with its interval) and ``error`` (mean corrected minus true gap in AD, years), ``n``.
    """
    if "true_gap" not in gaps:
        raise ValueError("truth_checks needs the synthetic 'true_gap' column")
    out = []
    for loss, rows in gaps.groupby("loss", sort=False):
        first = rows.drop_duplicates("image_id").sort_values("image_id")
        ids = first["image_id"].to_numpy()
        truth = first["true_gap"].to_numpy(float)
        est = _replicates(rows, ids, "bag_corrected")
        subjects = first["subject_id"].astype(str).to_numpy()
        r = bootstrap_ci(lambda t, v: float(np.mean([np.corrcoef(t, x)[0, 1]
                                                     for x in np.atleast_2d(v)])),
                         truth, Replicates(est), groups=subjects, n_boot=n_boot)
        ad = (first["diagnosis"] == "AD").to_numpy()
        err = bootstrap_ci(lambda t, v, m: float(np.mean(np.atleast_2d(v)[:, m] - t[m]))
                           if m.any() else math.nan, truth, Replicates(est), ad,
                           groups=subjects, n_boot=n_boot)
        out.append({"loss": loss, "r": r.value, "r_low": r.low, "r_high": r.high,
                    "ad_error": err.value, "ad_error_low": err.low, "ad_error_high": err.high,
                    "n": r.n, "n_subjects": r.n_groups, "n_seeds": r.n_seeds})
    return pd.DataFrame(out)
