"""The results store: stable keys, atomic completed runs, cache hits, tidy loading."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from brainkit.experiments.profiles import PROFILES, get_profile
from brainkit.experiments.store import ResultsStore, RunOutput, config_key, load_results


def output(value: float) -> RunOutput:
    return RunOutput(tables={"metrics": pd.DataFrame({"mae": [value]}),
                             "predictions": pd.DataFrame({"image_id": ["a", "b"],
                                                          "age_pred": [value, value + 1]})})


def test_config_key_is_stable_and_order_free():
    a = {"loss": "exp", "model": {"widths": (8, 16), "depth": 18}, "seed": np.int64(0)}
    b = {"seed": 0, "model": {"depth": 18, "widths": [8, 16]}, "loss": "exp"}
    assert config_key(a) == config_key(b)
    assert config_key(a) != config_key({**b, "seed": 1})
    with pytest.raises(TypeError, match="not JSON-serialisable"):
        config_key({"loss": object()})


def test_get_or_compute_computes_once(tmp_path):
    store = ResultsStore(tmp_path)
    calls = []

    def compute(work_dir):
        calls.append(work_dir)
        (work_dir / "checkpoint.bin").write_bytes(b"x")
        return output(3.0)

    config = {"design": "cv", "loss": "exp", "fold": 0}
    run = store.get_or_compute(config, compute)
    again = ResultsStore(tmp_path).get_or_compute(config, compute)
    assert len(calls) == 1 and store.computed == 1
    assert run.key == again.key == config_key(config)
    assert again.table("metrics")["mae"].tolist() == [3.0]
    assert not (tmp_path / "work" / run.key).exists(), "scratch space is removed on completion"
    assert again.meta["brainkit_version"] and again.meta["seconds"] >= 0


def test_a_failed_run_leaves_nothing_under_its_final_name(tmp_path):
    store = ResultsStore(tmp_path)

    def broken(work_dir):
        (work_dir / "partial.ckpt").write_bytes(b"keep me for resume")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        store.get_or_compute({"loss": "exp"}, broken)
    key = config_key({"loss": "exp"})
    assert not store.exists(key)
    assert (tmp_path / "work" / key / "partial.ckpt").exists(), "scratch survives for resume"
    bad = RunOutput(tables={"metrics": pd.DataFrame({"x": [object()]})})
    with pytest.raises(Exception):
        store.save({"loss": "bad"}, bad)
    assert not store.exists(config_key({"loss": "bad"}))
    assert not any((tmp_path / "tmp").iterdir())


def test_load_results_is_tidy_and_filters(tmp_path):
    store = ResultsStore(tmp_path)
    for loss, mae in [("exp", 3.0), ("l1", 4.0)]:
        for fold in range(2):
            store.save({"design": "cv", "loss": loss, "fold": fold, "model": {"depth": 18}},
                       output(mae + fold))
    metrics = load_results(tmp_path, "metrics")
    assert len(metrics) == 4
    assert {"loss", "fold", "model.depth", "run", "mae"} <= set(metrics.columns)
    exp = load_results(store, "predictions", loss="exp")
    assert len(exp) == 4 and set(exp["loss"]) == {"exp"}
    assert load_results(store, "metrics", loss="rnc").empty
    with pytest.raises(KeyError, match="has no table 'nope'"):
        store.runs()[0].table("nope")


def test_profiles(monkeypatch):
    assert get_profile().name == "ci"
    monkeypatch.setenv("BRAINKIT_PROFILE", "paper")
    paper = get_profile()
    assert (paper.epochs, paper.batch_size, paper.folds, paper.lr) == (300, 32, 5, 1e-4)
    assert paper.widths == (64, 128, 256, 512)
    assert get_profile("ci") is PROFILES["ci"]
    monkeypatch.setenv("BRAINKIT_PROFILE", "laptop")
    with pytest.raises(ValueError, match="unknown profile 'laptop' \\(from BRAINKIT_PROFILE\\)"):
        get_profile()
    assert PROFILES["ci"].replace(epochs=2).epochs == 2
    with pytest.raises(TypeError, match="unknown profile setting"):
        PROFILES["ci"].replace(epoch=2)
