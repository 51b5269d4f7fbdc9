"""Cohorts, images, splits and the synthetic default.

The public API is re-exported here; see :mod:`brainkit.data.cohort` for the data model,
:mod:`brainkit.data.sources` for where a cohort's images live (float arrays or a packed
store), :mod:`brainkit.data.loaders` for the device loaders that feed training.
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
from .bids import bids_table, import_bids, write_bids
from .check import CheckReport, check_dataset
from .manifests import ManifestError, list_manifests, load_manifest
from .nifti import ImageError, import_nifti
from .packed import pack_cohort
from .sources import ArraySource, ImageSource, PackedStore
from .openbhb import load_openbhb, load_openbhb_flat, mask_volume, openbhb_table, unmask
from .paths import data_root
from .realdata import fcon1000_table, label_mci_conversion, oasis1_table, oasis2_table, read_table
from .synthetic import make_cohort, make_merged
from .splits import (
    LeakageError,
    calibration_split,
    check_no_leakage,
    official_split,
    subject_kfold,
    subject_subset,
)

__all__ = [
    "AUGMENTATIONS",
    "ArraySource",
    "bids_table",
    "calibration_split",
    "COLUMNS",
    "DIAGNOSES",
    "OPTIONAL_COLUMNS",
    "PackedStore",
    "SPLITS",
    "augmentation",
    "check_dataset",
    "check_no_leakage",
    "CheckReport",
    "Cohort",
    "CohortError",
    "Compose",
    "concat",
    "Cutout",
    "data_root",
    "fcon1000_table",
    "GaussianBlur",
    "GaussianNoise",
    "ImageError",
    "ImageSource",
    "import_bids",
    "import_nifti",
    "IntensityScale",
    "label_mci_conversion",
    "LeakageError",
    "list_manifests",
    "load_manifest",
    "load_openbhb",
    "load_openbhb_flat",
    "ManifestError",
    "make_cohort",
    "make_merged",
    "mask_volume",
    "pack_cohort",
    "oasis1_table",
    "oasis2_table",
    "official_split",
    "openbhb_table",
    "RandomCropPad",
    "RandomFlip",
    "RandomTransform",
    "read_table",
    "subject_kfold",
    "subject_subset",
    "unmask",
    "validate_table",
    "write_bids",
]
