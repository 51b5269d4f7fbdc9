"""The book builds offline with warnings as errors, and its figures render."""

from __future__ import annotations

import re

import pytest

pytestmark = pytest.mark.book


def test_every_toc_chapter_is_in_the_html(built_book, toc_entries):
    for name in toc_entries:
        assert (built_book / f"{name}.html").is_file(), f"{name} missing from the built book"


def test_plotly_is_served_locally(built_book):
    js = built_book / "_static" / "plotly.min.js"
    assert js.is_file() and js.stat().st_size > 1_000_000
    for page in built_book.rglob("*.html"):
        html = page.read_text()
        if "Plotly.newPlot" in html:
            assert re.search(r'<script src="(\.\./)*_static/plotly\.min\.js(\?v=[0-9a-f]+)?"',
                             html), f"{page.name} draws figures without loading plotly.min.js"


#: Chapters that explain rather than analyse (no figure required).
NOT_ANALYSIS = {"intro"}


def test_chapters_hold_figures_and_no_errors(built_book, toc_entries):
    for name in toc_entries:
        if name in NOT_ANALYSIS:
            continue
        html = (built_book / f"{name}.html").read_text()
        assert "Plotly.newPlot" in html, f"{name} has no rendered plotly figure"
        assert "Traceback" not in html and "output_error" not in html, f"{name} shows an error"
        assert "application/vnd.plotly" not in html


def test_full_scale_lists_measured_speed_and_this_build(built_book):
    """The speed section ran: the machine, the loaders, the recorded reports, chapter times."""
    html = (built_book / "chapters" / "full_scale.html").read_text()
    for text in ("uint8 resident", "float32 .npy files", "torch_threads", "bench_end_to_end",
                 "python benchmarks/", "Run Time (s)"):
        assert text in html, f"full_scale.html lacks {text!r}"
    # the execution table lists every executed chapter of this build
    for chapter in ("data", "scaling", "site_bias", "downstream"):
        assert f'href="{chapter}.html"' in html, f"execution table lacks {chapter}"


def test_pages_load_nothing_from_the_network(built_book):
    """The book reads offline: no script, stylesheet or image from another host."""
    pattern = re.compile(r'<(?:script|link|img)\b[^>]*\b(?:src|href)="(https?:)?//', re.I)
    for page in built_book.rglob("*.html"):
        match = pattern.search(page.read_text())
        assert match is None, f"{page.relative_to(built_book)} loads {match.group(0)}"

