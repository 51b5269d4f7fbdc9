"""The device loaders: the data paths that feed a training step from a cohort's images.

What lives here: :func:`open_batches` and the two batch sources it chooses between
(:class:`HostBatches`, :class:`ResidentBatches`), :data:`DATA_PATHS`, and the decode on the
device (:func:`decode_batch`). They read a cohort only through
:meth:`brainkit.data.Cohort.raw_batch` (the stored values and how to decode them), so they
work the same for every image source. What does not: the sources and their files
(:mod:`brainkit.data.sources`), packing (:mod:`brainkit.data.packed`). This is the data
layer's one module that needs torch.

Training on the full grid
-------------------------
A packed store is un-cropped on the device (zeros around the box) before augmentation: the
released crop and cutout are fractions of the *full* grid's axes
(:data:`brainkit.data.augment.RELEASED_CROP_FRACTION`), so training on the cropped box would
change what the augmentation does. Un-cropping zeroes the margins and fills the box with one
converting copy on the device, and makes a packed cohort train exactly like a float cohort
holding the same (dequantised) values.

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
is bit-identical on either path, and training does not depend on the path. The host reads of
:meth:`brainkit.data.Cohort.images` use the same float32 operations, so they equal the
decoded batches too.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = [
    "DATA_PATHS",
    "HostBatches",
    "ResidentBatches",
    "decode_batch",
    "open_batches",
    "resident_nbytes",
]

#: Names accepted by :func:`open_batches` and ``brainkit.train.fit(data_path=...)``.
DATA_PATHS: tuple[str, ...] = ("auto", "memmap", "resident")

_CHUNK_BYTES = 64 << 20


def _blocks(n: int, row_bytes: int, chunk_bytes: int = _CHUNK_BYTES):
    """``(start, stop)`` blocks of rows of about ``chunk_bytes`` each."""
    step = max(1, chunk_bytes // max(1, row_bytes))
    for start in range(0, n, step):
        yield start, min(n, start + step)


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
