"""``brainkit train`` / ``brainkit embed`` through the project's command-line entry point."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from brainkit.cli import main
from brainkit.data import Cohort
from brainkit.experiments import get_profile
from brainkit.train import embed, load_model


def test_train_resume_and_embed(saved_synthetic, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "--cohort", str(saved_synthetic), "--loss", "exp", "--out", str(run),
            "--profile", "ci", "--epochs", "1", "--batch-size", "8", "--device", "cpu",
            "--no-progress"]
    assert main(args) == 0
    assert "trained 1 epoch(s) on 24 images (exp, profile ci)" in capsys.readouterr().out
    config = json.loads((run / "config.json").read_text())
    ci = get_profile("ci")
    assert config["model"]["widths"] == list(ci.widths)
    assert config["model"]["head_dims"] == list(ci.head_dims)
    ages = Cohort.load(saved_synthetic).table["age"].to_numpy(float)
    assert config["train"]["loss_kwargs"] == ci.loss_kwargs("exp", ages)
    assert config["train"]["lr"] == ci.lr and config["train"]["batch_size"] == 8
    assert config["train"]["recalibrate_bn"] is True and config["batchnorm_recalibrated"]

    assert main(args) == 2  # refuses to overwrite a run
    assert "--resume" in capsys.readouterr().err
    more = [("2" if a == "1" and args[i - 1] == "--epochs" else a) for i, a in enumerate(args)]
    assert main([*more, "--resume"]) == 0
    assert len(pd.read_parquet(run / "metrics.parquet")) == 2

    cohort = Cohort.load(saved_synthetic)
    expected = embed(load_model(run), cohort)
    assert main(["embed", "--run", str(run), "--cohort", str(saved_synthetic), "--out",
                 str(tmp_path / "z.parquet"), "--device", "cpu"]) == 0
    table = pd.read_parquet(tmp_path / "z.parquet")
    assert list(table.columns) == ["image_id"] + [f"z{i}" for i in range(ci.widths[-1])]
    assert table["image_id"].tolist() == cohort.table["image_id"].tolist()
    np.testing.assert_allclose(table.iloc[:, 1:].to_numpy(), expected, rtol=1e-6)
    assert main(["embed", "--run", str(run), "--cohort", str(saved_synthetic), "--out",
                 str(tmp_path / "z.npy"), "--layer", "projection"]) == 0
    assert np.load(tmp_path / "z.npy").shape == (24, ci.head_dims[-1])
    assert main(["embed", "--run", str(run), "--cohort", str(saved_synthetic), "--out",
                 str(tmp_path / "z.csv")]) == 2
    assert r".parquet or .npy" in capsys.readouterr().err


def test_train_l1_baseline_on_a_split(saved_synthetic, tmp_path, capsys):
    run = tmp_path / "l1"
    assert main(["train", "--cohort", str(saved_synthetic), "--loss", "l1", "--out", str(run),
                 "--epochs", "1", "--batch-size", "8", "--split", "train", "--no-progress",
                 "--device", "cpu"]) == 0
    config = json.loads((run / "config.json").read_text())
    cohort = Cohort.load(saved_synthetic)
    train_ages = cohort.table.loc[cohort.table["split"] == "train", "age"]
    assert config["model"]["kind"] == "regression"
    assert config["model"]["target_mean"] == pytest.approx(train_ages.mean(), rel=1e-6)
    assert config["data"]["n_train"] == len(train_ages) and config["training"]["n_views"] == 1
    capsys.readouterr()
    assert main(["train", "--cohort", str(saved_synthetic), "--loss", "l1", "--out",
                 str(tmp_path / "x"), "--split", "nope"]) == 2
    assert "no rows" in capsys.readouterr().err


# --------------------------------------------------------------------------- reliability
@pytest.fixture(scope="module")
def trained_run(saved_synthetic, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "exp"
    assert main(["train", "--cohort", str(saved_synthetic), "--loss", "exp", "--out", str(run),
                 "--epochs", "1", "--batch-size", "8", "--device", "cpu",
                 "--no-progress"]) == 0
    return run


def _copy_run(run, tmp_path):
    import shutil

    return shutil.copytree(run, tmp_path / "run")


@pytest.mark.parametrize("argv, expected", [
    (["train", "--cohort", "{tmp}/nowhere", "--loss", "exp", "--out", "{tmp}/r"],
     "nowhere/cohort.json not found"),
    (["train", "--cohort", "{cohort}", "--loss", "exp", "--out", "{tmp}/r", "--epochs", "0"],
     "epochs must be an integer >= 1, got 0"),
    (["train", "--cohort", "{cohort}", "--loss", "exp", "--out", "{tmp}/r", "--lr", "nan"],
     "lr must be a finite number > 0"),
    (["train", "--cohort", "{cohort}", "--loss", "exp", "--out", "{run}", "--resume",
      "--epochs", "2", "--batch-size", "4"], "training.batch_size: saved 8, now 4"),
    (["train", "--cohort", "{cohort}", "--loss", "exp", "--out", "{cohort}"],
     "holds a saved cohort"),
    (["embed", "--run", "{tmp}/nowhere", "--cohort", "{cohort}", "--out", "{tmp}/z.npy"],
     "nowhere/config.json not found"),
    (["embed", "--run", "{run}", "--cohort", "{cohort}", "--out", "{cohort}/images.npy"],
     "would replace a file of the cohort or run"),
])
def test_user_mistakes_are_one_line_and_exit_2(argv, expected, trained_run, saved_synthetic,
                                               tmp_path, capsys):
    run = _copy_run(trained_run, tmp_path)
    before = (saved_synthetic / "images.npy").stat().st_mtime_ns
    argv = [a.format(tmp=tmp_path, cohort=saved_synthetic, run=run) for a in argv]
    assert main([*argv, "--no-progress"] if argv[0] == "train" else argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"brainkit {argv[0]}: error: ") and expected in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert (saved_synthetic / "images.npy").stat().st_mtime_ns == before


def test_debug_shows_the_traceback_of_a_user_mistake(tmp_path, monkeypatch):
    argv = ["train", "--cohort", str(tmp_path / "nowhere"), "--loss", "exp", "--out",
            str(tmp_path / "r")]
    with pytest.raises(FileNotFoundError, match="cohort.json not found"):
        main([*argv, "--debug"])
    monkeypatch.setenv("BRAINKIT_DEBUG", "1")
    with pytest.raises(FileNotFoundError):
        main(argv)


def test_embed_refuses_a_checkpoint_with_nonfinite_weights(trained_run, saved_synthetic,
                                                           tmp_path, capsys):
    from brainkit.train import atomic_save, load_checkpoint

    run = _copy_run(trained_run, tmp_path)
    ckpt = load_checkpoint(run)
    for name in list(ckpt["model"])[:3]:
        if ckpt["model"][name].is_floating_point():
            ckpt["model"][name] = ckpt["model"][name] * float("nan")
    atomic_save(ckpt, run / "checkpoint.pt")
    out = tmp_path / "z.parquet"
    assert main(["embed", "--run", str(run), "--cohort", str(saved_synthetic), "--out",
                 str(out)]) == 2
    assert "weight tensor(s) hold NaN or inf" in capsys.readouterr().err
    assert not out.exists(), "no NaN rows written"


def test_embed_refuses_a_cohort_on_another_grid(trained_run, saved_toy, tmp_path, capsys):
    out = tmp_path / "z.npy"
    assert main(["embed", "--run", str(trained_run), "--cohort", str(saved_toy), "--out",
                 str(out)]) == 2
    err = capsys.readouterr().err
    assert "trained on images of grid 31x37x31 but the cohort's grid is 16x16x16" in err
    assert not out.exists()


def _poison(cohort_dir, tmp_path, value=np.nan):
    """A copy of a saved cohort with ``value`` written into image 2 (times kept)."""
    import os
    import shutil

    d = shutil.copytree(cohort_dir, tmp_path / "poisoned")
    st = os.stat(d / "images.npy")
    arr = np.load(d / "images.npy", mmap_mode="r+")
    arr[2, 10, 10, 10] = value
    arr.flush()
    del arr
    os.utime(d / "images.npy", ns=(st.st_atime_ns, st.st_mtime_ns))
    return d


def test_embed_refuses_images_holding_nan(trained_run, saved_synthetic, tmp_path, capsys):
    d = _poison(saved_synthetic, tmp_path)
    out = tmp_path / "z.parquet"
    assert main(["embed", "--run", str(trained_run), "--cohort", str(d), "--out",
                 str(out)]) == 2
    cohort = Cohort.load(d)
    err = capsys.readouterr().err
    assert f"images ['{cohort.table['image_id'][2]}'] hold NaN or inf voxels" in err
    assert not out.exists()


def test_train_l1_refuses_a_cohort_holding_inf(saved_synthetic, tmp_path, capsys):
    d = _poison(saved_synthetic, tmp_path, np.inf)
    assert main(["train", "--cohort", str(d), "--loss", "l1", "--out", str(tmp_path / "r"),
                 "--epochs", "1", "--batch-size", "8", "--no-progress", "--device",
                 "cpu"]) == 2
    err = capsys.readouterr().err
    assert "row 2 (" in err and "volume contains NaN or inf" in err
    assert not (tmp_path / "r").exists()
