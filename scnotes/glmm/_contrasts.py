"""The reference distribution of a GLMM contrast: sample-level degrees of freedom and the
Satterthwaite approximation from the posterior covariance.

A condition contrast δ = cᵀθ of the NB GLMM (θ = (b, γ, u, w), posterior covariance Σ) has
posterior variance V = cᵀΣc. Σ = (H + P(σ))⁻¹, with H the expected information of the cells
and P(σ) the prior precision, so V mixes cell-level noise (known almost exactly: thousands of
cells) with the parts that rest on an estimated variance component, σ_u² (donors) or σ_w²
(samples). Differentiating Σ = (H + P)⁻¹ gives ∂V/∂σ_k² = ‖(Σc)_k‖² / σ_k⁴, where (Σc)_k are the
coordinates whose prior variance is σ_k², so the share of V that rests on σ_k² is

    V_k = σ_k² ∂V/∂σ_k² = ‖(Σc)_k‖² / σ_k²,

and with Var(σ̂_k²) ≈ 2σ_k⁴ / d_k the Satterthwaite (1946, Biometrics Bull 2:110) degrees of
freedom of T = δ̂ / √V are

    ν = V² / Σ_k V_k² / d_k.

This is the approximation lmerTest uses for LMMs (Kuznetsova, Brockhoff & Christensen 2017,
J Stat Softw 82:13), here with the VEB's posterior covariance in place of the REML one;
Kenward–Roger would also correct V for σ̂'s uncertainty, which matters little once σ̂² is
moderated across genes (its df then include the prior df d₀, Smyth 2004). ν reduces to the
sample-level df d_k when V is all sample variance and grows without bound as V_cell dominates.
"""
from __future__ import annotations

import numpy as np

__all__ = ["residual_df", "satterthwaite_df", "contrast_variance_shares"]


def residual_df(X) -> float:
    """Residual degrees of freedom ``n − rank(X)`` of a design ``X`` (n_rows × n_columns)."""
    X = np.asarray(X, dtype=float)
    if X.ndim != 2:
        raise ValueError(f"X must be 2-d, got shape {X.shape}")
    return float(X.shape[0] - (np.linalg.matrix_rank(X) if X.size else 0))


def contrast_variance_shares(cov, c, components):
    """V = cᵀΣc per gene and the part V_k of it that rests on each variance component.

    Parameters
    ----------
    cov : array (n_genes, P, P)
        Posterior covariance of all coordinates (b, γ, u, w).
    c : array (P,)
        The contrast.
    components : list of (index array into P, sigma2 array (n_genes,))
        The coordinates that share prior variance ``sigma2`` (e.g. every u; the w of one cell type).

    Returns
    -------
    V : (n_genes,), shares : (n_genes, n_components) with shares[:, k] = ‖(Σc)_k‖² / σ_k².
    """
    cov = np.asarray(cov, dtype=float)
    Sc = np.einsum("jpq,q->jp", cov, np.asarray(c, dtype=float))
    V = Sc @ np.asarray(c, dtype=float)
    shares = np.zeros((cov.shape[0], len(components)))
    for k, (idx, s2) in enumerate(components):
        idx = np.asarray(idx, dtype=int)
        if idx.size:
            shares[:, k] = (Sc[:, idx] ** 2).sum(1) / np.asarray(s2, dtype=float)
    return V, shares


def satterthwaite_df(V, shares, df, floor=None):
    """ν = V² / Σ_k shares_k² / df_k per gene.

    Parameters
    ----------
    V : (n_genes,) contrast variance; shares : (n_genes, n_components); df : (n_components,) or
        (n_genes, n_components) degrees of freedom of each component's variance estimate
        (``np.inf``: known, no contribution).
    floor : float, optional
        Lower bound on ν (the smallest df of a component that carries the contrast).

    Returns
    -------
    ν (n_genes,): ``np.inf`` where no component contributes.
    """
    shares = np.asarray(shares, dtype=float)
    df = np.broadcast_to(np.asarray(df, dtype=float), shares.shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        denom = np.where(np.isfinite(df) & (df > 0), shares ** 2 / df, 0.0).sum(1)
        nu = np.where(denom > 0, np.asarray(V, float) ** 2 / denom, np.inf)
    if floor is not None:
        nu = np.maximum(nu, floor)
    return nu
