"""One training run of the experiments, cached in a results store.

- :func:`train_encoder`: one run (a loss, or the voxel-ridge baseline, on some images of a
  cohort), keyed by :func:`train_config` (its :class:`~brainkit.train.TrainConfig` and its
  images); its embeddings (or predicted ages) of every image of the cohort are stored with it.
- :func:`run_predictions`, :func:`run_embeddings`: what the designs read from a run.

The designs that combine runs (the paper's cross-validated pipeline, scaling, Table 3, the
gaps, transfer) are :mod:`brainkit.experiments.designs`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from .profiles import LOSSES, Profile, get_profile
from .store import ResultsStore, Run, RunOutput, default_store

__all__ = [
    "BASELINE",
    "LOSSES",
    "MODELS",
    "loss_kwargs",
    "train_config",
    "train_encoder",
    "run_embeddings",
    "run_predictions",
]

#: The classical baseline, trained by :func:`train_encoder` like a loss: ridge regression of
#: age on voxels (:class:`brainkit.eval.VoxelRidge`).
BASELINE = "ridge"
#: What a design compares: the baseline and every loss.
MODELS = (BASELINE,) + LOSSES
#: Principal components of the masked voxels kept as the baseline's "embedding" (site probe).
BASELINE_COMPONENTS = 64


def _digest(values) -> str:
    text = "\n".join(map(str, values))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def train_config(cohort, loss: str, train_idx, *, profile: Profile, seed: int) -> dict:
    """The store key of a training run: its :class:`~brainkit.train.TrainConfig`
    (:meth:`Profile.train_config`, under ``"config"``) and the images it trains on.

    ``loss``, ``n_train`` and ``seed`` are repeated at the top for queries
    (:func:`~brainkit.experiments.load_results` filters, ``brainkit results``).
    """
    if loss == BASELINE:
        return baseline_config(cohort, train_idx)
    train_idx = np.sort(np.asarray(train_idx, dtype=np.int64))
    ages = cohort.table["age"].to_numpy()[train_idx]
    # "brain" becomes the box on the cohort's grid: the key says what the network sees, so a
    # run cropped to another box (an older brainkit's narrower one) is never reused
    config = profile.train_config(loss, ages=ages, seed=seed).for_grid(cohort.grid_shape,
                                                                       cohort.affine)
    return {
        "kind": "train",
        "loss": loss,
        "config": config.to_dict(),
        "profile": profile.name,
        "cohort": cohort.content_hash,
        "train_images": _digest(cohort.table["image_id"].to_numpy()[train_idx]),
        "n_train": int(len(train_idx)),
        "seed": int(seed),
    }


def baseline_config(cohort, train_idx) -> dict:
    """The configuration that identifies a voxel-ridge run (no seed: it is deterministic)."""
    from ..eval.baseline import RELATIVE_ALPHAS

    train_idx = np.sort(np.asarray(train_idx, dtype=np.int64))
    return {
        "kind": "train",
        "loss": BASELINE,
        "model": {"kind": "voxel_ridge", "mask_fraction": 0.5, "standardize": False,
                  "cv": 5, "relative_alphas": [float(a) for a in RELATIVE_ALPHAS],
                  "components": BASELINE_COMPONENTS},
        "cohort": cohort.content_hash,
        "train_images": _digest(cohort.table["image_id"].to_numpy()[train_idx]),
        "n_train": int(len(train_idx)),
        "seed": 0,
    }


def _train_baseline(cohort, train_idx, store: ResultsStore) -> Run:
    from sklearn.decomposition import PCA

    from ..eval import VoxelRidge

    config = baseline_config(cohort, train_idx)
    train_idx = np.sort(np.asarray(train_idx, dtype=np.int64))

    def compute(_work: Path) -> RunOutput:
        table = cohort.table
        images = cohort.images(train_idx)
        model = VoxelRidge(cv=config["model"]["cv"]).fit(
            images, table["age"].to_numpy(dtype=float)[train_idx],
            groups=table["subject_id"].astype(str).to_numpy()[train_idx])
        k = min(BASELINE_COMPONENTS, len(train_idx) - 1)
        pca = PCA(n_components=k, random_state=0).fit(model._features(
            images.reshape(len(train_idx), -1).astype(np.float64)))
        ids = table["image_id"].to_numpy()
        preds, scores = [], []
        for start in range(0, len(cohort), 256):
            block = cohort.images(np.arange(start, min(start + 256, len(cohort))))
            preds.append(model.predict(block))
            scores.append(pca.transform(model._features(
                block.reshape(len(block), -1).astype(np.float64))))
        return RunOutput(
            tables={"age_pred": pd.DataFrame({"image_id": ids, "age_pred": np.concatenate(preds)}),
                    "embeddings": _embedding_table(ids, np.concatenate(scores))},
            info={"alpha": model.alpha_, "voxels": int(model.mask_.sum())})

    return store.get_or_compute(config, compute, hashes={"cohort": cohort.content_hash})


def train_encoder(cohort, loss: str, train_idx, *, profile: str | Profile | None = None,
                  seed: int = 0, store: ResultsStore | None = None, device: str | None = None,
                  progress: bool = False) -> Run:
    """Train (or load) one model and store its representation of every image.

    Parameters
    ----------
    cohort : brainkit.data.Cohort
    loss : {"ridge", "l1", "yaware", "threshold", "exp", "rnc", "adapn"}
        ``"ridge"``, the classical baseline, fits :class:`brainkit.eval.VoxelRidge` on the
        training images instead (the profile, seed and device do not apply).
    train_idx : array-like of int
        Training positions in the cohort.
    profile : str or Profile, optional
        Model and protocol (default: ``BRAINKIT_PROFILE`` or ``ci``).
    seed : int, default 0
        Seeds model initialisation, batch order and augmentations.
    store : ResultsStore, optional
        Default: :func:`~brainkit.experiments.store.default_store`.
    device : str, optional
        Default: the profile's (CUDA when available).
    progress : bool, default False
        Show the training progress bar.

    Returns
    -------
    Run
        Tables ``embeddings`` (``image_id``, ``z0`` ...: pooled encoder features, the
        representation the probes use), ``projection`` (contrastive runs: the L2-normalised
        projection-head output), ``age_pred`` (L1 runs: the regression head's age for every
        image), ``training`` (per-epoch metrics); file ``model`` (``config.json`` +
        ``checkpoint.pt``, see :func:`brainkit.train.load_model`).
    """
    from ..train import TrainConfig, embed_and_predict, train_run

    profile = get_profile(profile)
    store = store if store is not None else default_store()
    train_idx = np.asarray(train_idx, dtype=np.int64)
    if train_idx.size < 2:
        raise ValueError(f"train_idx holds {train_idx.size} image(s); a training run needs >= 2")
    if loss == BASELINE:
        return _train_baseline(cohort, train_idx, store)
    config = train_config(cohort, loss, train_idx, profile=profile, seed=seed)
    run_config = TrainConfig.from_dict(config["config"])
    dev = device or profile.resolved_device()

    def compute(work_dir: Path) -> RunOutput:
        result = train_run(cohort, run_config, indices=train_idx, out_dir=work_dir / "fit",
                           device=dev, resume=True, progress=progress)
        model = result.model
        ids = cohort.table["image_id"].to_numpy()
        tables = {"training": result.metrics}
        z, out = embed_and_predict(model, cohort, device=dev)   # one pass for both
        tables["embeddings"] = _embedding_table(ids, z)
        if loss == "l1":
            tables["age_pred"] = pd.DataFrame({"image_id": ids, "age_pred": out})
        else:
            tables["projection"] = _embedding_table(ids, out)
        return RunOutput(tables=tables, files={"model": work_dir / "fit"},
                         info={"device": str(dev), "epochs_completed": result.epochs_completed})

    return store.get_or_compute(config, compute, hashes={"cohort": cohort.content_hash})


def _embedding_table(ids, z: np.ndarray) -> pd.DataFrame:
    table = pd.DataFrame(np.asarray(z, dtype=np.float32),
                         columns=[f"z{i}" for i in range(z.shape[1])])
    table.insert(0, "image_id", ids)
    return table


def run_embeddings(run: Run, cohort, layer: str = "encoder") -> np.ndarray:
    """A run's stored embeddings, in the cohort's row order."""
    table = run.table("embeddings" if layer == "encoder" else layer)
    table = table.set_index("image_id").loc[cohort.table["image_id"]]
    return table.to_numpy(dtype=np.float64)


def run_predictions(run: Run, cohort, train_idx, *, layer: str = "encoder") -> np.ndarray:
    """Predicted age of every image of the cohort from one run.

    L1 runs use their regression head and the voxel ridge its own predictions; contrastive
    runs fit the age probe (:func:`brainkit.eval.age_probe`, ridge, alpha by 5-fold CV) on
    the training images' embeddings and apply it to all images.
    """
    from ..eval import age_probe

    if run.config["loss"] in ("l1", BASELINE):
        table = run.table("age_pred").set_index("image_id").loc[cohort.table["image_id"]]
        return table["age_pred"].to_numpy(dtype=np.float64)
    z = run_embeddings(run, cohort, layer)
    train_idx = np.asarray(train_idx, dtype=np.int64)
    probe = age_probe(z[train_idx], cohort.table["age"].to_numpy()[train_idx])
    return probe.predict(z)
