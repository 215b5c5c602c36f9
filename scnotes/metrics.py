"""Integration metrics: batch mixing and label conservation on an embedding or a kNN graph.

- :func:`lisi` — Local Inverse Simpson's Index (Korsunsky et al. 2019,
  Nat Methods 16:1289): the effective number of categories in each cell's
  neighbourhood under a Gaussian kernel calibrated to a fixed perplexity.
  iLISI uses batch labels (higher = better mixing), cLISI cell-type labels
  (lower = purer neighbourhoods). :func:`ilisi_score` / :func:`clisi_score`
  rescale the median to [0, 1] with 1 best, as in scIB (Luecken et al. 2022,
  Nat Methods 19:41).
- :func:`kbet_acceptance` — a kBET-like test (Büttner et al. 2019, Nat
  Methods 16:43): the fraction of neighbourhoods whose batch composition a
  chi-square test does not reject against the global composition.
- :func:`silhouette_label` — silhouette width by label, rescaled to [0, 1].
- :func:`leiden_clustering` — scIB's protocol (Luecken et al. 2022): Leiden
  clusters of the kNN graph over a resolution grid, the resolution chosen by
  NMI with the labels, and the ARI and NMI of that one clustering. Both are
  optimistic (the labels choose the resolution); :func:`cluster_scores` scores
  a clustering fixed in advance (e.g. a model's own clusters).
  :func:`leiden_ari` is the older best-ARI-over-resolutions score (deprecated).
- :func:`kmeans_ari` — ARI/NMI of k-means with k = number of labels.
- :func:`score_embedding` — the one embedding scorer: all of the above on one
  embedding or graph under one stated protocol (kBET per label where there are
  labels), checked against scib-metrics; ``tl.clustering_scores``,
  ``mnn.score_methods`` and :func:`score_integration` report its values.
- :func:`poisson_loglik`, :func:`nb_loglik` — held-out count log-likelihoods
  of predicted means (per entry, per cell or in total, with a mask).

Every function accepts either an embedding ``x`` (cells × d, Euclidean) or a
precomputed graph (a sparse cells × cells distance matrix, e.g. BBKNN's
``obsp["distances"]``); silhouette needs an embedding.
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import scipy.sparse as sp

__all__ = ["SCORE_LABELS", "knn_graph", "lisi", "ilisi_score", "clisi_score", "kbet_acceptance",
           "silhouette_label", "silhouette_batch", "leiden_ari", "leiden_clustering", "cluster_scores",
           "kmeans_ari", "score_embedding", "score_integration", "poisson_loglik", "nb_loglik", "occupancy",
           "zinb_loglik", "RESOLUTIONS"]


#: Display names of the scores :func:`score_embedding` returns (and of a held-out −ELBO), for
#: tables and figures; the keys are the scores' names.
SCORE_LABELS = {"kmeans_ari": "ARI (k-means)", "leiden_nmi": "NMI (Leiden, best res.)",
                "leiden_ari": "ARI (Leiden, best res.)", "asw_label": "ASW (label)",
                "asw_batch": "batch ASW", "ilisi": "iLISI", "clisi": "cLISI", "kbet": "kBET",
                "cluster_ari": "ARI (own clusters)", "cluster_nmi": "NMI (own clusters)",
                "n_used": "clusters used", "n_small": "small clusters", "max_fraction": "largest share",
                "neg_elbo": "−ELBO held out (nats)"}

def _codes(labels, n):
    lab = pd.Series(np.asarray(labels))
    if len(lab) != n:
        raise ValueError(f"{len(lab)} labels for {n} cells")
    if lab.isna().any():
        raise ValueError("labels contain missing values")
    cat = pd.Categorical(lab)
    return np.asarray(cat.codes, dtype=np.int64), len(cat.categories)


def _renamed(old_value, value, default, old: str, new: str, func: str):
    """The value of ``new``, or of its older name ``old`` (accepted for one release, with a
    DeprecationWarning); both given with different values → TypeError."""
    if old_value is None:
        return value
    # stacklevel 2: attributed to the metrics function (scnotes), never to a chapter's
    # __main__, where Python would print it on the executed page (as scnotes.tl._front does).
    warnings.warn(f"scnotes.metrics.{func}: {old}= is renamed {new}= (the old name goes in the next "
                  "release)", DeprecationWarning, stacklevel=2)
    if value != default and value != old_value:
        raise TypeError(f"scnotes.metrics.{func}: got both {new}={value!r} and its older name "
                        f"{old}={old_value!r}")
    return old_value


def knn_graph(x=None, n_neighbors: int = 90, graph=None, chunk_size: int = 512, *, k: int | None = None):
    """Neighbour indices and distances, shape (n_cells, n_neighbors), self excluded.

    From an embedding ``x`` (exact Euclidean search), or from a sparse
    distance ``graph`` (e.g. BBKNN's few neighbours per batch): there the
    ``n_neighbors`` nearest cells by shortest-path distance through the graph are used
    (as scIB does for graph outputs), so that graph and embedding methods are
    scored on neighbourhoods of the same size. Rows that reach fewer than
    ``n_neighbors`` cells are padded with index -1 / distance inf. ``n_neighbors`` is
    capped at n_cells − 1. ``k`` is its older name (DeprecationWarning).

    Raises
    ------
    ValueError
        NaN or infinite values in ``x``.
    TypeError
        Both ``n_neighbors`` and ``k`` given, with different values.
    """
    k = _renamed(k, n_neighbors, 90, "k", "n_neighbors", "knn_graph")
    if graph is not None:
        from scipy.sparse.csgraph import dijkstra

        g = sp.csr_matrix(graph)
        n = g.shape[0]
        k = min(k, n - 1)
        idx = np.full((n, k), -1, dtype=np.int64)
        dist = np.full((n, k), np.inf)
        for s in range(0, n, chunk_size):
            rows = np.arange(s, min(s + chunk_size, n))
            d = dijkstra(g, directed=False, indices=rows)
            d[np.arange(len(rows)), rows] = np.inf
            part = np.argpartition(d, k - 1, axis=1)[:, :k]
            dp = np.take_along_axis(d, part, axis=1)
            o = np.argsort(dp, axis=1, kind="stable")
            part = np.take_along_axis(part, o, axis=1)
            dp = np.take_along_axis(dp, o, axis=1)
            idx[rows] = np.where(np.isfinite(dp), part, -1)
            dist[rows] = dp
        return idx, dist
    from sklearn.neighbors import NearestNeighbors

    x = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(x)):
        raise ValueError("embedding contains NaN or infinite values")
    k = min(k, x.shape[0] - 1)
    nn = NearestNeighbors(n_neighbors=k + 1).fit(x)
    dist, idx = nn.kneighbors(x)
    return idx[:, 1:], dist[:, 1:]


def lisi(labels, x=None, perplexity: float = 30.0, graph=None, knn=None, tol: float = 1e-5,
         max_iter: int = 50):
    """Per-cell LISI of ``labels`` (Korsunsky et al. 2019; harmonypy / LISI ``compute_lisi``).

    Each cell's ``3 × perplexity`` nearest *other* cells get Gaussian weights
    ``exp(−β d)`` on their Euclidean distance ``d``, with β found by bisection
    for each cell so that the weights have perplexity ``perplexity``; LISI is
    the inverse Simpson index of the labels under those weights. The query
    cell is left out of its own neighbours, as in harmonypy 2.x's
    ``compute_lisi`` (checked against harmonypy 2.1.0 in ``tests/test_metrics.py``)
    and in the R package LISI (``RANN::nn2`` with ``k = 3 × perplexity``, first
    column dropped); harmonypy 0.0.10's Python version used one neighbour fewer.
    On graph input a cell that reaches fewer than ``perplexity`` cells is
    calibrated to the most its own neighbours allow (uniform weights), without
    changing any other cell's perplexity.

    Parameters
    ----------
    labels : array-like, shape (n_cells,)
    x : ndarray, shape (n_cells, d), optional
        Embedding (Euclidean distances).
    perplexity : float
        Effective neighbourhood size; 3 × perplexity neighbours are used.
    graph : sparse (n_cells, n_cells), optional
        Distance graph instead of ``x``.
    knn : (index, distance) tuple, optional
        Precomputed neighbours (self excluded, -1 / inf padded; reused across label sets).

    Returns
    -------
    ndarray, shape (n_cells,)
        Values in [1, n_categories].
    """
    if knn is None:
        knn = knn_graph(x, n_neighbors=int(3 * perplexity), graph=graph)
    idx, dist = knn
    n = idx.shape[0]
    codes, n_cat = _codes(labels, n)
    valid = idx >= 0
    d = np.where(valid, dist, np.inf)
    # Vectorised bisection on the precision beta so each cell's kernel
    # P ∝ exp(-beta d) has entropy log(perplexity) (the LISI/t-SNE calibration);
    # a cell with fewer reachable neighbours gets the largest entropy it allows.
    target = np.log(np.minimum(perplexity, np.maximum(valid.sum(axis=1), 2) - 1e-9))
    beta = np.ones(n)
    lo = np.full(n, -np.inf)
    hi = np.full(n, np.inf)
    d0 = d - np.nanmin(np.where(valid, d, np.nan), axis=1, keepdims=True)
    d0 = np.where(valid, d0, np.inf)
    for _ in range(max_iter):
        p = np.exp(-d0 * beta[:, None])
        sp_ = p.sum(axis=1)
        h = np.log(sp_) + beta * (np.where(valid, d0, 0.0) * p).sum(axis=1) / sp_
        diff = h - target
        if np.all(np.abs(diff) < tol):
            break
        up = diff > 0  # entropy too high: sharpen
        lo = np.where(up, beta, lo)
        hi = np.where(up, hi, beta)
        beta = np.where(up, np.where(np.isinf(hi), beta * 2, (beta + hi) / 2),
                        np.where(np.isinf(lo), beta / 2, (beta + lo) / 2))
    p = np.exp(-d0 * beta[:, None])
    p /= p.sum(axis=1, keepdims=True)
    lab = np.where(valid, codes[np.where(valid, idx, 0)], -1)
    simpson = np.zeros(n)
    for c in range(n_cat):
        simpson += ((lab == c) * p).sum(axis=1) ** 2
    return 1.0 / simpson


def ilisi_score(batch, x=None, graph=None, knn=None, perplexity: float = 30.0) -> float:
    """Median iLISI rescaled to [0, 1]: (median − 1) / (n_batches − 1); 1 = perfectly mixed."""
    n_b = pd.Series(np.asarray(batch)).nunique()
    v = np.median(lisi(batch, x=x, graph=graph, knn=knn, perplexity=perplexity))
    return float((v - 1) / (n_b - 1)) if n_b > 1 else float("nan")


def clisi_score(labels, x=None, graph=None, knn=None, perplexity: float = 30.0) -> float:
    """Median cLISI rescaled to [0, 1]: (n_labels − median) / (n_labels − 1); 1 = pure neighbourhoods."""
    n_l = pd.Series(np.asarray(labels)).nunique()
    v = np.median(lisi(labels, x=x, graph=graph, knn=knn, perplexity=perplexity))
    return float((n_l - v) / (n_l - 1)) if n_l > 1 else float("nan")


def kbet_acceptance(batch, x=None, graph=None, knn=None, n_neighbors: int = 25, alpha: float = 0.05,
                    n_sample: int | None = 1000, seed: int = 0, labels=None,
                    min_cells: int = 10, *, k: int | None = None) -> float:
    """kBET-like acceptance rate: share of neighbourhoods consistent with the batch mix.

    For sampled cells, the batch counts among the cell and its ``n_neighbors - 1``
    nearest neighbours are compared with ``n_neighbors`` × the expected batch
    frequencies by Pearson's chi-square test (df = n_batches − 1). Returns the
    fraction of tests not rejected at level ``alpha`` (1 = well mixed).

    Without ``labels`` the expected frequencies are the global ones. With
    ``labels`` (cell types), kBET runs within each label as in scIB (Luecken
    et al. 2022, ``scib.metrics.kBET``): neighbours are searched among the
    cells of that label, the expected frequencies are that label's batch mix,
    and the result is the mean acceptance over labels (labels with fewer than
    ``min_cells`` cells or a single batch are skipped, NaN if all are). So
    batches with different cell-type compositions that are integrated
    correctly are not scored as poorly mixed. Unlike scIB, ``n_neighbors`` is the same
    for every label (capped at the label's size), not a quarter of its mean
    batch size.

    Parameters
    ----------
    batch : array-like, shape (n_cells,)
    x : ndarray (n_cells, d), optional
        Embedding (exact Euclidean neighbours).
    graph : sparse (n_cells, n_cells), optional
        Distance graph instead of ``x`` (per label: the subgraph of its cells).
    knn : (index, distance) tuple, optional
        Precomputed neighbours (self excluded). With ``labels`` and neither
        ``x`` nor ``graph``, each cell keeps its neighbours of its own label.
    n_neighbors, alpha, n_sample, seed
        Neighbourhood size (the cell included), test level, cells tested (per
        label with ``labels``; ``None`` = all) and the seed of that sample.
    labels : array-like, shape (n_cells,), optional
    min_cells : int
        Smallest label tested.
    k : int, optional
        Older name of ``n_neighbors`` (DeprecationWarning).

    Raises
    ------
    ValueError
        Missing or mismatched labels, or no input to find neighbours in.
    TypeError
        Both ``n_neighbors`` and ``k`` given, with different values.
    """
    k = _renamed(k, n_neighbors, 25, "k", "n_neighbors", "kbet_acceptance")
    if labels is None:
        if knn is None:
            knn = knn_graph(x, n_neighbors=k - 1, graph=graph)
        codes, n_b = _codes(batch, knn[0].shape[0])
        return _kbet(codes, n_b, knn[0][:, :k - 1], k, alpha, n_sample, seed)
    n = (x if x is not None else graph if graph is not None else knn[0]).shape[0]
    codes, n_b = _codes(batch, n)
    lab, n_l = _codes(labels, n)
    scores = []
    for c in range(n_l):
        sel = np.flatnonzero(lab == c)
        if sel.size < min_cells or np.unique(codes[sel]).size < 2:
            continue
        kk = int(min(k, sel.size))
        if x is not None:
            idx = knn_graph(np.asarray(x)[sel], n_neighbors=kk - 1)[0]
        elif graph is not None:
            g = sp.csr_matrix(graph)[sel][:, sel]
            idx = knn_graph(graph=g, n_neighbors=kk - 1)[0]
        else:
            # Keep each cell's neighbours of the same label, nearest first, re-indexed.
            pos = np.full(n, -1, dtype=np.int64)
            pos[sel] = np.arange(sel.size)
            nb = knn[0][sel]
            nb = np.where(nb >= 0, pos[np.where(nb >= 0, nb, 0)], -1)
            order = np.argsort(nb < 0, axis=1, kind="stable")  # valid first, order kept
            idx = np.take_along_axis(nb, order, axis=1)[:, :kk - 1]
        sub_codes = np.unique(codes[sel], return_inverse=True)[1].astype(np.int64)
        scores.append(_kbet(sub_codes, int(sub_codes.max()) + 1, idx, kk, alpha, n_sample,
                            seed + c))
    return float(np.mean(scores)) if scores else float("nan")


def _kbet(codes, n_b, idx, k, alpha, n_sample, seed):
    """kBET acceptance of neighbour lists ``idx`` (n × (k − 1), -1 padded) against the mix of ``codes``."""
    from scipy.stats import chi2

    n = idx.shape[0]
    freq = np.bincount(codes, minlength=n_b) / n
    rng = np.random.default_rng(seed)
    cells = np.arange(n) if n_sample is None or n_sample >= n else rng.choice(n, n_sample, replace=False)
    nb = np.concatenate([cells[:, None], idx[cells]], axis=1)
    ok = nb >= 0
    counts = np.stack([((codes[np.where(ok, nb, 0)] == b) & ok).sum(axis=1) for b in range(n_b)], axis=1)
    size = ok.sum(axis=1, keepdims=True)
    expected = size * freq[None, :]
    stat = ((counts - expected) ** 2 / expected).sum(axis=1)
    p = chi2.sf(stat, df=n_b - 1)
    return float(np.mean(p >= alpha))


def silhouette_label(x, labels) -> float:
    """Mean silhouette width of ``labels`` on embedding ``x``, rescaled (s + 1) / 2 to [0, 1]."""
    from sklearn.metrics import silhouette_score

    codes, n_l = _codes(labels, np.asarray(x).shape[0])
    if n_l < 2:
        return float("nan")
    return float((silhouette_score(np.asarray(x), codes) + 1) / 2)


def _leiden_graph(x, graph, n_neighbors, seed):
    import anndata as ad
    import scanpy as sc

    n = (x if x is not None else graph).shape[0]
    a = ad.AnnData(X=np.zeros((n, 1), dtype=np.float32))
    if graph is not None:
        a.obsp["connectivities"] = sp.csr_matrix(graph)
        a.obsp["distances"] = sp.csr_matrix(graph)
        a.uns["neighbors"] = {"connectivities_key": "connectivities", "distances_key": "distances",
                              "params": {"method": "umap", "n_neighbors": n_neighbors}}
    else:
        a.obsm["X_rep"] = np.asarray(x, dtype=np.float32)
        sc.pp.neighbors(a, use_rep="X_rep", n_neighbors=n_neighbors, random_state=seed,
                        transformer="sklearn")  # exact; avoids pynndescent compile time
    return a


def cluster_scores(labels, clusters) -> dict:
    """``{"ari": …, "nmi": …}`` of a clustering against labels (scikit-learn; NMI
    with arithmetic normalisation, as scIB). Raises ValueError on missing labels."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    codes, _ = _codes(labels, len(clusters))
    cl, _ = _codes(clusters, len(clusters))
    return {"ari": float(adjusted_rand_score(codes, cl)),
            "nmi": float(normalized_mutual_info_score(codes, cl))}


RESOLUTIONS = tuple(np.round(np.arange(0.1, 2.01, 0.1), 2))


def _leiden_runs(x, graph, n_neighbors, resolutions, seed):
    """Leiden cluster codes (shape n_cells) of one graph at each resolution, as (resolution, codes)."""
    import scanpy as sc

    a = _leiden_graph(x, graph, n_neighbors, seed)
    for r in resolutions:
        sc.tl.leiden(a, resolution=float(r), random_state=seed, flavor="igraph", n_iterations=2,
                     directed=False, key_added="_leiden")
        yield float(r), a.obs["_leiden"].cat.codes.to_numpy()


def leiden_clustering(labels, x=None, graph=None, n_neighbors: int = 15, resolutions=RESOLUTIONS,
                      seed: int = 0) -> dict:
    """scIB's clustering score: Leiden over ``resolutions``, choose the one with the
    highest NMI against ``labels``, report its ARI and NMI.

    Returns ``{"ari", "nmi", "resolution", "n_clusters", "clusters"}`` (clusters:
    int codes, shape n_cells). Optimistic by construction: the labels pick the
    resolution. The graph is scanpy's kNN graph of ``x`` (exact search,
    ``n_neighbors`` including the cell, UMAP connectivities) or the
    connectivities ``graph``; igraph's Leiden (modularity, 2 iterations, ``seed``).
    """
    n = (x if x is not None else graph).shape[0]
    _codes(labels, n)
    best = None
    for r, cl in _leiden_runs(x, graph, n_neighbors, resolutions, seed):
        sc_ = cluster_scores(labels, cl)
        if best is None or sc_["nmi"] > best["nmi"]:
            best = dict(sc_, resolution=r, n_clusters=int(cl.max() + 1), clusters=cl)
    return best


def kmeans_ari(labels, x, seed: int = 0) -> dict:
    """ARI and NMI of k-means (k = number of distinct labels, 10 restarts) on ``x``,
    the seed GMVAE page's clustering score."""
    from sklearn.cluster import KMeans

    codes, k = _codes(labels, np.asarray(x).shape[0])
    cl = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(np.asarray(x, dtype=np.float64))
    return cluster_scores(codes, cl)


def occupancy(clusters, n_clusters: int | None = None) -> dict:
    """Cluster occupancy: ``n_used`` (clusters with ≥ 1 cell), ``n_small`` (fewer
    than 1 % of cells) and ``max_fraction`` (share of the largest cluster)."""
    cl = np.asarray(clusters)
    counts = np.bincount(cl, minlength=n_clusters or 0)
    frac = counts / cl.size
    return {"n_used": int((counts > 0).sum()), "n_small": int(((counts > 0) & (frac < 0.01)).sum()),
            "max_fraction": float(frac.max())}


def silhouette_batch(x, batch, labels) -> float:
    """scIB's batch ASW (Luecken et al. 2022; ``scib_metrics.silhouette_batch``):
    per label, 1 − |silhouette of batch| averaged over cells, then over labels;
    1 = batches perfectly mixed within every label. As in scIB, a label is
    skipped when its cells come from one batch, or each from a different batch
    (no silhouette is defined there); NaN when every label is skipped."""
    from sklearn.metrics import silhouette_samples

    x = np.asarray(x)
    b, _ = _codes(batch, x.shape[0])
    lab, n_l = _codes(labels, x.shape[0])
    scores = []
    for k in range(n_l):
        sel = lab == k
        n_batches = len(np.unique(b[sel]))
        if n_batches == 1 or n_batches == sel.sum():
            continue
        scores.append(np.mean(1 - np.abs(silhouette_samples(x[sel], b[sel]))))
    return float(np.mean(scores)) if scores else float("nan")


def _masked_sum(ll, mask, per):
    if mask is not None:
        m = np.asarray(mask.toarray() if sp.issparse(mask) else mask, dtype=bool)
        if m.shape != ll.shape:
            raise ValueError(f"mask has shape {m.shape} but the counts have shape {ll.shape}")
        ll = np.where(m, ll, 0.0)
        n = m.sum(axis=1) if per == "cell" else m.sum()
    else:
        n = ll.shape[1] if per == "cell" else ll.size
    if per == "entry":
        return float(ll.sum() / n)
    if per == "cell":
        return ll.sum(axis=1)
    if per == "total":
        return float(ll.sum())
    raise ValueError(f"per must be 'entry', 'cell' or 'total', got {per!r}")


def _dense_counts(x):
    return np.asarray(x.toarray() if sp.issparse(x) else x, dtype=np.float64)


def _counts_and_means(x, mean):
    """Dense float64 counts and predicted means of the same shape, checked (the held-out
    scorers' shared input check). Raises ValueError on shape mismatch or negative/non-finite means."""
    x = _dense_counts(x)
    mu = np.asarray(mean, dtype=np.float64)
    if mu.shape != x.shape:
        raise ValueError(f"mean has shape {mu.shape} but x has shape {x.shape}")
    if np.any(mu < 0) or not np.all(np.isfinite(mu)):
        raise ValueError("predicted means must be finite and non-negative")
    return x, mu


def poisson_loglik(x, mean, mask=None, per: str = "entry", floor: float = 0.0):
    """Poisson log-likelihood of counts ``x`` under predicted means ``mean``
    (both n_cells × n_genes), in nats.

    ``mask`` (boolean, same shape) selects the entries scored (e.g. the held-out
    ones). ``per``: "entry" (mean over scored entries), "cell" (sum over each
    cell's scored genes, shape n_cells) or "total". ``floor`` > 0 replaces means
    below it by it: a mean of exactly 0 gives −inf at any positive count, which
    is the model's honest score unless a floor is stated.

    Evaluated by :func:`scnotes.likelihoods.poisson_log_pmf` in float64 (x = μ = 0 scores 0).

    Raises ValueError on shape mismatch or negative means.
    """
    import torch

    from .likelihoods import poisson_log_pmf

    x, mu = _counts_and_means(x, mean)
    if floor > 0:
        mu = np.maximum(mu, floor)
    ll = poisson_log_pmf(torch.as_tensor(x), torch.as_tensor(mu)).numpy()
    return _masked_sum(ll, mask, per)


def nb_loglik(x, mean, theta, mask=None, per: str = "entry"):
    """Negative binomial log-likelihood (mean μ, inverse dispersion θ, variance
    μ + μ²/θ) of counts ``x``, in nats; ``theta`` broadcasts against the genes.
    Evaluated by :func:`scnotes.likelihoods.nb_log_pmf` in float64. ``mask`` and
    ``per`` as :func:`poisson_loglik`. Raises ValueError on shape mismatch or negative means."""
    import torch

    from .likelihoods import nb_log_pmf

    x, mu = _counts_and_means(x, mean)
    th = torch.as_tensor(np.broadcast_to(np.asarray(theta, dtype=np.float64), (x.shape[1],)).copy())
    ll = nb_log_pmf(torch.as_tensor(x), torch.as_tensor(mu), th).numpy()
    return _masked_sum(ll, mask, per)


def leiden_ari(labels, x=None, graph=None, n_neighbors: int = 15,
               resolutions=(0.1, 0.25, 0.5, 1.0), seed: int = 0) -> float:
    """Deprecated: the best adjusted Rand index between Leiden clusters and ``labels``
    over ``resolutions``, a second, more optimistic protocol than scIB's. Use
    :func:`leiden_clustering` (resolution chosen by NMI) or :func:`score_embedding`.
    The graph is as in :func:`leiden_clustering`."""
    import warnings

    from sklearn.metrics import adjusted_rand_score

    warnings.warn("metrics.leiden_ari is deprecated (best ARI over resolutions); use "
                  "metrics.leiden_clustering or metrics.score_embedding (scIB: resolution chosen by NMI)",
                  DeprecationWarning, stacklevel=2)
    codes, _ = _codes(labels, (x if x is not None else graph).shape[0])
    return float(max(adjusted_rand_score(codes, cl)
                     for _, cl in _leiden_runs(x, graph, n_neighbors, resolutions, seed)))


def _label_scores(x, connectivities, labels, knn, perplexity, n_neighbors, resolutions, skip,
                  seed) -> dict:
    """The label-conservation part of :func:`score_embedding`."""
    if labels is None:
        return dict.fromkeys(_LABEL_KEYS, np.nan)
    ld = leiden_clustering(labels, x=x, graph=connectivities, n_neighbors=n_neighbors,
                           resolutions=resolutions, seed=seed)
    km = (kmeans_ari(labels, x, seed=seed) if "kmeans" not in skip and x is not None
          else {"ari": np.nan, "nmi": np.nan})
    return {"leiden_ari": ld["ari"], "leiden_nmi": ld["nmi"], "leiden_resolution": ld["resolution"],
            "leiden_n_clusters": float(ld["n_clusters"]), "kmeans_ari": km["ari"], "kmeans_nmi": km["nmi"],
            "asw_label": silhouette_label(x, labels) if "asw_label" not in skip and x is not None else np.nan,
            "clisi": clisi_score(labels, knn=knn, perplexity=perplexity)}


def _batch_scores(x, graph, batch, labels, knn, lisi_knn, perplexity, kbet_n_neighbors, skip, seed) -> dict:
    """The batch-mixing part of :func:`score_embedding`."""
    if batch is None:
        return dict.fromkeys(_BATCH_KEYS, np.nan)
    # kBET within each label when there are labels (scIB's way), so batches of
    # different cell-type composition are not scored as poorly mixed.
    kbet = kbet_acceptance(batch, x=x, graph=graph, knn=knn, n_neighbors=kbet_n_neighbors, seed=seed,
                           labels=labels)
    return {"ilisi": ilisi_score(batch, knn=lisi_knn, perplexity=perplexity), "kbet": kbet,
            "asw_batch": (silhouette_batch(x, batch, labels)
                          if "asw_batch" not in skip and x is not None and labels is not None else np.nan)}


def _cluster_scores(clusters, labels, n_clusters) -> dict:
    """The fixed-clustering part of :func:`score_embedding` (ARI/NMI and occupancy)."""
    if clusters is None:
        return dict.fromkeys(_CLUSTER_KEYS, np.nan)
    if isinstance(clusters, pd.Categorical) or isinstance(getattr(clusters, "dtype", None), pd.CategoricalDtype):
        cat = pd.Categorical(clusters)  # unused categories kept: they are empty clusters
        codes, n_clusters = cat.codes, n_clusters or len(cat.categories)
    else:
        codes = pd.Categorical(np.asarray(clusters)).codes
    out = {k: float(v) for k, v in occupancy(codes, n_clusters).items()}
    sc_ = cluster_scores(labels, codes) if labels is not None else {"ari": np.nan, "nmi": np.nan}
    return dict(cluster_ari=sc_["ari"], cluster_nmi=sc_["nmi"], **out)


_LABEL_KEYS = ("leiden_ari", "leiden_nmi", "leiden_resolution", "leiden_n_clusters", "kmeans_ari", "kmeans_nmi",
               "asw_label", "clisi")
_BATCH_KEYS = ("ilisi", "kbet", "asw_batch")
_CLUSTER_KEYS = ("cluster_ari", "cluster_nmi", "n_used", "n_small", "max_fraction")
_SKIPPABLE = {"kmeans", "asw_label", "asw_batch"}


def score_embedding(x=None, labels=None, batch=None, *, graph=None, connectivities=None, clusters=None,
                    n_clusters: int | None = None, perplexity: float = 30.0, kbet_n_neighbors: int = 25,
                    n_neighbors: int = 15, resolutions=RESOLUTIONS, skip=(), seed: int = 0,
                    kbet_k: int | None = None) -> dict:
    """Every score of one embedding (or kNN graph), one protocol: the library's one embedding scorer.

    Parameters
    ----------
    x : ndarray, shape (n_cells, d), optional
        Embedding (Euclidean distances).
    labels, batch : array-like, shape (n_cells,), optional
        Cell types and batches; the scores that need them are NaN without them.
    graph, connectivities : sparse (n_cells, n_cells), optional
        Instead of ``x``, for graph-only methods (BBKNN): distances (LISI, kBET)
        and connectivities (Leiden; needed with ``labels``).
    clusters : array-like, shape (n_cells,), optional
        A clustering fixed in advance (e.g. a GMVAE's argmax); with a categorical,
        unused categories count as empty clusters; ``n_clusters`` sets the total otherwise.
    perplexity : float
        LISI perplexity; LISI uses the 3 × ``perplexity`` nearest other cells.
    kbet_n_neighbors : int
        kBET neighbourhood size (the cell included); ``kbet_k`` is its older name
        (DeprecationWarning).
    n_neighbors, resolutions : Leiden's kNN graph size (cell included) and resolution grid.
    skip : iterable of str
        Scores not computed (NaN): any of ``"kmeans"`` (10 restarts), ``"asw_label"``,
        ``"asw_batch"`` (silhouettes: all pairwise distances). k-means and both
        silhouettes need an embedding and are NaN for a graph.
    seed : int
        Seed of Leiden, k-means and kBET's sample of cells (per label: ``seed`` + label code).

    Returns
    -------
    dict of floats (NaN where a score does not apply), in [0, 1] and higher = better except the
    resolution and the counts:

    * label conservation (with ``labels``): ``leiden_nmi``, ``leiden_ari``,
      ``leiden_resolution``, ``leiden_n_clusters``: scIB's protocol (Luecken et al. 2022,
      Nat Methods 19:41), Leiden (igraph, modularity) on scanpy's UMAP kNN graph at
      each resolution of ``resolutions``, the one with the highest NMI (arithmetic
      normalisation) against the labels kept and its ARI reported. **Optimistic**:
      the labels choose the resolution. ``kmeans_ari``, ``kmeans_nmi``: k-means with
      k = number of labels (10 restarts). ``asw_label``: mean silhouette width by
      label, (s + 1) / 2. ``clisi``: median cLISI rescaled, (L − median) / (L − 1).
    * batch mixing (with ``batch``): ``ilisi``: median iLISI rescaled, (median − 1) / (B − 1)
      (Korsunsky et al. 2019); ``kbet``: kBET acceptance (Büttner et al. 2019) at level
      0.05 — within each label, averaged over labels, when there are labels (scIB's way),
      else against the global batch mix; ``asw_batch``: scIB's batch ASW (needs labels).
    * fixed clusters (with ``clusters``): ``cluster_ari``, ``cluster_nmi`` and the occupancy
      ``n_used``, ``n_small`` (< 1 % of cells), ``max_fraction`` (:func:`occupancy`).

    Against scib-metrics 0.5.10 (checked in ``tests/test_metrics_scib.py``): the label and
    batch ASW are scIB's definitions (same values). LISI is computed on the 3 × perplexity
    nearest *other* cells (harmonypy 2 / R LISI); scib-metrics' ``ilisi_knn``/``clisi_knn``
    take neighbour lists that include the cell itself and drop it, so on 90 columns they
    see 89 others: the same values given the cell plus our 90. kBET's statistic is the same
    (Pearson χ² of the cell and its k − 1 neighbours against k × the expected mix, df = B − 1),
    but per label scib-metrics searches diffusion-map neighbours of the connectivities with
    k₀ = min(70, max(10, ¼ mean batch size)) on every cell, where we use exact Euclidean
    neighbours within the label, one ``kbet_n_neighbors`` for all labels and at most 1,000 sampled cells
    per label: the two agree on the verdict (mixed or not), not to the digit. Leiden: the same
    graph and igraph call, so at the same resolution and seed the same clusters; scib-metrics'
    grid is 0.2, 0.4, …, 2.0 and ours (default) 0.1, 0.2, …, 2.0, a superset, so our NMI is
    at least theirs. k-means: scib-metrics' own (JAX) k-means against scikit-learn's; equal on
    well-separated labels. We keep our own NumPy path rather than calling scib-metrics: its
    LISI, kBET and silhouettes run through JAX (compiled on first call, float32) and its
    per-label kBET through UMAP and diffusion maps, which a chapter pays on every call.

    Raises
    ------
    ValueError
        Neither ``x`` nor ``graph``, or both; ``x`` not 2-d; ``graph`` with labels but no ``connectivities``;
        labels, batches or clusters of the wrong length or with missing values; NaN in ``x``.
    TypeError
        Both ``kbet_n_neighbors`` and ``kbet_k`` given, with different values.
    """
    kbet_n_neighbors = _renamed(kbet_k, kbet_n_neighbors, 25, "kbet_k", "kbet_n_neighbors", "score_embedding")
    if (x is None) == (graph is None):
        raise ValueError("give an embedding x or a graph (not both)")
    if graph is not None and labels is not None and connectivities is None:
        raise ValueError("graph input with labels needs connectivities (the graph Leiden clusters)")
    skip = set(skip)
    if not skip <= _SKIPPABLE:
        raise ValueError(f"skip: unknown scores {sorted(skip - _SKIPPABLE)}; choose from {sorted(_SKIPPABLE)}")
    if x is not None:
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2:
            raise ValueError(f"x must be an embedding of shape (n_cells, d), got shape {x.shape}")
    n = (x if x is not None else graph).shape[0]
    for name, v in (("labels", labels), ("batch", batch), ("clusters", clusters)):
        if v is not None:
            _codes(v, n)
    knn = knn_graph(x, n_neighbors=max(int(3 * perplexity), kbet_n_neighbors - 1), graph=graph)
    lisi_knn = (knn[0][:, :int(3 * perplexity)], knn[1][:, :int(3 * perplexity)])
    return {**_label_scores(x, connectivities, labels, lisi_knn, perplexity, n_neighbors,
                            resolutions, skip, seed),
            **_batch_scores(x, graph, batch, labels, knn, lisi_knn, perplexity, kbet_n_neighbors, skip, seed),
            **_cluster_scores(clusters, labels, n_clusters)}


def score_integration(batch, labels=None, x=None, graph=None, connectivities=None,
                      perplexity: float = 30.0, seed: int = 0) -> dict:
    """Integration scores of one result: :func:`score_embedding` under the older key names.

    Returns ``ilisi``, ``kbet`` (batch mixing) and ``clisi``, ``silhouette`` (label ASW),
    ``ari`` (scIB's NMI-chosen Leiden ARI) — label scores NaN without ``labels``. Since
    :func:`score_embedding` became the one scorer, ``kbet`` is computed within each label
    when there are labels and ``ari`` is no longer the best ARI over four resolutions.
    Raises ValueError as :func:`score_embedding`.
    """
    s = score_embedding(x, labels, batch, graph=graph, connectivities=connectivities,
                        perplexity=perplexity, skip=("kmeans", "asw_batch"), seed=seed)
    return {"ilisi": s["ilisi"], "kbet": s["kbet"], "clisi": s["clisi"], "silhouette": s["asw_label"],
            "ari": s["leiden_ari"]}


def zinb_loglik(x, mean, theta, logodds, mask=None, per: str = "entry"):
    """Zero-inflated NB log-likelihood of counts ``x``, in nats: with probability
    π = sigmoid(``logodds``) a structural zero, else NB(mean μ, inverse dispersion θ).
    ``mean`` is the NB mean μ (a ZINB model's ``nb_mean``, not its expected count
    (1 − π) μ); ``theta`` and ``logodds`` broadcast against the genes. Evaluated by
    :func:`scnotes.likelihoods.zinb_log_pmf` in float64; ``mask`` and ``per`` as
    :func:`poisson_loglik`. Raises ValueError on shape mismatch or negative means."""
    import torch

    from .likelihoods import zinb_log_pmf

    x, mu = _counts_and_means(x, mean)
    p = x.shape[1]
    th = torch.as_tensor(np.broadcast_to(np.asarray(theta, dtype=np.float64), (p,)).copy())
    eta = torch.as_tensor(np.broadcast_to(np.asarray(logodds, dtype=np.float64), (p,)).copy())
    ll = zinb_log_pmf(torch.as_tensor(x), torch.as_tensor(mu), th, eta).numpy()
    return _masked_sum(ll, mask, per)
