"""Cohorts, images, splits and the synthetic default.

The public API is re-exported here; see :mod:`brainkit.data.cohort` for the data model.
"""

from .augment import (
    AUGMENTATIONS,
    Compose,
    Cutout,
    GaussianBlur,
    GaussianNoise,
    IntensityScale,
    RandomCropPad,
    RandomFlip,
    RandomTransform,
    augmentation,
)
from .cohort import (
    COLUMNS,
    DIAGNOSES,
    OPTIONAL_COLUMNS,
    SPLITS,
    Cohort,
    CohortError,
    concat,
    validate_table,
)
from .paths import data_root
from .splits import LeakageError, check_no_leakage, official_split, subject_kfold

__all__ = [
    "AUGMENTATIONS",
    "Compose",
    "Cutout",
    "GaussianBlur",
    "GaussianNoise",
    "IntensityScale",
    "RandomCropPad",
    "RandomFlip",
    "RandomTransform",
    "augmentation",
    "COLUMNS",
    "DIAGNOSES",
    "OPTIONAL_COLUMNS",
    "SPLITS",
    "Cohort",
    "CohortError",
    "LeakageError",
    "check_no_leakage",
    "concat",
    "data_root",
    "official_split",
    "subject_kfold",
    "validate_table",
]
