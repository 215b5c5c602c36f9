"""Benchmark: NB GLMM batched VEB over the 100 Kang genes vs glmmTMB looped over them.

Both fit the same model per gene: y ~ NB(s exp(b_group + u_donor + w_sample), θ),
sample = donor × condition (glmmTMB: ``y ~ 0 + cell_group + offset(log(total)) +
(1 | donor) + (1 | sample)``, ``nbinom2``). VEB: one batched fit of every gene
(:class:`scnotes.glmm.NBGLMMVEB`, default settings, torch on ``--threads`` threads).
glmmTMB: the gene loop in R, split into chunks of ``--chunk`` genes run by
``--workers`` Rscript processes side by side (each fit is independent of the others).

Times. The machine this runs on is shared, so wall time depends on what else runs;
process CPU time does not (much). VEB CPU = ``time.process_time()`` of the fit (torch
at one thread: CPU ≈ wall on an idle machine); glmmTMB CPU = R's ``proc.time()``
user + sys summed over the gene fits of every chunk (R start-up and CSV I/O
excluded, which favours glmmTMB). **The speed ratio is computed on CPU time**; wall
times are printed next to it.

glmmTMB takes tens of seconds per gene on the 9,517 cells. Finished chunks are kept
in ``--cache`` (default ``runs/bench_glmm_nb/``) so that an interrupted run resumes;
``--budget-s`` stops starting new chunks after that many seconds, and ``--ref-genes N``
fits only the first N genes. When fewer than all genes were fitted by glmmTMB, its
CPU time is extrapolated linearly to all genes and the output says so.

Agreement = share of fixed effects (genes × cell groups fitted by glmmTMB) whose VEB
posterior mean lies within one glmmTMB standard error of glmmTMB's estimate.
Targets (issue 15): ≥ 10× faster, ≥ 95 % agreement.

Usage: python benchmarks/bench_glmm_nb.py [--genes 100] [--ref-genes 100] [--workers 2]
       [--chunk 5] [--budget-s 3600] [--threads 1] [--cache runs/bench_glmm_nb]
"""
from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # R's BLAS and torch: one thread per process
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import scnotes.datasets as ds  # noqa: E402
from scnotes.glmm import NBGLMMVEB, agreement, fit_glmmtmb, glmm_data_from_adata, r_package_available  # noqa: E402

DATASET = "kang2018_ifnb_3donors_100genes"


def _fit_chunk(data, genes, cache: Path):
    """glmmTMB on genes ``genes`` (indices); the result arrays, cached as .npz."""
    path = cache / f"glmmtmb_{DATASET}_{data.n_cells}_{genes[0]:03d}-{genes[-1]:03d}.npz"
    if path.exists():
        return dict(np.load(path)), True
    r = fit_glmmtmb(data.subset_genes(list(genes)))
    out = dict(genes=np.asarray(genes), b=r.b, b_se=r.b_se, theta=r.theta, sigma_u=r.sigma_u,
               sigma_w=r.sigma_w, gene_seconds=r.gene_seconds, gene_cpu_seconds=r.gene_cpu_seconds,
               loop_seconds=r.loop_seconds, loop_cpu_seconds=r.loop_cpu_seconds,
               wall_seconds=r.wall_seconds)
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path.with_suffix(".tmp.npz"), **out)
    path.with_suffix(".tmp.npz").rename(path)
    return out, False


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--genes", type=int, default=100)
    ap.add_argument("--ref-genes", type=int, default=100, help="genes fitted by glmmTMB (the first N)")
    ap.add_argument("--workers", type=int, default=2, help="Rscript processes side by side")
    ap.add_argument("--chunk", type=int, default=5, help="genes per Rscript process")
    ap.add_argument("--budget-s", type=float, default=float("inf"),
                    help="start no new glmmTMB chunk after this many seconds (then extrapolate)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache", default="runs/bench_glmm_nb")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    adata = ds.load(DATASET)
    data = glmm_data_from_adata(adata, list(adata.var_names[:args.genes]), layer="counts")

    NBGLMMVEB(max_epochs=2).fit(data.subset_genes([0]))  # warm-up: torch's first-call overheads
    c0, t0 = time.process_time(), time.perf_counter()
    m = NBGLMMVEB().fit(data)
    cpu_veb, wall_veb = time.process_time() - c0, time.perf_counter() - t0
    print(f"NB GLMM batched VEB ({data.n_genes} genes, {data.n_cells} cells, {data.n_groups} groups, "
          f"{m.n_epochs_} Adam steps, {args.threads} torch thread(s)): CPU {cpu_veb:.1f} s, wall {wall_veb:.1f} s",
          flush=True)
    if not r_package_available("glmmTMB"):
        print("glmmTMB not available (apt-get install r-cran-glmmtmb): only the VEB timing was measured")
        return

    n_ref = min(args.ref_genes, data.n_genes)
    chunks = [list(range(i, min(i + args.chunk, n_ref))) for i in range(0, n_ref, args.chunk)]
    cache = Path(args.cache)
    done, n_cached = [], 0
    t_ref0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, args.workers)) as pool:
        pending, queue = set(), list(chunks)
        while queue or pending:
            while queue and len(pending) < args.workers and time.perf_counter() - t_ref0 < args.budget_s:
                genes = queue.pop(0)
                pending.add(pool.submit(_fit_chunk, data, genes, cache))
            if not pending:
                break
            fut = next(as_completed(pending))
            pending.discard(fut)
            res, cached = fut.result()
            done.append(res)
            n_cached += cached
            print(f"  glmmTMB genes {res['genes'][0]}-{res['genes'][-1]}: CPU {res['loop_cpu_seconds']:.1f} s, "
                  f"wall {res['loop_seconds']:.1f} s{' (cached)' if cached else ''}", flush=True)
    wall_pool = time.perf_counter() - t_ref0
    genes_done = np.concatenate([r["genes"] for r in done])
    order = np.argsort(genes_done)
    genes_done = genes_done[order]
    b = np.concatenate([r["b"] for r in done])[order]
    se = np.concatenate([r["b_se"] for r in done])[order]
    theta = np.concatenate([r["theta"] for r in done])[order]
    cpu_done = float(sum(r["loop_cpu_seconds"] for r in done))
    wall_done = float(sum(r["loop_seconds"] for r in done))
    n_done = len(genes_done)
    per_gene_cpu = cpu_done / n_done
    cpu_ref = per_gene_cpu * data.n_genes
    wall_ref = wall_done / n_done * data.n_genes
    extrap = ("" if n_done == data.n_genes else
              f" (EXTRAPOLATED from {n_done} genes at {per_gene_cpu:.1f} CPU s/gene)")
    ok = np.isfinite(b)
    agr = agreement(m.b_mean_[genes_done], b, se)
    ratio = cpu_ref / cpu_veb
    sd_ratio = np.nanmedian(m.b_sd_[genes_done] / se)
    th = np.nanmedian(m.theta_[genes_done] / theta)
    print(f"glmmTMB loop over {n_done} of {data.n_genes} genes: CPU {cpu_done:.1f} s, wall {wall_done:.1f} s "
          f"summed over {len(done)} chunk(s) ({n_cached} from the cache), {wall_pool:.1f} s elapsed with "
          f"{args.workers} worker(s); failed fits {int((~ok).any(1).sum())}")
    print(f"glmmTMB for all {data.n_genes} genes: CPU {cpu_ref:.1f} s, wall {wall_ref:.1f} s (one process){extrap}")
    print(f"{'':30s}{'measured':>12s}{'target':>10s}")
    print(f"{'speed-up (CPU time)':30s}{ratio:11.1f}x{'>= 10x':>10s}")
    print(f"{'speed-up (wall, one process)':30s}{wall_ref / wall_veb:11.1f}x{'':>10s}")
    print(f"{'agreement (within 1 SE)':30s}{100 * agr:11.1f}%{'>= 95%':>10s}   ({int(ok.sum())} fixed effects)")
    print(f"median VEB sd / glmmTMB SE {sd_ratio:.2f}; median θ VEB / glmmTMB {th:.2f}")
    print(f"SUMMARY bench_glmm_nb: VEB CPU {cpu_veb:.1f}s (wall {wall_veb:.1f}s) vs glmmTMB CPU {cpu_ref:.1f}s "
          f"(wall {wall_ref:.1f}s){extrap}: {ratio:.1f}x on CPU time (target >= 10x); "
          f"agreement {100 * agr:.1f}% over {int(ok.sum())} fixed effects (target >= 95%)")


if __name__ == "__main__":
    main()
