"""Shared fixtures. Tests never touch the network or the real home folder."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from brainkit.data.paths import data_root


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Keep tests away from the user's home and from any BRAINKIT_* settings."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("MPLCONFIGDIR", str(home / ".mpl"))
    monkeypatch.delenv("BRAINKIT_PROFILE", raising=False)
    # designs train in-process: a pool of spawned workers per test would cost more than it
    # saves (tests/experiments/test_parallel.py and the book build use the pool)
    monkeypatch.setenv("BRAINKIT_WORKERS", "1")
    yield


@pytest.fixture(scope="session")
def shared_data():
    """The real small datasets (../shared/data or BRAINKIT_DATA); skips when absent."""
    root = data_root(os.environ.get("BRAINKIT_DATA"), required=False)
    if root is None:
        pytest.skip("real data not found: ../shared/data is absent and BRAINKIT_DATA is unset")
    return root


@pytest.fixture
def one_thread():
    """One torch thread: tiny 3D nets gain nothing from threads, and OpenMP threads spinning
    on 2 shared cores slow them tenfold under load."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def rng():
    return np.random.default_rng(0)
