"""The baselines a count model is compared with, from scanpy calls only: Leiden at one
fixed resolution on an embedding, and scanpy's standard "PCA + Leiden" path."""
from __future__ import annotations

from .._checks import check_key, check_layer

__all__ = ["leiden_fixed", "pca_leiden"]


def leiden_fixed(adata, use_rep: str, key_added: str = "leiden", resolution: float = 1.0,
                 n_neighbors: int = 15, seed: int = 0):
    """Leiden clusters of the embedding ``adata.obsm[use_rep]`` at one fixed ``resolution``
    (scanpy's standard clustering: a ``n_neighbors`` kNN graph, ``sc.pp.neighbors`` with
    scikit-learn's exact search, then ``sc.tl.leiden`` with igraph, 2 iterations, undirected;
    Traag et al. 2019). The resolution is fixed in advance, not chosen with the labels, so
    scores of these clusters are not optimistic.

    Writes ``obs[key_added]`` (categorical cluster ids, n_cells), and, as ``sc.pp.neighbors``
    does, the graph in ``obsp`` / ``uns["neighbors"]``. Returns ``obs[key_added]``.

    Raises
    ------
    KeyError : ``use_rep`` not in ``obsm`` (the message lists the keys).
    ValueError : ``resolution`` not positive.
    """
    import scanpy as sc

    check_key(adata, "obsm", use_rep, "use_rep")
    if not resolution > 0:
        raise ValueError(f"resolution must be positive, got {resolution!r}")
    sc.pp.neighbors(adata, n_neighbors=n_neighbors, use_rep=use_rep, random_state=seed, transformer="sklearn")
    sc.tl.leiden(adata, resolution=resolution, flavor="igraph", n_iterations=2, directed=False,
                 random_state=seed, key_added=key_added)
    return adata.obs[key_added]


def pca_leiden(adata, layer: str | None = "counts", n_comps: int = 50, target_sum: float = 1e4,
               resolution: float = 1.0, n_neighbors: int = 15, key_added: str = "X_pca",
               cluster_key: str = "pca_leiden", seed: int = 0):
    """scanpy's standard path from counts to clusters, the baseline a count model has to
    beat: total-count normalisation to ``target_sum`` per cell, log(1 + ·), PCA with
    ``min(n_comps, n_genes − 1, n_cells − 1)`` components, then :func:`leiden_fixed` on
    the components. Uses every gene of ``adata`` (subset to highly variable genes first);
    the counts themselves are left unchanged (normalised on a copy).

    Parameters
    ----------
    adata : AnnData, n_cells × n_genes raw counts in ``layers[layer]`` (None: ``X``)
    key_added : ``obsm`` key of the principal components (n_cells × n_comps)
    cluster_key : ``obs`` key of the Leiden clusters
    seed : seeds the PCA solver and Leiden

    Returns ``obs[cluster_key]``; writes ``obsm[key_added]`` and ``obs[cluster_key]``.

    Raises
    ------
    KeyError : ``layer`` not in ``layers``.
    ValueError : fewer than 2 genes or 2 cells.
    """
    import anndata as ad
    import scanpy as sc

    counts = check_layer(adata, layer)
    if adata.n_vars < 2 or adata.n_obs < 2:
        raise ValueError(f"PCA needs at least 2 cells and 2 genes, got {adata.n_obs} × {adata.n_vars}")
    norm = ad.AnnData(counts.copy())
    sc.pp.normalize_total(norm, target_sum=target_sum)
    sc.pp.log1p(norm)
    sc.pp.pca(norm, n_comps=min(n_comps, adata.n_vars - 1, adata.n_obs - 1), random_state=seed)
    adata.obsm[key_added] = norm.obsm["X_pca"]
    return leiden_fixed(adata, key_added, key_added=cluster_key, resolution=resolution,
                        n_neighbors=n_neighbors, seed=seed)
