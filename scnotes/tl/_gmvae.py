"""AnnData front for the Gaussian-mixture VAE (:class:`scnotes.vae.GMVAE`), and the
clustering scores its chapter reports for any embedding."""
from __future__ import annotations

import numpy as np
import pandas as pd

from .._checks import check_key, check_obs_key
from ._front import finish, slot_keys
from ._vae import _SHARED_DOC, fit_vae

__all__ = ["gmvae", "clustering_scores"]

_RESOLUTIONS = tuple(np.round(np.arange(0.1, 2.01, 0.1), 2))


def _slot_names(key_added: str, cluster_key: str | None):
    """(cluster key, probability key) of a GMVAE front call (kept for :mod:`scnotes.tl._map`)."""
    keys = slot_keys(key_added, cluster="{base}_cluster", proba="{key}_proba")
    return (cluster_key or keys["cluster"]), keys["proba"]


def gmvae(adata, n_clusters: int = 10, *, layer: str | None = None, batch_key: str | None = None,
          covariate_keys=None, size_factor_key: str | None = None, key_added: str = "X_gmvae",
          cluster_key: str | None = None, n_latent: int = 10, max_epochs: int | None = None,
          batch_size: int | None = None, seed: int = 0, device: str = "cpu", progress: bool | None = None,
          copy: bool = False, proba_samples: int = 20, model_kwargs=None, **kwargs):
    """Fit a :class:`~scnotes.vae.GMVAE` to the counts of ``adata``; store embedding and clusters.

    Parameters
    ----------
    adata : AnnData, n_cells × n_genes raw counts in ``X`` or ``layers[layer]``
    n_clusters : int, K ≥ 1 mixture components
    layer : str or None, layer holding the counts (None: ``adata.X``)
    batch_key : str or None, ``obs`` column one-hot encoded into the decoder (only there)
    covariate_keys : list of str or None, further categorical ``obs`` columns for the decoder
    size_factor_key : str or None, ``obs`` column of positive size factors (None: totals)
    key_added : str, ``obsm`` key of the embedding E_q[x] (n_cells × n_latent)
    cluster_key : str or None, ``obs`` key of the argmax cluster (None: ``key_added``
        without ``X_`` plus ``_cluster``, e.g. ``"gmvae_cluster"``)
    {shared}
    proba_samples : int, Monte Carlo draws for the cluster probabilities
    **kwargs : keywords of :class:`~scnotes.vae.GMVAE` (``w_dim``, ``likelihood``, ``free_bits``,
        ``free_bits_mode``, ``hidden_dim``, ...) and of :meth:`GMVAE.fit` (``lr``, ``n_samples``,
        ``train_size``, ``early_stopping``, ``kl_warmup_epochs``, ``pretrain_epochs``, ...), each
        sent where it belongs. ``model_kwargs=dict(...)``: the older, deprecated way.

    Returns
    -------
    scnotes.vae.GMVAE
        The fitted model (``(adata, model)`` with ``copy=True``). Writes
        ``obsm[key_added]`` (E_q[x]), ``obsm[key_added + "_proba"]`` (E_q[p(z | x, w)],
        n_cells × K), ``obs[cluster_key]`` (categorical, categories ``"0"`` … ``"K-1"``,
        unused ones kept) and ``uns[key_added]`` (``params`` and the slot names).

    Raises
    ------
    ValueError : ``n_clusters`` < 1 or not an integer; invalid counts (non-integer,
        negative, NaN) or covariates.
    KeyError : ``batch_key``, a covariate key, ``size_factor_key`` or ``layer`` missing.
    """
    from ..vae import GMVAE

    if isinstance(n_clusters, bool) or int(n_clusters) != n_clusters or n_clusters < 1:
        raise ValueError(f"n_clusters must be a positive integer, got {n_clusters!r}")
    k = int(n_clusters)
    cluster_key, proba_key = _slot_names(key_added, cluster_key)
    adata, model, inputs = fit_vae(GMVAE, adata, front="gmvae", n_latent=n_latent, max_epochs=max_epochs,
                                   batch_size=batch_size, seed=seed, device=device, progress=progress,
                                   layer=layer, batch_key=batch_key, covariate_keys=covariate_keys,
                                   size_factor_key=size_factor_key, key_added=key_added, copy=copy,
                                   model_kwargs=model_kwargs, kwargs=dict(kwargs, n_clusters=k),
                                   params=dict(proba_samples=proba_samples))
    # inputs.x: validated by setup (one check per front call)
    proba = model.predict_proba(inputs.x, n_samples=proba_samples, _checked=True)
    adata.obsm[proba_key] = proba
    adata.obs[cluster_key] = pd.Categorical([str(v) for v in proba.argmax(axis=1)],
                                            categories=[str(v) for v in range(k)])
    adata.uns[key_added].update(cluster_key=cluster_key, proba_key=proba_key)
    return finish(adata, model, copy)


gmvae.__doc__ = gmvae.__doc__.format(shared=_SHARED_DOC.format(
    epochs="``GMVAE.fit``'s default, 100, after its pretraining", batch="128, ``GMVAE.fit``'s default"))


def clustering_scores(adata, basis: str, label_key: str, batch_key: str | None = None,
                      cluster_key: str | None = None, resolutions=_RESOLUTIONS, seed: int = 0) -> dict:
    """The GMVAE chapter's scores of one embedding ``adata.obsm[basis]``: the values of
    :func:`scnotes.metrics.score_embedding` (its docstring states the protocol), in [0, 1]
    except where noted, higher = better:

    * ``kmeans_ari``: ARI of k-means (k = number of labels) with the labels (the seed's ARI);
    * ``leiden_nmi``, ``leiden_ari``: scIB's Leiden score, the resolution (of
      ``resolutions``) chosen by NMI with the labels (optimistic: the labels choose it);
    * ``asw_label``: silhouette width by label, (s + 1)/2;
    * with ``batch_key``: ``asw_batch`` (scIB's batch ASW), ``ilisi`` (rescaled median
      iLISI, perplexity 30) and ``kbet`` (kBET acceptance, 25 neighbours, computed within
      each label and averaged over labels, scIB's way; before the one scorer it was
      against the global batch mix);
    * with ``cluster_key`` (a clustering fixed in advance, e.g. the GMVAE's argmax):
      ``cluster_ari``, ``cluster_nmi``, and its occupancy ``n_used``, ``n_small``
      (clusters with < 1 % of cells), ``max_fraction`` (counts, not scores).

    Returns a dict of floats. Raises KeyError for a missing ``obsm`` / ``obs`` key.
    """
    from .. import metrics

    check_key(adata, "obsm", basis, "basis")
    labels = check_obs_key(adata, label_key).to_numpy()
    batch = None if batch_key is None else check_obs_key(adata, batch_key).to_numpy()
    clusters = None
    if cluster_key is not None:
        check_obs_key(adata, cluster_key)
        clusters = pd.Categorical(adata.obs[cluster_key])  # unused categories kept: empty clusters
    s = metrics.score_embedding(np.asarray(adata.obsm[basis], dtype=np.float64), labels, batch,
                                clusters=clusters, resolutions=resolutions, seed=seed)
    keys = ["kmeans_ari", "leiden_nmi", "leiden_ari", "asw_label"]
    keys += ["asw_batch", "ilisi", "kbet"] if batch_key is not None else []
    keys += ["cluster_ari", "cluster_nmi", "n_used", "n_small", "max_fraction"] if cluster_key is not None else []
    return {k: s[k] for k in keys}
