"""LDVAE vs scvi-tools LinearSCVI: seconds per epoch and held-out marginal log-likelihood.

Data: the LDVAE chapter's, ``pbmc_facs_zheng2017`` (3,874 cells), 1,000 seurat_v3 highly
variable genes chosen on the counts, kept sparse. Both tools get the same cells for training
and validation (scnotes' seeded 90/10 split, passed to scvi-tools as ``external_indexing``),
minibatches of 128, Adam with lr 5e-3, n_latent 10, one hidden layer of 128 with dropout 0.1,
and the same number of epochs and torch threads (``OMP_NUM_THREADS``, default 2).

Like with like:

* validation: scnotes scores the validation cells after every epoch (eval mode); scvi-tools
  skips validation unless asked (``check_val_every_n_epoch`` defaults to never), so it is
  run with ``check_val_every_n_epoch=1``;
* objective: no KL warm-up in either (scvi-tools' ``n_epochs_kl_warmup`` defaults to 400,
  so its KL weight would still be epoch/400 at the end), and plain Adam in both
  (``weight_decay=0``, ``eps=1e-8``; scvi-tools' defaults are 1e-6 and 0.01, applied to a
  per-cell mean loss where scnotes minimises the full-data sum);
* library: ``--library observed`` compares scnotes' default (ℓ_i = total counts) with
  scvi-tools' ``use_observed_lib_size=True`` (both marginal likelihoods are then
  log p(x | ℓ)); ``--library latent`` compares scnotes' ``library="latent"`` with scvi-tools'
  default learned log-normal library (log p(x)). ``both`` (default) runs the two pairs.

Seconds per epoch: the training loop only, validation included (scnotes ``fit_time_``;
scvi-tools from a Lightning callback between ``on_train_start`` and ``on_train_end``), so
neither tool's set-up counts; the CPU seconds of the process are printed too, because on a
shared machine wall time also measures the neighbours. Marginal log-likelihood: importance
sampling with ``--mll-samples`` draws from each encoder, nats per validation cell, mean over
cells (scvi-tools' ``get_marginal_ll(..., return_mean=False)`` is per cell and, in 1.4,
already a log-likelihood: higher is better).

    python benchmarks/bench_ldvae.py [--epochs 50] [--library both] [--mll-samples 1000] [--seeds 0 1 2]

Prints one summary line per pair, figure and target side by side
(targets: scnotes ≤ 1.0× scvi-tools' seconds per epoch; marginal LL ≥ scvi-tools').
"""
from __future__ import annotations

import argparse
import logging
import os
import time
import warnings

import numpy as np
import torch


def load_data(dataset: str, n_top_genes: int):
    """As the chapter: gene symbols as names, then seurat_v3 HVGs on the counts (scnotes.pp.prepare)."""
    import scnotes

    adata = scnotes.datasets.load(dataset)
    if "gene_symbol" in adata.var:
        adata.var_names = adata.var["gene_symbol"].astype(str).to_numpy()
        adata.var_names_make_unique()
    return scnotes.pp.prepare(adata, layer="counts", n_top_genes=n_top_genes, verbose=False)


def fit_scnotes(adata, epochs, library, seed):
    import scnotes

    c0 = time.process_time()
    m = scnotes.tl.ldvae(adata, n_latent=10, layer="counts", max_epochs=epochs, progress=False,
                         model_kwargs=dict(seed=seed, library=library), copy=True)[1]
    return m, m.fit_time_ / m.n_epochs_, (time.process_time() - c0) / m.n_epochs_


def fit_scvi(adata, train_idx, val_idx, epochs, library, seed):
    import lightning.pytorch as pl
    import scvi

    class Clock(pl.Callback):
        def on_train_start(self, trainer, module):
            self.t0, self.c0 = time.perf_counter(), time.process_time()

        def on_train_end(self, trainer, module):
            self.wall, self.cpu = time.perf_counter() - self.t0, time.process_time() - self.c0

    scvi.settings.seed = seed
    a = adata.copy()
    scvi.model.LinearSCVI.setup_anndata(a, layer="counts")
    m = scvi.model.LinearSCVI(a, n_latent=10, use_observed_lib_size=(library == "observed"))
    clock = Clock()
    m.train(max_epochs=epochs, batch_size=128, accelerator="cpu", devices=1,
            check_val_every_n_epoch=1, enable_progress_bar=False, callbacks=[clock],
            plan_kwargs=dict(lr=5e-3, n_epochs_kl_warmup=None, weight_decay=0.0, eps=1e-8),
            datasplitter_kwargs=dict(external_indexing=[np.asarray(train_idx), np.asarray(val_idx),
                                                        np.array([], dtype=int)]))
    return m, a, clock.wall / epochs, clock.cpu / epochs


def quiet():
    import scvi

    scvi.settings.verbosity = logging.ERROR
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "scvi"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="pbmc_facs_zheng2017")
    ap.add_argument("--n-top-genes", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--library", choices=["observed", "latent", "both"], default="both")
    ap.add_argument("--mll-samples", type=int, default=1000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0],
                    help="model seeds (each also draws its own 90/10 split, given to both tools); with several, the marginal-LL target is "
                         "judged on the mean of the per-seed differences, printed with its standard error")
    ap.add_argument("--repeats", type=int, default=1,
                    help="alternate the two fits this many times; medians are printed")
    args = ap.parse_args(argv)
    threads = int(os.environ.get("OMP_NUM_THREADS", 2))
    torch.set_num_threads(threads)
    quiet()

    adata = load_data(args.dataset, args.n_top_genes)
    libraries = ["observed", "latent"] if args.library == "both" else [args.library]
    for library in libraries:
        rows = []
        for seed in args.seeds:
            rows.append(run_pair(adata, args, library, seed))
            print(f"  seed {seed} [{library}]: s/epoch {rows[-1]['t_ours']:.3f} vs {rows[-1]['t_scvi']:.3f}, "
                  f"marginal LL {rows[-1]['mll_ours']:.3f} vs {rows[-1]['mll_scvi']:.3f}", flush=True)
        t_ours, c_ours, t_scvi, c_scvi = (np.median([r[k] for r in rows])
                                          for k in ("t_ours", "c_ours", "t_scvi", "c_scvi"))
        mll_ours = np.mean([r["mll_ours"] for r in rows])
        mll_scvi = np.mean([r["mll_scvi"] for r in rows])
        diff = np.array([r["mll_ours"] - r["mll_scvi"] for r in rows])
        se = diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else float("nan")
        ratio = t_ours / t_scvi
        n_tr, n_val = rows[0]["n_train"], rows[0]["n_val"]
        print(f"bench_ldvae [{library} library]: {args.dataset} {adata.n_obs} cells x "
              f"{adata.n_vars} HVGs, {n_tr}/{n_val} train/validation, "
              f"batch 128, {args.epochs} epochs, validation every epoch, {threads} thread(s), "
              f"{len(args.seeds)} seed(s), "
              f"{'median of ' + str(args.repeats) + ' alternated runs' if args.repeats > 1 else 'one run'} each | "
              f"s/epoch scnotes {t_ours:.3f} vs scvi-tools {t_scvi:.3f}: ratio {ratio:.2f} "
              f"(target <= 1.00, {'met' if ratio <= 1 else 'MISSED'}; CPU s/epoch "
              f"{c_ours:.3f} vs {c_scvi:.3f}) | held-out marginal LL ({args.mll_samples} samples) "
              f"scnotes {mll_ours:.3f} vs scvi-tools {mll_scvi:.3f} nats/cell, paired difference "
              f"{diff.mean():+.3f} (SE {se:.3f}) "
              f"(target >= scvi-tools, {'met' if diff.mean() >= 0 else 'MISSED'})", flush=True)


def run_pair(adata, args, library, seed):
    """Both tools on the same split for one model seed: times (medians over repeats) and marginal LLs."""
    times = []
    for _ in range(args.repeats):  # alternated, so both see the same machine load
        ours, t_ours, c_ours = fit_scnotes(adata, args.epochs, library, seed)
        val = ours.validation_indices_
        theirs, a, t_scvi, c_scvi = fit_scvi(adata, ours.train_indices_, val, args.epochs, library, seed)
        times.append((t_ours, c_ours, t_scvi, c_scvi))
    t_ours, c_ours, t_scvi, c_scvi = np.median(np.asarray(times), axis=0)
    x_val = adata.layers["counts"][val]
    mll_ours = float(ours.marginal_ll(x_val, n_samples=args.mll_samples).mean())
    mll_scvi = float(theirs.get_marginal_ll(a, indices=val, n_mc_samples=args.mll_samples,
                                            n_mc_samples_per_pass=min(100, args.mll_samples),
                                            return_mean=False).mean())
    return dict(t_ours=t_ours, c_ours=c_ours, t_scvi=t_scvi, c_scvi=c_scvi, mll_ours=mll_ours,
                mll_scvi=mll_scvi, n_train=len(ours.train_indices_), n_val=len(val))


if __name__ == "__main__":
    main()
