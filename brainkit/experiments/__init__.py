"""Experiments: profiles, the cached results store, the paper's designs, sweeps."""

from . import findings, paper, progress, prose, realdata, summaries, toy
from .challenge import challenge_metrics, challenge_predictions, combat_comparison
from .cohorts import PretrainingSplit, default_cohort, pretraining_split, synthetic_cohort
from .designs import (
    DESIGNS,
    Design,
    Evaluation,
    RunSpec,
    book_scaling,
    cross_validate,
    downstream_transfer,
    heldout_gaps,
    run_design,
    scaling_predictions,
    scaling_sweep,
    single_vs_merge,
    single_vs_merge_predictions,
)
from .pipeline import BASELINE, LOSSES, MODELS, train_encoder
from .profiles import PROFILES, Profile, get_profile
from .speed import benchmark_reports, loader_throughput, machine, step_throughput
from .store import ResultsStore, Run, RunOutput, config_key, default_store, load_results

__all__ = [
    "BASELINE",
    "DESIGNS",
    "Design",
    "Evaluation",
    "RunSpec",
    "challenge_metrics",
    "challenge_predictions",
    "combat_comparison",
    "run_design",
    "LOSSES",
    "MODELS",
    "PretrainingSplit",
    "book_scaling",
    "cross_validate",
    "default_cohort",
    "findings",
    "progress",
    "prose",
    "downstream_transfer",
    "heldout_gaps",
    "paper",
    "pretraining_split",
    "realdata",
    "scaling_sweep",
    "scaling_predictions",
    "single_vs_merge_predictions",
    "synthetic_cohort",
    "single_vs_merge",
    "step_throughput",
    "benchmark_reports",
    "loader_throughput",
    "machine",
    "summaries",
    "toy",
    "train_encoder",
    "PROFILES",
    "Profile",
    "ResultsStore",
    "Run",
    "RunOutput",
    "config_key",
    "default_store",
    "get_profile",
    "load_results",
]

from .sweep import Grid, GridError, SweepReport, load_grid, results_table, run_sweep  # noqa: E402

__all__ += ["Grid", "GridError", "SweepReport", "load_grid", "results_table", "run_sweep"]
