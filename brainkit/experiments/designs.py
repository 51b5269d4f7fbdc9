"""The paper's experimental designs as ready functions.

- :func:`pretraining_split`: per-dataset test sets and the healthy training pools.
- :func:`single_vs_merge` (Table 3): each loss trained on each dataset alone ("single") and on
  the merged healthy pool ("merge"), tested on each dataset's held-out subjects, plus the OpenBHB
  challenge metrics.
- :func:`scaling_sweep` (Fig. 1): nested, subject-level subsets of the merged pool; external MAE
  and site balanced accuracy against training size.
- :func:`challenge_metrics`: the OpenBHB challenge protocol on a run's embeddings.
- :func:`downstream_transfer` (Table 4, Fig. 3): fine-tune OpenBHB-pretrained encoders for HC
  vs AD within and across datasets.

All training goes through :func:`~brainkit.experiments.pipeline.train_encoder`, so runs shared
by several designs (the largest scaling size *is* the merged run) are trained once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..data.splits import check_no_leakage, subject_kfold, subject_subset
from .pipeline import BASELINE, run_embeddings, run_predictions, train_encoder
from .profiles import Profile, get_profile
from .store import ResultsStore, RunOutput, default_store

__all__ = [
    "default_cohort",
    "synthetic_cohort",
    "PretrainingSplit",
    "pretraining_split",
    "challenge_metrics",
    "challenge_predictions",
    "single_vs_merge",
    "single_vs_merge_predictions",
    "scaling_sweep",
    "scaling_predictions",
    "scaling_subsets",
    "book_scaling",
    "downstream_transfer",
    "heldout_gaps",
]


def default_cohort(profile: str | Profile | None = None, *, store: ResultsStore | None = None):
    """The cohort the book analyses.

    ``BRAINKIT_COHORT`` names a saved cohort (e.g. real data imported with
    ``brainkit cohort import``); otherwise the merged synthetic cohort of the profile
    (``profile.cohort_sizes`` on ``profile.grid_mm``, seed 0), generated once and kept in the
    store's ``cohorts/`` folder (keyed by the sizes, the grid and the generator's source), so
    every chapter memory-maps the same images instead of generating them again.
    """
    import os

    from ..data import Cohort

    path = os.environ.get("BRAINKIT_COHORT")
    if path:
        return Cohort.load(path)
    profile = get_profile(profile)
    store = store if store is not None else default_store()
    return synthetic_cohort(profile.cohort_sizes, grid_mm=profile.grid_mm, seed=0,
                            cache=store.root / "cohorts")


def synthetic_cohort(sizes: Mapping[str, int], *, grid_mm: float, seed: int = 0, cache=None):
    """:func:`brainkit.data.make_merged`, saved under ``cache`` and loaded from there next time.

    The cache folder's name holds a digest of the arguments and of the generator (its source,
    its preset summaries and the nilearn version whose template it resamples), so a change to
    any of them makes a new cohort. Two processes may race to fill it: the first to finish
    publishes its folder (an atomic rename), the other's copy is discarded.
    """
    import hashlib
    import importlib.metadata
    import shutil
    import tempfile
    from importlib import resources
    from pathlib import Path

    from ..data import Cohort, make_merged

    if cache is None:
        return make_merged(sizes, grid_mm=grid_mm, seed=seed)
    package = resources.files("brainkit.data")
    h = hashlib.sha256(repr((sorted(sizes.items()), float(grid_mm), int(seed))).encode())
    for name in ("synthetic.py", "_synthetic_presets.json"):
        h.update(package.joinpath(name).read_bytes())
    h.update(importlib.metadata.version("nilearn").encode())
    cache = Path(cache)
    folder = cache / f"synthetic-{h.hexdigest()[:16]}"
    if (folder / "cohort.json").is_file():
        return Cohort.load(folder)
    cohort = make_merged(sizes, grid_mm=grid_mm, seed=seed)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-synthetic-", dir=cache))
    try:
        cohort.save(tmp)
        try:
            tmp.rename(folder)
        except OSError:          # another process published it first
            if not (folder / "cohort.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Cohort.load(folder)


@dataclass(frozen=True)
class PretrainingSplit:
    """Healthy training pools and test sets per dataset (positions in the cohort).

    Attributes
    ----------
    pools : dict of str to ndarray
        Healthy images each dataset contributes to pre-training.
    tests : dict of str to ndarray
        Held-out healthy images of each dataset (for OpenBHB: the internal test set).
    external : ndarray
        OpenBHB external-site test images (empty when the cohort has no ``split`` column).
    """

    pools: dict
    tests: dict
    external: np.ndarray

    @property
    def merged(self) -> np.ndarray:
        return np.sort(np.concatenate(list(self.pools.values())))


def pretraining_split(cohort, *, pool_sizes: Mapping[str, int] | None = None,
                      test_folds: int = 5, seed: int = 0) -> PretrainingSplit:
    """Split each dataset's healthy controls into a training pool and test sets.

    Parameters
    ----------
    cohort : brainkit.data.Cohort
    pool_sizes : mapping of str to int, optional
        Images each dataset contributes to pre-training ("train small, test big"): whole
        subjects are drawn, stratified by site (OpenBHB) or by age, until the size is reached;
        every other healthy image of the dataset is a test image. A dataset not named here,
        one whose pool would leave less than ``1 / test_folds`` of its images for testing,
        or ``None``: one subject-level, age-stratified fold (``1 / test_folds`` of its
        subjects) is held out.
    test_folds : int, default 5
    seed : int, default 0
        Seeds the draw (the designs keep it fixed while training seeds vary).

    A dataset whose rows carry the OpenBHB test splits keeps its official sites: the pool is
    drawn from ``train`` rows (all of them without a pool size), the test set holds the
    seen-site images that are not in the pool (``internal_test`` plus the undrawn ``train``
    rows of sites in the pool), and ``external_test`` is the external set.
    """
    table = cohort.table
    hc = table["diagnosis"].to_numpy() == "HC"
    site = table["site"].astype(str).to_numpy()
    split = table["split"].astype(str).to_numpy() if "split" in table else None
    sizes = dict(pool_sizes or {})
    pools, tests, external = {}, {}, []
    for dataset in sorted(table["dataset"].unique()):
        rows = np.flatnonzero(hc & (table["dataset"].to_numpy() == dataset))
        size = sizes.get(dataset)
        if split is not None and np.isin(split[rows], ("internal_test", "external_test")).any():
            train = rows[split[rows] == "train"]
            pool = train if size is None else subject_subset(table, train, size, seed=seed,
                                                             strata=site)
            seen = np.isin(site[rows], site[pool]) & (split[rows] != "external_test")
            pools[dataset] = pool
            tests[dataset] = np.setdiff1d(rows[seen], pool)
            external.append(rows[split[rows] == "external_test"])
        elif size is not None and size <= len(rows) * (1 - 1 / test_folds):
            pools[dataset] = subject_subset(table, rows, size, seed=seed)
            tests[dataset] = np.setdiff1d(rows, pools[dataset])
        else:
            train, test = subject_kfold(table, test_folds, seed=seed, indices=rows)[0]
            pools[dataset], tests[dataset] = np.sort(train), np.sort(test)
        check_no_leakage(table, pools[dataset], tests[dataset])
    ext = np.sort(np.concatenate(external)) if external else np.array([], dtype=np.int64)
    return PretrainingSplit(pools=pools, tests=tests, external=ext)


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


def _age_metrics(age, pred) -> dict:
    from ..eval import mae, pearson_r, r2

    return {"mae": mae(age, pred), "r2": r2(age, pred), "r": pearson_r(age, pred)}


def _table3_runs(cohort, losses, *, profile, seeds, store, device, single_datasets):
    """(loss, seed, scheme, dataset, run, pool) for every Table 3 model, singles first."""
    split = pretraining_split(cohort, pool_sizes=profile.pool_sizes)
    for loss in losses:
        for seed in _seed_list(0, seeds, loss):
            for dataset, pool in split.pools.items():
                if single_datasets is None or dataset in single_datasets:
                    run = train_encoder(cohort, loss, pool, profile=profile, seed=seed,
                                        store=store, device=device)
                    yield loss, seed, "single", dataset, run, pool, split
            run = train_encoder(cohort, loss, split.merged, profile=profile, seed=seed,
                                store=store, device=device)
            yield loss, seed, "merge", None, run, split.merged, split


def single_vs_merge(cohort, losses: Sequence[str], *, profile: str | Profile | None = None,
                    seed: int = 0, seeds: Sequence[int] | Mapping | None = None,
                    store: ResultsStore | None = None, device: str | None = None,
                    single_datasets: Sequence[str] | None = None) -> pd.DataFrame:
    """Table 3: "single" (trained and tested on each dataset) vs "merge" (trained on all).

    ``single_datasets`` limits the "single" runs to some datasets (default: all); the
    challenge rows need ``"openbhb"`` among them. ``seeds`` (default ``[seed]``) trains every
    model once per seed.

    Returns
    -------
    pandas.DataFrame
        One row per (loss, scheme, dataset, seed) with ``mae``, ``r2``, ``r``, ``n_train``,
        ``n_test``; rows with ``dataset == "challenge"`` hold the OpenBHB challenge metrics
        (``bacc``, ``mae_int``, ``mae_ext``, ``score``) of the OpenBHB-trained ("single")
        and merged models.
    """
    profile = get_profile(profile)
    store = store if store is not None else default_store()
    age = cohort.table["age"].to_numpy(dtype=float)
    rows = []
    for loss, s, scheme, dataset, run, pool, split in _table3_runs(
            cohort, losses, profile=profile, seeds=seeds if seeds is not None else [seed],
            store=store, device=device, single_datasets=single_datasets):
        pred = run_predictions(run, cohort, pool)
        for name in ([dataset] if scheme == "single" else list(split.tests)):
            test = split.tests[name]
            rows.append({"loss": loss, "scheme": scheme, "dataset": name, "seed": s,
                         "n_train": len(pool), "n_test": len(test),
                         **_age_metrics(age[test], pred[test])})
        if split.external.size and (scheme == "merge" or dataset == "openbhb"):
            rows.append({"loss": loss, "scheme": scheme, "dataset": "challenge", "seed": s,
                         "n_train": len(pool),
                         **challenge_metrics(run, cohort, split, store=store)})
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    # grouped per dataset, "single" before "merge", in the losses' order
    out["_loss"] = out["loss"].map({name: i for i, name in enumerate(losses)})
    out["_scheme"] = (out["scheme"] == "merge").astype(int)
    return out.sort_values(["_loss", "seed", "dataset", "_scheme"], kind="stable",
                           ignore_index=True).drop(columns=["_loss", "_scheme"])


def single_vs_merge_predictions(cohort, losses: Sequence[str], *,
                                profile: str | Profile | None = None, seed: int = 0,
                                seeds: Sequence[int] | Mapping | None = None,
                                store: ResultsStore | None = None, device: str | None = None,
                                single_datasets: Sequence[str] | None = None) -> pd.DataFrame:
    """The per-image predictions behind :func:`single_vs_merge`'s dataset rows.

    Returns
    -------
    pandas.DataFrame
        One row per (loss, scheme, seed, test image): ``loss``, ``scheme``, ``dataset``,
        ``seed``, ``n_train``, ``image_id``, ``subject_id``, ``age``, ``age_pred``.
    """
    profile = get_profile(profile)
    store = store if store is not None else default_store()
    table = cohort.table
    age = table["age"].to_numpy(dtype=float)
    frames = []
    for loss, s, scheme, dataset, run, pool, split in _table3_runs(
            cohort, losses, profile=profile, seeds=seeds if seeds is not None else [seed],
            store=store, device=device, single_datasets=single_datasets):
        pred = run_predictions(run, cohort, pool)
        for name in ([dataset] if scheme == "single" else list(split.tests)):
            test = split.tests[name]
            frames.append(pd.DataFrame({
                "loss": loss, "scheme": scheme, "dataset": name, "seed": s,
                "n_train": len(pool), "image_id": table["image_id"].to_numpy()[test],
                "subject_id": table["subject_id"].astype(str).to_numpy()[test],
                "age": age[test], "age_pred": pred[test]}))
    return pd.concat(frames, ignore_index=True)


def nested_subsets(cohort, pool, sizes: Sequence[int], *, seed: int = 0,
                   first=None) -> list[np.ndarray]:
    """Nested, subject-level subsets of ``pool`` with (about) ``sizes`` images each.

    Subjects are shuffled once with ``seed`` and taken in that order until the size is reached,
    so every subset contains the smaller ones and no subject is split. Subjects of the rows
    in ``first`` (e.g. one dataset's pool) come before all others, so a size equal to
    ``len(first)`` gives exactly those rows.
    """
    pool = np.sort(np.asarray(pool, dtype=np.int64))
    subjects = cohort.table["subject_id"].to_numpy()[pool]
    order = np.random.default_rng(seed).permutation(np.unique(subjects))
    if first is not None:
        early = set(cohort.table["subject_id"].to_numpy()[np.asarray(first, dtype=np.int64)])
        order = np.concatenate([[s for s in order if s in early],
                                [s for s in order if s not in early]])
    rank = {s: i for i, s in enumerate(order)}
    by_rank = pool[np.argsort([rank[s] for s in subjects], kind="stable")]
    out = []
    for n in sizes:
        if not 2 <= n <= len(pool):
            raise ValueError(f"training size {n} must be between 2 and the pool size {len(pool)}")
        cut = n
        while cut < len(by_rank) and subjects[np.searchsorted(pool, by_rank[cut])] == \
                subjects[np.searchsorted(pool, by_rank[cut - 1])]:
            cut += 1  # finish the last subject
        out.append(np.sort(by_rank[:cut]))
    return out


def scaling_subsets(cohort, split: PretrainingSplit, sizes: Sequence[int], *,
                    first: str = "openbhb") -> list[np.ndarray]:
    """The training subsets of the scaling design: nested, subject-level, from the merged pool.

    The whole pool is always the largest; ``first``'s pool (OpenBHB) fills the smallest
    subsets first, so a size equal to that pool is the "single" OpenBHB run of
    :func:`single_vs_merge` and the larger ones add the other datasets (more sites, more
    datasets), as the paper's scaling does. The draw is fixed (seed 0): training seeds vary
    the models, not the images.
    """
    pool = split.merged
    sizes = sorted({min(int(n), len(pool)) for n in sizes} | {len(pool)})
    return nested_subsets(cohort, pool, sizes, seed=0, first=split.pools.get(first))


def _seed_list(seed: int, seeds, loss: str | None = None) -> list[int]:
    """The training seeds of ``loss`` in a design: ``seeds`` (a list, or a mapping loss ->
    list such as :meth:`Profile.seed_plan`), ``[seed]`` by default; the voxel ridge, which
    is deterministic, takes only the first."""
    if isinstance(seeds, Mapping):
        seeds = seeds.get(loss, [seed])
    out = [int(seed)] if seeds is None else [int(s) for s in seeds]
    if not out or any(s < 0 for s in out):
        raise ValueError(f"seeds must be non-negative integers, got {seeds!r}")
    return out[:1] if loss == BASELINE else out


def _scaling_runs(cohort, losses, train_sizes, *, profile, seeds, store, device):
    split = pretraining_split(cohort, pool_sizes=profile.pool_sizes)
    subsets = scaling_subsets(cohort, split, list(train_sizes or profile.train_sizes))
    for loss in losses:
        for subset in subsets:
            for seed in _seed_list(0, seeds, loss):
                run = train_encoder(cohort, loss, subset, profile=profile, seed=seed,
                                    store=store, device=device)
                yield loss, subset, seed, run, split


def scaling_sweep(cohort, losses: Sequence[str], train_sizes: Sequence[int] | None = None, *,
                  profile: str | Profile | None = None, seed: int = 0,
                  seeds: Sequence[int] | Mapping | None = None, store: ResultsStore | None = None,
                  device: str | None = None) -> pd.DataFrame:
    """Fig. 1: train on nested subsets of the merged healthy pool and run the challenge.

    The subsets are :func:`scaling_subsets`: the largest is the whole pool, so its runs are
    the "merge" runs of :func:`single_vs_merge`. ``seeds`` (default ``[seed]``) trains each
    subset once per seed.

    Returns
    -------
    pandas.DataFrame
        One row per (loss, size, seed): ``n_train``, ``seed``, ``n_sites``, ``n_datasets``
        (diversity of the training subset), ``bacc``, ``mae_int``, ``mae_ext``, ``score``,
        ``bacc_chance``, ``n_internal``, ``n_external``.
    """
    profile = get_profile(profile)
    store = store if store is not None else default_store()
    table = cohort.table
    rows = []
    for loss, subset, s, run, split in _scaling_runs(
            cohort, losses, train_sizes, profile=profile,
            seeds=seeds if seeds is not None else [seed],
            store=store, device=device):
        rows.append({"loss": loss, "n_train": len(subset), "seed": s,
                     "n_sites": table["site"].iloc[subset].nunique(),
                     "n_datasets": table["dataset"].iloc[subset].nunique(),
                     **challenge_metrics(run, cohort, split, store=store)})
    return pd.DataFrame(rows)


def scaling_predictions(cohort, losses: Sequence[str], train_sizes: Sequence[int] | None = None,
                        *, profile: str | Profile | None = None, seed: int = 0,
                        seeds: Sequence[int] | Mapping | None = None, store: ResultsStore | None = None,
                        device: str | None = None) -> pd.DataFrame:
    """The per-image predictions behind :func:`scaling_sweep` (same runs, read back).

    Returns
    -------
    pandas.DataFrame
        :func:`challenge_predictions` of every run, with ``loss``, ``n_train``, ``seed``,
        ``n_sites`` and ``n_datasets`` in front.
    """
    profile = get_profile(profile)
    store = store if store is not None else default_store()
    table = cohort.table
    frames = []
    for loss, subset, s, run, split in _scaling_runs(
            cohort, losses, train_sizes, profile=profile,
            seeds=seeds if seeds is not None else [seed],
            store=store, device=device):
        p = challenge_predictions(run, cohort, split, store=store)
        frames.append(p.assign(loss=loss, n_train=len(subset), seed=s,
                               n_sites=table["site"].iloc[subset].nunique(),
                               n_datasets=table["dataset"].iloc[subset].nunique()))
    out = pd.concat(frames, ignore_index=True)
    front = ["loss", "n_train", "seed", "n_sites", "n_datasets"]
    return out[front + [c for c in out.columns if c not in front]]


def book_scaling(cohort, *, profile: str | Profile | None = None,
                 store: ResultsStore | None = None, device: str | None = None) -> pd.DataFrame:
    """The scaling predictions the book shows (:func:`scaling_predictions`): the voxel ridge
    and the profile's ``core_losses`` at every training size and seed, the profile's other
    losses on the merged pool with its first seed (what a small profile can afford)."""
    profile = get_profile(profile)
    store = store if store is not None else default_store()
    plan = profile.seed_plan()
    core = [BASELINE] + [x for x in profile.losses if x in profile.core_losses]
    rest = [x for x in profile.losses if x not in profile.core_losses]
    frames = [scaling_predictions(cohort, core, profile=profile, seeds=plan, store=store,
                                  device=device)]
    if rest:
        split = pretraining_split(cohort, pool_sizes=profile.pool_sizes)
        frames.append(scaling_predictions(cohort, rest, [len(split.merged)], profile=profile,
                                          seeds=plan, store=store, device=device))
    return pd.concat(frames, ignore_index=True)


def heldout_gaps(cohort, losses: Sequence[str], *, profile: str | Profile | None = None,
                 seed: int = 0, seeds: Sequence[int] | Mapping | None = None,
                 store: ResultsStore | None = None, device: str | None = None,
                 correction: str = "beheshti") -> pd.DataFrame:
    """Fig. 2: brain-age gaps of held-out healthy controls and of every patient image.

    Uses each loss's model pretrained on the merged healthy pool (the "merge" run of
    :func:`single_vs_merge`): every image it predicts was never trained on (held-out healthy
    test subjects of each dataset, and all non-HC images). The age-bias correction is
    cross-fitted (:func:`brainkit.eval.crossfit_correct`) so that it never sees the images
    it corrects: held-out healthy images are split into two subject-level halves, each
    corrected with the line fitted on the other; patients are corrected with the line fitted
    on all held-out healthy images. ``seeds`` (default ``[seed]``) repeats it per seed.

    Returns
    -------
    pandas.DataFrame
        The cohort rows that were predicted, plus ``loss``, ``seed``, ``age_pred``, ``bag``
        and ``bag_corrected``.
    """
    from ..eval import crossfit_correct

    profile = get_profile(profile)
    store = store if store is not None else default_store()
    split = pretraining_split(cohort, pool_sizes=profile.pool_sizes)
    table = cohort.table
    age = table["age"].to_numpy(dtype=float)
    healthy = np.sort(np.concatenate(list(split.tests.values())))
    patients = np.flatnonzero(table["diagnosis"].to_numpy() != "HC")
    rows = np.sort(np.concatenate([healthy, patients]))
    folds = np.full(len(table), -1)
    for k, (_, half) in enumerate(subject_kfold(table, 2, seed=0, indices=healthy)):
        folds[half] = k
    frames = []
    for loss in losses:
        for s in _seed_list(seed, seeds, loss):
            run = train_encoder(cohort, loss, split.merged, profile=profile, seed=s,
                                store=store, device=device)
            pred = run_predictions(run, cohort, split.merged)
            corrected = crossfit_correct(age[rows], pred[rows], folds[rows], method=correction)
            out = table.iloc[rows].copy()
            out["loss"] = loss
            out["seed"] = s
            out["age_pred"] = pred[rows]
            out["bag"] = pred[rows] - age[rows]
            out["bag_corrected"] = corrected - age[rows]
            frames.append(out)
    return pd.concat(frames, ignore_index=True)


def downstream_transfer(cohort, losses: Sequence[str], *, datasets: Sequence[str] = ("adni", "oasis3"),
                        pretrain_dataset: str = "openbhb", profile: str | Profile | None = None,
                        seed: int = 0, store: ResultsStore | None = None,
                        device: str | None = None, folds: int | None = None,
                        epochs: int | None = None, lr: float | None = None) -> dict:
    """Table 4 and Fig. 3: fine-tune encoders pretrained on one dataset for HC vs AD.

    Each loss's encoder is pretrained on the healthy pool of ``pretrain_dataset`` (the
    "single" run of :func:`single_vs_merge`), then fine-tuned with a linear head on each
    dataset in ``datasets`` (HC vs AD, subject-level folds) and tested within and across
    datasets (:func:`brainkit.eval.transfer_matrix`). Cached per loss. ``"ridge"``, the
    classical baseline, is an L2-penalised logistic regression on the principal components
    of the voxels, fitted on the same folds (:func:`_voxel_transfer`).

    Returns
    -------
    dict
        ``"scores"``: one row per (loss, source, target, fold) with ``balanced_accuracy``,
        ``auc``, ``n_train``, ``n_test``; ``"predictions"``: every test prediction (loss,
        source, target, fold, index, image_id, y_true, prob, subject_id).
    """
    import torch

    from ..eval import transfer_matrix
    from ..train import load_model

    profile = get_profile(profile)
    store = store if store is not None else default_store()
    dev = device or profile.resolved_device()
    folds = folds or profile.folds
    epochs = epochs or profile.finetune_epochs
    lr = lr or profile.finetune_lr
    split = pretraining_split(cohort, pool_sizes=profile.pool_sizes)
    if pretrain_dataset not in split.pools:
        raise ValueError(f"the cohort has no {pretrain_dataset!r} healthy controls to pretrain on")
    table = cohort.table
    data = {}
    for name in datasets:
        rows = np.flatnonzero((table["dataset"].to_numpy() == name)
                              & table["diagnosis"].isin(["HC", "AD"]).to_numpy())
        if rows.size == 0:
            raise ValueError(f"the cohort has no HC/AD images of dataset {name!r}")
        data[name] = rows
    scores, preds = [], []
    for loss in losses:
        if loss == BASELINE:
            result = _voxel_transfer(cohort, data, folds=folds, seed=seed, store=store)
            for key, frame in (("scores", scores), ("predictions", preds)):
                frame.append(result[key].assign(loss=loss)[["loss", *result[key].columns]])
            continue
        run = train_encoder(cohort, loss, split.pools[pretrain_dataset], profile=profile,
                            seed=seed, store=store, device=device)
        config = {"kind": "finetune", "pretrained": run.key, "datasets": list(datasets),
                  "folds": folds, "epochs": epochs, "lr": lr, "batch_size": profile.batch_size,
                  "seed": seed, "cohort": cohort.content_hash}

        def compute(work_dir, run=run, loss=loss):
            model = load_model(run.file("model"), device=dev)
            torch.manual_seed(seed)
            inputs = {name: (cohort.images(rows),
                             (table["diagnosis"].to_numpy()[rows] == "AD").astype(int),
                             table["subject_id"].to_numpy()[rows])
                      for name, rows in data.items()}
            result = transfer_matrix(model.encoder, inputs, epochs=epochs, lr=lr,
                                     batch_size=profile.batch_size, device=dev, seed=seed,
                                     n_splits=folds)
            predictions = result.predictions.copy()
            for name, rows in data.items():  # positions in each dataset -> image ids
                mask = predictions["target"] == name
                predictions.loc[mask, "image_id"] = table["image_id"].to_numpy()[
                    rows[predictions.loc[mask, "index"].to_numpy(dtype=int)]]
            return RunOutput(tables={"scores": result.table, "predictions": predictions})

        out = store.get_or_compute(config, compute)
        s = out.table("scores")
        s.insert(0, "loss", loss)
        scores.append(s)
        p = out.table("predictions")
        p.insert(0, "loss", loss)
        preds.append(p)
    predictions = pd.concat(preds, ignore_index=True)
    subject = dict(zip(table["image_id"], table["subject_id"].astype(str)))
    predictions["subject_id"] = predictions["image_id"].map(subject)
    return {"scores": pd.concat(scores, ignore_index=True), "predictions": predictions}


def _voxel_transfer(cohort, data: dict, *, folds: int, seed: int, store) -> dict:
    """The downstream baseline: PCA of the masked voxels + balanced logistic regression, on
    exactly the folds :func:`brainkit.eval.transfer_matrix` uses; cached in the store."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score
    from sklearn.model_selection import StratifiedGroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    table = cohort.table
    config = {"kind": "finetune", "pretrained": BASELINE, "datasets": sorted(data),
              "folds": folds, "seed": seed, "cohort": cohort.content_hash,
              "model": {"components": 64, "classifier": "LogisticRegressionCV(l2, balanced)"}}

    def compute(_work) -> RunOutput:
        images = {k: cohort.images(v).reshape(len(v), -1) for k, v in data.items()}
        labels = {k: (table["diagnosis"].to_numpy()[v] == "AD").astype(int)
                  for k, v in data.items()}
        groups = {k: table["subject_id"].to_numpy()[v] for k, v in data.items()}
        rows, preds = [], []
        for source in data:
            x, y, g = images[source], labels[source], groups[source]
            splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
            for fold, (tr, te) in enumerate(splitter.split(np.zeros(len(y)), y, g)):
                k = int(min(64, len(tr) - 1))
                model = make_pipeline(PCA(n_components=k, random_state=0), StandardScaler(),
                                      LogisticRegressionCV(Cs=10, cv=3, max_iter=2000,
                                                           class_weight="balanced"))
                model.fit(x[tr], y[tr])
                for target in data:
                    idx = te if target == source else np.arange(len(labels[target]))
                    prob = model.predict_proba(images[target][idx])[:, 1]
                    truth = labels[target][idx]
                    rows.append({"source": source, "target": target, "fold": fold,
                                 "balanced_accuracy": float(balanced_accuracy_score(
                                     truth, (prob >= 0.5).astype(int))),
                                 "auc": float(roc_auc_score(truth, prob))
                                 if 0 < truth.sum() < truth.size else float("nan"),
                                 "n_train": int(len(tr)), "n_test": int(len(idx))})
                    preds.append(pd.DataFrame({
                        "source": source, "target": target, "fold": fold, "index": idx,
                        "y_true": truth, "prob": prob,
                        "image_id": table["image_id"].to_numpy()[data[target][idx]]}))
        return RunOutput(tables={"scores": pd.DataFrame(rows),
                                 "predictions": pd.concat(preds, ignore_index=True)})

    out = store.get_or_compute(config, compute)
    return {"scores": out.table("scores"), "predictions": out.table("predictions")}
