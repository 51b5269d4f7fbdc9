"""A real SIGTERM to a training subprocess: checkpoint, clean exit, bit-identical resume."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pandas as pd
import torch

from brainkit.train import load_checkpoint

EPOCHS, BATCH, N_IMAGES = 4, 8, 32

# Trains a narrow ResNet on the saved planted cohort. With "slow" (0.15 s) or "crawl" (1 s),
# every batch read sleeps, which leaves time to signal the process in the middle of a run.
SCRIPT = textwrap.dedent(f"""
    import sys, time
    import torch
    from brainkit.data import Cohort
    from brainkit.models import build_model
    from brainkit.train import TrainingInterrupted, fit

    cohort_dir, out_dir, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    cohort = Cohort.load(cohort_dir)
    if mode != "fast":
        read = cohort.raw_batch  # what training reads, for every image source
        def slow_read(indices):
            time.sleep(0.15 if mode == "slow" else 1.0)
            return read(indices)
        cohort.raw_batch = slow_read
    torch.manual_seed(0)
    model = build_model("contrastive", widths=(4, 8, 16, 32), head_dims=(16, 8))
    try:
        fit(model, cohort, "yaware", loss_kwargs={{"sigma": 5.0}}, out_dir=out_dir,
            epochs={EPOCHS}, batch_size={BATCH}, lr=1e-3, augmentation="all",
            resume=True, progress=False)
    except TrainingInterrupted as err:
        print(err, file=sys.stderr)
        sys.exit(128 + err.signal_number)
    print("finished")
""")


def _start(cohort_dir, out_dir, mode, env):
    return subprocess.Popen([sys.executable, "-c", SCRIPT, str(cohort_dir), str(out_dir), mode],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _wait_for_epoch(proc, out_dir, epoch, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"training ended before epoch {epoch}: {proc.stderr.read()}"
        if (out_dir / "checkpoint.pt").exists() and \
                load_checkpoint(out_dir / "checkpoint.pt")["epoch"] >= epoch:
            return
        time.sleep(0.02)
    raise AssertionError(f"no checkpoint for epoch {epoch} after {timeout} s")


def test_sigterm_then_resume_matches_uninterrupted_run(saved_toy, subprocess_env, tmp_path):
    interrupted, reference = tmp_path / "interrupted", tmp_path / "reference"
    proc = _start(saved_toy, interrupted, "slow", subprocess_env)
    _wait_for_epoch(proc, interrupted, 1)
    proc.send_signal(signal.SIGTERM)
    ref = _start(saved_toy, reference, "fast", subprocess_env)  # uninterrupted twin, in parallel
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "interrupted by SIGTERM" in err and "resume=True" in err

    ckpt = load_checkpoint(interrupted / "checkpoint.pt")
    steps_per_epoch = N_IMAGES // BATCH
    assert 1 <= ckpt["epoch"] < EPOCHS and 0 <= ckpt["step"] < steps_per_epoch
    assert len(ckpt["history"]) == ckpt["epoch"]
    assert len(pd.read_parquet(interrupted / "metrics.parquet")) == ckpt["epoch"]

    resumed = _start(saved_toy, interrupted, "fast", subprocess_env)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0 and "finished" in out, err
    out, err = ref.communicate(timeout=300)
    assert ref.returncode == 0 and "finished" in out, err

    a, b = load_checkpoint(interrupted), load_checkpoint(reference)
    assert (a["epoch"], a["step"]) == (b["epoch"], b["step"]) == (EPOCHS, 0)
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for group_a, group_b in zip(a["optimizer"]["state"].values(),
                                b["optimizer"]["state"].values()):
        assert torch.equal(group_a["exp_avg_sq"], group_b["exp_avg_sq"])
    assert a["scheduler"] == b["scheduler"]
    ma, mb = (pd.read_parquet(d / "metrics.parquet") for d in (interrupted, reference))
    np.testing.assert_array_equal(ma["loss"], mb["loss"])
    np.testing.assert_array_equal(ma["lr"], mb["lr"])


def test_a_second_train_is_refused_and_sigkill_then_resume_is_bit_identical(
        saved_toy, subprocess_env, tmp_path):
    """Two processes into one run folder: the second refuses at once, naming the pid; the
    first is killed with SIGKILL (no handler runs), its lock dies with it, and a resume ends
    bit-identical to an uninterrupted run."""
    killed, reference = tmp_path / "killed", tmp_path / "reference"
    proc = _start(saved_toy, killed, "crawl", subprocess_env)
    _wait_for_epoch(proc, killed, 1)
    ref = _start(saved_toy, reference, "fast", subprocess_env)  # uninterrupted twin

    start = time.monotonic()
    second = subprocess.run(
        [sys.executable, "-m", "brainkit.cli", "train", "--cohort", str(saved_toy), "--loss",
         "yaware", "--out", str(killed), "--epochs", str(EPOCHS), "--resume", "--no-progress",
         "--device", "cpu"], capture_output=True, text=True, env=subprocess_env, timeout=120)
    assert second.returncode == 2, second.stderr
    assert second.stderr.startswith(f"brainkit train: error: {killed} is in use by another "
                                    f"training run (pid {proc.pid} holds ")
    assert "Traceback" not in second.stderr and second.stderr.count("\n") == 1
    assert proc.poll() is None, "the first run goes on"

    proc.kill()  # SIGKILL: no checkpoint on the way out, no cleanup
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert load_checkpoint(killed / "checkpoint.pt")["epoch"] >= 1  # the epoch checkpoint

    resumed = _start(saved_toy, killed, "fast", subprocess_env)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0 and "finished" in out, err
    out, err = ref.communicate(timeout=300)
    assert ref.returncode == 0 and "finished" in out, err
    a, b = load_checkpoint(killed), load_checkpoint(reference)
    assert (a["epoch"], a["step"]) == (b["epoch"], b["step"]) == (EPOCHS, 0)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    ma, mb = (pd.read_parquet(d / "metrics.parquet") for d in (killed, reference))
    np.testing.assert_array_equal(ma["loss"], mb["loss"])
    assert time.monotonic() - start < 600
