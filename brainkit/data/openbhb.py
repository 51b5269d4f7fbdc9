"""OpenBHB: the participants table and loaders for the two public layouts.

1. **Per-subject files** (the official download, Hugging Face / IEEE DataPort)::

       ROOT/participants.tsv
       ROOT/{train,val}/derivatives/sub-{id}/ses-1/sub-{id}_preproc-cat12vbm_desc-gm_T1w.npy

   ``train/`` holds split ``train``; ``val/`` holds ``internal_test`` and ``external_test``.
   Each ``.npy`` holds one CAT12 grey-matter map of shape (1, 121, 145, 121).
   :func:`load_openbhb` reads them.

2. **The challenge kit's flat rows** (RAMP kit ``data/train.npy``, ``data/test.npy``): one
   float32 row per subject whose first 519,945 values are the grey-matter voxels inside the
   template mask (``cat12vbm_space-MNI152_desc-gm_TPM.nii.gz`` > 0.05), in C order of the
   (x, y, z) voxel indices, followed by the other modalities. :func:`unmask` puts them back
   on the 121 x 145 x 121 grid, :func:`mask_volume` is its inverse, and
   :func:`load_openbhb_flat` builds a cohort from a kit file.

   Beware of the axis order: ``nilearn.masking.unmask`` on a 2-D array returns an image of
   shape (X, Y, Z, n), with the samples last. Reshaping that array (or a per-sample volume
   transposed to put an axis first) straight to (n, 1, X, Y, Z) mixes voxels of different
   subjects and positions: the volumes come out scrambled. The samples axis must be moved,
   not reshaped; :func:`unmask` indexes ``out[:, mask]`` directly, which is the same C order
   as ``volume[mask]`` and as nilearn's masking.

:func:`openbhb_table` maps ``participants.tsv`` onto the brainkit vocabulary (see
``data_manifests/openbhb.yaml``): all HC, ``site`` = ``siteXacq`` (the challenge's 64
site x acquisition-setting labels, written ``openbhb-siteNN``), the official ``split`` kept.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from .cohort import SPLITS, Cohort, CohortError, _where, validate_table
from .grid import OPENBHB_AFFINE, OPENBHB_SHAPE, mni_grid
from .nifti import ImageError, _fill_cohort, resample_volume

__all__ = [
    "VBM_SHAPE",
    "VBM_MASK_SIZE",
    "VBM_MASK_THRESHOLD",
    "SPLIT_FOLDERS",
    "VBM_PATTERN",
    "openbhb_table",
    "openbhb_site",
    "vbm_path",
    "load_mask",
    "unmask",
    "mask_volume",
    "load_openbhb",
    "load_openbhb_flat",
]

VBM_SHAPE: tuple[int, int, int] = OPENBHB_SHAPE
#: Grey-matter voxels in the challenge mask (the first values of every flat row).
VBM_MASK_SIZE = 519945
#: The challenge kit binarises the CAT12 grey-matter TPM at ``> 0.05``.
VBM_MASK_THRESHOLD = 0.05
#: Official split -> folder of the per-subject download.
SPLIT_FOLDERS = {"train": "train", "internal_test": "val", "external_test": "val"}
#: Per-subject grey-matter map, relative to the download root.
VBM_PATTERN = ("{folder}/derivatives/sub-{participant_id}/ses-1/"
               "sub-{participant_id}_preproc-cat12vbm_desc-gm_T1w.npy")

_SEX = {"female": "F", "male": "M"}
_REQUIRED = ("participant_id", "sex", "age", "diagnosis", "siteXacq", "split")


def openbhb_site(code) -> str:
    """The brainkit ``site`` of a ``siteXacq`` code, e.g. ``7 -> "openbhb-site07"``."""
    return f"openbhb-site{int(code):02d}"


def openbhb_table(participants_tsv) -> pd.DataFrame:
    """Map OpenBHB's ``participants.tsv`` onto the brainkit vocabulary.

    Parameters
    ----------
    participants_tsv : path-like or pandas.DataFrame
        Needs ``participant_id, sex, age, diagnosis, siteXacq, split``; ``tiv``,
        ``magnetic_field_strength``, ``site``, ``study``, ``acquisition_setting``, ``gmv``,
        ``wmv``, ``csfv`` are used when present.

    Returns
    -------
    pandas.DataFrame
        One row per participant: ``image_id`` = ``subject_id`` = ``participant_id``;
        ``session`` 1; ``dataset`` ``"openbhb"``; ``site`` = :func:`openbhb_site` of
        ``siteXacq``; ``sex`` female -> F, male -> M; ``diagnosis`` control -> HC;
        ``years_from_baseline`` 0; ``split`` (train / internal_test / external_test);
        ``tiv``; ``field_strength`` = ``magnetic_field_strength``; extra columns
        ``openbhb_site`` (the raw ``site``), ``study``, ``acquisition_setting``, ``gmv``,
        ``wmv``, ``csfv``.

    Raises
    ------
    CohortError
        Missing columns, a diagnosis other than control, an unknown sex or split; the
        message names the rows.
    """
    if isinstance(participants_tsv, pd.DataFrame):
        raw, source = participants_tsv.reset_index(drop=True), "participants table"
    else:
        from .realdata import read_delimited

        raw = read_delimited(participants_tsv, what="OpenBHB participants table")
        source = str(participants_tsv)
    missing = [c for c in _REQUIRED if c not in raw.columns]
    if missing:
        raise CohortError(f"{source}: missing column(s) {missing}; OpenBHB's participants.tsv "
                          f"has {list(_REQUIRED)} among others")
    ids = raw["participant_id"].astype(str).str.strip()
    ids = ids.str.replace(r"\.0$", "", regex=True)  # integer ids read as float
    view = raw.assign(image_id=ids)
    dx = raw["diagnosis"].astype("string").str.strip().str.lower()
    not_control = (dx != "control").fillna(True).to_numpy(dtype=bool)
    if not_control.any():
        raise CohortError(f"{_where(view, not_control, source)}: diagnosis must be 'control' "
                          f"(OpenBHB is healthy controls only), got "
                          f"{raw['diagnosis'][not_control].head(3).tolist()}")
    sex = raw["sex"].astype("string").str.strip().str.lower().map(_SEX)
    bad_sex = sex.isna().to_numpy()
    if bad_sex.any():
        raise CohortError(f"{_where(view, bad_sex, source)}: sex must be female or male, got "
                          f"{raw['sex'][bad_sex].head(3).tolist()}")
    code = pd.to_numeric(raw["siteXacq"], errors="coerce").to_numpy(dtype=float)
    bad_code = ~np.isfinite(code) | (code != np.round(code)) | (code < 0)
    if bad_code.any():
        raise CohortError(f"{_where(view, bad_code, source)}: siteXacq must be a non-negative "
                          f"integer code, got {raw['siteXacq'][bad_code].head(3).tolist()}")
    out = pd.DataFrame({
        "image_id": ids.to_numpy(),
        "subject_id": ids.to_numpy(),
        "session": 1,
        "dataset": "openbhb",
        "site": [openbhb_site(c) for c in code],
        "age": raw["age"].to_numpy(),
        "sex": sex.to_numpy(),
        "diagnosis": "HC",
        "years_from_baseline": 0.0,
        "split": raw["split"].to_numpy(),
    })
    if "tiv" in raw:
        out["tiv"] = raw["tiv"].to_numpy()
    if "magnetic_field_strength" in raw:
        out["field_strength"] = raw["magnetic_field_strength"].to_numpy()
    for column, name in (("site", "openbhb_site"), ("study", "study"),
                         ("acquisition_setting", "acquisition_setting"),
                         ("gmv", "gmv"), ("wmv", "wmv"), ("csfv", "csfv")):
        if column in raw:
            out[name] = raw[column].to_numpy()
    return validate_table(out, source=source)


def vbm_path(root: str | os.PathLike, participant_id: str, split: str) -> Path:
    """Path of a participant's grey-matter ``.npy`` in the per-subject download."""
    if split not in SPLIT_FOLDERS:
        raise ValueError(f"split must be one of {list(SPLIT_FOLDERS)}, got {split!r}")
    return Path(root) / VBM_PATTERN.format(folder=SPLIT_FOLDERS[split],
                                           participant_id=participant_id)


def _check_mask(mask) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim != 3:
        raise ValueError(f"mask must be a 3-D array (X, Y, Z), got shape {m.shape}")
    if m.dtype != bool:
        if not np.isin(np.unique(m), (0, 1)).all():
            raise ValueError("mask must be boolean (or 0/1); binarise a probability map first "
                             "(load_mask does, at the kit's threshold)")
        m = m.astype(bool)
    if not m.any():
        raise ValueError("mask selects no voxel")
    return m


def load_mask(path: str | os.PathLike, *, threshold: float = VBM_MASK_THRESHOLD) -> np.ndarray:
    """The challenge mask: a NIfTI probability map binarised at ``> threshold``.

    Parameters
    ----------
    path : path-like
        ``cat12vbm_space-MNI152_desc-gm_TPM.nii.gz`` (OpenBHB ``resource/`` folder or the kit's
        ``submissions/starting_kit/``).
    threshold : float, default 0.05
        The kit's threshold; with the real TPM it selects :data:`VBM_MASK_SIZE` voxels.

    Returns
    -------
    numpy.ndarray of bool, shape (121, 145, 121)
    """
    from .nifti import read_nifti

    data, _ = read_nifti(path)
    return data > threshold


def unmask(flat_rows, mask) -> np.ndarray:
    """Put flat rows of masked voxels back on the volume grid (C order).

    Parameters
    ----------
    flat_rows : array-like of shape (n, n_features) or (n_features,)
        Each row starts with the ``mask.sum()`` masked voxel values, in C order of the
        (x, y, z) indices (``volume[mask]``); further values (the kit's other modalities)
        are ignored.
    mask : array-like of bool, shape (X, Y, Z)

    Returns
    -------
    numpy.ndarray of shape (n, X, Y, Z), float32
        Zero outside the mask.

    Examples
    --------
    >>> import numpy as np
    >>> mask = np.zeros((2, 2, 2), bool); mask[0, 1, 1] = mask[1, 0, 0] = True
    >>> unmask(np.array([[5.0, 7.0]]), mask)[0, 0, 1, 1], unmask([[5.0, 7.0]], mask)[0, 1, 0, 0]
    (np.float32(5.0), np.float32(7.0))
    """
    m = _check_mask(mask)
    rows = np.asarray(flat_rows)
    if rows.ndim == 1:
        rows = rows[None, :]
    if rows.ndim != 2:
        raise ValueError(f"flat_rows must have shape (n, n_features), got {rows.shape}")
    k = int(m.sum())
    if rows.shape[1] < k:
        raise ValueError(f"flat_rows have {rows.shape[1]} values per row but the mask selects "
                         f"{k} voxels (a different mask or modality?)")
    out = np.zeros((rows.shape[0], *m.shape), dtype=np.float32)
    out[:, m] = rows[:, :k]
    return out


def mask_volume(volumes, mask) -> np.ndarray:
    """The inverse of :func:`unmask`: masked voxels of each volume, in C order.

    Parameters
    ----------
    volumes : array-like of shape (n, X, Y, Z) or (X, Y, Z)
    mask : array-like of bool, shape (X, Y, Z)

    Returns
    -------
    numpy.ndarray of shape (n, mask.sum()), float32
    """
    m = _check_mask(mask)
    v = np.asarray(volumes)
    if v.ndim == 3:
        v = v[None]
    if v.ndim != 4 or v.shape[1:] != m.shape:
        raise ValueError(f"volumes must have shape (n, {', '.join(map(str, m.shape))}) like the "
                         f"mask, got {v.shape}")
    return np.asarray(v[:, m], dtype=np.float32)


def _target(grid_mm) -> tuple[tuple[int, int, int], np.ndarray]:
    if grid_mm is None:
        return VBM_SHAPE, OPENBHB_AFFINE.copy()
    return mni_grid(grid_mm)


def _read_vbm(path: Path) -> np.ndarray:
    if not path.is_file():
        raise ImageError(f"{path}: missing file")
    try:
        arr = np.load(path, mmap_mode="r")
    except (ValueError, OSError, EOFError) as err:
        raise ImageError(f"{path}: not a readable .npy file ({err})") from None
    while arr.ndim > 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.shape != VBM_SHAPE:
        raise ImageError(f"{path}: array of shape {arr.shape}, expected {VBM_SHAPE} (or with "
                         "leading singleton axes)")
    try:
        volume = np.array(arr, dtype=np.float32)
    except (ValueError, OSError) as err:
        raise ImageError(f"{path}: the data cannot be read ({err})") from None
    bad = ~np.isfinite(volume)
    if bad.any():
        raise ImageError(f"{path}: {int(bad.sum())} voxels are NaN or infinite")
    return volume


def _check_splits(splits) -> list[str]:
    if splits is None:
        return list(SPLITS)
    if isinstance(splits, str):
        splits = [splits]
    splits = list(splits)
    unknown = [s for s in splits if s not in SPLITS]
    if unknown or not splits:
        raise ValueError(f"splits must be a non-empty subset of {list(SPLITS)}, got {splits}")
    return splits


def load_openbhb(root: str | os.PathLike, *, splits=None, grid_mm: float | None = None,
                 out: str | os.PathLike | None = None, progress: bool = True) -> Cohort:
    """Load the per-subject OpenBHB download as a cohort.

    Parameters
    ----------
    root : path-like
        The download root (holding ``participants.tsv``, ``train/``, ``val/``).
    splits : str or sequence of str, optional
        Official splits to load (default all three).
    grid_mm : float, optional
        Resample to ``mni_grid(grid_mm)`` (e.g. 3 or 6 for quick experiments); ``None``
        keeps the 1.5 mm 121 x 145 x 121 grid.
    out : path-like, optional
        Save the cohort there, filling a memory-mapped store (the 3,984 maps at 1.5 mm take
        34 GB as float32); without ``out`` the images are held in memory.
    progress : bool, default True

    Returns
    -------
    Cohort
        Table from :func:`openbhb_table` (rows in ``participants.tsv`` order).

    Raises
    ------
    ImageError
        Missing, unreadable, wrongly shaped or non-finite files (all listed; run
        ``brainkit data check openbhb --root ROOT`` for a full report).
    """
    root = Path(root)
    tsv = root / "participants.tsv"
    if not tsv.is_file():
        raise FileNotFoundError(f"{tsv} not found: {root} is not an OpenBHB download root "
                                "(expected participants.tsv, train/, val/)")
    table = openbhb_table(tsv)
    keep = table["split"].isin(_check_splits(splits)).to_numpy()
    table = table[keep].reset_index(drop=True)
    shape, affine = _target(grid_mm)
    paths = [vbm_path(root, pid, split) for pid, split in zip(table["image_id"], table["split"])]
    table = table.assign(path=[str(p) for p in paths])

    def produce(i: int) -> np.ndarray:
        return resample_volume(_read_vbm(paths[i]), OPENBHB_AFFINE, shape, affine)

    return _fill_cohort(table, shape, affine, produce, out, progress=progress, desc="openbhb",
                        allow=_CURATED)


#: OpenBHB's images are curated CAT12 grey-matter maps: the blank / mis-scaled image checks
#: of a bring-your-own import (brainkit.data.nifti.image_problem) are not applied to them.
_CURATED = ("constant-image", "intensity-range")


def load_openbhb_flat(npy: str | os.PathLike, tsv: str | os.PathLike, mask, *,
                      grid_mm: float | None = None, out: str | os.PathLike | None = None,
                      progress: bool = True, chunk: int = 32) -> Cohort:
    """Load a challenge-kit file (flat rows) as a cohort.

    Parameters
    ----------
    npy : path-like
        ``data/train.npy`` or ``data/test.npy``: shape (n, n_features), the first
        :data:`VBM_MASK_SIZE` values of each row being the masked grey-matter voxels.
    tsv : path-like
        The matching ``.tsv`` (same row order) with the participants.tsv columns
        :func:`openbhb_table` needs.
    mask : path-like or array of bool, shape (121, 145, 121)
        The template mask: a path is read with :func:`load_mask`.
    grid_mm : float, optional
        Resample to ``mni_grid(grid_mm)``; ``None`` keeps 1.5 mm.
    out : path-like, optional
        Save there through a memory-mapped store (see :func:`load_openbhb`).
    progress : bool, default True
    chunk : int, default 32
        Rows unmasked at once (bounds memory).

    Returns
    -------
    Cohort
    """
    mask_arr = load_mask(mask) if isinstance(mask, (str, os.PathLike)) else _check_mask(mask)
    if mask_arr.shape != VBM_SHAPE:
        raise ValueError(f"mask has shape {mask_arr.shape}, expected {VBM_SHAPE}")
    table = openbhb_table(tsv)
    try:
        rows = np.load(npy, mmap_mode="r")
    except (ValueError, OSError) as err:
        raise ImageError(f"{npy}: not a readable .npy file ({err})") from None
    if rows.ndim != 2 or rows.shape[0] != len(table):
        hint = (" (one extra row: older kit files start with a header row holding the "
                "internal-set size; drop it)" if rows.ndim == 2
                and rows.shape[0] == len(table) + 1 else "")
        raise ImageError(f"{npy}: shape {rows.shape}, expected ({len(table)}, n_features) to "
                         f"match the {len(table)} rows of {tsv}{hint}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    shape, affine = _target(grid_mm)
    cache: dict[int, np.ndarray] = {}

    def produce(i: int) -> np.ndarray:
        start = (i // chunk) * chunk
        if start not in cache:
            cache.clear()
            cache[start] = unmask(rows[start:start + chunk], mask_arr)
        volume = cache[start][i - start]
        bad = ~np.isfinite(volume)
        if bad.any():
            raise ImageError(f"{npy}: row {i} has {int(bad.sum())} NaN or infinite values")
        return resample_volume(volume, OPENBHB_AFFINE, shape, affine)

    return _fill_cohort(table, shape, affine, produce, out, progress=progress, desc="openbhb",
                        allow=_CURATED)
