"""Gaussian-mixture VAE for clustering counts with batch covariates (Dilokthanakul et al. 2016).

Re-exports: the estimator :class:`GMVAE` and its module :class:`GMVAEModule`
(:mod:`scnotes.vae._gmvae`), and the AnnData front :func:`gmvae` (:mod:`scnotes.tl`).
Chapter: ``book/gmvae.md``.
"""
from .tl._gmvae import gmvae
from .vae._gmvae import GMVAE, GMVAEModule

__all__ = ["GMVAE", "GMVAEModule", "gmvae"]
