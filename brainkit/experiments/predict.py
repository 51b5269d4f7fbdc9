"""From a BIDS folder to a brain-age report: the calibrated run and the book's worked example.

:func:`train_calibrated` is what ``brainkit train --hold-out`` runs: hold out whole healthy
subjects (:func:`brainkit.data.calibration_split`), train the profile's run on the rest
(:func:`brainkit.train.train_run`), calibrate it on the held-out controls
(:class:`brainkit.eval.BrainAgeModel`). :func:`bids_example` walks the whole user path on
synthetic scans written as BIDS trees (the "Predict on your own scans" chapter), cached in the
results store.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .profiles import Profile, get_profile
from .store import ResultsStore, RunOutput, default_store

__all__ = ["train_calibrated", "BidsExample", "bids_example", "interval_coverage",
           "prediction_report", "report_markdown", "EXAMPLE_SIZES", "command_block", "calibration_table",
           "prediction_preview", "coverage_markdown"]

#: Subjects per synthetic preset of the example's training and new BIDS trees.
EXAMPLE_SIZES: dict[str, dict[str, int]] = {
    "train": {"openbhb": 300, "adni": 40},
    "new": {"openbhb": 150, "adni": 40},
}


def train_calibrated(cohort, loss: str, out_dir, *, profile: str | Profile | None = None,
                     seed: int = 0, hold_out: float = 0.2, indices=None, config=None,
                     changes: Mapping | None = None, correction: str = "beheshti",
                     covariates: Sequence[str] = ("age", "age2", "sex"),
                     coverage: float = 0.95, device=None, resume: bool = False,
                     progress: bool = True):
    """Train a profile's run on a cohort minus held-out controls, then calibrate it there.

    Parameters
    ----------
    cohort : brainkit.data.Cohort
    loss : str
        A loss of :data:`brainkit.experiments.LOSSES`.
    out_dir : path-like
        The run folder (``config.json``, ``checkpoint.pt``, ``brainage.json``).
    profile, seed
        The run's settings (:meth:`Profile.train_config`).
    hold_out : float, default 0.2
        Share of the healthy-control images held out (whole subjects) for calibration.
    indices : array-like of int, optional
        Rows to use (default all).
    config : TrainConfig, optional
        The run to train instead of the profile's (e.g. a resumed run's own).
    changes : mapping, optional
        Settings to change in the profile's run (``TrainConfig.replace``).
    correction, covariates, coverage
        As :meth:`brainkit.eval.BrainAgeModel.calibrate`.

    Returns
    -------
    result : brainkit.train.FitResult
    model : brainkit.eval.BrainAgeModel
    """
    from ..data import calibration_split
    from ..eval import BrainAgeModel
    from ..train import train_run

    profile = get_profile(profile)
    train, held = calibration_split(cohort.table, hold_out, seed=seed, indices=indices)
    if config is None:
        ages = cohort.table["age"].to_numpy(dtype=float)[train]
        config = profile.train_config(loss, ages=ages, seed=seed)
        if changes:
            config = config.replace(**dict(changes))
    device = device or profile.resolved_device()
    result = train_run(cohort, config, indices=train, out_dir=out_dir, device=device,
                       resume=resume, progress=progress)
    model = BrainAgeModel.calibrate(out_dir, cohort, held, train=train, correction=correction,
                                    covariates=covariates, coverage=coverage, device=device)
    return result, model


@dataclass(frozen=True)
class BidsExample:
    """The worked example's outputs (files live in the results store).

    Attributes
    ----------
    root : pathlib.Path
        Folder holding ``bids/`` (the training tree), ``new/`` (new scans), ``run/`` (the
        calibrated run) and ``predictions/`` (the BIDS derivatives folder ``predict`` wrote).
    predictions : pandas.DataFrame
        ``brainkit predict``'s table for the new scans.
    calibration : dict
        ``brainage.json``'s calibration entry.
    commands : list of str
        The three commands a user types for the same result.
    """

    root: Path
    predictions: pd.DataFrame
    calibration: dict
    commands: list


def bids_example(profile: str | Profile | None = None, *, store: ResultsStore | None = None,
                 loss: str = "l1", seed: int = 0, hold_out: float = 0.2,
                 sizes: Mapping | None = None) -> BidsExample:
    """The user path on synthetic scans: BIDS trees -> import -> train + calibrate -> predict.

    Writes a training BIDS tree (OpenBHB- and ADNI-like subjects, several sessions for the
    ADNI-like ones) and a tree of new scans from other subjects, imports the first
    (:func:`brainkit.data.import_bids`), trains and calibrates (:func:`train_calibrated`, the
    profile's run of ``loss``), and predicts the new scans from their BIDS tree
    (:meth:`brainkit.eval.BrainAgeModel.predict_bids`, written as a BIDS derivatives folder).
    Cached in the store under the settings.
    """
    import json

    from ..data import import_bids, make_merged, write_bids
    from ..eval.brainage import write_predictions

    profile = get_profile(profile)
    store = store if store is not None else default_store()
    sizes = {k: dict(v) for k, v in (sizes or EXAMPLE_SIZES).items()}
    grid = profile.grid_mm
    config = {"kind": "example", "example": "bids", "loss": loss, "seed": seed,
              "hold_out": hold_out, "sizes": sizes, "grid_mm": grid,
              "train": profile.train_config(loss, ages=np.array([20.0, 80.0]),
                                            seed=seed).to_dict()}

    def compute(work: Path) -> RunOutput:
        work.mkdir(parents=True, exist_ok=True)
        folder = work / "example"
        if folder.exists():             # leftovers of an interrupted computation
            import shutil

            shutil.rmtree(folder)
        write_bids(make_merged(sizes["train"], grid_mm=grid, seed=1000 + seed),
                   folder / "bids", name="brainkit example (training)")
        write_bids(make_merged(sizes["new"], grid_mm=grid, seed=2000 + seed),
                   folder / "new", name="brainkit example (new scans)")
        cohort = import_bids(folder / "bids", folder / "cohort", progress=False)
        _, model = train_calibrated(cohort, loss, folder / "run", profile=profile, seed=seed,
                                    hold_out=hold_out, progress=False)
        frame = model.predict_bids(folder / "new", progress=False)
        write_predictions(frame, folder / "predictions", model)
        import shutil

        shutil.rmtree(folder / "cohort")    # regenerated from the BIDS tree on demand
        return RunOutput(tables={"predictions": frame},
                         files={"example": folder},
                         info={"calibration": json.loads(
                             (folder / "run" / "brainage.json").read_text())["calibration"]})

    run = store.get_or_compute(config, compute)
    root = run.file("example")
    calibration = json.loads((root / "run" / "brainage.json").read_text())["calibration"]
    commands = [
        "brainkit cohort import --bids bids/ --out cohort/ --grid-mm "
        f"{grid:g}",
        f"brainkit train --cohort cohort/ --loss {loss} --out run/ --profile {profile.name} "
        f"--seed {seed} --hold-out {hold_out:g}",
        "brainkit predict --run run/ --bids new/ --out predictions/",
    ]
    return BidsExample(root=root, predictions=run.table("predictions"),
                       calibration=calibration, commands=commands)


def interval_coverage(predictions: pd.DataFrame, *, group: str = "HC",
                      n_boot: int = 1000):
    """Share of images whose age lies inside their prediction interval, with a 95 %
    subject-bootstrap interval (:class:`brainkit.eval.Estimate`), for one diagnosis."""
    from ..eval.uncertainty import bootstrap_ci

    rows = predictions[(predictions["diagnosis"] == group) & predictions["age"].notna()]
    inside = ((rows["interval_low"] <= rows["age"])
              & (rows["age"] <= rows["interval_high"])).to_numpy(dtype=float)
    return bootstrap_ci(lambda v: 100.0 * float(np.mean(v)), inside,
                        groups=rows["participant_id"].to_numpy(), n_boot=n_boot)


def prediction_report(predictions: pd.DataFrame, *, n_boot: int = 1000):
    """``brainkit report`` on a predictions table (:func:`brainkit.eval.evaluation_report`
    after the same column mapping: ``bag_corrected`` gives the corrected predictions)."""
    from ..eval.cli import prediction_columns
    from ..eval.report import evaluation_report

    table, notes = prediction_columns(predictions[predictions["age"].notna()])
    import dataclasses

    report = evaluation_report(table, n_boot=n_boot)
    return dataclasses.replace(report, notes=tuple(notes) + report.notes)


# ---------------------------------------------------------------------- the chapter's views
def report_markdown(predictions: pd.DataFrame, *, n_boot: int = 1000):
    """:func:`prediction_report` as the page shows it (Markdown): the notes, the overall,
    age-band and AUC tables under level-4 headings, and one sentence on the sites (the
    per-site tables, one row per site, are in ``brainkit report``'s output)."""
    from IPython.display import Markdown

    report = prediction_report(predictions, n_boot=n_boot)
    keep = ("Overall", "MAE by age band", "AUC")
    out, section = [], None
    for line in report.to_markdown().splitlines():
        if line.startswith("# "):
            continue
        if line.startswith("## "):
            section = line[3:]
            if any(k in section for k in keep):
                out.append("#### " + section)
            continue
        if section is None or any(k in section for k in keep):
            out.append(line)
    loso = report.leave_one_site_out
    if loso is not None:
        part = loso[loso["prediction"] == "uncorrected"]
        differ = part[(part["low"] > 0) | (part["high"] < 0)]
        harder = int((differ["difference"] > 0).sum())
        out += ["", f"Of the {len(part)} sites, {len(differ)} differ from the others in "
                f"uncorrected MAE (the interval of site minus the rest excludes 0; {harder} "
                f"of them harder); `brainkit report` lists every site."]
    return Markdown("\n".join(out))


def command_block(commands: Sequence[str]):
    """The commands as a shell code block (Markdown)."""
    from IPython.display import Markdown

    return Markdown("```bash\n" + "\n".join(commands) + "\n```")


def calibration_table(calibration: Mapping) -> pd.DataFrame:
    """``brainage.json``'s calibration entry as a two-column table."""
    lo, hi = calibration["age_range"]
    rows = [
        ("held-out healthy images (subjects)",
         f"{calibration['n_images']} ({calibration['n_subjects']})"),
        ("their age range", f"{lo:.1f}-{hi:.1f} years"),
        ("MAE on them, uncorrected", f"{calibration['mae']:.2f} years"),
        ("interval", f"{calibration['coverage']:.0%} split-conformal, "
                     f"{calibration['interval_method']}"),
        ("run configuration hash", calibration["config_hash"]),
    ]
    return pd.DataFrame(rows, columns=["calibration", "value"]).set_index("calibration")


def prediction_preview(predictions: pd.DataFrame, n: int = 8):
    """The first rows of a predictions table, numbers rounded (a Styler, no index)."""
    columns = ["participant_id", "session_id", "age", "predicted_age", "bag",
               "bag_corrected", "interval_low", "interval_high", "qc", "diagnosis"]
    head = predictions[[c for c in columns if c in predictions]].head(n).copy()
    if "qc" in head:    # several flags: let the cell wrap instead of squeezing the numbers
        head["qc"] = head["qc"].astype(str).str.replace(";", "; ", regex=False)
    style = (head.round(2).style.format(precision=2, na_rep="n/a").hide(axis="index")
             .set_properties(**{"padding": "0 0.6em", "white-space": "nowrap"},
                             subset=[c for c in head.columns if c != "qc"]))
    if "qc" in head:    # wide enough that two flags take two lines, not one word a line
        style = style.set_properties(**{"padding": "0 0.6em", "min-width": "22em"},
                                     subset=["qc"])
    return style


def coverage_markdown(estimates: Mapping, *, nominal: float):
    """Sentences on how often the intervals contain the age, per diagnosis (Markdown)."""
    from IPython.display import Markdown

    from . import prose

    target = 100.0 * nominal
    lines = []
    for group, est in estimates.items():
        if group == "HC":
            word = ("less often than nominal" if est.high < target else
                    "more often than nominal" if est.low > target else
                    "at about the nominal rate")
            lines.append(
                f"- The {target:.0f} % intervals contain the age of "
                f"{prose.estimate(est, unit='%', digits=1)} of the new healthy controls' "
                f"scans ({prose.describe_n(est, 'scans')}): "
                f"{prose.claim(word, est.value, est.low, est.high, f'vs {target:g}')}.")
        else:
            word = ("less often" if est.high < target else
                    "more often than nominal" if est.low > target else "about as often")
            lines.append(
                f"- For {group} patients they do {prose.claim(word, est.value, est.low, est.high, f'vs {target:g}')}"
                f" ({prose.estimate(est, unit='%', digits=1)}, "
                f"{prose.describe_n(est, 'scans')}): "
                + ("the interval is for healthy ageing, and a patient's gap moves the "
                   "prediction out of it." if word == "less often" else
                   "at this model's accuracy the interval is wide enough to hold a "
                   "patient's gap too; it describes healthy ageing and does not flag "
                   "disease by itself."))
    return Markdown("\n".join(lines))
