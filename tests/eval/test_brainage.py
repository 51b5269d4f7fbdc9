"""From a BIDS folder to predictions: calibration saved with the run, applied by predict."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from brainkit.cli import main
from brainkit.data import calibration_split, make_merged, write_bids
from brainkit.eval import AgeBiasCorrector, BrainAgeModel, ConformalInterval, CovariateCorrector
from brainkit.eval.brainage import PREDICTION_COLUMNS
from brainkit.errors import InputError


# ------------------------------------------------------------------ the corrections
def _controls(n=400, seed=0):
    rng = np.random.default_rng(seed)
    age = rng.uniform(20, 85, n)
    table = pd.DataFrame({"sex": rng.choice(["M", "F"], n),
                          "site": rng.choice(["a", "b", "c"], n),
                          "tiv": rng.normal(1500, 120, n)})
    return age, table, rng


def test_the_age_only_covariate_correction_is_beheshti():
    age, table, rng = _controls()
    pred = 0.7 * age + 14 + rng.normal(0, 4, age.size)
    cov = CovariateCorrector(("age",)).fit(age, pred, table)
    beh = AgeBiasCorrector("beheshti").fit(age, pred)
    np.testing.assert_allclose(cov.correct(age, pred, table), beh.correct(age, pred),
                               atol=1e-9)


def test_the_covariate_correction_removes_planted_sex_site_and_tiv_effects():
    age, table, rng = _controls(2000)
    site_effect = table["site"].map({"a": -2.0, "b": 0.5, "c": 1.5}).to_numpy()
    tiv_z = (table["tiv"] - 1500) / 120
    gap = (-0.3 * (age - 50) + 0.004 * (age - 50) ** 2 + 1.5 * (table["sex"] == "F")
           + site_effect + 0.8 * tiv_z + rng.normal(0, 2, age.size))
    pred = age + gap
    terms = ("age", "age2", "sex", "site", "tiv")
    cov = CovariateCorrector(terms).fit(age, pred, table)
    assert cov.coef_["sex[F]"] == pytest.approx(1.5, abs=0.25)
    assert cov.coef_["tiv"] * 1.0 == pytest.approx(0.8, abs=0.2)
    corrected = cov.correct(age, pred, table) - age
    for column in (age, (table["sex"] == "F").astype(float), site_effect, tiv_z):
        assert abs(np.corrcoef(column, corrected)[0, 1]) < 0.01
    # a site never seen gets the average site (sum-to-zero coding): no offset
    new = table.iloc[:3].assign(site="zz")
    ref = cov.adjustment(age[:3], new)
    mean_site = cov.adjustment(age[:3], table.iloc[:3].assign(site="a")) \
        + cov.adjustment(age[:3], table.iloc[:3].assign(site="b")) \
        + cov.adjustment(age[:3], table.iloc[:3].assign(site="c"))
    np.testing.assert_allclose(ref, mean_site / 3, atol=1e-9)
    again = CovariateCorrector.from_dict(json.loads(json.dumps(cov.to_dict())))
    np.testing.assert_allclose(again.correct(age, pred, table), cov.correct(age, pred, table))


def test_the_covariate_correction_refuses_what_it_cannot_fit():
    age, table, rng = _controls(50)
    pred = age + rng.normal(0, 3, age.size)
    with pytest.raises(ValueError, match="collinear"):
        CovariateCorrector(("sex",)).fit(age, pred, table.assign(sex="F"))
    with pytest.raises(ValueError, match="needs a 'tiv' column"):
        CovariateCorrector(("tiv",)).fit(age, pred, table.drop(columns="tiv"))
    with pytest.raises(ValueError, match="terms must be"):
        CovariateCorrector(("height",)).fit(age, pred, table)


def test_saved_corrections_and_intervals_read_back_identical():
    age, _, rng = _controls(300)
    pred = 0.8 * age + 10 + rng.normal(0, 5, age.size)
    for method in ("beheshti", "cole"):
        c = AgeBiasCorrector(method).fit(age, pred)
        back = AgeBiasCorrector.from_dict(json.loads(json.dumps(c.to_dict())))
        np.testing.assert_array_equal(back.correct(age, pred), c.correct(age, pred))
    for method in ("absolute", "binned"):
        ci = ConformalInterval(0.9, method=method, min_bin_size=60).fit(age, pred)
        back = ConformalInterval.from_dict(json.loads(json.dumps(ci.to_dict())))
        for a, b in zip(back.interval(pred), ci.interval(pred)):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(np.atleast_1d(back.width_), np.atleast_1d(ci.width_))


def test_the_calibration_split_holds_out_whole_always_healthy_subjects():
    cohort = make_merged({"adni": 40, "openbhb": 30}, grid_mm=6, seed=2)
    table = cohort.table
    train, held = calibration_split(table, 0.25, seed=3)
    assert np.intersect1d(train, held).size == 0
    assert len(train) + len(held) == len(table)
    assert not set(table["subject_id"][train]) & set(table["subject_id"][held])
    healthy = table.groupby("subject_id")["diagnosis"].agg(lambda d: (d == "HC").all())
    assert healthy.loc[table["subject_id"][held]].all()
    n_hc = healthy.loc[table["subject_id"]].sum()
    assert abs(len(held) - 0.25 * n_hc) <= table.groupby("subject_id").size().max()
    again = calibration_split(table, 0.25, seed=3)
    np.testing.assert_array_equal(again[1], held)
    with pytest.raises(InputError, match="fraction must be in"):
        calibration_split(table, 1.0)


# ------------------------------------------------------------------ the user's path
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A BIDS tree (two-plus sessions for the ADNI-like subjects), imported, trained with a
    held-out calibration set by the CLI; and a second BIDS tree of new scans."""
    root = tmp_path_factory.mktemp("bids_path")
    cohort = make_merged({"openbhb": 320, "adni": 30}, grid_mm=6, seed=11)
    write_bids(cohort, root / "bids")
    new = make_merged({"openbhb": 200, "adni": 20}, grid_mm=6, seed=12)
    write_bids(new, root / "new")
    assert main(["cohort", "import", "--bids", str(root / "bids"), "--out",
                 str(root / "cohort"), "--no-progress"]) == 0
    assert main(["train", "--cohort", str(root / "cohort"), "--loss", "l1", "--out",
                 str(root / "run"), "--epochs", "6", "--hold-out", "0.3", "--coverage", "0.8",
                 "--no-progress", "--device", "cpu"]) == 0
    return root, new


def test_predict_writes_every_column_and_intervals_cover_new_controls(trained, capsys):
    root, new = trained
    capsys.readouterr()
    assert main(["predict", "--run", str(root / "run"), "--bids", str(root / "new"), "--out",
                 str(root / "pred.tsv"), "--no-progress", "--device", "cpu"]) == 0
    assert "predicted" in capsys.readouterr().out
    frame = pd.read_csv(root / "pred.tsv", sep="\t", na_values="n/a",
                        dtype={"session_id": str})
    assert list(frame.columns[:len(PREDICTION_COLUMNS)]) == list(PREDICTION_COLUMNS)
    assert len(frame) == len(new)
    assert frame[["predicted_age", "bag", "bag_corrected", "interval_low",
                  "interval_high"]].notna().all().all()
    assert (frame["interval_low"] < frame["interval_high"]).all()
    assert set(frame["session_id"].dropna()) >= {"ses-1", "ses-2"}
    hc = frame[frame["diagnosis"] == "HC"]
    covered = ((hc["interval_low"] <= hc["age"]) & (hc["age"] <= hc["interval_high"])).mean()
    assert abs(covered - 0.8) < 0.1, f"80% intervals cover {covered:.0%} of new controls"


def test_bag_corrected_applies_the_run_s_stored_correction(trained):
    root, _ = trained
    saved = json.loads((root / "run" / "brainage.json").read_text())
    line = saved["corrections"]["beheshti"]
    assert saved["correction"] == "beheshti" and line["n_samples"] == \
        saved["calibration"]["n_images"]
    cohort_ids = set(pd.read_parquet(root / "cohort" / "table.parquet")["image_id"])
    assert set(saved["calibration"]["image_ids"]) <= cohort_ids
    out = root / "deriv"
    assert main(["predict", "--run", str(root / "run"), "--bids", str(root / "new"), "--out",
                 str(out), "--no-progress", "--device", "cpu"]) == 0
    frame = pd.read_csv(out / "brainage.tsv", sep="\t", na_values="n/a")
    want = frame["bag"] - (line["slope"] * frame["age"] + line["intercept"])
    np.testing.assert_allclose(frame["bag_corrected"], want, atol=2e-3)
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert description["GeneratedBy"][0]["Name"] == "brainkit"
    assert description["BrainkitRun"]["correction"] == line
    assert description["BrainkitRun"]["config_hash"] == saved["calibration"]["config_hash"]
    # another correction on request: Cole's inverts the prediction line
    assert main(["predict", "--run", str(root / "run"), "--bids", str(root / "new"), "--out",
                 str(root / "cole.tsv"), "--correction", "cole", "--no-progress"]) == 0
    cole = pd.read_csv(root / "cole.tsv", sep="\t", na_values="n/a")
    c = saved["corrections"]["cole"]
    np.testing.assert_allclose(cole["bag_corrected"],
                               (cole["predicted_age"] - c["intercept"]) / c["slope"]
                               - cole["age"], atol=2e-3)


def test_predict_on_a_saved_cohort_matches_the_bids_path_and_refuses_another_grid(
        trained, tmp_path, capsys):
    from brainkit.data import Cohort, import_bids

    root, _ = trained
    model = BrainAgeModel.load(root / "run", device="cpu")
    cohort = import_bids(root / "new", tmp_path / "new", progress=False)
    from_cohort = model.predict(cohort)
    from_bids = model.predict_bids(root / "new", progress=False)
    pd.testing.assert_frame_equal(from_cohort.drop(columns="qc"),
                                  from_bids.drop(columns="qc"), atol=1e-4)
    other = make_merged({"openbhb": 3}, grid_mm=3, seed=0)
    other.save(tmp_path / "fine")
    capsys.readouterr()
    assert main(["predict", "--run", str(root / "run"), "--cohort", str(tmp_path / "fine"),
                 "--out", str(tmp_path / "x.tsv")]) == 2
    err = capsys.readouterr().err
    assert "error: the model was trained on images of grid 31x37x31" in err
    assert "Traceback" not in err and not (tmp_path / "x.tsv").exists()
    assert isinstance(Cohort.load(tmp_path / "fine"), Cohort)


def test_predict_without_ages_and_qc_flags(trained, tmp_path):
    root, _ = trained
    tree = tmp_path / "noage"
    write_bids(make_merged({"openbhb": 4}, grid_mm=6, seed=5), tree)
    participants = pd.read_csv(tree / "participants.tsv", sep="\t")
    participants.drop(columns="age").to_csv(tree / "participants.tsv", sep="\t", index=False)
    model = BrainAgeModel.load(root / "run", device="cpu")
    frame = model.predict_bids(tree, progress=False)
    assert frame["age"].isna().all() and frame["bag"].isna().all()
    assert frame["predicted_age"].notna().all() and (frame["qc"] == "no-age").all()
    # an image of another contrast (inverted intensities) is flagged atypical
    import nibabel as nib

    path = sorted(tree.glob("sub-*/anat/*_T1w.nii.gz"))[0]
    img = nib.load(path)
    data = np.asarray(img.dataobj, dtype=np.float32)
    nib.save(nib.Nifti1Image(data.max() - data, img.affine), path)
    flagged = model.predict_bids(tree, progress=False)
    assert "atypical-image" in flagged["qc"].iloc[0]
    assert not flagged["qc"].iloc[1:].str.contains("atypical").any()


def test_calibrate_refuses_training_images_and_patients(trained):
    from brainkit.data import Cohort

    root, _ = trained
    cohort = Cohort.load(root / "cohort")
    with pytest.raises(InputError, match="not healthy controls"):
        BrainAgeModel.calibrate(root / "run", cohort,
                                np.flatnonzero(cohort.table["diagnosis"] != "HC")[:30])
    table = cohort.table
    train, held = calibration_split(table, 0.3, seed=0)
    with pytest.raises(InputError, match="shares .* row"):
        seen = train[table["diagnosis"].to_numpy()[train] == "HC"][:1]
        BrainAgeModel.calibrate(root / "run", cohort, np.r_[held, seen],
                                train=train, device="cpu")
    with pytest.raises(InputError, match="not the rows"):
        BrainAgeModel.calibrate(root / "run", cohort, held, train=train[1:], device="cpu")


def test_a_contrastive_run_is_calibrated_with_a_ridge_readout(tmp_path):
    from brainkit.data import Cohort
    from brainkit.experiments.profiles import get_profile
    from brainkit.train import train_run

    cohort = make_merged({"openbhb": 150}, grid_mm=6, seed=21)
    cohort.save(tmp_path / "c")
    cohort = Cohort.load(tmp_path / "c")
    train, held = calibration_split(cohort.table, 0.3, seed=0)
    ages = cohort.table["age"].to_numpy()[train]
    config = get_profile("ci").train_config("exp", ages=ages, seed=0).replace(
        epochs=2, warmup_epochs=1)
    train_run(cohort, config, out_dir=tmp_path / "run", indices=train, device="cpu",
              progress=False)
    with pytest.raises(InputError, match="training rows; pass them"):
        BrainAgeModel.calibrate(tmp_path / "run", cohort, held, device="cpu")
    model = BrainAgeModel.calibrate(tmp_path / "run", cohort, held, train=train,
                                    device="cpu")
    assert model.readout["kind"] == "ridge" and len(model.readout["coef"]) > 8
    again = BrainAgeModel.load(tmp_path / "run", device="cpu")
    np.testing.assert_allclose(again.predict(cohort, held)["predicted_age"],
                               model.predict(cohort, held)["predicted_age"], atol=1e-6)
