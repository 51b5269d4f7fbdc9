"""A trained run made ready for new scans: readout, bias correction and intervals, saved.

:meth:`BrainAgeModel.calibrate` takes a run (a folder written by
:func:`brainkit.train.train_run` / ``brainkit train``), its training cohort, the training rows
and **held-out healthy controls** the run never trained on
(:func:`brainkit.data.calibration_split`), and fits, once:

- the age readout: an L1 run predicts age with its regression head; a contrastive run's
  encoder features get a ridge regression fitted on its training images (alpha by 5-fold CV,
  :func:`brainkit.eval.age_probe`), stored as coefficients;
- the bias corrections on the held-out controls' predictions: Beheshti and Cole
  (:class:`~brainkit.eval.AgeBiasCorrector`) and, when the table has the columns, the
  covariate adjustment (:class:`~brainkit.eval.CovariateCorrector`, age, age^2, sex; site and
  TIV on request);
- split-conformal prediction intervals on the held-out controls
  (:class:`~brainkit.eval.ConformalInterval`, binned by predicted age when there are at least
  80 controls);
- a QC reference: the training images' mean, and how well held-out images correlate with it.

It writes everything to ``brainage.json`` (and ``brainage_mean.npy``) in the run folder: the
held-out image ids are listed, never the training images. :meth:`BrainAgeModel.load` reads it
back and :meth:`BrainAgeModel.predict` applies exactly that readout, correction and interval
to any cohort on the run's grid; :meth:`BrainAgeModel.predict_bids` to a BIDS folder (images
resampled onto the run's grid; ages optional). ``brainkit predict`` is the command.

Output columns (:data:`PREDICTION_COLUMNS`): ``participant_id``, ``session_id``,
``image_id``, ``age`` (NaN when unknown), ``predicted_age``, ``bag`` (uncorrected, always
reported), ``bag_corrected``, ``interval_low`` / ``interval_high`` (on the chronological age,
from the uncorrected prediction), ``qc`` (``ok`` or ``;``-joined flags: :data:`QC_FLAGS`), then
``subject_id``, ``sex``, ``site``, ``diagnosis`` when known, and ``years_from_baseline``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .._util import atomic_path
from ..errors import InputError, MissingFileError
from .bag import AgeBiasCorrector, CovariateCorrector
from .intervals import ConformalInterval

__all__ = ["BRAINAGE_NAME", "CORRECTIONS", "PREDICTION_COLUMNS", "QC_FLAGS", "BrainAgeModel",
           "write_predictions"]

BRAINAGE_NAME = "brainage.json"
MEAN_IMAGE_NAME = "brainage_mean.npy"
#: Bias corrections ``predict`` can apply.
CORRECTIONS: tuple[str, ...] = ("beheshti", "cole", "covariates")
PREDICTION_COLUMNS: tuple[str, ...] = (
    "participant_id", "session_id", "image_id", "age", "predicted_age", "bag",
    "bag_corrected", "interval_low", "interval_high", "qc")
#: What a ``qc`` flag means.
QC_FLAGS: dict[str, str] = {
    "no-age": "age unknown: no gap, no corrected gap",
    "age-outside-calibration": "age outside the held-out controls' age range: the bias "
                               "correction extrapolates",
    "prediction-outside-calibration": "predicted age outside the held-out controls' "
                                      "predictions: the interval's bin is extrapolated",
    "atypical-image": "the image correlates with the training images' mean less than any "
                      "plausible held-out image (another contrast, a failed registration or "
                      "skull-stripping?)",
    "site-not-in-calibration": "the covariate correction's site term has no offset for "
                               "this site (average site used)",
}
_FORMAT = 1
_CHUNK = 64


def _digest(indices: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(indices, dtype=np.int64).tobytes()).hexdigest()


def _config_hash(config: dict) -> str:
    if "train" in config:
        from ..train import TrainConfig

        return TrainConfig.from_dict(config["train"]).key()
    text = json.dumps(config, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _is_regression(model) -> bool:
    from ..models import RegressionModel
    from ..train.inference import unwrap_model

    return isinstance(unwrap_model(model), RegressionModel)


def _mean_image(cohort, rows: np.ndarray) -> np.ndarray:
    total = None
    for start in range(0, len(rows), _CHUNK):
        chunk = np.asarray(cohort.images(rows[start:start + _CHUNK]), dtype=np.float64)
        part = chunk.reshape(len(chunk), -1).sum(0)
        total = part if total is None else total + part
    return (total / len(rows)).reshape(cohort.grid_shape).astype(np.float32)


def _correlations(cohort, rows: np.ndarray, mean: np.ndarray) -> np.ndarray:
    ref = mean.ravel().astype(np.float64)
    ref = (ref - ref.mean()) / (ref.std() + 1e-12)
    out = []
    for start in range(0, len(rows), _CHUNK):
        chunk = np.asarray(cohort.images(rows[start:start + _CHUNK]), dtype=np.float64)
        flat = chunk.reshape(len(chunk), -1)
        flat = (flat - flat.mean(1, keepdims=True)) / (flat.std(1, keepdims=True) + 1e-12)
        out.append(flat @ ref / ref.size)
    return np.concatenate(out) if out else np.zeros(0)


class BrainAgeModel:
    """A run with its age readout, bias corrections and intervals (``brainage.json``).

    Build one with :meth:`calibrate` (fits and saves) or :meth:`load` (reads a saved one).

    Attributes
    ----------
    run_dir : pathlib.Path
    correction : str
        The correction :meth:`predict` applies by default (one of :data:`CORRECTIONS`).
    correctors : dict
        Name -> fitted corrector (``beheshti``, ``cole`` and, when fitted, ``covariates``).
    interval : ConformalInterval
    calibration : dict
        What the calibration was fitted on: held-out image ids, their number and subjects,
        age and prediction ranges, the held-out MAE (uncorrected), the run's config hash.
    """

    def __init__(self, run_dir, *, readout, correctors, correction, interval, calibration,
                 qc, model=None):
        self.run_dir = Path(run_dir)
        self.readout = readout
        self.correctors = correctors
        self.correction = correction
        self.interval = interval
        self.calibration = calibration
        self.qc = qc
        self._model = model
        self._mean = None

    # ----------------------------------------------------------------- building one
    @classmethod
    def calibrate(cls, run_dir, cohort, held_out, *, train=None, correction: str = "beheshti",
                  covariates: Sequence[str] = ("age", "age2", "sex"), coverage: float = 0.95,
                  device=None, batch_size: int = 32) -> BrainAgeModel:
        """Fit the readout, corrections and intervals of ``run_dir`` and save them.

        Parameters
        ----------
        run_dir : path-like
            A trained run.
        cohort : brainkit.data.Cohort
            The cohort the run trained on (its content hash is checked).
        held_out : array-like of int
            Rows of healthy controls the run did not train on (whole subjects).
        train : array-like of int, optional
            The run's training rows (checked against the run's record). Needed for a
            contrastive run (its readout is fitted on them); for an L1 run they are only
            checked for overlap when given.
        correction : {"beheshti", "cole", "covariates"}, default "beheshti"
            What :meth:`predict` applies by default (all fitted ones are saved).
        covariates : sequence of str, default ("age", "age2", "sex")
            Terms of the covariate adjustment (:class:`CovariateCorrector`).
        coverage : float, default 0.95
            Nominal coverage of the prediction intervals.
        device, batch_size
            Inference settings (default device: CUDA when available).

        Returns
        -------
        BrainAgeModel
            Saved as ``brainage.json`` in ``run_dir``.
        """
        from ..train import load_model, read_run_config

        if correction not in CORRECTIONS:
            raise InputError(f"correction must be one of {CORRECTIONS}; got {correction!r}")
        run_dir = Path(run_dir)
        config = read_run_config(run_dir)
        data = config.get("data") or {}
        if data.get("cohort_hash") not in (None, cohort.content_hash):
            raise InputError(f"{run_dir} was trained on another cohort (content hash "
                             f"{str(data.get('cohort_hash'))[:12]}..., this one "
                             f"{cohort.content_hash[:12]}...): calibrate on its own cohort "
                             "and held-out rows")
        table = cohort.table
        held = np.unique(np.asarray(held_out, dtype=np.int64))
        if held.size == 0 or held.min() < 0 or held.max() >= len(table):
            raise InputError(f"held_out must be rows of the cohort (0..{len(table) - 1})")
        not_hc = table["diagnosis"].to_numpy()[held] != "HC"
        if not_hc.any():
            raise InputError(f"held_out holds {int(not_hc.sum())} image(s) that are not healthy "
                             "controls; the correction and intervals are fitted on controls")
        model = load_model(run_dir, device=device)
        regression = _is_regression(model)
        train_rows = None
        if train is not None:
            train_rows = np.sort(np.asarray(train, dtype=np.int64))
            saved = data.get("train_indices_sha256")
            if saved is not None and saved != _digest(train_rows):
                raise InputError(f"train: these are not the rows {run_dir} trained on "
                                 "(their digest differs from config.json's)")
            overlap = np.intersect1d(train_rows, held)
            if overlap.size:
                raise InputError(f"held_out shares {overlap.size} row(s) with the training "
                                 "rows: calibrate on images the run never saw")
            subjects = table["subject_id"].to_numpy()
            shared = set(subjects[train_rows]) & set(subjects[held])
            if shared:
                raise InputError(f"held_out shares {len(shared)} subject(s) with the training "
                                 f"rows (e.g. {sorted(shared)[:3]}): hold out whole subjects")
        elif not regression:
            raise InputError("train: a contrastive run's age readout is fitted on its "
                             "training rows; pass them")

        readout = None
        if not regression:
            from ..train import embed
            from .probes import age_probe

            z = embed(model, cohort, train_rows, batch_size=batch_size)
            probe = age_probe(z, table["age"].to_numpy(dtype=float)[train_rows])
            est = probe.estimator
            readout = {"kind": "ridge", "layer": "encoder", "alpha": float(probe.best_param),
                       "coef": [float(c) for c in np.ravel(est.coef_)],
                       "intercept": float(est.intercept_), "n_train": int(len(train_rows))}
        out = cls(run_dir, readout=readout, correctors={}, correction=correction,
                  interval=None, calibration={}, qc={}, model=model)
        age = table["age"].to_numpy(dtype=float)[held]
        pred = out._predicted_age(cohort, held, batch_size=batch_size)

        correctors = {"beheshti": AgeBiasCorrector("beheshti").fit(age, pred),
                      "cole": AgeBiasCorrector("cole").fit(age, pred)}
        try:
            correctors["covariates"] = CovariateCorrector(covariates).fit(
                age, pred, table.iloc[held].reset_index(drop=True))
        except ValueError as err:
            if correction == "covariates":
                raise InputError(f"covariate correction {list(covariates)}: {err}") from None
        n = len(held)
        if n < 19:
            raise InputError(f"{n} held-out controls are too few for {coverage:.0%} intervals "
                             "(at least 19; hold out more healthy subjects)")
        method = "binned" if n >= 80 else "absolute"
        interval = ConformalInterval(coverage, method=method, min_bin_size=max(40, n // 4))
        interval.fit(age, pred)

        train_for_mean = train_rows if train_rows is not None else np.setdiff1d(
            np.arange(len(table)), held)
        mean = _mean_image(cohort, train_for_mean)
        corr = _correlations(cohort, held, mean)
        median = float(np.median(corr))
        spread = float(1.4826 * np.median(np.abs(corr - median)))
        threshold = min(float(corr.min()), median - 6.0 * max(spread, 1e-3))

        out.correctors = correctors
        out.interval = interval
        out.qc = {"mean_image": MEAN_IMAGE_NAME, "correlation_threshold": threshold,
                  "held_out_correlation": {"min": float(corr.min()), "median": median}}
        out.calibration = {
            "config_hash": _config_hash(config),
            "cohort_hash": cohort.content_hash,
            "n_images": int(n),
            "n_subjects": int(table["subject_id"].iloc[held].nunique()),
            "image_ids": table["image_id"].iloc[held].astype(str).tolist(),
            "age_range": [float(age.min()), float(age.max())],
            "prediction_range": [float(pred.min()), float(pred.max())],
            "mae": float(np.mean(np.abs(pred - age))),
            "coverage": float(coverage),
            "interval_method": method,
            "coverage_on_calibration": interval.empirical_coverage(age, pred),
        }
        out._mean = mean
        out.save()
        return out

    # ----------------------------------------------------------------- files
    def to_dict(self) -> dict:
        """What ``brainage.json`` holds."""
        from .. import __version__

        return {"format": _FORMAT, "brainkit_version": __version__,
                "readout": self.readout, "correction": self.correction,
                "corrections": {k: c.to_dict() for k, c in self.correctors.items()},
                "interval": self.interval.to_dict(), "calibration": self.calibration,
                "qc": self.qc}

    def save(self) -> Path:
        """Write ``brainage.json`` (and the QC mean image) into the run folder, atomically."""
        if self._mean is not None:
            with atomic_path(self.run_dir / MEAN_IMAGE_NAME) as tmp:
                with open(tmp, "wb") as fh:
                    np.save(fh, self._mean)
        path = self.run_dir / BRAINAGE_NAME
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, run_dir, *, device=None) -> BrainAgeModel:
        """Read the calibration saved in ``run_dir`` (the model loads on first use)."""
        run_dir = Path(run_dir)
        path = run_dir / BRAINAGE_NAME
        if not path.is_file():
            raise MissingFileError(
                f"{run_dir} has no {BRAINAGE_NAME}: the run is not calibrated (train with "
                "`brainkit train --hold-out 0.2`, or call BrainAgeModel.calibrate with held-out "
                "healthy controls)")
        try:
            state = json.loads(path.read_text())
            correctors = {}
            for name, c in state["corrections"].items():
                correctors[name] = (CovariateCorrector.from_dict(c) if name == "covariates"
                                    else AgeBiasCorrector.from_dict(c))
            out = cls(run_dir, readout=state["readout"], correctors=correctors,
                      correction=state["correction"],
                      interval=ConformalInterval.from_dict(state["interval"]),
                      calibration=state["calibration"], qc=state["qc"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise InputError(f"{path}: not a brainkit calibration ({err!r})") from None
        out._device = device
        return out

    @property
    def model(self):
        if self._model is None:
            from ..train import load_model

            self._model = load_model(self.run_dir, device=getattr(self, "_device", None))
        return self._model

    @property
    def mean_image(self) -> np.ndarray | None:
        if self._mean is None:
            path = self.run_dir / self.qc.get("mean_image", MEAN_IMAGE_NAME)
            self._mean = np.load(path) if path.is_file() else None
        return self._mean

    # ----------------------------------------------------------------- predicting
    def _predicted_age(self, cohort, rows, *, batch_size: int = 32) -> np.ndarray:
        from ..train import embed, predict_age

        if self.readout is None:
            return predict_age(self.model, cohort, rows, batch_size=batch_size)
        z = embed(self.model, cohort, rows, batch_size=batch_size,
                  layer=self.readout.get("layer", "encoder")).astype(np.float64)
        coef = np.asarray(self.readout["coef"], dtype=np.float64)
        if z.shape[1] != coef.size:
            raise InputError(f"{self.run_dir / BRAINAGE_NAME}: the readout has {coef.size} "
                             f"coefficients for {z.shape[1]} features")
        return z @ coef + float(self.readout["intercept"])

    def predict(self, cohort, indices=None, *, correction: str | None = None,
                age_known=None, batch_size: int = 32) -> pd.DataFrame:
        """Predicted ages, gaps, corrected gaps, intervals and QC flags, one row per image.

        Parameters
        ----------
        cohort : brainkit.data.Cohort
            On the run's grid (refused otherwise).
        indices : array-like of int, optional
            Rows to predict (default all).
        correction : str, optional
            One of :data:`CORRECTIONS` (default: the calibrated default).
        age_known : array-like of bool, optional
            Per row of ``cohort``: whether its ``age`` is real (``False`` rows get no gap).

        Returns
        -------
        pandas.DataFrame
            :data:`PREDICTION_COLUMNS`, then ``subject_id``, ``sex``, ``site``, ``diagnosis``
            and ``years_from_baseline`` (for the longitudinal model).
        """
        correction = self.correction if correction is None else correction
        if correction not in self.correctors:
            raise InputError(f"correction {correction!r} is not calibrated in "
                             f"{self.run_dir / BRAINAGE_NAME} (have {sorted(self.correctors)})")
        table = cohort.table
        rows = (np.arange(len(table)) if indices is None
                else np.asarray(indices, dtype=np.int64))
        part = table.iloc[rows].reset_index(drop=True)
        known = (np.ones(len(table), bool) if age_known is None
                 else np.asarray(age_known, dtype=bool))[rows]
        pred = self._predicted_age(cohort, rows, batch_size=batch_size)
        age = np.where(known, part["age"].to_numpy(dtype=float), np.nan)
        bag = pred - age
        corrector = self.correctors[correction]
        flags: list[list[str]] = [[] for _ in rows]
        corrected = np.full(len(rows), np.nan)
        if known.any():
            k = np.flatnonzero(known)
            if correction == "covariates":
                if "site" in corrector.terms:
                    unseen = ~part["site"].astype(str).isin(corrector.sites_).to_numpy()
                    for i in np.flatnonzero(unseen & known):
                        flags[i].append("site-not-in-calibration")
                corrected_age = corrector.correct(age[k], pred[k], part.iloc[k])
            else:
                corrected_age = corrector.correct(age[k], pred[k])
            corrected[k] = corrected_age - age[k]
        low, high = self.interval.interval(pred)
        lo_age, hi_age = self.calibration["age_range"]
        lo_pred, hi_pred = self.calibration["prediction_range"]
        for i in range(len(rows)):
            if not known[i]:
                flags[i].append("no-age")
            elif not lo_age <= age[i] <= hi_age:
                flags[i].append("age-outside-calibration")
            if not lo_pred <= pred[i] <= hi_pred:
                flags[i].append("prediction-outside-calibration")
        mean = self.mean_image
        if mean is not None:
            corr = _correlations(cohort, rows, mean)
            for i in np.flatnonzero(corr < self.qc["correlation_threshold"]):
                flags[i].append("atypical-image")
        participant = (part["participant_id"] if "participant_id" in part
                       else part["subject_id"]).astype(str)
        session = (part["session_id"] if "session_id" in part
                   else part["session"]).astype(str)
        out = pd.DataFrame({
            "participant_id": participant, "session_id": session,
            "image_id": part["image_id"].astype(str), "age": age, "predicted_age": pred,
            "bag": bag, "bag_corrected": corrected, "interval_low": low,
            "interval_high": high,
            "qc": [";".join(sorted(set(f), key=list(QC_FLAGS).index)) or "ok"
                   for f in flags]})
        for column in ("subject_id", "sex", "site", "diagnosis"):
            if column in part:
                out[column] = part[column].astype(str).to_numpy()
        out["years_from_baseline"] = part["years_from_baseline"].to_numpy(dtype=float)
        return out

    def predict_bids(self, root, *, correction: str | None = None, batch_size: int = 32,
                     progress: bool = True, **bids_options) -> pd.DataFrame:
        """:meth:`predict` for every image of a BIDS dataset, resampled onto the run's grid.

        ``bids_options`` go to :func:`brainkit.data.bids_table` (``derivatives``,
        ``suffix``, ``filters``, ``match``, ``columns``, ``defaults``); ages may be missing.
        Images are read and resampled in chunks of 64 (memory stays small).
        """
        from ..data.bids import bids_table, load_onto_grid

        affine = getattr(self.model, "trained_grid_affine", None)
        shape = getattr(self.model, "trained_grid_shape", None)
        if affine is None or shape is None:
            raise InputError(f"{self.run_dir} does not record its grid's affine (trained with "
                             "an older brainkit): import the scans with `brainkit cohort "
                             "import --bids DIR --grid-mm MM` and predict with --cohort")
        table = bids_table(root, require_age=False, **bids_options)
        frames = []
        chunks = range(0, len(table), _CHUNK)
        if progress:
            from tqdm.auto import tqdm

            chunks = tqdm(chunks, desc="predict", unit="chunk", leave=False)
        for start in chunks:
            cohort, known = load_onto_grid(table.iloc[start:start + _CHUNK], shape, affine)
            frames.append(self.predict(cohort, correction=correction, age_known=known,
                                       batch_size=batch_size))
        return pd.concat(frames, ignore_index=True)

    def derivatives_description(self) -> dict:
        """``dataset_description.json`` of a BIDS derivatives folder of predictions."""
        from .. import __version__

        corrector = self.correctors[self.correction]
        return {
            "Name": "brainkit brain-age predictions", "BIDSVersion": "1.9.0",
            "DatasetType": "derivative",
            "GeneratedBy": [{"Name": "brainkit", "Version": __version__,
                             "Description": "brain age from a contrastive-learning model"}],
            "BrainkitRun": {"run": str(self.run_dir.resolve()),
                            "config_hash": self.calibration.get("config_hash"),
                            "correction": corrector.to_dict(),
                            "interval": self.interval.to_dict(),
                            "calibration_images": self.calibration.get("n_images")},
        }

    def __repr__(self) -> str:
        return (f"BrainAgeModel({str(self.run_dir)!r}, correction={self.correction!r}, "
                f"n_calibration={self.calibration.get('n_images')})")


def write_predictions(frame: pd.DataFrame, out, model: BrainAgeModel) -> Path:
    """Write predictions: ``out.tsv`` as one table; any other ``out`` as a BIDS derivatives
    folder (``dataset_description.json``, ``brainage.tsv`` and its ``brainage.json``
    column sidecar). Atomic: an interrupted write leaves no half file."""
    out = Path(out)
    if out.suffix == ".tsv":
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(out) as tmp:
            frame.to_csv(tmp, sep="\t", index=False, float_format="%.4f", na_rep="n/a")
        return out
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "dataset_description.json") as tmp:
        tmp.write_text(json.dumps(model.derivatives_description(), indent=2) + "\n")
    sidecar = {
        "age": {"Description": "chronological age (n/a when unknown)", "Units": "year"},
        "predicted_age": {"Description": "brain age, uncorrected", "Units": "year"},
        "bag": {"Description": "predicted_age - age, uncorrected", "Units": "year"},
        "bag_corrected": {"Description": f"gap after the run's stored {model.correction} "
                                         "correction", "Units": "year"},
        "interval_low": {"Description": f"{model.interval.coverage:.0%} split-conformal "
                                        "interval on the age, lower bound", "Units": "year"},
        "interval_high": {"Description": "its upper bound", "Units": "year"},
        "qc": {"Description": "ok, or flags", "Levels": QC_FLAGS},
    }
    with atomic_path(out / "brainage.json") as tmp:
        tmp.write_text(json.dumps(sidecar, indent=2) + "\n")
    with atomic_path(out / "brainage.tsv") as tmp:
        frame.to_csv(tmp, sep="\t", index=False, float_format="%.4f", na_rep="n/a")
    return out / "brainage.tsv"
