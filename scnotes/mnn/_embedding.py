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


def center_along_batch_vector(x, batch_vec, out=None, chunk_size: int = 65536):
    """Shift every row of ``x`` to the mean of ``x`` along ``batch_vec``.

    Parameters
    ----------
    x : ndarray, shape (n_cells, d)
    batch_vec : ndarray, shape (d,)
    out : ndarray, optional
        Where to write the result (may be ``x`` itself: in place); by default
        a new array of ``x``'s float dtype (float32 stays float32).
    chunk_size : int
        Rows per block, so that no second n_cells × d temporary is made.

    Returns
    -------
    ndarray, shape (n_cells, d)
        ``x + (mean(x @ u) − x @ u) u^T`` with ``u`` the unit batch vector;
        unchanged if the batch vector is zero.
    """
    x = np.asarray(x)
    dt = x.dtype if x.dtype in (np.float32, np.float64) else np.float64
    if out is None:
        out = np.array(x, dtype=dt)
    elif out is not x:
        out[...] = x
    batch_vec = np.asarray(batch_vec, dtype=np.float64)
    norm = np.linalg.norm(batch_vec)
    if norm == 0:
        return out
    u = (batch_vec / norm).astype(dt)
    loc = out @ u
    shift = (loc.mean(dtype=np.float64) - loc).astype(dt)
    for s in range(0, out.shape[0], chunk_size):
        out[s:s + chunk_size] += shift[s:s + chunk_size, None] * u[None, :]
    return out


def tricube_weights(distance, ndist: float = 3.0):
    """Row-normalised tricube weights of a (n_cells, k) distance matrix, nearest first.

    ``w = (1 − (d / h)³)³`` for ``d < h`` else 0, with ``h = ndist × d[:, ceil(k/2) − 1]``
    (batchelor ``.compute_tricube_average``). A cell whose bandwidth is zero
    (duplicate points) gets equal weight on its zero-distance neighbours.
    Computed in the dtype of ``distance`` (float32 stays float32).
    """
    distance = np.asarray(distance)
    if distance.dtype not in (np.float32, np.float64):
        distance = distance.astype(np.float64)
    k = distance.shape[1]
    h = ndist * distance[:, (k + 1) // 2 - 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(h[:, None] > 0, distance / h[:, None],
                       (distance > 0).astype(distance.dtype))
    w = (1.0 - np.minimum(rel, 1.0) ** 3) ** 3
    return (w / w.sum(axis=1, keepdims=True)).astype(distance.dtype, copy=False)


def tricube_weighted_correction(data, averaged, mnn_cells, n_neighbors: int | None = None,
                                ndist: float = 3.0, backend: str = "exact", seed: int = 0,
                                k: int | None = None, n_jobs: int = 1,
                                n_candidates: int | None = None, out=None):
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
    backend, seed, n_jobs, n_candidates
        Neighbour search (:func:`scnotes.mnn.knn_query`).
    out : ndarray, optional
        Where to write the result (may be ``data``: in place).

    Returns
    -------
    ndarray, shape (n_cells, d)
        Corrected coordinates, in ``data``'s float dtype. The weights are a
        sparse n_cells × n_mnn matrix (``n_neighbors`` entries per row), so
        memory is O(n_cells × (d + n_neighbors)).
    """
    import scipy.sparse as sp

    k = resolve_n_neighbors(n_neighbors, k)
    data = np.asarray(data)
    dt = data.dtype if data.dtype in (np.float32, np.float64) else np.float64
    uniq = data[mnn_cells]
    kk = min(k, len(mnn_cells))
    idx, dist = knn_query(uniq, data, kk, backend=backend, seed=seed, n_jobs=n_jobs,
                          n_candidates=n_candidates)
    del uniq
    w = tricube_weights(dist.astype(dt, copy=False), ndist)
    n = data.shape[0]
    wm = sp.csr_matrix((w.ravel(), idx.ravel(), np.arange(0, n * kk + 1, kk)),
                       shape=(n, len(mnn_cells)))
    del w, idx, dist
    if out is None:
        out = np.array(data, dtype=dt)
    elif out is not data:
        out[...] = data
    out += wm @ np.asarray(averaged, dtype=dt)
    return out


def fastmnn_correct(x, batch, n_neighbors: int | None = None, ndist: float = 3.0,
                    cos_norm: bool = False, merge_order=None, auto_merge: bool = False,
                    backend: str = "exact", seed: int = 0, n_jobs: int = 1,
                    k: int | None = None, n_candidates: int | None = None) -> MNNResult:
    """fastMNN-style MNN correction of an embedding (PCs, topic proportions, VAE latent).

    Parameters
    ----------
    x : ndarray, shape (n_cells, d)
        Low-dimensional representation. float32 input is corrected in float32
        (and returned as float32); anything else in float64.
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
    n_candidates : int, optional
        Candidates per query of the approximate search (with ``backend="faiss"``
        the reference rows scanned: by default the larger of 2,048 and 1/12 of
        the reference; ``2 × n_neighbors`` with ``"pynndescent"``; see
        :func:`scnotes.mnn.knn_query`). ``backend="faiss"`` is the one for
        10^5-10^6 cells: pynndescent's graph search finds 55-72 % of the exact
        MNN pairs across a strong batch shift. Lower it to trade recall for
        time (the search cost is linear in it).

    Returns
    -------
    MNNResult
        ``corrected`` is (n_cells × d), float32 for float32 input.

    Memory and time are linear in cells: per merge step, one NN-descent index
    on each side for the MNN pairs and one on the MNN cells for the smoothing,
    sparse pair and weight matrices, and the corrected copy of ``x``; nothing
    is n_cells × n_cells. With ``auto_merge`` every pair of groups is searched
    once (:func:`scnotes.mnn._merge.run_merges`).

    Raises
    ------
    ValueError
        As :func:`scnotes.mnn.mnn_correct`; also for sparse input.
    """
    k = resolve_n_neighbors(n_neighbors, k)
    if hasattr(x, "toarray"):
        raise ValueError("fastmnn_correct expects a dense low-dimensional embedding, got a sparse matrix")
    x = check_matrix(x, "x", keep_float32=True)
    if backend not in BACKENDS:
        raise ValueError(f"unknown neighbour backend {backend!r}; choose one of {BACKENDS}")
    categories, codes = check_batches(batch, x.shape[0], k)
    if cos_norm:
        x, _ = cosine_normalize(x)
    cells = [np.flatnonzero(codes == b) for b in range(len(categories))]
    blocks = [(x[c],) for c in cells]   # fancy indexing copies: x itself is never written

    def step(left, right, pairs):
        ref, cur = left[0], right[0]    # fresh stacked copies (run_merges), safe to change in place
        first, second = pairs
        averaged, _ = average_pair_vectors(ref, cur, first, second)
        overall = averaged.mean(axis=0, dtype=np.float64)
        del averaged
        center_along_batch_vector(ref, overall, out=ref)
        center_along_batch_vector(cur, overall, out=cur)
        averaged, mnn_cells = average_pair_vectors(ref, cur, first, second)
        tricube_weighted_correction(cur, averaged, mnn_cells, n_neighbors=k, ndist=ndist,
                                    backend=backend, seed=seed, n_jobs=n_jobs,
                                    n_candidates=n_candidates, out=cur)
        return (ref,), (cur,)

    blocks, steps = run_merges(blocks, cells, categories, step, merge_order=merge_order,
                               auto_merge=auto_merge, k=k, backend=backend, seed=seed, n_jobs=n_jobs,
                               n_candidates=n_candidates)
    out = np.empty(x.shape, dtype=x.dtype)
    for c, blk in zip(cells, blocks):
        out[c] = blk[0]
    return MNNResult(out, steps, categories)
