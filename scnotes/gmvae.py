"""Gaussian-mixture VAE for clustering counts with batch covariates (Dilokthanakul et al. 2016).

Re-exports: the estimator :class:`GMVAE` (:mod:`scnotes.vae`) and its module
:class:`GMVAEModule`, and the AnnData front :func:`gmvae` (:mod:`scnotes.tl`).
Chapter: ``book/gmvae.md``.
"""
from .tl import gmvae
from .vae import GMVAE
from .vae._gmvae import GMVAEModule  # the torch module is not in scnotes.vae's public list

__all__ = ["GMVAE", "GMVAEModule", "gmvae"]
