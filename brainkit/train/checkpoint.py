"""Checkpoints: atomic writes, safe loading and the random-number-generator states.

A checkpoint is a plain dictionary of tensors and Python scalars, so it loads with
``torch.load(weights_only=True)`` (no pickled code runs when a run directory is opened).
Writes go to a temporary file in the same folder, are flushed and ``fsync``-ed, then renamed
onto the final name with :func:`os.replace`: a crash at any moment leaves either the previous
checkpoint or the new one, never a torn file.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from .._util import atomic_path

__all__ = [
    "CHECKPOINT_NAME",
    "atomic_save",
    "atomic_write",
    "load_checkpoint",
    "nonfinite_tensors",
    "rng_state",
    "set_rng_state",
]

#: File name of the (latest) checkpoint inside a run directory.
CHECKPOINT_NAME = "checkpoint.pt"


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Write a file so that ``path`` is never half-written.

    ``write`` receives a binary file object opened on a temporary file next to ``path``
    (same folder, so the rename cannot cross file systems). The file is then flushed,
    ``fsync``-ed and renamed onto ``path`` with :func:`os.replace`, and the folder is
    ``fsync``-ed. If anything fails (``KeyboardInterrupt`` included) the temporary file is
    removed and ``path`` keeps its previous content.

    Parameters
    ----------
    path : path-like
        Destination; its folder must exist.
    write : callable
        ``write(fh)`` writes the content to the binary file object ``fh``.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write {path}: folder {path.parent} does not exist")
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        write(fh)
    _fsync_dir(path.parent)
    return path


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """:func:`torch.save` through :func:`atomic_write`.

    Parameters
    ----------
    obj : object
        What to save; keep it to tensors, containers and Python scalars so that it loads
        with ``weights_only=True``.
    path : path-like
        Destination; its folder must exist.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    return atomic_write(path, lambda fh: torch.save(obj, fh))


def load_checkpoint(path: str | os.PathLike, *, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint written by :func:`atomic_save` (``weights_only=True``).

    Parameters
    ----------
    path : path-like
        A checkpoint file, or a run directory holding :data:`CHECKPOINT_NAME`.
    map_location : str or torch.device, default "cpu"
        Where tensors are put.

    Returns
    -------
    dict

    Raises
    ------
    FileNotFoundError
        If there is no such file.
    ValueError
        If the file is not a readable checkpoint (truncated, or holding pickled objects).
    """
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises RuntimeError / UnpicklingError / EOFError
        raise ValueError(f"{path} is not a readable brainkit checkpoint: {err}") from err
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a dictionary, found {type(obj).__name__}")
    return obj


def nonfinite_tensors(obj, prefix: str = "") -> list[str]:
    """Keys of the floating-point tensors holding NaN or inf, anywhere in a nested state.

    Parameters
    ----------
    obj : tensor, dict, list or tuple
        E.g. a model's ``state_dict()`` or a whole checkpoint.
    prefix : str
        Prepended to the keys (dotted paths, list positions as numbers).

    Returns
    -------
    list of str

    Examples
    --------
    >>> nonfinite_tensors({"w": torch.tensor([1.0, float("nan")]), "b": torch.zeros(2)})
    ['w']
    """
    if isinstance(obj, torch.Tensor):
        bad = obj.is_floating_point() and not bool(torch.isfinite(obj).all())
        return [prefix] if bad else []
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    else:
        return []
    out = []
    for key, value in items:
        out += nonfinite_tensors(value, f"{prefix}.{key}" if prefix else str(key))
    return out


def rng_state() -> dict:
    """Capture the global random-number-generator states as tensors and plain values.

    Returns
    -------
    dict
        ``python`` (Mersenne Twister state), ``numpy`` (legacy global generator), ``torch``
        (CPU generator) and ``cuda`` (one state per visible GPU, or ``None`` when CUDA is
        not initialised). Everything loads with ``torch.load(weights_only=True)``.
    """
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    cuda = None
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        cuda = [s.clone() for s in torch.cuda.get_rng_state_all()]
    return {
        "python": {"version": int(version),
                   "state": torch.tensor(internal, dtype=torch.int64),
                   "gauss": None if gauss is None else float(gauss)},
        "numpy": {"name": str(name),
                  "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state().clone(),
        "cuda": cuda,
    }


def set_rng_state(state: dict) -> None:
    """Restore states captured by :func:`rng_state`.

    CUDA states are restored when present and CUDA is available with at least as many
    devices; otherwise they are skipped (e.g. resuming a GPU run on a CPU machine).
    """
    try:
        py, npy = state["python"], state["numpy"]
        random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
        np.random.set_state((npy["name"], npy["keys"].numpy().astype(np.uint32), npy["pos"],
                             npy["has_gauss"], npy["cached"]))
        torch.set_rng_state(state["torch"].cpu())
    except (KeyError, TypeError) as err:
        raise ValueError(f"malformed random-state record in checkpoint: {err!r}") from err
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and torch.cuda.device_count() >= len(cuda):
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
