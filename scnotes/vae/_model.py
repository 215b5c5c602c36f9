"""User-facing count VAEs: :class:`PVAE`, :class:`NBVAE`, :class:`ZINBVAE`.

Model and bounds: see :mod:`scnotes.vae._module`. Departures from the seed's
reference code (scmodes ``lra/vae.py``), each a defect fix or an extension:

* the Gaussian KL is ½(m² + s² − 1 − 2 log s) (the reference has +1);
* the encoder's standard deviation has a floor (softplus + 1e-4);
* ``predict``/``denoise``/``latent``/``elbo``/``iwae`` run in eval mode
  (BatchNorm with its running statistics, no gradient) and restore the
  previous mode afterwards, so they are deterministic and batch-independent;
* ZINB denoising uses the *posterior* non-dropout probability given x;
* per-cell size factors, decoder covariates, missing-data masks, minibatches
  from dense or sparse input, the IWAE objective, seeds and devices.

Size factors (one argument, ``s``, everywhere)
----------------------------------------------
* ``s=None`` (default): s_i = total observed counts of cell i, recomputed
  from whatever ``x`` is passed (cells with no counts are refused). μ(z) is
  then an expression *profile* (expected count per counted molecule).
* ``s=<positive scalar>``: the same size factor for every cell; ``s=1`` means
  "no size factor", as in the seed's simulation (x_ij ~ Poisson(μ(z_i)_j u_ij)).
* ``s=<array of shape (n_cells,)>``: your own positive size factors.

Methods called after ``fit`` with ``s=None`` reuse the convention chosen at
fit time: totals of the new x if the model was fitted with totals, the same
scalar if it was fitted with a scalar; a model fitted with an array needs
``s`` passed explicitly (a ValueError says so). ``s=np.ones(n)`` is accepted
at fit time, but then later calls need ``s`` too: prefer ``s=1``.
"""
from __future__ import annotations

import time

import numpy as np
import scipy.sparse as sp
import torch

from .._checks import check_counts, check_mask
from ._data import CountData, batch_indices
from ._module import CountVAEModule
from ._train import train

__all__ = ["PVAE", "NBVAE", "ZINBVAE"]

_EVAL_BATCH = 2048


class _CountVAE:
    """Shared estimator logic; use :class:`PVAE`, :class:`NBVAE` or :class:`ZINBVAE`."""

    _likelihood = "poisson"

    def __init__(self, input_dim: int, latent_dim: int = 10, hidden_dim: int = 128,
                 n_covariates: int = 0, seed: int = 0, device="cpu", encoder_input: str = "raw",
                 **lik_kwargs):
        for name, v in (("input_dim", input_dim), ("latent_dim", latent_dim),
                        ("hidden_dim", hidden_dim)):
            if int(v) != v or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if int(n_covariates) != n_covariates or n_covariates < 0:
            raise ValueError(f"n_covariates must be a non-negative integer, got {n_covariates!r}")
        self.input_dim, self.latent_dim = int(input_dim), int(latent_dim)
        self.hidden_dim, self.n_covariates = int(hidden_dim), int(n_covariates)
        self.seed = int(seed)
        self.device = torch.device(device)
        self.encoder_input = encoder_input
        self._lik_kwargs = lik_kwargs
        self._s_mode, self._s_value = None, None
        self.trace_ = None
        self._build()

    def _build(self):
        # Parameter initialisation draws from torch's global RNG: seed it in a
        # forked state so the caller's RNG is untouched, then move to device.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            module = CountVAEModule(self.input_dim, self.latent_dim, self.hidden_dim,
                                    self.n_covariates, self._likelihood,
                                    encoder_input=self.encoder_input, **self._lik_kwargs)
        self.module = module.to(self.device)

    # Seed-style access, e.g. ``m.encoder.mean.out_features`` is the latent dimension.
    @property
    def encoder(self):
        return self.module.encoder

    @property
    def decoder(self):
        return self.module.decoder

    def __repr__(self):
        extra = "".join(f", {k}={v!r}" for k, v in self._lik_kwargs.items())
        return (f"{type(self).__name__}(input_dim={self.input_dim}, latent_dim={self.latent_dim}, "
                f"hidden_dim={self.hidden_dim}, n_covariates={self.n_covariates}{extra}, "
                f"encoder_input={self.encoder_input!r}, "
                f"seed={self.seed}, device={str(self.device)!r})")

    # --- input handling -------------------------------------------------------
    def _size_factors(self, x, w, s, fitting: bool):
        n = x.shape[0]
        if s is None:
            mode = "total" if fitting else self._s_mode
            if mode is None:
                raise RuntimeError("the model is not fitted yet; call fit first")
            if mode == "array":
                raise ValueError("this model was fitted with per-cell size factors s=<array>; "
                                 "pass s for the cells you evaluate (or refit with s=None or a scalar)")
            if mode == "scalar":
                return np.full(n, self._s_value), mode
            totals = _observed_totals(x, w)
            bad = np.flatnonzero(totals <= 0)
            if bad.size:
                raise ValueError(
                    f"{bad.size} cell(s) have no observed counts (e.g. row {bad[0]}), so their "
                    "size factor (total count) is 0; remove empty cells or pass s explicitly")
            return totals, "total"
        if hasattr(s, "detach"):
            s = s.detach().cpu().numpy()
        s = np.asarray(s, dtype=np.float64)
        if s.ndim == 0:
            if not (np.isfinite(s) and s > 0):
                raise ValueError(f"size factor s must be positive and finite, got {float(s)}")
            if fitting:
                self._s_value = float(s)
            return np.full(n, float(s)), "scalar"
        if s.shape != (n,):
            raise ValueError(f"size factors s must have shape ({n},) (one per cell), got {s.shape}")
        if not np.all(np.isfinite(s)) or np.any(s <= 0):
            raise ValueError("size factors s must be positive and finite (an empty cell has s = 0)")
        return s, "array"

    def _covariates(self, covariates, n):
        if self.n_covariates == 0:
            if covariates is not None and np.asarray(covariates).size:
                raise ValueError("covariates given but the model has n_covariates=0; "
                                 "build it with n_covariates=<number of columns>")
            return None
        if covariates is None:
            raise ValueError(f"the model has n_covariates={self.n_covariates}; pass covariates "
                             f"of shape ({n}, {self.n_covariates})")
        if sp.issparse(covariates):
            covariates = covariates.toarray()
        if hasattr(covariates, "detach"):
            covariates = covariates.detach().cpu().numpy()
        c = np.asarray(covariates, dtype=np.float64)
        if c.ndim == 1 and self.n_covariates == 1:
            c = c[:, None]
        if c.shape != (n, self.n_covariates):
            raise ValueError(f"covariates must have shape ({n}, {self.n_covariates}), got {c.shape}")
        if not np.all(np.isfinite(c)):
            raise ValueError("covariates contain NaN or infinite values")
        return c

    def _data(self, x, w, s, covariates, fitting=False, need_s=True):
        x = check_counts(x, name="x", allow_empty_cells=True, allow_empty_genes=True)
        if x.shape[1] != self.input_dim:
            raise ValueError(f"x has {x.shape[1]} genes (columns) but the model has input_dim={self.input_dim}")
        w = check_mask(w, x.shape, name="w")
        if need_s:
            s, mode = self._size_factors(x, w, s, fitting)
        else:  # the encoder does not see size factors
            s, mode = np.ones(x.shape[0]), None
        c = self._covariates(covariates, x.shape[0])
        return CountData(x, s, w, c, self.device), mode

    def _evaluate(self, data, fn, seed=None):
        """Run ``fn(x, w, s, c, generator)`` over eval batches in eval mode, concatenate as numpy."""
        if self._s_mode is None:
            raise RuntimeError("the model is not fitted yet; call fit first")
        gen = torch.Generator(device=self.device)
        gen.manual_seed(self.seed if seed is None else int(seed))
        was_training = self.module.training
        self.module.eval()
        try:
            with torch.no_grad():
                out = [fn(*data.get(idx), gen) for idx in batch_indices(data.n, _EVAL_BATCH, None)]
        finally:
            self.module.train(was_training)
        return torch.cat(out).cpu().numpy().astype(np.float64)

    # --- fitting --------------------------------------------------------------
    def fit(self, x, w=None, s=None, covariates=None, lr: float = 1e-2, n_samples: int = 10,
            max_epochs: int = 100, batch_size: int | None = None, objective: str = "elbo",
            optimizer: str = "rmsprop", trace: bool = True, progress: bool = True):
        """Fit by stochastic gradient on the ELBO (or IWAE bound); returns ``self``.

        Parameters
        ----------
        x : array, scipy.sparse matrix or torch tensor, n_cells × n_genes, raw counts
        w : None or matrix n_cells × n_genes in [0, 1]; 1 = observed, 0 = missing
            (contributes nothing, zero-filled for the encoder); fractional values
            weight the log-likelihood. Implicit zeros of a sparse ``w`` are *missing*.
        s : None, positive scalar, or array (n_cells,): size factors (module docstring).
        covariates : None or array n_cells × n_covariates (e.g. one-hot batch),
            concatenated to z as decoder input.
        lr : learning rate. RMSprop with lr 1e-2 (the seed's setting) is the default.
        n_samples : Monte Carlo draws of z per cell and step.
        max_epochs : passes over the data (all of them are run).
        batch_size : None = full batch, one step per epoch (the seed); else cells
            per minibatch, reshuffled every epoch with the model's seed.
        objective : "elbo" or "iwae" (importance-weighted bound with ``n_samples``).
        optimizer : "rmsprop" (default) or "adam".
        trace : record ``trace_``, the per-epoch negative bound summed over cells.
        progress : show a tqdm progress bar.

        Each step minimises −(N/B) Σ_{i∈batch} bound_i (unbiased for the full-data
        negative bound). Refitting restarts from the seeded initialisation, so the
        same seed and data give identical ``trace_`` and ``latent``.

        Raises
        ------
        ValueError : invalid counts (negative, non-integer, NaN), wrong mask or
            covariate shape, a cell with zero total counts when ``s=None``,
            bad ``objective``/``batch_size``/``n_samples``.
        RuntimeError : if the loss becomes NaN.
        """
        if objective not in ("elbo", "iwae"):
            raise ValueError(f"objective must be 'elbo' or 'iwae', got {objective!r}")
        if int(n_samples) != n_samples or n_samples < 1:
            raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}")
        if int(max_epochs) != max_epochs or max_epochs < 0:
            raise ValueError(f"max_epochs must be a non-negative integer, got {max_epochs!r}")
        if batch_size is not None and (int(batch_size) != batch_size or batch_size < 2):
            raise ValueError(f"batch_size must be None or an integer ≥ 2, got {batch_size!r}")
        if not lr > 0:
            raise ValueError(f"lr must be positive, got {lr!r}")
        data, mode = self._data(x, w, s, covariates, fitting=True)
        if data.n < 2:
            raise ValueError("need at least 2 cells (BatchNorm)")
        self._build()
        gen = torch.Generator(device=self.device)
        gen.manual_seed(self.seed)
        rng = np.random.default_rng(self.seed)
        t0 = time.perf_counter()
        self.trace_ = train(self.module, data, lr=lr, n_samples=int(n_samples),
                            max_epochs=int(max_epochs), batch_size=batch_size,
                            objective=objective, optimizer=optimizer, generator=gen, rng=rng,
                            trace=trace, progress=progress, desc=type(self).__name__)
        self.fit_time_ = time.perf_counter() - t0
        self._s_mode = mode
        if self.trace_ is not None:
            self.trace_ = np.asarray(self.trace_)
        return self

    # --- outputs --------------------------------------------------------------
    def latent(self, x, s=None, covariates=None, w=None):
        """E_q[z_i], ndarray n_cells × latent_dim (``s`` and ``covariates`` are not
        used by the encoder; accepted for a uniform call shape)."""
        data, _ = self._data(x, w, s, covariates, need_s=False)
        return self._evaluate(data, lambda x, w, s, c, g: self.module.encode(x)[0])

    def predict(self, x, w=None, s=None, covariates=None, n_samples: int | None = None):
        """Expected counts s_i μ(z_i, c_i)_j, ndarray n_cells × n_genes.

        ``n_samples=None``: plug-in μ(E_q[z]). Otherwise the Monte Carlo average
        of μ(z) over ``n_samples`` draws z ~ q(z | x) (seeded with the model's seed).
        For ZINBVAE this is the NB mean, not multiplied by (1 − π).
        """
        data, _ = self._data(x, w, s, covariates)
        m = self.module

        def fn(x, w, s, c, g):
            mean, scale = m.encode(x)
            # float64 on output: a fitted decoder can put rates below the float32
            # range (~1e-45) and they must not come back as exact zeros.
            if n_samples is None:
                mu = torch.exp(m.decode(mean, c).double())
            else:
                mu = torch.exp(m.decode(m.sample(mean, scale, int(n_samples), g), c).double()).mean(0)
            return s.double()[:, None] * mu
        return self._evaluate(data, fn)

    def denoise(self, x, w=None, s=None, covariates=None):
        """Posterior mean E[λ_ij | x_ij, z_i = E_q[z_i]], ndarray n_cells × n_genes.

        PVAE: s μ (= ``predict``). NBVAE: (x + θ) / (θ / (s μ) + 1). ZINBVAE: that
        times the posterior probability of no dropout given x. Entries with
        w = 0 were not observed and get the prior mean s μ ((1 − π) s μ for ZINB).
        Note: scoring ``denoise(x_val)`` on ``x_val`` itself uses x_val inside the
        NB/ZINB posterior mean and is not a held-out score.
        """
        data, _ = self._data(x, w, s, covariates)
        m = self.module

        def fn(x, w, s, c, g):
            mean, _ = m.encode(x)
            return m.denoise(x.double(), w, s.double(), m.decode(mean, c).double())
        return self._evaluate(data, fn)

    def elbo(self, x, w=None, s=None, covariates=None, n_samples: int = 1,
             analytic_kl: bool = True, seed: int | None = None):
        """Per-cell ELBO (nats), ndarray (n_cells,), averaged over ``n_samples`` draws.

        ``seed`` (default: the model's seed) fixes the draws, so repeated calls
        agree. ``analytic_kl=False`` uses the sampled KL (see ``_module``).
        """
        data, _ = self._data(x, w, s, covariates)
        return self._evaluate(data, lambda x, w, s, c, g: self.module.elbo(
            x, w, s, c, int(n_samples), g, analytic_kl=analytic_kl), seed)

    def iwae(self, x, w=None, s=None, covariates=None, n_samples: int = 100,
             seed: int | None = None):
        """Per-cell IWAE bound with ``n_samples`` importance samples, ndarray (n_cells,)."""
        data, _ = self._data(x, w, s, covariates)
        return self._evaluate(data, lambda x, w, s, c, g: self.module.iwae(
            x, w, s, c, int(n_samples), g), seed)


class PVAE(_CountVAE):
    """Poisson VAE: x_ij ~ Poisson(s_i μ(z_i, c_i)_j), z_i ~ N(0, I).

    Parameters
    ----------
    input_dim : int, number of genes
    latent_dim : int, dimension K of z (default 10)
    hidden_dim : int, width of the two hidden layers of encoder and decoder (128)
    n_covariates : int, columns of ``covariates`` fed to the decoder (0)
    seed : int, seeds initialisation, z draws and minibatch shuffling
    device : torch device ("cpu", "cuda", ...); every tensor lives there
    encoder_input : "raw" (default, as the seed) or "log1p": what the encoder sees

    Fitted attributes: ``trace_`` (per-epoch negative bound), ``fit_time_`` (s).
    Source: seed page "Variational autoencoders for scRNA-seq data";
    Kingma & Welling 2014; Burda et al. 2016 (IWAE); Mattei & Frellsen 2018 (masks).
    """

    _likelihood = "poisson"


class NBVAE(_CountVAE):
    """Negative binomial VAE: x_ij ~ Poisson(s_i μ_ij u_ij), u_ij ~ Gamma(θ_j, θ_j).

    ``disp_by_gene=True``: one inverse dispersion θ_j per gene, else one shared θ.
    Other parameters as :class:`PVAE`. ``theta_``: fitted θ as ndarray (p,) or (1,).
    """

    _likelihood = "nb"

    def __init__(self, input_dim: int, latent_dim: int = 10, disp_by_gene: bool = True, **kwargs):
        super().__init__(input_dim, latent_dim, disp_by_gene=bool(disp_by_gene), **kwargs)

    @property
    def theta_(self):
        """Inverse dispersion θ (NB variance μ + μ²/θ), ndarray (p,) or (1,)."""
        return self.module.inv_disp.detach().cpu().numpy().astype(np.float64)


class ZINBVAE(NBVAE):
    """Zero-inflated NB VAE: u_ij ~ π_j δ_0 + (1 − π_j) Gamma(θ_j, θ_j).

    ``logodds_by_gene=True``: one dropout log-odds per gene, else shared.
    ``logodds_``: fitted log(π / (1 − π)); ``pi_``: dropout probability.
    """

    _likelihood = "zinb"

    def __init__(self, input_dim: int, latent_dim: int = 10, disp_by_gene: bool = True,
                 logodds_by_gene: bool = True, **kwargs):
        _CountVAE.__init__(self, input_dim, latent_dim, disp_by_gene=bool(disp_by_gene),
                           logodds_by_gene=bool(logodds_by_gene), **kwargs)

    @property
    def logodds_(self):
        return self.module.logodds.detach().cpu().numpy().astype(np.float64)

    @property
    def pi_(self):
        return 1 / (1 + np.exp(-self.logodds_))


def _observed_totals(x, w):
    """Σ_j x_ij over observed entries (w_ij > 0), shape (n,); dense or sparse."""
    if w is None:
        return np.asarray(x.sum(axis=1), dtype=np.float64).ravel()
    if sp.issparse(w):
        obs = (w > 0).astype(np.float64)
        tot = obs.multiply(x)
    elif sp.issparse(x):
        tot = x.multiply(np.asarray(w) > 0)
    else:
        tot = x * (np.asarray(w) > 0)
    return np.asarray(tot.sum(axis=1), dtype=np.float64).ravel()
