"""``brainkit report``: a predictions TSV in, Markdown out; bad inputs are one line, exit 2."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from brainkit.cli import main

SECTIONS = ("# Brain-age evaluation report", "## Overall (controls)", "## MAE by site (controls)",
            "## MAE by age band", "## Each site against the others", "## AD vs HC: AUC")


def predictions(n_subjects=40, seed=0) -> pd.DataFrame:
    """What a ``brainkit predict`` writes: ids, age, predicted_age, bag, bag_corrected, ..."""
    rng = np.random.default_rng(seed)
    sessions = 2
    subject = np.repeat([f"sub-{i:03d}" for i in range(n_subjects)], sessions)
    age = np.repeat(rng.uniform(55, 90, n_subjects), sessions) + np.tile([0.0, 1.5], n_subjects)
    diagnosis = np.repeat(rng.choice(["HC", "AD"], n_subjects, p=[0.6, 0.4]), sessions)
    pred = age + rng.normal(0, 4, age.size) + 4.0 * (diagnosis == "AD")
    return pd.DataFrame({
        "participant_id": subject, "session_id": np.tile(["ses-1", "ses-2"], n_subjects),
        "image_id": [f"{s}_ses-{k}" for s, k in zip(subject, np.tile([1, 2], n_subjects))],
        "age": age, "predicted_age": pred, "bag": pred - age,
        "bag_corrected": pred - age - 0.5, "site": np.repeat(rng.choice(["a", "b"], n_subjects),
                                                             sessions),
        "diagnosis": diagnosis})


@pytest.fixture
def results(tmp_path):
    path = tmp_path / "results.tsv"
    predictions().to_csv(path, sep="\t", index=False)
    return path


def test_report_prints_every_section_and_exits_0(results, capsys):
    assert main(["report", str(results), "--n-boot", "50"]) == 0
    out, err = capsys.readouterr()
    for section in SECTIONS:
        assert section in out, section
    assert "Corrected predicted ages are `age + bag_corrected`." in out
    assert "inflated by construction" in out
    assert "| uncorrected | corrected |" in out
    assert "subject `participant_id`" in out
    assert err == ""


def test_bag_columns_map_to_predicted_ages(results, capsys, tmp_path):
    table = predictions()
    derived = tmp_path / "from_bag.csv"                  # a CSV works too
    table.drop(columns="predicted_age").to_csv(derived, index=False)
    out_md = tmp_path / "out" / "report.md"
    assert main(["report", str(derived), "--n-boot", "50", "--out", str(out_md)]) == 0
    out, err = capsys.readouterr()
    assert "Predicted ages are `age + bag`." in out
    assert out_md.read_text() == out                     # the file holds what was printed
    assert err == f"wrote {out_md}\n"
    hc = table[table.diagnosis == "HC"]
    mae_corrected = np.mean(np.abs(hc.bag_corrected))
    assert f"| MAE (years) | {np.mean(np.abs(hc.bag)):.2f} [" in out
    assert f"| {mae_corrected:.2f} [" in out


def test_case_and_control_flags(results, capsys, tmp_path):
    table = predictions().replace({"diagnosis": {"HC": "CN"}})
    path = tmp_path / "adni.tsv"
    table.to_csv(path, sep="\t", index=False)
    assert main(["report", str(path), "--n-boot", "20", "--control", "CN"]) == 0
    assert "## AD vs CN: AUC" in capsys.readouterr().out
    assert main(["report", str(path), "--n-boot", "20"]) == 2
    err = capsys.readouterr().err
    assert err == (f"brainkit report: error: {path}: no control rows: column 'diagnosis' has "
                   "no 'HC' (it holds ['AD', 'CN']); name the control group (--control)\n")


@pytest.mark.parametrize("change, message", [
    (lambda t: t.drop(columns="age"), "missing column 'age'"),
    (lambda t: t.drop(columns=["predicted_age", "bag"]), "missing a predicted age"),
    (lambda t: t.assign(predicted_age=["x"] + [1.0] * (len(t) - 1)),
     "'predicted_age' must hold a finite number on every row; rows ['sub-000_ses-1']"),
    (lambda t: t.drop(columns="predicted_age").assign(bag=["?"] + [0.0] * (len(t) - 1)),
     "column 'bag' must be numeric on every row; lines [2]"),
])
def test_bad_tables_are_one_line_and_exit_2(change, message, tmp_path, capsys):
    path = tmp_path / "bad.tsv"
    change(predictions()).to_csv(path, sep="\t", index=False)
    assert main(["report", str(path), "--n-boot", "20"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"brainkit report: error: {path}: ") and err.count("\n") == 1, err
    assert message in err


def test_missing_unreadable_and_bad_flags_are_one_line_and_exit_2(tmp_path, capsys, results):
    missing = tmp_path / "nope.tsv"
    assert main(["report", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope.tsv" in err and "does not exist" in err
    garbage = tmp_path / "garbage.tsv"
    garbage.write_bytes(b"\xff\xfe\x00\x81" * 50)
    assert main(["report", str(garbage)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "garbage.tsv" in err and "not a readable table" in err
    assert main(["report", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (f"brainkit report: error: {tmp_path}: is a folder; "
                                       "expected a TSV or CSV file of predictions\n")
    empty = tmp_path / "empty.tsv"
    empty.write_text("")
    assert main(["report", str(empty)]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert main(["report", str(results), "--n-boot", "5"]) == 2
    assert capsys.readouterr().err == ("brainkit report: error: --n-boot: expected an integer "
                                       ">= 10, got 5\n")


def test_the_installed_command_runs(results):
    done = subprocess.run([sys.executable, "-m", "brainkit.cli", "report", str(results),
                           "--n-boot", "20"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "## Overall (controls)" in done.stdout
