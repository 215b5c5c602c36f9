"""The count VAE as a pure ``torch.nn.Module``: inference, generative model, bounds.

Model (seed page "Variational autoencoders for scRNA-seq data"; covariates as
in the seed's PVAE of "Mutual nearest neighbors in topic model space"):

    x_ij | λ_ij ~ Poisson(λ_ij),   λ_ij = s_i μ(z_i, c_i)_j u_ij,   z_i ~ N(0, I_K)

with u_ij = 1 (Poisson), u_ij ~ Gamma(θ_j, θ_j) (negative binomial marginal)
or u_ij ~ π_j δ_0 + (1 − π_j) Gamma(θ_j, θ_j) (zero-inflated NB marginal).
θ and logit π are free parameters (per gene or shared), not decoder outputs,
because u is an unstructured random effect (seed's remark).

Inference: q(z_i | x_i) = N(m(x_i), diag S(x_i)²) from an MLP on the raw counts
x_i (the seed's choice; ``encoder_input="log1p"`` uses log(1 + x_i)); masked
entries are zero-filled. Bounds per cell i, with weights w_ij ∈ [0, 1]
(0 = missing, which then contributes nothing; Mattei & Frellsen 2018):

    ELBO_i = E_q[ Σ_j w_ij log p(x_ij | z_i) ] − KL(q(z_i | x_i) ‖ N(0, I))
    IWAE_i = E[ log (1/S) Σ_s p(x_i, z_i^(s)) / q(z_i^(s) | x_i) ]  (Burda et al. 2016)

ELBO_i ≤ IWAE_i(S) ≤ log p(x_i), and IWAE_i(1) = ELBO_i in expectation (and
exactly, draw by draw, when the ELBO uses the sampled rather than the
analytic KL).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..likelihoods import (nb_log_pmf, normal_kl, normal_log_pdf, poisson_log_lik_rows, poisson_log_pmf,
                           zinb_log_pmf, zinb_nonzero_posterior)
from ._train import LossTerms

__all__ = ["CountVAEModule", "MLPDecoder", "LinearDecoder", "LIKELIHOODS"]

LIKELIHOODS = ("poisson", "nb", "zinb")
_LOG_2PI = math.log(2 * math.pi)
DECODER_OUTPUTS = ("softplus", "softmax")
# Rows per piece of the per-entry log-likelihood when no gradient is kept (validation,
# elbo(), reconstruction_error()): its temporaries (float64 for the NB's lgamma ratio) scale
# with rows × genes, and at 2,048 rows × 2,000 genes they held ~0.2 GB of peak memory. Each
# row's sum is computed alone, so the pieces give the same numbers as one call.
_EVAL_ROWS = 256


def _all_ones(s) -> bool:
    """s ≡ 1, checked only on the CPU (on a GPU the test would cost a device sync per step)."""
    return s.device.type == "cpu" and bool(torch.all(s == 1))


def _by_rows(fn, x, w, s, log_mu, log_s):
    """``fn(x, w, s, log_mu, log_s)`` (rows on axis -2 of ``log_mu``, -1 of the result) in pieces."""
    parts = []
    for i in range(0, x.shape[0], _EVAL_ROWS):
        j = i + _EVAL_ROWS
        parts.append(fn(x[i:j], None if w is None else w[i:j], s[i:j], log_mu[..., i:j, :],
                        None if log_s is None else log_s[..., i:j]))
    return torch.cat(parts, dim=-1)


def _mlp(input_dim: int, hidden_dim: int, n_layers: int = 2, dropout: float = 0.0,
         bn_eps: float = 1e-5, bn_momentum: float = 0.1, batch_norm: bool = True) -> nn.Sequential:
    """``n_layers`` hidden layers, Linear → BatchNorm → ReLU (→ Dropout if ``dropout`` > 0);
    Linear → ReLU with ``batch_norm=False``.

    Two layers without dropout is the seed's architecture; one layer with
    dropout 0.1, BatchNorm eps 1e-3 and momentum 0.01 is scvi-tools' default
    encoder (used by :class:`~scnotes.vae.LDVAE`).
    """
    layers, d = [], input_dim
    for _ in range(n_layers):
        layers.append(nn.Linear(d, hidden_dim))
        if batch_norm:
            layers.append(nn.BatchNorm1d(hidden_dim, eps=bn_eps, momentum=bn_momentum))
        layers.append(nn.ReLU())
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        d = hidden_dim
    return nn.Sequential(*layers)


ENCODER_INPUTS = ("raw", "log1p")


class Encoder(nn.Module):
    """x (B × p counts) → (mean, scale) of q(z | x), each B × K.

    ``encoder_input``: "raw" feeds the counts themselves (the seed; the first
    BatchNorm absorbs their scale), "log1p" feeds log(1 + x). On the seed's
    simulation (n = 500, p = 100, u ~ Gamma(0.1, 10), PVAE, s = 1, 3000
    full-batch epochs, seed 0) raw input did better on the independent
    replicate x_val, in mean Poisson log-likelihood per entry: −2.97 vs −3.83
    (latent 10) and −4.69 vs −5.73 (latent 3) scoring denoise(x_val) as the
    seed does, −2.05 vs −2.18 and −3.38 vs −3.52 scoring predict(x).
    The scale is softplus(·) + ``scale_floor``: without a floor it can reach
    0 and the KL's −log(scale) becomes infinite (a defect of the reference).
    """

    def __init__(self, input_dim: int, latent_dim: int, hidden_dim: int, scale_floor: float = 1e-4,
                 encoder_input: str = "raw", **mlp_kwargs):
        super().__init__()
        if encoder_input not in ENCODER_INPUTS:
            raise ValueError(f"encoder_input must be one of {ENCODER_INPUTS}, got {encoder_input!r}")
        self.encoder_input = encoder_input
        self.net = _mlp(input_dim, hidden_dim, **mlp_kwargs)
        self.mean = nn.Linear(hidden_dim, latent_dim)
        self.scale = nn.Linear(hidden_dim, latent_dim)
        self.scale_floor = scale_floor

    def forward(self, x):
        h = self.net(torch.log1p(x) if self.encoder_input == "log1p" else x)
        return self.mean(h), F.softplus(self.scale(h)) + self.scale_floor


def _log_softplus(a):
    """log softplus(a), with softplus floored at the smallest normal float (1.2e-38 in
    float32, log ≥ −87.3): softplus underflows to exactly 0 below about −103 in
    float32, and log 0 would turn the Poisson term x log μ and its gradient into
    NaN. Three elementwise kernels; an exact branch for a < −15
    (``where``/``clamp``) cost 6 % of a small full-batch step."""
    return torch.log(F.softplus(a) + torch.finfo(a.dtype).tiny)


class MLPDecoder(nn.Module):
    """[z, c] (… × (K + C)) → log μ (… × p) through ``n_layers`` hidden layers.

    ``output="softplus"`` (default, the seed's): μ = softplus(·), the expected count per
    unit size factor, on the log scale (see :func:`_log_softplus` for the floor that keeps
    it finite). ``output="softmax"`` (scvi-tools' decoder): μ = softmax over genes, an
    expression profile summing to 1, so that with the default size factors (total counts)
    s μ is a cell's expected counts (Lopez et al. 2018, Nat. Methods 15:1053). On
    ``benchmarks/bench_scvi_scale.py``'s 20k cells (NB, 10 epochs) the softmax reached a
    held-out ELBO 1.8 % higher than the softplus at 0.9× its CPU time: the profile's
    normalisation leaves the decoder only the composition to learn.
    ``batch_norm=False`` drops the BatchNorm of the hidden layers: Linear → ReLU twice,
    scmodes' decoder (the seed's ``PVAE``).

    Raises
    ------
    ValueError : ``output`` not "softplus" or "softmax", ``n_layers`` < 1.
    """

    def __init__(self, input_dim: int, output_dim: int, hidden_dim: int, batch_norm: bool = True,
                 output: str = "softplus", n_layers: int = 2):
        super().__init__()
        if output not in DECODER_OUTPUTS:
            raise ValueError(f"decoder output must be one of {DECODER_OUTPUTS}, got {output!r}")
        if int(n_layers) != n_layers or n_layers < 1:
            raise ValueError(f"decoder n_layers must be a positive integer, got {n_layers!r}")
        self.output = output
        self.net = _mlp(input_dim, hidden_dim, n_layers=int(n_layers), batch_norm=batch_norm)
        self.out = nn.Linear(hidden_dim, output_dim)

    def forward(self, zc):
        lead = zc.shape[:-1]
        a = self.out(self.net(zc.reshape(-1, zc.shape[-1])))
        log_mu = torch.log_softmax(a, dim=-1) if self.output == "softmax" else _log_softplus(a)
        return log_mu.reshape(*lead, -1)


Decoder = MLPDecoder  # the seed's decoder, under its older name


class LinearDecoder(nn.Module):
    """[z, c] (… × (K + C)) → log ρ (… × p), ρ = softmax_genes(a) an expression profile.

    ``batch_norm=True`` (scvi-tools' LDVAE decoder): a = BatchNorm(W [z, c]), no bias;
    ``batch_norm=False`` (plain): a = W [z, c] + b. The covariates c (batch one-hot)
    enter linearly, so their columns of W are per-batch gene offsets. Source:
    Svensson et al. 2020, Bioinformatics 36:3418 (eq. 2).
    """

    def __init__(self, latent_dim: int, n_covariates: int, output_dim: int, batch_norm: bool = True):
        super().__init__()
        self.latent_dim, self.n_covariates = latent_dim, n_covariates
        self.linear = nn.Linear(latent_dim + n_covariates, output_dim, bias=not batch_norm)
        # eps and momentum as scvi-tools, so folded loadings are comparable.
        self.bn = nn.BatchNorm1d(output_dim, eps=1e-3, momentum=0.01) if batch_norm else None

    def forward(self, zc):
        lead = zc.shape[:-1]
        a = self.linear(zc.reshape(-1, zc.shape[-1]))
        if self.bn is not None:
            a = self.bn(a)
        return torch.log_softmax(a, dim=-1).reshape(*lead, -1)

    def loadings(self):
        """Effective weights of z, p × K: W with the BatchNorm scale γ / √(running_var + ε)
        folded in (in eval mode a = diag(γ/σ) W [z, c] + const), covariate columns dropped."""
        w = self.linear.weight
        if self.bn is not None:
            w = (self.bn.weight / torch.sqrt(self.bn.running_var + self.bn.eps))[:, None] * w
        return w[:, :self.latent_dim]


LATENT_DISTRIBUTIONS = ("normal", "ln")
LIBRARY = ("observed", "latent")


class CountVAEModule(nn.Module):
    """Encoder, decoder and the parameters of p(u) for one of ``LIKELIHOODS``.

    Parameters
    ----------
    input_dim : int, number of genes p
    latent_dim : int, K
    hidden_dim : int, width of the hidden layers of each MLP
    n_covariates : int, C, columns of the covariate matrix fed to the decoder
    likelihood : "poisson", "nb" or "zinb"
    theta_by_gene : bool, one θ per gene (else one shared θ); NB/ZINB only
    logodds_by_gene : bool, one dropout log-odds per gene (else shared); ZINB only
    scale_floor : float, lower bound of the encoder's standard deviations
    encoder_input : "raw" (default, the seed) or "log1p", what the encoder sees
    n_layers, dropout : hidden layers of the encoder (2, 0.0: the seed's)
    decoder : None (the seed's MLP decoder) or an ``nn.Module`` mapping [z, c]
        (… × (K + C)) to log μ (… × p); the hook that makes LDVAE a VAE with
        another decoder (:class:`LinearDecoder`).
    latent_distribution : "normal" (z fed to the decoder) or "ln" (logistic
        normal: softmax(z) fed to the decoder; the KL stays on the Gaussian z).
    library : "observed" (s_i given: total counts by default) or "latent"
        (log s_i ~ N(m_b, v_b) per batch b, with q(log s_i | x_i) Gaussian from
        its own one-layer encoder, as scvi-tools; m_b, v_b are the mean and
        variance of the log total counts of batch b, set with :meth:`set_library_prior`).
    n_batches : int, the first ``n_batches`` covariate columns are the batch one-hot
        (used only by ``library="latent"``).
    decoder_batch_norm : bool, BatchNorm in the MLP decoder's hidden layers (True);
        False is scmodes' decoder, about 20 % faster per step on the seed's simulation.
    decoder_output : "softplus" (default, the seed's μ per unit size factor) or "softmax"
        (scvi-tools' expression profile); see :class:`MLPDecoder`.
    decoder_layers : int, hidden layers of the MLP decoder (2; scvi-tools' default is 1).

    Tensor shapes below: B cells, S Monte Carlo samples, p genes.
    ``x``: B × p, ``w``: B × p or None (all observed), ``s``: B, ``c``: B × C or None.
    """

    def __init__(self, input_dim: int, latent_dim: int, hidden_dim: int = 128,
                 n_covariates: int = 0, likelihood: str = "poisson",
                 theta_by_gene: bool = True, logodds_by_gene: bool = True,
                 scale_floor: float = 1e-4, encoder_input: str = "raw",
                 n_layers: int = 2, dropout: float = 0.0, decoder: nn.Module | None = None,
                 latent_distribution: str = "normal", library: str = "observed", n_batches: int = 0,
                 decoder_batch_norm: bool = True, decoder_output: str = "softplus",
                 decoder_layers: int = 2):
        super().__init__()
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
        if latent_distribution not in LATENT_DISTRIBUTIONS:
            raise ValueError(f"latent_distribution must be one of {LATENT_DISTRIBUTIONS}, "
                             f"got {latent_distribution!r}")
        if library not in LIBRARY:
            raise ValueError(f"library must be one of {LIBRARY}, got {library!r}")
        if not 0 <= n_batches <= n_covariates:
            raise ValueError(f"n_batches must lie in [0, n_covariates={n_covariates}], got {n_batches}")
        self.likelihood = likelihood
        self.input_dim, self.latent_dim, self.n_covariates = input_dim, latent_dim, n_covariates
        self.latent_distribution, self.library, self.n_batches = latent_distribution, library, n_batches
        bn = dict(bn_eps=1e-3, bn_momentum=0.01) if dropout > 0 else {}
        self.encoder = Encoder(input_dim, latent_dim, hidden_dim, scale_floor, encoder_input,
                               n_layers=n_layers, dropout=dropout, **bn)
        self.decoder = (MLPDecoder(latent_dim + n_covariates, input_dim, hidden_dim,
                                   batch_norm=decoder_batch_norm, output=decoder_output,
                                   n_layers=decoder_layers)
                        if decoder is None else decoder)
        if likelihood in ("nb", "zinb"):
            # log θ = 0: θ = 1 at the start, a moderately overdispersed NB. The parameter keeps
            # its older name so that saved state dicts (tests/fixtures) load unchanged.
            self.log_inv_disp = nn.Parameter(torch.zeros(input_dim if theta_by_gene else 1))
        if likelihood == "zinb":
            # Start at π ≈ 0.12 rather than 0.5, so the NB part is not starved early on.
            self.logodds = nn.Parameter(torch.full((input_dim if logodds_by_gene else 1,), -2.0))
        if library == "latent":
            self.library_encoder = Encoder(input_dim, 1, hidden_dim, scale_floor, "log1p",
                                           n_layers=1, dropout=dropout, **bn)
            nb_ = max(n_batches, 1)
            self.register_buffer("library_log_mean", torch.zeros(nb_))
            self.register_buffer("library_log_var", torch.ones(nb_))

    # --- pieces -------------------------------------------------------------
    @property
    def theta(self):
        """NB inverse dispersion θ = exp(``log_inv_disp``), shape (p,) or (1,); None for Poisson."""
        return torch.exp(self.log_inv_disp) if self.likelihood != "poisson" else None

    inv_disp = theta  # the older name

    def encode(self, x):
        """q(z | x): (mean, scale), each B × K."""
        return self.encoder(x)

    def transform_latent(self, z):
        """What the decoder sees: z, or softmax(z) for the logistic-normal latent."""
        return torch.softmax(z, dim=-1) if self.latent_distribution == "ln" else z

    def decode(self, z, c=None):
        """log μ(z, c): z is (S ×) B × K, c is B × C; returns (S ×) B × p."""
        z = self.transform_latent(z)
        if self.n_covariates:
            c = c.expand(*z.shape[:-1], c.shape[-1])
            z = torch.cat([z, c], dim=-1)
        return self.decoder(z)

    @staticmethod
    def sample(mean, scale, n_samples: int, generator=None):
        """Reparametrised draws z = mean + scale ε, shape S × B × K."""
        eps = torch.randn((n_samples, *mean.shape), generator=generator,
                          device=mean.device, dtype=mean.dtype)
        return mean + scale * eps

    def set_library_prior(self, log_mean, log_var):
        """Per-batch prior of log s (``library="latent"``): arrays of length max(n_batches, 1)."""
        self.library_log_mean.copy_(torch.as_tensor(log_mean, dtype=torch.float32))
        self.library_log_var.copy_(torch.as_tensor(log_var, dtype=torch.float32))

    def _library_prior(self, c, b):
        """Prior mean and sd of log s per cell, each shape B."""
        if self.n_batches:
            onehot = c[:, :self.n_batches]
            return onehot @ self.library_log_mean, torch.sqrt(onehot @ self.library_log_var)
        return (self.library_log_mean.expand(b), torch.sqrt(self.library_log_var).expand(b))

    def log_lik_entries(self, x, log_rate):
        """log p(x_ij | rate_ij = s_i μ_ij) for every entry, from log rate (broadcast shape)."""
        rate = torch.exp(log_rate)
        if self.likelihood == "poisson":
            return poisson_log_pmf(x, rate, log_rate)
        if self.likelihood == "nb":
            return nb_log_pmf(x, rate, self.theta, log_rate)
        return zinb_log_pmf(x, rate, self.theta, self.logodds, log_rate)

    def log_lik(self, x, w, s, log_mu, log_s=None):
        """Σ_j w_ij log p(x_ij | z), shape S × B (masked entries contribute 0).

        ``log_s`` (S × B, sampled library) replaces log ``s`` when given."""
        if not torch.is_grad_enabled() and x.shape[0] > _EVAL_ROWS:
            return _by_rows(self._log_lik, x, w, s, log_mu, log_s)
        return self._log_lik(x, w, s, log_mu, log_s)

    def _log_lik(self, x, w, s, log_mu, log_s=None):
        if log_s is None and _all_ones(s):
            # s ≡ 1 (the seed's PVAE, s=1): log s = 0 exactly, and skipping the S × B × p
            # addition and its backward saves ~15 % of the likelihood's time per step.
            log_rate = log_mu
        else:
            log_rate = (torch.log(s)[:, None] if log_s is None else log_s[..., None]) + log_mu
        if w is None and self.likelihood == "poisson":
            return poisson_log_lik_rows(x, log_rate)
        ll = self.log_lik_entries(x, log_rate)
        if w is not None:
            ll = torch.where(w > 0, w * ll, torch.zeros_like(ll))
        return ll.sum(-1)

    # --- bounds -------------------------------------------------------------
    def _draws(self, x, c, n_samples, generator):
        """Posterior draws and their log q − log p pieces for z (and log s)."""
        mean, scale = self.encode(x)
        z = self.sample(mean, scale, n_samples, generator)
        out = dict(z=z, mean=mean, scale=scale, log_s=None)
        if self.library == "latent":
            lm, ls = self.library_encoder(x)
            out.update(l_mean=lm[:, 0], l_scale=ls[:, 0])
            out["log_s"] = self.sample(lm[:, 0], ls[:, 0], n_samples, generator)
            out["l_prior"] = self._library_prior(c, x.shape[0])
        return out

    def loss_terms(self, x, w, s, c=None, n_samples: int = 1, generator=None) -> LossTerms:
        """Per-cell ELBO pieces (each shape B, nats), a :class:`~scnotes.vae._train.LossTerms`:
        ``reconstruction`` = E_q[Σ_j w_ij log p(x_ij | z)], ``kl["kl_z"]`` = KL(q(z|x) ‖ N(0, I))
        and, for ``library="latent"``, ``kl["kl_library"]``; ``extra["elbo"]`` =
        reconstruction − Σ kl and ``loss`` = −ELBO."""
        return self._normal_prior_terms(x, w, s, c, n_samples, generator)

    def _normal_prior_terms(self, x, w, s, c, n_samples, generator, kl_weight=1.0, kl_name="kl_z"):
        """The ELBO's record with the N(0, I) prior on the encoder's latent, whose KL is
        logged as ``kl_name`` (GMVAE's pretraining calls it ``kl_x``)."""
        d = self._draws(x, c, n_samples, generator)
        rec = self.log_lik(x, w, s, self.decode(d["z"], c), d["log_s"]).mean(0)
        kl = {kl_name: normal_kl(d["mean"], d["scale"]).sum(-1)}
        if self.library == "latent":
            pm, ps = d["l_prior"]
            kl["kl_library"] = normal_kl(d["l_mean"], d["l_scale"], pm, ps)
        return LossTerms.from_elbo(rec, kl, kl_weight)

    def elbo(self, x, w, s, c=None, n_samples: int = 1, generator=None, analytic_kl: bool = True):
        """Per-cell ELBO, shape B (Monte Carlo over ``n_samples`` draws of z).

        ``analytic_kl=False`` replaces the closed-form KL by its one-draw
        estimate log q(z) − log p(z) on the same draws (higher variance, but
        then the one-sample ELBO equals the one-sample IWAE draw by draw).
        """
        if analytic_kl:
            t = self.loss_terms(x, w, s, c, n_samples, generator)
            return t.reconstruction - t.kl_sum
        return self.iwae_log_weights(x, w, s, c, n_samples, generator).mean(0)

    def iwae_log_weights(self, x, w, s, c=None, n_samples: int = 10, generator=None):
        """log p(x, z⁽ˢ⁾) − log q(z⁽ˢ⁾ | x) for ``n_samples`` draws, shape S × B
        (with ``library="latent"`` the draws are of (z, log s) jointly)."""
        d = self._draws(x, c, n_samples, generator)
        z = d["z"]
        log_w = (self.log_lik(x, w, s, self.decode(z, c), d["log_s"])
                 + self._log_prior(z) - self._log_q(z, d["mean"], d["scale"]))
        if self.library == "latent":
            pm, ps = d["l_prior"]
            ls = d["log_s"]
            log_w = log_w + normal_log_pdf(ls, pm, ps) - normal_log_pdf(ls, d["l_mean"], d["l_scale"])
        return log_w

    def iwae(self, x, w, s, c=None, n_samples: int = 10, generator=None):
        """Per-cell importance-weighted bound with ``n_samples`` draws, shape B."""
        log_w = self.iwae_log_weights(x, w, s, c, n_samples, generator)
        return torch.logsumexp(log_w, dim=0) - math.log(n_samples)

    def training_terms(self, x, w, s, c, n_samples, generator, objective="elbo",
                       kl_weight=1.0) -> LossTerms:
        """What the training plan minimises and logs, a :class:`~scnotes.vae._train.LossTerms`
        of per-cell tensors (B).

        ``objective="elbo"``: ``loss`` = −(reconstruction − ``kl_weight`` Σ kl), with the
        bound at KL weight 1 logged as ``extra["elbo"]``; ``kl_weight`` < 1 is a KL
        warm-up (Bowman et al. 2016; scvi-tools' default), ELBO objective only.
        ``objective="iwae"``: ``loss`` = −IWAE, logged as ``extra["iwae"]``.
        """
        if objective == "iwae":
            return self._iwae_terms(x, w, s, c, n_samples, generator)
        return self._normal_prior_terms(x, w, s, c, n_samples, generator, kl_weight)

    def _iwae_terms(self, x, w, s, c, n_samples, generator) -> LossTerms:
        b = self.iwae(x, w, s, c, n_samples, generator)
        return LossTerms(loss=-b, extra={"iwae": b})

    def objective(self, x, w, s, c, n_samples, generator, kind="elbo"):
        if kind == "elbo":
            return self.elbo(x, w, s, c, n_samples, generator)
        return self.iwae(x, w, s, c, n_samples, generator)

    @staticmethod
    def _log_prior(z):
        return -0.5 * (z * z + _LOG_2PI).sum(-1)

    @staticmethod
    def _log_q(z, mean, scale):
        return normal_log_pdf(z, mean, scale).sum(-1)

    # --- posterior summaries -----------------------------------------------
    def denoise(self, x, w, s, log_mu):
        """E[λ_ij | x_ij, z] with λ = s μ u, for log μ(z) of shape B × p.

        Poisson: s μ. NB: u | x ~ Gamma(x + θ, θ + sμ) ⇒ (x + θ) / (θ/(sμ) + 1).
        ZINB: the NB value times the *posterior* probability of no dropout
        given x (1 for x > 0). Masked entries (w = 0) were not observed, so
        they get the prior mean E[λ | z]: s μ, or (1 − π) s μ for ZINB.
        """
        rate = s[:, None] * torch.exp(log_mu)
        if self.likelihood == "poisson":
            return rate
        theta = self.theta
        post = (x + theta) / (theta / rate + 1)
        if self.likelihood == "zinb":
            post = post * zinb_nonzero_posterior(x, rate, theta, self.logodds)
            prior = rate * torch.sigmoid(-self.logodds)
        else:
            prior = rate
        if w is not None:
            post = torch.where(w > 0, post, prior)
        return post

