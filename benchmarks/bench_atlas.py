"""Atlas scale: one PVAE epoch from memory and from a backed .h5ad, 10^5–10^6 cells.

For each size a simulated sparse count matrix (low-rank Gamma-Poisson, depth
and sparsity like 10x data: about 87 % zeros, 2,000 genes) is written to
``--out-dir`` (default a temporary directory, never the repository) in chunks
of rows, so it is never dense and never whole in memory while written. Then,
each in a fresh process so that peak memory is its own:

* PVAE (latent 10, batch 128, one Monte Carlo sample) trains one epoch on the
  matrix read into memory (CSR) and on the same file opened with
  ``backed="r"`` (rows of each minibatch read from disk);
* at the largest size, Poisson NMF (rank 10, 20 iterations) on the CSR matrix,
  with the CSR's own size and a dense copy's next to its peak RSS.

Prints, per size and mode, seconds per epoch (wall and process CPU, the latter
insensitive to other load) and peak RSS, next to the targets:
backed peak RSS ≤ 2 GB at 1M cells and ≤ 1.2× its value at 100k; seconds per
epoch linear in cells (1M ≤ 11 × 100k).

    python benchmarks/bench_atlas.py [--sizes 100000 300000 1000000] [--genes 2000] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _procstatus import status_gb


def write_h5ad(path: Path, n_cells: int, n_genes: int, seed: int = 0, chunk: int = 50000):
    """Low-rank Gamma-Poisson counts, written in row chunks through anndata's
    sparse-dataset append (never a dense block, never the whole matrix)."""
    import anndata as ad
    import h5py
    import pandas as pd
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    k = 5
    # Gene means log-normal with sd 2 on the log scale (a few genes take most of
    # the counts, as in 10x data), modulated by k cell programmes; NB noise of
    # shape 0.5 and ~900 counts per cell give ~87 % zeros (printed per run).
    base = rng.lognormal(0.0, 2.0, n_genes)
    factors = base * rng.gamma(1.0, 1.0, (k, n_genes))
    factors /= factors.sum(1, keepdims=True)
    first = True
    with h5py.File(path, "w") as f:
        for start in range(0, n_cells, chunk):
            m = min(chunk, n_cells - start)
            load = rng.dirichlet(np.full(k, 0.3), m)
            depth = rng.lognormal(np.log(800), 0.5, m)
            mu = (load @ factors) * depth[:, None]
            x = rng.poisson(mu * rng.gamma(0.5, 2.0, mu.shape)).astype(np.float32)
            x[np.arange(m), rng.integers(0, n_genes, m)] += 1  # no empty cells
            block = sp.csr_matrix(x)
            del x, mu
            if first:
                ad.io.write_elem(f, "X", block)
                first = False
            else:
                ad.io.sparse_dataset(f["X"]).append(block)
        ad.io.write_elem(f, "obs", pd.DataFrame(index=[f"c{i}" for i in range(n_cells)]))
        ad.io.write_elem(f, "var", pd.DataFrame(index=[f"g{j}" for j in range(n_genes)]))
        for key in ("obsm", "varm", "layers", "obsp", "varp", "uns"):
            ad.io.write_elem(f, key, {})
        f.attrs["encoding-type"] = "anndata"
        f.attrs["encoding-version"] = "0.1.0"


def _child(mode: str, path: str, threads: int):
    import anndata as ad
    import torch

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    extra = {}
    if mode == "nmf":
        from scnotes.nmf import PoissonNMF

        x = ad.read_h5ad(path).X
        extra = dict(nnz=int(x.nnz), csr_gb=(x.data.nbytes + x.indices.nbytes + x.indptr.nbytes) / 1e9,
                     dense_gb=x.shape[0] * x.shape[1] * 8 / 1e9)
        t1, c1 = time.perf_counter(), time.process_time()
        PoissonNMF(n_components=10, max_iter=20, seed=0).fit(x)
        per, cpu = (time.perf_counter() - t1) / 20, (time.process_time() - c1) / 20
    else:
        from scnotes.vae import PVAE

        a = ad.read_h5ad(path, backed="r" if mode == "backed" else None)
        # What opening the file costs before any fit (in backed mode: obs, i.e. the cell
        # names, which anndata holds in memory, ~100 MB at 1M cells).
        extra = dict(open_gb=status_gb("VmRSS"))
        x = a.X
        m = PVAE(x.shape[1], n_latent=10, seed=0)
        t1, c1 = time.perf_counter(), time.process_time()
        m.fit(x, max_epochs=1, batch_size=128, n_samples=1, progress=False)
        per, cpu = time.perf_counter() - t1, time.process_time() - c1
    rss_gb = status_gb("VmHWM")
    print(json.dumps({"seconds": per, "cpu": cpu, "rss_gb": rss_gb, "total": time.perf_counter() - t0, **extra}))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100000, 300000, 1000000])
    ap.add_argument("--genes", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 2)))
    ap.add_argument("--out-dir", default=None)
    ap.add_argument("--modes", nargs="+", default=["memory", "backed", "nmf"], choices=["memory", "backed", "nmf"])
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        return _child(a.child[0], a.child[1], a.threads)
    out = Path(a.out_dir or tempfile.mkdtemp(prefix="scnotes_atlas_"))
    out.mkdir(parents=True, exist_ok=True)
    res = {}
    for n in a.sizes:
        path = out / f"sim_{n}.h5ad"
        if not path.exists():
            t = time.perf_counter()
            part = path.with_suffix(".partial")  # renamed when complete: an interrupted write is not reused
            write_h5ad(part, n, a.genes)
            part.rename(path)
            print(f"wrote {path} ({path.stat().st_size / 1e9:.2f} GB) in {time.perf_counter() - t:.0f} s",
                  flush=True)
        import h5py

        with h5py.File(path, "r") as f:
            nnz = f["X/data"].shape[0]
        print(f"{n:>8} cells: {nnz:,} non-zeros, {100 * (1 - nnz / (n * a.genes)):.1f} % zeros", flush=True)
        modes = [m for m in a.modes if m != "nmf" or n == max(a.sizes)]
        for mode in modes:
            env = dict(os.environ)
            if mode == "backed":
                # The Makefile's MALLOC_MMAP/TRIM thresholds (faster VAE steps) stop glibc from
                # returning freed chunks, so the heap of a backed fit grows to ~3.7 GB at 1M cells
                # (0.65 GB without them, measured 2026-12-03): the memory target is for default malloc.
                for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"):
                    env.pop(k, None)
            r = subprocess.run([sys.executable, __file__, "--threads", str(a.threads), "--child", mode,
                                str(path)], capture_output=True, text=True, env=env)
            if r.returncode != 0:  # e.g. killed for memory (-9): report it and go on with the other modes
                print(f"{n:>8} cells  {mode:>6}: FAILED (exit {r.returncode}"
                      f"{', killed: out of memory?' if r.returncode in (-9, 137) else ''}) "
                      f"{r.stderr.strip().splitlines()[-1][:200] if r.stderr.strip() else ''}", flush=True)
                continue
            res[(n, mode)] = json.loads(r.stdout.strip().splitlines()[-1])
            u = "s/iteration" if mode == "nmf" else "s/epoch"
            r_ = res[(n, mode)]
            line = (f"{n:>8} cells  {mode:>6}: {r_['seconds']:8.1f} {u} (CPU {r_['cpu']:.1f} s), peak RSS "
                    f"{r_['rss_gb']:.2f} GB")
            if "open_gb" in r_:
                line += f" (after opening the file, before fitting: {r_['open_gb']:.2f} GB)"
            if mode == "nmf":
                line += (f"; the CSR itself {r_['csr_gb']:.2f} GB, a dense float64 copy would be "
                         f"{r_['dense_gb']:.1f} GB ({'not densified' if r_['rss_gb'] < r_['dense_gb'] else 'DENSIFIED?'})")
            print(line, flush=True)
    lo, hi = min(a.sizes), max(a.sizes)
    if (lo, "backed") in res and (hi, "backed") in res and hi > lo:
        b_lo, b_hi = res[(lo, "backed")], res[(hi, "backed")]
        fit_lo, fit_hi = b_lo["rss_gb"] - b_lo["open_gb"], b_hi["rss_gb"] - b_hi["open_gb"]
        print(f"targets: backed peak RSS at {hi} cells {b_hi['rss_gb']:.2f} GB (target ≤ 2 GB at 1M), "
              f"{b_hi['rss_gb'] / b_lo['rss_gb']:.2f}× its value at {lo} (target ≤ 1.2×); above the opened "
              f"file: {fit_hi:.2f} vs {fit_lo:.2f} GB ({fit_hi / fit_lo:.2f}×); "
              f"s/epoch {b_hi['seconds'] / b_lo['seconds']:.1f}× (CPU s {b_hi['cpu'] / b_lo['cpu']:.1f}×) "
              f"for {hi / lo:.0f}× the cells (target ≤ {1.1 * hi / lo:.0f}×)")


if __name__ == "__main__":
    main()
