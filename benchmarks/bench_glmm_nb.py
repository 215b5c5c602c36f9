"""Benchmark: NB GLMM batched VEB over the 100 Kang genes vs glmmTMB looped over them.

Both fit the same model per gene: y ~ NB(s exp(b_group + u_donor + w_sample), θ),
sample = donor × condition (glmmTMB: ``y ~ 0 + cell_group + offset(log(total)) +
(1 | donor) + (1 | sample)``, ``nbinom2``). VEB: one batched fit of every gene
(:class:`scnotes.glmm.NBGLMMVEB`, default settings). glmmTMB: one Rscript
process looping over genes; its time is the loop timed inside R (R start-up and
I/O excluded) and the whole call.

glmmTMB takes tens of seconds per gene on the 9,517 cells, so ``--ref-genes N``
fits only the first N genes with it and extrapolates its loop time linearly to
all genes (the loop is one independent fit per gene); the line says so.
Agreement = share of fixed effects (genes × cell groups fitted by glmmTMB) whose
VEB posterior mean lies within one glmmTMB standard error of glmmTMB's estimate.
Targets (issue 15): ≥ 10× faster, ≥ 95 % agreement.

Usage: python benchmarks/bench_glmm_nb.py [--genes 100] [--ref-genes 100] [--threads 1]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import scnotes.datasets as ds
from scnotes.glmm import NBGLMMVEB, agreement, fit_glmmtmb, glmm_data_from_adata, r_package_available


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--genes", type=int, default=100)
    ap.add_argument("--ref-genes", type=int, default=100, help="genes fitted by glmmTMB (first N)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    adata = ds.load("kang2018_ifnb_3donors_100genes")
    data = glmm_data_from_adata(adata, list(adata.var_names[:args.genes]), layer="counts")

    NBGLMMVEB(max_epochs=2).fit(data.subset_genes([0]))  # warm-up: torch's first-call overheads
    t0 = time.perf_counter()
    m = NBGLMMVEB().fit(data)
    t_veb = time.perf_counter() - t0
    print(f"NB GLMM batched VEB ({data.n_genes} genes, {data.n_cells} cells, {data.n_groups} groups, "
          f"{m.n_epochs_} steps): {t_veb:.1f} s")
    if not r_package_available("glmmTMB"):
        print("glmmTMB not available (apt-get install r-cran-glmmtmb): only the VEB timing was measured")
        return
    n_ref = min(args.ref_genes, data.n_genes)
    ref = fit_glmmtmb(data.subset_genes(list(range(n_ref))))
    per_gene = ref.loop_seconds / n_ref
    t_ref = per_gene * data.n_genes
    extrap = "" if n_ref == data.n_genes else f" (extrapolated from {n_ref} genes at {per_gene:.1f} s/gene)"
    ok = np.isfinite(ref.b)
    agr = agreement(m.b_mean_[:n_ref], ref.b, ref.b_se)
    ratio = t_ref / t_veb
    sd_ratio = np.nanmedian(m.b_sd_[:n_ref] / ref.b_se)
    th = np.nanmedian(m.theta_[:n_ref] / ref.theta)
    print(f"glmmTMB loop over {data.n_genes} genes: {t_ref:.1f} s{extrap}; whole call for {n_ref} genes "
          f"{ref.wall_seconds:.1f} s; failed fits {int((~ok).any(1).sum())}")
    print(f"{'':24s}{'measured':>12s}{'target':>10s}")
    print(f"{'time ratio':24s}{ratio:11.1f}x{'>= 10x':>10s}")
    print(f"{'agreement (1 SE)':24s}{100 * agr:11.1f}%{'>= 95%':>10s}   ({int(ok.sum())} fixed effects)")
    print(f"median VEB sd / glmmTMB SE {sd_ratio:.2f}; median θ VEB / glmmTMB {th:.2f}")
    print(f"SUMMARY bench_glmm_nb: VEB {t_veb:.1f}s vs glmmTMB {t_ref:.1f}s{extrap}: {ratio:.1f}x (target >= 10x); "
          f"agreement {100 * agr:.1f}% (target >= 95%)")


if __name__ == "__main__":
    main()
