"""Variational empirical Bayes (VEB) for the Poisson GLMM, one gene or many at once.

Model, per gene ``j`` (seed; Svensson 2020)::

    y_ij ~ Poisson(s_i exp(b_{j,g(i)} + u_{j,d(i)})),
    b_jg ~ N(μ_j, τ_j²)  (prior="shared")   or  N(μ_jg, τ_jg²)  (prior="per_group", the seed's),
    u_jd ~ N(0, σ_uj²).

Variational family over θ = (b, u) ∈ R^{G+D} per gene (Wang et al. 2020 VEB;
Beal 2003 VBEM): ``guide="factorised"`` (the seed's q(b)q(u), diagonal),
``"full"`` (one multivariate normal, Cholesky factor) or ``"lowrank"``
(``WW' + diag(d)``). Prior hyperparameters (μ, τ, σ_u) are maximised
jointly with q.

ELBO = E_q[ln p(y | θ)] − KL(q(θ) ‖ p(θ)), the KL analytic (Gaussian to a
diagonal Gaussian), the expectation by Monte Carlo with the
reparameterisation trick (Kingma & Welling 2014; ``expectation="mc"``) or in
closed form (``"analytic"``: under a Gaussian q, η = b_g + u_d is Gaussian and
``E[exp η] = exp(m + v/2)``, so the expected Poisson log-likelihood is exact).

Minibatches (``batch_size``) sample B of the N cells; the likelihood sum is
rescaled by N/B and the KL counted once, so the minibatch objective is an
unbiased estimate of the full ELBO. The seed subtracted the whole KL once per
cell of each minibatch without rescaling, i.e. weighted the KL N times too much
relative to the likelihood (``seed_objective=True`` reproduces that).
Full-batch training (``batch_size=None``) uses the per (group, donor) sufficient
statistics, exact and independent of the number of cells.

A note on the seed's per-group prior: maximising the ELBO over μ_jg and τ_jg
sets the prior equal to q(b_jg), which removes the KL on b and then lets
q(b_jg) shrink towards a point mass (the expected log-likelihood falls with
the variance). Its posterior sd is therefore meaningless; the default
``prior="shared"`` (one μ_j, τ_j per gene, shrinking groups towards each other)
keeps the posterior proper.
"""
from __future__ import annotations

import math
import time
import warnings

import numpy as np
import pandas as pd
import torch
from scipy.special import gammaln

from .._settings import resolve_progress
from ..likelihoods import poisson_log_pmf
from ._common import descend as _descend, helmert as _helmert
from ._design import GLMMData, GLMMDesign
from ._tidy import tidy_effects
from .._persist import Persistent

__all__ = ["PoissonGLMMVEB", "fit_veb"]

_GUIDES = ("factorised", "full", "lowrank")
_PRIORS = ("shared", "per_group")


class PoissonGLMMVEB(Persistent):
    """Variational empirical Bayes fit of the Poisson GLMM for every gene of a :class:`GLMMData`.

    Genes are an extra (leading) tensor dimension sharing the design, so one
    fit handles one gene or a whole panel; genes do not interact.

    Parameters
    ----------
    guide : {"factorised", "full", "lowrank"}
        Variational family over (b, u) per gene.
    rank : int
        Rank of ``W`` for ``guide="lowrank"``.
    prior : {"shared", "per_group"}
        Empirical-Bayes prior on b: one N(μ_j, τ_j²) per gene, or the seed's
        N(μ_jg, τ_jg²) per cell group (degenerate, see module notes).
    expectation : {"mc", "analytic"}
        Monte Carlo (``n_samples`` draws per step) or exact expected log-likelihood.
    n_samples : int
        Monte Carlo draws per step.
    batch_size : int or None
        Cells per minibatch (per-cell likelihood, rescaled by N/B); ``None`` =
        full batch on the sufficient statistics.
    max_epochs : int or "auto"
        Passes over the data; a full-batch epoch is one gradient step.
        ``"auto"`` (the default): 1500 full-batch steps, or with minibatches
        enough epochs for at least ``min_steps`` optimiser steps (so a small
        file is not left untrained). ``n_epochs`` is the older name (alias).
    min_steps : int
        Minimum number of optimiser steps of ``max_epochs="auto"`` with minibatches.
    shift_basis : bool
        Full guide only: optimise in a basis that separates the common b/u shift
        (same family and optimum, far fewer steps; see :meth:`_set_basis`).
        ``False`` optimises the Cholesky factor over (b, u) directly, as before.
    lr : float
        Adam learning rate, decayed exponentially to ``lr * lr_decay`` at the end
        (the decay removes most of the stochastic jitter of the final iterate).
    seed_objective : bool
        Reproduce the seed's objective (KL subtracted once per minibatch cell,
        no N/B rescaling) — for demonstrating its defect only.
    progress : bool
        Progress bar over epochs (tqdm); None: ``scnotes.settings.progress`` (on only in an
        interactive session).
    seed : int
        Seeds a ``torch.Generator`` for every draw (minibatches, Monte Carlo
        samples, the low-rank initialisation); torch's and numpy's global RNGs
        are never touched, and the same seed and data give the same fit.
    device : str
    dtype : torch dtype (float64 by default: totals up to 1e5 and rates near 1e-5).

    Attributes (after fit)
    ----------------------
    history_ : DataFrame, one row per epoch (``epoch`` from 0): ``epoch``, ``loss`` (the
        negative ELBO, what is minimised), ``elbo``, ``reconstruction`` (E_q ln p(y | b, u)),
        ``kl`` (KL(q(b, u) ‖ p(b, u)), the one KL term: over the joint posterior of every
        random effect, which the full and low-rank guides do not split by variable, so it has
        no variable's suffix as the VAEs' ``kl_z``), all in nats summed over genes at
        full-data scale (for minibatches: the epoch's average of the unbiased minibatch
        estimates); ``elbo = reconstruction − kl``
    n_epochs_ : int                 epochs run (``len(history_)``)
    elbo_history_ : ndarray (n_epochs, n_genes)  the ELBO per gene, whose rows sum to
        ``history_["elbo"]`` (the older record; deprecated, it goes in the next release)
    var_names_ : ndarray of str   the genes fitted
    design_ : GLMMDesign          genes, groups, donors, obs keys
    covariate_registry_ : list    ``[(obs key, [categories…]), …]`` (donor, groups)
    fit_time_ : float             seconds
    b_mean_, b_sd_ : ndarray (n_genes, n_groups)     q(b) mean and sd (log scale)
    b_cov_ : ndarray (n_genes, n_groups, n_groups)    q(b) covariance
    u_mean_, u_sd_ : ndarray (n_genes, n_donors)
    cov_ : ndarray (n_genes, G+D, G+D)                full q covariance of (b, u)
    sigma_u_ : ndarray (n_genes,)                     EB estimate of σ_u
    prior_mean_, prior_sd_ : ndarray (n_genes, 1 or n_groups)   EB μ and τ
    """

    def __init__(self, guide: str = "factorised", rank: int = 2, prior: str = "shared",
                 expectation: str = "mc", n_samples: int = 1, batch_size: int | None = None,
                 max_epochs: int | str = "auto", lr: float = 0.05, lr_decay: float = 0.01,
                 seed_objective: bool = False, seed: int = 0, device: str = "cpu",
                 dtype=torch.float64, progress: bool | None = None, min_steps: int = 750,
                 shift_basis: bool = True, n_epochs: int | None = None):
        if guide not in _GUIDES:
            raise ValueError(f"guide must be one of {_GUIDES}, got {guide!r}")
        if prior not in _PRIORS:
            raise ValueError(f"prior must be one of {_PRIORS}, got {prior!r}")
        if expectation not in ("mc", "analytic"):
            raise ValueError(f"expectation must be 'mc' or 'analytic', got {expectation!r}")
        if batch_size is not None and int(batch_size) < 1:
            raise ValueError(f"batch_size must be a positive integer or None, got {batch_size}")
        if n_samples < 1 or rank < 1:
            raise ValueError("n_samples and rank must be >= 1")
        if seed_objective and batch_size is None:
            raise ValueError("seed_objective reproduces a minibatch defect; give batch_size")
        self.guide, self.rank, self.prior, self.expectation = guide, int(rank), prior, expectation
        self.n_samples, self.batch_size, self.lr, self.lr_decay = int(n_samples), batch_size, lr, lr_decay
        if n_epochs is not None:  # the older name
            max_epochs = n_epochs
        if not (max_epochs == "auto" or (isinstance(max_epochs, (int, np.integer)) and max_epochs >= 1)):
            raise ValueError(f"max_epochs must be a positive integer or 'auto', got {max_epochs!r}")
        if int(min_steps) < 1:
            raise ValueError(f"min_steps must be >= 1, got {min_steps!r}")
        self.max_epochs, self.min_steps, self.progress = max_epochs, int(min_steps), progress
        self.shift_basis = bool(shift_basis)
        self.seed_objective, self.seed, self.device, self.dtype = seed_objective, seed, device, dtype
        self.history_ = None

    @property
    def data_(self):
        """The :class:`GLMMData` of the last fit (None after :meth:`load`)."""
        return getattr(self, "_data", None)

    @property
    def n_epochs(self):
        """Older name of :attr:`max_epochs`."""
        return self.max_epochs

    def _epochs(self, n_cells):
        """Epochs to run: ``max_epochs``, or for ``"auto"`` 1500 full-batch steps or
        ⌈min_steps / steps per epoch⌉ minibatch epochs."""
        if self.max_epochs != "auto":
            return int(self.max_epochs)
        if self.batch_size is None:
            return 1500
        return int(math.ceil(self.min_steps / math.ceil(n_cells / min(int(self.batch_size), n_cells))))

    def get_params(self) -> dict:
        """Constructor arguments (scikit-learn style), used by :meth:`save` and ``repr``."""
        return dict(self._init_kwargs(), device=self.device)

    def _init_kwargs(self):
        return dict(guide=self.guide, rank=self.rank, prior=self.prior, expectation=self.expectation,
                    n_samples=self.n_samples, batch_size=self.batch_size, max_epochs=self.max_epochs,
                    lr=self.lr, lr_decay=self.lr_decay, seed_objective=self.seed_objective, seed=self.seed,
                    dtype=self.dtype, progress=self.progress, min_steps=self.min_steps,
                    shift_basis=self.shift_basis)

    # ---------------------------------------------------------------- parameters
    def _init_params(self, data: GLMMData):
        J, G, D = data.n_genes, data.n_groups, data.n_donors
        P = G + D
        t = torch.as_tensor(data.naive_estimates(), dtype=self.dtype, device=self.device)
        kw = dict(dtype=self.dtype, device=self.device)
        # full guide in the shift basis: φ = (β, w, a), b = β − a, u = a + H w, so the
        # starting point φ = (t, 0, 0) is θ = (t, 0) as in the other guides.
        p = {"m": torch.cat([t, torch.zeros(J, D, **kw)], 1)}
        self._set_basis(G, D)
        if self.guide == "factorised":
            p["log_sd"] = torch.full((J, P), math.log(0.1), **kw)
        elif self.guide == "full":
            p["L_off"] = torch.zeros(J, P, P, **kw)
            p["log_diag"] = torch.full((J, P), math.log(0.1), **kw)
        else:
            g = torch.Generator().manual_seed(self.seed)
            p["W"] = (1e-2 * torch.randn(J, P, self.rank, generator=g, dtype=self.dtype)).to(self.device)
            p["log_d"] = torch.full((J, P), math.log(0.1), **kw)
        if self.prior == "shared":
            p["mu"] = t.mean(1, keepdim=True).clone()
            p["log_tau"] = torch.log(t.std(1, keepdim=True) + 0.1) if G > 1 else torch.zeros(J, 1, **kw)
        else:
            p["mu"] = t.clone()
            p["log_tau"] = torch.zeros(J, G, **kw)
        p["log_su"] = torch.full((J, 1), math.log(0.5), **kw)
        for v in p.values():
            v.requires_grad_(True)
        self._p = p
        self._G, self._D = G, D

    def _set_basis(self, G, D):
        """The linear map θ = T φ of the full guide (identity unless ``shift_basis``).

        With one-hot X and Z a common shift (b + c, u − c) leaves the likelihood
        unchanged, so in θ = (b, u) the posterior is a long thin ridge that Adam
        crosses slowly (1,500 steps left ISG15's sds at about 0.86 of their optimum).
        φ = (β, w, a) with b = β − a 1, u = a 1 + H w (H an orthonormal basis of
        zero-sum vectors, as in :func:`scnotes.glmm.fit_nuts`) separates what the
        data pin (β, w) from the shift a, which only the priors pin. A full-rank
        Gaussian on φ is a full-rank Gaussian on θ: the family, and so the optimum,
        is the same; only the path to it is shorter.
        """

        P = G + D
        kw = dict(dtype=self.dtype, device=self.device)
        if self.guide != "full" or not self.shift_basis:
            self._T, self._logdetT = None, 0.0
            return
        T = np.zeros((P, P))
        T[:G, :G] = np.eye(G)
        T[G:, G:G + D - 1] = _helmert(D)
        T[:G, P - 1] = -1.0
        T[G:, P - 1] = 1.0
        self._T = torch.as_tensor(T, **kw)
        self._logdetT = float(np.linalg.slogdet(T)[1])

    def _mean(self):
        """Mean of q over θ = (b, u), (J, P)."""
        m = self._p["m"]
        return m if self._T is None else m @ self._T.T

    def _cov(self):
        """Full covariance (J, P, P) of q, and 0.5 ln|Σ| (J,)."""
        p = self._p
        if self.guide == "factorised":
            return torch.diag_embed(torch.exp(2 * p["log_sd"])), p["log_sd"].sum(1)
        if self.guide == "full":
            L = self._chol()
            return L @ L.transpose(1, 2), self._half_logdet()
        S = p["W"] @ p["W"].transpose(1, 2) + torch.diag_embed(torch.exp(p["log_d"]))
        return S, torch.linalg.cholesky(S).diagonal(dim1=1, dim2=2).log().sum(1)

    def _chol(self):
        """A square root L of Σ over θ (Σ = L L'); lower triangular unless ``shift_basis``."""
        p = self._p
        L = torch.tril(p["L_off"], -1) + torch.diag_embed(torch.exp(p["log_diag"]))
        return L if self._T is None else self._T @ L

    def _var(self):
        """Marginal variances (J, P) without forming Σ where not needed."""
        p = self._p
        if self.guide == "factorised":
            return torch.exp(2 * p["log_sd"])
        if self.guide == "full":
            return (self._chol() ** 2).sum(2)
        return (p["W"] ** 2).sum(2) + torch.exp(p["log_d"])

    def _sample(self, n, gen):
        """Reparameterised draws of θ = (b, u), shape (n, J, P)."""
        p = self._p
        J, P = p["m"].shape
        eps = torch.randn(n, J, P, generator=gen, dtype=self.dtype).to(self.device)
        if self.guide == "factorised":
            return p["m"] + torch.exp(p["log_sd"]) * eps
        if self.guide == "full":
            return self._mean() + torch.einsum("jpq,njq->njp", self._chol(), eps)
        e2 = torch.randn(n, J, self.rank, generator=gen, dtype=self.dtype).to(self.device)
        return p["m"] + torch.einsum("jpr,njr->njp", p["W"], e2) + torch.exp(0.5 * p["log_d"]) * eps

    def _kl(self):
        """KL(q(θ) ‖ p(θ)) per gene, nats (J,). Prior: diagonal Gaussian."""
        p = self._p
        J, P = p["m"].shape
        G = self._G
        mu = torch.cat([p["mu"].expand(J, G), torch.zeros(J, self._D, dtype=self.dtype, device=self.device)], 1)
        logv = torch.cat([2 * p["log_tau"].expand(J, G), 2 * p["log_su"].expand(J, self._D)], 1)
        var = self._var()
        _, half_logdet = self._cov() if self.guide == "lowrank" else (None, self._half_logdet())
        return 0.5 * (((var + (self._mean() - mu) ** 2) * torch.exp(-logv)) + logv).sum(1) - half_logdet - 0.5 * P

    def _half_logdet(self):
        p = self._p
        return p["log_sd"].sum(1) if self.guide == "factorised" else p["log_diag"].sum(1) + self._logdetT

    def _eta_moments(self, g, d):
        """Mean and variance of η = b_g + u_d under q for index vectors g, d (each (K,)): (J, K)."""
        G = self._G
        mean = self._mean()
        m = mean[:, g] + mean[:, G + d]
        if self.guide == "factorised":
            var = self._var()
            v = var[:, g] + var[:, G + d]
        else:
            if self.guide == "full":
                L = self._chol()
                rows = L[:, g, :] + L[:, G + d, :]  # (J, K, P): η = (e_g + e_{G+d})' θ
                v = (rows ** 2).sum(2)
            else:
                W = self._p["W"]
                dd = torch.exp(self._p["log_d"])
                v = ((W[:, g, :] + W[:, G + d, :]) ** 2).sum(2) + dd[:, g] + dd[:, G + d]
        return m, v

    # ---------------------------------------------------------------- objectives
    # Both likelihoods go through scnotes.likelihoods.poisson_log_pmf. Under a Gaussian
    # q, η ~ N(m, v) and E[x ln(s e^η) − s e^η − ln x!] = x (ln s + m) − s e^{m + v/2} − ln x!,
    # which is poisson_log_pmf at log_rate = ln s + m and rate = s e^{m + v/2}: the
    # analytic expectation is exact, not a plug-in.
    def _loglik_full(self, st, gen, n_samples, expectation):
        """E_q ln p(y | θ) from the sufficient statistics, (J,) nats.

        The per (group, donor) sums are Poisson, Y_gd ~ Poisson(S_gd e^{η_gd}); their
        log-pmf differs from the per-cell one by the constant ``st["offset"]``.
        """
        G = self._G
        g, d, Y, logS = st["g"], st["d"], st["Yk"], st["logS"]
        if expectation == "analytic":
            m, v = self._eta_moments(g, d)
            ll = poisson_log_pmf(Y, torch.exp(logS + m + 0.5 * v), log_rate=logS + m)
            return ll.sum(1) + st["offset"]
        th = self._sample(n_samples, gen)
        lr = logS + th[:, :, g] + th[:, :, G + d]  # (n, J, K)
        return poisson_log_pmf(Y, torch.exp(lr), log_rate=lr).sum(2).mean(0) + st["offset"]

    def _loglik_cells(self, y, logs, g, d, n_samples, gen, expectation):
        """Σ over the given cells of E_q ln p(y_i | θ), (J,) nats (not rescaled)."""
        G = self._G
        yt = y.T  # (J, B)
        if expectation == "analytic":
            m, v = self._eta_moments(g, d)
            return poisson_log_pmf(yt, torch.exp(logs + m + 0.5 * v), log_rate=logs + m).sum(1)
        th = self._sample(n_samples, gen)
        lr = logs + th[:, :, g] + th[:, :, G + d]  # (n, J, B)
        return poisson_log_pmf(yt, torch.exp(lr), log_rate=lr).sum(2).mean(0)

    def _full_tensors(self, data: GLMMData):
        """Sufficient-statistic tensors, cached per data object (repeated ELBO calls stay cheap)."""
        cache = getattr(self, "_tcache", None)
        if cache is None or cache[0] is not data:
            kw = dict(dtype=self.dtype, device=self.device)
            st = data.stats()
            gi, di = np.nonzero(st.n)
            Yk = st.Y[:, gi, di]  # (J, K) over the non-empty (group, donor) cells
            logS = np.log(st.S[gi, di])
            # per-cell constant Σ_i [y ln s − ln y!] minus the sums' Σ_gd [Y ln S − ln Y!]
            offset = st.const - (Yk * logS - gammaln(Yk + 1)).sum(1)
            self._tcache = (data, {"g": torch.as_tensor(gi, device=self.device),
                                   "d": torch.as_tensor(di, device=self.device),
                                   "Yk": torch.as_tensor(Yk, **kw), "logS": torch.as_tensor(logS, **kw),
                                   "offset": torch.as_tensor(offset, **kw)})
        return self._tcache[1]

    def _tensors(self, data: GLMMData):
        kw = dict(dtype=self.dtype, device=self.device)
        full = self._full_tensors(data)
        cells = None
        if self.batch_size is not None:
            cells = (torch.as_tensor(data.counts, **kw), torch.as_tensor(np.log(data.total), **kw),
                     torch.as_tensor(data.group, device=self.device),
                     torch.as_tensor(data.donor, device=self.device))
        return full, cells

    def elbo(self, data: GLMMData | None = None, cells=None, n_samples: int | None = None,
             expectation: str | None = None, generator=None):
        """ELBO per gene (n_genes,) in nats at the current q and prior.

        ``cells=None``: the full-data ELBO (sufficient statistics). With an
        index array ``cells`` (B,), the minibatch estimate
        ``(N/B) Σ_{i∈cells} E_q ln p(y_i|θ) − KL``, unbiased for the full ELBO when
        the cells are a uniform random subset (with or without replacement).
        Requires a fitted (or initialised, see :meth:`init`) model.
        """
        if data is None:
            data = getattr(self, "_data", None)
            if data is None:
                raise ValueError("pass data: a loaded model does not keep the data it was fitted on")
        elif not isinstance(data, GLMMData):
            raise TypeError("data must be a GLMMData (see scnotes.glmm.glmm_data)")
        if getattr(self, "_p", None) is None:
            raise RuntimeError("the model is not fitted (call fit or init first)")
        self.design_.check(data)
        expectation = expectation or self.expectation
        n_samples = n_samples or self.n_samples
        gen = generator or torch.Generator().manual_seed(self.seed)
        with torch.no_grad():
            if cells is None:
                full = self._full_tensors(data)
                ll = self._loglik_full(full, gen, n_samples, expectation)
            else:
                idx = np.asarray(cells)
                kw = dict(dtype=self.dtype, device=self.device)
                y = torch.as_tensor(data.counts[idx], **kw)
                logs = torch.as_tensor(np.log(data.total[idx]), **kw)
                g = torch.as_tensor(data.group[idx], device=self.device)
                d = torch.as_tensor(data.donor[idx], device=self.device)
                ll = data.n_cells / len(idx) * self._loglik_cells(y, logs, g, d, n_samples, gen, expectation)
            return (ll - self._kl()).cpu().numpy()

    def init(self, data: GLMMData):
        """Initialise q and the prior from the naive estimates without fitting (returns self)."""
        if not isinstance(data, GLMMData):
            raise TypeError("data must be a GLMMData (see scnotes.glmm.glmm_data)")
        self._data = data
        self.design_ = data.design()
        self.var_names_ = np.asarray(data.genes, dtype=object)
        self.covariate_registry_ = self.design_.registry()
        self._init_params(data)
        self._store()
        return self

    def fit(self, data: GLMMData):
        """Fit q(b, u), μ, τ and σ_u for every gene of ``data``; returns self.

        Raises
        ------
        TypeError
            ``data`` is not a :class:`GLMMData`.
        RuntimeError
            The loss became NaN (lower ``lr``).
        """
        self.init(data)
        # Every draw below comes from this generator; torch's global RNG is not used.
        gen = torch.Generator().manual_seed(self.seed)
        full, cells = self._tensors(data)
        params = list(self._p.values())
        opt = torch.optim.Adam(params, lr=self.lr)
        N = data.n_cells
        B = min(int(self.batch_size), N) if self.batch_size else None
        steps_per_epoch = math.ceil(N / B) if B else 1
        n_epochs = self._epochs(N)
        total = n_epochs * steps_per_epoch
        gamma = self.lr_decay ** (1.0 / max(total, 1))
        sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma)
        rows, per_gene = [], []
        epochs = range(n_epochs)
        if resolve_progress(self.progress):
            from tqdm.auto import tqdm

            epochs = tqdm(epochs, desc=f"VEB ({self.guide})", leave=False)
        t0 = time.perf_counter()
        for epoch in epochs:
            acc_ll = acc_kl = 0.0
            if B:
                perm = torch.randperm(N, generator=gen).to(self.device)
                for k in range(steps_per_epoch):
                    idx = perm[k * B:(k + 1) * B]
                    y, logs = cells[0][idx], cells[1][idx]
                    ll = self._loglik_cells(y, logs, cells[2][idx], cells[3][idx], self.n_samples, gen,
                                            self.expectation)
                    kl = self._kl()
                    est_ll = (N / len(idx)) * ll
                    if self.seed_objective:
                        # the seed: per-cell likelihood minus the whole KL for every cell in the batch
                        obj = ll - len(idx) * kl
                    else:
                        obj = est_ll - kl
                    _descend(-obj.sum() / N, opt, sched)
                    acc_ll = acc_ll + est_ll.detach() / steps_per_epoch
                    acc_kl = acc_kl + kl.detach() / steps_per_epoch
            else:
                ll = self._loglik_full(full, gen, self.n_samples, self.expectation)
                kl = self._kl()
                _descend(-(ll - kl).sum() / N, opt, sched)
                acc_ll, acc_kl = ll.detach(), kl.detach()
            ll_np, kl_np = acc_ll.cpu().numpy(), acc_kl.cpu().numpy()
            per_gene.append(ll_np - kl_np)
            rows.append((epoch, float(kl_np.sum() - ll_np.sum()), float(ll_np.sum() - kl_np.sum()),
                         float(ll_np.sum()), float(kl_np.sum())))
        self.fit_time_ = time.perf_counter() - t0
        self.history_ = pd.DataFrame(rows, columns=["epoch", "loss", "elbo", "reconstruction", "kl"])
        self._elbo_by_gene = np.array(per_gene)
        self.n_epochs_ = len(self.history_)
        self._store()
        return self

    @property
    def elbo_history_(self):
        """The ELBO per gene and epoch, ndarray (n_epochs, n_genes), nats; rows sum to
        ``history_["elbo"]``. The older record, deprecated (it goes in the next release)."""
        # stacklevel=1: attributed to scnotes, not to a chapter's __main__, so the warning never
        # lands on an executed page (the pattern of scnotes.tl._front._caller_stacklevel).
        warnings.warn("`elbo_history_` is the older record; read history_ (its rows sum to history_['elbo'])",
                      DeprecationWarning, stacklevel=1)
        return getattr(self, "_elbo_by_gene", None)

    def _store(self):
        G = self._G
        with torch.no_grad():
            cov = self._cov()[0].cpu().numpy()
            mean = self._mean().detach().cpu().numpy()
            p = {k: v.detach().cpu().numpy() for k, v in self._p.items()}
        self.cov_ = cov
        self.b_mean_ = mean[:, :G]
        self.u_mean_ = mean[:, G:]
        self.b_cov_ = cov[:, :G, :G]
        sd = np.sqrt(np.diagonal(cov, axis1=1, axis2=2))
        self.b_sd_, self.u_sd_ = sd[:, :G], sd[:, G:]
        self.sigma_u_ = np.exp(p["log_su"][:, 0])
        self.prior_mean_ = p["mu"]
        self.prior_sd_ = np.exp(p["log_tau"])

    def summary(self, level: float = 0.95, method: str | None = None):
        """Tidy DataFrame (see :func:`scnotes.glmm.tidy_effects`) of b and condition contrasts.

        Contrast intervals use the full q covariance of b (zero off-diagonal
        for the factorised guide). ``estimate``/``sd`` are the posterior mean and sd,
        ``lfsr`` the local false sign rate; ``z``/``p`` are kept in their older form
        (posterior mean / sd against a normal, i.e. 2 lfsr) for the GLMM chapter: they
        are not a frequentist test, and on overdispersed counts they are far from
        uniform under the null (see :class:`scnotes.glmm.NBGLMMVEB` for a calibrated one).
        """
        name = method or f"VEB ({self.guide})"
        return tidy_effects(self.design_, self.b_mean_, cov=self.b_cov_, method=name,
                            sigma_u=self.sigma_u_, level=level,
                            inference="posterior", legacy_wald=True)

    # ---------------------------------------------------------------- persistence
    def save(self, path):
        """Write the fitted model to ``path`` (the one scnotes format, see :mod:`scnotes._persist`):
        ``get_params()``, the variational and prior parameters, the training record, the genes
        (``var_names_``), cell groups, donors and their ``obs`` keys (``covariate_registry_``).
        The data are not saved."""
        from .._persist import save_model

        if getattr(self, "_p", None) is None:
            raise RuntimeError("nothing to save: the model is not fitted")
        save_model(self, path)

    def _get_state(self):
        return dict(params={k: v.detach().cpu() for k, v in self._p.items()}, design=self.design_.to_dict(),
                    history=self.history_, elbo_history=getattr(self, "_elbo_by_gene", None),
                    n_epochs=getattr(self, "n_epochs_", None), fit_time=getattr(self, "fit_time_", None))

    @classmethod
    def _from_state(cls, params, state, device="cpu"):
        return cls._restore(dict(params, device=device), state, state["history"], device)

    @classmethod
    def _restore(cls, init, f, history, device):
        m = cls(**init)
        m.design_ = GLMMDesign.from_dict(f["design"])
        m.var_names_ = np.asarray(m.design_.genes, dtype=object)
        m.covariate_registry_ = m.design_.registry()
        m._G, m._D = m.design_.n_groups, m.design_.n_donors
        m._set_basis(m._G, m._D)
        m._p = {k: v.to(device=device, dtype=m.dtype).requires_grad_(True) for k, v in f["params"].items()}
        m.history_ = history
        m._elbo_by_gene, m.n_epochs_, m.fit_time_ = f["elbo_history"], f["n_epochs"], f["fit_time"]
        m._data = None
        m._store()
        return m

    @classmethod
    def _load_legacy(cls, state, device="cpu"):
        """The format written before :mod:`scnotes._persist` (a torch pickle)."""
        init = dict(state["init"], device=device)
        init["dtype"] = getattr(torch, init["dtype"])
        f = dict(state["fitted"], params=state["params"])
        return cls._restore(init, f, None if f["history"] is None else pd.DataFrame(f["history"]), device)


def fit_veb(data: GLMMData, **kwargs) -> PoissonGLMMVEB:
    """``PoissonGLMMVEB(**kwargs).fit(data)`` (see :class:`PoissonGLMMVEB`)."""
    return PoissonGLMMVEB(**kwargs).fit(data)
