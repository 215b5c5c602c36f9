"""Checks of an MNN correction and of integration methods, as the chapter ``mnn_topics`` runs them.

- :func:`pair_summary`: are the MNN pairs right? (pairs, share of the corrected
  batches' cells in a pair, share of pairs whose cells share a label).
- :func:`score_methods`: every stored embedding or graph scored the same way
  with :func:`scnotes.metrics.score_embedding` (iLISI, kBET, cLISI, silhouette,
  scIB Leiden clustering), one tidy row per method.
- :func:`compare_backends`: exact against approximate (pynndescent) MNN search
  on the same cells: wall time and recall of the exact pairs.
"""
from __future__ import annotations

import time

import numpy as np
import pandas as pd

from .._checks import check_key, check_obs_columns, check_obsm_key
from ._neighbors import check_matrix, find_mutual_nn, pair_recall, resolve_n_neighbors

__all__ = ["pair_summary", "score_methods", "compare_backends"]


def pair_summary(result, batch, labels=None) -> dict:
    """Diagnostics of the MNN pairs of one correction.

    Parameters
    ----------
    result : scnotes.mnn.MNNResult
    batch : array-like, shape (n_cells,)
        Batch of each cell (as given to the correction).
    labels : array-like, shape (n_cells,), optional
        Cell labels (not used by the correction).

    Returns
    -------
    dict
        ``pairs`` (number of MNN pairs over all merge steps), ``corrected cells
        in a pair`` (share of the cells of the corrected, right-hand batches that
        are in at least one pair: assumption (i), a shared population) and
        ``pairs with same label`` (share of pairs whose two cells carry the
        same label; NaN without labels: wrong matches are assumptions (ii)/(iii)
        failing).
    """
    b = np.asarray(batch).astype(str)
    p = result.pairs
    right = np.concatenate([np.flatnonzero(np.isin(b, [str(x) for x in st.right])) for st in result.steps])
    out = {"pairs": int(len(p)),
           "corrected cells in a pair": float(np.isin(right, p["right"].to_numpy()).mean())}
    if labels is None:
        out["pairs with same label"] = np.nan
    else:
        lab = np.asarray(labels)
        out["pairs with same label"] = float(np.mean(lab[p["left"].to_numpy()] == lab[p["right"].to_numpy()]))
    return out


def score_methods(adata, batch_key: str, label_key: str | None = None, embeddings=None, graphs=None,
                  perplexity: float = 30.0, seed: int = 0) -> pd.DataFrame:
    """Score integration results stored in ``adata`` (tidy: one row per method).

    Parameters
    ----------
    adata : anndata.AnnData
    batch_key, label_key : str
        ``obs`` columns; without ``label_key`` the label scores are NaN.
    embeddings : dict, method name → ``obsm`` key (an integrated embedding)
    graphs : dict, method name → (``obsp`` distances key, ``obsp`` connectivities
        key), for graph-only methods such as BBKNN
    perplexity, seed : LISI perplexity (3 × perplexity neighbours); seed of
        kBET's sample and of Leiden

    Returns
    -------
    pandas.DataFrame
        Columns ``method``, ``ilisi``, ``kbet`` (batch mixing), ``clisi``,
        ``silhouette`` (NaN for graphs), ``ari``, ``nmi``, ``resolution``
        (label conservation), ``batch mixing`` (mean of iLISI and kBET) and
        ``label conservation`` (mean of cLISI and ARI, both defined for graphs
        too); all scores in [0, 1], higher is better.

    Every value is :func:`scnotes.metrics.score_embedding`'s (the library's one
    embedding scorer; its docstring states the protocol). The clustering scores
    follow scIB: Leiden over a grid of resolutions, the resolution with the highest
    NMI against the labels kept, and the ARI and NMI of that clustering. They are
    optimistic: the labels choose the resolution. For a graph, LISI and kBET use
    the nearest cells by shortest path through it (:func:`scnotes.metrics.knn_graph`).
    With ``label_key``, kBET is computed within each label and averaged (scIB's way).

    Raises
    ------
    KeyError : a key not in ``obs`` / ``obsm`` / ``obsp``.
    """
    from .. import metrics

    check_obs_columns(adata, {batch_key: "batch_key", label_key: "label_key"})
    b = adata.obs[batch_key].astype(str).to_numpy()
    lab = None if label_key is None else adata.obs[label_key].astype(str).to_numpy()
    items = [(m, {"x": check_obsm_key(adata, k, param="embeddings")}) for m, k in (embeddings or {}).items()]
    items += [(m, {"graph": check_key(adata, "obsp", d, "graphs"),
                   "connectivities": check_key(adata, "obsp", c, "graphs")}) for m, (d, c) in (graphs or {}).items()]
    rows = []
    for method, rep in items:
        s = metrics.score_embedding(labels=lab, batch=b, perplexity=perplexity, skip=("kmeans", "asw_batch"),
                                    seed=seed, **rep)
        rows.append({"method": method, "ilisi": s["ilisi"], "kbet": s["kbet"], "clisi": s["clisi"],
                     "silhouette": s["asw_label"], "ari": s["leiden_ari"], "nmi": s["leiden_nmi"],
                     "resolution": s["leiden_resolution"]})
    out = pd.DataFrame(rows)
    out["batch mixing"] = out[["ilisi", "kbet"]].mean(axis=1)
    out["label conservation"] = out[["clisi", "ari"]].mean(axis=1, skipna=False)
    return out


def compare_backends(x, batch, n_neighbors: int | None = None, sizes=None, cos_norm: bool = True,
                     seed: int = 0, n_jobs: int = 1) -> pd.DataFrame:
    """Exact against approximate MNN search (:func:`scnotes.mnn.find_mutual_nn`) on the same cells.

    The two largest batches of ``x`` are paired; for each size a random subset of
    their cells (seeded) is searched with both backends.

    Parameters
    ----------
    x : array or CSR matrix, shape (n_cells, n_features)
        Log-expression values (cosine-normalised here if ``cos_norm``, as
        :func:`scnotes.mnn.mnn_correct` does) or an embedding.
    batch : array-like, shape (n_cells,)
    n_neighbors : int
        Neighbours for the pairs (default 20).
    sizes : list of int, optional
        Numbers of cells (default: all cells of the two batches).
    seed, n_jobs : seed of the subsets and of pynndescent; threads.

    Returns
    -------
    pandas.DataFrame
        One row per size: ``cells``, ``exact pairs``, ``exact s``,
        ``approximate s``, ``speed-up`` (exact / approximate time) and
        ``recall`` (share of the exact pairs the approximate search finds). A
        first approximate search on 200 cells runs before the timings, so that
        numba's one-off compilation is not counted; its time is in
        ``df.attrs["warm-up s"]``.
    """
    from ._correct import cosine_normalize

    k = resolve_n_neighbors(n_neighbors)
    x = check_matrix(x, "x")
    if cos_norm:
        x, _ = cosine_normalize(x)
    b = np.asarray(batch).astype(str)
    cats, counts = np.unique(b, return_counts=True)
    if len(cats) < 2:
        raise ValueError(f"compare_backends needs two batches; found {list(cats)}")
    two = cats[np.argsort(-counts, kind="stable")[:2]]
    cells = np.flatnonzero(np.isin(b, two))
    rng = np.random.default_rng(seed)

    def search(sel, backend):
        left, right = x[sel[b[sel] == two[0]]], x[sel[b[sel] == two[1]]]
        t = time.perf_counter()
        pairs = find_mutual_nn(left, right, k, backend=backend, seed=seed, n_jobs=n_jobs)
        return pairs, time.perf_counter() - t

    per = min(100, int(counts.min()))
    warm = np.concatenate([np.flatnonzero(b == c)[:per] for c in two])
    _, warm_s = search(warm, "pynndescent") if per >= k else (None, 0.0)
    rows = []
    for n in sorted({int(min(s, len(cells))) for s in (sizes or [len(cells)])}):
        sel = cells if n == len(cells) else np.sort(rng.choice(cells, n, replace=False))
        exact, te = search(sel, "exact")
        approx, ta = search(sel, "pynndescent")
        rows.append({"cells": n, "exact pairs": int(len(exact[0])), "exact s": te, "approximate s": ta,
                     "speed-up": te / ta if ta > 0 else np.nan, "recall": pair_recall(approx, exact)})
    out = pd.DataFrame(rows)
    out.attrs["warm-up s"] = warm_s
    return out
