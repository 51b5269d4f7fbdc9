"""The MNI grids brainkit works on.

All grids cover the OpenBHB / CAT12 box: 180 x 216 x 180 mm with the world origin such that the
1.5 mm grid is 121 x 145 x 121 with affine ``[[-1.5,0,0,90],[0,1.5,0,-126],[0,0,1.5,-72]]``.
A voxel size ``mm`` gives ``floor(extent / mm) + 1`` voxels per axis: 3 mm -> 61 x 73 x 61,
6 mm -> 31 x 37 x 31, 2 mm -> 91 x 109 x 91 (the MNI152 2 mm grid), 4 mm -> 46 x 55 x 46.

:func:`brain_box` is the box of the MNI152 brain mask on any such grid (plus a margin): the part
of the image a model needs to see (a model built with ``input_box`` crops its input to it).
"""

from __future__ import annotations

import inspect
import math
import warnings
from functools import lru_cache

import numpy as np

from .._util import check_int

__all__ = ["BRAIN_BOX_MARGIN_MM", "NotInMNISpace", "brain_box", "mni_grid", "OPENBHB_SHAPE",
           "OPENBHB_AFFINE"]

#: Margin around the MNI152 brain mask's box (mm) kept by :func:`brain_box`: registration is
#: never exact (on the 221 real OASIS-1 images at 4 mm, the mean image keeps 99.9 % of its
#: intensity inside the bare box and 99.998 % with one 4 mm voxel more on each side).
BRAIN_BOX_MARGIN_MM = 6.0

_EXTENT_MM = np.array([180.0, 216.0, 180.0])
_ORIGIN_MM = np.array([90.0, -126.0, -72.0])
_SIGNS = np.array([-1.0, 1.0, 1.0])

OPENBHB_SHAPE = (121, 145, 121)
OPENBHB_AFFINE = np.array([[-1.5, 0, 0, 90], [0, 1.5, 0, -126], [0, 0, 1.5, -72], [0, 0, 0, 1]],
                          dtype=float)


def mni_grid(mm: float) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and affine of the MNI grid with isotropic voxel size ``mm``.

    Parameters
    ----------
    mm : float
        Voxel size in millimetres, in (0, 20].

    Returns
    -------
    shape : tuple of 3 int
    affine : numpy.ndarray of shape (4, 4)
    """
    try:
        mm = float(mm)
    except (TypeError, ValueError):
        raise TypeError(f"grid_mm must be a number of millimetres, got {mm!r}") from None
    if not 0 < mm <= 20:
        raise ValueError(f"grid_mm must be in (0, 20] mm, got {mm}")
    shape = tuple(int(n) for n in np.floor(_EXTENT_MM / mm + 1e-6).astype(int) + 1)
    affine = np.eye(4)
    affine[:3, :3] = np.diag(_SIGNS * mm)
    affine[:3, 3] = _ORIGIN_MM
    return shape, affine


def resample_kwargs() -> dict:
    """Keyword arguments nilearn's ``resample_img`` needs to stay quiet (nilearn >= 0.11 warns
    unless ``force_resample`` / ``copy_header`` are given; older versions do not know them)."""
    from nilearn.image import resample_img

    params = inspect.signature(resample_img).parameters
    return {k: True for k in ("force_resample", "copy_header") if k in params}


class NotInMNISpace(ValueError):
    """The MNI152 brain mask does not fall on a grid (its images are not in MNI space)."""


def brain_box(shape, affine, margin_mm: float = BRAIN_BOX_MARGIN_MM, *, stride: int | None = None
              ) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """The voxel box of the MNI152 brain mask on a grid, widened by a margin.

    Parameters
    ----------
    shape : sequence of 3 int
        The grid's shape (e.g. ``cohort.images().shape[1:]``).
    affine : array-like of shape (4, 4)
        The grid's voxel-to-MNI affine.
    margin_mm : float, default :data:`BRAIN_BOX_MARGIN_MM`
        Kept on each side, rounded up to whole voxels, clipped to the grid.
    stride : int, optional
        The network's total downsampling (:data:`brainkit.models.resnet.OUTPUT_STRIDE`, 32 for
        the ResNets). Each axis of the box is then widened, one voxel at a time on alternate
        sides and within the grid, until it gives the last feature map as many positions as
        the whole axis does: ``ceil(length / stride) == ceil(n / stride)``. ``None``: nothing
        is widened.

    Returns
    -------
    tuple of 3 (start, stop) pairs
        ``images[:, x0:x1, y0:y1, z0:z1]`` holds the brain. On the 6 mm grid (31 x 37 x 31):
        ``((2, 29), (3, 35), (0, 27))``, 66 % of the voxels (the bare mask's box: 55 %); with
        ``stride=32``: ``((2, 29), (2, 35), (0, 27))``, 68 %, whose last feature map is the
        whole image's 1 x 2 x 1 (the narrower box's is 1 x 1 x 1).

    Raises
    ------
    NotInMNISpace
        A grid the brain mask does not fall on (images not in MNI space); a ValueError.
    ValueError
        A bad shape, affine, margin or stride.

    Notes
    -----
    The mask is nilearn's bundled MNI152 brain mask (no download), resampled linearly onto the
    grid and thresholded at 0.5; results are cached per grid.
    """
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"brain_box needs a 3D grid shape, got {shape}")
    affine = np.asarray(affine, dtype=float)
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise ValueError(f"brain_box needs a finite 4x4 affine, got shape {affine.shape}")
    margin_mm = float(margin_mm)
    if not (math.isfinite(margin_mm) and margin_mm >= 0):
        raise ValueError(f"margin_mm must be >= 0 mm, got {margin_mm!r}")
    stride = None if stride is None else check_int("stride", stride, 1)
    box = _brain_box(shape, tuple(map(float, affine.ravel())), margin_mm)
    if stride is None:
        return box
    return tuple(_widen(start, stop, n, stride) for (start, stop), n in zip(box, shape))


def _widen(start: int, stop: int, n: int, stride: int) -> tuple[int, int]:
    """Widen ``[start, stop)`` within ``[0, n)`` until ``ceil(length / stride)`` is
    ``ceil(n / stride)``: a voxel before, then one after, and so on."""
    before = True
    while -(-(stop - start) // stride) < -(-n // stride):
        if (before and start > 0) or stop >= n:
            start -= 1
        else:
            stop += 1
        before = not before
    return start, stop


@lru_cache(maxsize=None)
def _brain_box(shape, affine_flat, margin_mm):
    from nilearn.datasets import load_mni152_brain_mask
    from nilearn.image import resample_img

    affine = np.array(affine_flat).reshape(4, 4)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Resampling binary images")
            out = resample_img(load_mni152_brain_mask(resolution=1), target_affine=affine,
                               target_shape=shape, interpolation="linear", **resample_kwargs())
        inside = np.nonzero(np.asarray(out.get_fdata()) > 0.5)
    except ValueError:       # nilearn: "the field of view ... does not contain any of the data"
        inside = (np.array([], dtype=int),)
    if inside[0].size == 0:
        raise NotInMNISpace(f"the MNI152 brain mask does not fall on the grid of shape {shape} "
                         f"with affine {affine.tolist()}: images not in MNI space cannot be "
                         "cropped to the brain (build the model with input_box=None)")
    voxel_mm = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    box = []
    for axis, n in enumerate(shape):
        pad = int(math.ceil(margin_mm / voxel_mm[axis] - 1e-9))
        start, stop = int(inside[axis].min()), int(inside[axis].max()) + 1
        box.append((max(start - pad, 0), min(stop + pad, n)))
    return tuple(box)
