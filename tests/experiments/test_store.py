"""The results store: stable keys, atomic completed runs, cache hits, tidy loading."""

from __future__ import annotations

import time

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


def test_the_ci_kernel_width_follows_the_spread_of_the_training_ages():
    """sigma_sd * std(ages), clipped to [1, sigma]: the merged pool's spread keeps the cap,
    an older-adults cohort gets a narrower kernel, and the width is part of the run's key."""
    import numpy as np

    ci = PROFILES["ci"]
    wide = np.linspace(7.0, 91.0, 401)                 # std 24.3 years
    old = 76.0 + 6.6 * np.random.default_rng(0).standard_normal(258)
    assert ci.kernel_sigma(wide) == ci.sigma == 5.0
    assert ci.kernel_sigma(old) == round(0.4 * float(np.std(old)), 2)
    assert 2.4 < ci.kernel_sigma(old) < 2.9
    assert ci.kernel_sigma(np.full(20, 70.0)) == 1.0
    for loss in ("yaware", "threshold", "exp", "adapn"):
        assert ci.loss_kwargs(loss, old)["sigma"] == ci.kernel_sigma(old)
    assert ci.loss_kwargs("rnc") == {"temperature": 2.0} and ci.loss_kwargs("l1") == {}
    with pytest.raises(ValueError, match="sets the kernel width from the training ages"):
        ci.loss_kwargs("exp")
    assert ci.train_config("exp", ages=old).loss_kwargs["sigma"] == ci.kernel_sigma(old)
    assert ci.train_config("exp", ages=old) != ci.train_config("exp", ages=wide)
    fixed = ci.replace(sigma_sd=None)
    assert fixed.kernel_sigma() == fixed.kernel_sigma(old) == 5.0
    assert PROFILES["paper"].loss_kwargs("exp")["sigma"] == 2.0
    with pytest.raises(ValueError, match="sigma_sd must be a positive number"):
        ci.replace(sigma_sd=0)


def test_the_ci_batch_size_keeps_enough_steps_for_a_small_training_set():
    """n_images // min_steps, clipped to [min_batch_size, batch_size], for the contrastive
    losses: the merged pool keeps its batch, a small pool gets smaller ones (in the key);
    L1 keeps its batch (loss_settings)."""
    import numpy as np

    ci = PROFILES["ci"]
    pool, fold, tiny = (np.linspace(7.0, 91.0, n) for n in (400, 258, 60))
    assert ci.batch_size_for(400) == ci.batch_size == 16
    assert ci.batch_size_for(258) == 10 and ci.batch_size_for(60) == ci.min_batch_size == 8
    assert [ci.train_config(loss, ages=fold).batch_size
            for loss in ("exp", "yaware", "threshold", "l1")] == [10, 10, 10, 16]
    assert ci.train_config("exp", ages=pool).batch_size == 16
    assert ci.train_config("exp", ages=tiny).batch_size == 8
    assert ci.train_config("l1", ages=tiny).batch_size == 16
    assert ci.train_config("exp", ages=fold).key() != ci.train_config(
        "exp", ages=fold).replace(batch_size=16).key()
    with pytest.raises(ValueError, match="sets the batch size from the number of training"):
        ci.replace(sigma_sd=None).train_config("exp")
    assert PROFILES["paper"].batch_size_for() == PROFILES["paper"].train_config(
        "exp").batch_size == 32
    assert ci.replace(batch_size=4).batch_size_for(60) == 4      # never above batch_size
    with pytest.raises(ValueError, match="min_steps must be an integer >= 1 or None"):
        ci.replace(min_steps=0)
    with pytest.raises(ValueError, match="min_batch_size must be an integer >= 1"):
        ci.replace(min_batch_size=2.5)


# --------------------------------------------------------------------------- reliability
@pytest.mark.parametrize("tables, files", [
    ({"../../x": pd.DataFrame({"a": [1]})}, None),
    ({"sub/x": pd.DataFrame({"a": [1]})}, None),
    ({"metrics": pd.DataFrame({"a": [1]})}, {"../evil": None}),
    ({"..": pd.DataFrame({"a": [1]})}, None),
])
def test_names_that_would_leave_the_store_are_refused(tmp_path, tables, files):
    from brainkit.experiments.store import StoreError

    store = ResultsStore(tmp_path / "store")
    src = tmp_path / "payload.bin"
    src.write_bytes(b"x")
    files = {k: src for k in files} if files else None
    with pytest.raises(StoreError, match="expected a plain name"):
        store.save({"loss": "exp"}, RunOutput(tables=tables, files=files))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["payload.bin", "store"]
    assert not list((tmp_path / "store").rglob("*.parquet"))
    with pytest.raises(StoreError, match="run key"):
        store.run_dir("../../etc")


def test_reading_a_table_or_file_by_a_path_is_refused(tmp_path):
    from brainkit.experiments.store import StoreError

    run = ResultsStore(tmp_path).save({"loss": "exp"}, output(1.0))
    with pytest.raises(StoreError, match="expected a plain name"):
        run.table("../../../x")
    with pytest.raises(StoreError, match="expected a plain name"):
        run.file("../meta.json")


def test_a_truncated_meta_json_is_named_and_skipped_by_listings(tmp_path, capsys):
    from brainkit.cli import main
    from brainkit.experiments.store import StoreError

    store = ResultsStore(tmp_path)
    good = store.save({"kind": "train", "loss": "exp"}, output(1.0))
    bad = store.save({"kind": "train", "loss": "l1"}, output(2.0))
    meta = bad.path / "meta.json"
    meta.write_text(meta.read_text()[:40])
    with pytest.warns(UserWarning, match=rf"skipped: {meta}: not valid JSON"):
        runs = store.runs()
    assert [r.key for r in runs] == [good.key]
    with pytest.raises(StoreError, match=rf"{meta}: not valid JSON.*delete {bad.path}"):
        store.runs(broken="raise")
    with pytest.raises(StoreError, match="not valid JSON"):
        store.get_or_compute({"kind": "train", "loss": "l1"}, lambda work: output(2.0))
    assert main(["results", "--store", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert f"brainkit results: warning: skipped: {meta}: not valid JSON" in captured.err
    assert good.key in captured.out and bad.key not in captured.out


def test_a_truncated_table_is_named(tmp_path):
    from brainkit.experiments.store import StoreError

    run = ResultsStore(tmp_path).save({"loss": "exp"}, output(1.0))
    path = run.path / "metrics.parquet"
    path.write_bytes(path.read_bytes()[:30])
    with pytest.raises(StoreError, match=rf"{path}: unreadable parquet table"):
        run.table("metrics")


def test_two_processes_asking_for_one_run_compute_it_once(tmp_path):
    import subprocess
    import sys
    import textwrap
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[2])
    script = textwrap.dedent(f"""
        import os, sys, time, warnings
        import pandas as pd
        sys.path.insert(0, {root!r})
        from brainkit.experiments.store import ResultsStore, RunOutput
        warnings.simplefilter("always")
        def compute(work_dir):
            with open({str(tmp_path / 'calls.txt')!r}, "a") as fh:
                fh.write(sys.argv[1] + "\\n")
            deadline = time.monotonic() + 60
            while not os.path.exists({str(tmp_path / 'release')!r}):
                assert time.monotonic() < deadline
                time.sleep(0.05)
            return RunOutput(tables={{"metrics": pd.DataFrame({{"mae": [1.0]}})}})
        open({str(tmp_path / 'started-')!r} + sys.argv[1], "w").close()
        run = ResultsStore({str(tmp_path / 'store')!r}).get_or_compute({{"loss": "exp"}},
                                                                       compute)
        print(run.table("metrics")["mae"].tolist())
    """)
    first = subprocess.Popen([sys.executable, "-c", script, "first"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (tmp_path / "calls.txt").exists():  # the first one is computing
        assert time.monotonic() < deadline and first.poll() is None, first.communicate()
        time.sleep(0.05)
    second = subprocess.Popen([sys.executable, "-c", script, "second"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    while not (tmp_path / "started-second").exists():
        assert time.monotonic() < deadline and second.poll() is None, second.communicate()
        time.sleep(0.05)
    time.sleep(1.0)  # the second now waits for the first's lock
    (tmp_path / "release").touch()
    out, err = first.communicate(timeout=120)
    out2, err2 = second.communicate(timeout=120)
    assert first.returncode == 0 and second.returncode == 0, (err, err2)
    assert out.strip() == out2.strip() == "[1.0]"
    assert (tmp_path / "calls.txt").read_text().split() == ["first"], "computed once"
    assert f"being computed by pid {first.pid}; waiting" in err2
