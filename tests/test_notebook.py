"""The offline plotly renderer used by the book."""

from __future__ import annotations

import plotly.graph_objects as go
import plotly.io as pio

import brainkit.notebook


def test_renderer_emits_html_without_plotly_js_or_cdn():
    previous = pio.renderers.default
    try:
        brainkit.notebook.setup()
        assert pio.renderers.default == "brainkit"
        bundle = pio.renderers["brainkit"].to_mimebundle(go.Figure(go.Scatter(y=[1, 3, 2])).to_dict())
    finally:
        pio.renderers.default = previous
    html = bundle["text/html"]
    assert list(bundle) == ["text/html"]
    assert "Plotly.newPlot" in html
    assert "cdn" not in html.lower() and "https://" not in html
    assert len(html) < 20_000, "plotly.js itself must not be embedded in each figure"


def test_plotly_js_ships_with_plotly():
    path = brainkit.notebook.plotly_js_path()
    assert path.stat().st_size > 1_000_000
    assert path.read_bytes()[:200].lstrip().startswith(b"/**")
