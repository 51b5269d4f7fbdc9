"""Table builders for the small real datasets, and the brainkit table reader.

Each builder reads a dataset's own table (a path or a DataFrame) and returns a cohort table in
the brainkit vocabulary, checked with :func:`brainkit.data.validate_table`. The mappings are
the ones the manifests in ``data_manifests/`` declare (``mapping`` section):

- :func:`oasis1_table`: OASIS-1 cross-sectional (``oasis_cross-sectional.csv`` or the
  ``subset_index.csv`` of the 48 shared images).
- :func:`oasis2_table`: OASIS-2 longitudinal (``oasis_longitudinal.csv``).
- :func:`fcon1000_table`: 1000 Functional Connectomes cortical thickness (``fcon1000.csv``):
  table and thickness features.
- :func:`read_table`: a TSV / CSV already in the brainkit vocabulary (bring your own data).
- :func:`label_mci_conversion`: per-subject HC / sMCI / pMCI / MCI / AD groups from per-visit
  diagnoses (the ADNI rule: conversion to AD within 36 months).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import MissingFileError
from .cohort import CohortError, _where, validate_table

__all__ = [
    "OASIS_SITE",
    "OASIS_FIELD_STRENGTH",
    "OASIS2_GROUPS",
    "FCON1000_SEX",
    "MCI_WINDOW_YEARS",
    "ID_COLUMNS",
    "read_delimited",
    "read_table",
    "sniff_separator",
    "oasis1_table",
    "oasis2_table",
    "fcon1000_table",
    "label_mci_conversion",
]

#: OASIS-1 and OASIS-2 were scanned on one Siemens 1.5 T Vision at Washington University.
OASIS_SITE = "wustl"
OASIS_FIELD_STRENGTH = 1.5
#: OASIS-2 ``Group`` -> brainkit diagnosis (brainkit's convention; see data_manifests/oasis2.yaml).
OASIS2_GROUPS = {"Nondemented": "HC", "Demented": "AD", "Converted": "pMCI"}
#: fcon1000 ``sex`` coding of the PCNtoolkit table (1 = male, 0 = female).
FCON1000_SEX = {1: "M", 0: "F"}
#: The MCI conversion window (years): pMCI converts to AD within it.
MCI_WINDOW_YEARS = 3.0
#: OASIS-1 rated CDR only from age 60; younger participants are nondemented.
_OASIS1_UNRATED_MAX_AGE = 60.0
_DAYS_PER_YEAR = 365.25


#: Columns holding identifiers, read as text so that ``001`` stays ``001`` (not 1). Every
#: table reader of brainkit uses it: the brainkit vocabulary and the datasets' own id columns.
ID_COLUMNS = ("image_id", "subject_id", "site", "dataset", "ID", "MRI ID", "Subject ID",
              "sub_id", "participant_id")
_SEPARATORS = {"\t": "tab", ",": "comma", ";": "semicolon"}


def sniff_separator(path: str | os.PathLike) -> str:
    """The field separator of a delimited text table, from its header line.

    The separator is the one of tab, comma and semicolon that occurs most often in the first
    line (so a comma-separated file named ``.tsv`` is still read right); with none of them
    the file has one column, and the suffix decides (tab for ``.tsv`` / ``.tab``).
    """
    path = Path(path)
    with open(path, encoding="utf-8-sig", errors="replace") as fh:
        first = fh.readline()
    counts = {sep: first.count(sep) for sep in _SEPARATORS}
    best = max(counts, key=counts.get)
    if counts[best] == 0:
        return "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    return best


def read_delimited(path: str | os.PathLike, *, what: str = "table") -> pd.DataFrame:
    """Read a CSV / TSV table: separator sniffed, id columns as text, a UTF-8 BOM ignored.

    Raises
    ------
    FileNotFoundError
        No such file.
    CohortError
        The file cannot be parsed (the message names it and the separator used).
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{what}: table file {str(path)!r} does not exist")
    sep = sniff_separator(path)
    try:
        return pd.read_csv(path, sep=sep, encoding="utf-8-sig",
                           dtype={c: str for c in ID_COLUMNS})
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as err:
        raise CohortError(f"{path}: not a readable table ({_SEPARATORS[sep]}-separated "
                          f"text expected; {err})") from None


def _read(source, what: str) -> tuple[pd.DataFrame, str]:
    """A DataFrame and a name for messages, from a DataFrame or a CSV / TSV path."""
    if isinstance(source, pd.DataFrame):
        return source.reset_index(drop=True), what
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"{what}: expected a path or a pandas DataFrame, got "
                        f"{type(source).__name__}")
    return read_delimited(source, what=what), str(source)


def _require(table: pd.DataFrame, columns, source: str) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise CohortError(f"{source}: missing column(s) {missing}; found {list(table.columns)}")


def _numeric(table: pd.DataFrame, column: str, source: str) -> np.ndarray:
    values = pd.to_numeric(table[column], errors="coerce").to_numpy(dtype=float)
    bad = np.isnan(values) & table[column].notna().to_numpy()
    if bad.any():
        raise CohortError(f"{_where(_ids(table), bad, source)}: column {column!r} must be "
                          f"numeric, got {table[column][bad].astype(str).head(3).tolist()}")
    return values


def _ids(table: pd.DataFrame) -> pd.DataFrame:
    """A view with an ``image_id`` column for :func:`_where` (first id-like column)."""
    for column in ("image_id", "ID", "MRI ID", "sub_id", "participant_id"):
        if column in table:
            return table.assign(image_id=table[column].astype(str))
    return table


def read_table(path, *, source: str | None = None) -> pd.DataFrame:
    """Read a cohort table in the brainkit vocabulary (TSV or CSV) and validate it.

    Parameters
    ----------
    path : path-like or pandas.DataFrame
        Tab-, comma- or semicolon-separated text; the separator is read from the header line
        (:func:`sniff_separator`), whatever the suffix. Id columns (:data:`ID_COLUMNS`) are
        read as text, so ``001`` stays ``001``.
    source : str, optional
        Name for messages (default: the path).

    Returns
    -------
    pandas.DataFrame
        The validated table (see :func:`brainkit.data.validate_table`).
    """
    table, name = _read(path, source or "table")
    return validate_table(table, source=source or name)


def oasis1_table(csv) -> pd.DataFrame:
    """OASIS-1 (cross-sectional) table in the brainkit vocabulary.

    Parameters
    ----------
    csv : path-like or pandas.DataFrame
        ``oasis_cross-sectional.csv`` (436 sessions) or the shared images' ``subset_index.csv``;
        columns ``ID, M/F, Age, CDR`` are required, ``Delay, eTIV, nWBV, MMSE`` used if present.

    Returns
    -------
    pandas.DataFrame
        One row per session: ``image_id`` = ``ID``; ``subject_id`` = first 9 characters of
        ``ID``; ``session`` 1 for ``_MR1`` and 2 for the ``_MR2`` rescans;
        ``years_from_baseline`` = ``Delay / 365.25`` for rescans, else 0; diagnosis from CDR
        (0 -> HC, >= 0.5 -> AD; missing CDR under 60 -> HC, OASIS-1 did not rate them);
        ``tiv`` = ``eTIV``; ``field_strength`` 1.5; ``site`` ``"wustl"``; the dataset's
        ``eTIV, nWBV, MMSE, CDR`` columns kept.

    Raises
    ------
    CohortError
        Missing columns, malformed IDs, CDR values outside {0, 0.5, 1, 2, 3} or missing at 60
        or over, a rescan without ``Delay``; the message names the rows.
    """
    raw, source = _read(csv, "OASIS-1 table")
    _require(raw, ["ID", "M/F", "Age", "CDR"], source)
    ids = raw["ID"].astype("string").str.strip()
    malformed = (~ids.str.fullmatch(r"OAS1_\d{4}_MR\d+")).fillna(True).to_numpy(dtype=bool)
    if malformed.any():
        raise CohortError(f"{_where(_ids(raw), malformed, source)}: ID must look like "
                          f"OAS1_0001_MR1, got {raw['ID'][malformed].head(3).tolist()}")
    session = ids.str.extract(r"_MR(\d+)$")[0].astype(int).to_numpy()
    age = _numeric(raw, "Age", source)
    cdr = _numeric(raw, "CDR", source)
    rated = ~np.isnan(cdr)
    off_scale = rated & ~np.isin(cdr, (0.0, 0.5, 1.0, 2.0, 3.0))
    if off_scale.any():
        raise CohortError(f"{_where(_ids(raw), off_scale, source)}: CDR must be one of 0, "
                          f"0.5, 1, 2, 3, got {cdr[off_scale][:3].tolist()}")
    unrated_old = ~rated & ~(age < _OASIS1_UNRATED_MAX_AGE)
    if unrated_old.any():
        raise CohortError(f"{_where(_ids(raw), unrated_old, source)}: CDR is missing for a "
                          f"participant aged {_OASIS1_UNRATED_MAX_AGE:g} or over; brainkit "
                          "maps a missing CDR to HC only under 60 (OASIS-1 rated everyone "
                          "older)")
    diagnosis = np.where(rated & (cdr >= 0.5), "AD", "HC")
    years = np.zeros(len(raw))
    rescan = session > 1
    if rescan.any():
        if "Delay" not in raw:
            raise CohortError(f"{source}: rescan rows (_MR2) need the 'Delay' column (days "
                              "between scan and rescan)")
        delay = _numeric(raw, "Delay", source)
        no_delay = rescan & np.isnan(delay)
        if no_delay.any():
            raise CohortError(f"{_where(_ids(raw), no_delay, source)}: rescan without a "
                              "'Delay' (days since the first scan)")
        years[rescan] = delay[rescan] / _DAYS_PER_YEAR
    out = pd.DataFrame({
        "image_id": ids.astype(str).to_numpy(),
        "subject_id": ids.str.slice(0, 9).astype(str).to_numpy(),
        "session": session,
        "dataset": "oasis1",
        "site": OASIS_SITE,
        "age": age,
        "sex": raw["M/F"].to_numpy(),
        "diagnosis": diagnosis,
        "years_from_baseline": years,
        "field_strength": OASIS_FIELD_STRENGTH,
    })
    if "eTIV" in raw:
        out["tiv"] = _numeric(raw, "eTIV", source)
    for column in ("eTIV", "nWBV", "MMSE", "CDR"):
        if column in raw:
            out[column] = _numeric(raw, column, source)
    return validate_table(out, source=source)


def oasis2_table(csv) -> pd.DataFrame:
    """OASIS-2 (longitudinal) table in the brainkit vocabulary.

    Parameters
    ----------
    csv : path-like or pandas.DataFrame
        ``oasis_longitudinal.csv``: ``Subject ID, MRI ID, Group, Visit, MR Delay, M/F, Age``
        required; ``nWBV, eTIV, MMSE, CDR`` kept when present.

    Returns
    -------
    pandas.DataFrame
        One row per session: ``image_id`` = ``MRI ID``, ``subject_id`` = ``Subject ID``,
        ``session`` = ``Visit``, diagnosis from ``Group`` (:data:`OASIS2_GROUPS`:
        Nondemented -> HC, Demented -> AD, Converted -> pMCI), ``years_from_baseline`` =
        ``MR Delay / 365.25``, ``tiv`` = ``eTIV``, ``field_strength`` 1.5, ``site``
        ``"wustl"``, plus ``nWBV, eTIV, MMSE, CDR``.
    """
    raw, source = _read(csv, "OASIS-2 table")
    _require(raw, ["Subject ID", "MRI ID", "Group", "Visit", "MR Delay", "M/F", "Age"], source)
    group = raw["Group"].astype("string").str.strip()
    diagnosis = group.map(OASIS2_GROUPS)
    unknown = diagnosis.isna().to_numpy()
    if unknown.any():
        raise CohortError(f"{_where(_ids(raw), unknown, source)}: unknown Group "
                          f"{raw['Group'][unknown].head(3).tolist()} (expected "
                          f"{sorted(OASIS2_GROUPS)})")
    delay = _numeric(raw, "MR Delay", source)
    out = pd.DataFrame({
        "image_id": raw["MRI ID"].astype(str).str.strip().to_numpy(),
        "subject_id": raw["Subject ID"].astype(str).str.strip().to_numpy(),
        "session": _numeric(raw, "Visit", source),
        "dataset": "oasis2",
        "site": OASIS_SITE,
        "age": _numeric(raw, "Age", source),
        "sex": raw["M/F"].to_numpy(),
        "diagnosis": diagnosis.astype(object).to_numpy(),
        "years_from_baseline": delay / _DAYS_PER_YEAR,
        "field_strength": OASIS_FIELD_STRENGTH,
    })
    if not np.isnan(out["session"]).any():
        out["session"] = out["session"].astype(int)
    if "eTIV" in raw:
        out["tiv"] = _numeric(raw, "eTIV", source)
    for column in ("nWBV", "eTIV", "MMSE", "CDR"):
        if column in raw:
            out[column] = _numeric(raw, column, source)
    return validate_table(out, source=source)


def fcon1000_table(csv) -> tuple[pd.DataFrame, pd.DataFrame]:
    """1000 Functional Connectomes table and cortical-thickness features.

    Parameters
    ----------
    csv : path-like or pandas.DataFrame
        ``fcon1000.csv`` (PCNtoolkit demo): ``sub_id, age, sex, site`` and the
        ``*_thickness`` columns required; ``eTIV`` (mm^3) and ``avg_en`` used if present.

    Returns
    -------
    table : pandas.DataFrame
        One row per participant, all HC, ``session`` 1, ``years_from_baseline`` 0, sex from
        :data:`FCON1000_SEX` (1 -> M, 0 -> F), ``tiv`` = ``eTIV / 1000`` (ml), ``avg_en``
        (Euler number) kept.
    features : pandas.DataFrame of shape (n_subjects, n_thickness)
        The ``*_thickness`` columns (mm), rows aligned with ``table`` (150 Destrieux regions
        in the shared file). ``features.to_numpy()`` is the feature matrix.
    """
    raw, source = _read(csv, "fcon1000 table")
    _require(raw, ["sub_id", "age", "sex", "site"], source)
    thickness = [c for c in raw.columns if str(c).endswith("_thickness")]
    if not thickness:
        raise CohortError(f"{source}: no '*_thickness' feature columns")
    sex_code = _numeric(raw, "sex", source)
    sex = pd.Series(sex_code).map(FCON1000_SEX)
    bad_sex = sex.isna().to_numpy()
    if bad_sex.any():
        raise CohortError(f"{_where(_ids(raw), bad_sex, source)}: sex must be coded 1 (male) "
                          f"or 0 (female), got {raw['sex'][bad_sex].head(3).tolist()}")
    out = pd.DataFrame({
        "image_id": raw["sub_id"].astype(str).to_numpy(),
        "subject_id": raw["sub_id"].astype(str).to_numpy(),
        "session": 1,
        "dataset": "fcon1000",
        "site": raw["site"].astype(str).to_numpy(),
        "age": _numeric(raw, "age", source),
        "sex": sex.to_numpy(),
        "diagnosis": "HC",
        "years_from_baseline": 0.0,
    })
    if "eTIV" in raw:
        out["tiv"] = _numeric(raw, "eTIV", source) / 1000.0
    if "avg_en" in raw:
        out["avg_en"] = _numeric(raw, "avg_en", source)
    table = validate_table(out, source=source)
    features = pd.DataFrame({c: _numeric(raw, c, source) for c in thickness})
    missing = features.isna().any(axis=1).to_numpy()
    if missing.any():
        raise CohortError(f"{_where(_ids(raw), missing, source)}: missing thickness values")
    return table, features


def label_mci_conversion(table: pd.DataFrame, *, window_years: float = MCI_WINDOW_YEARS
                         ) -> pd.DataFrame:
    """Turn per-visit diagnoses into per-subject groups (HC, sMCI, pMCI, MCI, AD).

    A subject's group comes from its baseline (earliest) visit:

    - HC or AD at baseline: that label on every visit;
    - MCI at baseline: **pMCI** if a visit within ``window_years`` of baseline is AD;
      otherwise **sMCI** if the subject is followed for at least ``window_years``; otherwise
      **MCI** (undetermined: follow-up too short). Under this rule a conversion after the
      window counts as sMCI.

    Parameters
    ----------
    table : pandas.DataFrame
        One row per visit with ``subject_id``, ``years_from_baseline`` and ``diagnosis``
        holding the visit's clinical diagnosis in ``HC`` / ``MCI`` / ``AD`` (map the dataset's
        codes first, e.g. ADNI CN -> HC, Dementia -> AD).
    window_years : float, default 3.0
        The conversion window (36 months, brainkit's convention for ADNI).

    Returns
    -------
    pandas.DataFrame
        A copy with ``diagnosis`` replaced by the subject's group and the original per-visit
        value in ``visit_diagnosis``. Row order is kept.
    """
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"table must be a pandas DataFrame, got {type(table).__name__}")
    _require(table, ["subject_id", "years_from_baseline", "diagnosis"], "table")
    if isinstance(window_years, bool) or not np.isfinite(float(window_years)) or window_years <= 0:
        raise ValueError(f"window_years must be a positive number of years, got {window_years!r}")
    t = table.reset_index(drop=True)
    visit = t["diagnosis"].astype("string").str.strip()
    bad = (~visit.isin(("HC", "MCI", "AD"))).fillna(True).to_numpy(dtype=bool)
    if bad.any():
        raise CohortError(f"{_where(_ids(t), bad, 'table')}: per-visit diagnosis must be HC, "
                          f"MCI or AD, got {t['diagnosis'][bad].head(3).tolist()}")
    years = _numeric(t, "years_from_baseline", "table")
    if np.isnan(years).any():
        raise CohortError(f"{_where(_ids(t), np.isnan(years), 'table')}: "
                          "years_from_baseline is missing")
    subject = t["subject_id"].astype(str).to_numpy()
    visit_dx = visit.astype(str).to_numpy()
    group = np.empty(len(t), dtype=object)
    for sid in pd.unique(subject):
        rows = np.flatnonzero(subject == sid)
        rel = years[rows] - years[rows].min()
        base = np.unique(visit_dx[rows][rel == 0])
        if len(base) > 1:
            raise CohortError(f"table: subject {sid!r} has conflicting baseline diagnoses "
                              f"{base.tolist()}")
        baseline = base[0]
        if baseline != "MCI":
            group[rows] = baseline
        elif np.any((visit_dx[rows] == "AD") & (rel <= window_years + 1e-9)):
            group[rows] = "pMCI"
        elif rel.max() >= window_years - 1e-9:
            group[rows] = "sMCI"
        else:
            group[rows] = "MCI"
    out = t.copy()
    out["visit_diagnosis"] = visit_dx
    out["diagnosis"] = group
    return out
