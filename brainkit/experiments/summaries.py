"""Tables and curves the book shows, computed from design results (thin, tested helpers).

Each function turns a tidy design result (:mod:`brainkit.experiments.designs`) into what a
chapter displays, so chapters stay one or two calls per cell.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from . import paper

__all__ = [
    "table3_comparison",
    "challenge_table",
    "fit_scaling_laws",
    "roc_by_loss",
    "auc_table",
    "gap_summary",
    "table4_comparison",
    "reliability_by_loss",
    "mae_vs_downstream",
]


def table3_comparison(results: pd.DataFrame, metric: str = "mae") -> pd.DataFrame:
    """Ours beside the paper's Table 3: one row per (loss, scheme), a column pair per dataset."""
    ours = results[results["dataset"] != "challenge"]
    ours = ours.pivot_table(index=["loss", "scheme"], columns="dataset", values=metric)
    theirs = paper.table3()
    theirs = theirs[theirs["dataset"] != "challenge"].pivot_table(
        index=["loss", "scheme"], columns="dataset", values=metric)
    cols = [c for c in ours.columns]
    out = pd.concat({"ours (synthetic)": ours[cols],
                     "paper": theirs.reindex(index=ours.index)[cols]}, axis=1)
    return out.round(2)


def challenge_table(results: pd.DataFrame) -> pd.DataFrame:
    """The OpenBHB challenge rows (BAcc %, internal MAE, external MAE, L_c), ours and the paper's."""
    cols = ["bacc", "mae_int", "mae_ext", "score"]
    ours = results[results["dataset"] == "challenge"].set_index(["loss", "scheme"])[cols].copy()
    theirs = paper.table3()
    theirs = theirs[theirs["dataset"] == "challenge"].set_index(["loss", "scheme"])[cols]
    theirs = theirs.reindex(ours.index)
    for t in (ours, theirs):
        t["bacc"] = 100 * t["bacc"]
    return pd.concat({"ours (synthetic)": ours, "paper": theirs}, axis=1).round(2)


def fit_scaling_laws(sweep: pd.DataFrame, *, y: str = "mae_ext") -> dict:
    """``MAE(n) = a n^-b + c`` per loss (needs >= 3 sizes; losses with fewer are skipped)."""
    from ..eval import fit_power_law

    fits = {}
    for loss, group in sweep.groupby("loss", sort=False):
        if group["n_train"].nunique() >= 3:
            try:
                fits[loss] = fit_power_law(group["n_train"].to_numpy(), group[y].to_numpy())
            except (RuntimeError, ValueError):
                continue  # too few or degenerate points: no curve for this loss
    return fits


def _case_control(gaps: pd.DataFrame, case: str, control: str, dataset: str | None):
    sub = gaps if dataset is None else gaps[gaps["dataset"] == dataset]
    return sub[sub["diagnosis"].isin([case, control])]


def roc_by_loss(gaps: pd.DataFrame, *, dataset: str | None = None, case: str = "AD",
                control: str = "HC", value: str = "bag_corrected") -> dict:
    """ROC curves of ``value`` separating ``case`` from ``control``, one per loss."""
    from ..eval import bag_roc

    sub = _case_control(gaps, case, control, dataset)
    curves = {}
    for loss, group in sub.groupby("loss", sort=False):
        if group["diagnosis"].nunique() == 2:
            curves[loss] = bag_roc(group[value].to_numpy(),
                                   (group["diagnosis"] == case).to_numpy())
    return curves


def auc_table(gaps: pd.DataFrame, *, datasets: Sequence[str] = ("adni", "oasis3"),
              case: str = "AD", control: str = "HC", value: str = "bag_corrected") -> pd.DataFrame:
    """AUC per loss and dataset (rows: loss; columns: dataset)."""
    rows = []
    for dataset in datasets:
        for loss, curve in roc_by_loss(gaps, dataset=dataset, case=case, control=control,
                                       value=value).items():
            rows.append({"loss": loss, "dataset": dataset, "auc": curve.auc})
    if not rows:
        return pd.DataFrame(columns=list(datasets))
    return pd.DataFrame(rows).pivot(index="loss", columns="dataset", values="auc").round(3)


def gap_summary(gaps: pd.DataFrame, *, value: str = "bag_corrected") -> pd.DataFrame:
    """Mean (sd) of the gap per loss and group, plus the synthetic truth when present."""
    agg = gaps.groupby(["loss", "diagnosis"])[value].agg(["mean", "std", "size"])
    if "true_gap" in gaps:
        agg["true_gap_mean"] = gaps.groupby(["loss", "diagnosis"])["true_gap"].mean()
    return agg.round(2)


def table4_comparison(scores: pd.DataFrame) -> pd.DataFrame:
    """Balanced accuracy (%) per loss and direction, mean and sd over folds, with the paper's."""
    ours = (scores.groupby(["loss", "source", "target"])["balanced_accuracy"]
            .agg(["mean", "std"]).rename(columns={"std": "sd"}))
    theirs = paper.table4().set_index(["loss", "source", "target"]).reindex(ours.index)
    out = pd.concat({"ours (synthetic)": ours, "paper": theirs}, axis=1) * 100
    return out.round(1)


def reliability_by_loss(predictions: pd.DataFrame, *, source: str, target: str,
                        n_bins: int = 10) -> tuple[dict, pd.DataFrame]:
    """Reliability curves and ECE / Brier per loss for one transfer direction."""
    from ..eval import brier_score, expected_calibration_error, reliability_curve

    sub = predictions[(predictions["source"] == source) & (predictions["target"] == target)]
    curves, rows = {}, []
    for loss, group in sub.groupby("loss", sort=False):
        y, p = group["y_true"].to_numpy(), group["prob"].to_numpy()
        curves[loss] = reliability_curve(y, p, n_bins=n_bins)
        rows.append({"loss": loss, "ece": expected_calibration_error(y, p, n_bins=n_bins),
                     "brier": brier_score(y, p), "n": len(group)})
    return curves, pd.DataFrame(rows).round(3)


def mae_vs_downstream(cohort, losses: Sequence[str], train_sizes: Sequence[int] | None = None, *,
                      dataset: str = "adni", profile=None, seed: int = 0, store=None,
                      device: str | None = None) -> pd.DataFrame:
    """Fig. 4: age MAE against downstream HC-vs-AD accuracy, one point per trained model.

    Models are the scaling-sweep runs (nested subsets of the merged healthy pool). For each:
    the age MAE on ``dataset``'s held-out healthy subjects, and the balanced accuracy of a
    logistic-regression probe on the frozen encoder embeddings of ``dataset``'s HC and AD
    images (5-fold, subject-grouped cross-validation). The probe replaces full fine-tuning
    here so the figure costs no extra training; Table 4 fine-tunes.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from ..eval import mae
    from .designs import nested_subsets, pretraining_split
    from .pipeline import run_embeddings, run_predictions, train_encoder
    from .profiles import get_profile

    profile = get_profile(profile)
    split = pretraining_split(cohort, pool_sizes=profile.pool_sizes)
    pool = split.merged
    sizes = sorted({min(n, len(pool)) for n in (train_sizes or profile.train_sizes)} | {len(pool)})
    table = cohort.table
    age = table["age"].to_numpy(dtype=float)
    test = split.tests[dataset]
    rows_ad = np.flatnonzero((table["dataset"].to_numpy() == dataset)
                             & table["diagnosis"].isin(["HC", "AD"]).to_numpy())
    y = (table["diagnosis"].to_numpy()[rows_ad] == "AD").astype(int)
    groups = table["subject_id"].to_numpy()[rows_ad]
    out = []
    for loss in losses:
        for subset in nested_subsets(cohort, pool, sizes, seed=seed):
            run = train_encoder(cohort, loss, subset, profile=profile, seed=seed, store=store,
                                device=device)
            pred = run_predictions(run, cohort, subset)
            z = run_embeddings(run, cohort)[rows_ad]
            cv = StratifiedGroupKFold(n_splits=5, shuffle=True, random_state=seed)
            clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000,
                                                                     class_weight="balanced"))
            p = cross_val_predict(clf, z, y, cv=cv, groups=groups)
            tpr = np.mean(p[y == 1] == 1)
            tnr = np.mean(p[y == 0] == 0)
            out.append({"loss": loss, "n_train": len(subset), "mae": mae(age[test], pred[test]),
                        "balanced_accuracy": 0.5 * (tpr + tnr)})
    return pd.DataFrame(out)
