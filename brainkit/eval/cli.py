"""``brainkit predict`` (brain age of new scans) and ``brainkit report`` (an evaluation
report of a table of brain-age predictions).

The table is a TSV or CSV, one row per image, with ``age`` and a predicted age: the
``predicted_age`` column, else brainkit's ``age_pred``, else ``age + bag``. Bias-corrected
predictions come from ``predicted_age_corrected``, else ``age + bag_corrected``. Optional:
``participant_id`` or ``subject_id`` (the bootstrap resamples subjects), ``site``,
``diagnosis``, and ``site_pred`` with ``set`` (internal / external) for the OpenBHB score.
The report (Markdown) goes to stdout, and to ``--out`` when given (replacing that file).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
from pathlib import Path

from brainkit.errors import InputError

__all__ = ["register", "prediction_columns"]

PREDICTED = "predicted_age"
CORRECTED = "predicted_age_corrected"


def prediction_columns(table, source: str = "table"):
    """Add ``predicted_age`` / ``predicted_age_corrected`` when a table has other names.

    Returns the table (a copy when columns were added, without the rows whose age is
    missing: scans predicted without one) and notes saying what was derived or left out.

    Raises
    ------
    InputError
        No ``age`` column, or no way to get a predicted age.
    """
    if "age" not in table.columns:
        raise InputError(f"{source}: missing column 'age' (chronological age); it has "
                         f"{list(table.columns)}")
    import pandas as pd

    notes = []
    added = {}
    no_age = pd.to_numeric(table["age"], errors="coerce").isna() & (
        table["age"].isna() | table["age"].astype(str).str.strip().isin(("", "n/a", "nan")))
    if no_age.any():   # scans predicted without an age (brainkit predict writes n/a)
        table = table[~no_age.to_numpy()].reset_index(drop=True)
        notes.append(f"{int(no_age.sum())} row(s) without an age (n/a) are left out.")
    if PREDICTED not in table.columns:
        if "age_pred" in table.columns:
            added[PREDICTED] = table["age_pred"]
            notes.append("Predicted ages from column `age_pred`.")
        elif "bag" in table.columns:
            added[PREDICTED] = _number(table, "age", source) + _number(table, "bag", source)
            notes.append("Predicted ages are `age + bag`.")
        else:
            raise InputError(f"{source}: missing a predicted age: expected column "
                             f"'{PREDICTED}' (or 'age_pred', or 'bag' with 'age'); it has "
                             f"{list(table.columns)}")
    if CORRECTED not in table.columns and "bag_corrected" in table.columns:
        added[CORRECTED] = (_number(table, "age", source)
                            + _number(table, "bag_corrected", source))
        notes.append("Corrected predicted ages are `age + bag_corrected`.")
    return (table.assign(**added) if added else table), notes


def _number(table, column: str, source: str):
    import pandas as pd

    values = pd.to_numeric(table[column], errors="coerce")
    bad = values.isna()
    if bad.any():
        rows = [int(i) + 2 for i in table.index[bad][:5]]   # 1-based, after the header line
        raise InputError(f"{source}: column {column!r} must be numeric on every row; lines "
                         f"{rows} hold {table[column][bad].head(3).tolist()}")
    return values


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _report(args) -> int:
    from brainkit.data.realdata import read_delimited
    from brainkit.eval.report import evaluation_report

    if args.n_boot < 10:
        raise InputError(f"--n-boot: expected an integer >= 10, got {args.n_boot}")
    if not 0 < args.level < 1:
        raise InputError(f"--level: expected a number in (0, 1), e.g. 0.95, got {args.level}")
    if Path(args.results).is_dir():
        raise InputError(f"{args.results}: is a folder; expected a TSV or CSV file of "
                         "predictions")
    table = read_delimited(args.results, what="results table")
    table, notes = prediction_columns(table, source=str(args.results))
    try:
        report = evaluation_report(table, case=args.case, control=args.control,
                                   n_boot=args.n_boot, level=args.level,
                                   random_state=args.seed)
    except InputError as err:
        raise InputError(f"{args.results}: {err}") from None
    report = dataclasses.replace(report, notes=tuple(notes) + report.notes)
    text = report.to_markdown()
    print(text)
    if args.out:
        _write_atomic(Path(args.out), text + "\n")
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


def _predict(args) -> int:
    from brainkit.eval.brainage import BrainAgeModel, write_predictions

    if (args.cohort is None) == (args.bids is None):
        raise InputError("give one of --cohort DIR or --bids DIR")
    model = BrainAgeModel.load(args.run, device=args.device)
    if args.cohort is not None:
        from brainkit.data import Cohort

        frame = model.predict(Cohort.load(args.cohort), correction=args.correction)
    else:
        from brainkit.data.cli import bids_options

        frame = model.predict_bids(args.bids, correction=args.correction,
                                   progress=not args.no_progress, **bids_options(args))
    path = write_predictions(frame, args.out, model)
    flagged = int((frame["qc"] != "ok").sum())
    known = frame["bag"].notna()
    gap = (f"; mean gap {frame['bag'][known].mean():+.2f} years uncorrected, "
           f"{frame['bag_corrected'][known].mean():+.2f} corrected ({model.correction})"
           if known.any() else "")
    print(f"predicted {len(frame)} image(s){gap}; {flagged} with QC flags -> {path}")
    return 0


def register(subparsers) -> None:
    """Add ``predict`` and ``report`` to the ``brainkit`` command."""
    from brainkit.data.cli import add_bids_arguments

    pr = subparsers.add_parser(
        "predict", help="brain age of new scans from a calibrated run (TSV or BIDS derivatives)",
        description="Apply a calibrated run (trained with `brainkit train --hold-out`) to a "
                    "saved cohort or a BIDS dataset: one row per image with participant_id, "
                    "session_id, image_id, age, predicted_age, bag, bag_corrected (the run's "
                    "stored correction), interval_low, interval_high (split-conformal) and "
                    "qc. --out FILE.tsv writes one table; --out DIR a BIDS derivatives folder "
                    "(dataset_description.json, brainage.tsv, brainage.json).")
    pr.add_argument("--run", required=True, type=Path, help="calibrated run folder")
    pr.add_argument("--cohort", default=None, type=Path, help="saved cohort on the run's grid")
    pr.add_argument("--bids", default=None, type=Path,
                    help="BIDS dataset (images resampled onto the run's grid; ages optional)")
    pr.add_argument("--out", required=True, type=Path,
                    help="FILE.tsv, or a folder for a BIDS derivatives dataset")
    pr.add_argument("--correction", default=None, choices=("beheshti", "cole", "covariates"),
                    help="bias correction (default: the run's calibrated default)")
    pr.add_argument("--device", default=None, help="cpu, cuda or cuda:N")
    pr.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_bids_arguments(pr)
    pr.set_defaults(func=_predict)

    p = subparsers.add_parser(
        "report", help="evaluation report of a predictions table (MAE, r, R^2 with intervals)",
        description="Evaluate brain-age predictions (one row per image: age and "
                    "predicted_age, or age_pred, or bag; optionally predicted_age_corrected "
                    "or bag_corrected, participant_id or subject_id, site, diagnosis, "
                    "site_pred and set): MAE, r and R^2 on the controls overall, by site and "
                    "by age band, each site against the others, the case-control AUC of the "
                    "gap and the OpenBHB score, each with a 95% interval from a bootstrap "
                    "over subjects. Prints Markdown.")
    p.add_argument("results", help="predictions table (TSV or CSV)")
    p.add_argument("--out", default=None, help="also write the report to this Markdown file "
                                               "(replaced if it exists)")
    p.add_argument("--case", default="AD", help="diagnosis of the cases (default AD)")
    p.add_argument("--control", default="HC", help="diagnosis of the controls (default HC)")
    p.add_argument("--n-boot", type=int, default=1000,
                   help="bootstrap resamples of subjects per interval (default 1000)")
    p.add_argument("--level", type=float, default=0.95, help="interval level (default 0.95)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.set_defaults(func=_report)
