"""Benchmark: mnn_correct wall time and peak memory, exact vs approximate neighbours.

Input: the joined PBMC set of the chapter ``mnn_topics`` (pbmc_facs_zheng2017 +
pbmc4k_10x_soupx on shared gene symbols, coarse labels, CD34+/"?" dropped),
log1p of total-count-normalised counts on 2,000 HVGs (sparse CSR), and the
same cells subsampled / replicated to 1k, 5k, 20k and 50k cells (100k on
request). A replica is a Poisson draw of counts around a real cell's
neighbourhood profile (a new cell of the same state and depth, see
``resize``); ``--replicate jitter`` instead multiplies the real cell's
non-zero values by 1 + 0.05 ε, which makes near-duplicates. The batch mix is
kept.

Per size, one line:

- ``exact``: ``mnn_correct(backend="exact")`` (brute-force kNN, full Gaussian kernel);
- ``approx``: ``mnn_correct(backend="pynndescent")`` (NN-descent candidates
  in a 200-PC projection, re-ranked exactly; full Gaussian kernel in
  float32), with its recall of the exact MNN pairs and the largest
  difference of its output from the exact run;
- ``search``: the MNN search alone (``find_mutual_nn`` on the
  cosine-normalised batches), exact and approximate, and for reference the
  exact search done as batchelor's ``findMutualNN`` does it, both directions
  in full (two ``knn_query`` calls); scnotes searches the reverse direction
  only from the cells the first pass returned, which gives the same pairs;
- ``trunc30``: how far a kernel truncated to each cell's 30 nearest MNN cells
  is from the full kernel (same exact MNN pairs, 1,000 random cells of the
  corrected batch): median and max of ‖Δ correction‖ / ‖full correction‖
  per cell. This is why the approximate path keeps the full kernel;
- Harmony (harmonypy through scanpy) and Scanorama on the 50 PCs of the same input.

Both MNN runs use ``var_adj=False``: the variance adjustment is quadratic in
cells (batchelor's too) and is not what the neighbour backend changes.
Peak memory is measured with ``tracemalloc`` (NumPy/SciPy allocations; numba's
own buffers inside pynndescent are not seen) in one worker subprocess, after a
warm-up that keeps numba's one-off compilation (~50 s) out of the timings.

Usage: ``python benchmarks/bench_mnn.py [--sizes joined 1000 5000 20000 50000] [--budget 540]``

Embedding path (``--embedding``): ``fastmnn_correct(backend="faiss")`` on
a simulated 50-dimensional embedding (:func:`simulate_embedding`: 10 cell
types with a PC-like decaying spectrum, batch compositions drawn from a
Dirichlet, a strong batch shift in a random direction plus a type-specific
part) with 2 and 8 batches at 100k, 300k and 1M cells, against Harmony
(``harmonypy.run_harmony``, its compiled 2.x backend, one thread), harmonypy
0.0.10 (``harmony010``, see below) and Scanorama (``scanorama.assemble``) on
the same embedding. Each (method, size, batches) runs in its own subprocess
with one thread, so that the peak RSS (``VmHWM``, input included; the
input alone is the ``data MB`` column) is that method's. MNN's first call
(library loading) is a warm-up on 5k cells, reported apart. The pynndescent
backend is not in this table: on the earlier (aligned-shift) simulation it found 55 % (20 candidates per
query) to 71 % (40-60) of the exact MNN pairs at 100k cells, in 66-80 s after
2 min of numba compilation. Per row: wall and CPU seconds of the call, peak
RSS, recall of the exact MNN pairs of the first merge step (the one searched
on the uncorrected input): in full at ``--recall-sizes`` (default 100k) and,
at every size, for the pairs of 10,000 random cells (:func:`sampled_pair_recall`,
exact search from those cells only); iLISI and cLISI (``scnotes.metrics``,
rescaled to [0, 1], higher is better, on a 20k-cell subsample). Targets
(issue 16): MNN within 10× Harmony's time; 1M cells in ≤ 600 s with peak RSS
≤ 8 GB; at 300k and 1M, iLISI above Harmony's at a cLISI no lower; recall ≥
0.95. The machine is shared, so the time targets are judged on CPU seconds
(wall seconds are printed next to them).

``python benchmarks/bench_mnn.py --embedding [--emb-sizes 100000 300000 1000000] [--batches 2 8]
[--methods mnn harmony scanorama harmony010] [--timeout 1800] [--json-out rows.jsonl]``

``harmony010`` is harmonypy 0.0.10 (pure numpy) in its own interpreter
(``--harmony010-python``, e.g. ``python -m venv /tmp/h010 && /tmp/h010/bin/pip install
harmonypy==0.0.10 numpy pandas scikit-learn``): harmonypy 2.1.0 at its defaults barely corrects
the simulation's shift, for two reasons that differ by data. Here it is the ridge penalty:
``lamb=None`` estimates lambda per batch (``alpha=0.2``) where 0.0.10 fixed it at 1;
``harmony_lamb1`` is 2.1.0 with ``lamb=1`` (iLISI 0.662 at 100k cells, 2 batches, against 0.000),
while 0.0.10's tolerance ``epsilon_harmony=1e-4`` changes nothing (9 and 10 rounds, iLISI 0.000
both). On the chapter's cellbench_3cl PCs it is the stopping rule: 2.1.0's
``epsilon_harmony=1e-2`` ends after one round (iLISI 0.037; 0.547 with 1e-4, 0.829 with 1e-4 and
``lamb=1``; 0.851 for 0.0.10). Times are wall and CPU (user + system) seconds of the method's call in its
one-thread worker; on a shared machine the targets are judged on CPU time.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
import tracemalloc

if __name__ == "__main__":  # one thread when run as a script; never when a test imports it
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ.setdefault(_var, "1")

SIZES = ["joined", 1000, 5000, 20000, 50000]
ZHENG = {"CD19+ B": "B", "CD56+ NK": "NK", "CD14+ Monocyte": "Monocyte",
         "CD8+ Cytotoxic T": "CD8 T", "CD8+/CD45RA+ Naive Cytotoxic": "CD8 T",
         "CD4+ T Helper2": "CD4 T", "CD4+/CD45RO+ Memory": "CD4 T",
         "CD4+/CD25 T Reg": "CD4 T", "CD4+/CD45RA+/CD25- Naive T": "CD4 T"}
PBMC4K = {"B": "B", "NK": "NK", "MNP": "Monocyte", "T_CD4": "CD4 T", "T_CD8": "CD8 T"}


def load_pbmc(n_hvg=2000):
    """Joined PBMC counts on HVGs: (csr counts n × n_hvg, size factors, batch labels).

    HVGs are chosen on log1p of total-count-normalised values (all shared
    genes, ``batch_key``); size factors are each cell's total count over all
    shared genes divided by the median total, so ``log1p(counts / sf)`` is
    scanpy's ``normalize_total`` + ``log1p`` restricted to the HVGs.
    """
    import numpy as np
    import scanpy as sc
    import scipy.sparse as sp

    from scnotes.datasets import load

    parts, batches = [], []
    genes = None
    loaded = []
    for name, col, mapping in (("pbmc_facs_zheng2017", "cell_type", ZHENG),
                               ("pbmc4k_10x_soupx", "annotation", PBMC4K)):
        a = load(name)
        a = a[:, ~a.var["gene_symbol"].duplicated(keep=False).to_numpy()]
        a = a[a.obs[col].map(mapping).notna().to_numpy()].copy()
        a.var_names = a.var["gene_symbol"].astype(str).to_numpy()
        loaded.append((name, a))
        genes = a.var_names if genes is None else genes.intersection(a.var_names)
    for name, a in loaded:
        parts.append(sp.csr_matrix(a[:, genes].X))
        batches += [name] * a.n_obs
    ad = sc.AnnData(sp.vstack(parts, format="csr").astype(np.float32))
    ad.obs["batch"] = batches
    sc.pp.filter_genes(ad, min_cells=3)
    ad.layers["counts"] = ad.X.copy()
    totals = np.asarray(ad.X.sum(1)).ravel()
    sc.pp.normalize_total(ad)
    sc.pp.log1p(ad)
    sc.pp.highly_variable_genes(ad, n_top_genes=n_hvg, batch_key="batch")
    c = sp.csr_matrix(ad.layers["counts"][:, ad.var["highly_variable"].to_numpy()], dtype=np.float64)
    keep = np.asarray(c.sum(1)).ravel() > 0
    sf = totals / np.median(totals)
    return c[keep], sf[keep], np.asarray(ad.obs["batch"])[keep]


def lognorm(counts, sf):
    """log1p(counts / size factor), sparse."""
    import scipy.sparse as sp

    import numpy as np

    x = sp.csr_matrix(sp.diags(1.0 / sf) @ counts)
    x.data = np.log1p(x.data)
    return x


def neighbourhood_profiles(counts, sf, batch, k=5, n_pcs=50, seed=0):
    """Each cell's expected normalised counts: the mean of it and its ``k`` nearest cells of its batch.

    Neighbours in 50 PCs of the log-expression; returns a CSR n × genes
    matrix of ``counts / sf`` averaged over the k + 1 cells.
    """
    import numpy as np
    import scipy.sparse as sp
    from sklearn.neighbors import NearestNeighbors
    from sklearn.utils.extmath import randomized_svd

    u, d, _ = randomized_svd(lognorm(counts, sf), n_pcs, random_state=seed)
    pcs = u * d
    rows, cols = [], []
    for lab in np.unique(batch):
        cells = np.flatnonzero(batch == lab)
        nn = NearestNeighbors(n_neighbors=min(k + 1, cells.size)).fit(pcs[cells])
        idx = nn.kneighbors(pcs[cells], return_distance=False)
        rows.append(np.repeat(cells, idx.shape[1]))
        cols.append(cells[idx].ravel())
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    w = sp.csr_matrix((np.full(rows.size, 1.0 / (k + 1)), (rows, cols)), shape=(counts.shape[0],) * 2)
    return sp.csr_matrix(w @ (sp.diags(1.0 / sf) @ counts))


def resize(counts, sf, batch, n, seed=0, replicate="poisson"):
    """Log-expression of ``n`` cells: a subsample (n ≤ cells), or all cells plus replicas.

    ``replicate="poisson"`` (default): a replica of cell c is a new cell of
    the same state and depth, counts ~ Poisson(sf_c · μ_c), with μ_c the
    mean normalised profile of c and its 5 nearest cells in its batch
    (:func:`neighbourhood_profiles`). Its detected genes, depth and noise are
    those of a real cell, and two replicas of c differ as two cells of one
    state do. (Resampling c's own counts instead would drop ~40 % of its
    detected genes, since most non-zero UMI counts are 1.)
    ``"jitter"``: c's values times (1 + 0.05 ε) on its non-zeros; replicas
    are then near-duplicates, which makes ties among neighbours (up to ~20
    copies of a cell at 100k cells). Replicas keep their cell's batch; rows
    come sorted by batch.
    """
    import numpy as np
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    if n <= counts.shape[0]:
        idx = np.sort(rng.choice(counts.shape[0], n, replace=False))
        return lognorm(counts[idx], sf[idx]), batch[idx]
    extra = rng.choice(counts.shape[0], n - counts.shape[0])
    if replicate == "poisson":
        mu = sp.csr_matrix(sp.diags(sf[extra]) @ neighbourhood_profiles(counts, sf, batch)[extra])
        mu.data = rng.poisson(mu.data).astype(np.float64)
        mu.eliminate_zeros()
        c = sp.vstack([counts, mu], format="csr")
    else:
        c = sp.vstack([counts, counts[extra]], format="csr")
    idx = np.concatenate([np.arange(counts.shape[0]), extra])
    x = lognorm(c, sf[idx])
    if replicate != "poisson":
        rows = np.repeat(np.arange(x.shape[0]) >= counts.shape[0], np.diff(x.indptr))
        x.data = np.where(rows, x.data * (1.0 + 0.05 * rng.standard_normal(x.data.size)), x.data)
    order = np.argsort(batch[idx], kind="stable")
    x, b = x[order], batch[idx][order]
    keep = np.asarray(x.sum(1)).ravel() > 0
    return x[keep], b[keep]


def truncation_error(x, b, step, n_neighbors=30, n_cells=1000, seed=0):
    """Relative change of the correction vectors when the kernel keeps only the nearest MNN cells.

    Uses the exact run's MNN pairs; the full and the truncated kernel are
    evaluated on the MNN cells plus ``n_cells`` random cells of the corrected
    batch. Returns (median, max) over those cells of ‖Δ‖ / ‖full‖.
    """
    import numpy as np
    import scipy.sparse as sp

    from scnotes.mnn import average_pair_vectors, cosine_normalize, smooth_gaussian_kernel

    lc = np.flatnonzero(np.isin(b, step.left))
    rc = np.flatnonzero(np.isin(b, step.right))
    left, _ = cosine_normalize(x[lc])
    right, _ = cosine_normalize(x[rc])
    first, second = np.searchsorted(lc, step.left_cells), np.searchsorted(rc, step.right_cells)
    averaged, mnn_cells = average_pair_vectors(left, right, first, second)
    rng = np.random.default_rng(seed)
    sub = rng.choice(right.shape[0], min(n_cells, right.shape[0]), replace=False)
    # MNN cells first (so the densities are those of the whole batch), then the sample.
    data = sp.vstack([right[mnn_cells], right[sub]], format="csr")
    m = np.arange(len(mnn_cells))
    full = smooth_gaussian_kernel(averaged, m, data)[len(m):]
    trunc = smooth_gaussian_kernel(averaged, m, data, n_neighbors=n_neighbors)[len(m):]
    rel = np.linalg.norm(trunc - full, axis=1) / np.maximum(np.linalg.norm(full, axis=1), 1e-12)
    return float(np.median(rel)), float(rel.max())


def search_times(x, b, k=20):
    """Seconds of the MNN search alone: exact two-pass, approximate, and exact both directions in full."""
    import numpy as np

    from scnotes.mnn import cosine_normalize, find_mutual_nn, knn_query

    cats = np.unique(b)
    left, _ = cosine_normalize(x[b == cats[0]])
    right, _ = cosine_normalize(x[b == cats[1]])
    out = {}
    for key, f in (("search_exact_s", lambda: find_mutual_nn(left, right, k, backend="exact")),
                   ("search_approx_s", lambda: find_mutual_nn(left, right, k, backend="pynndescent")),
                   ("search_full_s", lambda: (knn_query(right, left, k), knn_query(left, right, k)))):
        t = time.perf_counter()
        f()
        out[key] = time.perf_counter() - t
    return out


def measure(f):
    gc.collect()
    tracemalloc.start()
    tracemalloc.reset_peak()
    t = time.perf_counter()
    out = f()
    dt = time.perf_counter() - t
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return out, dt, peak / 2 ** 20


def worker(sizes, budget, replicate="poisson"):
    import numpy as np
    import scanpy as sc

    from scnotes.mnn import mnn_correct, pair_recall

    t0 = time.time()
    c0, sf0, b0 = load_pbmc()
    t1 = time.time()
    # Warm-up: numba compilation of pynndescent and of the re-ranking kernel,
    # once per process, kept out of the timed runs.
    xw, bw = resize(c0, sf0, b0, 600)
    mnn_correct(xw, bw, var_adj=False, backend="pynndescent")
    print(json.dumps({"info": f"loaded {c0.shape[0]} cells x {c0.shape[1]} HVGs in {t1 - t0:.0f} s; "
                      f"numba compilation (warm-up, not timed below) {time.time() - t1:.0f} s"}),
          flush=True)
    for size in sizes:
        n = c0.shape[0] if size == "joined" else int(size)
        x, b = resize(c0, sf0, b0, n, replicate=replicate)
        row = {"size": str(size), "cells": n}
        common = dict(var_adj=False, dtype=np.float32)
        approx, row["approx_s"], row["approx_mb"] = measure(
            lambda: mnn_correct(x, b, backend="pynndescent", **common))
        if time.time() - t0 > budget:
            row["note"] = "exact skipped (time budget)"
        else:
            exact, row["exact_s"], row["exact_mb"] = measure(
                lambda: mnn_correct(x, b, backend="exact", **common))
            e, a = exact.steps[0], approx.steps[0]
            row["pairs_exact"] = e.n_pairs
            row["recall"] = pair_recall((a.left_cells, a.right_cells), (e.left_cells, e.right_cells))
            row["max_abs_diff"] = float(np.abs(exact.corrected - approx.corrected).max())
            row["speedup"] = row["exact_s"] / row["approx_s"]
            row["trunc_median"], row["trunc_max"] = truncation_error(x, b, e)
            del exact
            row.update(search_times(x, b))
        del approx
        ad = sc.AnnData(x.astype(np.float32))
        ad.obs["batch"] = b
        ad.obsm["X_pca"] = sc.pp.pca(ad.X, n_comps=50, random_state=0)
        _, row["harmony_s"], row["harmony_mb"] = measure(
            lambda: sc.external.pp.harmony_integrate(ad, "batch", random_state=0, verbose=False))
        _, row["scanorama_s"], row["scanorama_mb"] = measure(
            lambda: sc.external.pp.scanorama_integrate(ad, "batch", verbose=0))
        print(json.dumps(row), flush=True)


def fmt(r):
    def g(k, f="{:.1f}"):
        return f.format(r[k]) if k in r else "-"
    return (f"{r['size']:>7} {r['cells']:>6} cells | exact {g('exact_s'):>6} s {g('exact_mb', '{:.0f}'):>5} MB"
            f" | approx {g('approx_s'):>6} s {g('approx_mb', '{:.0f}'):>5} MB | speedup {g('speedup'):>5}x"
            f" | recall {g('recall', '{:.3f}'):>5} | max|diff| {g('max_abs_diff', '{:.1e}'):>7}"
            f" | trunc30 rel med {g('trunc_median', '{:.2f}'):>4} max {g('trunc_max', '{:.2f}'):>4}"
            f" | search exact {g('search_exact_s'):>5} s approx {g('search_approx_s'):>5} s"
            f" both-full {g('search_full_s'):>5} s"
            f" | harmony {g('harmony_s'):>5} s {g('harmony_mb', '{:.0f}'):>4} MB"
            f" | scanorama {g('scanorama_s'):>5} s {g('scanorama_mb', '{:.0f}'):>4} MB"
            + (f" | {r['note']}" if "note" in r else ""))


def simulate_embedding(n_cells, n_batches=2, n_dims=50, n_types=10, shift=6.0, seed=0,
                       effect_dims=10, aligned=False):
    """A cells × n_dims float32 embedding with known labels and a strong batch effect.

    Type centres ~ N(0, 16 s_j²) and cell noise ~ N(0, s_j²) in dimension
    ``j`` with ``s_j = (1 + j)^(-1/2)`` (a decaying, PC-like spectrum); each
    batch has its own type composition (Dirichlet(5)), a shift of norm
    ``shift`` (per type, batches end up ~4 within-type radii apart, about 3×
    the two-batch real sets of the MNN chapter) in a random direction drawn
    isotropically in all ``n_dims`` dimensions, and a type-specific shift (sd
    0.5 s_j) in the top ``effect_dims`` dimensions.

    ``aligned=True`` is the earlier model, kept as a stress case: the batch
    shift drawn in the top ``effect_dims`` dimensions and scaled by ``s_j``,
    i.e. lying entirely in the dimensions of largest within-type variance
    (there 7.9× the mean per-dimension within-type variance along the batch
    vector). The real sets measure 0.45× (cellbench 3 lines) and 1.08× (PBMC
    joined), the isotropic default 1.5×. MNN's premise (Haghverdi et al. 2018)
    is a batch effect almost orthogonal to the biological variation; with the
    aligned shift the mutual pairs are the extreme tail cells, whose pair
    vectors are shrunk most along the high-variance dimensions, and the
    correction leaves ~25 % of the per-type batch distance (iLISI 0.01 at 20k
    cells, against 0.27 for the isotropic direction at the same norm).
    Returns (x, batch codes, labels).
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    scale = ((1.0 + np.arange(n_dims)) ** -0.5).astype(np.float32)
    centres = (rng.normal(size=(n_types, n_dims)) * 4.0 * scale).astype(np.float32)
    batch = rng.integers(0, n_batches, n_cells)
    comp = rng.dirichlet(np.full(n_types, 5.0), size=n_batches)
    labels = np.empty(n_cells, dtype=np.int64)
    for b in range(n_batches):
        sel = np.flatnonzero(batch == b)
        labels[sel] = rng.choice(n_types, sel.size, p=comp[b])
    where = scale * (np.arange(n_dims) < effect_dims)
    bshift = rng.normal(size=(n_batches, n_dims)) * (where if aligned else 1.0)
    bshift *= shift / np.linalg.norm(bshift, axis=1, keepdims=True)
    tshift = rng.normal(size=(n_batches, n_types, n_dims)) * 0.5 * where
    offset = (centres[None, :, :] + bshift[:, None, :] + tshift).astype(np.float32)
    x = rng.standard_normal(size=(n_cells, n_dims), dtype=np.float32)
    x *= scale
    x += offset[batch, labels]
    return x, batch, labels


#: Cells sampled for the exact-pair recall at every size (2,000 held only 48 exact pairs at 1M
#: cells in 2 batches: neighbour lists are hub-dominated, most cells are in no pair).
N_RECALL_SAMPLE = 10000


def sampled_pair_recall(d1, d2, pairs, k=20, n_sample=1000, seed=0):
    """Recall of the exact MNN pairs that involve ``n_sample`` random cells of ``d1``.

    Exact (brute-force) search only from the sampled cells and back from the
    cells they reach, so it stays affordable at 10^6 cells where the exact
    search of every pair is not: a pair (i, j) is exact if j is among the
    ``k`` nearest ``d2`` cells of i and i among the ``k`` nearest ``d1``
    cells of j. Returns (recall, number of exact pairs of the sample).
    """
    import numpy as np

    from scnotes.mnn import knn_query

    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(d1.shape[0], min(n_sample, d1.shape[0]), replace=False))
    fwd, _ = knn_query(d2, d1[sample], k, backend="exact")
    reached = np.unique(fwd)
    back, _ = knn_query(d1, d2[reached], k, backend="exact")
    back_sets = {int(j): set(row.tolist()) for j, row in zip(reached, back)}
    exact = {(int(i), int(j)) for i, row in zip(sample, fwd) for j in row if int(i) in back_sets[int(j)]}
    first, second = (np.asarray(a) for a in pairs)
    keep = np.isin(first, sample)
    found = set(zip(first[keep].tolist(), second[keep].tolist()))
    return (len(exact & found) / len(exact) if exact else 1.0), len(exact)


def _rss_mb():
    """Peak RSS of this process in MB (``VmHWM``; see ``_procstatus.status_gb``)."""
    from _procstatus import status_gb  # the workers run as scripts, with benchmarks/ on sys.path

    return status_gb("VmHWM") * 1024


def _cpu_s(who=None):
    """User + system CPU seconds of this process (or of its finished children)."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF if who is None else resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


#: harmonypy 0.0.10 (pure numpy) runs in its own interpreter (``--harmony010-python``):
#: reads x and batch codes from an .npz, writes Z_corr (cells × d) and its own timings.
HARMONY010 = r"""
import json, resource, sys, time
import numpy as np, pandas as pd, harmonypy
d = np.load(sys.argv[1])
x, b = d["x"], d["b"]
r0 = resource.getrusage(resource.RUSAGE_SELF)
t = time.perf_counter()
ho = harmonypy.run_harmony(x.astype(np.float64), pd.DataFrame({"batch": b.astype(str)}), ["batch"],
                           random_state=0, verbose=False)
sec = time.perf_counter() - t
r1 = resource.getrusage(resource.RUSAGE_SELF)
z = np.asarray(ho.Z_corr)
np.save(sys.argv[2], (z if z.shape == x.shape else z.T).astype(np.float32))
print(json.dumps({"seconds": sec, "cpu_s": r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime,
                  "rss_mb": r1.ru_maxrss / 1024, "version": harmonypy.__version__}))
"""


class _LastSearch:
    """Wraps the merge's MNN search; saves the inputs and pairs of its largest call to ``path``.

    With a linear merge order the largest call is the last step: the whole
    merged (corrected) reference against the last batch, the hardest search.
    Saving streams the arrays to disk (no copy in memory); the seconds spent
    saving are counted apart and taken out of the method's time.
    """

    def __init__(self, func, path):
        self.func, self.path, self.size, self.wall_s, self.cpu_s = func, path, -1, 0.0, 0.0

    def __call__(self, d1, d2, *args, **kwargs):
        import numpy as np

        pairs = self.func(d1, d2, *args, **kwargs)
        if d1.shape[0] + d2.shape[0] > self.size:
            t, c = time.perf_counter(), _cpu_s()
            self.size = d1.shape[0] + d2.shape[0]
            np.savez(self.path, d1=d1, d2=d2, first=pairs[0], second=pairs[1])
            self.wall_s += time.perf_counter() - t
            self.cpu_s += _cpu_s() - c
        return pairs


def emb_worker(method, n, n_batches, recall=False, n_sub=20000, backend="faiss", shift=6.0,
               aligned=False, harmony010_python=None, threads=1):
    """One method on one simulated embedding; prints one JSON row.

    ``seconds``/``cpu_s``: wall and CPU (user + system) time of the method's
    call alone; ``rss_mb``: peak RSS of the process (input included; for
    ``harmony010`` that of its own interpreter, which loads the input too).
    ``threads``: MNN's ``n_jobs`` (its FAISS searches), Harmony's ``ncores``.
    """
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import tempfile

    import numpy as np

    from scnotes import metrics

    row = {"method": method, "cells": n, "batches": n_batches}
    if method == "mnn":
        from scnotes.mnn import fastmnn_correct

        xw, bw, _ = simulate_embedding(5000, 2, seed=1)
        t = time.perf_counter()
        fastmnn_correct(xw, bw, backend=backend)
        row["warmup_s"] = time.perf_counter() - t
        del xw, bw
    x, b, lab = simulate_embedding(n, n_batches, shift=shift, aligned=aligned)
    gc.collect()
    row["data_mb"] = _rss_mb()
    c0 = _cpu_s()
    t = time.perf_counter()
    if method == "mnn":
        import cProfile
        import pstats

        import scnotes.mnn._merge as merge_mod

        prof = cProfile.Profile(time.process_time)  # CPU seconds; a few hundred Python calls
        tmpdir = tempfile.mkdtemp()
        last = _LastSearch(merge_mod.find_mutual_nn, os.path.join(tmpdir, "last.npz"))
        merge_mod.find_mutual_nn = last
        try:
            res = prof.runcall(fastmnn_correct, x, b, backend=backend, n_jobs=threads)
        finally:
            merge_mod.find_mutual_nn = last.func
        z = res.corrected
        st = pstats.Stats(prof).stats
        wanted = {"find_mutual_nn": "mnn_pairs", "tricube_weighted_correction": "smoothing",
                  "average_pair_vectors": "pair_vectors", "center_along_batch_vector": "centring",
                  "_faiss_knn": "faiss_all", "replacement_train": "faiss_train",
                  "replacement_add": "faiss_add", "replacement_search": "faiss_search",
                  "stack_rows": "stacking", "run_merges": "merges_total"}
        row["profile_cpu_s"] = {}
        for (_, _, fn), (_, _, _, cum, _) in st.items():
            if fn in wanted:
                key = wanted[fn]
                row["profile_cpu_s"][key] = row["profile_cpu_s"].get(key, 0.0) + cum
    elif method in ("harmony", "harmony_lamb1"):
        import logging

        import harmonypy
        import pandas as pd

        logging.getLogger("harmonypy").setLevel(logging.WARNING)
        # harmonypy 2.x estimates the ridge penalty lambda by default (lamb=None, alpha=0.2);
        # 0.0.10 fixed it at 1. "harmony_lamb1" is 2.x with lamb=1.
        extra = {"lamb": 1.0} if method == "harmony_lamb1" else {}
        ho = harmonypy.run_harmony(x, pd.DataFrame({"batch": b.astype(str)}), "batch",
                                   random_state=0, verbose=False, ncores=threads, **extra)
        z = np.asarray(ho.Z_corr)
        z = z if z.shape == x.shape else z.T
    elif method == "harmony010":
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            np.savez(os.path.join(tmp, "in.npz"), x=x, b=b)
            env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
            p = subprocess.run([harmony010_python, "-c", HARMONY010, os.path.join(tmp, "in.npz"),
                                os.path.join(tmp, "z.npy")], stdout=subprocess.PIPE, text=True,
                               env=env, check=True)
            z = np.load(os.path.join(tmp, "z.npy"))
        child = json.loads(p.stdout.strip().splitlines()[-1])
    elif method == "scanorama":
        import scanorama

        order = np.argsort(b, kind="stable")
        parts = [x[order][b[order] == i] for i in range(n_batches)]
        out = scanorama.assemble(parts, ds_names=[str(i) for i in range(n_batches)], verbose=0)
        z = np.empty_like(x)
        z[order] = np.vstack(out)
    row["seconds"] = time.perf_counter() - t
    row["cpu_s"] = _cpu_s() - c0
    row["rss_mb"] = _rss_mb()
    row["threads"] = threads
    if method == "mnn":  # the benchmark's own saving of the last search's inputs is not MNN's time
        row["seconds"] -= last.wall_s
        row["cpu_s"] -= last.cpu_s
        row["saving_s"] = last.wall_s
    if method == "harmony010":
        row.update(seconds=child["seconds"], cpu_s=child["cpu_s"], rss_mb=child["rss_mb"])
    if method == "mnn":
        from scnotes.mnn import find_mutual_nn, pair_recall

        # Pairs of the first merge step, the one searched on the uncorrected input (later steps
        # search the corrected data); with 2 batches its reference is half of the cells.
        st = res.steps[0]
        lc = np.flatnonzero(np.isin(b, st.left))
        rc = np.flatnonzero(np.isin(b, st.right))
        pairs = (np.searchsorted(lc, st.left_cells), np.searchsorted(rc, st.right_cells))
        t = time.perf_counter()
        row["sampled_recall"], row["sampled_pairs"] = sampled_pair_recall(x[lc], x[rc], pairs,
                                                                          n_sample=N_RECALL_SAMPLE)
        row["sampled_recall_s"] = time.perf_counter() - t
        if len(res.steps) > 1:  # the last step: merged reference against the last batch
            z_last = np.load(last.path)
            # Sample the smaller side (the new batch): a sample of the large reference
            # would mostly hold cells in no pair.
            row["last_recall"], row["last_pairs"] = sampled_pair_recall(
                z_last["d2"], z_last["d1"], (z_last["second"], z_last["first"]), n_sample=N_RECALL_SAMPLE)
            row["last_ref_cells"] = int(z_last["d1"].shape[0])
            del z_last
        os.remove(last.path)
        os.rmdir(tmpdir)
        if recall:
            f, s_ = find_mutual_nn(x[lc], x[rc], 20)
            row["pairs_exact"] = int(len(f))
            row["recall"] = pair_recall(pairs, (f, s_))
    sub = np.random.default_rng(0).choice(n, min(n_sub, n), replace=False)
    for name, zz in (("uncorrected", x), (method, z)):
        knn = metrics.knn_graph(np.asarray(zz[sub], dtype=np.float64), n_neighbors=90)
        key = "" if name == method else "unc_"
        row[key + "ilisi"] = metrics.ilisi_score(b[sub], knn=knn)
        row[key + "clisi"] = metrics.clisi_score(lab[sub], knn=knn)
    print(json.dumps(row), flush=True)


def emb_fmt(r):
    def g(k, f="{:.1f}"):
        return f.format(r[k]) if k in r and r[k] is not None else "-"
    return (f"{r['cells']:>8} {r['batches']:>2} {r['method']:>10} | {g('seconds'):>7} s wall "
            f"{g('cpu_s'):>7} s CPU (warm-up {g('warmup_s', '{:.0f}'):>4} s) | peak RSS "
            f"{g('rss_mb', '{:.0f}'):>6} MB (data {g('data_mb', '{:.0f}'):>5}) | recall "
            f"{g('recall', '{:.3f}'):>5} sampled {g('sampled_recall', '{:.3f}'):>5} last step "
            f"{g('last_recall', '{:.3f}'):>5} | iLISI {g('ilisi', '{:.3f}')} cLISI {g('clisi', '{:.3f}')} "
            f"(uncorrected {g('unc_ilisi', '{:.3f}')} / {g('unc_clisi', '{:.3f}')})"
            + (f" | {r['note']}" if "note" in r else ""))


def emb_summary(rows):
    """Lines of the targets of issue 16, judged on CPU time (wall time alongside: shared machine)."""
    lines = []
    for n in sorted({r["cells"] for r in rows}):
        for nb in sorted({r["batches"] for r in rows}):
            by = {r["method"]: r for r in rows if r["cells"] == n and r["batches"] == nb}
            m, h = by.get("mnn", {}), by.get("harmony", {})
            if not m:
                continue
            parts = [f"{n:>8} cells, {nb} batches:"]
            if "cpu_s" in m and "cpu_s" in h:
                ratio = m["cpu_s"] / h["cpu_s"]
                parts.append(f"MNN/Harmony CPU {ratio:.2f}x, wall {m['seconds'] / h['seconds']:.2f}x "
                             f"(target <= 10 on CPU: {'met' if ratio <= 10 else 'missed'})")
            if "seconds" in m and n >= 1000000:
                ok = m["cpu_s"] <= 600 and m["rss_mb"] <= 8192
                parts.append(f"MNN {m['cpu_s']:.0f} s CPU / {m['seconds']:.0f} s wall (target <= 600), "
                             f"{m['rss_mb'] / 1024:.2f} GB (target <= 8): {'met' if ok else 'missed'}")
            rec = [m[k] for k in ("recall", "sampled_recall", "last_recall") if k in m]
            if rec:
                parts.append(f"recall {min(rec):.3f} (the lowest of full / sampled first step / "
                             "sampled last step) "
                             f"(target >= 0.95: {'met' if min(rec) >= 0.95 else 'missed'})")
            if "ilisi" in m and "ilisi" in h:
                ok = m["ilisi"] > h["ilisi"] and m["clisi"] >= h["clisi"] - 0.005
                parts.append(f"iLISI MNN {m['ilisi']:.3f} vs Harmony {h['ilisi']:.3f}, cLISI "
                             f"{m['clisi']:.3f} vs {h['clisi']:.3f} (target higher / no lower: "
                             f"{'met' if ok else 'missed'})")
            lines.append("  ".join(parts))
    return lines


def emb_main(args):
    rows = []
    print(f"{'cells':>8} {'B':>2} {'method':>10} | wall, CPU of the call | peak RSS | recall vs exact | "
          "iLISI, cLISI (subsample of 20k, [0, 1], higher better)", flush=True)
    for n in [int(v) for v in args.emb_sizes]:
        for nb in [int(v) for v in args.batches]:
            for m in args.methods:
                cmd = [sys.executable, __file__, "--emb-worker", m, str(n), str(nb),
                       "--shift", str(args.shift), "--threads", str(args.threads)]
                if args.aligned:
                    cmd.append("--aligned")
                if m == "harmony010":
                    cmd += ["--harmony010-python", args.harmony010_python]
                if n in [int(v) for v in args.recall_sizes]:
                    cmd.append("--recall")
                c0, t0 = _cpu_s("children"), time.perf_counter()
                limit = None
                if m in args.mem_limited and args.mem_limit_gb:
                    def limit(gb=args.mem_limit_gb):  # address space: a runaway method fails alone
                        import resource
                        resource.setrlimit(resource.RLIMIT_AS, (int(gb * 2 ** 30),) * 2)
                try:
                    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                       timeout=args.timeout, preexec_fn=limit)
                    if p.returncode == 0:
                        r = json.loads(p.stdout.strip().splitlines()[-1])
                    else:
                        err = (p.stderr.strip().splitlines() or [""])[-1][:160]
                        r = {"method": m, "cells": n, "batches": nb,
                             "note": f"failed (exit {p.returncode}): {err}"}
                except subprocess.TimeoutExpired:
                    r = {"method": m, "cells": n, "batches": nb,
                         "note": f"over the {args.timeout:.0f} s timeout (whole worker: simulation, "
                                 "method, metrics)"}
                r["worker_wall_s"] = time.perf_counter() - t0
                r["worker_cpu_s"] = _cpu_s("children") - c0   # 0 for a killed worker (never reaped)
                rows.append(r)
                print(emb_fmt(r), flush=True)
                if args.json_out:
                    with open(args.json_out, "a") as fh:
                        fh.write(json.dumps(r) + "\n")
    print("\nagainst the targets (CPU time: the machine is shared, so wall time includes others' load):")
    for line in emb_summary(rows):
        print(line, flush=True)
    prof = [r for r in rows if "profile_cpu_s" in r]
    if prof:
        print("\nwhere MNN's CPU seconds go (cProfile, cumulative: faiss_* are inside mnn_pairs and "
              "smoothing):")
        for r in prof:
            print(f"{r['cells']:>8} cells, {r['batches']} batches: " + ", ".join(
                f"{k} {v:.1f}" for k, v in sorted(r["profile_cpu_s"].items(), key=lambda kv: -kv[1])),
                flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", default=[str(s) for s in SIZES])
    p.add_argument("--budget", type=float, default=480.0,
                   help="seconds after which exact runs are skipped")
    p.add_argument("--replicate", choices=["poisson", "jitter"], default="poisson",
                   help="how cells beyond the 5,323 real ones are made (see resize)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--embedding", action="store_true",
                   help="benchmark the embedding path (fastmnn_correct) against Harmony and Scanorama")
    p.add_argument("--emb-sizes", nargs="+", default=["100000", "300000", "1000000"])
    p.add_argument("--batches", nargs="+", default=["2", "8"])
    p.add_argument("--methods", nargs="+", default=["mnn", "harmony", "scanorama"])
    p.add_argument("--recall-sizes", nargs="+", default=["100000"])
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per method and size")
    p.add_argument("--emb-worker", nargs=3, help=argparse.SUPPRESS)
    p.add_argument("--recall", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1,
                   help="threads of every method (MNN's n_jobs, Harmony's ncores); default 1")
    p.add_argument("--shift", type=float, default=6.0, help="batch shift norm (simulate_embedding)")
    p.add_argument("--aligned", action="store_true",
                   help="batch shift in the top-variance dimensions (stress case, see simulate_embedding)")
    p.add_argument("--harmony010-python", default="/tmp/h010/bin/python",
                   help="interpreter with harmonypy 0.0.10 for the method harmony010")
    p.add_argument("--json-out", help="append each row as JSON to this file")
    p.add_argument("--mem-limit-gb", type=float, default=12.0,
                   help="address-space limit of the workers of --mem-limited methods (0: none)")
    p.add_argument("--mem-limited", nargs="*", default=["scanorama", "harmony010"],
                   help="methods whose worker runs under --mem-limit-gb (shared machine)")
    args = p.parse_args(argv)
    if args.emb_worker:
        m, n, nb = args.emb_worker
        emb_worker(m, int(n), int(nb), recall=args.recall, shift=args.shift, aligned=args.aligned,
                   harmony010_python=args.harmony010_python, threads=args.threads)
        return
    if args.embedding:
        emb_main(args)
        return
    if args.worker:
        worker(args.sizes, args.budget, args.replicate)
        return
    t = time.time()
    proc = subprocess.Popen([sys.executable, __file__, "--worker", "--budget", str(args.budget),
                             "--replicate", args.replicate, "--sizes", *args.sizes], stdout=subprocess.PIPE, text=True)
    rows = []
    for line in proc.stdout:
        r = json.loads(line)
        if "info" in r:
            print(r["info"], flush=True)
            continue
        rows.append(r)
        print(fmt(r), flush=True)
    proc.wait()
    if proc.returncode:
        sys.exit(proc.returncode)
    big = [r for r in rows if "speedup" in r]
    if big:
        r = big[-1]
        print(f"summary: at {r['cells']} cells exact/approximate wall-time ratio {r['speedup']:.2f} "
              f"(target >= 5; search alone {r['search_exact_s'] / r['search_approx_s']:.2f}, "
              f"against a both-directions exact search {r['search_full_s'] / r['search_approx_s']:.2f}), "
              f"approximate pair recall {r['recall']:.3f} (target >= 0.95); total {time.time() - t:.0f} s")


if __name__ == "__main__":
    main()
