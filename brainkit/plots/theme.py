"""One look for every brainkit figure: a plotly template and fixed colours.

The template ``"brainkit"`` is registered in :data:`plotly.io.templates` once, when this
module is imported; figures select it explicitly (``layout.template``) and the user's
default template is left alone. Each loss has a fixed colour (Okabe-Ito palette, readable
with colour-vision deficiencies) so a loss looks the same in every chapter; diagnoses too.
"""

from __future__ import annotations

import zlib

import plotly.graph_objects as go
import plotly.io as pio

__all__ = [
    "TEMPLATE",
    "LOSS_COLORS",
    "LOSS_LABELS",
    "GROUP_COLORS",
    "register_template",
    "loss_color",
    "loss_label",
    "group_color",
]

#: Name of the registered plotly template.
TEMPLATE = "brainkit"

#: Fixed colour per loss name (the names used by ``make_loss``, the L1 baseline and the
#: classical voxel-ridge baseline).
LOSS_COLORS: dict[str, str] = {
    "ridge": "#000000",
    "l1": "#595959",
    "yaware": "#0072B2",
    "threshold": "#009E73",
    "exp": "#D55E00",
    "rnc": "#CC79A7",
    "adapn": "#E69F00",
}

#: Display names of the losses (legends).
LOSS_LABELS: dict[str, str] = {
    "ridge": "voxel ridge",
    "l1": "L1",
    "yaware": "y-aware",
    "threshold": "threshold",
    "exp": "exp",
    "rnc": "RnC",
    "adapn": "AdapN",
}

#: Fixed colour per diagnosis of the cohort vocabulary.
GROUP_COLORS: dict[str, str] = {
    "HC": "#56B4E9",
    "sMCI": "#009E73",
    "pMCI": "#E69F00",
    "MCI": "#F0B800",
    "AD": "#B2182B",
}

# Names outside the tables above get one of these, chosen by a stable hash of the name.
_EXTRA = ("#1B9E77", "#7570B3", "#E7298A", "#66A61E", "#A6761D", "#17BECF", "#8C564B", "#BCBD22")


def register_template() -> str:
    """Register the ``"brainkit"`` template in :data:`plotly.io.templates` (idempotent).

    Returns
    -------
    str
        The template name, :data:`TEMPLATE`.
    """
    if TEMPLATE not in pio.templates:
        base = pio.templates["simple_white"]
        template = go.layout.Template(base)
        template.layout.update(
            font=dict(family="Helvetica, Arial, sans-serif", size=13, color="#222222"),
            title=dict(x=0.02, xanchor="left", font=dict(size=15)),
            legend=dict(bgcolor="rgba(255,255,255,0.8)", borderwidth=0),
            margin=dict(l=70, r=20, t=50, b=60),
            colorway=list(LOSS_COLORS.values()) + list(_EXTRA),
            hovermode="closest",
            height=460,
        )
        template.layout.xaxis.update(showgrid=True, gridcolor="#EBEBEB", zeroline=False, ticks="outside")
        template.layout.yaxis.update(showgrid=True, gridcolor="#EBEBEB", zeroline=False, ticks="outside")
        pio.templates[TEMPLATE] = template
    return TEMPLATE


def _fallback(name: str) -> str:
    return _EXTRA[zlib.crc32(str(name).encode()) % len(_EXTRA)]


def loss_color(name: str) -> str:
    """Colour of a loss (fixed for the known losses, stable for any other name)."""
    return LOSS_COLORS.get(str(name), _fallback(name))


def loss_label(name: str) -> str:
    """Display name of a loss (the name itself when unknown)."""
    return LOSS_LABELS.get(str(name), str(name))


def group_color(name: str) -> str:
    """Colour of a diagnosis group (fixed for the vocabulary, stable for any other name)."""
    return GROUP_COLORS.get(str(name), _fallback(name))


register_template()
