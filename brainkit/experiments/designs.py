"""The paper's experimental designs: each one plans the training runs it needs, then evaluates
them.

A design (:class:`Design`) is two steps, so that whoever trains the runs (the ready-made
functions below, a sweep on a cluster) trains exactly what the design evaluates:

- :meth:`Design.plan` ``(cohort, loss, seed, params, profile) -> [RunSpec]``: the training
  runs (loss, training images, seed), from the cohort's splits alone;
- :meth:`Design.evaluate` ``(cohort, runs, ...) -> Evaluation``: the tables and headline
  metrics, from the planned runs paired with their trained :class:`Run` (read from the store)
  and cached probes; it trains no encoder.

:data:`DESIGNS` holds the five designs by name: ``cross_validate`` (the paper's pipeline on
any cohort), ``scaling`` (Fig. 1), ``single_vs_merge`` (Table 3), ``heldout_gaps`` (Fig. 2)
and ``downstream`` (Table 4, Fig. 3). :func:`run_design` is plan -> train -> evaluate; the
ready-made functions (:func:`cross_validate`, :func:`scaling_sweep`, :func:`single_vs_merge`,
:func:`heldout_gaps`, :func:`downstream_transfer` and the book's variants) run it for each
loss and seed and stack the tables. Runs shared by several designs (the largest scaling size
*is* the merged run) are trained once: the store keys them by their configuration.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..data.splits import check_no_leakage, subject_kfold
from .challenge import challenge_metrics, challenge_predictions
from .cohorts import pretraining_split, scaling_subsets
from .pipeline import BASELINE, Run, run_predictions, train_config, train_encoder
from .parallel import train_runs
from .profiles import Profile, get_profile
from .store import ResultsStore, RunOutput, config_key, default_store

__all__ = [
    "RunSpec",
    "Evaluation",
    "Design",
    "DESIGNS",
    "run_design",
    "cross_validate",
    "single_vs_merge",
    "single_vs_merge_predictions",
    "scaling_sweep",
    "scaling_predictions",
    "book_scaling",
    "heldout_gaps",
    "downstream_transfer",
]


# ---------------------------------------------------------------------------- the protocol
@dataclass(frozen=True)
class RunSpec:
    """One training run a design needs: a loss trained on some images with a seed.

    Attributes
    ----------
    loss : str
        A loss of :data:`~brainkit.experiments.LOSSES` or the voxel baseline ``"ridge"``.
    indices : tuple of int
        Training positions in the cohort, sorted.
    seed : int
    """

    loss: str
    indices: tuple
    seed: int

    @classmethod
    def of(cls, loss: str, indices, seed: int) -> RunSpec:
        return cls(loss, tuple(int(i) for i in np.sort(np.asarray(indices, dtype=np.int64))),
                   int(seed))

    @property
    def n_train(self) -> int:
        return len(self.indices)

    def key(self, cohort, profile: Profile) -> str:
        """The run's results-store key."""
        return config_key(train_config(cohort, self.loss, np.asarray(self.indices),
                                       profile=profile, seed=self.seed))

    def train(self, cohort, *, profile: Profile, store: ResultsStore, device=None,
              progress: bool = False) -> Run:
        """Train (or load) the run (:func:`~brainkit.experiments.pipeline.train_encoder`)."""
        return train_encoder(cohort, self.loss, np.asarray(self.indices), profile=profile,
                             seed=self.seed, store=store, device=device, progress=progress)


@dataclass
class Evaluation:
    """What a design's evaluation returns: named tables and headline numbers."""

    tables: dict
    headline: dict = field(default_factory=dict)


class Design(ABC):
    """A design of the paper: its parameters, the runs it plans, how it evaluates them."""

    #: The name sweeps and grid files use.
    name: str = ""
    #: Parameter -> profile attribute (or a constant) giving its default.
    defaults: Mapping = {}

    def resolve(self, params: Mapping | None, profile: Profile) -> dict:
        """``params`` with every missing parameter set to its default for ``profile``."""
        out = dict(params or {})
        for key, default in self.defaults.items():
            if key not in out:
                out[key] = getattr(profile, default[1:]) if isinstance(default, str) \
                    and default.startswith("@") else default
        unknown = sorted(set(out) - set(self.defaults))
        if unknown:
            raise ValueError(f"design {self.name!r} takes no parameter(s) {unknown}; it takes "
                             f"{sorted(self.defaults)}")
        return out

    @abstractmethod
    def plan(self, cohort, loss: str, seed: int, params: Mapping,
             profile: Profile) -> list[RunSpec]:
        """The runs one (loss, seed) of the design needs, in the order ``evaluate`` reads."""

    @abstractmethod
    def evaluate(self, cohort, runs: Sequence[tuple[RunSpec, Run]], loss: str, seed: int,
                 params: Mapping, profile: Profile, store: ResultsStore,
                 device=None) -> Evaluation:
        """The design's tables and headline from its trained ``runs``."""


def run_design(design: str | Design, cohort, loss: str, *, seed: int = 0,
               params: Mapping | None = None, profile: str | Profile | None = None,
               store: ResultsStore | None = None, device: str | None = None,
               progress: bool = False) -> Evaluation:
    """Plan a design, train (or load) its runs, evaluate them.

    Parameters
    ----------
    design : str or Design
        A name of :data:`DESIGNS` or a design object.
    cohort : brainkit.data.Cohort
    loss : str
    seed : int, default 0
    params : mapping, optional
        The design's parameters (see each design); missing ones take the profile's default.
    profile, store, device, progress
        As :func:`~brainkit.experiments.pipeline.train_encoder`.

    Returns
    -------
    Evaluation
    """
    design = DESIGNS[design] if isinstance(design, str) else design
    profile = get_profile(profile)
    store = store if store is not None else default_store()
    params = design.resolve(params, profile)
    specs = design.plan(cohort, loss, seed, params, profile)
    runs = train_runs(cohort, specs, profile=profile, store=store, device=device,
                      progress=progress)
    return design.evaluate(cohort, list(zip(specs, runs)), loss, seed, params, profile, store,
                           device)


def _prefetch(design: str, cohort, combos, *, params, profile: Profile, store: ResultsStore,
              device) -> None:
    """Train every run the ``(loss, seed)`` combinations of a design need, side by side
    where :func:`~brainkit.experiments.parallel.train_runs` can, before each is evaluated."""
    design = DESIGNS[design]
    resolved = design.resolve(params, profile)
    specs = [spec for loss, seed in combos
             for spec in design.plan(cohort, loss, seed, resolved, profile)]
    train_runs(cohort, specs, profile=profile, store=store, device=device)


def _age_metrics(age, pred) -> dict:
    from ..eval import mae, pearson_r, r2

    return {"mae": mae(age, pred), "r2": r2(age, pred), "r": pearson_r(age, pred)}


def _gap_headline(frame: pd.DataFrame) -> dict:
    means = frame.groupby("diagnosis")["bag_corrected"].mean()
    return {f"bag_{dx}": float(v) for dx, v in means.items()}


def _per_group(frame: pd.DataFrame) -> pd.DataFrame:
    from ..eval import mae

    rows = []
    for (dataset, dx), g in frame.groupby(["dataset", "diagnosis"], sort=True):
        rows.append({"dataset": dataset, "diagnosis": dx, "n": len(g),
                     "mae": mae(g["age"], g["age_pred"]), "bag": float(g["bag"].mean()),
                     "bag_corrected": float(g["bag_corrected"].mean())})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------- the designs
class CrossValidate(Design):
    """The paper's brain-age pipeline on any cohort (see :func:`cross_validate`)."""

    name = "cross_validate"
    defaults = {"folds": "@folds", "correction": "beheshti"}

    def _splits(self, cohort, seed, params):
        table = cohort.table
        hc = np.flatnonzero(table["diagnosis"].to_numpy() == "HC")
        splits = subject_kfold(table, params["folds"], seed=seed, indices=hc)
        for train, test in splits:
            check_no_leakage(table, train, test)
        return splits

    def plan(self, cohort, loss, seed, params, profile):
        return [RunSpec.of(loss, train, seed) for train, _ in self._splits(cohort, seed, params)]

    def evaluate(self, cohort, runs, loss, seed, params, profile, store, device=None):
        from ..eval import crossfit_correct, mae, pearson_r

        table = cohort.table
        other = np.flatnonzero(table["diagnosis"].to_numpy() != "HC")
        age = table["age"].to_numpy(dtype=float)
        pred = np.full(len(table), np.nan)
        fold_of = np.full(len(table), -1, dtype=int)
        other_preds = []
        for k, ((train, test), (_, run)) in enumerate(zip(self._splits(cohort, seed, params),
                                                           runs)):
            p = run_predictions(run, cohort, train)
            pred[test] = p[test]
            fold_of[test] = k
            if other.size:
                other_preds.append(p[other])
        if other.size:
            pred[other] = np.mean(other_preds, axis=0)
        corrected = crossfit_correct(age, pred, fold_of, method=params["correction"])
        out = table.copy()
        out["loss"] = loss
        out["age_pred"] = pred
        out["fold"] = fold_of
        out["bag"] = pred - age
        out["bag_corrected"] = corrected - age
        hc = out[out["diagnosis"] == "HC"]
        headline = {"mae": mae(hc["age"], hc["age_pred"]),
                    "r": pearson_r(hc["age"], hc["age_pred"]), **_gap_headline(out)}
        return Evaluation({"predictions": out, "metrics": _per_group(out)}, headline)


class Scaling(Design):
    """Fig. 1: nested subsets of the merged pool, each with the OpenBHB challenge."""

    name = "scaling"
    defaults = {"train_sizes": "@train_sizes"}

    def plan(self, cohort, loss, seed, params, profile):
        split = pretraining_split(cohort, pool_sizes=profile.pool_sizes)
        if split.external.size == 0 or "openbhb" not in split.pools:
            raise ValueError("the scaling design needs an OpenBHB-like dataset with the "
                             "official split (train / internal_test / external_test) for the "
                             "challenge metrics")
        subsets = scaling_subsets(cohort, split, list(params["train_sizes"]))
        return [RunSpec.of(loss, s, seed) for s in subsets]

    def evaluate(self, cohort, runs, loss, seed, params, profile, store, device=None):
        split = pretraining_split(cohort, pool_sizes=profile.pool_sizes)
        table = cohort.table
        rows, frames = [], []
        for spec, run in runs:
            subset = np.asarray(spec.indices)
            about = {"loss": loss, "n_train": len(subset), "seed": seed,
                     "n_sites": table["site"].iloc[subset].nunique(),
                     "n_datasets": table["dataset"].iloc[subset].nunique()}
            rows.append({**about, **challenge_metrics(run, cohort, split, store=store)})
            frames.append(challenge_predictions(run, cohort, split, store=store).assign(**about))
        metrics = pd.DataFrame(rows)
        last = metrics.loc[metrics["n_train"].idxmax()]
        headline = {k: float(last[k]) for k in ("mae_int", "mae_ext", "bacc", "score")}
        preds = pd.concat(frames, ignore_index=True)
        front = ["loss", "n_train", "seed", "n_sites", "n_datasets"]
        preds = preds[front + [c for c in preds.columns if c not in front]]
        return Evaluation({"metrics": metrics, "predictions": preds}, headline)


class SingleVsMerge(Design):
    """Table 3: each dataset alone ("single") vs the merged healthy pool ("merge")."""

    name = "single_vs_merge"
    defaults = {"single_datasets": None}

    def _pools(self, cohort, params, profile, seed=None):
        """The split and the single-dataset pools (none for a seed that trains no singles:
        :meth:`Profile.trains_singles`)."""
        split = pretraining_split(cohort, pool_sizes=profile.pool_sizes)
        chosen = params.get("single_datasets")
        if chosen is not None:
            missing = sorted(set(chosen) - set(split.pools))
            if missing:
                raise ValueError(f"single_datasets: {missing} not in the cohort's datasets "
                                 f"{sorted(split.pools)}")
        if seed is not None and not profile.trains_singles(seed):
            return split, []
        return split, [(name, pool) for name, pool in split.pools.items()
                       if chosen is None or name in chosen]

    def plan(self, cohort, loss, seed, params, profile):
        split, singles = self._pools(cohort, params, profile, seed)
        return [RunSpec.of(loss, pool, seed) for _, pool in singles] + \
            [RunSpec.of(loss, split.merged, seed)]

    def evaluate(self, cohort, runs, loss, seed, params, profile, store, device=None):
        split, singles = self._pools(cohort, params, profile, seed)
        table = cohort.table
        age = table["age"].to_numpy(dtype=float)
        rows, frames = [], []
        models = [("single", name, pool) for name, pool in singles] + \
            [("merge", None, split.merged)]
        for (scheme, dataset, pool), (_, run) in zip(models, runs):
            pred = run_predictions(run, cohort, pool)
            for name in ([dataset] if scheme == "single" else list(split.tests)):
                test = split.tests[name]
                rows.append({"loss": loss, "scheme": scheme, "dataset": name, "seed": seed,
                             "n_train": len(pool), "n_test": len(test),
                             **_age_metrics(age[test], pred[test])})
                frames.append(pd.DataFrame({
                    "loss": loss, "scheme": scheme, "dataset": name, "seed": seed,
                    "n_train": len(pool), "image_id": table["image_id"].to_numpy()[test],
                    "subject_id": table["subject_id"].astype(str).to_numpy()[test],
                    "age": age[test], "age_pred": pred[test]}))
            if split.external.size and (scheme == "merge" or dataset == "openbhb"):
                rows.append({"loss": loss, "scheme": scheme, "dataset": "challenge",
                             "seed": seed, "n_train": len(pool),
                             **challenge_metrics(run, cohort, split, store=store)})
        metrics = pd.DataFrame(rows)
        metrics["_scheme"] = (metrics["scheme"] == "merge").astype(int)
        metrics = metrics.sort_values(["dataset", "_scheme"], kind="stable",
                                      ignore_index=True).drop(columns="_scheme")
        ages = metrics[metrics["dataset"] != "challenge"]
        headline = {f"mae_{scheme}": float(g["mae"].mean())
                    for scheme, g in ages.groupby("scheme")}
        challenge = metrics[(metrics["dataset"] == "challenge") & (metrics["scheme"] == "merge")]
        if len(challenge):
            headline.update(bacc=float(challenge["bacc"].iloc[0]),
                            score=float(challenge["score"].iloc[0]))
        return Evaluation({"metrics": metrics,
                           "predictions": pd.concat(frames, ignore_index=True)}, headline)


class HeldoutGaps(Design):
    """Fig. 2: gaps of held-out healthy controls and of every patient (merged-pool model)."""

    name = "heldout_gaps"
    defaults = {"correction": "beheshti"}

    def plan(self, cohort, loss, seed, params, profile):
        split = pretraining_split(cohort, pool_sizes=profile.pool_sizes)
        return [RunSpec.of(loss, split.merged, seed)]

    def evaluate(self, cohort, runs, loss, seed, params, profile, store, device=None):
        from ..eval import crossfit_correct, mae

        split = pretraining_split(cohort, pool_sizes=profile.pool_sizes)
        table = cohort.table
        age = table["age"].to_numpy(dtype=float)
        healthy = np.sort(np.concatenate(list(split.tests.values())))
        patients = np.flatnonzero(table["diagnosis"].to_numpy() != "HC")
        rows = np.sort(np.concatenate([healthy, patients]))
        folds = np.full(len(table), -1)
        for k, (_, half) in enumerate(subject_kfold(table, 2, seed=0, indices=healthy)):
            folds[half] = k
        pred = run_predictions(runs[0][1], cohort, split.merged)
        corrected = crossfit_correct(age[rows], pred[rows], folds[rows],
                                     method=params["correction"])
        out = table.iloc[rows].copy()
        out["loss"] = loss
        out["seed"] = seed
        out["age_pred"] = pred[rows]
        out["bag"] = pred[rows] - age[rows]
        out["bag_corrected"] = corrected - age[rows]
        hc = out[out["diagnosis"] == "HC"]
        headline = {"mae": mae(hc["age"], hc["age_pred"]), **_gap_headline(out)}
        return Evaluation({"gaps": out, "metrics": _per_group(out)}, headline)


class Downstream(Design):
    """Table 4, Fig. 3: fine-tune an encoder pre-trained on one dataset for HC vs AD."""

    name = "downstream"
    defaults = {"datasets": ("adni", "oasis3"), "pretrain_dataset": "openbhb",
                "folds": "@folds", "epochs": "@finetune_epochs", "lr": "@finetune_lr"}

    def _data(self, cohort, params, profile):
        split = pretraining_split(cohort, pool_sizes=profile.pool_sizes)
        if params["pretrain_dataset"] not in split.pools:
            raise ValueError(f"pretrain_dataset: the cohort has no {params['pretrain_dataset']!r}"
                             f" healthy controls to pretrain on (datasets: "
                             f"{sorted(split.pools)})")
        table = cohort.table
        data = {}
        for name in params["datasets"]:
            rows = np.flatnonzero((table["dataset"].to_numpy() == name)
                                  & table["diagnosis"].isin(["HC", "AD"]).to_numpy())
            if rows.size == 0:
                raise ValueError(f"datasets: the cohort has no HC/AD images of {name!r}")
            data[name] = rows
        return split, data

    def plan(self, cohort, loss, seed, params, profile):
        split, _ = self._data(cohort, params, profile)
        if loss == BASELINE:
            return []                 # the voxel baseline fits on the fine-tuning folds
        return [RunSpec.of(loss, split.pools[params["pretrain_dataset"]], seed)]

    def evaluate(self, cohort, runs, loss, seed, params, profile, store, device=None):
        _, data = self._data(cohort, params, profile)
        if loss == BASELINE:
            result = _voxel_transfer(cohort, data, folds=params["folds"], seed=seed,
                                     store=store)
        else:
            result = _finetune(cohort, runs[0][1], data, params, profile, seed, store, device)
        scores = result["scores"].assign(loss=loss)
        scores = scores[["loss", *[c for c in scores.columns if c != "loss"]]]
        preds = result["predictions"].assign(loss=loss)
        preds = preds[["loss", *[c for c in preds.columns if c != "loss"]]]
        subject = dict(zip(cohort.table["image_id"], cohort.table["subject_id"].astype(str)))
        preds["subject_id"] = preds["image_id"].map(subject)
        within = scores["source"] == scores["target"]
        headline = {"bacc_within": float(scores.loc[within, "balanced_accuracy"].mean())}
        if (~within).any():
            headline["bacc_across"] = float(scores.loc[~within, "balanced_accuracy"].mean())
        return Evaluation({"scores": scores, "predictions": preds}, headline)


def _finetune(cohort, run, data, params, profile, seed, store, device) -> dict:
    """Fine-tune the run's encoder (:func:`brainkit.eval.transfer_matrix`), cached."""
    import torch

    from ..eval import transfer_matrix
    from ..train import load_model

    dev = device or profile.resolved_device()
    table = cohort.table
    config = {"kind": "finetune", "pretrained": run.key, "datasets": list(params["datasets"]),
              "folds": params["folds"], "epochs": params["epochs"], "lr": params["lr"],
              "batch_size": profile.batch_size, "seed": seed, "cohort": cohort.content_hash}

    def compute(work_dir):
        model = load_model(run.file("model"), device=dev)
        torch.manual_seed(seed)
        inputs = {name: (cohort.images(rows),
                         (table["diagnosis"].to_numpy()[rows] == "AD").astype(int),
                         table["subject_id"].to_numpy()[rows])
                  for name, rows in data.items()}
        result = transfer_matrix(model.encoder, inputs, epochs=params["epochs"],
                                 lr=params["lr"], batch_size=profile.batch_size, device=dev,
                                 seed=seed, folds=params["folds"])
        predictions = result.predictions.copy()
        for name, rows in data.items():  # positions in each dataset -> image ids
            mask = predictions["target"] == name
            predictions.loc[mask, "image_id"] = table["image_id"].to_numpy()[
                rows[predictions.loc[mask, "index"].to_numpy(dtype=int)]]
        return RunOutput(tables={"scores": result.table, "predictions": predictions})

    out = store.get_or_compute(config, compute)
    return {"scores": out.table("scores"), "predictions": out.table("predictions")}


#: The designs by name.
DESIGNS: dict[str, Design] = {d.name: d for d in (CrossValidate(), Scaling(), SingleVsMerge(),
                                                    HeldoutGaps(), Downstream())}


# ---------------------------------------------------------------------------- ready-made
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


def _stack(design: str, table: str, cohort, losses, *, seed, seeds, params, profile, store,
           device, progress=False) -> pd.DataFrame:
    """``run_design`` for every loss and seed; the named table of each, stacked."""
    profile = get_profile(profile)
    store = store if store is not None else default_store()
    combos = [(loss, s) for loss in losses for s in _seed_list(seed, seeds, loss)]
    _prefetch(design, cohort, combos, params=params, profile=profile, store=store,
              device=device)
    frames = [run_design(design, cohort, loss, seed=s, params=params, profile=profile,
                         store=store, device=device, progress=progress).tables[table]
              for loss, s in combos]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _given(**params) -> dict:
    return {k: v for k, v in params.items() if v is not None}


def cross_validate(cohort, loss: str, *, folds: int | None = None,
                   profile: str | Profile | None = None, seed: int = 0,
                   store: ResultsStore | None = None, correction: str = "beheshti",
                   device: str | None = None, progress: bool = False) -> pd.DataFrame:
    """The paper's brain-age pipeline on any cohort (the ``cross_validate`` design).

    Subject-level, age-stratified folds over healthy controls (HC); one model trained per fold
    on the other folds' HC images; age from the embeddings by the ridge probe (or the
    regression head for L1). Every HC image gets an out-of-fold prediction; every non-HC image
    gets the mean of the fold models' predictions (models trained on HC only). The bias
    correction (:func:`brainkit.eval.crossfit_correct`) of a fold's test images is fitted on
    the *other* folds' out-of-fold HC predictions, and for non-HC images on all out-of-fold HC
    predictions: it never sees the images it corrects.

    Parameters
    ----------
    cohort : brainkit.data.Cohort
        Needs at least ``folds`` healthy subjects.
    loss : {"ridge", "l1", "yaware", "threshold", "exp", "rnc", "adapn"}
    folds : int, optional
        Default: the profile's (5 in the paper).
    profile, seed, store, device, progress
        As :func:`~brainkit.experiments.pipeline.train_encoder`; ``seed`` also draws the folds.
    correction : {"beheshti", "cole"}, default "beheshti"

    Returns
    -------
    pandas.DataFrame
        The cohort table plus ``loss``, ``age_pred``, ``fold`` (test fold of an HC image; -1
        for non-HC images, predicted by every fold's model), ``bag`` (= age_pred - age) and
        ``bag_corrected``.
    """
    return run_design("cross_validate", cohort, loss, seed=seed,
                      params=_given(folds=folds, correction=correction), profile=profile,
                      store=store, device=device, progress=progress).tables["predictions"]


def single_vs_merge(cohort, losses: Sequence[str], *, profile: str | Profile | None = None,
                    seed: int = 0, seeds: Sequence[int] | Mapping | None = None,
                    store: ResultsStore | None = None, device: str | None = None,
                    single_datasets: Sequence[str] | None = None) -> pd.DataFrame:
    """Table 3: "single" (trained and tested on each dataset) vs "merge" (trained on all).

    ``single_datasets`` limits the "single" runs to some datasets (default: all); the
    challenge rows need ``"openbhb"`` among them. ``seeds`` (default ``[seed]``; a list or a
    mapping loss -> list) trains every model once per seed.

    Returns
    -------
    pandas.DataFrame
        One row per (loss, scheme, dataset, seed) with ``mae``, ``r2``, ``r``, ``n_train``,
        ``n_test``; rows with ``dataset == "challenge"`` hold the OpenBHB challenge metrics
        (``bacc``, ``mae_int``, ``mae_ext``, ``score``) of the OpenBHB-trained ("single")
        and merged models.
    """
    return _stack("single_vs_merge", "metrics", cohort, losses, seed=seed, seeds=seeds,
                  params=_given(single_datasets=single_datasets), profile=profile,
                  store=store, device=device)


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
    return _stack("single_vs_merge", "predictions", cohort, losses, seed=seed, seeds=seeds,
                  params=_given(single_datasets=single_datasets), profile=profile,
                  store=store, device=device)


def scaling_sweep(cohort, losses: Sequence[str], train_sizes: Sequence[int] | None = None, *,
                  profile: str | Profile | None = None, seed: int = 0,
                  seeds: Sequence[int] | Mapping | None = None,
                  store: ResultsStore | None = None, device: str | None = None) -> pd.DataFrame:
    """Fig. 1: train on nested subsets of the merged healthy pool and run the challenge.

    The subsets are :func:`~brainkit.experiments.cohorts.scaling_subsets`: the largest is
    the whole pool, so its runs are the "merge" runs of :func:`single_vs_merge`. ``seeds``
    (default ``[seed]``) trains each subset once per seed.

    Returns
    -------
    pandas.DataFrame
        One row per (loss, size, seed): ``n_train``, ``seed``, ``n_sites``, ``n_datasets``
        (diversity of the training subset), ``bacc``, ``mae_int``, ``mae_ext``, ``score``,
        ``bacc_chance``, ``n_internal``, ``n_external``.
    """
    return _stack("scaling", "metrics", cohort, losses, seed=seed, seeds=seeds,
                  params=_given(train_sizes=train_sizes), profile=profile, store=store,
                  device=device)


def scaling_predictions(cohort, losses: Sequence[str], train_sizes: Sequence[int] | None = None,
                        *, profile: str | Profile | None = None, seed: int = 0,
                        seeds: Sequence[int] | Mapping | None = None,
                        store: ResultsStore | None = None, device: str | None = None
                        ) -> pd.DataFrame:
    """The per-image predictions behind :func:`scaling_sweep` (same runs, read back).

    Returns
    -------
    pandas.DataFrame
        :func:`~brainkit.experiments.challenge.challenge_predictions` of every run, with
        ``loss``, ``n_train``, ``seed``, ``n_sites`` and ``n_datasets`` in front.
    """
    return _stack("scaling", "predictions", cohort, losses, seed=seed, seeds=seeds,
                  params=_given(train_sizes=train_sizes), profile=profile, store=store,
                  device=device)


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
    return _stack("heldout_gaps", "gaps", cohort, losses, seed=seed, seeds=seeds,
                  params={"correction": correction}, profile=profile, store=store,
                  device=device)


def downstream_transfer(cohort, losses: Sequence[str], *,
                        datasets: Sequence[str] = ("adni", "oasis3"),
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
    params = _given(datasets=tuple(datasets), pretrain_dataset=pretrain_dataset, folds=folds,
                    epochs=epochs, lr=lr)
    profile = get_profile(profile)
    store = store if store is not None else default_store()
    _prefetch("downstream", cohort, [(loss, seed) for loss in losses], params=params,
              profile=profile, store=store, device=device)
    out = [run_design("downstream", cohort, loss, seed=seed, params=params, profile=profile,
                      store=store, device=device) for loss in losses]
    return {"scores": pd.concat([e.tables["scores"] for e in out], ignore_index=True),
            "predictions": pd.concat([e.tables["predictions"] for e in out],
                                     ignore_index=True)}


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
                                                           class_weight="balanced",
                                                           scoring="accuracy"))
                with warnings.catch_warnings():
                    # scikit-learn >= 1.9 announces default changes (l1_ratios, fitted
                    # attributes) that do not change this l2 fit; a notebook would show them.
                    warnings.simplefilter("ignore", FutureWarning)
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
