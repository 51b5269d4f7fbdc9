"""The OpenBHB challenge protocol on a trained run: probes fitted on the OpenBHB training pool's
embeddings, site balanced accuracy on internal-site test images, age MAE on internal and
external sites, the score ``L_c = BAcc^0.3 * MAE_ext``; cached in the results store with the
per-image predictions the intervals are computed from.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .cohorts import PretrainingSplit
from .pipeline import BASELINE, run_embeddings, run_predictions
from .store import ResultsStore, RunOutput

__all__ = ["challenge_metrics", "challenge_predictions"]


def challenge_metrics(run, cohort, split: PretrainingSplit, *, dataset: str = "openbhb",
                      store: ResultsStore | None = None) -> dict:
    """OpenBHB challenge metrics of a run: probes fitted on the OpenBHB training pool.

    With a ``store``, the metrics and the per-image predictions
    (:func:`challenge_predictions`) are cached there as a run of kind ``"probe"`` (keyed by
    the trained run, the images of the three sets, the probe protocol and the scikit-learn
    version), so a second call, e.g. another chapter or a rebuild of the book, only reads
    them: the site probe's cross-validated saga fits are the slow part.
    """
    metrics, _ = _challenge_cached(run, cohort, split, dataset, store)
    return metrics


def challenge_predictions(run, cohort, split: PretrainingSplit, *, dataset: str = "openbhb",
                          store: ResultsStore | None = None) -> pd.DataFrame:
    """The challenge's per-image predictions of a run (what its metrics are computed from).

    Returns
    -------
    pandas.DataFrame
        One row per internal and external test image: ``image_id``, ``subject_id``,
        ``set`` (``"internal"`` / ``"external"``), ``age``, ``age_pred``, ``site`` and
        ``site_pred`` (the site probe's prediction; internal images only).
    """
    _, predictions = _challenge_cached(run, cohort, split, dataset, store)
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


def _challenge_cached(run, cohort, split, dataset, store) -> tuple[dict, pd.DataFrame]:
    tr, te, ex = _challenge_sets(cohort, split, dataset)
    if store is None:
        return _challenge(run, cohort, tr, te, ex)

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

    def compute(_work) -> RunOutput:
        metrics, predictions = _challenge(run, cohort, tr, te, ex)
        return RunOutput(tables={"metrics": pd.DataFrame([metrics]),
                                 "predictions": predictions},
                         info={"headline": metrics})

    cached = store.get_or_compute(config, compute)
    metrics = {k: float(v) for k, v in cached.table("metrics").iloc[0].items()}
    return metrics, cached.table("predictions")


def _challenge(run, cohort, tr, te, ex) -> tuple[dict, pd.DataFrame]:
    import warnings

    from ..eval import challenge_score, mae, openbhb_challenge

    z = run_embeddings(run, cohort)
    table = cohort.table
    age = table["age"].to_numpy(dtype=float)
    site = table["site"].astype(str).to_numpy()
    with warnings.catch_warnings():
        # Small cohorts have sites with one or two training images: sklearn warns about the
        # stratification and about test sites the probe never predicts. Expected here.
        warnings.filterwarnings("ignore", category=UserWarning, module=r"sklearn\.")
        res = openbhb_challenge((z[tr], age[tr], site[tr]), (z[te], age[te], site[te]),
                                (z[ex], age[ex]))
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
    return metrics, predictions
