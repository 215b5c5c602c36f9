"""Linearly decoded VAE (Svensson et al. 2020).

Planned: not implemented yet (see the LDVAE seed page).
"""
