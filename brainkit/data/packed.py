"""A compact volume store, and the data paths that feed a training step from it.

The store itself (:class:`PackedStore`) is one of the image sources of
:mod:`brainkit.data.sources`, re-exported here.

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

Training on the full grid
-------------------------
The store is un-cropped on the device (zero padding around the box) before augmentation: the
released crop and cutout are fractions of the *full* grid's axes
(:data:`brainkit.data.augment.RELEASED_CROP_FRACTION`), so training on the cropped box would
change what the augmentation does. Un-cropping is one ``F.pad`` on the device and makes a
packed cohort train exactly like a float cohort holding the same (dequantised) values.

Data paths
----------
:func:`open_batches` gives the training loop a batch source for one of :data:`DATA_PATHS`:

``"resident"``
    The packed bytes (or, for a float cohort, its float32 images) are copied once to the
    device; a batch is an ``index_select`` there, then decoded and un-cropped: no CPU work
    and no host-to-device copy per step.
``"memmap"``
    The batch's packed bytes are read from the memory map on the host (sorted reads), pinned
    when the device is CUDA, copied (asynchronously) and decoded on the device.
    :func:`brainkit.train.fit` reads the next batch in a background thread (``prefetch``).
``"auto"``
    ``"resident"`` on CUDA when the copy takes less than ``memory_fraction`` (default 50 %)
    of the device's free memory (``torch.cuda.mem_get_info``), else ``"memmap"``. On CPU
    always ``"memmap"``: the memory map already serves pages from the host cache, and a
    resident copy would only duplicate them.

Both paths read the same bytes and decode them with the same :func:`decode_batch`, so a batch
is bit-identical on either path, and training does not depend on the path.

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
import torch

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
    RawBatch,
    _atomic_write,
    _blocks,
    _crop,
)

__all__ = [
    "DATA_PATHS",
    "PACKED_DTYPES",
    "PACKED_NAME",
    "HostBatches",
    "PackedStore",
    "RawBatch",
    "ResidentBatches",
    "bounding_box",
    "decode_batch",
    "open_batches",
    "pack_cohort",
    "quantisation",
    "resident_nbytes",
]

#: Names accepted by :func:`open_batches` and ``brainkit.train.fit(data_path=...)``.
DATA_PATHS: tuple[str, ...] = ("auto", "memmap", "resident")

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


# --------------------------------------------------------------------------- decode
def _zero_outside(out: torch.Tensor, box) -> None:
    """Zero ``out`` (n, 1, X, Y, Z) outside the box: at most 6 slabs, the box is not written."""
    index: list[slice] = [slice(None), slice(None)]
    for (start, stop), n in zip(box, out.shape[2:]):
        if start > 0:
            out[tuple(index + [slice(0, start)])].zero_()
        if stop < n:
            out[tuple(index + [slice(stop, n)])].zero_()
        index.append(slice(start, stop))


def decode_batch(raw: torch.Tensor, *, scale: float, offset: float, box,
                 grid_shape) -> torch.Tensor:
    """Convert packed volumes to float32 on their device and un-crop them to the full grid.

    Parameters
    ----------
    raw : torch.Tensor of shape (n, x, y, z)
        ``uint8``, ``float16`` or ``float32`` values of the box, on any device.
    scale, offset : float
        ``x = float32(raw) * scale + offset``, in float32 (1 and 0 skip the operation).
    box : 3 (start, stop) pairs
        Where the box lies in the grid; ``(x, y, z)`` must equal its sizes.
    grid_shape : 3 int
        ``(X, Y, Z)``.

    Returns
    -------
    torch.Tensor of shape (n, 1, X, Y, Z), float32
        Zero outside the box; on ``raw.device``. It is ``raw`` itself (a view) when ``raw``
        is float32 on the whole grid with ``scale=1``, ``offset=0``; ``raw`` is never
        modified.

    Notes
    -----
    One pass over the output: the margins are zeroed and the box is filled by a converting
    copy, then scaled in place. On the CPU the output is allocated by numpy, which asks the
    kernel for transparent huge pages: page faults otherwise dominate the cost of a fresh
    batch of 1.5 mm volumes.
    """
    if not isinstance(raw, torch.Tensor):
        raise TypeError(f"raw must be a torch.Tensor of shape (n, x, y, z), got "
                        f"{type(raw).__name__}")
    box = tuple((int(a), int(b)) for a, b in box)
    grid = tuple(int(n) for n in grid_shape)
    sizes = tuple(b - a for a, b in box)
    if raw.ndim != 4 or tuple(raw.shape[1:]) != sizes:
        raise ValueError(f"raw must have shape (n, {', '.join(map(str, sizes))}) to fill the "
                         f"box {box}, got {tuple(raw.shape)}")
    if raw.dtype not in (torch.uint8, torch.float16, torch.float32):
        raise TypeError(f"raw must be uint8, float16 or float32, got {raw.dtype}")
    whole = all(a == 0 and b == n for (a, b), n in zip(box, grid))
    if whole and raw.dtype == torch.float32 and scale == 1.0 and offset == 0.0:
        return raw.unsqueeze(1)
    shape = (raw.shape[0], 1) + grid
    if raw.device.type == "cpu":
        out = torch.from_numpy(np.empty(shape, dtype=np.float32))
    else:
        out = torch.empty(shape, dtype=torch.float32, device=raw.device)
    _zero_outside(out, box)
    inside = out[(slice(None), 0) + tuple(slice(a, b) for a, b in box)]
    inside.copy_(raw)
    if scale != 1.0:
        inside.mul_(scale)
    if offset != 0.0:
        inside.add_(offset)
    return out


# --------------------------------------------------------------------------- data paths
def _check_source_cohort(cohort) -> None:
    if not all(hasattr(cohort, name) for name in ("images", "raw_batch", "table")):
        raise TypeError(f"cohort must be a brainkit.data.Cohort, got {type(cohort).__name__}")
    if getattr(cohort, "grid_shape", None) is None:
        raise ValueError("cohort has no images (table-only)")


def _stored(cohort) -> tuple[dict, np.dtype, tuple[int, ...]]:
    """How a cohort's batches are stored: the decoding arguments of :func:`decode_batch`,
    the stored dtype and the shape of one stored image, read from an empty raw batch (which
    carries them, for any image source)."""
    empty = cohort.raw_batch(np.empty(0, dtype=np.int64))
    layout = {"scale": empty.scale, "offset": empty.offset, "box": tuple(empty.box),
              "grid_shape": tuple(int(n) for n in empty.grid_shape)}
    return layout, empty.data.dtype, tuple(int(n) for n in empty.data.shape[1:])


def resident_nbytes(cohort) -> int:
    """Device bytes a resident copy of the cohort's images takes (packed bytes, or float32)."""
    _check_source_cohort(cohort)
    _, dtype, row = _stored(cohort)
    return len(cohort) * int(np.prod(row)) * dtype.itemsize


class HostBatches:
    """The ``"memmap"`` data path: read on the host, decode on the device.

    Parameters
    ----------
    cohort : brainkit.data.Cohort
    device : str or torch.device
    pin_memory : bool, optional
        Page-lock the host batch so the copy to the GPU is asynchronous. Default: on for CUDA.

    Notes
    -----
    :meth:`fetch` (host work: read the stored bytes, pin them) is safe to run in a background
    thread; :meth:`to_device` (copy, decode, un-crop) runs where the step runs.
    """

    mode = "memmap"

    def __init__(self, cohort, device: str | torch.device = "cpu", *,
                 pin_memory: bool | None = None):
        _check_source_cohort(cohort)
        self.cohort = cohort
        self.device = torch.device(device)
        cuda = self.device.type == "cuda"
        self.pin_memory = (cuda and torch.cuda.is_available()) if pin_memory is None \
            else bool(pin_memory)
        self._layout, _, _ = _stored(cohort)

    @property
    def nbytes(self) -> int:
        """Device bytes held between batches (none)."""
        return 0

    def fetch(self, indices) -> torch.Tensor:
        """Host tensor of the stored values of ``indices``, shape (n, x, y, z)."""
        idx = np.ascontiguousarray(indices, dtype=np.int64)
        t = torch.from_numpy(self.cohort.raw_batch(idx).data)
        return t.pin_memory() if self.pin_memory else t

    def to_device(self, fetched: torch.Tensor) -> torch.Tensor:
        """float32 full-grid batch of shape (n, 1, X, Y, Z) on the device."""
        raw = fetched.to(self.device, non_blocking=self.pin_memory)
        return decode_batch(raw, **self._layout)

    def load(self, indices) -> torch.Tensor:
        """``to_device(fetch(indices))``."""
        return self.to_device(self.fetch(indices))

    def __repr__(self) -> str:
        return f"HostBatches({len(self.cohort)} images -> {self.device})"


class ResidentBatches:
    """The ``"resident"`` data path: the whole store on the device, batches gathered there.

    Parameters
    ----------
    cohort : brainkit.data.Cohort
        Its packed bytes (or float32 images) are copied to ``device`` once, in blocks of
        about 64 MB.
    device : str or torch.device
        A CUDA device in practice; ``"cpu"`` gives the same code path on host tensors (used
        by the tests).
    """

    mode = "resident"

    def __init__(self, cohort, device: str | torch.device = "cpu"):
        _check_source_cohort(cohort)
        self.cohort = cohort
        self.device = torch.device(device)
        self._layout, dtype, row = _stored(cohort)
        self._pin = self.device.type == "cuda" and torch.cuda.is_available()
        n = len(cohort)
        torch_dtype = torch.from_numpy(np.empty(0, dtype=dtype)).dtype
        self.data = torch.empty((n,) + row, dtype=torch_dtype, device=self.device)
        row_bytes = int(np.prod(row)) * self.data.element_size()
        for start, stop in _blocks(n, row_bytes):
            block = cohort.raw_batch(np.arange(start, stop)).data
            self.data[start:stop].copy_(torch.from_numpy(block))

    @property
    def nbytes(self) -> int:
        """Device bytes of the resident copy."""
        return self.data.numel() * self.data.element_size()

    def fetch(self, indices) -> torch.Tensor:
        """The positions as an int64 host tensor (pinned for CUDA; nothing else to do)."""
        n = len(self.data)
        idx = np.array(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"indices out of range for a cohort of {n} images")
        idx[idx < 0] += n
        t = torch.from_numpy(idx)
        return t.pin_memory() if self._pin else t

    def to_device(self, fetched: torch.Tensor) -> torch.Tensor:
        """Gather, decode and un-crop on the device: (n, 1, X, Y, Z) float32."""
        idx = fetched.to(self.device, non_blocking=fetched.is_pinned())
        raw = self.data.index_select(0, idx)
        return decode_batch(raw, **self._layout)

    def load(self, indices) -> torch.Tensor:
        """``to_device(fetch(indices))``."""
        return self.to_device(self.fetch(indices))

    def __repr__(self) -> str:
        return (f"ResidentBatches({len(self.cohort)} images, {self.nbytes / 2**30:.2f} GiB on "
                f"{self.device})")


def open_batches(cohort, device: str | torch.device = "cpu", data_path: str = "auto", *,
                 pin_memory: bool | None = None,
                 memory_fraction: float = 0.5) -> HostBatches | ResidentBatches:
    """The batch source of a training run: resident on the device, or read from the host.

    Parameters
    ----------
    cohort : brainkit.data.Cohort
        Packed or not (a float cohort is held as float32 when resident).
    device : str or torch.device
    data_path : {"auto", "memmap", "resident"}, default "auto"
        See the module docstring. ``"auto"`` is ``"resident"`` on CUDA when
        :func:`resident_nbytes` is below ``memory_fraction`` of the free device memory, else
        ``"memmap"``; on any other device ``"memmap"``.
    pin_memory : bool, optional
        For ``"memmap"`` (see :class:`HostBatches`).
    memory_fraction : float, default 0.5
        In (0, 1]; the share of free device memory ``"auto"`` may fill.

    Returns
    -------
    HostBatches or ResidentBatches
        ``source.mode`` says which; ``source.load(indices)`` gives a float32
        ``(n, 1, X, Y, Z)`` batch on ``device``, the same on either path.

    Raises
    ------
    ValueError
        Unknown ``data_path``; ``memory_fraction`` outside (0, 1]; ``"resident"`` on a CUDA
        device whose free memory is smaller than the copy.
    """
    if data_path not in DATA_PATHS:
        raise ValueError(f"data_path must be one of {DATA_PATHS}, got {data_path!r}")
    if isinstance(memory_fraction, bool) or not isinstance(memory_fraction, (int, float)) \
            or not 0 < memory_fraction <= 1:
        raise ValueError(f"memory_fraction must be in (0, 1], got {memory_fraction!r}")
    _check_source_cohort(cohort)
    device = torch.device(device)
    cuda = device.type == "cuda"
    if cuda and data_path != "memmap":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device} requested but CUDA is not available")
        if device.index is None:  # torch < 2.5: mem_get_info refuses an index-less device
            device = torch.device("cuda", torch.cuda.current_device())
        free, _ = torch.cuda.mem_get_info(device)
        need = resident_nbytes(cohort)
        if data_path == "auto":
            data_path = "resident" if need < memory_fraction * free else "memmap"
        elif need >= free:
            raise ValueError(f"data_path='resident' needs {need / 2**30:.2f} GiB on {device} "
                             f"but only {free / 2**30:.2f} GiB is free; use 'memmap' or 'auto'")
    elif data_path == "auto":
        data_path = "memmap"
    if data_path == "resident":
        return ResidentBatches(cohort, device)
    return HostBatches(cohort, device, pin_memory=pin_memory)
