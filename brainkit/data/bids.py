"""BIDS in: a cohort table (and a cohort) from a BIDS dataset, and a BIDS tree from a cohort.

:func:`bids_table` reads a BIDS dataset with pybids (``BIDSLayout``, which applies the
bids-validator's path rules): one row per image of ``suffix`` (``T1w`` by default) under
``sub-*/[ses-*/]anat/``, or in a derivatives pipeline's folder (``derivatives/NAME/``, e.g.
CAT12 or fMRIPrep grey-matter maps, chosen with ``suffix``, ``filters`` and ``match``). The
subject's and session's descriptions come from ``participants.tsv`` and
``sub-*/sub-*_sessions.tsv``; a session's value overrides the participant's.

Columns (the brainkit vocabulary, :data:`brainkit.data.COLUMNS`):

- ``age``: from a session's ``age`` when the sessions table has it; otherwise the
  participant's ``age`` is taken as the age at the first session, and later sessions add
  their ``acq_time`` difference. A subject with several sessions and neither is refused.
- ``years_from_baseline``: session age minus the subject's first session age (or the
  ``acq_time`` difference in years, 365.25 days); 0 for a single session.
- ``sex``, ``diagnosis``, ``site``: mapped columns (``columns=``; by default the first of
  :data:`COLUMN_NAMES` present). Diagnosis spellings such as ``control`` / ``CN`` map to
  ``HC`` (:data:`DIAGNOSIS_SPELLINGS`). A missing ``site`` column means one site, named after
  the dataset; a missing ``sex`` or ``diagnosis`` column is an error unless ``defaults=``
  gives the value (e.g. ``{"diagnosis": "HC"}`` for a healthy-volunteer dataset).
- ``image_id``: the file's entities (``sub-01_ses-02_run-1``), ``participant_id``
  (``sub-01``), ``session_id`` (``ses-02`` or empty), ``session`` (the label, ``1`` without
  sessions), ``path``.

:func:`import_bids` is :func:`bids_table` followed by :func:`brainkit.data.import_nifti` (the
same image checks, resampling and folder safety). :func:`write_bids` writes a cohort as a BIDS
dataset (the tests' and the book's example trees).
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError, MissingFileError
from .cohort import COLUMNS, OPTIONAL_COLUMNS, Cohort, CohortError, _session_key

__all__ = [
    "COLUMN_NAMES",
    "DIAGNOSIS_SPELLINGS",
    "BIDS_ENTITIES",
    "bids_table",
    "import_bids",
    "load_onto_grid",
    "write_bids",
]

#: Column names looked for in participants.tsv / sessions.tsv, first found wins.
COLUMN_NAMES: dict[str, tuple[str, ...]] = {
    "age": ("age", "age_at_scan", "age_years"),
    "sex": ("sex", "gender"),
    "diagnosis": ("diagnosis", "group", "dx", "diagnosis_group"),
    "site": ("site", "site_id", "scanner", "center", "centre"),
    "tiv": ("tiv", "etiv"),
    "field_strength": ("field_strength", "magnetic_field_strength"),
}

#: Diagnosis spellings of BIDS datasets, lower-cased, onto the brainkit vocabulary.
DIAGNOSIS_SPELLINGS: dict[str, str] = {
    "hc": "HC", "control": "HC", "controls": "HC", "cn": "HC", "nc": "HC", "healthy": "HC",
    "normal": "HC", "ctrl": "HC", "mci": "MCI", "smci": "sMCI", "pmci": "pMCI", "ad": "AD",
    "dementia": "AD", "alzheimer": "AD",
}

#: Entities that name an image, in BIDS file-name order (pybids name, file-name key).
BIDS_ENTITIES: tuple[tuple[str, str], ...] = (
    ("subject", "sub"), ("session", "ses"), ("task", "task"), ("acquisition", "acq"),
    ("ceagent", "ce"), ("reconstruction", "rec"), ("run", "run"), ("space", "space"),
    ("label", "label"), ("desc", "desc"),
)
_EXTENSIONS = (".nii", ".nii.gz")
_DAYS_PER_YEAR = 365.25


def _read_tsv(path: Path) -> pd.DataFrame:
    try:
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as err:
        raise InputError(f"{path}: not a readable TSV table ({err})") from None
    table.columns = [str(c).strip() for c in table.columns]
    return table.replace({"n/a": "", "N/A": "", "NA": "", "nan": ""})


def _layout(root: Path, derivatives: str | None):
    try:
        from bids import BIDSLayout
        from bids.exceptions import BIDSValidationError
    except ImportError:  # pragma: no cover - pybids is a dependency
        raise InputError("reading a BIDS dataset needs pybids (pip install pybids)") from None
    if not root.is_dir():
        raise MissingFileError(f"BIDS folder {str(root)!r} does not exist")
    deriv = None
    if derivatives is not None:
        deriv = root / "derivatives" / derivatives
        if not deriv.is_dir():
            found = sorted(p.name for p in (root / "derivatives").glob("*") if p.is_dir())
            raise MissingFileError(f"{root}: no derivatives folder derivatives/{derivatives} "
                                   f"(found {found or 'none'})")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            layout = BIDSLayout(str(root), validate=True,
                                derivatives=[str(deriv)] if deriv is not None else False)
        except (BIDSValidationError, ValueError) as err:
            raise InputError(f"{root}: not a BIDS dataset ({str(err).splitlines()[0]})") from None
    return layout, deriv


def _find_column(table: pd.DataFrame, name: str, columns: Mapping[str, str]) -> str | None:
    if name in columns:
        return columns[name] if columns[name] in table.columns else None
    lower = {c.lower(): c for c in table.columns}
    return next((lower[c] for c in COLUMN_NAMES.get(name, (name,)) if c in lower), None)


def _label(value) -> str:
    return str(value) if value is not None else ""


def _image_id(entities: Mapping) -> str:
    parts = [f"{key}-{entities[name]}" for name, key in BIDS_ENTITIES
             if entities.get(name) not in (None, "")]
    return "_".join(parts)


def _float(value: str) -> float:
    try:
        return float(value) if str(value).strip() != "" else np.nan
    except (TypeError, ValueError):
        return np.nan


def _sessions_table(root: Path, subject: str) -> pd.DataFrame | None:
    path = root / f"sub-{subject}" / f"sub-{subject}_sessions.tsv"
    if not path.is_file():
        return None
    table = _read_tsv(path)
    if "session_id" not in table.columns:
        raise InputError(f"{path}: no 'session_id' column (found {list(table.columns)})")
    return table.set_index("session_id")


def bids_table(root: str | os.PathLike, *, derivatives: str | None = None, suffix: str = "T1w",
               filters: Mapping[str, str] | None = None, match: str | None = None,
               columns: Mapping[str, str] | None = None,
               defaults: Mapping[str, object] | None = None, dataset: str | None = None,
               require_age: bool = True) -> pd.DataFrame:
    """The cohort table of a BIDS dataset: one row per image, with its file in ``path``.

    Parameters
    ----------
    root : path-like
        The BIDS dataset (with ``dataset_description.json`` and ``participants.tsv``).
    derivatives : str, optional
        Read the images of ``root/derivatives/NAME`` instead of the raw ``anat`` images.
    suffix : str, default "T1w"
        BIDS suffix of the images (e.g. ``probseg`` for fMRIPrep tissue maps).
    filters : mapping, optional
        More pybids entity filters, e.g. ``{"run": "1"}``, ``{"label": "GM"}``,
        ``{"space": "MNI152NLin2009cAsym"}``.
    match : str, optional
        Shell pattern the file name must match (e.g. ``"mwp1*"`` for CAT12 grey matter).
    columns : mapping, optional
        brainkit column -> column of participants.tsv / sessions.tsv, e.g.
        ``{"age": "AgeAtScan", "diagnosis": "dx_group"}``.
    defaults : mapping, optional
        Values for columns the tables lack, e.g. ``{"diagnosis": "HC", "site": "scanner1"}``.
    dataset : str, optional
        The ``dataset`` column (default: ``dataset_description.json``'s ``Name``).
    require_age : bool, default True
        Refuse an image without an age (``False``: its age is NaN, for prediction only).

    Returns
    -------
    pandas.DataFrame
        The brainkit columns plus ``participant_id``, ``session_id`` and ``path``; rows in
        subject then session order.

    Raises
    ------
    MissingFileError, InputError, CohortError
        No such folder, not a BIDS dataset, no images, missing columns (named with the file),
        two images for one session, a subject with sessions but no way to date them.
    """
    root = Path(root)
    columns = dict(columns or {})
    defaults = dict(defaults or {})
    filters = {k: v for k, v in (filters or {}).items()}
    unknown = sorted(set(columns) - set(COLUMN_NAMES))
    if unknown:
        raise InputError(f"columns: unknown brainkit column(s) {unknown} (mappable: "
                         f"{sorted(COLUMN_NAMES)})")
    layout, deriv = _layout(root, derivatives)
    query = dict(suffix=suffix, extension=list(_EXTENSIONS), return_type="object", **filters)
    try:
        files = layout.get(scope="derivatives" if deriv is not None else "raw", **query)
    except (ValueError, KeyError) as err:
        raise InputError(f"{root}: bad filter {filters} ({err})") from None
    if deriv is not None:
        files = [f for f in files if Path(f.path).resolve().is_relative_to(deriv.resolve())]
    if match is not None:
        import fnmatch

        files = [f for f in files if fnmatch.fnmatch(Path(f.path).name, match)]
    where = f"derivatives/{derivatives}" if deriv is not None else "sub-*/[ses-*/]anat"
    if not files:
        raise InputError(f"{root}: no *_{suffix}.nii[.gz] images in {where}"
                         + (f" with {filters}" if filters else "")
                         + (f" matching {match!r}" if match else ""))

    participants_path = root / "participants.tsv"
    if not participants_path.is_file():
        raise MissingFileError(f"{root}: no participants.tsv (BIDS needs one row per subject: "
                               "participant_id, age, sex, ...)")
    participants = _read_tsv(participants_path)
    if "participant_id" not in participants.columns:
        raise InputError(f"{participants_path}: no 'participant_id' column "
                         f"(found {list(participants.columns)})")
    participants = participants.set_index("participant_id")
    if dataset is None:
        try:
            dataset = json.loads((root / "dataset_description.json").read_text()).get("Name")
        except (OSError, json.JSONDecodeError):
            dataset = None
        dataset = str(dataset or root.name)

    rows = []
    for f in files:
        entities = f.get_entities()
        rows.append({"subject": _label(entities.get("subject")),
                     "ses": _label(entities.get("session")),
                     "image_id": _image_id(entities), "path": str(Path(f.path).resolve())})
    found = pd.DataFrame(rows)
    dup = found.duplicated(["subject", "ses"], keep=False)
    if dup.any():
        names = sorted(Path(p).name for p in found["path"][dup])[:4]
        raise InputError(f"{root}: several images for one session, e.g. {names}; choose one "
                         "with a filter (--filter run=1, --filter acquisition=...) or "
                         "--match PATTERN")
    order = sorted(range(len(found)), key=lambda i: (found["subject"][i],
                                                      _session_key(found["ses"][i])))
    found = found.iloc[order].reset_index(drop=True)

    missing_subjects = sorted(set("sub-" + found["subject"]) - set(participants.index))
    if missing_subjects:
        raise InputError(f"{participants_path}: no row for {missing_subjects[:5]}"
                         f"{' ...' if len(missing_subjects) > 5 else ''}")

    wanted = [c for c in COLUMN_NAMES if c != "age"]
    records = []
    problems: list[str] = []
    for subject, part in found.groupby("subject", sort=False):
        pid = f"sub-{subject}"
        prow = participants.loc[pid]
        sessions = _sessions_table(root, subject)
        srows = []
        for ses in part["ses"]:
            sid = f"ses-{ses}" if ses else ""
            if sessions is not None and sid in sessions.index:
                srows.append(sessions.loc[sid])
            else:
                srows.append(None)

        def value(name, srow, *, participant=True):
            sources = [(srow, sessions)] + ([(prow, participants)] if participant else [])
            for table_row, table in sources:
                if table_row is None or table is None:
                    continue
                column = _find_column(table.reset_index(), name, columns)
                if column is not None and str(table_row.get(column, "")).strip() != "":
                    return str(table_row[column]).strip()
            return None

        ages = np.array([_float(value("age", s, participant=False)) if s is not None
                         else np.nan for s in srows])
        base_age = _float(value("age", None))
        acq = []
        for s in srows:
            stamp = s.get("acq_time", "") if s is not None else ""
            acq.append(pd.to_datetime(stamp, errors="coerce") if stamp else pd.NaT)
        acq = pd.Series(acq, dtype="datetime64[ns]")
        if np.isfinite(ages).all():
            years = ages - ages.min()
        elif len(part) == 1:
            ages = np.where(np.isfinite(ages), ages, base_age)
            years = np.zeros(1)
        elif acq.notna().all():
            years = ((acq - acq.min()).dt.total_seconds() / 86400.0 / _DAYS_PER_YEAR).to_numpy()
            ages = np.where(np.isfinite(ages), ages, base_age + years)
        else:
            problems.append(f"{pid}: {len(part)} sessions but sub-{subject}_sessions.tsv gives "
                            "neither an 'age' nor an 'acq_time' for each of them (cannot tell "
                            "years from baseline)")
            continue
        for (_, image), srow, age, yrs in zip(part.iterrows(), srows, ages, years):
            record = {"image_id": image["image_id"], "subject_id": pid,
                      "participant_id": pid,
                      "session_id": f"ses-{image['ses']}" if image["ses"] else "",
                      "session": image["ses"] or "1", "dataset": dataset, "age": age,
                      "years_from_baseline": float(yrs), "path": image["path"]}
            for name in wanted:
                record[name] = value(name, srow)
            records.append(record)
    if problems:
        raise InputError(f"{root}: " + "; ".join(problems[:5])
                         + (f" and {len(problems) - 5} more" if len(problems) > 5 else ""))
    table = pd.DataFrame.from_records(records)

    for name in ("sex", "diagnosis", "site"):
        empty = table[name].isna()
        if not empty.any():
            continue
        if name in defaults:
            table.loc[empty, name] = str(defaults[name])
        elif name == "site":
            table.loc[empty, name] = dataset
        else:
            subjects = sorted(set(table.loc[empty, "subject_id"]))
            raise InputError(f"{participants_path}: no {name!r} for {subjects[:5]}"
                             f"{' ...' if len(subjects) > 5 else ''} (looked for columns "
                             f"{list(COLUMN_NAMES[name]) if name not in columns else [columns[name]]}"
                             f"; map one with --column {name}=COLUMN or give --set "
                             f"{name}=VALUE)")
    if "age" in defaults:
        table["age"] = table["age"].fillna(float(defaults["age"]))
    no_age = ~np.isfinite(table["age"].to_numpy(dtype=float))
    if no_age.any() and require_age:
        subjects = sorted(set(table.loc[no_age, "subject_id"]))
        raise InputError(f"{participants_path}: no age for {subjects[:5]}"
                         f"{' ...' if len(subjects) > 5 else ''} (an 'age' column in "
                         "participants.tsv or sessions.tsv, or --column age=COLUMN)")
    spelled = table["diagnosis"].astype(str).str.strip()
    table["diagnosis"] = spelled.str.lower().map(DIAGNOSIS_SPELLINGS).fillna(spelled)
    for name in ("tiv", "field_strength"):
        if table[name].isna().all():
            table = table.drop(columns=name)
        else:
            table[name] = [_float(v) if v is not None else np.nan for v in table[name]]
    order = list(COLUMNS) + ["participant_id", "session_id"] + \
        [c for c in OPTIONAL_COLUMNS if c in table.columns]
    return table[order]


def import_bids(root: str | os.PathLike, out: str | os.PathLike, grid_mm: float | None = None,
                *, derivatives: str | None = None, suffix: str = "T1w",
                filters: Mapping[str, str] | None = None, match: str | None = None,
                columns: Mapping[str, str] | None = None,
                defaults: Mapping[str, object] | None = None, dataset: str | None = None,
                allow=None, progress: bool = True) -> Cohort:
    """Import a BIDS dataset as a brainkit cohort saved in ``out``.

    :func:`bids_table` (its arguments) then :func:`brainkit.data.import_nifti` with the
    table's paths (``grid_mm``, ``allow``, ``progress`` as there).

    Examples
    --------
    >>> cohort = import_bids("ds000001", "cohort", grid_mm=3)        # doctest: +SKIP
    """
    from .nifti import import_nifti

    table = bids_table(root, derivatives=derivatives, suffix=suffix, filters=filters,
                       match=match, columns=columns, defaults=defaults, dataset=dataset)
    try:
        return import_nifti(table, None, out, grid_mm, allow=allow, progress=progress)
    except CohortError as err:
        raise CohortError(f"{root}: {err}") from None


def load_onto_grid(table: pd.DataFrame, shape, affine) -> tuple[Cohort, np.ndarray]:
    """Read the images of ``table['path']`` resampled onto a grid, as an in-memory cohort.

    For prediction: rows without an age (:func:`bids_table` with ``require_age=False``) are
    kept, their age set to 0 in the cohort and ``False`` in the returned mask.

    Returns
    -------
    cohort : Cohort
    age_known : numpy.ndarray of bool
    """
    from .nifti import ImageError, image_problem, read_nifti, resample_volume

    age = table["age"].to_numpy(dtype=float)
    known = np.isfinite(age)
    shape = tuple(int(s) for s in shape)
    affine = np.asarray(affine, dtype=float)
    images = np.empty((len(table),) + shape, dtype=np.float32)
    problems = []
    for i, path in enumerate(table["path"]):
        try:
            data, source_affine = read_nifti(path)
            images[i] = resample_volume(data, source_affine, shape, affine)
        except ImageError as err:
            problems.append(str(err))
            continue
        reason = image_problem(images[i])
        if reason:
            problems.append(f"{path}: {reason}")
    if problems:
        raise ImageError(f"{len(problems)} unusable image(s): " + "; ".join(problems[:5]))
    part = table.assign(age=np.where(known, age, 0.0)).reset_index(drop=True)
    return Cohort(part, images, affine), known


def _bids_label(value: str, what: str) -> str:
    label = re.sub(r"[^A-Za-z0-9]", "", str(value))
    if not label:
        raise InputError(f"write_bids: {what} {value!r} has no letters or digits for a BIDS "
                         "label")
    return label


def write_bids(cohort: Cohort, root: str | os.PathLike, *, name: str = "brainkit example",
               indices: Sequence[int] | None = None) -> Path:
    """Write (rows of) a cohort as a BIDS dataset: NIfTI images and their tables.

    ``sub-<subject>/[ses-<n>/]anat/sub-<subject>[_ses-<n>]_T1w.nii.gz`` per image (sessions
    only for subjects with more than one), ``participants.tsv`` (``participant_id``, ``age``
    at the first session, ``sex``, ``diagnosis``, ``site``), ``sub-*/sub-*_sessions.tsv``
    (``session_id``, ``age``, ``diagnosis``, ``acq_time``) and ``dataset_description.json``.
    Subject labels are the ``subject_id`` without non-alphanumeric characters.

    Returns
    -------
    pathlib.Path
        ``root``.
    """
    import nibabel as nib

    root = Path(root)
    if root.exists() and any(root.iterdir()):
        raise InputError(f"write_bids: {root} exists and is not empty")
    table = cohort.table
    rows = np.arange(len(table)) if indices is None else np.asarray(indices, dtype=int)
    part = table.iloc[rows].assign(_row=rows)
    labels = {s: _bids_label(s, "subject_id") for s in part["subject_id"].unique()}
    if len(set(labels.values())) != len(labels):
        raise InputError("write_bids: two subject ids give the same BIDS label")
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(json.dumps(
        {"Name": name, "BIDSVersion": "1.9.0", "DatasetType": "raw"}, indent=2) + "\n")
    participants = []
    base = pd.Timestamp("2020-01-01")
    affine = cohort.affine
    for subject, rows_s in part.groupby("subject_id", sort=False):
        rows_s = rows_s.sort_values("years_from_baseline", kind="stable")
        label = labels[subject]
        first = rows_s.iloc[0]
        participants.append({"participant_id": f"sub-{label}", "age": f"{first['age']:.3f}",
                             "sex": first["sex"], "diagnosis": first["diagnosis"],
                             "site": first["site"]})
        several = len(rows_s) > 1
        sessions = []
        for k, (_, row) in enumerate(rows_s.iterrows(), start=1):
            folder = root / f"sub-{label}" / (f"ses-{k}" if several else "") / "anat"
            folder.mkdir(parents=True, exist_ok=True)
            stem = f"sub-{label}" + (f"_ses-{k}" if several else "") + "_T1w.nii.gz"
            volume = np.asarray(cohort.images([int(row["_row"])])[0], dtype=np.float32)
            nib.save(nib.Nifti1Image(volume, affine), folder / stem)
            if several:
                stamp = base + pd.Timedelta(days=float(row["years_from_baseline"])
                                            * _DAYS_PER_YEAR)
                sessions.append({"session_id": f"ses-{k}", "age": f"{row['age']:.3f}",
                                 "diagnosis": row["diagnosis"],
                                 "acq_time": stamp.strftime("%Y-%m-%dT%H:%M:%S")})
        if several:
            pd.DataFrame(sessions).to_csv(root / f"sub-{label}" / f"sub-{label}_sessions.tsv",
                                          sep="\t", index=False)
    pd.DataFrame(participants).to_csv(root / "participants.tsv", sep="\t", index=False)
    (root / "participants.json").write_text(json.dumps({
        "age": {"Description": "age at the first session", "Units": "year"},
        "sex": {"Description": "M or F"},
        "diagnosis": {"Description": "HC, MCI, sMCI, pMCI or AD at the first session"},
        "site": {"Description": "acquisition site"}}, indent=2) + "\n")
    return root
