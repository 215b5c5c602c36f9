"""Run by tests/test_ddp.py in a subprocess: fit a PVAE with N processes (DDP, CPU/gloo).

Usage: python tests/_ddp_fit.py OUT.json DEVICES
Lightning's DDP launcher starts the other ranks by re-running this command.
"""
import json
import sys

import numpy as np
import torch

from scnotes.simulate import simulate_low_rank
from scnotes.vae import PVAE

out, devices = sys.argv[1], int(sys.argv[2])
torch.set_num_threads(1)
sim = simulate_low_rank(n_cells=600, n_genes=40, rank=2, gamma_shape=2.0, seed=3)
x = sim.x[sim.x.sum(1) > 0].astype(float)
m = PVAE(x.shape[1], n_latent=2, hidden_dim=16, seed=0)
kw = dict(strategy="ddp", devices=devices, accelerator="cpu") if devices > 1 else {}
m.fit(x, max_epochs=40, batch_size=64, train_size=0.8, n_samples=2, progress=False, **kw)
if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
    sys.exit(0)
xv = x[m.validation_indices_]
json.dump({"val_elbo": float(m.elbo(xv, n_samples=50).mean()),
           "history": m.history_["loss"].tolist(),
           "bn_types": sorted({type(b).__name__ for b in m.module.modules() if "BatchNorm" in type(b).__name__})},
          open(out, "w"))
