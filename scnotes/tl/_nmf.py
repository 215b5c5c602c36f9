"""AnnData front for Poisson NMF and its topic form (scanpy style)."""
from __future__ import annotations

__all__ = ["nmf"]


def _keys(key_added: str):
    """Slot names derived from ``key_added`` (see :func:`nmf`)."""
    base = key_added[2:] if key_added.startswith("X_") else key_added
    topics = base.replace("nmf", "topics") if "nmf" in base else f"{base}_topics"
    scale = "topic_scale" if topics == "topics" else f"{topics}_scale"
    return {"loadings": key_added, "factors": base, "proportions": f"X_{topics}",
            "topics": topics, "scale": scale}


def nmf(adata, n_components: int = 10, layer: str | None = None, method: str = "scd",
        key_added: str = "X_nmf", topics: bool = True, mask=None, copy: bool = False, **kwargs):
    """Fit a Poisson NMF to the raw counts of ``adata`` and store loadings and topics.

    Parameters
    ----------
    adata : anndata.AnnData
        Cells × genes; ``adata.X`` or ``adata.layers[layer]`` holds raw
        counts (sparse stays sparse: the fit never densifies it).
    n_components : int
        Rank k.
    layer : str, optional
        Layer with the counts (default ``X``).
    method : {"scd", "mu"}
        See :class:`scnotes.nmf.PoissonNMF`.
    key_added : str
        ``obsm`` key of the loadings L. With the default ``"X_nmf"`` the fit writes

        - ``adata.obsm["X_nmf"]``: L (n_cells × k), expected counts per factor scale;
        - ``adata.varm["nmf"]``: F (n_genes × k);
        - if ``topics``: ``adata.obsm["X_topics"]`` (topic proportions, rows sum to 1),
          ``adata.varm["topics"]`` (n_genes × k, columns sum to 1: each topic is a
          distribution over genes) and ``adata.obs["topic_scale"]`` (expected total
          count s_i, with L Fᵀ = diag(s) P Tᵀ);
        - ``adata.uns["nmf"]``: parameters, final log-likelihood and the trace.

        Another key ``"X_foo"`` gives ``varm["foo"]``, ``obsm["X_foo_topics"]``,
        ``varm["foo_topics"]`` and ``obs["foo_topics_scale"]``; a key containing
        ``"nmf"`` has it replaced by ``"topics"`` for the topic slots.
    topics : bool
        Also store the topic-model form (:func:`scnotes.nmf.poisson_to_topics`).
    mask : array or sparse (n_cells, n_genes), optional
        Weights in [0, 1] (0 = missing); see :class:`scnotes.nmf.PoissonNMF`.
    copy : bool
        Work on a copy of ``adata`` and return ``(adata_copy, estimator)``.
    **kwargs
        Passed to :class:`scnotes.nmf.PoissonNMF` (``max_iter``, ``tol``, ``seed``, ``init``...).

    Returns
    -------
    scnotes.nmf.PoissonNMF
        The fitted estimator (or ``(adata, estimator)`` with ``copy=True``).

    Raises
    ------
    KeyError
        Unknown ``layer``.
    ValueError
        Counts that are not raw integers, bad mask or hyperparameters.
    """
    from .._checks import counts_from_adata
    from ..nmf import PoissonNMF

    if copy:
        adata = adata.copy()
    x = counts_from_adata(adata, layer)
    est = PoissonNMF(n_components, method=method, **kwargs).fit(x, w=mask)
    keys = _keys(key_added)
    adata.obsm[keys["loadings"]] = est.L_
    adata.varm[keys["factors"]] = est.F_
    if topics:
        tm = est.topics()
        adata.obsm[keys["proportions"]] = tm.proportions
        adata.varm[keys["topics"]] = tm.topics
        adata.obs[keys["scale"]] = tm.scale
    adata.uns[keys["factors"]] = {
        "params": {"n_components": int(n_components), "method": method, "layer": layer,
                   **{k: v for k, v in kwargs.items() if isinstance(v, (int, float, str, bool))}},
        "loglik": est.loglik_,
        "n_iter": est.n_iter_,
        "trace": est.trace_,
    }
    return (adata, est) if copy else est
