"""Gaussian-mixture VAE for clustering with batch covariates (Dilokthanakul et al. 2016).

Planned: not implemented yet (see the GMVAE seed page).
"""
