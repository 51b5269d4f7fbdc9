"""Longitudinal brain-age-gap trajectories with a linear mixed model (paper Fig. 2c).

The model, per image ``i`` of subject ``s`` in group ``g``::

    value ~ time * C(group) + covariates,   random intercept and slope of time per subject

fitted with :class:`statsmodels.regression.mixed_linear_model.MixedLM` (REML). The slope of
the reference group (HC by default) is the ``time`` coefficient; another group's slope is
that plus its ``time:group`` interaction, with its standard error from the fixed-effects
covariance. The design matrix is built here (treatment coding, reference level first), so
the fit does not depend on which formula engine statsmodels is using.

Mixed models sometimes fail to converge; the fit tries each optimiser in ``methods`` in
turn and, if all fail with a random slope, the same optimisers with a random intercept
only. Every attempt is recorded in ``TrajectoryResult.attempts``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.regression.mixed_linear_model import MixedLM

from brainkit.eval._validation import (
    check_columns,
    check_positive_int,
    check_probability,
    order_groups,
)

__all__ = ["TrajectoryResult", "fit_bag_trajectories", "DEFAULT_OPTIMIZERS"]

#: Optimisers tried in order (``MixedLM.fit(method=...)``).
DEFAULT_OPTIMIZERS: tuple[str, ...] = ("lbfgs", "powell", "nm", "cg")


@dataclass(frozen=True)
class TrajectoryResult:
    """Result of :func:`fit_bag_trajectories`.

    Attributes
    ----------
    fixed_effects : DataFrame
        One row per fixed-effect term: ``term, estimate, se, z, p_value, ci_low, ci_high``.
        Terms are ``Intercept``, ``<time>``, ``<group>[T.<g>]``, ``<time>:<group>[T.<g>]``
        and the covariates (``<cov>`` or ``<cov>[T.<level>]``).
    group_slopes : DataFrame
        ``group, slope, se, z, p_value, ci_low, ci_high, n_subjects, n_obs``: the change in
        ``value`` per unit of ``time`` for each group.
    slope_differences : DataFrame
        ``group, reference, difference, se, z, p_value, ci_low, ci_high``: each non-reference
        group's slope minus the reference slope (the interaction terms).
    trajectories : DataFrame
        ``group, time, fit, ci_low, ci_high``: the fitted population trajectory of each group
        over its observed time range, with covariates averaged over all subjects' baselines.
    converged : bool
        Whether the reported fit converged with finite standard errors.
    method : str
        Optimiser of the reported fit.
    re_formula : str
        ``"~<time>"`` (random intercept and slope) or ``"~1"`` (fallback).
    attempts : DataFrame
        ``re_formula, method, converged, message`` for every fit tried, in order.
    reference : str
        Reference group.
    formula : str
        The fixed-effects model in formula notation (documentation only).
    n_obs, n_subjects : int
        Images and subjects used.
    value, time, group, subject : str
        The column names the model was fitted with (for plotting the observed data).
    result : statsmodels MixedLMResults
        The underlying fit.
    """

    fixed_effects: pd.DataFrame
    group_slopes: pd.DataFrame
    slope_differences: pd.DataFrame
    trajectories: pd.DataFrame
    converged: bool
    method: str
    re_formula: str
    attempts: pd.DataFrame
    reference: Any
    formula: str
    n_obs: int
    n_subjects: int
    value: str
    time: str
    group: str
    subject: str
    result: Any = field(repr=False)


def _derive_age_bl(data: pd.DataFrame, time: str, subject: str) -> pd.Series:
    check_columns(data, ["age"], "table (needed to derive age_bl)")
    age = pd.to_numeric(data["age"], errors="coerce")
    first = data.assign(_age=age).sort_values([subject, time], kind="stable").groupby(
        subject, sort=False)["_age"].first()
    return data[subject].map(first)


def _numeric_column(data: pd.DataFrame, col: str) -> pd.Series:
    out = pd.to_numeric(data[col], errors="coerce")
    bad = out.isna() & data[col].notna()
    if bad.any():
        row = data.index[bad][0]
        raise ValueError(f"column {col!r} must be numeric; row {row!r} holds {data.loc[row, col]!r}")
    return out.astype(float)


def _is_numeric(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)


def _fit_once(y, X, subj, Z, method: str, reml: bool):
    model = MixedLM(endog=y, exog=X, groups=subj, exog_re=Z)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            res = model.fit(reml=reml, method=method)
        except (np.linalg.LinAlgError, ValueError, FloatingPointError) as exc:
            return None, False, f"{type(exc).__name__}: {exc}"
    messages = "; ".join(sorted({str(w.message).split("\n")[0] for w in caught}))
    k = X.shape[1]
    fe = np.asarray(res.fe_params, dtype=float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bse = np.asarray(res.bse_fe, dtype=float)
    ok = bool(res.converged) and np.all(np.isfinite(fe)) and np.all(np.isfinite(bse)) and fe.size == k
    if not ok and not messages:
        messages = "optimiser did not converge" if not res.converged else "non-finite standard errors"
    return res, ok, messages


def fit_bag_trajectories(table: pd.DataFrame, value: str = "bag",
                         time: str = "years_from_baseline", group: str = "diagnosis",
                         subject: str = "subject_id",
                         covariates: Sequence[str] = ("age_bl", "sex"), *,
                         reference=None, methods: Sequence[str] = DEFAULT_OPTIMIZERS,
                         random_slope: bool = True, reml: bool = True, ci: float = 0.95,
                         n_points: int = 50) -> TrajectoryResult:
    """Fit per-group longitudinal trajectories of ``value`` with a linear mixed model.

    Parameters
    ----------
    table : DataFrame
        One row per image (visit) with columns ``value``, ``time``, ``group``, ``subject``
        and the covariates. ``age_bl`` may be absent: it is then derived as the ``age`` at
        each subject's first visit (smallest ``time``), so ``age`` must be present.
    value : str, default "bag"
        Outcome column (brain-age gap, or any longitudinal measure).
    time : str, default "years_from_baseline"
        Time since the subject's baseline, in years.
    group : str, default "diagnosis"
        Group column (e.g. HC / sMCI / pMCI / AD).
    subject : str, default "subject_id"
        Subject identifier; random effects are per subject.
    covariates : sequence of str, default ("age_bl", "sex")
        Additive covariates. Numeric columns enter linearly; others are treatment-coded
        (first level in sorted order is the reference).
    reference : optional
        Reference group; default ``"HC"`` if present, else the first group in display order.
    methods : sequence of str, default ("lbfgs", "powell", "nm", "cg")
        Optimisers to try in order until one converges.
    random_slope : bool, default True
        Random intercept and slope of ``time`` per subject; if no optimiser converges, the
        fit falls back to a random intercept only. False fits only the random intercept.
    reml : bool, default True
        Restricted maximum likelihood (statsmodels' default).
    ci : float, default 0.95
        Confidence level of all intervals (normal approximation, as statsmodels reports).
    n_points : int, default 50
        Points per group in ``trajectories``.

    Returns
    -------
    TrajectoryResult

    Raises
    ------
    ValueError
        For missing columns, missing values in used columns, fewer than two groups, or a
        covariate with a single level.
    RuntimeError
        If no attempt produced an estimate at all.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> rows = []
    >>> for s in range(60):
    ...     g = "AD" if s % 2 else "HC"
    ...     b0, b1 = rng.normal(0, 2), rng.normal(1.5 if g == "AD" else 0.0, 0.3)
    ...     for t in (0.0, 1.0, 2.0, 3.0):
    ...         rows.append({"subject_id": s, "diagnosis": g, "years_from_baseline": t,
    ...                      "bag": b0 + b1 * t + rng.normal(0, 0.5)})
    >>> res = fit_bag_trajectories(pd.DataFrame(rows), covariates=())
    >>> res.converged, res.group_slopes["group"].tolist()
    (True, ['HC', 'AD'])
    >>> bool(abs(res.slope_differences["difference"].iloc[0] - 1.5) < 0.3)
    True
    """
    covariates = [covariates] if isinstance(covariates, str) else list(covariates)
    check_columns(table, [value, time, group, subject])
    ci = check_probability(ci, "ci")
    n_points = check_positive_int(n_points, "n_points", minimum=2)
    methods = [methods] if isinstance(methods, str) else list(methods)
    if not methods:
        raise ValueError("methods must name at least one optimiser")
    if len(set([value, time, group, subject, *covariates])) != 4 + len(covariates):
        raise ValueError("value, time, group, subject and covariates must be distinct columns; got "
                         f"{[value, time, group, subject, *covariates]}")

    data = table.copy()
    if "age_bl" in covariates and "age_bl" not in data.columns:
        data["age_bl"] = _derive_age_bl(data, time, subject)
    check_columns(data, covariates)
    used = [value, time, group, subject, *covariates]
    missing = data[used].isna()
    if missing.any().any():
        col = missing.any()[lambda s: s].index[0]
        rows = data.index[missing[col]][:5].tolist()
        raise ValueError(f"column {col!r} has missing values (rows {rows}); drop or impute them first")

    y = _numeric_column(data, value).to_numpy()
    t = _numeric_column(data, time).to_numpy()
    visits = pd.Series(t, index=data.index).groupby(data[subject].to_numpy()).nunique()
    if not (visits >= 2).any():
        raise ValueError(f"column {time!r}: each of the {len(visits)} subjects is seen at a "
                         "single time; a longitudinal mixed model needs subjects with visits "
                         "at two or more times (for one visit per subject, compare the groups "
                         "cross-sectionally instead)")
    groups = order_groups(data[group])
    if len(groups) < 2:
        raise ValueError(f"column {group!r} must contain at least two groups; got {groups}")
    if reference is None:
        reference = "HC" if "HC" in groups else groups[0]
    if reference not in groups:
        raise ValueError(f"reference {reference!r} is not a value of column {group!r}: {groups}")
    others = [g for g in groups if g != reference]

    # Design matrix (treatment coding, reference level dropped).
    g_values = data[group].to_numpy()
    cols: dict[str, np.ndarray] = {"Intercept": np.ones(len(data)), time: t}
    for g in others:
        cols[f"{group}[T.{g}]"] = (g_values == g).astype(float)
    for g in others:
        cols[f"{time}:{group}[T.{g}]"] = t * (g_values == g)
    cov_terms: list[str] = []
    cov_levels: dict[str, list] = {}
    for c in covariates:
        if _is_numeric(data[c]):
            cols[c] = _numeric_column(data, c).to_numpy()
            cov_terms.append(c)
            continue
        levels = order_groups(data[c])
        if len(levels) < 2:
            raise ValueError(f"covariate {c!r} has a single level {levels}; remove it from covariates")
        cov_levels[c] = levels
        for lvl in levels[1:]:
            name = f"{c}[T.{lvl}]"
            cols[name] = (data[c].to_numpy() == lvl).astype(float)
            cov_terms.append(name)
    X = pd.DataFrame(cols, index=data.index)
    subj = data[subject].to_numpy()

    re_options = ([("~" + time, X[["Intercept", time]].to_numpy())] if random_slope else [])
    re_options.append(("~1", np.ones((len(data), 1))))
    attempts = []
    chosen = None
    fallback = None
    for re_name, Z in re_options:
        for m in methods:
            res, ok, msg = _fit_once(y, X, subj, Z, m, reml)
            attempts.append({"re_formula": re_name, "method": m, "converged": ok, "message": msg})
            if res is not None and fallback is None and np.all(np.isfinite(np.asarray(res.fe_params))):
                fallback = (res, re_name, m)
            if ok:
                chosen = (res, re_name, m)
                break
        if chosen is not None:
            break
    attempts_df = pd.DataFrame(attempts, columns=["re_formula", "method", "converged", "message"])
    converged = chosen is not None
    if chosen is None:
        if fallback is None:
            raise RuntimeError("no mixed-model fit produced estimates; attempts:\n"
                               + attempts_df.to_string())
        chosen = fallback
    res, re_name, method = chosen

    names = list(X.columns)
    k = len(names)
    beta = np.asarray(res.fe_params, dtype=float)
    V = np.asarray(res.cov_params(), dtype=float)[:k, :k]
    zq = stats.norm.ppf(0.5 + ci / 2)

    def _row(est: float, var: float) -> dict[str, float]:
        se = float(np.sqrt(var)) if var >= 0 else float("nan")
        zval = est / se if se > 0 else float("nan")
        return {"se": se, "z": zval, "p_value": float(2 * stats.norm.sf(abs(zval))),
                "ci_low": est - zq * se, "ci_high": est + zq * se}

    fixed = pd.DataFrame([{"term": n, "estimate": float(beta[j]), **_row(beta[j], V[j, j])}
                          for j, n in enumerate(names)])

    idx = {n: j for j, n in enumerate(names)}
    slope_rows, diff_rows = [], []
    for g in groups:
        L = np.zeros(k)
        L[idx[time]] = 1.0
        if g != reference:
            j = idx[f"{time}:{group}[T.{g}]"]
            L[j] = 1.0
            diff_rows.append({"group": g, "reference": reference, "difference": float(beta[j]),
                              **_row(beta[j], V[j, j])})
        est = float(L @ beta)
        mask = g_values == g
        slope_rows.append({"group": g, "slope": est, **_row(est, float(L @ V @ L)),
                           "n_subjects": int(pd.unique(subj[mask]).size), "n_obs": int(mask.sum())})
    diff_cols = ["group", "reference", "difference", "se", "z", "p_value", "ci_low", "ci_high"]

    # Population trajectories: covariates averaged over each subject's baseline visit.
    order = np.lexsort((t, pd.factorize(subj)[0]))
    first_rows = X.iloc[order].groupby(subj[order], sort=False).head(1)
    cov_mean = first_rows[cov_terms].mean().to_numpy() if cov_terms else np.zeros(0)
    traj_rows = []
    for g in groups:
        tg = t[g_values == g]
        grid = np.linspace(tg.min(), tg.max(), n_points)
        for tv in grid:
            x = np.zeros(k)
            x[idx["Intercept"]] = 1.0
            x[idx[time]] = tv
            if g != reference:
                x[idx[f"{group}[T.{g}]"]] = 1.0
                x[idx[f"{time}:{group}[T.{g}]"]] = tv
            for j, name in enumerate(cov_terms):
                x[idx[name]] = cov_mean[j]
            fit = float(x @ beta)
            se = float(np.sqrt(max(x @ V @ x, 0.0)))
            traj_rows.append({"group": g, "time": float(tv), "fit": fit,
                              "ci_low": fit - zq * se, "ci_high": fit + zq * se})

    cov_formula = "".join(f" + {c}" if c not in cov_levels else f" + C({c})" for c in covariates)
    formula = f"{value} ~ {time} * C({group}, Treatment({reference!r})){cov_formula}"
    return TrajectoryResult(
        fixed_effects=fixed,
        group_slopes=pd.DataFrame(slope_rows),
        slope_differences=pd.DataFrame(diff_rows, columns=diff_cols),
        trajectories=pd.DataFrame(traj_rows),
        converged=converged,
        method=method,
        re_formula=re_name,
        attempts=attempts_df,
        reference=reference,
        formula=formula,
        n_obs=int(len(data)),
        n_subjects=int(pd.unique(subj).size),
        value=value,
        time=time,
        group=group,
        subject=subject,
        result=res,
    )
