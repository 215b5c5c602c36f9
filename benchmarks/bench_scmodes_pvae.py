"""PVAE against the reference it reproduces: scmodes' ``PVAE`` on the seed simulation.

The seed page "Variational autoencoders for scRNA-seq data" fits scmodes' ``lra/vae.py``
(Sarkar & Stephens 2021). This script fits scmodes' PVAE and then scnotes' PVAE in the same
process, on the same data, thread count and settings, and prints time and held-out fit side
by side.

Data: the seed simulation (``scnotes.simulate.simulate_low_rank``: 500 cells × 100 genes,
rank 3, u ~ Gamma(0.1, 10)), its independent replicate ``x_val`` as held-out data.
Settings (the seed's): latent 10, full batch (one step per epoch), RMSprop lr 1e-2,
10 Monte Carlo samples, 3,000 epochs, no size factors, no validation split.

Held-out score: the mean Poisson log-likelihood per entry of ``x_val`` at the model's
prediction from ``x_val`` (the seed's protocol), scmodes in eval mode (its ``predict``
leaves BatchNorm in training mode; switching it off first is the fair reading).

scmodes is not vendored: pass the path of its ``lra/vae.py`` (or of a checkout of
https://github.com/aksarkar/scmodes), e.g.

    python benchmarks/bench_scmodes_pvae.py --scmodes ~/src/scmodes [--epochs 3000] [--threads 1]

Two scnotes fits per seed: the default PVAE (BatchNorm in the decoder's hidden layers) and
``decoder_batch_norm=False``, which is scmodes' decoder (Linear → ReLU). Time is process CPU
time (one thread, so other load on the machine barely moves it); wall time is printed too.

Target (issue "Atlas scale"): scnotes ≤ 1.0× scmodes' seconds, at no loss of held-out
log-likelihood.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import time
from pathlib import Path

import numpy as np
import torch

from scnotes.metrics import poisson_loglik
from scnotes.simulate import simulate_low_rank
from scnotes.vae import PVAE


def load_scmodes_vae(path: str):
    p = Path(path).expanduser()
    if p.is_dir():
        hits = [q for q in (p / "src/scmodes/lra/vae.py", p / "scmodes/lra/vae.py", p / "lra/vae.py") if q.exists()]
        if not hits:
            raise SystemExit(f"no lra/vae.py under {p}")
        p = hits[0]
    spec = importlib.util.spec_from_file_location("scmodes_vae", p)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def fit_scmodes(mod, x, x_val, epochs, seed):
    """(wall s, process CPU s, held-out log-likelihood per entry)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        m = mod.PVAE(x.shape[1], 10)
        t0, c0 = time.perf_counter(), time.process_time()
        m.fit(torch.tensor(x, dtype=torch.float), max_epochs=epochs, n_samples=10, lr=1e-2)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        m.eval()
        lam = m.predict(torch.tensor(x_val, dtype=torch.float))
    return seconds, cpu, poisson_loglik(x_val, lam)


def fit_scnotes(x, x_val, epochs, seed, decoder_batch_norm=True):
    """(wall s, process CPU s, held-out log-likelihood per entry)."""
    m = PVAE(x.shape[1], n_latent=10, seed=seed, decoder_batch_norm=decoder_batch_norm)
    t0, c0 = time.perf_counter(), time.process_time()
    m.fit(x, s=1, max_epochs=epochs, lr=1e-2, n_samples=10, progress=False)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return seconds, cpu, poisson_loglik(x_val, m.predict(x_val, s=np.ones(len(x_val))))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scmodes", default=os.environ.get("SCMODES_PATH"),
                    help="path of scmodes' lra/vae.py or a checkout (default: $SCMODES_PATH)")
    ap.add_argument("--epochs", type=int, default=3000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    a = ap.parse_args(argv)
    if not a.scmodes:
        print("bench_scmodes_pvae: skipped (pass --scmodes PATH or set SCMODES_PATH to scmodes' lra/vae.py)")
        return
    torch.set_num_threads(a.threads)
    mod = load_scmodes_vae(a.scmodes)
    sim = simulate_low_rank(n_cells=500, n_genes=100, rank=3, seed=0)
    x, x_val = sim.x.astype(float), sim.x_val.astype(float)
    # Untimed warm-up of both (imports, allocator, Lightning set-up).
    fit_scmodes(mod, x, x_val, 5, 0)
    fit_scnotes(x, x_val, 5, 0)
    fit_scnotes(x, x_val, 5, 0, decoder_batch_norm=False)
    rows = []
    for seed in a.seeds:
        ref = fit_scmodes(mod, x, x_val, a.epochs, seed)
        for label, bn in (("scnotes PVAE (default decoder, BatchNorm)", True),
                          ("scnotes PVAE decoder_batch_norm=False", False)):
            us = fit_scnotes(x, x_val, a.epochs, seed, decoder_batch_norm=bn)
            ratio, ratio_wall = us[1] / ref[1], us[0] / ref[0]
            rows.append((label, ratio, us[2] - ref[2]))
            print(f"seed {seed} | {label}: CPU {us[1]:.1f} s vs scmodes {ref[1]:.1f} s, ratio {ratio:.2f} "
                  f"(wall {us[0]:.1f} vs {ref[0]:.1f}, {ratio_wall:.2f}) [target <= 1.00: "
                  f"{'met' if ratio <= 1 else 'missed'}] | held-out log-lik per entry {us[2]:.3f} vs "
                  f"{ref[2]:.3f} [target >= scmodes: {'met' if us[2] >= ref[2] else 'missed'}]", flush=True)
    for label in dict.fromkeys(r[0] for r in rows):
        r = np.array([(q[1], q[2]) for q in rows if q[0] == label])
        print(f"SUMMARY bench_scmodes_pvae {label}: 500 x 100, latent 10, {a.epochs} epochs, {a.threads} "
              f"thread(s), {len(r)} seed(s): CPU-time ratio mean {r[:, 0].mean():.2f} (max {r[:, 0].max():.2f}; "
              f"target <= 1.00); held-out log-lik minus scmodes' mean {r[:, 1].mean():+.3f} (min "
              f"{r[:, 1].min():+.3f}; target >= 0)")


if __name__ == "__main__":
    main()
