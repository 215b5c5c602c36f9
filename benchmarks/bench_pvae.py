"""PVAE training speed on real sparse counts: seconds per epoch.

Data: ``pbmc_facs_zheng2017`` (3,874 cells), genes detected in ≥ 1% of cells,
kept as CSR (each minibatch of 128 cells densified on its own). PVAE with
latent 10, hidden 128, 10 Monte Carlo samples, RMSprop lr 1e-2, size factors
= total counts. The first epoch is a warm-up and not timed.

    python benchmarks/bench_pvae.py [--epochs 5] [--batch-size 128] [--threads 1] [--device cpu]

Prints one summary line.

Most of the default cost on Linux is not arithmetic but page faults: glibc
returns every large freed block (here 1280 × n_genes float32 activations) to
the OS and faults it in again on the next step. Measured here, one step took
0.21 s user + 0.30 s system time by default and 0.20 s + 0.006 s with

    MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=4294967296 python benchmarks/bench_pvae.py

(or with jemalloc/tcmalloc preloaded). The summary line says whether these are set.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import scipy.sparse as sp
import torch

import scnotes
from scnotes.vae import PVAE


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="pbmc_facs_zheng2017")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--latent-dim", type=int, default=10)
    ap.add_argument("--n-samples", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    adata = scnotes.datasets.load(args.dataset)
    x = sp.csr_matrix(adata.X)
    detected = np.asarray((x > 0).mean(axis=0)).ravel() >= 0.01
    x = x[:, detected]
    x = x[np.asarray(x.sum(axis=1)).ravel() > 0]

    m = PVAE(x.shape[1], latent_dim=args.latent_dim, seed=0, device=args.device)
    m.fit(x, max_epochs=1, batch_size=args.batch_size, n_samples=args.n_samples, progress=False)
    t0 = time.perf_counter()
    m.fit(x, max_epochs=args.epochs, batch_size=args.batch_size, n_samples=args.n_samples,
          progress=False)
    per_epoch = (time.perf_counter() - t0) / args.epochs
    print(f"bench_pvae: {args.dataset} {x.shape[0]} cells x {x.shape[1]} genes (sparse, "
          f"density {x.nnz / np.prod(x.shape):.3f}), batch {args.batch_size}, latent "
          f"{args.latent_dim}, {args.n_samples} samples, device {args.device}, "
          f"{args.threads} thread(s): {per_epoch:.2f} s/epoch over {args.epochs} epochs "
          f"(final -ELBO/cell {m.trace_[-1] / x.shape[0]:.1f}; malloc tuned: "
          f"{'MALLOC_MMAP_THRESHOLD_' in os.environ})")


if __name__ == "__main__":
    main()
