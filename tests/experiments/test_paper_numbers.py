"""The transcribed paper numbers match the paper's own text (when ../shared/paper is present)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from brainkit.data.paths import PROJECT_ROOT
from brainkit.experiments import paper

PAPER = PROJECT_ROOT.parent / "shared" / "paper" / "000_bddfc25e636581e2.txt"


@pytest.fixture(scope="module")
def number_lines():
    if not PAPER.is_file():
        pytest.skip(f"paper text not found at {PAPER}")
    lines = []
    for line in PAPER.read_text().splitlines():
        line = re.sub(r"<[^>]+>", " ", line)
        line = re.sub(r"\$[^$]*\$", " ", line)  # drop LaTeX (e.g. L^{y-aware}, R^2)
        tokens = [float(t) for t in re.findall(r"-?\d+(?:\.\d+)?", line)]
        if len(tokens) >= 8:
            lines.append(tokens)
    return lines


def contains(lines, values) -> bool:
    values = [v for v in values if v is not None]
    for tokens in lines:
        for start in range(len(tokens) - len(values) + 1):
            if np.allclose(tokens[start:start + len(values)], values):
                return True
    return False


def test_table3_rows_are_in_the_paper(number_lines):
    for scheme, by_loss in paper._TABLE3.items():
        for loss, values in by_loss.items():
            assert contains(number_lines, values), f"Table 3 {scheme}/{loss} not found in the paper"


def test_table4_rows_are_in_the_paper(number_lines):
    for loss, cells in paper._TABLE4.items():
        flat = [x for cell in cells for x in cell]
        assert contains(number_lines, flat), f"Table 4 {loss} not found in the paper"


def test_tidy_tables():
    t3 = paper.table3()
    assert len(t3) == 2 * 6 * 5
    exp = t3.query("loss == 'exp' and scheme == 'merge' and dataset == 'challenge'").iloc[0]
    assert exp.score == 0.93 and exp.bacc == pytest.approx(0.054)
    t4 = paper.table4()
    assert len(t4) == 24 and t4["mean"].between(0, 1).all()


def test_protocol_and_table1_are_in_the_paper():
    if not PAPER.is_file():
        pytest.skip(f"paper text not found at {PAPER}")
    text = PAPER.read_text()
    for name, row in paper.TABLE1.items():
        line = [ln for ln in text.splitlines() if ln.startswith(
            {"openbhb": "OpenBHB", "adni": "ADNI", "icbm": "ICBM", "oasis3": "OASIS3"}[name])
            and "\t" in ln][0]
        tokens = [float(t) for t in re.findall(r"\d+(?:\.\d+)?", line)]
        expected = [row["subjects"], row["images"], *row["age"], *row["range"]]
        assert np.allclose(tokens[-6:], expected), (name, tokens)
    protocol = text[text.index("*Experimental protocol.*"):][:2000]
    for phrase in ("5-fold CV", "33.2M parameters", "10^{-4}", "factor of 0.9 every 10 epochs",
                   "5 \\times 10^{-5}", "batch size of 32", "300 epochs",
                   "temperature of 2.0", "0.1 for all others"):
        assert phrase in protocol, phrase
