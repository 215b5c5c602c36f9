"""The LDVAE chapter's comparisons as library calls: scnotes' LDVAE and scvi-tools'
``LinearSCVI`` fitted on the same cells and scored side by side (held-out ELBO and marginal
log-likelihood, seconds per epoch, Leiden clusterings, matched loadings), and the tables the
chapter reads its gene programs from (mean latent value per label, the factor that marks
each label, the scale of the loadings, the labels a clustering recovers).

It lives beside the ``tl.ldvae`` front rather than in it because it composes fronts
(``tl.ldvae``, ``tl.linear_scvi``), scores (``metrics.leiden_clustering``) and loading
comparisons (``tl.loading_agreement``): an experiment over models, not a model.
"""
from __future__ import annotations

import inspect
import time

import numpy as np
import pandas as pd

from .. import metrics
from .._checks import key_error
from ._loadings import loading_agreement
from ._scvi_ref import held_out_scores, linear_scvi
from ._vae import ldvae

__all__ = [
    "LDVAE_KEY_COLUMNS",
    "label_recovery",
    "ldvae_vs_scvi",
    "leiden_scores",
    "loading_scale",
    "loading_scales",
    "marker_factors",
    "scvi_training_record",
    "standardised_label_means",
]

#: Names of the key table's columns: held-out scores of :func:`held_out_scores` /
#: :func:`linear_scvi` → the column the chapter shows.
LDVAE_KEY_COLUMNS = {"seconds_per_epoch": "s/epoch", "elbo": "held-out ELBO", "marginal_ll": "held-out marginal LL"}


def leiden_scores(z, labels, n_neighbors: int = 20, resolution: float = 0.8, seed: int = 0) -> dict:
    """ARI and NMI against ``labels`` of Leiden on an embedding ``z`` (n_cells × n_latent):
    at one fixed ``resolution`` on an ``n_neighbors`` graph (the LDVAE seed page's 0.8 and
    20), and by scIB's protocol (:func:`scnotes.metrics.leiden_clustering` with its defaults:
    the resolution with the best NMI on a 15-neighbour graph; optimistic, the labels choose it).

    Returns ``{"ARI (res. 0.8)", "NMI (res. 0.8)", "ARI (scIB)", "NMI (scIB)"}`` (the
    resolution as given). Raises as :func:`scnotes.metrics.leiden_clustering`.
    """
    fixed = metrics.leiden_clustering(labels, x=z, n_neighbors=n_neighbors, resolutions=(resolution,), seed=seed)
    best = metrics.leiden_clustering(labels, x=z, seed=seed)
    return {f"ARI (res. {resolution:g})": fixed["ari"], f"NMI (res. {resolution:g})": fixed["nmi"],
            "ARI (scIB)": best["ari"], "NMI (scIB)": best["nmi"]}


def _scnotes_row(adata, labels, layer, mll_samples, settings):
    """(fitted LDVAE, its row: seconds per epoch, held-out scores, Leiden scores)."""
    start = time.perf_counter()
    model = ldvae(adata, layer=layer, **settings)
    seconds = time.perf_counter() - start
    row = dict(seconds_per_epoch=seconds / model.n_epochs_,
               **held_out_scores(model, adata, layer=layer, mll_samples=mll_samples),
               **leiden_scores(adata.obsm["X_ldvae"], labels, seed=settings["seed"]))
    return model, row


def _scvi_row(adata, labels, model, layer, mll_samples, settings):
    """(scvi-tools' registered copy, its LinearSCVI, its row) on ``model``'s split."""
    bdata, vmodel, scores = linear_scvi(adata, model.train_indices_, model.validation_indices_, layer=layer,
                                       mll_samples=mll_samples, **settings)
    return bdata, vmodel, dict(scores, **leiden_scores(bdata.obsm["X_scvi"], labels, seed=settings["seed"]))


def ldvae_vs_scvi(adata, labels, *, layer: str | None = None, run_scvi: bool = True, mll_samples: int = 1000,
                  n_latent: int = 10, batch_key: str | None = None, max_epochs: int | None = None,
                  lr: float | None = None, batch_size: int | None = None, library: str = "observed", seed: int = 0):
    """Fit scnotes' LDVAE (``tl.ldvae``, latent means in ``adata.obsm["X_ldvae"]``) and, with
    ``run_scvi``, scvi-tools' ``LinearSCVI`` on the same training and validation cells and
    settings (:func:`linear_scvi`); one row of the key table per tool.

    ``adata``: n_cells × n_genes raw counts in ``layers[layer]`` (``None``: ``X``);
    ``labels``: n_cells reference labels for :func:`leiden_scores`. The other keywords are
    both tools' settings (Svensson et al. 2020's LDVAE; ``library`` as :func:`linear_scvi`);
    ``max_epochs``, ``lr``, ``batch_size`` None: :meth:`scnotes.vae.LDVAE.fit`'s defaults, so
    the comparison trains as ``tl.ldvae`` does.

    Returns ``(model, vmodel, bdata, table)``: the LDVAE; scvi-tools' model and registered
    copy (None without ``run_scvi``); a DataFrame indexed by ``tool`` ("scnotes",
    "scvi-tools") with the columns of :data:`LDVAE_KEY_COLUMNS` (seconds per epoch: wall
    time of the training call, validation included, divided by its epochs; held-out ELBO
    and marginal log-likelihood with ``mll_samples`` importance samples, nats per
    validation cell), the four :func:`leiden_scores`, and with ``run_scvi`` "mean matched
    |r|" (:func:`loading_agreement` of the two loading matrices, the same in both rows).

    Raises as ``tl.ldvae``, :func:`held_out_scores` and :func:`linear_scvi` (ImportError
    when ``run_scvi`` and scvi-tools is missing).
    """
    from ..vae import LDVAE  # lazily, as the fronts import their models

    fit_defaults = inspect.signature(LDVAE.fit).parameters  # one source: the model's own defaults
    given = {"max_epochs": max_epochs, "lr": lr, "batch_size": batch_size}
    settings = {"n_latent": n_latent, "batch_key": batch_key, "library": library, "seed": seed,
                **{k: fit_defaults[k].default if v is None else v for k, v in given.items()}}
    model, row = _scnotes_row(adata, labels, layer, mll_samples, settings)
    rows, vmodel, bdata = {"scnotes": row}, None, None
    if run_scvi:
        bdata, vmodel, rows["scvi-tools"] = _scvi_row(adata, labels, model, layer, mll_samples, settings)
        r = loading_agreement(model.get_loadings(), vmodel.get_loadings())["|r|"].mean()
        for row in rows.values():
            row["mean matched |r|"] = r
    return model, vmodel, bdata, pd.DataFrame(rows).T.rename(columns=LDVAE_KEY_COLUMNS).rename_axis("tool")


def scvi_training_record(history: dict) -> pd.DataFrame:
    """scvi-tools' ``model.history`` (a dict of one-column DataFrames, one row per epoch) as
    a scnotes training record: columns ``epoch`` (from 0), ``loss`` (``elbo_train``) and
    ``validation_loss`` (``elbo_validation``), −ELBO per cell as scvi-tools logs it.

    Raises KeyError when either record is missing (a model trained without validation).
    """
    for k in ("elbo_train", "elbo_validation"):
        if k not in history:
            raise key_error("training record", k, "history", history.keys(),
                            hint=" (train with a validation split, check_val_every_n_epoch=1)")
    return pd.DataFrame({"epoch": np.arange(len(history["elbo_train"])),
                         "loss": history["elbo_train"].iloc[:, 0].to_numpy(),
                         "validation_loss": history["elbo_validation"].iloc[:, 0].to_numpy()})


def standardised_label_means(z, labels, factors=None, index=None) -> pd.DataFrame:
    """Mean latent value per label, in units of each factor: (mean over the label's cells −
    mean over all cells) / standard deviation over all cells (ddof 1).

    ``z``: n_cells × n_factors; ``labels``: n_cells; ``factors``: column names (default
    0, 1, …). Returns a labels × factors DataFrame, labels sorted. Raises ValueError when
    ``labels`` does not have one entry per cell.
    """
    z = np.asarray(z)
    labels = np.asarray(labels)
    if labels.shape != (z.shape[0],):
        raise ValueError(f"labels must have one entry per cell ({z.shape[0]}), got shape {labels.shape}")
    zdf = pd.DataFrame(z, columns=factors, index=index)
    return (zdf.groupby(labels).mean() - zdf.mean()) / zdf.std()


def marker_factors(standardised: pd.DataFrame, top: pd.DataFrame) -> pd.DataFrame:
    """For each label (row of :func:`standardised_label_means`), the factor whose mean departs
    most from the overall mean, the direction ("+"/"-"), that standardised mean, and the
    factor's top genes on that side (from ``LDVAE.top_genes``: columns factor, direction,
    gene). Raises KeyError when ``top`` lacks a column."""
    for col in ("factor", "direction", "gene"):
        if col not in top.columns:
            raise key_error("column", col, "top", top.columns, param="top")

    def marker(row):
        f = row.abs().idxmax()
        side = "+" if row[f] > 0 else "-"
        genes = top.loc[(top["factor"] == f) & (top["direction"] == side), "gene"].tolist()
        return pd.Series({"factor": f, "direction": side, "standardised mean": row[f],
                          "top genes on that side": ", ".join(genes)})

    return standardised.apply(marker, axis=1)


def loading_scale(minima, maxima) -> dict:
    """Scale of a loading matrix from each factor's smallest and largest loading: the medians
    over factors of the minima and of the maxima, and the largest absolute loading."""
    minima, maxima = np.asarray(minima, dtype=float), np.asarray(maxima, dtype=float)
    return {"median over factors of min loading": float(np.median(minima)),
            "median over factors of max loading": float(np.median(maxima)),
            "largest |loading|": float(max(np.max(np.abs(minima)), np.max(np.abs(maxima))))}


def loading_scales(loadings: dict, extremes: dict | None = None) -> pd.DataFrame:
    """:func:`loading_scale` of loading matrices (genes × factors DataFrames, by name), raw
    and centred over genes (rows ``"<name>, raw"``, ``"<name>, centred"``), after the rows of
    ``extremes`` (name → (per-factor minima, per-factor maxima), e.g. values printed on a
    page). The LDVAE's loadings are identified only up to a shift per factor, so the raw
    scale depends on it and the centred one does not."""
    rows = {name: loading_scale(lo, hi) for name, (lo, hi) in (extremes or {}).items()}
    for name, table in loadings.items():
        centred = table - table.mean()
        rows[f"{name}, raw"] = loading_scale(table.min().to_numpy(), table.max().to_numpy())
        rows[f"{name}, centred"] = loading_scale(centred.min().to_numpy(), centred.max().to_numpy())
    return pd.DataFrame(list(rows.values()), index=list(rows))


def label_recovery(clusters, labels) -> pd.Series:
    """For each label, the share of its cells in a cluster whose most common label it is
    (``clusters``, ``labels``: n_cells each), least recovered first.

    Raises ValueError when the two do not have the same length."""
    clusters, labels = np.asarray(clusters), np.asarray(labels)
    if clusters.shape != labels.shape:
        raise ValueError(f"clusters and labels must have one entry per cell, got {clusters.shape} and {labels.shape}")
    majority = pd.crosstab(clusters, labels).idxmax(axis=1)
    recovered = majority.loc[clusters].to_numpy() == labels
    return pd.Series(recovered).groupby(labels).mean().sort_values()
