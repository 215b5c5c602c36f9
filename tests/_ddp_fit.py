"""Run by tests/test_ddp.py in a subprocess: fit a PVAE with N processes (DDP, CPU/gloo).

Usage: python tests/_ddp_fit.py OUT.json DEVICES [cpu|cuda]
Lightning's DDP launcher starts the other ranks by re-running this command. With ``cuda``
(scripts/gpu_check.sh) each rank's model lives on its own GPU, ``cuda:LOCAL_RANK`` (the
variable Lightning's launcher sets for the ranks it starts; rank 0 is this process), and
the ranks train with NCCL and synchronised BatchNorm.
"""
import json
import os
import sys

import numpy as np
import torch

from scnotes.simulate import simulate_low_rank
from scnotes.vae import PVAE

out, devices = sys.argv[1], int(sys.argv[2])
kind = sys.argv[3] if len(sys.argv) > 3 else "cpu"
device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if kind == "cuda" else "cpu"
torch.set_num_threads(1)
sim = simulate_low_rank(n_cells=600, n_genes=40, rank=2, gamma_shape=2.0, seed=3)
x = sim.x[sim.x.sum(1) > 0].astype(float)
m = PVAE(x.shape[1], n_latent=2, hidden_dim=16, seed=0, device=device)
accelerator = "gpu" if kind == "cuda" else "cpu"
kw = dict(strategy="ddp", devices=devices, accelerator=accelerator) if devices > 1 else {}
m.fit(x, max_epochs=40, batch_size=64, train_size=0.8, n_samples=2, progress=False, **kw)
if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
    sys.exit(0)
xv = x[m.validation_indices_]
json.dump({"device": str(next(m.module.parameters()).device), "val_elbo": float(m.elbo(xv, n_samples=50).mean()),
           "history": m.history_["loss"].tolist(),
           "bn_types": sorted({type(b).__name__ for b in m.module.modules() if "BatchNorm" in type(b).__name__})},
          open(out, "w"))
