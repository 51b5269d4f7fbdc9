"""The synthetic cohort: the planted truth is learnable, visible and reproducible."""

from __future__ import annotations

import json
from importlib import resources

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.ndimage import gaussian_filter
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from brainkit.data import COLUMNS, DIAGNOSES, SPLITS, Cohort
from brainkit.data import synthetic
from brainkit.data.synthetic import GRIDS, PRESETS, brain_mask, make_cohort, make_merged

OPENBHB_AFFINE = np.array([[-1.5, 0, 0, 90], [0, 1.5, 0, -126], [0, 0, 1.5, -72], [0, 0, 0, 1]])
PRESET_DIAGNOSES = {"openbhb": {"HC"}, "adni": {"HC", "sMCI", "pMCI", "AD"},
                    "icbm": {"HC"}, "oasis3": {"HC", "AD"}}
PRESET_AGES = {"openbhb": (5.9, 88.0), "adni": (50.5, 97.4), "icbm": (18.0, 80.0),
               "oasis3": (42.0, 95.0)}
SUBJECT_CONSTANTS = ("dataset", "site", "sex", "diagnosis", "tiv", "field_strength")


@pytest.fixture(scope="module")
def openbhb():
    return make_cohort("openbhb", n_subjects=300, seed=0)


@pytest.fixture(scope="module")
def adni():
    return make_cohort("adni", n_subjects=120, seed=0)


@pytest.fixture(scope="module")
def merged():
    return make_merged({"openbhb": 40, "adni": 12, "icbm": 15, "oasis3": 15}, seed=3)


def mni_ball(centre, radius_mm, grid_mm=6):
    """Voxels within ``radius_mm`` of an MNI point, from the affine (naive)."""
    shape, affine = GRIDS[grid_mm]
    ijk = np.indices(shape).reshape(3, -1)
    xyz = affine[:3, :3] @ ijk + affine[:3, 3:]
    return (np.linalg.norm(xyz.T - np.asarray(centre), axis=1) <= radius_mm).reshape(shape)


def mtl_mean(images, grid_mm=6):
    """Mean grey matter in both medial temporal balls."""
    roi = (mni_ball((26, -20, -16), 12, grid_mm) | mni_ball((-26, -20, -16), 12, grid_mm))
    return images[:, roi & brain_mask(grid_mm)].mean(axis=1)


def mtl_ratio(images, grid_mm=6):
    """Mean grey matter in both medial temporal balls over the whole-brain mean (site gain
    cancels; so does part of the global ageing, which the ratio cannot tell apart)."""
    return mtl_mean(images, grid_mm) / images[:, brain_mask(grid_mm)].mean(axis=1)


# ---------------------------------------------------------------------------- planted truth

def test_ridge_on_voxels_learns_age(openbhb):
    x = openbhb.images()[:, brain_mask(6)]
    age = openbhb.table["age"].to_numpy()
    pred = cross_val_predict(RidgeCV(alphas=np.logspace(-2, 4, 13)), x, age, cv=5)
    r = np.corrcoef(pred, age)[0, 1]
    assert r > 0.8, f"out-of-fold ridge r = {r:.3f}"
    # Not trivial: anatomy, sites and the true gap leave an error of several years.
    assert np.abs(pred - age).mean() > 2.0


def test_logistic_on_voxels_tells_sites_apart(openbhb):
    table = openbhb.table
    counts = table["site"].value_counts()
    sites = counts.index[counts >= 10]
    assert len(sites) >= 5
    keep = table["site"].isin(sites).to_numpy()
    x = openbhb.images(np.flatnonzero(keep))[:, brain_mask(6)][:, ::4]   # every 4th voxel
    y = table["site"].to_numpy()[keep]
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=2000))
    with threadpool_limits(1):      # tiny matrices: BLAS threads only add overhead
        pred = cross_val_predict(probe, x, y, cv=StratifiedKFold(5, shuffle=True, random_state=0))
    bacc = balanced_accuracy_score(y, pred)
    assert bacc > min(0.6, 4.0 / len(sites)), f"site balanced accuracy {bacc:.2f} with " \
                                              f"{len(sites)} sites"


def test_sites_have_their_own_age_distribution(openbhb):
    # Site-age confounding, as in the real OpenBHB: site means differ far beyond chance.
    table = openbhb.table
    counts = table["site"].value_counts()
    big = table[table["site"].isin(counts.index[counts >= 8])]
    groups = [g["age"].to_numpy() for _, g in big.groupby("site")]
    assert stats.f_oneway(*groups).pvalue < 1e-10
    means = big.groupby("site")["age"].mean()
    assert means.max() - means.min() > 20


def test_ad_has_a_larger_medial_temporal_deficit_than_age_matched_hc(adni):
    table = adni.table
    ratio = mtl_ratio(adni.images())
    baseline = (table["years_from_baseline"] == 0).to_numpy()
    hc = baseline & (table["diagnosis"] == "HC").to_numpy()
    ad = baseline & (table["diagnosis"] == "AD").to_numpy()
    # Age-matching by regression: HC's ratio-on-age line, residuals for both groups.
    age = table["age"].to_numpy()
    line = np.polyfit(age[hc], ratio[hc], 1)
    resid = ratio - np.polyval(line, age)
    test = stats.ttest_ind(resid[ad], resid[hc])
    assert resid[ad].mean() < resid[hc].mean() - 0.03
    assert test.pvalue < 1e-3


def test_disease_gap_and_atrophy_grow_over_visits(adni):
    table = adni.table
    # Within a subject the site is fixed, so the medial temporal grey matter itself is
    # compared (the whole-brain mean also falls with the faster ageing of AD and pMCI).
    ratio = mtl_mean(adni.images())
    slopes = {}
    for dx in ("HC", "sMCI", "pMCI", "AD"):
        per_subject = []
        for _, g in table[table["diagnosis"] == dx].groupby("subject_id"):
            if len(g) >= 3:
                per_subject.append(np.polyfit(g["years_from_baseline"], ratio[g.index], 1)[0])
        slopes[dx] = np.mean(per_subject)
    # Within a subject anatomy and site are fixed: the decline is the planted progression.
    assert slopes["AD"] < slopes["HC"] - 0.01
    assert slopes["pMCI"] < slopes["HC"] - 0.005
    assert abs(slopes["sMCI"] - slopes["HC"]) < abs(slopes["AD"] - slopes["HC"])
    # The gap itself: flat for HC / sMCI, growing for pMCI and AD (the documented rates).
    for dx, rate in (("HC", 0.0), ("sMCI", 0.0), ("pMCI", 1.5), ("AD", 2.0)):
        rows = table[table["diagnosis"] == dx]
        fit = np.polyfit(rows["years_from_baseline"],
                         rows["true_gap"] - rows.groupby("subject_id")["true_gap"].transform(
                             "first"), 1)
        assert fit[0] == pytest.approx(rate, abs=0.35), dx
    # Baseline gaps: N(0 / 1 / 3 / 6, 2.5) per subject; the means within 4 standard errors.
    baseline = table[table["years_from_baseline"] == 0].groupby("diagnosis")["true_gap"]
    for dx, mean in (("HC", 0.0), ("sMCI", 1.0), ("pMCI", 3.0), ("AD", 6.0)):
        gaps = baseline.get_group(dx)
        assert abs(gaps.mean() - mean) < 4 * 2.5 / np.sqrt(len(gaps)), dx
        assert 1.5 < gaps.std() < 3.5, dx


# ---------------------------------------------------------------------------- images

def test_images_are_grey_matter_maps_on_the_mask(openbhb):
    images = openbhb.images()
    assert images.dtype == np.float32
    assert np.isfinite(images).all()
    assert images.min() >= 0.0 and images.max() <= 1.0
    mask = brain_mask(6)
    assert not images[:, ~mask].any()
    # Grey-matter-like: they follow the template, each with its own shape and ageing, and
    # no two are the same.
    tmpl = synthetic.template(6)[mask]
    corr = [np.corrcoef(im[mask], tmpl)[0, 1] for im in images[:40]]
    assert np.median(corr) > 0.6 and min(corr) > 0.3
    assert not np.array_equal(images[0], images[1])


def test_template_matches_nilearn_at_the_same_mni_points():
    from nilearn.datasets import load_mni152_gm_template

    src = load_mni152_gm_template(resolution=1)
    data = src.get_fdata()
    shape, affine = GRIDS[1.5]
    ijk = np.indices(shape).reshape(3, -1)
    world = affine[:3, :3] @ ijk + affine[:3, 3:]
    vox = np.rint(np.linalg.inv(src.affine)[:3, :3] @ world
                  + np.linalg.inv(src.affine)[:3, 3:]).astype(int)
    inside = np.all((vox >= 0) & (vox < np.array(data.shape)[:, None]), axis=0)
    expected = np.zeros(ijk.shape[1])
    expected[inside] = data[tuple(vox[:, inside])]
    got = synthetic.template(1.5).reshape(-1)
    mask = brain_mask(1.5).reshape(-1)
    assert np.corrcoef(got[mask], expected[mask])[0, 1] > 0.97
    with pytest.raises(ValueError):
        synthetic.template(1.5)[0, 0, 0] = 1.0     # the cached array is read-only


@pytest.mark.parametrize("grid_mm, shape", [(6, (31, 37, 31)), (3, (61, 73, 61)),
                                            (1.5, (121, 145, 121))])
def test_grids_share_the_openbhb_origin(grid_mm, shape):
    got_shape, affine = GRIDS[grid_mm]
    assert got_shape == shape
    expected = OPENBHB_AFFINE.copy()
    expected[:3, :3] *= grid_mm / 1.5
    np.testing.assert_array_equal(affine, expected)
    # Same MNI box: the last voxel lands on the same corner on every grid.
    corner = affine @ np.array([*(s - 1 for s in shape), 1])
    np.testing.assert_allclose(corner[:3], [-90, 90, 108])
    assert synthetic.template(grid_mm).shape == shape
    assert brain_mask(grid_mm).shape == shape


def test_one_subject_looks_the_same_on_every_grid():
    fine = make_cohort("openbhb", n_subjects=2, grid_mm=1.5, seed=5)
    mid = make_cohort("icbm", n_subjects=1, grid_mm=3, seed=5)
    coarse = make_cohort("openbhb", n_subjects=2, grid_mm=6, seed=5)
    assert fine.grid_shape == (121, 145, 121) and mid.grid_shape == (61, 73, 61)
    np.testing.assert_array_equal(fine.affine, OPENBHB_AFFINE)
    np.testing.assert_array_equal(mid.affine, GRIDS[3][1])
    pd.testing.assert_frame_equal(fine.table, coarse.table)
    # 6 mm voxel centres are every 4th 1.5 mm voxel. Smoothed like the 6 mm template's
    # anti-aliasing, the difference between the two subjects (template cancels out) is the
    # same picture on both grids.
    mask = brain_mask(6)
    f0, f1 = (gaussian_filter(v, 6 / 2.3548 / 1.5)[::4, ::4, ::4][mask]
              for v in fine.images())
    c0, c1 = (v[mask] for v in coarse.images())
    assert np.corrcoef(f0 - f1, c0 - c1)[0, 1] > 0.7


def test_same_seed_same_cohort_other_seed_other_cohort():
    a = make_cohort("oasis3", n_subjects=6, seed=11)
    b = make_cohort("oasis3", n_subjects=6, seed=11)
    c = make_cohort("oasis3", n_subjects=6, seed=12)
    pd.testing.assert_frame_equal(a.table, b.table)
    np.testing.assert_array_equal(a.images(), b.images())
    assert a.content_hash == b.content_hash != c.content_hash
    n = min(len(a), len(c))
    assert not np.allclose(a.images()[:n], c.images()[:n])


@pytest.mark.parametrize("preset", ["openbhb", "adni"])
def test_first_subjects_do_not_depend_on_cohort_size(preset):
    small = make_cohort(preset, n_subjects=5, seed=2)
    large = make_cohort(preset, n_subjects=9, seed=2)
    k = len(small)
    pd.testing.assert_frame_equal(small.table, large.table.iloc[:k].reset_index(drop=True))
    np.testing.assert_array_equal(small.images(), large.images(np.arange(k)))
    assert large.table["subject_id"].iloc[k] not in set(small.table["subject_id"])


# ---------------------------------------------------------------------------- tables

def check_table(table: pd.DataFrame, preset: str) -> None:
    """Vocabulary, visits and subject-level constants of one preset's rows."""
    assert list(table.columns[:len(COLUMNS)]) == list(COLUMNS)
    for column in ("tiv", "field_strength", "bio_age", "true_gap"):
        assert column in table and table[column].notna().all()
    assert table["image_id"].is_unique
    assert set(table["sex"]) <= {"M", "F"}
    assert set(table["diagnosis"]) <= PRESET_DIAGNOSES[preset] <= set(DIAGNOSES)
    assert (table["dataset"] == preset).all()
    assert table["site"].str.startswith(f"{preset}-").all()
    assert table["subject_id"].str.startswith(f"{preset}-").all()
    lo, hi = PRESET_AGES[preset]
    assert table["age"].between(lo, hi).all()
    assert table["tiv"].between(900, 2200).all()
    assert set(table["field_strength"]) <= {1.5, 3.0}
    np.testing.assert_allclose(table["bio_age"], table["age"] + table["true_gap"])
    for _, g in table.groupby("subject_id"):
        g = g.sort_values("session")
        assert list(g["session"]) == list(range(1, len(g) + 1))
        years = g["years_from_baseline"].to_numpy()
        assert years[0] == 0 and np.all(np.diff(years) > 0)
        np.testing.assert_allclose(g["age"] - years, g["age"].iloc[0], atol=0.011)
        for column in SUBJECT_CONSTANTS:
            assert g[column].nunique() == 1, (column, g["subject_id"].iloc[0])
        if g["diagnosis"].iloc[0] in ("HC", "sMCI"):
            assert g["true_gap"].nunique() == 1


@pytest.mark.parametrize("preset", PRESETS)
def test_table_validity(preset, openbhb, adni):
    cohort = {"openbhb": openbhb, "adni": adni}.get(preset)
    if cohort is None:
        cohort = make_cohort(preset, n_subjects=40, seed=1)
    assert isinstance(cohort, Cohort)
    check_table(cohort.table, preset)
    assert len(cohort) == cohort.images().shape[0]


def test_longitudinal_presets_have_follow_ups(adni):
    per_subject = adni.table.groupby("subject_id").size()
    assert per_subject.max() >= 5 and per_subject.mean() > 2.5
    icbm = make_cohort("icbm", n_subjects=60, seed=0).table
    sessions = icbm.groupby("subject_id").size()
    assert set(sessions) == {1, 2} and 0.35 < (sessions == 2).mean() < 0.8
    assert icbm["years_from_baseline"].max() < 2.0


def test_diagnosis_proportions_follow_the_paper(adni):
    subjects = adni.table.drop_duplicates("subject_id")
    counts = subjects["diagnosis"].value_counts()
    paper = {"HC": 633, "sMCI": 483, "pMCI": 229, "AD": 409}
    total = sum(paper.values())
    for dx, n in paper.items():
        assert abs(counts[dx] - len(subjects) * n / total) <= 2, (dx, counts[dx])
    oasis = make_cohort("oasis3", n_subjects=60, seed=0).table.drop_duplicates("subject_id")
    assert abs((oasis["diagnosis"] == "AD").sum() - 60 * 88 / 685) <= 2


def test_openbhb_split_keeps_external_sites_apart(openbhb):
    table = openbhb.table
    assert table["subject_id"].is_unique
    assert set(table["split"]) == set(SPLITS)
    sites = {name: set(g["site"]) for name, g in table.groupby("split")}
    assert not sites["external_test"] & (sites["train"] | sites["internal_test"])
    # The big non-external sites contribute to both train and internal_test.
    counts = table.loc[table["split"] != "external_test", "site"].value_counts()
    for site in counts.index[counts >= 40]:
        assert site in sites["train"] and site in sites["internal_test"], site
    share = table["split"].value_counts(normalize=True)
    assert 0.03 < share["internal_test"] < 0.2 and 0.03 < share["external_test"] < 0.2


def test_preset_summaries_come_from_the_real_table(shared_data):
    text = resources.files("brainkit.data").joinpath("_synthetic_presets.json").read_text()
    shipped = json.loads(text)
    real = pd.read_csv(shared_data / "openbhb" / "participants.tsv", sep="\t")
    sites = {s["code"]: s for s in shipped["openbhb"]["sites"]}
    assert len(sites) == real["siteXacq"].nunique() == 64
    assert sum(s["n"] for s in sites.values()) == len(real)
    for code, g in real.groupby("siteXacq"):
        assert sites[code]["n"] == len(g)
        assert sites[code]["age_mean"] == pytest.approx(g["age"].mean(), abs=1e-3)
        assert sites[code]["age_max"] == pytest.approx(g["age"].max(), abs=1e-3)
        assert (sites[code]["n_external_test"] > 0) == (g["split"] == "external_test").any()


# ---------------------------------------------------------------------------- merged

def test_merged_has_distinct_datasets_sites_and_subjects(merged):
    table = merged.table
    assert list(table["dataset"].unique()) == ["openbhb", "adni", "icbm", "oasis3"]
    site_sets = [set(g["site"]) for _, g in table.groupby("dataset")]
    assert sum(map(len, site_sets)) == len(set().union(*site_sets))
    assert table.groupby("subject_id")["dataset"].nunique().max() == 1
    assert table.drop_duplicates("subject_id").shape[0] == 40 + 12 + 15 + 15
    assert table["image_id"].is_unique
    for preset, rows in table.groupby("dataset"):
        check_table(rows, preset)
    # Non-OpenBHB rows join the training side of the official split.
    assert (table.loc[table["dataset"] != "openbhb", "split"] == "train").all()


def test_merged_parts_equal_single_presets(merged):
    alone = make_cohort("adni", n_subjects=12, seed=3)
    rows = np.flatnonzero((merged.table["dataset"] == "adni").to_numpy())
    part = merged.table.iloc[rows].drop(columns="split").reset_index(drop=True)
    pd.testing.assert_frame_equal(part, alone.table)
    np.testing.assert_array_equal(merged.images(rows), alone.images())


# ---------------------------------------------------------------------------- arguments

@pytest.mark.parametrize("kwargs, error, match", [
    (dict(preset="hcp", n_subjects=3), ValueError, "unknown preset 'hcp'"),
    (dict(preset="adni", n_subjects=0), ValueError, "n_subjects must be >= 1"),
    (dict(preset="adni", n_subjects=2.5), TypeError, "n_subjects must be an integer"),
    (dict(preset="adni", n_subjects=3, grid_mm=2), ValueError, "grid_mm must be one of"),
    (dict(preset="adni", n_subjects=3, grid_mm="6"), TypeError, "grid_mm must be a number"),
    (dict(preset="adni", n_subjects=3, seed=-1), ValueError, "seed must be"),
])
def test_bad_arguments(kwargs, error, match):
    preset = kwargs.pop("preset")
    with pytest.raises(error, match=match):
        make_cohort(preset, **kwargs)


@pytest.mark.parametrize("sizes, error, match", [
    ({}, ValueError, "sizes is empty"),
    ([("adni", 3)], TypeError, "sizes must be a mapping"),
    ({"adni": 3, "ukb": 2}, ValueError, "unknown preset 'ukb'"),
    ({"adni": 0}, ValueError, r"sizes\['adni'\] must be >= 1"),
])
def test_bad_merged_arguments(sizes, error, match):
    with pytest.raises(error, match=match):
        make_merged(sizes)


def test_bad_helper_arguments():
    with pytest.raises(ValueError, match="grid_mm must be one of"):
        synthetic.template(1.0)
    with pytest.raises(ValueError, match="region must be one of"):
        synthetic.region_map("occipital")
    assert synthetic.region_map("medial_temporal").max() == pytest.approx(1.0)


def test_ageing_is_also_shape_ventricles_widen_and_the_cortex_recedes():
    """The displacement fields: V pushes tissue away from the ventricles, C pulls the
    brain's surface in, M shrinks the medial temporal lobe; warping by them grows the dark
    ventricles, shrinks the brain and leaves the deep white matter where it was."""
    ventricles, cortex, shrink = synthetic._shape_fields(3.0)
    shape, affine = GRIDS[3.0]
    for field in (ventricles, cortex, shrink):
        assert np.sqrt((field ** 2).sum(axis=0)).max() == pytest.approx(1.0, abs=0.02)
    xyz = np.stack(np.meshgrid(*[affine[a, a] * np.arange(shape[a]) + affine[a, 3]
                                 for a in range(3)], indexing="ij"))
    mask = brain_mask(3)
    surface = np.sqrt((cortex ** 2).sum(axis=0)) > 0.5
    inward = ((xyz - np.array([0, -18, 14])[:, None, None, None]) * cortex).sum(axis=0)
    assert np.mean(inward[surface] < 0) > 0.9
    deep = mni_ball((0, -18, 14), 15, 3)
    assert np.sqrt((cortex ** 2).sum(axis=0))[deep].max() < 0.05
    template = synthetic.template(3)
    wide = synthetic._warp(template, 4.0 * ventricles, 3.0)
    lumen = mni_ball((14, -17, 18), 10, 3) | mni_ball((-14, -17, 18), 10, 3)
    assert wide[lumen].mean() < 0.9 * template[lumen].mean()          # more fluid, less tissue
    assert (wide[lumen] < 0.15).sum() > 1.3 * (template[lumen] < 0.15).sum()
    receded = synthetic._warp(template, 2.0 * cortex, 3.0)
    assert (receded[mask] > 0.2).sum() < 0.95 * (template[mask] > 0.2).sum()
    np.testing.assert_allclose(receded[deep], template[deep], atol=0.02)
    mtl = mni_ball((26, -20, -16), 8, 3) | mni_ball((-26, -20, -16), 8, 3)
    assert synthetic._warp(template, 4.0 * shrink, 3.0)[mtl].mean() < 0.95 * template[mtl].mean()
