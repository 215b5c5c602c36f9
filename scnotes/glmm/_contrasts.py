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

__all__ = ["residual_df", "satterthwaite_df", "contrast_variance_shares", "variance_information", "sample_dispersion",
           "satterthwaite_df_info"]


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


def variance_information(cov, components):
    """Restricted-likelihood Fisher information of the variance components, from the posterior.

    For Gaussian random effects with prior variances σ_a² and posterior covariance C (fixed
    effects integrated out under a vague prior: the REML posterior), the expected information is

        I_ab = ½ tr(M_ab M_ba),  M_aa = (I − C_aa/σ_a²)/σ_a²,  M_ab = −C_ab/(σ_a² σ_b²)  (a ≠ b),

    the posterior form of ½ tr(P Z_a Z_aᵀ P Z_b Z_bᵀ) (Harville 1977, JASA 72:320). It counts only
    the information the data carry: an effect whose posterior equals its prior adds nothing, and it
    stays finite as σ_a → 0 (I → ½ Σ 1/v_k², v_k the effect's sampling variance). The off-diagonal
    terms carry the confounding of components (donor and sample effects when donors are split
    between conditions).

    Parameters
    ----------
    cov : (n_genes, P, P); components : list of (index array into P, sigma2 (n_genes,))

    Returns
    -------
    (n_genes, n_components, n_components)
    """
    cov = np.asarray(cov, dtype=float)
    J, A = cov.shape[0], len(components)
    info = np.zeros((J, A, A))
    for a, (ia, sa) in enumerate(components):
        ia = np.asarray(ia, dtype=int)
        sa = np.asarray(sa, dtype=float)
        if not ia.size:
            continue
        Caa = cov[:, ia][:, :, ia]
        Maa = (np.eye(ia.size)[None] - Caa / sa[:, None, None]) / sa[:, None, None]
        info[:, a, a] = 0.5 * (Maa ** 2).sum((1, 2))
        for b in range(a + 1, A):
            ib, sb = np.asarray(components[b][0], dtype=int), np.asarray(components[b][1], dtype=float)
            if not ib.size:
                continue
            Mab = -cov[:, ia][:, :, ib] / (sa * sb)[:, None, None]
            info[:, a, b] = info[:, b, a] = 0.5 * (Mab ** 2).sum((1, 2))
    return info


def satterthwaite_df_info(V, grad, info):
    """ν = 2 V² / gᵀ I⁻¹ g per gene (the Satterthwaite df of lmerTest, Kuznetsova et al. 2017):
    ``grad`` (n_genes, n_components) = ∂V/∂σ_a², ``info`` (n_genes, A, A) the information of the σ²'s.
    Components with no information and no gradient are dropped; ν = inf when gᵀ I⁻¹ g = 0."""
    grad = np.asarray(grad, dtype=float)
    nu = np.full(grad.shape[0], np.inf)
    for j in range(grad.shape[0]):
        keep = (np.abs(grad[j]) > 0) | (np.diag(info[j]) > 0)
        g, I = grad[j, keep], info[j][np.ix_(keep, keep)]
        if not g.size:
            continue
        var = float(g @ np.linalg.lstsq(I, g, rcond=None)[0]) if np.all(np.diag(I) > 0) else np.inf
        nu[j] = 2.0 * V[j] ** 2 / var if var > 0 else np.inf
    return nu


def sample_dispersion(mean, cov, components):
    """Observed over expected scatter of the random effects of each component, with its df.

    With prior variances σ_a² held fixed (e.g. at the typical value over genes), the BLUPs
    ŵ_a = σ_a² Z_aᵀ P y give the quadratic form Q_a = ‖ŵ_a‖² / σ_a⁴ = yᵀ P Z_a Z_aᵀ P y, whose expectation
    under the model is T_a = tr(P Z_a Z_aᵀ) = (n_a − tr C_aa / σ_a²) / σ_a² and whose variance is 4 I_aa
    (:func:`variance_information`). φ_a = Q_a / T_a is then a quasi-likelihood dispersion at the sample
    level (1 when the gene's samples scatter as σ_a² + their sampling variance predicts, the analogue
    of edgeR's QL dispersion; Lund et al. 2012, Stat Appl Genet Mol Biol 11:8), distributed about as
    χ²_d / d with d = T_a² / (2 I_aa) (exactly the residual df in a balanced Gaussian design). Unlike a
    variance-component estimate it is not cut off at zero, so it can be moderated across genes.

    Parameters
    ----------
    mean : (n_genes, P) posterior means; cov : (n_genes, P, P); components : as
        :func:`variance_information`

    Returns
    -------
    Q, T : (n_genes, n_components); info : (n_genes, A, A)
    """
    mean = np.asarray(mean, dtype=float)
    cov = np.asarray(cov, dtype=float)
    J, A = mean.shape[0], len(components)
    Q, T = np.zeros((J, A)), np.zeros((J, A))
    for a, (ia, sa) in enumerate(components):
        ia = np.asarray(ia, dtype=int)
        sa = np.asarray(sa, dtype=float)
        Q[:, a] = (mean[:, ia] ** 2).sum(1) / sa ** 2
        T[:, a] = (ia.size - np.trace(cov[:, ia][:, :, ia], axis1=1, axis2=2) / sa) / sa
    return Q, T, variance_information(cov, components)
