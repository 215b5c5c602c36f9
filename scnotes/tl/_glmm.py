"""AnnData front for the GLMM (being written)."""
__all__ = []
