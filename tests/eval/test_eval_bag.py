"""Brain-age gap: planted regression-to-the-mean bias, planted group effects, ROC vs theory."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from brainkit.eval import AgeBiasCorrector, bag_roc, bag_summary, brain_age_gap


def biased_predictions(rng, n, *, slope=0.7, centre=45.0, gap=0.0, noise=3.0):
    """Predictions shrunk towards ``centre`` (slope < 1), plus a planted true gap."""
    age = rng.uniform(20, 85, n)
    pred = centre + slope * (age - centre) + gap + rng.normal(0, noise, n)
    return age, pred


def test_brain_age_gap_sign_and_validation():
    np.testing.assert_array_equal(brain_age_gap([70, 60], [75, 58]), [5.0, -2.0])
    with pytest.raises(ValueError, match="same number of samples"):
        brain_age_gap([1, 2], [1])


@pytest.mark.parametrize("method, expected_slope", [("beheshti", 0.7 - 1.0), ("cole", 0.7)])
def test_corrector_recovers_planted_slope(rng, method, expected_slope):
    age, pred = biased_predictions(rng, 3000)
    corr = AgeBiasCorrector(method).fit(age, pred)
    assert corr.slope_ == pytest.approx(expected_slope, abs=0.02)
    assert corr.n_samples_ == 3000
    # Intercepts from the planted line: gap = -0.3 age + 13.5; pred = 0.7 age + 13.5.
    assert corr.intercept_ == pytest.approx(13.5, abs=1.0)


@pytest.mark.parametrize("method", ["beheshti", "cole"])
def test_correction_on_held_out_healthy_and_planted_disease(rng, method):
    age_fit, pred_fit = biased_predictions(rng, 1500)      # healthy, held-out predictions
    age_hc, pred_hc = biased_predictions(rng, 1500)        # other healthy test images
    age_ad, pred_ad = biased_predictions(rng, 1500, gap=4.0)  # patients: +4 years planted
    corr = AgeBiasCorrector(method).fit(age_fit, pred_fit)
    raw = brain_age_gap(age_hc, pred_hc)
    fixed_hc = brain_age_gap(age_hc, corr.correct(age_hc, pred_hc))
    fixed_ad = brain_age_gap(age_ad, corr.correct(age_ad, pred_ad))
    assert stats.pearsonr(age_hc, raw)[0] < -0.7       # the bias is there before
    assert abs(stats.pearsonr(age_hc, fixed_hc)[0]) < 0.06
    assert abs(fixed_hc.mean()) < 0.3
    # The disease effect survives: Beheshti keeps 4 years; Cole rescales it by 1 / slope.
    expected = 4.0 if method == "beheshti" else 4.0 / 0.7
    assert fixed_ad.mean() - fixed_hc.mean() == pytest.approx(expected, abs=0.5)


def test_corrector_exact_inverse_and_errors():
    age = np.linspace(20, 80, 61)
    pred = 0.8 * age + 9.0
    np.testing.assert_allclose(AgeBiasCorrector("cole").fit(age, pred).correct(age, pred), age)
    np.testing.assert_allclose(AgeBiasCorrector().fit(age, pred).correct(age, pred), age)
    with pytest.raises(RuntimeError, match="not fitted"):
        AgeBiasCorrector().correct(age, pred)
    with pytest.raises(ValueError, match="method must be one of"):
        AgeBiasCorrector("mean").fit(age, pred)
    with pytest.raises(ValueError, match="age is constant"):
        AgeBiasCorrector().fit(np.full(5, 50.0), np.arange(5.0))
    with pytest.raises(ValueError, match="divide by"):
        AgeBiasCorrector("cole").fit(age, np.full(61, 50.0))


def test_bag_summary_against_numpy(rng):
    groups = rng.choice(["AD", "HC", "sMCI", "pMCI", "other"], 300)
    table = pd.DataFrame({"bag": rng.normal(0, 5, 300), "diagnosis": groups,
                          "loss": rng.choice(["exp", "l1"], 300)})
    out = bag_summary(table, ci=0.9)
    assert out["diagnosis"].tolist() == ["HC", "sMCI", "pMCI", "AD", "other"]
    for _, row in out.iterrows():
        v = table.loc[table["diagnosis"] == row["diagnosis"], "bag"].to_numpy()
        half = stats.t.ppf(0.95, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size)
        assert row["n"] == v.size
        assert row["mean"] == pytest.approx(v.mean())
        assert row["sd"] == pytest.approx(v.std(ddof=1))
        assert row["median"] == pytest.approx(np.median(v))
        assert row["ci_low"] == pytest.approx(v.mean() - half)
        assert row["ci_high"] == pytest.approx(v.mean() + half)
    two = bag_summary(table, group=["loss", "diagnosis"])
    assert len(two) == 10 and two["n"].sum() == 300
    assert two[["loss", "diagnosis"]].iloc[0].tolist() == ["exp", "HC"]


def test_bag_summary_single_member_and_errors():
    out = bag_summary(pd.DataFrame({"bag": [1.0], "diagnosis": ["AD"]}))
    assert out["n"].iloc[0] == 1 and np.isnan(out["sd"].iloc[0]) and np.isnan(out["ci_low"].iloc[0])
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['diagnosis'\]"):
        bag_summary(pd.DataFrame({"bag": [1.0]}))
    with pytest.raises(ValueError, match="must be numeric"):
        bag_summary(pd.DataFrame({"bag": ["x"], "diagnosis": ["AD"]}))


def test_bag_roc_planted_gap_matches_binormal_auc(rng):
    delta, sigma, n = 3.0, 4.0, 4000
    bag = np.r_[rng.normal(0, sigma, n), rng.normal(delta, sigma, n)]
    is_case = np.r_[np.zeros(n), np.ones(n)]
    roc = bag_roc(bag, is_case)
    assert roc.auc == pytest.approx(stats.norm.cdf(delta / (np.sqrt(2) * sigma)), abs=0.015)
    assert roc.fpr[0] == 0 and roc.tpr[-1] == 1 and np.all(np.diff(roc.fpr) >= 0)
    trapezoid = np.sum(np.diff(roc.fpr) * (roc.tpr[1:] + roc.tpr[:-1]) / 2)
    assert trapezoid == pytest.approx(roc.auc, abs=1e-9)


def test_bag_roc_equals_pairwise_count_with_ties():
    bag = np.array([0.0, 1.0, 1.0, 2.0, 1.0, 3.0, 0.5])
    case = np.array([0, 0, 1, 1, 0, 1, 1], dtype=bool)
    pos, neg = bag[case], bag[~case]
    naive = np.mean([(p > q) + 0.5 * (p == q) for p in pos for q in neg])
    assert bag_roc(bag, case).auc == pytest.approx(naive)
    with pytest.raises(ValueError, match="both cases"):
        bag_roc([1.0, 2.0], [1, 1])
    with pytest.raises(ValueError, match="only 0/1"):
        bag_roc([1.0, 2.0], [0, 2])


def test_crossfit_correction_never_uses_the_image_it_corrects(rng):
    from brainkit.eval import crossfit_correct

    age, pred = biased_predictions(rng, 400)
    folds = np.where(np.arange(400) < 300, np.arange(400) % 3, -1)
    corrected = crossfit_correct(age, pred, folds)
    for i in (0, 1, 2, 350):   # a healthy image of each fold, and a patient
        bumped = pred.copy()
        bumped[i] += 10.0
        again = crossfit_correct(age, bumped, folds)
        # Beheshti subtracts a line that did not see image i: only image i moves, by 10
        assert again[i] - corrected[i] == pytest.approx(10.0)
        others = np.delete(np.arange(400), i)
        moved = np.abs(again[others] - corrected[others]) > 1e-9
        assert not moved[folds[others] == folds[i]].any() or folds[i] == -1
    # on held-out data the corrected gap is about uncorrelated with age
    assert abs(stats.pearsonr(age[:300], corrected[:300] - age[:300])[0]) < 0.1


def test_crossfit_correction_recovers_a_planted_patient_gap(rng):
    from brainkit.eval import crossfit_correct

    age_hc, pred_hc = biased_predictions(rng, 600)
    age_ad, pred_ad = biased_predictions(rng, 300, gap=4.0)
    age = np.r_[age_hc, age_ad]
    pred = np.r_[pred_hc, pred_ad]
    folds = np.r_[np.arange(600) % 2, -np.ones(300, int)]
    gap = crossfit_correct(age, pred, folds) - age
    assert gap[:600].mean() == pytest.approx(0.0, abs=0.4)
    assert gap[600:].mean() == pytest.approx(4.0, abs=0.5)


def test_crossfit_correction_refuses_a_single_fold(rng):
    from brainkit.eval import crossfit_correct

    age, pred = biased_predictions(rng, 30)
    with pytest.raises(ValueError, match="single healthy fold"):
        crossfit_correct(age, pred, np.zeros(30, int))
    with pytest.raises(ValueError, match="folds must be integers"):
        crossfit_correct(age, pred, np.full(30, 0.5))


@pytest.mark.parametrize("spread", [0.0, 1e-9, 1e-5])
def test_bias_line_on_numerically_constant_ages_is_refused(rng, spread):
    # ages 1e-9 years apart once gave a slope of 1.5e9, silently
    age = 50.0 + spread * rng.normal(size=20)
    with pytest.raises(ValueError, match=r"age is constant to within .* years"):
        AgeBiasCorrector().fit(age, age + rng.normal(size=20))
    age = 50.0 + 0.01 * rng.normal(size=20)  # ages hours apart: a (noisy) line, not refused
    assert np.isfinite(AgeBiasCorrector().fit(age, age + rng.normal(size=20)).slope_)
