"""CNN vs voxel ridge as the cohort grows: held-out and training-image healthy MAE.

For each cohort size, ``cross_validate`` (5 subject-level folds over healthy controls, the
``ci`` profile unless ``BRAINKIT_PROFILE`` says otherwise) on the synthetic ADNI-like preset at
6 mm, for the voxel ridge and each CNN loss. Beside the held-out (out-of-fold) healthy MAE it
prints the MAE on each fold's own training images (mean over folds) and the MAE of predicting
the mean age, so that a gap to the ridge reads as under-fitting (training MAE high) or as
variance (training MAE low, held-out high).

Example (about 15 minutes on 2 cores for the default sizes; run it alone)::

    python benchmarks/bench_data_size.py --sizes 240,480 --losses ridge,exp,l1

Measured 2026-12-04 on this 2-core machine (seed 0; held-out / training MAE, years):
240 subjects ridge 3.14 / 0.00, exp 3.65 / 0.62, L1 3.39 / 0.73;
480 subjects ridge 2.83 / 0.49, exp 2.80 / 0.48, L1 2.64 / 0.78 (mean-age 5.40 / 5.54).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

from brainkit.data.synthetic import make_cohort
from brainkit.eval import mae
from brainkit.experiments import ResultsStore, cross_validate, get_profile, train_encoder
from brainkit.experiments.pipeline import run_predictions


def fit_gap(cohort, loss: str, *, profile, seed: int, store: ResultsStore) -> dict:
    """Held-out, training-image and mean-age healthy MAE of one ``cross_validate``."""
    start = time.perf_counter()
    table = cross_validate(cohort, loss, folds=5, profile=profile, seed=seed, store=store)
    seconds = time.perf_counter() - start
    healthy = table[table["diagnosis"] == "HC"]
    age = table["age"].to_numpy(dtype=float)
    train_mae = []
    for k in np.unique(healthy["fold"]):        # the CV's own folds: train on the other folds
        train = np.flatnonzero((table["diagnosis"] == "HC").to_numpy() & (table["fold"] != k))
        run = train_encoder(cohort, loss, train, profile=profile, seed=seed, store=store)
        train_mae.append(mae(age[train], run_predictions(run, cohort, train)[train]))
    return {"held_out": mae(healthy["age"], healthy["age_pred"]),
            "train": float(np.mean(train_mae)),
            "mean_age": mae(healthy["age"], np.full(len(healthy), healthy["age"].mean())),
            "n_hc": len(healthy), "seconds": seconds}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="240,480", help="n_subjects values (default 240,480)")
    parser.add_argument("--losses", default="ridge,exp,l1")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--store", default=None,
                        help="results store folder (default: a temporary one)")
    args = parser.parse_args(argv)
    profile = get_profile(None)
    with tempfile.TemporaryDirectory() as tmp:
        store = ResultsStore(args.store or tmp)
        print(f"profile {profile.name}, seed {args.seed}; healthy MAE in years", flush=True)
        for n in (int(v) for v in args.sizes.split(",")):
            cohort = make_cohort("adni", n_subjects=n, grid_mm=6)
            for loss in args.losses.split(","):
                r = fit_gap(cohort, loss, profile=profile, seed=args.seed, store=store)
                print(f"{n} subjects ({r['n_hc']} HC images) {loss:>6}: held-out "
                      f"{r['held_out']:.2f}, training images {r['train']:.2f}, mean age "
                      f"{r['mean_age']:.2f}  ({r['seconds']:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
