"""Figures of differential-expression evaluations and GLMM fits. Each draws a table that a
``scnotes.glmm`` evaluation function returned (:func:`scnotes.glmm.null_calibration`,
:func:`~scnotes.glmm.power_fdr`, :func:`~scnotes.glmm.roc_pr`, :func:`~scnotes.glmm.qq_points`,
:func:`~scnotes.glmm.p_qq_points`), or the arrays and tidy tables of fitted GLMMs (effects of
repeated fits against a reference, a posterior correlation matrix, scales such as σ_u against a
reference, a volcano per cell type), and computes nothing; each returns the matplotlib Axes
(:func:`volcano_grid`, several panels: the Figure)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from ._common import _ax, _need, category_colors, volcano

__all__ = ["null_calibration_dots", "qq_panel", "roc_pr_curves", "power_fdr_points", "effects_across_seeds",
           "correlation_matrix", "scales_vs_reference", "volcano_grid"]


def null_calibration_dots(cal: pd.DataFrame, metric: str = "share_p", by: str = "cell_type",
                          nominal: float | None = 0.05, band=None, ax=None, title: str | None = None,
                          xlabel: str | None = None, methods=None):
    """One row per method, one dot per group (``by``, e.g. cell type) at its ``metric``.

    ``cal`` is :func:`scnotes.glmm.null_calibration`'s table; its rows with ``by == "all"``
    (the method over all its tests) are drawn as black bars. ``nominal`` draws a dashed
    vertical line, ``band`` = (low, high) a shaded interval (e.g. the bounds a calibrated
    test stays within). ``methods`` orders (and selects) the rows, top to bottom.

    Raises
    ------
    KeyError : ``metric``, ``by`` or ``method`` not a column of ``cal``.
    """
    _need(cal, ["method", by, metric], "null_calibration_dots")
    ax = _ax(ax, (6, 0.45 * max(3, cal["method"].nunique()) + 1))
    methods = list(pd.unique(cal["method"])) if methods is None else [m for m in methods
                                                                    if m in set(cal["method"])]
    groups = [g for g in pd.unique(cal[by].astype(str)) if g != "all"]
    colors = dict(zip(groups, category_colors(len(groups))))
    if band is not None:
        ax.axvspan(band[0], band[1], color="0.92", zorder=0, label=f"[{band[0]:g}, {band[1]:g}]")
    if nominal is not None:
        ax.axvline(nominal, color="0.4", ls="--", lw=1, label=f"nominal {nominal:g}")
    for row, m in enumerate(methods):
        part = cal[cal["method"] == m]
        y = len(methods) - 1 - row
        for g, v in zip(part[by].astype(str), part[metric].to_numpy(float)):
            if not np.isfinite(v):
                continue
            if g == "all":
                ax.plot([v, v], [y - 0.3, y + 0.3], color="k", lw=2)
            else:
                ax.plot(v, y, "o", ms=5, color=colors[g], alpha=0.85)
    for g in groups:
        ax.plot([], [], "o", color=colors[g], label=g)
    ax.plot([], [], color="k", lw=2, label="all tests")
    ax.set_yticks(range(len(methods)))
    ax.set_yticklabels(methods[::-1], fontsize=8)
    ax.set_ylim(-0.6, len(methods) - 0.4)
    ax.set_xlabel(xlabel or metric)
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, fontsize=7)
    if title:
        ax.set_title(title)
    return ax


def qq_panel(points: dict, ax=None, title: str | None = None, xlabel: str = "expected",
             ylabel: str = "observed", band: bool = True, max_points: int = 2000):
    """QQ lines of several methods: ``points`` maps a label to the DataFrame of
    :func:`scnotes.glmm.qq_points` or :func:`~scnotes.glmm.p_qq_points` (columns ``expected``,
    ``observed``, ``lower``, ``upper``). The diagonal is drawn, and with ``band`` the pointwise
    band of the first entry (the band depends only on the number of tests). At most
    ``max_points`` points per method are drawn (evenly spaced ranks; the extremes kept).

    Raises
    ------
    KeyError : a DataFrame without ``expected`` / ``observed``.
    """
    ax = _ax(ax, (4.5, 4))
    colors = category_colors(max(len(points), 1))
    lo, hi = np.inf, -np.inf
    for k, (name, df) in enumerate(points.items()):
        _need(df, ["expected", "observed"], "qq_panel")
        if len(df) == 0:
            continue
        idx = np.unique(np.linspace(0, len(df) - 1, min(len(df), max_points)).round().astype(int))
        d = df.iloc[idx]
        if band and k == 0 and {"lower", "upper"} <= set(df.columns):
            ax.fill_between(d["expected"], d["lower"], d["upper"], color="0.9", zorder=0,
                            label=f"95 % band ({len(df)} tests)")
        ax.plot(d["expected"], d["observed"], ".", ms=3, color=colors[k], label=f"{name} ({len(df)})")
        fin = np.isfinite(d[["expected", "observed"]].to_numpy())
        vals = d[["expected", "observed"]].to_numpy()[fin]
        if vals.size:
            lo, hi = min(lo, vals.min()), max(hi, vals.max())
    if np.isfinite(lo):
        ax.plot([lo, hi], [lo, hi], "k--", lw=1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(frameon=False, fontsize=6)
    if title:
        ax.set_title(title)
    return ax


def roc_pr_curves(curves: pd.DataFrame, curve: str = "pr", summary: pd.DataFrame | None = None, ax=None,
                  title: str | None = None, methods=None):
    """ROC (``curve="roc"``) or precision–recall (``"pr"``) curves of every method, from
    :func:`scnotes.glmm.roc_pr`'s ``curves`` table; with its ``summary`` the legend gives the
    AUROC or the average precision.

    Raises
    ------
    KeyError : missing columns. ValueError : ``curve`` not "roc" or "pr".
    """
    if curve not in ("roc", "pr"):
        raise ValueError(f"curve must be 'roc' or 'pr', got {curve!r}")
    _need(curves, ["method", "curve", "x", "y"], "roc_pr_curves")
    ax = _ax(ax, (4.5, 4))
    part = curves[curves["curve"] == curve]
    methods = list(pd.unique(part["method"])) if methods is None else [m for m in methods
                                                                     if m in set(part["method"])]
    colors = category_colors(max(len(methods), 1))
    score = "auroc" if curve == "roc" else "average_precision"
    for k, m in enumerate(methods):
        d = part[part["method"] == m]
        label = m
        if summary is not None and score in summary.columns and (summary["method"] == m).any():
            v = float(summary.loc[summary["method"] == m, score].iloc[0])
            label = f"{m} ({v:.2f})"
        ax.plot(d["x"], d["y"], color=colors[k], lw=1.2, label=label,
                drawstyle="steps-post" if curve == "roc" else "default")
    if curve == "roc":
        ax.plot([0, 1], [0, 1], "k:", lw=1)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
    else:
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.legend(frameon=False, fontsize=6, title="AUROC" if curve == "roc" else "average precision",
              title_fontsize=6)
    if title:
        ax.set_title(title)
    return ax


def power_fdr_points(pf: pd.DataFrame, fdr: float | None = 0.05, ax=None, title: str | None = None,
                     methods=None):
    """Power against observed FDR, one point per method, from :func:`scnotes.glmm.power_fdr`
    (rows with ``by`` columns other than "all" are skipped); ``fdr`` draws the nominal level.

    Raises
    ------
    KeyError : ``method``, ``power`` or ``fdr_observed`` missing.
    """
    _need(pf, ["method", "power", "fdr_observed"], "power_fdr_points")
    ax = _ax(ax, (4.5, 4))
    extra = [c for c in pf.columns if c not in ("method",) and pf[c].dtype == object]
    rows = pf
    for c in extra:
        rows = rows[rows[c].astype(str) == "all"]
    methods = list(pd.unique(rows["method"])) if methods is None else [m for m in methods
                                                                     if m in set(rows["method"])]
    colors = category_colors(max(len(methods), 1))
    if fdr is not None:
        ax.axvline(fdr, color="0.4", ls="--", lw=1, label=f"nominal FDR {fdr:g}")
    for k, m in enumerate(methods):
        r = rows[rows["method"] == m].iloc[0]
        ax.plot(float(r["fdr_observed"]), float(r["power"]), "o", ms=6, color=colors[k], label=m)
    ax.set_xlabel("observed FDR")
    ax.set_ylabel("power")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, fontsize=7)
    if title:
        ax.set_title(title)
    return ax


def effects_across_seeds(estimates, reference, se, groups, ax=None, jitter: float = 0.08, seed: int = 0,
                         ref_label: str = "reference", ylabel: str | None = None, title: str | None = None):
    """Cell-group effects of repeated fits (e.g. one per seed) minus a reference's, one jittered
    column of dots per group, against the reference's ±1 standard error (orange bars at 0).

    Parameters
    ----------
    estimates : array (n_fits, n_groups)
        The fits' effects (log rate), one row per fit, groups in the order of ``groups``.
    reference, se : array (n_groups,)
        The reference's effects and standard errors (same order and units).
    groups : sequence of str, length n_groups
        Tick labels.
    jitter, seed
        Horizontal jitter (sd, in group widths) of the dots, drawn from
        ``numpy.random.default_rng(seed)`` (the global random state is untouched).
    ref_label : str
        Name of the reference in the legend ("±1 <ref_label> SE").

    Raises
    ------
    ValueError : ``estimates`` not 2-D, or ``reference`` / ``se`` / ``groups`` not of length n_groups.
    """
    est = np.asarray(estimates, dtype=float)
    ref, se = np.asarray(reference, dtype=float).ravel(), np.asarray(se, dtype=float).ravel()
    if est.ndim != 2:
        raise ValueError(f"effects_across_seeds: estimates must be (n_fits, n_groups), got shape {est.shape}")
    n = est.shape[1]
    if not len(ref) == len(se) == len(groups) == n:
        raise ValueError(f"effects_across_seeds: estimates have {n} groups but reference {len(ref)}, se "
                         f"{len(se)} and groups {len(groups)} entries")
    ax = _ax(ax, (7.5, 3.2))
    rng = np.random.default_rng(seed)
    for g in range(n):
        ax.scatter(g + rng.normal(0, jitter, len(est)), est[:, g] - ref[g], s=6, c="k")
    ax.errorbar(range(n), np.zeros(n), yerr=se, fmt="none", c="C1", lw=1, label=f"±1 {ref_label} SE")
    ax.set_xticks(range(n), list(groups), rotation=90, fontsize=7)
    ax.set(ylabel=ylabel or f"estimate − {ref_label}", title=title or "")
    ax.legend(frameon=False, fontsize=8)
    return ax


def correlation_matrix(corr, ax=None, title: str | None = None, xlabel: str | None = None,
                       ylabel: str | None = None, colorbar: bool = True):
    """A correlation matrix (e.g. of a posterior's coordinates) as a heatmap on a diverging scale
    fixed at [−1, 1], with a colour bar (``colorbar``).

    Raises
    ------
    ValueError : ``corr`` is not square or has finite values outside [−1, 1] (beyond rounding).
    """
    c = np.asarray(corr, dtype=float)
    if c.ndim != 2 or c.shape[0] != c.shape[1]:
        raise ValueError(f"correlation_matrix: corr must be a square matrix, got shape {c.shape}")
    fin = c[np.isfinite(c)]
    if fin.size and np.abs(fin).max() > 1 + 1e-6:
        raise ValueError(f"correlation_matrix: values must lie in [-1, 1] (a correlation, not a covariance); "
                         f"got {fin.min():.3g} to {fin.max():.3g}")
    ax = _ax(ax, (4, 3.4))
    im = ax.imshow(c, cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set(title=title or "", xlabel=xlabel or "", ylabel=ylabel or "")
    if colorbar:
        ax.figure.colorbar(im, ax=ax, shrink=0.8)
    return ax


def scales_vs_reference(values, reference, ax=None, xlabel: str = "reference", ylabel: str = "estimate",
                        title: str | None = None):
    """A non-negative scale per item (e.g. the donor sd σ_u per gene) against a reference's: the
    reference on x, one dot per item, and a dotted y = x from 0 past the largest value.

    Raises
    ------
    ValueError : ``values`` and ``reference`` differ in length, or a value is negative.
    """
    y, x = np.asarray(values, dtype=float).ravel(), np.asarray(reference, dtype=float).ravel()
    if len(x) != len(y):
        raise ValueError(f"scales_vs_reference: {len(y)} values but {len(x)} reference values")
    if (np.nan_to_num(x) < 0).any() or (np.nan_to_num(y) < 0).any():
        raise ValueError("scales_vs_reference: scales (sds, σ_u) are non-negative; got a negative value")
    ax = _ax(ax, (3.8, 3.5))
    ax.scatter(x, y, s=8, c="k")
    top = float(np.nanmax(np.concatenate([x, y]))) * 1.05 if len(x) else 1.0
    ax.plot([0, top], [0, top], ":", color="C3", lw=1)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title or "")
    return ax


def volcano_grid(table: pd.DataFrame, by: str = "cell_type", groups=None, x: str = "estimate", p: str = "p",
                 label: str | None = None, xlabel: str | None = None, ncols: int = 4,
                 panel_size: tuple = (3, 2.8)):
    """One :func:`~scnotes.pl.volcano` per group (e.g. the contrasts of each cell type of a tidy
    table), on shared axes, ``ncols`` panels a row; ``groups`` picks and orders them (default: every
    value of ``table[by]`` in order of appearance). Returns the Figure.

    Raises
    ------
    KeyError : ``by``, ``x``, ``p`` or ``label`` is not a column.
    ValueError : no group to draw (a group without rows gets an empty panel).
    """
    import matplotlib.pyplot as plt

    _need(table, [c for c in (by, x, p, label) if c is not None], "volcano_grid")
    groups = list(pd.unique(table[by])) if groups is None else list(groups)
    if not groups:
        raise ValueError("volcano_grid: no group to draw")
    cols = min(int(ncols), len(groups))
    rows = (len(groups) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(panel_size[0] * cols, panel_size[1] * rows),
                             sharex=True, sharey=True, squeeze=False)
    for ax, g in zip(axes.ravel(), groups):
        volcano(table[table[by] == g], x=x, p=p, label=label, ax=ax, title=str(g))
        if xlabel:
            ax.set_xlabel(xlabel)
    for ax in axes.ravel()[len(groups):]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig
