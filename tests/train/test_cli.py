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
    assert config["loss"]["kwargs"] == {"sigma": ci.sigma, "temperature": ci.temperature}
    assert config["training"]["lr"] == ci.lr and config["training"]["batch_size"] == 8

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
    assert list(table.columns) == ["image_id"] + [f"z{i}" for i in range(ci.head_dims[-1])]
    assert table["image_id"].tolist() == cohort.table["image_id"].tolist()
    np.testing.assert_allclose(table.iloc[:, 1:].to_numpy(), expected, rtol=1e-6)
    assert main(["embed", "--run", str(run), "--cohort", str(saved_synthetic), "--out",
                 str(tmp_path / "z.npy"), "--layer", "encoder"]) == 0
    assert np.load(tmp_path / "z.npy").shape == (24, ci.widths[-1])
    with pytest.raises(SystemExit, match=r"\.parquet or \.npy"):
        main(["embed", "--run", str(run), "--cohort", str(saved_synthetic), "--out",
              str(tmp_path / "z.csv")])


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
    with pytest.raises(SystemExit, match="no rows"):
        main(["train", "--cohort", str(saved_synthetic), "--loss", "l1", "--out",
              str(tmp_path / "x"), "--split", "nope"])
