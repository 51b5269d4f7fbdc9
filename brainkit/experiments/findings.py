"""The findings ledger: each finding of the paper, the statistic that tests it, our estimate with
its interval and ``n``, the paper's value, and a verdict by a stated rule.

Every statistic is computed from the designs' per-image predictions (:mod:`.designs`), with
a subject-level bootstrap over test images that also resamples training seeds where a model
was trained more than once (:func:`brainkit.eval.bootstrap_ci`). The rule (:func:`verdict`):

- **supported**: the 95 % interval lies entirely on the side of the threshold the paper
  claims (e.g. the external MAE falls: the interval of "small minus large" is above 0);
- **contradicted**: it lies entirely on the other side;
- **inconclusive**: it contains the threshold. A claim that two methods are "about as good"
  is read as "at least as good", so it is supported only when ours is clearly better.

On synthetic data some findings are *planted*: the generator builds the gap pattern of
Fig. 2 in (larger and growing gaps in pMCI and AD), so those rows test whether the pipeline
recovers what was planted, not whether the paper's claim about brains holds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..eval.uncertainty import Estimate
from .estimates import (
    auc_difference,
    correlation,
    ece,
    group_difference,
    mae_change,
    mae_difference,
    site_gap,
    slope_difference,
    transfer_difference,
    truth_checks,
)

__all__ = [
    "Finding",
    "FINDINGS",
    "verdict",
    "ledger",
    "evidence",
    "is_synthetic",
    "display",
    "summary_markdown",
    "planted_markdown",
    "truth_table",
]

VERDICTS = ("supported", "contradicted", "inconclusive", "not computed")


@dataclass(frozen=True)
class Finding:
    """One claim and the statistic that tests it.

    Attributes
    ----------
    key : str
    claim : str
        The paper's finding, in words.
    statistic : str
        What is estimated (sign convention included).
    direction : {">", "<"}
        The paper's side of ``threshold``.
    threshold : float
    paper : str
        The paper's number(s).
    planted : bool
        The synthetic generator builds this in (a recovery check on synthetic data).
    chapter : str
        Where the evidence is shown.
    unit : str
        What ``n`` counts (``"images"``; ``"visits"`` for mixed models, ``"models"`` for
        correlations across trained models).
    """

    key: str
    claim: str
    statistic: str
    direction: str
    threshold: float
    paper: str
    planted: bool
    chapter: str
    unit: str = "images"


FINDINGS: tuple[Finding, ...] = (
    Finding("scaling_exp", "More, more diverse pre-training data lowers the external MAE (exp)",
            "external MAE, smallest minus largest training set, exp (years)", ">", 0.0,
            "4.22 -> 2.25 (Table 3, single -> merge)", False, "scaling"),
    Finding("scaling_l1", "... and for the L1 baseline",
            "external MAE, smallest minus largest training set, L1 (years)", ">", 0.0,
            "4.18 -> 2.43", False, "scaling"),
    Finding("site_exp_lowest", "exp keeps site predictability lowest as data grow",
            "site BAcc of exp minus the lowest other loss's, largest training set (points)",
            "<", 0.0, "5.4 % vs 6.0-9.3 % (Table 3, merge)", False, "site_bias"),
    Finding("auc_adni", "Contrastive BAG separates AD from HC at least as well as L1 (ADNI)",
            "AUC of the corrected gap, exp minus L1, ADNI-like", ">", 0.0, "0.82 vs 0.81",
            False, "brain_age_gap"),
    Finding("auc_oasis3", "... (OASIS-3)", "AUC of the corrected gap, exp minus L1, OASIS-3-like",
            ">", 0.0, "0.73 vs 0.72", False, "brain_age_gap"),
    Finding("bag_ad", "The brain-age gap is larger in AD",
            "mean corrected gap, AD minus HC, exp (years)", ">", 0.0, "Fig. 2a", True,
            "brain_age_gap"),
    Finding("bag_pmci", "... and in pMCI", "mean corrected gap, pMCI minus HC, exp (years)",
            ">", 0.0, "Fig. 2a", True, "brain_age_gap"),
    Finding("slope_ad", "The gap grows over time in AD, not in HC",
            "gap slope, AD minus HC, exp, mixed model (years / year)", ">", 0.0, "Fig. 2c",
            True, "longitudinal", "visits"),
    Finding("slope_pmci", "... and in pMCI", "gap slope, pMCI minus HC, exp (years / year)",
            ">", 0.0, "Fig. 2c", True, "longitudinal", "visits"),
    Finding("mae_tracks_accuracy", "For exp, lower age MAE goes with better AD detection",
            "Pearson r of (-MAE, downstream BAcc) over exp models", ">", 0.0, "r = 0.92",
            False, "downstream", "models"),
    Finding("tracks_more_than_l1", "... more than for L1",
            "r for exp minus r for L1", ">", 0.0, "0.92 vs 0.28", False, "downstream",
            "models"),
    Finding("transfer", "Contrastive pre-training transfers across datasets better than L1",
            "cross-dataset BAcc after fine-tuning, exp minus L1 (points)", ">", 0.0,
            "68.8 / 66.1 vs 50.0 / 53.5 % (Table 4)", False, "downstream"),
    Finding("calibration", "Fine-tuned models are reasonably calibrated",
            "ECE of fine-tuned exp, ADNI within dataset (%)", "<", 15.0, "10-12 %", False,
            "downstream"),
    Finding("cnn_vs_ridge", "(ours) The CNN beats a voxel ridge on the same images",
            "held-out healthy MAE, exp minus voxel ridge, merged pool (years)", "<", 0.0,
            "not reported", False, "scaling"),
    Finding("l1_vs_ridge", "(ours) ... so does the L1 CNN",
            "held-out healthy MAE, L1 minus voxel ridge, merged pool (years)", "<", 0.0,
            "not reported", False, "scaling"),
)


def verdict(estimate: Estimate | None, direction: str, threshold: float = 0.0) -> str:
    """``"supported"``, ``"contradicted"``, ``"inconclusive"`` or ``"not computed"``.

    See the module docstring for the rule.
    """
    if direction not in (">", "<"):
        raise ValueError(f"direction must be '>' or '<', got {direction!r}")
    if estimate is None or not all(math.isfinite(v) for v in (estimate.low, estimate.high)):
        return "not computed"
    above = estimate.low > threshold
    below = estimate.high < threshold
    if direction == ">":
        return "supported" if above else "contradicted" if below else "inconclusive"
    return "supported" if below else "contradicted" if above else "inconclusive"


# ---------------------------------------------------------------------------- the ledger
def ledger(estimates: dict, *, synthetic: bool, findings: Sequence[Finding] = FINDINGS
           ) -> pd.DataFrame:
    """The findings table: one row per finding with its estimate, interval, n and verdict.

    Parameters
    ----------
    estimates : dict of str to Estimate or None
        By :attr:`Finding.key` (missing or ``None``: "not computed").
    synthetic : bool
        Mark the planted findings as recovery checks.

    Returns
    -------
    pandas.DataFrame
        Columns ``finding, statistic, estimate, low, high, n, n_subjects, n_seeds, paper,
        verdict, note, chapter`` (key as index).
    """
    rows = []
    for f in findings:
        est = estimates.get(f.key)
        v = verdict(est, f.direction, f.threshold)
        note = ("planted by the generator: tests recovery" if synthetic and f.planted else "")
        rows.append({
            "key": f.key, "finding": f.claim, "statistic": f.statistic,
            "claimed": f"{f.direction} {f.threshold:g}",
            "estimate": est.value if est else math.nan, "low": est.low if est else math.nan,
            "high": est.high if est else math.nan, "n": est.n if est else 0,
            "n_subjects": est.n_groups if est else 0, "n_seeds": est.n_seeds if est else 0,
            "unit": f.unit, "paper": f.paper, "verdict": v, "note": note,
            "chapter": f.chapter})
    return pd.DataFrame(rows).set_index("key")


def evidence(cohort, *, profile=None, store=None, device=None, n_boot: int = 1000) -> dict:
    """Compute every ledger statistic from the book's designs (training what is missing).

    Uses the profile's losses, scaling sizes and seeds; every run and probe is cached in the
    store, so the chapters that show the same designs only read them back.

    Returns
    -------
    dict of str to Estimate or None
        ``None`` where the cohort cannot support the statistic (e.g. no OpenBHB-like split,
        no longitudinal patients); the ledger then says "not computed".
    """
    from ..eval import fit_bag_trajectories
    from .designs import (
        book_scaling,
        downstream_transfer,
        heldout_gaps,
        single_vs_merge_predictions,
    )
    from .pipeline import BASELINE
    from .profiles import get_profile
    from .store import default_store
    from .summaries import mae_vs_downstream

    profile = get_profile(profile)
    store = store if store is not None else default_store()
    seeds = profile.seed_plan()
    losses = list(profile.losses)
    core = [x for x in ("l1", "exp") if x in losses]
    out: dict[str, Estimate | None] = {}

    def attempt(key, func):
        try:
            out[key] = func()
        except (ValueError, KeyError) as err:
            out[key] = None
            out.setdefault("_errors", {})[key] = str(err)

    scaling = book_scaling(cohort, profile=profile, store=store, device=device)
    attempt("scaling_exp", lambda: mae_change(scaling, loss="exp", n_boot=n_boot))
    attempt("scaling_l1", lambda: mae_change(scaling, loss="l1", n_boot=n_boot))
    attempt("site_exp_lowest", lambda: site_gap(
        scaling, loss="exp", others=[x for x in losses if x != "exp"], n_boot=n_boot))
    gaps = heldout_gaps(cohort, core, profile=profile, seeds=seeds, store=store, device=device)
    attempt("auc_adni", lambda: auc_difference(gaps, dataset="adni", n_boot=n_boot))
    attempt("auc_oasis3", lambda: auc_difference(gaps, dataset="oasis3", n_boot=n_boot))
    attempt("bag_ad", lambda: group_difference(gaps, loss="exp", case="AD", n_boot=n_boot))
    attempt("bag_pmci", lambda: group_difference(gaps, loss="exp", case="pMCI",
                                                 n_boot=n_boot))
    adni = gaps[(gaps["loss"] == "exp") & (gaps["dataset"] == "adni")
                & (gaps["seed"] == gaps["seed"].min())]
    fit = None
    if len(adni):
        try:
            fit = fit_bag_trajectories(adni, value="bag_corrected", reference="HC")
        except ValueError as err:
            out.setdefault("_errors", {})["slopes"] = str(err)
    for key, group in (("slope_ad", "AD"), ("slope_pmci", "pMCI")):
        attempt(key, lambda g=group: slope_difference(fit, g) if fit is not None else None)
    points = mae_vs_downstream(cohort, core, profile=profile, seeds=seeds, store=store,
                               device=device)
    attempt("mae_tracks_accuracy", lambda: correlation(points, loss="exp", n_boot=n_boot))
    attempt("tracks_more_than_l1", lambda: correlation(points, loss="exp", baseline="l1",
                                                       n_boot=n_boot))
    transfer = downstream_transfer(cohort, [BASELINE, *profile.finetune_losses],
                                   profile=profile, store=store, device=device)
    attempt("transfer", lambda: transfer_difference(transfer["predictions"], n_boot=n_boot))
    attempt("calibration", lambda: ece(transfer["predictions"], loss="exp", source="adni",
                                       target="adni", n_boot=n_boot))
    table3 = single_vs_merge_predictions(cohort, [BASELINE, *profile.core_losses],
                                         profile=profile, seeds=seeds, store=store,
                                         device=device)
    attempt("cnn_vs_ridge", lambda: mae_difference(table3, loss="exp", baseline=BASELINE,
                                                   scheme="merge", n_boot=n_boot))
    attempt("l1_vs_ridge", lambda: mae_difference(table3, loss="l1", baseline=BASELINE,
                                                  scheme="merge", n_boot=n_boot))
    return out


# ---------------------------------------------------------------------------- for the book
def is_synthetic(cohort) -> bool:
    """True for a cohort with the generator's ground truth (``true_gap``)."""
    return "true_gap" in cohort.table


def display(table: pd.DataFrame):
    """The ledger as the page shows it (a pandas Styler: full text, no index): the finding,
    the statistic, estimate with interval, n, the paper's value, the verdict."""
    out = pd.DataFrame(index=table.index)
    out["finding"] = table["finding"]
    out["statistic"] = table["statistic"]
    out["claimed"] = table["claimed"]
    out["estimate [95 % interval]"] = [
        "n/a" if not math.isfinite(v) else f"{v:.2f} [{lo:.2f}, {hi:.2f}]"
        for v, lo, hi in zip(table["estimate"], table["low"], table["high"])]

    def n_text(n, subjects, seeds, unit):
        if not n:
            return "-"
        if unit == "models":
            return f"{n} models"
        return f"{n} {unit} ({subjects} subj., {seeds} seed{'s' if seeds != 1 else ''})"

    out["n"] = [n_text(*row) for row in zip(table["n"], table["n_subjects"], table["n_seeds"],
                                            table["unit"])]
    out["paper"] = table["paper"]
    out["verdict"] = table["verdict"]
    out["note"] = table["note"]
    return out.reset_index(drop=True).style.hide(axis="index")


def _markdown(text: str):
    from IPython.display import Markdown

    return Markdown(text)


def summary_markdown(table: pd.DataFrame, profile, cohort):
    """A paragraph counting the verdicts (Markdown, for ``{glue:md}``)."""
    counts = table["verdict"].value_counts()
    parts = [f"{v}: {int(counts.get(v, 0))}" for v in VERDICTS if counts.get(v, 0)]
    kind = "synthetic" if is_synthetic(cohort) else "this"
    planted = int((table["note"] != "").sum())
    text = (f"On the {kind} cohort with the `{profile.name}` profile, {len(table)} findings: "
            + "; ".join(parts) + ".")
    if planted:
        text += (f" {planted} of them are planted by the generator, so their verdicts "
                 "check that the pipeline recovers what was built in.")
    return _markdown(text)


def planted_markdown(cohort):
    """What the generator builds in (synthetic cohorts), or a note that nothing is planted."""
    if not is_synthetic(cohort):
        return _markdown("This cohort is not synthetic: nothing is planted, every verdict "
                         "is about the data.")
    return _markdown(
        "The generator makes every image from a biological age, the chronological age plus a "
        "true gap that it draws per diagnosis: larger in pMCI and AD, growing over follow-up "
        "visits in pMCI and AD, flat in HC and sMCI. The gap findings (Fig. 2a and 2c) "
        "therefore test whether each model *recovers* the planted pattern, not whether the "
        "paper's claim about real brains holds. Site effects, the site-age confound and the "
        "ageing itself (tissue loss and shape change) are built in too; whether a loss keeps "
        "site out of its embedding, whether more data help, and whether a CNN beats a linear "
        "model are not. The table below compares each model's corrected gap with the true "
        "gap of every held-out image.")


def truth_table(cohort, *, profile=None, store=None, device=None) -> pd.DataFrame:
    """Synthetic cohorts: :func:`truth_checks` of the book's models (empty otherwise)."""
    from .designs import heldout_gaps
    from .pipeline import BASELINE
    from .profiles import get_profile

    if not is_synthetic(cohort):
        return pd.DataFrame()
    profile = get_profile(profile)
    gaps = heldout_gaps(cohort, [BASELINE, *profile.losses], profile=profile,
                        seeds=profile.seed_plan(), store=store, device=device)
    return truth_checks(gaps).round(3)
