"""The cross-validated brain-age pipeline: out-of-fold predictions, no leakage, caching."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from brainkit.data import check_no_leakage, make_cohort, make_merged
from brainkit.experiments import ResultsStore, config_key, get_profile
from brainkit.experiments.designs import cross_validate
from brainkit.experiments.pipeline import train_config

TINY = get_profile("ci").replace(epochs=1, widths=(4, 8, 16, 32), head_dims=(16, 8),
                                 batch_size=8)
FOLDS = 3


@pytest.fixture(scope="module")
def cohort():
    # 20 ADNI-like subjects: 14+ HC images (>= 10 training images per fold for the ridge probe)
    # plus sMCI / pMCI / AD images.
    return make_cohort("adni", n_subjects=20, grid_mm=6, seed=0)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return ResultsStore(tmp_path_factory.mktemp("pipeline-store"))


@pytest.mark.parametrize("loss", ["exp", "l1", "ridge"])
def test_cross_validate_predicts_every_image_out_of_fold(cohort, store, loss, one_thread):
    table = cohort.table
    before = store.computed
    out = cross_validate(cohort, loss, folds=FOLDS, profile=TINY, store=store, seed=0)
    assert store.computed == before + FOLDS, "one training run per fold"

    for column in ("age_pred", "fold", "bag", "bag_corrected", "loss"):
        assert column in out
    assert list(out["image_id"]) == list(table["image_id"])
    assert np.isfinite(out["age_pred"]).all() and np.isfinite(out["bag_corrected"]).all()
    np.testing.assert_allclose(out["bag"], out["age_pred"] - out["age"])

    hc = (table["diagnosis"] == "HC").to_numpy()
    assert (~hc).any(), "the cohort must hold patients for the non-HC branch to be tested"
    fold = out["fold"].to_numpy()
    assert set(fold[hc]) == set(range(FOLDS)), "every fold tests some healthy images"
    assert (fold[~hc] == -1).all()
    assert out[hc].groupby("subject_id")["fold"].nunique().max() == 1, "folds are subject-level"

    age, pred = out["age"].to_numpy(), out["age_pred"].to_numpy()
    for k in range(FOLDS):
        test = np.flatnonzero(fold == k)
        train = np.flatnonzero(hc & (fold != k))
        check_no_leakage(table, train, test)
        # The model that predicted fold k was trained on exactly the other folds' HC images.
        key = config_key(train_config(cohort, loss, train, profile=TINY, seed=0))
        assert store.exists(key), f"fold {k}: no run trained on the other folds' images"
        if loss == "l1":  # the regression head's predictions are stored with the run
            stored = store.load(key).table("age_pred").set_index("image_id")["age_pred"]
            np.testing.assert_allclose(pred[test], stored.loc[table["image_id"].iloc[test]],
                                       rtol=1e-6)
        # Bias correction of fold k: a line fitted on the other folds' out-of-fold HC
        # predictions only (Beheshti: gap = slope * age + intercept, subtracted).
        slope, intercept = np.polyfit(age[train], pred[train] - age[train], 1)
        np.testing.assert_allclose(out["bag_corrected"].to_numpy()[test],
                                   pred[test] - (slope * age[test] + intercept) - age[test],
                                   rtol=1e-6, atol=1e-6)
    slope, intercept = np.polyfit(age[hc], pred[hc] - age[hc], 1)
    np.testing.assert_allclose(out["bag_corrected"].to_numpy()[~hc],
                               pred[~hc] - (slope * age[~hc] + intercept) - age[~hc],
                               rtol=1e-6, atol=1e-6)

    again = cross_validate(cohort, loss, folds=FOLDS, profile=TINY, store=store, seed=0)
    assert store.computed == before + FOLDS, "the second call loads every run from the store"
    pd.testing.assert_frame_equal(again, out)


def test_cross_validate_folds_depend_on_the_seed_and_stay_leak_free(cohort, store, one_thread):
    a = cross_validate(cohort, "l1", folds=FOLDS, profile=TINY, store=store, seed=0)
    b = cross_validate(cohort, "l1", folds=FOLDS, profile=TINY, store=store, seed=1)
    hc = (cohort.table["diagnosis"] == "HC").to_numpy()
    assert not np.array_equal(a["fold"].to_numpy()[hc], b["fold"].to_numpy()[hc])
    for k in range(FOLDS):
        test = np.flatnonzero(b["fold"].to_numpy() == k)
        check_no_leakage(cohort.table, np.flatnonzero(hc & (b["fold"].to_numpy() != k)), test)


@pytest.mark.slow
def test_cross_validate_learns_age_and_the_planted_ad_gap(tmp_path, one_thread):
    """The ci profile (narrow ResNet, BN recalibration) with the L1 regression baseline.

    The synthetic cohort plants an accelerated atrophy in AD; out-of-fold MAE must beat the
    predict-the-mean baseline by far and the corrected gap must be larger for AD than HC.
    (ci at 20 epochs, seeds 0-2: MAE 6.2-9.0 years vs a 21-22 year baseline, mean corrected
    AD gap 9.6-18.7 vs HC 0.0; about 25 s on one thread. exp needs about 2 min, hence L1.)
    """
    cohort = make_merged({"openbhb": 160, "adni": 40}, grid_mm=6, seed=0)
    store = ResultsStore(tmp_path)
    out = cross_validate(cohort, "l1", profile="ci", store=store, seed=0)
    hc = out[out["diagnosis"] == "HC"]
    mae = float(np.abs(hc["age_pred"] - hc["age"]).mean())
    baseline = float(np.abs(hc["age"] - hc["age"].mean()).mean())
    assert mae < 0.5 * baseline, (mae, baseline)
    gap = out.groupby("diagnosis")["bag_corrected"].mean()
    assert gap["AD"] > gap["HC"] + 5.0, gap.to_dict()


def test_voxel_ridge_runs_are_stored_like_a_loss_and_ignore_the_seed(cohort, tmp_path):
    from brainkit.eval import VoxelRidge
    from brainkit.experiments import train_encoder
    from brainkit.experiments.pipeline import run_embeddings, run_predictions

    store = ResultsStore(tmp_path)
    hc = np.flatnonzero(cohort.table["diagnosis"].to_numpy() == "HC")
    run = train_encoder(cohort, "ridge", hc, store=store, seed=0)
    again = train_encoder(cohort, "ridge", hc, store=store, seed=5, profile="smoke")
    assert run.key == again.key and store.computed == 1
    table = cohort.table
    direct = VoxelRidge().fit(cohort.images(hc), table["age"].to_numpy()[hc],
                              groups=table["subject_id"].to_numpy()[hc])
    np.testing.assert_allclose(run_predictions(run, cohort, hc), direct.predict(cohort.images()),
                               rtol=1e-6)
    z = run_embeddings(run, cohort)
    assert z.shape == (len(cohort), min(64, len(hc) - 1)) and np.isfinite(z).all()


@pytest.mark.slow
def test_ci_exp_beats_the_voxel_ridge_on_a_cohort_it_was_not_tuned_on(tmp_path):
    """The ci recipe was chosen on the default cohort (generator seed 0); on another draw of
    the generator (seed 7, other sizes) the exp model pre-trained on the merged healthy pool
    must still predict held-out healthy ages better than a voxel ridge on the same images.

    Measured on the default cohort (3 seeds): exp 5.0-5.4 years against the ridge's 7.2.
    """
    from brainkit.experiments import pretraining_split, train_encoder
    from brainkit.experiments.pipeline import run_predictions

    profile = get_profile("ci")
    cohort = make_merged({"openbhb": 700, "adni": 120, "icbm": 70, "oasis3": 200}, grid_mm=6,
                         seed=7)
    split = pretraining_split(cohort, pool_sizes=profile.pool_sizes)
    test = np.concatenate(list(split.tests.values()))
    age = cohort.table["age"].to_numpy(float)
    store = ResultsStore(tmp_path)
    mae = {}
    for loss in ("ridge", "exp"):
        run = train_encoder(cohort, loss, split.merged, profile=profile, seed=0, store=store)
        pred = run_predictions(run, cohort, split.merged)
        mae[loss] = float(np.abs(pred[test] - age[test]).mean())
    assert len(test) > 600
    assert mae["exp"] < mae["ridge"] - 0.5, mae


@pytest.mark.parametrize("loss", ["exp", "l1"])
def test_brainkit_train_and_the_book_train_the_same_run(tmp_path, loss, one_thread):
    """`brainkit train --profile smoke` on a saved cohort and the experiments API on the same
    images and seed: the same TrainConfig, bit-identical final weights (batch norm
    recalibrated in both)."""
    import json

    import torch

    from brainkit.cli import main
    from brainkit.data import Cohort
    from brainkit.experiments import train_encoder
    from brainkit.train import TrainConfig, load_model

    cohort = Cohort.load(make_merged({"openbhb": 40}, grid_mm=6, seed=3).save(tmp_path / "c"))
    out = tmp_path / "cli"
    assert main(["train", "--cohort", str(tmp_path / "c"), "--loss", loss, "--out", str(out),
                 "--profile", "smoke", "--seed", "2", "--device", "cpu", "--no-progress"]) == 0
    run = train_encoder(cohort, loss, np.arange(len(cohort)), profile="smoke", seed=2,
                        store=ResultsStore(tmp_path / "store"), device="cpu")
    cli_config = json.loads((out / "config.json").read_text())["train"]
    # with input_box "brain" in the key, both run folders would hold the box on this grid
    key_config = TrainConfig.from_dict(run.config["config"])
    assert cli_config == key_config.for_grid(cohort.grid_shape, cohort.affine).to_dict()
    a, b = load_model(out).state_dict(), load_model(run.file("model")).state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_a_profile_that_crops_to_the_brain_saves_the_box_with_the_model(tmp_path, one_thread):
    """``input_box="brain"`` becomes the 6 mm brain box, widened to keep the whole image's
    last feature map, in the run's store key and when the run starts; the saved model crops
    alike, and a resumed run finds the same settings."""
    from brainkit.experiments.pipeline import train_config
    from brainkit.train import embed, load_model, read_run_config, train_run

    profile = TINY.replace(epochs=1, input_box="brain")
    cohort = make_merged({"openbhb": 20}, grid_mm=6, seed=5)
    config = profile.train_config("exp", ages=cohort.table["age"], seed=0)
    assert config.model["input_box"] == "brain"
    with pytest.raises(ValueError, match="resolve it on the images' grid"):
        config.build_model()
    box = ((2, 29), (2, 35), (0, 27))
    assert profile.model_config("contrastive", grid=(cohort.grid_shape, cohort.affine))[
        "input_box"] == box
    key = train_config(cohort, "exp", np.arange(len(cohort)), profile=profile, seed=0)
    assert key["config"]["model"]["input_box"] == [list(p) for p in box]
    result = train_run(cohort, config, out_dir=tmp_path / "run", device="cpu")
    assert result.model.encoder.input_box == box
    saved = read_run_config(tmp_path / "run")
    assert saved["model"]["input_box"] == [list(p) for p in box]
    assert saved["train"]["model"]["input_box"] == [list(p) for p in box]
    loaded = load_model(tmp_path / "run", device="cpu")
    assert loaded.encoder.input_box == box
    np.testing.assert_allclose(embed(loaded, cohort), embed(result.model, cohort), rtol=1e-5,
                               atol=1e-6)
    again = train_run(cohort, config, out_dir=tmp_path / "run", device="cpu", resume=True)
    assert again.epochs_completed == 1
    with pytest.raises(ValueError, match="input_box"):
        profile.replace(input_box="ventricles")
