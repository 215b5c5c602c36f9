"""The figures the chapters draw more than once. Each takes what a model or a
``tl`` call stored (an ``obsm`` embedding, a training record, a table) and only
draws it; each returns the matplotlib Axes it drew on."""
from __future__ import annotations

import numpy as np
import pandas as pd

from .._checks import check_key, check_obsm_key
from .._record import slot_keys

__all__ = ["embedding", "training_curves", "heatmap", "metric_bars", "volcano", "category_colors",
           "effects_vs_reference", "structure_plot"]


def _need(table, cols, func):
    """KeyError naming the columns ``func`` needs that ``table`` lacks."""
    missing = [c for c in cols if c not in table.columns]
    if missing:
        raise KeyError(f"{func}: the table lacks column(s) {missing}; it has {list(table.columns)}")


def _ax(ax, figsize=(4.5, 4)):
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    return ax


def category_colors(n: int):
    """``n`` distinct colours: scanpy's default palettes (20, 28, then 102 colours)."""
    from scanpy.plotting import palettes

    for pal in (palettes.default_20, palettes.default_28, palettes.default_102):
        if n <= len(pal):
            return list(pal[:n])
    # Beyond 102 categories colours must repeat; cycle the largest palette.
    return [palettes.default_102[i % 102] for i in range(n)]


def embedding(adata, basis: str, color: str, ax=None, title: str | None = None,
              legend_max: int = 30, size: float | None = None, components=(0, 1)):
    """Scatter of ``adata.obsm[basis]`` (two ``components``) coloured by ``adata.obs[color]``.

    Categorical columns get scanpy's palettes and a legend outside the axes (none
    above ``legend_max`` categories, where a legend would not be readable);
    numeric columns a colour bar.

    Raises
    ------
    KeyError : ``basis`` not in ``obsm`` or ``color`` not in ``obs`` (message lists the keys).
    """
    xy = check_obsm_key(adata, basis)[:, list(components)]
    col = check_key(adata, "obs", color)  # as stored: numbers get a colour bar, NaN allowed
    ax = _ax(ax)
    size = size if size is not None else max(0.5, min(8.0, 12000 / max(len(xy), 1)))
    order = np.random.default_rng(0).permutation(len(xy))  # no category drawn on top of all others
    if isinstance(col.dtype, pd.CategoricalDtype) or col.dtype == object or col.dtype == bool:
        cat = pd.Categorical(col.astype(str) if col.dtype != object else col)
        colors = np.asarray(category_colors(len(cat.categories)), dtype=object)
        codes = cat.codes
        ax.scatter(xy[order, 0], xy[order, 1], s=size, c=list(colors[codes[order]]), linewidths=0,
                   rasterized=True)
        if len(cat.categories) <= legend_max:
            for k, name in enumerate(cat.categories):
                ax.scatter([], [], s=20, color=colors[k], label=str(name))
            ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, fontsize=7,
                      markerscale=1.0, ncol=1 if len(cat.categories) <= 15 else 2)
    else:
        sc_ = ax.scatter(xy[order, 0], xy[order, 1], s=size, c=np.asarray(col, dtype=float)[order],
                         linewidths=0, cmap="viridis", rasterized=True)
        ax.figure.colorbar(sc_, ax=ax, shrink=0.7, label=color)
    name = slot_keys(basis)["base"]
    ax.set_xlabel(f"{name.upper()} {components[0] + 1}")
    ax.set_ylabel(f"{name.upper()} {components[1] + 1}")
    ax.set_xticks([]); ax.set_yticks([])
    ax.set_title(title if title is not None else color)
    return ax


def training_curves(history: pd.DataFrame, columns=None, ax=None, title: str | None = None,
                    ylabel: str = "nats per cell", logy: bool = False, skip: int = 0, label_prefix: str = ""):
    """Lines of a training record (one row per epoch, e.g. a model's ``history_``).

    ``columns`` default: ``loss`` and, if present, ``validation_loss``. ``skip``
    drops the first epochs (whose loss dwarfs the rest).
    """
    ax = _ax(ax, (5, 3.5))
    if columns is None:
        columns = [c for c in ("loss", "validation_loss") if c in history.columns]
    _need(history, columns, "training_curves")
    h = history.iloc[skip:]
    epoch = h["epoch"] if "epoch" in h.columns else np.arange(len(h))
    for c in columns:
        ax.plot(epoch, h[c], lw=1.2, label=f"{label_prefix}{c}")
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    ax.legend(frameon=False, fontsize=8)
    if title:
        ax.set_title(title)
    return ax


def heatmap(table: pd.DataFrame, ax=None, title: str | None = None, cmap: str = "RdBu_r",
            center: float | None = 0.0, colorbar_label: str = "", annotate: bool = False, fmt: str = ".2f"):
    """A DataFrame as a heatmap, rows and columns labelled (loadings, mean latent per
    label, a metric table). ``center`` makes the colour scale symmetric about it."""
    ax = _ax(ax, (0.45 * table.shape[1] + 2.5, 0.3 * table.shape[0] + 1.5))
    v = table.to_numpy(dtype=float)
    kw = {}
    if center is not None:
        m = np.nanmax(np.abs(v - center)) or 1.0
        kw = dict(vmin=center - m, vmax=center + m)
    im = ax.imshow(v, aspect="auto", cmap=cmap, interpolation="nearest", **kw)
    ax.set_xticks(range(table.shape[1]), [str(c) for c in table.columns], rotation=90, fontsize=8)
    ax.set_yticks(range(table.shape[0]), [str(r) for r in table.index], fontsize=8)
    if annotate:
        for i in range(v.shape[0]):
            for j in range(v.shape[1]):
                ax.text(j, i, format(v[i, j], fmt), ha="center", va="center", fontsize=6)
    ax.figure.colorbar(im, ax=ax, shrink=0.8, label=colorbar_label)
    if title:
        ax.set_title(title)
    return ax


def metric_bars(table: pd.DataFrame, metrics=None, sd: pd.DataFrame | None = None, ax=None,
                title: str | None = None, ylim=(0, 1)):
    """Grouped bars: one group per metric (columns), one bar per method (rows),
    with ``sd`` (same shape) as error bars. Same y range for every metric."""
    metrics = list(metrics or table.columns)
    ax = _ax(ax, (1.1 * len(metrics) + 2.5, 3.5))
    n = len(table.index)
    width = 0.8 / max(n, 1)
    colors = category_colors(n)
    for i, method in enumerate(table.index):
        pos = np.arange(len(metrics)) + (i - (n - 1) / 2) * width
        err = None if sd is None else sd.loc[method, metrics].to_numpy(dtype=float)
        ax.bar(pos, table.loc[method, metrics].to_numpy(dtype=float), width, yerr=err,
               color=colors[i], label=str(method), capsize=2)
    ax.set_xticks(range(len(metrics)), metrics)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_ylabel("score")
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, fontsize=8)
    if title:
        ax.set_title(title)
    return ax


def volcano(table: pd.DataFrame, x: str = "estimate", p: str = "p", label: str | None = None,
            ax=None, alpha: float = 0.05, title: str | None = None, floor: float = 1e-300):
    """Effect against −log10 p for a tidy result table (``scnotes.tl.glmm(...).summary()``,
    columns ``estimate`` and ``p`` by default; another column with ``x=`` / ``p=``, e.g.
    ``p="lfsr"``). Rows without a p-value (the cell-group effects of a GLMM table) are left
    out; p-values below ``floor`` (e.g. printed as 0) are drawn at the floor and marked with
    triangles. Returns the Axes.

    Raises
    ------
    KeyError : ``x``, ``p`` or ``label`` is not a column (the message lists the columns).
    """
    _need(table, [c for c in (x, p, label) if c is not None], "volcano")
    table = table[table[p].notna() & table[x].notna()]
    ax = _ax(ax, (4.5, 4))
    pv = table[p].to_numpy(dtype=float)
    sat = pv < floor
    y = -np.log10(np.maximum(pv, floor))
    sig = pv < alpha
    ax.scatter(table[x][~sig], y[~sig], s=6, color="0.6", label=f"p ≥ {alpha}")
    ax.scatter(table[x][sig & ~sat], y[sig & ~sat], s=6, color="C3", label=f"p < {alpha}")
    if sat.any():
        ax.scatter(table[x][sat], y[sat], s=14, marker="^", color="C3", label=f"p < {floor:g} (floor)")
    if label is not None:
        top = np.argsort(pv)[:8]
        for i in top:
            ax.annotate(str(table[label].iloc[i]), (table[x].iloc[i], y[i]), fontsize=7)
    ax.set_xlabel(x)
    ax.set_ylabel(f"−log10 {p}")
    ax.legend(frameon=False, fontsize=7)
    if title:
        ax.set_title(title)
    return ax


def effects_vs_reference(table: pd.DataFrame, reference: pd.DataFrame | None = None, what: str = "estimate",
                         kind: str = "group", ax=None, label: str | None = None, color: str = "k",
                         xlabel: str | None = None, ylabel: str | None = None, title: str | None = None,
                         level: float = 0.95, identity: bool = True):
    """One method's effects against a reference's (e.g. ``scnotes.tl.glmm`` results of VEB and
    lme4): the reference on x, the method on y, one point per (gene, term).

    ``table`` is the matched table of :func:`scnotes.glmm.effects_vs_reference`; given a
    ``reference`` too, both are tidy effect tables, matched by that function first (with ``kind``
    and ``level``; a convenience: this function only draws). ``what="estimate"`` draws the
    estimates with their ``level`` intervals (``half_width``) on both axes; ``what="sd"`` the sds
    (posterior sd or SE) against each other. A dotted identity line is added (``identity``).
    Returns the Axes.

    Raises
    ------
    KeyError : a needed column is missing.
    ValueError : ``what`` is not "estimate" or "sd", or (with ``reference``) no term is shared.
    """
    if what not in ("estimate", "sd"):
        raise ValueError(f"what must be 'estimate' or 'sd', got {what!r}")
    if reference is not None:
        from ..glmm import effects_vs_reference as match  # lazy: glmm imports torch

        table = match(table, reference, kind=kind, level=level)
    _need(table, [what, f"{what}_ref"] + (["half_width", "half_width_ref"] if what == "estimate" else []),
          "effects_vs_reference")
    ax = _ax(ax, (3.8, 3.5))
    x, y = table[f"{what}_ref"].to_numpy(float), table[what].to_numpy(float)
    if what == "estimate":
        ax.errorbar(x, y, xerr=table["half_width_ref"].to_numpy(float), yerr=table["half_width"].to_numpy(float),
                    fmt=".", color=color, elinewidth=0.6, ms=4, label=label)
    else:
        ax.scatter(x, y, s=12, color=color, label=label)
    if identity:
        _identity_line(ax, x, y, from_zero=what == "sd")
    ax.set_xlabel(xlabel or f"reference {what}")
    ax.set_ylabel(ylabel or what)
    if label is not None:
        ax.legend(frameon=False, fontsize=8)
    if title:
        ax.set_title(title)
    return ax


def _identity_line(ax, x, y, from_zero: bool):
    """Dotted y = x over the finite points' range (padded 5 %; from 0 for sds)."""
    ok = np.isfinite(x) & np.isfinite(y)
    lo, hi = float(min(x[ok].min(), y[ok].min())), float(max(x[ok].max(), y[ok].max()))
    pad = 0.05 * (hi - lo or 1.0)
    lim = [0.0 if from_zero else lo - pad, hi + pad]
    ax.plot(lim, lim, ":", color="C3", lw=1)


def structure_plot(adata, basis: str = "X_topics", groupby: str | None = None, ax=None,
                   title: str | None = None, max_labels: int = 40, seed: int = 0):
    """Stacked bars of each cell's topic proportions (a fastTopics "structure plot").

    ``adata.obsm[basis]`` (cells × topics, rows on the simplex, as written by
    :func:`scnotes.tl.nmf`) is drawn one bar per cell, cells grouped by
    ``adata.obs[groupby]`` (if given) and, within a group, ordered by their
    dominant topic. Group names label the x axis (at most ``max_labels``;
    beyond that the ticks are left out). Colours: :func:`category_colors`.

    Raises
    ------
    KeyError : ``basis`` not in ``obsm`` or ``groupby`` not in ``obs``.
    """
    prop = check_obsm_key(adata, basis).astype(float)
    # as stored (missing labels drawn as their own group "nan"), so not check_obs_key
    group = check_key(adata, "obs", groupby) if groupby is not None else None
    n, k = prop.shape
    ax = _ax(ax, (9, 2.8))
    if groupby is not None:
        cat = pd.Categorical(group.astype(str))
        codes = np.asarray(cat.codes)
    else:
        cat, codes = None, np.zeros(n, dtype=int)
    order = np.lexsort((-prop.max(axis=1), prop.argmax(axis=1), codes))
    colors = category_colors(k)
    bottom = np.zeros(n)
    pos = np.arange(n)
    for t in range(k):
        ax.bar(pos, prop[order, t], bottom=bottom, width=1.0, color=colors[t], linewidth=0,
               label=f"topic {t + 1}")
        bottom += prop[order, t]
    ax.set_xlim(-0.5, n - 0.5)
    ax.set_ylim(0, 1)
    ax.set_ylabel("topic proportion")
    if cat is not None:
        c = codes[order]
        for e in np.flatnonzero(np.diff(c)) + 0.5:
            ax.axvline(e, color="k", lw=0.5)
        present = np.unique(c)
        if len(present) <= max_labels:
            ax.set_xticks([float(np.mean(np.flatnonzero(c == g))) for g in present],
                          [str(cat.categories[g]) for g in present], rotation=40, ha="right", fontsize=7)
        else:
            ax.set_xticks([])
        ax.set_xlabel(groupby)
    else:
        ax.set_xticks([])
        ax.set_xlabel("cells")
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, fontsize=7,
              ncol=1 if k <= 15 else 2)
    if title:
        ax.set_title(title)
    return ax
