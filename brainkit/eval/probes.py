"""Linear probes on frozen embeddings and the OpenBHB challenge score.

The probes reproduce the OpenBHB challenge kit (RAMP kit ``brain_age_with_site_removal``,
``problem.py``: ``AgeEstimator`` and ``SiteEstimator``) exactly:

- age: ``GridSearchCV(Ridge(), {"alpha": 10 ** [-2 .. 2]}, cv=5, scoring="r2")`` on the raw
  embeddings (the kit does not standardise them);
- site: ``GridSearchCV(LogisticRegression(solver="saga", max_iter=150),
  {"C": 10 ** [-2 .. 2]}, cv=5, scoring="balanced_accuracy")``.

The challenge score is the paper's ``L_c = BAcc ** 0.3 * MAE_ext`` (BAcc as a fraction), the
definition used on the public leaderboard (Dufumier et al. 2022). The kit's ``problem.py`` also
contains an older combined metric, ``MAE_ext * BAcc + MAE_int / n_sites``; it is not used here.

saga stops at 150 iterations by design, so it warns about convergence on almost every fit; the
probes silence :class:`~sklearn.exceptions.ConvergenceWarning` inside their own fits only.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, clone
from sklearn.dummy import DummyClassifier, DummyRegressor
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import (
    GridSearchCV,
    GroupKFold,
    KFold,
    StratifiedGroupKFold,
    StratifiedKFold,
    cross_val_predict,
    cross_val_score,
)

from brainkit.eval._validation import (
    as_1d_float,
    as_2d_float,
    as_labels,
    check_positive_int,
    same_length,
)
from brainkit.eval.metrics import mae

__all__ = [
    "AGE_ALPHAS",
    "SITE_CS",
    "ProbeResult",
    "ChallengeResult",
    "age_probe",
    "site_probe",
    "openbhb_challenge",
    "challenge_score",
]

#: Ridge penalties searched by the OpenBHB kit: 10 ** [-2, -1, 0, 1, 2].
AGE_ALPHAS = 10.0 ** np.arange(-2, 3)
#: Inverse logistic penalties searched by the OpenBHB kit: 10 ** [-2, -1, 0, 1, 2].
SITE_CS = 10.0 ** np.arange(-2, 3)


@dataclass(frozen=True)
class ProbeResult:
    """A fitted linear probe.

    Attributes
    ----------
    estimator : sklearn estimator
        The best estimator refit on all the data (``search.best_estimator_``).
    search : sklearn.model_selection.GridSearchCV
        The fitted grid search (``cv_results_`` holds every candidate's fold scores).
    scoring : str
        ``"r2"`` (age) or ``"balanced_accuracy"`` (site).
    cv_score : float
        Mean cross-validated score of the chosen hyper-parameter (``best_score_``).
    param_name : str
        ``"alpha"`` (age) or ``"C"`` (site).
    best_param : float
        The chosen value of ``param_name``.
    chance_score : float
        The same cross-validated score for a baseline that ignores the embeddings: the
        training mean (age; R^2 about 0 or slightly below) or the majority class (site;
        balanced accuracy exactly ``1 / n_classes``).
    oof_pred : ndarray of shape (n_samples,) or None
        Out-of-fold predictions (age in years, or site labels) from a nested
        cross-validation (the grid search runs inside each outer training fold), when
        requested with ``cv_predict=True``.
    """

    estimator: BaseEstimator
    search: GridSearchCV
    scoring: str
    cv_score: float
    param_name: str
    best_param: float
    chance_score: float
    oof_pred: np.ndarray | None = field(default=None, repr=False)

    def predict(self, z) -> np.ndarray:
        """Predict with the refit best estimator; ``z`` is (n_samples, n_features)."""
        return self.estimator.predict(as_2d_float(z, "z"))

    def to_dict(self) -> dict[str, Any]:
        """Scalars only, for a results table."""
        return {
            "scoring": self.scoring,
            "cv_score": self.cv_score,
            self.param_name: self.best_param,
            "chance_score": self.chance_score,
        }


def _outer_cv(cv: int, groups, *, classification: bool):
    if groups is None:
        if classification:
            return StratifiedKFold(n_splits=cv, shuffle=False)
        return KFold(n_splits=cv, shuffle=False)
    if classification:
        return StratifiedGroupKFold(n_splits=cv, shuffle=False)
    return GroupKFold(n_splits=cv)


def _fit_probe(search: GridSearchCV, dummy, z, y, *, cv: int, cv_predict: bool, groups,
               classification: bool, scoring: str, param_name: str) -> ProbeResult:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=ConvergenceWarning)
        search.fit(z, y)
        oof = None
        if cv_predict:
            outer = _outer_cv(cv, groups, classification=classification)
            oof = cross_val_predict(clone(search), z, y, cv=outer, groups=groups)
    chance = cross_val_score(dummy, z, y, cv=cv, scoring=scoring)
    return ProbeResult(
        estimator=search.best_estimator_,
        search=search,
        scoring=scoring,
        cv_score=float(search.best_score_),
        param_name=param_name,
        best_param=float(search.best_params_[param_name]),
        chance_score=float(np.mean(chance)),
        oof_pred=None if oof is None else np.asarray(oof),
    )


def _check_grid(values, name: str) -> list[float]:
    arr = np.atleast_1d(np.asarray(values, dtype=np.float64))
    if arr.ndim != 1 or arr.size == 0 or not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(f"{name} must be a non-empty 1-D sequence of positive numbers; got {values!r}")
    return arr.tolist()


def _check_groups(groups, n: int):
    if groups is None:
        return None
    groups = as_labels(groups, "groups")
    if len(groups) != n:
        raise ValueError(f"groups must have one entry per sample ({n}); got {len(groups)}")
    return groups


def age_probe(z, age, *, alphas=AGE_ALPHAS, cv: int = 5, cv_predict: bool = False,
              groups=None, n_jobs: int | None = None) -> ProbeResult:
    """Ridge regression of age on frozen embeddings, as in the OpenBHB kit.

    ``GridSearchCV(Ridge(), {"alpha": alphas}, cv=cv, scoring="r2")`` on the raw embeddings.

    Parameters
    ----------
    z : array-like of shape (n_samples, n_features)
        Embeddings (e.g. ``ContrastiveModel.embed(x, layer="projection")``).
    age : array-like of shape (n_samples,)
        Chronological age in years.
    alphas : sequence of float, default ``10 ** [-2 .. 2]``
        Ridge penalties to search.
    cv : int, default 5
        Folds of the grid search (unshuffled ``KFold``, as sklearn does for ``cv=5``).
    cv_predict : bool, default False
        Also compute out-of-fold age predictions (``oof_pred``) with a nested
        cross-validation: ``cv`` outer folds, each running the whole grid search on its
        training part. Costs ``cv`` more grid searches.
    groups : array-like of shape (n_samples,), optional
        Subject ids; when given, the outer folds of ``cv_predict`` keep each subject's
        images together (``GroupKFold``), so no subject is predicted by a model that saw it.
    n_jobs : int, optional
        Passed to ``GridSearchCV``.

    Returns
    -------
    ProbeResult
        ``scoring="r2"``, ``param_name="alpha"``; ``chance_score`` is the R^2 of the
        training-fold mean.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> age = rng.uniform(20, 80, 200)
    >>> z = np.c_[age, rng.normal(size=(200, 3))] + rng.normal(0, 2, (200, 4))
    >>> res = age_probe(z, age)
    >>> res.cv_score > 0.9
    True
    """
    z = as_2d_float(z, "z")
    age = as_1d_float(age, "age")
    n = same_length(z=z, age=age)
    cv = check_positive_int(cv, "cv", minimum=2)
    if n < 2 * cv:
        raise ValueError(f"age_probe needs at least {2 * cv} samples for cv={cv}; got {n}")
    groups = _check_groups(groups, n)
    search = GridSearchCV(Ridge(), param_grid={"alpha": _check_grid(alphas, "alphas")},
                          cv=cv, scoring="r2", n_jobs=n_jobs)
    return _fit_probe(search, DummyRegressor(strategy="mean"), z, age, cv=cv,
                      cv_predict=cv_predict, groups=groups, classification=False,
                      scoring="r2", param_name="alpha")


def site_probe(z, site, *, Cs=SITE_CS, cv: int = 5, max_iter: int = 150,
               cv_predict: bool = False, groups=None, n_jobs: int | None = None,
               random_state: int | None = 0) -> ProbeResult:
    """Logistic regression of acquisition site on frozen embeddings, as in the OpenBHB kit.

    ``GridSearchCV(LogisticRegression(solver="saga", max_iter=150), {"C": Cs}, cv=cv,
    scoring="balanced_accuracy")`` on the raw embeddings. A low balanced accuracy means the
    representation carries little site information (the paper wants it low).

    Parameters
    ----------
    z : array-like of shape (n_samples, n_features)
        Embeddings.
    site : array-like of shape (n_samples,)
        Site labels (any hashable type), at least two distinct values.
    Cs : sequence of float, default ``10 ** [-2 .. 2]``
        Inverse penalties to search.
    cv : int, default 5
        Folds of the grid search (``StratifiedKFold``, as sklearn does for ``cv=5``).
    max_iter : int, default 150
        saga iterations (the kit's value; it rarely converges, by design).
    cv_predict : bool, default False
        Also compute out-of-fold site predictions (``oof_pred``) by nested cross-validation.
    groups : array-like of shape (n_samples,), optional
        Subject ids for the outer folds of ``cv_predict`` (``StratifiedGroupKFold``).
    n_jobs : int, optional
        Passed to ``GridSearchCV``.
    random_state : int or None, default 0
        saga's shuffling seed (the kit leaves it unset; fixing it makes results repeatable).

    Returns
    -------
    ProbeResult
        ``scoring="balanced_accuracy"`` (a fraction), ``param_name="C"``; ``chance_score`` is
        the cross-validated balanced accuracy of the majority class, ``1 / n_sites``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> site = np.repeat([0, 1, 2], 40)
    >>> z = rng.normal(size=(120, 5)) + np.eye(5)[site] * 3
    >>> res = site_probe(z, site)
    >>> res.cv_score > 0.9, round(res.chance_score, 3)
    (True, 0.333)
    """
    z = as_2d_float(z, "z")
    site = as_labels(site, "site")
    n = same_length(z=z, site=site)
    cv = check_positive_int(cv, "cv", minimum=2)
    max_iter = check_positive_int(max_iter, "max_iter")
    if np.unique(site).size < 2:
        raise ValueError("site must contain at least two distinct sites")
    groups = _check_groups(groups, n)
    logreg = LogisticRegression(solver="saga", max_iter=max_iter, random_state=random_state)
    search = GridSearchCV(logreg, param_grid={"C": _check_grid(Cs, "Cs")}, cv=cv,
                          scoring="balanced_accuracy", n_jobs=n_jobs)
    return _fit_probe(search, DummyClassifier(strategy="prior"), z, site, cv=cv,
                      cv_predict=cv_predict, groups=groups, classification=True,
                      scoring="balanced_accuracy", param_name="C")


def challenge_score(bacc: float, mae_ext: float) -> float:
    """OpenBHB challenge score ``L_c = BAcc ** 0.3 * MAE_ext`` (lower is better).

    Parameters
    ----------
    bacc : float
        Site balanced accuracy on the internal test set, as a fraction in [0, 1].
    mae_ext : float
        Age MAE on the external test set, in years.

    Returns
    -------
    float

    Examples
    --------
    >>> round(challenge_score(0.051, 3.76), 2)   # the ISBI 2023 best entry (exp, rbf)
    1.54
    """
    bacc = float(bacc)
    mae_ext = float(mae_ext)
    if not np.isfinite(bacc) or not 0.0 <= bacc <= 1.0:
        hint = " (it looks like a percentage: divide by 100)" if 1.0 < bacc <= 100.0 else ""
        raise ValueError(f"bacc must be a fraction in [0, 1]; got {bacc}{hint}")
    if not np.isfinite(mae_ext) or mae_ext < 0.0:
        raise ValueError(f"mae_ext must be a finite non-negative number; got {mae_ext}")
    return mae_ext * bacc ** 0.3


@dataclass(frozen=True)
class ChallengeResult:
    """Result of :func:`openbhb_challenge`.

    Attributes
    ----------
    bacc : float
        Site balanced accuracy on the internal test set (fraction).
    mae_int, mae_ext : float
        Age MAE (years) on the internal and external test sets.
    score : float
        ``mae_ext * bacc ** 0.3``.
    bacc_chance : float
        Balanced accuracy of always predicting the most frequent training site:
        ``1 / (number of sites present in the internal set)``.
    mae_int_chance, mae_ext_chance : float
        MAE of predicting the mean training age for everyone.
    n_sites : int
        Distinct sites in the training set.
    age_probe, site_probe : ProbeResult
        The fitted probes (trained on the training set only).
    """

    bacc: float
    mae_int: float
    mae_ext: float
    score: float
    bacc_chance: float
    mae_int_chance: float
    mae_ext_chance: float
    n_sites: int
    age_probe: ProbeResult = field(repr=False)
    site_probe: ProbeResult = field(repr=False)

    def to_dict(self) -> dict[str, float]:
        """The scalar results (for a results table)."""
        return {
            "bacc": self.bacc, "mae_int": self.mae_int, "mae_ext": self.mae_ext,
            "score": self.score, "bacc_chance": self.bacc_chance,
            "mae_int_chance": self.mae_int_chance, "mae_ext_chance": self.mae_ext_chance,
            "n_sites": self.n_sites, "alpha": self.age_probe.best_param,
            "C": self.site_probe.best_param,
        }


def _unpack(split, name: str, n_parts: int):
    if not isinstance(split, (tuple, list)) or len(split) != n_parts:
        parts = "(z, age, site)" if n_parts == 3 else "(z, age)"
        raise TypeError(f"{name} must be a tuple {parts}; got {type(split).__name__}"
                        + (f" of length {len(split)}" if isinstance(split, (tuple, list)) else ""))
    z = as_2d_float(split[0], f"{name}[0] (z)")
    age = as_1d_float(split[1], f"{name}[1] (age)")
    out = [z, age]
    if n_parts == 3:
        site = as_labels(split[2], f"{name}[2] (site)")
        same_length(**{f"{name} z": z, f"{name} age": age, f"{name} site": site})
        out.append(site)
    else:
        same_length(**{f"{name} z": z, f"{name} age": age})
    return out


def openbhb_challenge(train, internal, external, *, cv: int = 5, alphas=AGE_ALPHAS,
                      Cs=SITE_CS, n_jobs: int | None = None,
                      random_state: int | None = 0) -> ChallengeResult:
    """Evaluate embeddings with the OpenBHB challenge protocol.

    Fits :func:`age_probe` and :func:`site_probe` on the training embeddings, then reports
    the site balanced accuracy on the internal test set (same sites as training), the age
    MAE on the internal and external (unseen sites) test sets, and the challenge score.

    Parameters
    ----------
    train : tuple (z, age, site)
        Training embeddings (n_train, n_features), ages (n_train,), sites (n_train,).
    internal : tuple (z, age, site)
        Internal test set; its sites must all occur in ``train``.
    external : tuple (z, age)
        External test set (sites unseen in training; site labels are not needed).
    cv, alphas, Cs, n_jobs, random_state
        As in :func:`age_probe` / :func:`site_probe`.

    Returns
    -------
    ChallengeResult
        ``bacc`` (fraction), ``mae_int``, ``mae_ext``, ``score`` and chance levels.

    Raises
    ------
    ValueError
        If the feature dimension differs between sets or ``internal`` has sites absent
        from ``train``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> def make(n, sites):
    ...     age = rng.uniform(10, 80, n)
    ...     site = rng.choice(sites, n)
    ...     return np.c_[age, rng.normal(size=(n, 4))] + rng.normal(0, 3, (n, 5)), age, site
    >>> res = openbhb_challenge(make(300, [0, 1, 2]), make(90, [0, 1, 2]), make(60, [7])[:2])
    >>> res.bacc < 0.6 and res.mae_ext < 4
    True
    """
    z_tr, age_tr, site_tr = _unpack(train, "train", 3)
    z_int, age_int, site_int = _unpack(internal, "internal", 3)
    z_ext, age_ext = _unpack(external, "external", 2)
    dims = {"train": z_tr.shape[1], "internal": z_int.shape[1], "external": z_ext.shape[1]}
    if len(set(dims.values())) != 1:
        raise ValueError(f"embeddings must have the same number of features in every set; got {dims}")
    unseen = sorted(set(np.unique(site_int).tolist()) - set(np.unique(site_tr).tolist()), key=str)
    if unseen:
        raise ValueError(f"internal contains sites absent from train: {unseen[:10]}; the internal "
                         "test set must share the training sites (unseen sites are 'external')")
    age_res = age_probe(z_tr, age_tr, alphas=alphas, cv=cv, n_jobs=n_jobs)
    site_res = site_probe(z_tr, site_tr, Cs=Cs, cv=cv, n_jobs=n_jobs, random_state=random_state)
    bacc = float(balanced_accuracy_score(site_int, site_res.predict(z_int)))
    mae_int = mae(age_int, age_res.predict(z_int))
    mae_ext = mae(age_ext, age_res.predict(z_ext))
    majority = DummyClassifier(strategy="prior").fit(z_tr, site_tr)
    bacc_chance = float(balanced_accuracy_score(site_int, majority.predict(z_int)))
    mean_age = float(np.mean(age_tr))
    return ChallengeResult(
        bacc=bacc, mae_int=mae_int, mae_ext=mae_ext, score=challenge_score(bacc, mae_ext),
        bacc_chance=bacc_chance,
        mae_int_chance=mae(age_int, np.full_like(age_int, mean_age)),
        mae_ext_chance=mae(age_ext, np.full_like(age_ext, mean_age)),
        n_sites=int(np.unique(site_tr).size), age_probe=age_res, site_probe=site_res,
    )
