"""Negative binomial matrix factorisation (NBMF) by EM.

Model (Gouvert, Oberlin & Févotte 2018, "Negative binomial matrix
factorization for recommender systems"; the seed's ``scmodes.lra.nbmf``):

    x_ij | u_ij ~ Poisson(u_ij μ_ij),   u_ij ~ Gamma(θ, rate θ),   μ = L Fᵀ,

so marginally x_ij ~ NB(mean μ_ij, inverse dispersion θ), Var = μ + μ²/θ.
θ is one number (``inv_disp_by_gene=False``) or one per gene.

EM (an ECM algorithm, so the marginal likelihood never decreases):

- E-step: u is conjugate, u_ij | x ~ Gamma(x_ij + θ, μ_ij + θ), so
  E[u_ij] = (x_ij + θ) / (μ_ij + θ).
- M-step for L and F: the expected complete-data log-likelihood is the
  weighted Poisson one with the linear term weighted by E[u]:
  Q = Σ w (x log μ − E[u] μ). L is updated (E-step refreshed), then F.
  ``method="mu"``: one multiplicative update,
  L ← L ∘ ((W∘X / μ) F) / ((W∘E[u]) F) (Gouvert et al. 2018);
  ``method="scd"`` (default): one sweep of the monotone coordinate-descent
  kernel of :class:`~scnotes.nmf.PoissonNMF` on Q, which needs only the
  sparse w∘x and the linear coefficients (W∘E[u]) F. Both increase Q, so
  both are generalised EM steps.
- θ: Newton steps on log θ of the *marginal* NB log-likelihood with step
  halving, so each accepted step increases it (bounded to [1e-6, 1e6]).
  Terms in gammaln/digamma of x + θ are summed over the distinct count
  values (a weighted histogram), so their cost does not grow with n × p.

Because E[u_ij] differs from 1 at every entry, including x_ij = 0, this
fit works with dense n_cells × n_genes arrays (sparse input is densified);
it is meant for moderate sizes.
"""
from __future__ import annotations

import time

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.special import gammaln, polygamma, psi

from .._checks import check_counts, check_mask
from . import _kernels
from ._poisson import _FactorResults, _Problem, _check_factors, _initial_factors

__all__ = ["NBMF", "nbmf", "nb_loglik"]

_LOG_THETA_BOUNDS = (np.log(1e-6), np.log(1e6))


def _nb_terms(x, mu, theta):
    """Entrywise NB log-pmf log NB(x; mean mu, inverse dispersion theta) (n × p)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        lmu = np.where(x > 0, x * (np.log(mu) - np.log(mu + theta)), 0.0)
    return (gammaln(x + theta) - gammaln(theta) - gammaln(x + 1.0)
            + theta * (np.log(theta) - np.log(mu + theta)) + lmu)


def _dense(x):
    return x.toarray() if sp.issparse(x) else np.asarray(x)


def nb_loglik(x, L, F, inv_disp, w=None) -> float:
    """Σ_ij w_ij log NB(x_ij; mean (L Fᵀ)_ij, inverse dispersion θ) in nats (dense computation).

    Parameters
    ----------
    x : array or sparse (n_cells, n_genes) counts; L (n_cells, k); F (n_genes, k).
    inv_disp : float or array (n_genes,), θ > 0.
    w : None or (n_cells, n_genes) weights in [0, 1].

    Raises
    ------
    ValueError
        Bad counts/mask/factors, or θ not positive and finite.
    """
    x = check_counts(x, allow_empty_cells=True, allow_empty_genes=True)
    W = check_mask(w, x.shape)
    L, F = _check_factors(L, F, x.shape, None)
    theta = _check_theta(inv_disp, x.shape[1])
    t = _nb_terms(_dense(x), L @ F.T, theta[None, :] if theta.size > 1 else theta[0])
    if W is None:
        return float(t.sum())
    W = _dense(W)
    with np.errstate(invalid="ignore"):  # 0 · (−inf) at masked entries, dropped by where()
        return float(np.where(W > 0, W * t, 0.0).sum())


def _check_theta(theta, p):
    theta = np.atleast_1d(np.asarray(theta, dtype=np.float64))
    if theta.ndim != 1 or theta.size not in (1, p):
        raise ValueError(f"inv_disp must be a scalar or have length n_genes={p}")
    if not np.all(np.isfinite(theta)) or np.any(theta <= 0):
        raise ValueError("inv_disp must be positive and finite")
    return theta


class NBMF(_FactorResults):
    """Negative binomial matrix factorisation x ~ NB(L Fᵀ, θ) by EM (see module docstring).

    Parameters
    ----------
    n_components : int
        Rank k.
    inv_disp : float or array (n_genes,)
        Starting (or, with ``fix_inv_disp``, fixed) inverse dispersion θ.
        The seed used 0.1.
    fix_inv_disp : bool
        Keep θ fixed.
    inv_disp_by_gene : bool
        One θ per gene instead of one shared θ.
    method : {"scd", "mu"}
        M-step for L and F (see module docstring).
    max_iter, tol : int, float
        At most ``max_iter`` EM iterations; stop when ℓ improves by less
        than ``tol · |ℓ|``.
    init : "random" or (L0, F0)
        As :class:`~scnotes.nmf.PoissonNMF`.
    seed : int
    newton_steps : int
        Newton steps for log θ per EM iteration.

    Attributes
    ----------
    L_ (n_cells, k), F_ (n_genes, k) : fitted factors; mean = L_ F_ᵀ.
    inv_disp_ : ndarray (1,) or (n_genes,), fitted θ.
    loglik_ : float, weighted NB log-likelihood (nats, incl. constants).
    trace_ : DataFrame with ``iter``, ``loglik``, ``time`` (s), ``inv_disp`` (mean θ).
    n_iter_, converged_.
    """

    def __init__(self, n_components: int = 10, inv_disp=1.0, fix_inv_disp: bool = False,
                 inv_disp_by_gene: bool = False, method: str = "scd", max_iter: int = 500,
                 tol: float = 1e-8, init="random", seed: int = 0, newton_steps: int = 2,
                 n_inner: int = 2, verbose: bool = False):
        self.n_components = n_components
        self.inv_disp = inv_disp
        self.fix_inv_disp = fix_inv_disp
        self.inv_disp_by_gene = inv_disp_by_gene
        self.method = method
        self.max_iter = max_iter
        self.tol = tol
        self.init = init
        self.seed = seed
        self.newton_steps = newton_steps
        self.n_inner = n_inner
        self.verbose = verbose

    def fit(self, x, w=None):
        """Fit to counts ``x`` (n_cells × n_genes; sparse is densified), optional weights ``w``.

        Raises
        ------
        ValueError
            Bad counts, mask, init, θ or hyperparameters.
        """
        t0 = time.perf_counter()
        if not isinstance(self.n_components, (int, np.integer)) or self.n_components < 1:
            raise ValueError(f"n_components must be a positive integer, got {self.n_components!r}")
        if self.method not in ("scd", "mu"):
            raise ValueError(f"method must be 'scd' or 'mu', got {self.method!r}")
        if int(self.max_iter) < 0 or self.tol < 0 or int(self.n_inner) < 1:
            raise ValueError("max_iter and tol must be >= 0 and n_inner >= 1")
        prob = _Problem(x, w)  # validates x and w; sparse w∘x for the SCD kernel
        n, p = prob.shape
        k = int(self.n_components)
        X = _dense(check_counts(x, allow_empty_cells=True, allow_empty_genes=True))
        W = None if w is None else _dense(check_mask(w, X.shape))
        theta = _check_theta(self.inv_disp, p)
        if self.inv_disp_by_gene and theta.size == 1:
            theta = np.full(p, theta[0])
        elif not self.inv_disp_by_gene and theta.size > 1:
            raise ValueError("inv_disp has one value per gene but inv_disp_by_gene=False")
        L, F = _initial_factors(self.init, prob, k, self.seed, (n, p))

        nb = _NBTerms(X, W, by_gene=theta.size > 1)
        WX = X if W is None else W * X
        pos = WX > 0
        d, dt = prob.d, prob.dt
        out = np.empty(max(n, p))

        def th(t):
            return t[None, :] if t.size > 1 else t[0]

        def weighted_eu(mu, t):
            eu = (X + th(t)) / (mu + th(t))
            return eu if W is None else W * eu

        def update(A, G, mu, t, rows):
            # One GEM update of A given G; `rows`: A indexes the rows of X.
            eu = weighted_eu(mu, t)
            B = np.ascontiguousarray(eu @ G if rows else eu.T @ G)
            if self.method == "scd":
                c = d if rows else dt
                _kernels.scd_rows(c.indptr, c.indices, c.data, A, G, B, int(self.n_inner),
                                  False, out)
            else:
                ratio = np.divide(WX, mu, out=np.zeros_like(mu), where=pos)
                num = ratio @ G if rows else ratio.T @ G
                A *= np.divide(num, B, out=np.ones_like(num), where=B > 0)

        mu = L @ F.T
        ll = nb.loglik(mu, theta)
        trace = [(0, ll, time.perf_counter() - t0, float(theta.mean()))]
        conv = False
        with np.errstate(divide="ignore", invalid="ignore"), _kernels.threads_for(n * p):
            for it in range(1, int(self.max_iter) + 1):
                update(L, F, mu, theta, True)
                mu = L @ F.T
                update(F, L, mu, theta, False)
                mu = L @ F.T
                nb.set_mean(mu)
                if not self.fix_inv_disp:
                    theta = nb.newton(theta, int(self.newton_steps))
                new = nb.loglik(mu, theta)
                trace.append((it, new, time.perf_counter() - t0, float(theta.mean())))
                if self.verbose:
                    print(f"iter {it:5d}  loglik {new:.6f}  theta {theta.mean():.4g}")
                if self.tol > 0 and 0 <= new - ll < self.tol * abs(new):
                    conv = True
                    break
                ll = new
        self.L_, self.F_ = L, F
        self.inv_disp_ = theta
        self.trace_ = pd.DataFrame(trace, columns=["iter", "loglik", "time", "inv_disp"])
        self.loglik_ = float(self.trace_["loglik"].iloc[-1])
        self.n_iter_ = int(self.trace_["iter"].iloc[-1])
        self.converged_ = conv
        return self


class _NBTerms:
    """The NB log-likelihood as a function of θ, for fixed counts, weights and (settable) mean.

    ℓ_g(θ) = Σ_v H_gv lgamma(v + θ) + N_g (θ log θ − lgamma θ)
             − Σ_ij∈g w (x + θ) log(μ + θ) + Σ w x log μ − Σ w lgamma(x + 1),
    with H_gv the total weight of entries of group g (all, or gene j) with
    count v and N_g the group's total weight. The histogram H makes the
    gamma-function terms cost O(#distinct counts) per evaluation.
    """

    def __init__(self, X, W, by_gene):
        self.X, self.W, self.by_gene = X, W, by_gene
        n, p = X.shape
        Wd = np.ones_like(X) if W is None else W
        xi = X.astype(np.int64)
        if by_gene:
            keys = np.broadcast_to(np.arange(p)[None, :], X.shape).ravel() * (xi.max() + 1) + xi.ravel()
        else:
            keys = xi.ravel()
        uk, inv = np.unique(keys, return_inverse=True)
        self.hw = np.bincount(inv, weights=Wd.ravel())
        nv = xi.max() + 1
        self.hv = (uk % nv if by_gene else uk).astype(np.float64)
        self.hg = (uk // nv).astype(np.int64) if by_gene else np.zeros(uk.size, np.int64)
        self.G = p if by_gene else 1
        self.N = np.atleast_1d(Wd.sum(axis=0) if by_gene else Wd.sum())
        self.const = -float((Wd * gammaln(X + 1.0)).sum())

    def _sum(self, a):
        # where() rather than W * a: a masked entry may hold −inf (x > 0 where μ = 0)
        if self.W is not None:
            with np.errstate(invalid="ignore"):
                a = np.where(self.W > 0, self.W * a, 0.0)
        return np.atleast_1d(a.sum(axis=0) if self.by_gene else a.sum())

    def _hist(self, f, theta):
        return np.bincount(self.hg, weights=self.hw * f(self.hv + theta[self.hg]), minlength=self.G)

    def set_mean(self, mu):
        self.mu = mu
        with np.errstate(divide="ignore", invalid="ignore"):
            self.xlogmu = float(self._sum(np.where(self.X > 0, self.X * np.log(mu), 0.0)).sum())

    def values(self, theta):
        """Per-group θ-dependent part of ℓ (length 1 or n_genes)."""
        t = theta[None, :] if self.by_gene else theta[0]
        return (self._hist(gammaln, theta) + self.N * (theta * np.log(theta) - gammaln(theta))
                - self._sum((self.X + t) * np.log(self.mu + t)))

    def loglik(self, mu, theta):
        self.set_mean(mu)
        return float(self.values(theta).sum()) + self.xlogmu + self.const

    def newton(self, theta, steps):
        """Newton ascent on η = log θ with step halving; each accepted step increases ℓ."""
        cur = self.values(theta)
        eta = np.log(theta)
        for _ in range(steps):
            t = theta[None, :] if self.by_gene else theta[0]
            mt = self.mu + t
            ratio = (self.X + t) / mt
            d1 = (self._hist(psi, theta) + self.N * (np.log(theta) + 1.0 - psi(theta))
                  - self._sum(np.log(mt) + ratio))
            d2 = (self._hist(lambda v: polygamma(1, v), theta)
                  + self.N * (1.0 / theta - polygamma(1, theta))
                  + self._sum(ratio / mt - 2.0 / mt))
            g = theta * d1
            h = theta * d1 + theta ** 2 * d2
            step = np.where(h < 0, -g / np.where(h < 0, h, -1.0), np.sign(g))
            step = np.clip(step, -1.0, 1.0)
            accepted = np.zeros(theta.shape, bool)
            new_eta = eta.copy()
            for _half in range(30):
                trial = np.clip(eta + step, *_LOG_THETA_BOUNDS)
                val = self.values(np.exp(trial))
                ok = (val >= cur) & ~accepted
                new_eta = np.where(ok, trial, new_eta)
                cur = np.where(ok, val, cur)
                accepted |= ok
                if accepted.all():
                    break
                step = np.where(accepted, step, step / 2)
            eta = new_eta
            theta = np.exp(eta)
            if np.all(np.abs(g) < 1e-10 * np.maximum(self.N, 1.0)):
                break
        return theta


def nbmf(x, n_components: int = 10, w=None, **kwargs) -> NBMF:
    """Fit :class:`NBMF` (``kwargs`` go to its constructor) and return the fitted estimator."""
    return NBMF(n_components, **kwargs).fit(x, w=w)
