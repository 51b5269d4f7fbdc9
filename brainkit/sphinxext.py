"""Sphinx extension for the book: serve plotly.js from the site itself, never a CDN.

Add ``brainkit.sphinxext`` to ``sphinx.extra_extensions`` in ``book/_config.yml``. It adds
``plotly.min.js`` to every HTML page and copies the file shipped inside the installed plotly
package into ``_static/`` when the build finishes, with a small stylesheet that lets wide
result tables scroll.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .notebook import plotly_js_path

_JS_NAME = "plotly.min.js"


_CSS_NAME = "brainkit.css"
#: Wide result tables scroll sideways inside the page instead of running off it.
_CSS = """\
div.cell_output table, div.output table { display: block; max-width: 100%; overflow-x: auto; }
div.cell_output div.output_html, div.output div.output_html { overflow-x: auto; }
"""


def _add_js(app):
    if app.builder.format == "html":
        app.add_js_file(_JS_NAME, priority=100)
        app.add_css_file(_CSS_NAME)


def _copy_js(app, exception):
    if exception is None and app.builder.format == "html":
        static = Path(app.outdir) / "_static"
        static.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(plotly_js_path(), static / _JS_NAME)
        (static / _CSS_NAME).write_text(_CSS)


def setup(app):
    """Sphinx entry point."""
    app.connect("builder-inited", _add_js)
    app.connect("build-finished", _copy_js)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
