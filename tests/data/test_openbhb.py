"""OpenBHB: unmasking the challenge kit's flat rows, the participants table, both loaders."""

from __future__ import annotations

import itertools

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from brainkit.cli import main
from brainkit.data.cohort import Cohort, CohortError
from brainkit.data.grid import OPENBHB_AFFINE, OPENBHB_SHAPE, mni_grid
from brainkit.data.nifti import ImageError
from brainkit.data.openbhb import (
    VBM_MASK_SIZE,
    load_mask,
    load_openbhb,
    load_openbhb_flat,
    mask_volume,
    openbhb_site,
    openbhb_table,
    unmask,
    vbm_path,
)
from brainkit.data.splits import official_split


def _naive_unmask(rows, mask):
    """Fill voxels one by one, visiting (x, y, z) indices in C (row-major) order."""
    out = np.zeros((len(rows), *mask.shape), dtype=np.float32)
    for n, row in enumerate(rows):
        k = 0
        for idx in itertools.product(*(range(s) for s in mask.shape)):
            if mask[idx]:
                out[(n, *idx)] = row[k]
                k += 1
    return out


def _mask(rng, shape=(5, 6, 7), p=0.4):
    m = rng.random(shape) < p
    m.flat[0] = True
    return m


def test_unmask_matches_a_loop_in_c_order(rng):
    mask = _mask(rng)
    rows = rng.normal(size=(3, int(mask.sum()) + 4)).astype(np.float32)   # + other modalities
    np.testing.assert_array_equal(unmask(rows, mask), _naive_unmask(rows, mask))


def test_unmask_agrees_with_nilearn_once_the_sample_axis_is_moved(rng):
    from nilearn.masking import unmask as nilearn_unmask

    mask = _mask(rng)
    k = int(mask.sum())
    rows = rng.normal(size=(4, k)).astype(np.float32)
    img = nilearn_unmask(rows, nib.Nifti1Image(mask.astype(np.int8), np.eye(4)))
    stacked = np.asarray(img.dataobj)                      # (X, Y, Z, n): samples last
    np.testing.assert_array_equal(unmask(rows, mask), np.moveaxis(stacked, -1, 0))
    # the scrambling shortcut: reshaping (X, Y, Z, n) to (n, X, Y, Z) mixes subjects
    scrambled = stacked.reshape(len(rows), *mask.shape)
    assert not np.array_equal(scrambled, unmask(rows, mask))


def test_a_per_sample_transpose_scrambles_but_unmask_does_not(rng):
    # Public code transposing each volume before a reshape puts voxels in Fortran order.
    mask = _mask(rng)
    volume = np.where(mask, rng.random(mask.shape), 0).astype(np.float32)
    rows = mask_volume(volume, mask)
    assert not np.array_equal(volume.T.reshape(mask.shape), volume)
    np.testing.assert_array_equal(unmask(rows, mask)[0], volume)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 4),
       shape=st.tuples(st.integers(1, 6), st.integers(1, 6), st.integers(1, 6)))
def test_round_trip_property(seed, n, shape):
    rng = np.random.default_rng(seed)
    mask = _mask(rng, shape, p=0.5)
    k = int(mask.sum())
    rows = rng.normal(size=(n, k)).astype(np.float32)
    np.testing.assert_array_equal(mask_volume(unmask(rows, mask), mask), rows)
    volumes = rng.normal(size=(n, *shape)).astype(np.float32)
    np.testing.assert_array_equal(unmask(mask_volume(volumes, mask), mask), volumes * mask)


def test_round_trip_on_the_openbhb_grid_with_a_fabricated_mask(rng):
    # The real mask file is not here: fabricate one with exactly the kit's voxel count.
    flat = np.zeros(int(np.prod(OPENBHB_SHAPE)), dtype=bool)
    flat[rng.choice(flat.size, VBM_MASK_SIZE, replace=False)] = True
    mask = flat.reshape(OPENBHB_SHAPE)
    rows = rng.random((2, VBM_MASK_SIZE + 10), dtype=np.float32)
    volumes = unmask(rows, mask)
    assert volumes.shape == (2, 121, 145, 121)
    np.testing.assert_array_equal(mask_volume(volumes, mask), rows[:, :VBM_MASK_SIZE])
    assert not volumes[:, ~mask].any()


def test_unmask_and_mask_volume_refuse_bad_input(rng):
    mask = _mask(rng)
    k = int(mask.sum())
    with pytest.raises(ValueError, match=f"mask selects {k} voxels"):
        unmask(np.zeros((2, k - 1)), mask)
    with pytest.raises(ValueError, match="must be boolean"):
        unmask(np.zeros((1, k)), mask * 0.5)
    with pytest.raises(ValueError, match="like the mask"):
        mask_volume(np.zeros((2, 4, 4, 4)), mask)
    with pytest.raises(ValueError, match="selects no voxel"):
        unmask(np.zeros((1, 3)), np.zeros((2, 2, 2), bool))
    assert unmask(np.arange(k, dtype=float), mask).shape == (1, *mask.shape)


def test_load_mask_binarises_above_the_threshold(tmp_path):
    tpm = np.zeros(OPENBHB_SHAPE, dtype=np.float32)
    tpm[10, 20, 30], tpm[11, 20, 30], tpm[12, 20, 30] = 0.05, 0.0501, 0.9
    nib.save(nib.Nifti1Image(tpm, OPENBHB_AFFINE), str(tmp_path / "tpm.nii.gz"))
    mask = load_mask(tmp_path / "tpm.nii.gz")
    assert mask.dtype == bool and mask.shape == OPENBHB_SHAPE
    assert list(zip(*np.nonzero(mask))) == [(11, 20, 30), (12, 20, 30)]


# --------------------------------------------------------------------------- the table
def test_participants_table_maps_sites_and_keeps_the_official_split(shared_data):
    raw = pd.read_csv(shared_data / "openbhb" / "participants.tsv", sep="\t")
    table = openbhb_table(shared_data / "openbhb" / "participants.tsv")
    assert len(table) == 3984 and table["site"].nunique() == 64
    assert table["split"].value_counts().to_dict() == {"train": 3227, "internal_test": 362,
                                                       "external_test": 395}
    split = official_split(table)                    # raises on subject leakage
    external = set(table["site"].iloc[split["external_test"]])
    assert len(external) == 6 and not external & set(table["site"].iloc[split["train"]])
    np.testing.assert_array_equal(table["site"], [openbhb_site(c) for c in raw["siteXacq"]])
    assert (table["diagnosis"] == "HC").all() and (table["dataset"] == "openbhb").all()
    np.testing.assert_array_equal(table["sex"], raw["sex"].map({"female": "F", "male": "M"}))
    np.testing.assert_array_equal(table["tiv"], raw["tiv"])
    np.testing.assert_array_equal(table["field_strength"], raw["magnetic_field_strength"])
    np.testing.assert_array_equal(table["image_id"], raw["participant_id"].astype(str))
    assert table["subject_id"].is_unique


def _participants(n=4):
    return pd.DataFrame({
        "participant_id": [1001 + i for i in range(n)], "study": 1,
        "sex": (["female", "male"] * n)[:n], "age": 20.0 + np.arange(n),
        "site": 3.0, "diagnosis": "control", "tiv": 1500.0,
        "magnetic_field_strength": 3.0, "acquisition_setting": 1.0,
        "siteXacq": [0, 1, 1, 2][:n], "split": ["train", "train", "internal_test",
                                               "external_test"][:n]})


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.drop(columns="siteXacq"), r"missing column\(s\) \['siteXacq'\]"),
    (lambda t: t.assign(diagnosis=["control", "control", "patient", "control"]),
     r"row 2 \(1003\): diagnosis must be 'control'"),
    (lambda t: t.assign(sex=["female", "x", "male", "male"]), r"row 1 \(1002\): sex"),
    (lambda t: t.assign(split=["train", "train", "test", "train"]), r"row 2 .*unknown split"),
    (lambda t: t.assign(siteXacq=[0, 1, 1.5, 2]), r"row 2 .*siteXacq must be"),
])
def test_participants_table_errors_name_the_rows(edit, message):
    with pytest.raises(CohortError, match=message):
        openbhb_table(edit(_participants()))


# --------------------------------------------------------------------------- loaders
def _planted(i):
    vol = np.zeros(OPENBHB_SHAPE, dtype=np.float32)
    vol[10 + i, 20:30, 40] = 1.0 + i
    vol[60, 70, 60] = 0.5
    return vol


@pytest.fixture
def download(tmp_path):
    """A fabricated per-subject OpenBHB download with four subjects."""
    root = tmp_path / "openBHB"
    root.mkdir()
    table = _participants()
    table.to_csv(root / "participants.tsv", sep="\t", index=False)
    for i, (pid, split) in enumerate(zip(table["participant_id"], table["split"])):
        path = vbm_path(root, str(pid), split)
        path.parent.mkdir(parents=True)
        np.save(path, _planted(i)[None])            # (1, 121, 145, 121) like the release
    return root


def test_load_openbhb_reads_every_split_folder(download):
    assert vbm_path(download, "1003", "internal_test").parts[-5] == "val"
    cohort = load_openbhb(download, progress=False)
    assert len(cohort) == 4 and cohort.grid_shape == OPENBHB_SHAPE
    np.testing.assert_array_equal(cohort.affine, OPENBHB_AFFINE)
    for i in range(4):
        np.testing.assert_array_equal(cohort.images([i])[0], _planted(i))
    only = load_openbhb(download, splits="external_test", progress=False)
    assert only.table["image_id"].tolist() == ["1004"]


def test_load_openbhb_resamples_and_saves(download, tmp_path):
    cohort = load_openbhb(download, grid_mm=3, out=tmp_path / "c3", progress=False)
    shape3, affine3 = mni_grid(3)
    assert cohort.grid_shape == shape3
    np.testing.assert_array_equal(cohort.affine, affine3)
    # 3 mm voxels sit on every other 1.5 mm voxel: the planted voxel (60, 70, 60) -> (30, 35, 30)
    np.testing.assert_allclose(cohort.images([0])[0][30, 35, 30], 0.5, atol=1e-5)
    assert (tmp_path / "c3" / "cohort.json").is_file()


def test_load_openbhb_names_missing_and_broken_files(download, tmp_path):
    vbm_path(download, "1002", "train").unlink()
    np.save(vbm_path(download, "1004", "external_test"), np.zeros((1, 10, 10, 10)))
    with pytest.raises(ImageError) as err:
        load_openbhb(download, out=tmp_path / "never", progress=False)
    message = str(err.value)
    assert "row 1 (image_id 1002)" in message and "missing file" in message
    assert "row 3 (image_id 1004)" in message and "(10, 10, 10)" in message
    assert not (tmp_path / "never").exists()


def test_load_openbhb_flat_unmasks_rows(tmp_path, rng):
    mask = np.zeros(OPENBHB_SHAPE, dtype=bool)
    mask[20:60, 30:90, 20:80] = rng.random((40, 60, 60)) < 0.5
    k = int(mask.sum())
    volumes = np.stack([np.where(mask, rng.random(OPENBHB_SHAPE), 0) for _ in range(3)])
    rows = np.concatenate([mask_volume(volumes, mask), rng.random((3, 7))], axis=1)
    np.save(tmp_path / "train.npy", rows.astype(np.float32))
    _participants(3).to_csv(tmp_path / "train.tsv", sep="\t", index=False)
    cohort = load_openbhb_flat(tmp_path / "train.npy", tmp_path / "train.tsv", mask, chunk=2,
                               progress=False)
    np.testing.assert_allclose(cohort.images(), volumes.astype(np.float32))
    assert rows.shape[1] == k + 7
    np.save(tmp_path / "bad.npy", np.vstack([rows, rows[:1]]).astype(np.float32))
    with pytest.raises(ImageError, match="one extra row"):
        load_openbhb_flat(tmp_path / "bad.npy", tmp_path / "train.tsv", mask, progress=False)


def test_cli_cohort_openbhb(download, tmp_path, capsys):
    rc = main(["cohort", "openbhb", str(download), "--out", str(tmp_path / "c"), "--grid-mm", "6",
               "--splits", "train,internal_test", "--no-progress"])
    assert rc == 0 and "Cohort(3 images" in capsys.readouterr().out
    cohort = Cohort.load(tmp_path / "c")
    assert cohort.grid_shape == mni_grid(6)[0] and set(cohort.table["split"]) == {
        "train", "internal_test"}
    rc = main(["cohort", "openbhb", str(tmp_path / "nowhere"), "--out", str(tmp_path / "d")])
    assert rc == 2 and "participants.tsv not found" in capsys.readouterr().err
