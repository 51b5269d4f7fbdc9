"""Bring your own NIfTI images: check them, resample them to an MNI grid, save a cohort.

``import_nifti(table, images_dir, out, grid_mm)`` takes a table in the brainkit vocabulary and a
folder holding ``{image_id}.nii`` or ``{image_id}.nii.gz`` for every row. Every image is
checked before anything is written:

- readable (a corrupt or truncated file is named, with the reader's complaint);
- one 3-D volume (a 4-D image with a single volume is squeezed; a real 4-D series is refused);
- finite (NaN / inf voxels are counted and refused);
- a plausible affine: finite, non-singular, voxel sizes 0.5-10 mm, axes within about 25
  degrees of the MNI axes, and a field of view covering at least half of the MNI brain box
  (an image in scanner space, or with a wrong origin, fails this; register it to MNI first).

Images are then resampled with ``nilearn.image.resample_img`` (continuous interpolation) to
``mni_grid(grid_mm)``; with ``grid_mm=None`` they keep their own grid, which must be shared.
Each resampled volume must also look like a brain image (:func:`image_problem`): not constant
(an all-zero volume) and with intensities of a plausible size (largest magnitude between
1e-6 and 1e6: a volume scaled by 1e30 is refused). The table must be consistent per subject
(:func:`brainkit.data.cohort.check_subjects`). Each of these judgements can be switched off
by name (``allow=``, CLI ``--allow``). Errors list every faulty file at once, with its table
row and image id.

The output folder is locked while the import runs (a second import into it is refused), an
interrupted import (SIGTERM, Ctrl-C) removes what it wrote, and leftovers of a killed one
(``kill -9``) are recognised and replaced by the next import into that folder.
"""

from __future__ import annotations

import inspect
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from .._util import LOCK_NAME, FolderLock, SignalFlag
from ..errors import InputError
from .cohort import SUBJECT_CHECKS, Cohort, check_allow, check_subjects, validate_table
from .grid import mni_grid

__all__ = [
    "IMAGE_CHECKS",
    "INTENSITY_RANGE",
    "ImageError",
    "ImportInterrupted",
    "VOXEL_MM_RANGE",
    "find_image",
    "read_nifti_header",
    "read_nifti",
    "affine_problem",
    "resample_volume",
    "image_problem",
    "import_nifti",
]

#: Plausible voxel sizes (mm); outside this the header is almost surely mislabelled.
VOXEL_MM_RANGE = (0.5, 10.0)
#: The MNI brain box (mm) the brainkit grids cover: x, y, z ranges.
_MNI_BOX = np.array([[-90.0, 90.0], [-126.0, 90.0], [-72.0, 108.0]])
_MIN_BOX_OVERLAP = 0.5
_MIN_AXIS_COSINE = 0.9     # about 25 degrees
_MAX_LISTED = 20


#: The image judgements of :func:`image_problem` (each can be allowed by name).
IMAGE_CHECKS: tuple[str, ...] = ("constant-image", "intensity-range")
#: Plausible largest voxel magnitude of a brain image (intensities or tissue probabilities).
INTENSITY_RANGE: tuple[float, float] = (1e-6, 1e6)
_TMP_PREFIX = ".import-"


class ImageError(InputError):
    """One or more images that cannot be used; the message names each file."""


class ImportInterrupted(RuntimeError):
    """An import stopped on SIGTERM / SIGINT; what it had written was removed.

    Attributes
    ----------
    signal_number : int
    """

    def __init__(self, signal_number: int, out):
        import signal

        self.signal_number = signal_number
        super().__init__(f"import interrupted by {signal.Signals(signal_number).name}; "
                         f"nothing was kept in {out}: run the same command again")


def image_problem(volume: np.ndarray, allow=None) -> str | None:
    """Why a finite volume does not look like a brain image, or None if it does.

    Parameters
    ----------
    volume : numpy.ndarray
    allow : collection of str, optional
        Names from :data:`IMAGE_CHECKS` not to enforce: ``"constant-image"`` (every voxel
        has one value, e.g. an all-zero image), ``"intensity-range"`` (the largest
        magnitude is outside :data:`INTENSITY_RANGE`, e.g. a volume scaled by 1e30).

    Returns
    -------
    str or None
    """
    allow = check_allow(allow, IMAGE_CHECKS)
    lo, hi = float(np.min(volume)), float(np.max(volume))
    if lo == hi:
        if "constant-image" in allow:
            return None
        return (f"every voxel is {lo:g}: a blank image, not a brain (allow with "
                "'constant-image' if that is right)")
    biggest = max(abs(lo), abs(hi))
    low, high = INTENSITY_RANGE
    if "intensity-range" not in allow and not low <= biggest <= high:
        return (f"voxel values span [{lo:.3g}, {hi:.3g}]: the largest magnitude is outside the "
                f"plausible {low:g}..{high:g}, the image looks mis-scaled (check the header's "
                "scl_slope, or rescale it; allow with 'intensity-range' if that is right)")
    return None


def _check_image_id(image_id: str) -> str | None:
    """Why an image id cannot name a file in the images folder, or None."""
    if image_id in ("", ".", "..") or any(c in image_id for c in ("/", "\\", "\0")):
        return (f"image_id {image_id!r} cannot be a file name in the images folder (no path "
                "separators, not '.' or '..')")
    return None


def _leftovers(out: Path) -> list[Path] | None:
    """The files in ``out`` if they are all leftovers of an interrupted brainkit import
    (its lock file, temporary files, and a save cut short before ``cohort.json``);
    ``None`` if ``out`` holds anything else."""
    entries = list(out.iterdir())
    if (out / "cohort.json").exists():
        return None
    ours = [p for p in entries if p.name == LOCK_NAME or p.name.startswith(_TMP_PREFIX)
            or (p.name.startswith(".") and p.name.endswith(".tmp"))]
    saved = [p for p in entries if p.name in ("table.parquet", "images.npy")]
    if len(ours) + len(saved) != len(entries) or (saved and not ours):
        return None
    return entries


def find_image(images_dir: str | os.PathLike, image_id: str) -> Path | None:
    """The file ``{image_id}.nii.gz`` or ``{image_id}.nii`` in ``images_dir`` (None if absent).

    Raises
    ------
    ImageError
        When both exist (ambiguous).
    """
    folder = Path(images_dir)
    found = [folder / f"{image_id}{ext}" for ext in (".nii.gz", ".nii")
             if (folder / f"{image_id}{ext}").is_file()]
    if len(found) > 1:
        raise ImageError(f"{found[0]} and {found[1]} both exist for image_id {image_id!r}; "
                         "keep one")
    return found[0] if found else None


def _load(path: Path):
    import nibabel as nib

    try:
        img = nib.load(str(path))
    except Exception as err:  # nibabel raises many types for broken files
        raise ImageError(f"{path}: not a readable NIfTI file ({type(err).__name__}: {err})"
                         ) from None
    if getattr(img, "affine", None) is None:
        raise ImageError(f"{path}: the image has no affine (voxel-to-world transform)")
    return img


def _spatial_shape(shape: tuple, path: Path) -> tuple[int, int, int]:
    if len(shape) == 4 and shape[3] == 1:
        return tuple(int(s) for s in shape[:3])
    if len(shape) != 3:
        raise ImageError(f"{path}: {len(shape)}-D image of shape {tuple(shape)}; expected one "
                         "3-D volume (a 4-D image is accepted only with a single volume)")
    return tuple(int(s) for s in shape)


def read_nifti_header(path: str | os.PathLike) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and affine of a NIfTI image, from its header only.

    Parameters
    ----------
    path : path-like

    Returns
    -------
    shape : tuple of 3 int
        Spatial shape (a trailing singleton 4th axis is dropped).
    affine : numpy.ndarray of shape (4, 4)

    Raises
    ------
    ImageError
        Unreadable file, or not a single 3-D volume.
    """
    path = Path(path)
    img = _load(path)
    return _spatial_shape(img.shape, path), np.asarray(img.affine, dtype=float)


def read_nifti(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a NIfTI volume and check it holds finite numbers.

    Parameters
    ----------
    path : path-like

    Returns
    -------
    data : numpy.ndarray of shape (X, Y, Z), float32
        Scaled voxel values (``scl_slope`` / ``scl_inter`` applied).
    affine : numpy.ndarray of shape (4, 4)

    Raises
    ------
    ImageError
        Unreadable or truncated file, more than one volume, or NaN / inf voxels.
    """
    path = Path(path)
    img = _load(path)
    shape = _spatial_shape(img.shape, path)
    try:
        data = np.asarray(img.get_fdata(dtype=np.float32)).reshape(shape)
    except Exception as err:
        raise ImageError(f"{path}: the voxel data cannot be read, the file is truncated or "
                         f"corrupt ({type(err).__name__}: {err})") from None
    bad = ~np.isfinite(data)
    if bad.any():
        raise ImageError(f"{path}: {int(bad.sum())} of {data.size} voxels are NaN or infinite")
    return data, np.asarray(img.affine, dtype=float)


def affine_problem(affine, shape) -> str | None:
    """Why an affine is implausible for an MNI-registered brain image, or None if it is fine.

    Parameters
    ----------
    affine : array-like of shape (4, 4)
    shape : tuple of 3 int
        The image's spatial shape (for its field of view).

    Returns
    -------
    str or None
        A sentence describing the first problem found.
    """
    a = np.asarray(affine, dtype=float)
    if a.shape != (4, 4) or not np.isfinite(a).all():
        return f"affine must be a finite 4x4 matrix, got {a.tolist()}"
    m = a[:3, :3]
    if abs(np.linalg.det(m)) < 1e-9:
        return "the affine is singular (a zero voxel size): the header is broken"
    zooms = np.sqrt((m ** 2).sum(axis=0))
    lo, hi = VOXEL_MM_RANGE
    if np.any(zooms < lo) or np.any(zooms > hi):
        return (f"voxel sizes {np.round(zooms, 3).tolist()} mm are outside the plausible "
                f"{lo:g}-{hi:g} mm: the header looks mislabelled")
    cosines = np.abs(m / zooms).max(axis=0)
    if np.any(cosines < _MIN_AXIS_COSINE):
        return ("the voxel axes are rotated more than about 25 degrees from the MNI axes: the "
                "image does not look registered to MNI (register it first)")
    corners = np.array(np.meshgrid(*[[0, s - 1] for s in shape], indexing="ij")).reshape(3, -1)
    world = m @ corners + a[:3, 3:4]
    half = np.abs(m).sum(axis=1) / 2
    lo_w, hi_w = world.min(axis=1) - half, world.max(axis=1) + half
    inter = np.clip(np.minimum(hi_w, _MNI_BOX[:, 1]) - np.maximum(lo_w, _MNI_BOX[:, 0]), 0, None)
    overlap = inter.prod() / np.diff(_MNI_BOX, axis=1).prod()
    if overlap < _MIN_BOX_OVERLAP:
        fov = ", ".join(f"{x:.0f}..{y:.0f}" for x, y in zip(lo_w, hi_w))
        return (f"the field of view (x, y, z = {fov} mm) covers {overlap:.0%} of the MNI brain "
                "box: the image is not in MNI space or its origin is wrong (register it to "
                "MNI first)")
    return None


def _resample_kwargs() -> dict:
    from nilearn.image import resample_img

    params = inspect.signature(resample_img).parameters
    # nilearn >= 0.11 warns unless these are given; older versions do not know them.
    return {k: True for k in ("force_resample", "copy_header") if k in params}


def resample_volume(volume: np.ndarray, affine, target_shape, target_affine) -> np.ndarray:
    """Resample one volume onto a target grid (nilearn, continuous interpolation).

    Parameters
    ----------
    volume : numpy.ndarray of shape (X, Y, Z)
    affine : array-like of shape (4, 4)
        The volume's voxel-to-world transform.
    target_shape : tuple of 3 int
    target_affine : array-like of shape (4, 4)

    Returns
    -------
    numpy.ndarray of shape ``target_shape``, float32
        A copy of ``volume`` when the grids already agree; zero outside the source's
        field of view.
    """
    import nibabel as nib
    from nilearn.image import resample_img

    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ValueError(f"volume must be 3-D (X, Y, Z), got shape {volume.shape}")
    target_shape = tuple(int(s) for s in target_shape)
    target_affine = np.asarray(target_affine, dtype=float)
    if volume.shape == target_shape and np.allclose(affine, target_affine, atol=1e-4):
        return np.array(volume, dtype=np.float32)
    img = nib.Nifti1Image(np.asarray(volume, dtype=np.float32), np.asarray(affine, dtype=float))
    with warnings.catch_warnings():
        # nilearn notes when the output is cast; the data are float32 either way
        warnings.simplefilter("ignore", UserWarning)
        out = resample_img(img, target_affine=target_affine, target_shape=target_shape,
                           interpolation="continuous", **_resample_kwargs())
    return np.asarray(out.dataobj, dtype=np.float32)


def _listing(problems: list[str], what: str) -> str:
    head = "\n  ".join(problems[:_MAX_LISTED])
    more = (f"\n  ... and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED
            else "")
    return f"{len(problems)} {what}:\n  {head}{more}"


def _row_label(table: pd.DataFrame, i: int) -> str:
    return f"row {i} (image_id {table['image_id'].iloc[i]})"


def check_out_folder(out: str | os.PathLike) -> None:
    """Refuse an output folder that holds anything but an interrupted import's leftovers.

    Raises
    ------
    InputError
        ``out`` is a file, or a folder holding a cohort or other files (a ``ValueError``).
    """
    out = Path(out)
    if not out.exists():
        return
    if not out.is_dir() or _leftovers(out) is None:
        raise InputError(f"out: {str(out)!r} already exists and is not an empty folder; "
                         "choose a new folder for the cohort")


def _fill_cohort(table: pd.DataFrame, shape: tuple[int, int, int], affine: np.ndarray,
                 produce: Callable[[int], np.ndarray], out: str | os.PathLike | None, *,
                 progress: bool, desc: str, allow=None) -> Cohort:
    """Make a cohort whose image ``i`` is ``produce(i)`` (float32, ``shape``).

    With ``out`` the images go to a memory-mapped file inside ``out`` (bounded memory), the
    cohort is saved there and returned memory-mapped; otherwise they stay in memory.
    ``produce`` raises :class:`ImageError` for a bad image, and every volume is checked by
    :func:`image_problem` (``allow``): all problems are collected and reported together, and
    nothing is left behind in ``out``. With ``out``, the folder is locked for the whole
    import (:class:`brainkit._util.FolderLock`), leftovers of a killed import are replaced,
    and SIGTERM / SIGINT stop the import cleanly (:class:`ImportInterrupted`).
    """
    from tqdm import tqdm

    allow = check_allow(allow, IMAGE_CHECKS)
    n = len(table)
    created = False
    tmp_path = None
    lock = None
    if out is not None:
        out = Path(out)
        created = not out.exists()
        check_out_folder(out)
        lock = FolderLock(out, what="cohort import", remove=True).acquire()
    try:
        if out is not None:
            for leftover in _leftovers(out) or []:
                if leftover.name != LOCK_NAME:
                    warnings.warn(f"{out}: removing {leftover.name}, left by an interrupted "
                                  "import", stacklevel=3)
                    leftover.unlink()
            fd, tmp_path = tempfile.mkstemp(dir=out, prefix=_TMP_PREFIX, suffix=".npy")
            os.close(fd)
            images = np.lib.format.open_memmap(tmp_path, mode="w+", dtype=np.float32,
                                               shape=(n, *shape))
        else:
            images = np.empty((n, *shape), dtype=np.float32)
        problems: list[str] = []
        with SignalFlag(out is not None) as guard:
            for i in tqdm(range(n), desc=desc, unit="image", disable=not progress):
                if guard.signum is not None:
                    raise ImportInterrupted(guard.signum, out)
                try:
                    volume = produce(i)
                except ImageError as err:
                    problems.append(f"{_row_label(table, i)}: {err}")
                    continue
                if volume.shape != tuple(shape):
                    problems.append(f"{_row_label(table, i)}: volume of shape {volume.shape}, "
                                    f"expected {tuple(shape)}")
                    continue
                reason = image_problem(volume, allow)
                if reason is not None:
                    source = table["path"].iloc[i] if "path" in table else None
                    problems.append(f"{_row_label(table, i)}: "
                                    + (f"{source}: " if source else "") + reason)
                    continue
                images[i] = volume
            if problems:
                raise ImageError(_listing(problems, "unusable image(s)"))
            if out is None:
                return Cohort(table, images, affine, check_finite=False)
            images.flush()
            Cohort(table, images, affine, check_finite=False).save(out)
            if guard.signum is not None:
                raise ImportInterrupted(guard.signum, out)
        images = None
        os.unlink(tmp_path)
        tmp_path = None
        return Cohort.load(out)
    except BaseException:
        images = None
        if tmp_path is not None and os.path.exists(tmp_path):
            os.unlink(tmp_path)
        if out is not None and out.exists():
            if created:
                shutil.rmtree(out)
            else:  # the user's folder: remove only what this import wrote
                for name in ("cohort.json", "table.parquet", "images.npy"):
                    if (out / name).exists():
                        (out / name).unlink()
        raise
    finally:
        if lock is not None:
            lock.release()


def import_nifti(table, images_dir: str | os.PathLike | None, out: str | os.PathLike,
                 grid_mm: float | None = None, *, allow=None, progress: bool = True) -> Cohort:
    """Import a folder of NIfTI images and their table as a brainkit cohort.

    Parameters
    ----------
    table : pandas.DataFrame or path-like
        One row per image in the brainkit vocabulary (:data:`brainkit.data.COLUMNS`; a
        ``.tsv`` or ``.csv`` file is read with :func:`brainkit.data.realdata.read_table`).
    images_dir : path-like or None
        Folder holding ``{image_id}.nii`` or ``{image_id}.nii.gz`` for every row. Files that
        match no row are ignored with a warning. ``None``: the table's ``path`` column names
        each row's file (what :func:`brainkit.data.bids.bids_table` gives).
    out : path-like
        New (or empty) folder for the cohort (:meth:`Cohort.save` layout). It is locked
        while the import runs; leftovers of an interrupted import into it are replaced.
    grid_mm : float, optional
        Resample every image to ``mni_grid(grid_mm)`` (continuous interpolation). ``None``
        keeps the images' own grid, which must then be the same for all images.
    allow : collection of str, optional
        Judgements not to enforce, by name: the table checks of
        :func:`brainkit.data.cohort.check_subjects` (``"sex-change"``, ``"age-order"``,
        ``"repeat-session"``) and the image checks of :func:`image_problem`
        (``"constant-image"``, ``"intensity-range"``). By default all are enforced.
    progress : bool, default True
        Show a tqdm progress bar.

    Returns
    -------
    Cohort
        The saved cohort, memory-mapped from ``out``; the table gains a ``path`` column (the
        source file of each image; with an ``images_dir``, any ``path`` column given is
        replaced).

    Raises
    ------
    FileNotFoundError
        ``images_dir`` does not exist.
    ValueError
        ``out`` exists and is not empty.
    FolderLockedError
        Another import is writing into ``out``.
    CohortError
        Table problems (missing columns, duplicate or missing ids, a subject whose sex
        changes, whose age decreases with session, or with a repeated session, ...): rows
        are named.
    ImageError
        Missing, unreadable, truncated, 4-D, non-finite, blank, mis-scaled or
        implausibly-labelled images, or different grids with ``grid_mm=None``: every faulty
        file is named with its row.
    ImportInterrupted
        SIGTERM / SIGINT during the import (nothing is kept in ``out``).

    Examples
    --------
    >>> cohort = import_nifti("participants.tsv", "images/", "cohort", grid_mm=3)  # doctest: +SKIP
    >>> cohort.grid_shape                                                          # doctest: +SKIP
    (61, 73, 61)
    """
    from .realdata import read_table

    allow = check_allow(allow, SUBJECT_CHECKS + IMAGE_CHECKS)
    if isinstance(table, pd.DataFrame):
        source = "table"
        table = validate_table(table, source=source)
    else:
        source = str(table)
        table = read_table(table)
    check_subjects(table, source=source, allow=allow & set(SUBJECT_CHECKS))
    out = Path(out)
    if images_dir is None:
        check_out_folder(out)
        paths, problems = _listed_paths(table, source)
    else:
        paths, problems = _folder_paths(table, Path(images_dir), out)
    if problems:
        raise ImageError(_listing(problems, "row(s) without an image"))
    return _import_paths(table, paths, out, grid_mm, allow=allow, progress=progress)


def _listed_paths(table: pd.DataFrame, source: str) -> tuple[list[Path], list[str]]:
    """Each row's file from the table's ``path`` column."""
    from ..errors import InputError

    if "path" not in table:
        raise InputError(f"{source}: images_dir is None but the table has no 'path' column "
                         "(give the images folder, or a 'path' per row)")
    paths, problems = [], []
    for i, value in enumerate(table["path"]):
        path = Path(str(value)) if isinstance(value, (str, os.PathLike)) and str(value) else None
        if path is None or not path.is_file():
            problems.append(f"{_row_label(table, i)}: no file {str(value)!r}")
        paths.append(path)
    return paths, problems


def _folder_paths(table: pd.DataFrame, folder: Path, out: Path) -> tuple[list[Path], list[str]]:
    """Each row's ``{image_id}.nii[.gz]`` in ``folder``."""
    if not folder.is_dir():
        from ..errors import MissingFileError

        raise MissingFileError(f"images folder {str(folder)!r} does not exist")
    check_out_folder(out)
    paths: list[Path] = []
    problems: list[str] = []
    for i, image_id in enumerate(table["image_id"]):
        reason = _check_image_id(image_id)
        if reason is not None:
            problems.append(f"{_row_label(table, i)}: {reason}")
            paths.append(None)
            continue
        try:
            found = find_image(folder, image_id)
        except ImageError as err:
            problems.append(f"{_row_label(table, i)}: {err}")
            continue
        if found is None:
            problems.append(f"{_row_label(table, i)}: no {image_id}.nii.gz or {image_id}.nii "
                            f"in {folder}")
        paths.append(found)
    if problems:
        return paths, problems
    known = set(table["image_id"])
    extra = sorted(p.name for p in folder.iterdir()
                   if p.name.endswith((".nii", ".nii.gz"))
                   and p.name.removesuffix(".gz").removesuffix(".nii") not in known)
    if extra:
        warnings.warn(f"{len(extra)} image(s) in {folder} match no table row and are ignored: "
                      f"{extra[:5]}{' ...' if len(extra) > 5 else ''}", stacklevel=3)
    return paths, problems


def _import_paths(table: pd.DataFrame, paths: list[Path], out: Path, grid_mm, *, allow,
                  progress: bool) -> Cohort:
    """Read, check, resample and save the images ``paths`` (one per row of ``table``)."""
    target = None if grid_mm is None else mni_grid(grid_mm)
    problems: list[str] = []

    # 2. headers: readable, 3-D, plausible affine
    grids: list[tuple[tuple[int, int, int], np.ndarray]] = []
    for i, path in enumerate(paths):
        try:
            shape, affine = read_nifti_header(path)
        except ImageError as err:
            problems.append(f"{_row_label(table, i)}: {err}")
            continue
        reason = affine_problem(affine, shape)
        if reason:
            problems.append(f"{_row_label(table, i)}: {path}: {reason}")
        grids.append((shape, affine))
    if problems:
        raise ImageError(_listing(problems, "unusable image(s)"))

    # 3. the output grid
    if target is None:
        groups: dict[tuple, list[int]] = {}
        for i, (shape, affine) in enumerate(grids):
            key = (shape, tuple(np.round(affine, 3).ravel()))
            groups.setdefault(key, []).append(i)
        if len(groups) > 1:
            lines = [f"shape {key[0]}, voxel sizes "
                     f"{np.round(np.sqrt((grids[rows[0]][1][:3, :3] ** 2).sum(0)), 3).tolist()}"
                     f" mm: {len(rows)} image(s), e.g. {paths[rows[0]].name}"
                     for key, rows in groups.items()]
            raise ImageError(f"the images are on {len(groups)} different grids and grid_mm is "
                             "None; pass grid_mm (e.g. 1.5, 3 or 6) to resample them all:\n  "
                             + "\n  ".join(lines))
        target = grids[0]
    shape, target_affine = target

    table = table.assign(path=[str(p) for p in paths])

    def produce(i: int) -> np.ndarray:
        data, affine = read_nifti(paths[i])
        return resample_volume(data, affine, shape, target_affine)

    return _fill_cohort(table, shape, target_affine, produce, out, progress=progress,
                        desc="import", allow=allow & set(IMAGE_CHECKS))
