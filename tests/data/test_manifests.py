"""Dataset manifests (schema, paper numbers, agreement with the loaders) and `data check`."""

from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml

from brainkit.cli import main
from brainkit.data.check import check_dataset
from brainkit.data.cohort import DIAGNOSES, Cohort
from brainkit.data.grid import mni_grid
from brainkit.data.manifests import (
    Manifest,
    ManifestError,
    list_manifests,
    load_manifest,
    manifest_dir,
    parse_manifest,
)
from brainkit.data.paths import PROJECT_ROOT

PAPER = PROJECT_ROOT.parent / "shared" / "paper" / "000_bddfc25e636581e2.txt"
NAMES = ["adni", "fcon1000", "icbm", "oasis1", "oasis2", "oasis3", "openbhb", "synthetic"]


def test_every_manifest_is_shipped_and_valid():
    assert list_manifests() == NAMES
    for name in NAMES:
        m = load_manifest(name)
        assert isinstance(m, Manifest) and m.name == name and m.citation and m.access["terms"]
        assert m.path == manifest_dir() / f"{name}.yaml"
        assert load_manifest(m.path).expected == m.expected
    copies = [p for n in NAMES for p in PROJECT_ROOT.glob(f"brainkit/**/{n}.yaml")]
    assert not copies, "keep one copy of the manifests (data_manifests/)"


def _paper_tables() -> dict:
    if not PAPER.is_file():
        pytest.skip(f"paper text not found at {PAPER}")
    text = PAPER.read_text()
    t1 = {}
    for name in ("OpenBHB", "ADNI", "ICBM", "OASIS3"):
        m = re.search(rf"^{name}\t(\d+)\t(\d+)\t([\d.]+) \(([\d.]+)\)\t\[([\d.]+), ([\d.]+)\]",
                      text, flags=re.M)
        t1[name] = [float(g) for g in m.groups()]
    images = re.search(r"^Number of images\t(.+)$", text, flags=re.M).group(1).split("\t")
    subjects = re.search(r"^Number of subjects\t(.+)$", text, flags=re.M).group(1).split("\t")
    t2 = {n: (int(s), int(i)) for n, s, i in zip(("OpenBHB", "ADNI", "ICBM", "OASIS3"),
                                                 subjects, images)}
    return {"t1": t1, "t2": t2, "text": text}


def test_expected_counts_are_the_papers_tables_1_and_2():
    paper = _paper_tables()
    for name, key in (("openbhb", "OpenBHB"), ("adni", "ADNI"), ("icbm", "ICBM"),
                      ("oasis3", "OASIS3")):
        e = load_manifest(name).expected
        subjects, images, age_mean, age_sd, age_min, age_max = paper["t1"][key]
        assert (e["subjects"], e["images"]) == (subjects, images)
        assert (e["age_mean"], e["age_sd"], e["age_min"], e["age_max"]) == (
            age_mean, age_sd, age_min, age_max)
        assert (e["healthy"]["subjects"], e["healthy"]["images"]) == paper["t2"][key]
    adni = load_manifest("adni").expected["diagnosis"]
    assert "633 HC, 712 MCI (483 sMCI, 229 pMCI), and 409 AD" in paper["text"]
    assert [adni[d]["subjects"] for d in ("HC", "sMCI", "pMCI", "AD")] == [633, 483, 229, 409]
    assert "with the latter containing 88 AD cases" in paper["text"]
    oasis3 = load_manifest("oasis3").expected
    assert oasis3["diagnosis"]["AD"]["subjects"] == 88
    assert (oasis3["diagnosis"]["AD"]["images"] + oasis3["diagnosis"]["HC"]["images"]
            == oasis3["images"])


def test_the_grid_is_the_cat12_grid_of_the_paper():
    shape, affine = mni_grid(1.5)
    for name in ("openbhb", "adni", "icbm", "oasis3"):
        grid = load_manifest(name).preprocessing["grid"]
        assert tuple(grid["shape"]) == shape == (121, 145, 121) and grid["voxel_mm"] == 1.5
        np.testing.assert_array_equal(grid["affine"], affine)
        assert "CAT12" in load_manifest(name).preprocessing["pipeline"]
    shape2, affine2 = mni_grid(2)
    grid = load_manifest("oasis1").preprocessing["grid"]
    assert tuple(grid["shape"]) == shape2
    np.testing.assert_array_equal(grid["affine"], affine2)


def test_manifest_codes_are_the_ones_the_loaders_apply():
    from brainkit.data import openbhb, realdata

    assert load_manifest("oasis2").diagnosis_codes == realdata.OASIS2_GROUPS
    assert load_manifest("fcon1000").sex_codes == realdata.FCON1000_SEX
    ob = load_manifest("openbhb")
    assert ob.sex_codes == {"female": "F", "male": "M"}
    (spec,) = ob.layout("per_subject").images
    assert spec.patterns == (openbhb.VBM_PATTERN,)
    assert dict(spec.fields["folder"][1]) == openbhb.SPLIT_FOLDERS
    assert {s.min_features for s in ob.layout("challenge_kit").images} == {
        openbhb.VBM_MASK_SIZE}
    for name in ("oasis1", "oasis3"):
        codes = load_manifest(name).diagnosis_codes
        assert codes[0] == "HC" and all(codes[c] == "AD" for c in codes if c >= 0.5)
    convention = load_manifest("oasis3").mapping["diagnosis"]["convention"]
    assert "brainkit's convention" in convention
    rule = load_manifest("adni").mapping["diagnosis"]["rule"]
    assert "36" in rule and realdata.MCI_WINDOW_YEARS == 3.0


def test_synthetic_manifest_describes_the_generator():
    synthetic = pytest.importorskip("brainkit.data.synthetic")
    m = load_manifest("synthetic")
    assert tuple(m.generator["presets"]) == tuple(synthetic.PRESETS)
    for mm, shape in m.generator["grids"].items():
        assert shape == mni_grid(mm)[0]
    for function in m.generator["functions"]:
        assert callable(getattr(synthetic, function))


# --------------------------------------------------------------------------- schema errors
def _raw(name="oasis2"):
    return yaml.safe_load((manifest_dir() / f"{name}.yaml").read_text())


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(colour="red"), r"top level: unknown key\(s\) \['colour'\]"),
    (lambda d: d.pop("citation"), r"missing required key\(s\) \['citation'\]"),
    (lambda d: d.update(kind="imaginary"), r"kind: expected one of"),
    (lambda d: d.update(schema_version=2), r"schema_version: this brainkit reads version 1"),
    (lambda d: d["mapping"]["diagnosis"]["codes"].update(Converted="progressive"),
     r"mapping.diagnosis.codes.Converted: 'progressive' is not a brainkit diagnosis"),
    (lambda d: d["mapping"]["sex"]["codes"].update(M="male"), r"mapping.sex.codes.M"),
    (lambda d: d["mapping"]["columns"].update(colour="x"), r"mapping.columns: unknown key"),
    (lambda d: d["expected"].update(subjects=-3), r"expected.subjects: expected a non-negative"),
    (lambda d: d["expected"]["diagnosis"].update(CN={"subjects": 1}),
     r"expected.diagnosis: unknown key\(s\) \['CN'\]"),
    (lambda d: d["layouts"]["shared"]["tables"][0].update(sep="|"), r"tables\[0\].sep"),
    (lambda d: d["layouts"]["shared"]["tables"][0].update(path="/etc/passwd"),
     r"tables\[0\].path: must be relative"),
    (lambda d: d["layouts"]["shared"]["tables"][0].update(builder="os:system"),
     r"tables\[0\].builder: expected 'brainkit.module:function'"),
    (lambda d: d["layouts"]["shared"].update(images=[{
        "table": "sessions", "format": "nifti", "pattern": "x/{colour}.nii", "shape": [1, 2, 3]}]),
     r"images\[0\].pattern\[0\]: field \{colour\} is neither a listed column"),
    (lambda d: d["layouts"]["shared"].update(images=[{
        "table": "sessions", "format": "nifti", "pattern": "x/{MRI ID}.nii"}]),
     r"format 'nifti' needs the expected volume 'shape'"),
    (lambda d: d.pop("layouts"), r"layouts: a real dataset needs at least one layout"),
    (lambda d: d["layouts"]["shared"]["tables"][0].update(cohort=False),
     r"'expected' counts need a table with 'cohort: true'"),
])
def test_schema_errors_name_the_key(edit, message):
    data = _raw()
    parse_manifest(data)                       # the unedited manifest is valid
    edit(data)
    with pytest.raises(ManifestError, match=message):
        parse_manifest(data, source="test.yaml")


def test_loading_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no manifest named 'adnii'; known manifests"):
        load_manifest("adnii")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_manifest(tmp_path / "none.yaml")
    (tmp_path / "bad.yaml").write_text("name: [unclosed\n")
    with pytest.raises(ManifestError, match=r"bad.yaml: not valid YAML"):
        load_manifest(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ManifestError, match=r"list.yaml: top level: expected a mapping"):
        load_manifest(tmp_path / "list.yaml")


# --------------------------------------------------------------------------- data check
def test_check_the_shared_real_sets(shared_data):
    for name in ("oasis1", "oasis2", "fcon1000"):
        report = check_dataset(name, shared_data)
        assert report.ok and not report.warnings, report.summary()
        assert report.counts and all(c["agrees"] for c in report.counts)
    report = check_dataset("openbhb", shared_data / "openbhb", full=False)
    assert all(c["agrees"] for c in report.counts)            # the table matches Table 1
    assert not report.ok and report.images[0]["missing"] == 3984   # no images are shared


SHAPE2, AFFINE2 = mni_grid(2)


def _sessions(ids, ages, cdrs):
    return pd.DataFrame({"ID": ids, "M/F": "F", "Age": ages, "MMSE": 29.0, "CDR": cdrs,
                         "eTIV": 1400.0, "nWBV": 0.75, "Delay": np.nan})


@pytest.fixture
def partial_oasis1(tmp_path):
    """A fabricated partial copy of the shared OASIS-1 layout, with planted faults."""
    root = tmp_path / "data"
    (root / "oasis").mkdir(parents=True)
    (root / "oasis1_mni2mm").mkdir()
    ids = [f"OAS1_000{i}_MR1" for i in range(1, 7)]
    sessions = _sessions(ids, [20, 30, 70, 75, 80, 85], [np.nan, np.nan, 0, 0.5, 1, 0])
    sessions.to_csv(root / "oasis" / "oasis_cross-sectional.csv", index=False)
    sessions.assign(nifti=[f"{i}.nii.gz" for i in ids]).to_csv(
        root / "oasis1_mni2mm" / "subset_index.csv", index=False)
    img = root / "oasis1_mni2mm"
    for i in (0, 1):                                                   # two good images
        nib.save(nib.Nifti1Image(np.full(SHAPE2, 0.5, np.float32), AFFINE2),
                 str(img / f"{ids[i]}.nii.gz"))
    (img / f"{ids[2]}.nii.gz").write_bytes(b"\x1f\x8b corrupt bytes")  # corrupt
    nib.save(nib.Nifti1Image(np.zeros((10, 10, 10), np.float32), AFFINE2),
             str(img / f"{ids[3]}.nii.gz"))                           # wrong shape
    nan = np.zeros(SHAPE2, np.float32)
    nan[40, 50, 40] = np.nan
    nib.save(nib.Nifti1Image(nan, AFFINE2), str(img / f"{ids[4]}.nii.gz"))   # NaN
    # ids[5] is missing; an image no row lists:
    nib.save(nib.Nifti1Image(np.zeros(SHAPE2, np.float32), AFFINE2),
             str(img / "OAS1_0099_MR1.nii.gz"))
    return root, ids


def test_check_reports_a_fabricated_partial_copy(partial_oasis1):
    root, ids = partial_oasis1
    report = check_dataset("oasis1", root)
    assert not report.ok
    errors = {where: message for _, where, message in report.errors}
    assert set(errors) == {f"oasis1_mni2mm/{ids[i]}.nii.gz" for i in (2, 3, 4, 5)}
    assert "not a readable NIfTI file" in errors[f"oasis1_mni2mm/{ids[2]}.nii.gz"]
    assert "shape (10, 10, 10), expected (91, 109, 91)" in errors[
        f"oasis1_mni2mm/{ids[3]}.nii.gz"]
    assert "1 of 902629 voxels are NaN" in errors[f"oasis1_mni2mm/{ids[4]}.nii.gz"]
    assert errors[f"oasis1_mni2mm/{ids[5]}.nii.gz"].startswith("missing file (row 5, ID "
                                                                f"{ids[5]}")
    stats = report.images[0]
    assert (stats["listed"], stats["found"], stats["missing"], stats["unreadable"],
            stats["bad_shape"], stats["non_finite"], stats["extra"]) == (6, 5, 1, 1, 1, 1, 1)
    warned = {where for _, where, _ in report.warnings}
    assert "oasis1_mni2mm/OAS1_0099_MR1.nii.gz" in warned               # the extra file
    assert "oasis/oasis_cross-sectional.csv" in warned                  # 6 rows, not 436
    differs = {c["what"] for c in report.counts if not c["agrees"]}
    assert {"images", "subjects"} <= differs
    text = report.summary()
    assert "NOT USABLE (4 error(s) above)" in text
    assert re.search(r"images\s+found\s+6\s+expected\s+436\s+DIFFERS", text)
    quick = check_dataset("oasis1", root, full=False)     # headers only: the NaN goes unseen
    assert len(quick.errors) == 3


def test_check_flags_mislabelled_headers_and_off_grid_images(tmp_path):
    root = tmp_path / "data"
    (root / "oasis").mkdir(parents=True)
    (root / "oasis1_mni2mm").mkdir()
    ids = ["OAS1_0001_MR1", "OAS1_0002_MR1"]
    sessions = _sessions(ids, [20, 30], [np.nan, np.nan])
    sessions.to_csv(root / "oasis" / "oasis_cross-sectional.csv", index=False)
    sessions.assign(nifti=[f"{i}.nii.gz" for i in ids]).to_csv(
        root / "oasis1_mni2mm" / "subset_index.csv", index=False)
    tiny = AFFINE2.copy()
    tiny[:3, :3] = np.diag([-0.1, 0.1, 0.1])
    shifted = AFFINE2.copy()
    shifted[:3, 3] += 1.0
    for name, affine in zip(ids, (tiny, shifted)):
        nib.save(nib.Nifti1Image(np.zeros(SHAPE2, np.float32), affine),
                 str(root / "oasis1_mni2mm" / f"{name}.nii.gz"))
    report = check_dataset("oasis1", root)
    (error,) = report.errors
    assert error[1] == f"oasis1_mni2mm/{ids[0]}.nii.gz" and "mislabelled" in error[2]
    assert report.images[0]["bad_affine"] == 1
    assert any(w[1] == f"oasis1_mni2mm/{ids[1]}.nii.gz" and "not on brainkit's 2 mm MNI grid"
               in w[2] for w in report.warnings)


def test_check_reports_table_problems(partial_oasis1):
    root, ids = partial_oasis1
    sessions = pd.read_csv(root / "oasis" / "oasis_cross-sectional.csv", dtype=str)
    sessions.loc[1, "ID"] = ids[0]
    sessions.loc[4, "Age"] = "old"
    sessions.to_csv(root / "oasis" / "oasis_cross-sectional.csv", index=False)
    pd.read_csv(root / "oasis1_mni2mm" / "subset_index.csv").drop(columns="CDR").to_csv(
        root / "oasis1_mni2mm" / "subset_index.csv", index=False)
    report = check_dataset("oasis1", root)
    messages = [f"{where}: {message}" for _, where, message in report.errors]
    assert any(re.search(rf"rows 0 \({ids[0]}\), 1 \({ids[0]}\): duplicate 'ID'", m)
               for m in messages)
    assert any("does not map onto the brainkit vocabulary" in m and "'Age' must be numeric" in m
               for m in messages)
    assert any(m.startswith("oasis1_mni2mm/subset_index.csv: missing column(s) ['CDR']")
               for m in messages)
    assert "not checked (its table is missing or invalid)" in report.summary()
    assert ("info", "counts", "not compared with the expected numbers: a cohort table is "
            "missing or invalid") in report.problems


def test_check_the_brainkit_layout_of_the_papers_datasets(tmp_path):
    shape, affine = mni_grid(1.5)
    root = tmp_path / "adni_cat12"
    (root / "images").mkdir(parents=True)
    table = _brainkit_rows(2).drop(columns="group").assign(dataset="adni")
    table.to_csv(root / "participants.tsv", sep="\t", index=False)
    for name in ("i0.nii.gz", "i1.nii", "i1.nii.gz"):
        nib.save(nib.Nifti1Image(np.zeros(shape, np.float32), affine),
                 str(root / "images" / name))
    report = check_dataset("adni", root, full=False)
    assert report.ok and report.layout == "brainkit"
    assert report.images[0]["found"] == 2 and report.images[0]["extra"] == 0
    assert any(w[1] == "images/i1.nii.gz" and "'images/i1.nii'] also exists" in w[2]
               for w in report.warnings)
    assert {c["what"] for c in report.counts if not c["agrees"]} >= {"images", "subjects",
                                                                      "sMCI subjects"}


def _test_manifest(tmp_path, images):
    data = _raw("oasis2")
    data["name"] = "tiny"
    data["layouts"] = {"only": {"description": "a test layout", "tables": [{
        "name": "participants", "path": "participants.tsv", "sep": "\t",
        "id_column": "image_id", "columns": ["image_id", "group"],
        "builder": "brainkit.data.realdata:read_table", "cohort": True}],
        "images": images}}
    data["expected"] = {"source": "the test", "images": 3, "subjects": 3}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _brainkit_rows(n):
    return pd.DataFrame({"image_id": [f"i{k}" for k in range(n)],
                         "subject_id": [f"s{k}" for k in range(n)], "session": 1,
                         "dataset": "tiny", "site": "a", "age": 40.0, "sex": "M",
                         "diagnosis": "HC", "years_from_baseline": 0.0,
                         "group": ["g1", "g2", "g3"][:n]})


def test_check_npy_files_through_derived_fields(tmp_path):
    manifest = _test_manifest(tmp_path, [{
        "table": "participants", "format": "npy", "pattern": "{folder}/{image_id}.npy",
        "shape": [4, 5, 6], "fields": {"folder": {"column": "group",
                                                  "map": {"g1": "a", "g2": "b", "g3": "b"}}}}])
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    _brainkit_rows(3).to_csv(root / "participants.tsv", sep="\t", index=False)
    np.save(root / "a" / "i0.npy", np.zeros((1, 4, 5, 6), np.float32))      # ok (channel axis)
    np.save(root / "b" / "i1.npy", np.zeros((4, 5, 7), np.float32))         # wrong shape
    (root / "b" / "i2.npy").write_bytes(b"\x93NUMPY broken")                  # unreadable
    report = check_dataset(manifest, root)
    errors = {where: message for _, where, message in report.errors}
    assert set(errors) == {"b/i1.npy", "b/i2.npy"}
    assert "shape (4, 5, 7), expected (4, 5, 6)" in errors["b/i1.npy"]
    assert "not a readable .npy file" in errors["b/i2.npy"]
    assert all(c["agrees"] for c in report.counts)


def test_check_flat_rows(tmp_path):
    manifest = _test_manifest(tmp_path, [{
        "table": "participants", "format": "flat_npy", "pattern": "rows.npy",
        "min_features": 10}])
    root = tmp_path / "root"
    root.mkdir()
    _brainkit_rows(3).to_csv(root / "participants.tsv", sep="\t", index=False)
    rows = np.zeros((3, 12), np.float32)
    np.save(root / "rows.npy", rows)
    assert check_dataset(manifest, root).ok
    rows[1, 3] = np.inf
    np.save(root / "rows.npy", rows)
    report = check_dataset(manifest, root)
    assert report.errors == [("error", "rows.npy", "rows [1] hold NaN or infinite voxel values")]
    np.save(root / "rows.npy", np.zeros((2, 12), np.float32))
    (error,) = check_dataset(manifest, root).errors
    assert "shape (2, 12), expected (3, >= 10)" in error[2]


def test_check_a_saved_synthetic_cohort(tmp_path):
    shape, affine = mni_grid(6)
    table = _brainkit_rows(3).drop(columns="group").assign(dataset="openbhb", bio_age=41.0,
                                                           true_gap=1.0)
    Cohort(table, np.zeros((3, *shape), np.float32), affine).save(tmp_path / "good")
    assert check_dataset("synthetic", tmp_path / "good").ok
    shape5, affine5 = mni_grid(5)
    Cohort(table.drop(columns=["bio_age"]), np.zeros((3, *shape5), np.float32), affine5).save(
        tmp_path / "odd")
    report = check_dataset("synthetic", tmp_path / "odd")
    assert not report.ok and "none of the synthetic grids" in report.errors[0][2]
    assert any("'bio_age'" in w[2] for w in report.warnings)
    assert not check_dataset("synthetic", tmp_path).ok        # not a cohort folder


# --------------------------------------------------------------------------- CLI
def test_cli_data_check_exit_codes_and_report(partial_oasis1, shared_data, capsys):
    root, ids = partial_oasis1
    assert main(["data", "check", "oasis1", "--root", str(root), "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "brainkit data check: oasis1" in out and "result: NOT USABLE" in out
    assert f"ERROR    oasis1_mni2mm/{ids[5]}.nii.gz: missing file" in out
    assert "WARNING  oasis1_mni2mm/OAS1_0099_MR1.nii.gz: extra file" in out
    assert main(["data", "check", "oasis2", "--root", str(shared_data)]) == 0
    assert "result: USABLE" in capsys.readouterr().out
    assert main(["data", "check", "nonexistent", "--root", str(root)]) == 2
    assert "no manifest named 'nonexistent'" in capsys.readouterr().err
    assert main(["data", "check", "oasis1", "--root", str(root / "nope")]) == 1
    assert "the root folder does not exist" in capsys.readouterr().out


def test_cli_data_manifests_lists_them(capsys):
    assert main(["data", "manifests"]) == 0
    out = capsys.readouterr().out
    for name in NAMES:
        assert re.search(rf"^{name}\s", out, flags=re.M)


def test_every_diagnosis_target_is_in_the_vocabulary():
    for name in NAMES:
        assert set(load_manifest(name).diagnosis_codes.values()) <= set(DIAGNOSES)
        assert Path(load_manifest(name).path).suffix == ".yaml"


def test_invalid_manifest_yaml_names_the_file(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("name: mine\ntitle: [unclosed\nkind: real\n")
    with pytest.raises(ManifestError, match=r"mine.yaml: not valid YAML") as err:
        load_manifest(str(path))
    assert "<unicode string>" not in str(err.value) and f'in "{path}", line' in str(err.value)
