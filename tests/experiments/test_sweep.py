"""Sweeps: grid files, task expansion and dedup, resume after SIGTERM, pool and submitit paths."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from brainkit.cli import main
from brainkit.data import make_cohort
from brainkit.data.splits import subject_kfold
from brainkit.experiments import ResultsStore, config_key, get_profile, pretraining_split
from brainkit.experiments.cohorts import nested_subsets
from brainkit.experiments.pipeline import train_config
from brainkit.experiments.sweep import (
    DESIGNS,
    GridError,
    load_grid,
    results_table,
    run_sweep,
)

TINY = "overrides: {epochs: 1, widths: [4, 8, 16, 32], head_dims: [16, 8], batch_size: 8}"
SMALL_MERGED = "{openbhb: 60, adni: 12, icbm: 8, oasis3: 10}"
ROOT = Path(__file__).resolve().parents[2]


def write_grid(folder: Path, text: str, name: str = "grid.yaml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def summary_counts(text: str) -> tuple[int, int]:
    match = re.search(r"(\d+) cached, (\d+) computed", text)
    assert match, f"no sweep summary in {text!r}"
    return int(match.group(1)), int(match.group(2))


# --------------------------------------------------------------------------- parsing
VALID = {
    "cohort": {"synthetic": {"adni": 20}, "grid_mm": 6, "seed": 0},
    "profile": "ci",
    "runs": [{"design": "cross_validate", "loss": ["l1"], "folds": 2}],
}


@pytest.mark.parametrize("change, message", [
    ({"foo": 1}, r"unknown key\(s\) \['foo'\]"),
    ({"runs": None}, r"runs must be a non-empty list"),
    ({"runs": []}, r"runs must be a non-empty list"),
    ({"cohort": {"synthetic": {"adni": 20}, "path": "x"}}, r"cohort: give exactly one of"),
    ({"cohort": {"synthetic": {"ukbb": 20}}}, r"cohort.synthetic key must be one of"),
    ({"cohort": {"synthetic": {"adni": 0}}}, r"cohort.synthetic.adni must be >= 1"),
    ({"cohort": {"synthetic": {"adni": 20}, "grid_mm": 5}}, r"cohort.grid_mm must be one of"),
    ({"cohort": {"path": "x", "seed": 1}}, r"cohort.seed only applies to synthetic"),
    ({"cohort": {"synthetic": {"adni": 20}, "size": 3}}, r"cohort: unknown key\(s\) \['size'\]"),
    ({"profile": "laptop"}, r"profile must be one of"),
    ({"overrides": {"epoch": 2}}, r"overrides.epoch: unknown profile setting"),
    ({"overrides": {"epochs": "two"}}, r"overrides.epochs must be an integer"),
    ({"overrides": {"head_dims": [16]}}, r"overrides.head_dims must be a list of 2 values"),
    ({"overrides": {"recalibrate_bn": 1}}, r"overrides.recalibrate_bn must be true or false"),
    ({"runs": [{"loss": "l1"}]}, r"runs\[0\]: missing key 'design'"),
    ({"runs": [{"design": "crossval"}]}, r"runs\[0\].design must be one of"),
    ({"runs": [{"design": "scaling", "loss": ["l1", "mse"]}]}, r"runs\[0\].loss\[1\] must be"),
    ({"runs": [{"design": "scaling", "loss": ["l1", "l1"]}]}, r"runs\[0\].loss repeats"),
    ({"runs": [{"design": "scaling", "folds": 3}]},
     r"runs\[0\] \(scaling\): unknown key\(s\) \['folds'\]"),
    ({"runs": [{"design": "cross_validate", "folds": 1}]}, r"runs\[0\].folds must be >= 2"),
    ({"runs": [{"design": "cross_validate", "seed": [-1]}]}, r"runs\[0\].seed\[0\] must be >= 0"),
    ({"runs": [{"design": "scaling", "train_sizes": 100}]},
     r"runs\[0\].train_sizes must be a list"),
    ({"runs": [{"design": "heldout_gaps", "correction": "none"}]},
     r"runs\[0\].correction must be one of"),
    ({"slurm": {"gpus": 1}}, r"slurm: unknown key\(s\) \['gpus'\]"),
    ({"slurm": {"timeout_min": 0}}, r"slurm.timeout_min must be >= 1"),
])
def test_grid_errors_name_the_file_and_key(tmp_path, change, message):
    import yaml

    data = {**VALID, **change}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(GridError, match=message) as err:
        load_grid(path)
    assert str(path) in str(err.value)


def test_grid_file_level_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_grid(tmp_path / "missing.yaml")
    bad = write_grid(tmp_path, "runs: [design: scaling\n")
    with pytest.raises(GridError, match="not valid YAML"):
        load_grid(bad)
    listing = write_grid(tmp_path, "- design: scaling\n", "list.yaml")
    with pytest.raises(GridError, match="the grid must be a mapping"):
        load_grid(listing)
    no_profile = write_grid(tmp_path, "cohort: {synthetic: {adni: 5}}\nruns: [{design: scaling}]\n",
                            "noprofile.yaml")
    with pytest.raises(GridError, match="missing top-level key 'profile'"):
        load_grid(no_profile)


def test_grid_values_profile_and_cohort_path(tmp_path, monkeypatch):
    grid = load_grid(write_grid(tmp_path, f"""
        cohort: {{synthetic: profile}}
        profile: ci
        {TINY}
        runs:
          - {{design: scaling, loss: exp}}
          - {{design: cross_validate}}
        slurm: {{partition: gpu, timeout_min: 30, setup: ["module load cuda"]}}
    """))
    assert grid.profile.widths == (4, 8, 16, 32) and grid.profile.epochs == 1
    assert grid.profile.name == "ci" and grid.profile.lr == get_profile("ci").lr, \
        "other settings are the profile's"
    assert grid.cohort_spec.synthetic == dict(grid.profile.cohort_sizes)
    assert grid.cohort_spec.grid_mm == 6
    assert grid.slurm == {"partition": "gpu", "timeout_min": 30, "setup": ["module load cuda"]}
    runs = grid.design_runs()
    assert [r.loss for r in runs[1:]] == list(grid.profile.losses), "loss defaults to the profile's"
    assert list(runs[0].params["train_sizes"]) == sorted(grid.profile.train_sizes)
    assert runs[1].params == {"folds": grid.profile.folds, "correction": "beheshti"}

    (tmp_path / "cohorts").mkdir()
    make_cohort("icbm", n_subjects=4).save(tmp_path / "cohorts" / "icbm")
    rel = load_grid(write_grid(tmp_path, """
        cohort: {path: cohorts/icbm}
        profile: ci
        runs: [{design: cross_validate, loss: l1}]
    """, "rel.yaml"))
    assert rel.cohort_spec.path == tmp_path / "cohorts" / "icbm"
    assert len(rel.cohort()) == len(make_cohort("icbm", n_subjects=4))
    monkeypatch.delenv("BRAINKIT_TEST_DATA", raising=False)
    env = load_grid(write_grid(tmp_path, """
        cohort: {path: "${BRAINKIT_TEST_DATA}/merged"}
        profile: paper
        runs: [{design: scaling}]
    """, "env.yaml"))
    with pytest.raises(GridError, match="environment variable"):
        env.tasks()
    monkeypatch.setenv("BRAINKIT_TEST_DATA", str(tmp_path / "cohorts"))
    env = load_grid(tmp_path / "env.yaml")
    with pytest.raises(GridError, match="not a saved brainkit cohort"):
        env.cohort()


def test_plan_errors_name_the_run(tmp_path):
    def grid(runs: str, cohort: str = "{synthetic: {adni: 30}}"):
        return load_grid(write_grid(tmp_path, f"cohort: {cohort}\nprofile: ci\nruns: {runs}\n"))

    with pytest.raises(GridError, match=r"runs\[0\] \(scaling\): the scaling design needs an OpenBHB"):
        grid("[{design: scaling, loss: l1}]").tasks()
    with pytest.raises(GridError, match=r"runs\[0\] \(heldout_gaps\): cannot make 5"):
        grid("[{design: heldout_gaps, loss: l1}]", "{synthetic: {adni: 4}}").tasks()
    with pytest.raises(GridError, match=r"runs\[1\] \(cross_validate\): cannot make 40"):
        grid("[{design: heldout_gaps, loss: l1}, {design: cross_validate, loss: l1, folds: 40}]"
             ).tasks()
    with pytest.raises(GridError, match=r"runs\[0\] \(downstream\): pretrain_dataset: the cohort has no 'openbhb'"):
        grid("[{design: downstream, loss: l1, datasets: [adni]}]").tasks()
    with pytest.raises(GridError, match=r"runs\[0\] \(single_vs_merge\): single_datasets: \['icbm'\]"):
        grid("[{design: single_vs_merge, loss: l1, single_datasets: [icbm]}]").tasks()
    with pytest.raises(GridError, match="slurm.timeout_min"):
        run_sweep(grid("[{design: heldout_gaps, loss: l1}]"), tmp_path / "s", executor="slurm")


# --------------------------------------------------------------------------- expansion
def test_tasks_are_the_designs_runs_deduplicated(tmp_path):
    grid = load_grid(write_grid(tmp_path, f"""
        cohort: {{synthetic: {SMALL_MERGED}, grid_mm: 6, seed: 0}}
        profile: ci
        {TINY}
        runs:
          - {{design: cross_validate, loss: [l1, exp], folds: 2}}
          - {{design: scaling, loss: [l1, exp], train_sizes: [20]}}
          - {{design: single_vs_merge, loss: [l1, exp]}}
          - {{design: heldout_gaps, loss: [l1, exp]}}
          - {{design: downstream, loss: [l1, exp], folds: 2, epochs: 1}}
          - {{design: scaling, loss: exp, train_sizes: [20]}}
    """))
    store = ResultsStore(tmp_path / "store")
    tasks, evals = grid.tasks(store), grid.evaluations(store)
    cohort, profile = grid.cohort(), grid.profile
    assert (store.root / "cohorts" / cohort.content_hash[:16] / "cohort.json").is_file()

    # Independent expectation from the splitting primitives, for each loss:
    table = cohort.table
    hc = np.flatnonzero(table["diagnosis"].to_numpy() == "HC")
    split = pretraining_split(cohort, pool_sizes=profile.pool_sizes)
    expected = {}
    for loss in ("l1", "exp"):
        sets = [train for train, _ in subject_kfold(table, 2, seed=0, indices=hc)]
        sets += nested_subsets(cohort, split.merged, [20, len(split.merged)], seed=0,
                               first=split.pools["openbhb"])
        sets += list(split.pools.values()) + [split.merged]
        for idx in sets:
            config = train_config(cohort, loss, idx, profile=profile, seed=0)
            expected[config_key(config)] = (loss, len(idx))
    assert len(expected) == 16, "2 folds + 2 sizes + 4 singles (merged shared), per loss"
    keys = [t.key for t in tasks]
    assert len(keys) == len(set(keys)), "no training run is planned twice"
    assert {t.key: (t.loss, t.n_train) for t in tasks} == expected

    by_key = {t.key: t for t in tasks}
    merged = config_key(train_config(cohort, "exp", split.merged, profile=profile, seed=0))
    designs = {label.split(" ")[1] for label in by_key[merged].needed_by}
    assert designs == {"scaling", "single_vs_merge", "heldout_gaps"}
    single = config_key(train_config(cohort, "l1", split.pools["openbhb"], profile=profile,
                                     seed=0))
    assert {label.split(" ")[1] for label in by_key[single].needed_by} == {"single_vs_merge",
                                                                         "downstream"}
    # Evaluations: one per design run; the repeated scaling entry collapses into the first.
    assert len(evals) == 10
    assert sorted({e.run.design for e in evals}) == sorted(DESIGNS)
    for e in evals:
        assert set(e.needs) <= set(by_key)

    # A second seed doubles the runs; nothing is shared across seeds.
    two = load_grid(write_grid(tmp_path, f"""
        cohort: {{synthetic: {SMALL_MERGED}}}
        profile: ci
        {TINY}
        runs: [{{design: heldout_gaps, loss: l1, seed: [0, 1]}}]
    """, "seeds.yaml"))
    assert [t.seed for t in two.tasks()] == [0, 1]


# --------------------------------------------------------------------------- running
@pytest.mark.slow  # 10-20 s: two spawned workers import torch, then 11 tasks
def test_pool_sweep_trains_each_run_once_and_designs_need_nothing_else(tmp_path, capsys):
    """Every design, two worker processes; the evaluations must find every run they load."""
    path = write_grid(tmp_path, f"""
        cohort: {{synthetic: {SMALL_MERGED}, grid_mm: 6, seed: 0}}
        profile: ci
        {TINY}
        runs:
          - {{design: cross_validate, loss: l1, folds: 2}}
          - {{design: scaling, loss: l1, train_sizes: [20]}}
          - {{design: single_vs_merge, loss: l1, single_datasets: [openbhb, adni]}}
          - {{design: heldout_gaps, loss: l1}}
          - {{design: downstream, loss: l1, folds: 2, epochs: 1}}
    """)
    grid = load_grid(path)
    store = ResultsStore(tmp_path / "store")
    report = run_sweep(grid, store, workers=2, progress=False)
    assert (report.n_train, report.n_eval) == (6, 5)
    assert report.computed == report.total and report.cached == 0 and not report.failed
    kinds = [r.config.get("kind") for r in store.runs()]
    assert kinds.count("train") == 6 and kinds.count("design") == 5
    assert kinds.count("finetune") == 1
    # challenge probes, cached per trained run: scaling's 20-image and whole-pool runs, and
    # single_vs_merge's single OpenBHB run (its merge run is scaling's whole pool)
    assert kinds.count("probe") == 3

    summary = results_table(store)
    assert len(summary) == 15
    probes = summary[summary["kind"] == "probe"]
    assert (probes["loss"] == "l1").all() and np.isfinite(probes["mae_ext"]).all()
    cv = summary[summary["kind"] == "cross_validate"].iloc[0]
    assert 0 < cv["mae"] < 100 and np.isfinite(cv["bag_HC"])
    trained = summary[summary["kind"] == "train"]
    assert trained["final_loss"].notna().all() and (trained["seconds"] > 0).all()
    assert np.isfinite(summary.loc[summary["kind"] == "scaling", "mae_ext"]).all()
    assert np.isfinite(summary.loc[summary["kind"] == "downstream", "bacc_within"]).all()
    assert summary.loc[summary["kind"] == "finetune", "loss"].tolist() == ["l1"]

    assert main(["results", "--store", str(store.root)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:7] == ["key", "kind", "loss", "n_train", "seed", "seconds",
                                  "final_loss"]
    assert len(out) == 1 + 15
    assert main(["results", "--store", str(store.root), "--filter", "kind=train",
                 "n_train=20"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and " 20 " in out[1]
    assert main(["results", "--store", str(store.root), "--table", "metrics",
                 "--filter", "kind=cross_validate"]) == 0
    out = capsys.readouterr().out
    assert "bag_corrected" in out and "HC" in out
    assert main(["results", "--store", str(store.root), "--filter", "colour=red"]) == 2
    assert "match no run" in capsys.readouterr().err

    again = run_sweep(load_grid(path), store, progress=False)
    assert (again.cached, again.computed) == (11, 0)


def test_killed_sweep_resumes_with_only_the_missing_runs(tmp_path, capsys, one_thread):
    path = write_grid(tmp_path, """
        cohort: {synthetic: {adni: 20}, grid_mm: 6, seed: 0}
        profile: ci
        overrides: {epochs: 10, widths: [4, 8, 16, 32], head_dims: [16, 8], batch_size: 8}
        runs:
          - {design: cross_validate, loss: l1, folds: 3}
    """)
    store = tmp_path / "store"
    total = 4  # 3 folds + the evaluation
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "brainkit.cli", "sweep", "--grid", str(path),
                             "--store", str(store), "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while proc.poll() is None and not list(store.glob("runs/*/meta.json")):
        assert time.monotonic() < deadline, "the sweep completed no run in 120 s"
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, (proc.returncode, stdout, stderr)
    assert "interrupted by SIGTERM" in stderr
    done = len(ResultsStore(store).keys())
    assert 1 <= done < total, f"kill landed after {done} of {total} runs"

    assert main(["sweep", "--grid", str(path), "--store", str(store), "--dry-run"]) == 0
    assert f"{done} cached, {total - done} to compute" in capsys.readouterr().out

    assert main(["sweep", "--grid", str(path), "--store", str(store), "--no-progress"]) == 0
    cached, computed = summary_counts(capsys.readouterr().out)
    assert (cached, computed) == (done, total - done)
    assert len(ResultsStore(store).keys()) == total
    assert not list((store / "work").glob("*/fit/checkpoint.pt")), "scratch space is cleaned"


def test_submitit_local_executor_runs_a_grid_end_to_end(tmp_path):
    path = write_grid(tmp_path, f"""
        cohort: {{synthetic: {{adni: 20}}, grid_mm: 6, seed: 0}}
        profile: ci
        {TINY}
        runs:
          - {{design: cross_validate, loss: l1, folds: 2}}
        slurm: {{partition: gpu, timeout_min: 10, cpus_per_task: 1, array_parallelism: 2}}
    """)
    store = ResultsStore(tmp_path / "store")
    report = run_sweep(load_grid(path), store, executor="slurm", cluster="local", progress=False)
    assert (report.n_train, report.n_eval, report.computed) == (2, 1, 3)
    assert len(store.keys()) == 3
    logs = list((store.root / "slurm").glob("*/*_log.out"))
    assert len(logs) == 3, "one submitit job per task"
    with pytest.raises(ValueError, match="workers applies to executor='local'"):
        run_sweep(load_grid(path), store, executor="slurm", workers=2)


@pytest.mark.skipif(shutil.which("sbatch") is not None or shutil.which("srun") is not None,
                    reason="a SLURM cluster is present: the job would really be submitted")
def test_slurm_executor_refuses_to_run_without_slurm(tmp_path):
    path = write_grid(tmp_path, f"""
        cohort: {{synthetic: {{adni: 20}}, grid_mm: 6, seed: 0}}
        profile: ci
        {TINY}
        runs: [{{design: cross_validate, loss: l1, folds: 2}}]
        slurm: {{timeout_min: 10}}
    """)
    store = ResultsStore(tmp_path / "store")
    with pytest.raises(RuntimeError, match="found no SLURM"):
        run_sweep(load_grid(path), store, executor="slurm", progress=False)
    assert store.keys() == [], "nothing ran"


def test_a_signal_stops_the_sweep_at_the_next_check_and_a_second_acts_as_usual():
    from brainkit.experiments.sweep import SweepInterrupted, _Signals

    before = signal.getsignal(signal.SIGTERM)
    with _Signals() as signals:
        signals.check()  # nothing yet
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)  # let the handler run
        assert signals.signum == signal.SIGTERM
        assert signal.getsignal(signal.SIGTERM) is before, "a second signal acts as usual"
        with pytest.raises(SweepInterrupted, match="interrupted by SIGTERM"):
            signals.check()
    assert signal.getsignal(signal.SIGTERM) is before


def test_invalid_grid_yaml_names_the_file_and_is_one_line(tmp_path, capsys):
    grid = tmp_path / "mygrid.yaml"
    grid.write_text("cohort:\n  preset: [openbhb\nprofile: ci\n")
    with pytest.raises(GridError, match=rf"{re.escape(str(grid))}: not valid YAML") as err:
        load_grid(grid)
    assert "<unicode string>" not in str(err.value) and f'in "{grid}", line 2' in str(err.value)
    assert main(["sweep", "--grid", str(grid), "--store", str(tmp_path / "store")]) == 2
    assert "<unicode string>" not in capsys.readouterr().err
