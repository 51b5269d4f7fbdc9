"""Helpers shared by the figure modules (private)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from brainkit.plots.theme import LOSS_COLORS, TEMPLATE, register_template

__all__: list[str] = []


def rgba(hex_color: str, alpha: float) -> str:
    """``"#RRGGBB"`` -> ``"rgba(r,g,b,alpha)"``."""
    h = hex_color.lstrip("#")
    r, g, b = (int(h[i:i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def new_figure(*, title: str | None, x_title: str, y_title: str) -> go.Figure:
    """An empty figure with the brainkit template and axis titles."""
    register_template()
    fig = go.Figure()
    fig.update_layout(template=TEMPLATE, title=title,
                      xaxis_title=x_title, yaxis_title=y_title)
    return fig


def ordered_losses(values) -> list:
    """Known losses in :data:`LOSS_COLORS` order, then the others sorted as strings."""
    uniq = list(pd.unique(pd.Series(list(values), dtype=object).dropna()))
    known = [k for k in LOSS_COLORS if k in uniq]
    return known + sorted((v for v in uniq if v not in LOSS_COLORS), key=str)


def check_table(table, columns, name: str = "table") -> None:
    """Raise if ``table`` is not a DataFrame holding ``columns``."""
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"{name} must be a pandas DataFrame; got {type(table).__name__}")
    missing = [c for c in columns if c is not None and c not in table.columns]
    if missing:
        raise ValueError(f"{name} lacks column(s) {missing}; it has {list(table.columns)}")


def numeric(table: pd.DataFrame, column: str) -> np.ndarray:
    """A numeric column as float64, with an error naming the column when it is not."""
    out = pd.to_numeric(table[column], errors="coerce")
    bad = out.isna() & table[column].notna()
    if bad.any():
        raise ValueError(f"column {column!r} must be numeric; row {table.index[bad][0]!r} holds "
                         f"{table.loc[bad, column].iloc[0]!r}")
    return out.to_numpy(dtype=np.float64)
