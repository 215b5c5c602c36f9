"""scnotes: count models for single-cell RNA-seq, and the book that uses them.

Modules (one idea each):

- :mod:`scnotes.datasets`     registry and loader of the shared real datasets
- :mod:`scnotes.pp`           validate and prepare a reader's AnnData for a chapter
- :mod:`scnotes.likelihoods`  Poisson / NB / ZINB log-pmfs in torch
- :mod:`scnotes.simulate`     low-rank Gamma-Poisson simulation, thinning, masks
- :mod:`scnotes.vae`          count VAEs: PVAE / NBVAE / ZINBVAE, LDVAE, GMVAE (size factors,
                              covariates, masks, IWAE), trained through Lightning; query mapping
- :mod:`scnotes.nmf`          Poisson NMF, weighted NMF, NB matrix factorisation, topic form
- :mod:`scnotes.mnn`          mutual nearest neighbours and MNN batch correction
- :mod:`scnotes.glmm`         Poisson and NB GLMMs for DE (VEB, NUTS), their evaluation, and the
                              R / Python references (lme4, glmmTMB, edgeR, DESeq2, limma)
- :mod:`scnotes.gmvae`        Gaussian-mixture VAE
- :mod:`scnotes.ldvae`        linearly decoded VAE
- :mod:`scnotes.metrics`      one embedding scorer (clustering, integration) and held-out
                              count log-likelihoods
- :mod:`scnotes.tl`, :mod:`scnotes.pl`  AnnData fronts (scanpy style) and plots
- :mod:`scnotes.cli`          ``scnotes run CHAPTER`` (papermill on a chapter, then a rendered HTML report)
- :mod:`scnotes.report`       what a chapter reports: glued numbers and passages, tables,
                              computed comparison words, timings, package versions
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
