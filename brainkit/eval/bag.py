"""Brain-age gap (BAG): the gap itself, age-bias correction, group summaries and ROC.

``BAG = predicted age - chronological age``: positive means the brain looks older than
its years. Brain-age models regress towards the mean age of their training set (young
subjects are over-estimated, old ones under-estimated), so the raw gap correlates
negatively with age. :class:`AgeBiasCorrector` removes that trend. It must be fitted on
*healthy controls' held-out predictions* (for example the out-of-fold predictions of the
training folds), never on the test images it is then applied to: fitting it on the patients
being evaluated would absorb part of the disease effect into the "bias".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.metrics import roc_auc_score, roc_curve

from brainkit.eval._validation import (
    as_1d_float,
    as_binary,
    check_columns,
    check_probability,
    order_groups,
    same_length,
)

__all__ = ["brain_age_gap", "AgeBiasCorrector", "CovariateCorrector", "crossfit_correct",
           "bag_summary",
           "RocCurve", "bag_roc"]


def brain_age_gap(y_true, y_pred) -> np.ndarray:
    """Brain-age gap ``y_pred - y_true``.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        Chronological age (years).
    y_pred : array-like of shape (n_samples,)
        Predicted (brain) age (years).

    Returns
    -------
    ndarray of shape (n_samples,)
        Positive when the predicted age exceeds the chronological age.

    Examples
    --------
    >>> brain_age_gap([70, 60], [75, 58])
    array([ 5., -2.])
    """
    y_true = as_1d_float(y_true, "y_true")
    y_pred = as_1d_float(y_pred, "y_pred")
    same_length(y_true=y_true, y_pred=y_pred)
    return y_pred - y_true


#: Smallest spread of chronological ages (years) a bias line is fitted on: below it the
#: ages are numerically constant (1e-9 years apart once gave a slope of 1.5e9).
_MIN_AGE_SPAN = 1e-3


class AgeBiasCorrector:
    """Linear age-bias correction of predicted ages.

    Fit it on **healthy controls' held-out predictions** (never on the test images), then
    apply it to any subject.

    Parameters
    ----------
    method : {"beheshti", "cole"}, default "beheshti"
        - ``"beheshti"`` (Beheshti et al. 2019): fit ``gap = slope * age + intercept`` and
          subtract it: ``corrected = age_pred - (slope * age + intercept)``. The corrected
          gap is uncorrelated with age on the fitting data.
        - ``"cole"`` (Cole et al. 2018): fit ``age_pred = slope * age + intercept`` and
          invert it: ``corrected = (age_pred - intercept) / slope``.

    Attributes
    ----------
    slope_ : float
        Slope of the fitted line (of the gap for Beheshti, of the prediction for Cole).
    intercept_ : float
        Intercept of the fitted line (years).
    n_samples_ : int
        Number of predictions the line was fitted on.

    Examples
    --------
    >>> age = np.linspace(20, 80, 61)
    >>> pred = 0.7 * age + 15            # regression towards the mean
    >>> corr = AgeBiasCorrector("beheshti").fit(age, pred)
    >>> round(corr.slope_, 3)
    -0.3
    >>> np.allclose(corr.correct(age, pred), age)
    True
    """

    _METHODS = ("beheshti", "cole")

    def __init__(self, method: str = "beheshti"):
        self.method = method

    def fit(self, age, age_pred) -> AgeBiasCorrector:
        """Fit the bias line on healthy controls' held-out predictions.

        Parameters
        ----------
        age : array-like of shape (n_samples,)
            Chronological ages of healthy controls.
        age_pred : array-like of shape (n_samples,)
            Their predicted ages, from a model that did not train on them.

        Returns
        -------
        self
        """
        if self.method not in self._METHODS:
            raise ValueError(f"method must be one of {self._METHODS}; got {self.method!r}")
        age = as_1d_float(age, "age")
        age_pred = as_1d_float(age_pred, "age_pred")
        n = same_length(age=age, age_pred=age_pred)
        if n < 3:
            raise ValueError(f"fit needs at least 3 predictions; got {n}")
        if np.ptp(age) < _MIN_AGE_SPAN:
            raise ValueError(f"age is constant to within {np.ptp(age):.3g} years (all "
                             f"{age.min():.6g}): the bias line cannot be fitted (its slope "
                             "would be arbitrary); fit on predictions whose ages span at least "
                             f"{_MIN_AGE_SPAN:g} years")
        target = age_pred - age if self.method == "beheshti" else age_pred
        slope, intercept = np.polyfit(age, target, 1)
        if self.method == "cole" and abs(slope) < 1e-3:
            raise ValueError(f"predicted ages do not depend on age (slope {slope:.2g}); "
                             "the Cole correction would divide by ~0")
        self.slope_ = float(slope)
        self.intercept_ = float(intercept)
        self.n_samples_ = int(n)
        return self

    def correct(self, age, age_pred) -> np.ndarray:
        """Bias-corrected predicted ages.

        Parameters
        ----------
        age : array-like of shape (n_samples,)
            Chronological ages.
        age_pred : array-like of shape (n_samples,)
            Predicted ages.

        Returns
        -------
        ndarray of shape (n_samples,)
            Corrected predicted ages; the corrected gap is
            ``brain_age_gap(age, corrected)``.
        """
        if not hasattr(self, "slope_"):
            raise RuntimeError("this AgeBiasCorrector is not fitted yet; call fit(age, age_pred) "
                               "on healthy controls' held-out predictions first")
        age = as_1d_float(age, "age")
        age_pred = as_1d_float(age_pred, "age_pred")
        same_length(age=age, age_pred=age_pred)
        if self.method == "beheshti":
            return age_pred - (self.slope_ * age + self.intercept_)
        return (age_pred - self.intercept_) / self.slope_

    def to_dict(self) -> dict:
        """The fitted line, for a JSON file (:meth:`from_dict` reads it back)."""
        if not hasattr(self, "slope_"):
            raise RuntimeError("this AgeBiasCorrector is not fitted yet")
        return {"method": self.method, "slope": self.slope_, "intercept": self.intercept_,
                "n_samples": self.n_samples_}

    @classmethod
    def from_dict(cls, state: dict) -> AgeBiasCorrector:
        out = cls(state["method"])
        out.slope_ = float(state["slope"])
        out.intercept_ = float(state["intercept"])
        out.n_samples_ = int(state["n_samples"])
        return out

    def __repr__(self) -> str:
        return f"AgeBiasCorrector(method={self.method!r})"


#: Terms a :class:`CovariateCorrector` can adjust for.
COVARIATE_TERMS: tuple[str, ...] = ("age", "age2", "sex", "site", "tiv")


class CovariateCorrector:
    """Covariate adjustment of the brain-age gap: ``gap ~ 1 + age + age^2 + sex + site + tiv``.

    Fit the regression of the gap on the covariates by least squares on **healthy controls'
    held-out predictions**, then subtract its prediction: the corrected gap of the fitting
    controls is uncorrelated with every term (the "age as covariate" practice, extended to
    the nuisance variables a study wants out of the gap). With ``terms=("age",)`` it equals
    :class:`AgeBiasCorrector` ``("beheshti")``.

    Parameters
    ----------
    terms : sequence of str, default ("age", "age2", "sex")
        Any of :data:`COVARIATE_TERMS`: ``age`` and ``age2`` (age centred on the fitting
        mean, and its square), ``sex`` (F = 1), ``site`` (one offset per fitting site,
        sum-to-zero coded: a site it never saw gets the average site, offset 0) and ``tiv``
        (standardised on the fitting data).

    Attributes
    ----------
    coef_ : dict
        Term name -> coefficient (years of gap per unit), ``"intercept"`` included.
    sites_ : list of str
        The fitting sites (``site`` term).
    center_ : dict
        ``age_mean``, ``tiv_mean``, ``tiv_sd`` of the fitting data.
    n_samples_ : int
    """

    def __init__(self, terms=("age", "age2", "sex")):
        self.terms = tuple(terms)

    def _check_terms(self) -> tuple[str, ...]:
        bad = [t for t in self.terms if t not in COVARIATE_TERMS]
        if bad or not self.terms:
            raise ValueError(f"terms must be a non-empty subset of {COVARIATE_TERMS}; got "
                             f"{list(self.terms)}")
        return tuple(t for t in COVARIATE_TERMS if t in self.terms)

    def _design(self, age, covariates) -> tuple[np.ndarray, list[str]]:
        n = len(age)
        columns, names = [np.ones(n)], ["intercept"]
        centred = age - self.center_["age_mean"]
        for term in self._check_terms():
            if term == "age":
                columns.append(centred)
                names.append("age")
            elif term == "age2":
                columns.append(centred ** 2)
                names.append("age2")
            elif term == "sex":
                sex = _column(covariates, "sex", n).astype(str)
                bad = ~np.isin(sex, ("M", "F"))
                if bad.any():
                    raise ValueError(f"covariate 'sex' must be M or F; got {sex[bad][:3]}")
                columns.append((sex == "F").astype(float))
                names.append("sex[F]")
            elif term == "tiv":
                tiv = np.asarray(_column(covariates, "tiv", n), dtype=float)
                if not np.isfinite(tiv).all():
                    raise ValueError("covariate 'tiv' has missing or non-finite values")
                columns.append((tiv - self.center_["tiv_mean"]) / self.center_["tiv_sd"])
                names.append("tiv")
            elif term == "site":
                site = _column(covariates, "site", n).astype(str)
                for level in self.sites_[1:]:   # sum-to-zero: the first site is -1 everywhere
                    columns.append((site == level).astype(float)
                                   - (site == self.sites_[0]).astype(float))
                    names.append(f"site[{level}]")
        return np.column_stack(columns), names

    def fit(self, age, age_pred, covariates=None) -> CovariateCorrector:
        """Fit on healthy controls' held-out predictions.

        Parameters
        ----------
        age, age_pred : array-like of shape (n_samples,)
        covariates : pandas.DataFrame, optional
            Columns ``sex`` / ``site`` / ``tiv`` as the terms need, rows aligned.
        """
        terms = self._check_terms()
        age = as_1d_float(age, "age")
        age_pred = as_1d_float(age_pred, "age_pred")
        n = same_length(age=age, age_pred=age_pred)
        self.center_ = {"age_mean": float(age.mean()), "tiv_mean": 0.0, "tiv_sd": 1.0}
        if "tiv" in terms:
            tiv = np.asarray(_column(covariates, "tiv", n), dtype=float)
            if not np.isfinite(tiv).all() or tiv.std() == 0:
                raise ValueError("covariate 'tiv' must be finite and vary to be adjusted for")
            self.center_.update(tiv_mean=float(tiv.mean()), tiv_sd=float(tiv.std()))
        self.sites_ = (sorted(set(_column(covariates, "site", n).astype(str)))
                       if "site" in terms else [])
        x, names = self._design(age, covariates)
        if n <= x.shape[1]:
            raise ValueError(f"fit needs more than {x.shape[1]} predictions for terms "
                             f"{list(terms)}; got {n}")
        if np.linalg.matrix_rank(x) < x.shape[1]:
            raise ValueError(f"the covariates {list(terms)} are collinear on these {n} "
                             "predictions (e.g. one sex, or site confounded with age)")
        beta, *_ = np.linalg.lstsq(x, age_pred - age, rcond=None)
        self.coef_ = {name: float(b) for name, b in zip(names, beta)}
        self.n_samples_ = int(n)
        return self

    def adjustment(self, age, covariates=None) -> np.ndarray:
        """The part of the gap the covariates explain, per image (years)."""
        if not hasattr(self, "coef_"):
            raise RuntimeError("this CovariateCorrector is not fitted yet; call fit first")
        age = as_1d_float(age, "age")
        x, names = self._design(age, covariates)
        return x @ np.array([self.coef_[name] for name in names])

    def correct(self, age, age_pred, covariates=None) -> np.ndarray:
        """Corrected predicted ages: ``age_pred - adjustment``."""
        age_pred = as_1d_float(age_pred, "age_pred")
        adjustment = self.adjustment(age, covariates)
        same_length(age=adjustment, age_pred=age_pred)
        return age_pred - adjustment

    def to_dict(self) -> dict:
        return {"method": "covariates", "terms": list(self._check_terms()),
                "coef": dict(self.coef_), "sites": list(self.sites_),
                "center": dict(self.center_), "n_samples": self.n_samples_}

    @classmethod
    def from_dict(cls, state: dict) -> CovariateCorrector:
        out = cls(state["terms"])
        out.coef_ = {k: float(v) for k, v in state["coef"].items()}
        out.sites_ = [str(s) for s in state.get("sites", [])]
        out.center_ = {k: float(v) for k, v in state["center"].items()}
        out.n_samples_ = int(state["n_samples"])
        return out

    def __repr__(self) -> str:
        return f"CovariateCorrector(terms={self.terms!r})"


def _column(covariates, name: str, n: int) -> np.ndarray:
    if covariates is None or name not in covariates:
        raise ValueError(f"the covariate term {name!r} needs a {name!r} column in covariates")
    values = np.asarray(covariates[name])
    if len(values) != n:
        raise ValueError(f"covariates[{name!r}] has {len(values)} rows for {n} predictions")
    return values


def bag_summary(table: pd.DataFrame, value: str = "bag", group="diagnosis", *,
                ci: float = 0.95) -> pd.DataFrame:
    """Per-group summary of a brain-age gap column.

    Parameters
    ----------
    table : DataFrame
        One row per image; must hold ``value`` and the ``group`` column(s).
    value : str, default "bag"
        Column to summarise.
    group : str or sequence of str, default "diagnosis"
        Grouping column(s), e.g. ``["loss", "diagnosis"]``.
    ci : float, default 0.95
        Confidence level of the t-interval of the mean.

    Returns
    -------
    DataFrame
        One row per group with the group column(s) then ``n, mean, sd, median, ci_low,
        ci_high`` (``sd`` and the interval are NaN for a group of one). Diagnoses are ordered
        HC, sMCI, pMCI, MCI, AD; other values alphabetically.

    Examples
    --------
    >>> t = pd.DataFrame({"bag": [0.0, 1.0, 2.0, 5.0, 7.0], "diagnosis": ["HC"] * 3 + ["AD"] * 2})
    >>> bag_summary(t)[["diagnosis", "n", "mean"]].to_dict("list")
    {'diagnosis': ['HC', 'AD'], 'n': [3, 2], 'mean': [1.0, 6.0]}
    """
    groups = [group] if isinstance(group, str) else list(group)
    if not groups:
        raise ValueError("group must name at least one column")
    check_columns(table, [value, *groups])
    ci = check_probability(ci, "ci")
    values = pd.to_numeric(table[value], errors="coerce")
    bad = values.isna() & table[value].notna()
    if bad.any():
        raise ValueError(f"column {value!r} must be numeric; row {table.index[bad][0]!r} holds "
                         f"{table.loc[bad, value].iloc[0]!r}")
    data = table[groups].copy()
    data["_v"] = values.to_numpy(dtype=float)
    data = data.dropna(subset=["_v", *groups])
    rows = []
    for key, sub in data.groupby(groups, sort=False, observed=True):
        key = key if isinstance(key, tuple) else (key,)
        v = sub["_v"].to_numpy()
        n = v.size
        mean = float(v.mean())
        sd = float(v.std(ddof=1)) if n > 1 else float("nan")
        if n > 1:
            half = stats.t.ppf(0.5 + ci / 2, n - 1) * sd / np.sqrt(n)
            lo, hi = mean - half, mean + half
        else:
            lo = hi = float("nan")
        rows.append({**dict(zip(groups, key)), "n": int(n), "mean": mean, "sd": sd,
                     "median": float(np.median(v)), "ci_low": float(lo), "ci_high": float(hi)})
    out = pd.DataFrame(rows, columns=[*groups, "n", "mean", "sd", "median", "ci_low", "ci_high"])
    if len(out):
        ranks = [out[g].map({v: i for i, v in enumerate(order_groups(out[g]))}) for g in groups]
        order = np.lexsort([r.to_numpy() for r in reversed(ranks)])
        out = out.iloc[order].reset_index(drop=True)
    return out


@dataclass(frozen=True)
class RocCurve:
    """ROC curve of a score separating cases from controls.

    Attributes
    ----------
    fpr, tpr : ndarray of shape (n_thresholds,)
        False- and true-positive rates, from (0, 0) to (1, 1).
    thresholds : ndarray of shape (n_thresholds,)
        Score thresholds (``score >= threshold`` is called a case); the first is ``inf``.
    auc : float
        Area under the curve: the probability that a random case scores higher than a
        random control (ties count one half).
    """

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray
    auc: float


def bag_roc(bag, is_case) -> RocCurve:
    """ROC of the brain-age gap as a detector of cases (e.g. AD vs HC).

    Parameters
    ----------
    bag : array-like of shape (n_samples,)
        Brain-age gaps (a higher gap is taken to indicate a case).
    is_case : array-like of shape (n_samples,)
        1 / True for cases, 0 / False for controls; both must occur.

    Returns
    -------
    RocCurve

    Examples
    --------
    >>> bag_roc([0.0, 1.0, 4.0, 5.0], [0, 0, 1, 1]).auc
    1.0
    """
    bag = as_1d_float(bag, "bag")
    is_case = as_binary(is_case, "is_case")
    same_length(bag=bag, is_case=is_case)
    if is_case.min() == is_case.max():
        raise ValueError("is_case must contain both cases (1) and controls (0)")
    fpr, tpr, thr = roc_curve(is_case, bag)
    return RocCurve(fpr=fpr, tpr=tpr, thresholds=thr, auc=float(roc_auc_score(is_case, bag)))


def crossfit_correct(age, age_pred, folds, *, method: str = "beheshti") -> np.ndarray:
    """Bias-corrected ages, each from a correction line that never saw the image.

    The one rule every brainkit design follows for the brain-age gap: the line that corrects
    an image is fitted on *other* healthy controls' held-out predictions.

    Parameters
    ----------
    age, age_pred : array-like of shape (n_samples,)
        Chronological and (held-out) predicted ages.
    folds : array-like of int, shape (n_samples,)
        ``k >= 0``: a healthy control in fold ``k`` (folds split *subjects*), corrected with
        the line fitted on the healthy controls of every other fold; ``-1``: any other image
        (patients, or images not used for fitting), corrected with the line fitted on all
        healthy controls.
    method : {"beheshti", "cole"}, default "beheshti"
        See :class:`AgeBiasCorrector`.

    Returns
    -------
    ndarray of shape (n_samples,)
        Corrected predicted ages (the corrected gap is ``result - age``).

    Examples
    --------
    >>> age = np.linspace(20, 80, 40)
    >>> pred = 0.7 * age + 15
    >>> folds = np.r_[np.tile([0, 1], 15), -np.ones(10, int)]
    >>> np.allclose(crossfit_correct(age, pred, folds), age)
    True
    """
    age = as_1d_float(age, "age")
    age_pred = as_1d_float(age_pred, "age_pred")
    folds = np.asarray(folds)
    same_length(age=age, age_pred=age_pred, folds=folds)
    if not np.issubdtype(folds.dtype, np.integer) or (folds < -1).any():
        raise ValueError("folds must be integers: a fold number >= 0 for healthy controls, "
                         "-1 for every other image")
    healthy = folds >= 0
    labels = np.unique(folds[healthy])
    if labels.size == 1:
        raise ValueError("folds holds a single healthy fold: every healthy image would be "
                         "corrected by a line fitted on itself; use >= 2 folds")
    out = np.full(age.shape, np.nan)
    for k in labels:
        fit = healthy & (folds != k)
        line = AgeBiasCorrector(method).fit(age[fit], age_pred[fit])
        out[folds == k] = line.correct(age[folds == k], age_pred[folds == k])
    others = ~healthy
    if others.any():
        if not healthy.any():
            raise ValueError("no healthy control (fold >= 0) to fit the correction on")
        line = AgeBiasCorrector(method).fit(age[healthy], age_pred[healthy])
        out[others] = line.correct(age[others], age_pred[others])
    return out
