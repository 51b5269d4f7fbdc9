"""The paper's designs: splits, nested subsets, run sharing, tidy outputs, book summaries."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from brainkit.data import check_no_leakage, make_merged
from brainkit.experiments import (
    ResultsStore,
    get_profile,
    heldout_gaps,
    pretraining_split,
    scaling_sweep,
    single_vs_merge,
    summaries,
    toy,
)
from brainkit.experiments import results_table
from brainkit.experiments.challenge import challenge_metrics
from brainkit.experiments.cohorts import nested_subsets

TINY = get_profile("ci").replace(epochs=1, widths=(4, 8, 16, 32), head_dims=(16, 8),
                                 batch_size=16, recalibrate_bn=True, pool_sizes=None)


@pytest.fixture(scope="module")
def cohort():
    return make_merged({"openbhb": 90, "adni": 16, "icbm": 12, "oasis3": 14}, grid_mm=6, seed=0)


def test_pretraining_split_keeps_subjects_apart_and_the_official_split(cohort):
    split = pretraining_split(cohort)
    table = cohort.table
    assert set(split.pools) == {"openbhb", "adni", "icbm", "oasis3"}
    for name, pool in split.pools.items():
        assert (table["diagnosis"].to_numpy()[pool] == "HC").all()
        assert (table["dataset"].to_numpy()[pool] == name).all()
        check_no_leakage(table, pool, split.tests[name])
        check_no_leakage(table, split.merged, split.tests[name])
    assert (table["split"].to_numpy()[split.pools["openbhb"]] == "train").all()
    assert (table["split"].to_numpy()[split.tests["openbhb"]] == "internal_test").all()
    assert (table["split"].to_numpy()[split.external] == "external_test").all()
    check_no_leakage(table, split.merged, split.external)


def test_pool_sizes_train_small_and_test_big(cohort):
    table = cohort.table
    split = pretraining_split(cohort, pool_sizes={"openbhb": 30, "adni": 6})
    full = pretraining_split(cohort)
    assert 30 <= len(split.pools["openbhb"]) < 33 and 6 <= len(split.pools["adni"]) < 14
    split_col = table["split"].to_numpy()
    assert (split_col[split.pools["openbhb"]] == "train").all()
    # the undrawn training images of seen sites join the internal test set
    assert len(split.tests["openbhb"]) > len(full.tests["openbhb"])
    site = table["site"].to_numpy()
    assert set(site[split.tests["openbhb"]]) <= set(site[split.pools["openbhb"]])
    assert (split_col[split.tests["openbhb"]] != "external_test").all()
    np.testing.assert_array_equal(split.external, full.external)
    for name in split.pools:
        check_no_leakage(table, split.pools[name], split.tests[name])
        check_no_leakage(table, split.merged, split.tests[name])
    hc_adni = np.flatnonzero((table["dataset"] == "adni").to_numpy()
                             & (table["diagnosis"] == "HC").to_numpy())
    np.testing.assert_array_equal(np.sort(np.concatenate([split.pools["adni"],
                                                          split.tests["adni"]])), hc_adni)
    # datasets without a size keep the held-out fifth
    np.testing.assert_array_equal(split.pools["icbm"], full.pools["icbm"])


def test_nested_subsets_are_nested_and_whole_subjects(cohort):
    pool = pretraining_split(cohort).merged
    subsets = nested_subsets(cohort, pool, [20, 40, len(pool)], seed=1)
    subjects = cohort.table["subject_id"].to_numpy()
    for small, large in zip(subsets, subsets[1:]):
        assert set(small) <= set(large)
    for subset, n in zip(subsets, [20, 40]):
        assert len(subset) >= n
        inside = set(subjects[subset])
        outside = set(subjects[np.setdiff1d(pool, subset)])
        assert inside.isdisjoint(outside), "a subject was split between in and out"
    assert np.array_equal(subsets[-1], pool)
    with pytest.raises(ValueError, match="between 2 and the pool size"):
        nested_subsets(cohort, pool, [len(pool) + 1])


def _count(store, kind: str) -> int:
    return sum(run.config.get("kind") == kind for run in store.runs())


def test_designs_share_runs_and_return_tidy_tables(cohort, tmp_path):
    store = ResultsStore(tmp_path)
    sweep = scaling_sweep(cohort, ["exp", "l1"], [40], profile=TINY, store=store)
    assert _count(store, "train") == 4  # 2 losses x (40 images, whole pool)
    assert _count(store, "probe") == 4  # the challenge probes of each run, cached
    assert {"loss", "n_train", "n_sites", "n_datasets", "bacc", "mae_int", "mae_ext",
            "score"} <= set(sweep.columns)
    assert sweep.groupby("loss")["n_train"].apply(lambda s: s.is_monotonic_increasing).all()
    assert np.allclose(sweep["score"], sweep["mae_ext"] * sweep["bacc"] ** 0.3)

    table3 = single_vs_merge(cohort, ["exp"], profile=TINY, store=store,
                             single_datasets=["openbhb"])
    assert _count(store, "train") == 5, \
        "the merged run is the sweep's largest run: only single is new"
    assert _count(store, "probe") == 5, "the merged run's challenge probes are read back"
    assert set(table3["scheme"]) == {"single", "merge"}
    merge = table3[(table3["scheme"] == "merge") & (table3["dataset"] != "challenge")]
    assert set(merge["dataset"]) == {"openbhb", "adni", "icbm", "oasis3"}
    assert set(table3.loc[table3["dataset"] == "challenge", "scheme"]) == {"single", "merge"}

    gaps = heldout_gaps(cohort, ["exp"], profile=TINY, store=store)
    assert _count(store, "train") == 5, "held-out gaps reuse the merged run"
    assert store.computed == 10
    split = pretraining_split(cohort)
    assert not set(gaps["image_id"]) & set(cohort.table["image_id"].to_numpy()[split.merged])
    assert set(gaps.loc[gaps["diagnosis"] == "HC", "image_id"]) == set(
        cohort.table["image_id"].to_numpy()[np.concatenate(list(split.tests.values()))])
    assert np.allclose(gaps["bag"], gaps["age_pred"] - gaps["age"])
    assert gaps["bag_corrected"].notna().all()

    # the cached challenge metrics are the ones computed afresh
    merged = table3[(table3["dataset"] == "challenge") & (table3["scheme"] == "merge")].iloc[0]
    largest = sweep[(sweep["loss"] == "exp")].sort_values("n_train").iloc[-1]
    for metric in ("bacc", "mae_int", "mae_ext", "score"):
        assert merged[metric] == largest[metric]
    run = [r for r in store.runs() if r.config.get("kind") == "train"
           and r.config.get("loss") == "exp" and r.config.get("n_train") == merged["n_train"]][0]
    fresh = challenge_metrics(run, cohort, pretraining_split(cohort))  # no store: recomputed
    assert fresh == pytest.approx({k: merged[k] for k in fresh})
    probes = results_table(store, kind="probe")
    assert len(probes) == 5 and set(probes["loss"]) == {"exp", "l1"}

    comparison = summaries.table3_comparison(table3)
    assert "paper" in comparison.columns.get_level_values(0)
    challenge = summaries.challenge_table(table3)
    assert challenge.loc[("exp", "merge"), ("paper", "score")] == 0.93


def test_summaries_on_planted_numbers():
    rng = np.random.default_rng(0)
    n = 200
    gaps = pd.DataFrame({
        "loss": np.repeat(["exp", "l1"], n),
        "dataset": "adni",
        "diagnosis": np.tile(np.where(np.arange(n) < n // 2, "HC", "AD"), 2),
    })
    shift = np.where(gaps["diagnosis"] == "AD", 2.0, 0.0) * np.where(gaps["loss"] == "exp", 1, 0)
    gaps["bag_corrected"] = rng.normal(size=2 * n) + shift
    aucs = summaries.auc_table(gaps, datasets=["adni"])
    assert aucs.loc["exp", "adni"] > 0.85 and abs(aucs.loc["l1", "adni"] - 0.5) < 0.1

    sweep = pd.DataFrame({"loss": "exp", "n_train": [100, 200, 400, 800],
                          "mae_ext": 2 + 30 * np.array([100, 200, 400, 800]) ** -0.5})
    fit = summaries.fit_scaling_laws(sweep)["exp"]
    assert fit.b == pytest.approx(0.5, rel=1e-3)


def test_formulation_table_shows_the_constant_factor():
    table = toy.formulation_table(n=32, d=8).set_index("loss")
    assert table.loc["yaware", "ratio"] == pytest.approx(0.1 / 0.07, rel=1e-10)
    assert abs(table.loc["exp", "ratio"] - 0.1 / 0.07) > 0.1


def test_toy_embeddings_are_unit_norm_and_ordered_by_label():
    emb = toy.toy_embeddings(["exp", "l1"], n=64, steps=60)
    e = emb[["e0", "e1", "e2"]].to_numpy()
    assert np.allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    exp = emb[emb["loss"] == "exp"]
    z = exp[["e0", "e1", "e2"]].to_numpy()
    coef, *_ = np.linalg.lstsq(np.c_[z, np.ones(len(z))], exp["label"], rcond=None)
    fitted = np.c_[z, np.ones(len(z))] @ coef
    assert np.corrcoef(fitted, exp["label"])[0, 1] > 0.8
