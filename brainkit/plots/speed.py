"""Figures of measured speed: the data loaders against each other, and recorded benchmarks."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from brainkit.plots._common import check_table, new_figure, numeric

__all__ = ["throughput_bars"]

_PLAIN, _OURS = "#595959", "#0072B2"


def throughput_bars(table: pd.DataFrame, *, value: str = "volumes_per_s",
                    label: str | None = None, highlight: str = "uint8",
                    title: str | None = None,
                    x_title: str = "Volumes per second") -> go.Figure:
    """Horizontal bars of throughput, one per row, in the table's order (first on top).

    Parameters
    ----------
    table : DataFrame
        E.g. :func:`brainkit.experiments.loader_throughput` (rows indexed by loader name) or
        rows of :func:`brainkit.experiments.benchmark_reports`.
    value : str, default "volumes_per_s"
        The numeric column to plot.
    label : str, optional
        The column naming each bar (default: the index).
    highlight : str, default "uint8"
        Bars whose label contains this text are drawn in brainkit's colour, the others in grey
        (e.g. the packed store against the float32 baselines).
    title, x_title : str

    Returns
    -------
    plotly.graph_objects.Figure
        One ``go.Bar`` (orientation ``"h"``) with the values printed on the bars.
    """
    check_table(table, [value, label])
    if len(table) == 0:
        raise ValueError("table has no rows to plot")
    values = numeric(table, value)
    names = [str(v) for v in (table[label] if label is not None else table.index)]
    colors = [_OURS if highlight and highlight in n else _PLAIN for n in names]
    fig = new_figure(title=title, x_title=x_title, y_title="")
    fig.add_trace(go.Bar(x=values, y=names, orientation="h", marker_color=colors,
                         text=[f"{v:,.0f}" if abs(v) >= 10 else f"{v:.2f}" for v in values],
                         textposition="auto", hovertemplate="%{y}: %{x:,.1f}<extra></extra>"))
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(showlegend=False, height=120 + 40 * len(names))
    return fig
