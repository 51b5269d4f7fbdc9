"""Site harmonisation of features with ComBat (neuroHarmonize).

ComBat (Johnson et al. 2007; Fortin et al. 2017, 2018) models every feature as

    x_ij = alpha + covariates_ij @ beta + gamma_i + delta_i * eps_ij

for image ``j`` of site ``i``: an additive site offset ``gamma_i`` and a multiplicative site
scale ``delta_i`` on top of the covariate effects (age, sex, ...), with the site parameters
shrunk towards their mean over features by empirical Bayes. Harmonising removes
``gamma_i`` and ``delta_i`` and keeps the covariate effects.

:class:`ComBat` wraps the field's implementation, neuroHarmonize (Pomponio et al. 2020,
built on Fortin's neuroCombat), as a scikit-learn-style estimator for the intended use of
brain-age studies: **fit on the training healthy controls, apply to test images and
patients** (neuroCombat issue #24). Fitting on everyone, patients included, lets the
disease effect leak into the site estimates when patients are unevenly spread over sites;
fitting on controls and applying the learnt site parameters to patients does not touch a
disease effect. ``transform`` therefore works on new rows from the sites seen in ``fit`` and
refuses rows from other sites (ComBat has no location and scale for a site it never saw).

References
----------
Johnson W.E., Li C., Rabinovic A. Adjusting batch effects in microarray expression data
using empirical Bayes methods. *Biostatistics* 8 (2007).
Fortin J.-P. et al. Harmonization of cortical thickness measurements across scanners and
sites. *NeuroImage* 167 (2018).
Pomponio R. et al. Harmonization of large MRI datasets for the analysis of brain imaging
patterns throughout the lifespan. *NeuroImage* 208 (2020) (neuroHarmonize, ComBat-GAM).
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

from brainkit.eval._validation import as_2d_float, check_columns

__all__ = ["ComBat"]

#: The table column holding each image's acquisition site (brainkit's vocabulary).
SITE_COLUMN = "site"


def _names(value, name: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    try:
        names = tuple(value)
    except TypeError:
        raise TypeError(f"{name} must be a sequence of column names; got {value!r}") from None
    if not all(isinstance(v, str) for v in names):
        raise TypeError(f"{name} must hold column names (str); got {value!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"{name} names a column twice: {list(names)}")
    return names


def _is_continuous(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)


def _quiet():
    """Silence neuroHarmonize's prints and numpy's np.matrix notice inside its calls."""
    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    stack.enter_context(warnings.catch_warnings())
    warnings.filterwarnings("ignore", category=PendingDeprecationWarning)
    return stack


class ComBat:
    """ComBat harmonisation of features across acquisition sites (neuroHarmonize).

    Fit it on the **training healthy controls**, then ``transform`` any image (held-out
    controls, patients) from the sites it was fitted on.

    Parameters
    ----------
    covariates : sequence of str, default ("age", "sex")
        Columns of ``table`` whose effects are *kept*: ComBat estimates them jointly with
        the site effects and puts them back. A numeric column is a continuous covariate
        (linear, or smooth when named in ``smooth``); any other column (text, boolean,
        categorical, e.g. ``sex`` as ``"F"`` / ``"M"``) is categorical and enters as one
        indicator per level but the first (levels sorted as text). To treat a numeric code
        as categorical, cast the column to text. Use ``()`` for no covariate (then age
        effects confounded with site are removed with the site effects).
    smooth : sequence of str, default ()
        Continuous covariates modelled as smooth non-linear terms (ComBat-GAM: cubic
        B-splines with 10 degrees of freedom, penalty chosen by 5-fold cross-validation).
        ``transform`` refuses values outside the range seen in ``fit`` (the spline basis
        is not defined there). neuroHarmonize 2.4 draws the cross-validation folds from
        fresh entropy, so smooth fits differ slightly between runs.
    empirical_bayes : bool, default True
        Shrink each site's offsets and scales towards their mean over features (ComBat's
        empirical Bayes step). With one non-constant feature there is nothing to pool
        over and it is skipped with a warning. ``False`` uses the per-feature estimates.

    Attributes
    ----------
    sites_ : ndarray of str, shape (n_sites,)
        Sites seen in ``fit`` (sorted); ``transform`` accepts only these.
    site_counts_ : dict of str to int
        Images per site in ``fit``.
    n_features_in_ : int
        Number of features.
    constant_features_ : ndarray of bool, shape (n_features_in_,)
        Features that are constant over the fitting rows. They carry no site effect that
        could be estimated and are returned unchanged by ``transform``.
    categories_ : dict of str to list of str
        Levels of each categorical covariate seen in ``fit`` (the first is the reference).
    smooth_range_ : dict of str to tuple of float
        ``(min, max)`` of each smooth covariate in ``fit``.
    design_columns_ : list of str
        The covariate columns given to ComBat after encoding, e.g. ``["age", "sex=M"]``.
    model_ : dict
        neuroHarmonize's fitted model (``harmonizationLearn``) for the non-constant features.

    Notes
    -----
    ``fit`` refuses: fewer than two sites; a site with a single image (its scale would be
    undefined: a variance from one value); a feature that is constant within one site but
    not overall (a zero site scale, division by zero); covariates that are constant or
    collinear with the sites (e.g. every image of a site is female and sex is a covariate
    of a two-site fit with one site per sex); missing covariate values.

    ComBat keeps what its model explains (the covariates) and maps the rest, the residual,
    from each site's scale onto the pooled scale. An effect present only in the transformed
    rows (a disease effect in patients, when fitting on controls) is part of that residual:
    it is kept, not absorbed into the site estimates, but it is rescaled like any deviation
    from the controls' model, by ``pooled sd / site sd``. Where site scales differ a lot, say
    so when comparing effect sizes across sites.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> table = pd.DataFrame({"site": np.repeat(["a", "b", "c"], 40),
    ...                       "age": rng.uniform(20, 80, 120),
    ...                       "sex": rng.choice(["F", "M"], 120)})
    >>> offset = table["site"].map({"a": 0.0, "b": 3.0, "c": -2.0}).to_numpy()[:, None]
    >>> features = 0.05 * table[["age"]].to_numpy() + rng.normal(size=(120, 4)) + offset
    >>> combat = ComBat().fit(features[::2], table.iloc[::2])   # fit on half of the rows
    >>> harmonised = combat.transform(features[1::2], table.iloc[1::2])
    >>> site_means = pd.DataFrame(harmonised).groupby(table["site"].iloc[1::2].to_numpy()).mean()
    >>> bool(np.ptp(site_means.to_numpy(), axis=0).max() < 1.0)   # offsets of 5 removed
    True
    """

    def __init__(self, covariates: Sequence[str] = ("age", "sex"), smooth: Sequence[str] = (),
                 empirical_bayes: bool = True):
        self.covariates = covariates
        self.smooth = smooth
        self.empirical_bayes = empirical_bayes

    # ------------------------------------------------------------------ checks
    def _check_params(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        covariates = _names(self.covariates, "covariates")
        smooth = _names(self.smooth, "smooth")
        extra = [s for s in smooth if s not in covariates]
        if extra:
            raise ValueError(f"smooth names {extra}, which are not in covariates "
                             f"{list(covariates)}; a smooth term must also be a covariate")
        if SITE_COLUMN in covariates:
            raise ValueError(f"covariates must not include {SITE_COLUMN!r}: it is the batch "
                             "variable ComBat removes")
        if not isinstance(self.empirical_bayes, (bool, np.bool_)):
            raise TypeError(f"empirical_bayes must be True or False; got {self.empirical_bayes!r}")
        return covariates, smooth

    @staticmethod
    def _check_inputs(features, table, columns, n_features=None) -> tuple[np.ndarray, np.ndarray]:
        x = as_2d_float(features, "features")
        check_columns(table, [SITE_COLUMN, *columns])
        if len(table) != x.shape[0]:
            raise ValueError(f"features has {x.shape[0]} rows but table has {len(table)}; "
                             "they must describe the same images in the same order")
        if n_features is not None and x.shape[1] != n_features:
            raise ValueError(f"features has {x.shape[1]} columns; this ComBat was fitted on "
                             f"{n_features}")
        missing = table[[SITE_COLUMN, *columns]].isna()
        if missing.to_numpy().any():
            column = missing.columns[missing.any().to_numpy()][0]
            rows = table.index[missing[column].to_numpy()][:5].tolist()
            raise ValueError(f"table column {column!r} has missing values (rows {rows}); "
                             "ComBat needs a site and every covariate for every image")
        return x, table[SITE_COLUMN].astype(str).to_numpy()

    # --------------------------------------------------------------- encoding
    def _learn_encoding(self, table: pd.DataFrame, covariates, smooth) -> None:
        self.categories_ = {}
        self.smooth_range_ = {}
        for c in covariates:
            column = table[c]
            if _is_continuous(column):
                values = column.to_numpy(dtype=float)
                if not np.all(np.isfinite(values)):
                    raise ValueError(f"table column {c!r} must be finite")
                if np.ptp(values) == 0:
                    raise ValueError(f"covariate {c!r} is constant in the fitting rows (all "
                                     f"{values[0]:g}): its effect cannot be separated from the "
                                     "site effects; drop it from covariates")
                if c in smooth:
                    self.smooth_range_[c] = (float(values.min()), float(values.max()))
            else:
                if c in smooth:
                    raise ValueError(f"smooth covariate {c!r} must be numeric; got dtype "
                                     f"{column.dtype}")
                self.categories_[c] = sorted(column.astype(str).unique().tolist())

    def _encode(self, table: pd.DataFrame, sites: np.ndarray,
                covariates) -> tuple[pd.DataFrame, list[str]]:
        """neuroHarmonize's covariate frame (SITE, then one numeric column ``c<k>`` per design
        term) and the design terms' readable names."""
        out = {"SITE": sites}
        names = []
        for c in covariates:
            if c in self.categories_:
                levels = self.categories_[c]
                values = table[c].astype(str).to_numpy()
                unseen = sorted(set(values) - set(levels))
                if unseen:
                    raise ValueError(f"covariate {c!r} has level(s) {unseen} not seen in fit "
                                     f"(fitted levels {levels})")
                for level in levels[1:]:
                    names.append(f"{c}={level}")
                    out[f"c{len(names) - 1}"] = (values == level).astype(float)
            else:
                values = table[c].to_numpy(dtype=float)
                if not np.all(np.isfinite(values)):
                    raise ValueError(f"table column {c!r} must be finite")
                if c in self.smooth_range_:
                    low, high = self.smooth_range_[c]
                    outside = np.flatnonzero((values < low) | (values > high))
                    if outside.size:
                        rows = table.index[outside][:5].tolist()
                        raise ValueError(
                            f"smooth covariate {c!r} has values outside the range seen in fit "
                            f"[{low:g}, {high:g}] (rows {rows}, e.g. {values[outside[0]]:g}); "
                            "the spline basis is undefined there: fit on a range that covers "
                            "them, or model it linearly (drop it from smooth)")
                names.append(c)
                out[f"c{len(names) - 1}"] = values
        return pd.DataFrame(out), names

    # -------------------------------------------------------------------- fit
    def fit(self, features, table: pd.DataFrame) -> ComBat:
        """Estimate each site's location and scale (and the covariate effects).

        Parameters
        ----------
        features : array-like of shape (n_samples, n_features)
            One row per image (embeddings, regional volumes, voxels, ...).
        table : DataFrame with n_samples rows
            The same images in the same order: a ``site`` column and the ``covariates``.

        Returns
        -------
        self
        """
        from neuroHarmonize import harmonizationLearn

        covariates, smooth = self._check_params()
        x, sites = self._check_inputs(features, table, covariates)
        names, counts = np.unique(sites, return_counts=True)
        if names.size < 2:
            raise ValueError(f"ComBat needs images from at least two sites; all rows are from "
                             f"site {names[0]!r}")
        single = names[counts < 2].tolist()
        if single:
            raise ValueError(f"site(s) {single} have a single image: ComBat cannot estimate a "
                             "site's scale from one image (a variance needs two); drop those "
                             "images or merge the site with another")
        constant = np.ptp(x, axis=0) == 0
        if constant.all():
            raise ValueError("every feature is constant over the fitting rows: there is nothing "
                             "to harmonise")
        varying = np.flatnonzero(~constant)
        for site in names:
            flat = varying[np.ptp(x[sites == site][:, varying], axis=0) == 0]
            if flat.size:
                raise ValueError(f"feature(s) {flat[:10].tolist()} are constant within site "
                                 f"{site!r} but vary across sites: the site's scale would be "
                                 "zero; drop those features")
        self._learn_encoding(table, covariates, smooth)
        covars, self.design_columns_ = self._encode(table, sites, covariates)
        design = np.column_stack([(sites[:, None] == names[None, :]).astype(float),
                                  covars.drop(columns="SITE").to_numpy(dtype=float)])
        if x.shape[0] <= design.shape[1]:
            raise ValueError(f"ComBat needs more images ({x.shape[0]}) than sites plus "
                             f"covariate terms ({design.shape[1]})")
        if np.linalg.matrix_rank(design) < design.shape[1]:
            raise ValueError(f"the covariates {self.design_columns_} are collinear with the "
                             f"sites {names.tolist()} in the fitting rows (e.g. a level present "
                             "at one site only, or an effect that is the same as a site's): "
                             "ComBat cannot tell the site effect from the covariate effect")
        eb = bool(self.empirical_bayes)
        if eb and varying.size == 1:
            warnings.warn("ComBat: one non-constant feature, so the empirical Bayes step (which "
                          "pools over features) is skipped", UserWarning, stacklevel=2)
            eb = False
        smooth_terms = [f"c{self.design_columns_.index(s)}" for s in smooth]
        with _quiet():
            # seed=0: neuroHarmonize otherwise calls np.random.seed(None), reseeding numpy's
            # global generator
            model, _ = harmonizationLearn(x[:, varying], covars, eb=eb,
                                          smooth_terms=smooth_terms, seed=0)
        self.sites_ = names.astype(str)
        self.site_counts_ = {str(s): int(c) for s, c in zip(names, counts)}
        self.n_features_in_ = int(x.shape[1])
        self.constant_features_ = constant
        self.model_ = model
        self._placeholder_ = covars.iloc[0].drop("SITE").to_dict()   # any in-range covariates
        return self

    # -------------------------------------------------------------- transform
    def transform(self, features, table: pd.DataFrame) -> np.ndarray:
        """Harmonised features of images from the sites seen in ``fit``.

        Parameters
        ----------
        features : array-like of shape (n_samples, n_features_in_)
        table : DataFrame with n_samples rows
            A ``site`` column (only sites seen in ``fit``) and the ``covariates``.

        Returns
        -------
        ndarray of shape (n_samples, n_features_in_)
            Site offsets and scales removed, covariate effects kept; constant features
            (``constant_features_``) unchanged.

        Raises
        ------
        ValueError
            Rows from sites not seen in ``fit`` (named), unseen categorical levels, smooth
            covariates outside the fitted range, or a different number of features.
        """
        from neuroHarmonize import harmonizationApply

        if not hasattr(self, "model_"):
            raise RuntimeError("this ComBat is not fitted yet; call fit(features, table) on the "
                               "training healthy controls first")
        covariates, _ = self._check_params()
        x, sites = self._check_inputs(features, table, covariates, self.n_features_in_)
        unseen = sorted(set(sites.tolist()) - set(self.sites_.tolist()))
        if unseen:
            counts = {s: int(np.sum(sites == s)) for s in unseen[:10]}
            raise ValueError(f"site(s) {unseen[:10]} were not seen in fit (images per unseen "
                             f"site: {counts}; fitted sites {self.sites_.tolist()[:20]}): "
                             "ComBat has no location and scale for them; refit with some of "
                             "their healthy controls")
        covars, _ = self._encode(table, sites, covariates)
        varying = ~self.constant_features_
        data = x[:, varying]
        # harmonizationApply one-hot encodes the sites *present in its input*, so it fails
        # (a shape error) unless every fitted site has a row. Each row is harmonised on its
        # own, so one placeholder row per absent site (dropped below) changes nothing else.
        absent = [s for s in self.sites_ if s not in set(sites.tolist())]
        if absent:
            filler = pd.DataFrame([self._placeholder_] * len(absent))
            filler["SITE"] = absent
            covars = pd.concat([covars, filler[covars.columns]], ignore_index=True)
            data = np.vstack([data, np.zeros((len(absent), data.shape[1]))])
        with _quiet():
            harmonised = harmonizationApply(data, covars, self.model_)
        out = x.copy()
        out[:, varying] = harmonised[:x.shape[0]]
        return out

    def fit_transform(self, features, table: pd.DataFrame) -> np.ndarray:
        """``fit(features, table).transform(features, table)``."""
        return self.fit(features, table).transform(features, table)

    def __repr__(self) -> str:
        return (f"ComBat(covariates={self.covariates!r}, smooth={self.smooth!r}, "
                f"empirical_bayes={self.empirical_bayes!r})")
