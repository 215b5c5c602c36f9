"""Genome-wide differential expression: the GLMM of every gene fitted at once.

Genes are a leading tensor dimension over a shared design (same cells, groups,
donors, offsets), so the whole panel is one VEB optimisation on the
(genes × groups × donors) sufficient statistics; genes do not share parameters.
"""
from __future__ import annotations

import numpy as np

from ._design import GLMMData
from ._veb import PoissonGLMMVEB

__all__ = ["fit_genes", "agreement"]


def fit_genes(data: GLMMData, guide: str = "full", expectation: str = "analytic", max_epochs: int = 600,
              lr: float = 0.1, seed: int = 0, device: str = "cpu", level: float = 0.95,
              return_model: bool = False, n_epochs: int | None = None, **kwargs):
    """Batched VEB fit of every gene of ``data``; a tidy DataFrame of effects and contrasts.

    Parameters
    ----------
    data : GLMMData
        n_genes genes over a shared design.
    guide, expectation, max_epochs, lr, seed, device, **kwargs
        Passed to :class:`PoissonGLMMVEB` (full batch); ``n_epochs`` is the older
        name of ``max_epochs``. The default (full-rank
        guide, exact expected log-likelihood) gives posterior sds comparable
        to lme4's standard errors; the factorised guide understates them.
    level : float
        Interval coverage.

    Returns
    -------
    DataFrame with columns gene, kind ("group" | "contrast"), term, cell_type,
    condition, estimate, sd, lower, upper, z, p, sigma_u, method — one row per
    (gene, cell group) and per (gene, cell type, condition vs reference). With
    ``return_model=True``, ``(DataFrame, fitted PoissonGLMMVEB)``.
    """
    if n_epochs is not None:
        max_epochs = n_epochs
    m = PoissonGLMMVEB(guide=guide, expectation=expectation, max_epochs=max_epochs, lr=lr, seed=seed,
                       device=device, batch_size=None, **kwargs).fit(data)
    df = m.summary(level=level, method=f"VEB batched ({guide})")
    return (df, m) if return_model else df


def agreement(estimate, ref_estimate, ref_se) -> float:
    """Share of finite entries with |estimate − ref_estimate| ≤ ref_se (one reference standard error)."""
    e = np.asarray(estimate, float)
    r = np.asarray(ref_estimate, float)
    s = np.asarray(ref_se, float)
    ok = np.isfinite(e) & np.isfinite(r) & np.isfinite(s)
    if not ok.any():
        return float("nan")
    return float(np.mean(np.abs(e[ok] - r[ok]) <= s[ok]))
