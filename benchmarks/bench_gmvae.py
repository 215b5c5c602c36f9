"""GMVAE training speed against NBVAE: seconds per epoch, same data, sizes and batches.

Data: ``kang2018_ctrl_8donors`` (12,261 cells), the ``--n-top-genes`` seurat_v3 highly
variable genes of the counts, kept as CSR (each minibatch densified on its own), the
8 donors one-hot in the decoder. Both models: latent 10, two hidden layers of 128 in
encoder and decoder, log1p encoder input, NB likelihood with per-gene θ, size factor =
total counts, Adam lr 3e-3, minibatches of ``--batch-size``, M = 1 draw per step. The
GMVAE (K = ``--n-clusters``, w of dimension 10, prior network 10 → 128 → 2Kd) is timed
in its GMVAE phase (``pretrain_epochs=0``: the pretraining epochs cost what NBVAE's do).
Each model is fitted ``--repeats`` times, alternating, and the median of its
``fit_time_ / epochs`` is reported (a warm-up fit of one epoch each is not timed).

    python benchmarks/bench_gmvae.py [--epochs 3] [--repeats 3] [--batch-size 128] [--device cpu]

Threads: ``torch.set_num_threads`` from ``$SCNOTES_THREADS``, else ``$OMP_NUM_THREADS``,
else torch's default. Prints one summary line; target: GMVAE ≤ 1.5 × NBVAE per epoch.
See bench_pvae.py for the malloc settings (``MALLOC_MMAP_THRESHOLD_``) that matter here too.
"""
from __future__ import annotations

import argparse
import os

import numpy as np
import scipy.sparse as sp
import torch

TARGET = 1.5


def _threads():
    for var in ("SCNOTES_THREADS", "OMP_NUM_THREADS"):
        if os.environ.get(var):
            return int(os.environ[var])
    return torch.get_num_threads()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="kang2018_ctrl_8donors")
    ap.add_argument("--batch-key", default="donor")
    ap.add_argument("--n-top-genes", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--n-clusters", type=int, default=10)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    threads = _threads()
    torch.set_num_threads(threads)

    import warnings

    import scanpy as sc

    import scnotes
    from scnotes.vae import GMVAE, NBVAE

    adata = scnotes.datasets.load(args.dataset)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc.pp.highly_variable_genes(adata, n_top_genes=args.n_top_genes, flavor="seurat_v3",
                                    layer="counts", subset=True)
    x = sp.csr_matrix(adata.layers["counts"])
    keep = np.asarray(x.sum(axis=1)).ravel() > 0
    x = x[keep]
    codes = adata.obs[args.batch_key].astype("category").cat.codes.to_numpy()[keep]
    c = np.eye(codes.max() + 1)[codes]
    common = dict(n_latent=10, hidden_dim=128, n_covariates=c.shape[1], n_batches=c.shape[1],
                  encoder_input="log1p", seed=0, device=args.device)
    fit = dict(covariates=c, batch_size=args.batch_size, n_samples=1, lr=3e-3, optimizer="adam",
               progress=False)

    def nbvae(epochs):
        return NBVAE(x.shape[1], **common).fit(x, max_epochs=epochs, **fit)

    def gmvae(epochs):
        return GMVAE(x.shape[1], n_clusters=args.n_clusters, **common).fit(
            x, max_epochs=epochs, pretrain_epochs=0, **fit)

    nbvae(1), gmvae(1)  # warm-up
    times = {"nbvae": [], "gmvae": []}
    for _ in range(args.repeats):
        times["nbvae"].append(nbvae(args.epochs).fit_time_ / args.epochs)
        times["gmvae"].append(gmvae(args.epochs).fit_time_ / args.epochs)
    nb, gm = (float(np.median(times[k])) for k in ("nbvae", "gmvae"))
    ratio = gm / nb
    print(f"bench_gmvae: {args.dataset} {x.shape[0]} cells x {x.shape[1]} HVGs (sparse), "
          f"{c.shape[1]} batches, batch {args.batch_size}, device {args.device}, {threads} thread(s), "
          f"median of {args.repeats} x {args.epochs} epochs: NBVAE {nb:.2f} s/epoch, GMVAE "
          f"(K={args.n_clusters}, M=1) {gm:.2f} s/epoch; ratio {ratio:.2f} (target <= {TARGET}: "
          f"{'met' if ratio <= TARGET else 'NOT met'}; malloc tuned: "
          f"{'MALLOC_MMAP_THRESHOLD_' in os.environ})")


if __name__ == "__main__":
    main()
