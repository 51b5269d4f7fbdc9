"""Figures that describe a cohort: demographics, per-site ages, example slices."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

__all__ = ["age_histogram", "site_ages", "example_slices"]

_AXES = {"sagittal": 0, "coronal": 1, "axial": 2}


def age_histogram(table: pd.DataFrame, *, color: str = "dataset", bin_years: float = 2.0) -> go.Figure:
    """Overlaid age histograms, one trace per value of ``color``.

    Parameters
    ----------
    table : pandas.DataFrame
        Cohort table with ``age`` and the ``color`` column.
    color : str, default "dataset"
        Column that splits the histogram (e.g. ``"dataset"``, ``"diagnosis"``, ``"sex"``).
    bin_years : float, default 2.0
        Bin width in years.
    """
    if color not in table:
        raise ValueError(f"table has no column {color!r} to colour by; columns: {list(table.columns)}")
    fig = go.Figure()
    for name, group in table.groupby(color, sort=True):
        fig.add_trace(go.Histogram(x=group["age"], name=f"{name} (n={len(group)})",
                                   xbins={"size": bin_years}, opacity=0.65))
    fig.update_layout(barmode="overlay", xaxis_title="age (years)", yaxis_title="images",
                      legend_title=color)
    return fig


def site_ages(table: pd.DataFrame, *, max_sites: int = 40) -> go.Figure:
    """Age distribution per site (box plots), sorted by median age: site-age confounding at a glance."""
    medians = table.groupby("site")["age"].median().sort_values()
    sites = medians.index[:max_sites]
    fig = go.Figure()
    for site in sites:
        ages = table.loc[table["site"] == site, "age"]
        dataset = table.loc[table["site"] == site, "dataset"].iloc[0]
        fig.add_trace(go.Box(y=ages, name=str(site), boxpoints=False, showlegend=False,
                             hovertext=f"{dataset}: n={len(ages)}"))
    fig.update_layout(xaxis_title="site (sorted by median age)", yaxis_title="age (years)")
    return fig


def example_slices(cohort, indices: Sequence[int], *, axis: str = "axial",
                   position: float = 0.5, columns: int = 4) -> go.Figure:
    """Middle slices of a few images, titled with image id, age and diagnosis.

    Parameters
    ----------
    cohort : brainkit.data.Cohort
    indices : sequence of int
        Positions of the images to show.
    axis : {"axial", "coronal", "sagittal"}
    position : float in [0, 1], default 0.5
        Where to cut along ``axis`` (fraction of the grid).
    columns : int, default 4
    """
    if axis not in _AXES:
        raise ValueError(f"axis must be one of {sorted(_AXES)}, got {axis!r}")
    if not 0.0 <= position <= 1.0:
        raise ValueError(f"position must be in [0, 1], got {position}")
    indices = list(indices)
    if not indices:
        raise ValueError("indices is empty: pass the positions of the images to show")
    images = cohort.images(indices)
    ax = _AXES[axis]
    cut = int(round(position * (images.shape[ax + 1] - 1)))
    rows = int(np.ceil(len(indices) / columns))
    table = cohort.table
    titles = [f"{table.at[i, 'image_id']}<br>{table.at[i, 'age']:.0f} y, {table.at[i, 'diagnosis']}"
              for i in indices]
    fig = make_subplots(rows=rows, cols=min(columns, len(indices)), subplot_titles=titles,
                        horizontal_spacing=0.02, vertical_spacing=0.08)
    vmax = float(np.percentile(images, 99.5)) or 1.0
    for k, img in enumerate(images):
        sl = np.take(img, cut, axis=ax).T  # rows = second remaining axis, shown bottom-up
        fig.add_trace(go.Heatmap(z=sl, colorscale="Gray", zmin=0, zmax=vmax, showscale=k == 0,
                                 colorbar={"title": "GM"}),
                      row=k // columns + 1, col=k % columns + 1)
        fig.update_yaxes(scaleanchor=f"x{k + 1 if k else ''}", row=k // columns + 1,
                         col=k % columns + 1)
    fig.update_xaxes(showticklabels=False, constrain="domain")
    fig.update_yaxes(showticklabels=False, constrain="domain")
    fig.update_layout(height=260 * rows + 60, margin={"t": 70})
    return fig
