"""Evaluation: metrics, probes, OpenBHB challenge, brain-age gap, longitudinal models,
downstream fine-tuning, calibration, scaling laws, ComBat harmonisation, conformal
prediction intervals and the evaluation report.

Every function here takes arrays or tidy tables and returns numbers, tables or small result
objects; plotting lives in :mod:`brainkit.plots`.
"""

from .bag import (
    AgeBiasCorrector,
    CovariateCorrector,
    RocCurve,
    bag_roc,
    bag_summary,
    brain_age_gap,
    crossfit_correct,
)
from .baseline import RELATIVE_ALPHAS, VoxelRidge
from .brainage import BrainAgeModel
from .calibration import (
    TemperatureScaler,
    brier_score,
    expected_calibration_error,
    reliability_curve,
)
from .finetune import FinetunedClassifier, TransferResult, finetune_classifier, transfer_matrix
from .harmonize import ComBat
from .intervals import ConformalInterval
from .longitudinal import DEFAULT_OPTIMIZERS, TrajectoryResult, fit_bag_trajectories
from .metrics import mae, pearson_r, r2
from .probes import (
    AGE_ALPHAS,
    SITE_CS,
    ChallengeResult,
    ProbeResult,
    age_probe,
    challenge_score,
    openbhb_challenge,
    site_probe,
)
from .report import Report, evaluation_report
from .scaling import (
    CorrelationResult,
    PowerLawFit,
    bootstrap_correlation,
    fit_power_law,
    power_law,
)
from .uncertainty import (
    Estimate,
    Replicates,
    auc,
    balanced_accuracy,
    bootstrap_ci,
    mean_absolute_error,
    mean_difference,
)

__all__ = [
    # metrics
    "mae",
    "r2",
    "pearson_r",
    # probes and the OpenBHB challenge
    "AGE_ALPHAS",
    "SITE_CS",
    "ProbeResult",
    "ChallengeResult",
    "age_probe",
    "site_probe",
    "openbhb_challenge",
    "challenge_score",
    # the voxel baseline
    "RELATIVE_ALPHAS",
    "VoxelRidge",
    # brain-age gap
    "brain_age_gap",
    "AgeBiasCorrector",
    "CovariateCorrector",
    "BrainAgeModel",
    "crossfit_correct",
    "bag_summary",
    "RocCurve",
    "bag_roc",
    # longitudinal
    "DEFAULT_OPTIMIZERS",
    "TrajectoryResult",
    "fit_bag_trajectories",
    # downstream
    "FinetunedClassifier",
    "finetune_classifier",
    "TransferResult",
    "transfer_matrix",
    # calibration
    "reliability_curve",
    "expected_calibration_error",
    "brier_score",
    "TemperatureScaler",
    # uncertainty
    "Estimate",
    "Replicates",
    "bootstrap_ci",
    "balanced_accuracy",
    "auc",
    "mean_absolute_error",
    "mean_difference",
    # harmonisation
    "ComBat",
    # prediction intervals
    "ConformalInterval",
    # the evaluation report
    "Report",
    "evaluation_report",
    # scaling and correlation
    "power_law",
    "PowerLawFit",
    "fit_power_law",
    "CorrelationResult",
    "bootstrap_correlation",
]
