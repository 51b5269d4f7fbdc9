"""Where data lives: argument > ``BRAINKIT_DATA`` > ``../shared/data`` beside the project.

Nothing here downloads anything. Functions that need a dataset call :func:`data_root`
and get a clear error (or ``None`` with ``required=False``) when it is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["data_root", "PROJECT_ROOT"]

#: The checkout's root (the folder holding ``brainkit/``).
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def data_root(root: str | os.PathLike | None = None, *, required: bool = True) -> Path | None:
    """Resolve the folder that holds real datasets.

    Order: the ``root`` argument, then the ``BRAINKIT_DATA`` environment variable, then
    ``../shared/data`` relative to the project root.

    Parameters
    ----------
    root : path-like, optional
        An explicit folder; it must exist.
    required : bool, default True
        If False, return ``None`` instead of raising when no folder is found.

    Returns
    -------
    pathlib.Path or None
    """
    candidates: list[tuple[str, Path]] = []
    if root is not None:
        candidates.append(("argument root", Path(root)))
    elif os.environ.get("BRAINKIT_DATA"):
        candidates.append(("BRAINKIT_DATA", Path(os.environ["BRAINKIT_DATA"])))
    else:
        candidates.append(("default", PROJECT_ROOT.parent / "shared" / "data"))
    source, path = candidates[0]
    if path.is_dir():
        return path.resolve()
    if not required:
        return None
    raise FileNotFoundError(
        f"data folder {str(path)!r} (from {source}) does not exist; pass root=..., set "
        "BRAINKIT_DATA to the folder holding your datasets, or see data_manifests/ for how "
        "to obtain them"
    )
