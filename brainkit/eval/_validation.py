"""Argument checks shared by the evaluation modules (private).

Every public function of :mod:`brainkit.eval` validates its inputs with these helpers so that
errors name the argument at fault and say what was expected.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

__all__: list[str] = []


def as_1d_float(x, name: str, *, allow_nan: bool = False) -> np.ndarray:
    """Return ``x`` as a finite 1-D float64 array or raise naming ``name``."""
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be numeric array-like; got {type(x).__name__}") from exc
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D (n_samples,); got shape {arr.shape}")
    if not allow_nan and not np.all(np.isfinite(arr)):
        bad = np.flatnonzero(~np.isfinite(arr))[:5].tolist()
        raise ValueError(f"{name} must be finite; non-finite values at positions {bad}")
    return arr


def as_2d_float(x, name: str) -> np.ndarray:
    """Return ``x`` as a finite 2-D float64 array (n_samples, n_features)."""
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be a numeric array of shape (n_samples, n_features); "
                        f"got {type(x).__name__}") from exc
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n_samples, n_features); got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} must be non-empty; got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        rows = np.flatnonzero(~np.all(np.isfinite(arr), axis=1))[:5].tolist()
        raise ValueError(f"{name} must be finite; non-finite values in rows {rows}")
    return arr


def as_labels(x, name: str) -> np.ndarray:
    """Return ``x`` as a 1-D array of labels (any hashable dtype)."""
    arr = np.asarray(x)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D (n_samples,); got shape {arr.shape}")
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must not contain NaN labels")
    if arr.dtype.kind == "O" and pd.isna(arr).any():
        raise ValueError(f"{name} must not contain missing labels")
    return arr


def as_binary(x, name: str) -> np.ndarray:
    """Return ``x`` as a 1-D int array of 0/1 (bool or 0/1 numbers accepted)."""
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D (n_samples,); got shape {arr.shape}")
    if arr.dtype == bool:
        return arr.astype(np.int64)
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"{name} must hold 0/1 or booleans; got dtype {arr.dtype}")
    values = set(np.unique(arr).tolist())
    if not values <= {0, 1}:
        raise ValueError(f"{name} must hold only 0/1 (or booleans); got values {sorted(values)[:6]}")
    return arr.astype(np.int64)


def same_length(**arrays) -> int:
    """Check that all arrays have the same first dimension; return it."""
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"arguments must have the same number of samples; got {lengths}")
    return next(iter(lengths.values()))


def check_columns(table: pd.DataFrame, columns: Iterable[str], name: str = "table") -> None:
    """Raise if ``table`` is not a DataFrame or misses any of ``columns``."""
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"{name} must be a pandas DataFrame; got {type(table).__name__}")
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"{name} lacks column(s) {missing}; it has {list(table.columns)}")


def check_probability(p: float, name: str) -> float:
    """Check a confidence level / probability strictly between 0 and 1."""
    p = float(p)
    if not 0.0 < p < 1.0:
        raise ValueError(f"{name} must be in (0, 1); got {p}")
    return p


def check_positive_int(n, name: str, *, minimum: int = 1) -> int:
    """Check an integer >= ``minimum``."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"{name} must be an integer; got {type(n).__name__}")
    if n < minimum:
        raise ValueError(f"{name} must be >= {minimum}; got {n}")
    return int(n)


def order_groups(values) -> list:
    """Distinct values of ``values`` in a stable display order.

    Diagnoses follow :data:`brainkit.data.DIAGNOSES` (HC, sMCI, pMCI, MCI, AD); any other
    values come after them, sorted as strings.
    """
    from brainkit.data import DIAGNOSES

    uniq = pd.unique(pd.Series(list(values), dtype=object).dropna())
    rank = {d: i for i, d in enumerate(DIAGNOSES)}
    known = sorted((v for v in uniq if v in rank), key=rank.__getitem__)
    other = sorted((v for v in uniq if v not in rank), key=str)
    return known + other
