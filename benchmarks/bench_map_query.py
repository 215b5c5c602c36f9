"""Benchmark: ``scnotes.tl.map_query`` against a de novo fit on the same query cells, per VAE family.

Issue 25's cost target: mapping a query onto a reference costs at most 20 % of a de novo fit's
time on the same query, and the mapped model's held-out query ELBO stays within 5 % of the de
novo fit's (so that the time is not bought with fit). The recipe is the map_query chapter's
(``book/map_query.md``, section "What mapping costs and saves"), run alone and timed with process
CPU as well as wall seconds.

Per family (``--families``, default LDVAE GMVAE NBVAE):

1. a reference fitted with the public API on the reference cells, with a batch covariate
   (``scnotes.tl.ldvae`` / ``gmvae`` / ``nbvae``; n_latent 10, seed 0, batch 128, ``--max-epochs``
   epochs, 100 as the chapter; GMVAE: 10 clusters, 10 pretraining epochs, lr 3e-3, train_size
   0.9; NBVAE: Adam, lr 3e-3, one draw; LDVAE: the defaults), not timed;
2. the query, a new batch, split at random (seeded) into mapping cells (80 %) and held-out cells
   (``--heldout`` 20 %);
3. **mapping**: ``scnotes.tl.map_query(q_map, ref, layer="counts", batch_key=…,
   max_epochs=--map-epochs, lr=--map-lr, seed=0)`` (10 epochs at 5e-2, the chapter's), timed;
4. **de novo**: the same family fitted on the same mapping cells, on the reference's genes the
   mapping cells detect, with the chapter's de novo settings (as many epochs as the reference;
   LDVAE and GMVAE ``train_size=1.0``; NBVAE as its reference), timed;
5. **held-out ELBO** of both on the held-out cells (nats per cell, ``--elbo-samples`` 10 draws),
   from ``scnotes.tl.heldout_elbo`` as the chapter does; gap =
   (mapped − de novo) / |de novo|, target |gap| ≤ 5 % (the chapter's assertion; a gap below
   −5 % would mean the time was bought with fit, one above +5 % that the de novo fit is short of
   data or epochs).

Time = wall (``perf_counter``) and process CPU (``process_time``: every thread) seconds of the
``map_query`` call and of the de novo ``tl`` call (outputs written to the AnnData included in
both); ratio = mapping / de novo, target ≤ 0.20. torch runs on ``--threads`` threads (1), BLAS on
one, ``OMP_WAIT_POLICY=PASSIVE``; the load average before and after each family is printed
(wall seconds mean something only while it stays below the number of cores; CPU seconds much
less depend on it).

Data (``--data``):

* ``sim`` (default, about 1.5 min on one thread): ``scnotes.simulate.simulate_low_rank``
  (rank 5, Gamma shape 0.5: negative binomial counts given the low-rank mean) for
  ``--n-ref`` + ``--n-query`` cells × ``--genes`` genes; the reference cells are split into two
  batches, the query cells are a third; each batch multiplies every gene's rate by its own
  LogNormal(0, 0.3²) factor before the Poisson draw (a batch effect surgery has to learn).
* ``book``: the chapter's three sections with its default parameters: LDVAE on
  ``pbmc_facs_zheng2017`` (1,000 seurat_v3 HVGs) → ``pbmc4k_10x_soupx``; GMVAE on six control
  donors of ``kang2018_ctrl_8donors`` (3,000 cells, 1,000 HVGs) → donors 1244 and 107; NBVAE on
  the CEL-seq2 cells of ``cellbench_3cl_celseq2_dropseq`` (1,000 HVGs) → its Drop-seq cells
  (demuxlet singlets). About 4–5 min on one thread.

Usage: python benchmarks/bench_map_query.py [--data sim|book] [--families LDVAE GMVAE NBVAE]
       [--threads 1] [--max-epochs 100] [--map-epochs 10] [--map-lr 0.05]
       [--n-ref 1200] [--n-query 1000] [--genes 300] [--seed 0]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep (see bench_glmm_nb.py)
# The Makefile's malloc thresholds (`make bench` exports them); run directly, the script restarts
# itself with them so that both ways measure the same.
if __name__ == "__main__" and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
    os.environ["MALLOC_MMAP_THRESHOLD_"] = os.environ["MALLOC_TRIM_THRESHOLD_"] = "4294967296"
    os.execv(sys.executable, [sys.executable] + sys.argv)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

import scnotes
from scnotes.simulate import simulate_low_rank

COUNTS = "counts"
BATCH = "mapping_batch"
FAMILIES = ("LDVAE", "GMVAE", "NBVAE")
TARGET_RATIO, TARGET_GAP = 0.20, -0.05
FIT_KW = dict(batch_size=128)


def uptime():
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


# --- data ------------------------------------------------------------------------------
def sim_data(args):
    """Reference (two batches) and query (a third) from one low-rank Gamma-Poisson simulation."""
    n = args.n_ref + args.n_query
    s = simulate_low_rank(n_cells=n, n_genes=args.genes, rank=5, gamma_shape=0.5, replicate=False,
                          seed=args.seed)
    rng = np.random.default_rng(args.seed + 1)
    batch = np.where(np.arange(n) < args.n_ref, np.where(rng.random(n) < 0.5, "ref0", "ref1"), "query")
    factor = {b: rng.lognormal(0.0, 0.3, size=args.genes) for b in ("ref0", "ref1", "query")}
    x = rng.poisson(s.lam * np.stack([factor[b] for b in batch]))
    keep = x.sum(1) > 0
    a = ad.AnnData(sp.csr_matrix(x[keep].astype(np.float32)),
                   obs=pd.DataFrame({BATCH: pd.Categorical(batch[keep])},
                                    index=[f"c{i}" for i in np.flatnonzero(keep)]),
                   var=pd.DataFrame(index=[f"g{j}" for j in range(args.genes)]))
    a.layers[COUNTS] = a.X.copy()
    is_q = (a.obs[BATCH] == "query").to_numpy()
    ref, qry = a[~is_q].copy(), a[is_q].copy()
    desc = (f"simulate_low_rank rank 5, Gamma shape 0.5, seed {args.seed}; reference {ref.n_obs} cells "
            f"(batches ref0, ref1) x {ref.n_vars} genes, query {qry.n_obs} cells (new batch 'query'); "
            f"{100 * (x == 0).mean():.0f} % zeros")
    return {f: (ref, qry, desc) for f in args.families}


def book_load(name, layer, keys, seed, **kw):
    """The chapter's loader: gene symbols as names, through scnotes.pp.prepare."""
    raw = scnotes.datasets.load(name)
    if "gene_symbol" in raw.var:
        raw.var_names = raw.var["gene_symbol"].astype(str).to_numpy()
        raw.var_names_make_unique()
    return scnotes.pp.prepare(raw, layer=layer, keys=keys, seed=seed, verbose=False, **kw)


def book_data(args):
    """The chapter's three reference / query pairs at its default parameters."""
    out, s = {}, args.seed
    if "LDVAE" in args.families:
        ref = book_load("pbmc_facs_zheng2017", "counts", {"cell_type": "reference_label_key"}, s,
                        n_top_genes=args.n_top_genes)
        ref.obs[BATCH] = scnotes.pp.title_for("pbmc_facs_zheng2017")
        qry = book_load("pbmc4k_10x_soupx", "counts", {"annotation": "query_label_key"}, s)
        qry.obs[BATCH] = scnotes.pp.title_for("pbmc4k_10x_soupx")
        out["LDVAE"] = (ref, qry, (f"pbmc_facs_zheng2017 ({ref.n_obs} cells x {ref.n_vars} HVGs) -> "
                                  f"pbmc4k_10x_soupx ({qry.n_obs} cells)"))
    if "GMVAE" in args.families:
        kang = book_load("kang2018_ctrl_8donors", "counts", {"cell_type": "cell_type_key", "donor": "donor_key"}, s)
        is_q = kang.obs["donor"].astype(str).isin(["1244", "107"]).to_numpy()
        ref = scnotes.pp.prepare(kang[~is_q].copy(), layer=COUNTS, keys={"cell_type": "cell_type_key"},
                                 max_cells=3000, n_top_genes=args.n_top_genes, seed=s, verbose=False)
        qry = kang[is_q].copy()
        for a in (ref, qry):
            a.obs[BATCH] = a.obs["donor"].astype(str).to_numpy()
        out["GMVAE"] = (ref, qry, (f"kang2018_ctrl_8donors: 6 donors ({ref.n_obs} cells x {ref.n_vars} HVGs) -> "
                                  f"donors 1244, 107 ({qry.n_obs} cells)"))
    if "NBVAE" in args.families:
        cb = book_load("cellbench_3cl_celseq2_dropseq", "counts",
                       {"cell_line": "cell_line_key", "technology": "protocol_key"}, s)
        if "demuxlet_cls" in cb.obs:
            cb = cb[cb.obs["demuxlet_cls"].astype(str) == "SNG"].copy()
        proto = cb.obs["technology"].astype(str)
        ref = scnotes.pp.prepare(cb[(proto == "CEL-seq2").to_numpy()].copy(), layer=COUNTS,
                                 n_top_genes=args.n_top_genes, seed=s, verbose=False)
        qry = cb[(proto == "Drop-seq").to_numpy()].copy()
        for a in (ref, qry):
            a.obs[BATCH] = a.obs["technology"].astype(str).to_numpy()
        out["NBVAE"] = (ref, qry, (f"cellbench CEL-seq2 ({ref.n_obs} cells x {ref.n_vars} HVGs) -> "
                                  f"Drop-seq ({qry.n_obs} cells)"))
    return out


# --- the chapter's comparison ----------------------------------------------------------------
def fitter(family, args):
    """(reference fit, de novo fit) of ``family`` with the chapter's settings."""
    base = dict(n_latent=10, layer=COUNTS, batch_key=BATCH, max_epochs=args.max_epochs, seed=args.seed, **FIT_KW)
    if family == "LDVAE":
        return (lambda a: scnotes.tl.ldvae(a, **base),
                lambda a: scnotes.tl.ldvae(a, train_size=1.0, **base))
    if family == "GMVAE":
        kw = dict(base, n_clusters=args.n_clusters, pretrain_epochs=args.pretrain_epochs, lr=3e-3)
        return (lambda a: scnotes.tl.gmvae(a, train_size=0.9, **kw),
                lambda a: scnotes.tl.gmvae(a, train_size=1.0, **kw))
    kw = dict(base, optimizer="adam", lr=3e-3, n_samples=1)
    fit = lambda a: scnotes.tl.nbvae(a, **kw)  # the chapter's nb_kw: the same for both
    return fit, fit


def gap_word(gap):
    """The ELBO target read as the chapter asserts it: mapped within 5 % of de novo, either way."""
    if abs(gap) <= -TARGET_GAP:
        return "met"
    return "NOT met (mapped worse)" if gap < 0 else "outside (mapped better: de novo under-fitted)"


def timed(fn, *a, **kw):
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn(*a, **kw)
    return out, time.perf_counter() - t0, time.process_time() - c0


def run_family(family, ref, qry, args):
    fit_ref, fit_new = fitter(family, args)
    q_map, q_held = scnotes.tl.heldout_split(qry, args.heldout, args.seed)
    load0 = uptime()
    model, t_ref, _ = timed(fit_ref, ref)
    mapped, t_map, c_map = timed(scnotes.tl.map_query, q_map, model, layer=COUNTS, batch_key=BATCH,
                                 max_epochs=args.map_epochs, lr=args.map_lr, seed=args.seed)
    genes = scnotes.tl.shared_genes(model, q_map, layer=COUNTS)
    q_new = q_map[:, genes].copy()
    new, t_new, c_new = timed(fit_new, q_new)
    load1 = uptime()
    e_map, e_new = (scnotes.tl.heldout_elbo(m, q_held, genes, layer=COUNTS, batch_key=BATCH,
                                            n_samples=args.elbo_samples) for m in (mapped, new))
    return dict(family=family, n_ref=ref.n_obs, n_map=q_map.n_obs, n_held=q_held.n_obs, genes=len(genes),
                ref_s=t_ref, map_s=t_map, map_cpu=c_map, new_s=t_new, new_cpu=c_new,
                ratio=t_map / t_new, ratio_cpu=c_map / c_new, e_map=e_map, e_new=e_new,
                gap=(e_map - e_new) / abs(e_new), load0=load0, load1=load1)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", choices=("sim", "book"), default="sim")
    ap.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--max-epochs", type=int, default=100, help="reference and de novo epochs (the chapter's 100)")
    ap.add_argument("--pretrain-epochs", type=int, default=10, help="GMVAE pretraining epochs (the chapter's 10)")
    ap.add_argument("--n-clusters", type=int, default=10, help="GMVAE clusters (the chapter's 10)")
    ap.add_argument("--map-epochs", type=int, default=10, help="map_query epochs (the chapter's 10)")
    ap.add_argument("--map-lr", type=float, default=5e-2, help="map_query learning rate (the chapter's 5e-2)")
    ap.add_argument("--heldout", type=float, default=0.2, help="share of the query held out for the ELBO")
    ap.add_argument("--elbo-samples", type=int, default=10, help="Monte Carlo draws per held-out cell")
    ap.add_argument("--n-ref", type=int, default=1200, help="sim: reference cells")
    ap.add_argument("--n-query", type=int, default=1000, help="sim: query cells")
    ap.add_argument("--genes", type=int, default=300, help="sim: genes")
    ap.add_argument("--n-top-genes", type=int, default=1000, help="book: HVGs of each reference")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    print(f"machine: {os.cpu_count()} CPUs, load average {uptime()} at start; torch {torch.__version__}, "
          f"{args.threads} thread(s), OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}; "
          f"reference / de novo {args.max_epochs} epochs, map_query {args.map_epochs} epochs at lr {args.map_lr}",
          flush=True)
    t_all = time.perf_counter()
    data = sim_data(args) if args.data == "sim" else book_data(args)
    rows = []
    for fam in args.families:
        ref, qry, desc = data[fam]
        print(f"{fam}: {desc}", flush=True)
        r = run_family(fam, ref, qry, args)
        rows.append(r)
        print(f"  reference fit {r['ref_s']:.1f} s ({r['n_ref']} cells); query {r['n_map']} mapping + "
              f"{r['n_held']} held-out cells, {r['genes']} genes scored; load average {r['load0']} before, "
              f"{r['load1']} after", flush=True)
        print(f"  {'':34s}{'mapping':>10s}{'de novo':>10s}{'ratio':>8s}{'target':>10s}")
        print(f"  {'wall s':34s}{r['map_s']:10.2f}{r['new_s']:10.2f}{r['ratio']:8.3f}{'<= 0.20':>10s}  "
              f"{'met' if r['ratio'] <= TARGET_RATIO else 'NOT met'}")
        print(f"  {'CPU s':34s}{r['map_cpu']:10.2f}{r['new_cpu']:10.2f}{r['ratio_cpu']:8.3f}{'<= 0.20':>10s}  "
              f"{'met' if r['ratio_cpu'] <= TARGET_RATIO else 'NOT met'}")
        print(f"  {'held-out ELBO (nats/cell)':34s}{r['e_map']:10.1f}{r['e_new']:10.1f}{100 * r['gap']:+7.1f}%"
              f"{'|gap|<=5 %':>12s}  {gap_word(r['gap'])}", flush=True)
    tab = pd.DataFrame(rows).set_index("family")
    print(tab[["n_map", "genes", "map_s", "new_s", "ratio", "map_cpu", "new_cpu", "ratio_cpu", "e_map", "e_new",
               "gap"]].round(3).to_string())
    parts = [f"{f} {r.map_s:.1f}/{r.new_s:.1f} s = {r.ratio:.2f} (CPU {r.ratio_cpu:.2f}), ELBO gap "
             f"{100 * r.gap:+.1f} %" for f, r in tab.iterrows()]
    ratio_ok = bool((tab["ratio"] <= TARGET_RATIO).all())
    gap_ok = bool((tab["gap"].abs() <= -TARGET_GAP).all())
    print(f"SUMMARY bench_map_query ({args.data}, {args.threads} thread(s), map {args.map_epochs} vs "
          f"{args.max_epochs} epochs): " + "; ".join(parts)
          + f"; ratio <= 0.20 {'met' if ratio_ok else 'NOT met'}, ELBO within 5 % {'met' if gap_ok else 'NOT met'}; "
          f"load {rows[0]['load0']} -> {rows[-1]['load1']}; total {time.perf_counter() - t_all:.0f} s")


if __name__ == "__main__":
    main()
