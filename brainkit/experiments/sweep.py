"""Sweeps: a declarative grid of designs, expanded into training runs, run locally or on SLURM.

A *grid file* (YAML) names a cohort, a profile and a list of designs with their axes::

    cohort: {synthetic: {openbhb: 240, adni: 60, icbm: 60, oasis3: 60}, grid_mm: 6, seed: 0}
    profile: ci
    overrides: {epochs: 2}
    runs:
      - design: cross_validate
        loss: [exp, l1]
        folds: 3
        seed: [0]
      - design: scaling
        loss: [exp, yaware]
        train_sizes: [100, 200]
    slurm: {partition: gpu, gpus_per_node: 1, cpus_per_task: 8, mem_gb: 32, timeout_min: 600}

:func:`load_grid` validates it. :meth:`Grid.tasks` expands every design run (one per loss and
seed) into the training runs it needs (one :func:`~brainkit.experiments.pipeline.train_encoder`
call each), deduplicated by store key, since designs share runs (the largest scaling size *is*
the merged run of single-vs-merge). :func:`run_sweep` trains what the store lacks, locally (in
sequence or in a process pool) or through submitit on SLURM, then runs each design's
evaluation (:meth:`Grid.evaluations`; it loads the trained runs from the store) and stores its
tables and headline metrics. A killed sweep resumes where it stopped: completed runs are in
the store, and a run killed mid-training continues from its checkpoint in the store's work
folder.

Designs and their keys (besides ``design``, ``loss`` and ``seed``, which may be lists):

- ``cross_validate``: ``folds`` (default: the profile's), ``correction`` (``beheshti``).
- ``scaling``: ``train_sizes`` (default: the profile's; the whole pool is always added).
- ``single_vs_merge``: ``single_datasets`` (default: every dataset).
- ``heldout_gaps``: ``correction``.
- ``downstream``: ``datasets`` (``[adni, oasis3]``), ``pretrain_dataset`` (``openbhb``),
  ``folds`` (the profile's), ``epochs`` and ``lr`` (the profile's ``finetune_epochs`` and
  ``finetune_lr``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
import signal
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .._util import SignalFlag, usable_cores
from ..errors import InputError
from .designs import DESIGNS
from .parallel import _COHORTS, cohort_at, save_cohort_once, train_planned
from .pipeline import LOSSES, train_config
from .profiles import PROFILES, Profile, get_profile
from .store import ResultsStore, RunOutput, StoreError, config_key

__all__ = [
    "GridError",
    "CohortSpec",
    "GridEntry",
    "DesignRun",
    "TrainTask",
    "EvalTask",
    "Grid",
    "load_grid",
    "SweepReport",
    "SweepError",
    "SweepInterrupted",
    "run_sweep",
    "results_table",
]

_TOP_KEYS = ("cohort", "profile", "overrides", "runs", "slurm")
_CORRECTIONS = ("beheshti", "cole")
_SLURM_KEYS = {
    # grid key: (submitit parameter, expected type)
    "partition": ("slurm_partition", str),
    "account": ("slurm_account", str),
    "qos": ("slurm_qos", str),
    "constraint": ("slurm_constraint", str),
    "gpus_per_node": ("gpus_per_node", int),
    "cpus_per_task": ("cpus_per_task", int),
    "mem_gb": ("mem_gb", float),
    "timeout_min": ("timeout_min", int),
    "array_parallelism": ("slurm_array_parallelism", int),
    "setup": ("slurm_setup", list),
}


class GridError(InputError):
    """A grid file (or grid mapping) that does not follow the sweep format."""


# --------------------------------------------------------------------------- validators
def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _int(where: str, value, minimum: int | None = None) -> int:
    if not _is_int(value):
        raise GridError(f"{where} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise GridError(f"{where} must be >= {minimum}, got {value}")
    return int(value)


def _number(where: str, value, positive: bool = False) -> float:
    if not _is_number(value) or not math.isfinite(value):
        raise GridError(f"{where} must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise GridError(f"{where} must be > 0, got {value}")
    return float(value)


def _string(where: str, value, choices: Sequence[str] | None = None) -> str:
    if not isinstance(value, str) or not value:
        raise GridError(f"{where} must be a non-empty string, got {value!r}")
    if choices is not None and value not in choices:
        raise GridError(f"{where} must be one of {list(choices)}, got {value!r}")
    return value


def _list(where: str, value, item: Callable, *, scalar_ok: bool = True,
          unique: bool = True) -> tuple:
    """A list of items (a scalar counts as a one-item list when ``scalar_ok``)."""
    if isinstance(value, (list, tuple)):
        if not value:
            raise GridError(f"{where} is an empty list")
        items = tuple(item(f"{where}[{i}]", v) for i, v in enumerate(value))
        if unique and len(set(items)) != len(items):
            raise GridError(f"{where} repeats a value: {list(value)}")
        return items
    if scalar_ok:
        return (item(where, value),)
    raise GridError(f"{where} must be a list, got {value!r}")


def _mapping(where: str, value) -> Mapping:
    if not isinstance(value, Mapping):
        raise GridError(f"{where} must be a mapping (key: value), got {type(value).__name__} "
                        f"{value!r}")
    return value


def _unknown(where: str, given: Mapping, allowed: Sequence[str]) -> None:
    extra = [str(k) for k in given if k not in allowed]
    if extra:
        raise GridError(f"{where}: unknown key(s) {extra}; allowed: {list(allowed)}")


# --------------------------------------------------------------------------- cohort spec
@dataclass(frozen=True)
class CohortSpec:
    """Which cohort a grid uses: synthetic presets, or a saved cohort folder.

    Attributes
    ----------
    synthetic : dict of str to int, or None
        Preset -> number of subjects (:func:`brainkit.data.make_merged`); ``None`` for a saved
        cohort. ``synthetic: profile`` in a grid file takes the profile's ``cohort_sizes``
        (the cohort the book's chapters use, :func:`~brainkit.experiments.default_cohort`).
    path : pathlib.Path or None
        A folder written by :meth:`brainkit.data.Cohort.save` (``brainkit cohort import``).
        Environment variables and ``~`` are expanded; a relative path is relative to the grid
        file.
    grid_mm : float or None
        Synthetic grid (default: the profile's).
    seed : int
        Synthetic seed.
    """

    synthetic: dict | None = None
    path: Path | None = None
    grid_mm: float | None = None
    seed: int = 0

    def describe(self) -> str:
        if self.path is not None:
            return f"saved cohort {self.path}"
        sizes = ", ".join(f"{k}={v}" for k, v in self.synthetic.items())
        return f"synthetic {{{sizes}}} on {self.grid_mm:g} mm, seed {self.seed}"


def _cohort_spec(value, profile: Profile, base: Path | None) -> CohortSpec:
    from ..data.synthetic import GRIDS, PRESETS

    spec = _mapping("cohort", value)
    _unknown("cohort", spec, ("synthetic", "path", "grid_mm", "seed"))
    if ("synthetic" in spec) == ("path" in spec):
        raise GridError("cohort: give exactly one of 'synthetic' (preset: n_subjects, or "
                        "'profile') and 'path' (a saved cohort folder)")
    if "path" in spec:
        for key in ("grid_mm", "seed"):
            if key in spec:
                raise GridError(f"cohort.{key} only applies to synthetic cohorts; a saved cohort "
                                "keeps its own grid")
        raw = _string("cohort.path", spec["path"])
        path = Path(os.path.expanduser(os.path.expandvars(raw)))
        if not path.is_absolute() and base is not None and "$" not in str(path):
            path = base / path
        return CohortSpec(path=path)
    sizes = spec["synthetic"]
    if sizes == "profile":
        sizes = dict(profile.cohort_sizes)
        if not sizes:
            raise GridError(f"cohort.synthetic: 'profile' but profile {profile.name!r} has no "
                            "cohort_sizes")
    sizes = _mapping("cohort.synthetic", sizes)
    if not sizes:
        raise GridError(f"cohort.synthetic is empty; name presets of {list(PRESETS)}")
    checked = {}
    for preset, n in sizes.items():
        _string("cohort.synthetic key", preset, PRESETS)
        checked[preset] = _int(f"cohort.synthetic.{preset}", n, minimum=1)
    grid_mm = spec.get("grid_mm", profile.grid_mm)
    grid_mm = _number("cohort.grid_mm", grid_mm, positive=True)
    if not any(math.isclose(grid_mm, float(g)) for g in GRIDS):
        raise GridError(f"cohort.grid_mm must be one of {sorted(float(g) for g in GRIDS)}, "
                        f"got {grid_mm:g}")
    seed = _int("cohort.seed", spec.get("seed", 0), minimum=0)
    return CohortSpec(synthetic=checked, grid_mm=grid_mm, seed=seed)


# --------------------------------------------------------------------------- profile
def _profile(name, overrides) -> Profile:
    name = _string("profile", name, sorted(PROFILES))
    profile = get_profile(name)
    if overrides is None:
        return profile
    overrides = _mapping("overrides", overrides)
    fields = {f.name: f for f in dataclasses.fields(Profile)}
    changes = {}
    for key, value in overrides.items():
        where = f"overrides.{key}"
        if key == "name":
            raise GridError(f"{where}: the profile name is set by 'profile'")
        if key not in fields:
            raise GridError(f"{where}: unknown profile setting; known: "
                            f"{sorted(k for k in fields if k != 'name')}")
        changes[key] = _coerce(where, value, str(fields[key].type))
    return profile.replace(**changes)


def _coerce(where: str, value, annotation: str):
    """Check a YAML value against a Profile field annotation and convert lists to tuples."""
    scalar = {"int": lambda w, v: _int(w, v, minimum=0),
              "float": lambda w, v: _number(w, v),
              "str": _string}
    if annotation.startswith("tuple["):
        parts = [t.strip() for t in annotation[len("tuple["):-1].split(",")]
        items = _list(where, value, scalar[parts[0]], scalar_ok=False, unique=False)
        if "..." not in parts and len(items) != len(parts):
            raise GridError(f"{where} must be a list of {len(parts)} values, got {list(value)}")
        return items
    if annotation == "bool":
        if not isinstance(value, bool):
            raise GridError(f"{where} must be true or false, got {value!r}")
        return value
    if annotation == "dict":
        return dict(_mapping(where, value))
    return scalar[annotation](where, value)


# --------------------------------------------------------------------------- designs
def _param_folds(where, value):
    return _int(where, value, minimum=2)


def _param_sizes(where, value):
    return sorted(_list(where, value, lambda w, v: _int(w, v, minimum=2), scalar_ok=False))


def _param_names(where, value):
    return list(_list(where, value, _string, scalar_ok=False))


def _param_correction(where, value):
    return _string(where, value, _CORRECTIONS)


def _param_lr(where, value):
    return _number(where, value, positive=True)


def _param_epochs(where, value):
    return _int(where, value, minimum=1)


#: Design name -> {parameter: validator}. ``loss`` and ``seed`` are common axes.
_PARAMS: dict[str, dict[str, Callable]] = {
    "cross_validate": {"folds": _param_folds, "correction": _param_correction},
    "scaling": {"train_sizes": _param_sizes},
    "single_vs_merge": {"single_datasets": _param_names},
    "heldout_gaps": {"correction": _param_correction},
    "downstream": {"datasets": _param_names, "pretrain_dataset": _string,
                   "folds": _param_folds, "epochs": _param_epochs, "lr": _param_lr},
}
if set(_PARAMS) != set(DESIGNS):   # the schema validates exactly the designs that exist
    raise ImportError(f"grid schema {sorted(_PARAMS)} and designs {sorted(DESIGNS)} disagree")


@dataclass(frozen=True)
class GridEntry:
    """One entry of a grid's ``runs`` list (before expansion over losses and seeds)."""

    index: int
    design: str
    losses: tuple[str, ...]
    seeds: tuple[int, ...]
    params: dict = field(default_factory=dict)


@dataclass(frozen=True)
class DesignRun:
    """One design for one loss and seed, its parameters resolved against the profile."""

    design: str
    loss: str
    seed: int
    params: dict
    label: str


def _run_spec(i: int, value, profile: Profile) -> GridEntry:
    where = f"runs[{i}]"
    entry = _mapping(where, value)
    if "design" not in entry:
        raise GridError(f"{where}: missing key 'design' (one of {list(DESIGNS)})")
    design = _string(f"{where}.design", entry["design"], DESIGNS)
    allowed = ("design", "loss", "seed", *_PARAMS[design])
    _unknown(f"{where} ({design})", entry, allowed)
    losses = _list(f"{where}.loss", entry.get("loss", list(profile.losses)),
                   lambda w, v: _string(w, v, LOSSES))
    seeds = _list(f"{where}.seed", entry.get("seed", 0), lambda w, v: _int(w, v, minimum=0))
    params = {k: check(f"{where}.{k}", entry[k]) for k, check in _PARAMS[design].items()
              if k in entry}
    return GridEntry(index=i, design=design, losses=losses, seeds=seeds, params=params)


def _slurm(value) -> dict:
    spec = _mapping("slurm", value)
    _unknown("slurm", spec, tuple(_SLURM_KEYS))
    out = {}
    for key, raw in spec.items():
        where = f"slurm.{key}"
        kind = _SLURM_KEYS[key][1]
        if kind is str:
            out[key] = _string(where, raw)
        elif kind is int:
            out[key] = _int(where, raw, minimum=1)
        elif kind is float:
            out[key] = _number(where, raw, positive=True)
        else:
            out[key] = list(_list(where, raw, _string))
    return out


# --------------------------------------------------------------------------- tasks
@dataclass(frozen=True, eq=False)
class TrainTask:
    """One training run of a sweep: one :func:`~brainkit.experiments.pipeline.train_encoder` call.

    Attributes
    ----------
    key : str
        Store key of the run (hash of ``config``).
    loss : str
    train_idx : numpy.ndarray of shape (n_train,)
        Training positions in the grid's cohort (sorted).
    profile : Profile
    seed : int
    config : dict
        :func:`~brainkit.experiments.pipeline.train_config` of the run.
    needed_by : tuple of str
        Labels of the design runs that use it.
    """

    key: str
    loss: str
    train_idx: np.ndarray
    profile: Profile
    seed: int
    config: dict
    needed_by: tuple[str, ...]

    @property
    def n_train(self) -> int:
        return int(len(self.train_idx))

    @property
    def label(self) -> str:
        return f"train {self.loss} n={self.n_train} seed={self.seed}"


@dataclass(frozen=True)
class EvalTask:
    """One design's evaluation for one loss and seed (after its training runs exist).

    Attributes
    ----------
    key : str
        Store key of the stored evaluation (hash of ``config``).
    run : DesignRun
    needs : tuple of str
        Keys of the training runs it loads.
    config : dict
    specs : tuple of RunSpec
        The design's plan (:meth:`brainkit.experiments.Design.plan`), in ``needs`` order.
    """

    key: str
    run: DesignRun
    needs: tuple[str, ...]
    config: dict
    specs: tuple = ()

    @property
    def label(self) -> str:
        return self.run.label


def _resolve(spec: GridEntry, loss: str, seed: int, profile: Profile) -> DesignRun:
    """One design run, its parameters completed with the design's defaults for ``profile``."""
    params = DESIGNS[spec.design].resolve(spec.params, profile)
    label = f"runs[{spec.index}] {spec.design} {loss} seed={seed}"
    return DesignRun(design=spec.design, loss=loss, seed=seed, params=params, label=label)


# --------------------------------------------------------------------------- the grid
class Grid:
    """A validated sweep: cohort, profile, design runs (and optional SLURM settings).

    Build it with :func:`load_grid` (a YAML file) or :meth:`from_dict`.

    Attributes
    ----------
    cohort_spec : CohortSpec
    profile : Profile
        The named profile with the grid's ``overrides`` applied.
    runs : list of GridEntry
    slurm : dict
        The validated ``slurm:`` section (grid key names).
    source : str
        Where the grid came from (for messages).
    """

    def __init__(self, cohort_spec: CohortSpec, profile: Profile, runs: Sequence[GridEntry],
                 slurm: Mapping | None = None, source: str = "<grid>"):
        self.cohort_spec = cohort_spec
        self.profile = profile
        self.runs = list(runs)
        self.slurm = dict(slurm or {})
        self.source = source
        self._cohort = None
        self._saved: dict[Path, Path] = {}
        self._plan: tuple[list[TrainTask], list[EvalTask]] | None = None

    def __repr__(self) -> str:
        return (f"Grid({self.source}: {self.cohort_spec.describe()}, profile "
                f"{self.profile.name}, {len(self.design_runs())} design runs)")

    @classmethod
    def from_dict(cls, data, *, source: str = "<grid>", base: str | os.PathLike | None = None
                  ) -> Grid:
        """Validate a grid given as a mapping (what the YAML file holds).

        Parameters
        ----------
        data : mapping
        source : str
            Named in error messages.
        base : path-like, optional
            Folder that relative ``cohort.path`` values are relative to.

        Raises
        ------
        GridError
            Naming the key at fault and what was expected.
        """
        try:
            data = _mapping("the grid", data)
            _unknown("the grid", data, _TOP_KEYS)
            for key in ("cohort", "profile", "runs"):
                if key not in data:
                    raise GridError(f"missing top-level key {key!r}")
            profile = _profile(data["profile"], data.get("overrides"))
            spec = _cohort_spec(data["cohort"], profile, Path(base) if base else None)
            runs = data["runs"]
            if not isinstance(runs, list) or not runs:
                raise GridError(f"runs must be a non-empty list of designs, got {runs!r}")
            run_specs = [_run_spec(i, r, profile) for i, r in enumerate(runs)]
            slurm = _slurm(data["slurm"]) if data.get("slurm") is not None else {}
        except GridError as err:
            raise GridError(f"{source}: {err}") from None
        return cls(spec, profile, run_specs, slurm, source=source)

    # ------------------------------------------------------------------ expansion
    def design_runs(self) -> list[DesignRun]:
        """Every design run: each ``runs`` entry expanded over its losses and seeds."""
        return [_resolve(spec, loss, seed, self.profile)
                for spec in self.runs for loss in spec.losses for seed in spec.seeds]

    def cohort(self, store: ResultsStore | None = None):
        """The grid's cohort (loaded or generated once per Grid object).

        With ``store``, a generated cohort is also saved under ``<store>/cohorts/<hash>`` so
        that worker processes load it (memory-mapped) instead of generating it again.
        """
        from ..data import Cohort, CohortError, make_merged

        spec = self.cohort_spec
        if self._cohort is None:
            if spec.path is not None:
                if "$" in str(spec.path):
                    raise GridError(f"{self.source}: cohort.path {spec.path}: an environment "
                                    "variable in it is not set")
                try:
                    self._cohort = Cohort.load(spec.path)
                except (FileNotFoundError, CohortError) as err:
                    raise GridError(f"{self.source}: cohort.path: {err}") from None
            else:
                self._cohort = make_merged(spec.synthetic, grid_mm=spec.grid_mm, seed=spec.seed)
        if store is not None:
            self.cohort_dir(store)
        return self._cohort

    def cohort_dir(self, store: ResultsStore) -> Path:
        """A folder the grid's cohort can be loaded from (saving a synthetic one in ``store``)."""
        if self.cohort_spec.path is not None:
            self.cohort()
            return self.cohort_spec.path.resolve()
        root = Path(store.root).resolve()
        if root not in self._saved:
            cohort = self.cohort()
            self._saved[root] = save_cohort_once(
                cohort, root / "cohorts" / cohort.content_hash[:16])
        return self._saved[root]

    def _planned(self) -> tuple[list[TrainTask], list[EvalTask]]:
        if self._plan is None:
            self._plan = _expand(self, self.cohort())
        return self._plan

    def tasks(self, store: ResultsStore | None = None) -> list[TrainTask]:
        """The training runs of the grid, deduplicated by store key, in first-use order.

        They are independent of each other and can run in parallel.
        """
        self.cohort(store)
        return list(self._planned()[0])

    def evaluations(self, store: ResultsStore | None = None) -> list[EvalTask]:
        """The design evaluations (one per design run), each after its training runs."""
        self.cohort(store)
        return list(self._planned()[1])


def _expand(grid: Grid, cohort) -> tuple[list[TrainTask], list[EvalTask]]:
    """Every design run's plan (:meth:`Design.plan`), its runs deduplicated by store key."""
    tasks: dict[str, dict] = {}
    evals: dict[str, EvalTask] = {}
    profile = grid.profile
    for run in grid.design_runs():
        where = f"{grid.source}: {run.label.split(' ')[0]} ({run.design})"
        try:
            specs = DESIGNS[run.design].plan(cohort, run.loss, run.seed, run.params, profile)
        except ValueError as err:
            raise GridError(f"{where}: {err}") from None
        needs = []
        for spec in specs:
            idx = np.asarray(spec.indices, dtype=np.int64)
            config = train_config(cohort, spec.loss, idx, profile=profile, seed=spec.seed)
            key = config_key(config)
            entry = tasks.setdefault(key, {"key": key, "loss": spec.loss, "train_idx": idx,
                                           "profile": profile, "seed": spec.seed,
                                           "config": config, "needed_by": []})
            if run.label not in entry["needed_by"]:
                entry["needed_by"].append(run.label)
            needs.append(key)
        config = {"kind": "design", "design": run.design, "loss": run.loss, "seed": run.seed,
                  "params": _jsonable(run.params), "profile": profile.name,
                  "cohort": cohort.content_hash, "train_runs": sorted(set(needs))}
        key = config_key(config)
        if key not in evals:
            evals[key] = EvalTask(key=key, run=run, needs=tuple(needs), config=config,
                                  specs=tuple(specs))
    train = [TrainTask(**{**t, "needed_by": tuple(t["needed_by"])}) for t in tasks.values()]
    return train, list(evals.values())


def _jsonable(params: Mapping) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in params.items()}


def load_grid(path: str | os.PathLike) -> Grid:
    """Read and validate a grid file (YAML).

    Parameters
    ----------
    path : path-like
        See the module docstring for the format; ``examples/grids/ci.yaml`` is a full example.

    Returns
    -------
    Grid

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    GridError
        On invalid YAML or content; the message names the file and the key at fault.

    Examples
    --------
    >>> grid = load_grid("examples/grids/ci.yaml")            # doctest: +SKIP
    >>> [t.label for t in grid.tasks()][:2]                   # doctest: +SKIP
    ['train l1 n=120 seed=0', 'train l1 n=240 seed=0']
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"grid file {path} not found")
    try:
        with open(path, encoding="utf-8") as fh:  # a stream: YAML's messages name the file
            data = yaml.safe_load(fh)
    except yaml.YAMLError as err:
        raise GridError(f"{path}: not valid YAML ({err})") from None
    except UnicodeDecodeError as err:
        raise GridError(f"{path}: not a UTF-8 text file ({err})") from None
    return Grid.from_dict(data, source=str(path), base=path.parent)


# --------------------------------------------------------------------------- execution
_WORKER_SLOT: int | None = None


def _device(payload: dict) -> str | None:
    """The device of a task: explicit, else one GPU per local worker slot when several."""
    if payload["device"] is not None or _WORKER_SLOT is None:
        return payload["device"]
    if payload["profile"].device != "auto":
        return None
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return f"cuda:{_WORKER_SLOT % n}" if n > 1 else None


def _execute(payload: dict) -> dict:
    """Run one task (training or evaluation) in this process; the unit sent to workers."""
    if payload.get("threads"):
        import torch

        torch.set_num_threads(int(payload["threads"]))
    cohort = cohort_at(payload["cohort_dir"])
    store = ResultsStore(payload["store"])
    key = payload["key"]
    computed = not store.exists(key)
    start = time.perf_counter()
    if payload["kind"] == "train":
        run = train_planned(cohort, payload["loss"], payload["train_idx"], key=key,
                            profile=payload["profile"], seed=payload["seed"], store=store,
                            device=_device(payload))
        final = _final_loss(run)
    else:
        store.get_or_compute(payload["config"], lambda work_dir: _evaluate(payload, cohort, store))
        final = None
    return {"key": key, "computed": computed, "seconds": time.perf_counter() - start,
            "final_loss": final}


def _final_loss(run) -> float | None:
    if "training" not in run.meta.get("tables", []):
        return None
    table = run.table("training")
    if "loss" not in table or table.empty:
        return None
    return float(table["loss"].iloc[-1])


def _evaluate(payload: dict, cohort, store: ResultsStore) -> RunOutput:
    """One design's evaluation (:meth:`Design.evaluate`) on its planned, trained runs."""
    runs = [(spec, store.load(key)) for spec, key in zip(payload["specs"], payload["needs"])]
    result = DESIGNS[payload["design"]].evaluate(
        cohort, runs, payload["loss"], payload["seed"], payload["params"], payload["profile"],
        store, _device(payload))
    return RunOutput(tables=result.tables, info={"headline": result.headline})


class _SubmititTask:
    """The callable submitit runs; on timeout / preemption it resubmits itself.

    The task resumes from its checkpoint in the store's work folder when requeued.
    """

    def __call__(self, payload: dict) -> dict:
        return _execute(payload)

    def checkpoint(self, payload: dict):
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, payload)


def _init_worker(threads: int, slots) -> None:
    global _WORKER_SLOT
    import torch

    torch.set_num_threads(threads)
    _WORKER_SLOT = slots.get()


# --------------------------------------------------------------------------- sweep
@dataclass
class SweepReport:
    """What :func:`run_sweep` did.

    Attributes
    ----------
    n_train, n_eval : int
        Training runs and design evaluations in the grid.
    cached : int
        Tasks already in the store at the start.
    computed : int
        Tasks computed by this sweep.
    failed : dict of str to str
        Task key -> error message.
    skipped : list of str
        Evaluations not run because a training run they need failed.
    seconds : float
    records : list of dict
        One per task: ``key``, ``task`` (``train`` / design name), ``label``, ``status``
        (``cached``, ``computed``, ``failed``, ``skipped``), ``seconds``, ``final_loss``.
    """

    n_train: int = 0
    n_eval: int = 0
    cached: int = 0
    computed: int = 0
    failed: dict = field(default_factory=dict)
    skipped: list = field(default_factory=list)
    seconds: float = 0.0
    records: list = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.n_train + self.n_eval

    @property
    def done(self) -> int:
        return self.cached + self.computed

    def summary(self) -> str:
        line = (f"sweep: {self.total} tasks ({self.n_train} training runs, {self.n_eval} "
                f"evaluations): {self.cached} cached, {self.computed} computed, "
                f"{len(self.failed)} failed, {len(self.skipped)} skipped in "
                f"{self.seconds:.1f} s")
        return line


class SweepError(RuntimeError):
    """Some tasks of a sweep failed (the others completed and are in the store)."""

    def __init__(self, report: SweepReport):
        self.report = report
        lines = [f"{k}: {msg}" for k, msg in list(report.failed.items())[:5]]
        super().__init__(f"{len(report.failed)} task(s) failed; {report.summary()}\n"
                         + "\n".join(lines))


class SweepInterrupted(RuntimeError):
    """A sweep stopped on SIGTERM / SIGINT; run it again to resume.

    Attributes
    ----------
    signal_number : int
    report : SweepReport or None
    """

    def __init__(self, signal_number: int, report: SweepReport | None = None):
        self.signal_number = signal_number
        self.report = report
        name = signal.Signals(signal_number).name
        done = f" after {report.done} of {report.total} tasks" if report else ""
        super().__init__(f"sweep interrupted by {name}{done}; completed runs are in the store "
                         "and a run stopped mid-training resumes from its checkpoint: run the "
                         "same sweep again to continue")


class _Signals(SignalFlag):
    """Note the first SIGTERM / SIGINT; the sweep stops at the next :meth:`check`.

    The handler only records the signal; the sweep checks it between tasks and while it waits
    for workers. During training in this process, :func:`brainkit.train.fit` has its own
    handler (checkpoint, then ``TrainingInterrupted``). The previous handlers come back at
    once, so a second signal acts as usual (Ctrl-C twice stops at once). Main thread only.
    """

    def __init__(self):
        super().__init__(restore_on_first=True)

    def check(self) -> None:
        """Raise :class:`SweepInterrupted` if a signal arrived."""
        if self.signum is not None:
            raise SweepInterrupted(self.signum)


def run_sweep(grid: Grid, store: ResultsStore | str | os.PathLike, *, executor: str = "local",
              workers: int = 1, progress: bool = True, cluster: str | None = None,
              device: str | None = None) -> SweepReport:
    """Train every missing run of a grid, then run (and store) every design evaluation.

    Parameters
    ----------
    grid : Grid
    store : ResultsStore or path
        For ``executor="slurm"`` it must be on a filesystem the compute nodes share.
    executor : {"local", "slurm"}, default "local"
        ``local``: in this process (``workers=1``) or in a pool of ``workers`` processes
        (spawned; each loads the cohort from the store's cohort cache and uses
        ``cores // workers`` torch threads; with several GPUs, one GPU per worker).
        ``slurm``: one submitit job per task (a job array), with the grid's ``slurm:`` section
        (``timeout_min`` required); a job that hits its time limit or is preempted is requeued
        and resumes from its checkpoint.
    workers : int, default 1
        Local processes (``executor="local"`` only).
    progress : bool, default True
        An overall tqdm bar (tasks done / total, cached vs computed) and one line per task.
    cluster : str, optional
        submitit cluster for ``executor="slurm"``: default detects SLURM (and refuses to run
        without it); ``"local"`` runs the jobs as local processes, ``"debug"`` in this process
        (both for testing).
    device : str, optional
        Device for every task (default: the profile's).

    Returns
    -------
    SweepReport

    Raises
    ------
    SweepInterrupted
        On SIGTERM / SIGINT (local executors stop their workers; SLURM jobs are cancelled).
        Completed runs stay in the store; run the sweep again to resume.
    SweepError
        If some tasks failed (after every other task ran).
    """
    if executor not in ("local", "slurm"):
        raise ValueError(f"executor must be 'local' or 'slurm', got {executor!r}")
    if not _is_int(workers) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    if executor == "slurm" and workers != 1:
        raise ValueError("workers applies to executor='local'; SLURM parallelism is the grid's "
                         "slurm.array_parallelism")
    if executor == "slurm" and "timeout_min" not in grid.slurm:
        raise GridError(f"{grid.source}: executor 'slurm' needs slurm.timeout_min in the grid "
                        "(minutes per job; a job that runs out is requeued from its checkpoint)")
    from ..train import TrainingInterrupted

    if not isinstance(store, ResultsStore):
        store = ResultsStore(store)
    start = time.perf_counter()
    cohort = grid.cohort(store)
    cohort_dir = str(grid.cohort_dir(store))
    train, evals = grid.tasks(store), grid.evaluations(store)
    report = SweepReport(n_train=len(train), n_eval=len(evals))
    common = {"cohort_dir": cohort_dir, "profile": grid.profile,
              "store": str(Path(store.root).resolve()), "device": device}
    if executor == "slurm":
        common["threads"] = grid.slurm.get("cpus_per_task")
    elif workers > 1:
        common["threads"] = max(1, usable_cores() // workers)

    def train_payload(t: TrainTask) -> dict:
        return {**common, "kind": "train", "key": t.key, "label": t.label, "loss": t.loss,
                "train_idx": t.train_idx, "seed": t.seed}

    def eval_payload(e: EvalTask) -> dict:
        r = e.run
        return {**common, "kind": "design", "key": e.key, "label": e.label, "design": r.design,
                "loss": r.loss, "seed": r.seed, "params": r.params, "config": e.config,
                "specs": e.specs, "needs": e.needs}

    bar = _progress_bar(report.total, progress)

    def log(message: str) -> None:
        if bar is not None:
            bar.write(message, file=sys.stderr)

    todo_train = []
    for t in train:
        if store.exists(t.key):
            report.cached += 1
            report.records.append(_record(t.key, "train", t.label, "cached"))
        else:
            todo_train.append(t)
    todo_eval = []
    for e in evals:
        if store.exists(e.key):
            report.cached += 1
            report.records.append(_record(e.key, e.run.design, e.label, "cached"))
        else:
            todo_eval.append(e)
    _tick(bar, report, 0)

    def finished(task, result: dict | None, error: BaseException | None) -> None:
        kind = "train" if isinstance(task, TrainTask) else task.run.design
        if error is not None:
            msg = f"{type(error).__name__}: {error}"
            report.failed[task.key] = msg
            report.records.append(_record(task.key, kind, task.label, "failed"))
            log(f"failed   {task.label} [{task.key}]: {msg}")
        else:
            status = "computed" if result["computed"] else "cached"
            if result["computed"]:
                report.computed += 1
            else:
                report.cached += 1
            report.records.append(_record(task.key, kind, task.label, status,
                                          result["seconds"], result["final_loss"]))
            loss = (f", final loss {result['final_loss']:.4f}"
                    if result["final_loss"] is not None else "")
            log(f"{status:<8} {task.label} [{task.key}] in {result['seconds']:.1f} s{loss}")
        _tick(bar, report, 1)

    dispatch = {"local": _run_local if workers == 1 else _run_pool, "slurm": _run_submitit}
    runner = dispatch[executor]
    options = {"workers": workers, "grid": grid, "store": store, "cluster": cluster}
    primed = cohort_dir not in _COHORTS  # in-process tasks use the cohort in memory
    _COHORTS[cohort_dir] = cohort
    try:
        with _Signals() as signals:
            options["signals"] = signals
            try:
                runner([(t, train_payload(t)) for t in todo_train], finished, **options)
                ready = []
                for e in todo_eval:
                    if any(k in report.failed for k in e.needs):
                        report.skipped.append(e.key)
                        report.records.append(_record(e.key, e.run.design, e.label, "skipped"))
                        log(f"skipped  {e.label}: a training run it needs failed")
                        _tick(bar, report, 1)
                    else:
                        ready.append((e, eval_payload(e)))
                runner(ready, finished, **options)
            except TrainingInterrupted as err:
                raise SweepInterrupted(err.signal_number) from err
            except KeyboardInterrupt:  # a second Ctrl-C
                raise SweepInterrupted(signal.SIGINT) from None
    except SweepInterrupted as err:
        report.seconds = time.perf_counter() - start
        raise SweepInterrupted(err.signal_number, report) from None
    finally:
        if bar is not None:
            bar.close()
        if primed:
            _COHORTS.pop(cohort_dir, None)
    report.seconds = time.perf_counter() - start
    if report.failed:
        raise SweepError(report)
    return report


def _record(key, kind, label, status, seconds=None, final_loss=None) -> dict:
    return {"key": key, "task": kind, "label": label, "status": status, "seconds": seconds,
            "final_loss": final_loss}


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    # The bar shows on a terminal only (disable=None); the task lines are always written.
    return tqdm(total=total, desc="sweep", unit="task", dynamic_ncols=True, file=sys.stderr,
                disable=None)


def _tick(bar, report: SweepReport, n: int) -> None:
    """Advance the bar by ``n`` tasks (``0``: show the cached ones at the start)."""
    if bar is None:
        return
    bar.set_postfix(cached=report.cached, computed=report.computed,
                    failed=len(report.failed), refresh=False)
    bar.update(report.cached if n == 0 else n)


def _run_local(items, finished, *, signals: _Signals, **_) -> None:
    from ..train import TrainingInterrupted

    for task, payload in items:
        signals.check()
        try:
            result = _execute(payload)
        except TrainingInterrupted:  # a signal during training: fit wrote a checkpoint
            raise
        except Exception as err:  # one failed task must not stop the others
            finished(task, None, err)
        else:
            finished(task, result, None)
    signals.check()


def _run_pool(items, finished, *, workers: int, signals: _Signals, **_) -> None:
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    if not items:
        return
    ctx = multiprocessing.get_context("spawn")
    slots = ctx.Queue()
    for i in range(workers):
        slots.put(i)
    threads = items[0][1].get("threads") or 1
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                               initargs=(threads, slots))
    futures = {}
    try:
        futures = {pool.submit(_execute, payload): task for task, payload in items}
        pending = set(futures)
        while pending:
            signals.check()
            done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            for future in done:
                err = future.exception()
                finished(futures[future], None if err else future.result(), err)
    except BaseException:
        # Stop the workers: SIGTERM makes a training worker write its checkpoint first.
        for future in futures:
            future.cancel()
        for process in list(getattr(pool, "_processes", {}).values()):
            if process.is_alive():
                process.terminate()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def _run_submitit(items, finished, *, grid: Grid, store: ResultsStore, cluster: str | None,
                  signals: _Signals, **_) -> None:
    import submitit

    if not items:
        return
    executor = submitit.AutoExecutor(folder=Path(store.root).resolve() / "slurm" / "%j",
                                     cluster=cluster)
    if cluster is None and executor.cluster != "slurm":
        raise RuntimeError(f"executor 'slurm' found no SLURM here (submitit detected "
                           f"{executor.cluster!r}); run on a SLURM login node, or use the "
                           "local executor")
    params = {_SLURM_KEYS[k][0]: v for k, v in grid.slurm.items()}
    executor.update_parameters(name="brainkit-sweep", **params)
    jobs = executor.map_array(_SubmititTask(), [payload for _, payload in items])
    pending = dict(zip(jobs, (task for task, _ in items)))
    poll = 0.5 if executor.cluster in ("local", "debug") else 15.0
    try:
        while pending:
            signals.check()
            for job in [j for j in pending if j.done()]:
                task = pending.pop(job)
                try:
                    result = job.result()
                except Exception as err:
                    finished(task, None, err)
                else:
                    finished(task, result, None)
            deadline = time.monotonic() + poll
            while pending and time.monotonic() < deadline:
                signals.check()
                time.sleep(0.25)
    except BaseException:
        for job in pending:
            job.cancel(check=False)
        raise


# --------------------------------------------------------------------------- results
def _flat(config: Mapping, prefix: str = "") -> dict:
    out = {}
    for k, v in config.items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flat(v, f"{name}."))
        elif isinstance(v, list):
            out[name] = json.dumps(v)
        else:
            out[name] = v
    return out


def _matches(values: Mapping, filters: Mapping) -> bool:
    for k, v in filters.items():
        if k not in values:
            return False
        have = values[k]
        if have != v and str(have) != str(v):
            return False
    return True


def results_table(store: ResultsStore | str | os.PathLike, table: str | None = None,
                  **filters) -> pd.DataFrame:
    """Summarise a store: one row per run (or one named table across runs).

    Parameters
    ----------
    store : ResultsStore or path
    table : str, optional
        ``None``: the summary (one row per run) with ``key``, ``kind`` (``train``,
        ``finetune``, ``probe`` (cached challenge probes of a trained run) or the design
        name), ``loss``, ``n_train``, ``seed``, ``seconds``,
        ``final_loss`` (last training epoch) and the headline metrics stored by design
        evaluations (e.g. ``mae``, ``bag_AD``, ``mae_ext``, ``bacc``, ``bacc_within``). A name
        (e.g. ``"metrics"``): that table of every matching run that has it, with ``run``,
        ``kind``, ``loss`` and ``seed`` columns.
    **filters
        Keep runs whose configuration (nested keys joined by dots, e.g. ``params.folds``) or
        summary columns (``kind``) have these values (compared as values or as text).

    Returns
    -------
    pandas.DataFrame
    """
    if not isinstance(store, ResultsStore):
        store = ResultsStore(store)
    runs = store.runs()
    losses = {r.key: r.config.get("loss") for r in runs}
    rows, frames, known = [], [], set()
    for run in runs:
        cfg = run.config
        kind = cfg.get("kind", "?")
        if kind == "design":
            kind = cfg.get("design", "design")
        loss = cfg.get("loss") if "loss" in cfg else losses.get(cfg.get("pretrained"))
        row = {"key": run.key, "kind": kind, "loss": loss, "n_train": cfg.get("n_train"),
               "seed": cfg.get("seed"), "seconds": run.meta.get("seconds")}
        flat = {**_flat(cfg), **row}
        known.update(flat)
        if not _matches(flat, filters):
            continue
        try:  # a damaged table names its file and skips its run; the listing goes on
            if table is None:
                row["final_loss"] = _final_loss(run)
            elif table in run.meta.get("tables", []):
                frame = run.table(table)
        except StoreError as err:
            warnings.warn(f"skipped: {err}", stacklevel=2)
            continue
        if table is None:
            row.update((run.meta.get("info") or {}).get("headline", {}))
            rows.append(row)
        elif table in run.meta.get("tables", []):
            for col, value in (("run", run.key), ("kind", kind), ("loss", loss),
                               ("seed", cfg.get("seed"))):
                if col not in frame:
                    frame[col] = value
            frames.append(frame)
    unknown = sorted(set(filters) - known)
    if unknown and runs:
        raise ValueError(f"filter key(s) {unknown} match no run's configuration; known keys "
                         f"include {sorted(k for k in known if '.' not in k)}")
    if table is not None:
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if not rows:
        return pd.DataFrame(columns=["key", "kind", "loss", "n_train", "seed", "seconds",
                                     "final_loss"])
    out = pd.DataFrame(rows)
    out["n_train"] = out["n_train"].astype("Int64")
    out["seed"] = out["seed"].astype("Int64")
    return out.sort_values(["kind", "loss", "n_train", "seed"], na_position="last",
                           ignore_index=True)
