"""MNN correction in a low-dimensional embedding, in the spirit of batchelor's ``fastMNN``.

Works on any cells × d representation: principal components, topic
proportions from a Poisson NMF / topic model, or a VAE latent mean. Per merge
step (Haghverdi et al. 2018; batchelor ``fastMNN``/``reducedMNN``):

1. MNN pairs between the reference (left) and the batch to correct (right).
2. Average pair vectors per right-hand MNN cell; their mean is the overall
   batch vector.
3. :func:`center_along_batch_vector`: within each side, move every cell to
   the side's mean position along the batch vector. This removes variation
   along the batch direction inside each batch, so the correction does not
   need to carry it (batchelor's orthogonalisation step).
4. Recompute the averaged pair vectors on the centred data and give every
   right-hand cell the tricube-weighted mean of the vectors of its ``k``
   nearest MNN cells (:func:`tricube_weighted_correction`), bandwidth
   ``ndist`` times the distance to the median (``ceil(k/2)``-th) neighbour.
"""
from __future__ import annotations

import numpy as np

from ._correct import MNNResult, average_pair_vectors, cosine_normalize
from ._merge import check_batches, run_merges
from ._neighbors import BACKENDS, check_matrix, find_mutual_nn, knn_query, resolve_n_neighbors

__all__ = ["center_along_batch_vector", "tricube_weights", "tricube_weighted_correction",
           "fastmnn_correct"]


def center_along_batch_vector(x, batch_vec):
    """Shift every row of ``x`` to the mean of ``x`` along ``batch_vec``.

    Parameters
    ----------
    x : ndarray, shape (n_cells, d)
    batch_vec : ndarray, shape (d,)

    Returns
    -------
    ndarray, shape (n_cells, d)
        ``x + (mean(x @ u) − x @ u) u^T`` with ``u`` the unit batch vector;
        unchanged if the batch vector is zero.
    """
    batch_vec = np.asarray(batch_vec, dtype=np.float64)
    norm = np.linalg.norm(batch_vec)
    if norm == 0:
        return np.array(x, dtype=np.float64)
    u = batch_vec / norm
    loc = x @ u
    return x + np.outer(loc.mean() - loc, u)


def tricube_weights(distance, ndist: float = 3.0):
    """Row-normalised tricube weights of a (n_cells, k) distance matrix, nearest first.

    ``w = (1 − (d / h)³)³`` for ``d < h`` else 0, with ``h = ndist × d[:, ceil(k/2) − 1]``
    (batchelor ``.compute_tricube_average``). A cell whose bandwidth is zero
    (duplicate points) gets equal weight on its zero-distance neighbours.
    """
    distance = np.asarray(distance, dtype=np.float64)
    k = distance.shape[1]
    h = ndist * distance[:, (k + 1) // 2 - 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(h[:, None] > 0, distance / h[:, None], (distance > 0).astype(float))
    w = (1.0 - np.minimum(rel, 1.0) ** 3) ** 3
    return w / w.sum(axis=1, keepdims=True)


def tricube_weighted_correction(data, averaged, mnn_cells, n_neighbors: int | None = None,
                                ndist: float = 3.0, backend: str = "exact", seed: int = 0,
                                k: int | None = None):
    """Add to each cell the tricube-weighted mean correction of its nearest MNN cells.

    Parameters
    ----------
    data : ndarray, shape (n_cells, d)
        Batch to correct.
    averaged : ndarray, shape (n_mnn, d)
        Averaged pair vectors (:func:`scnotes.mnn.average_pair_vectors`).
    mnn_cells : int array, shape (n_mnn,)
        Rows of ``data`` that are MNN cells.
    n_neighbors : int
        MNN cells averaged per cell (default 20; ``k``: older name).

    Returns
    -------
    ndarray, shape (n_cells, d)
        Corrected coordinates.
    """
    k = resolve_n_neighbors(n_neighbors, k)
    uniq = data[mnn_cells]
    kk = min(k, len(mnn_cells))
    idx, dist = knn_query(uniq, data, kk, backend=backend, seed=seed)
    w = tricube_weights(dist, ndist)
    return data + np.einsum("ik,ikd->id", w, averaged[idx])


def fastmnn_correct(x, batch, n_neighbors: int | None = None, ndist: float = 3.0,
                    cos_norm: bool = False, merge_order=None, auto_merge: bool = False,
                    backend: str = "exact", seed: int = 0, n_jobs: int = 1,
                    k: int | None = None) -> MNNResult:
    """fastMNN-style MNN correction of an embedding (PCs, topic proportions, VAE latent).

    Parameters
    ----------
    x : ndarray, shape (n_cells, d)
        Low-dimensional representation.
    batch : array-like, shape (n_cells,)
    n_neighbors : int
        Neighbours for MNN pairs and for the tricube smoothing (default 20;
        ``k``: older name, accepted as an alias).
    ndist : float
        Tricube bandwidth in units of the median-neighbour distance (default 3).
    cos_norm : bool
        Cosine-normalise the rows first (off by default: PCs already come
        from cosine-normalised expression in fastMNN; topic proportions lie on
        a simplex and a VAE latent has its own scale).
    merge_order, auto_merge, backend, seed, n_jobs
        As :func:`scnotes.mnn.mnn_correct`.

    Returns
    -------
    MNNResult
        ``corrected`` is (n_cells × d).

    Raises
    ------
    ValueError
        As :func:`scnotes.mnn.mnn_correct`; also for sparse input.
    """
    k = resolve_n_neighbors(n_neighbors, k)
    x = check_matrix(x, "x")
    if hasattr(x, "toarray"):
        raise ValueError("fastmnn_correct expects a dense low-dimensional embedding, got a sparse matrix")
    if backend not in BACKENDS:
        raise ValueError(f"unknown neighbour backend {backend!r}; choose one of {BACKENDS}")
    categories, codes = check_batches(batch, x.shape[0], k)
    if cos_norm:
        x, _ = cosine_normalize(x)
    cells = [np.flatnonzero(codes == b) for b in range(len(categories))]
    blocks = [(x[c].copy(),) for c in cells]

    def step(left, right):
        ref, cur = left[0], right[0]
        first, second = find_mutual_nn(ref, cur, k, k, backend=backend, seed=seed, n_jobs=n_jobs)
        averaged, _ = average_pair_vectors(ref, cur, first, second)
        overall = averaged.mean(axis=0)
        ref = center_along_batch_vector(ref, overall)
        cur = center_along_batch_vector(cur, overall)
        averaged, mnn_cells = average_pair_vectors(ref, cur, first, second)
        cur = tricube_weighted_correction(cur, averaged, mnn_cells, n_neighbors=k, ndist=ndist,
                                          backend=backend, seed=seed)
        return (ref,), (cur,), (first, second)

    blocks, steps = run_merges(blocks, cells, categories, step, merge_order=merge_order,
                               auto_merge=auto_merge, k=k, backend=backend, seed=seed, n_jobs=n_jobs)
    out = np.empty(x.shape, dtype=np.float64)
    for c, blk in zip(cells, blocks):
        out[c] = blk[0]
    return MNNResult(out, steps, categories)
