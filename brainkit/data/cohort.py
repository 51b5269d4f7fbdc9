"""The cohort model: one table, one row per image, one vocabulary everywhere.

Every dataset, real or synthetic, becomes a :class:`Cohort`: a validated pandas table whose
row ``i`` describes image ``i`` of an image array on one grid (shape + affine).

Columns (required)::

    image_id, subject_id, session, dataset, site, age, sex, diagnosis, years_from_baseline

Optional columns: ``tiv``, ``field_strength``, ``bio_age``, ``true_gap`` (synthetic ground
truth), ``split`` (OpenBHB official split), ``path``. ``diagnosis`` uses the vocabulary
``HC, sMCI, pMCI, MCI, AD``; ``sex`` is ``M`` or ``F``.

The images themselves are an :class:`~brainkit.data.sources.ImageSource` (float arrays, or a
packed store): :mod:`brainkit.data.sources`. This module holds the table, its checks, and the
cohort folder (``table.parquet``, ``cohort.json``, the source's data file).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import MissingFileError
from .sources import SOURCES, ArraySource, CohortError, ImageSource, PackedStore, _atomic_write

__all__ = [
    "COLUMNS",
    "OPTIONAL_COLUMNS",
    "DIAGNOSES",
    "SPLITS",
    "CohortError",
    "Cohort",
    "SUBJECT_CHECKS",
    "check_subjects",
    "validate_table",
    "concat",
]

COLUMNS: tuple[str, ...] = (
    "image_id",
    "subject_id",
    "session",
    "dataset",
    "site",
    "age",
    "sex",
    "diagnosis",
    "years_from_baseline",
)
OPTIONAL_COLUMNS: tuple[str, ...] = (
    "tiv",
    "field_strength",
    "bio_age",
    "true_gap",
    "split",
    "path",
)
DIAGNOSES: tuple[str, ...] = ("HC", "sMCI", "pMCI", "MCI", "AD")
SPLITS: tuple[str, ...] = ("train", "internal_test", "external_test")

#: Plausible human ages in years; anything outside is refused.
AGE_RANGE: tuple[float, float] = (0.0, 120.0)

_SEX_SPELLINGS = {
    "m": "M",
    "male": "M",
    "man": "M",
    "f": "F",
    "female": "F",
    "woman": "F",
}
_NUMERIC_OPTIONAL = ("tiv", "field_strength", "bio_age", "true_gap")
# The sidecar's format version is the source's (ImageSource.format_version): 1 for float
# images in images.npy (and table-only cohorts), 2 for a packed store in packed.npy. Plain
# cohorts are still written as version 1 so older brainkit reads them.
_FORMAT_VERSION = max(cls.format_version for cls in SOURCES.values())
_TABLE_ONLY_FORMAT_VERSION = 1


def _where(table: pd.DataFrame, mask: np.ndarray, source: str, limit: int = 5) -> str:
    """Describe offending rows by position and image id, e.g. ``rows 3 (img-3), 7 (img-7)``."""
    positions = np.flatnonzero(mask)
    ids = table["image_id"].astype(str).to_numpy() if "image_id" in table else None
    parts = []
    for p in positions[:limit]:
        parts.append(f"{p} ({ids[p]})" if ids is not None else str(p))
    more = f" and {len(positions) - limit} more" if len(positions) > limit else ""
    return f"{source}: row{'s' if len(positions) > 1 else ''} {', '.join(parts)}{more}"


def _numeric(table: pd.DataFrame, column: str, source: str) -> np.ndarray:
    values = pd.to_numeric(table[column], errors="coerce").to_numpy(dtype=float)
    bad = np.isnan(values) & table[column].notna().to_numpy()
    if bad.any():
        examples = table[column][bad].astype(str).head(3).tolist()
        raise CohortError(
            f"{_where(table, bad, source)}: column {column!r} must be numeric, got {examples}"
        )
    return values


def validate_table(table: pd.DataFrame, *, source: str = "table") -> pd.DataFrame:
    """Check a cohort table and return a normalised copy.

    Parameters
    ----------
    table : pandas.DataFrame
        One row per image with at least the columns in :data:`COLUMNS`.
    source : str
        How to name the table in error messages (e.g. a file name).

    Returns
    -------
    pandas.DataFrame
        A copy with a fresh ``RangeIndex``, required columns first, ``image_id``,
        ``subject_id``, ``dataset``, ``site`` as strings, ``age`` and
        ``years_from_baseline`` as float64, ``sex`` mapped to ``M`` / ``F``.

    Raises
    ------
    CohortError
        On missing columns, missing or non-numeric or impossible ages, duplicate image ids,
        unknown diagnosis codes, unknown sex spellings, negative years from baseline, or an
        unknown split name. The message names the rows (position and image id) at fault.
    """
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"{source}: expected a pandas DataFrame, got {type(table).__name__}")
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise CohortError(
            f"{source}: missing required column(s) {missing}; a cohort table needs "
            f"{list(COLUMNS)} (optional: {list(OPTIONAL_COLUMNS)})"
        )
    if len(table) == 0:
        raise CohortError(f"{source}: the table has no rows")
    out = table.reset_index(drop=True).copy()

    for column in ("image_id", "subject_id", "dataset", "site", "session"):
        null = out[column].isna().to_numpy()
        if null.any():
            raise CohortError(f"{_where(out, null, source)}: column {column!r} is empty")
    for column in ("image_id", "subject_id", "dataset", "site"):
        out[column] = out[column].astype(str)

    dup = out["image_id"].duplicated(keep=False).to_numpy()
    if dup.any():
        names = sorted(set(out["image_id"][dup]))[:5]
        raise CohortError(f"{_where(out, dup, source)}: duplicate image_id {names}")

    age = _numeric(out, "age", source)
    if np.isnan(age).any():
        raise CohortError(f"{_where(out, np.isnan(age), source)}: column 'age' is missing")
    impossible = (age < AGE_RANGE[0]) | (age > AGE_RANGE[1])
    if impossible.any():
        raise CohortError(
            f"{_where(out, impossible, source)}: impossible age {age[impossible][:3].tolist()}"
            f" (expected years in [{AGE_RANGE[0]:g}, {AGE_RANGE[1]:g}])"
        )
    out["age"] = age

    years = _numeric(out, "years_from_baseline", source)
    bad_years = ~np.isfinite(years) | (years < 0)
    if bad_years.any():
        raise CohortError(
            f"{_where(out, bad_years, source)}: 'years_from_baseline' must be a number >= 0, "
            f"got {out['years_from_baseline'][bad_years].head(3).tolist()}"
        )
    out["years_from_baseline"] = years

    sex_raw = out["sex"].astype("string").str.strip().str.lower()
    sex = sex_raw.map(_SEX_SPELLINGS)
    bad_sex = sex.isna().to_numpy()
    if bad_sex.any():
        raise CohortError(
            f"{_where(out, bad_sex, source)}: unknown sex {out['sex'][bad_sex].head(3).tolist()}"
            " (expected M/F; accepted spellings: "
            f"{sorted(set(_SEX_SPELLINGS))}, any case)"
        )
    out["sex"] = sex.astype(str)

    diagnosis = out["diagnosis"].astype("string").str.strip()
    bad_dx = (~diagnosis.isin(DIAGNOSES)).fillna(True).to_numpy(dtype=bool)
    if bad_dx.any():
        raise CohortError(
            f"{_where(out, bad_dx, source)}: unknown diagnosis "
            f"{out['diagnosis'][bad_dx].head(3).tolist()} (vocabulary: {list(DIAGNOSES)}; "
            "map dataset codes onto it in the manifest, e.g. CN -> HC)"
        )
    out["diagnosis"] = diagnosis.astype(str)

    for column in _NUMERIC_OPTIONAL:
        if column in out:
            values = _numeric(out, column, source)
            infinite = np.isinf(values)
            if infinite.any():
                raise CohortError(f"{_where(out, infinite, source)}: column {column!r} is "
                                  "infinite (expected a finite number, or empty if unknown)")
            out[column] = values
    if "split" in out:
        split = out["split"].astype("string")
        bad_split = (~split.isin(SPLITS)).fillna(True).to_numpy(dtype=bool)
        if bad_split.any():
            raise CohortError(
                f"{_where(out, bad_split, source)}: unknown split "
                f"{out['split'][bad_split].head(3).tolist()} (expected one of {list(SPLITS)})"
            )
        out["split"] = split.astype(str)

    ordered = list(COLUMNS) + [c for c in out.columns if c not in COLUMNS]
    return out[ordered]


#: The subject-level checks of :func:`check_subjects` (each can be allowed by name).
SUBJECT_CHECKS: tuple[str, ...] = ("sex-change", "age-order", "repeat-session")
_LISTED_SUBJECTS = 5


def check_allow(allow, known: Sequence[str], name: str = "allow") -> frozenset[str]:
    """Validate a collection of check names to allow (``None`` or empty: allow nothing)."""
    if allow is None:
        return frozenset()
    if isinstance(allow, str):
        allow = [allow]
    out = frozenset(str(a) for a in allow)
    unknown = sorted(out - set(known))
    if unknown:
        raise CohortError(f"{name}: unknown check(s) {unknown}; expected any of {list(known)}")
    return out


def _session_key(value) -> tuple:
    """Order sessions numerically when they are numbers, else naturally (``m6 < m12``)."""
    text = str(value).strip()
    try:
        return (0, float(text), ())
    except ValueError:
        parts = re.split(r"(\d+)", text.lower())
        return (1, 0.0, tuple(int(p) if p.isdigit() else p for p in parts))


def _rows(table: pd.DataFrame, positions) -> str:
    ids = table["image_id"].astype(str).to_numpy()
    return ", ".join(f"{p} ({ids[p]})" for p in positions[:4]) + \
        (f" and {len(positions) - 4} more" if len(positions) > 4 else "")


def check_subjects(table: pd.DataFrame, *, source: str = "table", allow=None) -> None:
    """Refuse a table whose rows contradict each other about a subject.

    Run at import (:func:`brainkit.data.import_nifti`), where a typo costs the least. Each
    check can be switched off by name in ``allow`` when the data really are so.

    - ``"sex-change"``: a subject's ``sex`` differs between rows;
    - ``"age-order"``: a subject's ``age`` (or ``years_from_baseline``) decreases as
      ``session`` increases (sessions ordered as numbers, else naturally: ``m6 < m12``);
    - ``"repeat-session"``: two rows share a ``(subject_id, session)``.

    Parameters
    ----------
    table : pandas.DataFrame
        A table checked by :func:`validate_table`.
    source : str
        How to name the table in messages (a file name).
    allow : collection of str, optional
        Names from :data:`SUBJECT_CHECKS` not to enforce.

    Raises
    ------
    CohortError
        Naming, for each failed check, up to five subjects with their rows (position and
        image id) and values, and how to allow the case if it is right.
    """
    allow = check_allow(allow, SUBJECT_CHECKS)
    t = table.reset_index(drop=True)
    subject = t["subject_id"].astype(str)
    key = t["session"].map(_session_key)
    problems: list[str] = []

    if "sex-change" not in allow:
        counts = t.groupby(subject, sort=False)["sex"].nunique()
        changed = counts.index[counts > 1]
        for sid in changed[:_LISTED_SUBJECTS]:
            rows = np.flatnonzero(subject.to_numpy() == sid)
            problems.append(f"subject {sid!r} has sex {sorted(set(t['sex'].iloc[rows]))} in "
                            f"rows {_rows(t, rows)}")
        if len(changed):
            more = len(changed) - _LISTED_SUBJECTS
            problems[-1] += (f" (and {more} more subjects)" if more > 0 else "") + \
                "; expected one sex per subject (allow with 'sex-change')"

    if "repeat-session" not in allow:
        pair = pd.DataFrame({"s": subject, "k": key.map(repr)})
        dup = pair.duplicated(keep=False).to_numpy()
        if dup.any():
            groups = pair[dup].groupby(["s", "k"], sort=False).groups
            for (sid, _), index in list(groups.items())[:_LISTED_SUBJECTS]:
                rows = np.asarray(index)
                problems.append(f"subject {sid!r} has {len(rows)} rows for session "
                                f"{t['session'].iloc[rows[0]]}: rows {_rows(t, rows)}")
            more = len(groups) - _LISTED_SUBJECTS
            problems[-1] += (f" (and {more} more)" if more > 0 else "") + \
                "; expected one row per (subject_id, session) (allow with 'repeat-session')"

    if "age-order" not in allow:
        sid, keys = subject.to_numpy(), key.tolist()
        order = sorted(range(len(t)), key=lambda i: (sid[i], keys[i]))
        bad_subjects: list[str] = []
        for column in ("age", "years_from_baseline"):
            values = t[column].to_numpy(dtype=float)
            for a, b in zip(order, order[1:]):
                if sid[a] != sid[b] or keys[a] == keys[b]:
                    continue
                if values[b] < values[a] - 1e-9 and sid[a] not in bad_subjects:
                    bad_subjects.append(sid[a])
                    if len(bad_subjects) <= _LISTED_SUBJECTS:
                        problems.append(
                            f"subject {sid[a]!r}: {column} goes from {values[a]:g} at "
                            f"session {t['session'].iloc[a]} (row {_rows(t, [a])}) to "
                            f"{values[b]:g} at session {t['session'].iloc[b]} (row "
                            f"{_rows(t, [b])})")
        if bad_subjects:
            more = len(bad_subjects) - _LISTED_SUBJECTS
            problems[-1] += (f" (and {more} more subjects)" if more > 0 else "") + \
                "; expected age and years_from_baseline not to decrease with session " \
                "(allow with 'age-order')"
    if problems:
        raise CohortError(f"{source}: " + "; ".join(problems))


def _check_affine(affine) -> np.ndarray:
    a = np.asarray(affine, dtype=float)
    if a.shape != (4, 4) or not np.all(np.isfinite(a)):
        raise CohortError(f"affine must be a finite 4x4 matrix, got shape {a.shape}")
    if abs(np.linalg.det(a[:3, :3])) < 1e-6:
        raise CohortError("affine is singular (zero voxel size)")
    return a


class Cohort:
    """A validated cohort: table, images on one grid, affine.

    Parameters
    ----------
    table : pandas.DataFrame
        One row per image (see :func:`validate_table`).
    images : numpy.ndarray of shape (n_images, X, Y, Z), ImageSource, or None
        Image ``i`` belongs to row ``i``. A float array (a ``numpy.memmap`` is kept as is, not
        read into memory) becomes an :class:`~brainkit.data.sources.ArraySource`. A
        :class:`~brainkit.data.PackedStore` (cropped uint8 / float16 images, see
        :func:`brainkit.data.packed.pack_cohort`) makes a *packed* cohort: ``images()`` still
        returns float32 full-grid volumes, and :meth:`raw_batch` gives the stored bytes. Any
        other :class:`~brainkit.data.sources.ImageSource` is held as given. ``None`` makes a
        table-only cohort (e.g. tabular volumetrics).
    affine : array-like of shape (4, 4)
        Voxel-to-world (MNI, mm) transform shared by all images.
    check_finite : bool, default True
        Scan the images for NaN / inf (skipped for memory-mapped sources, whose check happens
        when they are written by :meth:`save`).

    Examples
    --------
    >>> from brainkit.data import Cohort
    >>> cohort = Cohort(table, images, affine)          # doctest: +SKIP
    >>> x = cohort.images([0, 1])                       # doctest: +SKIP
    >>> x.shape, x.dtype                                # doctest: +SKIP
    ((2, 31, 37, 31), dtype('float32'))
    """

    def __init__(self, table: pd.DataFrame, images: np.ndarray | ImageSource | None, affine,
                 *, check_finite: bool = True, _validated: bool = False,
                 _hash: str | None = None):
        self._table = table if _validated else validate_table(table)
        self._affine = _check_affine(affine)
        self._content_hash = _hash
        self._folder: Path | None = None  # the folder it was loaded from (for messages)
        source = images if images is None or isinstance(images, ImageSource) \
            else ArraySource(images)
        if source is not None and len(source) != len(self._table):
            raise CohortError(f"{source.noun} holds {len(source)} volumes but the table has "
                              f"{len(self._table)} rows")
        checked = check_finite and (source is None or source.filename is None)
        if source is not None and checked:
            bad = source.nonfinite()
            if bad.any():
                raise CohortError(f"{_where(self._table, bad, 'images')}: volume contains NaN "
                                  "or inf")
        self._source = source
        # verify() has nothing left to do: content checked here, no recorded hash to match
        self._verified = _hash is None and checked

    # ------------------------------------------------------------------ accessors
    @property
    def table(self) -> pd.DataFrame:
        """The validated table (one row per image, ``RangeIndex``)."""
        return self._table

    @property
    def affine(self) -> np.ndarray:
        """Voxel-to-world affine, shape (4, 4)."""
        return self._affine

    @property
    def source(self) -> ImageSource | None:
        """Where the images live (:mod:`brainkit.data.sources`); ``None`` for a table-only
        cohort."""
        return self._source

    @property
    def grid_shape(self) -> tuple[int, int, int] | None:
        """Image grid ``(X, Y, Z)``; ``None`` for a table-only cohort."""
        return None if self._source is None else tuple(int(s) for s in self._source.grid_shape)

    @property
    def has_images(self) -> bool:
        return self._source is not None

    @property
    def packed_store(self) -> PackedStore | None:
        """The :class:`~brainkit.data.PackedStore` of a packed cohort, else ``None`` (for
        callers that report on the packing: box, dtype, scale, error bound)."""
        return self._source if isinstance(self._source, PackedStore) else None

    def __len__(self) -> int:
        return len(self._table)

    def __repr__(self) -> str:
        datasets = ", ".join(sorted(self._table["dataset"].unique()))
        grid = "no images" if self._source is None else "x".join(map(str, self.grid_shape))
        return (f"Cohort({len(self)} images, {self._table['subject_id'].nunique()} subjects, "
                f"datasets: {datasets}, grid {grid})")

    def _positions(self, indices) -> np.ndarray:
        if indices is None:
            return np.arange(len(self))
        idx = np.asarray(indices)
        if idx.dtype == bool:
            if idx.shape != (len(self),):
                raise IndexError(f"boolean indices must have shape ({len(self)},), got {idx.shape}")
            return np.flatnonzero(idx)
        if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
            if idx.size == 0:
                return idx.astype(np.int64).reshape(0)
            raise IndexError(f"indices must be a 1-D array of integer positions, got {idx.dtype}"
                             f" with shape {idx.shape}")
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"indices out of range for a cohort of {len(self)} images")
        return idx

    def _images_source(self) -> ImageSource:
        if self._source is None:
            raise CohortError("this cohort has no images (table-only)")
        return self._source

    def images(self, indices=None) -> np.ndarray:
        """Read images as a float32 array of shape (n, X, Y, Z).

        Parameters
        ----------
        indices : array-like of int or bool, optional
            Positions in the table (``None`` = all images).

        Notes
        -----
        For a packed cohort the volumes are dequantised and un-cropped (zero outside the
        stored box): within :attr:`PackedStore.max_error` of the images that were packed.
        """
        source = self._images_source()
        return source.read(self._positions(indices))

    def raw_batch(self, indices):
        """Images as stored, for the training loop's fast path.

        Parameters
        ----------
        indices : array-like of int
            Positions in the table.

        Returns
        -------
        brainkit.data.sources.RawBatch
            ``data`` of shape (n, x, y, z): the uint8 / float16 boxes of a packed cohort
            (``scale``, ``offset``, ``box`` and ``grid_shape`` say how to decode and un-crop
            them, :func:`brainkit.data.loaders.decode_batch`); for an ordinary cohort the
            float32 full-grid images with ``scale=1``, ``offset=0`` and the whole grid as box.
        """
        source = self._images_source()
        return source.raw_batch(self._positions(indices))

    def subset(self, indices) -> Cohort:
        """A new cohort holding the given rows (positions), in the given order, in memory
        (a packed cohort gives a packed subset; float images are read as float32)."""
        idx = self._positions(indices)
        table = self._table.iloc[idx].reset_index(drop=True)
        images = None if self._source is None else self._source.take(idx)
        return Cohort(table, images, self._affine, _validated=True, check_finite=False)

    # ------------------------------------------------------------------ identity
    @property
    def folder(self) -> Path | None:
        """The folder the cohort was loaded from (:meth:`load`), ``None`` if built in memory."""
        return self._folder

    @property
    def content_hash(self) -> str:
        """SHA-256 of the table, the affine and the image bytes (computed once).

        For a cohort read by :meth:`load` this is the hash recorded in ``cohort.json``,
        checked against the files' sizes and modification times at load; :meth:`verify`
        recomputes it from the bytes.
        """
        if self._content_hash is None:
            self._content_hash = self._digest(check_finite=False)
        return self._content_hash

    def _digest(self, *, check_finite: bool) -> str:
        """Hash the content in one pass; with ``check_finite`` refuse NaN / inf volumes."""
        h = hashlib.sha256()
        h.update(self._table.to_csv(index=False, float_format="%.10g").encode())
        h.update(np.ascontiguousarray(self._affine, dtype=np.float64).tobytes())
        if self._source is None:
            return h.hexdigest()
        bad = self._source.update_hash(h, check_finite=check_finite)
        if bad.any():
            where = self._folder / self._source.file_name if self._folder else "images"
            raise CohortError(f"{_where(self._table, bad, str(where))}: volume contains NaN "
                              "or inf (the file was changed after it was checked); restore "
                              "or re-import the cohort")
        return h.hexdigest()

    def verify(self) -> str:
        """Re-read every image: check it is finite and that the content is what was saved.

        Reads the whole cohort once (about as long as one pass of training over it).
        :func:`brainkit.train.fit` calls it before training or resuming, ``brainkit data
        info`` before describing a cohort. Repeated calls on one object do nothing.

        Returns
        -------
        str
            The content hash, recomputed from the bytes.

        Raises
        ------
        CohortError
            A volume holds NaN or inf (rows named), or the bytes no longer match the content
            hash recorded in ``cohort.json`` (a file was edited after the cohort was saved).
        """
        if self._verified:
            return self.content_hash
        actual = self._digest(check_finite=True)
        recorded = self._content_hash
        if recorded is not None and actual != recorded:
            where = self._folder if self._folder is not None else "this cohort"
            raise CohortError(
                f"{where}: the content changed after the cohort was saved (content hash now "
                f"{actual[:12]}..., cohort.json records {recorded[:12]}...): an image or table "
                "file was edited or replaced; restore it, or save the cohort again "
                "(Cohort.save) if the change is intended")
        self._content_hash = actual
        self._verified = True
        return actual

    # ------------------------------------------------------------------ storage
    def save(self, directory: str | os.PathLike) -> Path:
        """Write the cohort to ``directory``.

        Layout: ``table.parquet``, the source's data file and ``cohort.json`` (format
        version, grid, affine, dtype, content hash, and what the source adds). Float images
        are written to ``images.npy`` (memory-mappable, the stored float dtype; format
        version 1); a packed cohort writes ``packed.npy`` and describes it under
        ``"packed"`` (format version 2). Files are written to temporary names and renamed, so
        an interrupted save never leaves a half-written file under a final name.
        """
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        _atomic_write(d / TABLE_FILE, lambda p: self._table.to_parquet(p, index=False))
        source = self._source
        if source is not None:
            source.save(d)
        meta = {
            "format": "brainkit-cohort",
            "format_version": _TABLE_ONLY_FORMAT_VERSION if source is None
            else source.format_version,
            "n_images": len(self),
            "grid_shape": list(self.grid_shape) if self.grid_shape else None,
            "affine": self._affine.tolist(),
            "dtype": None if source is None else str(source.dtype),
            "content_hash": self.content_hash,
            # sizes and modification times: Cohort.load notices a file edited afterwards
            "files": _stamps(d, [TABLE_FILE, None if source is None else source.file_name]),
        }
        if source is not None:
            meta.update(source.sidecar())
        _atomic_write(d / "cohort.json",
                      lambda p: Path(p).write_text(json.dumps(meta, indent=2) + "\n"))
        return d

    @classmethod
    def load(cls, directory: str | os.PathLike, *, mmap: bool = True,
             verify: str = "fast") -> Cohort:
        """Read a cohort written by :meth:`save` (images memory-mapped by default; a packed
        cohort's ``packed.npy`` likewise, see :mod:`brainkit.data.packed`).

        Parameters
        ----------
        directory : path-like
        mmap : bool, default True
            Memory-map the images (else read them into memory, checked for NaN / inf).
        verify : {"fast", "full", "none"}, default "fast"
            ``"fast"``: compare the data files' sizes and modification times with those
            recorded by :meth:`save`; if one differs, recompute the content hash from the
            bytes and refuse the cohort if it no longer matches (a file edited after saving).
            ``"full"``: :meth:`verify` (read everything: hash and NaN / inf). ``"none"``:
            trust the files.

        Raises
        ------
        FileNotFoundError
            ``cohort.json`` or a data file is missing.
        CohortError
            Unreadable, truncated or inconsistent files, content that changed after the
            cohort was saved, or a ``"store"`` this brainkit does not know; the message names
            the file.
        """
        if verify not in ("fast", "full", "none"):
            raise ValueError(f"verify must be 'fast', 'full' or 'none', got {verify!r}")
        d = Path(directory)
        meta_path = d / "cohort.json"
        meta = _read_sidecar(d, meta_path)
        table_path = d / TABLE_FILE
        if not table_path.is_file():
            raise MissingFileError(f"{table_path} not found")
        try:
            raw = pd.read_parquet(table_path)
        except Exception as err:  # pyarrow raises ArrowInvalid, OSError, ... on a bad file
            raise CohortError(f"{table_path}: unreadable parquet table, truncated or not "
                              f"written by brainkit ({type(err).__name__}: {err})") from None
        table = validate_table(raw, source=str(table_path))
        source_class = _source_class(meta, meta_path)
        images = None if source_class is None else source_class.load(d, meta, mmap=mmap)
        try:
            cohort = cls(table, images, meta["affine"], _validated=True, check_finite=not mmap,
                         _hash=meta.get("content_hash"))
        except CohortError as err:
            raise CohortError(f"{d}: {err}") from None
        cohort._folder = d
        if verify == "full":
            cohort.verify()
        elif verify == "fast":
            cohort._check_stamps(meta, meta_path)
        return cohort

    def _check_stamps(self, meta: dict, meta_path: Path) -> None:
        """The fast check of :meth:`load`: a data file whose size or modification time
        differs from the record has its content re-hashed (then the record is refreshed)."""
        recorded = meta.get("files")
        if not isinstance(recorded, dict) or not recorded or self._content_hash is None:
            return  # written by an older brainkit: nothing to compare with
        d = meta_path.parent
        changed = [name for name, stamp in recorded.items()
                   if _stamps(d, [name]).get(name) != stamp]
        if not changed:
            return
        try:
            self.verify()
        except CohortError as err:
            raise CohortError(f"{err} (changed: {', '.join(changed)})") from None
        try:  # the same content (e.g. copied without keeping times): remember the new times
            fresh = {**meta, "files": _stamps(d, list(recorded))}
            _atomic_write(meta_path, lambda p: Path(p).write_text(json.dumps(fresh, indent=2)
                                                                  + "\n"))
        except OSError:
            pass  # a read-only copy: checked again next time


TABLE_FILE = "table.parquet"


def _read_sidecar(d: Path, meta_path: Path) -> dict:
    """``cohort.json`` as a dict, checked to be a brainkit sidecar this version can read."""
    if not meta_path.is_file():
        why = " (the folder does not exist)" if not d.exists() else ""
        raise MissingFileError(f"{meta_path} not found: {d} is not a saved brainkit "
                               f"cohort{why}")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CohortError(f"{meta_path}: not valid JSON ({err})") from None
    if not isinstance(meta, dict):
        raise CohortError(f"{meta_path}: not a brainkit cohort sidecar (a JSON object)")
    if meta.get("format") != "brainkit-cohort":
        raise CohortError(f"{meta_path}: not a brainkit cohort sidecar")
    if meta.get("format_version", 0) > _FORMAT_VERSION:
        raise CohortError(f"{meta_path}: format version {meta['format_version']} is newer "
                          "than this brainkit understands; upgrade brainkit")
    return meta


def _source_class(meta: dict, meta_path: Path) -> type[ImageSource] | None:
    """The :data:`~brainkit.data.sources.SOURCES` class named by the sidecar's ``"store"``
    (none: ``"array"`` when the sidecar has a grid, else a table-only cohort)."""
    store = meta.get("store")
    if store is None:
        if meta.get("grid_shape") is None:
            return None
        store = ArraySource.store
    if store not in SOURCES:
        raise CohortError(f"{meta_path}: unknown image store {store!r} (this brainkit reads "
                          f"{sorted(SOURCES)}); upgrade brainkit")
    if meta.get("grid_shape") is None:
        raise CohortError(f"{meta_path}: a {store} cohort needs 'grid_shape'")
    return SOURCES[store]


def _stamps(directory: Path, names) -> dict:
    """``{name: {"size": bytes, "mtime_ns": ...}}`` for the files that exist."""
    out = {}
    for name in names:
        if name is None:
            continue
        try:
            st = os.stat(Path(directory) / name)
        except OSError:
            continue
        out[name] = {"size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}
    return out


def concat(cohorts: Sequence[Cohort]) -> Cohort:
    """Stack cohorts on the same grid into one (tables and images concatenated).

    Images are joined as they are stored (:meth:`ImageSource.concatenate
    <brainkit.data.sources.ImageSource.concatenate>`): float cohorts give a float32 cohort
    in memory; packed cohorts give a packed cohort in memory when every part is packed with
    the same settings (dtype, box, scale, offset, value range and margin, as for subsets of
    one packed cohort). Anything else is refused rather than silently decoded or re-quantised.

    Parameters
    ----------
    cohorts : sequence of Cohort

    Returns
    -------
    Cohort

    Raises
    ------
    CohortError
        Cohorts on different grids or affines; table-only cohorts mixed with cohorts that
        have images; packed cohorts mixed with float ones, or packed with other settings (the
        message names the cohorts and their settings); duplicate image ids.
    """
    if not cohorts:
        raise ValueError("concat needs at least one cohort")
    first = cohorts[0]
    table_only = [i for i, c in enumerate(cohorts) if not c.has_images]
    if table_only and len(table_only) < len(cohorts):
        raise CohortError(f"cohorts {table_only} are table-only but the others have images; "
                          "concatenate cohorts that all have images, or none")
    for i, c in enumerate(cohorts[1:], 1):
        if c.grid_shape != first.grid_shape or not np.allclose(c.affine, first.affine):
            raise CohortError(f"cohort {i} is on grid {c.grid_shape} / affine differs from "
                              f"cohort 0 ({first.grid_shape}); resample before concatenating")
    table = pd.concat([c.table for c in cohorts], ignore_index=True)
    images = None
    if not table_only:
        images = ImageSource.concatenate([c.source for c in cohorts],
                                         labels=[f"cohort {i}" for i in range(len(cohorts))])
    return Cohort(table, images, first.affine, check_finite=False)
