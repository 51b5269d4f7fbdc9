"""Several training runs at once on the CPU: a pool of one-thread worker processes.

A design plans its runs before it trains them (:meth:`Design.plan`), so the runs that are not
in the store yet can be trained side by side. On a CPU, small 3D networks use threads poorly:
on this project's 2-core machine two one-thread processes train the ``ci`` runs about 1.3x
faster than one process with two threads (two 401-image runs, exp and L1: 35 s side by side
against 47 s one after the other; ``benchmarks/bench_threads.py`` measures the one-thread
case beside a busy process). :func:`train_runs` does that when it pays:

- only on the CPU (one GPU trains one run at a time), with at least two usable cores and at
  least two runs to train;
- ``BRAINKIT_WORKERS`` sets the number of workers (``1``: no pool; default ``auto``: as many
  as there are runs, cores and at most 4, except in a ``python script.py`` process, see
  :func:`_spawn_safe`); each worker gets ``cores // workers`` threads;
- the pool is kept for the next call (a book chapter trains in several steps), its workers
  load the cohort once from a folder (the one it was loaded from, else a copy saved in the
  store's ``cohorts/``);
- every run is stored by :func:`~brainkit.experiments.pipeline.train_encoder` in the worker,
  under the store's locks, exactly as in-process; the caller then loads them. An interrupted
  pool leaves each unfinished run's checkpoint in the store's work folder, so a rerun
  continues.

The voxel ridge and short runs (:data:`MIN_POOL_IMAGE_EPOCHS`) are not sent to the pool.
A run trained in a worker differs from one trained in-process only in float summation order
(one thread instead of several), as between two machines.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import sys
import uuid
from pathlib import Path

import numpy as np

from .._util import usable_cores
from ..errors import InputError
from .pipeline import BASELINE, train_encoder
from .store import ResultsStore

__all__ = ["cohort_at", "cohort_folder", "pool_workers", "save_cohort_once", "train_planned",
           "train_runs"]

#: Upper bound of the automatic worker count (memory: each worker maps the cohort).
MAX_AUTO_WORKERS = 4

#: Runs shorter than this (training images x epochs) train in-process: in a one-thread
#: worker their fixed costs (embedding the cohort, recalibrating batch norm) outweigh the
#: gain (the book's 61-85-image single-dataset runs, 20 epochs, took 11 s longer pooled).
MIN_POOL_IMAGE_EPOCHS = 2500

_COHORTS: dict = {}     # cohort folder -> Cohort, in each process (workers and sweeps)
_POOL: dict = {}        # the kept pool: {"executor", "workers", "threads"}


def cohort_at(path: str):
    """The cohort saved in ``path``, loaded once per process."""
    if path not in _COHORTS:
        from ..data import Cohort

        _COHORTS[path] = Cohort.load(path)
    return _COHORTS[path]


def pool_workers(n_runs: int, device=None) -> int:
    """How many worker processes :func:`train_runs` uses for ``n_runs`` runs (1: none)."""
    raw = os.environ.get("BRAINKIT_WORKERS", "auto").strip().lower() or "auto"
    if raw == "auto":
        if not _spawn_safe():
            return 1
        wanted = MAX_AUTO_WORKERS
    else:
        try:
            wanted = int(raw)
        except ValueError:
            wanted = 0
        if wanted < 1:
            raise InputError(f"BRAINKIT_WORKERS must be 'auto' or a whole number >= 1, "
                             f"got {raw!r}")
    from ..train.inference import resolve_device

    if n_runs < 2 or resolve_device(device).type != "cpu":
        return 1
    if raw == "auto":
        wanted = min(wanted, usable_cores())
    return max(1, min(wanted, n_runs))


def _spawn_safe() -> bool:
    """Whether spawned workers can start without running the caller's script again.

    A worker imports the main module: by name when Python was started with ``-m`` (the
    ``brainkit`` command, ``python -m pytest``, Jupyter kernels), which does not run its
    ``__main__`` block; from its file for ``python script.py``, which reruns an unguarded
    script. Interactive sessions have no main file. So ``auto`` stays in-process for
    scripts; ``BRAINKIT_WORKERS=N`` with an ``if __name__ == "__main__":`` guard opts in.
    """
    main = sys.modules.get("__main__")
    if getattr(main, "__spec__", None) is not None:
        return True
    return getattr(main, "__file__", None) is None


def train_runs(cohort, specs, *, profile, store: ResultsStore, device=None,
               progress: bool = False) -> list:
    """Train (or load) every :class:`~brainkit.experiments.designs.RunSpec` in ``specs``.

    Runs missing from the store are trained in a pool of worker processes when
    :func:`pool_workers` says so, else one after the other in this process.

    Returns
    -------
    list of Run
        In the order of ``specs``.
    """
    from .profiles import get_profile

    profile = get_profile(profile)
    missing, seen = [], set()
    for spec in specs:
        if spec.loss == BASELINE or spec.n_train * profile.epochs < MIN_POOL_IMAGE_EPOCHS:
            continue
        key = spec.key(cohort, profile)
        if key not in seen and not store.exists(key):
            seen.add(key)
            missing.append((spec, key))
    workers = pool_workers(len(missing), device)
    if workers > 1:
        _train_in_pool(cohort, missing, profile=profile, store=store, workers=workers)
    return [spec.train(cohort, profile=profile, store=store, device=device, progress=progress)
            for spec in specs]


def _train_in_pool(cohort, missing, *, profile, store: ResultsStore, workers: int) -> None:
    from concurrent.futures import FIRST_EXCEPTION, wait

    folder = str(cohort_folder(cohort, store))
    threads = max(1, usable_cores() // workers)
    executor = _executor(workers, threads)
    payloads = [{"cohort_dir": folder, "store": str(Path(store.root).resolve()),
                 "profile": profile, "loss": spec.loss, "indices": list(spec.indices),
                 "seed": spec.seed, "key": key} for spec, key in missing]
    futures = [executor.submit(_train_task, p) for p in payloads]
    try:
        pending = wait(futures, return_when=FIRST_EXCEPTION).not_done
        for future in futures:
            if future.done() and future.exception() is not None:
                for other in pending:
                    other.cancel()
                wait(pending)      # the runs already training finish and are stored
                raise future.exception()
    except BaseException:
        _close_pool(terminate=True)   # SIGTERM: a training worker checkpoints first
        raise


def _executor(workers: int, threads: int):
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    if _POOL and (_POOL["workers"], _POOL["threads"]) == (workers, threads) \
            and not getattr(_POOL["executor"], "_broken", False):
        return _POOL["executor"]
    _close_pool()
    executor = ProcessPoolExecutor(max_workers=workers,
                                   mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_init_worker, initargs=(threads,))
    _POOL.update(executor=executor, workers=workers, threads=threads)
    return executor


def _close_pool(terminate: bool = False) -> None:
    executor = _POOL.pop("executor", None)
    _POOL.clear()
    if executor is None:
        return
    if terminate:
        for process in list(getattr(executor, "_processes", {}).values()):
            if process.is_alive():
                process.terminate()
    executor.shutdown(wait=True, cancel_futures=True)


atexit.register(_close_pool)


def _init_worker(threads: int) -> None:
    import signal

    import torch

    # Ctrl-C reaches the whole process group: the caller handles it and stops the workers
    # with SIGTERM (a training run then writes its checkpoint), so workers ignore SIGINT
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads)


def train_planned(cohort, loss: str, indices, *, key: str, profile, seed: int,
                  store: ResultsStore, device=None):
    """:func:`~brainkit.experiments.pipeline.train_encoder` in a worker, checked against the
    store key its caller planned (a worker's cohort or settings must not differ)."""
    run = train_encoder(cohort, loss, np.asarray(indices, dtype=np.int64), profile=profile,
                        seed=seed, store=store, device=device)
    if run.key != key:
        raise RuntimeError(f"the worker trained run {run.key}, not the planned {key}: its "
                           "cohort or settings differ from the caller's")
    return run


def _train_task(payload: dict) -> str:
    return train_planned(cohort_at(payload["cohort_dir"]), payload["loss"],
                         payload["indices"], key=payload["key"], profile=payload["profile"],
                         seed=payload["seed"], store=ResultsStore(payload["store"]),
                         device="cpu").key


def cohort_folder(cohort, store: ResultsStore) -> Path:
    """A folder holding ``cohort`` that another process can load: the folder it was loaded
    from when that still holds the same content, else a copy saved once under the store's
    ``cohorts/content-<hash>``."""
    folder = cohort.folder
    if folder is not None and _holds(folder, cohort.content_hash):
        return folder
    return save_cohort_once(cohort, Path(store.root) / "cohorts"
                            / f"content-{cohort.content_hash[:16]}")


def save_cohort_once(cohort, final: Path) -> Path:
    """Save ``cohort`` as ``final`` unless it is there already (atomic: staged beside it and
    renamed, so two processes meeting leave one complete copy)."""
    final = Path(final)
    if (final / "cohort.json").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.parent / f".tmp-{uuid.uuid4().hex[:8]}"
    try:
        cohort.save(staging)
        if (final / "cohort.json").is_file():
            shutil.rmtree(staging)
        else:
            if final.exists():  # an incomplete leftover
                shutil.rmtree(final)
            os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


def _holds(folder: Path, content_hash: str) -> bool:
    try:
        meta = json.loads((folder / "cohort.json").read_text())
    except (OSError, ValueError):
        return False
    return meta.get("content_hash") == content_hash
