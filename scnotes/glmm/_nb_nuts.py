"""NUTS (pyro) for the negative-binomial GLMM of one gene, with a prior on θ.

Model (the NB GLMM of :class:`scnotes.glmm.NBGLMMVEB`, fully Bayesian)::

    y_i ~ NB(s_i exp(b_{g(i)} + u_{d(i)} + w_{k(i)}), θ)      (variance μ + μ²/θ)
    b_g ~ N(0, prior_sd_b²),  u_d ~ N(0, σ_u²),  w_k ~ N(0, σ_w²),
    σ_u, σ_w ~ HalfNormal(1),  log θ ~ N(0, theta_prior_sd²),

with k(i) the cell's sample (donor × condition, or donor × cell group; the
``sample_effect`` of :class:`~scnotes.glmm.NBGLMMVEB`). The NB has no
sufficient statistics, so each gradient is O(cells).

Sampling coordinates: u and w non-centred (u = σ_u ũ, w = σ_w w̃), σ's and θ
on the log scale (with their Jacobians), and b started at the per-group
log mean rate and scaled by its approximate posterior sd, so that the
unit mass matrix is roughly right before adaptation. Chains run one after
another (Hoffman & Gelman 2014; pyro's NUTS); R-hat is pyro's split-chain
Gelman-Rubin statistic, ESS its multi-chain estimator.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ..likelihoods import nb_log_pmf
from ._design import GLMMData
from ._common import isolated_global_rng as _isolated_global_rng

__all__ = ["fit_nb_nuts", "NBNUTSResult"]

_HALF_LOG_2PI = 0.5 * float(np.log(2 * np.pi))


@dataclass
class NBNUTSResult:
    """Posterior draws of one gene's NB GLMM.

    Attributes
    ----------
    b : ndarray (n_chains, n_draws, n_groups), log rate per unit size factor of each cell group
    u : ndarray (n_chains, n_draws, n_donors);  w : (n_chains, n_draws, n_samples)
    sigma_u, sigma_w, theta : ndarray (n_chains, n_draws)
    samples : DataFrame, one row per sample (donor and condition / group)
    diagnostics : DataFrame, one row per scalar parameter: mean, sd, q2.5, q97.5, r_hat, ess
    seconds : float, wall time of all chains
    """

    data: GLMMData
    b: np.ndarray
    u: np.ndarray
    w: np.ndarray
    sigma_u: np.ndarray
    sigma_w: np.ndarray
    theta: np.ndarray
    samples: pd.DataFrame
    diagnostics: pd.DataFrame
    seconds: float

    def contrast(self, stim: str, ctrl: str, level: float = 0.95) -> dict:
        """Posterior of b[stim] − b[ctrl] (log fold change, natural log): mean, sd, the
        equal-tailed ``level`` interval and the local false sign rate (the posterior
        probability of the sign opposite to the mean's)."""
        gi = {g: i for i, g in enumerate(self.data.groups)}
        d = (self.b[..., gi[stim]] - self.b[..., gi[ctrl]]).ravel()
        a = (1 - level) / 2
        lfsr = min((d <= 0).mean(), (d >= 0).mean())
        return dict(mean=float(d.mean()), sd=float(d.std(ddof=1)), lower=float(np.quantile(d, a)),
                    upper=float(np.quantile(d, 1 - a)), lfsr=float(lfsr))


def fit_nb_nuts(data: GLMMData, gene=0, sample_effect: str | None = "group", num_samples: int = 300,
                warmup_steps: int = 300, num_chains: int = 2, prior_sd_b: float = 10.0,
                theta_prior_sd: float = 2.0, seed: int = 0, target_accept_prob: float = 0.8,
                max_tree_depth: int = 8, progress: bool = False) -> NBNUTSResult:
    """Sample the posterior of (b, u, w, σ_u, σ_w, θ) for one gene by NUTS.

    Parameters
    ----------
    data : GLMMData (cells × genes counts, per-cell size factor ``total``)
    gene : str or int, which gene
    sample_effect : "group" (donor × cell group, the default, the pseudobulk unit), "condition"
        (donor × condition; needs cell type × condition groups) or None (no sample effect), as in
        :class:`~scnotes.glmm.NBGLMMVEB`; one σ_w for every sample of the gene (the VEB fits one per
        cell type: fit one cell type at a time to compare them)
    num_samples, warmup_steps : int, per chain
    num_chains : int (≥ 2, for R-hat)
    prior_sd_b : float, sd of the N(0, ·) prior of each b_g (log scale; vague by default)
    theta_prior_sd : float, sd of the N(0, ·) prior of log θ: θ between e^{−2·sd} and e^{2·sd}
        a priori (0.02 to 55 with the default 2)
    seed : int; chain c is seeded ``seed + c`` inside a fork of the global RNGs, so the
        caller's random state is untouched and the same seed gives the same draws
    max_tree_depth : int, cap on NUTS' tree depth (2**depth leapfrog steps per draw)

    Returns
    -------
    NBNUTSResult

    Raises
    ------
    TypeError : ``data`` is not a GLMMData.
    ValueError : fewer than 2 chains, non-positive sizes or prior sds, or a
        ``sample_effect`` the data cannot support.
    """
    import pyro
    from pyro.infer import MCMC, NUTS
    from pyro.ops.stats import effective_sample_size, split_gelman_rubin

    from ._nb import NBGLMMVEB

    if not isinstance(data, GLMMData):
        raise TypeError("data must be a GLMMData (see scnotes.glmm.glmm_data)")
    if num_chains < 2:
        raise ValueError("num_chains must be >= 2 to compute R-hat")
    if num_samples < 4 or warmup_steps < 1:
        raise ValueError("num_samples must be >= 4 and warmup_steps >= 1")
    if not (prior_sd_b > 0 and theta_prior_sd > 0):
        raise ValueError("prior_sd_b and theta_prior_sd must be > 0")
    d1 = data.subset_genes(gene)
    gi, di, ki, samples = NBGLMMVEB(sample_effect=sample_effect)._blocks(d1)
    block = {(g, d): i for i, (g, d) in enumerate(zip(gi, di))}
    cell_block = np.array([block[(g, d)] for g, d in zip(d1.group, d1.donor)])
    G, D = d1.n_groups, d1.n_donors
    K = 0 if ki is None else len(samples)
    kw = dict(dtype=torch.float64)
    y = torch.as_tensor(d1.counts[:, 0], **kw)
    log_s = torch.as_tensor(np.log(d1.total), **kw)
    g = torch.as_tensor(d1.group)
    dd = torch.as_tensor(d1.donor)
    kk = torch.as_tensor(ki[cell_block]) if K else None

    # b starts at each group's log mean rate, scaled by its Poisson-information sd.
    yg = np.bincount(d1.group, weights=d1.counts[:, 0], minlength=G)
    sg = np.bincount(d1.group, weights=d1.total, minlength=G)
    b0 = np.log((yg + 0.5) / sg)
    n_par = G + D + K + 3
    phi0 = torch.as_tensor(np.r_[b0, np.zeros(D + K), np.log(0.3), np.log(0.3), 0.0], **kw)
    scale = torch.as_tensor(np.r_[1 / np.sqrt(yg + 1.0), np.ones(D + K + 3)], **kw)

    def unpack(z):
        phi = phi0 + scale * z
        b, u_raw, w_raw = phi[..., :G], phi[..., G:G + D], phi[..., G + D:G + D + K]
        log_su, log_sw, log_theta = phi[..., -3], phi[..., -2], phi[..., -1]
        return b, u_raw, w_raw, log_su, log_sw, log_theta

    def potential(params):
        b, u_raw, w_raw, log_su, log_sw, log_theta = unpack(params["z"])
        su, sw = torch.exp(log_su), torch.exp(log_sw)
        log_mean = log_s + b[g] + su * u_raw[dd]
        if K:
            log_mean = log_mean + sw * w_raw[kk]
        ll = nb_log_pmf(y, torch.exp(log_mean), torch.exp(log_theta), log_mean).sum()
        lp = (-0.5 * (b / prior_sd_b) ** 2).sum()
        lp = lp - 0.5 * (u_raw ** 2).sum() - 0.5 * (w_raw ** 2).sum()
        # HalfNormal(1) on σ_u, σ_w with the log-Jacobians; log θ ~ N(0, sd²)
        lp = lp - 0.5 * su ** 2 + log_su - 0.5 * (log_theta / theta_prior_sd) ** 2
        lp = lp + ((-0.5 * sw ** 2 + log_sw) if K else -0.5 * log_sw ** 2)  # unused σ_w: keep it proper
        return -(ll + lp)

    def run_chain(c):
        pyro.set_rng_seed(seed + c)
        gen = torch.Generator().manual_seed(seed + c)
        z0 = 0.1 * torch.randn(n_par, generator=gen, dtype=torch.float64)
        kernel = NUTS(potential_fn=potential, target_accept_prob=target_accept_prob, full_mass=True,
                      max_tree_depth=int(max_tree_depth))
        mcmc = MCMC(kernel, num_samples=num_samples, warmup_steps=warmup_steps,
                    initial_params={"z": z0}, disable_progbar=not progress)
        mcmc.run()
        b, u_raw, w_raw, log_su, log_sw, log_theta = unpack(mcmc.get_samples()["z"])
        su, sw = torch.exp(log_su), torch.exp(log_sw)
        return {"b": b, "u": su[:, None] * u_raw, "w": sw[:, None] * w_raw, "sigma_u": su,
                "sigma_w": sw, "theta": torch.exp(log_theta)}

    t0 = time.perf_counter()
    draws = []
    for c in range(num_chains):
        with _isolated_global_rng():
            draws.append(run_chain(c))
    secs = time.perf_counter() - t0
    keys = ("b", "u", "w", "sigma_u", "sigma_w", "theta")
    stack = {k: torch.stack([dr[k] for dr in draws]).detach() for k in keys}
    labels = {"b": d1.groups, "u": d1.donors,
              "w": ["/".join(map(str, r)) for r in samples.itertuples(index=False)]}
    rows = []
    for name in keys:
        if name in ("w", "sigma_w") and not K:
            continue
        arr = stack[name] if stack[name].dim() == 3 else stack[name][..., None]
        rhat = split_gelman_rubin(arr, chain_dim=0, sample_dim=1)
        ess = effective_sample_size(arr, chain_dim=0, sample_dim=1)
        flat = arr.reshape(-1, arr.shape[-1]).numpy()
        for j, lab in enumerate(labels.get(name, [None])):
            rows.append({"parameter": name if lab is None else f"{name}[{lab}]", "mean": flat[:, j].mean(),
                         "sd": flat[:, j].std(ddof=1), "q2.5": np.quantile(flat[:, j], 0.025),
                         "q97.5": np.quantile(flat[:, j], 0.975), "r_hat": float(rhat[j]),
                         "ess": float(ess[j])})
    out = {k: v.numpy() for k, v in stack.items()}
    return NBNUTSResult(d1, out["b"], out["u"], out["w"], out["sigma_u"], out["sigma_w"], out["theta"],
                        samples, pd.DataFrame(rows).set_index("parameter"), secs)
