"""The cohort every design starts from, and how it is split into training pools and tests.

- :func:`default_cohort`: the book's cohort (a saved one, or the profile's synthetic cohort,
  generated once into the store: :func:`synthetic_cohort`);
- :func:`pretraining_split` (:class:`PretrainingSplit`): each dataset's healthy training pool
  and test sets ("train small, test big");
- :func:`nested_subsets`, :func:`scaling_subsets`: the scaling design's training subsets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..data.splits import check_no_leakage, subject_kfold, subject_subset
from .profiles import Profile, get_profile
from .store import ResultsStore, default_store

__all__ = [
    "default_cohort",
    "synthetic_cohort",
    "PretrainingSplit",
    "pretraining_split",
    "nested_subsets",
    "scaling_subsets",
]


def default_cohort(profile: str | Profile | None = None, *, store: ResultsStore | None = None):
    """The cohort the book analyses.

    ``BRAINKIT_COHORT`` names a saved cohort (e.g. real data imported with
    ``brainkit cohort import``); otherwise the merged synthetic cohort of the profile
    (``profile.cohort_sizes`` on ``profile.grid_mm``, seed 0), generated once and kept in the
    store's ``cohorts/`` folder (keyed by the sizes, the grid and the generator's source), so
    every chapter memory-maps the same images instead of generating them again.
    """
    import os

    from ..data import Cohort

    path = os.environ.get("BRAINKIT_COHORT")
    if path:
        return Cohort.load(path)
    profile = get_profile(profile)
    store = store if store is not None else default_store()
    return synthetic_cohort(profile.cohort_sizes, grid_mm=profile.grid_mm, seed=0,
                            cache=store.root / "cohorts")


def synthetic_cohort(sizes: Mapping[str, int], *, grid_mm: float, seed: int = 0, cache=None):
    """:func:`brainkit.data.make_merged`, saved under ``cache`` and loaded from there next time.

    The cache folder's name holds a digest of the arguments and of the generator (its source,
    its preset summaries and the nilearn version whose template it resamples), so a change to
    any of them makes a new cohort. Two processes may race to fill it: the first to finish
    publishes its folder (an atomic rename), the other's copy is discarded.
    """
    import hashlib
    import importlib.metadata
    import shutil
    import tempfile
    from importlib import resources
    from pathlib import Path

    from ..data import Cohort, make_merged

    if cache is None:
        return make_merged(sizes, grid_mm=grid_mm, seed=seed)
    package = resources.files("brainkit.data")
    h = hashlib.sha256(repr((sorted(sizes.items()), float(grid_mm), int(seed))).encode())
    for name in ("synthetic.py", "_synthetic_presets.json"):
        h.update(package.joinpath(name).read_bytes())
    h.update(importlib.metadata.version("nilearn").encode())
    cache = Path(cache)
    folder = cache / f"synthetic-{h.hexdigest()[:16]}"
    if (folder / "cohort.json").is_file():
        return Cohort.load(folder)
    cohort = make_merged(sizes, grid_mm=grid_mm, seed=seed)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-synthetic-", dir=cache))
    try:
        cohort.save(tmp)
        try:
            tmp.rename(folder)
        except OSError:          # another process published it first
            if not (folder / "cohort.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Cohort.load(folder)


@dataclass(frozen=True)
class PretrainingSplit:
    """Healthy training pools and test sets per dataset (positions in the cohort).

    Attributes
    ----------
    pools : dict of str to ndarray
        Healthy images each dataset contributes to pre-training.
    tests : dict of str to ndarray
        Held-out healthy images of each dataset (for OpenBHB: the internal test set).
    external : ndarray
        OpenBHB external-site test images (empty when the cohort has no ``split`` column).
    """

    pools: dict
    tests: dict
    external: np.ndarray

    @property
    def merged(self) -> np.ndarray:
        return np.sort(np.concatenate(list(self.pools.values())))


def pretraining_split(cohort, *, pool_sizes: Mapping[str, int] | None = None,
                      folds: int = 5, seed: int = 0) -> PretrainingSplit:
    """Split each dataset's healthy controls into a training pool and test sets.

    Parameters
    ----------
    cohort : brainkit.data.Cohort
    pool_sizes : mapping of str to int, optional
        Images each dataset contributes to pre-training ("train small, test big"): whole
        subjects are drawn, stratified by site (OpenBHB) or by age, until the size is reached;
        every other healthy image of the dataset is a test image. A dataset not named here,
        one whose pool would leave less than ``1 / folds`` of its images for testing,
        or ``None``: one subject-level, age-stratified fold (``1 / folds`` of its
        subjects) is held out.
    folds : int, default 5
    seed : int, default 0
        Seeds the draw (the designs keep it fixed while training seeds vary).

    A dataset whose rows carry the OpenBHB test splits keeps its official sites: the pool is
    drawn from ``train`` rows (all of them without a pool size), the test set holds the
    seen-site images that are not in the pool (``internal_test`` plus the undrawn ``train``
    rows of sites in the pool), and ``external_test`` is the external set.
    """
    table = cohort.table
    hc = table["diagnosis"].to_numpy() == "HC"
    site = table["site"].astype(str).to_numpy()
    split = table["split"].astype(str).to_numpy() if "split" in table else None
    sizes = dict(pool_sizes or {})
    pools, tests, external = {}, {}, []
    for dataset in sorted(table["dataset"].unique()):
        rows = np.flatnonzero(hc & (table["dataset"].to_numpy() == dataset))
        size = sizes.get(dataset)
        if split is not None and np.isin(split[rows], ("internal_test", "external_test")).any():
            train = rows[split[rows] == "train"]
            pool = train if size is None else subject_subset(table, train, size, seed=seed,
                                                             strata=site)
            seen = np.isin(site[rows], site[pool]) & (split[rows] != "external_test")
            pools[dataset] = pool
            tests[dataset] = np.setdiff1d(rows[seen], pool)
            external.append(rows[split[rows] == "external_test"])
        elif size is not None and size <= len(rows) * (1 - 1 / folds):
            pools[dataset] = subject_subset(table, rows, size, seed=seed)
            tests[dataset] = np.setdiff1d(rows, pools[dataset])
        else:
            train, test = subject_kfold(table, folds, seed=seed, indices=rows)[0]
            pools[dataset], tests[dataset] = np.sort(train), np.sort(test)
        check_no_leakage(table, pools[dataset], tests[dataset])
    ext = np.sort(np.concatenate(external)) if external else np.array([], dtype=np.int64)
    return PretrainingSplit(pools=pools, tests=tests, external=ext)


def nested_subsets(cohort, pool, sizes: Sequence[int], *, seed: int = 0,
                   first=None) -> list[np.ndarray]:
    """Nested, subject-level subsets of ``pool`` with (about) ``sizes`` images each.

    Subjects are shuffled once with ``seed`` and taken in that order until the size is reached,
    so every subset contains the smaller ones and no subject is split. Subjects of the rows
    in ``first`` (e.g. one dataset's pool) come before all others, so a size equal to
    ``len(first)`` gives exactly those rows.
    """
    pool = np.sort(np.asarray(pool, dtype=np.int64))
    subjects = cohort.table["subject_id"].to_numpy()[pool]
    order = np.random.default_rng(seed).permutation(np.unique(subjects))
    if first is not None:
        early = set(cohort.table["subject_id"].to_numpy()[np.asarray(first, dtype=np.int64)])
        order = np.concatenate([[s for s in order if s in early],
                                [s for s in order if s not in early]])
    rank = {s: i for i, s in enumerate(order)}
    by_rank = pool[np.argsort([rank[s] for s in subjects], kind="stable")]
    out = []
    for n in sizes:
        if not 2 <= n <= len(pool):
            raise ValueError(f"training size {n} must be between 2 and the pool size {len(pool)}")
        cut = n
        while cut < len(by_rank) and subjects[np.searchsorted(pool, by_rank[cut])] == \
                subjects[np.searchsorted(pool, by_rank[cut - 1])]:
            cut += 1  # finish the last subject
        out.append(np.sort(by_rank[:cut]))
    return out


def scaling_subsets(cohort, split: PretrainingSplit, sizes: Sequence[int], *,
                    first: str = "openbhb") -> list[np.ndarray]:
    """The training subsets of the scaling design: nested, subject-level, from the merged pool.

    The whole pool is always the largest; ``first``'s pool (OpenBHB) fills the smallest
    subsets first, so a size equal to that pool is the "single" OpenBHB run of
    :func:`single_vs_merge` and the larger ones add the other datasets (more sites, more
    datasets), as the paper's scaling does. The draw is fixed (seed 0): training seeds vary
    the models, not the images.
    """
    pool = split.merged
    sizes = sorted({min(int(n), len(pool)) for n in sizes} | {len(pool)})
    return nested_subsets(cohort, pool, sizes, seed=0, first=split.pools.get(first))
