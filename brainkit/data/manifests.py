"""Dataset manifests: what a dataset is, where to get it, how its files look on disk.

One YAML file per dataset lives in the project's ``data_manifests/`` folder (one copy, read
from there). A manifest gives the citation and access terms, the expected layout of a local
copy (tables and image file patterns), the mapping of the dataset's columns and codes onto the
brainkit vocabulary, the image grid and preprocessing, and the counts to expect (the paper's
Tables 1-2 for OpenBHB, ADNI, ICBM and OASIS-3). :func:`load_manifest` parses one and checks
it against a small schema, refusing unknown keys (typos) with an error naming the key.

Examples
--------
>>> from brainkit.data.manifests import list_manifests, load_manifest
>>> "openbhb" in list_manifests()
True
>>> m = load_manifest("openbhb")
>>> m.expected["images"], m.layout().name
(3984, 'per_subject')
"""

from __future__ import annotations

import importlib
import numbers
import os
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..errors import InputError
from .cohort import COLUMNS, DIAGNOSES, OPTIONAL_COLUMNS
from .paths import PROJECT_ROOT

__all__ = [
    "ManifestError",
    "Manifest",
    "Layout",
    "TableSpec",
    "ImageSpec",
    "manifest_dir",
    "list_manifests",
    "load_manifest",
    "parse_manifest",
    "resolve_builder",
]

SCHEMA_VERSION = 1
IMAGE_FORMATS = ("nifti", "npy", "flat_npy")
KINDS = ("real", "synthetic")
_EXPECTED_COUNT_KEYS = ("subjects", "images", "sites")
_EXPECTED_AGE_KEYS = ("age_mean", "age_sd", "age_min", "age_max")


class ManifestError(InputError):
    """A manifest file that does not follow the schema (the message names file and key)."""


def manifest_dir() -> Path:
    """The folder holding brainkit's manifests (``data_manifests/`` at the project root).

    Raises
    ------
    FileNotFoundError
        When brainkit runs from an installation without the project folder; pass a manifest
        file path to :func:`load_manifest` instead.
    """
    folder = PROJECT_ROOT / "data_manifests"
    if not folder.is_dir():
        raise FileNotFoundError(
            f"brainkit's manifest folder {str(folder)!r} was not found (brainkit runs from an "
            "installation without the project checkout); pass a manifest file instead, e.g. "
            "load_manifest('path/to/openbhb.yaml') or `brainkit data check path/to/openbhb.yaml`"
        )
    return folder


def list_manifests() -> list[str]:
    """Names of the manifests shipped in ``data_manifests/``, sorted."""
    return sorted(p.stem for p in manifest_dir().glob("*.yaml"))


# --------------------------------------------------------------------------- parsed form
@dataclass(frozen=True)
class TableSpec:
    """A table file of a layout.

    Attributes
    ----------
    name : str
        Name used by image specs (``table:``) and reports.
    path : str
        Path relative to the dataset root.
    sep : str
        Column separator (``","`` or ``"\\t"``).
    id_column : str or None
        Column that must be present, non-empty and unique in every row.
    columns : tuple of str
        Columns the file must have.
    builder : str or None
        ``"brainkit.module:function"`` turning the file into a brainkit table.
    cohort : bool
        Whether the built table counts towards the manifest's ``expected`` numbers.
    expected_rows : int or None
    """

    name: str
    path: str
    sep: str
    id_column: str | None
    columns: tuple[str, ...]
    builder: str | None
    cohort: bool
    expected_rows: int | None


@dataclass(frozen=True)
class ImageSpec:
    """Where a table's images are and what they must look like.

    Attributes
    ----------
    table : str
        The table listing the images (one image per row).
    format : {"nifti", "npy", "flat_npy"}
        ``nifti``: one NIfTI per row; ``npy``: one ``.npy`` volume per row (leading singleton
        axes allowed); ``flat_npy``: one 2-D ``.npy`` file, one row per table row.
    patterns : tuple of str
        Path patterns relative to the root, alternatives tried in order; ``{name}`` fields
        are table columns or derived ``fields``. ``flat_npy``: a single plain path.
    shape : tuple of 3 int or None
        Expected volume shape (``nifti`` / ``npy``).
    grid_mm : float or None
        Expected isotropic voxel size (NIfTI affines are compared with ``mni_grid``).
    fields : dict
        Derived fields: ``{name: (column, {value: text})}``.
    min_features : int or None
        ``flat_npy``: minimum row length.
    """

    table: str
    format: str
    patterns: tuple[str, ...]
    shape: tuple[int, int, int] | None
    grid_mm: float | None
    fields: Mapping[str, tuple[str, Mapping[str, str]]]
    min_features: int | None


@dataclass(frozen=True)
class Layout:
    """One way a local copy of the dataset can be organised."""

    name: str
    description: str
    tables: tuple[TableSpec, ...]
    images: tuple[ImageSpec, ...]

    def table(self, name: str) -> TableSpec:
        for spec in self.tables:
            if spec.name == name:
                return spec
        raise KeyError(f"layout {self.name!r} has no table {name!r} "
                       f"(tables: {[t.name for t in self.tables]})")


@dataclass(frozen=True)
class Manifest:
    """A parsed, validated manifest. ``raw`` keeps the YAML mapping as read."""

    name: str
    title: str
    kind: str
    path: Path | None
    description: str
    citation: tuple[str, ...]
    access: Mapping[str, str]
    preprocessing: Mapping
    mapping: Mapping
    layouts: Mapping[str, Layout]
    expected: Mapping
    generator: Mapping
    raw: Mapping = field(repr=False)

    def layout(self, name: str | None = None) -> Layout:
        """The named layout, or the first one declared."""
        if not self.layouts:
            raise ManifestError(f"manifest {self.name!r} ({self.kind}) declares no file layout")
        if name is None:
            return next(iter(self.layouts.values()))
        if name not in self.layouts:
            raise ManifestError(f"manifest {self.name!r} has no layout {name!r} "
                                f"(layouts: {list(self.layouts)})")
        return self.layouts[name]

    @property
    def diagnosis_codes(self) -> dict:
        """Dataset code -> brainkit diagnosis, as declared in ``mapping.diagnosis.codes``."""
        return dict(self.mapping.get("diagnosis", {}).get("codes", {}))

    @property
    def sex_codes(self) -> dict:
        """Dataset code -> ``M`` / ``F``, as declared in ``mapping.sex.codes``."""
        return dict(self.mapping.get("sex", {}).get("codes", {}))


def resolve_builder(spec: str, *, where: str = "builder") -> Callable:
    """Import ``"brainkit.module:function"`` (only brainkit modules are allowed)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name.startswith("brainkit.") or not attr.isidentifier():
        raise ManifestError(f"{where}: expected 'brainkit.module:function', got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ManifestError(f"{where}: cannot import {module_name!r} ({err})") from None
    func = getattr(module, attr, None)
    if not callable(func):
        raise ManifestError(f"{where}: {module_name} has no function {attr!r}")
    return func


# --------------------------------------------------------------------------- validation
class _Checker:
    """Small schema checker: every error names the file and the dotted key."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, where: str, message: str):
        raise ManifestError(f"manifest {self.source}: {where}: {message}")

    def mapping(self, value, where: str, *, allowed: dict[str, bool]) -> dict:
        """A mapping with only ``allowed`` keys (key -> required)."""
        if not isinstance(value, Mapping):
            self.fail(where, f"expected a mapping, got {type(value).__name__}")
        unknown = [k for k in value if k not in allowed]
        if unknown:
            self.fail(where, f"unknown key(s) {unknown} (allowed: {sorted(allowed)})")
        missing = [k for k, req in allowed.items() if req and k not in value]
        if missing:
            self.fail(where, f"missing required key(s) {missing}")
        return dict(value)

    def text(self, value, where: str) -> str:
        if not isinstance(value, str) or not value.strip():
            self.fail(where, f"expected a non-empty string, got {value!r}")
        return value

    def texts(self, value, where: str) -> tuple[str, ...]:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value:
            self.fail(where, f"expected a list of strings, got {value!r}")
        return tuple(self.text(v, f"{where}[{i}]") for i, v in enumerate(value))

    def count(self, value, where: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            self.fail(where, f"expected a non-negative integer, got {value!r}")
        return value

    def number(self, value, where: str) -> float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            self.fail(where, f"expected a number, got {value!r}")
        return float(value)

    def shape(self, value, where: str) -> tuple[int, int, int]:
        if (not isinstance(value, list) or len(value) != 3
                or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                           for v in value)):
            self.fail(where, f"expected three positive integers [X, Y, Z], got {value!r}")
        return tuple(value)

    def flag(self, value, where: str) -> bool:
        if not isinstance(value, bool):
            self.fail(where, f"expected true or false, got {value!r}")
        return value


def _pattern_fields(pattern: str, where: str, check: _Checker) -> list[str]:
    try:
        names = [f for _, f, _, _ in string.Formatter().parse(pattern) if f is not None]
    except ValueError as err:
        check.fail(where, f"bad pattern {pattern!r} ({err})")
    for name in names:
        if not name or not name.replace(" ", "_").replace("/", "_").isidentifier():
            check.fail(where, f"pattern {pattern!r}: field {{{name}}} must name a column")
    return names


def _parse_table(raw, where: str, check: _Checker) -> TableSpec:
    t = check.mapping(raw, where, allowed={
        "name": True, "path": True, "sep": False, "id_column": False, "columns": True,
        "builder": False, "cohort": False, "expected_rows": False})
    sep = t.get("sep", ",")
    if sep not in (",", "\t", ";", " "):
        check.fail(f"{where}.sep", f"expected ',' or a tab (\"\\t\") or ';', got {sep!r}")
    columns = check.texts(t["columns"], f"{where}.columns")
    id_column = t.get("id_column")
    if id_column is not None:
        check.text(id_column, f"{where}.id_column")
        if id_column not in columns:
            check.fail(f"{where}.id_column", f"{id_column!r} is not among the listed columns")
    builder = t.get("builder")
    if builder is not None:
        check.text(builder, f"{where}.builder")
        if not builder.startswith("brainkit.") or ":" not in builder:
            check.fail(f"{where}.builder", f"expected 'brainkit.module:function', got {builder!r}")
    path = check.text(t["path"], f"{where}.path")
    if os.path.isabs(path) or ".." in Path(path).parts:
        check.fail(f"{where}.path", f"must be relative to the dataset root, got {path!r}")
    return TableSpec(
        name=check.text(t["name"], f"{where}.name"),
        path=path,
        sep=sep,
        id_column=id_column,
        columns=columns,
        builder=builder,
        cohort=check.flag(t.get("cohort", False), f"{where}.cohort"),
        expected_rows=(None if t.get("expected_rows") is None
                       else check.count(t["expected_rows"], f"{where}.expected_rows")),
    )


def _parse_images(raw, where: str, check: _Checker, tables: dict[str, TableSpec]) -> ImageSpec:
    s = check.mapping(raw, where, allowed={
        "table": True, "format": True, "pattern": True, "shape": False, "grid_mm": False,
        "fields": False, "min_features": False})
    table = check.text(s["table"], f"{where}.table")
    if table not in tables:
        check.fail(f"{where}.table", f"{table!r} is not a table of this layout "
                                     f"({sorted(tables)})")
    fmt = s["format"]
    if fmt not in IMAGE_FORMATS:
        check.fail(f"{where}.format", f"expected one of {list(IMAGE_FORMATS)}, got {fmt!r}")
    patterns = check.texts(s["pattern"], f"{where}.pattern")
    fields: dict[str, tuple[str, dict]] = {}
    for name, spec in (s.get("fields") or {}).items():
        f = check.mapping(spec, f"{where}.fields.{name}", allowed={"column": True, "map": True})
        column = check.text(f["column"], f"{where}.fields.{name}.column")
        if column not in tables[table].columns:
            check.fail(f"{where}.fields.{name}.column",
                       f"{column!r} is not a listed column of table {table!r}")
        if not isinstance(f["map"], Mapping) or not f["map"]:
            check.fail(f"{where}.fields.{name}.map", "expected a non-empty mapping")
        fields[str(name)] = (column, {str(k): str(v) for k, v in f["map"].items()})
    for i, pattern in enumerate(patterns):
        p = f"{where}.pattern[{i}]"
        if os.path.isabs(pattern) or ".." in Path(pattern).parts:
            check.fail(p, f"must be relative to the dataset root, got {pattern!r}")
        for name in _pattern_fields(pattern, p, check):
            if name not in fields and name not in tables[table].columns:
                check.fail(p, f"field {{{name}}} is neither a listed column of table "
                              f"{table!r} nor a derived field")
        if fmt == "flat_npy" and _pattern_fields(pattern, p, check):
            check.fail(p, "a flat_npy pattern is one file: it cannot have {fields}")
    shape = None if s.get("shape") is None else check.shape(s["shape"], f"{where}.shape")
    if fmt in ("nifti", "npy") and shape is None:
        check.fail(where, f"format {fmt!r} needs the expected volume 'shape'")
    min_features = s.get("min_features")
    if fmt == "flat_npy":
        if min_features is None:
            check.fail(where, "format 'flat_npy' needs 'min_features' (the row length)")
        min_features = check.count(min_features, f"{where}.min_features")
    elif min_features is not None:
        check.fail(f"{where}.min_features", "only for format 'flat_npy'")
    grid_mm = None if s.get("grid_mm") is None else check.number(s["grid_mm"], f"{where}.grid_mm")
    return ImageSpec(table=table, format=fmt, patterns=patterns, shape=shape, grid_mm=grid_mm,
                     fields=fields, min_features=min_features)


def _parse_layout(name: str, raw, where: str, check: _Checker) -> Layout:
    lay = check.mapping(raw, where, allowed={"description": True, "tables": True,
                                             "images": False})
    if not isinstance(lay["tables"], list) or not lay["tables"]:
        check.fail(f"{where}.tables", "expected a non-empty list of tables")
    tables: dict[str, TableSpec] = {}
    for i, t in enumerate(lay["tables"]):
        spec = _parse_table(t, f"{where}.tables[{i}]", check)
        if spec.name in tables:
            check.fail(f"{where}.tables[{i}].name", f"duplicate table name {spec.name!r}")
        tables[spec.name] = spec
    images_raw = lay.get("images") or []
    if not isinstance(images_raw, list):
        check.fail(f"{where}.images", "expected a list of image specs")
    images = tuple(_parse_images(s, f"{where}.images[{i}]", check, tables)
                   for i, s in enumerate(images_raw))
    return Layout(name=name, description=check.text(lay["description"], f"{where}.description"),
                  tables=tuple(tables.values()), images=images)


def _parse_expected(raw, check: _Checker) -> dict:
    where = "expected"
    allowed = {"source": True, "diagnosis": False, "healthy": False, "splits": False}
    allowed.update({k: False for k in _EXPECTED_COUNT_KEYS + _EXPECTED_AGE_KEYS})
    e = check.mapping(raw, where, allowed=allowed)
    out: dict = {"source": check.text(e["source"], f"{where}.source")}
    for k in _EXPECTED_COUNT_KEYS:
        if k in e:
            out[k] = check.count(e[k], f"{where}.{k}")
    for k in _EXPECTED_AGE_KEYS:
        if k in e:
            out[k] = check.number(e[k], f"{where}.{k}")
    if "diagnosis" in e:
        dx = check.mapping(e["diagnosis"], f"{where}.diagnosis",
                           allowed={d: False for d in DIAGNOSES})
        out["diagnosis"] = {}
        for d, counts in dx.items():
            c = check.mapping(counts, f"{where}.diagnosis.{d}",
                              allowed={"subjects": False, "images": False})
            out["diagnosis"][d] = {k: check.count(v, f"{where}.diagnosis.{d}.{k}")
                                   for k, v in c.items()}
    if "healthy" in e:
        c = check.mapping(e["healthy"], f"{where}.healthy",
                          allowed={"subjects": False, "images": False})
        out["healthy"] = {k: check.count(v, f"{where}.healthy.{k}") for k, v in c.items()}
    if "splits" in e:
        from .cohort import SPLITS
        c = check.mapping(e["splits"], f"{where}.splits", allowed={s: False for s in SPLITS})
        out["splits"] = {k: check.count(v, f"{where}.splits.{k}") for k, v in c.items()}
    return out


def _parse_mapping(raw, check: _Checker) -> dict:
    m = check.mapping(raw, "mapping", allowed={"source_tables": False, "columns": True,
                                               "diagnosis": True, "sex": True})
    if "source_tables" in m:
        check.texts(m["source_tables"], "mapping.source_tables")
    cols = check.mapping(m["columns"], "mapping.columns",
                         allowed={c: c in COLUMNS for c in COLUMNS + OPTIONAL_COLUMNS})
    for k, v in cols.items():
        check.text(v, f"mapping.columns.{k}")
    dx = check.mapping(m["diagnosis"], "mapping.diagnosis",
                       allowed={"codes": True, "rule": True, "convention": False})
    if not isinstance(dx["codes"], Mapping) or not dx["codes"]:
        check.fail("mapping.diagnosis.codes", "expected a non-empty mapping code -> diagnosis")
    for code, target in dx["codes"].items():
        if target not in DIAGNOSES:
            check.fail(f"mapping.diagnosis.codes.{code}",
                       f"{target!r} is not a brainkit diagnosis {list(DIAGNOSES)}")
    check.text(dx["rule"], "mapping.diagnosis.rule")
    if "convention" in dx:
        check.text(dx["convention"], "mapping.diagnosis.convention")
    sex = check.mapping(m["sex"], "mapping.sex", allowed={"codes": True})
    if not isinstance(sex["codes"], Mapping) or not sex["codes"]:
        check.fail("mapping.sex.codes", "expected a non-empty mapping code -> M / F")
    for code, target in sex["codes"].items():
        if target not in ("M", "F"):
            check.fail(f"mapping.sex.codes.{code}", f"expected 'M' or 'F', got {target!r}")
    return m


def _parse_preprocessing(raw, check: _Checker) -> dict:
    p = check.mapping(raw, "preprocessing", allowed={"pipeline": True, "software": False,
                                                     "grid": False, "notes": False})
    check.text(p["pipeline"], "preprocessing.pipeline")
    if "grid" in p:
        g = check.mapping(p["grid"], "preprocessing.grid",
                          allowed={"voxel_mm": True, "shape": True, "affine": False})
        check.number(g["voxel_mm"], "preprocessing.grid.voxel_mm")
        check.shape(g["shape"], "preprocessing.grid.shape")
        if "affine" in g:
            a = g["affine"]
            if (not isinstance(a, list) or len(a) != 4
                    or not all(isinstance(r, list) and len(r) == 4 for r in a)):
                check.fail("preprocessing.grid.affine", "expected a 4x4 list of lists")
    return p


def _parse_generator(raw, check: _Checker) -> dict:
    g = check.mapping(raw, "generator", allowed={"module": True, "functions": True,
                                                 "presets": True, "grids": True,
                                                 "summaries": False})
    module = check.text(g["module"], "generator.module")
    if not module.startswith("brainkit."):
        check.fail("generator.module", f"expected a brainkit module, got {module!r}")
    check.texts(g["functions"], "generator.functions")
    check.texts(g["presets"], "generator.presets")
    if not isinstance(g["grids"], Mapping) or not g["grids"]:
        check.fail("generator.grids", "expected a mapping voxel_mm -> [X, Y, Z]")
    grids = {}
    for mm, shape in g["grids"].items():
        grids[check.number(mm, f"generator.grids.{mm}")] = check.shape(shape,
                                                                       f"generator.grids.{mm}")
    g["grids"] = grids
    return g


def parse_manifest(data, *, source: str = "<mapping>", path: Path | None = None) -> Manifest:
    """Validate a manifest mapping (as read from YAML) and return a :class:`Manifest`.

    Parameters
    ----------
    data : mapping
        The YAML document.
    source : str
        How to name the manifest in error messages.
    path : pathlib.Path, optional
        The file it came from.

    Raises
    ------
    ManifestError
        On any departure from the schema; the message names the key.
    """
    check = _Checker(source)
    top = check.mapping(data, "top level", allowed={
        "schema_version": True, "name": True, "title": True, "kind": True,
        "description": True, "citation": True, "access": True, "preprocessing": True,
        "mapping": True, "layouts": False, "expected": False, "generator": False})
    if top["schema_version"] != SCHEMA_VERSION:
        check.fail("schema_version", f"this brainkit reads version {SCHEMA_VERSION}, got "
                                     f"{top['schema_version']!r}")
    name = check.text(top["name"], "name")
    if not name.replace("_", "").replace("-", "").isalnum():
        check.fail("name", f"use letters, digits, '-' and '_' only, got {name!r}")
    kind = top["kind"]
    if kind not in KINDS:
        check.fail("kind", f"expected one of {list(KINDS)}, got {kind!r}")
    access = check.mapping(top["access"], "access",
                           allowed={"terms": True, "request": True, "notes": False})
    for k, v in access.items():
        check.text(v, f"access.{k}")
    layouts: dict[str, Layout] = {}
    if kind == "real":
        if not isinstance(top.get("layouts"), Mapping) or not top["layouts"]:
            check.fail("layouts", "a real dataset needs at least one layout")
        for lname, lraw in top["layouts"].items():
            layouts[str(lname)] = _parse_layout(str(lname), lraw, f"layouts.{lname}", check)
        if "generator" in top:
            check.fail("generator", "only for kind 'synthetic'")
        generator: dict = {}
    else:
        if "layouts" in top:
            check.fail("layouts", "a synthetic manifest has no file layout (its data is a "
                                  "saved cohort)")
        if "generator" not in top:
            check.fail("generator", "a synthetic manifest needs a 'generator' section")
        generator = _parse_generator(top["generator"], check)
    expected = _parse_expected(top["expected"], check) if "expected" in top else {}
    if expected and kind == "real":
        for lay in layouts.values():
            if not any(t.cohort for t in lay.tables):
                check.fail(f"layouts.{lay.name}", "'expected' counts need a table with "
                                                  "'cohort: true'")
    return Manifest(
        name=name,
        title=check.text(top["title"], "title"),
        kind=kind,
        path=path,
        description=check.text(top["description"], "description"),
        citation=check.texts(top["citation"], "citation"),
        access=access,
        preprocessing=_parse_preprocessing(top["preprocessing"], check),
        mapping=_parse_mapping(top["mapping"], check),
        layouts=layouts,
        expected=expected,
        generator=generator,
        raw=dict(data),
    )


def load_manifest(name_or_path: str | os.PathLike | Manifest) -> Manifest:
    """Read and validate a manifest.

    Parameters
    ----------
    name_or_path : str, path-like or Manifest
        A shipped manifest's name (``"openbhb"``, see :func:`list_manifests`) or the path of a
        YAML file. A :class:`Manifest` is returned as is.

    Returns
    -------
    Manifest

    Raises
    ------
    FileNotFoundError
        Unknown name (the message lists the known ones) or missing file.
    ManifestError
        Invalid YAML or a departure from the schema (the message names file and key).
    """
    if isinstance(name_or_path, Manifest):
        return name_or_path
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"name_or_path must be a manifest name or a path, got "
                        f"{type(name_or_path).__name__}")
    text = os.fspath(name_or_path)
    looks_like_path = (text.endswith((".yaml", ".yml")) or os.sep in text or "/" in text)
    if looks_like_path:
        path = Path(text)
        if not path.is_file():
            raise FileNotFoundError(f"manifest file {text!r} does not exist")
    else:
        path = manifest_dir() / f"{text}.yaml"
        if not path.is_file():
            raise FileNotFoundError(f"no manifest named {text!r}; known manifests: "
                                    f"{list_manifests()} (or pass a path to a YAML file)")
    try:
        with open(path, encoding="utf-8") as fh:  # a stream: YAML's messages name the file
            data = yaml.safe_load(fh)
    except yaml.YAMLError as err:
        raise ManifestError(f"manifest {path}: not valid YAML ({err})") from None
    except UnicodeDecodeError as err:
        raise ManifestError(f"manifest {path}: not a UTF-8 text file ({err})") from None
    manifest = parse_manifest(data, source=str(path), path=path)
    if not looks_like_path and manifest.name != text:
        raise ManifestError(f"manifest {path}: name {manifest.name!r} does not match the "
                            f"file name {text!r}")
    return manifest
