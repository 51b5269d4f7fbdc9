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
    "challenge_summary",
    "mae_summary",
    "auc_summary",
    "gap_intervals",
    "with_intervals",
    "per_seed_metrics",
    "scaling_markdown",
    "table3_intervals",
    "table3_markdown",
    "challenge_comparison",
    "site_markdown",
    "combat_table",
    "combat_markdown",
    "auc_markdown",
    "truth_trajectories",
    "slopes_table",
    "slopes_markdown",
    "table4_intervals",
    "calibration_intervals",
    "correlation_table",
    "downstream_markdown",
    "split_table",
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
                      dataset: str = "adni", profile=None, seed: int = 0,
                      seeds: Sequence[int] | None = None, store=None,
                      device: str | None = None) -> pd.DataFrame:
    """Fig. 4: age MAE against downstream HC-vs-AD accuracy, one point per trained model.

    Models are the scaling-sweep runs (:func:`~brainkit.experiments.cohorts.scaling_subsets`,
    every seed). For each: the age MAE on ``dataset``'s held-out healthy subjects, and the
    balanced accuracy of a logistic-regression probe on the frozen encoder embeddings (for
    the voxel ridge: the principal components of its voxels) for HC vs AD, cross-validated
    over subjects (5 folds). The probe sees only images *no* model was trained on (the
    held-out HC subjects and the AD patients), so healthy images a model trained on cannot
    be told apart from patients it never saw. It replaces full fine-tuning here so the
    figure costs no extra training; Table 4 fine-tunes.

    Returns
    -------
    pandas.DataFrame
        One row per model: ``loss``, ``n_train``, ``seed``, ``mae``, ``balanced_accuracy``,
        ``n_hc``, ``n_ad``.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from ..eval import mae
    from .cohorts import pretraining_split, scaling_subsets
    from .designs import RunSpec, _seed_list
    from .parallel import train_runs
    from .pipeline import run_embeddings, run_predictions
    from .profiles import get_profile

    profile = get_profile(profile)
    split = pretraining_split(cohort, pool_sizes=profile.pool_sizes)
    subsets = scaling_subsets(cohort, split, list(train_sizes or profile.train_sizes))
    table = cohort.table
    age = table["age"].to_numpy(dtype=float)
    test = split.tests[dataset]
    ad = np.flatnonzero((table["dataset"].to_numpy() == dataset)
                        & (table["diagnosis"].to_numpy() == "AD"))
    rows_ad = np.sort(np.concatenate([test, ad]))
    y = (table["diagnosis"].to_numpy()[rows_ad] == "AD").astype(int)
    groups = table["subject_id"].to_numpy()[rows_ad]
    combos = [(loss, subset, s) for loss in losses for subset in subsets
              for s in _seed_list(seed, seeds, loss)]
    # the runs missing from the store train side by side first (one at a time, the 12
    # scaling runs of the ci book took 190 s in this chapter)
    runs = train_runs(cohort, [RunSpec.of(loss, subset, s) for loss, subset, s in combos],
                      profile=profile, store=store, device=device)
    out = []
    for (loss, subset, s), run in zip(combos, runs):
        pred = run_predictions(run, cohort, subset)
        z = run_embeddings(run, cohort)[rows_ad]
        cv = StratifiedGroupKFold(n_splits=5, shuffle=True, random_state=0)
        clf = make_pipeline(StandardScaler(), LogisticRegression(
            max_iter=2000, class_weight="balanced"))
        p = cross_val_predict(clf, z, y, cv=cv, groups=groups)
        tpr = np.mean(p[y == 1] == 1)
        tnr = np.mean(p[y == 0] == 0)
        out.append({"loss": loss, "n_train": len(subset), "seed": s,
                    "mae": mae(age[test], pred[test]),
                    "balanced_accuracy": 0.5 * (tpr + tnr),
                    "n_hc": int((y == 0).sum()), "n_ad": int((y == 1).sum())})
    return pd.DataFrame(out)


# ---------------------------------------------------------------------------- intervals
def _interval_columns(est, name: str, scale: float = 1.0) -> dict:
    return {name: scale * est.value, f"{name}_low": scale * est.low,
            f"{name}_high": scale * est.high}


def challenge_summary(preds: pd.DataFrame, *, n_boot: int = 500) -> pd.DataFrame:
    """The challenge metrics per (loss, training size), each with its 95 % interval.

    ``preds`` is :func:`~brainkit.experiments.designs.scaling_predictions`. Intervals come
    from a bootstrap over test subjects and training seeds (:func:`brainkit.eval.bootstrap_ci`).

    Returns
    -------
    pandas.DataFrame
        One row per (loss, n_train): ``bacc`` (fraction), ``mae_int``, ``mae_ext``,
        ``score``, each with ``_low`` / ``_high``; ``bacc_chance``, ``n_internal``, ``n_external``,
        ``n_sites`` (internal test sites), ``n_seeds``, ``n_datasets``.
    """
    from ..eval.uncertainty import Replicates, balanced_accuracy, bootstrap_ci
    from .estimates import _labels, _replicates

    rows = []
    for (loss, n_train), part in preds.groupby(["loss", "n_train"], sort=False):
        first = part.drop_duplicates("image_id").sort_values("image_id")
        ids = first["image_id"].to_numpy()
        age = first["age"].to_numpy(float)
        internal = (first["set"] == "internal").to_numpy()
        site = first["site"].astype(str).to_numpy()
        subjects = first["subject_id"].astype(str).to_numpy()
        pred = Replicates(_replicates(part, ids))
        site_pred = Replicates(_labels(part, ids, "site_pred"))

        def mae_on(mask):
            return lambda a, p, m: float(np.mean(np.abs(p[:, m] - a[m]).mean(axis=1))) \
                if m.any() else np.nan

        def bacc(s, sp, m):
            return float(np.mean([balanced_accuracy(s[m], x[m]) for x in sp])) \
                if m.any() else np.nan

        def score(a, p, s, sp, m):
            b = bacc(s, sp, m)
            e = float(np.mean(np.abs(p[:, ~m] - a[~m]).mean(axis=1)))
            return b ** 0.3 * e

        est = {
            "mae_int": bootstrap_ci(mae_on(internal), age, pred, internal, groups=subjects,
                                    n_boot=n_boot),
            "mae_ext": bootstrap_ci(mae_on(~internal), age, pred, ~internal,
                                    groups=subjects, n_boot=n_boot),
            "bacc": bootstrap_ci(bacc, site, site_pred, internal, groups=subjects,
                                 n_boot=n_boot),
            "score": bootstrap_ci(score, age, pred, site, site_pred, internal,
                                  groups=subjects, n_boot=n_boot),
        }
        chance = 1.0 / max(1, len(np.unique(site[internal])))
        row = {"loss": loss, "n_train": int(n_train)}
        for name, e in est.items():
            row.update(_interval_columns(e, name))
        row.update(bacc_chance=chance, n_internal=int(internal.sum()),
                   n_external=int((~internal).sum()),
                   n_sites=int(len(np.unique(site[internal]))), n_seeds=est["mae_ext"].n_seeds,
                   n_datasets=int(part["n_datasets"].iloc[0]))
        rows.append(row)
    return pd.DataFrame(rows)


def mae_summary(preds: pd.DataFrame, by: Sequence[str] = ("loss", "scheme", "dataset"), *,
                n_boot: int = 500) -> pd.DataFrame:
    """Held-out MAE per group of a tidy prediction table, with its 95 % interval.

    ``preds`` is e.g. :func:`~brainkit.experiments.designs.single_vs_merge_predictions`
    (``image_id``, ``subject_id``, ``seed``, ``age``, ``age_pred`` and the ``by`` columns).

    Returns
    -------
    pandas.DataFrame
        One row per group: ``mae``, ``mae_low``, ``mae_high``, ``n`` (images), ``n_subjects``,
        ``n_seeds``.
    """
    from ..eval.uncertainty import Replicates, bootstrap_ci
    from .estimates import _aligned, _mae_rows, _replicates

    rows = []
    for key, part in preds.groupby(list(by), sort=False):
        ids, age, subjects = _aligned(part)
        est = bootstrap_ci(_mae_rows, age, Replicates(_replicates(part, ids)),
                           groups=subjects, n_boot=n_boot)
        rows.append({**dict(zip(by, key if isinstance(key, tuple) else (key,))),
                     **_interval_columns(est, "mae"), "n": est.n,
                     "n_subjects": est.n_groups, "n_seeds": est.n_seeds})
    return pd.DataFrame(rows)


def auc_summary(gaps: pd.DataFrame, *, datasets: Sequence[str] = ("adni", "oasis3"),
                case: str = "AD", control: str = "HC", value: str = "bag_corrected",
                n_boot: int = 500) -> pd.DataFrame:
    """AUC of ``value`` for ``case`` vs ``control`` per loss and dataset, with intervals.

    Returns
    -------
    pandas.DataFrame
        One row per (loss, dataset): ``auc``, ``auc_low``, ``auc_high``, ``n_case``,
        ``n_control`` (images), ``n_subjects``, ``n_seeds``.
    """
    from ..eval.uncertainty import Replicates, bootstrap_ci
    from .estimates import _auc_rows, _replicates

    rows = []
    for dataset in datasets:
        sub = gaps[(gaps["dataset"] == dataset) & gaps["diagnosis"].isin([case, control])]
        for loss, part in sub.groupby("loss", sort=False):
            first = part.drop_duplicates("image_id").sort_values("image_id")
            is_case = (first["diagnosis"] == case).to_numpy()
            if is_case.all() or not is_case.any():
                continue
            est = bootstrap_ci(_auc_rows, is_case,
                               Replicates(_replicates(part, first["image_id"].to_numpy(),
                                                      value)),
                               groups=first["subject_id"].astype(str).to_numpy(),
                               n_boot=n_boot)
            rows.append({"loss": loss, "dataset": dataset, **_interval_columns(est, "auc"),
                         "n_case": int(is_case.sum()), "n_control": int((~is_case).sum()),
                         "n_subjects": est.n_groups, "n_seeds": est.n_seeds})
    return pd.DataFrame(rows)


def gap_intervals(gaps: pd.DataFrame, *, value: str = "bag_corrected",
                  n_boot: int = 500) -> pd.DataFrame:
    """Mean gap per loss and diagnosis with its 95 % interval (and the true gap's mean).

    Returns
    -------
    pandas.DataFrame
        One row per (loss, diagnosis): ``gap``, ``gap_low``, ``gap_high``, ``sd``, ``n``,
        ``n_subjects``, ``n_seeds`` and ``true_gap`` (synthetic cohorts).
    """
    from ..eval.uncertainty import Replicates, bootstrap_ci
    from .estimates import _replicates

    rows = []
    for (loss, dx), part in gaps.groupby(["loss", "diagnosis"], sort=False):
        first = part.drop_duplicates("image_id").sort_values("image_id")
        ids = first["image_id"].to_numpy()
        est = bootstrap_ci(lambda v: float(np.mean(v)), Replicates(_replicates(part, ids, value)),
                           groups=first["subject_id"].astype(str).to_numpy(), n_boot=n_boot)
        row = {"loss": loss, "diagnosis": dx, **_interval_columns(est, "gap"),
               "sd": float(part[value].std()), "n": est.n, "n_subjects": est.n_groups,
               "n_seeds": est.n_seeds}
        if "true_gap" in part:
            row["true_gap"] = float(first["true_gap"].mean())
        rows.append(row)
    return pd.DataFrame(rows)


def with_intervals(summary: pd.DataFrame, metrics: Sequence[str], *, digits: int = 2,
                   keep: Sequence[str] = ()) -> pd.DataFrame:
    """A display copy: each metric as ``"value [low, high]"``; ``keep`` columns as they are."""
    out = pd.DataFrame(index=summary.index)
    for name in keep:
        out[name] = summary[name]
    for m in metrics:
        out[m] = [f"{v:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"
                  if np.isfinite(v) else "n/a"
                  for v, lo, hi in zip(summary[m], summary[f"{m}_low"], summary[f"{m}_high"])]
    return out


def per_seed_metrics(preds: pd.DataFrame) -> pd.DataFrame:
    """One row per (loss, n_train, seed) of challenge predictions: ``mae_int``, ``mae_ext``
    (the points a scaling law is fitted to)."""
    rows = []
    for (loss, n_train, seed), part in preds.groupby(["loss", "n_train", "seed"], sort=False):
        err = (part["age_pred"] - part["age"]).abs()
        rows.append({"loss": loss, "n_train": int(n_train), "seed": int(seed),
                     "mae_int": float(err[part["set"] == "internal"].mean()),
                     "mae_ext": float(err[part["set"] == "external"].mean())})
    return pd.DataFrame(rows)


def _md(text: str):
    from IPython.display import Markdown

    return Markdown(text)


def _negate(est):
    from ..eval.uncertainty import Estimate

    return Estimate(value=-est.value, low=-est.high, high=-est.low, level=est.level, n=est.n,
                    n_groups=est.n_groups, n_seeds=est.n_seeds)


def _row_estimate(summary: pd.DataFrame, mask, metric: str, n: int, subjects: int, seeds: int):
    from ..eval.uncertainty import Estimate

    row = summary[mask].iloc[0]
    return Estimate(value=float(row[metric]), low=float(row[f"{metric}_low"]),
                    high=float(row[f"{metric}_high"]), n=n, n_groups=subjects, n_seeds=seeds)


def scaling_markdown(preds: pd.DataFrame, challenge: pd.DataFrame, fits: dict):
    """The scaling chapter's result sentences (Markdown): per model, how the external MAE
    moves from the smallest to the largest training set; whether a power law was fitted."""
    from ..plots.theme import loss_label
    from . import prose
    from .estimates import mae_change, mae_difference

    ext = preds[preds["set"] == "external"]
    sizes = sorted(challenge["n_train"].unique())
    lines = []
    for loss in [x for x in challenge["loss"].unique()]:
        mask = challenge["loss"] == loss
        if set(challenge.loc[mask, "n_train"]) != set(sizes):
            continue                      # trained on the merged pool only
        small, large = sizes[0], sizes[-1]
        n_ext = int(challenge[mask]["n_external"].iloc[0])
        subjects = int(ext[ext["loss"] == loss]["subject_id"].nunique())
        seeds = int(challenge[mask]["n_seeds"].max())
        before = _row_estimate(challenge, mask & (challenge["n_train"] == small), "mae_ext",
                               n_ext, subjects, seeds)
        after = _row_estimate(challenge, mask & (challenge["n_train"] == large), "mae_ext",
                              n_ext, subjects, seeds)
        diff = _negate(mae_change(preds, loss=loss, n_small=small, n_large=large))
        lines.append("- " + prose.change(
            f"the {loss_label(loss)} model", "external MAE", before, after, diff,
            before_label=f"{small} training images", after_label=f"{large}", unit="years"))
    largest = ext[ext["n_train"] == sizes[-1]]
    for loss in [x for x in challenge["loss"].unique() if x != "ridge"]:
        if "ridge" in set(largest["loss"]):
            est = mae_difference(largest, loss=loss, baseline="ridge")
            sentence = prose.difference(loss_label(loss), "the voxel ridge", est,
                                        metric="external MAE", unit="years")
            lines.append(f"- With {sizes[-1]} training images, t{sentence[1:]}")
    n_sizes = len(sizes)
    if fits:
        names = ", ".join(f"{loss_label(k)}: MAE(n) = {f.a:.3g} n^-{f.b:.2f} + {f.c:.2f}"
                          for k, f in fits.items())
        caveat = (" With three sizes the law has as many parameters as there are sizes: it "
                  "describes the points and says nothing beyond them." if n_sizes <= 3 else "")
        lines.append(f"\nA power law MAE(n) = a n^-b + c is fitted per model to the per-seed "
                     f"points ({n_sizes} sizes; the dashed curves): {names}.{caveat}")
    else:
        lines.append(f"\nNo power law is drawn: a fit of MAE(n) = a n^-b + c needs at least "
                     f"four runs over three sizes, and this profile has {n_sizes} size(s) with "
                     "too few runs.")
    return _md("\n".join(lines))


def table3_intervals(preds: pd.DataFrame, *, n_boot: int = 500) -> pd.DataFrame:
    """Table 3 with intervals: MAE per (loss, scheme) and dataset, ours beside the paper's.

    ``preds`` is :func:`~brainkit.experiments.designs.single_vs_merge_predictions`.
    """
    from ..plots.theme import loss_label

    ours = mae_summary(preds, n_boot=n_boot)
    ours["ours"] = [f"{v:.2f} [{lo:.2f}, {hi:.2f}]" for v, lo, hi in
                    zip(ours["mae"], ours["mae_low"], ours["mae_high"])]
    theirs = paper.table3()
    theirs = theirs[theirs["dataset"] != "challenge"].set_index(["loss", "scheme", "dataset"])
    ours["paper"] = [theirs["mae"].get((l_, s, d), np.nan)
                     for l_, s, d in zip(ours["loss"], ours["scheme"], ours["dataset"])]
    ours["model"] = ours["loss"].map(loss_label)
    out = ours.pivot_table(index=["model", "scheme"], columns="dataset",
                           values=["ours", "paper", "n"], aggfunc="first", sort=False)
    return out.reorder_levels([1, 0], axis=1).sort_index(axis=1, level=0, sort_remaining=False)


def table3_markdown(preds: pd.DataFrame):
    """Table 3's result sentences: does merging lower each model's MAE on each dataset?"""
    from ..plots.theme import loss_label
    from . import prose
    from .estimates import mae_difference

    lines = []
    for loss in preds["loss"].unique():
        rows = preds[preds["loss"] == loss]
        for dataset in sorted(rows["dataset"].unique()):
            part = rows[rows["dataset"] == dataset]
            if set(part["scheme"]) != {"single", "merge"}:
                continue
            est = mae_difference(part.assign(loss=part["scheme"]), loss="merge",
                                 baseline="single")
            lines.append("- " + prose.difference(
                f"the merged {loss_label(loss)} model", f"the {dataset}-only one", est,
                metric=f"{dataset} held-out MAE", unit="years"))
    return _md("\n".join(lines))


def challenge_comparison(challenge: pd.DataFrame) -> pd.DataFrame:
    """The challenge rows of the smallest (OpenBHB-only) and largest (merged) training sets,
    each metric as ``"value [low, high]"``, beside the paper's Table 3 ("single" / "merge")."""
    from ..plots.theme import loss_label

    sizes = sorted(challenge["n_train"].unique())
    scheme = {sizes[0]: "single", sizes[-1]: "merge"}
    rows = challenge[challenge["n_train"].isin(scheme)].copy()
    rows["scheme"] = rows["n_train"].map(scheme)
    for m in ("bacc",):
        for suffix in ("", "_low", "_high"):
            rows[m + suffix] = 100 * rows[m + suffix]
    ours = with_intervals(rows.reset_index(drop=True), ["bacc", "mae_int", "mae_ext", "score"],
                          keep=["loss", "scheme", "n_train", "n_internal", "n_external"])
    theirs = paper.table3()
    theirs = theirs[theirs["dataset"] == "challenge"].set_index(["loss", "scheme"])
    for m in ("bacc", "mae_int", "mae_ext", "score"):
        values = [theirs[m].get((l_, s), np.nan) for l_, s in zip(ours["loss"], ours["scheme"])]
        ours[f"paper {m}"] = [100 * v if m == "bacc" else v for v in values]
    ours["loss"] = ours["loss"].map(loss_label)
    return ours.set_index(["loss", "scheme"])


def site_markdown(preds: pd.DataFrame, challenge: pd.DataFrame):
    """The site chapter's result sentences: how each model's site BAcc moves with data, and
    whether exp's is the lowest at the largest size (Markdown)."""
    from ..plots.theme import loss_label
    from . import prose
    from .estimates import site_gap

    sizes = sorted(challenge["n_train"].unique())
    lines = []
    largest = challenge[challenge["n_train"] == sizes[-1]].set_index("loss")
    chance = float(largest["bacc_chance"].iloc[0])
    n_int = int(largest["n_internal"].iloc[0])
    n_sites = int(largest["n_sites"].iloc[0])
    order = largest.sort_values("bacc").index.tolist()
    listing = ", ".join(
        f"{loss_label(k)} {100 * largest.loc[k, 'bacc']:.1f} % "
        f"[{100 * largest.loc[k, 'bacc_low']:.1f}, {100 * largest.loc[k, 'bacc_high']:.1f}]"
        for k in order)
    lines.append(f"With {sizes[-1]} training images the site balanced accuracy is, from lowest "
                 f"to highest: {listing} (chance {100 * chance:.1f} %; {n_int} internal-test "
                 f"images from {n_sites} sites).")
    cnn = [k for k in challenge["loss"].unique() if k != "ridge"]
    if "exp" in cnn and len(cnn) > 1:
        est = site_gap(preds, loss="exp", others=[k for k in cnn if k != "exp"])
        lines.append(prose.difference(
            "exp", "the lowest of the other losses", est, metric="site balanced accuracy",
            unit="points", digits=1) + " The paper finds exp lowest at every size.")
    return _md("\n\n".join(lines))


def combat_table(frame: pd.DataFrame) -> pd.DataFrame:
    """:func:`brainkit.experiments.combat_comparison` as the site chapter shows it: site BAcc
    (%) and internal MAE (years) with 95 % intervals, raw and ComBat-harmonised, per model."""
    from ..plots.theme import loss_label

    def cell(v, lo, hi, digits=1):
        return f"{v:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"

    rows = []
    for _, r in frame.iterrows():
        row = {"model": loss_label(r["loss"]), "features": r["features"],
               "site BAcc (%)": cell(r["bacc"], r["bacc_low"], r["bacc_high"]),
               "MAE internal (years)": cell(r["mae_int"], r["mae_low"], r["mae_high"], 2)}
        if r["features"] == "ComBat":
            row["BAcc change (points)"] = cell(r["d_bacc"], r["d_bacc_low"], r["d_bacc_high"])
            row["MAE change (years)"] = cell(r["d_mae"], r["d_mae_low"], r["d_mae_high"], 2)
        else:
            row["BAcc change (points)"] = row["MAE change (years)"] = ""
        rows.append(row)
    return pd.DataFrame(rows).set_index(["model", "features"])


def combat_markdown(frame: pd.DataFrame):
    """Does ComBat take the site out as well as the exp loss, and what does it cost in MAE?
    (Markdown, from :func:`brainkit.experiments.combat_comparison`)."""
    from ..eval.uncertainty import Estimate
    from ..plots.theme import loss_label
    from . import prose

    combat = frame[frame["features"] == "ComBat"].set_index("loss")
    raw = frame[frame["features"] == "raw"].set_index("loss")
    chance = float(frame["bacc_chance"].iloc[0])
    lines = []
    for loss, r in combat.iterrows():
        d_bacc = Estimate(value=float(r["d_bacc"]), low=float(r["d_bacc_low"]),
                          high=float(r["d_bacc_high"]), n=0)
        d_mae = Estimate(value=float(r["d_mae"]), low=float(r["d_mae_low"]),
                         high=float(r["d_mae_high"]), n=0)
        word = prose.direction_word(d_bacc.value, d_bacc.low, d_bacc.high,
                                    lower="lowers", higher="raises",
                                    same="does not clearly change")
        cost = prose.direction_word(d_mae.value, d_mae.low, d_mae.high, lower="lowers",
                                    higher="raises", same="does not clearly change")
        lines.append(
            f"- {loss_label(loss)}: ComBat {prose.claim(word, d_bacc.value, d_bacc.low, d_bacc.high, '< 0')}"
            f" the site BAcc, {raw.loc[loss, 'bacc']:.1f} % to {r['bacc']:.1f} % "
            f"({prose.estimate(d_bacc, unit='points', digits=1)}), and "
            f"{prose.claim(cost, d_mae.value, d_mae.low, d_mae.high, '> 0')} the internal "
            f"MAE ({prose.estimate(d_mae, unit='years', digits=2)}).")
    first = combat.iloc[0]
    lines.append(f"\nBoth columns use the {int(first['n_internal'])} internal-test images of the "
                 "sites with at least two training images (ComBat cannot estimate a site's "
                 "scale from one image), so the raw rows differ from the challenge table "
                 "above.")
    if "exp" in raw.index:
        others = [k for k in combat.index if k not in ("exp", "ridge")]
        if others:
            best = min(others, key=lambda k: combat.loc[k, "bacc"])
            lines.append(
                f"\nThe exp loss without harmonisation reaches {raw.loc['exp', 'bacc']:.1f} % "
                f"site BAcc; the most site-blind other model after ComBat, "
                f"{loss_label(best)}, {combat.loc[best, 'bacc']:.1f} % (chance "
                f"{chance:.1f} %).")
    return _md("\n".join(lines))


def auc_markdown(gaps: pd.DataFrame, aucs: pd.DataFrame):
    """AUC sentences: exp against L1 and against the voxel ridge on each dataset, with the
    paper's values (Markdown)."""
    from ..plots.theme import loss_label
    from . import prose
    from .estimates import auc_difference

    lines = []
    quoted = paper.QUOTED
    for dataset in aucs["dataset"].unique():
        have = set(aucs.loc[aucs["dataset"] == dataset, "loss"])
        for other in ("l1", "ridge"):
            if {"exp", other} <= have:
                est = auc_difference(gaps, dataset=dataset, loss="exp", baseline=other)
                text = prose.difference("exp", f"{loss_label(other)}", est,
                                        metric=f"AUC (AD vs HC, {dataset}-like)", digits=3)
                if other == "l1" and f"auc_{dataset}_l1" in quoted:
                    text += (f" The paper: {quoted[f'auc_{dataset}_contrastive']} vs "
                             f"{quoted[f'auc_{dataset}_l1']} on real {dataset.upper()}.")
                lines.append("- " + text)
    return _md("\n".join(lines))


def truth_trajectories(gaps: pd.DataFrame, *, reference: str = "HC"):
    """The mixed model on the generator's ``true_gap`` (synthetic cohorts; else ``None``)."""
    from ..eval import fit_bag_trajectories

    if "true_gap" not in gaps:
        return None
    return fit_bag_trajectories(gaps, value="true_gap", reference=reference)


def slopes_table(fit) -> pd.DataFrame:
    """Each group's gap slope (years / year) with its interval, subjects and images."""
    if fit is None:
        return pd.DataFrame()
    out = fit.group_slopes[["group", "slope", "ci_low", "ci_high", "p_value", "n_subjects",
                            "n_obs"]].copy()
    out.insert(0, "fit", f"{fit.method}, random effects {fit.re_formula}"
               + ("" if fit.converged else " (NOT converged)"))
    return out.round(3)


def slopes_markdown(fit, truth=None):
    """Sentences on the slope differences (each group vs the reference), with the planted
    truth when there is one (Markdown)."""
    from ..eval.uncertainty import Estimate
    from . import prose

    lines = []
    diffs = fit.slope_differences.set_index("group")
    planted = truth.slope_differences.set_index("group") if truth is not None else None
    for group, row in diffs.iterrows():
        est = Estimate(value=float(row["difference"]), low=float(row["ci_low"]),
                       high=float(row["ci_high"]), n=int(fit.n_obs),
                       n_groups=int(fit.n_subjects))
        text = prose.difference(f"{group}", f"{fit.reference}", est,
                                metric="gap slope (years per year)", unit="", digits=2)
        if planted is not None and group in planted.index:
            text += f" Planted: {planted.loc[group, 'difference']:.2f}."
        lines.append("- " + text)
    if not fit.converged:
        lines.append("\nThe mixed model did not converge; read the slopes with care.")
    return _md("\n".join(lines))


def _fold_bacc(fold, truth, prob) -> float:
    values = []
    for k in np.unique(fold):
        m = fold == k
        t, p = truth[m].astype(bool), prob[m] >= 0.5
        if t.all() or not t.any():
            continue
        values.append(0.5 * (np.mean(p[t]) + np.mean(~p[~t])))
    return float(np.mean(values)) if values else np.nan


def table4_intervals(predictions: pd.DataFrame, *, n_boot: int = 500) -> pd.DataFrame:
    """Table 4 with intervals: balanced accuracy (%) per loss and direction, ours (mean over
    folds, interval from a bootstrap over test subjects) beside the paper's."""
    from ..eval.uncertainty import bootstrap_ci
    from ..plots.theme import loss_label

    theirs = paper.table4().set_index(["loss", "source", "target"])
    rows = []
    for (loss, source, target), part in predictions.groupby(["loss", "source", "target"],
                                                           sort=False):
        groups = part["subject_id"] if "subject_id" in part else part["image_id"]
        est = bootstrap_ci(_fold_bacc, part["fold"].to_numpy(), part["y_true"].to_numpy(),
                           part["prob"].to_numpy(), groups=groups.astype(str).to_numpy(),
                           n_boot=n_boot)
        key = (loss, source, target)
        rows.append({"model": loss_label(loss), "direction": f"{source} -> {target}",
                     "ours": f"{100 * est.value:.1f} [{100 * est.low:.1f}, {100 * est.high:.1f}]",
                     "n": int(part.groupby("fold").size().mean()),
                     "paper": (f"{100 * theirs.loc[key, 'mean']:.1f} ± "
                               f"{100 * theirs.loc[key, 'sd']:.1f}") if key in theirs.index
                     else ""})
    return pd.DataFrame(rows).pivot_table(index="model", columns="direction",
                                          values=["ours", "paper", "n"], aggfunc="first",
                                          sort=False).reorder_levels([1, 0], axis=1) \
        .sort_index(axis=1, level=0, sort_remaining=False)


def calibration_intervals(predictions: pd.DataFrame, *, source: str, target: str,
                          n_boot: int = 500) -> pd.DataFrame:
    """ECE (%) and Brier score per loss for one direction, with intervals (subjects
    resampled)."""
    from ..eval import brier_score, expected_calibration_error
    from ..eval.uncertainty import bootstrap_ci
    from ..plots.theme import loss_label

    sub = predictions[(predictions["source"] == source) & (predictions["target"] == target)]
    rows = []
    for loss, part in sub.groupby("loss", sort=False):
        groups = (part["subject_id"] if "subject_id" in part else part["image_id"]) \
            .astype(str).to_numpy()
        y, p = part["y_true"].to_numpy(), part["prob"].to_numpy()
        e = bootstrap_ci(lambda a, b: 100 * expected_calibration_error(a, b), y, p,
                         groups=groups, n_boot=n_boot)
        b = bootstrap_ci(brier_score, y, p, groups=groups, n_boot=n_boot)
        rows.append({"model": loss_label(loss), "ece_%": e.value, "ece_%_low": e.low,
                     "ece_%_high": e.high, "brier": b.value, "brier_low": b.low,
                     "brier_high": b.high, "n": e.n, "n_subjects": e.n_groups})
    out = pd.DataFrame(rows)
    return with_intervals(out, ["ece_%", "brier"], keep=["model", "n", "n_subjects"])


def correlation_table(points: pd.DataFrame) -> pd.DataFrame:
    """Fig. 4's correlation per model: Pearson r of (-MAE, accuracy) with a bootstrap
    interval over the models (points), and how many points there are."""
    from ..plots.theme import loss_label
    from .estimates import correlation

    rows = []
    for loss in points["loss"].unique():
        est = correlation(points, loss=loss)
        rows.append({"model": loss_label(loss), "r(-MAE, BAcc)": est.value,
                     "r(-MAE, BAcc)_low": est.low, "r(-MAE, BAcc)_high": est.high,
                     "models": est.n})
    return with_intervals(pd.DataFrame(rows), ["r(-MAE, BAcc)"], keep=["model", "models"])


def downstream_markdown(transfer: dict, points: pd.DataFrame):
    """The downstream chapter's sentences: cross-dataset transfer of exp vs L1 and vs the
    voxel baseline, calibration against the paper's range, and what Fig. 4 can say."""
    from ..plots.theme import loss_label
    from . import prose
    from .estimates import correlation, ece, transfer_difference

    preds = transfer["predictions"]
    lines = []
    have = set(preds["loss"])
    for other in ("l1", "ridge"):
        if {"exp", other} <= have:
            est = transfer_difference(preds, loss="exp", baseline=other)
            lines.append("- " + prose.difference(
                "exp", loss_label(other), est, metric="cross-dataset balanced accuracy",
                unit="points", digits=1))
    lo, hi = paper.QUOTED["ece_range_percent"]
    for loss in [x for x in ("exp", "l1", "ridge") if x in have]:
        est = ece(preds, loss=loss, source="adni", target="adni")
        lines.append(f"- The ECE of {loss_label(loss)} within the ADNI-like dataset is "
                     f"{prose.estimate(est, unit='%', digits=1)} (the paper: {lo:g}-{hi:g} % "
                     f"on ADNI).")
    n_points = points.groupby("loss").size()
    for loss in [x for x in ("exp", "l1") if x in n_points.index]:
        est = correlation(points, loss=loss)
        span = "cannot be estimated" if not np.isfinite(est.low) else \
            f"is {prose.estimate(est, digits=2)}"
        lines.append(f"- Over {int(n_points[loss])} {loss_label(loss)} models the correlation "
                     f"of lower MAE with higher downstream accuracy {span} (the paper: "
                     f"{paper.QUOTED[f'r_mae_accuracy_{loss}']} for {loss_label(loss)}). "
                     + ("With so few models, and models that differ mostly by seed, this "
                        "correlation cannot say much." if n_points[loss] < 10 else ""))
    return _md("\n".join(lines))


def split_table(cohort, profile=None) -> pd.DataFrame:
    """Per dataset: healthy images in the pre-training pool, held-out healthy test images
    (and subjects), patients by diagnosis, and the external test set."""
    from .cohorts import pretraining_split
    from .profiles import get_profile

    profile = get_profile(profile)
    split = pretraining_split(cohort, pool_sizes=profile.pool_sizes)
    table = cohort.table
    rows = []
    for name in split.pools:
        rows_ds = table["dataset"].to_numpy() == name
        test = split.tests[name]
        row = {"dataset": name, "pool (HC images)": len(split.pools[name]),
               "test HC images": len(test),
               "test HC subjects": table["subject_id"].iloc[test].nunique()}
        for dx in ("sMCI", "pMCI", "AD"):
            mask = rows_ds & (table["diagnosis"].to_numpy() == dx)
            row[f"{dx} images (subjects)"] = (f"{int(mask.sum())} "
                                               f"({table['subject_id'][mask].nunique()})")
        rows.append(row)
    out = pd.DataFrame(rows).set_index("dataset")
    if split.external.size:
        out.loc["openbhb", "external test images (sites)"] = (
            f"{len(split.external)} ({table['site'].iloc[split.external].nunique()})")
    return out.fillna("")
