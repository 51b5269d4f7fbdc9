"""The OpenBHB challenge protocol on a trained run: probes fitted on the OpenBHB training pool's
embeddings, site balanced accuracy on internal-site test images, age MAE on internal and
external sites, the score ``L_c = BAcc^0.3 * MAE_ext``; cached in the results store with the
per-image predictions the intervals are computed from.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .._util import usable_cores
from .cohorts import PretrainingSplit
from .pipeline import BASELINE, run_embeddings, run_predictions
from .store import ResultsStore, RunOutput

__all__ = ["challenge_metrics", "challenge_predictions", "combat_comparison", "COMBAT_COVARIATES"]

#: Covariates ComBat keeps when it harmonises embeddings for the challenge: sex only. Age is
#: what the probe then predicts: with age as a ComBat covariate, each test image's true age
#: would re-enter its harmonised features (scaled by 1 - 1/site scale), a leak.
COMBAT_COVARIATES: tuple[str, ...] = ("sex",)


def challenge_metrics(run, cohort, split: PretrainingSplit, *, dataset: str = "openbhb",
                      store: ResultsStore | None = None, harmonise: bool = False) -> dict:
    """OpenBHB challenge metrics of a run: probes fitted on the OpenBHB training pool.

    With a ``store``, the metrics and the per-image predictions
    (:func:`challenge_predictions`) are cached there as a run of kind ``"probe"`` (keyed by
    the trained run, the images of the three sets, the probe protocol and the scikit-learn
    version), so a second call, e.g. another chapter or a rebuild of the book, only reads
    them: the site probe's cross-validated saga fits are the slow part.

    ``harmonise=True`` first harmonises the embeddings with ComBat
    (:class:`brainkit.eval.ComBat`, covariates :data:`COMBAT_COVARIATES`) fitted on the
    OpenBHB training pool and applied to the training and internal-test images; the
    external sites, which ComBat never saw, stay as they are (ComBat has no parameters for
    them), so ``mae_ext`` then measures a probe trained on harmonised features applied to raw
    ones.
    """
    metrics, _ = _challenge_cached(run, cohort, split, dataset, store, harmonise,
                                   2 if harmonise else 1)
    return metrics


def challenge_predictions(run, cohort, split: PretrainingSplit, *, dataset: str = "openbhb",
                          store: ResultsStore | None = None,
                          harmonise: bool = False) -> pd.DataFrame:
    """The challenge's per-image predictions of a run (what its metrics are computed from).

    Returns
    -------
    pandas.DataFrame
        One row per internal and external test image: ``image_id``, ``subject_id``,
        ``set`` (``"internal"`` / ``"external"``), ``age``, ``age_pred``, ``site`` and
        ``site_pred`` (the site probe's prediction; internal images only).
    """
    _, predictions = _challenge_cached(run, cohort, split, dataset, store, harmonise,
                                       2 if harmonise else 1)
    return predictions


def _challenge_sets(cohort, split: PretrainingSplit, dataset: str):
    if dataset not in split.pools or split.external.size == 0:
        raise ValueError(f"the cohort has no {dataset!r} dataset with an official split "
                         "(train / internal_test / external_test)")
    site = cohort.table["site"].to_numpy()
    tr, te, ex = split.pools[dataset], split.tests[dataset], split.external
    # Small cohorts can leave an internal-test site without training images; the challenge
    # defines the internal set as seen sites, so such images are left out.
    return tr, te[np.isin(site[te], site[tr])], ex


def _challenge_cached(run, cohort, split, dataset, store, harmonise: bool = False,
                      min_site_images: int = 1) -> tuple[dict, pd.DataFrame]:
    tr, te, ex = _challenge_sets(cohort, split, dataset)
    if min_site_images > 1:   # only the sites with enough training images (ComBat's)
        site = cohort.table["site"].astype(str).to_numpy()
        names, counts = np.unique(site[tr], return_counts=True)
        keep = names[counts >= min_site_images]
        tr, te = tr[np.isin(site[tr], keep)], te[np.isin(site[te], keep)]
    if store is None:
        return _challenge(run, cohort, tr, te, ex, harmonise)

    import hashlib

    import sklearn

    from ..eval.probes import AGE_ALPHAS, SITE_CS

    ids = cohort.table["image_id"].astype(str).to_numpy()
    images = hashlib.sha256("\n".join(
        "\t".join(ids[part]) for part in (tr, te, ex)).encode()).hexdigest()[:16]
    config = {"kind": "probe", "probe": "openbhb_challenge", "pretrained": run.key,
              "dataset": dataset, "images": images, "n_train": int(len(tr)),
              "protocol": {"cv": 5, "alphas": AGE_ALPHAS.tolist(), "Cs": SITE_CS.tolist(),
                           "random_state": 0},
              "outputs": ["metrics", "predictions"],
              "sklearn": sklearn.__version__}
    if min_site_images > 1:
        config["min_site_images"] = int(min_site_images)
    if harmonise:
        config["harmonise"] = {"method": "combat", "covariates": list(COMBAT_COVARIATES),
                               "min_site_images": 2, "skip_constant_features": True}

    def compute(_work) -> RunOutput:
        metrics, predictions = _challenge(run, cohort, tr, te, ex, harmonise)
        return RunOutput(tables={"metrics": pd.DataFrame([metrics]),
                                 "predictions": predictions},
                         info={"headline": metrics})

    cached = store.get_or_compute(config, compute)
    metrics = {k: float(v) for k, v in cached.table("metrics").iloc[0].items()}
    return metrics, cached.table("predictions")


def _challenge(run, cohort, tr, te, ex, harmonise: bool = False) -> tuple[dict, pd.DataFrame]:
    import warnings

    from ..eval import ComBat, challenge_score, mae, openbhb_challenge

    z = run_embeddings(run, cohort)
    table = cohort.table
    n_harmonised = (0, 0)
    if harmonise:
        # ComBat needs two training images of a site to estimate its scale: sites with one
        # stay as they are (their images are counted in the metrics as n_harmonised_*).
        site_all = table["site"].astype(str).to_numpy()
        names, counts = np.unique(site_all[tr], return_counts=True)
        usable = set(names[counts >= 2])
        fit_rows = tr[np.isin(site_all[tr], list(usable))]
        seen = np.concatenate([tr, te])
        seen = seen[np.isin(site_all[seen], list(usable))]
        if len(usable) >= 2:
            z = np.array(z, dtype=np.float64)
            # a feature constant within a fitting site (a ReLU unit silent on its few images)
            # has no site scale: it is left as it is
            cols = np.ones(z.shape[1], dtype=bool)
            for name in usable:
                rows = fit_rows[site_all[fit_rows] == name]
                cols &= np.ptp(z[rows], axis=0) > 0
            combat = ComBat(covariates=COMBAT_COVARIATES).fit(
                z[np.ix_(fit_rows, cols)], table.iloc[fit_rows])
            z[np.ix_(seen, cols)] = combat.transform(z[np.ix_(seen, cols)], table.iloc[seen])
            n_harmonised = (int(len(fit_rows)), int(np.isin(te, seen).sum()))
    age = table["age"].to_numpy(dtype=float)
    site = table["site"].astype(str).to_numpy()
    with warnings.catch_warnings():
        # Small cohorts have sites with one or two training images: sklearn warns about the
        # stratification and about test sites the probe never predicts. Expected here.
        warnings.filterwarnings("ignore", category=UserWarning, module=r"sklearn\.")
        res = openbhb_challenge((z[tr], age[tr], site[tr]), (z[te], age[te], site[te]),
                                (z[ex], age[ex]), n_jobs=_probe_jobs())
    rows = np.concatenate([te, ex])
    pred = res.age_probe.predict(z[rows])
    if run.config["loss"] == BASELINE:
        # The voxel baseline's age readout is the ridge on all masked voxels (its
        # "embedding", principal components of the voxels, serves the site probe).
        pred = run_predictions(run, cohort, tr)[rows]
    site_pred = np.full(len(rows), None, dtype=object)
    site_pred[:len(te)] = res.site_probe.predict(z[te])
    predictions = pd.DataFrame({
        "image_id": table["image_id"].to_numpy()[rows],
        "subject_id": table["subject_id"].astype(str).to_numpy()[rows],
        "set": ["internal"] * len(te) + ["external"] * len(ex),
        "age": age[rows], "age_pred": pred, "site": site[rows], "site_pred": site_pred})
    internal = predictions["set"] == "internal"
    mae_int = mae(age[te], pred[internal.to_numpy()])
    mae_ext = mae(age[ex], pred[~internal.to_numpy()])
    metrics = {"bacc": res.bacc, "mae_int": mae_int, "mae_ext": mae_ext,
               "score": challenge_score(res.bacc, mae_ext), "bacc_chance": res.bacc_chance,
               "n_internal": float(len(te)), "n_external": float(len(ex)),
               "n_sites": float(len(np.unique(site[te])))}
    if harmonise:
        metrics.update(n_harmonised_train=float(n_harmonised[0]),
                       n_harmonised_internal=float(n_harmonised[1]))
    return metrics, predictions


def _probe_jobs() -> int | None:
    """Processes for the site probe's grid search (26 saga fits): 2.8 -> 1.7 s a probe on 2
    cores, and the fits, so the results, do not depend on it. Only in a main process: inside
    a sweep's or a pool's worker, nested joblib workers made a 20 s sweep test take 320 s."""
    import multiprocessing

    if multiprocessing.parent_process() is not None:
        return None
    return min(usable_cores(), 4)


def combat_comparison(cohort, losses, *, profile=None, store: ResultsStore | None = None,
                      seed: int = 0, n_boot: int = 500) -> pd.DataFrame:
    """Does ComBat lower the site information as much as the exp loss does, and at what cost?

    For each loss's model pretrained on the merged pool (seed ``seed``), the challenge
    protocol on its embeddings as they are and harmonised by ComBat (fitted on the OpenBHB
    training pool, applied to it and to the internal test images: :func:`challenge_metrics`
    with ``harmonise=True``). Internal-test site balanced accuracy and MAE, each with a 95 %
    subject-bootstrap interval, and the paired ComBat-minus-raw differences.

    Returns
    -------
    pandas.DataFrame
        One row per loss and ``features`` (``"raw"`` / ``"ComBat"``): ``bacc``,
        ``bacc_low``, ``bacc_high`` (%), ``mae_int``, ``mae_low``, ``mae_high`` (years),
        ``bacc_chance`` (%), ``n_internal``; ComBat rows also ``n_harmonised`` (internal-test
        images of sites ComBat could fit) and ``d_bacc`` / ``d_mae`` with intervals.
    """
    from ..eval.uncertainty import balanced_accuracy, bootstrap_ci
    from .cohorts import pretraining_split
    from .pipeline import train_encoder
    from .profiles import get_profile
    from .store import default_store

    profile = get_profile(profile)
    store = store if store is not None else default_store()
    split = pretraining_split(cohort, pool_sizes=profile.pool_sizes)
    rows = []
    for loss in losses:
        run = train_encoder(cohort, loss, split.merged, profile=profile, seed=seed, store=store)
        frames = {}
        for harmonise, name in ((False, "raw"), (True, "ComBat")):
            metrics, preds = _challenge_cached(run, cohort, split, "openbhb", store, harmonise,
                                               min_site_images=2)
            internal = preds[preds["set"] == "internal"].reset_index(drop=True)
            frames[name] = internal
            subjects = internal["subject_id"].to_numpy()
            bacc = bootstrap_ci(lambda t, p: 100.0 * balanced_accuracy(t, p),
                                internal["site"].to_numpy(), internal["site_pred"].to_numpy(),
                                groups=subjects, n_boot=n_boot)
            err = bootstrap_ci(lambda a, p: float(np.mean(np.abs(a - p))),
                               internal["age"].to_numpy(), internal["age_pred"].to_numpy(),
                               groups=subjects, n_boot=n_boot)
            row = {"loss": loss, "features": name, "bacc": bacc.value, "bacc_low": bacc.low,
                   "bacc_high": bacc.high, "mae_int": err.value, "mae_low": err.low,
                   "mae_high": err.high, "bacc_chance": 100.0 * metrics["bacc_chance"],
                   "n_internal": int(len(internal))}
            if harmonise:
                row["n_harmonised"] = int(metrics["n_harmonised_internal"])
            if name == "ComBat":
                raw = frames["raw"]
                site, age = raw["site"].to_numpy(), raw["age"].to_numpy()
                d_bacc = bootstrap_ci(
                    lambda t, p, q: 100.0 * (balanced_accuracy(t, q) - balanced_accuracy(t, p)),
                    site, raw["site_pred"].to_numpy(), internal["site_pred"].to_numpy(),
                    groups=subjects, n_boot=n_boot)
                d_mae = bootstrap_ci(
                    lambda a, p, q: float(np.mean(np.abs(a - q)) - np.mean(np.abs(a - p))),
                    age, raw["age_pred"].to_numpy(), internal["age_pred"].to_numpy(),
                    groups=subjects, n_boot=n_boot)
                row.update(d_bacc=d_bacc.value, d_bacc_low=d_bacc.low,
                           d_bacc_high=d_bacc.high, d_mae=d_mae.value, d_mae_low=d_mae.low,
                           d_mae_high=d_mae.high)
            rows.append(row)
    return pd.DataFrame(rows)
