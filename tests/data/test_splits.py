"""Subject-level, age-stratified folds; leakage checks; the OpenBHB official split."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from brainkit.data import (
    LeakageError,
    check_no_leakage,
    official_split,
    subject_kfold,
    subject_subset,
)


def longitudinal_table(n_subjects=60, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(n_subjects):
        age0 = rng.uniform(20, 90)
        for v in range(rng.integers(1, 4)):
            rows.append({"image_id": f"s{s}-v{v}", "subject_id": f"s{s}", "age": age0 + v})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("folds", [2, 5])
def test_folds_partition_rows_and_never_split_a_subject(folds):
    table = longitudinal_table()
    splits = subject_kfold(table, folds, seed=3)
    assert len(splits) == folds
    tests = np.concatenate([te for _, te in splits])
    assert np.array_equal(np.sort(tests), np.arange(len(table)))
    for train, test in splits:
        assert np.intersect1d(train, test).size == 0
        assert set(table.subject_id[train]).isdisjoint(table.subject_id[test])
        assert len(train) + len(test) == len(table)


def test_folds_are_age_stratified():
    table = longitudinal_table(200)
    means = [table.age[te].mean() for _, te in subject_kfold(table, 5)]
    # Random subject folds would spread the fold means by ~sd/sqrt(40) = 3 years.
    assert np.ptp(means) < 3.0


def test_folds_are_reproducible_and_seeded():
    table = longitudinal_table()
    a = subject_kfold(table, 5, seed=1)
    b = subject_kfold(table, 5, seed=1)
    c = subject_kfold(table, 5, seed=2)
    assert all(np.array_equal(x[1], y[1]) for x, y in zip(a, b))
    assert not all(np.array_equal(x[1], y[1]) for x, y in zip(a, c))


def test_restricting_to_indices_returns_full_table_positions():
    table = longitudinal_table()
    keep = np.flatnonzero(table.age.to_numpy() > 50)
    folds = subject_kfold(table, 3, indices=keep)
    tests = np.concatenate([te for _, te in folds])
    assert np.array_equal(np.sort(tests), keep)


def test_bad_arguments():
    table = longitudinal_table(4)
    with pytest.raises(ValueError, match="from 4 subjects"):
        subject_kfold(table, 5)
    with pytest.raises(ValueError, match="folds must be an integer >= 2"):
        subject_kfold(table, 1)
    with pytest.raises(ValueError, match="no 'age' column"):
        subject_kfold(table.drop(columns="age"), 2)


def test_subject_subset_takes_whole_subjects_up_to_the_size():
    table = longitudinal_table(200)
    rows = np.arange(len(table))
    subset = subject_subset(table, rows, 100, seed=1)
    subjects = table["subject_id"].to_numpy()
    inside = set(subjects[subset])
    assert inside.isdisjoint(set(subjects[np.setdiff1d(rows, subset)]))
    assert 100 <= len(subset) < 100 + 3          # the last subject is taken whole
    np.testing.assert_array_equal(subset, subject_subset(table, rows, 100, seed=1))
    assert not np.array_equal(subset, subject_subset(table, rows, 100, seed=2))
    np.testing.assert_array_equal(subject_subset(table, rows[:50], 10_000), rows[:50])


def test_subject_subset_keeps_the_strata_in_their_shares():
    table = longitudinal_table(400, seed=4)
    site = np.where(table["age"].to_numpy() < 40, "young-site", "old-site")
    rows = np.arange(len(table))
    share = np.mean(site == "young-site")
    for seed in range(5):
        subset = subject_subset(table, rows, 80, seed=seed, strata=site)
        assert np.mean(site[subset] == "young-site") == pytest.approx(share, abs=0.08)
    # default strata: baseline-age deciles, so the subset spans the ages
    subset = subject_subset(table, rows, 80, seed=0)
    assert table["age"].iloc[subset].min() < 30 and table["age"].iloc[subset].max() > 80
    with pytest.raises(ValueError, match="size must be an integer >= 1"):
        subject_subset(table, rows, 0)


def test_leakage_check_names_the_subjects():
    table = longitudinal_table()
    s0 = np.flatnonzero(table.subject_id == "s0")
    others = np.flatnonzero(table.subject_id != "s0")
    check_no_leakage(table, s0, others)
    if len(s0) > 1:
        with pytest.raises(LeakageError, match=r"1 subject\(s\).*'s0'"):
            check_no_leakage(table, s0[:1], np.r_[s0[1:], others])
    with pytest.raises(LeakageError, match="s0"):
        check_no_leakage(table, s0, s0)


def test_official_split():
    table = pd.DataFrame({
        "subject_id": ["a", "b", "c", "d", "e"],
        "split": ["train", "train", "internal_test", "external_test", "train"],
    })
    split = official_split(table)
    assert split["train"].tolist() == [0, 1, 4]
    assert split["internal_test"].tolist() == [2]
    assert split["external_test"].tolist() == [3]
    with pytest.raises(ValueError, match="no 'split' column"):
        official_split(table.drop(columns="split"))
    table.loc[3, "subject_id"] = "a"
    with pytest.raises(LeakageError):
        official_split(table)


def test_mni_grids():
    from brainkit.data.grid import OPENBHB_AFFINE, OPENBHB_SHAPE, mni_grid

    shape, affine = mni_grid(1.5)
    assert shape == OPENBHB_SHAPE == (121, 145, 121)
    np.testing.assert_array_equal(affine, OPENBHB_AFFINE)
    assert mni_grid(3)[0] == (61, 73, 61)
    assert mni_grid(6)[0] == (31, 37, 31)
    assert mni_grid(2)[0] == (91, 109, 91)
    # Every grid's first and last voxel centres land on the same world box.
    for mm in (1.5, 2, 3, 4, 6):
        shape, affine = mni_grid(mm)
        first = affine @ [0, 0, 0, 1]
        np.testing.assert_allclose(first[:3], [90, -126, -72])
    with pytest.raises(ValueError, match="grid_mm must be in"):
        mni_grid(0)
    with pytest.raises(TypeError, match="grid_mm must be a number"):
        mni_grid("fine")
