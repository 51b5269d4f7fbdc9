"""The book's prose states no result by hand: every number in a sentence is glued from a
computation, is the paper's (transcribed in brainkit.experiments.paper), or is a setting."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from brainkit.experiments import paper

BOOK = Path(__file__).resolve().parents[2] / "book"


def toc_files() -> list[str]:
    toc = yaml.safe_load((BOOK / "_toc.yml").read_text())
    return [toc["root"]] + [entry["file"] for entry in toc.get("chapters", [])]

# Numbers that name things rather than state results.
_STRUCTURAL = [
    r"(?:Figs?\.|Tables?|Eqs?\.|Sec\.)\s*\d+[a-z]?(?:\s*[-–,]\s*\d*[a-z]?)*",
    r"\d+(?:\.\d+)?\s*mm\b", r"\d+\s*[×x]\s*\d+(?:\s*[×x]\s*\d+)?", r"ResNet-\d+",
    r"(?:OASIS|ADNI)-\d", r"fcon1000", r"MNI152", r"CAT12", r"bf16", r"H200", r"\b[23]D\b",
    r"\(\d{4}\)", r"et al\. \d{4}(?:, \d{4})*", r"\b(?:19|20)\d{2}\b", r"L1\b", r"\bL_c\b",
    r"\bsd\b", r"aged \d+", r"under \d+", r"\d+ or (?:more|over)", r"after \d+",
    r"1\s*[−-]\s*w", r"1000 Functional", r"\bK\(0\)", r"\[0, 1\]",
]
_NUMBER = re.compile(r"(?<![\w.])\d+(?:[.,]\d+)*")


def _prose(text: str) -> str:
    text = re.sub(r"\A---.*?\n---\n", "", text, flags=re.S)            # front matter
    text = re.sub(r"```.*?```", "", text, flags=re.S)                  # code cells, code
    text = re.sub(r"\{glue:[a-z]+\}`[^`]*`", "", text)                 # glued values
    text = re.sub(r"`[^`]*`", "", text)                                # inline code
    text = re.sub(r"<[^>]+>", "", text)                                # html tags
    text = re.sub(r"\]\([^)]*\)", "]", text)                           # link targets
    text = re.sub(r"^\s*\d+\.\s", " ", text, flags=re.M)                 # list numbers
    return text


@pytest.mark.parametrize("page", toc_files())
def test_prose_numbers_are_glued_the_papers_or_settings(page):
    text = _prose((BOOK / f"{page}.md").read_text())
    for pattern in _STRUCTURAL:
        text = re.sub(pattern, " ", text)
    allowed = paper.numbers()
    loose = [m.group(0) for m in _NUMBER.finditer(text) if m.group(0) not in allowed]
    assert not loose, (f"{page}.md states numbers that are neither glued, the paper's nor "
                       f"structural: {loose[:10]}")
