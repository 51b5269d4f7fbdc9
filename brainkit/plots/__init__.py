"""Plotly figures for every analysis of the paper; each function returns a ``go.Figure``
and never calls ``.show()``.

All figures use the ``"brainkit"`` template (registered once on import) and a fixed colour
per loss (:data:`LOSS_COLORS`) and per diagnosis (:data:`GROUP_COLORS`).
"""

from .bag import bag_distributions, bag_trajectories, predicted_ages, roc_curves
from .calibration import reliability_diagram
from .findings import ledger_evidence
from .losses import kernels, toy_embeddings
from .data import age_histogram, category_colors, example_slices, site_ages
from .scaling import mae_vs_accuracy, model_comparison, scaling_curves, site_bacc_curves
from .speed import throughput_bars
from .theme import (
    GROUP_COLORS,
    LOSS_COLORS,
    LOSS_LABELS,
    TEMPLATE,
    group_color,
    loss_color,
    loss_label,
    register_template,
)

__all__ = [
    "kernels",
    "toy_embeddings",
    "TEMPLATE",
    "LOSS_COLORS",
    "LOSS_LABELS",
    "GROUP_COLORS",
    "register_template",
    "loss_color",
    "loss_label",
    "group_color",
    "category_colors",
    "age_histogram",
    "site_ages",
    "example_slices",
    "scaling_curves",
    "predicted_ages",
    "ledger_evidence",
    "model_comparison",
    "site_bacc_curves",
    "mae_vs_accuracy",
    "bag_distributions",
    "roc_curves",
    "bag_trajectories",
    "reliability_diagram",
    "throughput_bars",
]
