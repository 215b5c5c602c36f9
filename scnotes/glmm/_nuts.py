"""NUTS (pyro) for the Poisson GLMM of one gene, with R-hat and effective sample sizes.

Model::

    b_g ~ N(μ, σ_b²),  μ ~ N(mean(t), 10²),  σ_b ~ HalfNormal(5)   (prior="shared", the default)
    b_g ~ N(t_g, σ_b²),  σ_b ~ HalfNormal(1)                        (prior="seed")
    σ_u ~ HalfNormal(1),  u_d ~ N(0, σ_u²),
    y_i ~ Poisson(s_i exp(b_{g(i)} + u_{d(i)})),

with t the naive point-mass estimates. The seed's prior centres every b_g on
its own data estimate t_g (the data are used twice) and, with σ_b learned,
pins the common shift between b and u to the naive estimates, so its
intervals are narrower than the model's; it is kept for comparison only.

The sampler runs on a linear reparametrisation (see :func:`fit_nuts`): with
one-hot X and Z a common shift (b − c, u + c) leaves the likelihood unchanged,
so in (b, u) coordinates the posterior is a long thin ridge; separating the
shift makes the geometry nearly axis-aligned. (A non-centred u = σ_u ũ does
not help here: the data pin the donor differences, so it creates a curved
ridge instead.) The likelihood is evaluated from the per (group, donor) sufficient statistics
(exactly the per-cell likelihood up to a constant), which makes a gradient
O(groups × donors) instead of O(cells).

Chains run one after another with different seeds (Hoffman & Gelman 2014;
pyro's NUTS); R-hat is pyro's split-chain Gelman-Rubin statistic and the
effective sample size pyro's multi-chain estimator (Gelman et al. BDA3, 11.4-11.5).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from scipy.special import gammaln

from ..likelihoods import poisson_log_pmf
from ._common import helmert as _helmert, isolated_global_rng as _isolated_global_rng
from ._design import GLMMData
from ._tidy import tidy_effects

__all__ = ["fit_nuts", "NUTSResult"]


@dataclass
class NUTSResult:
    """Posterior draws of one gene's GLMM.

    Attributes
    ----------
    b : ndarray (n_chains, n_draws, n_groups);  u : (n_chains, n_draws, n_donors)
    sigma_u, sigma_b : ndarray (n_chains, n_draws)
    diagnostics : DataFrame, one row per scalar parameter (b[...], u[...], sigma_u,
        sigma_b): mean, sd, q2.5, q97.5, r_hat, ess
    seconds : float  wall time of all chains
    prior : str      "shared" or "seed" (see :func:`fit_nuts`)
    """

    data: GLMMData
    b: np.ndarray
    u: np.ndarray
    sigma_u: np.ndarray
    sigma_b: np.ndarray
    diagnostics: pd.DataFrame
    seconds: float
    prior: str = "shared"

    def summary(self, level: float = 0.95) -> pd.DataFrame:
        """Tidy DataFrame: posterior means, sds (and the posterior covariance for contrasts)."""
        flat = self.b.reshape(-1, self.b.shape[-1])
        return tidy_effects(self.data, flat.mean(0)[None], cov=np.cov(flat.T)[None],
                            method=f"NUTS ({self.prior} prior)", sigma_u=np.array([self.sigma_u.mean()]),
                            level=level, inference="posterior", legacy_wald=True)


def fit_nuts(data: GLMMData, gene=0, num_samples: int = 500, warmup_steps: int = 500,
             num_chains: int = 4, seed: int = 0, target_accept_prob: float = 0.8,
             prior: str = "shared", prior_mean_b=None, full_mass: bool = True,
             init_jitter: float = 0.1, max_tree_depth: int = 10, progress: bool = False) -> NUTSResult:
    """Sample the posterior of (b, u, σ_u, σ_b) for one gene by NUTS.

    The sampler works in an equivalent parametrisation that separates what
    the data identify from what only the priors identify:
    ``b_g = β_g − a``, ``u_d = a + (H w)_d`` with ``H`` an orthonormal basis of
    zero-sum vectors, so ``η_gd = β_g + (H w)_d`` does not involve ``a`` (the
    common shift between fixed and random effects, pinned only by the
    priors). The shift is non-centred, ``a = σ_u ã / √D`` (its prior is
    N(0, σ_u²/D)), σ_b and σ_u are sampled on the log scale, and β, w are
    started near the maximum likelihood and scaled by their Poisson
    information (all with the Jacobians). The map is invertible, so the
    posterior of (b, u, σ_b, σ_u) is exactly the model's; it removes the long
    thin ridge along (b + c, u − c) and the funnel between the shift and σ_u
    that make NUTS take maximal trees in (b, u) coordinates.

    Parameters
    ----------
    data : GLMMData
    gene : str or int
        Which gene of ``data``.
    num_samples, warmup_steps : int
        Per chain.
    num_chains : int
        At least 2 for R-hat; run sequentially, chain ``c`` seeded ``seed + c``
        and started near the maximum likelihood, jittered by ``init_jitter`` (in units of the
        approximate posterior sd).
    prior : {"shared", "seed"}
        ``"shared"`` (default): b_g ~ N(μ, σ_b²) with μ ~ N(mean(t), 10²),
        σ_b ~ HalfNormal(5) — the fully Bayesian counterpart of the VEB
        ``prior="shared"``; only the weak prior on μ looks at the data.
        ``"seed"``: b_g ~ N(t_g, σ_b²) centred at the naive estimates t (the
        seed's; it uses the data twice and, with σ_b learned, pins the common
        shift between b and u to the naive estimates, so its intervals are
        narrower than lme4's).
    prior_mean_b : array (n_groups,), optional
        Prior mean of b for ``prior="seed"`` (default: the naive estimates).
    full_mass : bool
        Dense mass matrix adaptation.
    max_tree_depth : int
        Cap on the NUTS tree depth (at most 2**depth leapfrog steps per draw; pyro's
        default 10). Lower it only for quick checks: short warm-ups adapt poorly and
        then build deep trees.
    progress : bool
        pyro's progress bar (off by default).

    Returns
    -------
    NUTSResult

    Randomness: pyro draws from the global torch / numpy / ``random`` RNGs; each
    chain seeds them (``seed + c``) inside a fork whose state is restored
    afterwards, so the caller's RNG state is untouched and the same seed gives
    the same draws.

    Raises
    ------
    ValueError
        ``num_chains < 2`` (R-hat needs several chains) or non-positive sizes.
    """
    import pyro
    from pyro.infer import MCMC, NUTS
    from pyro.ops.stats import effective_sample_size, split_gelman_rubin

    if prior not in ("seed", "shared"):
        raise ValueError(f"prior must be 'seed' or 'shared', got {prior!r}")
    if num_chains < 2:
        raise ValueError("num_chains must be >= 2 to compute R-hat")
    if num_samples < 4 or warmup_steps < 1:
        raise ValueError("num_samples must be >= 4 and warmup_steps >= 1")
    d1 = data.subset_genes(gene)
    st = d1.stats()
    gi, di = np.nonzero(st.n)
    kw = dict(dtype=torch.float64)
    Y = torch.as_tensor(st.Y[0, gi, di], **kw)
    logS = torch.as_tensor(np.log(st.S[gi, di]), **kw)
    g = torch.as_tensor(gi)
    dd = torch.as_tensor(di)
    G, D = d1.n_groups, d1.n_donors
    H = torch.as_tensor(_helmert(D), **kw)
    t = torch.as_tensor(d1.naive_estimates()[0] if prior_mean_b is None else np.asarray(prior_mean_b), **kw)
    # Y_gd ~ Poisson(S_gd e^η): the sums' log-pmf plus this constant is the per-cell log-likelihood
    Yn = st.Y[0, gi, di]
    const = float(st.const[0] - (Yn * np.log(st.S[gi, di]) - gammaln(Yn + 1)).sum())
    half_log_2pi = 0.5 * np.log(2 * np.pi)
    shared = prior == "shared"
    sb_scale = 5.0 if shared else 1.0
    t_mean = t.mean()

    # Start near the maximum likelihood (one pass of alternating log-ratio updates) and
    # pre-scale the data-pinned coordinates by their Poisson information, so that the
    # sampler's unit mass matrix is roughly right before adaptation: for a gene with
    # 10^5 counts the group effects have posterior sds near 0.003, the shift near 0.1.
    Yg = st.Y[0]  # (G, D)
    t_np = t.numpy()
    r = np.log((Yg.sum(0) + 0.5) / (st.S * np.exp(t_np)[:, None]).sum(0))
    u0 = r - r.mean()
    beta0 = np.log((Yg.sum(1) + 0.5) / (st.S * np.exp(u0)[None, :]).sum(1))
    w0 = _helmert(D).T @ u0
    sd_beta = 1 / np.sqrt(Yg.sum(1) + 1.0)
    sd_w = 1 / np.sqrt((Yg.sum(0)[:, None] * _helmert(D) ** 2).sum(0) + 1.0)
    tail0 = [np.log(t.std().item() if shared else 0.3), np.log(0.3)] + ([t_mean.item()] if shared else [])
    phi0 = torch.as_tensor(np.r_[beta0, w0, 0.0, tail0], **kw)
    scale = torch.as_tensor(np.r_[sd_beta, sd_w, 1.0, np.ones(len(tail0))], **kw)
    sqrt_D = float(np.sqrt(D))

    def unpack(z):
        phi = phi0 + scale * z
        beta, w, a_std = phi[..., :G], phi[..., G:G + D - 1], phi[..., G + D - 1:G + D]
        log_sb, log_su = phi[..., G + D], phi[..., G + D + 1]
        mu = phi[..., G + D + 2:G + D + 3] if shared else t
        # non-centred shift: a = σ_u ã / √D, so that the funnel between the shift and
        # log σ_u (only the donor prior pins the shift) becomes a product of Gaussians
        a = torch.exp(log_su)[..., None] * a_std / sqrt_D
        b = beta - a
        u = a + w @ H.T
        return beta, w, a_std, b, u, log_sb, log_su, mu

    def potential(params):
        beta, w, a_std, b, u, log_sb, log_su, mu = unpack(params["z"])
        log_rate = logS + beta[g] + (w @ H.T)[dd]
        ll = poisson_log_pmf(Y, torch.exp(log_rate), log_rate=log_rate).sum() + const
        sb, su = torch.exp(log_sb), torch.exp(log_su)
        lp_b = (-0.5 * ((b - mu) / sb) ** 2 - log_sb - half_log_2pi).sum()
        lp_u = (-0.5 * (u / su) ** 2 - log_su - half_log_2pi).sum() + log_su  # + log |da/dã|
        # HalfNormal priors on σ_b, σ_u, plus the log-Jacobian of σ = exp(log σ)
        lp_s = -0.5 * ((sb / sb_scale) ** 2 + su ** 2) + log_sb + log_su
        if shared:
            lp_s = lp_s - 0.5 * ((mu[0] - t_mean) / 10.0) ** 2
        return -(ll + lp_b + lp_u + lp_s)

    def run_chain(c):
        pyro.set_rng_seed(seed + c)
        gen = torch.Generator().manual_seed(seed + c)
        z0 = init_jitter * torch.randn(phi0.shape, generator=gen, dtype=torch.float64)
        kernel = NUTS(potential_fn=potential, target_accept_prob=target_accept_prob, full_mass=full_mass,
                      max_tree_depth=int(max_tree_depth))
        mcmc = MCMC(kernel, num_samples=num_samples, warmup_steps=warmup_steps,
                    initial_params={"z": z0}, disable_progbar=not progress)
        mcmc.run()
        z = mcmc.get_samples()["z"]
        _, _, _, b, u, log_sb, log_su, _ = unpack(z)
        return {"b": b, "u": u, "sigma_u": torch.exp(log_su), "sigma_b": torch.exp(log_sb)}

    draws = []
    t0 = time.perf_counter()
    for c in range(num_chains):
        with _isolated_global_rng():
            draws.append(run_chain(c))
    secs = time.perf_counter() - t0
    stack = {k: torch.stack([dr[k] for dr in draws]).detach() for k in ("b", "u", "sigma_u", "sigma_b")}

    rows = []
    for name, arr in stack.items():
        a = arr if arr.dim() == 3 else arr[..., None]
        rhat = split_gelman_rubin(a, chain_dim=0, sample_dim=1)
        ess = effective_sample_size(a, chain_dim=0, sample_dim=1)
        flat = a.reshape(-1, a.shape[-1]).numpy()
        labels = (d1.groups if name == "b" else d1.donors if name == "u" else [None])
        for k, lab in enumerate(labels):
            rows.append({"parameter": name if lab is None else f"{name}[{lab}]", "mean": flat[:, k].mean(),
                         "sd": flat[:, k].std(ddof=1), "q2.5": np.quantile(flat[:, k], 0.025),
                         "q97.5": np.quantile(flat[:, k], 0.975), "r_hat": float(rhat[k]),
                         "ess": float(ess[k])})
    diag = pd.DataFrame(rows).set_index("parameter")
    return NUTSResult(d1, stack["b"].numpy(), stack["u"].numpy(), stack["sigma_u"].numpy(),
                      stack["sigma_b"].numpy(), diag, secs, prior)
