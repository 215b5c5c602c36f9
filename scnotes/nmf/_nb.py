"""Negative binomial matrix factorisation (NBMF) by EM.

Model (Gouvert, Oberlin & Févotte 2018, "Negative binomial matrix
factorization for recommender systems"; the seed's ``scmodes.lra.nbmf``):

    x_ij | u_ij ~ Poisson(u_ij μ_ij),   u_ij ~ Gamma(θ, rate θ),   μ = L Fᵀ,

so marginally x_ij ~ NB(mean μ_ij, inverse dispersion θ), Var = μ + μ²/θ.
θ is one number (``theta_by_gene=False``) or one per gene.

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

The NB log-likelihood (the reported ``loglik`` and the θ objective) is
:func:`scnotes.likelihoods.nb_log_pmf`, evaluated in float64 with torch; the
Newton step's gradient and curvature in log θ come from torch's automatic
differentiation of it (the curvature is exact: ℓ is a sum of independent
per-gene terms, so the Hessian in log θ is diagonal). Names follow the
contract of ``DEVELOPING.md``: ``theta`` / ``theta_by_gene`` / ``theta_``;
the older ``inv_disp`` / ``inv_disp_by_gene`` / ``fix_inv_disp`` /
``inv_disp_`` are accepted as aliases.

Because E[u_ij] differs from 1 at every entry, including x_ij = 0, this
fit works with dense n_cells × n_genes arrays (sparse input is densified);
it is meant for moderate sizes.
"""
from __future__ import annotations

import time

import numpy as np
import scipy.sparse as sp
import torch

from .._checks import check_counts, check_mask, check_var_names
from ..likelihoods import _log_gamma_ratio64
from . import _kernels
from ._poisson import _FactorResults, _Problem, _check_factors, _initial_factors, _sweeps

__all__ = ["NBMF", "nbmf", "nb_loglik"]

_LOG_THETA_BOUNDS = (np.log(1e-6), np.log(1e6))


def _dense(x):
    return x.toarray() if sp.issparse(x) else np.asarray(x)


def nb_loglik(x, L, F, theta=None, w=None, inv_disp=None) -> float:
    """Σ_ij w_ij log NB(x_ij; mean (L Fᵀ)_ij, inverse dispersion θ) in nats.

    Evaluated by :func:`scnotes.likelihoods.nb_log_pmf` in float64 (dense).

    Parameters
    ----------
    x : array or sparse (n_cells, n_genes) counts; L (n_cells, k); F (n_genes, k).
    theta : float or array (n_genes,), θ > 0 (``inv_disp`` is its older name).
    w : None or (n_cells, n_genes) weights in [0, 1]; entries with w = 0 are not
        evaluated (a masked positive count under a zero mean costs nothing).

    Raises
    ------
    ValueError
        Bad counts/mask/factors, or θ not positive and finite.
    """
    if theta is None:
        theta = inv_disp
    if theta is None:
        raise ValueError("give theta (the inverse dispersion)")
    x = check_counts(x, allow_empty_cells=True, allow_empty_genes=True)
    W = check_mask(w, x.shape)
    L, F = _check_factors(L, F, x.shape, None)
    theta = _check_theta(theta, x.shape[1])
    obj = _NBObjective(_dense(x), None if W is None else _dense(W), by_gene=theta.size > 1)
    return obj.loglik(L @ F.T, theta)


def _check_theta(theta, p):
    theta = np.atleast_1d(np.asarray(theta, dtype=np.float64))
    if theta.ndim != 1 or theta.size not in (1, p):
        raise ValueError(f"theta must be a scalar or have length n_genes={p}")
    if not np.all(np.isfinite(theta)) or np.any(theta <= 0):
        raise ValueError("theta (inverse dispersion) must be positive and finite")
    return theta


class NBMF(_FactorResults):
    """Negative binomial matrix factorisation x ~ NB(L Fᵀ, θ) by EM (see module docstring).

    Parameters
    ----------
    n_components : int
        Rank k.
    theta : float or array (n_genes,)
        Starting (or, with ``fix_theta``, fixed) inverse dispersion θ
        (variance μ + μ²/θ). The seed used 0.1. Older name: ``inv_disp``.
    fix_theta : bool
        Keep θ fixed. Older name: ``fix_inv_disp``.
    theta_by_gene : bool
        One θ per gene instead of one shared θ. Older name: ``inv_disp_by_gene``.
    method : {"scd", "mu"}
        M-step for L and F (see module docstring).
    max_epochs, tol : int, float
        At most ``max_epochs`` EM sweeps (``max_iter`` is the older name); stop
        when ℓ improves by less than ``tol · |ℓ|``.
    init : "random" or (L0, F0)
        As :class:`~scnotes.nmf.PoissonNMF`.
    seed : int
        Seed of the random start (``numpy.random.default_rng``; global random
        states untouched).
    newton_steps : int
        Newton steps for log θ per EM sweep.
    n_inner : int
        Newton steps per coordinate of the ``"scd"`` M-step.
    progress, verbose : bool
        Progress bar over the sweeps / print ℓ and θ after each.

    Attributes
    ----------
    L_ (n_cells, k), F_ (n_genes, k) : fitted factors; mean = L_ F_ᵀ.
    theta_ : ndarray (1,) or (n_genes,), fitted θ (``inv_disp_``: older name).
    loglik_ : float, weighted NB log-likelihood (nats, incl. constants).
    history_ : DataFrame, one row per sweep (``epoch`` from 0; the start is not a row):
        ``epoch``, ``loss`` (−ℓ per cell), ``loglik``, ``time`` (s), ``theta`` (mean θ).
        ``trace_``: the older layout (``iter`` = sweeps done, ``loglik``, ``time``, ``inv_disp``;
        deprecated).
    n_epochs_ (sweeps run, ``len(history_)``; ``n_iter_``: older name, deprecated),
    loglik_init_ (ℓ at the start), converged_, var_names_.
    """

    _param_names = ("n_components", "theta", "fix_theta", "theta_by_gene", "method", "max_epochs",
                    "tol", "init", "seed", "newton_steps", "n_inner", "progress", "verbose")
    _array_params = ("init", "theta")
    _extra = "theta"
    _trace_extra = "inv_disp"
    _fitted_arrays = ("L_", "F_", "theta_")

    def __init__(self, n_components: int = 10, theta=1.0, fix_theta: bool = False,
                 theta_by_gene: bool = False, method: str = "scd", max_epochs: int = 500,
                 tol: float = 1e-8, init="random", seed: int = 0, newton_steps: int = 2,
                 n_inner: int = 2, progress: bool | None = None, verbose: bool = False, *,
                 inv_disp=None, fix_inv_disp: bool | None = None,
                 inv_disp_by_gene: bool | None = None, max_iter: int | None = None):
        self.n_components = n_components
        self.theta = theta if inv_disp is None else inv_disp
        self.fix_theta = fix_theta if fix_inv_disp is None else fix_inv_disp
        self.theta_by_gene = theta_by_gene if inv_disp_by_gene is None else inv_disp_by_gene
        self.method = method
        self.max_epochs = max_epochs if max_iter is None else max_iter
        self.tol = tol
        self.init = init
        self.seed = seed
        self.newton_steps = newton_steps
        self.n_inner = n_inner
        self.progress = progress
        self.verbose = verbose

    # Older names of the θ hyperparameters and of the fitted θ.
    @property
    def inv_disp(self):
        return self.theta

    @property
    def fix_inv_disp(self):
        return self.fix_theta

    @property
    def inv_disp_by_gene(self):
        return self.theta_by_gene

    @property
    def inv_disp_(self):
        return self.theta_

    def fit(self, x, w=None, *, var_names=None):
        """Fit to counts ``x`` (n_cells × n_genes; sparse is densified), optional weights ``w``;
        ``var_names`` (one per gene) become ``var_names_``.

        Returns ``self``.

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
        if int(self.max_epochs) != self.max_epochs or int(self.max_epochs) < 0:
            raise ValueError(f"max_epochs must be a non-negative integer, got {self.max_epochs!r}")
        if self.tol < 0 or int(self.n_inner) < 1:
            raise ValueError("tol must be >= 0 and n_inner >= 1")
        prob = _Problem(x, w)  # validates x and w; sparse w∘x for the SCD kernel
        n, p = prob.shape
        k = int(self.n_components)
        X = _dense(check_counts(x, allow_empty_cells=True, allow_empty_genes=True))
        W = None if w is None else _dense(check_mask(w, X.shape))
        theta = _check_theta(self.theta, p)
        if self.theta_by_gene and theta.size == 1:
            theta = np.full(p, theta[0])
        elif not self.theta_by_gene and theta.size > 1:
            raise ValueError("theta has one value per gene but theta_by_gene=False")
        L, F = _initial_factors(self.init, prob, k, self.seed, (n, p))

        nb = _NBObjective(X, W, by_gene=theta.size > 1)
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
        rows = [(0, ll, time.perf_counter() - t0, float(theta.mean()))]
        conv = False
        with np.errstate(divide="ignore", invalid="ignore"), _kernels.threads_for(n * p):
            for it in _sweeps(int(self.max_epochs), self.progress, "NBMF"):
                update(L, F, mu, theta, True)
                mu = L @ F.T
                update(F, L, mu, theta, False)
                mu = L @ F.T
                nb.set_mean(mu)
                if not self.fix_theta:
                    theta = nb.newton(theta, int(self.newton_steps))
                new = nb.loglik(mu, theta)
                rows.append((it, new, time.perf_counter() - t0, float(theta.mean())))
                if self.verbose:
                    print(f"epoch {it:5d}  loglik {new:.6f}  theta {theta.mean():.4g}")
                if self.tol > 0 and 0 <= new - ll < self.tol * abs(new):
                    conv = True
                    break
                ll = new
        self.theta_ = theta
        self._finish(prob, L, F, rows, conv, check_var_names(var_names, prob.shape[1]))
        return self


class _NBObjective:
    """ℓ(θ) = Σ_ij w_ij log NB(x_ij; μ_ij, θ) for fixed counts and weights and a settable mean,
    per group (all entries, or one group per gene), in float64 torch.

    The terms are those of :func:`scnotes.likelihoods.nb_log_pmf`,

        log NB = A(x, θ) − (θ + x) log1p(μ/θ) + x log μ − lgamma(x + 1),

    with its stable A(x, θ) = lgamma(x + θ) − lgamma(θ) − x log θ
    (``scnotes.likelihoods._log_gamma_ratio64``). A depends on the entry only
    through its count, so Σ w A is taken over a weighted histogram of the
    counts (per gene with ``by_gene``): O(#distinct counts) log-gamma calls
    instead of n × p, which keeps the θ step as cheap as the M-step. The
    result equals Σ w ``nb_log_pmf`` (tested to 1e-10). Entries with w = 0 are
    dropped, so a masked positive count under a zero mean costs nothing.
    """

    def __init__(self, X, W, by_gene):
        self.by_gene = by_gene
        n, p = X.shape
        Wd = np.ones_like(X, dtype=np.float64) if W is None else np.asarray(W, dtype=np.float64)
        xi = np.asarray(X).astype(np.int64)
        nv = int(xi.max()) + 1 if xi.size else 1
        keys = (np.broadcast_to(np.arange(p)[None, :], X.shape).ravel() * nv + xi.ravel()
                if by_gene else xi.ravel())
        uk, inv = np.unique(keys, return_inverse=True)
        hw = np.bincount(inv.ravel(), weights=Wd.ravel())
        keep = hw > 0
        self.hw = torch.as_tensor(hw[keep])
        self.hv = torch.as_tensor((uk % nv if by_gene else uk)[keep].astype(np.float64))
        self.hg = torch.as_tensor(((uk // nv) if by_gene else np.zeros(uk.size, np.int64))[keep])
        self.G = p if by_gene else 1
        self.obs = None if W is None else torch.as_tensor(Wd > 0)
        self.w = None if W is None else torch.as_tensor(Wd)
        self.x = torch.as_tensor(np.asarray(X, dtype=np.float64))
        self.wsum = float(Wd.sum())
        with np.errstate(divide="ignore"):
            self.const = -float((Wd * _lgamma1(np.asarray(X, dtype=np.float64))).sum())
        self.mu = None

    def set_mean(self, mu):
        mu = torch.as_tensor(np.asarray(mu, dtype=np.float64))
        if self.obs is not None:
            mu = torch.where(self.obs, mu, torch.ones_like(mu))
        self.mu = mu
        xlogmu = torch.where(self.x > 0, self.x * torch.log(mu), torch.zeros_like(mu))
        self.xlogmu = float((xlogmu if self.w is None else xlogmu * self.w).sum())

    def _hist(self, theta):
        a = _log_gamma_ratio64(self.hv, theta[self.hg])
        return torch.zeros(self.G, dtype=torch.float64).index_add(0, self.hg, self.hw * a)

    def _group_sum(self, a):
        if self.w is not None:
            a = a * self.w
        return a.sum(0) if self.by_gene else a.sum().reshape(1)

    def values(self, theta):
        """Per-group θ-dependent part of ℓ (tensor of length 1 or n_genes) at θ (same length)."""
        t = theta if self.by_gene else theta.reshape(())
        return self._hist(theta) - self._group_sum((t + self.x) * torch.log1p(self.mu / t))

    def derivatives(self, eta):
        """First and second derivatives of :meth:`values` in η = log θ (per group; the
        Hessian is diagonal because groups are independent). The histogram part goes
        through torch's autograd of the stable A(x, θ) (a few hundred terms); the n × p
        part −(θ + x) log1p(μ/θ) has the closed forms below."""
        e = eta.clone().requires_grad_(True)
        hist = self._hist(torch.exp(e))
        (g1,) = torch.autograd.grad(hist.sum(), e, create_graph=True)
        (h1,) = torch.autograd.grad(g1.sum(), e)
        th = torch.exp(eta)
        t = th if self.by_gene else th.reshape(())
        mu, x = self.mu, self.x
        tx, ttm = t + x, t * (t + mu)
        q = mu / ttm                                     # −d/dθ log1p(μ/θ)
        d1 = torch.log1p(mu / t) - tx * q                # d/dθ (θ + x) log1p(μ/θ)
        d2 = q * (tx * (2 * t + mu) / ttm - 2)           # d²/dθ² of the same
        g = g1.detach() - th * self._group_sum(d1)
        h = h1.detach() - (th * self._group_sum(d1) + th ** 2 * self._group_sum(d2))
        return g, h

    def loglik(self, mu, theta) -> float:
        self.set_mean(mu)
        with torch.no_grad():
            v = self.values(torch.as_tensor(np.asarray(theta, dtype=np.float64)))
        return float(v.sum()) + self.xlogmu + self.const

    def newton(self, theta, steps):
        """Newton ascent on η = log θ with step halving; each accepted step increases ℓ.
        Gradient and curvature from :meth:`derivatives`."""
        eta = torch.as_tensor(np.log(np.asarray(theta, dtype=np.float64)))
        with torch.no_grad():
            cur = self.values(torch.exp(eta))
        for _ in range(steps):
            g, h = self.derivatives(eta)
            step = torch.where(h < 0, -g / torch.where(h < 0, h, -torch.ones_like(h)), torch.sign(g))
            step = torch.clamp(step, -1.0, 1.0)
            accepted = torch.zeros(eta.shape, dtype=torch.bool)
            new_eta = eta.clone()
            with torch.no_grad():
                for _half in range(30):
                    trial = torch.clamp(eta + step, *_LOG_THETA_BOUNDS)
                    v = self.values(torch.exp(trial))
                    ok = (v >= cur) & ~accepted
                    new_eta = torch.where(ok, trial, new_eta)
                    cur = torch.where(ok, v, cur)
                    accepted |= ok
                    if bool(accepted.all()):
                        break
                    step = torch.where(accepted, step, step / 2)
            eta = new_eta
            # Stop when the gradient is negligible per unit of weight.
            if bool(torch.all(torch.abs(g) < 1e-10 * max(self.wsum, 1.0))):
                break
        return np.exp(eta.numpy())


def _lgamma1(x):
    from scipy.special import gammaln

    return gammaln(x + 1.0)


def nbmf(x, n_components: int = 10, w=None, **kwargs) -> NBMF:
    """Fit :class:`NBMF` (``kwargs`` go to its constructor) and return the fitted estimator."""
    return NBMF(n_components, **kwargs).fit(x, w=w)
