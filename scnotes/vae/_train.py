"""The training contract shared by every VAE of the package (count VAEs, LDVAE, GMVAE),
and the optimisers. The one engine that trains them is PyTorch Lightning
(:mod:`scnotes.vae._lightning`); the hand-written loop it replaced was removed after
``benchmarks/bench_engine.py`` measured Lightning at 1.02× (seed simulation, full batch) and
1.03× (``pbmc_facs_zheng2017``, batch 128) of the loop's seconds per epoch.

A module plugs in through one method, ``training_terms(x, w, s, c, n_samples,
generator, objective=..., kl_weight=...)``, returning a :class:`LossTerms` of
per-cell tensors: the ``loss`` to minimise, the ``reconstruction`` term, the
named KL terms (``kl_z``, …) and the bound to log (``elbo`` or ``iwae``), the
record scvi-tools' modules return as ``LossOutput``.

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

import dataclasses

import torch

__all__ = ["LossTerms", "make_optimizer"]


@dataclasses.dataclass(frozen=True)
class LossTerms:
    """One minibatch's loss and its logged parts; every tensor has shape B (cells), in nats.

    Fields
    ------
    loss : what training minimises per cell, −objective (with a KL warm-up or free
        bits it differs from −``elbo``); the record's ``loss`` column is its mean.
    reconstruction : E_q[Σ_j w_ij log p(x_ij | z)], or None (the IWAE objective).
    kl : the KL terms by their record names (``kl_z``, ``kl_library``, ``kl_w``, …),
        in the order they are summed.
    extra : further logged quantities by name: the bound, ``elbo`` or ``iwae``.

    The idea of scvi-tools' ``LossOutput`` (``scvi/module/base/_base_module.py``):
    the training plan reads fields, not dictionary keys with a meaning.
    """

    loss: torch.Tensor
    reconstruction: torch.Tensor | None = None
    kl: dict = dataclasses.field(default_factory=dict)
    extra: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def from_elbo(cls, reconstruction, kl: dict, kl_weight: float = 1.0) -> "LossTerms":
        """The ELBO's record: ``elbo`` = reconstruction − Σ kl (logged) and ``loss`` =
        −(reconstruction − ``kl_weight`` Σ kl), the warmed-up objective (Bowman et al.
        2016); at weight 1 the loss is −elbo itself."""
        kl_sum = sum(kl.values())
        elbo = reconstruction - kl_sum
        objective = elbo if kl_weight == 1 else reconstruction - kl_weight * kl_sum
        return cls(loss=-objective, reconstruction=reconstruction, kl=dict(kl), extra={"elbo": elbo})

    @property
    def kl_sum(self):
        """Σ of the KL terms, shape B (0 when there are none)."""
        return sum(self.kl.values())

    def columns(self) -> dict:
        """The per-cell quantities the training record logs, by column name: the named
        terms in sorted order, then ``loss`` (the record's column order)."""
        named = dict(self.kl, **self.extra)
        if self.reconstruction is not None:
            named["reconstruction"] = self.reconstruction
        return {**{k: named[k] for k in sorted(named)}, "loss": self.loss}


def make_optimizer(name: str, params, lr: float, weight_decay: float = 0.0):
    """RMSprop (the seed's choice) or Adam (scvi-tools' choice).

    Raises ValueError for another name."""
    name = name.lower()
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, eps=0.01 if weight_decay else 1e-8)
    raise ValueError(f"optimizer must be 'rmsprop' or 'adam', got {name!r}")
