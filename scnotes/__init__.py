"""scnotes: count models for single-cell RNA-seq, and the book that uses them.

Modules (one idea each):

- :mod:`scnotes.datasets`     registry and loader of the shared real datasets
- :mod:`scnotes.pp`           validate and prepare a reader's AnnData for a chapter
- :mod:`scnotes.likelihoods`  Poisson / NB / ZINB log-pmfs in torch
- :mod:`scnotes.simulate`     low-rank Gamma-Poisson simulation, thinning, masks
- :mod:`scnotes.vae`          PVAE / NBVAE / ZINBVAE (size factors, covariates, masks, IWAE)
- :mod:`scnotes.nmf`          Poisson NMF, weighted NMF, NB matrix factorisation, topic form
- :mod:`scnotes.mnn`          mutual nearest neighbours and MNN batch correction
- :mod:`scnotes.glmm`         Poisson GLMM for DE: LMM facts, VEB, NUTS, lme4 reference
- :mod:`scnotes.gmvae`        Gaussian-mixture VAE
- :mod:`scnotes.ldvae`        linearly decoded VAE
- :mod:`scnotes.metrics`      integration / clustering metrics
- :mod:`scnotes.tl`, :mod:`scnotes.pl`  AnnData fronts (scanpy style) and plots
- :mod:`scnotes.cli`          ``scnotes run CHAPTER`` (papermill on a chapter)
- :mod:`scnotes.report`       package versions for closing cells
- ``scnotes.settings``        library-wide settings: ``scnotes.settings.progress`` (progress bars)
"""
from importlib import import_module

__version__ = "0.1.0"

from ._settings import settings  # noqa: E402  (cheap: no torch/scanpy)

_SUBMODULES = ("datasets", "pp", "likelihoods", "simulate", "vae", "nmf", "mnn", "glmm",
               "gmvae", "ldvae", "metrics", "tl", "pl", "cli", "report")


def __getattr__(name):
    # Lazy import: `import scnotes` stays cheap (no torch/scanpy until needed).
    if name in _SUBMODULES:
        return import_module(f"scnotes.{name}")
    raise AttributeError(f"module 'scnotes' has no attribute {name!r}")
