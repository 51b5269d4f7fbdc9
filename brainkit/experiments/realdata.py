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
    "REAL_MODELS",
    "cross_validated_brain_age",
    "healthy_mae",
    "gap_by_cdr",
    "dementia_rocs",
    "dementia_auc",
    "oasis1_markdown",
    "oasis2_markdown",
    "site_predictability",
    "fcon1000_markdown",
    "baseline_comparison",
    "baseline_markdown",
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


# ---------------------------------------------------------------------------- analyses
#: The models the real-data chapter compares on OASIS-1 (the baseline and two losses).
REAL_MODELS = ("ridge", "l1", "exp")


def _md(text: str):
    from IPython.display import Markdown

    return Markdown(text)


def cross_validated_brain_age(cohort, *, models=REAL_MODELS, profile=None, store=None,
                              folds: int = 5, device=None) -> pd.DataFrame:
    """:func:`~brainkit.experiments.pipeline.cross_validate` of every model on the same
    subject-level folds, stacked (``loss`` column), with a ``cdr`` label (``"0"`` for
    healthy images, else the rating; OASIS-1 leaves most under-60s unrated: healthy)."""
    from .designs import _stack

    # one stack: every model's fold runs are planned together and train side by side
    out = _stack("cross_validate", "predictions", cohort, models, seed=0, seeds=None,
                 params={"folds": folds}, profile=profile, store=store, device=device)
    if "CDR" in out:
        cdr = pd.to_numeric(out["CDR"], errors="coerce").fillna(0.0)
        out["cdr"] = cdr.map(lambda v: f"{v:g}")
    out["seed"] = 0
    return out


def healthy_mae(cv: pd.DataFrame, *, n_boot: int = 1000) -> pd.DataFrame:
    """Out-of-fold MAE of the healthy images per model, with intervals (subjects resampled)."""
    from ..plots.theme import loss_label
    from .summaries import mae_summary, with_intervals

    hc = cv[cv["diagnosis"] == "HC"].assign(subject_id=lambda t: t["subject_id"].astype(str))
    out = mae_summary(hc, by=("loss",), n_boot=n_boot)
    out["loss"] = out["loss"].map(loss_label)
    return with_intervals(out, ["mae"], keep=["loss", "n", "n_subjects"])


def gap_by_cdr(cv: pd.DataFrame, *, n_boot: int = 1000) -> pd.DataFrame:
    """Mean corrected gap per model and clinical dementia rating, with intervals."""
    from .summaries import gap_intervals, with_intervals

    table = gap_intervals(cv.assign(diagnosis=cv["cdr"]), n_boot=n_boot)
    table = table.rename(columns={"diagnosis": "cdr"})
    return with_intervals(table, ["gap"], keep=["loss", "cdr", "n", "n_subjects"])


def _dementia_rows(cv: pd.DataFrame) -> pd.DataFrame:
    old = cv["age"] >= 60
    return cv[old & cv["diagnosis"].isin(["HC", "AD"])]


def dementia_rocs(cv: pd.DataFrame) -> dict:
    """ROC curves of the corrected gap, CDR > 0 vs healthy aged >= 60, per model."""
    from .summaries import roc_by_loss

    return roc_by_loss(_dementia_rows(cv), case="AD", control="HC")


def dementia_auc(cv: pd.DataFrame, *, n_boot: int = 1000) -> pd.DataFrame:
    """AUC of the corrected gap for CDR > 0 vs healthy aged >= 60, with intervals."""
    from .summaries import auc_summary, with_intervals

    rows = _dementia_rows(cv)
    table = auc_summary(rows.assign(dataset="oasis1"), datasets=("oasis1",), n_boot=n_boot)
    return with_intervals(table, ["auc"], keep=["loss", "n_case", "n_control"])


def oasis1_markdown(cv: pd.DataFrame | None):
    """The OASIS-1 result sentences: each CNN against the voxel ridge (MAE and AUC)."""
    from ..plots.theme import loss_label
    from . import prose
    from .estimates import auc_difference, mae_difference

    if cv is None:
        return _md("The OASIS-1 images were not found, so no result is reported here.")
    hc = cv[cv["diagnosis"] == "HC"].assign(subject_id=lambda t: t["subject_id"].astype(str))
    rows = _dementia_rows(cv).assign(dataset="oasis1")
    lines = []
    for loss in [m for m in cv["loss"].unique() if m != "ridge"]:
        mae = mae_difference(hc, loss=loss, baseline="ridge")
        auc = auc_difference(rows, dataset="oasis1", loss=loss, baseline="ridge")
        lines.append("- " + prose.difference(loss_label(loss), "the voxel ridge", mae,
                                             metric="healthy held-out MAE", unit="years"))
        lines.append("- " + prose.difference(loss_label(loss), "the voxel ridge", auc,
                                             metric="dementia AUC", digits=3))
    return _md("\n".join(lines))


def oasis2_markdown(fit):
    """One sentence on the nWBV slope difference of dementia (Markdown)."""
    from ..eval.uncertainty import Estimate
    from . import prose

    if fit is None:
        return _md("")
    diffs = fit.slope_differences.set_index("group")
    lines = []
    for group, row in diffs.iterrows():
        est = Estimate(value=float(row["difference"]), low=float(row["ci_low"]),
                       high=float(row["ci_high"]), n=int(fit.n_obs), n_groups=int(fit.n_subjects))
        lines.append(prose.difference(group, fit.reference, est,
                                      metric="yearly change of nWBV", digits=4,
                                      what="visits"))
    return _md(" ".join(lines))


def site_predictability(table: pd.DataFrame, features: pd.DataFrame) -> pd.DataFrame:
    """The site probe on real features: balanced accuracy with chance, sites and subjects."""
    from ..eval import site_probe

    probe = site_probe(features.to_numpy(), table["site"].to_numpy())
    return pd.DataFrame([{"site_bacc": probe.cv_score, "chance": probe.chance_score,
                          "sites": int(table["site"].nunique()), "subjects": len(table)}])


def fcon1000_markdown(site: pd.DataFrame | None):
    """Whether the site is recovered above chance, from the numbers (Markdown)."""
    from . import prose

    if site is None:
        return _md("The fcon1000 table was not found, so no result is reported here.")
    row = site.iloc[0]
    margin = float(row["site_bacc"] - row["chance"])
    word = "above" if margin > 0.1 else "not clearly above"
    return _md(f"The probe recovers the site {prose.claim(word, margin)} chance: balanced "
               f"accuracy {row['site_bacc']:.3f} against {row['chance']:.3f} "
               f"({int(row['sites'])} sites, {int(row['subjects'])} subjects).")


def baseline_comparison(cohort, *, real=None, profile=None, store=None,
                        n_boot: int = 500) -> pd.DataFrame:
    """CNN against the voxel ridge, on the synthetic default and on real scans.

    Synthetic: the held-out healthy MAE of the models pre-trained on the merged pool
    (:func:`~brainkit.experiments.designs.heldout_gaps`, every seed). Real: the out-of-fold
    healthy MAE of :func:`brainkit.experiments.realdata.cross_validated_brain_age` on
    ``real`` (a cohort, e.g. OASIS-1; skipped when ``None``).

    Returns
    -------
    pandas.DataFrame
        One row per (data, model): ``mae`` with ``mae_low`` / ``mae_high``, ``n``,
        ``n_subjects``, ``n_seeds`` and ``vs_ridge`` (MAE over the ridge's).
    """
    from .designs import heldout_gaps
    from .pipeline import BASELINE
    from .profiles import get_profile
    from .summaries import mae_summary

    profile = get_profile(profile)
    models = [BASELINE, *[m for m in REAL_MODELS if m != BASELINE]]
    parts = []
    gaps = heldout_gaps(cohort, models, profile=profile, seeds=profile.seed_plan(),
                        store=store)
    hc = gaps[gaps["diagnosis"] == "HC"].assign(
        subject_id=lambda t: t["subject_id"].astype(str))
    parts.append(mae_summary(hc, by=("loss",), n_boot=n_boot).assign(
        data="synthetic (held-out test sets)"))
    if real is not None:
        cv = cross_validated_brain_age(real, models=models, profile=profile, store=store)
        rhc = cv[cv["diagnosis"] == "HC"].assign(
            subject_id=lambda t: t["subject_id"].astype(str))
        parts.append(mae_summary(rhc, by=("loss",), n_boot=n_boot).assign(
            data="real OASIS-1 (5-fold CV)"))
    out = pd.concat(parts, ignore_index=True)
    ridge = out[out["loss"] == BASELINE].set_index("data")["mae"]
    out["vs_ridge"] = out["mae"] / out["data"].map(ridge)
    return out[["data", "loss", "mae", "mae_low", "mae_high", "vs_ridge", "n", "n_subjects",
                "n_seeds"]]


def baseline_markdown(comparison: pd.DataFrame):
    """One sentence per data set: how the CNNs' MAE compares with the voxel ridge's."""
    from ..plots.theme import loss_label

    lines = []
    for data, part in comparison.groupby("data", sort=False):
        ridge = part[part["loss"] == "ridge"].iloc[0]
        bits = []
        for _, row in part[part["loss"] != "ridge"].iterrows():
            bits.append(f"{loss_label(row['loss'])} {row['mae']:.2f} "
                        f"[{row['mae_low']:.2f}, {row['mae_high']:.2f}] "
                        f"({100 * (row['vs_ridge'] - 1):+.0f} %)")
        lines.append(f"- {data}: the voxel ridge {ridge['mae']:.2f} "
                     f"[{ridge['mae_low']:.2f}, {ridge['mae_high']:.2f}] years; "
                     + ", ".join(bits) + f" (n = {int(ridge['n'])} images).")
    return _md("\n".join(lines))
