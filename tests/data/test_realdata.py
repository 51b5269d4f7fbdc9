"""Table builders for OASIS-1, OASIS-2, fcon1000, brainkit tables, and the MCI conversion rule."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from brainkit.data.cohort import COLUMNS, CohortError
from brainkit.data.realdata import (
    FCON1000_SEX,
    OASIS2_GROUPS,
    fcon1000_table,
    label_mci_conversion,
    oasis1_table,
    oasis2_table,
    read_table,
)


# --------------------------------------------------------------------------- OASIS-1
def test_oasis1_table_on_the_real_file(shared_data):
    raw = pd.read_csv(shared_data / "oasis" / "oasis_cross-sectional.csv")
    t = oasis1_table(shared_data / "oasis" / "oasis_cross-sectional.csv")
    assert list(t.columns[:len(COLUMNS)]) == list(COLUMNS)
    assert len(t) == 436 and t["subject_id"].nunique() == 416
    np.testing.assert_array_equal(t["subject_id"], raw["ID"].str[:9])
    rescan = raw["ID"].str.endswith("_MR2").to_numpy()
    assert rescan.sum() == 20
    np.testing.assert_array_equal(t["session"], np.where(rescan, 2, 1))
    np.testing.assert_allclose(t["years_from_baseline"],
                               np.where(rescan, raw["Delay"].fillna(0) / 365.25, 0.0))
    # CDR written out per row, from the rule: 0 -> HC, >= 0.5 -> AD, unrated (< 60) -> HC
    for cdr, age, dx in zip(raw["CDR"], raw["Age"], t["diagnosis"]):
        if np.isnan(cdr):
            assert age < 60 and dx == "HC"
        else:
            assert dx == ("AD" if cdr >= 0.5 else "HC")
    assert t["diagnosis"].value_counts().to_dict() == {"HC": 336, "AD": 100}
    np.testing.assert_array_equal(t["tiv"], raw["eTIV"])
    np.testing.assert_array_equal(t["sex"], raw["M/F"])
    assert {"eTIV", "nWBV", "MMSE", "CDR"} <= set(t.columns)


def _oasis1_rows():
    return pd.DataFrame({"ID": ["OAS1_0001_MR1", "OAS1_0002_MR1", "OAS1_0002_MR2"],
                         "M/F": ["F", "M", "M"], "Age": [74, 30, 30],
                         "CDR": [0.5, np.nan, np.nan], "Delay": [np.nan, np.nan, 30.0]})


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.assign(Age=[74, 70, 70]),
     r"rows 1 \(OAS1_0002_MR1\), 2 \(OAS1_0002_MR2\): CDR is missing"),
    (lambda t: t.assign(CDR=[0.3, np.nan, np.nan]), r"row 0 .*CDR must be one of"),
    (lambda t: t.assign(ID=["OAS1_1_MR1", "OAS1_0002_MR1", "OAS1_0002_MR2"]),
     r"row 0 .*ID must look like"),
    (lambda t: t.assign(Delay=np.nan), r"row 2 \(OAS1_0002_MR2\): rescan without"),
    (lambda t: t.drop(columns="CDR"), r"missing column\(s\) \['CDR'\]"),
])
def test_oasis1_errors_name_the_rows(edit, message):
    assert len(oasis1_table(_oasis1_rows())) == 3
    with pytest.raises(CohortError, match=message):
        oasis1_table(edit(_oasis1_rows()))


# --------------------------------------------------------------------------- OASIS-2
def test_oasis2_table_on_the_real_file(shared_data):
    raw = pd.read_csv(shared_data / "oasis" / "oasis_longitudinal.csv")
    t = oasis2_table(shared_data / "oasis" / "oasis_longitudinal.csv")
    assert len(t) == 373 and t["subject_id"].nunique() == 150
    np.testing.assert_array_equal(t["diagnosis"], raw["Group"].map(OASIS2_GROUPS))
    np.testing.assert_allclose(t["years_from_baseline"], raw["MR Delay"] / 365.25)
    np.testing.assert_array_equal(t["session"], raw["Visit"])
    for column in ("nWBV", "eTIV", "MMSE", "CDR"):
        np.testing.assert_array_equal(t[column], raw[column])
    assert (t.groupby("subject_id")["diagnosis"].nunique() == 1).all()
    first = t.groupby("subject_id")["years_from_baseline"].min()
    assert (first == 0).all()
    assert t.groupby("diagnosis")["subject_id"].nunique().to_dict() == {"AD": 64, "HC": 72,
                                                                       "pMCI": 14}


def test_oasis2_unknown_group_is_named():
    raw = pd.DataFrame({"Subject ID": ["OAS2_0001"] * 2, "MRI ID": ["m1", "m2"],
                        "Group": ["Nondemented", "Healthy"], "Visit": [1, 2],
                        "MR Delay": [0, 400], "M/F": "F", "Age": [70, 71]})
    with pytest.raises(CohortError, match=r"row 1 \(m2\): unknown Group \['Healthy'\]"):
        oasis2_table(raw)


# --------------------------------------------------------------------------- fcon1000
def test_fcon1000_table_and_features(shared_data):
    raw = pd.read_csv(shared_data / "fcon1000" / "fcon1000.csv")
    table, features = fcon1000_table(shared_data / "fcon1000" / "fcon1000.csv")
    assert table.shape[0] == features.shape[0] == 1078 and features.shape[1] == 150
    assert all(c.endswith("_thickness") for c in features.columns)
    np.testing.assert_array_equal(features.to_numpy(), raw[features.columns].to_numpy())
    assert table["site"].nunique() == 23 and (table["diagnosis"] == "HC").all()
    np.testing.assert_array_equal(table["sex"], raw["sex"].map(FCON1000_SEX))
    # the coding is right if the known sex difference in head size shows: males larger
    by_sex = table.groupby("sex")["tiv"].mean()
    assert by_sex["M"] > by_sex["F"] * 1.08
    assert 1200 < table["tiv"].mean() < 1800              # ml, converted from mm^3


def test_fcon1000_bad_sex_code_is_named():
    raw = pd.DataFrame({"sub_id": ["a", "b"], "age": [20, 30], "sex": [1, 2], "site": "x",
                        "lh_A_thickness": [2.5, 2.6]})
    with pytest.raises(CohortError, match=r"row 1 \(b\): sex must be coded 1"):
        fcon1000_table(raw)


# --------------------------------------------------------------------------- read_table
def test_read_table_reads_tsv_and_csv(tmp_path):
    table = pd.DataFrame({"image_id": ["a", "b"], "subject_id": ["s", "s"], "session": [1, 2],
                          "dataset": "mine", "site": "x", "age": [60.0, 61.0],
                          "sex": "female", "diagnosis": "HC",
                          "years_from_baseline": [0.0, 1.0]})
    table.to_csv(tmp_path / "t.tsv", sep="\t", index=False)
    table.to_csv(tmp_path / "t.csv", index=False)
    for name in ("t.tsv", "t.csv"):
        t = read_table(tmp_path / name)
        assert t["sex"].tolist() == ["F", "F"] and t["image_id"].tolist() == ["a", "b"]
    table.assign(diagnosis=["HC", "CN"]).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(CohortError, match=r"bad.csv: row 1 \(b\): unknown diagnosis"):
        read_table(tmp_path / "bad.csv")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_table(tmp_path / "nope.tsv")


def _mine(ids=("a", "b")):
    return pd.DataFrame({"image_id": list(ids), "subject_id": list(ids), "session": 1,
                         "dataset": "mine", "site": ["01", "1"][:len(ids)],
                         "age": [60.0, 61.0][:len(ids)], "sex": "F", "diagnosis": "HC",
                         "years_from_baseline": 0.0})


@pytest.mark.parametrize("name, sep", [("t.tsv", ","), ("t.csv", "\t"), ("t.tsv", ";"),
                                       ("t.txt", ";")])
def test_separator_is_read_from_the_header_not_the_suffix(tmp_path, name, sep):
    # a CSV saved as .tsv used to report all nine columns "missing"
    _mine().to_csv(tmp_path / name, sep=sep, index=False)
    t = read_table(tmp_path / name)
    assert t["image_id"].tolist() == ["a", "b"] and t["age"].tolist() == [60.0, 61.0]


def test_numeric_looking_ids_are_read_as_text(tmp_path):
    _mine(["001", "0001"]).to_csv(tmp_path / "t.tsv", sep="\t", index=False)
    t = read_table(tmp_path / "t.tsv")
    assert t["image_id"].tolist() == ["001", "0001"], "001 and 0001 stay two ids"
    assert t["subject_id"].tolist() == ["001", "0001"]
    assert t["site"].tolist() == ["01", "1"], "sites 01 and 1 are not merged"


def test_a_byte_order_mark_does_not_hide_the_first_column(tmp_path):
    text = _mine().to_csv(index=False)
    (tmp_path / "excel.csv").write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert read_table(tmp_path / "excel.csv")["image_id"].tolist() == ["a", "b"]


# --------------------------------------------------------------------------- MCI rule
def _visits(rows):
    return pd.DataFrame(rows, columns=["subject_id", "years_from_baseline", "diagnosis"])


def test_mci_conversion_groups_planted_trajectories():
    visits = _visits([
        ("hc", 0.0, "HC"), ("hc", 2.0, "MCI"),           # HC at baseline stays HC
        ("fast", 0.0, "MCI"), ("fast", 1.0, "MCI"), ("fast", 2.0, "AD"),
        ("edge", 0.5, "MCI"), ("edge", 3.5, "AD"),      # converts exactly 3.0 y after baseline
        ("stable", 0.0, "MCI"), ("stable", 3.0, "MCI"), ("stable", 5.0, "MCI"),
        ("late", 0.0, "MCI"), ("late", 3.0, "MCI"), ("late", 4.5, "AD"),
        ("short", 0.0, "MCI"), ("short", 1.5, "MCI"),
        ("ad", 0.0, "AD"), ("ad", 1.0, "AD"),
    ])
    out = label_mci_conversion(visits)
    group = out.groupby("subject_id")["diagnosis"].agg(set).to_dict()
    assert group == {"hc": {"HC"}, "fast": {"pMCI"}, "edge": {"pMCI"}, "stable": {"sMCI"},
                     "late": {"sMCI"}, "short": {"MCI"}, "ad": {"AD"}}
    np.testing.assert_array_equal(out["visit_diagnosis"], visits["diagnosis"])
    assert label_mci_conversion(visits, window_years=1.0).query(
        "subject_id == 'fast'")["diagnosis"].iloc[0] == "sMCI"


def test_mci_conversion_refuses_bad_input():
    with pytest.raises(CohortError, match=r"row 1: per-visit diagnosis must be HC, MCI or AD"):
        label_mci_conversion(_visits([("a", 0.0, "MCI"), ("a", 1.0, "Dementia")]))
    with pytest.raises(CohortError, match="conflicting baseline diagnoses"):
        label_mci_conversion(_visits([("a", 0.0, "MCI"), ("a", 0.0, "HC")]))
    with pytest.raises(ValueError, match="window_years"):
        label_mci_conversion(_visits([("a", 0.0, "MCI")]), window_years=0)
