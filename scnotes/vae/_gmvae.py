"""The Gaussian-mixture VAE (GMVAE) for counts: clustering with batch covariates.

Generative model (Dilokthanakul et al. 2016, "Deep unsupervised clustering with
Gaussian mixture variational autoencoders", arXiv:1611.02648, eqs. 1–4), with
the count likelihood, size factors and decoder covariates of the other VAEs
(:mod:`scnotes.vae._module`):

    w_i ~ N(0, I_{d_w}),   z_i ~ Cat(1/K, …, 1/K),
    x_i | w_i, z_i = k ~ N(μ_k(w_i), diag σ_k(w_i)²),   k = 1…K   (prior network β)
    y_ij | x_i, c_i ~ NB(s_i ρ(x_i, c_i)_j, θ_j)   (Poisson and ZINB as options)

Inference: q(x_i | y_i) q(w_i | y_i) p(z_i | x_i, w_i), two Gaussians whose
heads share one encoder trunk (the paper's recognition network), and the
cluster posterior in closed form by Bayes' rule,

    p(z_i = k | x_i, w_i) = N(x_i; μ_k(w_i), σ_k(w_i)²) / Σ_l N(x_i; μ_l(w_i), σ_l(w_i)²).

Loss terms per cell (nats; E over M draws (x⁽ᵐ⁾, w⁽ᵐ⁾) from q):

* ``reconstruction`` E_q[Σ_j log p(y_ij | x_i, c_i)];
* ``kl_w``  KL(q(w_i | y_i) ‖ N(0, I)), closed form;
* ``kl_x``  the conditional prior E_q[Σ_k p(z=k | x, w) KL(q(x_i | y_i) ‖ p(x | w, z=k))],
  the Gaussian KL in closed form (the paper's choice; ``conditional_prior="sampled"``
  uses log q(x⁽ᵐ⁾) − log p(x⁽ᵐ⁾ | w⁽ᵐ⁾, k) on the draw instead);
* ``kl_z``  the z prior E_q[KL(p(z | x, w) ‖ Cat(1/K))] ≥ 0.

``elbo`` (logged, returned by :meth:`GMVAEModule.elbo`) is the evidence lower
bound itself, estimated without bias on the same draws:

    ELBO_i = reconstruction − kl_w − E_q[log q(x | y) − log Σ_k (1/K) N(x; μ_k(w), σ_k(w)²)],

because Σ_k p_k (log p(x | w, k) − log p_k + log(1/K)) = log p(x | w) (the mixture).
With the sampled conditional prior, reconstruction − kl_w − kl_x − kl_z equals it draw
by draw. The paper's analytic term swaps E_x[p_k(x) f_k(x)] for E_x[p_k(x)]·E_x[f_k(x)]
(f_k = log q − log p_k), which is exact for K = 1 and otherwise close whenever p(z | x, w)
hardly varies over q(x | y); the chapter reports the gap.

Free bits (Dilokthanakul et al. 2016, sec. 4.2; Kingma et al. 2016): the objective
replaces ``kl_z`` by max(λ, ·). ``free_bits_mode="batch"`` (the paper) applies it to
the minibatch mean (if mean kl_z < λ, every cell of the batch carries the constant λ,
so the term gives no gradient); ``"cell"`` (the seed blog's code) per cell. The
logged ``elbo`` never includes the threshold.

Departures from the references (defects not carried):

* GEX_GMVAE (the seed blog's code) reshapes the prior network's (M, B, 2·K·d) output
  straight to (K, M, B, 2d), so a cell's component parameters come from other cells'
  outputs; here the output is split along its last axis only (``prior_params``:
  index k·2d + [0, d) is μ_k, k·2d + [d, 2d) the scale of σ_k), tested against a loop
  over k on one cell alone;
* its NB has no size factor; here s_i (total counts by default) multiplies ρ;
* the seed 000 class has undefined names and a wrong Gaussian KL; the KLs here are
  those of :func:`scnotes.likelihoods.normal_kl` (tested against
  torch.distributions and Monte Carlo).
* scales are softplus(·) + 1e-4 (the encoder's floor) rather than exp(log σ²), so a
  component cannot collapse to zero variance and make log N infinite.

Training schedule (a departure from the paper, ``GMVAE.fit(pretrain_epochs=...)``): the
encoder and decoder are first trained as a count VAE (N(0, I) prior on x), then the
mixture is switched on. Trained from initialisation, the mixture formed on the batches
of simulated counts with a multiplicative batch effect (ARI 0.40 with the true clusters
and 0.33 with the batches, 6 clusters × 2 batches, 3,000 cells; 1.0 and 0.0 with 10
pretraining epochs), because the batch is the largest variation of the counts when
training starts and the learned prior makes it cheap to keep in x.

The prior network β is w → Linear → tanh → Linear → (μ_k, σ_k)_{k=1..K} (the paper's
one hidden layer); with K = 1 the model is a VAE whose Gaussian prior on x is learned
through w.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..likelihoods import normal_kl, normal_log_pdf
from ._data import CountData
from ._model import CountVAE
from ._module import CountVAEModule
from ._lightning import fit_lightning
from ._train import LossTerms

__all__ = ["GMVAE", "GMVAEModule", "FREE_BITS_MODES", "CONDITIONAL_PRIORS"]

FREE_BITS_MODES = ("batch", "cell")
CONDITIONAL_PRIORS = ("analytic", "sampled")
PRETRAIN_EPOCHS = 10


def _positive_int(name, v):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer, float)) or int(v) != v or v < 1:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")
    return int(v)


def _free_bits(v) -> float:
    try:
        ok = bool(np.isfinite(v) and v >= 0)
    except TypeError:  # not a number at all: the same clear error
        ok = False
    if not ok:
        raise ValueError(f"free_bits must be a finite number ≥ 0 (nats), got {v!r}")
    return float(v)


class GMVAEModule(CountVAEModule):
    """The GMVAE as an ``nn.Module``: a :class:`CountVAEModule` (its encoder is q(x | y),
    its decoder, likelihood, θ / π, size factor and mask handling are shared) plus
    q(w | y) heads on the encoder trunk and the prior network w → (μ_k, σ_k), k = 1…K.

    Parameters
    ----------
    input_dim : int, genes p
    latent_dim : int, d, dimension of x (the embedding)
    n_clusters : int, K ≥ 1
    w_dim : int, d_w, dimension of w
    hidden_dim : int, width of encoder and decoder hidden layers
    prior_hidden_dim : int, width of the prior network's tanh layer (default ``hidden_dim``)
    free_bits : float ≥ 0, λ in nats (0: off)
    free_bits_mode : "batch" (minibatch mean, the paper) or "cell"
    conditional_prior : "analytic" (the paper) or "sampled"
    other arguments : as :class:`CountVAEModule` (the library is observed).

    Shapes: B cells, S draws, K clusters, d = ``latent_dim``.

    Raises
    ------
    ValueError : naming the argument and its value: ``n_clusters``, ``w_dim`` or
        ``prior_hidden_dim`` not a positive integer, ``free_bits`` negative or not finite,
        an unknown ``free_bits_mode`` or ``conditional_prior``; the errors of
        :class:`CountVAEModule`. The only place these are checked: :class:`GMVAE` builds
        this module in its constructor.
    """

    def __init__(self, input_dim: int, latent_dim: int, n_clusters: int, w_dim: int = 10,
                 hidden_dim: int = 128, prior_hidden_dim: int | None = None, n_covariates: int = 0,
                 likelihood: str = "nb", theta_by_gene: bool = True, logodds_by_gene: bool = True,
                 scale_floor: float = 1e-4, encoder_input: str = "log1p", n_layers: int = 2,
                 dropout: float = 0.0, n_batches: int = 0, free_bits: float = 0.0,
                 free_bits_mode: str = "batch", conditional_prior: str = "analytic"):
        n_clusters, w_dim = _positive_int("n_clusters", n_clusters), _positive_int("w_dim", w_dim)
        if prior_hidden_dim is not None:
            prior_hidden_dim = _positive_int("prior_hidden_dim", prior_hidden_dim)
        free_bits = _free_bits(free_bits)
        if free_bits_mode not in FREE_BITS_MODES:
            raise ValueError(f"free_bits_mode must be one of {FREE_BITS_MODES}, got {free_bits_mode!r}")
        if conditional_prior not in CONDITIONAL_PRIORS:
            raise ValueError(f"conditional_prior must be one of {CONDITIONAL_PRIORS}, "
                             f"got {conditional_prior!r}")
        super().__init__(input_dim, latent_dim, hidden_dim, n_covariates, likelihood, theta_by_gene,
                         logodds_by_gene, scale_floor, encoder_input, n_layers, dropout,
                         n_batches=n_batches)
        self.n_clusters, self.w_dim, self.prior_hidden_dim = n_clusters, w_dim, prior_hidden_dim
        self.free_bits, self.free_bits_mode = free_bits, free_bits_mode
        self.conditional_prior = conditional_prior
        # q(w | y) heads on the trunk of q(x | y): one recognition network, as the paper.
        self.w_mean = nn.Linear(hidden_dim, w_dim)
        self.w_scale = nn.Linear(hidden_dim, w_dim)
        ph = int(prior_hidden_dim or hidden_dim)
        self.prior_net = nn.Sequential(nn.Linear(w_dim, ph), nn.Tanh())
        self.prior_out = nn.Linear(ph, self.n_clusters * 2 * latent_dim)
        # Set by GMVAE.fit during its pretraining phase: x gets the N(0, I) prior of the
        # count VAEs (their _normal_prior_terms, shared), w and the prior network are not used.
        self.pretraining = False

    # --- pieces -------------------------------------------------------------
    def encode_all(self, y):
        """q(x | y) and q(w | y) from one pass of the trunk: (mean_x, scale_x, mean_w, scale_w)."""
        e = self.encoder
        h = e.net(torch.log1p(y) if e.encoder_input == "log1p" else y)
        return (e.mean(h), F.softplus(e.scale(h)) + e.scale_floor,
                self.w_mean(h), F.softplus(self.w_scale(h)) + e.scale_floor)

    def prior_params(self, w):
        """(μ, σ) of p(x | w, z = k) for every k: w is … × d_w; each output … × K × d.

        The head's output is split along its last axis only, so each cell's (and
        draw's) components come from that cell's own w."""
        a = self.prior_out(self.prior_net(w)).unflatten(-1, (self.n_clusters, 2, self.latent_dim))
        return a[..., 0, :], F.softplus(a[..., 1, :]) + self.encoder.scale_floor

    @staticmethod
    def component_log_density(x, mean, scale):
        """log N(x; μ_k, diag σ_k²) for every k: x … × d, mean/scale … × K × d → … × K."""
        return normal_log_pdf(x.unsqueeze(-2), mean, scale).sum(-1)

    def cluster_log_posterior(self, x, w):
        """log p(z = k | x, w) (Bayes' rule, uniform p(z)): x … × d, w … × d_w → … × K."""
        pm, ps = self.prior_params(w)
        return torch.log_softmax(self.component_log_density(x, pm, ps), dim=-1)

    def draws(self, y, n_samples: int, generator=None):
        """q's parameters, S draws of x and w (x first, then w) and what follows from them:
        component parameters (S × B × K × d), log N(x | w, k) and log p(z | x, w) (S × B × K)."""
        mx, sx, mw, sw = self.encode_all(y)
        xs = self.sample(mx, sx, n_samples, generator)
        ws = self.sample(mw, sw, n_samples, generator)
        pm, ps = self.prior_params(ws)
        log_comp = self.component_log_density(xs, pm, ps)
        return dict(mean_x=mx, scale_x=sx, mean_w=mw, scale_w=sw, x=xs, w=ws, prior_mean=pm,
                    prior_scale=ps, log_comp=log_comp, log_pz=torch.log_softmax(log_comp, dim=-1))

    def terms_from_draws(self, y, w, s, c, d) -> LossTerms:
        """Per-cell terms (shape B, nats) from :meth:`draws`, a
        :class:`~scnotes.vae._train.LossTerms`: ``reconstruction``, ``kl`` (``kl_w``,
        ``kl_x``, ``kl_z``) and the unbiased ``extra["elbo"]`` (module docstring), with
        ``loss`` = −ELBO (not reconstruction − Σ kl: the analytic ``kl_x`` is not unbiased)."""
        k = self.n_clusters
        pz = torch.exp(d["log_pz"])
        log_q = normal_log_pdf(d["x"], d["mean_x"], d["scale_x"]).sum(-1)  # S × B
        if self.conditional_prior == "analytic":
            kl_comp = normal_kl(d["mean_x"][:, None, :], d["scale_x"][:, None, :],
                                d["prior_mean"], d["prior_scale"]).sum(-1)  # S × B × K
        else:
            kl_comp = log_q[..., None] - d["log_comp"]
        rec = self.log_lik(y, w, s, self.decode(d["x"], c)).mean(0)
        kl_w = normal_kl(d["mean_w"], d["scale_w"]).sum(-1)
        kl_x = (pz * kl_comp).sum(-1).mean(0)
        kl_z = (pz * (d["log_pz"] + math.log(k))).sum(-1).mean(0)
        log_mix = torch.logsumexp(d["log_comp"], dim=-1) - math.log(k)
        elbo = rec - kl_w - (log_q - log_mix).mean(0)
        return LossTerms(loss=-elbo, reconstruction=rec, kl=dict(kl_w=kl_w, kl_x=kl_x, kl_z=kl_z),
                         extra={"elbo": elbo})

    # --- bounds -------------------------------------------------------------
    def loss_terms(self, x, w, s, c=None, n_samples: int = 1, generator=None) -> LossTerms:
        """``reconstruction``, ``kl_w``, ``kl_x``, ``kl_z`` per cell (shape B, nats), as
        :meth:`terms_from_draws`."""
        return self.terms_from_draws(x, w, s, c, self.draws(x, n_samples, generator))

    def elbo(self, x, w, s, c=None, n_samples: int = 1, generator=None, analytic_kl: bool = True):
        """Per-cell ELBO (shape B): analytic KL for w, sampled mixture term for x
        (``analytic_kl=False``: every term sampled, the one-draw IWAE weight)."""
        if not analytic_kl:
            return self.iwae_log_weights(x, w, s, c, n_samples, generator).mean(0)
        return self.terms_from_draws(x, w, s, c, self.draws(x, n_samples, generator)).extra["elbo"]

    def iwae_log_weights(self, x, w, s, c=None, n_samples: int = 10, generator=None):
        """log p(y, x, w) − log q(x, w | y) per draw, S × B, with z summed out
        (p(x | w) the mixture); feeds ``iwae`` and ``marginal_ll``."""
        d = self.draws(x, n_samples, generator)
        log_mix = torch.logsumexp(d["log_comp"], dim=-1) - math.log(self.n_clusters)
        ws = d["w"]
        return (self.log_lik(x, w, s, self.decode(d["x"], c)) + log_mix + self._log_prior(ws)
                - self._log_q(d["x"], d["mean_x"], d["scale_x"]) - self._log_q(ws, d["mean_w"], d["scale_w"]))

    def training_terms(self, x, w, s, c, n_samples, generator, objective="elbo",
                       kl_weight=1.0) -> LossTerms:
        """The training hook (see :mod:`scnotes.vae._train`), a
        :class:`~scnotes.vae._train.LossTerms`.

        ``loss`` = −(reconstruction − β (kl_w + kl_x + kl_z*)), with kl_z* the z prior
        after the free-bits threshold (λ = ``free_bits``) and β = ``kl_weight``;
        ``extra["elbo"]`` the unbiased bound (never thresholded or warmed up). The ``iwae``
        objective has no free bits. While pretraining, the count VAE's record, its KL on
        x logged as ``kl_x`` (a prior on x, not the z prior)."""
        if objective == "iwae":
            return self._iwae_terms(x, w, s, c, n_samples, generator)
        if self.pretraining:
            return self._normal_prior_terms(x, w, s, c, n_samples, generator, kl_weight, kl_name="kl_x")
        t = self.terms_from_draws(x, w, s, c, self.draws(x, n_samples, generator))
        kz = t.kl["kl_z"]
        lam = self.free_bits
        if lam > 0:
            if self.free_bits_mode == "batch":
                # No host sync: the branch is chosen on the device.
                kz = torch.where(kz.mean() >= lam, kz, torch.full_like(kz, lam))
            else:
                kz = torch.clamp(kz, min=lam)
        objective = t.reconstruction - kl_weight * (t.kl["kl_w"] + t.kl["kl_x"] + kz)
        return dataclasses.replace(t, loss=-objective)


class GMVAE(CountVAE):
    """Gaussian-mixture VAE: clusters of counts, with batch (and other) covariates in the decoder.

    Model, loss terms and departures from the references: :mod:`scnotes.vae._gmvae`.

    Parameters
    ----------
    input_dim : int, number of genes p
    n_clusters : int, K ≥ 1 mixture components (K = 1: a VAE whose Gaussian prior on x
        is learned through w)
    n_latent : int, d, dimension of the embedding x (10)
    w_dim : int, d_w, dimension of w (10)
    hidden_dim : int, width of the encoder/decoder hidden layers (128)
    prior_hidden_dim : int or None, width of the prior network (None: ``hidden_dim``)
    n_layers, dropout : encoder hidden layers (2) and their dropout (0.0)
    likelihood : "nb" (default), "poisson" or "zinb"
    free_bits : float ≥ 0, λ (nats) of the free-bits threshold on the z-prior term (0: off)
    free_bits_mode : "batch" (on the minibatch mean, the paper) or "cell" (per cell)
    conditional_prior : "analytic" (closed-form Gaussian KL, the paper) or "sampled"
    n_covariates, n_batches : covariate columns fed to the decoder only (batch one-hot
        first, ``n_batches`` columns; set by :func:`scnotes.tl.gmvae`)
    encoder_input : "log1p" (default) or "raw"
    theta_by_gene, logodds_by_gene : per-gene θ / dropout log-odds (NB / ZINB;
        ``disp_by_gene``: the older name of ``theta_by_gene``)
    seed, device : as the other VAEs

    Methods differ from the count VAEs in one name: :meth:`predict` returns the argmax
    cluster (scikit-learn's clusterer convention, as the GMVAE issue asks), and the
    count VAEs' expected count is :meth:`expected_counts`. :meth:`latent` is E_q[x]
    and :meth:`predict_proba` E_q[p(z | x, w)]; neither needs size factors or covariates.

    Fitted attributes as :class:`~scnotes.vae.CountVAE` (``theta_`` for NB / ZINB,
    ``logodds_`` for ZINB); ``history_`` has columns ``loss``,
    ``elbo``, ``reconstruction``, ``kl_w``, ``kl_x``, ``kl_z`` (and ``validation_…``).

    Raises
    ------
    ValueError : at construction, naming the argument and its value: K, d, d_w or widths
        not positive integers, λ negative or not finite, unknown likelihood / free-bits
        mode / conditional prior, dropout outside [0, 1). Each is checked once: the
        mixture's arguments by :class:`GMVAEModule` (built here), the sizes and likelihood
        by :class:`~scnotes.vae.CountVAE`, the encoder's ``n_layers`` and ``dropout`` here.
    """

    def __init__(self, input_dim: int, n_clusters: int = 10, n_latent: int = 10, w_dim: int = 10,
                 hidden_dim: int = 128, prior_hidden_dim: int | None = None, n_layers: int = 2,
                 dropout: float = 0.0, likelihood: str = "nb", free_bits: float = 0.0,
                 free_bits_mode: str = "batch", conditional_prior: str = "analytic",
                 n_covariates: int = 0, n_batches: int = 0, encoder_input: str = "log1p",
                 seed: int = 0, device="cpu", **lik_kwargs):
        # The mixture's arguments are checked by GMVAEModule, which super().__init__ builds
        # (_build); the module leaves the encoder's n_layers and dropout unchecked.
        self.n_layers = _positive_int("n_layers", n_layers)
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout!r}")
        self.dropout = float(dropout)
        self.n_clusters, self.w_dim, self.prior_hidden_dim = n_clusters, w_dim, prior_hidden_dim
        self.free_bits, self.free_bits_mode = free_bits, free_bits_mode
        self.conditional_prior = conditional_prior
        super().__init__(input_dim, n_latent, hidden_dim, n_covariates=n_covariates, seed=seed,
                         device=device, encoder_input=encoder_input, n_batches=n_batches,
                         likelihood=likelihood, **lik_kwargs)
        m = self.module  # the validated values (ints, a float), as save() writes them
        self.n_clusters, self.w_dim, self.prior_hidden_dim = m.n_clusters, m.w_dim, m.prior_hidden_dim
        self.free_bits = m.free_bits

    def _init_kwargs(self):
        return dict(super()._init_kwargs(), n_clusters=self.n_clusters, w_dim=self.w_dim,
                    prior_hidden_dim=self.prior_hidden_dim, n_layers=self.n_layers,
                    dropout=self.dropout, free_bits=self.free_bits,
                    free_bits_mode=self.free_bits_mode, conditional_prior=self.conditional_prior)

    def _make_module(self):
        return GMVAEModule(self.input_dim, self.n_latent, self.n_clusters, self.w_dim,
                           self.hidden_dim, self.prior_hidden_dim, self.n_covariates, self.likelihood,
                           encoder_input=self.encoder_input, n_layers=self.n_layers,
                           dropout=self.dropout, n_batches=self.n_batches, free_bits=self.free_bits,
                           free_bits_mode=self.free_bits_mode,
                           conditional_prior=self.conditional_prior, **self._lik_params(),
                           **self._module_kwargs)

    # --- fitting --------------------------------------------------------------
    def fit(self, x, w=None, s=None, covariates=None, lr: float = 3e-3, n_samples: int = 1,
            max_epochs: int = 100, batch_size: int | None = 128, objective: str = "elbo",
            optimizer: str = "adam", pretrain_epochs: int = PRETRAIN_EPOCHS, progress: bool | None = None,
            weight_decay: float = 0.0, **kwargs):
        """Fit as :meth:`scnotes.vae.CountVAE.fit` (same arguments), after a pretraining phase;
        returns ``self``. Defaults: Adam (the seed's optimiser) with lr 3e-3 (the seed's
        1e-3 needed about three times the epochs to recover the simulated clusters of
        ``tests/test_gmvae.py``), minibatches of 128, M = ``n_samples`` = 1 draw per step
        (the seed used 10; the benchmark's setting).

        pretrain_epochs : int ≥ 0, epochs first spent training encoder and decoder as a
            count VAE, i.e. with the N(0, I) prior on x in place of the mixture (w and
            the prior network unused), on the same training cells, optimiser settings
            and loop. 0 trains the GMVAE from its initialisation, as the paper. Why: a
            batch effect is the largest variation of the counts when training starts,
            and a mixture trained from there puts its components on batches; the N(0, I)
            prior pulls batch information out of x (it is free in the decoder's
            covariates) before the mixture forms. The record is ``pretrain_history_``
            (columns ``loss``, ``elbo``, ``reconstruction``, ``kl_x``); ``history_`` is
            the GMVAE phase. ``max_epochs``, early stopping and KL warm-up apply to the
            GMVAE phase.

        Dropout (if any) is seeded from the model's seed inside a forked RNG, so the
        caller's global torch RNG is untouched.

        Raises
        ------
        ValueError : as :meth:`scnotes.vae.CountVAE.fit`; ``pretrain_epochs`` negative or not an
            integer; fewer training cells than ``n_clusters``.
        """
        if isinstance(pretrain_epochs, bool) or int(pretrain_epochs) != pretrain_epochs or pretrain_epochs < 0:
            raise ValueError(f"pretrain_epochs must be a non-negative integer, got {pretrain_epochs!r}")
        self._pretrain = dict(epochs=int(pretrain_epochs), lr=lr, n_samples=int(n_samples),
                              batch_size=batch_size, optimizer=optimizer, progress=progress,
                              weight_decay=float(weight_decay),
                              engine={k: kwargs[k] for k in ("accelerator", "devices", "strategy")
                                      if kwargs.get(k) is not None}
                              | dict(kwargs.get("trainer_kwargs") or {}))
        self.pretrain_history_ = None
        dev = self.device
        devices = ([dev.index if dev.index is not None else torch.cuda.current_device()]
                   if dev.type == "cuda" else [])
        try:
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(self.seed)
                return super().fit(x, w, s, covariates, lr=lr, n_samples=n_samples,
                                   max_epochs=max_epochs, batch_size=batch_size, objective=objective,
                                   optimizer=optimizer, progress=progress, weight_decay=weight_decay,
                                   **kwargs)
        finally:
            self._pretrain = None
            self.module.pretraining = False

    def _before_training(self, data, train_idx):
        """The pretraining phase (see :meth:`fit`), in the shared loop, with its own
        seeded draws and shuffles so the GMVAE phase's are those of a fit without it."""
        super()._before_training(data, train_idx)
        if len(train_idx) < self.n_clusters:
            raise ValueError(f"{len(train_idx)} training cells for n_clusters={self.n_clusters}: "
                             "need at least one cell per cluster")
        p = getattr(self, "_pretrain", None)
        if not p or p["epochs"] == 0:
            return
        gen = torch.Generator(device=self.device)
        gen.manual_seed(self.seed + 1)
        self.module.pretraining = True
        try:
            # The same engine (and devices) as the GMVAE phase.
            self.pretrain_history_, _ = fit_lightning(
                self.module, data, lr=p["lr"], n_samples=p["n_samples"], max_epochs=p["epochs"],
                batch_size=p["batch_size"], objective="elbo", optimizer=p["optimizer"], generator=gen,
                rng=np.random.default_rng([self.seed, 1]), progress=p["progress"],
                desc="GMVAE pretraining", train_idx=train_idx, weight_decay=p["weight_decay"],
                **p["engine"])
        finally:
            self.module.pretraining = False

    # --- outputs --------------------------------------------------------------
    def _encoder_data(self, x, w, covariates, checked=False):
        """Counts (and mask) only: the encoder sees neither size factors nor covariates.
        Covariates, if given, are still checked. ``checked``: counts a ``scnotes.tl`` front
        already validated (one check per front call, as ``CountVAE._data``)."""
        from .._checks import check_counts, check_mask

        if not checked:
            x = check_counts(x, name="x", allow_empty_cells=True, allow_empty_genes=True, dtype=None)
        if x.shape[1] != self.input_dim:
            raise ValueError(f"x has {x.shape[1]} genes (columns) but the model has input_dim={self.input_dim}")
        w = check_mask(w, x.shape, name="w")
        if covariates is not None:
            self._covariates(covariates, x.shape[0])
        return CountData(x, np.ones(x.shape[0]), w, None, self.device)

    def latent(self, x, s=None, covariates=None, w=None, *, _checked: bool = False):
        """E_q[x_i], the embedding, ndarray n_cells × n_latent (eval mode). ``s`` and
        ``covariates`` are not used by the encoder (accepted for a uniform call shape)."""
        data = self._encoder_data(x, w, covariates, checked=_checked)
        return self._evaluate(data, lambda x, w, s, c, g: self.module.encode(x)[0])

    def latent_w(self, x, s=None, covariates=None, w=None):
        """E_q[w_i], ndarray n_cells × w_dim (eval mode)."""
        data = self._encoder_data(x, w, covariates)
        return self._evaluate(data, lambda x, w, s, c, g: self.module.encode_all(x)[2])

    def predict_proba(self, x, s=None, covariates=None, w=None, n_samples: int = 20,
                      seed: int | None = None, *, _checked: bool = False):
        """E_q[p(z_i = k | x_i, w_i)], ndarray n_cells × K, rows summing to one.

        Monte Carlo over ``n_samples`` draws (x, w) ~ q (seeded: ``seed`` or the
        model's), in eval mode. Needs neither size factors nor covariates."""
        n_samples = _positive_int("n_samples", n_samples)
        data = self._encoder_data(x, w, covariates, checked=_checked)
        m = self.module
        # Bayes' rule again in float64, so each row sums to one to rounding of float64.
        return self._evaluate(data, lambda x, w, s, c, g: torch.softmax(
            m.draws(x, n_samples, g)["log_comp"].double(), dim=-1).mean(0), seed)

    def predict(self, x, s=None, covariates=None, w=None, n_samples: int = 20,
                seed: int | None = None):
        """Cluster of each cell, argmax_k of :meth:`predict_proba`: int ndarray (n_cells,)
        in [0, K). (The count VAEs' ``predict`` is :meth:`expected_counts` here.)"""
        return self.predict_proba(x, s, covariates, w, n_samples, seed).argmax(axis=1)

    def expected_counts(self, x, w=None, s=None, covariates=None, n_samples: int | None = None):
        """E[y_ij | x_i, c_i], ndarray n_cells × n_genes: what ``predict`` returns for the
        count VAEs (:meth:`scnotes.vae.CountVAE.predict`; s_i ρ_ij, times (1 − π_j) for ZINB)."""
        return CountVAE.predict(self, x, w, s, covariates, n_samples)

