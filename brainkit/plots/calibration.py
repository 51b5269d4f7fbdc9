"""Reliability diagram (paper Fig. 3)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from brainkit.plots._common import check_table, new_figure, ordered_losses
from brainkit.plots.theme import loss_color, loss_label

__all__ = ["reliability_diagram"]

_COLUMNS = ("count", "confidence", "accuracy")


def reliability_diagram(curves, *, title: str | None = None,
                        x_title: str = "Predicted probability",
                        y_title: str = "Observed frequency") -> go.Figure:
    """Reliability diagram: observed frequency against predicted probability per model.

    Parameters
    ----------
    curves : DataFrame or mapping of str to DataFrame
        Output(s) of :func:`brainkit.eval.reliability_curve` (columns ``count``,
        ``confidence``, ``accuracy``), keyed by loss name for several models.
    title, x_title, y_title : str
        For ``variant="top_label"`` curves pass ``x_title="Confidence"``,
        ``y_title="Accuracy"``.

    Returns
    -------
    plotly.graph_objects.Figure
        One ``lines+markers`` trace per model named ``"<label> (ECE = 10.2%)"`` (the ECE is
        the count-weighted mean of ``|accuracy - confidence|`` over the curve's bins), then
        a dotted ``"perfect calibration"`` diagonal.
    """
    if isinstance(curves, pd.DataFrame):
        curves = {"model": curves}
    if not isinstance(curves, Mapping) or not curves:
        raise TypeError("curves must be a DataFrame or a non-empty mapping name -> DataFrame")
    fig = new_figure(title=title, x_title=x_title, y_title=y_title)
    for name in ordered_losses(list(curves)):
        curve = curves[name]
        check_table(curve, _COLUMNS, f"curves[{name!r}]")
        count = curve["count"].to_numpy(dtype=float)
        conf = curve["confidence"].to_numpy(dtype=float)
        acc = curve["accuracy"].to_numpy(dtype=float)
        ece = float(np.sum(count * np.abs(acc - conf)) / count.sum())
        fig.add_trace(go.Scatter(
            x=conf, y=acc, mode="lines+markers",
            name=f"{loss_label(name)} (ECE = {100 * ece:.1f}%)",
            meta={"key": str(name), "ece": ece}, customdata=count,
            hovertemplate="p=%{x:.2f}<br>observed=%{y:.2f}<br>n=%{customdata}<extra></extra>",
            line=dict(color=loss_color(name), width=2), marker=dict(size=7),
        ))
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfect calibration",
                             meta={"kind": "diagonal"}, hoverinfo="skip",
                             line=dict(color="#999999", dash="dot", width=1)))
    fig.update_xaxes(range=[0, 1])
    fig.update_yaxes(range=[0, 1])
    return fig
