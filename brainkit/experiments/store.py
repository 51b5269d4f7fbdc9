"""A results store: one directory per run, keyed by a hash of its full configuration.

Layout under the store root::

    runs/<key>/meta.json          brainkit version, config, hashes, timings (written last)
    runs/<key>/<name>.parquet     tidy tables: predictions, metrics, embeddings, ...
    runs/<key>/files/...          anything else (e.g. the model checkpoint)
    work/<key>/                   scratch space of a run in progress (checkpoints to resume)

    locks/<key>.lock              held while a process computes <key>

A run is *complete* when ``runs/<key>/meta.json`` exists. Completed runs are assembled in a
temporary folder and moved into place with one rename, so a crash never leaves a half-written
run under its final name, and a run that exists is loaded, not recomputed. Two processes
that need the same missing run (the book and a sweep on one store) do not both compute it:
the second waits for the first's lock, then loads its result. Table and file names are plain
names (no path separators, no ``..``), so nothing is written outside the store, and a run
whose files cannot be read is named (and skipped with a warning by ``ResultsStore.runs``).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import time
import uuid
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .. import __version__
from .._util import FolderLock
from ..errors import InputError

__all__ = ["ResultsStore", "Run", "RunOutput", "StoreError", "config_key", "load_results",
           "default_store"]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_KEY = re.compile(r"[0-9a-f]{16}")


class StoreError(InputError):
    """A run in a store whose files cannot be read, or a bad table / file name or key."""


def _check_name(name, what: str) -> str:
    """A table or file name must be a plain name: it becomes a path inside the run folder."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
        raise StoreError(f"{what} name {name!r}: expected a plain name (letters, digits, '.', "
                         "'_', '-'; no path separator, no '..')")
    return name


def _check_key(key) -> str:
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise StoreError(f"run key {key!r}: expected 16 hexadecimal digits (config_key)")
    return key


def _jsonable(obj):
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    raise TypeError(f"config value {obj!r} of type {type(obj).__name__} is not JSON-serialisable; "
                    "use plain numbers, strings, lists and dicts in run configs")


def config_key(config: Mapping) -> str:
    """Stable 16-hex-digit key of a run configuration (order of dict keys does not matter)."""
    text = json.dumps(_jsonable(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class RunOutput:
    """What a run produces: tidy tables and optional files (copied into the run folder)."""

    tables: dict[str, pd.DataFrame]
    files: dict[str, Path] | None = None
    info: dict | None = None


class Run:
    """A completed run in a store (tables are read lazily)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        meta_path = self.path / "meta.json"
        try:
            meta = json.loads(meta_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise StoreError(f"{meta_path}: not valid JSON, truncated or edited ({err}); delete "
                             f"{self.path} to compute the run again") from None
        if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict) \
                or "key" not in meta:
            raise StoreError(f"{meta_path}: not a run's metadata (expected an object with 'key' "
                             f"and 'config'); delete {self.path} to compute the run again")
        self.meta = meta

    @property
    def key(self) -> str:
        return self.meta["key"]

    @property
    def config(self) -> dict:
        return self.meta["config"]

    def table(self, name: str) -> pd.DataFrame:
        path = self.path / f"{_check_name(name, 'table')}.parquet"
        if not path.is_file():
            available = sorted(p.stem for p in self.path.glob("*.parquet"))
            raise KeyError(f"run {self.key} has no table {name!r}; it has {available}")
        try:
            return pd.read_parquet(path)
        except Exception as err:  # pyarrow: ArrowInvalid, OSError, ... on a damaged file
            raise StoreError(f"{path}: unreadable parquet table, truncated or edited "
                             f"({type(err).__name__}: {err}); delete {self.path} to compute "
                             "the run again") from None

    def file(self, name: str) -> Path:
        path = self.path / "files" / _check_name(name, "file")
        if not path.exists():
            raise KeyError(f"run {self.key} has no file {name!r}")
        return path

    def __repr__(self) -> str:
        return f"Run({self.key}, {self.config.get('design', '?')}, loss={self.config.get('loss')})"


class ResultsStore:
    """A folder of cached runs.

    Parameters
    ----------
    root : path-like
        Created if absent.

    Attributes
    ----------
    computed : int
        Number of runs this object computed (not loaded) since it was created; tests and
        progress reports use it to tell a cache hit from a recomputation.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        (self.root / "runs").mkdir(parents=True, exist_ok=True)
        self.computed = 0

    def __repr__(self) -> str:
        return f"ResultsStore({str(self.root)!r}, {len(self.keys())} runs)"

    def run_dir(self, key: str) -> Path:
        return self.root / "runs" / _check_key(key)

    def work_dir(self, key: str) -> Path:
        """Scratch folder of a run in progress (kept after a crash so the run can resume)."""
        path = self.root / "work" / _check_key(key)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def exists(self, key: str) -> bool:
        return (self.run_dir(key) / "meta.json").is_file()

    def keys(self) -> list[str]:
        return sorted(p.parent.name for p in (self.root / "runs").glob("*/meta.json")
                      if _KEY.fullmatch(p.parent.name))

    def load(self, key: str) -> Run:
        if not self.exists(key):
            raise KeyError(f"no completed run {key} in {self.root}")
        return Run(self.run_dir(key))

    def runs(self, *, broken: str = "warn") -> list[Run]:
        """Every completed run.

        Parameters
        ----------
        broken : {"warn", "raise"}, default "warn"
            A run whose ``meta.json`` cannot be read is skipped with a warning naming the
            file (``"warn"``), or raises :class:`StoreError` (``"raise"``).
        """
        if broken not in ("warn", "raise"):
            raise ValueError(f"broken must be 'warn' or 'raise', got {broken!r}")
        out = []
        for key in self.keys():
            try:
                out.append(Run(self.run_dir(key)))
            except StoreError as err:
                if broken == "raise":
                    raise
                warnings.warn(f"skipped: {err}", stacklevel=2)
        return out

    def save(self, config: Mapping, output: RunOutput, *, seconds: float | None = None,
             hashes: Mapping[str, str] | None = None) -> Run:
        """Write a completed run atomically and return it.

        Table and file names must be plain names (:class:`StoreError` otherwise): they
        become paths inside the run folder.
        """
        key = config_key(config)
        for name in output.tables:
            _check_name(name, "table")
        for name in output.files or {}:
            _check_name(name, "file")
        staging = self.root / "tmp" / f"{key}-{uuid.uuid4().hex[:8]}"
        staging.mkdir(parents=True)
        try:
            for name, table in output.tables.items():
                table.to_parquet(staging / f"{name}.parquet", index=False)
            for name, src in (output.files or {}).items():
                (staging / "files").mkdir(exist_ok=True)
                dst = staging / "files" / name
                if Path(src).is_dir():
                    shutil.copytree(src, dst)
                else:
                    shutil.copyfile(src, dst)
            meta = {
                "key": key,
                "brainkit_version": __version__,
                "config": _jsonable(config),
                "hashes": dict(hashes or {}),
                "seconds": seconds,
                "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "host": platform.node(),
                "info": _jsonable(output.info or {}),
                "tables": sorted(output.tables),
            }
            (staging / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
            final = self.run_dir(key)
            if self.exists(key):  # another worker finished the same run first
                shutil.rmtree(staging)
            else:
                if final.exists():  # an incomplete leftover without meta.json
                    shutil.rmtree(final)
                os.replace(staging, final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        shutil.rmtree(self.root / "work" / key, ignore_errors=True)
        return self.load(key)

    def get_or_compute(self, config: Mapping, compute: Callable[[Path], RunOutput], *,
                       hashes: Mapping[str, str] | None = None) -> Run:
        """Load the run for ``config``, or call ``compute(work_dir)`` and save what it returns.

        While computing, the process holds ``locks/<key>.lock``: another process asking for
        the same run waits (with a warning naming the pid) and then loads it instead of
        computing it again. The kernel releases the lock of a process that dies.
        """
        key = config_key(config)
        if self.exists(key):
            return self.load(key)
        from .progress import describe, step

        def waiting(pid):
            who = f"pid {pid}" if pid is not None else "another process"
            warnings.warn(f"run {key} in {self.root} is being computed by {who}; waiting for "
                          "it", stacklevel=4)

        locks = self.root / "locks"
        with FolderLock(locks, path=locks / f"{key}.lock", what=f"computation of run {key}",
                        blocking=True, on_wait=waiting):
            if self.exists(key):  # computed by the process we waited for
                return self.load(key)
            start = time.perf_counter()
            with step(describe(config)):
                output = compute(self.work_dir(key))
            run = self.save(config, output, seconds=time.perf_counter() - start,
                            hashes=hashes)
        self.computed += 1
        return run


def _flatten(config: Mapping, prefix: str = "") -> dict:
    flat = {}
    for k, v in config.items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping):
            flat.update(_flatten(v, prefix=f"{name}."))
        elif isinstance(v, list):
            flat[name] = json.dumps(v)
        else:
            flat[name] = v
    return flat


def load_results(store: ResultsStore | str | os.PathLike, table: str = "metrics",
                 **filters) -> pd.DataFrame:
    """Concatenate one table across runs, with each run's config as columns.

    Parameters
    ----------
    store : ResultsStore or path
    table : str, default "metrics"
        Table name (e.g. ``"metrics"``, ``"predictions"``).
    **filters
        Keep runs whose (flattened) config has these values, e.g. ``design="cv", loss="exp"``.

    Returns
    -------
    pandas.DataFrame
        The table's rows plus ``run`` (the key) and config columns (nested keys joined by dots).
    """
    if not isinstance(store, ResultsStore):
        store = ResultsStore(store)
    frames = []
    for run in store.runs():
        flat = _flatten(run.config)
        if any(flat.get(k) != v for k, v in filters.items()):
            continue
        if table not in run.meta.get("tables", []):
            continue
        df = run.table(table)
        for k, v in flat.items():
            if k not in df.columns:
                df[k] = v
        df["run"] = run.key
        frames.append(df)
    if not frames:
        return pd.DataFrame()
    return pd.concat(frames, ignore_index=True)


def default_store(path: str | os.PathLike | None = None) -> ResultsStore:
    """The store named by ``path``, ``BRAINKIT_STORE``, or ``.brainkit_store`` in the project."""
    from ..data.paths import PROJECT_ROOT

    root = path or os.environ.get("BRAINKIT_STORE") or (PROJECT_ROOT / ".brainkit_store")
    return ResultsStore(root)
