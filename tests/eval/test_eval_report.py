"""The evaluation report: its intervals cover planted truths, its strata recover planted
per-site and per-age errors, its sections appear or are left out as the columns say."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import brainkit.eval.report as report_module
from brainkit.errors import InputError
from brainkit.eval import challenge_score, evaluation_report

HALF_NORMAL = math.sqrt(2 / math.pi)   # E|e| = sd * sqrt(2 / pi) for normal errors


def subjects_table(rng, n_subjects, *, images=2, sd=4.0, subject_sd=0.0, sites=None,
                   site_sd=None):
    """``images`` images per subject; error = subject effect + image noise, both normal."""
    subject = np.repeat(np.arange(n_subjects), images)
    site = None if sites is None else np.repeat(rng.choice(sites, n_subjects), images)
    noise_sd = sd if site_sd is None else np.array([site_sd[s] for s in site])
    error = np.repeat(rng.normal(0, subject_sd, n_subjects), images) + \
        rng.normal(0, 1, subject.size) * noise_sd
    age = np.repeat(rng.uniform(20, 80, n_subjects), images)
    table = pd.DataFrame({"participant_id": subject.astype(str), "age": age,
                          "predicted_age": age + error})
    if site is not None:
        table["site"] = site
    return table


def test_mae_interval_covers_the_true_mae_at_about_the_nominal_rate():
    rng = np.random.default_rng(0)
    sd_subject, sd_image = 3.0, 2.0          # correlated errors within a subject
    true_mae = math.sqrt(sd_subject ** 2 + sd_image ** 2) * HALF_NORMAL
    hits, reps = 0, 150
    for seed in range(reps):
        table = subjects_table(rng, 60, sd=sd_image, subject_sd=sd_subject)
        est = evaluation_report(table, n_boot=200, age_bands=1000,
                                random_state=seed).headline("uncorrected", "mae")
        assert est.n == 120 and est.n_groups == 60
        hits += est.low <= true_mae <= est.high
    assert 0.88 <= hits / reps <= 0.99, hits / reps


def test_mae_interval_narrows_with_more_subjects_and_resamples_subjects():
    rng = np.random.default_rng(1)
    small = subjects_table(rng, 100, sd=2.0, subject_sd=3.0)
    large = subjects_table(rng, 400, sd=2.0, subject_sd=3.0)

    def width(table, **kw):
        est = evaluation_report(table, n_boot=400, age_bands=1000, **kw).headline()
        return est.high - est.low

    ratio = width(large) / width(small)
    assert 0.35 < ratio < 0.7, ratio            # sqrt(100 / 400) = 0.5
    # a subject's images share their error: resampling images would be too narrow
    as_images = large.assign(image_id=np.arange(len(large)).astype(str))
    assert width(as_images, subject="image_id") < 0.9 * width(large)


def test_by_site_and_leave_one_site_out_recover_planted_site_errors():
    rng = np.random.default_rng(2)
    planted = {"quiet": 2.0, "usual": 4.0, "noisy": 8.0}
    table = subjects_table(rng, 900, images=1, sites=list(planted), site_sd=planted)
    report = evaluation_report(table, n_boot=300)
    by_site = report.by_site.set_index("site")
    for site, sd in planted.items():
        row = by_site.loc[site]
        assert row.low <= sd * HALF_NORMAL <= row.high, (site, row.mae, sd * HALF_NORMAL)
        assert row.mae == pytest.approx(sd * HALF_NORMAL, rel=0.12)
        assert row.n_images == (table.site == site).sum()
    loso = report.leave_one_site_out.set_index("site")
    assert loso.loc["noisy", "low"] > 0 and loso.loc["noisy", "change"] < 0
    assert loso.loc["quiet", "high"] < 0 and loso.loc["quiet", "change"] > 0
    overall = report.headline().value
    for site, row in loso.iterrows():
        others = table.site != site
        assert row.mae_without_site == pytest.approx(
            np.mean(np.abs(table.predicted_age - table.age)[others]))
        assert row.change == pytest.approx(row.mae_without_site - overall)
        assert row.difference == pytest.approx(row.mae_site - row.mae_without_site)


def test_by_age_band_recovers_planted_band_errors_and_takes_edges():
    rng = np.random.default_rng(3)
    age = rng.uniform(20, 80, 3000)
    sd = 1.0 + np.floor((age - 20) / 20)                  # 1, 2, 3 in [20,40), [40,60), [60,80)
    table = pd.DataFrame({"age": age, "predicted_age": age + rng.normal(0, 1, age.size) * sd})
    report = evaluation_report(table, n_boot=200, age_bands=20)
    bands = report.by_age_band
    assert bands.band.tolist() == ["[20, 40)", "[40, 60)", "[60, 80)"]
    for row, s in zip(bands.itertuples(), (1, 2, 3)):
        assert row.low <= s * HALF_NORMAL <= row.high
    assert bands.n_images.sum() == 3000
    ten = evaluation_report(table, n_boot=50).by_age_band
    assert ten.band.tolist()[0] == "[20, 30)" and len(ten) == 6
    edges = evaluation_report(table, n_boot=50, age_bands=[30, 50, 70])
    assert edges.by_age_band.band.tolist() == ["[30, 50)", "[50, 70)"]
    assert any("outside the age-band edges" in n for n in edges.notes)


def test_corrected_next_to_uncorrected_with_the_inflation_said():
    rng = np.random.default_rng(4)
    age = rng.uniform(20, 80, 400)
    pred = 50 + 0.6 * (age - 50) + rng.normal(0, 5, 400)   # regression to the mean
    slope, intercept = np.polyfit(age, pred - age, 1)
    table = pd.DataFrame({"age": age, "predicted_age": pred,
                          "predicted_age_corrected": pred - (slope * age + intercept)})
    report = evaluation_report(table, n_boot=100)
    overall = report.overall.set_index(["prediction", "metric"])
    assert overall.loc[("corrected", "r"), "value"] > overall.loc[("uncorrected", "r"), "value"]
    assert overall.loc[("corrected", "r"), "inflated"]
    assert not overall.loc[("uncorrected", "r2"), "inflated"]
    assert report.by_site is None                           # no site column
    for frame in (report.overall, report.by_age_band):
        assert set(frame.prediction) == {"uncorrected", "corrected"}
    text = report.to_markdown()
    assert "inflated by construction" in text
    assert "| r | " in text and " * |" in text
    assert "inflated by construction" in report.summary()
    plain = evaluation_report(table.drop(columns="predicted_age_corrected"), n_boot=20)
    assert set(plain.overall.prediction) == {"uncorrected"}
    assert any("No corrected predictions" in n for n in plain.notes)


def test_auc_of_a_planted_gap_matches_theory():
    rng = np.random.default_rng(5)
    n = 600
    diagnosis = rng.choice(["HC", "AD", "MCI"], n, p=[0.5, 0.3, 0.2])
    age = rng.uniform(55, 90, n)
    pred = age + rng.normal(0, 4, n) + 4.0 * (diagnosis == "AD")
    table = pd.DataFrame({"subject_id": np.arange(n).astype(str), "age": age,
                          "predicted_age": pred, "diagnosis": diagnosis})
    report = evaluation_report(table, n_boot=300)
    expected = stats.norm.cdf(4.0 / (4.0 * math.sqrt(2)))      # P(gap_AD > gap_HC) = 0.76
    row = report.auc.iloc[0]
    assert row.low <= expected <= row.high
    assert row.n_case == (diagnosis == "AD").sum() and row.n_control == (diagnosis == "HC").sum()
    assert row.mean_gap_case - row.mean_gap_control == pytest.approx(4.0, abs=1.0)
    # error metrics use controls only (MCI and AD rows left out)
    assert report.headline().n == (diagnosis == "HC").sum()
    assert report.settings["columns"]["subject"] == "subject_id"
    other = evaluation_report(table, n_boot=50, case="MCI")
    assert other.auc.iloc[0].n_case == (diagnosis == "MCI").sum()
    none = evaluation_report(table[diagnosis != "AD"], n_boot=50)
    assert none.auc is None and any("No 'AD' rows" in n for n in none.notes)


def test_openbhb_score_only_with_its_columns():
    rng = np.random.default_rng(6)
    n = 400
    site = rng.choice(["s1", "s2", "s3", "s4"], n)
    which = np.where(np.isin(site, ["s1", "s2", "s3"]), "internal", "external")
    right = rng.random(n) < 0.5
    site_pred = np.where(right, site, "s1")
    age = rng.uniform(10, 80, n)
    pred = age + rng.normal(0, 3, n)
    table = pd.DataFrame({"participant_id": np.arange(n).astype(str), "age": age,
                          "predicted_age": pred, "site": site, "set": which,
                          "site_pred": np.where(which == "internal", site_pred, None)})
    report = evaluation_report(table, n_boot=100)
    lc = report.lc.set_index("metric")
    internal = which == "internal"
    bacc = np.mean([np.mean(site_pred[internal & (site == s)] == s) for s in ("s1", "s2", "s3")])
    mae_ext = np.mean(np.abs(pred - age)[~internal])
    assert lc.loc["bacc", "value"] == pytest.approx(bacc)
    assert lc.loc["mae_ext", "value"] == pytest.approx(mae_ext)
    assert lc.loc["lc", "value"] == pytest.approx(challenge_score(bacc, mae_ext))
    assert lc.loc["lc", "low"] < lc.loc["lc", "value"] < lc.loc["lc", "high"]
    assert "OpenBHB challenge score" in report.to_markdown()
    assert evaluation_report(table.drop(columns=["set", "site_pred"]), n_boot=20).lc is None
    partial = evaluation_report(table.drop(columns=["site_pred"]), n_boot=20)
    assert partial.lc is None and any("needs both columns" in n for n in partial.notes)


def test_sections_left_out_without_their_columns():
    rng = np.random.default_rng(7)
    table = subjects_table(rng, 50, images=1).drop(columns="participant_id")
    report = evaluation_report(table, n_boot=20)
    assert report.by_site is None and report.leave_one_site_out is None
    assert report.auc is None and report.lc is None
    assert any("own subject" in n for n in report.notes)
    assert any("No site column" in n for n in report.notes)
    text = report.to_markdown()
    assert "## Overall (controls)" in text and "## MAE by site" not in text
    lonely = evaluation_report(table.assign(age=np.r_[95.0, table.age[1:]]), n_boot=20)
    last = lonely.by_age_band.iloc[-1]
    assert last.band == "[90, 100)" and last.n_subjects == 1
    assert np.isnan(last.low) and np.isnan(last.high)    # one subject: no interval
    one_site = evaluation_report(table.assign(site="only"), n_boot=20)
    assert len(one_site.by_site) == 1 and one_site.leave_one_site_out is None


def test_bad_tables_are_refused_by_column_and_row():
    rng = np.random.default_rng(8)
    table = subjects_table(rng, 30, images=1)
    table["image_id"] = [f"img{i}" for i in range(30)]
    with pytest.raises(InputError, match="no age column 'age'"):
        evaluation_report(table.drop(columns="age"))
    with pytest.raises(InputError, match="no predicted-age column 'predicted_age'"):
        evaluation_report(table.drop(columns="predicted_age"))
    bad = table.astype({"predicted_age": object})
    bad.loc[3, "predicted_age"] = "n/a"
    with pytest.raises(InputError, match=r"'predicted_age' must hold a finite number.*\['img3'\]"):
        evaluation_report(bad)
    with pytest.raises(InputError, match="no control rows: column 'diagnosis' has no 'HC'"):
        evaluation_report(table.assign(diagnosis="CN"))
    with pytest.raises(InputError, match="no subject column 'rid'"):
        evaluation_report(table, subject="rid")
    with pytest.raises(InputError, match="the table has no rows"):
        evaluation_report(table.iloc[:0])
    with pytest.raises(ValueError, match="n_boot must be an integer >= 10"):
        evaluation_report(table, n_boot=5)


def test_docstring_examples_run():
    assert doctest.testmod(report_module, extraglobs={"np": np, "pd": pd}).failed == 0
