"""Glue for notebooks and the book: an offline plotly renderer and a Sphinx extension.

myst-nb drops plotly's default MIME type (``application/vnd.plotly.v1+json``), so figures
would vanish from the HTML. brainkit registers a plotly renderer named ``"brainkit"`` that
emits a plain ``text/html`` div plus a ``Plotly.newPlot`` call, *without* embedding plotly.js
or pointing at a CDN. The Sphinx extension :mod:`brainkit.sphinxext`
copies the ``plotly.min.js`` shipped inside the installed plotly package into the built site's
``_static/`` and adds it to every page, so the book renders offline.

In a chapter::

    import brainkit.notebook
    brainkit.notebook.setup()   # once, in the first cell
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import plotly
import plotly.io as pio
from plotly.io.base_renderers import MimetypeRenderer

__all__ = ["BookContext", "BookRenderer", "setup", "plotly_js_path", "RENDERER_NAME"]

RENDERER_NAME = "brainkit"
_JS_NAME = "plotly.min.js"


class BookRenderer(MimetypeRenderer):
    """Render a figure as a ``text/html`` fragment that expects a global ``Plotly``.

    Parameters
    ----------
    config : dict, optional
        plotly.js config (defaults: responsive, no logo).
    """

    def __init__(self, config: dict | None = None):
        self.config = {"responsive": True, "displaylogo": False, **(config or {})}

    def to_mimebundle(self, fig_dict):
        html = pio.to_html(
            fig_dict,
            config=self.config,
            full_html=False,
            include_plotlyjs=False,
            validate=False,
            default_width="100%",
        )
        return {"text/html": html}


@dataclass(frozen=True)
class BookContext:
    """What a chapter needs: the profile, the shared results store, the device."""

    profile: object
    store: object
    device: str


def setup(renderer: str = RENDERER_NAME, *, profile=None, store=None) -> BookContext:
    """Register the offline renderer, make it plotly's default, and resolve the settings.

    Parameters
    ----------
    renderer : str, default "brainkit"
        The renderer to make default (pass e.g. ``"notebook"`` inside JupyterLab).
    profile : str or Profile, optional
        Default: ``BRAINKIT_PROFILE`` or ``ci``.
    store : path or ResultsStore, optional
        Default: ``BRAINKIT_STORE`` or ``.brainkit_store`` in the project (shared by all
        chapters, so a run trained by one chapter is loaded by the next).
    """
    from .experiments import ResultsStore, default_store, get_profile

    pio.renderers[RENDERER_NAME] = BookRenderer()
    pio.renderers.default = renderer
    # Progress bars in executed notebooks fall back to text without ipywidgets; say nothing.
    warnings.filterwarnings("ignore", message="IProgress not found")
    # Announcements of future default changes in the libraries brainkit calls (a newer
    # scikit-learn or pandas than the lock's) are not the reader's to act on; brainkit's own
    # warnings and every other category still show (and fail the book build).
    for module in ("sklearn", "pandas", "statsmodels", "nilearn", "neuroHarmonize"):
        warnings.filterwarnings("ignore", category=FutureWarning, module=module)
    prof = get_profile(profile)
    st = store if isinstance(store, ResultsStore) else default_store(store)
    return BookContext(profile=prof, store=st, device=prof.resolved_device())


def plotly_js_path() -> Path:
    """Path of the ``plotly.min.js`` bundled with the installed plotly package."""
    path = Path(plotly.__file__).parent / "package_data" / _JS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: this plotly install does not ship "
                                f"{_JS_NAME}; reinstall plotly")
    return path
