"""The figures of reference mapping (the map_query chapter): matched gene programs, program
activity per query label, cells by true and called label, and what mapping costs. Each draws a
table that ``scnotes.tl`` returned (``program_agreement``, ``loading_correlations``,
``label_table``, the chapter's cost rows); nothing is computed here beyond display scales."""
from __future__ import annotations

import numpy as np
import pandas as pd

from ._common import _need

__all__ = ["label_tables", "mapping_cost", "program_agreement", "program_marks", "skipped"]


def skipped(text: str, ax=None, figsize=(4, 1)):
    """An empty panel that says why it is empty (a section or control that did not run): the
    axes switched off, ``text`` in their centre. Returns the Axes (a new figure of ``figsize``
    when ``ax`` is None)."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    ax.set_axis_off()
    if text:
        ax.text(0.5, 0.5, text, ha="center", va="center")
    return ax


def _partner(pairs: pd.DataFrame) -> str:
    """The column of ``pairs`` naming each row's matched factor."""
    others = [c for c in pairs.columns if c not in ("loadings r", "activities r")]
    if not others:
        raise KeyError("program_agreement: pairs has no column naming the matched program; pass the "
                       "first table of scnotes.tl.program_agreement")
    return others[0]


def program_agreement(pairs: pd.DataFrame, correlations: pd.DataFrame, axes=None, figsize=(11, 4.2),
                      xlabel: str = "de novo program (fitted on the query)", ylabel: str = "reference program",
                      title: str = "Reference programs on the query vs a de novo LDVAE"):
    """Two fits' gene programs side by side. Left: one pair of bars per matched pair of programs
    (sorted by the activities' correlation, highest first): the correlation of their centred
    loadings over genes and of their activities over cells. Right: ``|correlations|`` (rows: the
    first fit's programs, columns: the second's), the matched pairs circled.

    Parameters
    ----------
    pairs : first table of :func:`scnotes.tl.program_agreement`: index the first fit's programs,
        a column naming each one's match in the second fit, ``"loadings r"``, ``"activities r"``
    correlations : k1 × k2 Pearson correlations of the centred loadings
        (:func:`scnotes.tl.loading_correlations`), its labels those of ``pairs``
    axes : two Axes (None: a new figure of ``figsize``)
    xlabel, ylabel : the matrix's axis labels (second fit's and first fit's programs)
    title : the bars' title

    Returns the two Axes.

    Raises
    ------
    KeyError : a column of ``pairs`` is missing, or a matched program is not a label of ``correlations``.
    ValueError : ``axes`` are not two.
    """
    import matplotlib.pyplot as plt

    _need(pairs, ["loadings r", "activities r"], "program_agreement")
    partner = _partner(pairs)
    rows, cols = correlations.index.get_indexer(pairs.index), correlations.columns.get_indexer(pairs[partner])
    if (rows < 0).any() or (cols < 0).any():
        raise KeyError("program_agreement: the pairs name programs that are not labels of correlations "
                       f"(rows {list(correlations.index)}, columns {list(correlations.columns)})")
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=figsize)
    axes = np.ravel(axes)
    if len(axes) != 2:
        raise ValueError(f"program_agreement draws two panels but {len(axes)} axes were given")
    order = pairs.sort_values("activities r", ascending=False).index
    x = np.arange(len(order))
    ax = axes[0]
    ax.bar(x - 0.2, pairs.loc[order, "loadings r"], 0.4, label="centred loadings (over genes)")
    ax.bar(x + 0.2, pairs.loc[order, "activities r"], 0.4, label="activities (over query cells)")
    ax.set_xticks(x, order, rotation=90)
    ax.set_xlabel(f"{pairs.index.name or 'program'} (matched to a {partner})")
    ax.set_ylabel("Pearson correlation, matched pair")
    ax.axhline(0, color="k", lw=0.5)
    lowest = float(pairs[["loadings r", "activities r"]].min().min())
    ax.set_ylim(min(-0.1, lowest - 0.05), 1.05)
    ax.legend(frameon=False, fontsize=8, loc="upper right")
    ax.set_title(title)
    ax = axes[1]
    im = ax.imshow(np.abs(correlations.to_numpy()), vmin=0, vmax=1, cmap="viridis")
    ax.scatter(cols, rows, marker="o", facecolors="none", edgecolors="w", s=60)
    ax.set_xticks(range(correlations.shape[1]), correlations.columns, rotation=90)
    ax.set_yticks(range(correlations.shape[0]), correlations.index)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title("|r| of centred loadings")
    ax.figure.colorbar(im, ax=ax, label="|Pearson r|")
    ax.figure.tight_layout()
    return axes


def program_marks(marks: pd.DataFrame, ax=None, ylabel: str = "query annotation", limit: float = 2.0,
                  xlabel: str = "reference program (activity on the mapped query)",
                  title: str = "Mean program activity per query annotation",
                  colorbar_label: str = "mean activity (sd over query cells)"):
    """Program activity per label as a heatmap: ``marks`` is labels × programs (e.g. each
    label's mean activity minus the mean over all cells, in standard deviations over the
    cells), red above and blue below zero, the colour scale clipped at ±``limit``.
    Returns the Axes (a new figure sized to the table when ``ax`` is None).

    Raises ValueError: ``marks`` is empty or ``limit`` is not positive.
    """
    import matplotlib.pyplot as plt

    if marks.size == 0:
        raise ValueError("program_marks: marks is empty (no label or no program)")
    if not limit > 0:
        raise ValueError(f"program_marks: limit must be positive, got {limit}")
    n_labels, k = marks.shape
    if ax is None:
        _, ax = plt.subplots(figsize=(0.55 * k + 3, 0.45 * n_labels + 1.8))
    im = ax.imshow(marks.to_numpy(dtype=float), cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
    ax.set_xticks(range(k), marks.columns, rotation=90)
    ax.set_yticks(range(n_labels), marks.index)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.figure.colorbar(im, ax=ax, label=colorbar_label)
    ax.figure.tight_layout()
    return ax


def _label_panel(ax, table: pd.DataFrame, annotate: bool, xrotation: float):
    """One table of cell counts, shaded by each row's shares; returns the image."""
    shares = table.div(table.sum(axis=1), axis=0)  # display scale, as scnotes.tl.label_table(normalize=True)
    im = ax.imshow(shares.to_numpy(dtype=float), cmap="Blues", vmin=0, vmax=1, aspect="auto")
    if annotate:
        for i in range(table.shape[0]):
            for j in range(table.shape[1]):
                ax.text(j, i, int(table.iat[i, j]), ha="center", va="center",
                        color="w" if shares.iat[i, j] > 0.5 else "k", fontsize=9)
    ax.set_xticks(range(table.shape[1]), table.columns, rotation=xrotation)
    ax.set_yticks(range(table.shape[0]), table.index)
    return im


def label_tables(tables, titles, xlabel: str, ylabel: str, annotate: bool = False, notes=None,
                 colorbar_label: str | None = None, sharey: bool = False, xrotation: float = 0,
                 figsize=(11, 3.8)):
    """Cells by true label (rows) and called label or cluster (columns), one panel per table,
    each cell shaded by its share of the row (0 to 1).

    Parameters
    ----------
    tables : sequence of count tables (:func:`scnotes.tl.label_table`), or None for a panel whose
        table was not computed (it shows its note); rows must not sum to zero
    titles : one title per panel
    xlabel, ylabel : axis labels (with ``sharey``, the y label on the first panel only)
    annotate : write each cell's count (white on dark cells)
    notes : text of a panel whose table is None: one string for all, or one per panel
    colorbar_label : a colour bar spanning the panels with this label (None: none; the
        panels are then laid out tight)
    sharey : panels share the y axis (the same true labels)
    xrotation : rotation of the column labels, degrees

    Returns the array of Axes.

    Raises
    ------
    ValueError : ``titles`` or ``notes`` are not one per table, or a table has a row without cells.
    """
    import matplotlib.pyplot as plt

    tables = list(tables)
    notes = [notes] * len(tables) if notes is None or isinstance(notes, str) else list(notes)
    if len(titles) != len(tables) or len(notes) != len(tables):
        raise ValueError(f"label_tables: {len(tables)} tables but {len(titles)} titles and {len(notes)} notes")
    for t in tables:
        if t is not None and (t.sum(axis=1) <= 0).any():
            raise ValueError(f"label_tables: rows without cells: {list(t.index[t.sum(axis=1) <= 0])}")
    fig, axes = plt.subplots(1, len(tables), figsize=figsize, sharey=sharey, squeeze=False)
    axes = axes.ravel()
    images = []
    for i, (ax, table, title, note) in enumerate(zip(axes, tables, titles, notes)):
        if table is None:
            skipped(note, ax=ax)
            continue
        images.append(_label_panel(ax, table, annotate, xrotation))
        ax.set_xlabel(xlabel)
        ax.set_ylabel("" if sharey and i > 0 else ylabel)
        ax.set_title(title)
    if colorbar_label is not None and images:
        fig.colorbar(images[-1], ax=axes, label=colorbar_label)
    elif colorbar_label is None:
        fig.tight_layout()
    return axes


def mapping_cost(costs: pd.DataFrame, target: float = 0.05, axes=None, figsize=(11, 3.6)):
    """What mapping costs, one row per mapped query. Left: wall seconds of mapping and of a de
    novo fit (log scale). Right: the held-out ELBO of the mapped model relative to the de novo
    fit's, in % of the de novo's magnitude, with a dashed line at −``target`` (a relative gap).

    ``costs``: index the section (a label), columns ``"model"``, ``"map s"``, ``"de novo s"``
    (seconds) and ``"relative gap"`` ((mapped − de novo) / |de novo|, a fraction).
    Returns the two Axes.

    Raises
    ------
    KeyError : a needed column is missing.
    ValueError : ``costs`` has no rows, or ``axes`` are not two.
    """
    import matplotlib.pyplot as plt

    _need(costs, ["model", "map s", "de novo s", "relative gap"], "mapping_cost")
    if len(costs) == 0:
        raise ValueError("mapping_cost: no rows to draw")
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=figsize)
    axes = np.ravel(axes)
    if len(axes) != 2:
        raise ValueError(f"mapping_cost draws two panels but {len(axes)} axes were given")
    y = np.arange(len(costs))
    ax = axes[0]
    ax.barh(y - 0.2, costs["map s"], 0.4, label="map_query")
    ax.barh(y + 0.2, costs["de novo s"], 0.4, label="de novo fit")
    ax.set_yticks(y, [f"{s} ({m})" for s, m in zip(costs.index, costs["model"])])
    ax.set_xscale("log")
    ax.set_xlabel("wall seconds (log scale)")
    ax.set_title("Time on the query's mapping cells")
    ax.legend(frameon=False, fontsize=8)
    ax = axes[1]
    ax.barh(y, 100 * costs["relative gap"], 0.5, color="C2")
    pct = round(100 * target, 10)  # 5, not 5.000000000000001, in the label
    ax.axvline(-pct, color="k", ls="--", lw=0.8, label=f"target: within {pct:g} %")
    ax.axvline(0, color="k", lw=0.5)
    ax.set_yticks(y, [""] * len(costs))
    ax.set_xlabel("held-out ELBO, mapped minus de novo (% of |de novo|)")
    ax.set_title("Model quality on the held-out query cells")
    ax.legend(frameon=False, fontsize=8)
    ax.figure.tight_layout()
    return axes
