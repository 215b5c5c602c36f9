"""The training contract shared by every VAE of the package (count VAEs, LDVAE, GMVAE),
and the optimisers. The one engine that trains them is PyTorch Lightning
(:mod:`scnotes.vae._lightning`); the hand-written loop it replaced was removed after
``benchmarks/bench_engine.py`` measured Lightning at 1.02× (seed simulation, full batch) and
1.03× (``pbmc_facs_zheng2017``, batch 128) of the loop's seconds per epoch.

A module plugs in through one method, ``training_terms(x, w, s, c, n_samples,
generator, objective=..., kl_weight=...)``, returning per-cell tensors: the
``objective`` to maximise, the ``elbo`` (or ``iwae``) to log, and any named
loss terms (``reconstruction``, ``kl_z``, …) to log.

Loss scaling: each step minimises −(N / B) Σ_{i ∈ batch} objective_i, an
estimate of the full-data negative bound −Σ_i objective_i that is unbiased up
to the dependence that BatchNorm in training mode creates between a cell's
bound and its batch-mates. With ``batch_size=None`` this is exactly the seed's
full-batch loss (one step per epoch).

Training record: one row per epoch, nats per cell (the mean over the cells of
the epoch's minibatches, in training mode at the parameters current when each
minibatch was seen): ``loss`` (−objective), ``elbo``, every loss term, and with
a validation set the same quantities prefixed ``validation_``, evaluated in
eval mode at the end of the epoch with the KL weight 1 (one posterior draw,
the same seeded draws every epoch so epochs are comparable).
"""
from __future__ import annotations

import torch

__all__ = ["make_optimizer"]


def make_optimizer(name: str, params, lr: float, weight_decay: float = 0.0):
    """RMSprop (the seed's choice) or Adam (scvi-tools' choice).

    Raises ValueError for another name."""
    name = name.lower()
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, eps=0.01 if weight_decay else 1e-8)
    raise ValueError(f"optimizer must be 'rmsprop' or 'adam', got {name!r}")
