"""Brain-age-gap figures (paper Fig. 2): distributions per group, ROC, trajectories."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from brainkit.eval._validation import order_groups
from brainkit.plots._common import check_table, new_figure, numeric, ordered_losses, rgba
from brainkit.plots.theme import group_color, loss_color, loss_label

__all__ = ["bag_distributions", "roc_curves", "bag_trajectories", "predicted_ages"]


def bag_distributions(table: pd.DataFrame, *, value: str = "bag", group: str = "diagnosis",
                      loss: str | None = "loss", kind: str = "violin",
                      title: str | None = None, x_title: str = "Group",
                      y_title: str = "Brain-age gap (years)") -> go.Figure:
    """Distribution of the brain-age gap per group, side by side per loss (Fig. 2a).

    Parameters
    ----------
    table : DataFrame
        One row per image (and loss) with columns ``value``, ``group`` and ``loss``.
    value, group : str
        Column names.
    loss : str or None, default "loss"
        Column of the loss; ``None`` draws one distribution per group, coloured by group.
    kind : {"violin", "box"}, default "violin"
    title, x_title, y_title : str

    Returns
    -------
    plotly.graph_objects.Figure
        One ``go.Violin`` (or ``go.Box``) trace per loss (per group when ``loss`` is None);
        groups are ordered HC, sMCI, pMCI, MCI, AD, then others.
    """
    if kind not in ("violin", "box"):
        raise ValueError(f"kind must be 'violin' or 'box'; got {kind!r}")
    check_table(table, [value, group, loss])
    y = numeric(table, value)
    groups = order_groups(table[group])
    fig = new_figure(title=title, x_title=x_title, y_title=y_title)
    trace = go.Violin if kind == "violin" else go.Box

    def _add(mask, name, color, key):
        common = dict(x=table[group].to_numpy()[mask], y=y[mask], name=name, legendgroup=key,
                      meta={"key": key}, marker=dict(color=color), line=dict(color=color))
        if kind == "violin":
            fig.add_trace(trace(**common, box_visible=True, meanline_visible=True, points=False,
                                spanmode="hard", fillcolor=rgba(color, 0.35)))
        else:
            fig.add_trace(trace(**common, boxmean=True, fillcolor=rgba(color, 0.35)))

    if loss is None:
        for g in groups:
            mask = (table[group] == g).to_numpy()
            _add(mask, str(g), group_color(g), str(g))
    else:
        for name in ordered_losses(table[loss]):
            mask = (table[loss] == name).to_numpy()
            _add(mask, loss_label(name), loss_color(name), str(name))
        if kind == "violin":
            fig.update_layout(violinmode="group")
        else:
            fig.update_layout(boxmode="group")
    fig.update_xaxes(categoryorder="array", categoryarray=[str(g) for g in groups])
    fig.add_hline(y=0.0, line=dict(color="#999999", width=1, dash="dot"))
    return fig


def roc_curves(curves: Mapping, *, title: str | None = None,
               x_title: str = "False-positive rate",
               y_title: str = "True-positive rate") -> go.Figure:
    """ROC curves of the brain-age gap, one per loss (Fig. 2b).

    Parameters
    ----------
    curves : mapping of str to RocCurve
        E.g. ``{"exp": bag_roc(bag_exp, is_ad), "l1": bag_roc(bag_l1, is_ad)}``; each value
        needs ``fpr``, ``tpr`` and ``auc`` (:class:`brainkit.eval.RocCurve`). Keys that are
        loss names get the loss's colour and label.
    title, x_title, y_title : str

    Returns
    -------
    plotly.graph_objects.Figure
        One ``lines`` trace per curve named ``"<label> (AUC = 0.82)"``, then a dotted
        ``"chance"`` diagonal.
    """
    if not isinstance(curves, Mapping) or not curves:
        raise TypeError("curves must be a non-empty mapping name -> RocCurve")
    fig = new_figure(title=title, x_title=x_title, y_title=y_title)
    for name in ordered_losses(list(curves)):
        c = curves[name]
        if not all(hasattr(c, a) for a in ("fpr", "tpr", "auc")):
            raise TypeError(f"curves[{name!r}] must have fpr, tpr and auc (a RocCurve); "
                            f"got {type(c).__name__}")
        fig.add_trace(go.Scatter(
            x=np.asarray(c.fpr), y=np.asarray(c.tpr), mode="lines",
            name=f"{loss_label(name)} (AUC = {c.auc:.2f})", meta={"key": str(name), "auc": float(c.auc)},
            line=dict(color=loss_color(name), width=2, shape="hv"),
        ))
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="chance",
                             meta={"kind": "chance"}, hoverinfo="skip",
                             line=dict(color="#999999", dash="dot", width=1)))
    fig.update_xaxes(range=[0, 1], constrain="domain")
    fig.update_yaxes(range=[0, 1.02], scaleanchor="x", scaleratio=1)
    return fig


def bag_trajectories(result, *, observed: pd.DataFrame | None = None, show_ci: bool = True,
                     title: str | None = None, x_title: str = "Years from baseline",
                     y_title: str = "Brain-age gap (years)") -> go.Figure:
    """Fitted longitudinal trajectories per group with confidence bands (Fig. 2c).

    Parameters
    ----------
    result : TrajectoryResult
        From :func:`brainkit.eval.fit_bag_trajectories`.
    observed : DataFrame, optional
        The table the model was fitted on; each subject's visits are drawn as thin lines
        (one trace per group, subjects separated by gaps) behind the fitted curves.
    show_ci : bool, default True
        Shade the confidence band of each population trajectory.
    title, x_title, y_title : str

    Returns
    -------
    plotly.graph_objects.Figure
        Per group: optionally an observed trace (``meta["kind"] == "observed"``), a band
        trace (``"ci"``) and the fitted line (``"fit"``, named after the group with its slope
        per year).
    """
    traj = getattr(result, "trajectories", None)
    slopes = getattr(result, "group_slopes", None)
    if not isinstance(traj, pd.DataFrame) or not isinstance(slopes, pd.DataFrame):
        raise TypeError("result must be a TrajectoryResult from fit_bag_trajectories; got "
                        f"{type(result).__name__}")
    fig = new_figure(title=title, x_title=x_title, y_title=y_title)
    groups = list(pd.unique(traj["group"]))
    if observed is not None:
        cols = [result.value, result.time, result.group, result.subject]
        check_table(observed, cols, "observed")
        for g in groups:
            sub = observed[observed[result.group] == g].sort_values([result.subject, result.time])
            xs, ys = [], []
            for _, s in sub.groupby(result.subject, sort=False):
                xs.extend(numeric(s, result.time).tolist() + [None])
                ys.extend(numeric(s, result.value).tolist() + [None])
            fig.add_trace(go.Scatter(
                x=xs, y=ys, mode="lines", name=f"{g} (subjects)", legendgroup=str(g),
                showlegend=False, meta={"group": str(g), "kind": "observed"}, hoverinfo="skip",
                line=dict(color=rgba(group_color(g), 0.25), width=1),
            ))
    for g in groups:
        sub = traj[traj["group"] == g]
        color = group_color(g)
        if show_ci:
            fig.add_trace(go.Scatter(
                x=np.r_[sub["time"].to_numpy(), sub["time"].to_numpy()[::-1]],
                y=np.r_[sub["ci_high"].to_numpy(), sub["ci_low"].to_numpy()[::-1]],
                mode="lines", fill="toself", fillcolor=rgba(color, 0.2), line=dict(width=0),
                name=f"{g} CI", legendgroup=str(g), showlegend=False, hoverinfo="skip",
                meta={"group": str(g), "kind": "ci"},
            ))
        row = slopes[slopes["group"] == g]
        label = str(g) if row.empty else f"{g} ({row['slope'].iloc[0]:+.2f}/yr)"
        fig.add_trace(go.Scatter(
            x=sub["time"].to_numpy(), y=sub["fit"].to_numpy(), mode="lines", name=label,
            legendgroup=str(g), meta={"group": str(g), "kind": "fit"},
            line=dict(color=color, width=2.5),
        ))
    return fig


def predicted_ages(table: pd.DataFrame, *, age: str = "age", predicted: str = "predicted_age",
                   low: str = "interval_low", high: str = "interval_high",
                   group: str = "diagnosis", title: str | None = None,
                   x_title: str = "Chronological age (years)",
                   y_title: str = "Predicted age (years)") -> go.Figure:
    """Predicted against chronological age, each image with its prediction interval.

    Parameters
    ----------
    table : DataFrame
        One row per image (``brainkit predict``'s columns): ``age``, ``predicted_age``,
        ``interval_low`` / ``interval_high`` (bounds on the chronological age) and ``group``.
        Rows without an age are left out.

    Returns
    -------
    plotly.graph_objects.Figure
        One marker trace per group; each image's interval is a horizontal error bar (the
        interval bounds the age, so it spans the x axis), the identity line dotted. Images
        whose age falls outside their interval are drawn as open markers.
    """
    check_table(table, [age, predicted, low, high, group])
    known = np.isfinite(numeric(table, age))
    rows = table[known]
    x, y = numeric(rows, age), numeric(rows, predicted)
    lo, hi = numeric(rows, low), numeric(rows, high)
    inside = (lo <= x) & (x <= hi)
    fig = new_figure(title=title, x_title=x_title, y_title=y_title)
    for g in order_groups(rows[group]):
        m = (rows[group] == g).to_numpy()
        color = group_color(g)
        fig.add_trace(go.Scatter(
            x=x[m], y=y[m], mode="markers", name=str(g), legendgroup=str(g),
            meta={"key": str(g)},
            marker=dict(color=color, size=6,
                        symbol=np.where(inside[m], "circle", "circle-open").tolist()),
            error_x=dict(type="data", symmetric=False, array=(hi - x)[m],
                         arrayminus=(x - lo)[m], color=rgba(color, 0.25), thickness=1,
                         width=0),
            customdata=np.c_[lo[m], hi[m]],
            hovertemplate="age %{x:.1f}, predicted %{y:.1f}<br>interval "
                          "%{customdata[0]:.1f}-%{customdata[1]:.1f}<extra></extra>"))
    span = [float(min(x.min(), y.min())), float(max(x.max(), y.max()))] if len(x) else [0, 1]
    fig.add_trace(go.Scatter(x=span, y=span, mode="lines", name="identity", showlegend=False,
                             line=dict(color="#999999", width=1, dash="dot"),
                             hoverinfo="skip"))
    return fig
