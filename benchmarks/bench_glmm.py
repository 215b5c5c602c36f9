"""Benchmark: lme4 looped over the 100 Kang genes vs one batched VEB fit of all of them.

lme4 runs as one Rscript process looping over genes; its time is reported
excluding R start-up and data I/O (the loop timed inside R) and including them
(the whole call). lme4 is run on the per-cell data (the issue's formula) and,
as a fairer second reference, on the per (group, donor) sums, which give the
same fit. Agreement = share of fixed effects (genes × cell groups) whose VEB
estimate lies within one lme4 standard error of lme4's estimate.

Usage: python benchmarks/bench_glmm.py [--genes N] [--skip-cells]
Prints a one-line summary at the end.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import scnotes.datasets as ds
from scnotes.glmm import agreement, fit_genes, fit_lme4, glmm_data_from_adata, lme4_available


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--genes", type=int, default=100)
    ap.add_argument("--skip-cells", action="store_true", help="skip per-cell lme4 (slow)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    adata = ds.load("kang2018_ifnb_3donors_100genes")
    data = glmm_data_from_adata(adata, list(adata.var_names[:args.genes]))

    fit_genes(data.subset_genes([0]), n_epochs=5)  # warm-up: torch's first-call overheads
    t0 = time.perf_counter()
    _, m = fit_genes(data, seed=0, return_model=True)  # full-rank guide, exact expectation, 600 steps
    t_veb = time.perf_counter() - t0
    print(f"batched VEB (full-rank guide, {data.n_genes} genes, {m.n_epochs} steps): {t_veb:.2f} s")
    if not lme4_available():
        print("lme4 not available: only the VEB timing was measured")
        return
    refs = {}
    if not args.skip_cells:
        refs["per-cell"] = fit_lme4(data)
    refs["aggregated"] = fit_lme4(data, aggregate=True)
    summary = [f"VEB {t_veb:.1f}s"]
    for name, r in refs.items():
        agr = agreement(m.b_mean_, r.b, r.b_se)
        sd_ratio = np.nanmedian(m.b_sd_ / r.b_se)
        su = np.corrcoef(m.sigma_u_, r.sigma_u)[0, 1]
        print(f"lme4 {name}: loop {r.loop_seconds:.1f} s (speed-up {r.loop_seconds / t_veb:.1f}x), "
              f"with R start-up and I/O {r.wall_seconds:.1f} s ({r.wall_seconds / t_veb:.1f}x); "
              f"agreement {100 * agr:.1f}% of {np.isfinite(r.b).sum()} fixed effects within 1 SE; "
              f"median VEB sd / lme4 SE {sd_ratio:.2f}; corr(σ_u) {su:.2f}; "
              f"singular fits {int(r.singular.sum())}")
        summary.append(f"lme4-{name} {r.loop_seconds:.1f}s ({r.loop_seconds / t_veb:.1f}x, "
                       f"{r.wall_seconds / t_veb:.1f}x incl. start-up), agreement {100 * agr:.1f}%")
    print("SUMMARY bench_glmm: " + "; ".join(summary))


if __name__ == "__main__":
    main()
