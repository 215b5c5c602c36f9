"""The GMVAE sweep's figure: scores against the number of components K, drawn from the
table :func:`scnotes.tl.gmvae_sweep_summary` returned (nothing is computed here)."""
from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["gmvae_sweep"]

#: Panels of the figure: (title, score columns, y limits or None), drawn where present.
SWEEP_PANELS = (("label conservation", ("kmeans_ari", "leiden_nmi", "cluster_ari"), (0, 1)),
                ("batch mixing", ("asw_batch", "ilisi", "kbet"), (0, 1)),
                ("held-out fit", ("neg_elbo",), None))
_STYLES = {"GMVAE": "-", "NBVAE + batch": "--", "PCA": ":"}


def _labels():
    from ..metrics import SCORE_LABELS  # display names live with the scores, not in tl

    return SCORE_LABELS


def _baseline_lines(ax, base: pd.DataFrame, col: str, color: str):
    """One horizontal line per baseline that has a value of ``col``."""
    for method in base.index:
        if pd.notna(base.loc[method, col]):
            ax.axhline(base.loc[method, col], ls=_STYLES.get(method, "-."), lw=1, color=color)


def gmvae_sweep(summary: pd.DataFrame, title: str | None = None, panels=SWEEP_PANELS, axes=None):
    """Scores of the GMVAE against K (mean ± sd over model seeds: markers and error bars)
    with each baseline's mean as a horizontal line (colour = score, line style = method),
    one panel per entry of ``panels`` whose scores ``summary`` holds (the batch panel is
    left out for one batch, where those scores are absent). The K axis is symlog.

    Parameters
    ----------
    summary : DataFrame from :func:`scnotes.tl.gmvae_sweep_summary`: index (method, K),
        columns (score, "mean" / "std")
    title : data set name put above each panel's name (e.g. ``scnotes.pp.title_for(dataset)``)
    panels : sequence of (panel title, score columns, y limits or None)
    axes : Axes to draw on, one per drawn panel (None: a new figure)

    Returns the array of Axes. Raises KeyError if ``summary`` has no GMVAE rows, ValueError
    if ``axes`` are not one per drawn panel.
    """
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    if "GMVAE" not in summary.index.get_level_values(0):
        raise KeyError("summary has no GMVAE rows: pass scnotes.tl.gmvae_sweep_summary's table")
    labels = _labels()
    scores = summary.columns.get_level_values(0)
    drawn = [(name, [c for c in cols if c in scores], ylim) for name, cols, ylim in panels
             if any(c in scores for c in cols)]
    gm = summary.loc["GMVAE"]
    ks = [int(k) for k in gm.index]
    base = summary.drop(index="GMVAE", level=0).xs("mean", axis=1, level=1).droplevel(1)
    if axes is None:
        _, axes = plt.subplots(1, len(drawn), figsize=(4.3 * len(drawn), 4.4), squeeze=False)
    axes = np.ravel(axes)
    if len(axes) != len(drawn):
        raise ValueError(f"{len(drawn)} panels to draw but {len(axes)} axes given")
    for ax, (name, cols, ylim) in zip(axes, drawn):
        for i, col in enumerate(cols):
            ax.errorbar(ks, gm[(col, "mean")], yerr=gm[(col, "std")], marker="o", ms=4, capsize=2, color=f"C{i}")
            _baseline_lines(ax, base, col, f"C{i}")
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.minorticks_off()
        ax.set_xlabel("number of components K")
        ax.set_ylabel("nats per cell (lower is better)" if cols == ["neg_elbo"] else "score")
        if ylim:
            ax.set_ylim(*ylim)
        ax.set_title(f"{title}:\n{name}" if title else name, fontsize=10)
        handles = [Line2D([], [], color=f"C{i}", marker="o", label=labels.get(c, c)) for i, c in enumerate(cols)]
        handles += [Line2D([], [], color="0.3", ls=_STYLES.get(m, "-."), label=m)
                    for m in ["GMVAE", *base.index] if m == "GMVAE" or base.loc[m, cols].notna().any()]
        ax.legend(handles=handles, fontsize=7, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.2),
                  ncol=2)
    axes[0].figure.tight_layout()
    return axes
