"""Packing a cohort: the compact volume store's format, and how a cohort is packed.

A float32 volume on the 1.5 mm OpenBHB grid (121 x 145 x 121) is 8.5 MB; the 10,590 images of
the paper are 90 GB, more than a host page cache or a GPU holds, and a CPU loader that reads
and converts them falls behind a bf16 training step. A *packed* cohort keeps the same table and
grid but stores its images compactly:

- **cropped** to the union brain bounding box: the smallest box holding every voxel that is
  non-zero in *any* image, grown by ``margin`` voxels per side (clipped to the grid). Nothing
  non-zero lies outside it, so un-cropping with zeros restores the full grid exactly;
- **quantised** to ``uint8`` (default) or stored as ``float16``;
- **memory-mapped** (``packed.npy``) and converted to float32 on the training device.

Quantisation (uint8)
--------------------
With ``scale`` and ``offset`` stored in ``cohort.json`` (both float32 values)::

    code  = clip(round((x - offset) / scale), 0, 255)        # uint8
    x_hat = float32(code) * scale + offset                   # float32 arithmetic

The value range ``[lo, hi]`` defaults to ``[min(0, min x), max(0, max x)]`` over the cohort
(``value_range`` overrides it; it must contain 0). For grey-matter maps in ``[0, 1]`` that is
``offset = 0`` and ``scale = max x / 255`` (about 1/255): ``x_hat = code * scale``. When
``lo < 0``, ``offset`` is a whole number of steps below zero, so 0 is always a code and the
background decodes to exactly 0. For every ``x`` in ``[lo, hi]``,
``|x_hat - x| <= scale / 2`` (up to float32 rounding of ``x_hat``, about ``1e-7 |x|``);
values outside ``[lo, hi]`` are clipped to it. ``float16`` stores ``x`` rounded to half
precision (exact for values representable in float16; magnitudes above 65504 are refused).

Where the pieces live
---------------------
The store itself (:class:`PackedStore`: the ``packed.npy`` array, its ``cohort.json``
description, reading and decoding on the host) is one of the image sources of
:mod:`brainkit.data.sources`, re-exported here. This module makes packed cohorts
(:func:`pack_cohort`) and holds the arithmetic above (:func:`bounding_box`,
:func:`quantisation`). The device loaders that feed a training step from a store, and the
decode on the device, are in :mod:`brainkit.data.loaders`. Neither this module nor
:mod:`brainkit.data.sources` needs torch.

Examples
--------
>>> from brainkit.data import Cohort
>>> from brainkit.data.packed import pack_cohort
>>> packed = pack_cohort(Cohort.load("cohorts/openbhb"), "cohorts/openbhb-u8")  # doctest: +SKIP
>>> packed.images([0]).dtype, packed.packed_store.dtype                        # doctest: +SKIP
(dtype('float32'), dtype('uint8'))

From the shell: ``brainkit data pack cohorts/openbhb --out cohorts/openbhb-u8``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from .._util import FolderLock
from .cohort import Cohort
from .sources import (
    PACKED_DTYPES,
    PACKED_NAME,
    SOURCES,
    ArraySource,
    Box,
    CohortError,
    PackedStore,
    _atomic_write,
    _blocks,
    _crop,
)

__all__ = [
    "PACKED_DTYPES",
    "PACKED_NAME",
    "PackedStore",
    "bounding_box",
    "pack_cohort",
    "quantisation",
]

_FLOAT16_MAX = float(np.finfo(np.float16).max)


# --------------------------------------------------------------------------- helpers
def _check_dtype(dtype) -> str:
    name = dtype
    if not isinstance(dtype, str):
        try:
            name = np.dtype(dtype).name
        except TypeError:
            name = None
    if name not in PACKED_DTYPES:
        raise ValueError(f"dtype must be one of {PACKED_DTYPES}, got {dtype!r}")
    return name


def _check_margin(margin) -> int:
    if isinstance(margin, bool) or not isinstance(margin, (int, np.integer)) or margin < 0:
        raise ValueError(f"margin must be an integer >= 0 (voxels), got {margin!r}")
    return int(margin)


def _progress(total: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, unit="image", desc=desc, dynamic_ncols=True)


# --------------------------------------------------------------------------- box and range
def _scan(cohort: Cohort, progress: bool = False) -> tuple[np.ndarray, float, float]:
    """One pass over the images: the any-non-zero mask (X, Y, Z), the minimum and maximum.

    Raises CohortError naming the rows whose volume holds NaN or inf.
    """
    grid = cohort.grid_shape
    mask = np.zeros(grid, dtype=bool)
    lo, hi = math.inf, -math.inf
    n = len(cohort)
    with _progress(n, progress, "scan") as bar:
        for start, stop in _blocks(n, 4 * int(np.prod(grid))):
            block = cohort.images(np.arange(start, stop))
            finite = np.isfinite(block.reshape(len(block), -1)).all(axis=1)
            if not finite.all():
                bad = (start + np.flatnonzero(~finite)).tolist()
                ids = cohort.table["image_id"].iloc[bad[:5]].tolist()
                raise CohortError(f"images: rows {bad[:5]} ({ids}) contain NaN or inf; "
                                  "refusing to pack")
            mask |= (block != 0).any(axis=0)
            lo, hi = min(lo, float(block.min())), max(hi, float(block.max()))
            bar.update(stop - start)
    return mask, lo, hi


def _box_of_mask(mask: np.ndarray, margin: int) -> Box:
    if not mask.any():  # every image is zero everywhere: keep one voxel
        return ((0, 1), (0, 1), (0, 1))
    box = []
    for axis, n in enumerate(mask.shape):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        box.append((max(0, int(hit[0]) - margin), min(n, int(hit[-1]) + 1 + margin)))
    return tuple(box)  # type: ignore[return-value]


def bounding_box(images: np.ndarray, *, margin: int = 2) -> Box:
    """The union bounding box of the non-zero voxels of a stack of volumes.

    Parameters
    ----------
    images : numpy.ndarray of shape (n, X, Y, Z)
        Any numeric dtype (a memory map is read in blocks).
    margin : int, default 2
        Voxels added on each side, clipped to the grid.

    Returns
    -------
    tuple of 3 (start, stop) pairs
        Half-open voxel ranges per axis: every voxel non-zero in any image lies in
        ``images[:, x0:x1, y0:y1, z0:z1]``. With no non-zero voxel at all, the one-voxel box
        ``((0, 1), (0, 1), (0, 1))``.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.zeros((2, 10, 10, 10)); x[0, 3, 4, 5] = 1; x[1, 6, 4, 5] = 2
    >>> bounding_box(x, margin=1)
    ((2, 8), (3, 6), (4, 7))
    """
    if not isinstance(images, np.ndarray) or images.ndim != 4:
        raise ValueError("images must be a numpy array of shape (n, X, Y, Z), got "
                         f"{getattr(images, 'shape', type(images).__name__)}")
    margin = _check_margin(margin)
    mask = np.zeros(images.shape[1:], dtype=bool)
    for start, stop in _blocks(len(images), images[0].nbytes if len(images) else 1):
        mask |= (np.asarray(images[start:stop]) != 0).any(axis=0)
    return _box_of_mask(mask, margin)


def quantisation(value_range) -> tuple[float, float]:
    """``(scale, offset)`` of the uint8 code for values in ``value_range``.

    Parameters
    ----------
    value_range : (float, float)
        ``(lo, hi)`` with ``lo <= 0 <= hi`` (the background is 0 and must stay exactly 0).

    Returns
    -------
    scale : float
        The step between codes (a float32 value), ``> 0``.
    offset : float
        The value of code 0 (a float32 value): 0 when ``lo == 0``; otherwise a whole number
        ``k`` of steps below zero (``offset = -(k * scale)`` in float32), so that code ``k``
        decodes to exactly 0. Codes 0..255 cover ``[lo, hi]``.

    Examples
    --------
    >>> scale, offset = quantisation((0.0, 1.0))
    >>> offset, round(scale * 255, 6)
    (0.0, 1.0)
    """
    try:
        lo, hi = (float(v) for v in value_range)
    except (TypeError, ValueError):
        raise TypeError(f"value_range must be a (low, high) pair of numbers, got "
                        f"{value_range!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo <= 0.0 <= hi):
        raise ValueError(f"value_range must be finite with low <= 0 <= high (the background "
                         f"outside the brain box is 0), got {value_range!r}")
    if not (hi - lo) / 255.0 > float(np.finfo(np.float32).tiny):
        hi = lo + 1.0  # an empty (or float32-degenerate) range: any step will do
    if not np.isfinite(np.float32(hi - lo)):
        raise ValueError(f"value_range {value_range!r} is wider than float32 can hold")
    if lo == 0.0:
        return float(np.float32(hi / 255.0)), 0.0
    # One spare code: k steps below 0 plus (255 - k) above cover [lo, hi] (see docstring).
    scale = np.float32((hi - lo) / 254.0)
    k = math.ceil(-lo / float(scale))
    offset = -(np.float32(k) * scale)
    return float(scale), float(offset)


# --------------------------------------------------------------------------- packing
def pack_cohort(cohort: Cohort, out: str | os.PathLike, dtype: str = "uint8", *,
                margin: int = 2, value_range=None, overwrite: bool = False,
                progress: bool = False) -> Cohort:
    """Write a packed copy of a cohort (cropped, uint8 or float16, memory-mappable).

    Parameters
    ----------
    cohort : brainkit.data.Cohort
        A cohort with images (float, or itself packed).
    out : path-like
        New cohort directory: ``table.parquet``, ``packed.npy`` (n, x, y, z) and
        ``cohort.json`` (with a ``"packed"`` entry: dtype, box, scale, offset, value range,
        margin).
    dtype : {"uint8", "float16"}, default "uint8"
        See the module docstring for the quantisation and its error bound.
    margin : int, default 2
        Voxels added around the union bounding box of the non-zero voxels.
    value_range : (float, float), optional
        uint8 only: the range the codes cover (``lo <= 0 <= hi``); values outside are
        clipped. Default: ``[min(0, min x), max(0, max x)]`` over the cohort (no clipping).
    overwrite : bool, default False
        Replace a cohort already in ``out`` (its ``images.npy`` is removed). Never the
        cohort being packed.
    progress : bool, default False
        Show progress bars (two passes: scan, then write).

    Returns
    -------
    brainkit.data.Cohort
        ``Cohort.load(out)``: same table and affine; ``images()`` are float32 full-grid
        volumes within :attr:`PackedStore.max_error` of the originals.

    Raises
    ------
    ValueError
        Bad ``dtype`` / ``margin`` / ``value_range``; float16 overflow (rows named).
    CohortError
        A table-only cohort, or NaN / inf in an image (rows named).
    FileExistsError
        ``out`` already holds a cohort and ``overwrite`` is False.
    """
    if not isinstance(cohort, Cohort):
        raise TypeError(f"cohort must be a brainkit.data.Cohort, got {type(cohort).__name__}")
    dtype = _check_dtype(dtype)
    margin = _check_margin(margin)
    if value_range is not None and dtype != "uint8":
        raise ValueError(f"value_range applies to dtype='uint8' only, got dtype={dtype!r}")
    if value_range is not None:
        quantisation(value_range)  # validate before the long scan
    if not cohort.has_images:
        raise CohortError("cannot pack a table-only cohort (it has no images)")
    out = Path(out)
    own = cohort.source.filename  # the memory-mapped file the images are read from, if any
    source_files = set() if own is None else {os.path.realpath(own)}
    if (out / "cohort.json").exists():
        if not overwrite:
            raise FileExistsError(f"{out} already holds a cohort; choose another --out or pass "
                                  "overwrite=True (CLI: --overwrite)")
        targets = {os.path.realpath(out / cls.file_name) for cls in SOURCES.values()}
        if source_files & targets:
            raise ValueError(f"{out} is the directory of the cohort being packed; write the "
                             "packed copy elsewhere")

    mask, lo, hi = _scan(cohort, progress)
    box = _box_of_mask(mask, margin)
    if dtype == "uint8":
        value_range = (min(0.0, lo), max(0.0, hi)) if value_range is None \
            else tuple(float(v) for v in value_range)
        scale, offset = quantisation(value_range)
    else:
        if max(abs(lo), abs(hi)) > _FLOAT16_MAX:
            raise ValueError(f"values reach {max(abs(lo), abs(hi)):g}, beyond float16's "
                             f"{_FLOAT16_MAX:g}; use dtype='uint8'")
        scale, offset, value_range = 1.0, 0.0, None
    crop = _crop(box)
    shape = (len(cohort),) + tuple(b - a for a, b in box)
    # locked while writing: a second pack into the same folder refuses, naming this pid
    lock = FolderLock(out, what="data pack", remove=True).acquire()
    try:
        def write(tmp):
            arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.dtype(dtype), shape=shape)
            with _progress(len(cohort), progress, "pack") as bar:
                for start, stop in _blocks(len(cohort), 4 * int(np.prod(cohort.grid_shape))):
                    block = cohort.images(np.arange(start, stop))[crop]
                    if dtype == "uint8":
                        block -= np.float32(offset)
                        block /= np.float32(scale)
                        np.rint(block, out=block)
                        np.clip(block, 0, 255, out=block)
                    arr[start:stop] = block.astype(dtype)
                    bar.update(stop - start)
            arr.flush()
            del arr

        _atomic_write(out / PACKED_NAME, write)
        data = np.load(out / PACKED_NAME, mmap_mode="r")
        packed = Cohort(cohort.table, PackedStore(data, grid_shape=cohort.grid_shape, box=box,
                                                  scale=scale, offset=offset,
                                                  value_range=value_range, margin=margin),
                        cohort.affine, _validated=True)
        packed.save(out)
        stale = out / ArraySource.file_name
        if stale.exists():
            stale.unlink()
    finally:
        lock.release()
    return Cohort.load(out)


