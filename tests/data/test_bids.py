"""BIDS in: ``bids_table`` / ``import_bids`` / ``brainkit cohort import --bids``."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from brainkit.cli import main
from brainkit.data import Cohort, bids_table, import_bids, make_merged, write_bids
from brainkit.errors import InputError


@pytest.fixture(scope="module")
def longitudinal():
    """ADNI-like subjects (several sessions, diagnoses) and single-session OpenBHB ones."""
    return make_merged({"adni": 5, "openbhb": 4}, grid_mm=6, seed=1)


@pytest.fixture
def tree(tmp_path, longitudinal):
    return write_bids(longitudinal, tmp_path / "bids")


def _labels(cohort):
    return cohort.table["subject_id"].str.replace(r"[^A-Za-z0-9]", "", regex=True)


def test_the_table_gives_each_session_its_age_and_years_from_baseline(tree, longitudinal):
    table = bids_table(tree)
    src = longitudinal.table.assign(participant_id="sub-" + _labels(longitudinal))
    assert len(table) == len(src)
    assert table["path"].map(lambda p: p.endswith("_T1w.nii.gz")).all()
    for pid, rows in table.groupby("participant_id"):
        want = src[src["participant_id"] == pid].sort_values("years_from_baseline")
        np.testing.assert_allclose(rows["age"], want["age"], atol=1e-3)
        np.testing.assert_allclose(rows["years_from_baseline"], want["years_from_baseline"],
                                   atol=6e-3)  # the ages are rounded to 0.01
        assert rows["diagnosis"].tolist() == want["diagnosis"].tolist()
        assert rows["sex"].tolist() == want["sex"].tolist()
        several = len(rows) > 1
        assert (rows["session_id"] != "").all() == several
        expected = [f"{pid}_ses-{k}" if several else pid for k in range(1, len(rows) + 1)]
        assert rows["image_id"].tolist() == expected
    assert table["years_from_baseline"].max() > 1, "the ADNI-like subjects have follow-ups"


def test_acquisition_times_date_the_sessions_when_the_sessions_table_has_no_age(tree):
    want = bids_table(tree)
    for path in tree.glob("sub-*/sub-*_sessions.tsv"):
        pd.read_csv(path, sep="\t").drop(columns="age").to_csv(path, sep="\t", index=False)
    got = bids_table(tree)
    np.testing.assert_allclose(got["years_from_baseline"], want["years_from_baseline"],
                               atol=8e-3)  # vs ages rounded to 0.01
    np.testing.assert_allclose(got["age"], want["age"], atol=8e-3)


def test_a_subject_with_undated_sessions_is_refused_by_name(tree):
    path = sorted(tree.glob("sub-*/sub-*_sessions.tsv"))[0]
    pd.read_csv(path, sep="\t")[["session_id"]].to_csv(path, sep="\t", index=False)
    with pytest.raises(InputError, match=path.name.split("_")[0] + ".*neither an 'age' nor"):
        bids_table(tree)


def test_missing_columns_and_rows_are_named_with_their_file(tree):
    participants = pd.read_csv(tree / "participants.tsv", sep="\t")
    participants.drop(columns="diagnosis").to_csv(tree / "participants.tsv", sep="\t",
                                                  index=False)
    for path in tree.glob("sub-*/sub-*_sessions.tsv"):
        pd.read_csv(path, sep="\t").drop(columns="diagnosis").to_csv(path, sep="\t",
                                                                     index=False)
    with pytest.raises(InputError, match=r"participants.tsv: no 'diagnosis'.*--set diagnosis"):
        bids_table(tree)
    assert set(bids_table(tree, defaults={"diagnosis": "control"})["diagnosis"]) == {"HC"}
    participants.iloc[1:].to_csv(tree / "participants.tsv", sep="\t", index=False)
    with pytest.raises(InputError, match=f"no row for \\['{participants['participant_id'][0]}"):
        bids_table(tree)


def test_column_mapping_and_a_missing_site_column(tree):
    participants = pd.read_csv(tree / "participants.tsv", sep="\t")
    participants.rename(columns={"age": "AgeAtScan"}).drop(columns="site").to_csv(
        tree / "participants.tsv", sep="\t", index=False)
    for path in tree.glob("sub-*/sub-*_sessions.tsv"):
        pd.read_csv(path, sep="\t").rename(columns={"age": "AgeAtScan"}).to_csv(
            path, sep="\t", index=False)
    with pytest.raises(InputError, match="no age for"):
        bids_table(tree)
    table = bids_table(tree, columns={"age": "AgeAtScan"}, dataset="mine")
    assert set(table["site"]) == {"mine"}, "no site column: one site named after the dataset"
    assert table["age"].notna().all()


def test_two_images_for_one_session_need_a_filter(tree):
    first = sorted(tree.glob("sub-*/anat/sub-*_T1w.nii.gz"))[0]
    run2 = first.with_name(first.name.replace("_T1w", "_run-2_T1w"))
    run2.write_bytes(first.read_bytes())
    first.rename(first.with_name(first.name.replace("_T1w", "_run-1_T1w")))
    with pytest.raises(InputError, match="several images for one session.*--filter run=1"):
        bids_table(tree)
    table = bids_table(tree, filters={"run": 1})
    assert table["image_id"].str.contains("_run-1").sum() == 1


def test_not_a_bids_folder(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(InputError, match="not a BIDS dataset"):
        bids_table(tmp_path / "x")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        bids_table(tmp_path / "nope")


def test_derivatives_images_are_chosen_by_folder_and_pattern(tree, longitudinal):
    deriv = tree / "derivatives" / "cat12"
    (deriv).mkdir(parents=True)
    (deriv / "dataset_description.json").write_text(json.dumps({
        "Name": "cat12", "BIDSVersion": "1.9.0", "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "cat12"}]}))
    for t1 in tree.glob("sub-*/**/anat/*_T1w.nii.gz"):
        rel = t1.parent.relative_to(tree)
        (deriv / rel).mkdir(parents=True, exist_ok=True)
        img = nib.load(t1)
        for k, scale in ((1, 0.5), (2, 0.25)):     # grey and white matter maps
            data = np.asarray(img.dataobj, dtype=np.float32) * scale
            nib.save(nib.Nifti1Image(data, img.affine), deriv / rel / f"mwp{k}{t1.name}")
    with pytest.raises(InputError, match="several images for one session"):
        bids_table(tree, derivatives="cat12")
    table = bids_table(tree, derivatives="cat12", match="mwp1*")
    assert len(table) == len(longitudinal)
    assert table["path"].str.contains("derivatives/cat12").all()
    with pytest.raises(FileNotFoundError, match="no derivatives folder derivatives/fsl"):
        bids_table(tree, derivatives="fsl")
    cohort = import_bids(tree, tree.parent / "gm", derivatives="cat12", match="mwp1*",
                         progress=False)
    raw = import_bids(tree, tree.parent / "raw", progress=False)
    np.testing.assert_allclose(cohort.images([0])[0], 0.5 * raw.images([0])[0], rtol=1e-5)


def test_import_keeps_the_images_and_the_cli_does_the_same(tree, longitudinal, tmp_path,
                                                          capsys):
    cohort = import_bids(tree, tmp_path / "a", progress=False)
    assert cohort.grid_shape == longitudinal.grid_shape
    np.testing.assert_allclose(cohort.affine, longitudinal.affine)
    src = longitudinal.table.assign(pid="sub-" + _labels(longitudinal))
    i = int(np.flatnonzero(src["years_from_baseline"] > 0)[0])
    row = cohort.table.index[(cohort.table["participant_id"] == src["pid"][i])
                             & np.isclose(cohort.table["years_from_baseline"],
                                          src["years_from_baseline"][i], atol=6e-3)][0]
    np.testing.assert_allclose(cohort.images([row])[0], longitudinal.images([i])[0],
                               atol=1e-5)
    assert main(["cohort", "import", "--bids", str(tree), "--out", str(tmp_path / "b"),
                 "--no-progress"]) == 0
    again = Cohort.load(tmp_path / "b")
    pd.testing.assert_frame_equal(again.table.drop(columns="path"),
                                  cohort.table.drop(columns="path"))
    assert main(["cohort", "import", "x.tsv", "--bids", str(tree), "--out",
                 str(tmp_path / "c")]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["cohort", "import", "--bids", str(tree), "--out", str(tmp_path / "d"),
                 "--filter", "run"]) == 2
    assert "--filter 'run': expected KEY=VALUE" in capsys.readouterr().err


def test_an_imported_bids_dataset_runs_the_longitudinal_model(tmp_path):
    """Sessions dated from BIDS recover a planted gap slope in the mixed-effects model."""
    from brainkit.eval import fit_bag_trajectories

    root = write_bids(make_merged({"adni": 40}, grid_mm=6, seed=4), tmp_path / "adni")
    table = bids_table(root)
    assert table.groupby("subject_id").size().max() > 2
    rng = np.random.default_rng(0)
    ad = (table["diagnosis"] == "AD").to_numpy()
    table = table.assign(bag=rng.normal(0, 1, len(table)) + rng.normal(0, 2, 1)
                         + 0.8 * table["years_from_baseline"] * ad)
    result = fit_bag_trajectories(table)
    row = result.slope_differences.set_index("group").loc["AD"]
    assert row["ci_low"] < 0.8 < row["ci_high"] and row["ci_low"] > 0.3
