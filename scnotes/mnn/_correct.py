"""MNN correction of (log-)expression values, after batchelor's ``mnnCorrect``.

Haghverdi, Lun, Morgan & Marioni (2018) "Batch effects in single-cell
RNA-sequencing data are corrected by matching mutual nearest neighbors",
Nat Biotechnol 36:421; the steps and defaults follow batchelor's
``mnnCorrect`` (k = 20, sigma = 0.1, cosine normalisation in and out,
variance adjustment on):

1. :func:`cosine_normalize` each cell (``cos.norm.in``/``cos.norm.out``).
2. MNN pairs between the reference (left) and the batch to correct (right),
   :func:`scnotes.mnn.find_mutual_nn`.
3. :func:`average_pair_vectors`: one vector per right-hand MNN cell, the mean
   of ``left[first] - right[second]`` over its pairs.
4. :func:`smooth_gaussian_kernel`: each right-hand cell gets the average of
   those vectors weighted by ``exp(-d²/sigma) / density``, where ``d`` is
   Euclidean distance to the MNN cell, ``sigma`` is a *squared* bandwidth and
   the density of an MNN cell is the sum of its kernel values to all MNN cells
   (so that dense clusters of MNN cells do not dominate). Done in log space.
5. :func:`shift_variance_scaling` (optional): stretch each cell's vector so
   that the two batches' quantiles along it match (avoids the "kissing" of
   two point clouds that touch only at their surfaces); scale floored at 1.
6. More than two batches: merged one at a time (:mod:`._merge`).

Unlike mnnpy (and scanpy's ``mnn_correct`` wrapper), the kernel is built from
squared *distances*, sigma is the batchelor default, and a sparse input is
never converted to a dense copy of the whole matrix: distances use
``‖a‖² + ‖b‖² − 2 a·b`` on row chunks. The corrected values themselves are
dense (every cell gets its own dense correction vector); they are the only
n_cells × n_genes dense array allocated, with either backend.

Approximate path (``backend="pynndescent"``): the MNN pairs come from an
NN-descent search in a PCA projection with exact re-ranking
(:func:`scnotes.mnn.knn_query`), and the Gaussian kernel is the *full*
batchelor kernel computed in float32 (about 1e-7 from float64). Truncating
the kernel to each cell's nearest MNN cells (``smooth_neighbors``) is
available but is not a negligible approximation with batchelor's
``sigma = 0.1`` on cosine-normalised HVG data: on the joined PBMC set
(5k-100k cells, ``benchmarks/bench_mnn.py``) keeping the 30 nearest MNN
cells moved the correction vectors by a median 48-62 % of their norm,
because the kernel (together with the 1/density weights) spreads over
hundreds of MNN cells.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
from scipy.special import logsumexp

from ._merge import MergeStep, _resolve_order as _merge_order_codes, check_batches, run_merges
from ._neighbors import BACKENDS, check_matrix, find_mutual_nn, knn_query, resolve_n_neighbors
from .._record import record

__all__ = [
    "cosine_normalize",
    "average_pair_vectors",
    "smooth_gaussian_kernel",
    "compute_correction_vectors",
    "shift_variance_scaling",
    "mnn_correct",
    "MNNResult",
]


def _dense(x):
    return x.toarray() if sp.issparse(x) else np.asarray(x)


def _sq_norms(x):
    if sp.issparse(x):
        return np.asarray(x.multiply(x).sum(axis=1)).ravel()
    return np.einsum("ij,ij->i", x, x)


def _cross(a, b):
    """``a @ b.T`` as a dense array for any mix of dense/sparse rows."""
    if sp.issparse(a) and sp.issparse(b):
        return (a @ b.T).toarray()
    if sp.issparse(a):
        return np.asarray(a @ np.asarray(b).T)
    if sp.issparse(b):
        return np.asarray(b @ np.asarray(a).T).T
    return a @ b.T


def cosine_normalize(x, floor: float = 1e-8):
    """Divide each cell (row) by its L2 norm (batchelor ``cosineNorm``).

    Parameters
    ----------
    x : array or CSR matrix, shape (n_cells, n_genes)
        Log-expression values.
    floor : float
        Norms below ``floor`` are raised to it, so an all-zero cell stays zero.

    Returns
    -------
    normalized : same type as ``x`` (sparse stays sparse), shape (n_cells, n_genes)
    l2norm : ndarray, shape (n_cells,)
    """
    l2 = np.sqrt(_sq_norms(x))
    l2 = np.maximum(l2, floor)
    if sp.issparse(x):
        return sp.csr_matrix(sp.diags(1.0 / l2) @ x), l2
    return x / l2[:, None], l2


def average_pair_vectors(data1, data2, first, second):
    """Mean pair vector ``data1[first] - data2[second]`` for each distinct right-hand MNN cell.

    Parameters
    ----------
    data1 : array or CSR, shape (n1, n_features)
    data2 : array or CSR, shape (n2, n_features)
    first, second : int arrays, shape (n_pairs,)
        MNN pairs (rows of ``data1`` and ``data2``).

    Returns
    -------
    averaged : ndarray, shape (n_mnn, n_features)
    mnn_cells : ndarray of int, shape (n_mnn,)
        The distinct values of ``second`` (sorted), one per row of ``averaged``.
    """
    first = np.asarray(first, dtype=np.int64)
    second = np.asarray(second, dtype=np.int64)
    if first.size == 0:
        raise ValueError("no MNN pairs were found: the batches share no population at this k "
                         "(try a larger k, or check that the batches overlap)")
    mnn_cells, inverse, npairs = np.unique(second, return_inverse=True, return_counts=True)
    # mean_p data1[first_p] − data2[cell] through a sparse (n_mnn × n1) pair-count matrix:
    # memory O(n_pairs), never a pair × feature copy.
    dt = np.float32 if _dtype(data1) == np.float32 and _dtype(data2) == np.float32 else np.float64
    g = sp.csr_matrix((np.ones(first.size, dtype=dt), (inverse, first)),
                      shape=(mnn_cells.size, data1.shape[0]))
    vec = _dense(g @ data1)
    vec /= npairs[:, None].astype(dt)
    vec -= _dense(data2[mnn_cells])
    return vec, mnn_cells


def _dtype(x):
    return x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype


def smooth_gaussian_kernel(averaged, mnn_cells, data, sigma: float = 0.1, chunk_size: int = 1024,
                           n_neighbors: int | None = None, backend: str = "exact", seed: int = 0,
                           dtype=np.float64):
    """Gaussian-kernel smoothing of MNN vectors onto every cell (batchelor ``smooth_gaussian_kernel``).

    For cell ``i`` and MNN cell ``j`` (row ``mnn_cells[j]`` of ``data``)::

        log w_ij = -‖x_i − x_j‖² / sigma − log ρ_j,   ρ_j = Σ_{j'} exp(−‖x_j − x_j'‖² / sigma)
        correction_i = Σ_j w_ij v_j / Σ_j w_ij

    ``sigma`` is a squared bandwidth: the kernel falls to 1/e at the distance
    √sigma (≈ 0.32 for batchelor's 0.1; cosine-normalised cells lie on the unit
    sphere, where distances range from 0 to 2). Weights are normalised in log
    space, so a cell far from every MNN cell still gets a proper weighted average.

    Parameters
    ----------
    averaged : ndarray, shape (n_mnn, n_features)
        Per-MNN-cell vectors from :func:`average_pair_vectors`.
    mnn_cells : int array, shape (n_mnn,)
        Rows of ``data`` of the MNN cells.
    data : array or CSR, shape (n_cells, n_dims)
        Coordinates used for the kernel distances (the batch being corrected).
    sigma : float
        Squared bandwidth, > 0.
    chunk_size : int
        Cells per block; memory is O(chunk_size × n_mnn).
    n_neighbors : int, optional
        If given, truncate the kernel to each cell's ``n_neighbors`` nearest
        MNN cells (found with ``backend``), for both the density and the
        weights. ``None`` (default) is batchelor's full computation.
    backend, seed
        Neighbour search for the truncated kernel.
    dtype : {numpy.float64, numpy.float32}
        Precision of the full-kernel computation (blocks of
        ``max(chunk_size, 2048)`` rows). ``float32`` (used by
        :func:`mnn_correct` with the approximate backend) is about 2× faster;
        the result differs from float64 by ~1e-7 (relative to the largest
        entry).

    Returns
    -------
    ndarray, shape (n_cells, n_features)
        Smoothed correction vector of every cell.
    """
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    averaged = np.asarray(averaged, dtype=np.float64)
    mnn_cells = np.asarray(mnn_cells, dtype=np.int64)
    if n_neighbors is None or n_neighbors >= len(mnn_cells):
        return _smooth_full(averaged, data[mnn_cells], data, sigma, max(chunk_size, 2048), dtype)
    n, kk = data.shape[0], int(n_neighbors)
    # One search (one index build) answers both the MNN-cell densities and the cell weights.
    idx, dist = knn_query(data[mnn_cells], data, kk, backend=backend, seed=seed)
    log_dens = logsumexp(-dist[mnn_cells] ** 2 / sigma, axis=1)
    logw = -dist ** 2 / sigma - log_dens[idx]
    logw -= logsumexp(logw, axis=1, keepdims=True)
    # Sparse (n_cells × n_mnn) weights: memory O(n_cells × n_neighbors).
    w = sp.csr_matrix((np.exp(logw).ravel(), idx.ravel(), np.arange(0, n * kk + 1, kk)),
                      shape=(n, len(mnn_cells)))
    return np.asarray(w @ averaged)


def _smooth_full(averaged, m, data, sigma, chunk_size, dtype):
    """Full kernel of :func:`smooth_gaussian_kernel` (same formula), ``chunk_size`` rows at a time.

    The MNN cells' rows (n_mnn × n_dims) are made dense once. A block of
    sparse cells stays sparse: on cosine-normalised HVG rows (~10 % non-zero)
    the sparse × dense product is about 4× faster than a dense BLAS product,
    and no dense copy of ``data`` is made. The weighted average is a dense
    product (chunk × n_mnn) @ (n_mnn × n_features), the bulk of the cost.
    """
    dtype = np.dtype(dtype)
    nm = _sq_norms(m).astype(dtype)
    nd = _sq_norms(data).astype(dtype)
    m = np.ascontiguousarray(_dense(m), dtype=dtype)
    mt = np.ascontiguousarray(m.T)
    neg = dtype.type(-1.0 / sigma)
    av = np.ascontiguousarray(averaged, dtype=dtype)

    def log_kernel(rows, norms):
        # -‖x − m_j‖² / sigma for a dense block of rows; the log of the kernel.
        d = norms[:, None] + nm[None, :] - 2.0 * np.asarray(rows @ mt)
        np.maximum(d, 0.0, out=d)
        d *= neg
        return d

    n_mnn = m.shape[0]
    log_dens = np.empty(n_mnn, dtype=dtype)
    for s in range(0, n_mnn, chunk_size):
        d = log_kernel(m[s:s + chunk_size], nm[s:s + chunk_size])
        top = d.max(axis=1, keepdims=True)
        d -= top
        np.exp(d, out=d)
        log_dens[s:s + chunk_size] = np.log(d.sum(axis=1)) + top[:, 0]
    n = data.shape[0]
    out = np.empty((n, av.shape[1]), dtype=np.float64)
    for s in range(0, n, chunk_size):
        rows = data[s:s + chunk_size]
        rows = rows.astype(dtype) if sp.issparse(rows) else np.asarray(rows, dtype=dtype)
        d = log_kernel(rows, nd[s:s + chunk_size])
        d -= log_dens
        # Normalise in log space (subtract the row maximum) so that a cell far
        # from every MNN cell still gets a proper weighted average.
        d -= d.max(axis=1, keepdims=True)
        np.exp(d, out=d)
        d /= d.sum(axis=1, keepdims=True)
        out[s:s + chunk_size] = d @ av
    return out


def compute_correction_vectors(data1, data2, first, second, kernel_data=None, sigma: float = 0.1,
                               **smooth_kwargs):
    """Correction vector of every cell of batch 2 (batchelor ``.compute_correction_vectors``).

    ``kernel_data`` (default ``data2``) gives the coordinates for kernel
    distances; batchelor uses the cosine-normalised input there even when the
    vectors are taken from other values, so distances stay comparable to sigma.

    Returns
    -------
    ndarray, shape (n2, n_features)
    """
    averaged, mnn_cells = average_pair_vectors(data1, data2, first, second)
    kernel_data = data2 if kernel_data is None else kernel_data
    return smooth_gaussian_kernel(averaged, mnn_cells, kernel_data, sigma=sigma, **smooth_kwargs)


#: Largest n_ref × n_target for which :func:`shift_variance_scaling` runs by default
#: (its cost is O(n_ref · n_target · n_features)); ~ 30k × 30k cells.
MAX_VAR_ADJ_PAIRS = 10 ** 9


def _check_var_adj_size(n1, n2, max_cell_pairs):
    if max_cell_pairs is not None and n1 * n2 > max_cell_pairs:
        raise ValueError(
            f"variance adjustment (var_adj) compares every cell of the batch being corrected "
            f"with every cell of both batches: {n1} × {n2} = {n1 * n2:.3g} cell pairs exceeds "
            f"max_cell_pairs = {max_cell_pairs:.3g} (cost O(n1·n2·n_features)). Pass "
            f"var_adj=False, or correct a low-dimensional embedding instead with "
            f"scnotes.mnn.fastmnn_correct / scnotes.tl.mnn(adata, batch_key, use_rep='X_pca'), "
            f"which needs no variance adjustment; or raise max_cell_pairs to run it anyway.")


def shift_variance_scaling(data1, data2, correction, sigma: float = 0.1, chunk_size: int = 256,
                           max_cell_pairs: int | None = MAX_VAR_ADJ_PAIRS):
    """Per-cell scale of the correction vector that matches quantiles along it (batchelor ``adjust_shift_variance``).

    For cell ``c`` of batch 2 with unit correction direction ``u``: project
    both batches on ``u``; weight every cell by ``exp(-r²/sigma)``, ``r`` its
    distance from ``c`` orthogonal to ``u``; find ``c``'s weighted quantile
    among batch 2 and the batch-1 coordinate at that weighted quantile; the
    scale is ``(q1 − coord_c) / ‖correction_c‖``. The caller floors it at 1.

    Weights, the quantile and the weighted ECDF are computed in log space
    (``logsumexp`` and a log-cumsum, as batchelor's C++ does with
    ``logspace_add``), so they stay exact when every ``r²/sigma`` exceeds
    ~745 (where ``exp`` underflows to 0: uncosine-normalised log-expression,
    the ``cos_norm_out=False`` block).

    Parameters
    ----------
    data1 : array or CSR, shape (n1, n_features)
        Reference batch.
    data2 : array or CSR, shape (n2, n_features)
        Batch to correct (before correction).
    correction : ndarray, shape (n2, n_features)
    sigma : float
        Squared bandwidth (> 0).
    chunk_size : int
        Batch-2 cells per block; memory is O((n1 + n2) × chunk_size).
    max_cell_pairs : int or None
        Refuse when ``n1 × n2`` exceeds it (default :data:`MAX_VAR_ADJ_PAIRS`,
        about 30,000 × 30,000 cells); ``None`` removes the limit. The cost is
        O(n1 · n2 · n_features) time (as batchelor's): every cell of batch 2 is
        compared with every cell of both batches.

    Returns
    -------
    ndarray, shape (n2,)
        Raw scale factors (1 for a zero correction vector).

    Raises
    ------
    ValueError
        If ``n1 × n2 > max_cell_pairs`` (the message names the alternatives:
        ``var_adj=False``, or :func:`scnotes.mnn.fastmnn_correct` on an embedding)
        or ``sigma`` is not positive.
    """
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    correction = np.asarray(correction, dtype=np.float64)
    n1, n2 = data1.shape[0], data2.shape[0]
    _check_var_adj_size(n1, n2, max_cell_pairs)
    n_1 = _sq_norms(data1)
    n_2 = _sq_norms(data2)
    scaling = np.ones(n2)
    ar2 = np.arange(n2)
    for s in range(0, n2, chunk_size):
        cells = np.arange(s, min(s + chunk_size, n2))
        cols = np.arange(len(cells))
        cv = correction[cells]
        l2 = np.linalg.norm(cv, axis=1)
        ok = l2 > 0
        u = np.where(ok[:, None], cv / np.where(ok, l2, 1.0)[:, None], 0.0)
        c2 = _cross(data2, u)                    # (n2, b)
        c1 = _cross(data1, u)                    # (n1, b)
        own = c2[cells, cols]                    # (b,)
        xc = data2[cells]
        d2 = n_2[:, None] + n_2[cells][None, :] - 2.0 * _cross(data2, xc) - (c2 - own) ** 2
        d1 = n_1[:, None] + n_2[cells][None, :] - 2.0 * _cross(data1, xc) - (c1 - own) ** 2
        logw2 = np.maximum(d2, 0.0) / -sigma     # log weights, never exponentiated alone
        logw1 = np.maximum(d1, 0.0) / -sigma
        del d1, d2
        # The cell itself (orthogonal distance 0, log weight 0) is always among
        # those below it, so both log sums are finite.
        logw2[cells, cols] = 0.0
        # Ranks with ties broken by cell order ("first"), as in batchelor.
        below = (c2 < own) | ((c2 == own) & (ar2[:, None] <= cells[None, :]))
        log_prob2 = (logsumexp(np.where(below, logw2, -np.inf), axis=0)
                     - logsumexp(logw2, axis=0))
        order = np.argsort(c1, axis=0, kind="stable")
        lw1 = np.take_along_axis(logw1, order, axis=0)
        log_ecdf1 = np.logaddexp.accumulate(lw1, axis=0)
        log_ecdf1 -= log_ecdf1[-1]
        pos = np.minimum((log_ecdf1 < log_prob2[None, :]).sum(axis=0), n1 - 1)
        q1 = c1[order[pos, cols], cols]
        scaling[cells] = np.where(ok, (q1 - own) / np.where(ok, l2, 1.0), 1.0)
    return scaling


@dataclass
class MNNResult:
    """Output of :func:`mnn_correct` and :func:`scnotes.mnn.fastmnn_correct`.

    A correction result is data, not a fitted model: MNN correction has no
    parameters that could be applied to new cells (a new batch means a new
    merge). :func:`scnotes.tl.mnn` therefore stores it in the AnnData
    (:meth:`to_adata`: the corrected values in ``layers``/``obsm``, the pairs in
    ``obsp``, the merge steps and parameters in ``uns``), where
    ``adata.write_h5ad`` saves it, and :meth:`from_adata` reads it back.

    Attributes
    ----------
    corrected : ndarray, shape (n_cells, n_features)
        Corrected values, rows in the input cell order.
    steps : list of MergeStep
        Per merge: batches on the left/right and the MNN pairs as original
        cell indices (``left_cells[i]`` pairs with ``right_cells[i]``).
    batches : list
        Batch labels (category order).
    """

    corrected: np.ndarray
    steps: list = field(default_factory=list)
    batches: list = field(default_factory=list)

    @property
    def pairs(self):
        """All MNN pairs as a ``pandas.DataFrame`` (``step``, ``left``, ``right``: cell indices)."""
        import pandas as pd

        rows = [pd.DataFrame({"step": i, "left": st.left_cells, "right": st.right_cells})
                for i, st in enumerate(self.steps)]
        return pd.concat(rows, ignore_index=True)

    @property
    def merge_order(self):
        """Batches in the order they joined the reference."""
        order = list(self.steps[0].left)
        for st in self.steps:
            order += [b for b in st.left + st.right if b not in order]
        return order

    def pair_table(self, obs_names=None, batch=None):
        """:attr:`pairs` with cell names and batches: columns ``step``, ``left``,
        ``right`` (``obs_names`` of the paired cells, or indices without them)
        and, with ``batch`` (one label per cell), ``left_batch``, ``right_batch``."""
        p = self.pairs
        if batch is not None:
            b = np.asarray(batch)
            p["left_batch"], p["right_batch"] = b[p["left"].to_numpy()], b[p["right"].to_numpy()]
        if obs_names is not None:
            names = np.asarray(obs_names)
            p["left"], p["right"] = names[p["left"].to_numpy()], names[p["right"].to_numpy()]
        return p

    def to_adata(self, adata, key_added: str, slot: str = "obsm", params: dict | None = None):
        """Write the result into ``adata`` (rows must be its cells, in order).

        - ``adata.layers[key_added]`` (``slot="layers"``) or ``adata.obsm[key_added]``:
          :attr:`corrected` (n_cells × n_features);
        - ``adata.obsp[key_added + "_pairs"]``: sparse n_cells × n_cells, entry
          (left cell, right cell) = merge step + 1 for each MNN pair;
        - ``adata.uns[key_added]``: the record every ``scnotes.tl`` front writes
          (``scnotes._record.record``, the fronts' recorder: ``params``, the call's arguments that
          ``write_h5ad`` can store, ``None`` included; ``model`` = ``"MNNResult"``),
          plus ``slot``, ``batches``, ``merge_order``, ``n_pairs`` (per step) and
          ``steps`` (per step, the batches on each side). Replaces an earlier
          record under ``key_added``.

        Raises ValueError for another ``slot`` than ``"layers"`` / ``"obsm"`` or a
        result whose cells are not ``adata``'s.
        """

        if slot not in ("layers", "obsm"):
            raise ValueError(f"slot must be 'layers' or 'obsm', got {slot!r}")
        n = adata.n_obs
        if self.corrected.shape[0] != n:
            raise ValueError(f"the result has {self.corrected.shape[0]} cells but adata has {n}")
        getattr(adata, slot)[key_added] = self.corrected
        p = self.pairs
        adata.obsp[f"{key_added}_pairs"] = sp.csr_matrix(
            (p["step"].to_numpy() + 1, (p["left"].to_numpy(), p["right"].to_numpy())),
            shape=(n, n), dtype=np.int32)
        record(adata, key_added, dict(params or {}), self, slot=slot,
               batches=[str(b) for b in self.batches],
               merge_order=[str(b) for b in self.merge_order],
               n_pairs=np.array([st.n_pairs for st in self.steps], dtype=np.int64),
               steps={str(i): {"left": [str(b) for b in st.left], "right": [str(b) for b in st.right]}
                      for i, st in enumerate(self.steps)})

    @classmethod
    def from_adata(cls, adata, key_added: str):
        """The result :meth:`to_adata` (i.e. :func:`scnotes.tl.mnn`) stored under
        ``key_added``, e.g. after ``anndata.read_h5ad``. Batch labels come back as
        strings; within a step the pairs are ordered by (left, right) cell.

        Raises KeyError if nothing was stored under ``key_added``.
        """
        if key_added not in adata.uns or "slot" not in adata.uns[key_added]:
            raise KeyError(f"no MNN result stored under {key_added!r} (adata.uns has "
                           f"{list(adata.uns.keys())}); run scnotes.tl.mnn(..., key_added={key_added!r})")
        rec = adata.uns[key_added]
        corrected = np.asarray(getattr(adata, rec["slot"])[key_added])
        g = sp.coo_matrix(adata.obsp[f"{key_added}_pairs"])
        steps = []
        for i in range(len(rec["steps"])):
            sel = g.data == i + 1
            left, right = g.row[sel].astype(np.int64), g.col[sel].astype(np.int64)
            o = np.lexsort((right, left))
            st = rec["steps"][str(i)]
            steps.append(MergeStep([str(b) for b in st["left"]], [str(b) for b in st["right"]],
                                   left[o], right[o]))
        return cls(corrected, steps, [str(b) for b in rec["batches"]])


def mnn_correct(x, batch, n_neighbors: int | None = None, sigma: float = 0.1, cos_norm_in: bool = True,
                cos_norm_out: bool = True, var_adj: bool = True, merge_order=None,
                auto_merge: bool = False, backend: str = "exact", smooth_neighbors: int | None = None,
                seed: int = 0, n_jobs: int = 1, chunk_size: int = 1024, dtype=np.float64,
                k: int | None = None, n_candidates: int | None = None,
                max_cell_pairs: int | None = None) -> MNNResult:
    """MNN batch correction of expression values (batchelor ``mnnCorrect``).

    Parameters
    ----------
    x : array or scipy.sparse matrix, shape (n_cells, n_genes)
        Log-expression values (e.g. log1p of size-factor-normalised counts,
        ideally on highly variable genes). Sparse input is kept sparse.
    batch : array-like, shape (n_cells,)
        Batch of each cell.
    n_neighbors : int
        Neighbours for MNN pairs (default 20, batchelor's ``k``; ``k`` is
        accepted as an alias).
    sigma : float
        Squared bandwidth of the Gaussian smoothing kernel (default 0.1).
    cos_norm_in, cos_norm_out : bool
        Cosine-normalise the values used for distances / the values corrected.
        With ``cos_norm_out=False`` the output is on the log-expression scale.
    var_adj : bool
        Variance adjustment along the correction vectors (cost O(n_ref ×
        n_target × n_genes); refused above ``max_cell_pairs``, see
        :func:`shift_variance_scaling`; turn off for very large batches).
    max_cell_pairs : int, optional
        Limit of n_ref × n_target for the variance adjustment (default
        :data:`MAX_VAR_ADJ_PAIRS`; checked for every merge step before any work).
    n_candidates : int, optional
        Candidates per query of the approximate search (:func:`scnotes.mnn.knn_query`).
    merge_order : list, optional
        Batch labels (or category positions) in merge order; the first is the
        reference. Default: category order.
    auto_merge : bool
        Merge the best-connected (most MNN pairs) sets first instead.
    backend : {"exact", "pynndescent"}
        Nearest-neighbour search for MNN pairs. ``"pynndescent"`` is the
        approximate path: approximate candidates re-ranked exactly, and the
        kernel smoothing in float32.
    smooth_neighbors : int, optional
        Truncate the Gaussian kernel to this many nearest MNN cells (an
        approximation, far from negligible at sigma = 0.1, see the module
        notes; ``None`` = batchelor's full kernel, also on the approximate path).
    seed, n_jobs : int
        Random state of the approximate search (pynndescent's graph and the
        randomized SVD of its projection; the exact path draws nothing) and
        threads. Every draw comes from a generator seeded by ``seed``: the
        caller's global NumPy state is never touched.
    chunk_size : int
        Rows per block in the kernel computations.
    dtype : numpy dtype
        Of the corrected output (float32 halves its memory).

    Returns
    -------
    MNNResult
        ``corrected`` (n_cells × n_genes, dense, cosine-normalised if
        ``cos_norm_out``), the merge steps with their MNN pairs.

    Raises
    ------
    ValueError
        NaN/inf in ``x``, wrong number of labels, missing labels, a single
        batch, a batch with fewer than ``n_neighbors`` cells, no MNN pairs
        found, an invalid merge order / backend, or ``var_adj`` on batches
        larger than ``max_cell_pairs`` allows.
    """
    k = resolve_n_neighbors(n_neighbors, k)
    max_cell_pairs = MAX_VAR_ADJ_PAIRS if max_cell_pairs is None else max_cell_pairs
    x = check_matrix(x, "x")
    if backend not in BACKENDS:
        raise ValueError(f"unknown neighbour backend {backend!r}; choose one of {BACKENDS}")
    categories, codes = check_batches(batch, x.shape[0], k)
    cells = [np.flatnonzero(codes == b) for b in range(len(categories))]
    if var_adj and not auto_merge:
        # Fail before any search (with auto_merge the order is unknown: checked at each step).
        sizes = [len(cells[i]) for i in _merge_order_codes(merge_order, categories)]
        n_left, n_right = max(((sum(sizes[:i]), sizes[i]) for i in range(1, len(sizes))),
                              key=lambda t: t[0] * t[1])
        _check_var_adj_size(n_left, n_right, max_cell_pairs)
    same_set = cos_norm_in == cos_norm_out
    blocks = []
    for c in cells:
        xb = x[c]
        xin, l2 = cosine_normalize(xb) if cos_norm_in else (xb, None)
        if same_set:
            blocks.append((xin,))
        else:
            if cos_norm_out:
                l2 = np.maximum(np.sqrt(_sq_norms(xb)), 1e-8)
                xout = sp.csr_matrix(sp.diags(1.0 / l2) @ xb) if sp.issparse(xb) else xb / l2[:, None]
            else:
                xout = xb
            blocks.append((xin, xout))
    # The approximate path also runs the (full) kernel in float32; see smooth_gaussian_kernel.
    smooth = dict(sigma=sigma, chunk_size=chunk_size, n_neighbors=smooth_neighbors,
                  backend=backend, seed=seed,
                  dtype=np.float64 if backend == "exact" else np.float32)

    def step(left, right, pairs):
        first, second = pairs
        new_right = []
        for j in range(len(right)):
            corr = compute_correction_vectors(left[j], right[j], first, second,
                                              kernel_data=right[0], **smooth)
            if var_adj:
                scale = np.maximum(shift_variance_scaling(left[j], right[j], corr, sigma=sigma,
                                                          max_cell_pairs=max_cell_pairs), 1.0)
                corr *= scale[:, None]
            corr += _dense(right[j])
            new_right.append(corr)
        return left, tuple(new_right)

    blocks, steps = run_merges(blocks, cells, categories, step, merge_order=merge_order,
                               auto_merge=auto_merge, k=k, backend=backend, seed=seed, n_jobs=n_jobs,
                               n_candidates=n_candidates)
    out = np.empty(x.shape, dtype=dtype)
    for c, blk in zip(cells, blocks):
        out[c] = _dense(blk[-1])
    return MNNResult(out, steps, categories)
