"""``brainkit data synth`` / ``brainkit data info``: no silent overwrite, one-line errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from brainkit.cli import main
from brainkit.data import Cohort


def _cohort(n=4, seed=0):
    table = pd.DataFrame({
        "image_id": [f"i{k}" for k in range(n)], "subject_id": [f"s{k}" for k in range(n)],
        "session": 1, "dataset": "toy", "site": "a", "age": 30.0 + np.arange(n), "sex": "F",
        "diagnosis": "HC", "years_from_baseline": 0.0})
    images = np.random.default_rng(seed).random((n, 4, 5, 3), dtype=np.float32)
    return Cohort(table, images, np.diag([6.0, 6.0, 6.0, 1.0]))


def test_synth_refuses_to_replace_an_existing_cohort(tmp_path, capsys):
    out = tmp_path / "c"
    mine = _cohort().save(out)
    before = (out / "images.npy").read_bytes()
    assert main(["data", "synth", "--presets", "openbhb=4", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("brainkit data synth: error: --out ") and "already holds a cohort" in err
    assert "--overwrite" in err and "Traceback" not in err
    assert (mine / "images.npy").read_bytes() == before, "the cohort is untouched"


def test_synth_refuses_a_folder_holding_other_files(tmp_path, capsys):
    out = tmp_path / "c"
    out.mkdir()
    np.save(out / "images.npy", np.ones(3))  # not a cohort, but not ours to replace either
    assert main(["data", "synth", "--presets", "openbhb=4", "--out", str(out),
                 "--overwrite"]) == 2
    assert "is not empty" in capsys.readouterr().err
    np.testing.assert_array_equal(np.load(out / "images.npy"), np.ones(3))


def test_synth_overwrite_replaces_a_cohort(tmp_path, capsys):
    out = tmp_path / "c"
    _cohort().save(out)
    assert main(["data", "synth", "--presets", "openbhb=4", "--out", str(out),
                 "--overwrite"]) == 0
    assert Cohort.load(out).table["dataset"].unique().tolist() == ["openbhb"]


def test_info_verifies_every_image(tmp_path, capsys):
    import os

    d = _cohort().save(tmp_path / "c")
    assert main(["data", "info", str(d)]) == 0
    assert "(verified" in capsys.readouterr().out
    path = d / "images.npy"
    st = os.stat(path)
    arr = np.load(path, mmap_mode="r+")
    arr[1, 2, 2, 2] = np.inf  # behind the size + time check
    arr.flush()
    del arr
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert main(["data", "info", str(d)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("brainkit data info: error: ") and "row 1 (i1)" in err
    assert "NaN or inf" in err and "Traceback" not in err
    assert main(["data", "info", str(d), "--quick"]) == 0


@pytest.mark.parametrize("argv", [["data", "info", "nowhere"],
                                  ["data", "pack", "nowhere", "--out", "x"]])
def test_a_missing_cohort_is_one_line(argv, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nowhere/cohort.json not found" in err


def test_a_second_synth_into_a_folder_in_use_is_refused(tmp_path, capsys):
    from brainkit._util import FolderLock

    out = tmp_path / "c"
    with FolderLock(out, what="data synth", remove=True):
        assert main(["data", "synth", "--presets", "openbhb=4", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "in use by another data synth (pid " in err
    assert list(out.iterdir()) == []
