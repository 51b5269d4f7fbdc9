"""Validate a local copy of a dataset against its manifest.

``check_dataset(manifest, root)`` reads the layout the manifest declares and reports:

- tables: missing or unreadable files, missing columns, empty or duplicate ids, rows the
  manifest's builder cannot map onto the brainkit vocabulary, row counts;
- images: missing files, unreadable or truncated ones, wrong shapes, NaN / inf voxels (with
  ``full=True``), implausible NIfTI affines, files the table does not list (extra);
- counts: subjects, images, sites, ages, splits and diagnoses of the cohort tables against
  the manifest's ``expected`` numbers (the paper's Tables 1-2 for its four datasets).

Every problem is ``(severity, where, message)``: ``error`` makes the copy unusable,
``warning`` is worth reading (counts that differ from the paper, extra files). The command
``brainkit data check MANIFEST --root DIR`` prints :meth:`CheckReport.summary` and exits
non-zero when the copy is unusable.
"""

from __future__ import annotations

import os
import string
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .manifests import ImageSpec, Layout, Manifest, TableSpec, load_manifest, resolve_builder

__all__ = ["CheckReport", "check_dataset", "SEVERITIES"]

SEVERITIES = ("error", "warning", "info")
_AGE_TOLERANCE = 0.5      # years: ages within this of the expected numbers agree
_MAX_ROWS_NAMED = 5


@dataclass
class CheckReport:
    """The outcome of :func:`check_dataset`.

    Attributes
    ----------
    manifest : str
        Manifest name.
    root : pathlib.Path
    layout : str or None
        The layout checked.
    problems : list of (severity, where, message)
        ``severity`` in ``error`` / ``warning`` / ``info``; ``where`` is a file (relative to
        the root) or a file and row.
    tables : list of dict
        Per table: name, path, rows (None if unreadable).
    images : list of dict
        Per image spec: table, format, pattern, listed, found, missing, unreadable,
        bad_shape, bad_affine (implausible NIfTI header), non_finite, extra.
    counts : list of dict
        Per expected number: what, found, expected, agrees.
    """

    manifest: str
    root: Path
    layout: str | None = None
    layouts: tuple[str, ...] = ()
    title: str = ""
    expected_source: str = ""
    problems: list[tuple[str, str, str]] = field(default_factory=list)
    tables: list[dict] = field(default_factory=list)
    images: list[dict] = field(default_factory=list)
    counts: list[dict] = field(default_factory=list)

    def add(self, severity: str, where: str, message: str) -> None:
        if severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, got {severity!r}")
        self.problems.append((severity, where, message))

    @property
    def errors(self) -> list[tuple[str, str, str]]:
        return [p for p in self.problems if p[0] == "error"]

    @property
    def warnings(self) -> list[tuple[str, str, str]]:
        return [p for p in self.problems if p[0] == "warning"]

    @property
    def ok(self) -> bool:
        """True when no problem is an error (the copy is usable)."""
        return not self.errors

    def summary(self, max_problems: int = 30) -> str:
        """A readable multi-line report.

        Parameters
        ----------
        max_problems : int, default 30
            Problems listed per severity; the rest are counted.
        """
        lines = [f"brainkit data check: {self.manifest}"
                 + (f" ({self.title})" if self.title else ""),
                 f"  root:   {self.root}"]
        if self.layout:
            other = [n for n in self.layouts if n != self.layout]
            lines.append(f"  layout: {self.layout}"
                         + (f" (other layouts: {', '.join(other)})" if other else ""))
        if self.tables:
            lines.append("  tables:")
            for t in self.tables:
                rows = "missing or unreadable" if t["rows"] is None else f"{t['rows']} rows"
                lines.append(f"    {t['name']:<14} {t['path']}: {rows}")
        if self.images:
            lines.append("  images:")
            for s in self.images:
                if s.get("skipped"):
                    lines.append(f"    {s['table']:<14} {s['format']} {s['pattern']}: not "
                                 "checked (its table is missing or invalid)")
                    continue
                parts = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in s.items()
                                  if k not in ("table", "format", "pattern"))
                lines.append(f"    {s['table']:<14} {s['format']} {s['pattern']}: {parts}")
        if self.counts:
            lines.append("  counts vs expected"
                         + (f" ({self.expected_source})" if self.expected_source else "") + ":")
            for c in self.counts:
                mark = "ok" if c["agrees"] else "DIFFERS"
                lines.append(f"    {c['what']:<26} found {_fmt(c['found']):>8}   expected "
                             f"{_fmt(c['expected']):>8}   {mark}")
        n_err, n_warn = len(self.errors), len(self.warnings)
        lines.append(f"  problems: {n_err} error(s), {n_warn} warning(s)")
        for severity in SEVERITIES:
            listed = [p for p in self.problems if p[0] == severity]
            for _, where, message in listed[:max_problems]:
                lines.append(f"    {severity.upper():<8} {where}: {message}")
            if len(listed) > max_problems:
                lines.append(f"    ... and {len(listed) - max_problems} more "
                             f"{severity}(s)")
        lines.append("  result: " + ("USABLE" if self.ok else
                                     f"NOT USABLE ({n_err} error(s) above)"))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def _rows_named(raw: pd.DataFrame, mask: np.ndarray, id_column: str | None) -> str:
    pos = np.flatnonzero(mask)
    if id_column and id_column in raw:
        parts = [f"{p} ({raw[id_column].iloc[p]})" for p in pos[:_MAX_ROWS_NAMED]]
    else:
        parts = [str(p) for p in pos[:_MAX_ROWS_NAMED]]
    more = f" and {len(pos) - _MAX_ROWS_NAMED} more" if len(pos) > _MAX_ROWS_NAMED else ""
    return f"row{'s' if len(pos) > 1 else ''} {', '.join(parts)}{more}"


# --------------------------------------------------------------------------- tables
def _check_table(spec: TableSpec, root: Path, report: CheckReport
                 ) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    """Read one table (as text) and build its brainkit table; record problems."""
    path = root / spec.path
    entry = {"name": spec.name, "path": spec.path, "rows": None}
    report.tables.append(entry)
    if not path.is_file():
        report.add("error", spec.path, f"missing table file (the {spec.name!r} table)")
        return None, None
    try:
        raw = pd.read_csv(path, sep=spec.sep, dtype=str)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        report.add("error", spec.path, f"unreadable table ({err})")
        return None, None
    entry["rows"] = len(raw)
    missing = [c for c in spec.columns if c not in raw.columns]
    if missing:
        sep = "tab" if spec.sep == "\t" else repr(spec.sep)
        report.add("error", spec.path, f"missing column(s) {missing} (separator {sep}; "
                                       f"found {list(raw.columns)[:12]})")
        return None, None
    if spec.id_column:
        ids = raw[spec.id_column].str.strip()
        empty = (ids.isna() | (ids == "")).to_numpy()
        if empty.any():
            report.add("error", f"{spec.path} {_rows_named(raw, empty, None)}",
                       f"empty {spec.id_column!r}")
        dup = (ids.duplicated(keep=False) & ~ids.isna()).to_numpy()
        if dup.any():
            names = sorted(set(ids[dup]))[:_MAX_ROWS_NAMED]
            report.add("error", f"{spec.path} {_rows_named(raw, dup, spec.id_column)}",
                       f"duplicate {spec.id_column!r} {names}")
    if spec.expected_rows is not None and len(raw) != spec.expected_rows:
        report.add("warning", spec.path, f"{len(raw)} rows, expected {spec.expected_rows}")
    built = None
    if spec.builder:
        try:
            builder = resolve_builder(spec.builder, where=f"table {spec.name!r} builder")
            result = builder(path)
            built = result[0] if isinstance(result, tuple) else result
        except (ValueError, KeyError, TypeError) as err:
            report.add("error", spec.path, f"does not map onto the brainkit vocabulary: {err}")
    return raw, built


# --------------------------------------------------------------------------- images
def _fields(pattern: str) -> list[str]:
    return [f for _, f, _, _ in string.Formatter().parse(pattern) if f is not None]


def _glob_of(pattern: str) -> str:
    out = []
    for literal, name, _, _ in string.Formatter().parse(pattern):
        out.append(literal)
        if name is not None:
            out.append("*")
    return "".join(out)


def _expected_paths(spec: ImageSpec, raw: pd.DataFrame, report: CheckReport,
                    table_path: str) -> list[list[str] | None]:
    """For each row, the candidate relative paths (None when a field cannot be filled)."""
    out: list[list[str] | None] = []
    for i, row in enumerate(raw.to_dict("records")):
        values = {k: ("" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v))
                  for k, v in row.items()}
        ok = True
        for name, (column, mapping) in spec.fields.items():
            value = values.get(column, "")
            if value not in mapping:
                report.add("error", f"{table_path} row {i}",
                           f"{column!r} = {value!r} is not one of {sorted(mapping)} (needed to "
                           f"find the image file)")
                ok = False
            else:
                values[name] = mapping[value]
        if not ok:
            out.append(None)
            continue
        out.append([p.format(**values) for p in spec.patterns])
    return out


def _check_npy(path: Path, shape, full: bool) -> tuple[str, str] | None:
    try:
        arr = np.load(path, mmap_mode="r")
    except (ValueError, OSError, EOFError) as err:
        return "unreadable", f"not a readable .npy file ({err})"
    while arr.ndim > 3 and arr.shape[0] == 1:
        arr = arr[0]
    if tuple(arr.shape) != tuple(shape):
        return "bad_shape", f"array of shape {tuple(arr.shape)}, expected {tuple(shape)}"
    if not np.issubdtype(arr.dtype, np.number):
        return "unreadable", f"array of dtype {arr.dtype}, expected numbers"
    if full:
        try:
            bad = int((~np.isfinite(np.asarray(arr, dtype=np.float32))).sum())
        except (ValueError, OSError) as err:
            return "unreadable", f"the data cannot be read ({err})"
        if bad:
            return "non_finite", f"{bad} voxels are NaN or infinite"
    return None


def _check_nifti(path: Path, shape, grid_mm, full: bool, report: CheckReport, where: str
                 ) -> tuple[str, str] | None:
    from .grid import mni_grid
    from .nifti import ImageError, affine_problem, read_nifti, read_nifti_header

    try:
        got, affine = read_nifti_header(path)
    except ImageError as err:
        kind = "bad_shape" if "-D image" in str(err) else "unreadable"
        return kind, str(err).replace(f"{path}: ", "")
    if tuple(got) != tuple(shape):
        return "bad_shape", f"image of shape {tuple(got)}, expected {tuple(shape)}"
    reason = affine_problem(affine, got)
    if reason:
        return "bad_affine", reason
    if grid_mm is not None and not np.allclose(affine, mni_grid(grid_mm)[1], atol=1e-3):
        report.add("warning", where, f"not on brainkit's {grid_mm:g} mm MNI grid (affine "
                                     f"{np.round(affine[:3], 3).tolist()}); brainkit cohort "
                                     "import resamples it")
    if full:
        try:
            read_nifti(path)
        except ImageError as err:
            message = str(err).replace(f"{path}: ", "")
            return ("non_finite" if "NaN" in message else "unreadable"), message
    return None


def _check_flat(spec: ImageSpec, root: Path, raw: pd.DataFrame | None, full: bool,
                report: CheckReport) -> None:
    rel = spec.patterns[0]
    stats = {"table": spec.table, "format": spec.format, "pattern": rel, "listed": 1,
             "found": 0, "missing": 0, "unreadable": 0, "bad_shape": 0, "non_finite": 0}
    report.images.append(stats)
    path = root / rel
    if not path.is_file():
        stats["missing"] = 1
        report.add("error", rel, "missing file")
        return
    stats["found"] = 1
    try:
        arr = np.load(path, mmap_mode="r")
    except (ValueError, OSError, EOFError) as err:
        stats["unreadable"] = 1
        report.add("error", rel, f"not a readable .npy file ({err})")
        return
    n_rows = None if raw is None else len(raw)
    if arr.ndim != 2 or arr.shape[1] < spec.min_features or (n_rows is not None
                                                                and arr.shape[0] != n_rows):
        stats["bad_shape"] = 1
        want = f"({n_rows if n_rows is not None else 'n'}, >= {spec.min_features})"
        report.add("error", rel, f"array of shape {tuple(arr.shape)}, expected {want} (one row "
                                 f"per row of table {spec.table!r})")
        return
    if full:
        step = max(1, (256 << 20) // max(1, 4 * spec.min_features))
        for start in range(0, arr.shape[0], step):
            block = np.asarray(arr[start:start + step, :spec.min_features], dtype=np.float32)
            bad = ~np.isfinite(block).all(axis=1)
            if bad.any():
                stats["non_finite"] += int(bad.sum())
                rows = (np.flatnonzero(bad) + start)[:_MAX_ROWS_NAMED].tolist()
                report.add("error", rel, f"rows {rows} hold NaN or infinite voxel values")


def _check_images(spec: ImageSpec, root: Path, raw: pd.DataFrame | None, table_spec: TableSpec,
                  full: bool, report: CheckReport, progress: bool) -> None:
    from tqdm import tqdm

    if spec.format == "flat_npy":
        _check_flat(spec, root, raw, full, report)
        return
    stats = {"table": spec.table, "format": spec.format, "pattern": spec.patterns[0],
             "listed": 0, "found": 0, "missing": 0, "unreadable": 0, "bad_shape": 0,
             "bad_affine": 0, "non_finite": 0, "extra": 0}
    report.images.append(stats)
    if raw is None:
        stats.clear()
        stats.update({"table": spec.table, "format": spec.format, "pattern": spec.patterns[0],
                      "skipped": True})
        return
    candidates = _expected_paths(spec, raw, report, table_spec.path)
    stats["listed"] = len(candidates)
    expected: set[str] = set()
    ids = raw[table_spec.id_column] if table_spec.id_column else None
    for i, cands in enumerate(tqdm(candidates, desc=f"check {spec.table}", unit="file",
                                   disable=not progress)):
        if cands is None:
            stats["missing"] += 1
            continue
        expected.update(cands)
        rel = next((c for c in cands if (root / c).is_file()), None)
        label = f"row {i}" + (f", {table_spec.id_column} {ids.iloc[i]}" if ids is not None
                              else "")
        if rel is None:
            stats["missing"] += 1
            report.add("error", cands[0], f"missing file ({label} of {table_spec.path})")
            continue
        stats["found"] += 1
        others = [c for c in cands if c != rel and (root / c).is_file()]
        if others:
            report.add("warning", rel, f"{others} also exist{'s' if len(others) == 1 else ''}"
                                       f" for {label}; brainkit uses {rel}")
        if spec.format == "npy":
            outcome = _check_npy(root / rel, spec.shape, full)
        else:
            outcome = _check_nifti(root / rel, spec.shape, spec.grid_mm, full, report, rel)
        if outcome is not None:
            kind, message = outcome
            stats[kind] += 1
            report.add("error", rel, f"{message} ({label})")
    if stats["listed"] and not stats["found"]:
        first = Path(next((c[0] for c in candidates if c), spec.patterns[0])).parts[0]
        report.add("info", str(root), f"none of the {stats['listed']} listed images was found: "
                                      f"is the root the folder that holds {first!r}?")
    found_files: set[str] = set()
    for pattern in spec.patterns:
        found_files.update(p.relative_to(root).as_posix() for p in root.glob(_glob_of(pattern))
                           if p.is_file())
    extra = sorted(found_files - expected)
    stats["extra"] = len(extra)
    for rel in extra:
        report.add("warning", rel, f"extra file: matches {spec.patterns[0]!r} but no row of "
                                   f"{table_spec.path} lists it")


# --------------------------------------------------------------------------- counts
def _compare(report: CheckReport, what: str, found, expected, *, tolerance: float = 0.0
             ) -> None:
    agrees = abs(float(found) - float(expected)) <= tolerance + 1e-9
    report.counts.append({"what": what, "found": found, "expected": expected, "agrees": agrees})
    if not agrees:
        report.add("warning", "counts", f"{what}: found {_fmt(found)}, expected "
                                        f"{_fmt(expected)}")


def _check_counts(expected: dict, table: pd.DataFrame, report: CheckReport) -> None:
    report.expected_source = expected.get("source", "")
    if "images" in expected:
        _compare(report, "images", len(table), expected["images"])
    if "subjects" in expected:
        _compare(report, "subjects", table["subject_id"].nunique(), expected["subjects"])
    if "sites" in expected:
        _compare(report, "sites", table["site"].nunique(), expected["sites"])
    age = table["age"].astype(float)
    stats = {"age_mean": age.mean(), "age_sd": age.std(ddof=1), "age_min": age.min(),
             "age_max": age.max()}
    for key, value in stats.items():
        if key in expected:
            _compare(report, key.replace("_", " "), float(value), expected[key],
                     tolerance=_AGE_TOLERANCE)
    for split, n in expected.get("splits", {}).items():
        found = int((table["split"] == split).sum()) if "split" in table else 0
        _compare(report, f"split {split}", found, n)
    groups = dict(expected.get("diagnosis", {}))
    for dx, counts in groups.items():
        rows = table["diagnosis"] == dx
        if "subjects" in counts:
            _compare(report, f"{dx} subjects", table.loc[rows, "subject_id"].nunique(),
                     counts["subjects"])
        if "images" in counts:
            _compare(report, f"{dx} images", int(rows.sum()), counts["images"])
    healthy = expected.get("healthy", {})
    hc = table["diagnosis"] == "HC"
    if "subjects" in healthy and "HC" not in groups:
        _compare(report, "healthy subjects", table.loc[hc, "subject_id"].nunique(),
                 healthy["subjects"])
    if "images" in healthy and "HC" not in groups:
        _compare(report, "healthy images", int(hc.sum()), healthy["images"])


# --------------------------------------------------------------------------- entry points
def _choose_layout(manifest: Manifest, root: Path, name: str | None) -> Layout:
    if name is not None:
        return manifest.layout(name)
    for lay in manifest.layouts.values():
        if all((root / t.path).is_file() for t in lay.tables):
            return lay
    return manifest.layout()


def _check_synthetic(manifest: Manifest, root: Path, full: bool, report: CheckReport) -> None:
    from .cohort import Cohort

    try:
        cohort = Cohort.load(root, mmap=True)
    except (FileNotFoundError, ValueError) as err:
        report.add("error", str(root), f"not a saved brainkit cohort ({err}); make one with "
                                       "`brainkit data synth --out DIR`")
        return
    t = cohort.table
    report.tables.append({"name": "cohort", "path": "table.parquet", "rows": len(t)})
    grids = {tuple(s): mm for mm, s in manifest.generator["grids"].items()}
    if cohort.has_images and cohort.grid_shape not in grids:
        report.add("error", "images.npy", f"grid {cohort.grid_shape} is none of the synthetic "
                                          f"grids {sorted(grids)}")
    unknown = sorted(set(t["dataset"]) - set(manifest.generator["presets"]))
    if unknown:
        report.add("warning", "table.parquet", f"datasets {unknown} are not synthetic presets "
                                               f"{list(manifest.generator['presets'])}")
    for column in ("bio_age", "true_gap"):
        if column not in t:
            report.add("warning", "table.parquet", f"no {column!r} column: the ground truth "
                                                   "of a synthetic cohort is missing")
    if full and cohort.has_images:
        for start in range(0, len(cohort), 64):
            block = cohort.images(np.arange(start, min(start + 64, len(cohort))))
            bad = ~np.isfinite(block.reshape(len(block), -1)).all(axis=1)
            if bad.any():
                rows = (np.flatnonzero(bad) + start)[:_MAX_ROWS_NAMED].tolist()
                report.add("error", "images.npy", f"images {rows} hold NaN or inf")


def check_dataset(manifest, root: str | os.PathLike, *, layout: str | None = None,
                  full: bool = True, progress: bool = False) -> CheckReport:
    """Check a local copy of a dataset against its manifest.

    Parameters
    ----------
    manifest : str, path-like or Manifest
        A manifest name (``"openbhb"``), a YAML path or a loaded :class:`Manifest`.
    root : path-like
        The local copy's root folder (for ``synthetic``: a saved cohort folder).
    layout : str, optional
        The layout to check; by default the first whose tables all exist (else the first).
    full : bool, default True
        Read every image's data (finds truncated files and NaN / inf); ``False`` reads
        headers only, which is much faster on large copies.
    progress : bool, default False
        Show a progress bar while checking image files.

    Returns
    -------
    CheckReport
        ``report.ok`` is False when any problem is an error.

    Examples
    --------
    >>> report = check_dataset("oasis1", "../shared/data")   # doctest: +SKIP
    >>> print(report.summary())                              # doctest: +SKIP
    """
    m = load_manifest(manifest)
    root = Path(root)
    report = CheckReport(manifest=m.name, root=root, title=m.title)
    if not root.is_dir():
        report.add("error", str(root), "the root folder does not exist")
        return report
    if m.kind == "synthetic":
        _check_synthetic(m, root, full, report)
        return report
    lay = _choose_layout(m, root, layout)
    report.layout, report.layouts = lay.name, tuple(m.layouts)
    raws: dict[str, pd.DataFrame | None] = {}
    built: list[pd.DataFrame] = []
    broken_cohort = False
    for spec in lay.tables:
        raw, table = _check_table(spec, root, report)
        raws[spec.name] = raw
        if spec.cohort:
            if table is None:
                broken_cohort = True
            else:
                built.append(table)
    for spec in lay.images:
        _check_images(spec, root, raws.get(spec.table), lay.table(spec.table), full, report,
                      progress)
    if m.expected:
        if broken_cohort or not built:
            report.add("info", "counts", "not compared with the expected numbers: a cohort "
                                         "table is missing or invalid")
        else:
            _check_counts(m.expected, pd.concat(built, ignore_index=True), report)
    return report
