"""The book's real-data analyses (OASIS-1 images, OASIS-2 volumetrics, fcon1000 thickness).

Each loader returns ``None`` when its data are absent, so a chapter can say how to obtain them
(:func:`how_to_obtain`) instead of failing. Data are found under :func:`brainkit.data.data_root`
(argument > ``BRAINKIT_DATA`` > ``../shared/data``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.paths import data_root

__all__ = [
    "manifest_summary",
    "how_to_obtain",
    "oasis1_images",
    "oasis2_volumetrics",
    "fcon1000_thickness",
]

_FILES = {
    "oasis1": "oasis1_mni4mm/index.csv",
    "oasis1_2mm": "oasis1_mni2mm/subset_index.csv",
    "oasis2": "oasis/oasis_longitudinal.csv",
    "fcon1000": "fcon1000/fcon1000.csv",
}


def _find(name: str, root) -> Path | None:
    base = data_root(root, required=False)
    if base is None:
        return None
    path = base / _FILES[name]
    return path if path.is_file() else None


def manifest_summary() -> pd.DataFrame:
    """One row per shipped dataset manifest: what it is, expected size, where to get it."""
    from ..data import list_manifests, load_manifest

    rows = []
    for name in list_manifests():
        m = load_manifest(name)
        rows.append({"name": name, "title": m.title, "kind": m.kind,
                     "subjects": m.expected.get("subjects"), "images": m.expected.get("images"),
                     "found": _find(name, None) is not None if name in _FILES else None,
                     "request": m.access.get("request", "")})
    return pd.DataFrame(rows).set_index("name")


def how_to_obtain(name: str) -> str:
    """A short paragraph: what the dataset is, its terms, where to request it (from its manifest)."""
    from ..data import load_manifest

    m = load_manifest(name)
    where = m.access.get("request", "see the manifest")
    return (f"{m.title}: not found under BRAINKIT_DATA or ../shared/data (expected "
            f"{_FILES.get(name, '?')}). Request it at {where}; then set BRAINKIT_DATA to the "
            f"folder that holds it. See data_manifests/{name}.yaml.")


def oasis1_images(root=None, *, grid_mm: float = 4, source: str = "mni4mm",
                  cache_dir: str | os.PathLike | None = None):
    """Real OASIS-1 T1 images as a cohort on ``mni_grid(grid_mm)`` (None if absent).

    Parameters
    ----------
    root : path-like, optional
        Data folder (default ``BRAINKIT_DATA`` or ``../shared/data``).
    grid_mm : float, default 4
    source : {"mni4mm", "mni2mm"}, default "mni4mm"
        ``mni4mm``: the 221 images of ``oasis1_mni4mm/`` (209 subjects, 50 with CDR > 0);
        ``mni2mm``: the 48 images of ``oasis1_mni2mm/``.
    cache_dir : path-like, optional
        Where the import (``brainkit.data.import_nifti``) is kept (default: the results
        store's ``cohorts/`` folder).
    """
    from ..data import Cohort, import_nifti, oasis1_table
    from .store import default_store

    names = {"mni4mm": "oasis1", "mni2mm": "oasis1_2mm"}
    if source not in names:
        raise ValueError(f"source must be one of {sorted(names)}, got {source!r}")
    index = _find(names[source], root)
    if index is None:
        return None
    cache = Path(cache_dir) if cache_dir else default_store().root / "cohorts"
    out = cache / f"oasis1_{source}_{grid_mm:g}mm"
    if (out / "cohort.json").is_file():
        return Cohort.load(out)
    cache.mkdir(parents=True, exist_ok=True)
    return import_nifti(oasis1_table(index), index.parent, out, grid_mm=grid_mm, progress=False)


def oasis2_volumetrics(root=None) -> pd.DataFrame | None:
    """OASIS-2 longitudinal volumetrics in the brainkit vocabulary (None if absent)."""
    from ..data import oasis2_table

    path = _find("oasis2", root)
    return None if path is None else oasis2_table(path)


def fcon1000_thickness(root=None, *, min_site_size: int = 40, per_site: int | None = 60,
                       seed: int = 0):
    """fcon1000 cortical thickness: (table, features) of the sites with enough subjects.

    Sites with at least ``min_site_size`` subjects are kept, and ``per_site`` subjects are
    drawn from each (balanced classes, bounded cost); ``None`` if the data are absent.
    """
    from ..data import fcon1000_table

    path = _find("fcon1000", root)
    if path is None:
        return None
    table, features = fcon1000_table(path)
    counts = table["site"].value_counts()
    keep = table["site"].isin(counts[counts >= min_site_size].index).to_numpy()
    rows = np.flatnonzero(keep)
    if per_site is not None:
        rng = np.random.default_rng(seed)
        rows = np.sort(np.concatenate([
            rng.choice(g, size=min(per_site, len(g)), replace=False)
            for _, g in pd.Series(rows).groupby(table["site"].to_numpy()[rows])]))
    return table.iloc[rows].reset_index(drop=True), features.iloc[rows].reset_index(drop=True)
