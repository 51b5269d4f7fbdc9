"""Bring your own NIfTI: tiny images built in tmp_path (TorchIO-style), and the 48 real
OASIS-1 images of ../shared/data."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from brainkit.cli import main
from brainkit.data.cohort import Cohort, CohortError
from brainkit.data.grid import mni_grid
from brainkit.data.nifti import (
    ImageError,
    affine_problem,
    find_image,
    import_nifti,
    read_nifti,
    resample_volume,
)
from brainkit.data.realdata import oasis1_table

SHAPE8, AFFINE8 = mni_grid(8)          # (23, 28, 23): a tiny but MNI-aligned grid


def _table(ids, ages=None):
    n = len(ids)
    return pd.DataFrame({
        "image_id": list(ids), "subject_id": [f"s{i}" for i in range(n)], "session": 1,
        "dataset": "mine", "site": "a", "age": ages if ages is not None else 20.0 + np.arange(n),
        "sex": ["M", "F"] * (n // 2) + ["M"] * (n % 2), "diagnosis": "HC",
        "years_from_baseline": 0.0})


def _volume(seed, shape=SHAPE8):
    return np.random.default_rng(seed).random(shape).astype(np.float32)


def _write(path, data, affine=AFFINE8):
    nib.save(nib.Nifti1Image(np.asarray(data), affine), str(path))
    return path


@pytest.fixture
def folder(tmp_path):
    """Three valid images a, b, c (b uncompressed) and their table."""
    d = tmp_path / "images"
    d.mkdir()
    for i, name in enumerate(["a.nii.gz", "b.nii", "c.nii.gz"]):
        _write(d / name, _volume(i))
    return d


def test_import_keeps_the_shared_grid_and_values(folder, tmp_path):
    table = _table(["a", "b", "c"])
    cohort = import_nifti(table, folder, tmp_path / "out", progress=False)
    assert cohort.grid_shape == SHAPE8
    np.testing.assert_array_equal(cohort.affine, AFFINE8)
    for i in range(3):
        np.testing.assert_array_equal(cohort.images([i])[0], _volume(i))
    assert cohort.table["path"].str.endswith(("a.nii.gz", "b.nii", "c.nii.gz")).all()
    reloaded = Cohort.load(tmp_path / "out")
    assert reloaded.content_hash == cohort.content_hash
    np.testing.assert_array_equal(reloaded.table["age"], table["age"])


def test_import_resamples_onto_the_requested_grid(folder, tmp_path):
    # The 16 mm grid's voxels are every other voxel of the 8 mm grid (same origin), and cubic
    # spline interpolation reproduces the samples exactly there: a naive subsample.
    cohort = import_nifti(_table(["a", "b", "c"]), folder, tmp_path / "out", grid_mm=16,
                          progress=False)
    shape16, affine16 = mni_grid(16)
    assert cohort.grid_shape == shape16
    np.testing.assert_array_equal(cohort.affine, affine16)
    np.testing.assert_allclose(cohort.images([1])[0], _volume(1)[::2, ::2, ::2], atol=1e-5)


def test_resample_volume_matches_world_coordinates():
    # Shift the source by one 8 mm voxel in world space: resampling onto the unshifted grid
    # must move the content by one voxel (x axis is flipped: -8 mm per voxel).
    vol = _volume(3)
    shifted = AFFINE8.copy()
    shifted[0, 3] += -8.0
    out = resample_volume(vol, shifted, SHAPE8, AFFINE8)
    np.testing.assert_allclose(out[1:-1], vol[:-2], atol=1e-5)


def test_a_singleton_4d_image_is_squeezed(tmp_path):
    d = tmp_path / "images"
    d.mkdir()
    _write(d / "a.nii.gz", _volume(0)[..., None])
    cohort = import_nifti(_table(["a"]), d, tmp_path / "out", progress=False)
    np.testing.assert_array_equal(cohort.images([0])[0], _volume(0))


@pytest.mark.parametrize("case, expected", [
    ("4d", "4-D image of shape (23, 28, 23, 2)"),
    ("nan", "voxels are NaN or infinite"),
    ("corrupt", "not a readable NIfTI file"),
    ("truncated_gz", "truncated or corrupt"),
    ("truncated_nii", "the file is truncated or corrupt (OSError"),
    ("tiny_voxels", "outside the plausible 0.5-10 mm"),
    ("far_away", "not in MNI space"),
    ("oblique", "rotated more than about 25 degrees"),
    ("singular", "singular"),
])
def test_bad_images_are_refused_naming_file_and_row(folder, tmp_path, case, expected):
    target = folder / "b.nii"
    if case == "4d":
        _write(target, np.stack([_volume(1), _volume(2)], axis=-1))
    elif case == "nan":
        vol = _volume(1)
        vol[3:5, 4, 6] = np.nan
        _write(target, vol)
    elif case == "corrupt":
        target.write_bytes(b"this is not a NIfTI file" * 20)
    elif case == "truncated_gz":
        target.unlink()
        target = folder / "b.nii.gz"
        _write(target, _volume(1))
        data = target.read_bytes()
        target.write_bytes(data[: len(data) // 2])
    elif case == "truncated_nii":
        data = target.read_bytes()
        target.write_bytes(data[: len(data) // 3])
    elif case == "tiny_voxels":
        affine = AFFINE8.copy()
        affine[:3, :3] = np.diag([-0.1, 0.1, 0.1])
        _write(target, _volume(1), affine)
    elif case == "far_away":
        affine = AFFINE8.copy()
        affine[:3, 3] += 1000.0
        _write(target, _volume(1), affine)
    elif case == "oblique":
        c, s = np.cos(np.pi / 4), np.sin(np.pi / 4)
        affine = AFFINE8.copy()
        affine[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.diag([-8, 8, 8])
        _write(target, _volume(1), affine)
    elif case == "singular":
        # nibabel refuses to build an image from a singular affine: write the header by hand
        hdr = nib.Nifti1Header()
        hdr.set_data_shape(SHAPE8)
        hdr.set_data_dtype(np.float32)
        hdr["sform_code"], hdr["qform_code"] = 1, 0
        hdr["srow_x"], hdr["srow_y"] = AFFINE8[0], AFFINE8[1]
        hdr["srow_z"] = [0.0, 0.0, 0.0, AFFINE8[2, 3]]
        nib.Nifti1Image(_volume(1), None, header=hdr).to_filename(str(target))
    out = tmp_path / "out"
    with pytest.raises(ImageError) as err:
        import_nifti(_table(["a", "b", "c"]), folder, out, progress=False)
    message = str(err.value)
    assert expected in message
    assert "row 1 (image_id b)" in message and target.name in message
    assert "row 0" not in message and "row 2" not in message
    assert not out.exists(), "a failed import must not leave a cohort folder behind"


def test_every_bad_file_is_listed_at_once(folder, tmp_path):
    (folder / "a.nii.gz").write_bytes(b"garbage")
    (folder / "c.nii.gz").write_bytes(gzip.compress(b"garbage"))
    with pytest.raises(ImageError) as err:
        import_nifti(_table(["a", "b", "c"]), folder, tmp_path / "out", progress=False)
    assert "2 unusable image(s)" in str(err.value)
    assert "a.nii.gz" in str(err.value) and "c.nii.gz" in str(err.value)


def test_missing_images_are_named_and_extra_files_warned(folder, tmp_path):
    with pytest.raises(ImageError, match=r"row 3 \(image_id d\): no d.nii.gz or d.nii"):
        import_nifti(_table(["a", "b", "c", "d"]), folder, tmp_path / "out", progress=False)
    with pytest.warns(UserWarning, match=r"1 image\(s\) .* match no table row .*c.nii.gz"):
        cohort = import_nifti(_table(["a", "b"]), folder, tmp_path / "out2", progress=False)
    assert len(cohort) == 2


def test_both_extensions_for_one_id_is_ambiguous(folder, tmp_path):
    _write(folder / "a.nii", _volume(0))
    with pytest.raises(ImageError, match="both exist for image_id 'a'"):
        find_image(folder, "a")


@pytest.mark.parametrize("ids, message", [
    (["a", "b", "a"], r"rows 0 \(a\), 2 \(a\): duplicate image_id"),
    (["a", None, "c"], r"row 1 .*'image_id' is empty"),
])
def test_table_with_bad_ids_names_the_rows(folder, tmp_path, ids, message):
    with pytest.raises(CohortError, match=message):
        import_nifti(_table(ids), folder, tmp_path / "out", progress=False)


def test_table_file_with_missing_column_is_refused(folder, tmp_path):
    path = tmp_path / "t.tsv"
    _table(["a", "b", "c"]).drop(columns="age").to_csv(path, sep="\t", index=False)
    with pytest.raises(CohortError, match=r"t.tsv: missing required column\(s\) \['age'\]"):
        import_nifti(path, folder, tmp_path / "out", progress=False)


def test_different_grids_need_grid_mm(folder, tmp_path):
    shape6, affine6 = mni_grid(6)
    _write(folder / "c.nii.gz", _volume(2, shape6), affine6)
    with pytest.raises(ImageError, match=r"2 different grids and grid_mm is None"):
        import_nifti(_table(["a", "b", "c"]), folder, tmp_path / "out", progress=False)
    cohort = import_nifti(_table(["a", "b", "c"]), folder, tmp_path / "out", grid_mm=8,
                          progress=False)
    assert cohort.grid_shape == SHAPE8


def test_out_must_be_new_or_empty(folder, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "something").write_text("x")
    with pytest.raises(ValueError, match="already exists and is not an empty folder"):
        import_nifti(_table(["a"]), folder, out, progress=False)


def test_affine_problem_accepts_the_brainkit_grids():
    for mm in (1.5, 2, 3, 6):
        shape, affine = mni_grid(mm)
        assert affine_problem(affine, shape) is None


def test_read_nifti_returns_float32_volume(folder):
    data, affine = read_nifti(folder / "b.nii")
    assert data.dtype == np.float32 and data.shape == SHAPE8
    np.testing.assert_array_equal(affine, AFFINE8)


def test_cli_cohort_import(folder, tmp_path, capsys):
    table = tmp_path / "t.tsv"
    _table(["a", "b", "c"]).to_csv(table, sep="\t", index=False)
    rc = main(["cohort", "import", str(table), "--images", str(folder), "--out",
               str(tmp_path / "out"), "--grid-mm", "16", "--no-progress"])
    assert rc == 0
    assert "Cohort(3 images" in capsys.readouterr().out
    assert Cohort.load(tmp_path / "out").grid_shape == mni_grid(16)[0]

    (folder / "b.nii").write_bytes(b"garbage")
    rc = main(["cohort", "import", str(table), "--images", str(folder), "--out",
               str(tmp_path / "out2"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2, "a user mistake: one message, exit 2"
    assert err.startswith("brainkit cohort import: error: ") and "Traceback" not in err
    assert "row 1 (image_id b)" in err and "b.nii" in err


# --------------------------------------------------------------------------- real images
def test_import_the_48_oasis1_images_at_4mm(shared_data, tmp_path):
    folder = shared_data / "oasis1_mni2mm"
    index = pd.read_csv(folder / "subset_index.csv")
    assert (index["nifti"] == index["ID"] + ".nii.gz").all()   # ids match the file names
    table_path = tmp_path / "oasis1_images.tsv"
    oasis1_table(folder / "subset_index.csv").to_csv(table_path, sep="\t", index=False)

    cohort = import_nifti(table_path, folder, tmp_path / "oasis1_4mm", grid_mm=4,
                          progress=False)
    shape4, affine4 = mni_grid(4)
    assert len(cohort) == 48 and cohort.grid_shape == shape4 == (46, 55, 46)
    np.testing.assert_array_equal(cohort.affine, affine4)
    t = cohort.table.set_index("image_id")
    raw = index.set_index("ID").loc[t.index]
    np.testing.assert_array_equal(t["age"], raw["Age"])
    expected_dx = np.where(raw["CDR"].fillna(0) >= 0.5, "AD", "HC")
    np.testing.assert_array_equal(t["diagnosis"], expected_dx)
    assert set(raw.loc[t["diagnosis"] == "AD", "CDR"]) == {0.5, 1.0, 2.0}
    assert t.loc["OAS1_0061_MR2", "session"] == 2
    assert t.loc["OAS1_0061_MR2", "subject_id"] == "OAS1_0061"
    # the 4 mm grid samples every other voxel of the 2 mm MNI grid the images are on
    original, affine2 = read_nifti(folder / "OAS1_0035_MR1.nii.gz")
    np.testing.assert_array_equal(affine2, mni_grid(2)[1])
    i = int(np.flatnonzero(cohort.table["image_id"] == "OAS1_0035_MR1")[0])
    np.testing.assert_allclose(cohort.images([i])[0], original[::2, ::2, ::2], atol=1e-4)
    assert Cohort.load(tmp_path / "oasis1_4mm").content_hash == cohort.content_hash


# --------------------------------------------------------------------------- reliability
def test_numeric_looking_ids_keep_their_leading_zeros(tmp_path):
    # 001, 0001 and 01 are three images of three subjects, not one subject "1"
    d = tmp_path / "images"
    d.mkdir()
    ids = ["001", "0001", "01"]
    for i, name in enumerate(ids):
        _write(d / f"{name}.nii.gz", _volume(i))
    table = _table(ids).assign(subject_id=ids)
    table.to_csv(tmp_path / "t.tsv", sep="\t", index=False)
    cohort = import_nifti(tmp_path / "t.tsv", d, tmp_path / "out", progress=False)
    assert cohort.table["image_id"].tolist() == ids
    assert cohort.table["subject_id"].nunique() == 3
    assert Cohort.load(tmp_path / "out").table["image_id"].tolist() == ids
    (d / "0001.nii.gz").unlink()
    with pytest.raises(ImageError, match=r"row 1 \(image_id 0001\): no 0001.nii.gz or 0001.nii"):
        import_nifti(tmp_path / "t.tsv", d, tmp_path / "out2", progress=False)


def _longitudinal(folder, **changes):
    """Images a, b, c as three sessions of one subject (ages 60, 61, 62)."""
    table = _table(["a", "b", "c"]).assign(subject_id="s0", session=[1, 2, 3], sex="F",
                                           age=[60.0, 61.0, 62.0],
                                           years_from_baseline=[0.0, 1.0, 2.0])
    for column, (row, value) in changes.items():
        table.loc[row, column] = value
    return table


@pytest.mark.parametrize("change, check, message", [
    ({"sex": (1, "M")}, "sex-change",
     r"subject 's0' has sex \['F', 'M'\] in rows 0 \(a\), 1 \(b\), 2 \(c\)"),
    ({"age": (2, 59.0)}, "age-order",
     r"subject 's0': age goes from 61 at session 2 \(row 1 \(b\)\) to 59 at session 3"),
    ({"years_from_baseline": (1, 3.0)}, "age-order", r"years_from_baseline goes from 3"),
    ({"session": (2, 2)}, "repeat-session",
     r"subject 's0' has 2 rows for session 2: rows 1 \(b\), 2 \(c\)"),
])
def test_subject_contradictions_are_refused_unless_allowed(folder, tmp_path, change, check,
                                                           message):
    table = _longitudinal(folder, **change)
    with pytest.raises(CohortError, match=message) as err:
        import_nifti(table, folder, tmp_path / "out", progress=False)
    assert f"allow with '{check}'" in str(err.value)
    assert not (tmp_path / "out").exists()
    cohort = import_nifti(table, folder, tmp_path / "out", allow=[check], progress=False)
    assert len(cohort) == 3


def test_consistent_longitudinal_table_imports(folder, tmp_path):
    assert len(import_nifti(_longitudinal(folder), folder, tmp_path / "out",
                            progress=False)) == 3


@pytest.mark.parametrize("volume, check, message", [
    (np.zeros(SHAPE8, np.float32), "constant-image", "every voxel is 0: a blank image"),
    (_volume(1) * np.float32(1e30), "intensity-range", r"voxel values span \[.*e\+30\]"),
    (_volume(1) * np.float32(1e-9), "intensity-range", "looks mis-scaled"),
])
def test_blank_or_misscaled_images_are_refused_unless_allowed(folder, tmp_path, volume, check,
                                                              message):
    _write(folder / "b.nii", volume)
    with pytest.raises(ImageError, match=message) as err:
        import_nifti(_table(["a", "b", "c"]), folder, tmp_path / "out", progress=False)
    assert "row 1 (image_id b)" in str(err.value) and "b.nii" in str(err.value)
    assert f"allow with '{check}'" in str(err.value)
    assert not (tmp_path / "out").exists()
    cohort = import_nifti(_table(["a", "b", "c"]), folder, tmp_path / "out", allow=[check],
                          progress=False)
    np.testing.assert_array_equal(cohort.images([1])[0], volume)


def test_unknown_allow_names_are_refused(folder, tmp_path):
    with pytest.raises(CohortError, match=r"unknown check\(s\) \['sex'\]"):
        import_nifti(_table(["a"]), folder, tmp_path / "out", allow=["sex"], progress=False)


@pytest.mark.parametrize("image_id", ["../b", "..", "sub/b"])
def test_image_ids_that_are_paths_are_refused(folder, tmp_path, image_id):
    (folder / "sub").mkdir()
    _write(folder / "sub" / "b.nii", _volume(1))
    with pytest.raises(ImageError, match="cannot be a file name in the images folder"):
        import_nifti(_table(["a", image_id]), folder, tmp_path / "out", progress=False)


def test_sigterm_during_import_removes_what_it_wrote(folder, tmp_path, monkeypatch):
    import os
    import signal

    from brainkit.data import nifti

    real = nifti.read_nifti
    calls = []

    def read_then_signal(path):
        calls.append(path)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # recorded by the import, not fatal
        return real(path)

    monkeypatch.setattr(nifti, "read_nifti", read_then_signal)
    out = tmp_path / "out"
    out.mkdir()  # the user's own (empty) folder: kept, but emptied
    with pytest.raises(nifti.ImportInterrupted, match="interrupted by SIGTERM"):
        import_nifti(_table(["a", "b", "c"]), folder, out, progress=False)
    assert len(calls) == 2, "stopped at the next image"
    assert out.is_dir() and list(out.iterdir()) == []
    monkeypatch.setattr(nifti, "read_nifti", real)
    assert len(import_nifti(_table(["a", "b", "c"]), folder, out, progress=False)) == 3


def test_rerun_replaces_the_leftovers_of_a_killed_import(folder, tmp_path):
    # what kill -9 leaves: the lock file, the hidden image file, a save cut short
    out = tmp_path / "out"
    out.mkdir()
    (out / ".brainkit.lock").write_text("12345 host 2024-01-01T00:00:00\n")
    (out / ".import-k2j3h4.npy").write_bytes(b"\0" * 4096)
    (out / "table.parquet").write_bytes(b"half a table")
    with pytest.warns(UserWarning, match="left by an interrupted import"):
        cohort = import_nifti(_table(["a", "b", "c"]), folder, out, progress=False)
    assert len(cohort) == 3
    assert sorted(p.name for p in out.iterdir()) == ["cohort.json", "images.npy",
                                                     "table.parquet"]


def test_leftovers_beside_a_cohort_or_user_files_are_not_touched(folder, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".import-k2j3h4.npy").write_bytes(b"\0")
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not an empty folder"):
        import_nifti(_table(["a"]), folder, out, progress=False)
    assert (out / "notes.txt").read_text() == "mine" and (out / ".import-k2j3h4.npy").exists()


def test_a_second_import_into_a_folder_in_use_is_refused(folder, tmp_path):
    from brainkit._util import FolderLock
    from brainkit.errors import FolderLockedError

    out = tmp_path / "out"
    with FolderLock(out, what="cohort import", remove=True):  # another import holds it
        with pytest.raises(FolderLockedError, match=r"in use by another cohort import \(pid "):
            import_nifti(_table(["a", "b", "c"]), folder, out, progress=False)
    assert len(import_nifti(_table(["a", "b", "c"]), folder, out, progress=False)) == 3


def test_cli_import_allow_and_one_line_errors(folder, tmp_path, capsys):
    table = tmp_path / "t.tsv"
    _longitudinal(folder, sex=(1, "M")).to_csv(table, sep="\t", index=False)
    args = ["cohort", "import", str(table), "--images", str(folder), "--out",
            str(tmp_path / "out"), "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("brainkit cohort import: error: ") and "sex-change" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert main([*args, "--allow", "sex-change"]) == 0
