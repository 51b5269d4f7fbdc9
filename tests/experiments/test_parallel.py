"""Runs trained side by side in worker processes: when, the same runs, the same store."""

from __future__ import annotations

import numpy as np
import pytest

from brainkit.data import Cohort, make_merged
from brainkit.errors import InputError
from brainkit.experiments import ResultsStore, get_profile, heldout_gaps, parallel

TINY = get_profile("ci").replace(epochs=1, widths=(4, 8, 16, 32), head_dims=(16, 8),
                                 batch_size=16, pool_sizes=None)


@pytest.fixture(scope="module")
def cohort():
    return make_merged({"openbhb": 60, "adni": 12, "icbm": 8, "oasis3": 10}, grid_mm=6, seed=0)


@pytest.mark.parametrize("setting, n_runs, device, safe, expected", [
    ("auto", 5, "cpu", True, min(5, parallel.usable_cores(), parallel.MAX_AUTO_WORKERS)),
    ("auto", 1, "cpu", True, 1),            # one run: nothing to share
    ("auto", 5, "cuda:0", True, 1),         # one GPU trains one run at a time
    ("auto", 5, "cpu", False, 1),           # python script.py: no respawn of the script
    ("3", 5, "cpu", False, 3),              # asked for: the script is guarded
    ("3", 2, "cpu", True, 2),
    ("1", 5, "cpu", True, 1),
])
def test_pool_workers(monkeypatch, setting, n_runs, device, safe, expected):
    monkeypatch.setenv("BRAINKIT_WORKERS", setting)
    monkeypatch.setattr(parallel, "_spawn_safe", lambda: safe)
    if setting == "auto" and parallel.usable_cores() < 2:
        expected = 1
    assert parallel.pool_workers(n_runs, device) == expected


@pytest.mark.parametrize("bad", ["0", "two", "-1"])
def test_bad_worker_setting_is_a_one_line_error(monkeypatch, bad):
    monkeypatch.setenv("BRAINKIT_WORKERS", bad)
    with pytest.raises(InputError, match="BRAINKIT_WORKERS must be 'auto' or a whole number"):
        parallel.pool_workers(4, "cpu")


def test_cohort_folder_reuses_the_saved_cohort_or_saves_one_copy(cohort, tmp_path):
    store = ResultsStore(tmp_path / "store")
    first = parallel.cohort_folder(cohort, store)          # in memory: saved once
    assert first.parent == store.root / "cohorts" and first.name.startswith("content-")
    assert parallel.cohort_folder(cohort, store) == first
    loaded = Cohort.load(first)
    assert loaded.content_hash == cohort.content_hash
    assert parallel.cohort_folder(loaded, store) == first  # loaded: its own folder
    saved = cohort.save(tmp_path / "elsewhere")
    assert parallel.cohort_folder(Cohort.load(saved), store).resolve() == saved.resolve()


@pytest.mark.slow  # ~15 s: two spawned workers import torch, then four 1-epoch runs
def test_pool_trains_the_planned_runs_as_in_process_training_does(cohort, tmp_path,
                                                                   one_thread, monkeypatch):
    """Four runs in two workers: the same store keys as in-process training, and the same
    predictions, bit for bit (one torch thread on both sides here)."""
    pooled, serial = ResultsStore(tmp_path / "pooled"), ResultsStore(tmp_path / "serial")
    monkeypatch.setenv("BRAINKIT_WORKERS", "2")
    monkeypatch.setattr(parallel, "usable_cores", lambda: 2)     # one thread per worker
    monkeypatch.setattr(parallel, "MIN_POOL_IMAGE_EPOCHS", 0)    # 1-epoch runs count
    gaps = heldout_gaps(cohort, ["l1", "exp"], profile=TINY, seeds=[0, 1], store=pooled)
    assert (parallel._POOL["workers"], parallel._POOL["threads"]) == (2, 1)   # it was used
    monkeypatch.setenv("BRAINKIT_WORKERS", "1")
    again = heldout_gaps(cohort, ["l1", "exp"], profile=TINY, seeds=[0, 1], store=serial)
    keys = lambda store: sorted(r.key for r in store.runs() if r.config.get("kind") == "train")
    assert keys(pooled) == keys(serial) and len(keys(pooled)) == 4
    np.testing.assert_array_equal(gaps["age_pred"], again["age_pred"])
    parallel._close_pool()
