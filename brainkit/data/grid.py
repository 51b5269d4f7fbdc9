"""The MNI grids brainkit works on.

All grids cover the OpenBHB / CAT12 box: 180 x 216 x 180 mm with the world origin such that the
1.5 mm grid is 121 x 145 x 121 with affine ``[[-1.5,0,0,90],[0,1.5,0,-126],[0,0,1.5,-72]]``.
A voxel size ``mm`` gives ``floor(extent / mm) + 1`` voxels per axis: 3 mm -> 61 x 73 x 61,
6 mm -> 31 x 37 x 31, 2 mm -> 91 x 109 x 91 (the MNI152 2 mm grid), 4 mm -> 46 x 55 x 46.
"""

from __future__ import annotations

import numpy as np

__all__ = ["mni_grid", "OPENBHB_SHAPE", "OPENBHB_AFFINE"]

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
