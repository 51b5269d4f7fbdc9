"""A compact volume store, and the data paths that feed a training step from it.

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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .._util import FolderLock
from .cohort import Cohort, CohortError, _atomic_write

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

#: Storage types of a packed cohort.
PACKED_DTYPES: tuple[str, ...] = ("uint8", "float16")

#: Names accepted by :func:`open_batches` and ``brainkit.train.fit(data_path=...)``.
DATA_PATHS: tuple[str, ...] = ("auto", "memmap", "resident")

#: File name of the packed image array inside a cohort directory.
PACKED_NAME = "packed.npy"

_CHUNK_BYTES = 64 << 20
_TORCH_DTYPES = {"uint8": torch.uint8, "float16": torch.float16}
_FLOAT16_MAX = float(np.finfo(np.float16).max)

Box = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]


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


def _check_box(box, grid_shape, source: str) -> Box:
    try:
        pairs = tuple((int(a), int(b)) for a, b in box)
    except (TypeError, ValueError):
        raise CohortError(f"{source}: box must be 3 (start, stop) pairs, got {box!r}") from None
    if len(pairs) != 3 or any(not 0 <= a < b <= n for (a, b), n in zip(pairs, grid_shape)):
        raise CohortError(f"{source}: box {box!r} is not 3 (start, stop) pairs with "
                          f"0 <= start < stop <= axis length inside the grid {tuple(grid_shape)}")
    return pairs  # type: ignore[return-value]


def _rows(n: int, row_bytes: int, chunk_bytes: int = _CHUNK_BYTES):
    """``(start, stop)`` blocks of rows of about ``chunk_bytes`` each."""
    step = max(1, chunk_bytes // max(1, row_bytes))
    for start in range(0, n, step):
        yield start, min(n, start + step)


def _crop(box: Box) -> tuple[slice, ...]:
    return (slice(None),) + tuple(slice(a, b) for a, b in box)


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
        for start, stop in _rows(n, 4 * int(np.prod(grid))):
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
    for start, stop in _rows(len(images), images[0].nbytes if len(images) else 1):
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


@dataclass(frozen=True)
class RawBatch:
    """A batch as stored, with what it takes to decode it (:meth:`Cohort.raw_batch`).

    Attributes
    ----------
    data : numpy.ndarray of shape (n, x, y, z)
        ``uint8`` / ``float16`` box values of a packed cohort; float32 full-grid images of an
        ordinary cohort.
    scale, offset : float
        Dequantisation ``float32(data) * scale + offset``.
    box : 3 (start, stop) pairs
        Where ``data`` lies in the grid.
    grid_shape : 3 int
        The full grid ``(X, Y, Z)``.
    """

    data: np.ndarray
    scale: float
    offset: float
    box: Box
    grid_shape: tuple[int, int, int]

    def decode(self, device: str | torch.device = "cpu") -> torch.Tensor:
        """float32 full-grid volumes of shape (n, 1, X, Y, Z) on ``device``."""
        raw = torch.from_numpy(self.data).to(device)
        return decode_batch(raw, scale=self.scale, offset=self.offset, box=self.box,
                            grid_shape=self.grid_shape)


# --------------------------------------------------------------------------- the store
class PackedStore:
    """Packed images of a cohort: a cropped, quantised array and its decoding.

    A :class:`~brainkit.data.Cohort` built on a store (``Cohort(table, store, affine)``, or
    ``Cohort.load`` of a packed directory) reads float32 full-grid images through
    :meth:`read`; the training loop reads :meth:`raw` bytes and decodes them on its device.

    Parameters
    ----------
    data : numpy.ndarray of shape (n, x, y, z), uint8 or float16
        The box of every image (a memory map is kept as is).
    grid_shape : 3 int
        The full grid ``(X, Y, Z)``.
    box : 3 (start, stop) pairs
        Where the box lies; its sizes must equal ``data.shape[1:]``.
    scale, offset : float, default 1.0, 0.0
        Dequantisation (float16 stores need 1 and 0).
    value_range : (float, float), optional
        The range the uint8 code covers (recorded, not used to decode).
    margin : int, optional
        The margin the box was grown by (recorded).
    """

    def __init__(self, data: np.ndarray, *, grid_shape, box, scale: float = 1.0,
                 offset: float = 0.0, value_range=None, margin: int | None = None):
        source = "packed store"
        if not isinstance(data, np.ndarray) or data.ndim != 4:
            raise CohortError(f"{source}: data must be a numpy array of shape (n, x, y, z), got "
                              f"{getattr(data, 'shape', type(data).__name__)}")
        dtype = data.dtype.name
        if dtype not in PACKED_DTYPES:
            raise CohortError(f"{source}: data dtype must be one of {PACKED_DTYPES}, got {dtype}")
        try:
            grid = tuple(int(n) for n in grid_shape)
        except (TypeError, ValueError):
            raise CohortError(f"{source}: grid_shape must be 3 integers, got "
                              f"{grid_shape!r}") from None
        if len(grid) != 3 or min(grid) < 1:
            raise CohortError(f"{source}: grid_shape must be 3 positive integers, got {grid_shape!r}")
        box = _check_box(box, grid, source)
        sizes = tuple(b - a for a, b in box)
        if tuple(data.shape[1:]) != sizes:
            raise CohortError(f"{source}: data holds boxes of shape {tuple(data.shape[1:])} but "
                              f"the box {box} has shape {sizes}")
        scale, offset = float(scale), float(offset)
        if not (math.isfinite(scale) and scale > 0 and math.isfinite(offset)):
            raise CohortError(f"{source}: scale must be finite and > 0 and offset finite, got "
                              f"scale={scale!r}, offset={offset!r}")
        if dtype == "float16" and (scale != 1.0 or offset != 0.0):
            raise CohortError(f"{source}: a float16 store has scale 1 and offset 0, got "
                              f"scale={scale!r}, offset={offset!r}")
        self._data = data
        self._grid = grid
        self._box = box
        self._scale, self._offset = scale, offset
        self._value_range = None if value_range is None else tuple(float(v) for v in value_range)
        self._margin = None if margin is None else int(margin)

    # ------------------------------------------------------------------ description
    @property
    def data(self) -> np.ndarray:
        """The packed array, shape (n, x, y, z)."""
        return self._data

    @property
    def dtype(self) -> np.dtype:
        """The storage type (uint8 or float16); :meth:`read` returns float32."""
        return self._data.dtype

    @property
    def grid_shape(self) -> tuple[int, int, int]:
        return self._grid  # type: ignore[return-value]

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """Shape of the decoded images ``(n, X, Y, Z)`` (the full grid)."""
        return (len(self._data),) + self._grid  # type: ignore[return-value]

    @property
    def box(self) -> Box:
        return self._box

    @property
    def scale(self) -> float:
        return self._scale

    @property
    def offset(self) -> float:
        return self._offset

    @property
    def max_error(self) -> float:
        """Largest ``|decoded - original|`` for values inside the range: ``scale / 2`` for
        uint8 (up to float32 rounding); 0 for float16, which is exact for float16-representable
        values (others are rounded to the nearest float16, a relative error <= 2**-11)."""
        return self._scale / 2 if self._data.dtype == np.uint8 else 0.0

    @property
    def nbytes(self) -> int:
        """Bytes of the packed array."""
        return int(self._data.nbytes)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        box = "x".join(f"{a}:{b}" for a, b in self._box)
        return (f"PackedStore({len(self)} images, {self._data.dtype.name}, box {box} of grid "
                f"{'x'.join(map(str, self._grid))}, {self.nbytes / 2**20:.1f} MiB)")

    def descriptor(self) -> dict:
        """What ``cohort.json`` records under ``"packed"`` (plain JSON types)."""
        return {
            "dtype": self._data.dtype.name,
            "box": [list(pair) for pair in self._box],
            "scale": self._scale,
            "offset": self._offset,
            "value_range": None if self._value_range is None else list(self._value_range),
            "margin": self._margin,
        }

    # ------------------------------------------------------------------ reading
    def raw(self, indices) -> np.ndarray:
        """The stored boxes of ``indices``, shape (n, x, y, z), uint8 / float16 (a copy).

        Reads run in increasing position order (fast on a memory map); rows come back in the
        requested order.
        """
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        order = np.argsort(idx, kind="stable")
        out = np.empty((len(idx),) + self._data.shape[1:], dtype=self._data.dtype)
        out[order] = self._data[idx[order]]
        return out

    def raw_batch(self, indices) -> RawBatch:
        """:meth:`raw` with its decoding (:class:`RawBatch`)."""
        return RawBatch(self.raw(indices), self._scale, self._offset, self._box, self._grid)

    def read(self, indices) -> np.ndarray:
        """Decoded float32 images of shape (n, X, Y, Z), zero outside the box.

        Decoding is :func:`decode_batch` on CPU tensors: the values equal what the training
        loop decodes on its device.
        """
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        out = np.empty((len(idx),) + self._grid, dtype=np.float32)
        target = torch.from_numpy(out)
        for start, stop in _rows(len(idx), 4 * int(np.prod(self._grid))):
            raw = torch.from_numpy(self.raw(idx[start:stop]))
            target[start:stop] = decode_batch(raw, scale=self._scale, offset=self._offset,
                                              box=self._box, grid_shape=self._grid)[:, 0]
        return out

    def take(self, indices) -> PackedStore:
        """A store of the given rows, in that order, held in memory."""
        return PackedStore(self.raw(indices), grid_shape=self._grid, box=self._box,
                           scale=self._scale, offset=self._offset,
                           value_range=self._value_range, margin=self._margin)

    def update_hash(self, h) -> None:
        """Feed the descriptor and the packed bytes to a hashlib object (content hash)."""
        import json

        h.update(json.dumps({"packed": self.descriptor(), "grid": list(self._grid),
                             "n": len(self)}, sort_keys=True).encode())
        row = int(np.prod(self._data.shape[1:])) * self._data.itemsize
        for start, stop in _rows(len(self), row):
            h.update(np.ascontiguousarray(self._data[start:stop]).tobytes())

    # ------------------------------------------------------------------ files
    def _file(self) -> str | None:
        name = getattr(self._data, "filename", None)
        return None if name is None else os.fspath(name)

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``directory/packed.npy`` (atomically; skipped if it is this store's own file).

        Returns
        -------
        pathlib.Path
            The file written.
        """
        path = Path(directory) / PACKED_NAME
        own = self._file()
        if own is not None and path.exists() and os.path.samefile(own, path):
            return path

        def write(tmp):
            arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=self._data.dtype,
                                            shape=self._data.shape)
            row = int(np.prod(self._data.shape[1:])) * self._data.itemsize
            for start, stop in _rows(len(self), row):
                arr[start:stop] = self._data[start:stop]
            arr.flush()
            del arr

        _atomic_write(path, write)
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike, descriptor: dict, *, n_images: int,
             grid_shape, mmap: bool = True) -> PackedStore:
        """Open ``directory/packed.npy`` as described by ``cohort.json``'s ``"packed"`` entry.

        Raises
        ------
        FileNotFoundError
            If ``packed.npy`` is missing.
        CohortError
            If the descriptor is malformed or the file is unreadable, truncated, or of another
            shape or dtype than the descriptor says.
        """
        d = Path(directory)
        meta = d / "cohort.json"
        if not isinstance(descriptor, dict):
            raise CohortError(f"{meta}: 'packed' must be an object, got {descriptor!r}")
        dtype = descriptor.get("dtype")
        if dtype not in PACKED_DTYPES:
            raise CohortError(f"{meta}: packed dtype must be one of {PACKED_DTYPES}, got "
                              f"{dtype!r}")
        box = _check_box(descriptor.get("box") or (), grid_shape, str(meta))
        path = d / PACKED_NAME
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found (cohort.json says the cohort is packed)")
        try:
            data = np.load(path, mmap_mode="r" if mmap else None)
        except (ValueError, OSError, EOFError) as err:
            raise CohortError(f"{path}: unreadable packed store ({err})") from None
        expected = (int(n_images),) + tuple(b - a for a, b in box)
        if data.dtype.name != dtype or tuple(data.shape) != expected:
            raise CohortError(f"{path}: {data.dtype.name} array of shape {tuple(data.shape)}, "
                              f"expected {dtype} {expected} from cohort.json (truncated or "
                              "replaced file?)")
        try:
            return cls(data, grid_shape=grid_shape, box=box,
                       scale=descriptor.get("scale", 1.0), offset=descriptor.get("offset", 0.0),
                       value_range=descriptor.get("value_range"),
                       margin=descriptor.get("margin"))
        except (CohortError, TypeError, ValueError) as err:
            raise CohortError(f"{meta}: {err}") from None


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
    source_files = set()
    store = cohort.packed_store
    for arr in (store.data if store is not None else None, getattr(cohort, "_images", None)):
        name = getattr(arr, "filename", None)
        if name is not None:
            source_files.add(os.path.realpath(name))
    if (out / "cohort.json").exists():
        if not overwrite:
            raise FileExistsError(f"{out} already holds a cohort; choose another --out or pass "
                                  "overwrite=True (CLI: --overwrite)")
        targets = {os.path.realpath(out / name) for name in ("images.npy", PACKED_NAME)}
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
                for start, stop in _rows(len(cohort), 4 * int(np.prod(cohort.grid_shape))):
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
        stale = out / "images.npy"
        if stale.exists():
            stale.unlink()
    finally:
        lock.release()
    return Cohort.load(out)


# --------------------------------------------------------------------------- data paths
def _layout(cohort) -> dict:
    """Decoding arguments of a cohort's batches (identity for a float cohort)."""
    store = getattr(cohort, "packed_store", None)
    if store is not None:
        return {"scale": store.scale, "offset": store.offset, "box": store.box,
                "grid_shape": store.grid_shape}
    grid = tuple(int(n) for n in cohort.grid_shape)
    return {"scale": 1.0, "offset": 0.0, "box": tuple((0, n) for n in grid), "grid_shape": grid}


def _check_source_cohort(cohort) -> None:
    if not (hasattr(cohort, "images") and hasattr(cohort, "table")):
        raise TypeError(f"cohort must be a brainkit.data.Cohort, got {type(cohort).__name__}")
    if getattr(cohort, "grid_shape", None) is None:
        raise ValueError("cohort has no images (table-only)")


def resident_nbytes(cohort) -> int:
    """Device bytes a resident copy of the cohort's images takes (packed bytes, or float32)."""
    _check_source_cohort(cohort)
    store = getattr(cohort, "packed_store", None)
    if store is not None:
        return store.nbytes
    return 4 * len(cohort) * int(np.prod(cohort.grid_shape))


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
        self._layout = _layout(cohort)
        self._raw = getattr(cohort, "raw_batch", None)

    @property
    def nbytes(self) -> int:
        """Device bytes held between batches (none)."""
        return 0

    def fetch(self, indices) -> torch.Tensor:
        """Host tensor of the stored values of ``indices``, shape (n, x, y, z)."""
        idx = np.ascontiguousarray(indices, dtype=np.int64)
        data = self._raw(idx).data if self._raw is not None else self.cohort.images(idx)
        t = torch.from_numpy(data)
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
        self._layout = _layout(cohort)
        self._pin = self.device.type == "cuda" and torch.cuda.is_available()
        store = getattr(cohort, "packed_store", None)
        n = len(cohort)
        if store is not None:
            shape, dtype = store.data.shape, _TORCH_DTYPES[store.dtype.name]

            def rows(start, stop):
                return np.array(store.data[start:stop])
        else:
            shape, dtype = (n,) + tuple(self._layout["grid_shape"]), torch.float32

            def rows(start, stop):
                return cohort.images(np.arange(start, stop))
        self.data = torch.empty(shape, dtype=dtype, device=self.device)
        row = int(np.prod(shape[1:])) * self.data.element_size()
        for start, stop in _rows(n, row):
            self.data[start:stop].copy_(torch.from_numpy(rows(start, stop)))

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
