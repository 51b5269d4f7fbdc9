"""An evaluation report of brain-age predictions: overall, per site, per age band, per
diagnosis, each number with a subject-level bootstrap interval.

:func:`evaluation_report` takes one table of predictions (one row per image) and returns a
:class:`Report` of tidy DataFrames; ``Report.to_markdown()`` renders them (the ``brainkit
report`` command prints it). Every interval comes from :func:`brainkit.eval.bootstrap_ci`,
resampling *subjects* (all images of a subject together), and every table puts the
uncorrected predictions next to the bias-corrected ones.

Error metrics are computed on the **controls** (healthy images): a patient's gap mixes the
model's error with the disease effect. The corrected R^2 and r are **inflated by
construction**: the age-bias correction uses each image's chronological age (Beheshti:
``corrected = predicted - (slope * age + intercept)``), so the corrected prediction contains
the true age and correlates with it almost perfectly whatever the model (de Lange & Cole
2020; Butler et al. 2021). Judge a model by its uncorrected r and R^2 and by MAE; the
corrected gap is for group comparisons (the AUC section).

References
----------
de Lange A.-M.G., Cole J.H. Commentary: Correction procedures in brain-age prediction.
*NeuroImage: Clinical* 26 (2020).
Butler E.R. et al. Pitfalls in brain age analyses. *Human Brain Mapping* 42 (2021).
Dufumier B. et al. OpenBHB: a large-scale multi-site brain MRI data-set for age prediction
and debiasing. *NeuroImage* 263 (2022) (the challenge score ``L_c``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from brainkit.errors import InputError
from brainkit.eval.probes import challenge_score
from brainkit.eval.uncertainty import (
    Estimate,
    auc,
    balanced_accuracy,
    bootstrap_ci,
    mean_absolute_error,
)

__all__ = ["Report", "evaluation_report", "SITE_PRED_COLUMN", "SET_COLUMN",
           "INFLATION_NOTE"]

#: Column with the site probe's prediction for internal-test images (the OpenBHB challenge).
SITE_PRED_COLUMN = "site_pred"
#: Column naming each image's challenge set: ``"internal"`` (sites seen in training) or
#: ``"external"`` (unseen sites), as in :func:`brainkit.experiments.challenge.challenge_predictions`.
SET_COLUMN = "set"
#: Subject columns tried, in order, when ``subject`` is not given.
SUBJECT_COLUMNS = ("participant_id", "subject_id")
#: The sentence every report with corrected predictions carries.
INFLATION_NOTE = ("The corrected r and R^2 are inflated by construction: the age-bias "
                  "correction uses each image's chronological age, so the corrected "
                  "prediction contains the true age. Judge accuracy by the uncorrected r and "
                  "R^2 and by MAE; use the corrected gap for group comparisons.")

PREDICTIONS = ("uncorrected", "corrected")


# ---------------------------------------------------------------- statistics
def _pearson(age, pred) -> float:
    a = age - age.mean()
    b = pred - pred.mean()
    denom = math.sqrt(float(np.sum(a * a) * np.sum(b * b)))
    return float(np.sum(a * b) / denom) if denom > 0 else math.nan


def _r2(age, pred) -> float:
    ss_tot = float(np.sum((age - age.mean()) ** 2))
    return 1.0 - float(np.sum((age - pred) ** 2)) / ss_tot if ss_tot > 0 else math.nan


METRICS = {"mae": mean_absolute_error, "r": _pearson, "r2": _r2}


def _mae_difference(age, pred, inside) -> float:
    inside = inside.astype(bool)
    if inside.all() or not inside.any():
        return math.nan
    return mean_absolute_error(age[inside], pred[inside]) - \
        mean_absolute_error(age[~inside], pred[~inside])


def _lc_parts(site, site_pred, age, pred, internal):
    internal = internal.astype(bool)
    if internal.all() or not internal.any():
        return math.nan, math.nan
    return (balanced_accuracy(site[internal], site_pred[internal]),
            mean_absolute_error(age[~internal], pred[~internal]))


def _lc(site, site_pred, age, pred, internal) -> float:
    bacc, mae_ext = _lc_parts(site, site_pred, age, pred, internal)
    return math.nan if math.isnan(bacc) else challenge_score(bacc, mae_ext)


# ------------------------------------------------------------------- report
@dataclass(frozen=True)
class Report:
    """The tables of :func:`evaluation_report` (tidy: one row per number).

    Every estimate row has ``value`` (or the named statistic), ``low``, ``high`` (the
    subject-bootstrap percentile interval at ``level``; NaN for a stratum of one subject),
    ``n_images`` and ``n_subjects``; ``prediction`` is ``"uncorrected"`` or
    ``"corrected"``. Intervals of strata with few subjects (say under 10) are rough.

    Attributes
    ----------
    overall : DataFrame
        Controls: ``prediction, metric (mae, r, r2), value, low, high, level, n_images,
        n_subjects, inflated`` (``inflated`` is True for the corrected r and R^2).
    by_site : DataFrame or None
        Controls per site: ``site, prediction, mae, low, high, level, n_images,
        n_subjects``. None without a site column.
    by_age_band : DataFrame
        Controls per band of chronological age ``[band_low, band_high)``: ``band,
        band_low, band_high, prediction, mae, low, high, level, n_images, n_subjects``.
    leave_one_site_out : DataFrame or None
        Controls, each site against all the others (the predictions are fixed; nothing
        is retrained): ``site, prediction, n_images, n_subjects, mae_site`` (MAE on the
        site), ``mae_without_site`` (MAE on every other site: the overall MAE had the site
        been left out), ``change`` (``mae_without_site - overall MAE``; negative when the
        site is harder than the rest), ``difference`` (``mae_site - mae_without_site``)
        with ``low, high, level`` (its interval). None with fewer than two sites.
    auc : DataFrame or None
        Cases vs controls: ``prediction, auc, low, high, level, n_case, n_control,
        n_case_subjects, n_control_subjects, mean_gap_case, mean_gap_control`` (the gap is
        ``predicted - age``; a higher gap scores as a case). None unless both groups occur.
    lc : DataFrame or None
        The OpenBHB challenge on control rows, uncorrected predictions (as the challenge
        defines it): ``metric (bacc, mae_int, mae_ext, lc), value, low, high, level,
        n_images, n_subjects``. ``bacc`` is the balanced accuracy of ``site_pred`` against
        ``site`` on ``set == "internal"`` rows, ``mae_ext`` the MAE on ``set ==
        "external"`` rows, ``lc = bacc ** 0.3 * mae_ext``. None unless the table has the
        columns ``site_pred`` and ``set`` (and ``site``).
    notes : tuple of str
        What was assumed or left out (always the inflation note with corrected
        predictions).
    settings : dict
        Columns used, ``case``, ``control``, ``n_boot``, ``level``, ``random_state``.
    """

    overall: pd.DataFrame
    by_site: pd.DataFrame | None
    by_age_band: pd.DataFrame
    leave_one_site_out: pd.DataFrame | None
    auc: pd.DataFrame | None
    lc: pd.DataFrame | None
    notes: tuple[str, ...] = ()
    settings: dict = field(default_factory=dict)

    def headline(self, prediction: str = "uncorrected", metric: str = "mae") -> Estimate:
        """One overall number as an :class:`~brainkit.eval.Estimate`."""
        rows = self.overall[(self.overall.prediction == prediction)
                            & (self.overall.metric == metric)]
        if rows.empty:
            raise KeyError(f"no overall {metric!r} for {prediction!r} predictions")
        r = rows.iloc[0]
        return Estimate(value=r.value, low=r.low, high=r.high, level=r.level,
                        n=int(r.n_images), n_groups=int(r.n_subjects))

    def summary(self) -> str:
        """A few lines of plain text: the headline numbers."""
        s = self.settings
        lines = [f"{s['n_images']} images of {s['n_subjects']} subjects; "
                 f"{s['n_control_images']} control images ({s['control']!r}); "
                 f"{s['level'] * 100:g}% intervals from {s['n_boot']} subject resamples"]
        for prediction in self._predictions():
            parts = [f"{_LABELS[m]} {self.headline(prediction, m).format()}"
                     for m in ("mae", "r", "r2")]
            star = " (r, R^2 inflated by construction)" if prediction == "corrected" else ""
            lines.append(f"{prediction}: " + ", ".join(parts) + star)
        if self.auc is not None:
            for r in self.auc.itertuples():
                lines.append(f"AUC {s['case']} vs {s['control']} ({r.prediction} gap): "
                             f"{_fmt(r.auc, r.low, r.high)}")
        if self.lc is not None:
            r = self.lc[self.lc.metric == "lc"].iloc[0]
            lines.append(f"OpenBHB L_c: {_fmt(r.value, r.low, r.high)}")
        return "\n".join(lines)

    def _predictions(self) -> list[str]:
        return [p for p in PREDICTIONS if (self.overall.prediction == p).any()]

    def to_markdown(self, digits: int = 2) -> str:
        """The whole report as Markdown (what ``brainkit report`` prints)."""
        s = self.settings
        d = digits
        preds = self._predictions()
        out = ["# Brain-age evaluation report", ""]
        cols = ", ".join(f"{k} `{v}`" for k, v in s["columns"].items() if v is not None)
        out += [f"{s['n_images']} images of {s['n_subjects']} subjects "
                f"({s['n_control_images']} control images, group `{s['control']}`). "
                f"Columns: {cols}. Intervals: {s['level'] * 100:g}% percentile bootstrap "
                f"over subjects ({s['n_boot']} resamples, seed {s['random_state']}).", ""]
        if self.notes:
            out += [f"- {n}" for n in self.notes] + [""]

        out += ["## Overall (controls)", ""]
        rows = []
        for metric in ("mae", "r", "r2"):
            row = [_LABELS[metric]]
            for p in preds:
                r = self.overall[(self.overall.prediction == p) & (self.overall.metric == metric)]
                r = r.iloc[0]
                cell = _fmt(r.value, r.low, r.high, d)
                row.append(cell + (" *" if r.inflated else ""))
            rows.append(row)
        first = self.overall.iloc[0]
        out += _table(["metric", *preds], rows)
        out += ["", f"n = {first.n_images} images, {first.n_subjects} subjects."
                + (" \\* inflated by construction (see the note above)." if "corrected" in preds
                   else ""), ""]

        if self.by_site is not None:
            out += ["## MAE by site (controls)", ""]
            out += _wide(self.by_site, "site", "mae", preds, d)
            out += [""]
        out += [f"## MAE by age band (controls, {s['band_label']})", ""]
        out += _wide(self.by_age_band, "band", "mae", preds, d)
        out += [""]
        if self.leave_one_site_out is not None:
            out += ["## Each site against the others (controls)", "",
                    "MAE at the site, MAE on all other sites (the overall MAE had the site "
                    "been left out), the change from the overall MAE, and the difference "
                    "site - others with its interval. The predictions are fixed: nothing is "
                    "retrained.", ""]
            rows = []
            for r in self.leave_one_site_out.itertuples():
                rows.append([str(r.site), r.prediction, str(r.n_images), str(r.n_subjects),
                             f"{r.mae_site:.{d}f}", f"{r.mae_without_site:.{d}f}",
                             f"{r.change:+.{d}f}", _fmt(r.difference, r.low, r.high, d)])
            out += _table(["site", "prediction", "images", "subjects", "MAE at site",
                           "MAE without site", "change", "difference [CI]"], rows)
            out += [""]
        if self.auc is not None:
            out += [f"## {s['case']} vs {s['control']}: AUC of the brain-age gap", ""]
            rows = [[r.prediction, _fmt(r.auc, r.low, r.high, d),
                     f"{r.mean_gap_case:+.{d}f}", f"{r.mean_gap_control:+.{d}f}",
                     f"{r.n_case} / {r.n_control}",
                     f"{r.n_case_subjects} / {r.n_control_subjects}"]
                    for r in self.auc.itertuples()]
            out += _table(["gap", "AUC [CI]", f"mean gap {s['case']}",
                           f"mean gap {s['control']}", "images case / control",
                           "subjects case / control"], rows)
            out += [""]
        if self.lc is not None:
            out += ["## OpenBHB challenge score (uncorrected predictions)", "",
                    "L_c = BAcc^0.3 * MAE_ext: site balanced accuracy of `site_pred` on the "
                    "internal set, MAE on the external set (lower is better).", ""]
            rows = [[_LC_LABELS[r.metric], _fmt(r.value, r.low, r.high, 3 if r.metric == "bacc"
                                                else d), str(r.n_images), str(r.n_subjects)]
                    for r in self.lc.itertuples()]
            out += _table(["statistic", "value [CI]", "images", "subjects"], rows)
            out += [""]
        return "\n".join(out)


_LABELS = {"mae": "MAE (years)", "r": "r", "r2": "R^2"}
_LC_LABELS = {"bacc": "site BAcc (internal)", "mae_int": "MAE internal (years)",
              "mae_ext": "MAE external (years)", "lc": "L_c"}


def _fmt(value, low, high, digits: int = 2) -> str:
    def one(x):
        return "nan" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"
    return f"{one(value)} [{one(low)}, {one(high)}]"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    def line(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"
    return [line(header), line(["---"] * len(header)), *(line(r) for r in rows)]


def _wide(frame: pd.DataFrame, key: str, stat: str, preds, digits: int) -> list[str]:
    rows = []
    for value, sub in frame.groupby(key, sort=False):
        first = sub.iloc[0]
        row = [str(value), str(first.n_images), str(first.n_subjects)]
        for p in preds:
            r = sub[sub.prediction == p]
            row.append(_fmt(r[stat].iloc[0], r.low.iloc[0], r.high.iloc[0], digits)
                       if len(r) else "")
        rows.append(row)
    return _table([key, "images", "subjects", *(f"MAE {p}" for p in preds)], rows)


# ---------------------------------------------------------------- validation
def _numeric(table: pd.DataFrame, column: str, ids: pd.Series) -> np.ndarray:
    values = pd.to_numeric(table[column], errors="coerce").to_numpy(dtype=float)
    bad = ~np.isfinite(values)
    if bad.any():
        shown = ids[bad].head(5).tolist()
        raw = table[column][bad].head(3).tolist()
        raise InputError(f"column {column!r} must hold a finite number on every row; rows "
                         f"{shown} hold {raw}")
    return values


def _labels(table: pd.DataFrame, column: str, ids: pd.Series) -> np.ndarray:
    missing = table[column].isna().to_numpy()
    if missing.any():
        raise InputError(f"column {column!r} is empty on rows {ids[missing].head(5).tolist()}")
    return table[column].astype(str).to_numpy()


def _require(table: pd.DataFrame, column: str, what: str) -> None:
    if column not in table.columns:
        raise InputError(f"the table has no {what} column {column!r}; it has "
                         f"{list(table.columns)}")


def _bands(age: np.ndarray, age_bands) -> tuple[np.ndarray, str]:
    if isinstance(age_bands, (int, float)) and not isinstance(age_bands, bool):
        width = float(age_bands)
        if not np.isfinite(width) or width <= 0:
            raise InputError(f"age_bands must be a positive width in years or ascending "
                             f"edges; got {age_bands!r}")
        low = math.floor(age.min() / width) * width
        edges = np.arange(low, age.max() + width, width)
        if edges[-1] <= age.max():
            edges = np.r_[edges, edges[-1] + width]
        return edges, f"bands of {width:g} years"
    edges = np.asarray(age_bands, dtype=float)
    if edges.ndim != 1 or edges.size < 2 or not np.all(np.diff(edges) > 0):
        raise InputError(f"age_bands must be a positive width in years or ascending edges; "
                         f"got {age_bands!r}")
    return edges, "bands " + ", ".join(f"{e:g}" for e in edges)


# -------------------------------------------------------------------- pieces
def _est(stat, *arrays, groups, boot) -> Estimate:
    return bootstrap_ci(stat, *arrays, groups=groups, **boot)


def _row(est: Estimate) -> dict:
    # a bootstrap of a single subject has no spread: no interval rather than [x, x]
    low, high = (est.low, est.high) if est.n_groups >= 2 else (math.nan, math.nan)
    return {"low": low, "high": high, "level": est.level, "n_images": est.n,
            "n_subjects": est.n_groups}


def _mae_by(strata, age, preds: dict, subjects, boot) -> pd.DataFrame:
    """MAE with its interval in each stratum: ``strata`` is a list of (keys, row mask)."""
    rows = []
    for keys, inside in strata:
        for p, pred in preds.items():
            est = _est(mean_absolute_error, age[inside], pred[inside],
                       groups=subjects[inside], boot=boot)
            rows.append({**keys, "prediction": p, "mae": est.value, **_row(est)})
    return pd.DataFrame(rows)


def _ordered(labels: np.ndarray) -> list:
    return sorted(pd.unique(labels).tolist(), key=str)


def evaluation_report(table: pd.DataFrame, *, age: str = "age",
                      predicted: str = "predicted_age",
                      corrected: str | None = "predicted_age_corrected",
                      group: str | None = "diagnosis", site: str | None = "site",
                      subject: str | None = None, case: str = "AD", control: str = "HC",
                      age_bands: float | Sequence[float] = 10, n_boot: int = 1000,
                      level: float = 0.95, random_state: int = 0) -> Report:
    """Evaluate brain-age predictions: error overall, by site and by age band, the
    case-control AUC of the gap and, when the columns are there, the OpenBHB score.

    Parameters
    ----------
    table : DataFrame
        One row per image.
    age, predicted : str
        Columns of chronological and predicted age (years), finite on every row.
    corrected : str or None, default "predicted_age_corrected"
        Column of bias-corrected predicted ages (e.g. ``age + bag_corrected``, from a
        correction fitted on held-out controls). Absent column: the corrected columns of the
        report are left out, with a note. None: no corrected predictions.
    group : str or None, default "diagnosis"
        Column of diagnoses. Absent column (or None): every image counts as a control.
    site : str or None, default "site"
        Column of acquisition sites. Absent (or None): no per-site tables.
    subject : str or None
        Column of subject ids, resampled by the bootstrap. Default: ``participant_id``,
        else ``subject_id``; with neither, every image is its own subject (noted).
    case, control : str, default "AD", "HC"
        The values of ``group`` compared by the AUC; error metrics use ``control`` rows.
    age_bands : float or sequence of float, default 10
        Width of the age bands in years (bands start at a multiple of it), or their edges
        (controls outside the edges are left out of that table, with a note).
    n_boot : int, default 1000
        Bootstrap resamples of subjects per interval.
    level : float, default 0.95
    random_state : int, default 0
        Seed of every bootstrap (the same seed for uncorrected and corrected predictions,
        so their intervals come from the same resamples).

    Returns
    -------
    Report

    Raises
    ------
    brainkit.errors.InputError
        A missing column, a non-numeric or missing age or prediction (rows named), no
        control rows.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> n = 300
    >>> table = pd.DataFrame({"participant_id": np.arange(n).astype(str),
    ...                       "site": rng.choice(["a", "b"], n),
    ...                       "diagnosis": rng.choice(["HC", "AD"], n, p=[0.7, 0.3]),
    ...                       "age": rng.uniform(50, 90, n)})
    >>> table["predicted_age"] = (table.age + rng.normal(0, 4, n)
    ...                           + 5 * (table.diagnosis == "AD"))
    >>> report = evaluation_report(table, n_boot=200)
    >>> mae = report.headline("uncorrected", "mae")      # controls only
    >>> mae.n, bool(mae.low < mae.value < mae.high)
    (196, True)
    >>> bool(report.auc.auc.iloc[0] > 0.75)
    True
    >>> print(report.to_markdown().splitlines()[0])
    # Brain-age evaluation report
    """
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"table must be a pandas DataFrame; got {type(table).__name__}")
    if table.empty:
        raise InputError("the table has no rows")
    table = table.reset_index(drop=True)
    notes: list[str] = []
    _require(table, age, "age")
    _require(table, predicted, "predicted-age")
    if subject is None:
        subject = next((c for c in SUBJECT_COLUMNS if c in table.columns), None)
        if subject is None:
            notes.append(f"No subject column ({' or '.join(SUBJECT_COLUMNS)}): every image is "
                         "treated as its own subject; if subjects have several images, the "
                         "intervals are too narrow.")
    else:
        _require(table, subject, "subject")
    ids = table["image_id"].astype(str) if "image_id" in table.columns else \
        pd.Series(table.index.astype(str))
    y = _numeric(table, age, ids)
    preds = {"uncorrected": _numeric(table, predicted, ids)}
    if corrected is not None:
        if corrected in table.columns:
            preds["corrected"] = _numeric(table, corrected, ids)
            notes.append(INFLATION_NOTE)
        else:
            notes.append(f"No corrected predictions (no column {corrected!r}): uncorrected "
                         "metrics only.")
    subjects = _labels(table, subject, ids) if subject else ids.to_numpy()
    if group is not None and group in table.columns:
        groups = table[group].astype(str).where(table[group].notna(), None).to_numpy()
        is_control = groups == control
        if not is_control.any():
            present = sorted(pd.unique(table[group].dropna().astype(str)).tolist())[:10]
            raise InputError(f"no control rows: column {group!r} has no {control!r} (it holds "
                             f"{present}); name the control group (--control)")
    else:
        groups = None
        is_control = np.ones(len(table), bool)
        if group is not None:
            notes.append(f"No group column {group!r}: every image counts as a control.")
    sites = None
    if site is not None and site in table.columns:
        sites = _labels(table, site, ids)
    elif site is not None:
        notes.append(f"No site column {site!r}: no per-site tables.")
    boot = {"n_boot": n_boot, "level": level, "random_state": random_state}

    c = is_control
    yc, sc = y[c], subjects[c]
    pc = {p: v[c] for p, v in preds.items()}
    overall = []
    for p, pred in pc.items():
        for metric, stat in METRICS.items():
            est = _est(stat, yc, pred, groups=sc, boot=boot)
            overall.append({"prediction": p, "metric": metric, "value": est.value, **_row(est),
                            "inflated": p == "corrected" and metric != "mae"})
    overall = pd.DataFrame(overall)

    by_site = leave_one_site_out = None
    if sites is not None:
        site_c = sites[c]
        by_site = _mae_by([({"site": v}, site_c == v) for v in _ordered(site_c)],
                          yc, pc, sc, boot)
        if np.unique(site_c).size >= 2:
            rows = []
            for value in _ordered(site_c):
                inside = site_c == value
                for p, pred in pc.items():
                    est = _est(_mae_difference, yc, pred, inside.astype(float),
                               groups=sc, boot=boot)
                    mae_all = mean_absolute_error(yc, pred)
                    mae_site = mean_absolute_error(yc[inside], pred[inside])
                    mae_rest = mean_absolute_error(yc[~inside], pred[~inside])
                    rows.append({"site": value, "prediction": p,
                                 "n_images": int(inside.sum()),
                                 "n_subjects": int(np.unique(sc[inside]).size),
                                 "mae_site": mae_site, "mae_without_site": mae_rest,
                                 "change": mae_rest - mae_all, "difference": est.value,
                                 "low": est.low, "high": est.high, "level": est.level})
            leave_one_site_out = pd.DataFrame(rows)
        else:
            notes.append("One site among the controls: no site-against-the-others table.")

    edges, band_label = _bands(yc, age_bands)
    band = np.searchsorted(edges, yc, side="right") - 1
    kept = (band >= 0) & (band < edges.size - 1)
    if not kept.all():
        notes.append(f"{int((~kept).sum())} control image(s) outside the age-band edges "
                     f"[{edges[0]:g}, {edges[-1]:g}) are left out of the age-band table.")
    strata = [({"band": f"[{edges[b]:g}, {edges[b + 1]:g})", "band_low": float(edges[b]),
                "band_high": float(edges[b + 1])}, band == b) for b in np.unique(band[kept])]
    by_band = _mae_by(strata, yc, pc, sc, boot)

    auc_table = None
    if groups is not None:
        is_case = groups == case
        if is_case.any():
            both = is_case | is_control
            rows = []
            for p, pred in preds.items():
                gap = pred[both] - y[both]
                est = _est(auc, gap, is_case[both], groups=subjects[both], boot=boot)
                rows.append({"prediction": p, "auc": est.value, "low": est.low,
                             "high": est.high, "level": est.level,
                             "n_case": int(is_case.sum()), "n_control": int(is_control.sum()),
                             "n_case_subjects": int(np.unique(subjects[is_case]).size),
                             "n_control_subjects": int(np.unique(subjects[is_control]).size),
                             "mean_gap_case": float(np.mean(pred[is_case] - y[is_case])),
                             "mean_gap_control": float(np.mean(pred[is_control]
                                                               - y[is_control]))})
            auc_table = pd.DataFrame(rows)
            notes.append("The AUC of the uncorrected gap mixes the disease effect with the "
                         "model's age bias when cases and controls differ in age; the "
                         "corrected gap's AUC is the one to compare.")
        else:
            notes.append(f"No {case!r} rows in column {group!r}: no case-control AUC.")

    lc_table = _challenge(table, y, preds["uncorrected"], subjects, sites, c, ids, boot, notes)

    settings = {"columns": {"age": age, "predicted": predicted,
                            "corrected": corrected if "corrected" in preds else None,
                            "group": group if groups is not None else None,
                            "site": site if sites is not None else None, "subject": subject},
                "case": case, "control": control, "n_boot": n_boot, "level": level,
                "random_state": random_state, "band_label": band_label,
                "n_images": int(len(table)), "n_subjects": int(np.unique(subjects).size),
                "n_control_images": int(c.sum())}
    return Report(overall=overall, by_site=by_site, by_age_band=by_band,
                  leave_one_site_out=leave_one_site_out, auc=auc_table, lc=lc_table,
                  notes=tuple(notes), settings=settings)


def _challenge(table, y, pred, subjects, sites, control, ids, boot, notes) -> pd.DataFrame | None:
    needed = [SITE_PRED_COLUMN, SET_COLUMN]
    if not all(col in table.columns for col in needed):
        if any(col in table.columns for col in needed):
            notes.append(f"No OpenBHB challenge score: it needs both columns {needed} "
                         "(and a site column).")
        return None
    if sites is None:
        notes.append("No OpenBHB challenge score: it needs a site column.")
        return None
    which = table[SET_COLUMN].astype(str).str.lower().to_numpy()
    bad = control & ~np.isin(which, ["internal", "external"])
    if bad.any():
        raise InputError(f"column {SET_COLUMN!r} must be 'internal' or 'external'; rows "
                         f"{ids[bad].head(5).tolist()} hold "
                         f"{table[SET_COLUMN][bad].head(3).tolist()}")
    rows = control
    internal = which[rows] == "internal"
    if internal.all() or not internal.any():
        notes.append("No OpenBHB challenge score: it needs both internal and external rows.")
        return None
    site_pred = table[SITE_PRED_COLUMN].to_numpy()[rows]
    missing = internal & pd.isna(site_pred)
    if missing.any():
        raise InputError(f"column {SITE_PRED_COLUMN!r} is empty on internal rows "
                         f"{ids[rows][missing].head(5).tolist()}")
    site_pred = np.where(internal, pd.Series(site_pred).astype(str).to_numpy(), "")
    arrays = (sites[rows], site_pred, y[rows], pred[rows], internal.astype(float))
    g = subjects[rows]
    out = []
    est = _est(lambda *a: _lc_parts(*a)[0], *arrays, groups=g, boot=boot)
    out.append({"metric": "bacc", "value": est.value, **_row(est),
                "n_images": int(internal.sum()),
                "n_subjects": int(np.unique(g[internal]).size)})
    est = _est(mean_absolute_error, y[rows][internal], pred[rows][internal],
               groups=g[internal], boot=boot)
    out.append({"metric": "mae_int", "value": est.value, **_row(est)})
    est = _est(mean_absolute_error, y[rows][~internal], pred[rows][~internal],
               groups=g[~internal], boot=boot)
    out.append({"metric": "mae_ext", "value": est.value, **_row(est)})
    est = _est(_lc, *arrays, groups=g, boot=boot)
    out.append({"metric": "lc", "value": est.value, **_row(est)})
    return pd.DataFrame(out)
