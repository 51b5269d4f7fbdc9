"""Fixtures for the training-engine tests: a planted toy cohort and a small synthetic one."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from brainkit.data import Cohort


@pytest.fixture(autouse=True)
def _one_torch_thread(one_thread):
    """Every training test on one torch thread (subprocesses get ``OMP_NUM_THREADS=1``
    likewise, from ``subprocess_env``)."""


@pytest.fixture(scope="session")
def subprocess_env() -> dict:
    """Environment for Python subprocesses of these tests (one thread, this checkout)."""
    import os
    from pathlib import Path

    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return env


def planted_cohort(n: int, shape=(16, 16, 16), seed: int = 0, n_sites: int = 3) -> Cohort:
    """A cohort whose images show age plainly: a bright ball that shrinks with age.

    Radius ``6 - 3 (age - 20) / 60`` voxels (soft edge), a per-image gain in [0.8, 1.2] and
    Gaussian noise (sd 0.1); ages uniform in [20, 80]; ``n_sites`` sites in rotation.
    """
    rng = np.random.default_rng(seed)
    age = rng.uniform(20, 80, n).round(1)
    grid = np.stack(np.meshgrid(*[np.arange(s) - (s - 1) / 2 for s in shape], indexing="ij"))
    r = np.sqrt((grid ** 2).sum(0))
    radius = 6.0 - 3.0 * (age - 20) / 60
    images = 1 / (1 + np.exp((r[None] - radius[:, None, None, None]) / 0.7))
    images = images * rng.uniform(0.8, 1.2, n)[:, None, None, None]
    images = images + rng.normal(0, 0.1, (n,) + tuple(shape))
    table = pd.DataFrame({
        "image_id": [f"img{i:03d}" for i in range(n)],
        "subject_id": [f"sub{i:03d}" for i in range(n)],
        "session": 1, "dataset": "toy", "site": [f"site{i % n_sites}" for i in range(n)],
        "age": age, "sex": np.where(rng.random(n) < 0.5, "M", "F"), "diagnosis": "HC",
        "years_from_baseline": 0.0,
    })
    return Cohort(table, images.astype(np.float32), np.diag([6.0, 6.0, 6.0, 1.0]))


@pytest.fixture(scope="session")
def make_planted():
    """:func:`planted_cohort`, for tests that need another size or grid."""
    return planted_cohort


@pytest.fixture(scope="session")
def toy_cohort() -> Cohort:
    """96 planted images on a 16^3 grid."""
    return planted_cohort(96)


@pytest.fixture(scope="session")
def synthetic_cohort() -> Cohort:
    """The 6 mm synthetic OpenBHB-like cohort (31 x 37 x 31), 24 subjects."""
    from brainkit.data.synthetic import make_cohort

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # nilearn resampling notice
        return make_cohort("openbhb", n_subjects=24, grid_mm=6, seed=0)


@pytest.fixture(scope="session")
def saved_synthetic(synthetic_cohort, tmp_path_factory):
    """``synthetic_cohort`` saved with ``Cohort.save`` (for subprocesses and the CLI)."""
    return synthetic_cohort.save(tmp_path_factory.mktemp("cohort") / "openbhb24")


@pytest.fixture(scope="session")
def saved_toy(tmp_path_factory):
    """A 32-image planted cohort saved to disk (for subprocesses)."""
    return planted_cohort(32, seed=1).save(tmp_path_factory.mktemp("cohort") / "toy32")
