"""Figures for the loss-family chapter: kernels and toy embeddings."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .theme import TEMPLATE, loss_label

__all__ = ["kernels", "toy_embeddings"]


def kernels(sigmas: Sequence[float] = (1.0, 2.0, 5.0), *, max_diff: float = 15.0) -> go.Figure:
    """The label kernels K(y_i - y_j) (rbf, gaussian, cauchy) for a few widths, in years."""
    import torch

    from ..losses import get_kernel

    d = torch.linspace(-max_diff, max_diff, 301, dtype=torch.float64)
    fig = make_subplots(rows=1, cols=3, subplot_titles=("rbf", "gaussian", "cauchy"),
                        shared_xaxes=True)
    for col, name in enumerate(("rbf", "gaussian", "cauchy"), start=1):
        for sigma in sigmas:
            w = get_kernel(name, sigma)(d).numpy()
            fig.add_trace(go.Scatter(x=d.numpy(), y=w, mode="lines", name=f"sigma = {sigma:g}",
                                     legendgroup=f"{sigma:g}", showlegend=col == 1),
                          row=1, col=col)
        fig.update_xaxes(title_text="label difference (years)", row=1, col=col)
    fig.update_yaxes(title_text="weight w", row=1, col=1)
    fig.update_layout(template=TEMPLATE, height=360)
    return fig


def toy_embeddings(table: pd.DataFrame, *, columns: int = 3) -> go.Figure:
    """Toy embeddings (first two coordinates) per loss, coloured by label, symbol by site.

    ``table`` comes from :func:`brainkit.experiments.toy.toy_embeddings`.
    """
    losses = list(dict.fromkeys(table["loss"]))
    rows = int(np.ceil(len(losses) / columns))
    fig = make_subplots(rows=rows, cols=columns,
                        subplot_titles=[loss_label(x) for x in losses])
    for k, loss in enumerate(losses):
        sub = table[table["loss"] == loss]
        fig.add_trace(go.Scatter(
            x=sub["e0"], y=sub["e1"], mode="markers",
            marker={"color": sub["label"], "colorscale": "Viridis", "size": 6,
                    "symbol": np.where(sub["site"].to_numpy() == 1, "x", "circle"),
                    "showscale": k == 0, "colorbar": {"title": "label"}},
            name=loss_label(loss), showlegend=False, meta={"loss": loss}),
            row=k // columns + 1, col=k % columns + 1)
    fig.update_xaxes(range=[-1.05, 1.05], showticklabels=False)
    fig.update_yaxes(range=[-1.05, 1.05], showticklabels=False)
    fig.update_layout(template=TEMPLATE, height=330 * rows)
    return fig
