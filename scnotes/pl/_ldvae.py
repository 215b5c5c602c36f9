"""The LDVAE chapter's figures: the latent means two dimensions at a time, and the training
records of several models on one set of axes. Both only draw what they are given."""
from __future__ import annotations

import numpy as np
import pandas as pd

from ._common import category_colors, training_curves

__all__ = ["latent_pairs", "training_curves_by_model"]


def _panel_grid(n_panels: int, ncol: int):
    import matplotlib.pyplot as plt

    nrow = -(-n_panels // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.6 * nrow))
    return fig, np.atleast_1d(axes).ravel()


def latent_pairs(z, labels, title: str | None = None, legend_title: str | None = None, ncol: int = 3,
                 factor_names=None):
    """Scatter plots of a latent space two dimensions at a time (dimensions 0 and 1, 2 and 3,
    …; with an odd number the last one against itself), cells coloured by
    ``labels``, and one panel holding the legend.

    ``z``: n_cells × n_latent (e.g. an LDVAE's latent means, ``obsm["X_ldvae"]``);
    ``labels``: n_cells categories (scanpy's palettes); ``factor_names``: axis labels
    (default ``Z_0``, ``Z_1``, …). Cells are drawn in a fixed random order so that no label
    covers the others. Returns the Figure.

    Raises ValueError when ``z`` is not 2-D with at least two dimensions, or ``labels`` does
    not have one entry per cell.
    """
    z = np.asarray(z)
    if z.ndim != 2 or z.shape[1] < 2:
        raise ValueError(f"z must be n_cells × n_latent with n_latent >= 2, got shape {z.shape}")
    cats = pd.Categorical(labels)
    if len(cats) != z.shape[0]:
        raise ValueError(f"labels must have one entry per cell ({z.shape[0]}), got {len(cats)}")
    n_latent = z.shape[1]
    names = list(factor_names) if factor_names is not None else [f"Z_{k}" for k in range(n_latent)]
    colors = np.asarray(category_colors(cats.categories.size), dtype=object)
    order = np.random.default_rng(0).permutation(len(z))
    n_pairs = (n_latent + 1) // 2
    fig, axes = _panel_grid(n_pairs + 1, ncol)
    for f in range(n_pairs):
        a_, b_ = 2 * f, min(2 * f + 1, n_latent - 1)
        axes[f].scatter(z[order, a_], z[order, b_], s=3, c=list(colors[cats.codes[order]]),
                        linewidths=0, rasterized=True)
        axes[f].set_xlabel(names[a_])
        axes[f].set_ylabel(names[b_])
    for k, lab in enumerate(cats.categories):
        axes[n_pairs].scatter([], [], s=40, color=colors[k], label=lab)
    axes[n_pairs].legend(loc="center", frameon=False, fontsize=9, title=legend_title)
    for ax in axes[n_pairs:]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def training_curves_by_model(histories: dict, columns=("loss", "validation_loss"), skip: int = 0,
                             title: str | None = None, ylabel: str = "nats per cell", ax=None):
    """The training records of several models on one set of axes (:func:`training_curves`
    for each, lines labelled ``"<name> <column>"``).

    ``histories``: name → training record (one row per epoch, e.g. a model's ``history_`` or
    :func:`scnotes.tl.scvi_training_record`); ``skip`` drops the first epochs. Returns the
    Axes. Raises ValueError for no records, KeyError (from :func:`training_curves`) for a
    missing column.
    """
    import matplotlib.pyplot as plt

    if not histories:
        raise ValueError("histories is empty: give at least one name → training record")
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.8))
    for name, history in histories.items():
        training_curves(history, columns=list(columns), ax=ax, skip=skip, label_prefix=f"{name} ")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.figure.tight_layout()
    return ax
