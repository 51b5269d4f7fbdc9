"""Figures of results against training size and of MAE against downstream accuracy.

- :func:`scaling_curves`: external MAE vs training size per loss, with fitted power laws
  (paper Fig. 1a);
- :func:`site_bacc_curves`: site balanced accuracy vs training size per loss, with the
  chance level (Fig. 1b);
- :func:`mae_vs_accuracy`: downstream balanced accuracy vs age MAE per loss, with a
  least-squares line and Pearson's r per loss (Fig. 4).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from brainkit.plots._common import check_table, new_figure, numeric, ordered_losses
from brainkit.plots.theme import loss_color, loss_label

__all__ = ["scaling_curves", "site_bacc_curves", "mae_vs_accuracy", "model_comparison"]


def _aggregate(table: pd.DataFrame, x: str, y: str, loss: str) -> pd.DataFrame:
    """Mean and error bar per (loss, x): the table's ``{y}_low`` / ``{y}_high`` interval when
    it has one (a summary, one row per point), else +- the sd over repeated rows."""
    data = pd.DataFrame({"loss": table[loss].to_numpy(), "x": numeric(table, x),
                         "y": numeric(table, y)})
    if f"{y}_low" in table and f"{y}_high" in table:
        data["low"] = numeric(table, f"{y}_low")
        data["high"] = numeric(table, f"{y}_high")
        agg = data.dropna(subset=["x", "y"]).groupby(["loss", "x"], sort=True).agg(
            mean=("y", "mean"), low=("low", "mean"), high=("high", "mean"),
            size=("y", "size")).reset_index()
        agg["plus"] = (agg["high"] - agg["mean"]).fillna(0.0)
        agg["minus"] = (agg["mean"] - agg["low"]).fillna(0.0)
        return agg
    agg = data.dropna().groupby(["loss", "x"], sort=True)["y"].agg(
        ["mean", "std", "size"]).reset_index()
    agg["plus"] = agg["minus"] = agg["std"].fillna(0.0)
    return agg


def _metric_vs_size(table, *, x, y, loss, title, x_title, y_title, log_x, scale):
    check_table(table, [x, y, loss])
    agg = _aggregate(table, x, y, loss)
    fig = new_figure(title=title, x_title=x_title, y_title=y_title)
    for name in ordered_losses(agg["loss"]):
        sub = agg[agg["loss"] == name]
        fig.add_trace(go.Scatter(
            x=sub["x"].to_numpy(), y=scale * sub["mean"].to_numpy(), mode="lines+markers",
            name=loss_label(name), legendgroup=str(name), meta={"loss": str(name)},
            line=dict(color=loss_color(name), width=2,
                      dash="dot" if name == "ridge" else "solid"),
            marker=dict(size=7),
            error_y=dict(type="data", symmetric=False, array=scale * sub["plus"].to_numpy(),
                         arrayminus=scale * sub["minus"].to_numpy(), visible=True,
                         thickness=1.2, width=3),
        ))
    if log_x:
        fig.update_xaxes(type="log")
    return fig


def scaling_curves(table: pd.DataFrame, *, x: str = "n_train", y: str = "mae_ext",
                   loss: str = "loss", fits: Mapping | None = None, log_x: bool = True,
                   title: str | None = None, x_title: str = "Training images",
                   y_title: str = "External MAE (years)") -> go.Figure:
    """Error vs training-set size, one line per loss, with error bars.

    Parameters
    ----------
    table : DataFrame
        Columns ``x`` (training size), ``y`` (error) and ``loss``: one row per run (bars:
        +- sd over repeated rows), or one row per point with ``{y}_low`` and ``{y}_high``
        (bars: that interval, e.g. :func:`brainkit.experiments.summaries.challenge_summary`).
    x, y, loss : str
        Column names.
    fits : mapping of loss name to PowerLawFit, optional
        Fitted curves (:func:`brainkit.eval.fit_power_law`) drawn dashed over the data
        range, in the loss's colour.
    log_x : bool, default True
        Logarithmic size axis.
    title, x_title, y_title : str
        Figure and axis titles.

    Returns
    -------
    plotly.graph_objects.Figure
        Per loss: a ``lines+markers`` trace of the means (error bars = sd), then, if given,
        a dashed ``lines`` trace of the fit (``meta["kind"] == "fit"``).
    """
    fig = _metric_vs_size(table, x=x, y=y, loss=loss, title=title, x_title=x_title,
                          y_title=y_title, log_x=log_x, scale=1.0)
    if fits:
        xs = numeric(table, x)
        grid = np.geomspace(np.nanmin(xs), np.nanmax(xs), 100)
        for name in ordered_losses(list(fits)):
            fit = fits[name]
            if not hasattr(fit, "predict"):
                raise TypeError(f"fits[{name!r}] must be a PowerLawFit (with .predict); "
                                f"got {type(fit).__name__}")
            fig.add_trace(go.Scatter(
                x=grid, y=fit.predict(grid), mode="lines", name=f"{loss_label(name)} fit",
                legendgroup=str(name), showlegend=False,
                meta={"loss": str(name), "kind": "fit"},
                line=dict(color=loss_color(name), width=1.5, dash="dash"),
                hoverinfo="skip",
            ))
    return fig


def site_bacc_curves(table: pd.DataFrame, *, x: str = "n_train", y: str = "bacc",
                     loss: str = "loss", chance: float | None = None, percent: bool = True,
                     log_x: bool = True, title: str | None = None,
                     x_title: str = "Training images",
                     y_title: str | None = None) -> go.Figure:
    """Site balanced accuracy vs training-set size, one line per loss.

    Parameters
    ----------
    table : DataFrame
        One row per run with columns ``x``, ``y`` (balanced accuracy as a fraction) and
        ``loss``.
    x, y, loss : str
        Column names.
    chance : float, optional
        Chance level (fraction, e.g. ``1 / n_sites``), drawn as a dotted horizontal line.
    percent : bool, default True
        Show the accuracy in percent.
    log_x : bool, default True
    title, x_title, y_title : str
        ``y_title`` defaults to "Site balanced accuracy (%)" (or "(fraction)").

    Returns
    -------
    plotly.graph_objects.Figure
        One ``lines+markers`` trace per loss, plus a ``"chance"`` trace if given.
    """
    scale = 100.0 if percent else 1.0
    if y_title is None:
        y_title = "Site balanced accuracy (%)" if percent else "Site balanced accuracy"
    fig = _metric_vs_size(table, x=x, y=y, loss=loss, title=title, x_title=x_title,
                          y_title=y_title, log_x=log_x, scale=scale)
    if chance is not None:
        chance = float(chance)
        if not 0.0 <= chance <= 1.0:
            raise ValueError(f"chance must be a fraction in [0, 1]; got {chance}")
        xs = numeric(table, x)
        fig.add_trace(go.Scatter(
            x=[np.nanmin(xs), np.nanmax(xs)], y=[scale * chance] * 2, mode="lines",
            name="chance", meta={"kind": "chance"},
            line=dict(color="#999999", dash="dot", width=1.5), hoverinfo="skip",
        ))
    return fig


def mae_vs_accuracy(table: pd.DataFrame, *, x: str = "mae", y: str = "balanced_accuracy",
                    loss: str = "loss", fit_line: bool = True, percent: bool = True,
                    title: str | None = None, x_title: str = "Brain-age MAE (years)",
                    y_title: str | None = None) -> go.Figure:
    """Downstream accuracy against age MAE, one colour per loss (paper Fig. 4).

    Parameters
    ----------
    table : DataFrame
        One row per model with columns ``x`` (MAE), ``y`` (balanced accuracy, fraction) and
        ``loss``.
    x, y, loss : str
        Column names.
    fit_line : bool, default True
        Add each loss's least-squares line (when it has two distinct MAEs); the legend
        shows Pearson's r when the loss has at least three models.
    percent : bool, default True
        Show the accuracy in percent.
    title, x_title, y_title : str

    Returns
    -------
    plotly.graph_objects.Figure
        Per loss: a ``markers`` trace, then optionally a ``lines`` trace
        (``meta["kind"] == "fit"``).
    """
    check_table(table, [x, y, loss])
    scale = 100.0 if percent else 1.0
    if y_title is None:
        y_title = "Downstream balanced accuracy (%)" if percent else "Downstream balanced accuracy"
    data = pd.DataFrame({"loss": table[loss].to_numpy(), "x": numeric(table, x),
                         "y": numeric(table, y)}).dropna()
    fig = new_figure(title=title, x_title=x_title, y_title=y_title)
    for name in ordered_losses(data["loss"]):
        sub = data[data["loss"] == name]
        xs, ys = sub["x"].to_numpy(), scale * sub["y"].to_numpy()
        label = loss_label(name)
        if len(sub) >= 3 and np.ptp(xs) > 0 and np.ptp(ys) > 0:
            label = f"{label} (r = {np.corrcoef(xs, ys)[0, 1]:.2f})"
        fig.add_trace(go.Scatter(
            x=xs, y=ys, mode="markers", name=label, legendgroup=str(name),
            meta={"loss": str(name)}, marker=dict(color=loss_color(name), size=9),
        ))
        if fit_line and np.unique(xs).size >= 2:
            slope, intercept = np.polyfit(xs, ys, 1)
            gx = np.array([xs.min(), xs.max()])
            fig.add_trace(go.Scatter(
                x=gx, y=slope * gx + intercept, mode="lines", name=f"{loss_label(name)} fit",
                showlegend=False,
                legendgroup=str(name), meta={"loss": str(name), "kind": "fit"},
                line=dict(color=loss_color(name), width=1.5, dash="dash"), hoverinfo="skip",
            ))
    return fig


def model_comparison(table: pd.DataFrame, *, value: str = "mae", group: str = "data",
                     loss: str = "loss", title: str | None = None,
                     y_title: str = "Held-out healthy MAE (years)") -> go.Figure:
    """Grouped bars: one group per ``group`` value (e.g. synthetic / real data), one bar per
    model, error bars from ``{value}_low`` / ``{value}_high``.

    Returns
    -------
    plotly.graph_objects.Figure
        One ``bar`` trace per model (``meta["loss"]``).
    """
    check_table(table, [value, f"{value}_low", f"{value}_high", group, loss])
    fig = new_figure(title=title, x_title="", y_title=y_title)
    for name in ordered_losses(table[loss]):
        sub = table[table[loss] == name]
        v = sub[value].to_numpy(dtype=float)
        fig.add_trace(go.Bar(
            x=sub[group].astype(str).to_numpy(), y=v, name=loss_label(name),
            meta={"loss": str(name)}, marker_color=loss_color(name),
            error_y=dict(type="data", symmetric=False,
                         array=sub[f"{value}_high"].to_numpy(dtype=float) - v,
                         arrayminus=v - sub[f"{value}_low"].to_numpy(dtype=float)),
        ))
    fig.update_layout(barmode="group")
    return fig
