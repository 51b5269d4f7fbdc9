"""``brainkit train``, ``brainkit sweep`` and ``brainkit results`` subcommands.

- ``brainkit train --cohort DIR --loss exp --out RUN [--profile ci] [--epochs N]
  [--batch-size B] [--lr LR] [--device cpu|cuda] [--seed S] [--resume]``: one run of a
  profile (:meth:`Profile.train_config`, trained by :func:`brainkit.train.train_run`): the
  run the book trains for the same cohort, images and seed. ``--resume`` continues the run in
  ``RUN`` with the configuration it was started with (``--epochs`` may grow).

- ``brainkit sweep --grid GRID.yaml --store DIR [--executor local|slurm] [--workers N]
  [--dry-run]``: train what the store lacks, then run the designs' evaluations
  (:func:`brainkit.experiments.sweep.run_sweep`); ``--dry-run`` lists the tasks and which are
  cached. Interrupt it (Ctrl-C, SIGTERM) and run it again to resume.
- ``brainkit results --store DIR [--table NAME] [--filter KEY=VALUE ...]``: one row per run
  (:func:`brainkit.experiments.sweep.results_table`), or one stored table across runs.
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["register"]


def _filters(pairs: list[str] | None) -> dict:
    import yaml

    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise argparse.ArgumentTypeError(f"--filter expects KEY=VALUE, got {pair!r}")
        try:
            parsed = yaml.safe_load(value) if value else value
        except yaml.YAMLError:
            parsed = value
        out[key.strip()] = parsed if isinstance(parsed, (str, int, float, bool)) else value
    return out


def _train(args) -> int:
    import numpy as np

    from brainkit.data import Cohort, calibration_split
    from brainkit.errors import InputError
    from brainkit.train import TrainConfig, TrainingInterrupted, read_run_config, train_run

    from .predict import train_calibrated
    from .profiles import get_profile

    profile = get_profile(args.profile)
    cohort = Cohort.load(args.cohort)
    indices = np.arange(len(cohort))
    if args.split is not None:
        if "split" not in cohort.table:
            raise InputError(f"--split {args.split}: the cohort in {args.cohort} has no "
                             "'split' column")
        indices = np.flatnonzero(cohort.table["split"].to_numpy() == args.split)
        if indices.size == 0:
            raise InputError(f"--split {args.split}: no rows of {args.cohort} have that split "
                             f"(found {sorted(cohort.table['split'].unique())})")
    train_rows = indices
    if args.hold_out is not None:   # the rows train_calibrated trains on
        train_rows, _ = calibration_split(cohort.table, args.hold_out, seed=args.seed,
                                          indices=indices)
    saved = (read_run_config(args.out).get("train")
             if args.resume and (args.out / "config.json").is_file() else None)
    if saved is not None:   # continue that run: its own configuration, maybe longer
        config = TrainConfig.from_dict(saved)
    else:
        ages = cohort.table["age"].to_numpy(dtype=float)[train_rows]
        config = profile.train_config(args.loss, ages=ages, seed=args.seed)
    changes = {k: v for k, v in (("epochs", args.epochs), ("batch_size", args.batch_size),
                                 ("lr", args.lr), ("augmentation", args.augmentation))
               if v is not None}
    if saved is None and "epochs" in changes:
        changes["warmup_epochs"] = min(config.warmup_epochs, max(changes["epochs"] - 1, 0))
    # A resumed run with other settings, --epochs 0, a folder in use, a diverging loss:
    # errors that brainkit.cli.main prints as one line (exit 2).
    try:
        config = config.replace(**changes)
    except ValueError as err:
        raise InputError(str(err).replace("TrainConfig.", "--").replace("_", "-")) from None
    if saved is not None and (config.loss != args.loss or config.seed != args.seed):
        raise InputError(f"cannot resume {args.out}: it trains loss {config.loss!r} with seed "
                         f"{config.seed}, not --loss {args.loss} --seed {args.seed}")
    device = args.device or profile.resolved_device()
    calibrated = None
    try:
        if args.hold_out is None:
            result = train_run(cohort, config, indices=indices, out_dir=args.out,
                               device=device, resume=args.resume,
                               progress=not args.no_progress)
        else:
            terms = tuple(t.strip() for t in args.covariates.split(",") if t.strip())
            result, calibrated = train_calibrated(
                cohort, args.loss, args.out, profile=profile, seed=args.seed,
                hold_out=args.hold_out, indices=indices, config=config,
                correction=args.correction, covariates=terms, coverage=args.coverage,
                device=device, resume=args.resume, progress=not args.no_progress)
    except TrainingInterrupted as err:
        print(f"brainkit train: {err}", file=sys.stderr)
        return 128 + err.signal_number
    summary = f"; final loss {result.metrics['loss'].iloc[-1]:.4f}" if len(result.metrics) else ""
    print(f"trained {result.epochs_completed} epoch(s) on {len(train_rows)} images "
          f"({config.loss}, profile {profile.name}){summary} -> {result.out_dir}")
    if calibrated is not None:
        c = calibrated.calibration
        width = np.atleast_1d(calibrated.interval.width_)
        print(f"calibrated on {c['n_images']} held-out healthy images ({c['n_subjects']} "
              f"subjects): MAE {c['mae']:.2f} years, {args.coverage:.0%} interval "
              f"{width.min():.1f}-{width.max():.1f} years wide, {args.correction} correction "
              f"-> {args.out / 'brainage.json'}")
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _print_table(frame, *, file=None) -> None:
    import pandas as pd

    with pd.option_context("display.max_rows", None, "display.max_columns", None,
                           "display.width", 250):
        print(frame.to_string(index=False, float_format=lambda v: f"{v:.4g}"), file=file)


def _used_by(labels) -> str:
    """``runs[0] scaling exp seed=0`` ... -> ``0:scaling,2:downstream`` (one entry per design)."""
    names = []
    for label in labels:
        index, design = label.split(" ")[:2]
        name = f"{index[len('runs['):-1]}:{design}"
        if name not in names:
            names.append(name)
    return ",".join(names)


def _dry_run(grid, store) -> int:
    import pandas as pd

    rows = []
    for t in grid.tasks(store):
        rows.append({"key": t.key, "task": "train", "loss": t.loss, "n_train": t.n_train,
                     "seed": t.seed, "status": "cached" if store.exists(t.key) else "missing",
                     "used_by": _used_by(t.needed_by)})
    for e in grid.evaluations(store):
        rows.append({"key": e.key, "task": e.run.design, "loss": e.run.loss, "n_train": None,
                     "seed": e.run.seed,
                     "status": "cached" if store.exists(e.key) else "missing",
                     "used_by": ""})
    table = pd.DataFrame(rows)
    table["n_train"] = table["n_train"].astype("Int64")
    print(f"{grid.source}: {grid.cohort_spec.describe()}, profile {grid.profile.name}")
    _print_table(table)
    n_train = int((table["task"] == "train").sum())
    cached = int((table["status"] == "cached").sum())
    print(f"dry run: {len(table)} tasks ({n_train} training runs, {len(table) - n_train} "
          f"evaluations): {cached} cached, {len(table) - cached} to compute")
    return 0


def _sweep(args) -> int:
    from .store import ResultsStore
    from .sweep import GridError, SweepError, SweepInterrupted, load_grid, run_sweep

    try:
        grid = load_grid(args.grid)
        store = ResultsStore(args.store)
        if args.dry_run:
            return _dry_run(grid, store)
        report = run_sweep(grid, store, executor=args.executor, workers=args.workers,
                           progress=not args.no_progress, cluster=args.cluster,
                           device=args.device)
    except SweepInterrupted as err:
        if err.report is not None:
            print(err.report.summary())
        print(f"brainkit sweep: {err}", file=sys.stderr)
        return 128 + err.signal_number
    except SweepError as err:
        print(err.report.summary())
        print(f"brainkit sweep: {err}", file=sys.stderr)
        return 1
    except (FileNotFoundError, GridError, ValueError, RuntimeError) as err:
        # A bad grid or argument, or no SLURM for --executor slurm: nothing was trained.
        print(f"brainkit sweep: {err}", file=sys.stderr)
        return 2
    print(report.summary())
    return 0


def _results(args) -> int:
    from pathlib import Path

    from .sweep import results_table

    if not (Path(args.store) / "runs").is_dir():
        print(f"brainkit results: {args.store} is not a results store (no runs/ folder)",
              file=sys.stderr)
        return 2
    import warnings

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            filters = _filters(args.filter and [p for group in args.filter for p in group])
            table = results_table(args.store, args.table, **filters)
    except (ValueError, argparse.ArgumentTypeError) as err:
        print(f"brainkit results: {err}", file=sys.stderr)
        return 2
    for w in caught:  # a damaged run: one line naming its file, the others are listed
        print(f"brainkit results: warning: {w.message}", file=sys.stderr)
    if table.empty:
        what = f"table {args.table!r}" if args.table else "runs"
        print(f"no {what} in {args.store}" + (" matching the filters" if filters else ""))
        return 0
    _print_table(table)
    return 0


def register(subparsers) -> None:
    """Add ``train``, ``sweep`` and ``results`` to the ``brainkit`` command."""
    from pathlib import Path

    from .profiles import LOSSES

    train = subparsers.add_parser(
        "train", help="train a model on a saved cohort",
        description="Train a contrastive model (or the L1 regression baseline) on a cohort "
                    "saved with Cohort.save: the run of a profile that the book trains for "
                    "the same images and seed. The run directory receives config.json, "
                    "checkpoint.pt and metrics.parquet; SIGTERM / Ctrl-C writes a checkpoint "
                    "and --resume continues it.")
    train.add_argument("--cohort", required=True, type=Path, help="saved cohort directory")
    train.add_argument("--loss", required=True, choices=LOSSES, help="loss to train with")
    train.add_argument("--out", required=True, type=Path, help="run directory")
    train.add_argument("--profile", default=None,
                       help="ci, workstation or paper (default: $BRAINKIT_PROFILE or ci)")
    train.add_argument("--epochs", type=int, default=None, help="override the profile's epochs")
    train.add_argument("--batch-size", type=int, default=None,
                       help="override the profile's batch size (images per step)")
    train.add_argument("--lr", type=float, default=None, help="override the learning rate")
    train.add_argument("--augmentation", choices=("none", "crop", "cutout", "all"),
                       default=None, help="override the profile's augmentation")
    train.add_argument("--split", default=None,
                       help="train only on rows whose 'split' column has this value")
    train.add_argument("--device", default=None,
                       help="cpu, cuda or cuda:N (default: the profile's, CUDA when available)")
    train.add_argument("--seed", type=int, default=0, help="model initialisation, batch order "
                                                           "and augmentation seed (default 0)")
    train.add_argument("--resume", action="store_true",
                       help="continue the run in --out with the settings it was started with")
    train.add_argument("--hold-out", type=float, default=None, metavar="FRACTION",
                       help="hold out this share of the healthy controls (whole subjects) and "
                            "calibrate the run on them: age readout, bias correction and "
                            "prediction intervals saved as brainage.json, what `brainkit "
                            "predict` applies (e.g. 0.2)")
    train.add_argument("--correction", default="beheshti",
                       choices=("beheshti", "cole", "covariates"),
                       help="bias correction predict applies by default (all are saved; "
                            "default beheshti)")
    train.add_argument("--covariates", default="age,age2,sex",
                       help="terms of the covariate correction: any of age, age2, sex, site, "
                            "tiv (default age,age2,sex)")
    train.add_argument("--coverage", type=float, default=0.95,
                       help="nominal coverage of the prediction intervals (default 0.95)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(func=_train)

    p = subparsers.add_parser(
        "sweep", help="run a grid of experiments (locally or on SLURM), resumable",
        description="Train every run a grid file needs that the store lacks, then run each "
                    "design's evaluation. Interrupt it (Ctrl-C / SIGTERM) and run the same "
                    "command again to resume: completed runs are kept and a run stopped "
                    "mid-training continues from its checkpoint.")
    p.add_argument("--grid", required=True, help="grid file (YAML), e.g. examples/grids/ci.yaml")
    p.add_argument("--store", required=True, help="results store folder (created if absent)")
    p.add_argument("--executor", choices=("local", "slurm"), default="local",
                   help="local processes, or one submitit job per task on SLURM (settings "
                        "from the grid's slurm: section)")
    p.add_argument("--workers", type=_positive_int, default=1,
                   help="local worker processes (default 1: in this process)")
    p.add_argument("--cluster", choices=("slurm", "local", "debug"), default=None,
                   help="submitit cluster for --executor slurm (default: detect SLURM; "
                        "'local' runs the jobs as local processes, for testing)")
    p.add_argument("--device", default=None, help="device for every task (default: the "
                                                   "profile's, CUDA when available)")
    p.add_argument("--dry-run", action="store_true",
                   help="list the tasks and which are cached; train nothing (a generated "
                        "cohort is still saved in the store's cohort cache)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or task lines")
    p.set_defaults(func=_sweep)

    r = subparsers.add_parser(
        "results", help="summarise a results store (one row per run)",
        description="One row per run: key, kind (train / finetune / design), loss, n_train, "
                    "seed, seconds, final training loss and the designs' headline metrics; "
                    "or, with --table, one stored table across runs.")
    r.add_argument("--store", required=True, help="results store folder")
    r.add_argument("--table", default=None,
                   help="print this stored table across runs instead (e.g. metrics)")
    r.add_argument("--filter", nargs="+", action="append", metavar="KEY=VALUE",
                   help="keep runs whose configuration has these values, e.g. kind=train "
                        "loss=exp params.folds=3")
    r.set_defaults(func=_results)
