"""Where a cohort's images live: the image-source protocol and its two implementations.

A :class:`~brainkit.data.Cohort` is a table plus at most one :class:`ImageSource`:

- :class:`ArraySource`: float images in a numpy array, in memory or memory-mapped
  (``images.npy`` in a cohort folder; sidecar format version 1);
- :class:`PackedStore`: the images cropped to a box and stored as ``uint8`` codes or
  ``float16`` values, with what it takes to decode them (``packed.npy``; format version 2;
  how a cohort is packed and what the quantisation guarantees: :mod:`brainkit.data.packed`).

The cohort never asks which one it holds. Everything it does with images goes through the
protocol: float32 images (:meth:`~ImageSource.read`), the stored batch for the device
loaders (:meth:`~ImageSource.raw_batch`), subsets (:meth:`~ImageSource.take`), the content
hash and the NaN / inf check (:meth:`~ImageSource.update_hash`), the cohort folder
(:meth:`~ImageSource.save`, :meth:`~ImageSource.sidecar`, :meth:`~ImageSource.load`) and
concatenation (:meth:`ImageSource.concatenate`). :data:`SOURCES` maps the ``"store"``
entry of ``cohort.json`` to the class that loads it (no entry: ``"array"``).

What does not live here: the table, the sidecar's common fields and its checks
(:mod:`brainkit.data.cohort`); packing a cohort (:mod:`brainkit.data.packed`); the device
loaders and the torch decode (:mod:`brainkit.data.loaders`). This module needs numpy only
(:meth:`RawBatch.decode` alone imports torch, when called).
"""

from __future__ import annotations

import abc
import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from .._util import atomic_path
from ..errors import InputError

__all__ = [
    "PACKED_DTYPES",
    "PACKED_NAME",
    "SOURCES",
    "ArraySource",
    "CohortError",
    "ImageSource",
    "PackedStore",
    "RawBatch",
]

#: Storage types of a packed store.
PACKED_DTYPES: tuple[str, ...] = ("uint8", "float16")

#: File name of the packed image array inside a cohort directory.
PACKED_NAME = "packed.npy"

_CHUNK_BYTES = 64 << 20

Box = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]


class CohortError(InputError):
    """A cohort table or image array that does not follow the brainkit data model."""


# --------------------------------------------------------------------------- helpers
def _atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` on a temporary file, then move it onto ``path`` atomically."""
    with atomic_path(path) as tmp:
        write(tmp)


def _blocks(n: int, row_bytes: int, chunk_bytes: int = _CHUNK_BYTES) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` blocks of rows of about ``chunk_bytes`` each."""
    step = max(1, chunk_bytes // max(1, row_bytes))
    for start in range(0, n, step):
        yield start, min(n, start + step)


def _crop(box: Box) -> tuple[slice, ...]:
    """The index of a box in a stack of volumes ``(n, X, Y, Z)``."""
    return (slice(None),) + tuple(slice(a, b) for a, b in box)


def _whole(grid_shape) -> Box:
    return tuple((0, int(n)) for n in grid_shape)  # type: ignore[return-value]


def _sorted_read(array: np.ndarray, idx: np.ndarray, dtype) -> np.ndarray:
    """``array[idx]`` as ``dtype``, read in increasing position order (fast on a memory map),
    rows in the requested order."""
    order = np.argsort(idx, kind="stable")
    out = np.empty((len(idx),) + array.shape[1:], dtype=dtype)
    out[order] = array[idx[order]]
    return out


def _check_box(box, grid_shape, source: str) -> Box:
    try:
        pairs = tuple((int(a), int(b)) for a, b in box)
    except (TypeError, ValueError):
        raise CohortError(f"{source}: box must be 3 (start, stop) pairs, got {box!r}") from None
    if len(pairs) != 3 or any(not 0 <= a < b <= n for (a, b), n in zip(pairs, grid_shape)):
        raise CohortError(f"{source}: box {box!r} is not 3 (start, stop) pairs with "
                          f"0 <= start < stop <= axis length inside the grid {tuple(grid_shape)}")
    return pairs  # type: ignore[return-value]


# --------------------------------------------------------------------------- raw batches
@dataclass(frozen=True)
class RawBatch:
    """A batch as stored, with what it takes to decode it (:meth:`ImageSource.raw_batch`).

    Attributes
    ----------
    data : numpy.ndarray of shape (n, x, y, z)
        ``uint8`` / ``float16`` box values of a packed store; float32 full-grid images of an
        array source.
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

    def decode(self, device="cpu"):
        """float32 full-grid volumes of shape (n, 1, X, Y, Z) on ``device`` (a torch tensor,
        decoded there by :func:`brainkit.data.loaders.decode_batch`)."""
        import torch

        from .loaders import decode_batch  # torch is needed here only

        raw = torch.from_numpy(self.data).to(device)
        return decode_batch(raw, scale=self.scale, offset=self.offset, box=self.box,
                            grid_shape=self.grid_shape)


# --------------------------------------------------------------------------- the protocol
class ImageSource(abc.ABC):
    """The images of a cohort: one stored array of ``n`` rows and how to read it.

    Implementations: :class:`ArraySource` (float images), :class:`PackedStore` (cropped
    uint8 / float16). Subclasses define the abstract members; the content hash, the NaN /
    inf check and writing the data file are shared (they only read :attr:`data`).

    Attributes
    ----------
    store : str
        The ``"store"`` entry of ``cohort.json`` (:data:`SOURCES` maps it back).
    file_name : str
        The data file inside a cohort folder.
    format_version : int
        The ``cohort.json`` format version of a cohort holding this source.
    noun : str
        How messages name the source (``"the packed store"``).
    """

    store: ClassVar[str]
    file_name: ClassVar[str]
    format_version: ClassVar[int]
    noun: ClassVar[str]

    # ------------------------------------------------------------------ what is stored
    @property
    @abc.abstractmethod
    def data(self) -> np.ndarray:
        """The stored array, shape (n, ...) (a ``numpy.memmap`` when memory-mapped)."""

    @property
    @abc.abstractmethod
    def grid_shape(self) -> tuple[int, int, int]:
        """The image grid ``(X, Y, Z)`` of the decoded images."""

    def __len__(self) -> int:
        return len(self.data)

    @property
    def dtype(self) -> np.dtype:
        """The storage type (:meth:`read` returns float32 whatever it is)."""
        return self.data.dtype

    @property
    def nbytes(self) -> int:
        """Bytes of the stored array."""
        return int(self.data.nbytes)

    @property
    def filename(self) -> str | None:
        """The file the data are memory-mapped from, else ``None`` (held in memory)."""
        name = getattr(self.data, "filename", None)
        return None if name is None else os.fspath(name)

    # ------------------------------------------------------------------ reading
    @abc.abstractmethod
    def read(self, positions: np.ndarray) -> np.ndarray:
        """float32 images of shape (n, X, Y, Z) at ``positions`` (1-D int array), in order."""

    @abc.abstractmethod
    def raw_batch(self, positions: np.ndarray) -> RawBatch:
        """The stored values at ``positions`` and how to decode them (the device loaders'
        input, :mod:`brainkit.data.loaders`)."""

    @abc.abstractmethod
    def take(self, positions: np.ndarray) -> ImageSource:
        """A source of the same kind holding the given rows, in that order, in memory."""

    # ------------------------------------------------------------------ identity
    @abc.abstractmethod
    def settings(self) -> dict:
        """What two sources must share to be concatenated (plain JSON types): the kind of
        store, the grid, and for a packed store how its values are encoded."""

    @abc.abstractmethod
    def _hash_header(self) -> bytes:
        """The bytes the content hash reads before the stored array."""

    def update_hash(self, h, *, check_finite: bool = False) -> np.ndarray:
        """Feed the description and the stored bytes to ``h`` (a :mod:`hashlib` object).

        Parameters
        ----------
        h : hashlib hash object
        check_finite : bool, default False
            In the same pass, find the images holding NaN or inf (float stores only).

        Returns
        -------
        numpy.ndarray of bool, shape (n,)
            True for an image with NaN / inf (all False when not checked).
        """
        h.update(self._hash_header())
        data = self.data
        bad = np.zeros(len(self), dtype=bool)
        check = check_finite and np.issubdtype(data.dtype, np.floating)
        for start, stop in _blocks(len(self), self._row_bytes()):
            block = np.ascontiguousarray(data[start:stop])
            h.update(block.tobytes())
            if check:
                bad[start:stop] = ~np.isfinite(block.reshape(len(block), -1)).all(axis=1)
        return bad

    def nonfinite(self) -> np.ndarray:
        """Which images hold NaN or inf: bool array of shape (n,) (reads float stores)."""
        bad = np.zeros(len(self), dtype=bool)
        if np.issubdtype(self.data.dtype, np.floating):
            for start, stop in _blocks(len(self), self._row_bytes()):
                block = np.asarray(self.data[start:stop])
                bad[start:stop] = ~np.isfinite(block.reshape(len(block), -1)).all(axis=1)
        return bad

    def _row_bytes(self) -> int:
        return int(np.prod(self.data.shape[1:])) * self.data.itemsize

    # ------------------------------------------------------------------ files
    @abc.abstractmethod
    def sidecar(self) -> dict:
        """Entries this source adds to ``cohort.json`` (beside the common ones written by
        :meth:`brainkit.data.Cohort.save`)."""

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``directory/<file_name>`` atomically.

        A source memory-mapped from that very file is not rewritten: a read-only map holds
        what was written (and checked) there; a writable one is checked for NaN / inf.

        Returns
        -------
        pathlib.Path
            The file written.

        Raises
        ------
        CohortError
            A float store holds NaN or inf (nothing is left under the final name).
        """
        path = Path(directory) / self.file_name
        own = self.filename
        if own is not None and path.exists() and os.path.samefile(own, path):
            bad = np.flatnonzero(self.nonfinite()) if self.data.flags.writeable else []
            if len(bad):
                raise CohortError(f"{path}: images {bad[:5].tolist()} contain NaN or inf; "
                                  "refusing to save")
            return path
        data = self.data
        check = np.issubdtype(data.dtype, np.floating)

        def write(tmp):
            arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=data.dtype, shape=data.shape)
            for start, stop in _blocks(len(data), self._row_bytes()):
                block = np.asarray(data[start:stop])
                if check and not np.isfinite(block).all():
                    raise CohortError(f"images {start}..{stop - 1} contain NaN or inf; "
                                      "refusing to save")
                arr[start:stop] = block
            arr.flush()
            del arr

        _atomic_write(path, write)
        return path

    @classmethod
    @abc.abstractmethod
    def load(cls, directory: str | os.PathLike, meta: dict, *, mmap: bool = True) -> ImageSource:
        """Open the data file of a cohort folder as ``cohort.json`` (``meta``) describes it.

        Raises
        ------
        FileNotFoundError
            The data file is missing.
        CohortError
            It is unreadable, truncated, or not what ``meta`` says.
        """

    # ------------------------------------------------------------------ concatenation
    @classmethod
    @abc.abstractmethod
    def _join(cls, sources: Sequence[ImageSource]) -> ImageSource:
        """One source of this kind holding ``sources`` (equal :meth:`settings`) in order."""

    @staticmethod
    def concatenate(sources: Sequence[ImageSource], labels: Sequence[str] | None = None
                    ) -> ImageSource:
        """The images of ``sources`` one after the other, in one source held in memory.

        Sources are only joined as they are stored: float arrays into a float32 array,
        packed stores into a packed store with the same encoding. Nothing is decoded or
        re-quantised behind the caller's back.

        Parameters
        ----------
        sources : sequence of ImageSource
        labels : sequence of str, optional
            How messages name each source (default ``"source 0"``, ``"source 1"``, ...).

        Raises
        ------
        CohortError
            The sources' :meth:`settings` differ (a float array with a packed store, or two
            stores packed with another box, scale, offset, value range or margin); the
            message lists which sources have which settings.
        """
        if not sources:
            raise ValueError("concatenate needs at least one source")
        labels = [f"source {i}" for i in range(len(sources))] if labels is None \
            else list(labels)
        groups: dict[str, tuple[dict, list[str]]] = {}
        for label, source in zip(labels, sources):
            settings = source.settings()
            key = json.dumps(settings, sort_keys=True)
            groups.setdefault(key, (settings, []))[1].append(label)
        if len(groups) > 1:
            listed = "; ".join(f"{', '.join(names)}: {json.dumps(settings)}"
                               for settings, names in groups.values())
            raise CohortError(
                f"cannot concatenate images stored in different ways ({listed}); joining them "
                "would decode or re-quantise some of them. Convert explicitly first: decode a "
                "packed cohort with Cohort(c.table, c.images(), c.affine), concatenate the "
                "float cohorts, and pack the result again (brainkit.data.pack_cohort) if "
                "wanted")
        return type(sources[0])._join(sources)


# --------------------------------------------------------------------------- float arrays
class ArraySource(ImageSource):
    """Float images in a numpy array: in memory, or memory-mapped (kept as is, not read).

    Parameters
    ----------
    images : numpy.ndarray of shape (n_images, X, Y, Z)
        Any floating dtype; :meth:`read` returns float32.

    Raises
    ------
    TypeError
        ``images`` is not a numpy array.
    CohortError
        Not 4-D, or not floating point.
    """

    store = "array"
    file_name = "images.npy"
    format_version = 1
    noun = "the image array"

    def __init__(self, images: np.ndarray):
        if not isinstance(images, np.ndarray):
            raise TypeError(f"images must be a numpy array, got {type(images).__name__}")
        if images.ndim != 4:
            raise CohortError(f"images must have shape (n_images, X, Y, Z), got {images.ndim}-D "
                              f"shape {images.shape}")
        if not np.issubdtype(images.dtype, np.floating):
            raise CohortError(f"images must be floating point, got dtype {images.dtype}")
        self._images = images

    @property
    def data(self) -> np.ndarray:
        """The image array, shape (n, X, Y, Z)."""
        return self._images

    @property
    def grid_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self._images.shape[1:])  # type: ignore[return-value]

    def __repr__(self) -> str:
        where = f" memory-mapped from {self.filename}" if self.filename else ""
        return (f"ArraySource({len(self)} images, {self._images.dtype.name}, grid "
                f"{'x'.join(map(str, self.grid_shape))}{where})")

    def read(self, positions: np.ndarray) -> np.ndarray:
        return _sorted_read(self._images, np.asarray(positions, dtype=np.int64).reshape(-1),
                            np.float32)

    def raw_batch(self, positions: np.ndarray) -> RawBatch:
        """The float32 images on the whole grid, ``scale=1``, ``offset=0``."""
        return RawBatch(self.read(positions), 1.0, 0.0, _whole(self.grid_shape),
                        self.grid_shape)

    def take(self, positions: np.ndarray) -> ArraySource:
        """The rows as a float32 array in memory."""
        return ArraySource(self.read(positions))

    def settings(self) -> dict:
        return {"store": self.store, "grid_shape": list(self.grid_shape)}

    def _hash_header(self) -> bytes:
        return str((self._images.shape, str(self._images.dtype))).encode()

    def sidecar(self) -> dict:
        """Nothing: a version-1 sidecar (no ``"store"`` entry) means an array source."""
        return {}

    @classmethod
    def load(cls, directory: str | os.PathLike, meta: dict, *, mmap: bool = True
             ) -> ArraySource:
        path = Path(directory) / cls.file_name
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found (the sidecar says the cohort has images)")
        try:
            images = np.load(path, mmap_mode="r" if mmap else None)
        except ValueError as err:
            raise CohortError(f"{path}: unreadable image store ({err})") from None
        expected = (meta["n_images"], *meta["grid_shape"])
        if tuple(images.shape) != tuple(expected):
            raise CohortError(f"{path}: shape {images.shape}, expected {expected} from "
                              "cohort.json (truncated or replaced file?)")
        try:
            return cls(images)
        except CohortError as err:
            raise CohortError(f"{path}: {err}") from None

    @classmethod
    def _join(cls, sources: Sequence[ImageSource]) -> ArraySource:
        return cls(np.concatenate([s.read(np.arange(len(s))) for s in sources], axis=0))


# --------------------------------------------------------------------------- packed store
class PackedStore(ImageSource):
    """Packed images of a cohort: a cropped, quantised array and its decoding.

    A :class:`~brainkit.data.Cohort` built on a store (``Cohort(table, store, affine)``, or
    ``Cohort.load`` of a packed directory) reads float32 full-grid images through
    :meth:`read`; the training loop reads :meth:`raw_batch` and decodes it on its device.
    The format (codes, error bound) is described in :mod:`brainkit.data.packed`.

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

    store = "packed"
    file_name = PACKED_NAME
    format_version = 2
    noun = "the packed store"

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
        return _sorted_read(self._data, idx, self._data.dtype)

    def raw_batch(self, positions: np.ndarray) -> RawBatch:
        """:meth:`raw` with its decoding."""
        return RawBatch(self.raw(positions), self._scale, self._offset, self._box, self._grid)

    def read(self, positions: np.ndarray) -> np.ndarray:
        """Decoded float32 images of shape (n, X, Y, Z), zero outside the box.

        ``float32(code) * float32(scale) + float32(offset)`` inside the box, in float32: the
        operations of :func:`brainkit.data.loaders.decode_batch`, so the values are
        bit-identical to what the training loop decodes on its device.
        """
        idx = np.asarray(positions, dtype=np.int64).reshape(-1)
        out = np.zeros((len(idx),) + self._grid, dtype=np.float32)
        inside = out[_crop(self._box)]
        scale, offset = np.float32(self._scale), np.float32(self._offset)
        for start, stop in _blocks(len(idx), 4 * int(np.prod(self._grid))):
            block = inside[start:stop]
            block[...] = self.raw(idx[start:stop])
            if self._scale != 1.0:
                block *= scale
            if self._offset != 0.0:
                block += offset
        return out

    def take(self, positions: np.ndarray) -> PackedStore:
        """A store of the given rows, in that order, held in memory."""
        return self._with(self.raw(positions))

    def _with(self, data: np.ndarray) -> PackedStore:
        return PackedStore(data, grid_shape=self._grid, box=self._box, scale=self._scale,
                           offset=self._offset, value_range=self._value_range,
                           margin=self._margin)

    # ------------------------------------------------------------------ identity and files
    def settings(self) -> dict:
        return {"store": self.store, "grid_shape": list(self._grid), **self.descriptor()}

    def _hash_header(self) -> bytes:
        return json.dumps({"packed": self.descriptor(), "grid": list(self._grid),
                           "n": len(self)}, sort_keys=True).encode()

    def sidecar(self) -> dict:
        """``{"store": "packed", "packed": descriptor()}``."""
        return {"store": self.store, "packed": self.descriptor()}

    @classmethod
    def load(cls, directory: str | os.PathLike, meta: dict, *, mmap: bool = True
             ) -> PackedStore:
        """Open ``directory/packed.npy`` as ``cohort.json`` (``meta``) describes it: its
        ``"packed"`` entry, ``"n_images"`` and ``"grid_shape"``.

        Raises
        ------
        FileNotFoundError
            If ``packed.npy`` is missing.
        CohortError
            If the descriptor is malformed or the file is unreadable, truncated, or of another
            shape or dtype than the descriptor says.
        """
        d = Path(directory)
        where = d / "cohort.json"
        descriptor = meta.get("packed")
        if not isinstance(descriptor, dict):
            raise CohortError(f"{where}: 'packed' must be an object, got {descriptor!r}")
        dtype = descriptor.get("dtype")
        if dtype not in PACKED_DTYPES:
            raise CohortError(f"{where}: packed dtype must be one of {PACKED_DTYPES}, got "
                              f"{dtype!r}")
        grid_shape = meta["grid_shape"]
        box = _check_box(descriptor.get("box") or (), grid_shape, str(where))
        path = d / PACKED_NAME
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found (cohort.json says the cohort is packed)")
        try:
            data = np.load(path, mmap_mode="r" if mmap else None)
        except (ValueError, OSError, EOFError) as err:
            raise CohortError(f"{path}: unreadable packed store ({err})") from None
        expected = (int(meta["n_images"]),) + tuple(b - a for a, b in box)
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
            raise CohortError(f"{where}: {err}") from None

    @classmethod
    def _join(cls, sources: Sequence[ImageSource]) -> PackedStore:
        data = np.concatenate([s.raw_batch(np.arange(len(s))).data for s in sources], axis=0)
        return sources[0]._with(data)  # equal settings: every source is packed alike


#: The sources a cohort folder can hold, by the ``"store"`` entry of its ``cohort.json``.
SOURCES: dict[str, type[ImageSource]] = {cls.store: cls for cls in (ArraySource, PackedStore)}
