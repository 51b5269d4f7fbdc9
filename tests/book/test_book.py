"""The book builds offline with warnings as errors, and its figures render."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
BOOK = ROOT / "book"

pytestmark = pytest.mark.book


def toc_files() -> list[str]:
    toc = yaml.safe_load((BOOK / "_toc.yml").read_text())
    files = [toc["root"]]
    stack = list(toc.get("chapters", [])) + [c for p in toc.get("parts", []) for c in p["chapters"]]
    while stack:
        entry = stack.pop(0)
        files.append(entry["file"])
        stack.extend(entry.get("sections", []))
    return files


@pytest.fixture(scope="session")
def built_book(tmp_path_factory):
    """Build the book once, as `make book` does, into a temporary folder."""
    out = tmp_path_factory.mktemp("book")
    env = {**os.environ, "BRAINKIT_PROFILE": os.environ.get("BRAINKIT_PROFILE", "ci")}
    jb = Path(sys.executable).with_name("jupyter-book")
    proc = subprocess.run(
        [str(jb), "build", str(BOOK), "--path-output", str(out),
         "--warningiserror", "--nitpick", "--keep-going"],
        capture_output=True, text=True, env=env, timeout=3600,
    )
    if proc.returncode != 0:
        pytest.fail(f"book build failed (exit {proc.returncode}):\n{proc.stdout[-6000:]}\n"
                    f"{proc.stderr[-6000:]}")
    return out / "_build" / "html"


def test_every_toc_chapter_is_in_the_html(built_book):
    for name in toc_files():
        assert (built_book / f"{name}.html").is_file(), f"{name} missing from the built book"


def test_plotly_is_served_locally(built_book):
    js = built_book / "_static" / "plotly.min.js"
    assert js.is_file() and js.stat().st_size > 1_000_000
    index = (built_book / "index.html").read_text()
    assert re.search(r'<script src="_static/plotly\.min\.js(\?v=[0-9a-f]+)?"', index)
    assert "cdn.plot.ly" not in index


def test_chapters_hold_figures_and_no_errors(built_book):
    for name in toc_files():
        if not name.startswith("chapters/"):
            continue
        html = (built_book / f"{name}.html").read_text()
        assert "Plotly.newPlot" in html, f"{name} has no rendered plotly figure"
        assert "Traceback" not in html and "output_error" not in html, f"{name} shows an error"
        assert "application/vnd.plotly" not in html
