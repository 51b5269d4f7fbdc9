"""Experiments: profiles, the cached results store, the paper's designs, sweeps."""

from . import paper, realdata, summaries, toy
from .designs import (
    PretrainingSplit,
    default_cohort,
    downstream_transfer,
    heldout_gaps,
    pretraining_split,
    scaling_sweep,
    single_vs_merge,
)
from .pipeline import LOSSES, cross_validate, train_encoder
from .profiles import PROFILES, Profile, get_profile
from .speed import benchmark_reports, loader_throughput, machine, step_throughput
from .store import ResultsStore, Run, RunOutput, config_key, default_store, load_results

__all__ = [
    "LOSSES",
    "PretrainingSplit",
    "cross_validate",
    "default_cohort",
    "downstream_transfer",
    "heldout_gaps",
    "paper",
    "pretraining_split",
    "realdata",
    "scaling_sweep",
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
