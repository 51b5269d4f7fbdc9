"""Figures describing a cohort: age distributions, per-site ages, example slices."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from brainkit.eval._validation import order_groups
from brainkit.plots._common import check_table, new_figure, numeric, rgba
from brainkit.plots.theme import GROUP_COLORS, LOSS_COLORS, TEMPLATE, loss_color, register_template

__all__ = ["category_colors", "age_histogram", "site_ages", "example_slices"]

# Colours for categories that are neither diagnoses nor losses (datasets, sites, ...).
_PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0B800",
            "#595959", "#1B9E77", "#7570B3")

_AXES = {"sagittal": 0, "coronal": 1, "axial": 2}


def category_colors(values) -> dict:
    """Colour per distinct value, in display order.

    Diagnoses get :data:`GROUP_COLORS`, losses :data:`LOSS_COLORS`; any other set of values
    (datasets, sites) gets a fixed palette in sorted order.

    Parameters
    ----------
    values : iterable
        The values of a categorical column.

    Returns
    -------
    dict
        ``value -> "#RRGGBB"``, ordered for display.
    """
    ordered = order_groups(values)
    if ordered and all(str(v) in GROUP_COLORS for v in ordered):
        return {v: GROUP_COLORS[str(v)] for v in ordered}
    if ordered and all(str(v) in LOSS_COLORS for v in ordered):
        return {v: loss_color(v) for v in ordered}
    return {v: _PALETTE[i % len(_PALETTE)] for i, v in enumerate(ordered)}


def age_histogram(table: pd.DataFrame, *, color: str | None = None, age: str = "age",
                  bin_width: float = 2.0, barmode: str = "stack", title: str | None = None,
                  x_title: str = "Age (years)", y_title: str = "Images") -> go.Figure:
    """Histogram of ages, optionally split by a categorical column.

    Parameters
    ----------
    table : DataFrame
        One row per image (a cohort table).
    color : str, optional
        Column to split by (e.g. ``"dataset"``, ``"diagnosis"``); one trace per value.
    age : str, default "age"
    bin_width : float, default 2.0
        Years per bin (bins are shared by all traces).
    barmode : {"stack", "overlay"}, default "stack"
    title, x_title, y_title : str

    Returns
    -------
    plotly.graph_objects.Figure
        One ``go.Histogram`` per value of ``color`` (or a single one).
    """
    if barmode not in ("stack", "overlay"):
        raise ValueError(f"barmode must be 'stack' or 'overlay'; got {barmode!r}")
    if not bin_width > 0:
        raise ValueError(f"bin_width must be positive; got {bin_width!r}")
    check_table(table, [age, color])
    ages = numeric(table, age)
    start = float(np.floor(np.nanmin(ages) / bin_width) * bin_width)
    xbins = dict(start=start, end=float(np.nanmax(ages)) + bin_width, size=float(bin_width))
    fig = new_figure(title=title, x_title=x_title, y_title=y_title)
    opacity = 0.6 if barmode == "overlay" else 0.9
    if color is None:
        fig.add_trace(go.Histogram(x=ages, xbins=xbins, name="all", marker_color=_PALETTE[0],
                                   opacity=opacity))
    else:
        for value, col in category_colors(table[color]).items():
            mask = (table[color] == value).to_numpy()
            fig.add_trace(go.Histogram(x=ages[mask], xbins=xbins, name=str(value),
                                       marker_color=col, opacity=opacity,
                                       meta={"value": str(value)}))
    fig.update_layout(barmode=barmode, bargap=0.05)
    return fig


def site_ages(table: pd.DataFrame, *, site: str = "site", age: str = "age",
              color: str | None = "dataset", title: str | None = None,
              x_title: str = "Site (ordered by median age)",
              y_title: str = "Age (years)") -> go.Figure:
    """Age distribution of each acquisition site, sites ordered by median age.

    Shows the site-age confounding that makes a site probe informative.

    Parameters
    ----------
    table : DataFrame
        One row per image with ``site`` and ``age`` columns.
    site, age : str
    color : str or None, default "dataset"
        Column colouring the boxes (ignored when absent from ``table``).
    title, x_title, y_title : str

    Returns
    -------
    plotly.graph_objects.Figure
        One ``go.Box`` trace per value of ``color`` (x = site, y = age); the x axis lists
        the sites by increasing median age.
    """
    check_table(table, [site, age])
    ages = numeric(table, age)
    sites = table[site].astype(str).to_numpy()
    medians = pd.Series(ages).groupby(sites).median().sort_values(kind="stable")
    fig = new_figure(title=title, x_title=x_title, y_title=y_title)
    if color is not None and color in table.columns:
        for value, col in category_colors(table[color]).items():
            mask = (table[color] == value).to_numpy()
            fig.add_trace(go.Box(x=sites[mask], y=ages[mask], name=str(value), marker_color=col,
                                 fillcolor=rgba(col, 0.35), line=dict(color=col, width=1),
                                 boxpoints=False, meta={"value": str(value)}))
    else:
        fig.add_trace(go.Box(x=sites, y=ages, name="age", marker_color=_PALETTE[0],
                             boxpoints=False, showlegend=False))
    fig.update_xaxes(categoryorder="array", categoryarray=medians.index.tolist(),
                     showticklabels=len(medians) <= 30)
    fig.update_layout(boxmode="overlay")
    return fig


def example_slices(cohort, indices, *, axis: str = "axial", position: float = 0.5,
                   cols: int = 4, label=("diagnosis", "age", "site"),
                   title: str | None = None) -> go.Figure:
    """A grid of 2-D slices through some images of a cohort.

    Parameters
    ----------
    cohort : brainkit.data.Cohort
        A cohort with images.
    indices : array-like of int
        Positions of the images to show (the cohort table's index).
    axis : {"axial", "coronal", "sagittal"}, default "axial"
        Slicing direction (voxel axes Z, Y and X of the MNI grid).
    position : float, default 0.5
        Where to cut, as a fraction of the grid along ``axis``.
    cols : int, default 4
        Panels per row.
    label : sequence of str, default ("diagnosis", "age", "site")
        Table columns written in each panel's title.
    title : str, optional

    Returns
    -------
    plotly.graph_objects.Figure
        One grey-scale ``go.Heatmap`` per image (shared intensity range), rows of ``cols``.
    """
    if axis not in _AXES:
        raise ValueError(f"axis must be one of {list(_AXES)}; got {axis!r}")
    if not 0.0 <= float(position) <= 1.0:
        raise ValueError(f"position must be a fraction in [0, 1]; got {position!r}")
    if isinstance(cols, bool) or not isinstance(cols, int) or cols < 1:
        raise ValueError(f"cols must be a positive integer; got {cols!r}")
    idx = np.asarray(indices)
    if idx.ndim != 1 or idx.size == 0 or not np.issubdtype(idx.dtype, np.integer):
        raise ValueError("indices must be a non-empty 1-D sequence of integer positions")
    images = cohort.images(idx)
    table = cohort.table.iloc[idx]
    labels = [c for c in label if c in table.columns]
    ax = _AXES[axis]
    k = int(round(float(position) * (images.shape[1 + ax] - 1)))
    slices = np.take(images, k, axis=1 + ax)  # (n, a, b): the two remaining axes in order
    zmin, zmax = float(np.percentile(slices, 1)), float(np.percentile(slices, 99.5))
    rows = int(np.ceil(len(idx) / cols))

    def _fmt(v):
        return f"{v:.0f}" if isinstance(v, (float, np.floating)) else str(v)

    titles = [", ".join(_fmt(table.iloc[i][c]) for c in labels) for i in range(len(idx))]
    register_template()
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=titles,
                        horizontal_spacing=0.01, vertical_spacing=0.08)
    for i, sl in enumerate(slices):
        fig.add_trace(go.Heatmap(z=sl.T, colorscale="gray", zmin=zmin, zmax=zmax, showscale=False,
                                 hoverinfo="skip", name=str(table.index[i])),
                      row=i // cols + 1, col=i % cols + 1)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    for i in range(len(idx)):
        suffix = "" if i == 0 else str(i + 1)
        fig.update_yaxes(scaleanchor=f"x{suffix}", scaleratio=1, selector=dict(anchor=f"x{suffix}"))
    fig.update_layout(template=TEMPLATE, title=title, height=max(220 * rows, 260),
                      margin=dict(l=10, r=10, t=60 if title else 40, b=10))
    fig.update_annotations(font_size=11)
    return fig
