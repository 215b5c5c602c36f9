"""The GMVAE chapter's experiment as library calls: GMVAE fits over a grid of the number of
components K and model seeds, each scored on the labels and the batches, beside two
baselines on the same cells (an NBVAE with the batch covariate, and scanpy's PCA + Leiden),
and the table of means and standard deviations over seeds that the chapter shows and
:func:`scnotes.pl.gmvae_sweep` draws.

It lives beside the ``tl.gmvae`` front rather than in it because it composes fronts
(``tl.gmvae``, ``tl.nbvae``), scores (``tl.clustering_scores``) and baselines
(``tl.pca_leiden``): an experiment over models, not a model.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .. import metrics
from ._gmvae import _RESOLUTIONS

__all__ = ["SWEEP_METRICS", "gmvae_epochs", "held_out_neg_elbo", "gmvae_sweep", "gmvae_sweep_summary",
           "sweep_mean"]

#: Score columns of a sweep's table (in the order of the chapter's Methods) and their labels.
SWEEP_METRICS = {k: metrics.SCORE_LABELS[k] for k in (
    "kmeans_ari", "leiden_nmi", "asw_label", "asw_batch", "ilisi", "kbet", "cluster_ari", "cluster_nmi",
    "n_used", "n_small", "max_fraction", "neg_elbo")}

#: (min_steps, cap) of scnotes.vae.epochs_for for the GMVAE phase and for its pretraining.
#: The book's 2,000-cell subsample has 1,800 training cells, 15 minibatches of 128 per epoch:
#: 20 + 10 epochs, i.e. 300 + 150 optimiser steps; a smaller file gets as many steps.
_EPOCH_RULE = dict(max_epochs=(300, 20), pretrain_epochs=(150, 10))


def gmvae_epochs(n_cells: int, train_size: float = 0.9, batch_size: int = 128, max_epochs: int | None = None,
                 pretrain_epochs: int | None = None) -> tuple[int, int]:
    """(GMVAE-phase epochs, pretraining epochs) for ``n_cells`` cells, each one given or,
    if None, sized to the data by :func:`scnotes.vae.epochs_for` on the ⌈train_size ·
    n_cells⌉ training cells: scvi-tools' rule (fewer passes for more cells) capped at 20
    (GMVAE phase) and 10 (pretraining) epochs, raised so that a phase takes at least 300
    and 150 optimiser steps. Why: a fixed number of epochs gives a 600-cell file (5
    minibatches per epoch) a third of the steps of the book's 2,000 cells, and it ends
    under-trained; with this rule the book's subsample keeps its 20 + 10 epochs.

    Raises ValueError for ``n_cells`` < 1, ``train_size`` outside (0, 1], or a given
    ``max_epochs`` (``pretrain_epochs``) that is not a positive (non-negative) integer.
    """
    from ..vae import epochs_for

    for name, v, low in (("max_epochs", max_epochs, 1), ("pretrain_epochs", pretrain_epochs, 0)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low):
            raise ValueError(f"{name} must be None (sized to the data) or an integer >= {low}, got {v!r}")
    if n_cells < 1:
        raise ValueError(f"n_cells must be positive, got {n_cells!r}")
    if not 0 < train_size <= 1:
        raise ValueError(f"train_size must be in (0, 1], got {train_size!r}")
    n_train = math.ceil(train_size * n_cells)
    given = dict(max_epochs=max_epochs, pretrain_epochs=pretrain_epochs)
    return tuple(int(v) if v is not None else epochs_for(n_train, batch_size, min_steps=_EPOCH_RULE[k][0],
                                                          cap=_EPOCH_RULE[k][1])
                 for k, v in given.items())


def held_out_neg_elbo(model, adata, layer: str | None = "counts", n_samples: int = 10) -> float:
    """Minus the ELBO per held-out cell (nats; lower is better), averaged over the cells
    the fitted VAE ``model`` did not train on (``model.validation_indices_``, rows of
    ``adata``), each estimated with ``n_samples`` draws. GMVAE and NBVAE bound the same
    log p(y | s, c), so their values compare.

    Raises ValueError if the model was fitted without a validation split.
    """
    from ._front import encode_covariates

    idx = getattr(model, "validation_indices_", None)
    if idx is None or len(idx) == 0:
        raise ValueError("the model has no held-out cells: fit it with train_size < 1")
    held = adata[idx]
    x = held.X if layer is None else held.layers[layer]  # a few hundred cells may leave genes at zero
    c = encode_covariates(held, model.covariate_registry_)
    return float(-model.elbo(x, covariates=c, n_samples=n_samples).mean())


def _gmvae_row(adata, k, model_seed, label_key, batch_key, layer, seed, resolutions, free_bits, epochs, fit):
    """One GMVAE fit (``obsm["X_gmvae"]``, ``obs["gmvae_cluster"]``) and its row of scores."""
    from ._gmvae import clustering_scores, gmvae

    model = gmvae(adata, n_clusters=k, batch_key=batch_key, layer=layer, max_epochs=epochs[0],
                  pretrain_epochs=epochs[1], seed=model_seed, free_bits=free_bits, **fit)
    scores = clustering_scores(adata, "X_gmvae", label_key, batch_key, cluster_key="gmvae_cluster",
                               resolutions=resolutions, seed=seed)
    last = model.history_.iloc[-1]
    # The paper's four-term loss minus the unbiased bound, on the held-out cells.
    gap = (last["validation_reconstruction"] - last["validation_kl_w"] - last["validation_kl_x"]
           - last["validation_kl_z"] - last["validation_elbo"])
    return model, dict(method="GMVAE", K=k, seed=model_seed, free_bits=free_bits, **scores,
                       neg_elbo=held_out_neg_elbo(model, adata, layer), kl_z=last["kl_z"], paper_minus_elbo=gap,
                       seconds=model.fit_time_, max_epochs=epochs[0], pretrain_epochs=epochs[1])


def _nbvae_row(adata, model_seed, label_key, batch_key, layer, seed, resolutions, epochs, fit):
    """The NBVAE baseline: the GMVAE's encoder and decoder sizes, batch one-hot in the decoder,
    as many epochs as both GMVAE phases; Leiden at resolution 1 on its latent."""
    from ._baselines import leiden_fixed
    from ._gmvae import clustering_scores
    from ._vae import nbvae

    model = nbvae(adata, layer=layer, batch_key=batch_key, key_added="X_nbvae", seed=model_seed,
                  encoder_input="log1p", hidden_dim=128, max_epochs=epochs[0] + epochs[1], batch_size=128,
                  optimizer="adam", **fit)
    leiden_fixed(adata, "X_nbvae", key_added="nbvae_leiden", seed=seed)
    return dict(method="NBVAE + batch", seed=model_seed, neg_elbo=held_out_neg_elbo(model, adata, layer),
                seconds=model.fit_time_, **clustering_scores(adata, "X_nbvae", label_key, batch_key, "nbvae_leiden",
                                                             resolutions=resolutions, seed=seed))


def gmvae_sweep(adata, label_key: str, batch_key: str | None = None, n_clusters_grid=(1, 10, 20),
                model_seeds=(0, 1), *, layer: str | None = "counts", seed: int = 0, resolutions=_RESOLUTIONS,
                n_latent: int = 10, max_epochs: int | None = None, pretrain_epochs: int | None = None,
                free_bits: float = 0.0,
                lr: float = 3e-3, n_samples: int = 1, train_size: float = 0.9, baselines: bool = True):
    """GMVAE fits (``scnotes.tl.gmvae``) for every K in ``n_clusters_grid`` and seed in
    ``model_seeds``, on a random ``train_size`` of the cells (the rest held out for the
    ELBO), each scored on all cells by :func:`scnotes.tl.clustering_scores`; with
    ``baselines``, an NBVAE with the batch covariate per model seed (Leiden at resolution
    1 on its latent) and PCA + Leiden (:func:`scnotes.tl.pca_leiden`) on the same cells.

    Parameters
    ----------
    adata : AnnData, n_cells × n_genes raw counts in ``layers[layer]`` (None: ``X``); the
        fits write ``obsm["X_gmvae"]``, ``obs["gmvae_cluster"]``, ``obsm["X_nbvae"]``,
        ``obs["nbvae_leiden"]``, ``obsm["X_pca"]``, ``obs["pca_leiden"]`` (the last fit's)
    label_key, batch_key : ``obs`` columns of the labels (scores only) and of the batches
        (one-hot in the decoders; None: one batch, batch mixing not scored)
    seed : seed of the scores, of Leiden and of PCA (the model seeds are ``model_seeds``)
    resolutions : Leiden resolutions of the NMI-chosen Leiden score
    n_latent : latent dimension of the GMVAE's x and of the NBVAE's z
    max_epochs, pretrain_epochs : epochs of the GMVAE phase and of its count-VAE pretraining
        (None: sized to the data by :func:`gmvae_epochs`); the NBVAE trains their sum
    free_bits : λ (nats) of the free-bits threshold on the minibatch mean of KL_z
    lr, n_samples, train_size : Adam's learning rate, Monte Carlo draws per step, training share

    Returns
    -------
    (res, models) : ``res`` a DataFrame, one row per fit: ``method`` ("GMVAE",
        "NBVAE + batch", "PCA"), ``K``, ``seed``, ``free_bits``, the scores, ``neg_elbo``
        (:func:`held_out_neg_elbo`), ``kl_z`` (last epoch, nats per cell),
        ``paper_minus_elbo`` (the paper's four-term loss minus the ELBO, held out),
        ``seconds`` and the epochs; ``models`` maps each K to (model, embedding
        n_cells × n_latent, clusters) of the first model seed.

    Raises
    ------
    ValueError : an empty ``n_clusters_grid`` or ``model_seeds``; bad counts (from the fronts).
    KeyError : ``label_key``, ``batch_key`` or ``layer`` missing.
    """
    from .._checks import check_obs_key
    from ._baselines import pca_leiden
    from ._gmvae import clustering_scores

    if len(n_clusters_grid) == 0 or len(model_seeds) == 0:
        raise ValueError("n_clusters_grid and model_seeds must each hold at least one value")
    check_obs_key(adata, label_key)
    if batch_key is not None:
        check_obs_key(adata, batch_key)
    epochs = gmvae_epochs(adata.n_obs, train_size, 128, max_epochs, pretrain_epochs)
    fit = dict(n_latent=n_latent, lr=lr, n_samples=n_samples, train_size=train_size)
    score = dict(label_key=label_key, batch_key=batch_key, layer=layer, seed=seed, resolutions=resolutions)
    rows, models = [], {}
    for k in n_clusters_grid:
        for s_ in model_seeds:
            model, row = _gmvae_row(adata, k, s_, free_bits=free_bits, epochs=epochs, fit=fit, **score)
            rows.append(row)
            if s_ == model_seeds[0]:
                models[k] = (model, adata.obsm["X_gmvae"].copy(), adata.obs["gmvae_cluster"].copy())
    if baselines:
        rows += [_nbvae_row(adata, s_, epochs=epochs, fit=fit, **score) for s_ in model_seeds]
        pca_leiden(adata, layer=layer, seed=seed)
        rows.append(dict(method="PCA", seed=seed, **clustering_scores(adata, "X_pca", label_key, batch_key,
                                                                       "pca_leiden", resolutions=resolutions,
                                                                       seed=seed)))
    return pd.DataFrame(rows), models


def gmvae_sweep_summary(res: pd.DataFrame, metrics=None) -> pd.DataFrame:
    """Mean and standard deviation over seeds of a :func:`gmvae_sweep` table.

    Returns a numeric DataFrame, one row per model in order of appearance, indexed by
    (``method``, ``K``; K is ``<NA>`` for the baselines), columns (metric, "mean" / "std")
    for the ``metrics`` (default: :data:`SWEEP_METRICS`) present with at least one value;
    the std is NaN where a model has one fit. Display it with ``scnotes.report.table``.

    Raises KeyError if ``res`` has no ``method`` column.
    """
    if "method" not in res:
        raise KeyError("res has no 'method' column: pass the table gmvae_sweep returned")
    metrics = list(SWEEP_METRICS if metrics is None else metrics)
    r = res.assign(K=(res["K"] if "K" in res else pd.Series(np.nan, index=res.index)).astype("Int64"))
    cols = [c for c in metrics if c in r and r[c].notna().any()]
    return r.groupby(["method", "K"], sort=False, dropna=False)[cols].agg(["mean", "std"])


def sweep_mean(res: pd.DataFrame, column: str, method: str = "GMVAE", k: int | None = None) -> float:
    """Mean of ``column`` over the rows of ``method`` in a :func:`gmvae_sweep` table (only
    those with K = ``k`` if given): the number a chapter's sentence quotes. NaN if no row
    matches. Raises KeyError for a missing column."""
    if column not in res:
        raise KeyError(f"column {column!r} not in the sweep table; columns: {list(res.columns)}")
    rows = res["method"] == method
    if k is not None:
        rows &= res["K"] == k
    return float(res.loc[rows, column].mean())
