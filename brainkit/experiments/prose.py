"""Sentences that state results, written from the numbers (glued into the book).

Every result sentence of the book comes from one of these functions, so its direction
("lower", "higher", "supported") cannot disagree with its numbers. Each returns Markdown in
which the claim word sits in a ``<span class="bk-claim" ...>`` carrying the numbers it was
chosen from (``data-value``, ``data-low``, ``data-high``, ``data-word``);
``tests/book/test_book.py`` re-checks every such span of the built book.

Examples
--------
>>> from brainkit.eval import Estimate
>>> print(difference("exp", "the voxel ridge", Estimate(-1.2, -1.9, -0.5, n=80, n_groups=80),
...                  metric="held-out MAE", unit="years"))  # doctest: +ELLIPSIS
The held-out MAE of exp is <span class="bk-claim" ...>lower</span> than that of the voxel ridge by 1.20 years [0.50, 1.90] (n = 80 images, 1 seed).
"""

from __future__ import annotations

import html
import math

__all__ = ["claim", "direction_word", "describe_n", "difference", "change", "estimate",
           "verdict_sentence"]


def claim(word: str, value: float, low: float = math.nan, high: float = math.nan,
          claimed: str | None = None) -> str:
    """The claim word in a span that records the numbers it was chosen from (and, for a
    verdict, the claimed side of the threshold, e.g. ``"> 0"``)."""
    def num(x):
        return "nan" if x is None or not math.isfinite(x) else repr(float(x))

    extra = f' data-claimed="{html.escape(claimed)}"' if claimed else ""
    return (f'<span class="bk-claim" data-word="{html.escape(word)}" data-value="{num(value)}" '
            f'data-low="{num(low)}" data-high="{num(high)}"{extra}>{html.escape(word)}</span>')


def direction_word(value: float, low: float, high: float, *, lower: str = "lower",
                   higher: str = "higher", same: str = "not clearly different") -> str:
    """``higher`` when the interval is above 0, ``lower`` when below, else ``same``."""
    if math.isfinite(low) and low > 0:
        return higher
    if math.isfinite(high) and high < 0:
        return lower
    return same


def describe_n(est, what: str = "images") -> str:
    """``"n = 80 images of 75 subjects, 3 seeds"``."""
    seeds = f", {est.n_seeds} seed{'s' if est.n_seeds != 1 else ''}"
    if est.n_groups and est.n_groups != est.n:
        return f"n = {est.n} {what} of {est.n_groups} subjects{seeds}"
    return f"n = {est.n} {what}{seeds}"


def _fmt(x: float, digits: int) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def estimate(est, *, unit: str = "", digits: int = 2, scale: float = 1.0) -> str:
    """``"4.12 years [3.85, 4.40]"``."""
    u = f" {unit}" if unit else ""
    return (f"{_fmt(scale * est.value, digits)}{u} [{_fmt(scale * est.low, digits)}, "
            f"{_fmt(scale * est.high, digits)}]")


def difference(a: str, b: str, est, *, metric: str, unit: str = "", digits: int = 2,
               scale: float = 1.0, what: str = "images") -> str:
    """A sentence comparing ``a`` with ``b`` from the estimate of ``metric(a) - metric(b)``."""
    v, lo, hi = (scale * est.value, scale * est.low, scale * est.high)
    word = direction_word(v, lo, hi)
    u = f" {unit}" if unit else ""
    if word == "not clearly different":
        amount = (f"(difference {_fmt(v, digits)}{u}, 95 % interval [{_fmt(lo, digits)}, "
                  f"{_fmt(hi, digits)}] contains 0")
        return (f"The {metric} of {a} is {claim(word, v, lo, hi)} from that of {b} {amount}; "
                f"{describe_n(est, what)}).")
    mag, mlo, mhi = (abs(v), min(abs(lo), abs(hi)), max(abs(lo), abs(hi)))
    return (f"The {metric} of {a} is {claim(word, v, lo, hi)} than that of {b} by "
            f"{_fmt(mag, digits)}{u} [{_fmt(mlo, digits)}, {_fmt(mhi, digits)}] "
            f"({describe_n(est, what)}).")


def change(subject: str, metric: str, before, after, diff, *, before_label: str,
           after_label: str, unit: str = "", digits: int = 2, what: str = "images") -> str:
    """How ``metric`` moves from one setting to another, e.g. with more training data.

    ``diff`` estimates ``after - before`` on the same images (its interval decides the word).
    """
    v, lo, hi = diff.value, diff.low, diff.high
    word = direction_word(v, lo, hi, lower="falls", higher="rises",
                          same="does not change clearly")
    return (f"With {subject}, the {metric} {claim(word, v, lo, hi)} from "
            f"{estimate(before, unit=unit, digits=digits)} with {before_label} to "
            f"{estimate(after, unit=unit, digits=digits)} with {after_label} (difference "
            f"{estimate(diff, unit=unit, digits=digits)}; {describe_n(diff, what)}).")


def verdict_sentence(row) -> str:
    """One ledger row as a sentence: the finding, our estimate and the verdict."""
    v = row["verdict"]
    est = f"{_fmt(row['estimate'], 2)} [{_fmt(row['low'], 2)}, {_fmt(row['high'], 2)}]"
    note = f" ({row['note']})" if row.get("note") else ""
    span = claim(v, row["estimate"], row["low"], row["high"], claimed=row["claimed"])
    return (f"{row['finding']}: {span} at this "
            f"scale; {row['statistic']} = {est}, n = {int(row['n'])}{note}.")
