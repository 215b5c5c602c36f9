"""AnnData front for Poisson NMF and its topic form (scanpy style)."""
from __future__ import annotations

import numpy as np

from .._checks import counts_from_adata
from ._front import begin, check_genes, finish, record, renamed, resolve_progress, slot_keys

__all__ = ["nmf", "nmf_project", "topic_genes"]


def _keys(key_added: str):
    """Slot names derived from ``key_added`` (see :func:`nmf`)."""
    base = slot_keys(key_added)["base"]
    topics = base.replace("nmf", "topics") if "nmf" in base else f"{base}_topics"
    scale = "topic_scale" if topics == "topics" else f"{topics}_scale"
    return slot_keys(key_added, loadings="{key}", factors="{base}", proportions=f"X_{topics}",
                     topics=topics, lfc=f"{topics}_lfc", scale=scale)


def nmf(adata, n_components: int = 10, layer: str | None = None, method: str = "scd",
        key_added: str = "X_nmf", topics: bool = True, mask=None, *, max_epochs: int | None = None,
        seed: int = 0, progress: bool | None = None, copy: bool = False, **kwargs):
    """Fit a Poisson NMF to the raw counts of ``adata`` and store loadings and topics.

    Parameters
    ----------
    adata : anndata.AnnData
        Cells × genes; ``adata.X`` or ``adata.layers[layer]`` holds raw
        counts (sparse stays sparse: the fit never densifies it).
    n_components : int
        Rank k (the number of topics).
    layer : str, optional
        Layer with the counts (default ``X``).
    method : {"scd", "mu"}
        See :class:`scnotes.nmf.PoissonNMF`: ``"scd"`` reaches the maximum-likelihood
        fit fast (its means can be exactly zero); ``"mu"`` is EM, slower, and keeps
        every mean positive.
    key_added : str
        ``obsm`` key of the loadings L. With the default ``"X_nmf"`` the fit writes

        - ``adata.obsm["X_nmf"]``: L (n_cells × k), expected counts per factor scale;
        - ``adata.varm["nmf"]``: F (n_genes × k);
        - if ``topics``: ``adata.obsm["X_topics"]`` (topic proportions, rows sum to 1),
          ``adata.varm["topics"]`` (n_genes × k, columns sum to 1: each topic is a
          distribution over genes), ``adata.varm["topics_lfc"]`` (least-extreme log2
          fold change of each gene in each topic against the other topics,
          :func:`scnotes.nmf.topic_lfc`, fastTopics' distinctiveness) and
          ``adata.obs["topic_scale"]`` (expected total count s_i, with L Fᵀ = diag(s) P Tᵀ);
        - ``adata.uns["X_nmf"]``: ``params`` (this call's parameters), ``loglik``
          (final Poisson log-likelihood, nats), ``n_epochs``, ``converged``,
          ``history`` (the model's ``history_``) and ``slots`` (the keys written).

        Another key ``"X_foo"`` gives ``varm["foo"]``, ``obsm["X_foo_topics"]``,
        ``varm["foo_topics"]``, ``varm["foo_topics_lfc"]`` and ``obs["foo_topics_scale"]``;
        a key containing ``"nmf"`` has it replaced by ``"topics"`` for the topic slots.
    topics : bool
        Also store the topic-model form (:func:`scnotes.nmf.poisson_to_topics`).
    mask : array or sparse (n_cells, n_genes), optional
        Weights in [0, 1] (0 = missing); see :class:`scnotes.nmf.PoissonNMF`.
    max_epochs : int or None
        Sweeps (None: :class:`scnotes.nmf.PoissonNMF`'s default, 300; ``max_iter``: the older
        name, deprecated).
    seed : int
        Seed of the random start (the global random state is not touched).
    progress : bool or None
        Progress bar over the sweeps (None: ``scnotes.settings.progress``, on only in an
        interactive session).
    copy : bool
        Work on a copy of ``adata`` (the input is left unchanged) and return
        ``(adata_copy, model)``.
    **kwargs
        Passed to :class:`scnotes.nmf.PoissonNMF` (``tol``, ``init``, ``extrapolate``...).

    Returns
    -------
    scnotes.nmf.PoissonNMF
        The fitted model, with ``var_names_`` = ``adata.var_names`` (so
        ``model.save(path)`` keeps the genes); ``(adata_copy, model)`` with ``copy=True``.

    Raises
    ------
    KeyError
        Unknown ``layer``.
    ValueError
        Counts that are not raw integers, bad mask or hyperparameters.
    """
    from ..nmf import PoissonNMF, topic_lfc

    max_epochs = renamed(kwargs, "max_iter", "max_epochs", max_epochs, None, "nmf")
    if max_epochs is not None:
        kwargs["max_epochs"] = max_epochs
    adata = begin(adata, copy)
    x = counts_from_adata(adata, layer)
    est = PoissonNMF(n_components, method=method, seed=seed, progress=resolve_progress(progress),
                     **kwargs).fit(x, w=mask, var_names=adata.var_names)
    keys = _keys(key_added)
    adata.obsm[keys["loadings"]] = est.L_
    adata.varm[keys["factors"]] = est.F_
    slots = {"obsm": [keys["loadings"]], "varm": [keys["factors"]], "obs": []}
    if topics:
        tm = est.topics()
        adata.obsm[keys["proportions"]] = tm.proportions
        adata.varm[keys["topics"]] = tm.topics
        adata.varm[keys["lfc"]] = topic_lfc(tm.topics)
        adata.obs[keys["scale"]] = tm.scale
        slots = {"obsm": [keys["loadings"], keys["proportions"]],
                 "varm": [keys["factors"], keys["topics"], keys["lfc"]], "obs": [keys["scale"]]}
    kwargs["max_epochs"] = int(est.max_epochs)
    record(adata, key_added, dict(n_components=int(n_components), method=method, layer=layer, seed=seed,
                                  topics=topics, masked=mask is not None, **kwargs),
           est, loglik=est.loglik_, n_epochs=est.n_epochs_, converged=est.converged_, history=est.history_,
           slots=slots)
    return finish(adata, est, copy)


def nmf_project(adata, model, layer: str | None = None, key_added: str = "X_nmf", topics: bool = True,
                max_epochs: int = 100, *, copy: bool = False):
    """Store the loadings (and topic proportions) of the cells of a new ``adata`` under a fitted
    model's factors.

    The genes of ``adata`` must be the model's (``model.var_names_``, set by :func:`nmf`), in
    the same order; categories play no part. Cells are fitted by
    :meth:`scnotes.nmf.PoissonNMF.transform` (EM on the loadings, factors fixed).

    Writes ``obsm[key_added]`` (loadings L, n_cells × k) and, with ``topics``, the topic
    proportions and scale under the slot names of :func:`nmf` (topics and factors are the
    model's, so no ``varm`` is written), and ``uns[key_added]`` (``params`` with
    ``projected=True``, ``model``, ``slots``: the keys written).

    Returns
    -------
    scnotes.nmf.PoissonNMF
        ``model``, unchanged (the contract of every front; the loadings are
        ``adata.obsm[key_added]``); ``(adata_copy, model)`` with ``copy=True``, the input
        unchanged. (Before, the loadings array was returned.)

    Raises
    ------
    ValueError : genes differ from the model's (the message names the first difference).
    KeyError : unknown ``layer``.
    """
    from ..nmf import poisson_to_topics

    check_genes(model, adata)
    adata = begin(adata, copy)
    L = model.transform(counts_from_adata(adata, layer), max_epochs=max_epochs)
    keys = _keys(key_added)
    adata.obsm[keys["loadings"]] = L
    slots = {"obsm": [keys["loadings"]], "varm": [], "obs": []}
    if topics:
        tm = poisson_to_topics(L, model.F_)
        adata.obsm[keys["proportions"]] = tm.proportions
        adata.obs[keys["scale"]] = tm.scale
        slots = {"obsm": [keys["loadings"], keys["proportions"]], "varm": [], "obs": [keys["scale"]]}
    record(adata, key_added, dict(n_components=int(model.n_components), layer=layer, topics=topics,
                                  max_epochs=int(max_epochs), projected=True), model, slots=slots)
    return finish(adata, model, copy)


def topic_genes(adata, key: str = "topics", n: int = 10, gene_symbols: str | None = None,
                min_frequency: float | None = None):
    """The most distinctive genes of every topic stored by :func:`nmf`, as a tidy table.

    Reads ``adata.varm[key]`` (topics) and ``adata.varm[key + "_lfc"]`` (their
    least-extreme log2 fold changes) and ranks as :func:`scnotes.nmf.distinctive_genes`
    (fastTopics' statistic, among genes at least as frequent in the topic as the
    uniform 1 / n_genes unless ``min_frequency`` says otherwise).

    Parameters
    ----------
    key : ``varm`` key of the topics (``"topics"`` for ``key_added="X_nmf"``).
    n : genes per topic.
    gene_symbols : ``var`` column with the names to show (default ``var_names``).

    Returns
    -------
    pandas.DataFrame: ``topic``, ``rank``, ``gene``, ``lfc`` (log2), ``frequency``.

    Raises
    ------
    KeyError : ``key`` (or its ``_lfc``) not in ``varm``, or ``gene_symbols`` not in ``var``.
    """
    from ..nmf import distinctive_genes

    for k in (key, f"{key}_lfc"):
        if k not in adata.varm:
            raise KeyError(f"varm key {k!r} not found (run scnotes.tl.nmf first); "
                           f"available: {list(adata.varm.keys())}")
    if gene_symbols is not None and gene_symbols not in adata.var.columns:
        raise KeyError(f"var column {gene_symbols!r} not found; available: {list(adata.var.columns)}")
    names = adata.var[gene_symbols].astype(str).to_numpy() if gene_symbols else adata.var_names.to_numpy()
    return distinctive_genes(np.asarray(adata.varm[key]), names, n=n, min_frequency=min_frequency,
                             lfc=np.asarray(adata.varm[f"{key}_lfc"]))
