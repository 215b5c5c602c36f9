"""AnnData front for the Gaussian-mixture VAE (being written)."""
__all__ = []
