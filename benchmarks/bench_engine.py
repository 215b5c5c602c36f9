"""Training engine overhead: PyTorch Lightning against the hand-written loop it replaced.

One run, alternating the two engines on the same model, data, seed and thread
count (``--threads``, default 1), timing each fit after one untimed warm-up fit:

1. the seed simulation (500 × 100), PVAE latent 10, full batch, RMSprop lr 1e-2,
   10 Monte Carlo samples (per-epoch time over ``--sim-epochs`` epochs);
2. ``pbmc_facs_zheng2017`` (3,874 cells, genes in ≥ 1 % of cells, CSR), batch 128
   (per-epoch time over ``--pbmc-epochs`` epochs).

Target (issue "Atlas scale"): Lightning ≤ 1.15× the loop's seconds per epoch.
The loop is only importable from the commit that still had it
(``scnotes.vae._train.train``, commit 7766576 and before); after that, this script reports
Lightning alone. Last run with both (2026-12-02, 2-core machine shared with a book build,
alternating engines, best of 3): seed simulation 102.6 vs 100.5 ms/epoch (1.02×),
zheng2017 batch 128 68.0 vs 66.1 s/epoch (1.03×, 10 samples, one thread).

    python benchmarks/bench_engine.py [--threads 1] [--sim-epochs 300] [--pbmc-epochs 3] [--repeats 2]
"""
from __future__ import annotations

import argparse
import time
import types

import numpy as np
import scipy.sparse as sp
import torch

import scnotes
from scnotes.simulate import simulate_low_rank
from scnotes.vae import PVAE
from scnotes.vae._lightning import fit_lightning

try:
    from scnotes.vae._train import train as loop_train
except ImportError:  # the loop is gone
    loop_train = None


def _with_engine(model, fn):
    def _t(self, data, tr, va, gen, rng, kw):
        kw = {k: v for k, v in kw.items() if k not in ("accelerator", "devices", "strategy")}
        return fn(self.module, data, generator=gen, rng=rng, desc="bench", train_idx=tr,
                  validation_idx=va if len(va) else None, **kw)
    if fn is not fit_lightning:
        model._train = types.MethodType(_t, model)
    return model


def _time(make, fit_kw, engine, repeats):
    best = np.inf
    for _ in range(repeats):
        m = _with_engine(make(), engine)
        t0 = time.perf_counter()
        m.fit(**fit_kw)
        best = min(best, (time.perf_counter() - t0) / m.n_epochs_)
    return best, m


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sim-epochs", type=int, default=300)
    ap.add_argument("--pbmc-epochs", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    sim = simulate_low_rank(n_cells=500, n_genes=100, rank=3, seed=0)
    ad = scnotes.datasets.load("pbmc_facs_zheng2017")
    x = sp.csr_matrix(ad.X)
    keep = np.asarray((x > 0).mean(0)).ravel() >= 0.01
    x = x[:, keep]
    cases = {
        "seed simulation, full batch": (lambda: PVAE(100, n_latent=10, seed=0),
                                        dict(x=sim.x.astype(float), s=1, max_epochs=a.sim_epochs,
                                             lr=1e-2, n_samples=10, progress=False)),
        "zheng2017, batch 128": (lambda: PVAE(x.shape[1], n_latent=10, seed=0),
                                 dict(x=x, max_epochs=a.pbmc_epochs, batch_size=128, lr=1e-2,
                                      n_samples=10, progress=False)),
    }
    for name, (make, kw) in cases.items():
        # One untimed warm-up fit of each engine (imports, allocator, numba-free paths).
        engines = [("lightning", fit_lightning)] + ([("loop", loop_train)] if loop_train else [])
        for _, fn in engines:
            _with_engine(make(), fn).fit(**dict(kw, max_epochs=2))
        # Alternate the engines repeat by repeat so a change in machine load hits both.
        t = {label: np.inf for label, _ in engines}
        for _ in range(a.repeats):
            for label, fn in engines:
                t[label] = min(t[label], _time(make, kw, fn, 1)[0])
        if loop_train:
            print(f"{name}: Lightning {t['lightning'] * 1e3:.1f} ms/epoch, loop {t['loop'] * 1e3:.1f} "
                  f"ms/epoch, ratio {t['lightning'] / t['loop']:.2f}× (target ≤ 1.15×), {a.threads} thread(s)")
        else:
            print(f"{name}: Lightning {t['lightning'] * 1e3:.1f} ms/epoch (loop removed; "
                  f"target ≤ 1.15× of the loop, see benchmarks/README.md), {a.threads} thread(s)")


if __name__ == "__main__":
    main()
