"""numba kernels for (weighted) Poisson NMF on the observed nonzeros only.

Every kernel updates the rows of one factor ``A`` (n × k) given the other
factor ``G`` (p × k). The data enter as a CSR matrix ``(indptr, indices,
data)`` of shape n × p holding the *effective counts* ``d_ij = w_ij x_ij``
(entries with ``d_ij = 0`` are not stored), and ``B`` (n × k) holds the
linear term of the objective, ``B_ik = Σ_j w_ij g_jk`` (``colsums(G)`` on
every row when there is no mask). The objective of row i is

    φ_i(a_i) = Σ_{j: d_ij > 0} d_ij log (a_i · g_j)  −  a_i · B_i ,

the weighted Poisson log-likelihood without its constant, so the same
kernel updates L (rows of X, G = F) and F (rows of Xᵀ, G = L).

Rows are independent given ``G``, so the loop over rows runs in parallel
(``prange``); per-row results are written to arrays and summed afterwards
in a fixed order, so a fit does not depend on the number of threads.
"""
from __future__ import annotations

import os
from contextlib import contextmanager

import numba
import numpy as np
from numba import njit, prange

# numba's default "omp" threading layer loads the system libgomp next to torch's
# own copy; once its pool has started, every torch operation in the process ran
# 10-30x slower here (two OpenMP runtimes spin-waiting against each other on 2
# cores), e.g. the NBMF θ step and any VAE fitted after an NMF. The "workqueue"
# layer has no OpenMP runtime. A layer chosen by the user (NUMBA_THREADING_LAYER)
# is respected; once numba's pool is running, the choice can no longer change.
if "NUMBA_THREADING_LAYER" not in os.environ:
    try:
        from numba.np.ufunc import parallel as _parallel

        if not getattr(_parallel, "_is_initialized", False):
            numba.config.THREADING_LAYER = "workqueue"
    except ImportError:  # a numba without this module: keep its default
        pass

# Reassociation lets reductions vectorise; no approximate reciprocals or
# no-NaN assumptions (the kernels test for zero means).
_FM = {"reassoc", "contract"}

# Below this many stored entries (or dense entries), thread start-up and
# OpenBLAS spin-waiting cost more than they save (badly so on a loaded machine).
_PARALLEL_MIN_NNZ = 300_000


@contextmanager
def threads_for(size: int):
    """Run the kernels and BLAS single-threaded for small problems (``size`` = stored or
    dense entries); otherwise keep numba's (``NUMBA_NUM_THREADS``) and BLAS's settings."""
    if size >= _PARALLEL_MIN_NNZ:
        yield
        return
    from threadpoolctl import threadpool_limits

    old = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        with threadpool_limits(limits=1, user_api="blas"):
            yield
    finally:
        numba.set_num_threads(old)


@njit(cache=True, parallel=True, fastmath=_FM)
def loglik_rows(indptr, indices, data, A, G, B, out):
    """out[i] = φ_i(A_i) (see module docstring); −inf where a positive d meets a zero mean."""
    n, k = A.shape
    for i in prange(n):
        s = 0.0
        for t in range(indptr[i], indptr[i + 1]):
            j = indices[t]
            m = 0.0
            for c in range(k):
                m += A[i, c] * G[j, c]
            s += data[t] * np.log(m)
        for c in range(k):
            s -= A[i, c] * B[i, c]
        out[i] = s


@njit(cache=True, parallel=True, fastmath=_FM)
def mu_rows(indptr, indices, data, A, G, B):
    """One multiplicative (EM) update of every row of ``A`` given ``G``.

    a_ik ← a_ik · (Σ_j d_ij g_jk / m_ij) / B_ik  with m = a_i · g_j
    (Lee & Seung 2001; the EM algorithm of the Poisson/multinomial topic
    model, Carbonetto et al. 2021). Rows with B_ik = 0 (fully masked) keep
    their value.
    """
    n, k = A.shape
    for i in prange(n):
        r = np.zeros(k)
        for t in range(indptr[i], indptr[i + 1]):
            j = indices[t]
            m = 0.0
            for c in range(k):
                m += A[i, c] * G[j, c]
            q = data[t] / m
            for c in range(k):
                r[c] += q * G[j, c]
        for c in range(k):
            if B[i, c] > 0.0:
                A[i, c] = A[i, c] * r[c] / B[i, c]


@njit(cache=True, fastmath=_FM)
def _pass(dd, m, gp, delta, gc, gt_row, idx, load):
    """One fused pass over a row's nonzeros: apply the deferred move m += gp·delta,
    optionally gather gc = column c of G at the nonzeros, and return
    r = Σ d g / m and h = Σ d g² / m² at the moved means."""
    r = 0.0
    h = 0.0
    if load:
        for t in range(m.shape[0]):
            mt = m[t] + gp[t] * delta
            m[t] = mt
            g = gt_row[idx[t]]
            gc[t] = g
            inv = 1.0 / mt
            qg = dd[t] * g * inv
            r += qg
            h += qg * g * inv
    else:
        for t in range(m.shape[0]):
            mt = m[t] + gp[t] * delta
            m[t] = mt
            inv = 1.0 / mt
            qg = dd[t] * gc[t] * inv
            r += qg
            h += qg * gc[t] * inv
    return r, h


@njit(cache=True)
def _has_nonpositive(m):
    for t in range(m.shape[0]):
        if not (m[t] > 0.0):
            return True
    return False


@njit(cache=True, parallel=True, fastmath=_FM)
def scd_rows(indptr, indices, data, A, G, B, n_inner, want_loglik, out):
    """Sequential coordinate descent on every row of ``A`` given ``G``; out[i] = φ_i after the update.

    For each coordinate c in turn, the 1-d concave problem
    max_a φ(a) = Σ_j d_j log(m_j + g_jc (a − a_c)) − B_c a over a ≥ 0 is
    solved by ``n_inner`` gradient passes (the coordinate-wise scheme of
    Hsieh & Dhillon 2011, also fastTopics' "scd"), each costing O(nnz_i).

    φ' is convex and decreasing. A Newton step from the left of the root
    (φ' > 0) never overshoots, so it always improves φ. From the right it
    lands left of the root and may overshoot. It is then verified with the
    next pass: with g_t = φ'(t) < 0 at the start and g_s = φ'(s) at the
    Newton point, convexity of φ' bounds φ' on [s, t] by its chord, hence
    φ(s) − φ(t) ≥ −(t − s)(g_s + g_t)/2, and s is kept if g_s + g_t ≤ 0;
    otherwise the chord's root (a secant step, whose guaranteed gain is
    positive) is taken. When no pass is left for the verification, a step
    from the right is replaced by the multiplicative (EM) step a·r/B,
    which lies between the root and a and never decreases φ. So every
    coordinate update is monotone, with no logarithms in the inner loop.

    The row's means ``m`` at its nonzeros are kept current; each move of a
    coordinate is applied lazily inside the next pass, so a coordinate
    costs ``n_inner`` passes over the row's nonzeros.
    """
    n, k = A.shape
    Gt = np.ascontiguousarray(G.T)
    for i in prange(n):
        lo = indptr[i]
        nz = indptr[i + 1] - lo
        m = np.empty(nz)
        gc = np.zeros(nz)
        gp = np.zeros(nz)
        dd = data[lo:lo + nz]
        idx = indices[lo:lo + nz]
        for t in range(nz):
            j = idx[t]
            s = 0.0
            for c in range(k):
                s += A[i, c] * G[j, c]
            m[t] = s
        delta = 0.0      # deferred move of the previous coordinate (along gp)
        for c in range(k):
            b = B[i, c]
            if b <= 0.0:
                continue
            tmp = gp
            gp = gc
            gc = tmp
            a = A[i, c]
            pending = False   # last move was an unverified Newton step from the right
            t_prev = a
            g_prev = 0.0
            em_prev = a
            check_zero = False
            for it in range(n_inner):
                if it == 0:
                    r, h = _pass(dd, m, gp, delta, gc, Gt[c], idx, True)
                else:
                    r, h = _pass(dd, m, gc, delta, gc, Gt[c], idx, False)
                delta = 0.0
                grad = r - b
                bad = check_zero and _has_nonpositive(m)
                if pending:
                    pending = False
                    if bad:
                        # The Newton point has a zero mean: back to the EM step from t_prev.
                        delta = em_prev - a
                        a = em_prev
                        break
                    if grad > 0.0 and grad + g_prev > 0.0:
                        sec = a + (t_prev - a) * grad / (grad - g_prev)
                        delta = sec - a
                        a = sec
                        break
                if bad or not (abs(grad) > 1e-10 * b):
                    break
                if grad >= 0.0:
                    new = a + grad / h
                elif it == n_inner - 1:
                    new = a * r / b
                else:
                    new = a + grad / h
                    if new <= 0.0:
                        new = 0.0
                        check_zero = True
                    pending = True
                    t_prev = a
                    g_prev = grad
                    em_prev = a * r / b
                delta = new - a
                a = new
            A[i, c] = a
            # gc is this coordinate's column; the next one moves along it (as gp).
        if delta != 0.0:
            _move(m, gc, delta)
        if want_loglik:
            s = 0.0
            for t in range(nz):
                s += dd[t] * np.log(m[t])
            for c in range(k):
                s -= A[i, c] * B[i, c]
            out[i] = s


@njit(cache=True, fastmath=_FM)
def _move(m, gc, delta):
    for t in range(m.shape[0]):
        m[t] += gc[t] * delta
