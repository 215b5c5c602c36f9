"""Linearly decoded VAE (Svensson et al. 2020): :class:`scnotes.vae.LDVAE`.

It lives with the other count VAEs (same likelihoods, data, training loop);
this module is its short name. AnnData front: :func:`scnotes.tl.ldvae`.
"""
from .vae import LDVAE

__all__ = ["LDVAE"]
