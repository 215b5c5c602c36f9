"""Newton-type updates of the NB GLMM's Gaussian q, every gene at once (the default optimiser).

The linear predictor of a (group, donor) block b is η_b = a_bᵀβ, β = (b, γ, u, w) ~ N(μ, Λ⁻¹), so
the expected log-likelihood depends on q(β) = N(m, Σ) only through m_b = a_bᵀm and v_b = a_bᵀΣa_b.
At the optimum of the ELBO over full-rank Gaussians Σ⁻¹ = Λ + Aᵀ diag(h) A with h_b = −2 ∂E ln p/∂v_b
(Opper & Archambeau 2009, Neural Comput 21:786): the optimal covariance has one free number per
block, not P(P+1)/2. The updates below are the natural-gradient (Bayesian learning rule) steps in
that family (Khan & Rue 2023, JMLR 24:281), with step ρ per gene:

    h ← (1 − ρ) h + ρ h̃,   m ← m + ρ (Λ + Aᵀ diag(h) A)⁻¹ (Aᵀ g − Λ(m − μ)),

g_b = ∂E ln p/∂m_b and h̃_b = Σ_{i∈b} (θ + y_i) E σ'(z_i) from one pass over the cells
(:class:`._nb_lik.BlockDerivatives`), and a Newton step on ln θ_j from the same pass. With ρ = 1
this is a Newton step in the mean with the expected curvature (Fisher scoring); a step that lowers
a gene's ELBO is taken back and ρ of that gene quartered, so the ELBO of every gene never falls.
The prior variances are profiled at their closed-form maximiser given q before every step (the
VBEM M-step, as in the Adam path). A handful of passes replace the hundreds of Adam steps of the
old parameterisation (measured in ``benchmarks/bench_glmm_nb.py``).
"""
from __future__ import annotations

import torch

from ._nb_lik import _nb_block_derivatives, _poisson_block_derivatives

__all__ = ["NewtonVEB", "fisher_variance_step"]

_LOG_THETA_RANGE = (-6.9, 11.5)  # θ in [1e-3, 1e5]: beyond that the likelihood is flat in θ


class NewtonVEB:
    """State and updates of q(β) = N(m, (Λ + Aᵀ diag(h) A)⁻¹) for J genes over one design.

    Parameters
    ----------
    A : (B, P) tensor, the block design (one row per (group, donor) block).
    lik : :class:`._nb_lik.ExpectedNBLogLik` over the cells.
    m0 : (J, P) starting mean;  log_theta : (J, 1) starting ln θ (learned when ``learn_theta``), or
        None for the Poisson GLMM (θ = ∞).

    Set before :meth:`refresh` / :meth:`step`: ``prior`` (callable (m, diag Σ) → prior mean and
    prior variance, both (J, P)), ``theta_prior`` (None or (trend (J,), τ²): ln θ ~ N(trend, τ²)),
    ``variance_step`` (None or callable (m, diag Σ, Σ, active genes) run before each step: the prior
    variances' update of the active genes).

    Genes are independent, so a gene whose ELBO moved by less than ``tol`` nats is set aside and
    the passes run on the others (the set is shrunk when it has fallen by 30 %).
    """

    def __init__(self, A, lik, m0, log_theta, learn_theta: bool):
        self.A, self.lik = A, lik
        self.learn_theta = learn_theta and log_theta is not None
        self.m = m0.clone()
        self.t = None if log_theta is None else log_theta.clone()
        J, P = m0.shape
        B = A.shape[0]
        kw = dict(dtype=m0.dtype, device=m0.device)
        # the non-zero products A_bp A_bq: the precision's data part and a_bᵀ Σ a_b use only these
        b_idx, p_idx, q_idx = [], [], []
        A_np = A.cpu().numpy()
        for b in range(B):
            nz = A_np[b].nonzero()[0]
            for p in nz:
                for q in nz:
                    b_idx.append(b), p_idx.append(p), q_idx.append(q)
        self._b = torch.as_tensor(b_idx, dtype=torch.long, device=m0.device)
        self._p = torch.as_tensor(p_idx, dtype=torch.long, device=m0.device)
        self._q = torch.as_tensor(q_idx, dtype=torch.long, device=m0.device)
        self._flat = self._p * P + self._q
        self._val = A[self._b, self._p] * A[self._b, self._q]
        self.rho = torch.ones(J, **kw)
        self.h = self._derivs(lik, self.m @ A.T, torch.zeros(J, B, **kw), self.t).curv.clamp_min(1e-8)
        self.prior, self.theta_prior, self.variance_step = None, None, None
        self.sigma = self.var = self.v = self.logdet = self.d = None

    # --------------------------------------------------------------- pieces
    def _derivs(self, lik, mb, v, t):
        if t is None:
            return _poisson_block_derivatives(lik, mb, v)
        return _nb_block_derivatives(lik, mb, v, t, self.learn_theta)

    def _posterior(self, h, lam):
        """Σ = (Λ + Aᵀ diag(h) A)⁻¹ (J, P, P), v_b = a_bᵀ Σ a_b (J, B), diag Σ and ln|Σ| (J,)."""
        J, P = lam.shape
        prec = torch.zeros(J, P * P, dtype=lam.dtype, device=lam.device)
        prec.index_add_(1, self._flat, h[:, self._b] * self._val)
        prec = prec.view(J, P, P) + torch.diag_embed(lam)
        chol = torch.linalg.cholesky(prec)
        sigma = torch.cholesky_inverse(chol)
        v = torch.zeros_like(h).index_add_(1, self._b, sigma[:, self._p, self._q] * self._val)
        logdet = -2.0 * torch.log(torch.diagonal(chol, dim1=1, dim2=2)).sum(1)
        return sigma, v, torch.diagonal(sigma, dim1=1, dim2=2).clone(), logdet

    def _theta_log_prior(self, t, rows=slice(None)):
        if self.theta_prior is None or t is None:
            return 0.0
        tr, tau2 = self.theta_prior
        return -0.5 * (t[:, 0] - tr[rows]) ** 2 / tau2

    @staticmethod
    def _kl(m, var, logdet, mu, pv):
        P = m.shape[1]
        return 0.5 * (((var + (m - mu) ** 2) / pv).sum(1) + torch.log(pv).sum(1) - logdet - P)

    def _sub_lik(self, idx):
        """The likelihood restricted to genes ``idx`` (cached until the set shrinks)."""
        if self._cache is None or self._cache[0] is not idx:
            self._cache = (idx, self.lik if idx is None else self.lik.subset(idx))
        return self._cache[1]

    def refresh(self):
        """Moments, the cell pass and the ELBO at the current state; every gene active again."""
        mu, pv = self.prior(self.m, torch.full_like(self.m, 0.01) if self.var is None else self.var)
        self.sigma, self.v, self.var, self.logdet = self._posterior(self.h, 1.0 / pv)
        mu, pv = self.prior(self.m, self.var)
        self.sigma, self.v, self.var, self.logdet = self._posterior(self.h, 1.0 / pv)
        self.d = self._derivs(self.lik, self.m @ self.A.T, self.v, self.t)
        self.active = torch.ones(self.m.shape[0], dtype=torch.bool, device=self.m.device)
        self._idx, self._cache = None, None

    def elbo_parts(self):
        """(expected log-likelihood, KL, log prior of ln θ) per gene at the current state and priors."""
        mu, pv = self.prior(self.m, self.var)
        return self.d.value, self._kl(self.m, self.var, self.logdet, mu, pv), self._theta_log_prior(self.t)

    # --------------------------------------------------------------- one step
    def step(self, tol: float = 0.0):
        """One damped natural-gradient step for the active genes; returns the number still active
        (a gene is set aside once a step moves its ELBO by less than ``tol`` nats)."""
        A = self.A
        if self.variance_step is not None:
            self.variance_step(self.m, self.var, self.sigma, self.active)
        mu, pv = self.prior(self.m, self.var)  # the priors at the current q
        n_act = int(self.active.sum())
        if self._idx is None or n_act <= 0.7 * len(self._idx):
            self._idx = torch.nonzero(self.active)[:, 0]
            self._cache = None
        r = self._idx
        lik = self._sub_lik(r)
        m, h, t, mu, pv = self.m[r], self.h[r], None if self.t is None else self.t[r], mu[r], pv[r]
        d = _take(self.d, r)
        lam = 1.0 / pv
        f0 = d.value - self._kl(m, self.var[r], self.logdet[r], mu, pv) + self._theta_log_prior(t, r)
        rho = self.rho[r][:, None]
        h_new = (1.0 - rho) * h + rho * d.curv.clamp_min(1e-8)
        grad = d.grad_m @ A - lam * (m - mu)
        sigma, v, var, logdet = self._posterior(h_new, lam)
        m_new = m + rho * (sigma @ grad[..., None])[..., 0]
        t_new = t
        if self.learn_theta:
            g, hs = d.grad_t, d.hess_t
            if self.theta_prior is not None:
                tr, tau2 = self.theta_prior
                g = g - (t[:, 0] - tr[r]) / tau2
                hs = hs - 1.0 / tau2
            newton = torch.where(hs < 0, -g / hs.clamp_max(-1e-12), torch.sign(g))
            t_new = (t + rho * newton.clamp(-1.0, 1.0)[:, None]).clamp(*_LOG_THETA_RANGE)
        d_new = self._derivs(lik, m_new @ A.T, v, t_new)
        f1 = d_new.value - self._kl(m_new, var, logdet, mu, pv) + self._theta_log_prior(t_new, r)
        ok = torch.isfinite(f1) & (f1 >= f0 - 1e-9 * f0.abs())
        k1 = ok[:, None]
        self.rho[r] = torch.where(ok, torch.clamp(self.rho[r] * 2.0, max=1.0), self.rho[r] * 0.25)
        self.m[r] = torch.where(k1, m_new, m)
        self.h[r] = torch.where(k1, h_new, h)
        if self.learn_theta:
            self.t[r] = torch.where(k1, t_new, t)
        self.v[r] = torch.where(k1, v, self.v[r])
        self.var[r] = torch.where(k1, var, self.var[r])
        self.logdet[r] = torch.where(ok, logdet, self.logdet[r])
        self.sigma[r] = torch.where(ok[:, None, None], sigma, self.sigma[r])
        _put(self.d, r, _where(ok, d_new, d))
        done = ok & ((f1 - f0).abs() < tol)
        self.active[r[done]] = False
        return int(self.active.sum())

    def covariance(self):
        """Σ per gene, (J, P, P)."""
        return self.sigma


_FIELDS = ("value", "grad_m", "curv", "grad_t", "hess_t")


def _take(d, r):
    return type(d)(*(None if getattr(d, f) is None else getattr(d, f)[r] for f in _FIELDS))


def _where(ok, a, b):
    out = []
    for f in _FIELDS:
        x, y = getattr(a, f), getattr(b, f)
        out.append(None if x is None else torch.where(ok.view(-1, *([1] * (x.dim() - 1))), x, y))
    return type(a)(*out)


def _put(d, r, new):
    for f in _FIELDS:
        x = getattr(d, f)
        if x is not None:
            x[r] = getattr(new, f)


def fisher_variance_step(m, var, cov, sigma2, onehot, floor):
    """One Fisher-scoring step of the prior variances of the random effects, (J, n_components).

    ``m``, ``var`` (J, R) q's means and variances of the R random-effect coordinates, ``cov``
    (J, R, R) their covariance, ``sigma2`` (J, n_components) the current variances and ``onehot``
    (R, n_components) each coordinate's component. The score of σ²_a is the ELBO's,
    ½ Σ_{k∈a} ((m_k² + Σ_kk)/σ_a⁴ − 1/σ_a²), zero exactly where the VBEM M-step σ_a² = E‖u_a‖²/n_a
    is; the information is the restricted-likelihood one of the posterior
    (:func:`._contrasts.variance_information`, Harville 1977). EM's step is this one with the
    complete-data information n_a/(2σ_a⁴), which the data's information falls far below when the
    sampling variance of an effect exceeds σ_a²: EM then crawls toward small variances (hundreds
    of passes, measured) where scoring converges in a few. The step is kept within a factor 10 of
    the current value and above ``floor``.
    """
    s2r = sigma2 @ onehot.T  # (J, R) each coordinate's variance
    n = onehot.sum(0)
    e2 = (m ** 2 + var) @ onehot
    score = 0.5 * (e2 / sigma2 ** 2 - n / sigma2)
    mm = torch.diag_embed(1.0 / s2r) - cov / (s2r[:, :, None] * s2r[:, None, :])
    info = 0.5 * onehot.T @ (mm ** 2) @ onehot
    info = info + torch.diag_embed(1e-6 * n / (2.0 * sigma2 ** 2))
    step = torch.linalg.solve(info, score[..., None])[..., 0]
    new = sigma2 + step
    new = torch.where(torch.isfinite(new), new, e2 / n)
    return torch.maximum(torch.minimum(new, 10.0 * sigma2), torch.clamp(0.1 * sigma2, min=floor)).clamp_min(floor)
