"""Choosing a model on held-out entries, and scoring the chosen ones: the figures of
the imputation chapter, drawn from the tables the chapter computed (nothing is computed here)."""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from ._common import _need

__all__ = ["score_bars", "selection_curve"]


def _methods(table: pd.DataFrame, by: str, order) -> list:
    """The methods to draw: ``order`` (each must occur) or the order of first appearance."""
    present = list(pd.unique(table[by]))
    if order is None:
        return present
    absent = [m for m in order if m not in present]
    if absent:
        raise KeyError(f"selection_curve: order names method(s) {absent} not in column {by!r} "
                       f"(it holds {present})")
    return list(order)


def selection_curve(table: pd.DataFrame, x: str, columns=("validation", "train"), titles=None, by: str = "method",
                    order=None, chosen: Mapping | pd.Series | None = None, truth: float | None = None,
                    xlabel: str | None = None, ylabel: str = "Poisson log-likelihood per entry",
                    logx: bool = False, marker: str = "o", axes=None, figsize=(10, 3.6)):
    """Scores of candidate models against a size or length (one panel per score column, one line
    per method): choosing a rank or a training length on held-out entries, and beside it the fit
    to the training entries, which would choose differently.

    Parameters
    ----------
    table : one row per (method, candidate): column ``by`` (the method), ``x`` (the candidate:
        rank, epochs, …) and each of ``columns`` (its score, e.g. the Poisson log-likelihood per
        entry of the validation and the training entries, nats). Rows are drawn in the order given.
    x : column of the candidates (the x axis)
    columns : score columns, one panel each, left to right
    titles : one title per panel (None: the column names)
    by : column naming the method (one line per method, same colour in every panel)
    order : methods in drawing order (line colours C0, C1, … and the legend follow it); None:
        the order of first appearance in ``table``
    chosen : {method: chosen x}: a dashed vertical line in the method's colour on the first
        panel (the choice the first score makes)
    truth : x of the truth (e.g. the simulation's rank): a dotted black line on every panel
    xlabel, ylabel : axis labels (``xlabel`` None: ``x``)
    logx : log-scaled x axis (training lengths)
    marker : marker of the points
    axes : Axes to draw on, one per column (None: a new figure of ``figsize``)

    Returns the array of Axes.

    Raises
    ------
    KeyError : a needed column is missing, or ``order`` / ``chosen`` names a method the table lacks.
    ValueError : ``table`` has no rows, or ``axes`` are not one per column.
    """
    import matplotlib.pyplot as plt

    columns = list(columns)
    _need(table, [by, x, *columns], "selection_curve")
    if len(table) == 0:
        raise ValueError("selection_curve: the table has no rows")
    methods = _methods(table, by, order)
    chosen = {} if chosen is None else dict(chosen)
    unknown = [m for m in chosen if m not in methods]
    if unknown:
        raise KeyError(f"selection_curve: chosen names method(s) {unknown} not drawn (methods: {methods})")
    titles = columns if titles is None else list(titles)
    if len(titles) != len(columns):
        raise ValueError(f"selection_curve: {len(columns)} columns but {len(titles)} titles")
    if axes is None:
        _, axes = plt.subplots(1, len(columns), figsize=figsize, squeeze=False)
    axes = np.ravel(axes)
    if len(axes) != len(columns):
        raise ValueError(f"selection_curve: {len(columns)} panels to draw but {len(axes)} axes given")
    for i, (ax, col, title) in enumerate(zip(axes, columns, titles)):
        colors = {}
        for m in methods:
            d = table[table[by] == m]
            (line,) = ax.plot(d[x], d[col], lw=1, marker=marker, label=m)
            colors[m] = line.get_color()
        if i == 0:
            for m, at in chosen.items():
                ax.axvline(at, lw=0.8, ls="--", color=colors[m])
        if truth is not None:
            ax.axvline(truth, ls=":", c="k", lw=1)
        if logx:
            ax.set_xscale("log")
        ax.set_xlabel(x if xlabel is None else xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.legend(frameon=False)
    axes[0].figure.tight_layout()
    return axes


def score_bars(scores: pd.Series, reference: float | None = None, reference_label: str = "reference",
               xlabel: str = "score", title: str | None = None, ax=None, figsize=(7, 4)):
    """One horizontal bar per model's score (e.g. the test log-likelihood per entry of each
    chosen model, nats), first row on top, with an optional red dotted line at a
    ``reference`` score (e.g. the true mean's). The x axis spans the scores padded by a tenth
    of their range on each side, so that close scores stay apart.

    ``scores``: a Series; its index labels the bars (a MultiIndex is joined with " · ").
    Returns the Axes.

    Raises
    ------
    ValueError : ``scores`` is empty or holds a non-finite value (a −∞ score has no bar; floor
        the predicted means first).
    """
    import matplotlib.pyplot as plt

    v = np.asarray(scores, dtype=float)
    if v.size == 0 or not np.isfinite(v).all():
        raise ValueError(f"score_bars: needs finite scores, got {list(v)}")
    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    ax.barh(range(len(v)), v, color="0.45")
    if reference is not None:
        ax.axvline(reference, c="r", ls=":", label=reference_label)
    names = [" · ".join(map(str, i)) if isinstance(i, tuple) else str(i) for i in scores.index]
    ax.set_yticks(range(len(v)), names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    pad = 0.1 * (v.max() - v.min())
    if pad > 0:  # one score (or all equal): matplotlib's own limits
        ax.set_xlim(v.min() - pad, v.max() + pad)
    if title:
        ax.set_title(title)
    if reference is not None:
        ax.legend(frameon=False, loc="lower right")
    ax.figure.tight_layout()
    return ax
