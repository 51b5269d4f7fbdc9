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



# --------------------------------------------------------------------------- truthful prose
_CLAIM = re.compile(r'<span class="bk-claim" data-word="([^"]*)" data-value="([^"]*)" '
                    r'data-low="([^"]*)" data-high="([^"]*)"(?: data-claimed="([^"]*)")?>')
_DIRECTIONS = {"higher": "up", "rises": "up", "raises": "up", "lower": "down", "falls": "down",
               "lowers": "down", "not clearly different": "none",
               "does not change clearly": "none", "does not clearly change": "none"}
# Words that place an interval against a nominal value (data-claimed "vs T").
_AGAINST = {"at about the nominal rate": "none", "less often than nominal": "down",
            "more often than nominal": "up", "less often": "down", "about as often": "none"}


def _expected_word(word, value, low, high, claimed):
    import math

    if word in _AGAINST:
        target = float(claimed.split()[1])
        side = "up" if low > target else "down" if high < target else "none"
        return _AGAINST[word] == side
    if word in _DIRECTIONS:
        side = "up" if low > 0 else "down" if high < 0 else "none"
        return _DIRECTIONS[word] == side
    if word in ("supported", "contradicted", "inconclusive", "not computed"):
        if not (math.isfinite(low) and math.isfinite(high)):
            return word == "not computed"
        op, threshold = claimed.split()
        threshold = float(threshold)
        above, below = low > threshold, high < threshold
        good, bad = (above, below) if op == ">" else (below, above)
        return word == ("supported" if good else "contradicted" if bad else "inconclusive")
    if word in ("above", "not clearly above"):
        return (value > 0.1) == (word == "above")
    raise AssertionError(f"unknown claim word {word!r}")


def test_every_glued_claim_agrees_with_its_numbers(built_book, toc_entries):
    """Each result word of the book (lower / higher / supported ...) is re-derived from the
    numbers the page carries beside it."""
    seen = 0
    for name in toc_entries:
        html = (built_book / f"{name}.html").read_text()
        for word, value, low, high, claimed in _CLAIM.findall(html):
            seen += 1
            value, low, high = (float(x) for x in (value, low, high))
            assert _expected_word(word, value, low, high, claimed), \
                f"{name}: '{word}' disagrees with value {value} [{low}, {high}] {claimed}"
    assert seen >= 20, f"only {seen} glued claims in the whole book"


def test_the_ledger_page_lists_verdicts_with_intervals_and_n(built_book):
    html = (built_book / "chapters" / "findings.html").read_text()
    for text in ("estimate [95 % interval]", "verdict", "scaling", "transfer", "calibration",
                 "voxel ridge"):
        assert text in html, f"findings.html lacks {text!r}"
    verdicts = re.findall(r"<td[^>]*>(supported|contradicted|inconclusive|not computed)</td>",
                          html)
    assert len(verdicts) >= 12, verdicts
    assert re.search(r"<td[^>]*>\d+ images \(\d+ subj\., \d+ seeds?\)</td>", html), \
        "no n beside a statistic"


def test_every_comparison_table_has_the_voxel_ridge(built_book):
    for chapter in ("scaling", "site_bias", "brain_age_gap", "downstream", "data"):
        html = (built_book / "chapters" / f"{chapter}.html").read_text()
        assert "voxel ridge" in html or ">ridge<" in html, f"{chapter} has no voxel-ridge row"


def test_build_printed_progress_lines(built_book):
    """A line per run the store computes; a build that reads every run back (a second
    `make test`) prints none."""
    log = (built_book.parent / "build-stdout.txt").read_text()
    computed = int((built_book.parent / "runs-computed.txt").read_text())
    if computed:
        assert "[brainkit " in log and ": done in " in log
        assert log.count(": done in ") >= computed, (computed, log.count(": done in "))
    else:
        assert "[brainkit " not in log
