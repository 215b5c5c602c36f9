"""k-nearest neighbours across two batches and mutual nearest-neighbour (MNN) pairs.

Two backends give the same interface:

- ``"exact"``: brute-force Euclidean search (scikit-learn), the reference.
- ``"pynndescent"``: approximate nearest-neighbour descent (Dong et al. 2011,
  as implemented by pynndescent). The seed page's point: approximate search is
  what makes MNN practical on large data (Aumüller et al. 2019,
  ANN-Benchmarks). :func:`pair_recall` measures how many exact pairs it finds.
  On high-dimensional rows (more than 200 features, e.g. 2,000 HVGs) the
  search runs in a 200-component PCA projection shared by both batches (one
  truncated SVD, one NN-descent index per batch) and returns ``12 k``
  candidates per cell, which are re-ranked by their exact distance in the
  full space (a numba kernel on the sparse rows). On the joined PBMC HVGs
  this finds ≥ 0.95 of the exact MNN pairs; without the projection,
  NN-descent on 2,000 dense dimensions was slower than the exact search.
  So many candidates are needed because neighbourhoods in this space are
  flat: on the PBMC HVGs the 20th nearest cell of the other batch is
  typically only 10-15 % farther (in squared distance) than the first, and a
  200-component projection reorders cells within that margin.

MNN pairs follow Haghverdi et al. 2018 (Nat Biotechnol 36:421) and batchelor's
``findMutualNN``: cell ``i`` of batch 1 and cell ``j`` of batch 2 form a pair
when ``j`` is among the ``k2`` nearest batch-2 cells of ``i`` and ``i`` is
among the ``k1`` nearest batch-1 cells of ``j``.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

__all__ = ["BACKENDS", "knn_query", "find_mutual_nn", "pair_recall", "check_matrix",
           "resolve_n_neighbors"]

BACKENDS = ("exact", "pynndescent", "faiss")
#: batchelor's default neighbour count (``k = 20``).
DEFAULT_N_NEIGHBORS = 20


def resolve_n_neighbors(n_neighbors, k=None, default: int = DEFAULT_N_NEIGHBORS) -> int:
    """The neighbour count from ``n_neighbors`` or its older name ``k``.

    ``k`` is accepted as an alias (batchelor's name, and this package's before the
    contract in DEVELOPING.md). Giving both with different values raises
    ValueError; a count that is not a positive integer raises ValueError.
    """
    if k is not None:
        if n_neighbors is not None and n_neighbors != k:
            raise ValueError(f"give n_neighbors or its older name k, not both (n_neighbors = "
                             f"{n_neighbors}, k = {k})")
        n_neighbors = k
    if n_neighbors is None:
        n_neighbors = default
    try:
        ok = not isinstance(n_neighbors, bool) and int(n_neighbors) == n_neighbors and n_neighbors >= 1
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"n_neighbors must be a positive integer, got {n_neighbors!r}")
    return int(n_neighbors)


def check_matrix(x, name: str = "x", keep_float32: bool = False):
    """Validate a cells × features matrix of real values (dense or sparse; sparse stays sparse).

    Returns a float64 ndarray or CSR matrix; with ``keep_float32`` a float32
    dense input stays float32 (no copy), so that an embedding of 10^6 cells is
    not doubled in memory.

    Raises
    ------
    TypeError
        If ``x`` is not two-dimensional numeric data.
    ValueError
        If ``x`` is empty or has NaN/inf values.
    """
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    if sp.issparse(x):
        x = sp.csr_matrix(x, dtype=np.float64)
        vals = x.data
    else:
        x = np.asarray(x)
        if x.dtype == object or not np.issubdtype(x.dtype, np.number):
            raise TypeError(f"{name} must be numeric, got dtype {x.dtype}")
        if not (keep_float32 and x.dtype == np.float32):
            x = x.astype(np.float64, copy=False)
        vals = x
    if x.ndim != 2:
        raise TypeError(f"{name} must be a 2-d cells × features matrix, got shape {x.shape}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {x.shape})")
    if not np.all(np.isfinite(vals)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return x


def _check_backend(backend):
    if backend not in BACKENDS:
        raise ValueError(f"unknown neighbour backend {backend!r}; choose one of {BACKENDS}")


def knn_query(ref, query, n_neighbors: int | None = None, backend: str = "exact", seed: int = 0,
              n_jobs: int = 1, epsilon: float | None = None, k: int | None = None,
              n_candidates: int | None = None):
    """The ``n_neighbors`` nearest rows of ``ref`` for each row of ``query`` (Euclidean).

    Parameters
    ----------
    ref : array or CSR matrix, shape (n_ref, n_features)
    query : array or CSR matrix, shape (n_query, n_features)
    n_neighbors : int
        Number of neighbours; must satisfy ``1 <= n_neighbors <= n_ref``
        (``k``: older name, accepted as an alias).
    backend : {"exact", "pynndescent", "faiss"}
        ``"faiss"``: an inverted-file index (FAISS; Jégou et al. 2011):
        k-means lists of ~:data:`IVF_LIST_SIZE` reference rows, each query
        scans the lists of its nearest centroids, ``n_candidates`` rows in
        all, ranks them by 4-bit product-quantizer codes and re-ranks the
        best :data:`IVF_REFINE` by exact distance (the returned distances are
        exact). Unlike a graph search it copes with
        queries far from the reference (batches apart by a strong shift: on the
        simulated 50-dimensional embeddings of ``benchmarks/bench_mnn.py``
        pynndescent found 55-71 % of the exact MNN pairs, FAISS over 99 %).
        Needs the optional ``faiss-cpu`` package.
    seed : int
        Random state of pynndescent's graph construction / FAISS's k-means.
    n_jobs : int
        Threads for the search.
    epsilon : float, optional
        pynndescent's search breadth (larger = more accurate, slower).
        Default: :data:`DIRECT_EPSILON` (pynndescent's 0.1) when NN-descent
        runs on the rows themselves; :data:`PROJECTED_EPSILON` in the
        projected search, which asks for many candidates and searches each
        list more narrowly.
    n_candidates : int, optional
        Approximate backend only: candidates kept per query before the
        ``n_neighbors`` nearest are returned (pynndescent's result-heap size;
        in the projected search, the list re-ranked by exact distance).
        Larger = higher recall, slower. Default
        ``DIRECT_CANDIDATES_PER_K × n_neighbors`` on rows searched directly
        (embeddings, at most :data:`PROJECT_ABOVE` features) and
        ``CANDIDATES_PER_K × n_neighbors`` in the projected search; with
        ``backend="faiss"`` the reference rows scanned per query, by default
        the larger of :data:`IVF_CANDIDATES` (2,048) and :data:`IVF_FRACTION`
        (1/12) of the reference: recall of far queries follows the share
        scanned; see :func:`default_candidates`.

    Returns
    -------
    index : ndarray of int64, shape (n_query, n_neighbors)
        Row indices into ``ref``, nearest first.
    distance : ndarray of float64, shape (n_query, n_neighbors)
        Euclidean distances.

    Raises
    ------
    ValueError
        If ``n_neighbors`` is out of range or the backend is unknown.
    """
    _check_backend(backend)
    k = resolve_n_neighbors(n_neighbors, k)
    n_ref = ref.shape[0]
    if not 1 <= k <= n_ref:
        raise ValueError(f"n_neighbors = {k} nearest neighbours requested but the reference has "
                         f"{n_ref} cells")
    if n_candidates is not None:
        default_candidates(k, ref.shape[1], n_candidates)  # validates before any index is built
    if backend == "exact":
        from sklearn.neighbors import NearestNeighbors

        # Brute force is exact and, for the high-dimensional (gene-space) data
        # MNN works on, faster than trees; for low-dimensional embeddings
        # scikit-learn's 'auto' picks a tree.
        algorithm = "brute" if (sp.issparse(ref) or ref.shape[1] > 30) else "auto"
        nn = NearestNeighbors(n_neighbors=k, algorithm=algorithm, n_jobs=n_jobs).fit(ref)
        dist, idx = nn.kneighbors(query, n_neighbors=k)
        return idx.astype(np.int64), dist.astype(np.float64)

    return _approx_knn(ref, query, k, seed=seed, n_jobs=n_jobs, epsilon=epsilon,
                       n_candidates=n_candidates, backend=backend)


#: Above this many features the approximate search runs in a PCA projection
#: (see :func:`_approx_knn`); below it NN-descent runs on the data directly.
PROJECT_ABOVE = 200
#: Dimensions of that projection and candidates per query (× k) re-ranked exactly.
N_COMPONENTS = 200
CANDIDATES_PER_K = 12
#: Candidates per query (× k) kept by NN-descent searched on the rows themselves
#: (embeddings). On a simulated 100k-cell, 50-dimensional embedding with two
#: strongly shifted batches (``benchmarks/bench_mnn.py``) pynndescent found 55 %
#: of the exact MNN pairs with 1 × k, 72 % with 2 × k and no more with 3 × k: a
#: graph search copes badly with queries far from the reference. Use
#: ``backend="faiss"`` there (99.5 % at its default).
DIRECT_CANDIDATES_PER_K = 2
#: pynndescent's search breadth for those candidates. A long candidate list
#: searched narrowly reaches a given recall sooner than a short list searched
#: widely: on the PBMC HVGs at 50k cells, 12 k candidates at epsilon 0.02 found
#: 97.4 % of the exact pairs in the time 8 k at epsilon 0.1 found 96.3 %.
PROJECTED_EPSILON = 0.02
#: pynndescent's own default, for NN-descent on the rows themselves.
DIRECT_EPSILON = 0.1
#: Power iterations of the randomized SVD behind the projection (it only has to
#: rank candidates; the returned distances are exact).
N_POWER_ITER = 4
#: Out-degree of the NN-descent search graph.
GRAPH_NEIGHBORS = 30


def _project(blocks, n_components, seed):
    """Rows of all ``blocks`` projected on their top right singular vectors (float32).

    One truncated SVD (Halko et al. 2011, randomized, in float32) of the
    stacked rows, not centred, so that sparse input stays sparse; cost linear
    in cells. The projection only ranks candidates (their returned distances
    are exact), so single precision is enough.
    """
    from sklearn.utils.extmath import randomized_svd

    blocks32 = [b.astype(np.float32) if sp.issparse(b) else np.asarray(b, dtype=np.float32)
                for b in blocks]
    stacked = sp.vstack(blocks32, format="csr") if any(sp.issparse(b) for b in blocks32) \
        else np.vstack(blocks32)
    n_comp = int(min(n_components, min(stacked.shape) - 1))
    _, _, vt = randomized_svd(stacked, n_comp, n_iter=N_POWER_ITER, random_state=seed)
    v = np.ascontiguousarray(vt.T, dtype=np.float32)
    return [np.ascontiguousarray(np.asarray(b @ v), dtype=np.float32) for b in blocks32]


def _nndescent_index(x, seed, n_jobs):
    import pynndescent

    n = x.shape[0]
    n_graph = int(min(GRAPH_NEIGHBORS, n - 1)) if n > 2 else n
    return pynndescent.NNDescent(x, n_neighbors=max(n_graph, 1), metric="euclidean",
                                 random_state=seed, n_jobs=n_jobs, low_memory=True,
                                 compressed=False)


_RERANK = None


def _rerank_kernel():
    """numba kernel: squared distances of each query row to its candidate rows (CSR inputs)."""
    global _RERANK
    if _RERANK is None:
        import numba

        @numba.njit(nogil=True, cache=False)
        def rerank(qptr, qind, qdat, rptr, rind, rdat, cand, nq2, nr2, n_features):
            m, c = cand.shape
            out = np.empty((m, c), dtype=np.float64)
            buf = np.zeros(n_features, dtype=np.float64)
            for i in range(m):
                # Scatter the query row once, then one sparse dot per candidate:
                # cost Σ nnz(candidates), no dense copy of either batch.
                for p in range(qptr[i], qptr[i + 1]):
                    buf[qind[p]] = qdat[p]
                for a in range(c):
                    j = cand[i, a]
                    if j < 0:  # pynndescent pads with -1 when it finds fewer than asked
                        out[i, a] = np.inf
                        continue
                    s = 0.0
                    for p in range(rptr[j], rptr[j + 1]):
                        s += buf[rind[p]] * rdat[p]
                    out[i, a] = max(nq2[i] + nr2[j] - 2.0 * s, 0.0)
                for p in range(qptr[i], qptr[i + 1]):
                    buf[qind[p]] = 0.0
            return out

        _RERANK = rerank
    return _RERANK


def _exact_rerank(ref, query, cand, k):
    """Keep the ``k`` candidates of each query row nearest in the full space."""
    q = sp.csr_matrix(query, dtype=np.float64)
    r = sp.csr_matrix(ref, dtype=np.float64)
    nq = np.asarray(q.multiply(q).sum(axis=1)).ravel()
    nr = np.asarray(r.multiply(r).sum(axis=1)).ravel()
    d2 = _rerank_kernel()(q.indptr, q.indices, q.data, r.indptr, r.indices, r.data,
                          np.ascontiguousarray(cand, dtype=np.int64), nq, nr, q.shape[1])
    order = np.argsort(d2, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(cand, order, 1).astype(np.int64), np.sqrt(np.take_along_axis(d2, order, 1))


#: FAISS backend: reference rows per inverted list, default rows scanned per
#: query (at least :data:`IVF_CANDIDATES`, and :data:`IVF_FRACTION` of the
#: reference), k-means training rows per list and iterations (the training rows
#: are a seeded random subset). A fixed number of scanned rows is not enough for
#: queries far from the reference: the lists nearest to a far query all lie on
#: the face of the reference turned to it, and the share of that face a fixed
#: scan covers shrinks as the reference grows. On the simulated embeddings of
#: ``benchmarks/bench_mnn.py`` (2 batches, a strong shift in a random direction)
#: the recall of the exact MNN pairs follows the scanned share, not the count:
#: 50k-row reference: 4.1 % scanned 0.90, 8.2 % 0.99, 16 % 1.00; 150k rows:
#: 2.7 % 0.79, 5.5 % 0.97, 8.2 % 1.00. The cost is linear in that share.
IVF_LIST_SIZE = 128
IVF_CANDIDATES = 2048
IVF_FRACTION = 1 / 12
IVF_TRAIN_PER_LIST = 32
IVF_NITER = 10
#: At most this many rows train the k-means (its cost is n_train × n_lists × d per iteration).
IVF_MAX_TRAIN = 65536
#: Rows ranked best by the 4-bit codes that are re-ranked by exact distance (at
#: least k). On the same simulation (875k-row reference, 125k queries, the
#: geometry of the last merge of 1M cells in 8 batches; 435 exact pairs of 3,000
#: sampled queries), scanning 8.3 % of the reference: exact distances on every
#: scanned row (``IndexIVFFlat``) recall 0.998 at 1,175 µs per query, codes
#: re-ranked at 200 / 1,000 / 3,000 rows 0.860 / 0.986 / 1.000 at 374 / 491 /
#: 802 µs (one thread, queries in list order; 2,190 µs for ``IndexIVFFlat`` in
#: random order). 8-bit and fp16 codes scanned slower than the full rows.
IVF_REFINE = 1000
#: Scans of at least this many rows per query use the codes (see :func:`_faiss_index`); at
#: 5k / 10k / 20k / 40k rows scanned of the 875k-row reference above, full rows took 65 /
#: 140 / 281 / 596 µs per query and codes re-ranked at 1,000 rows 125 / 164 / 209 / 293 µs.
IVF_PQ_ABOVE = 16384


def default_candidates(k: int, n_features: int, n_candidates: int | None = None,
                       backend: str = "pynndescent", n_ref: int = 0) -> int:
    """Candidates per query of the approximate search for ``k`` neighbours (see :func:`knn_query`).

    ``backend="faiss"`` on rows searched directly: the larger of
    :data:`IVF_CANDIDATES` and ``IVF_FRACTION × n_ref`` reference rows.

    Raises ValueError if ``n_candidates`` is given and smaller than ``k``.
    """
    if n_candidates is not None:
        if int(n_candidates) != n_candidates or n_candidates < k:
            raise ValueError(f"n_candidates must be an integer >= n_neighbors = {k}, got "
                             f"{n_candidates!r}")
        return int(n_candidates)
    if backend == "faiss" and n_features <= PROJECT_ABOVE:
        return max(IVF_CANDIDATES, k, int(np.ceil(IVF_FRACTION * n_ref)))
    per_k = CANDIDATES_PER_K if n_features > PROJECT_ABOVE else DIRECT_CANDIDATES_PER_K
    return int(round(per_k * k))


def _reranked_search(ref, rows, ref_proj, rows_proj, k, seed=0, n_jobs=1, epsilon=None,
                     n_candidates=None, backend="pynndescent"):
    """NN-descent candidates in a projection, re-ranked by exact distance in the full space.

    ``ref_proj``/``rows_proj`` are ``ref``/``rows`` in a shared projection
    (:func:`_project`). Returns (indices, distances) as :func:`knn_query`.
    """
    n_cand = int(min(ref.shape[0], default_candidates(k, ref.shape[1], n_candidates)))
    if backend == "faiss":
        cand, _ = _faiss_knn(ref_proj, rows_proj, n_cand, max(IVF_CANDIDATES, n_cand), seed, n_jobs)
        return _exact_rerank(ref, rows, cand, k)
    index = _nndescent_index(ref_proj, seed, n_jobs)
    eps = PROJECTED_EPSILON if epsilon is None else epsilon
    cand, _ = index.query(rows_proj, k=n_cand, epsilon=eps)
    return _exact_rerank(ref, rows, cand, k)


def _faiss_index(ref, n_cand, seed):
    """The FAISS index for ``ref`` (float32) scanning ``n_cand`` rows per query, and its IVF part.

    Inverted lists of ~:data:`IVF_LIST_SIZE` rows (k-means on a seeded
    subset). Scanning fewer than :data:`IVF_PQ_ABOVE` rows per query, the
    lists hold the rows themselves (``IndexIVFFlat``: exact distances).
    Scanning more, each row is also stored as a 4-bit product-quantizer code
    per dimension (FAISS "fast scan", André et al. 2017, which scores the
    lists' rows with SIMD table lookups); the codes rank the scanned rows and
    the :data:`IVF_REFINE` best are re-ranked by exact distance (FAISS
    ``IndexRefineFlat``). Either way the returned distances are exact. A
    reference too small for lists, or a scan of all of it, gets an exact flat
    index (``ivf`` is None). Returns ``(index, ivf, refine)``, ``refine``
    true when the codes are used.
    """
    import faiss

    n_ref, d = ref.shape
    n_list = n_ref // IVF_LIST_SIZE
    if n_list < 2 or n_cand >= n_ref:
        index = faiss.IndexFlatL2(d)
        index.add(ref)
        return index, None, False
    refine = n_cand >= IVF_PQ_ABOVE
    lists = f"PQ{d}x4fs,RFlat" if refine else "Flat"
    index = faiss.index_factory(d, f"IVF{n_list},{lists}")
    ivf = faiss.extract_index_ivf(index)
    ivf.cp.seed = int(seed)
    ivf.cp.niter = IVF_NITER
    ivf.cp.max_points_per_centroid = IVF_TRAIN_PER_LIST
    ivf.cp.min_points_per_centroid = 1
    rng = np.random.default_rng(seed)
    n_train = min(n_ref, IVF_TRAIN_PER_LIST * n_list, IVF_MAX_TRAIN)
    train = ref if n_train == n_ref else ref[np.sort(rng.choice(n_ref, n_train, replace=False))]
    index.train(np.ascontiguousarray(train))
    index.add(ref)
    ivf.nprobe = int(min(n_list, -(-n_cand // IVF_LIST_SIZE)))
    return index, ivf, refine


def _faiss_knn(ref, query, k, n_candidates=None, seed=0, n_jobs=1, chunk_size=65536):
    """kNN with a FAISS inverted-file index (exact distances of the returned rows); see :func:`knn_query`.

    Queries are searched in the order of their nearest list, so that
    consecutive queries scan mostly the same lists while these are in the CPU
    cache (about half the time of a search in the given order on 10^5-10^6
    rows); results come back in the given order.
    """
    try:
        import faiss
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("backend='faiss' needs the faiss-cpu package (pip install faiss-cpu); "
                          "or use backend='exact' or 'pynndescent'") from e
    ref = _dense32(ref)
    n_ref, d = ref.shape
    n_cand = default_candidates(k, d, n_candidates, backend="faiss", n_ref=n_ref)
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(max(1, int(n_jobs)) if n_jobs and n_jobs > 0 else threads)
    try:
        index, ivf, refine = _faiss_index(ref, n_cand, seed)
        n = query.shape[0]
        if refine:
            index.k_factor = float(max(1, -(-IVF_REFINE // k)))
            # The codes' candidate lists (IVF_REFINE per query) bound the chunk's memory.
            chunk_size = max(1, min(chunk_size, 2 ** 23 // int(index.k_factor * k)))
        if ivf is not None:
            near = np.empty(n, dtype=np.int64)
            for s in range(0, n, chunk_size):
                near[s:s + chunk_size] = ivf.quantizer.search(_dense32(query[s:s + chunk_size]), 1)[1][:, 0]
            order = np.argsort(near, kind="stable")
            del near
        else:
            order = np.arange(n)
        idx = np.empty((n, k), dtype=np.int64)
        dist = np.empty((n, k), dtype=np.float32)
        for s in range(0, n, chunk_size):
            rows = order[s:s + chunk_size]
            d2, i = index.search(_dense32(query[rows]), k)
            idx[rows] = i
            dist[rows] = np.sqrt(np.maximum(d2, 0.0))
    finally:
        faiss.omp_set_num_threads(threads)
    if (idx < 0).any():  # fewer than k rows in the scanned lists: fall back to exact for those
        bad = np.flatnonzero((idx < 0).any(axis=1))
        i2, d2 = knn_query(ref, _dense32(query[bad]), k, backend="exact")
        idx[bad], dist[bad] = i2, d2
    return idx, dist


def _approx_knn(ref, query, k, seed=0, n_jobs=1, epsilon=None, n_candidates=None,
                backend="pynndescent"):
    """Approximate kNN: NN-descent, in a PCA projection with exact re-ranking for wide rows.

    For high-dimensional rows (more than :data:`PROJECT_ABOVE` features, e.g.
    2,000 HVGs) NN-descent on the raw rows is slow (it is O(n_features) per
    distance and sparse rows are worse). Instead ``ref`` and ``query`` are
    projected on :data:`N_COMPONENTS` principal axes, pynndescent returns
    ``CANDIDATES_PER_K × k`` candidates per query there, and those are
    re-ranked by their exact Euclidean distance in the full space, so the
    returned distances are exact and only the candidate list is approximate.
    """
    if ref.shape[1] <= PROJECT_ABOVE:
        if backend == "faiss":
            return _faiss_knn(ref, query, k, n_candidates, seed, n_jobs)
        index = _nndescent_index(_dense32(ref), seed, n_jobs)
        return _direct_query(index, query, k, epsilon, n_candidates)
    pref, pquery = _project([ref, query], N_COMPONENTS, seed)
    return _reranked_search(ref, query, pref, pquery, k, seed, n_jobs, epsilon, n_candidates,
                            backend)


def _direct_query(index, query, k, epsilon=None, n_candidates=None, chunk_size=65536):
    """The ``k`` nearest of each query row from a built NN-descent ``index``.

    The search keeps ``n_candidates`` per query (a wider heap finds more of
    the true neighbours) and the ``k`` nearest of them are returned; queries
    go in chunks so that the candidate lists never hold more than
    ``chunk_size`` rows at once.
    """
    n_ref = index._raw_data.shape[0]
    n_cand = int(min(n_ref, default_candidates(k, index._raw_data.shape[1], n_candidates)))
    eps = DIRECT_EPSILON if epsilon is None else epsilon
    n = query.shape[0]
    idx = np.empty((n, k), dtype=np.int64)
    dist = np.empty((n, k), dtype=np.float32)
    for s in range(0, n, chunk_size):
        i, d = index.query(_dense32(query[s:s + chunk_size]), k=n_cand, epsilon=eps)
        idx[s:s + chunk_size], dist[s:s + chunk_size] = i[:, :k], d[:, :k]
    return idx, dist


def _dense32(x):
    return x.toarray().astype(np.float32) if sp.issparse(x) else np.ascontiguousarray(x, dtype=np.float32)


def find_mutual_nn(data1, data2, k1: int = 20, k2: int | None = None, backend: str = "exact",
                   seed: int = 0, n_jobs: int = 1, epsilon: float | None = None,
                   n_candidates: int | None = None):
    """Mutual nearest-neighbour pairs between two batches.

    The search runs in two passes with the same result as searching both
    directions in full (batchelor's ``findMutualNN``): first the ``k`` nearest
    cells of every cell of the smaller batch; then the reverse search only
    for the cells of the larger batch that the first pass returned, because
    no other cell can be in a pair. Neighbour lists are hub-dominated in
    high dimensions (on the PBMC HVGs at 50k cells the first pass returned
    12-18 % of the larger batch), so the second pass is a fraction of the
    first.

    Parameters
    ----------
    data1 : array or CSR matrix, shape (n1, n_features)
    data2 : array or CSR matrix, shape (n2, n_features)
    k1 : int
        Neighbours of each batch-2 cell searched in batch 1.
    k2 : int, optional
        Neighbours of each batch-1 cell searched in batch 2 (default ``k1``).
    backend, seed, n_jobs, epsilon, n_candidates
        As :func:`knn_query` (``n_candidates`` is per direction: for the
        ``k`` of that direction when not given).

    Returns
    -------
    first, second : ndarray of int64, shape (n_pairs,)
        Row indices into ``data1`` and ``data2`` of each pair, sorted by
        ``first`` then ``second``. A cell may appear in several pairs.

    Raises
    ------
    ValueError
        If a batch has fewer cells than the number of neighbours requested.

    ``k1``/``k2`` are batchelor's per-direction names; the corrections take one
    ``n_neighbors`` for both.
    """
    k2 = k1 if k2 is None else k2
    if data1.shape[0] < k1 or data2.shape[0] < k2:
        raise ValueError(
            f"a batch has fewer cells than n_neighbors (batch sizes {data1.shape[0]} and "
            f"{data2.shape[0]}, n_neighbors = {k1}/{k2}); lower n_neighbors or drop the small batch")
    _check_backend(backend)
    n1, n2 = data1.shape[0], data2.shape[0]
    swap = n1 > n2
    if swap:  # the forward pass covers the smaller batch
        (data1, data2, k1, k2, n1, n2) = (data2, data1, k2, k1, n2, n1)
    kw = dict(seed=seed, n_jobs=n_jobs, epsilon=epsilon, n_candidates=n_candidates)
    if backend != "exact" and data1.shape[1] > PROJECT_ABOVE:
        # One projection of both batches serves both passes.
        p1, p2 = _project([data1, data2], N_COMPONENTS, seed)
        idx12, _ = _reranked_search(data2, data1, p2, p1, k2, backend=backend, **kw)
        hits = _distinct(idx12, n2)
        idx21, _ = _reranked_search(data1, data2[hits], p1, p2[hits], k1, backend=backend, **kw)
    else:
        idx12, _ = knn_query(data2, data1, k2, backend=backend, **kw)
        hits = _distinct(idx12, n2)
        idx21, _ = knn_query(data1, data2[hits], k1, backend=backend, **kw)
    # Encode each directed edge as one integer and intersect the two edge sets.
    e12 = np.repeat(np.arange(n1, dtype=np.int64), k2) * n2 + idx12.ravel()
    e21 = idx21.ravel() * n2 + np.repeat(hits.astype(np.int64), k1)
    # Once the -1 padding is dropped both edge lists are duplicate-free (distinct
    # neighbours per row): a sort, not a hash unique.
    e12, e21 = e12[idx12.ravel() >= 0], e21[idx21.ravel() >= 0]
    common = np.intersect1d(e12, e21, assume_unique=True)
    first, second = common // n2, common % n2
    if swap:
        order = np.lexsort((first, second))
        first, second = second[order], first[order]
    return first, second


def _distinct(idx, n):
    """Sorted distinct values of an index array with values in [0, n) (a mask, linear time)."""
    mask = np.zeros(n, dtype=bool)
    mask[idx.ravel()] = True
    return np.flatnonzero(mask)


def pair_recall(pairs, reference_pairs) -> float:
    """Fraction of ``reference_pairs`` (e.g. exact MNN pairs) also present in ``pairs``.

    Both arguments are ``(first, second)`` index arrays as returned by
    :func:`find_mutual_nn`. Returns 1.0 when the reference is empty.
    """
    f, s = (np.asarray(a, dtype=np.int64) for a in pairs)
    rf, rs = (np.asarray(a, dtype=np.int64) for a in reference_pairs)
    if rf.size == 0:
        return 1.0
    m = int(max(s.max(initial=0), rs.max(initial=0))) + 1
    return float(np.isin(rf * m + rs, f * m + s).mean())
