"""Checkpoints: atomic writes survive crashes; random states round-trip exactly."""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from brainkit.train import atomic_save, load_checkpoint
from brainkit.train.checkpoint import rng_state, set_rng_state


def _payload(value: float) -> dict:
    return {"model": {"w": torch.full((64, 64), value)}, "epoch": int(value), "tag": "ok"}


def test_atomic_save_roundtrip_weights_only(tmp_path):
    path = atomic_save(_payload(3.0), tmp_path / "checkpoint.pt")
    got = load_checkpoint(tmp_path)  # a run directory resolves to checkpoint.pt
    assert torch.equal(got["model"]["w"], torch.full((64, 64), 3.0))
    assert got["epoch"] == 3 and got["tag"] == "ok"
    assert path == tmp_path / "checkpoint.pt"
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary left


def test_exception_while_writing_keeps_previous(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    atomic_save(_payload(1.0), path)
    real_save = torch.save

    def torn_save(obj, fh):
        real_save(obj, fh)
        fh.truncate(100)  # half a file on disk ...
        raise KeyboardInterrupt  # ... and the process is interrupted

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(KeyboardInterrupt):
        atomic_save(_payload(2.0), path)
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_process_killed_while_writing_keeps_previous(tmp_path):
    """A hard exit (no cleanup) in the middle of a write leaves the old checkpoint intact."""
    path = tmp_path / "checkpoint.pt"
    atomic_save(_payload(1.0), path)
    script = textwrap.dedent(f"""
        import os, torch
        from brainkit.train import atomic_save
        real = torch.save
        def dying_save(obj, fh):
            real(obj, fh)
            fh.truncate(200)
            fh.flush()
            os._exit(9)            # killed mid-write: no exception handler runs
        torch.save = dying_save
        atomic_save({{"model": {{"w": torch.zeros(64, 64)}}, "epoch": 2}}, {str(path)!r})
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 9, proc.stderr
    names = {p.name for p in tmp_path.iterdir()}
    torn = [n for n in names if n.startswith(".checkpoint.pt.") and n.endswith(".tmp")]
    assert names == {"checkpoint.pt", *torn} and len(torn) == 1  # the torn temp file stays
    got = load_checkpoint(path)
    assert got["epoch"] == 1 and torch.equal(got["model"]["w"], torch.full((64, 64), 1.0))
    with pytest.raises(ValueError, match="not a readable brainkit checkpoint"):
        load_checkpoint(tmp_path / torn[0])


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pt"):
        load_checkpoint(tmp_path / "garbage.pt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        atomic_save({}, tmp_path / "no" / "dir" / "x.pt")


def test_rng_state_roundtrip_through_weights_only_file(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.normal()  # leave a cached gaussian in numpy's legacy state
    state = rng_state()
    atomic_save({"rng": state}, tmp_path / "rng.pt")
    expected = (random.random(), np.random.normal(), np.random.rand(3), torch.rand(4))
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    set_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    got = (random.random(), np.random.normal(), np.random.rand(3), torch.rand(4))
    assert got[0] == expected[0] and got[1] == expected[1]
    np.testing.assert_array_equal(got[2], expected[2])
    assert torch.equal(got[3], expected[3])


def test_set_rng_state_rejects_malformed():
    with pytest.raises(ValueError, match="malformed"):
        set_rng_state({"python": {}})
