"""Negative-binomial GLMM, fitted by variational empirical Bayes for every gene at once.

Model, per gene ``j`` and cell ``i`` (Poisson GLMM of :mod:`scnotes.glmm` with
cell-level overdispersion and an optional sample effect)::

    y_ij ~ NB(s_i λ_ij, θ_j)            (mean s_i λ_ij, variance μ + μ²/θ_j)
    ln λ_ij = b_{j,g(i)} + u_{j,d(i)} + w_{j,k(i)}
    b_jg ~ N(μ_j, τ_j²),  u_jd ~ N(0, σ_uj²),  w_jk ~ N(0, σ_wj²)

``g(i)`` the cell group (cell type × condition), ``d(i)`` the donor and ``k(i)``
the *sample*: donor × condition (``sample_effect="condition"``, the unit that
Kang et al.'s paired design replicates), donor × cell group (``"group"``: the
pseudobulk unit, donor × cell type × condition) or none (``None``). Without a
sample effect a design where every donor gives both conditions treats cells as
replicates of the condition contrast, and its intervals are far too narrow
(Squair et al. 2021, Nat Commun 12:5692; Zimmerman et al. 2021, Nat Commun 12:738).

Inference: a full-rank Gaussian q(b, u, w) per gene; σ_u, σ_w and the
inverse dispersion θ_j are point estimates maximising the ELBO (empirical
Bayes; Wang et al. 2020 VEB). b has a vague fixed prior by default (see
``prior_b``): an EB prior shared by the groups would shrink the very contrasts
being tested. The prior hyperparameters have closed-form
maximisers given q (each variance is the mean second moment of its effects
under q, as in the M-step of VBEM; Beal 2003), so they are profiled out: the
objective Adam climbs is the ELBO at the best prior for the current q, and
only q and θ are optimised (σ's gradient path is otherwise very slow). The expected NB log-likelihood has no closed
form; under q the linear predictor of a (group, donor) block is Gaussian,
η ~ N(m, v), and

    ln NB(y; s e^η, θ) = A(y, θ) + y (ln s + η) − ln y! − (θ + y) softplus(z),
    z = ln s + η − ln θ,  A(y, θ) = lnΓ(y + θ) − lnΓ(θ) − y ln θ,

so only the softplus needs a one-dimensional Gauss–Hermite quadrature
(``n_quad`` nodes) per cell; the terms linear in η reduce to block sums of the
counts, and A is evaluated on the non-zero counts (as in
:func:`scnotes.likelihoods.nb_log_pmf`, whose value it equals at v = 0). Every
step is one full batch over cells × genes (× nodes for the softplus). With
θ = ∞ the Poisson expectation is exact.

The covariance of q is parameterised in an orthonormal basis of the block
design (its row space, then its null space), so the directions the likelihood
does not see (a common shift between b, u and w) are separate coordinates,
pinned by the priors only; this shortens Adam's path as in
:class:`scnotes.glmm.PoissonGLMMVEB`'s shift basis.

The condition contrast and its test
-----------------------------------
For a cell type c with reference condition r, the contrast is
``δ_c = b_{c|k} − b_{c|r}`` (log fold change of the rate per unit of library
size). :meth:`NBGLMMVEB.summary` reports its posterior mean and sd, the
local false sign rate, and an approximate frequentist test of ``δ_c = 0`` under
the NB GLMM: ``T = posterior mean / posterior sd`` referred to Student's t with
``df_c = n_samples_c − rank([condition, paired donor] indicators)`` degrees of
freedom (n_donors − 1 in a paired design, n_donors − 2 with donors nested in
conditions): the residual degrees of freedom of the sample-level design,
which is what T's denominator estimates σ_u, σ_w from (a paired / two-sample t
test on the samples when cell-level noise is small). In a paired cell type the
sample-level noise of the contrast is w alone, and σ_w is one per gene,
estimated from the samples of every cell type (``sample_effect="group"``: one
sample per donor × cell type × condition): the test then takes the residual
degrees of freedom of that whole design, ``n_samples − rank([sample label, donor]
indicators)``, when larger (3 donors × 8 cell types × 2 conditions: 48 − 18 = 30
instead of 2). That assumes σ_w is shared by the cell types, as the model does. Its calibration is measured,
not proven: see the chapter "Is the GLMM calibrated?".
"""
from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..likelihoods import _log_gamma_ratio64_dense, poisson_log_pmf
from ._design import GLMMData
from ._tidy import tidy_effects
from ._veb import _descend

__all__ = ["NBGLMMVEB", "fit_nb_veb", "fit_genes_nb", "simulate_nb_glmm"]

_SAMPLE_EFFECTS = (None, "condition", "group")
# Smallest prior variance (sd 1e-3 on the log scale): keeps ln σ² finite when the data
# support no donor or sample variation at all (σ → 0, the boundary lme4 calls singular).
_VAR_FLOOR = 1e-6


class NBGLMMVEB:
    """Variational empirical Bayes fit of the NB GLMM for every gene of a :class:`GLMMData`.

    Parameters
    ----------
    sample_effect : {"condition", "group", None}
        Random effect per donor × condition (default), per donor × cell group, or none.
        ``"condition"`` needs cell type × condition groups (``glmm_data(...,
        cell_type_key=, condition_key=)``).
    theta : float or None
        Fixed inverse dispersion for every gene (``np.inf``: the Poisson GLMM, used to
        check the limit); None (default) learns θ_j per gene.
    n_quad : int
        Gauss–Hermite nodes of the expected log-likelihood (per cell).
    max_epochs : int
        Full-batch Adam steps (``optimizer="lbfgs"``: the most L-BFGS iterations).
    optimizer : {"adam", "lbfgs"}
        Adam (per-parameter steps; the default) or L-BFGS with a strong-Wolfe line search on
        the sum over genes (measured on 200 simulated genes: about the same ELBO per evaluation).
    lr, lr_decay : float
        Adam learning rate, decayed exponentially to ``lr * lr_decay`` by the last step.
    prior_b : {"vague", "shared"}
        Prior on the cell-group effects. ``"vague"`` (default): b_g ~ N(μ₀, prior_sd_b²) with
        μ₀ the mean naive estimate, fixed — the contrasts are then driven by the data, as
        fixed effects are in glmmTMB / lme4. ``"shared"``: the Poisson VEB's empirical-Bayes
        N(μ, τ²) with μ, τ estimated; it shrinks the groups towards each other, and with two
        groups and no difference τ̂ → 0, so its contrasts are shrunk to 0 (conservative,
        and slow to converge). Kept for comparison with :class:`PoissonGLMMVEB`.
    prior_sd_b : float
        The vague prior's sd (log scale).
    seed : int
        Unused by the (deterministic) objective; kept for the contract.
    device, dtype, progress
        torch device, dtype (float64 default), tqdm bar over steps.

    Attributes (after fit)
    ----------------------
    b_mean_, b_sd_ : (n_genes, n_groups)   posterior mean / sd of b (log scale)
    b_cov_ : (n_genes, n_groups, n_groups)
    u_mean_ : (n_genes, n_donors);  w_mean_ : (n_genes, n_samples)
    sigma_u_, sigma_w_ (NaN without a sample effect), theta_ : (n_genes,)
    samples_ : DataFrame, one row per sample (donor, condition or group)
    df_ : dict cell type → degrees of freedom of the contrast test
    history_ : DataFrame ``epoch``, ``loss`` (−ELBO), ``elbo``, ``reconstruction``, ``kl`` (nats, summed over genes)
    var_names_, design_, covariate_registry_, fit_time_ (seconds)

    Raises
    ------
    ValueError : bad argument; ``sample_effect="condition"`` on groups without conditions.
    RuntimeError : the loss became NaN (lower ``lr``).
    """

    def __init__(self, sample_effect: str | None = "condition", theta: float | None = None, n_quad: int = 5,
                 max_epochs: int = 300, optimizer: str = "adam", lr: float = 0.05, lr_decay: float = 0.01,
                 prior_b: str = "vague", prior_sd_b: float = 10.0,
                 seed: int = 0, device: str = "cpu", dtype=torch.float64, progress: bool = False):
        if prior_b not in ("vague", "shared"):
            raise ValueError(f"prior_b must be 'vague' or 'shared', got {prior_b!r}")
        if not prior_sd_b > 0:
            raise ValueError(f"prior_sd_b must be > 0, got {prior_sd_b!r}")
        self.prior_b, self.prior_sd_b = prior_b, float(prior_sd_b)
        if optimizer not in ("lbfgs", "adam"):
            raise ValueError(f"optimizer must be 'lbfgs' or 'adam', got {optimizer!r}")
        self.optimizer = optimizer
        if sample_effect not in _SAMPLE_EFFECTS:
            raise ValueError(f"sample_effect must be one of {_SAMPLE_EFFECTS}, got {sample_effect!r}")
        if theta is not None and not (theta > 0):
            raise ValueError(f"theta must be > 0 (np.inf for Poisson) or None, got {theta!r}")
        if int(n_quad) < 1 or int(max_epochs) < 1:
            raise ValueError("n_quad and max_epochs must be >= 1")
        self.sample_effect, self.theta, self.n_quad = sample_effect, theta, int(n_quad)
        self.max_epochs, self.lr, self.lr_decay = int(max_epochs), float(lr), float(lr_decay)
        self.seed, self.device, self.dtype, self.progress = seed, device, dtype, bool(progress)
        self.history_ = None

    # ---------------------------------------------------------------- design
    def _blocks(self, data: GLMMData):
        """Non-empty (group, donor) blocks, their sample codes, and the sample table."""
        st = data.stats()
        gi, di = np.nonzero(st.n)
        tab = data.group_table
        if self.sample_effect is None:
            ki = np.zeros(0, dtype=int)
            samples = pd.DataFrame(columns=["donor", "condition", "group"])
            return gi, di, None, samples
        if self.sample_effect == "condition":
            if tab["condition"].isna().any():
                raise ValueError('sample_effect="condition" needs cell type × condition groups; build the '
                                 "data with cell_type_key and condition_key, or use sample_effect=\"group\"")
            labels = [(data.donors[d], str(tab["condition"].iloc[g])) for g, d in zip(gi, di)]
        else:
            labels = [(data.donors[d], data.groups[g]) for g, d in zip(gi, di)]
        uniq = list(dict.fromkeys(labels))
        ki = np.array([uniq.index(x) for x in labels], dtype=int)
        col = "condition" if self.sample_effect == "condition" else "group"
        samples = pd.DataFrame(uniq, columns=["donor", col])
        return gi, di, ki, samples

    def _contrast_df(self, data, gi, di, ki=None, samples=None):
        """Degrees of freedom of each cell type's contrast test (see the module notes).

        Per cell type: ``n_samples_c − rank([condition, paired donor] indicators)``. Where every
        donor of the cell type gives both conditions (paired) the contrast's sample-level noise is
        the sample effect w alone, whose variance σ_w² is one per gene, estimated from every sample
        of the gene; its degrees of freedom are then those of the whole sample-level design,
        ``n_samples − rank([sample label, donor with ≥ 2 samples] indicators)``, if larger.
        """
        tab = data.group_table
        out = {}
        if not tab["cell_type"].notna().all():
            return out
        pooled = 0.0
        if ki is not None and samples is not None and len(samples):
            lab = samples.iloc[:, 1].astype(str).to_numpy()
            don = samples["donor"].astype(str).to_numpy()
            multi = [d for d in pd.unique(don) if (don == d).sum() >= 2]
            levels = list(pd.unique(lab))
            Xs = np.array([[x == lv for lv in levels] + [d == m for m in multi] for x, d in zip(lab, don)], float)
            pooled = float(len(samples) - np.linalg.matrix_rank(Xs))
        for ct in pd.unique(tab["cell_type"]):
            sel = (tab["cell_type"].to_numpy()[gi] == ct)
            conds = tab["condition"].to_numpy()[gi[sel]]
            donors = di[sel]
            pairs = sorted(set(zip(donors.tolist(), conds.tolist())))
            cond_lv = sorted(set(c for _, c in pairs))
            n_cond = {d: len({c for dd, c in pairs if dd == d}) for d in set(donors.tolist())}
            paired = [d for d, n in n_cond.items() if n >= 2]
            X = np.array([[c == lv for lv in cond_lv] + [d == p for p in paired] for d, c in pairs], float)
            df = float(max(len(pairs) - np.linalg.matrix_rank(X), 1))
            if len(paired) == len(n_cond) and len(cond_lv) >= 2:
                df = max(df, pooled)
            out[ct] = df
        return out

    # ---------------------------------------------------------------- fit
    def fit(self, data: GLMMData):
        """Fit q(b, u, w), μ, τ, σ_u, σ_w and θ for every gene of ``data``; returns self.

        Raises
        ------
        TypeError : ``data`` is not a :class:`GLMMData`.
        RuntimeError : NaN loss.
        """
        if not isinstance(data, GLMMData):
            raise TypeError("data must be a GLMMData (see scnotes.glmm.glmm_data)")
        kw = dict(dtype=self.dtype, device=self.device)
        J, G, D = data.n_genes, data.n_groups, data.n_donors
        gi, di, ki, samples = self._blocks(data)
        K = 0 if ki is None else len(samples)
        P = G + D + K
        nb = len(gi)
        A = np.zeros((nb, P))
        A[np.arange(nb), gi] = 1.0
        A[np.arange(nb), G + di] = 1.0
        if K:
            A[np.arange(nb), G + D + ki] = 1.0
        # Orthonormal basis: right singular vectors of A (row space first, then null space).
        _, _, Vt = np.linalg.svd(A, full_matrices=True)
        T = torch.as_tensor(Vt.T.copy(), **kw)
        Ab = torch.as_tensor(A, **kw)

        block_of = {(g, d): b for b, (g, d) in enumerate(zip(gi, di))}
        cblock = torch.as_tensor(np.array([block_of[(g, d)] for g, d in zip(data.group, data.donor)]),
                                 device=self.device)
        y = torch.as_tensor(data.counts.T, **kw)  # (J, N)
        logs = torch.as_tensor(np.log(data.total), **kw)
        expected_nb = _ExpectedNBLogLik(y, logs, cblock, nb, self.n_quad)

        t0 = data.naive_estimates()
        mu_b0 = torch.as_tensor(t0.mean(1, keepdims=True), **kw)
        M0 = np.concatenate([t0, np.zeros((J, D + K))], 1)
        p = {"m": torch.as_tensor(M0 @ Vt.T, **kw),
             "L_off": torch.zeros(J, P, P, **kw),
             "log_diag": torch.full((J, P), math.log(0.1), **kw),
             }
        learn_theta = self.theta is None
        if learn_theta:
            p["log_theta"] = torch.as_tensor(np.log(_moment_theta(data, t0))[:, None], **kw)
        for v in p.values():
            v.requires_grad_(True)
        fixed_log_theta = None if learn_theta else math.log(self.theta) if np.isfinite(self.theta) else None

        def moments():
            L = T @ (torch.tril(p["L_off"], -1) + torch.diag_embed(torch.exp(p["log_diag"])))
            M = p["m"] @ T.T
            return M, L

        def loglik(M, L):
            m = M @ Ab.T  # (J, B) mean and variance of η per block
            AL = torch.einsum("bp,jpq->jbq", Ab, L)
            v = (AL ** 2).sum(2)
            mc, vc = m[:, cblock], v[:, cblock]  # (J, N)
            log_mean = logs + mc
            if not learn_theta and fixed_log_theta is None:
                # θ = ∞: the Poisson GLMM, whose expectation is exact (E e^η = e^{m + v/2})
                return poisson_log_pmf(y, torch.exp(log_mean + 0.5 * vc), log_rate=log_mean).sum(1)
            log_th = p["log_theta"] if learn_theta else torch.full((J, 1), fixed_log_theta, **kw)
            return expected_nb(m, v, log_th)

        def hyper(M, var):
            """The prior hyperparameters that maximise the ELBO at the current q (closed form:
            each prior variance is the mean of E_q[(effect − prior mean)²] over its effects)."""
            mb, vb = M[:, :G], var[:, :G]
            if self.prior_b == "vague":
                mu, tau2 = mu_b0, torch.full((J, 1), self.prior_sd_b ** 2, **kw)
            else:
                mu = mb.mean(1, keepdim=True)
                tau2 = ((mb - mu) ** 2 + vb).mean(1, keepdim=True) if G > 1 else torch.ones(J, 1, **kw)
            su2 = (M[:, G:G + D] ** 2 + var[:, G:G + D]).mean(1, keepdim=True)
            sw2 = (M[:, G + D:] ** 2 + var[:, G + D:]).mean(1, keepdim=True) if K else None
            return mu, tau2.clamp_min(_VAR_FLOOR), su2.clamp_min(_VAR_FLOOR), (
                None if sw2 is None else sw2.clamp_min(_VAR_FLOOR))

        def kl(M, L):
            var = (L ** 2).sum(2)
            mu, tau2, su2, sw2 = hyper(M, var)
            mean = torch.cat([mu.expand(J, G), torch.zeros(J, D + K, **kw)], 1)
            parts = [tau2.expand(J, G), su2.expand(J, D)] + ([sw2.expand(J, K)] if K else [])
            logv = torch.log(torch.cat(parts, 1))
            return (0.5 * ((var + (M - mean) ** 2) * torch.exp(-logv) + logv).sum(1)
                    - p["log_diag"].sum(1) - 0.5 * P)

        N = data.n_cells
        rows = []
        t_start = time.perf_counter()
        if self.optimizer == "lbfgs":
            # The objective is deterministic and smooth: quasi-Newton steps cross the weakly
            # curved directions (σ_w, the posterior variances) far faster than Adam.
            opt = torch.optim.LBFGS(list(p.values()), lr=1.0, max_iter=self.max_epochs, history_size=20,
                                    tolerance_grad=1e-9, tolerance_change=1e-12,
                                    line_search_fn="strong_wolfe")

            def closure():
                opt.zero_grad()
                M, L = moments()
                ll, k = loglik(M, L), kl(M, L)
                loss = -(ll - k).sum() / N
                if not torch.isfinite(loss):
                    raise RuntimeError("NaN/inf loss in the NB GLMM VEB")
                loss.backward()
                lls, kls = float(ll.detach().sum()), float(k.detach().sum())
                rows.append((len(rows), kls - lls, lls - kls, lls, kls))
                return loss

            opt.step(closure)
        else:
            opt = torch.optim.Adam(list(p.values()), lr=self.lr)
            sched = torch.optim.lr_scheduler.ExponentialLR(opt, self.lr_decay ** (1.0 / self.max_epochs))
            steps = range(self.max_epochs)
            if self.progress:
                from tqdm.auto import tqdm

                steps = tqdm(steps, desc="NB GLMM VEB", leave=False)
            for epoch in steps:
                M, L = moments()
                ll, k = loglik(M, L), kl(M, L)
                _descend(-(ll - k).sum() / N, opt, sched)
                lls, kls = float(ll.detach().sum()), float(k.detach().sum())
                rows.append((epoch, kls - lls, lls - kls, lls, kls))
        self.fit_time_ = time.perf_counter() - t_start
        self.history_ = pd.DataFrame(rows, columns=["epoch", "loss", "elbo", "reconstruction", "kl"])
        with torch.no_grad():
            M, L = moments()
            self.elbo_ = (loglik(M, L) - kl(M, L)).cpu().numpy()
            cov = (L @ L.transpose(1, 2)).cpu().numpy()
            M = M.cpu().numpy()
            pn = {k: v.detach().cpu().numpy() for k, v in p.items()}
        self.cov_ = cov
        self.b_mean_, self.u_mean_, self.w_mean_ = M[:, :G], M[:, G:G + D], M[:, G + D:]
        self.b_cov_ = cov[:, :G, :G]
        sd = np.sqrt(np.diagonal(cov, axis1=1, axis2=2))
        self.b_sd_, self.u_sd_, self.w_sd_ = sd[:, :G], sd[:, G:G + D], sd[:, G + D:]
        with torch.no_grad():
            Mt, Lt = moments()
            mu, tau2, su2, sw2 = hyper(Mt, (Lt ** 2).sum(2))
        self.sigma_u_ = np.sqrt(su2.cpu().numpy()[:, 0])
        self.sigma_w_ = np.sqrt(sw2.cpu().numpy()[:, 0]) if K else np.full(J, np.nan)
        self.theta_ = (np.exp(pn["log_theta"][:, 0]) if learn_theta else np.full(J, float(self.theta)))
        self.prior_mean_, self.prior_sd_ = mu.cpu().numpy(), np.sqrt(tau2.cpu().numpy())
        self.samples_ = samples
        self.df_ = self._contrast_df(data, gi, di, ki, samples)
        self.design_ = data.design()
        self.var_names_ = np.asarray(data.genes, dtype=object)
        self.covariate_registry_ = self.design_.registry()
        self.n_epochs_ = self.max_epochs
        return self

    def summary(self, level: float = 0.95, method: str | None = None) -> pd.DataFrame:
        """Tidy DataFrame (:data:`scnotes.glmm.TIDY_COLUMNS` plus ``sigma_w``, ``theta``).

        ``estimate`` = posterior mean, ``sd`` = posterior sd, ``lfsr`` = local false sign
        rate; for contrasts ``p`` is the t test stated in the module notes
        (``df`` = :attr:`df_`) and ``q`` its Benjamini–Hochberg adjustment; ``z`` is NaN
        (there is no Wald statistic in a posterior).
        """
        if getattr(self, "b_mean_", None) is None:
            raise RuntimeError("the model is not fitted (call fit first)")
        se = self.sample_effect
        name = method or f"NB GLMM VEB ({'no sample effect' if se is None else 'sample: donor × ' + se})"
        out = tidy_effects(self.design_, self.b_mean_, cov=self.b_cov_, method=name, sigma_u=self.sigma_u_,
                           level=level, inference="posterior", df=self.df_)
        idx = pd.Index(self.design_.genes)
        out["sigma_w"] = self.sigma_w_[idx.get_indexer(out["gene"])]
        out["theta"] = self.theta_[idx.get_indexer(out["gene"])]
        return out


class _ExpectedSoftplus(torch.autograd.Function):
    """E softplus(z_m + sd ε), ε ~ N(0, 1), by Gauss–Hermite nodes ``x`` and weights ``w`` (any
    shape of ``z_m`` = shape of ``sd``). The gradients in z_m and sd, Σ w σ(z) and Σ w x σ(z)
    (σ = softplus'), are computed in the forward pass, so the backward pass multiplies two
    tensors of z_m's shape instead of going back through the nodes (measured: about a third
    of an NB GLMM VEB step on one thread)."""

    @staticmethod
    def forward(ctx, z_m, sd, x, w):
        z = z_m[..., None] + sd[..., None] * x
        sig = torch.sigmoid(z)
        ctx.save_for_backward(sig @ w, sig @ (w * x))
        return F.softplus(z) @ w

    @staticmethod
    def backward(ctx, grad):
        d_m, d_sd = ctx.saved_tensors
        return grad * d_m, grad * d_sd, None, None


class _ExpectedNBLogLik:
    """Σ_i E_q ln NB(y_ij; s_i e^η, θ_j) per gene j, η ~ N(m_jb, v_jb) for the cells i of block b.

    ln NB(y; μ, θ) = A(y, θ) + y ln μ − ln y! − (θ + y) softplus(ln μ − ln θ), with
    A(y, θ) = lnΓ(y + θ) − lnΓ(θ) − y ln θ (:mod:`scnotes.likelihoods`' stable form, zero at
    y = 0). With ln μ = ln s + η only the softplus term is not linear in η, so

        Σ_i E ln NB = Σ_{y>0} A(y, θ) + Σ_b Y_b m_b + Σ_i (y ln s − ln y!) − Σ_i (θ + y_i) E softplus(z_i),

    z_i = ln s_i + η − ln θ, Y_b the counts summed over block b: the terms linear in η use
    block sums computed once, A runs on the non-zero counts only, and one Gauss–Hermite
    quadrature of the softplus (``n_quad`` nodes) per cell is the only cells × nodes work.
    Equal to summing :func:`scnotes.likelihoods.nb_log_pmf` at every draw (tested).

    Shapes: ``y`` (J, N) counts, ``logs`` (N,) log totals, ``cblock`` (N,) block of each cell
    (long), ``m``, ``v`` (J, B), ``log_theta`` (J, 1); returns (J,) nats.
    """

    def __init__(self, y, logs, cblock, n_blocks, n_quad):
        J = y.shape[0]
        self.y, self.logs, self.cblock = y, logs, cblock
        self.Yb = torch.zeros(J, n_blocks, dtype=y.dtype, device=y.device).index_add_(1, cblock, y)
        self.const = (y * logs).sum(1) - torch.lgamma(y + 1).sum(1)
        self.g_nz, i_nz = torch.nonzero(y > 0, as_tuple=True)
        self.y_nz = y[self.g_nz, i_nz]
        xq, wq = np.polynomial.hermite.hermgauss(int(n_quad))
        self.xq = torch.as_tensor(xq * math.sqrt(2.0), dtype=y.dtype, device=y.device)
        self.wq = torch.as_tensor(wq / math.sqrt(math.pi), dtype=y.dtype, device=y.device)

    def __call__(self, m, v, log_theta):
        th = torch.exp(log_theta)
        z_m = self.logs + (m - log_theta)[:, self.cblock]  # (J, N)
        soft = _ExpectedSoftplus.apply(z_m, torch.sqrt(v)[:, self.cblock], self.xq, self.wq)  # (J, N)
        weighted = th[:, 0] * soft.sum(1) + (self.y * soft).sum(1)
        a = _log_gamma_ratio64_dense(self.y_nz.double(), th[self.g_nz, 0].double()).to(m.dtype)
        a_sum = torch.zeros(m.shape[0], dtype=m.dtype, device=m.device).index_add(0, self.g_nz, a)
        return self.const + (self.Yb * m).sum(1) + a_sum - weighted


def _moment_theta(data: GLMMData, t0):
    """Method-of-moments θ per gene from the naive means (a starting value, clipped to [0.05, 1e4])."""
    mu = data.total[:, None] * np.exp(t0[:, data.group].T)  # (N, J)
    excess = ((data.counts - mu) ** 2 - mu).sum(0)
    th = (mu ** 2).sum(0) / np.maximum(excess, 1e-8)
    return np.clip(th, 0.05, 1e4)


def fit_nb_veb(data: GLMMData, **kwargs) -> NBGLMMVEB:
    """``NBGLMMVEB(**kwargs).fit(data)``."""
    return NBGLMMVEB(**kwargs).fit(data)


def fit_genes_nb(data: GLMMData, level: float = 0.95, return_model: bool = False, **kwargs):
    """Batched NB GLMM VEB over every gene of ``data``: the tidy table (and the model with
    ``return_model=True``). ``kwargs`` go to :class:`NBGLMMVEB`."""
    m = NBGLMMVEB(**kwargs).fit(data)
    df = m.summary(level=level)
    return (df, m) if return_model else df


def simulate_nb_glmm(n_donors: int = 4, n_cells: int = 150, n_genes: int = 200, n_cell_types: int = 1,
                     sigma_u: float = 0.3, sigma_w: float = 0.15, theta: float = 2.0,
                     mean_range=(0.1, 5.0), log_fold_change=None, paired: bool = True,
                     total_mean: float = 2000.0, seed: int = 0):
    """Counts from the NB GLMM with donor and sample (donor × condition) effects, as AnnData.

    Each donor contributes ``n_cells`` cells of each cell type to each condition
    (``ctrl``, ``stim``) when ``paired``; otherwise donors are split in half between
    the conditions (2 ``n_cells`` cells each). Per gene j, cell type c::

        ln λ = b_{jc} + δ_{jc} [stim] + u_jd + w_{jdk},   u ~ N(0, σ_u²), w ~ N(0, σ_w²),
        y ~ NB(s_i λ, θ),  s_i ~ total_mean · LogNormal(0, 0.3²)

    with b chosen so that the mean count per cell is log-uniform on ``mean_range``.
    The sample effect w is drawn per donor × condition × cell type (the pseudobulk unit).

    Parameters
    ----------
    log_fold_change : array (n_genes,) or (n_genes, n_cell_types), optional
        True δ (natural log); default 0 (the null).
    theta : float
        NB inverse dispersion (``np.inf``: Poisson).
    seed : int
        Seeds a ``numpy.random.default_rng`` (global state untouched).

    Returns
    -------
    AnnData, cells × genes integer counts in ``X`` (CSR) and ``layers["counts"]``;
    ``obs``: donor, condition, cell_type, sample_id, total_counts; ``var``: per cell
    type ``lfc_<cell type>`` (true δ) and ``base_mean``; ``uns["simulation"]``: the parameters.

    Raises
    ------
    ValueError : fewer than 2 donors (4 when not paired), non-positive sizes or sds < 0.
    """
    import anndata as ad
    from scipy import sparse

    if n_donors < (2 if paired else 4) or n_cells < 1 or n_genes < 1 or n_cell_types < 1:
        raise ValueError("need n_donors >= 2 (>= 4 unpaired), n_cells, n_genes, n_cell_types >= 1")
    if sigma_u < 0 or sigma_w < 0 or not theta > 0:
        raise ValueError("sigma_u, sigma_w must be >= 0 and theta > 0")
    rng = np.random.default_rng(seed)
    J, C = int(n_genes), int(n_cell_types)
    lfc = np.zeros((J, C)) if log_fold_change is None else np.broadcast_to(
        np.asarray(log_fold_change, float).reshape(J, -1), (J, C)).copy()
    base = np.exp(rng.uniform(np.log(mean_range[0]), np.log(mean_range[1]), size=(J, C)))
    b = np.log(base / total_mean)
    u = rng.normal(0, sigma_u, size=(J, n_donors))
    donors = [f"d{k}" for k in range(n_donors)]
    if paired:
        plan = [(d, k) for d in range(n_donors) for k in (0, 1)]
        per = int(n_cells)
    else:
        plan = [(d, int(d >= n_donors // 2)) for d in range(n_donors)]
        per = 2 * int(n_cells)
    obs_rows, blocks = [], []
    for d, k in plan:
        for c in range(C):
            w = rng.normal(0, sigma_w, size=J)
            s = total_mean * np.exp(rng.normal(0, 0.3, size=per))
            eta = b[:, c] + lfc[:, c] * k + u[:, d] + w
            mu = s[:, None] * np.exp(eta)[None, :]
            if np.isfinite(theta):
                y = rng.poisson(rng.gamma(theta, mu / theta))
            else:
                y = rng.poisson(mu)
            blocks.append(y)
            cond = ("ctrl", "stim")[k]
            obs_rows += [(donors[d], cond, f"type{c}", f"{cond}_{donors[d]}", float(si)) for si in s]
    x = sparse.csr_matrix(np.vstack(blocks).astype(np.float32))
    obs = pd.DataFrame(obs_rows, columns=["donor", "condition", "cell_type", "sample_id", "total_counts"])
    for col in ("donor", "condition", "cell_type", "sample_id"):
        obs[col] = pd.Categorical(obs[col])
    obs.index = [f"cell{i}" for i in range(len(obs))]
    var = pd.DataFrame(index=[f"gene{j}" for j in range(J)])
    for c in range(C):
        var[f"lfc_type{c}"] = lfc[:, c]
    var["base_mean"] = base.mean(1)
    a = ad.AnnData(x, obs=obs, var=var)
    a.layers["counts"] = x.copy()
    a.uns["simulation"] = dict(n_donors=n_donors, n_cells=n_cells, sigma_u=sigma_u, sigma_w=sigma_w,
                               theta=float(theta), paired=paired, seed=seed)
    return a
