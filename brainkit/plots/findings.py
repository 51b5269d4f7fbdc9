"""The findings ledger as a figure: every finding's evidence on one axis."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from brainkit.plots._common import check_table, new_figure, numeric

__all__ = ["ledger_evidence", "VERDICT_COLORS"]

#: Marker colour per verdict of :func:`brainkit.experiments.findings.verdict`.
VERDICT_COLORS = {"supported": "#1b9e77", "contradicted": "#d95f02",
                  "inconclusive": "#7f7f7f", "not computed": "#cccccc"}

_COLUMNS = ("finding", "claimed", "estimate", "low", "high", "verdict")
_Z = 1.959963984540054   # the 95 % normal quantile: an interval's half-width in SEs


def ledger_evidence(ledger: pd.DataFrame, *, title: str | None = None) -> go.Figure:
    """Each finding's 95 % interval as a distance from its threshold, on one common axis.

    The findings measure different things (years, points, AUC, r), so each estimate and its
    interval are put in units of their own standard error (half the 95 % interval's width
    divided by 1.96) and signed so that the paper's side of the threshold is positive:
    ``(estimate - threshold) / se`` for a ``"> t"`` claim, ``(threshold - estimate) / se``
    for ``"< t"``; the bar is the interval itself on the same axis (percentile intervals
    are not symmetric). By the ledger's rule a finding is supported when its whole bar is
    right of 0 and contradicted when it is all left of 0.

    Parameters
    ----------
    ledger : DataFrame
        :func:`brainkit.experiments.findings.ledger` (``finding``, ``claimed`` such as
        ``"> 0"``, ``estimate``, ``low``, ``high``, ``verdict``). Rows without an estimate
        are left out.
    title : str, optional

    Returns
    -------
    plotly.graph_objects.Figure
        One marker trace per verdict (asymmetric error bars = the interval), findings top to
        bottom in
        ledger order; a vertical line at 0. ``customdata`` holds the estimate and interval in
        the statistic's own unit for the hover text.
    """
    check_table(ledger, _COLUMNS, "ledger")
    claimed = ledger["claimed"].astype(str).str.split()
    direction = claimed.str[0].to_numpy()
    if not set(direction) <= {">", "<"}:
        raise ValueError(f"ledger['claimed'] must read '> t' or '< t'; got "
                         f"{sorted(set(direction) - {'>', '<'})}")
    threshold = pd.to_numeric(claimed.str[1]).to_numpy(dtype=float)
    est, low, high = (numeric(ledger, c) for c in ("estimate", "low", "high"))
    sign = np.where(direction == ">", 1.0, -1.0)
    se = (high - low) / (2 * _Z)
    keep = np.isfinite(est) & np.isfinite(se) & (se > 0)
    scale = np.where(keep, se, 1.0)
    z = sign * (est - threshold) / scale
    ends = np.sort(np.column_stack([sign * (low - threshold), sign * (high - threshold)])
                   / scale[:, None], axis=1)     # the interval itself, on the same axis
    labels = [f"{i + 1}. {text}" for i, text in enumerate(ledger["finding"].astype(str))]
    fig = new_figure(title=title, x_title="evidence for the paper's side: (estimate - "
                     "threshold) / standard error", y_title="")
    for verdict, color in VERDICT_COLORS.items():
        rows = np.flatnonzero(keep & (ledger["verdict"].to_numpy() == verdict))
        if rows.size == 0:
            continue
        fig.add_trace(go.Scatter(
            x=z[rows], y=[labels[i] for i in rows], mode="markers", name=verdict,
            marker=dict(color=color, size=10),
            error_x=dict(type="data", symmetric=False, array=ends[rows, 1] - z[rows],
                         arrayminus=z[rows] - ends[rows, 0], color=color, thickness=2),
            customdata=np.column_stack([est[rows], low[rows], high[rows]]),
            hovertemplate="%{y}<br>estimate %{customdata[0]:.3g} "
                          "[%{customdata[1]:.3g}, %{customdata[2]:.3g}]<extra></extra>"))
    fig.add_vline(x=0, line=dict(color="black", width=1, dash="dot"))
    fig.update_yaxes(categoryorder="array", categoryarray=labels[::-1], automargin=True)
    fig.update_layout(height=max(320, 34 * len(labels) + 120), legend_title_text="verdict")
    return fig
