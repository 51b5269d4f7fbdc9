"""The cohort model: validation errors name the row and the problem; storage round-trips."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from brainkit.data import COLUMNS, Cohort, CohortError, concat, validate_table


def make_table(n=6, **overrides):
    table = pd.DataFrame({
        "image_id": [f"img-{i}" for i in range(n)],
        "subject_id": [f"sub-{i // 2}" for i in range(n)],
        "session": [i % 2 + 1 for i in range(n)],
        "dataset": "toy",
        "site": ["a", "b"] * (n // 2),
        "age": np.linspace(20.0, 80.0, n),
        "sex": ["M", "F"] * (n // 2),
        "diagnosis": "HC",
        "years_from_baseline": [float(i % 2) for i in range(n)],
    })
    for column, value in overrides.items():
        table[column] = value
    return table


def make_images(n=6, shape=(4, 5, 3), seed=0):
    return np.random.default_rng(seed).random((n, *shape), dtype=np.float32)


AFFINE = np.diag([-6.0, 6.0, 6.0, 1.0])


def test_valid_table_is_normalised():
    raw = make_table(sex=["male", "Female", " m ", "F", "MAN", "woman"])
    raw = raw.set_index(pd.Index(range(10, 16)))
    out = validate_table(raw)
    assert list(out.columns[: len(COLUMNS)]) == list(COLUMNS)
    assert out["sex"].tolist() == ["M", "F", "M", "F", "M", "F"]
    assert out.index.equals(pd.RangeIndex(6))
    assert out["age"].dtype == np.float64
    assert raw["sex"].iloc[0] == "male", "the input table must not be modified"


@pytest.mark.parametrize("column", COLUMNS)
def test_missing_column_is_named(column):
    with pytest.raises(CohortError, match=f"missing required column.*'{column}'"):
        validate_table(make_table().drop(columns=[column]))


@pytest.mark.parametrize("bad, message", [
    ("forty", r"row 2 \(img-2\).*'age' must be numeric.*forty"),
    (-3.0, r"row 2 \(img-2\).*impossible age \[-3.0\]"),
    (150.0, r"row 2 \(img-2\).*impossible age \[150.0\]"),
    (np.nan, r"row 2 \(img-2\).*'age' is missing"),
])
def test_bad_age_names_the_row(bad, message):
    table = make_table()
    table["age"] = table["age"].astype(object)
    table.loc[2, "age"] = bad
    with pytest.raises(CohortError, match=message):
        validate_table(table)


def test_duplicate_image_ids():
    table = make_table()
    table.loc[4, "image_id"] = "img-1"
    with pytest.raises(CohortError, match=r"rows 1 \(img-1\), 4 \(img-1\).*duplicate image_id \['img-1'\]"):
        validate_table(table)


def test_unknown_diagnosis_lists_the_vocabulary():
    table = make_table()
    table.loc[3, "diagnosis"] = "CN"
    with pytest.raises(CohortError, match=r"row 3 \(img-3\).*unknown diagnosis \['CN'\].*HC.*AD.*CN -> HC"):
        validate_table(table)


@pytest.mark.parametrize("bad", ["X", "1", "unknown", None])
def test_unknown_sex_is_refused(bad):
    table = make_table()
    table["sex"] = table["sex"].astype(object)
    table.loc[1, "sex"] = bad
    with pytest.raises(CohortError, match=r"row 1 \(img-1\).*unknown sex"):
        validate_table(table)


def test_negative_years_and_bad_split():
    table = make_table(years_from_baseline=[0, -1, 0, 1, 0, 1])
    with pytest.raises(CohortError, match=r"row 1 .*years_from_baseline"):
        validate_table(table)
    table = make_table(split=["train", "train", "test", "train", "train", "train"])
    with pytest.raises(CohortError, match=r"row 2 .*unknown split \['test'\]"):
        validate_table(table)


def test_empty_or_not_a_dataframe():
    with pytest.raises(CohortError, match="no rows"):
        validate_table(make_table().iloc[:0])
    with pytest.raises(TypeError, match="DataFrame"):
        validate_table({"age": [1]})


def test_bad_images_are_refused():
    table = make_table()
    with pytest.raises(CohortError, match="shape \\(n_images, X, Y, Z\\).*3-D"):
        Cohort(table, make_images()[:, :, :, 0], AFFINE)
    with pytest.raises(CohortError, match="5 volumes but the table has 6 rows"):
        Cohort(table, make_images(5), AFFINE)
    with pytest.raises(CohortError, match="floating point"):
        Cohort(table, make_images().astype(np.int16), AFFINE)
    images = make_images()
    images[4, 0, 0, 0] = np.nan
    with pytest.raises(CohortError, match=r"row 4 \(img-4\).*NaN or inf"):
        Cohort(table, images, AFFINE)
    with pytest.raises(CohortError, match="4x4"):
        Cohort(table, make_images(), np.eye(3))
    with pytest.raises(CohortError, match="singular"):
        Cohort(table, make_images(), np.zeros((4, 4)))


def test_images_and_subset_keep_row_order():
    images = make_images()
    cohort = Cohort(make_table(), images, AFFINE)
    assert cohort.grid_shape == (4, 5, 3)
    got = cohort.images([5, 0, 3])
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, images[[5, 0, 3]])
    sub = cohort.subset([5, 0, 3])
    assert sub.table["image_id"].tolist() == ["img-5", "img-0", "img-3"]
    np.testing.assert_array_equal(sub.images(), images[[5, 0, 3]])
    mask = np.zeros(6, bool)
    mask[[1, 2]] = True
    np.testing.assert_array_equal(cohort.images(mask), images[[1, 2]])
    with pytest.raises(IndexError, match="out of range"):
        cohort.images([6])


def test_save_load_round_trip(tmp_path):
    images = make_images()
    cohort = Cohort(make_table(tiv=1500.0), images, AFFINE)
    cohort.save(tmp_path / "c")
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == [
        "cohort.json", "images.npy", "table.parquet"]
    loaded = Cohort.load(tmp_path / "c")
    pd.testing.assert_frame_equal(loaded.table, cohort.table)
    np.testing.assert_array_equal(loaded.images(), images)
    np.testing.assert_array_equal(loaded.affine, AFFINE)
    assert loaded.content_hash == cohort.content_hash
    # The loaded hash is the stored one; recomputing it from the data agrees.
    fresh = Cohort(loaded.table, loaded.images(), loaded.affine)
    assert fresh.content_hash == cohort.content_hash


def test_content_hash_sees_every_part():
    base = Cohort(make_table(), make_images(), AFFINE).content_hash
    assert Cohort(make_table(), make_images(seed=1), AFFINE).content_hash != base
    assert Cohort(make_table(age=30.0), make_images(), AFFINE).content_hash != base
    assert Cohort(make_table(), make_images(), np.diag([6.0, 6, 6, 1])).content_hash != base


def test_load_reports_damaged_stores(tmp_path):
    d = Cohort(make_table(), make_images(), AFFINE).save(tmp_path / "c")
    with pytest.raises(FileNotFoundError, match="not a saved brainkit cohort"):
        Cohort.load(tmp_path / "nowhere")
    np.save(d / "images.npy", make_images(4))
    with pytest.raises(CohortError, match=r"images.npy: shape \(4, 4, 5, 3\), expected \(6, 4, 5, 3\)"):
        Cohort.load(d)
    (d / "images.npy").write_bytes(b"not an npy file")
    with pytest.raises(CohortError, match="unreadable image store"):
        Cohort.load(d)
    meta = json.loads((d / "cohort.json").read_text())
    meta["format_version"] = 99
    (d / "cohort.json").write_text(json.dumps(meta))
    with pytest.raises(CohortError, match="newer than this brainkit"):
        Cohort.load(d)


def test_save_refuses_nan_in_memmapped_images(tmp_path):
    path = tmp_path / "raw.npy"
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(6, 4, 5, 3))
    arr[:] = 0.5
    arr[2, 1, 1, 1] = np.inf
    arr.flush()
    cohort = Cohort(make_table(), np.load(path, mmap_mode="r"), AFFINE)
    with pytest.raises(CohortError, match="NaN or inf"):
        cohort.save(tmp_path / "c")
    assert not (tmp_path / "c" / "images.npy").exists(), "no half-written store is left behind"


def test_table_only_cohort_and_concat():
    table_only = Cohort(make_table(), None, AFFINE)
    assert table_only.grid_shape is None
    with pytest.raises(CohortError, match="no images"):
        table_only.images()
    a = Cohort(make_table(), make_images(), AFFINE)
    b_table = make_table()
    b_table["image_id"] = b_table["image_id"] + "-b"
    b = Cohort(b_table, make_images(seed=2), AFFINE)
    both = concat([a, b])
    assert len(both) == 12
    np.testing.assert_array_equal(both.images([6]), b.images([0]))
    with pytest.raises(CohortError, match="duplicate image_id"):
        concat([a, a])


# --------------------------------------------------------------------------- content checks
def _edit_images(d, edit, keep_times=False):
    """Change images.npy in place (same shape and dtype), optionally keeping its times."""
    import os

    path = d / "images.npy"
    st = os.stat(path)
    arr = np.load(path, mmap_mode="r+")
    edit(arr)
    arr.flush()
    del arr
    if keep_times:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_load_refuses_images_edited_after_saving(tmp_path):
    d = Cohort(make_table(), make_images(), AFFINE).save(tmp_path / "c")
    _edit_images(d, lambda a: a.__setitem__((2, 0, 0, 0), 5.0))
    with pytest.raises(CohortError, match=r"content changed after the cohort was saved .*"
                                          r"\(changed: images.npy\)"):
        Cohort.load(d)


def test_load_accepts_a_copy_whose_times_changed(tmp_path):
    import os

    cohort = Cohort(make_table(), make_images(), AFFINE)
    d = cohort.save(tmp_path / "c")
    os.utime(d / "images.npy", ns=(1, 1))  # e.g. copied without keeping times
    assert Cohort.load(d).content_hash == cohort.content_hash
    stamps = json.loads((d / "cohort.json").read_text())["files"]
    assert stamps["images.npy"]["mtime_ns"] == 1, "the record follows the verified copy"


def test_verify_finds_nan_written_behind_the_fast_check(tmp_path):
    # NaN written into images.npy with its times restored: only a full read can see it
    d = Cohort(make_table(), make_images(), AFFINE).save(tmp_path / "c")
    _edit_images(d, lambda a: a.__setitem__((3, 1, 1, 1), np.nan), keep_times=True)
    loaded = Cohort.load(d)  # the fast check trusts sizes and times
    with pytest.raises(CohortError, match=r"images.npy: row 3 \(img-3\): volume contains NaN"):
        loaded.verify()
    with pytest.raises(CohortError, match=r"row 3 \(img-3\)"):
        Cohort.load(d, verify="full")


def test_verify_finds_a_same_size_edit_behind_the_fast_check(tmp_path):
    d = Cohort(make_table(), make_images(), AFFINE).save(tmp_path / "c")
    _edit_images(d, lambda a: a.__setitem__((0, 0, 0, 0), 0.5), keep_times=True)
    with pytest.raises(CohortError, match="content changed after the cohort was saved"):
        Cohort.load(d).verify()


def test_a_truncated_table_parquet_is_named(tmp_path):
    d = Cohort(make_table(), make_images(), AFFINE).save(tmp_path / "c")
    data = (d / "table.parquet").read_bytes()
    (d / "table.parquet").write_bytes(data[: len(data) // 2])
    with pytest.raises(CohortError, match=r"table.parquet: unreadable parquet table"):
        Cohort.load(d)


def test_a_truncated_cohort_json_is_named(tmp_path):
    d = Cohort(make_table(), make_images(), AFFINE).save(tmp_path / "c")
    text = (d / "cohort.json").read_text()
    (d / "cohort.json").write_text(text[: len(text) // 2])
    with pytest.raises(CohortError, match=r"cohort.json: not valid JSON"):
        Cohort.load(d)


@pytest.mark.parametrize("column", ["years_from_baseline", "tiv"])
def test_infinite_numbers_in_the_table_are_refused(column):
    values = np.zeros(6)
    values[4] = np.inf
    with pytest.raises(CohortError, match=rf"row 4 \(img-4\): .*{column}"):
        validate_table(make_table(**{column: values}))
