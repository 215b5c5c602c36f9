"""Closed forms of the Gaussian linear mixed model the seed uses to explain the GLMM.

Model (seed, section "LMM"; Henderson 1975; Searle, Casella & McCulloch 1992, ch. 6-7)::

    y | b, u ~ N(X b + Z u, σ² I_n),      u ~ N(0, σ² σ_u² I_q),
    y | b    ~ N(X b, σ² H),               H = I_n + σ_u² Z Z'.

Facts implemented here:

* GLS: for fixed (σ², σ_u²), the maximum-likelihood ``b`` is
  ``b̂ = (X'H⁻¹X)⁻¹ X'H⁻¹ y`` with covariance ``σ² (X'H⁻¹X)⁻¹``.
* Posterior of the random effects given ``b``: Gaussian with
  ``E[u | y, b] = σ_u² Z'H⁻¹ (y − Xb)`` and
  ``Cov[u | y, b] = σ² σ_u² (I − σ_u² Z'H⁻¹Z) = σ² (Z'Z + I/σ_u²)⁻¹``.
  For ``Zu`` (with ``K = ZZ'``) this reads ``E[Zu | y, b] = σ_u² K H⁻¹ (y − Xb)`` and
  ``Cov[Zu | y, b] = σ² σ_u² K H⁻¹``. The seed's version carries a spurious
  factor 1/σ² in the mean and gives ``σ_u² K (I − H⁻¹)`` as the covariance,
  which is not it; the forms here are checked against brute-force
  conditioning of the joint Gaussian in the tests.

``H⁻¹`` is never formed: Woodbury gives ``H⁻¹ = I − Z (Z'Z + I/σ_u²)⁻¹ Z'`` and
``ln|H| = ln|I_q + σ_u² Z'Z|``, so everything costs O(n q²).
"""
from __future__ import annotations

import numpy as np
from scipy import optimize

__all__ = ["gls_fixed_effects", "random_effects_posterior", "lmm_marginal_loglik", "fit_lmm"]


def _check(y, X, Z, sigma2=1.0, sigma_u2=1.0):
    y = np.asarray(y, dtype=float).ravel()
    X = np.asarray(X, dtype=float)
    Z = np.asarray(Z, dtype=float)
    if X.ndim != 2 or Z.ndim != 2 or X.shape[0] != y.size or Z.shape[0] != y.size:
        raise ValueError(f"shapes disagree: y {y.shape}, X {X.shape}, Z {Z.shape} (need n rows each)")
    if not (np.isfinite(y).all() and np.isfinite(X).all() and np.isfinite(Z).all()):
        raise ValueError("y, X and Z must be finite")
    if not (sigma2 > 0 and sigma_u2 > 0):
        raise ValueError(f"variances must be positive, got sigma2={sigma2}, sigma_u2={sigma_u2}")
    return y, X, Z


def _hinv(Z, sigma_u2):
    """A function v -> H⁻¹ v (Woodbury), and ln|H|."""
    ZtZ = Z.T @ Z
    C = ZtZ + np.eye(Z.shape[1]) / sigma_u2
    Lc = np.linalg.cholesky(C)

    def apply(v):
        w = np.linalg.solve(Lc.T, np.linalg.solve(Lc, Z.T @ v))
        return v - Z @ w

    logdet = np.linalg.slogdet(np.eye(Z.shape[1]) + sigma_u2 * ZtZ)[1]
    return apply, logdet


def gls_fixed_effects(y, X, Z, sigma2: float, sigma_u2: float):
    """Generalised least squares estimate of the fixed effects for fixed variances.

    Parameters
    ----------
    y : (n,) response;  X : (n, p) fixed-effect design;  Z : (n, q) random-effect design
    sigma2 : residual variance σ²;  sigma_u2 : random-effect variance ratio σ_u²
        (the random effects have variance σ² σ_u², as in the seed).

    Returns
    -------
    b : ndarray (p,)
    cov : ndarray (p, p), ``σ² (X'H⁻¹X)⁻¹``

    Raises
    ------
    ValueError
        Mismatched shapes, non-finite input, non-positive variances, or
        ``X'H⁻¹X`` singular (X not of full column rank).
    """
    y, X, Z = _check(y, X, Z, sigma2, sigma_u2)
    hinv, _ = _hinv(Z, sigma_u2)
    HX = hinv(X)
    A = X.T @ HX
    try:
        cov = np.linalg.inv(A)
    except np.linalg.LinAlgError as e:
        raise ValueError("X'H⁻¹X is singular: X must have full column rank") from e
    b = cov @ (HX.T @ y)
    return b, sigma2 * cov


def random_effects_posterior(y, X, Z, b, sigma2: float, sigma_u2: float):
    """Gaussian posterior of the random effects ``u`` given ``b`` and the variances.

    ``E[u | y, b] = (Z'Z + I/σ_u²)⁻¹ Z'(y − Xb)``, ``Cov = σ² (Z'Z + I/σ_u²)⁻¹``
    (Henderson's mixed-model equations; equal to the conditioning formula
    ``σ_u² Z'H⁻¹(y − Xb)``, ``σ²σ_u²(I − σ_u² Z'H⁻¹Z)``).

    Returns
    -------
    mean : ndarray (q,);  cov : ndarray (q, q)

    Raises
    ------
    ValueError
        As :func:`gls_fixed_effects`, or ``b`` of the wrong length.
    """
    y, X, Z = _check(y, X, Z, sigma2, sigma_u2)
    b = np.asarray(b, dtype=float).ravel()
    if b.size != X.shape[1]:
        raise ValueError(f"b has {b.size} entries, X has {X.shape[1]} columns")
    C = Z.T @ Z + np.eye(Z.shape[1]) / sigma_u2
    Cinv = np.linalg.inv(C)
    return Cinv @ (Z.T @ (y - X @ b)), sigma2 * Cinv


def lmm_marginal_loglik(y, X, Z, b, sigma2: float, sigma_u2: float) -> float:
    """ln N(y; Xb, σ² H) in nats (the LMM likelihood with u integrated out)."""
    y, X, Z = _check(y, X, Z, sigma2, sigma_u2)
    hinv, logdet = _hinv(Z, sigma_u2)
    r = y - X @ np.asarray(b, dtype=float).ravel()
    n = y.size
    return float(-0.5 * (n * np.log(2 * np.pi * sigma2) + logdet + r @ hinv(r) / sigma2))


def fit_lmm(y, X, Z):
    """Maximum-likelihood LMM: σ² and b profiled out in closed form, σ_u² by a 1-d search.

    For fixed σ_u², ``b̂`` is the GLS estimate and ``σ̂² = r'H⁻¹r / n``; the
    profile likelihood is then maximised over ln σ_u² (bounded scalar search).

    Returns
    -------
    dict with ``b`` (p,), ``b_cov`` (p, p), ``sigma2``, ``sigma_u2`` (ratio, as in
    the seed), ``u_mean`` (q,), ``u_cov`` (q, q) and ``loglik`` (nats).
    """
    y, X, Z = _check(y, X, Z)

    def profile(log_su2):
        su2 = float(np.exp(log_su2))
        b, _ = gls_fixed_effects(y, X, Z, 1.0, su2)
        hinv, _ = _hinv(Z, su2)
        r = y - X @ b
        s2 = float(r @ hinv(r)) / y.size
        return b, s2, su2

    def neg(log_su2):
        b, s2, su2 = profile(log_su2)
        return -lmm_marginal_loglik(y, X, Z, b, s2, su2)

    res = optimize.minimize_scalar(neg, bounds=(-12.0, 8.0), method="bounded",
                                   options={"xatol": 1e-8})
    b, s2, su2 = profile(res.x)
    _, b_cov = gls_fixed_effects(y, X, Z, s2, su2)
    u_mean, u_cov = random_effects_posterior(y, X, Z, b, s2, su2)
    return {"b": b, "b_cov": b_cov, "sigma2": s2, "sigma_u2": su2, "u_mean": u_mean,
            "u_cov": u_cov, "loglik": -float(res.fun)}
