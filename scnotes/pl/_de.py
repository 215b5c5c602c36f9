"""Figures of differential-expression evaluations. Each draws a table that a
``scnotes.glmm`` evaluation function returned (:func:`scnotes.glmm.null_calibration`,
:func:`~scnotes.glmm.power_fdr`, :func:`~scnotes.glmm.roc_pr`, :func:`~scnotes.glmm.qq_points`,
:func:`~scnotes.glmm.p_qq_points`) and computes nothing; each returns the matplotlib Axes."""
from __future__ import annotations

import numpy as np
import pandas as pd

from ._common import _ax, _need, category_colors

__all__ = ["null_calibration_dots", "qq_panel", "roc_pr_curves", "power_fdr_points"]


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
