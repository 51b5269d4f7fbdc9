"""The classical baseline beside every comparison: ridge regression of age on voxels.

Every CNN result in brainkit is reported next to :class:`VoxelRidge` trained on exactly the
same images. It is the model a reviewer asks for first (brainageR, the field's reference
tool, is a linear model on voxels after PCA), and it is cheap: with fewer images than voxels
the fit is a kernel ridge on the ``n x n`` Gram matrix.

Two choices matter on real scans, and both are fixed here:

- a *mask*: voxels that are background in most training images are dropped (on real T1
  scans a voxel that is brain in a handful of images only is mostly noise);
- *no standardisation* by default: dividing by the standard deviation of voxels that are
  almost always background blows a few of them up by orders of magnitude, and the
  predictions with them. The penalty grid is relative to the images' mean squared norm, so
  the intensity scale does not matter.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.model_selection import GroupKFold, KFold

from brainkit.eval._validation import as_1d_float, check_positive_int, same_length

__all__ = ["RELATIVE_ALPHAS", "VoxelRidge"]

#: Ridge penalties searched, relative to the training images' mean squared (centred) norm.
RELATIVE_ALPHAS = 10.0 ** np.arange(-6.0, 2.5, 0.5)


def _flat(X, name: str = "X") -> np.ndarray:
    X = np.asarray(X)
    if X.ndim < 2:
        raise ValueError(f"{name} must be images (n, X, Y, Z) or voxel rows (n, p), got shape "
                         f"{X.shape}")
    X = X.reshape(len(X), -1)
    if not np.issubdtype(X.dtype, np.floating):
        X = X.astype(np.float32)
    if not np.isfinite(X).all():
        bad = np.flatnonzero(~np.isfinite(X).all(axis=1))
        raise ValueError(f"{name} holds NaN or inf in row(s) {bad[:5].tolist()}")
    return X


def _dual_solve(K: np.ndarray, y: np.ndarray, alphas: np.ndarray) -> np.ndarray:
    """Dual ridge coefficients for every alpha: (len(alphas), n), via one eigendecomposition."""
    evals, evecs = np.linalg.eigh(K)
    evals = np.clip(evals, 0.0, None)
    proj = evecs.T @ y
    return (evecs[None] * (proj / (evals[None, :] + alphas[:, None]))[:, None, :]).sum(-1)


class VoxelRidge(RegressorMixin, BaseEstimator):
    """Ridge regression of age on masked voxel intensities.

    The penalty is chosen by cross-validation (subject-grouped when ``groups`` are given to
    :meth:`fit`) over ``relative_alphas`` times the training images' mean squared centred
    norm, so the same grid suits images in [0, 1] and raw scanner units.

    Parameters
    ----------
    relative_alphas : array-like, optional
        Default :data:`RELATIVE_ALPHAS` (1e-6 .. 1e2).
    mask_fraction : float, default 0.5
        A voxel enters the model when it is non-zero in at least this fraction of the
        training images.
    standardize : bool, default False
        Divide each masked voxel by its training standard deviation (floored at a tenth of
        the median one). Off by default: see the module docstring.
    cv : int, default 5
        Folds of the penalty search (``GroupKFold`` with groups, else shuffled ``KFold``).
    random_state : int, default 0

    Attributes
    ----------
    mask_ : ndarray of bool, shape (n_voxels,)
    mean_ : ndarray of shape (n_masked,)
    scale_ : ndarray of shape (n_masked,)
    coef_ : ndarray of shape (n_masked,)
    intercept_ : float
    alpha_ : float
        The chosen (absolute) penalty.
    cv_mae_ : ndarray of shape (n_alphas,)
        Cross-validated mean absolute error of each candidate.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> age = rng.uniform(20, 80, 60)
    >>> images = rng.normal(size=(60, 4, 5, 6)) + age[:, None, None, None] / 40
    >>> model = VoxelRidge().fit(images, age)
    >>> float(np.abs(model.predict(images) - age).mean()) < 5
    True
    """

    def __init__(self, relative_alphas=None, mask_fraction: float = 0.5,
                 standardize: bool = False, cv: int = 5, random_state: int = 0):
        self.relative_alphas = relative_alphas
        self.mask_fraction = mask_fraction
        self.standardize = standardize
        self.cv = cv
        self.random_state = random_state

    def _features(self, X) -> np.ndarray:
        return (X[:, self.mask_] - self.mean_) / self.scale_

    def fit(self, X, y, groups=None) -> VoxelRidge:
        """Fit on images ``X`` (n, X, Y, Z) or voxel rows (n, p) and ages ``y`` (n,)."""
        X = _flat(X)
        y = as_1d_float(y, "y")
        same_length(X=X, y=y)
        if not 0.0 <= float(self.mask_fraction) <= 1.0:
            raise ValueError(f"mask_fraction must be in [0, 1], got {self.mask_fraction!r}")
        cv = check_positive_int(self.cv, "cv", minimum=2)
        if len(y) < cv:
            raise ValueError(f"VoxelRidge needs at least cv={cv} images, got {len(y)}")
        rel = np.asarray(RELATIVE_ALPHAS if self.relative_alphas is None
                         else self.relative_alphas, dtype=float)
        if rel.ndim != 1 or rel.size == 0 or not (rel > 0).all():
            raise ValueError("relative_alphas must be a non-empty 1-d array of positive numbers")
        self.mask_ = (X != 0).mean(axis=0) >= float(self.mask_fraction)
        if not self.mask_.any():
            raise ValueError(f"no voxel is non-zero in {self.mask_fraction:.0%} of the "
                             "training images")
        Xm = X[:, self.mask_].astype(np.float64)
        self.mean_ = Xm.mean(axis=0)
        self.scale_ = np.ones(Xm.shape[1])
        if self.standardize:
            sd = Xm.std(axis=0)
            self.scale_ = np.maximum(sd, 0.1 * np.median(sd[sd > 0]) if (sd > 0).any() else 1.0)
        Z = (Xm - self.mean_) / self.scale_
        base = float(np.mean(np.sum(Z ** 2, axis=1))) or 1.0
        alphas = rel * base
        if groups is None:
            folds = KFold(cv, shuffle=True, random_state=self.random_state).split(Z)
        else:
            groups = np.asarray(groups)
            same_length(X=X, groups=groups)
            if len(np.unique(groups)) < cv:
                raise ValueError(f"cv={cv} needs at least {cv} groups, got "
                                 f"{len(np.unique(groups))}")
            folds = GroupKFold(cv).split(Z, y, groups)
        errors = np.zeros(len(alphas))
        for tr, te in folds:
            mu = Z[tr].mean(axis=0)
            a = _dual_solve((Z[tr] - mu) @ (Z[tr] - mu).T, y[tr] - y[tr].mean(), alphas)
            pred = y[tr].mean() + ((Z[te] - mu) @ (Z[tr] - mu).T) @ a.T      # (n_te, n_alpha)
            errors += np.abs(pred - y[te, None]).sum(axis=0)
        self.cv_mae_ = errors / len(y)
        best = int(np.argmin(self.cv_mae_))
        self.alpha_ = float(alphas[best])
        dual = _dual_solve(Z @ Z.T, y - y.mean(), alphas[best:best + 1])[0]
        self.coef_ = Z.T @ dual
        self.intercept_ = float(y.mean())
        return self

    def predict(self, X) -> np.ndarray:
        """Predicted age of images ``X`` (n, X, Y, Z) or voxel rows (n, p)."""
        if not hasattr(self, "coef_"):
            raise RuntimeError("VoxelRidge is not fitted; call fit first")
        X = _flat(X)
        if X.shape[1] != self.mask_.size:
            raise ValueError(f"X has {X.shape[1]} voxels per image, the model was fitted on "
                             f"{self.mask_.size}")
        return self._features(X.astype(np.float64, copy=False)) @ self.coef_ + self.intercept_
