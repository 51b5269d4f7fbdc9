"""``brainkit report``: an evaluation report of a table of brain-age predictions.

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

    Returns the table (a copy when columns were added) and notes saying what was derived.

    Raises
    ------
    InputError
        No ``age`` column, or no way to get a predicted age.
    """
    if "age" not in table.columns:
        raise InputError(f"{source}: missing column 'age' (chronological age); it has "
                         f"{list(table.columns)}")
    notes = []
    added = {}
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


def register(subparsers) -> None:
    """Add ``report`` to the ``brainkit`` command."""
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
