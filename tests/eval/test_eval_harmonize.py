"""ComBat: planted site offsets and scales removed on held-out rows, age and disease kept."""

from __future__ import annotations

import doctest
import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import balanced_accuracy_score, r2_score

import brainkit.eval.harmonize as harmonize_module
from brainkit.eval import ComBat

SITES = ("A", "B", "C")
P = 12


def planted(rng, n, *, age_range=None, disease=0.0, site_p=None, effects=None):
    """ComBat's own generative model: covariate effects + site offset + site scale * noise.

    Returns the table, the measured features, the signal (covariate and disease effects) and
    the unit noise: ``signal + noise`` are the clean, site-free features.
    ``age_range`` maps a site to its (low, high) age; ``disease`` is added to features 0-3
    of every row (patients); ``effects`` fixes the site parameters (drawn once per test).
    """
    site = rng.choice(SITES, n, p=site_p)
    if age_range is None:
        age = rng.uniform(20, 80, n)
    else:
        low = np.array([age_range[s][0] for s in site])
        high = np.array([age_range[s][1] for s in site])
        age = rng.uniform(low, high)
    sex = rng.choice(["F", "M"], n)
    w_age, w_sex, offsets, scales = effects
    noise = rng.normal(size=(n, P))
    signal = 0.05 * (age[:, None] - 50) * w_age + (sex == "M")[:, None] * w_sex
    signal[:, :4] += disease
    index = np.searchsorted(SITES, site)
    measured = signal + scales[index] * noise + offsets[index]
    table = pd.DataFrame({"site": site, "age": age, "sex": sex})
    return table, measured, signal, noise


@pytest.fixture
def effects(rng):
    w_age = rng.normal(size=P)
    w_sex = rng.normal(0, 0.5, P)
    offsets = rng.normal(0, 2.0, (len(SITES), P))              # large site offsets
    scales = np.array([1.0, 2.0, 0.5])[:, None] * np.ones(P)   # and scales
    return w_age, w_sex, offsets, scales


def site_bacc(x_train, site_train, x_test, site_test) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = LogisticRegression(max_iter=2000).fit(x_train, site_train)
    return balanced_accuracy_score(site_test, clf.predict(x_test))


def age_r2(x_train, age_train, x_test, age_test) -> float:
    return r2_score(age_test, Ridge(alpha=1.0).fit(x_train, age_train).predict(x_test))


def test_site_effects_removed_on_held_out_rows_and_age_kept(rng, effects):
    t_tr, x_tr, s_tr, e_tr = planted(rng, 600, effects=effects)
    t_te, x_te, s_te, e_te = planted(rng, 300, effects=effects)
    combat = ComBat().fit(x_tr, t_tr)
    h_tr, h_te = combat.transform(x_tr, t_tr), combat.transform(x_te, t_te)
    chance = 1 / len(SITES)
    before = site_bacc(x_tr, t_tr.site, x_te, t_te.site)
    after = site_bacc(h_tr, t_tr.site, h_te, t_te.site)
    assert before > 0.95
    assert after < chance + 0.1, (before, after)
    # the per-site means and spreads of the held-out residuals now agree (planted: spreads
    # 1 : 2 : 0.5 and offsets of sd 2)
    resid = h_te - s_te
    site_te = t_te.site.to_numpy()
    spreads = np.array([resid[site_te == s].std(axis=0).mean() for s in SITES])
    assert spreads.max() / spreads.min() < 1.15
    means = np.array([resid[site_te == s].mean(axis=0) for s in SITES])
    raw_means = np.array([(x_te - s_te)[site_te == s].mean(axis=0) for s in SITES])
    assert np.ptp(means, axis=0).mean() < 0.15 * np.ptp(raw_means, axis=0).mean()
    # the age signal is kept: ridge R^2 of age as on site-free features whose noise has
    # ComBat's pooled scale (the noisy site's extra noise cannot be taken back)
    pooled = np.sqrt((combat.site_counts_["A"] * 1.0 + combat.site_counts_["B"] * 4.0
                      + combat.site_counts_["C"] * 0.25) / len(t_tr))
    oracle = age_r2(s_tr + pooled * e_tr, t_tr.age, s_te + pooled * e_te, t_te.age)
    harmonised = age_r2(h_tr, t_tr.age, h_te, t_te.age)
    raw = age_r2(x_tr, t_tr.age, x_te, t_te.age)
    assert oracle > 0.5
    assert harmonised == pytest.approx(oracle, abs=0.05), (oracle, harmonised)
    assert harmonised > raw - 0.02, (raw, harmonised)


def test_age_confounded_with_site_is_kept_only_as_a_covariate(rng, effects):
    ranges = {"A": (20, 50), "B": (35, 65), "C": (50, 80)}
    t_tr, x_tr, s_tr, e_tr = planted(rng, 600, age_range=ranges, effects=effects)
    t_te, x_te, s_te, e_te = planted(rng, 300, age_range=ranges, effects=effects)
    c_tr, c_te = s_tr + e_tr, s_te + e_te             # clean: no site effect at all
    pooled = np.sqrt((1.0 + 4.0 + 0.25) / 3)          # sites equally likely
    oracle = age_r2(s_tr + pooled * e_tr, t_tr.age, s_te + pooled * e_te, t_te.age)
    with_age = ComBat(covariates=("age", "sex")).fit(x_tr, t_tr)
    without = ComBat(covariates=()).fit(x_tr, t_tr)
    kept = age_r2(with_age.transform(x_tr, t_tr), t_tr.age, with_age.transform(x_te, t_te),
                  t_te.age)
    lost = age_r2(without.transform(x_tr, t_tr), t_tr.age, without.transform(x_te, t_te),
                  t_te.age)
    assert kept == pytest.approx(oracle, abs=0.05), (oracle, kept)
    assert lost < kept - 0.1, (kept, lost)    # without the covariate, age goes with the site
    # site is predictable from age here; harmonised features are no more site-predictive
    # than the clean features are
    h_tr, h_te = with_age.transform(x_tr, t_tr), with_age.transform(x_te, t_te)
    assert site_bacc(h_tr, t_tr.site, h_te, t_te.site) < \
        site_bacc(c_tr, t_tr.site, c_te, t_te.site) + 0.05


def test_fit_on_controls_apply_to_patients_keeps_the_disease_effect(rng, effects):
    # Site offsets only: with unequal site scales the kept effect is also rescaled per site
    # (pooled sd / site sd, see ComBat's Notes), which would blur this comparison.
    w_age, w_sex, offsets, _ = effects
    effects = (w_age, w_sex, offsets, np.ones_like(offsets))
    skew = [0.025, 0.95, 0.025]                      # patients almost all at site B
    t_hc, x_hc, _, _ = planted(rng, 600, effects=effects)
    t_test, x_test, _, _ = planted(rng, 300, effects=effects)
    t_ad, x_ad, _, _ = planted(rng, 400, disease=1.0, site_p=skew, effects=effects)

    def effect(h_controls, h_patients):
        return float((h_patients[:, :4].mean() - h_controls[:, :4].mean()))

    combat = ComBat().fit(x_hc, t_hc)                # fitted on controls only
    kept = effect(combat.transform(x_test, t_test), combat.transform(x_ad, t_ad))
    assert kept == pytest.approx(1.0, abs=0.1)
    # fitting on everyone (patients included, no diagnosis covariate) absorbs part of it
    everyone = pd.concat([t_hc, t_test, t_ad], ignore_index=True)
    x_all = np.vstack([x_hc, x_test, x_ad])
    naive = ComBat().fit_transform(x_all, everyone)
    absorbed = effect(naive[600:900], naive[900:])
    assert absorbed < kept - 0.2, (kept, absorbed)   # about 0.6 of the 1.0 is left


def test_transform_refuses_unseen_sites_by_name(rng, effects):
    t, x, _, _ = planted(rng, 200, effects=effects)
    combat = ComBat().fit(x, t)
    new = t.iloc[:5].copy()
    new.loc[new.index[:2], "site"] = "Z-scanner"
    with pytest.raises(ValueError, match=r"\['Z-scanner'\] were not seen in fit.*'Z-scanner': 2"):
        combat.transform(x[:5], new)


def test_fit_transform_equals_transform_and_single_rows_work(rng, effects):
    t, x, _, _ = planted(rng, 150, effects=effects)
    t.index = np.arange(1000, 1150)                   # any index
    combat = ComBat()
    out = combat.fit_transform(x, t)
    np.testing.assert_allclose(out, combat.transform(x, t))
    np.testing.assert_allclose(combat.transform(x[7:8], t.iloc[7:8]), out[7:8])
    assert out.shape == x.shape and np.isfinite(out).all()
    assert combat.sites_.tolist() == list(SITES)
    assert sum(combat.site_counts_.values()) == 150
    assert combat.design_columns_ == ["age", "sex=M"]
    assert combat.categories_ == {"sex": ["F", "M"]}
    assert combat.n_features_in_ == P


def test_fit_leaves_numpys_global_generator_alone(rng, effects):
    t, x, _, _ = planted(rng, 120, effects=effects)
    np.random.seed(123)
    expected = np.random.random()
    np.random.seed(123)
    ComBat().fit(x, t)
    assert np.random.random() == expected


def test_single_image_site_and_too_few_sites_are_refused(rng, effects):
    t, x, _, _ = planted(rng, 100, effects=effects)
    t.loc[t.index[0], "site"] = "lonely"
    with pytest.raises(ValueError, match=r"site\(s\) \['lonely'\] have a single image"):
        ComBat().fit(x, t)
    t["site"] = "A"
    with pytest.raises(ValueError, match="at least two sites"):
        ComBat().fit(x, t)


def test_constant_features_pass_through_and_within_site_constants_are_refused(rng, effects):
    t, x, _, _ = planted(rng, 200, effects=effects)
    x[:, 3] = 7.0                                     # e.g. a voxel outside every brain mask
    combat = ComBat().fit(x, t)
    assert combat.constant_features_.tolist() == [i == 3 for i in range(P)]
    t2, x2, _, _ = planted(rng, 50, effects=effects)
    x2[:, 3] = 9.0
    out = combat.transform(x2, t2)
    np.testing.assert_array_equal(out[:, 3], 9.0)
    assert np.isfinite(out).all()
    x[t.site.to_numpy() == "B", 5] = 0.0              # constant at one site only
    with pytest.raises(ValueError, match=r"feature\(s\) \[5\] are constant within site 'B'"):
        ComBat().fit(x, t)
    with pytest.raises(ValueError, match="every feature is constant"):
        ComBat().fit(np.ones_like(x), t)


def test_one_feature_skips_empirical_bayes_with_a_warning(rng, effects):
    t, x, _, _ = planted(rng, 200, effects=effects)
    with pytest.warns(UserWarning, match="empirical Bayes step .* is skipped"):
        out = ComBat().fit_transform(x[:, :1], t)
    means = pd.Series(out[:, 0]).groupby(t.site.to_numpy()).mean()
    raw = pd.Series(x[:, 0]).groupby(t.site.to_numpy()).mean()
    assert np.ptp(means) < 0.3 * np.ptp(raw)


def test_covariate_errors_name_the_column(rng, effects):
    t, x, _, _ = planted(rng, 120, effects=effects)
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['tiv'\]"):
        ComBat(covariates=("age", "tiv")).fit(x, t)
    bad = t.copy()
    bad.loc[bad.index[3], "age"] = np.nan
    with pytest.raises(ValueError, match=r"'age' has missing values \(rows \[3\]\)"):
        ComBat().fit(x, bad)
    constant = t.assign(age=50.0)
    with pytest.raises(ValueError, match="covariate 'age' is constant"):
        ComBat().fit(x, constant)
    collinear = t.assign(scanner_field=t.site.map({"A": "1.5T", "B": "3T", "C": "3T"}))
    with pytest.raises(ValueError, match="collinear with the sites"):
        ComBat(covariates=("age", "scanner_field")).fit(x, collinear)
    with pytest.raises(ValueError, match="smooth names \\['sex'\\], which are not in covariates"):
        ComBat(covariates=("age",), smooth=("sex",)).fit(x, t)
    with pytest.raises(ValueError, match="smooth covariate 'sex' must be numeric"):
        ComBat(smooth=("sex",)).fit(x, t)
    combat = ComBat().fit(x, t)
    with pytest.raises(ValueError, match=r"'sex' has level\(s\) \['X'\] not seen in fit"):
        combat.transform(x[:3], t.iloc[:3].assign(sex="X"))
    with pytest.raises(ValueError, match="features has 120 rows but table has 3"):
        combat.transform(x, t.iloc[:3])
    with pytest.raises(ValueError, match=f"features has 2 columns; this ComBat was fitted on {P}"):
        combat.transform(x[:, :2], t)
    with pytest.raises(RuntimeError, match="not fitted yet"):
        ComBat().transform(x, t)


def test_categorical_sex_as_text_or_numeric_codes_give_the_same_fit(rng, effects):
    t, x, _, _ = planted(rng, 200, effects=effects)
    text = ComBat().fit_transform(x, t)
    codes = ComBat().fit_transform(x, t.assign(sex=(t.sex == "M").astype(int)))
    np.testing.assert_allclose(text, codes, atol=1e-4)   # float32 design inside neuroCombat


def test_smooth_age_harmonises_and_refuses_ages_outside_the_fitted_range(rng, effects):
    t, x, _, _ = planted(rng, 300, effects=effects)
    x = x[:, :4] + np.sin(t[["age"]].to_numpy() / 10.0)   # a non-linear age effect
    combat = ComBat(smooth=("age",)).fit(x, t)
    assert combat.smooth_range_["age"] == (t.age.min(), t.age.max())
    inside = t.iloc[:50]
    out = combat.transform(x[:50], inside)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(combat.transform(x[:1], t.iloc[:1]), out[:1])   # one row
    means = pd.DataFrame(out).groupby(inside.site.to_numpy()).mean().to_numpy()
    raw = pd.DataFrame(x[:50]).groupby(inside.site.to_numpy()).mean().to_numpy()
    assert np.ptp(means, axis=0).max() < 0.5 * np.ptp(raw, axis=0).max()
    with pytest.raises(ValueError, match="smooth covariate 'age' has values outside"):
        combat.transform(x[:2], t.iloc[:2].assign(age=[10.0, 50.0]))


def test_docstring_examples_run():
    assert doctest.testmod(harmonize_module, extraglobs={"np": np, "pd": pd}).failed == 0
