"""Benchmark: the NB GLMM batched VEB on every gene and cell of ``kang2018_ctrl_8donors`` vs glmmTMB per gene.

Issue 23's speed target: all 1,287 genes × 12,261 cells of ``kang2018_ctrl_8donors`` in one
batched fit in ≤ 5 min on 2 CPU cores, and ≥ 10× faster than glmmTMB per gene (CPU time,
measured in one run).

Data. ``kang2018_ctrl_8donors`` holds control cells only (8 donors, 8 cell types, no totals
column: ``scnotes.pp.prepare`` computes ``obs["total_counts"]`` from all 1,287 genes of the
file). A fake two-condition design is made by splitting the donors 4 vs 4 at random
(``scnotes.glmm.split_donors(adata, "donor", seed=--seed)``, fake conditions ``ctrl`` / ``stim``):
16 cell groups (cell type × fake condition), 64 (group, donor) blocks; no gene is DE. The data
are ``glmm_data_from_adata(..., layer="counts", size_factor_key="total_counts",
cell_type_key="cell_type", condition_key="condition")`` on every gene and cell.
``--dataset kang2018_ifnb_3donors_100genes`` (the old default: 100 genes, 9,517 cells, 3 donors
in both real conditions, no split) is kept as a cheap option.

VEB. One :class:`scnotes.glmm.NBGLMMVEB` fit of every gene with the default settings (both
stages: per-gene VEB, then the moderated refit; ``--veb KEY=VALUE`` overrides a constructor
argument, e.g. ``--veb optimizer='"lbfgs"'`` or ``--veb max_epochs=100``), torch on
``--threads`` threads, after a 3-gene warm-up fit (torch's first-call overheads). Reported:
process CPU seconds (``time.process_time()``: every thread of the process), wall seconds, the
summary's seconds (tidy table, ash lfsr), peak resident memory (``VmHWM`` of this process:
data loading included; the glmmTMB fits run in R subprocesses and do not count) and the RSS
just before the fit. Figure vs target: wall ≤ 300 s; the CPU line compares CPU seconds with
2 × 300 s, the CPU an idle 2-core machine spends in 300 s, because on a shared machine wall
time grows with what else runs and CPU time does not (much) — provided idle OpenMP threads do
not spin (``OMP_WAIT_POLICY=PASSIVE``, set below unless the environment sets it; the load
average before and after the fit is printed: wall time means something only when it stays below
the number of cores).

glmmTMB. ``--ref-genes`` genes (default 4), one drawn at random (``--seed``) from each of
that many equal strata of the genes ranked by mean count, fitted on the same cells by
:func:`scnotes.glmm.fit_glmmtmb` with the sample effect on: ``y ~ 0 + cell_group +
offset(log(total)) + (1 | donor) + (1 | sample)``, ``nbinom2``. Its sample is made donor ×
cell group (as ``NBGLMMVEB(sample_effect="group")``, the default) by handing fit_glmmtmb the
design with each group's ``condition`` set to the group's name: its own sample, donor ×
condition, is the donor itself when donors are split between conditions (an unidentifiable
second donor effect). The models then differ only in that glmmTMB has one σ_w per gene (the
VEB one per gene and cell type, moderated across genes) and θ, σ unshrunk. CPU = R's
``proc.time()`` user + sys of each gene's fit (R start-up and CSV I/O excluded, which favours
glmmTMB), summed over genes and divided by their number; wall printed too. The genes run in
chunks of ``--chunk`` genes by ``--workers`` Rscript processes side by side; finished chunks
are kept in ``--cache`` (default ``runs/bench_glmm_nb/``) so that an interrupted run resumes
(a cached chunk's CPU time is the one measured when it ran); after ``--budget-s`` no new chunk
starts. **Speed-up = glmmTMB CPU per gene / VEB CPU per gene** (VEB CPU of the whole fit over
its number of genes), target ≥ 10×.

Agreement = share of the reference genes' condition contrasts (8 cell types) whose VEB
posterior mean lies within one glmmTMB standard error of glmmTMB's estimate (and the same
for the 16 cell-group effects).

Usage: python benchmarks/bench_glmm_nb.py [--dataset kang2018_ctrl_8donors] [--genes N]
       [--cells N] [--threads 2] [--ref-genes 4] [--workers 2] [--chunk 1] [--budget-s S]
       [--seed 0] [--cache runs/bench_glmm_nb] [--veb KEY=VALUE ...]
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # R's BLAS one thread per process; torch set below
# Idle OpenMP threads sleep instead of spinning: on a shared machine (more runnable processes than
# cores) spinning threads burn CPU while they wait for a descheduled partner, which inflated the
# fit's process CPU time 4× at 2 threads (measured, load average 6–9 on 2 cores); with PASSIVE the
# 2-thread CPU time equals the 1-thread one. Must be set before torch starts its thread pool.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# The Makefile's malloc thresholds (`make bench` exports them): without them glibc unmaps every large
# freed tensor and faults it in again on the next step, and the kernel's page zeroing counts as the
# fit's CPU time (measured: 2.6 s of system time per likelihood evaluation against 2.0 s of user time
# on the full data). Run directly, the script restarts itself with them so both ways measure the same.
if __name__ == "__main__" and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
    os.environ["MALLOC_MMAP_THRESHOLD_"] = os.environ["MALLOC_TRIM_THRESHOLD_"] = "4294967296"
    os.execv(sys.executable, [sys.executable] + sys.argv)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scnotes  # noqa: E402
import scnotes.datasets as ds  # noqa: E402
from _procstatus import status_gb  # noqa: E402
from scnotes.glmm import (NBGLMMVEB, agreement, fit_glmmtmb, glmm_data_from_adata, r_package_available,  # noqa: E402
                          split_donors)

DEFAULT = "kang2018_ctrl_8donors"
SPLIT = "kang2018_ctrl_8donors"  # control-only: a fake 4 vs 4 donor split
TARGET_WALL_S, TARGET_RATIO, TARGET_CORES = 300.0, 10.0, 2


def load(args):
    """GLMMData of every gene (or ``--genes``) and cell (or ``--cells``), and a line describing it."""
    rng = np.random.default_rng(args.seed)
    if args.dataset == SPLIT:
        a = scnotes.pp.prepare(ds.load(args.dataset), layer="counts",
                               keys={"donor": "donor_key", "cell_type": "cell_type_key"}, verbose=False)
        a = split_donors(a, "donor", seed=args.seed, condition_key="condition")
        sp = a.uns["split_donors"]
        how = f"donors split 4 vs 4 at random (seed {args.seed}): ctrl {sp['ctrl']}, stim {sp['stim']}"
    else:
        a = ds.load(args.dataset)
        how = "real conditions"
    if args.cells and args.cells < a.n_obs:
        a = a[np.sort(rng.choice(a.n_obs, args.cells, replace=False))].copy()
    genes = list(a.var_names)
    if args.genes and args.genes < len(genes):  # spread over mean expression: every k-th by mean rank
        mean = np.asarray(a.layers["counts"].mean(0)).ravel()
        order = np.argsort(mean)
        genes = [genes[i] for i in np.sort(order[np.linspace(0, len(order) - 1, args.genes).round().astype(int)])]
    data = glmm_data_from_adata(a, genes, layer="counts", size_factor_key="total_counts", cell_type_key="cell_type",
                                condition_key="condition")
    return data, how


def ref_genes(data, n, seed):
    """``n`` gene indices, one at random from each of ``n`` equal strata of the mean-count ranking."""
    order = np.argsort(data.counts.mean(0), kind="stable")
    rng = np.random.default_rng(seed)
    return sorted(int(rng.choice(s)) for s in np.array_split(order, n) if len(s))


def sample_is_group(data):
    """The design with each group's condition set to the group's name, so that fit_glmmtmb's
    sample (donor × condition) is donor × cell group, the VEB's default sample."""
    tab = data.group_table.copy()
    tab["condition"] = list(data.groups)
    return dataclasses.replace(data, group_table=tab, _stats=None)


def fit_chunk(data, genes, cache: Path, tag: str):
    """glmmTMB on genes ``genes`` (indices of ``data``); result arrays, cached as .npz."""
    path = cache / f"glmmtmb_{tag}_{genes[0]:04d}-{genes[-1]:04d}.npz"
    if path.exists():
        return dict(np.load(path, allow_pickle=False)), True
    r = fit_glmmtmb(sample_is_group(data).subset_genes(list(genes)), sample_effect=True)
    out = dict(genes=np.asarray(genes), b=r.b, b_se=r.b_se, b_cov=r.b_cov, theta=r.theta, sigma_u=r.sigma_u,
               sigma_w=r.sigma_w, gene_seconds=r.gene_seconds, gene_cpu_seconds=r.gene_cpu_seconds,
               loop_seconds=r.loop_seconds, loop_cpu_seconds=r.loop_cpu_seconds, wall_seconds=r.wall_seconds,
               messages=np.asarray(r.messages, dtype=str))
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path.with_suffix(".tmp.npz"), **out)
    path.with_suffix(".tmp.npz").rename(path)
    return out, False


def contrasts(data, b, cov):
    """Condition contrasts per gene from group effects ``b`` (J, G) and their covariance: DataFrame
    gene, term, estimate, sd (the tidy table's contrast rows)."""
    t = scnotes.glmm.tidy_effects(data, b, cov=cov)
    return t.loc[t["kind"] == "contrast", ["gene", "term", "estimate", "sd"]].reset_index(drop=True)


def parse_veb(items):
    kw = {}
    for item in items or ():
        k, _, v = item.partition("=")
        try:
            kw[k] = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            kw[k] = v
        if k == "dtype" and isinstance(kw[k], str):
            kw[k] = getattr(torch, kw[k])
    return kw


def uptime():
    try:
        return Path("/proc/loadavg").read_text().split()[:3]
    except OSError:
        return ["?"] * 3


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", default=DEFAULT, help=f"{DEFAULT} (split donors) or kang2018_ifnb_3donors_100genes")
    ap.add_argument("--genes", type=int, default=0, help="0: all genes; N: N genes spread over mean expression")
    ap.add_argument("--cells", type=int, default=0, help="0: all cells; N: a random subset (seeded)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the VEB fit")
    ap.add_argument("--ref-genes", type=int, default=4, help="genes fitted by glmmTMB (0: none)")
    ap.add_argument("--workers", type=int, default=2, help="Rscript processes side by side")
    ap.add_argument("--chunk", type=int, default=1, help="genes per Rscript process")
    ap.add_argument("--budget-s", type=float, default=float("inf"),
                    help="start no new glmmTMB chunk after this many seconds")
    ap.add_argument("--seed", type=int, default=0, help="donor split, cell subset and reference genes")
    ap.add_argument("--cache", default="runs/bench_glmm_nb")
    ap.add_argument("--veb", action="append", metavar="KEY=VALUE", help="NBGLMMVEB argument (Python literal)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    veb_kw = parse_veb(args.veb)
    print(f"machine: {os.cpu_count()} CPUs, load average {' '.join(uptime())} at start; torch "
          f"{torch.__version__}, {args.threads} thread(s), OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, "
          f"MALLOC_MMAP_THRESHOLD_={os.environ.get('MALLOC_MMAP_THRESHOLD_')}", flush=True)

    data, how = load(args)
    st = data.stats()
    print(f"data: {args.dataset}, {data.n_genes} genes × {data.n_cells} cells, {data.n_donors} donors, "
          f"{data.n_groups} cell groups, {int((st.n > 0).sum())} (group, donor) blocks; {how}", flush=True)

    NBGLMMVEB(max_epochs=2, moderated_epochs=1, **{k: v for k, v in veb_kw.items() if k not in (
        "max_epochs", "moderated_epochs")}).fit(data.subset_genes([0, 1, 2]))  # warm-up
    rss0 = status_gb("VmRSS")
    load0 = uptime()
    c0, t0, o0 = time.process_time(), time.perf_counter(), os.times()
    m = NBGLMMVEB(**veb_kw).fit(data)
    cpu_veb, wall_veb, o1 = time.process_time() - c0, time.perf_counter() - t0, os.times()
    load1 = uptime()
    hwm = status_gb("VmHWM")
    c1, t1 = time.process_time(), time.perf_counter()
    tab = m.summary()
    cpu_sum, wall_sum = time.process_time() - c1, time.perf_counter() - t1
    steps = m.history_.groupby("stage").size().to_dict()
    print(f"NB GLMM VEB ({', '.join(f'{k}={v!r}' for k, v in veb_kw.items()) or 'defaults'}): steps "
          f"{steps}; CPU {cpu_veb:.1f} s (user {o1.user - o0.user:.1f}, system {o1.system - o0.system:.1f}), "
          f"wall {wall_veb:.1f} s ({cpu_veb / wall_veb:.2f} cores busy on "
          f"average); summary() CPU {cpu_sum:.1f} s, wall {wall_sum:.1f} s; RSS before the fit {rss0:.2f} GB, "
          f"peak {hwm:.2f} GB; load average {' '.join(load0)} before, {' '.join(load1)} after", flush=True)
    print(f"{'':44s}{'measured':>12s}{'target':>12s}")
    print(f"{'VEB wall, all genes (s)':44s}{wall_veb:12.1f}{'<= ' + format(TARGET_WALL_S, '.0f'):>12s}")
    print(f"{'VEB CPU, all genes (s; target 2 cores × 300 s)':44s}{cpu_veb:12.1f}"
          f"{'<= ' + format(TARGET_CORES * TARGET_WALL_S, '.0f'):>12s}")
    print(f"{'VEB CPU per gene (s)':44s}{cpu_veb / data.n_genes:12.3f}")

    n_ref = min(args.ref_genes, data.n_genes)
    if n_ref < 1:
        print(f"SUMMARY bench_glmm_nb: {data.n_genes} genes × {data.n_cells} cells: VEB wall {wall_veb:.1f} s "
              f"(target <= {TARGET_WALL_S:.0f} s), CPU {cpu_veb:.1f} s, peak RSS {hwm:.2f} GB; no glmmTMB")
        return
    if not r_package_available("glmmTMB"):
        print("glmmTMB not available (apt-get install r-cran-glmmtmb): only the VEB timing was measured")
        return
    ref = ref_genes(data, n_ref, args.seed)
    chunks = [ref[i:i + args.chunk] for i in range(0, len(ref), args.chunk)]
    tag = f"{args.dataset}_{data.n_cells}c_{data.n_genes}g_s{args.seed}"
    cache = Path(args.cache)
    done, n_cached = [], 0
    t_ref0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, args.workers)) as pool:
        pending, queue = set(), list(chunks)
        while queue or pending:
            while queue and len(pending) < args.workers and time.perf_counter() - t_ref0 < args.budget_s:
                pending.add(pool.submit(fit_chunk, data, queue.pop(0), cache, tag))
            if not pending:
                break
            fut = next(as_completed(pending))
            pending.discard(fut)
            res, cached = fut.result()
            done.append(res)
            n_cached += cached
            print(f"  glmmTMB genes {res['genes'].tolist()}: CPU {res['loop_cpu_seconds']:.1f} s, "
                  f"wall {res['loop_seconds']:.1f} s{' (cached)' if cached else ''}", flush=True)
    wall_pool = time.perf_counter() - t_ref0
    order = np.argsort(np.concatenate([r["genes"] for r in done]))
    cat = {k: np.concatenate([np.atleast_1d(r[k]) for r in done])[order]
           for k in ("genes", "b", "b_se", "b_cov", "theta", "sigma_u", "sigma_w", "gene_cpu_seconds",
                     "gene_seconds", "messages")}
    g = cat["genes"]
    n_done = len(g)
    tmb_cpu_gene = float(cat["gene_cpu_seconds"].sum()) / n_done
    tmb_wall_gene = float(cat["gene_seconds"].sum()) / n_done
    veb_cpu_gene = cpu_veb / data.n_genes
    ratio = tmb_cpu_gene / veb_cpu_gene
    ok = np.isfinite(cat["b"]).all(1)

    sub = data.subset_genes(list(g))
    c_veb = tab.loc[tab["kind"] == "contrast", ["gene", "term", "estimate", "sd", "df", "p"]]
    c_tmb = contrasts(sub, cat["b"], cat["b_cov"])
    cmp_ = c_tmb.merge(c_veb, on=["gene", "term"], suffixes=("_tmb", "_veb"))
    agr_c = agreement(cmp_["estimate_veb"], cmp_["estimate_tmb"], cmp_["sd_tmb"])
    n_c = int(np.isfinite(cmp_[["estimate_veb", "estimate_tmb", "sd_tmb"]]).all(1).sum())
    agr_b = agreement(m.b_mean_[g], cat["b"], cat["b_se"])
    n_b = int(np.isfinite(cat["b"]).sum())

    mean = data.counts.mean(0)
    rows = []
    for i, j in enumerate(g):
        cj = cmp_[cmp_["gene"] == data.genes[j]]
        within = np.abs(cj["estimate_veb"] - cj["estimate_tmb"]) <= cj["sd_tmb"]
        rows.append(dict(gene=data.genes[j], mean_count=mean[j], tmb_cpu_s=cat["gene_cpu_seconds"][i],
                         tmb_wall_s=cat["gene_seconds"][i], contrasts_within_1se=f"{int(within.sum())}/{len(cj)}",
                         sd_ratio=float(np.median(cj["sd_veb"] / cj["sd_tmb"])),
                         theta_veb=m.theta_[j], theta_tmb=cat["theta"][i], sigma_u_veb=m.sigma_u_[j],
                         sigma_u_tmb=cat["sigma_u"][i], sigma_w_veb_median=float(np.median(m.sigma_w_[j])),
                         sigma_w_tmb=cat["sigma_w"][i], tmb_messages=str(cat["messages"][i])[:60]))
    with pd.option_context("display.width", 250, "display.max_columns", 30, "display.precision", 3):
        print(pd.DataFrame(rows).to_string(index=False))
    print(f"glmmTMB: {n_done} gene(s) of {data.n_genes} ({n_cached} from the cache), {len(done)} chunk(s) by "
          f"{args.workers} worker(s), {wall_pool:.1f} s elapsed; failed fits {int((~ok).sum())}; "
          f"CPU {tmb_cpu_gene:.1f} s per gene, wall {tmb_wall_gene:.1f} s per gene")
    print(f"{'':44s}{'measured':>12s}{'target':>12s}")
    print(f"{'VEB wall, all genes (s)':44s}{wall_veb:12.1f}{'<= ' + format(TARGET_WALL_S, '.0f'):>12s}")
    print(f"{'VEB CPU, all genes (s; target 2 cores × 300 s)':44s}{cpu_veb:12.1f}"
          f"{'<= ' + format(TARGET_CORES * TARGET_WALL_S, '.0f'):>12s}")
    print(f"{'speed-up per gene (CPU time)':44s}{ratio:11.1f}x{'>= 10x':>12s}   "
          f"(glmmTMB {tmb_cpu_gene:.1f} s / VEB {veb_cpu_gene:.3f} s per gene)")
    print(f"{'speed-up per gene (wall)':44s}{tmb_wall_gene / (wall_veb / data.n_genes):11.1f}x")
    print(f"{'contrasts within 1 glmmTMB SE':44s}{100 * agr_c:11.1f}%{'':>12s}   ({n_c} contrasts)")
    print(f"{'group effects within 1 glmmTMB SE':44s}{100 * agr_b:11.1f}%{'':>12s}   ({n_b} effects)")
    print(f"median VEB sd / glmmTMB SE of the contrasts {np.nanmedian(cmp_['sd_veb'] / cmp_['sd_tmb']):.2f}; "
          f"peak RSS {hwm:.2f} GB")
    print(f"SUMMARY bench_glmm_nb: {data.n_genes} genes × {data.n_cells} cells ({args.dataset}), {args.threads} "
          f"thread(s): VEB wall {wall_veb:.1f} s (target <= {TARGET_WALL_S:.0f} s), CPU {cpu_veb:.1f} s "
          f"(<= {TARGET_CORES * TARGET_WALL_S:.0f}), peak RSS {hwm:.2f} GB; glmmTMB {tmb_cpu_gene:.1f} CPU s/gene "
          f"over {n_done} genes vs VEB {veb_cpu_gene:.3f}: {ratio:.1f}x (target >= 10x); contrasts within 1 SE "
          f"{100 * agr_c:.1f}% of {n_c}; load average {' '.join(load0)} -> {' '.join(load1)}")


if __name__ == "__main__":
    main()
