"""User-facing count VAEs: :class:`CountVAE` (``likelihood="poisson" | "nb" | "zinb"``) and its
named presets :class:`PVAE`, :class:`NBVAE`, :class:`ZINBVAE`.

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

import math
import time

import numpy as np
import scipy.sparse as sp
import torch

from .._checks import check_counts, check_mask, check_var_names, row_sums
from ._data import CountData, batch_indices
from ._module import LIKELIHOODS, CountVAEModule
from ._lightning import fit_lightning
from .._persist import Persistent

__all__ = ["CountVAE", "PVAE", "NBVAE", "ZINBVAE"]

_EVAL_BATCH = 2048


class CountVAE(Persistent):
    """Count VAE: x_ij ~ p(x | s_i μ(z_i, c_i)_j) with one of ``LIKELIHOODS``, z_i ~ N(0, I).

    The one count-VAE estimator: the likelihood is an argument, as in every VAE of
    :mod:`scnotes.vae` (:class:`~scnotes.vae.LDVAE`, :class:`~scnotes.vae.GMVAE` are this
    class with a part swapped). :class:`PVAE`, :class:`NBVAE` and :class:`ZINBVAE` are its
    named presets (the same model with ``likelihood`` fixed).

    Parameters
    ----------
    input_dim : int, number of genes
    n_latent : int, dimension K of z (default 10; ``latent_dim`` is accepted as its older name)
    hidden_dim : int, width of the two hidden layers of encoder and decoder (128)
    n_covariates : int, columns of ``covariates`` fed to the decoder (0)
    seed : int, seeds initialisation, z draws and minibatch shuffling
    device : torch device ("cpu", "cuda", ...); every tensor lives there
    encoder_input : "raw" (default, as the seed) or "log1p": what the encoder sees
    n_batches : int, the first ``n_batches`` covariate columns are a batch one-hot
        (set by ``scnotes.tl``; used by ``normalized_expression(batch=...)``)
    likelihood : "poisson", "nb" (default) or "zinb": x_ij ~ Poisson(s μ u) with u = 1,
        u ~ Gamma(θ_j, θ_j), or u ~ π_j δ_0 + (1 − π_j) Gamma(θ_j, θ_j)
    theta_by_gene : bool, NB / ZINB: one inverse dispersion θ_j per gene (True), else one
        shared θ (``disp_by_gene`` is accepted as its older name)
    logodds_by_gene : bool, ZINB: one dropout log-odds per gene (True), else shared
    decoder_batch_norm : bool, BatchNorm in the decoder's hidden layers (default True).
        False is scmodes' decoder (Linear → ReLU): on the seed simulation (latent 10,
        3,000 epochs) 1.03× scmodes' CPU time instead of 1.27×, but a held-out
        log-likelihood per entry of −3.86 instead of −2.94 (scmodes −3.89)
    decoder_output : "softplus" (default: μ = softplus(·), the expected count per unit size
        factor, the seed's) or "softmax" (scvi-tools': μ an expression profile over genes,
        times the total counts); see :class:`scnotes.vae.MLPDecoder`
    decoder_layers : int, hidden layers of the decoder (default 2; scvi-tools' SCVI uses 1)

    Fitted attributes: ``history_`` (training record, see :meth:`fit`), ``trace_``
    (its loss summed over cells, the older record; deprecated), ``fit_time_`` (s); ``theta_``
    (NB / ZINB) and ``logodds_``, ``pi_`` (ZINB).

    Raises
    ------
    ValueError : a size not a positive integer, ``n_batches`` outside [0, n_covariates],
        an unknown ``likelihood`` or ``encoder_input``.

    Source: seed page "Variational autoencoders for scRNA-seq data";
    Kingma & Welling 2014; Burda et al. 2016 (IWAE); Mattei & Frellsen 2018 (masks).
    """

    def __init__(self, input_dim: int, n_latent: int = 10, hidden_dim: int = 128,
                 n_covariates: int = 0, seed: int = 0, device="cpu", encoder_input: str = "raw",
                 n_batches: int = 0, *, likelihood: str = "nb", theta_by_gene: bool = True,
                 logodds_by_gene: bool = True, latent_dim: int | None = None,
                 disp_by_gene: bool | None = None, **module_kwargs):
        if latent_dim is not None:  # the older name of n_latent
            n_latent = latent_dim
        if disp_by_gene is not None:  # the older name of theta_by_gene
            theta_by_gene = disp_by_gene
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
        for name, v in (("input_dim", input_dim), ("n_latent", n_latent),
                        ("hidden_dim", hidden_dim)):
            if int(v) != v or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if int(n_covariates) != n_covariates or n_covariates < 0:
            raise ValueError(f"n_covariates must be a non-negative integer, got {n_covariates!r}")
        if int(n_batches) != n_batches or not 0 <= n_batches <= n_covariates:
            raise ValueError(f"n_batches must be an integer in [0, n_covariates={n_covariates}], "
                             f"got {n_batches!r}")
        self.input_dim, self.n_latent = int(input_dim), int(n_latent)
        self.hidden_dim, self.n_covariates = int(hidden_dim), int(n_covariates)
        self.n_batches = int(n_batches)
        self.seed = int(seed)
        self.device = torch.device(device)
        self.encoder_input = encoder_input
        self.likelihood = likelihood
        self.theta_by_gene, self.logodds_by_gene = bool(theta_by_gene), bool(logodds_by_gene)
        self._module_kwargs = module_kwargs
        self._s_mode, self._s_value = None, None
        self.history_ = None
        self.var_names_ = None
        self.covariate_registry_ = None
        self.covariate_names_ = None
        self._build()

    @property
    def _likelihood(self):
        """The older private name of ``likelihood``."""
        return self.likelihood

    def _lik_params(self) -> dict:
        """The likelihood's own options, only those that apply (θ for NB / ZINB, π for ZINB)."""
        kw = {}
        if self.likelihood != "poisson":
            kw["theta_by_gene"] = self.theta_by_gene
        if self.likelihood == "zinb":
            kw["logodds_by_gene"] = self.logodds_by_gene
        return kw

    @property
    def latent_dim(self):
        """The older name of ``n_latent``."""
        return self.n_latent

    def _init_kwargs(self):
        """Constructor arguments that rebuild this model (used by :meth:`save`)."""
        return dict(input_dim=self.input_dim, n_latent=self.n_latent, hidden_dim=self.hidden_dim,
                    n_covariates=self.n_covariates, seed=self.seed, encoder_input=self.encoder_input,
                    n_batches=self.n_batches, likelihood=self.likelihood, **self._lik_params(),
                    **self._module_kwargs)

    def _make_module(self):
        """The ``nn.Module``; subclasses swap parts here (LDVAE: the decoder)."""
        return CountVAEModule(self.input_dim, self.n_latent, self.hidden_dim,
                              self.n_covariates, self.likelihood,
                              encoder_input=self.encoder_input, n_batches=self.n_batches,
                              **self._lik_params(), **self._module_kwargs)

    @property
    def theta_(self):
        """Fitted NB inverse dispersion θ (variance μ + μ²/θ), ndarray (p,) or (1,);
        AttributeError for a Poisson model."""
        if self.likelihood == "poisson":
            raise AttributeError(f"a Poisson {type(self).__name__} has no inverse dispersion theta_")
        return self.module.theta.detach().cpu().numpy().astype(np.float64)

    @property
    def logodds_(self):
        """Fitted dropout log-odds log(π / (1 − π)), ndarray (p,) or (1,); ZINB only."""
        if self.likelihood != "zinb":
            raise AttributeError(f"only a ZINB {type(self).__name__} has dropout log-odds logodds_")
        return self.module.logodds.detach().cpu().numpy().astype(np.float64)

    @property
    def pi_(self):
        """Fitted dropout probability π = sigmoid(``logodds_``); ZINB only."""
        return 1 / (1 + np.exp(-self.logodds_))

    def _build(self):
        # Parameter initialisation draws from torch's global RNG: seed it in a
        # forked state so the caller's RNG is untouched, then move to device.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            module = self._make_module()
        self.module = module.to(self.device)

    @property
    def trace_(self):
        """Per-epoch training loss summed over the training cells (nats), ndarray, or
        None before fitting: ``history_["loss"]`` at full-data scale (the older record;
        deprecated, it goes in the next release: read ``history_``)."""
        import warnings

        # stacklevel=1: attributed to scnotes, never to a chapter's __main__, so it does not land
        # on an executed page (the pattern of scnotes.tl._front._caller_stacklevel).
        warnings.warn("`trace_` is the older record; read history_['loss'] (nats per cell) "
                      "times the training cells", DeprecationWarning, stacklevel=1)
        if self.history_ is None:
            return None
        return self.history_["loss"].to_numpy() * self._n_train

    # Seed-style access, e.g. ``m.encoder.mean.out_features`` is the latent dimension.
    @property
    def encoder(self):
        return self.module.encoder

    @property
    def decoder(self):
        return self.module.decoder

    def get_params(self) -> dict:
        """Constructor arguments (scikit-learn style), used by :meth:`save` and ``repr``."""
        return dict(self._init_kwargs(), device=str(self.device))

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

    def _data(self, x, w, s, covariates, fitting=False, need_s=True, checked=False):
        # checked: counts a scnotes.tl front already validated (one check per front call)
        if not checked:
            x = check_counts(x, name="x", allow_empty_cells=True, allow_empty_genes=True, dtype=None)
        if x.shape[1] != self.input_dim:
            raise ValueError(f"x has {x.shape[1]} genes (columns) but the model has input_dim={self.input_dim}")
        w = check_mask(w, x.shape, name="w")
        if need_s:
            s, mode = self._size_factors(x, w, s, fitting)
        else:  # the encoder does not see size factors
            s, mode = np.ones(x.shape[0]), None
        c = self._covariates(covariates, x.shape[0])
        return CountData(x, s, w, c, self.device), mode

    def _evaluate(self, data, fn, seed=None, batch_size=_EVAL_BATCH):
        """Run ``fn(x, w, s, c, generator)`` over eval batches in eval mode, concatenate as numpy."""
        if self._s_mode is None:
            raise RuntimeError("the model is not fitted yet; call fit first")
        gen = torch.Generator(device=self.device)
        gen.manual_seed(self.seed if seed is None else int(seed))
        was_training = self.module.training
        self.module.eval()
        try:
            with torch.no_grad():
                out = [fn(*data.get(idx), gen) for idx in batch_indices(data.n, batch_size, None)]
        finally:
            self.module.train(was_training)
        return torch.cat(out).cpu().numpy().astype(np.float64)

    # --- fitting --------------------------------------------------------------
    def fit(self, x, w=None, s=None, covariates=None, lr: float = 1e-2, n_samples: int = 10,
            max_epochs: int = 100, batch_size: int | None = None, objective: str = "elbo",
            optimizer: str = "rmsprop", trace: bool = True, progress: bool | None = None,
            train_size: float = 1.0, early_stopping: bool = False, patience: int = 45,
            min_delta: float = 0.0, kl_warmup_epochs: int = 0, weight_decay: float = 0.0,
            accelerator: str | None = None, devices=None, strategy=None, trainer_kwargs=None, *,
            var_names=None, covariate_registry=None, _checked: bool = False):
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
        max_epochs : passes over the training cells (fewer with early stopping), or
            "auto": :func:`epochs_for` the number of training cells and ``batch_size``.
        batch_size : None = full batch, one step per epoch (the seed); else cells
            per minibatch, reshuffled every epoch with the model's seed.
        objective : "elbo" or "iwae" (importance-weighted bound with ``n_samples``).
        optimizer : "rmsprop" (default) or "adam".
        trace : kept for older callers; the training record ``history_`` is always kept.
        progress : show a progress bar (None: ``scnotes.settings.progress``, on only in an
            interactive session).
        train_size : fraction of cells used for training (1.0: all, the seed); the
            rest, a random subset drawn with the model's seed (``validation_indices_``),
            is scored every epoch into ``history_["validation_…"]``.
        early_stopping : stop when the validation loss has not improved by
            ``min_delta`` nats per cell for ``patience`` epochs and restore the best
            epoch's weights (``best_epoch_``); needs ``train_size`` < 1.
        kl_warmup_epochs : KL weight rising linearly to 1 over this many epochs
            (0: none, the seed; scvi-tools uses 400). ELBO objective only.
        weight_decay : L2 penalty of the optimiser (scvi-tools: 1e-6 with Adam).
        accelerator, devices, strategy : passed to the Lightning ``Trainer`` that
            trains the model (default: the model's device, one process). E.g.
            ``strategy="ddp", devices=2`` trains data-parallel in two processes
            (effective batch size = ``batch_size`` × processes).
        trainer_kwargs : dict, further ``lightning.pytorch.Trainer`` arguments
            (e.g. ``num_nodes`` for several machines).
        var_names : None or sequence of n_genes names, the genes (columns of ``x``), kept as
            ``var_names_`` (saved with the model; :func:`scnotes.tl.model_inputs` and
            ``map_query`` match new data by them). None: the genes are unknown.
        covariate_registry : None or ``[(obs key, [categories…]), …]``, the categorical
            covariates whose one-hot columns, in this order (the batch first when
            ``n_batches`` > 0), make up ``covariates``; kept as ``covariate_registry_``, with
            the column names ``covariate_names_`` (``"key=category"``). ``scnotes.tl``
            passes both; a refit without them leaves them None (scikit-learn's way).

        Each step minimises −(N/B) Σ_{i∈batch} bound_i (an estimate of the full-data
        negative bound, unbiased up to the BatchNorm batch dependence). Refitting
        restarts from the seeded initialisation, so the same seed and data give an
        identical ``history_`` and ``latent``.

        Fitted attributes: ``history_`` (DataFrame, one row per epoch, nats per cell:
        ``loss``, ``elbo``, ``reconstruction``, ``kl_z``, … and ``validation_…``),
        ``best_epoch_``, ``n_epochs_`` (epochs run), ``fit_time_`` (s),
        ``train_indices_``, ``validation_indices_``, ``var_names_``,
        ``covariate_registry_``, ``covariate_names_``.

        Raises
        ------
        ValueError : invalid counts (negative, non-integer, NaN), wrong mask or
            covariate shape, a cell with zero total counts when ``s=None``,
            bad ``objective``/``batch_size``/``n_samples``/``train_size``, early
            stopping without a validation set; ``var_names`` not of length n_genes, or a
            ``covariate_registry`` whose categories do not add up to ``n_covariates`` (or
            whose first key does not have ``n_batches`` categories).
        RuntimeError : if the loss becomes NaN.
        """
        genes = check_var_names(var_names, self.input_dim)
        registry, covariate_names = _covariate_layout(covariate_registry, self.n_covariates, self.n_batches)
        if objective not in ("elbo", "iwae"):
            raise ValueError(f"objective must be 'elbo' or 'iwae', got {objective!r}")
        if int(n_samples) != n_samples or n_samples < 1:
            raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}")
        if isinstance(max_epochs, str):
            if max_epochs != "auto":
                raise ValueError(f"max_epochs must be an integer or 'auto', got {max_epochs!r}")
            n_fit = x.shape[0] if train_size >= 1 else int(math.ceil(train_size * x.shape[0]))
            max_epochs = epochs_for(n_fit, batch_size)
        if int(max_epochs) != max_epochs or max_epochs < 0:
            raise ValueError(f"max_epochs must be a non-negative integer, got {max_epochs!r}")
        if batch_size is not None and (int(batch_size) != batch_size or batch_size < 2):
            raise ValueError(f"batch_size must be None or an integer ≥ 2, got {batch_size!r}")
        if not lr > 0:
            raise ValueError(f"lr must be positive, got {lr!r}")
        if not 0 < train_size <= 1:
            raise ValueError(f"train_size must lie in (0, 1], got {train_size!r}")
        if kl_warmup_epochs and objective != "elbo":
            raise ValueError("kl_warmup_epochs applies to the ELBO objective only")
        data, mode = self._data(x, w, s, covariates, fitting=True, checked=_checked)
        rng = np.random.default_rng(self.seed)
        train_idx, val_idx = _split(data.n, train_size, rng)
        if len(train_idx) < 2:
            raise ValueError("need at least 2 training cells (BatchNorm)")
        if early_stopping and len(val_idx) == 0:
            raise ValueError("early_stopping needs a validation set: pass train_size < 1")
        self._build()
        self._before_training(data, train_idx)
        gen = torch.Generator(device=self.device)
        gen.manual_seed(self.seed)
        t0 = time.perf_counter()
        # Dropout draws from torch's global RNG: seed it inside a fork so runs are
        # reproducible and the caller's global state is left as it was.
        with torch.random.fork_rng(devices=_fork_devices(self.device)):
            torch.manual_seed(self.seed)
            self.history_, self.best_epoch_ = self._train(data, train_idx, val_idx, gen, rng, dict(
                lr=lr, n_samples=int(n_samples), max_epochs=int(max_epochs), batch_size=batch_size,
                objective=objective, optimizer=optimizer, progress=progress,
                early_stopping=early_stopping, patience=int(patience), min_delta=float(min_delta),
                kl_warmup_epochs=int(kl_warmup_epochs), weight_decay=float(weight_decay),
                accelerator=accelerator, devices=devices, strategy=strategy,
                **(trainer_kwargs or {})))
        self.fit_time_ = time.perf_counter() - t0
        self.n_epochs_ = len(self.history_)
        self._n_train = len(train_idx)
        self.train_indices_, self.validation_indices_ = train_idx, val_idx
        self._s_mode = mode
        self.var_names_, self.covariate_registry_ = genes, registry
        self.covariate_names_ = covariate_names
        return self

    def _train(self, data, train_idx, val_idx, gen, rng, kw):
        """Train through the one engine, PyTorch Lightning (:mod:`scnotes.vae._lightning`)."""
        return fit_lightning(self.module, data, generator=gen, rng=rng, desc=type(self).__name__,
                             train_idx=train_idx, validation_idx=val_idx if len(val_idx) else None, **kw)

    def _before_training(self, data, train_idx):
        """Set data-dependent module state before training (the library prior)."""
        m = self.module
        if getattr(m, "library", "observed") != "latent":
            return
        _, _, s, c = data.get(np.asarray(train_idx))
        log_s = torch.log(s).double().cpu().numpy()
        if self.n_batches:
            codes = c[:, :self.n_batches].argmax(1).cpu().numpy()
            groups = [log_s[codes == b] for b in range(self.n_batches)]
        else:
            groups = [log_s]
        # An empty batch keeps the overall prior (it only matters if such cells come later).
        mean = [g.mean() if len(g) else log_s.mean() for g in groups]
        var = [g.var() if len(g) > 1 else log_s.var() for g in groups]
        m.set_library_prior(np.asarray(mean), np.maximum(np.asarray(var), 1e-4))

    # --- outputs --------------------------------------------------------------
    def latent(self, x, s=None, covariates=None, w=None, *, _checked: bool = False):
        """E_q[z_i], ndarray n_cells × n_latent (softmax of the mean for the
        logistic-normal latent). ``s`` and ``covariates`` are not used by the
        encoder; accepted for a uniform call shape."""
        data, _ = self._data(x, w, s, covariates, need_s=False, checked=_checked)
        m = self.module
        return self._evaluate(data, lambda x, w, s, c, g: m.transform_latent(m.encode(x)[0]))

    def _rates(self, data, n_samples):
        """s_i μ(z_i, c_i)_j in float64 (plug-in or averaged over draws of q)."""
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

    def predict(self, x, w=None, s=None, covariates=None, n_samples: int | None = None):
        """The model's expected count E[x_ij | z_i, c_i], ndarray n_cells × n_genes.

        s_i μ(z_i, c_i)_j for Poisson and NB; (1 − π_j) s_i μ_ij for ZINB (the
        zero-inflation is part of the model's mean). ``n_samples=None``: plug-in
        at z = E_q[z]; otherwise the average over ``n_samples`` draws z ~ q(z | x)
        (seeded with the model's seed). :meth:`nb_mean` gives s μ alone.
        """
        rate = self.nb_mean(x, w, s, covariates, n_samples)
        if self.likelihood == "zinb":
            rate = rate * (1 / (1 + np.exp(self.logodds_)))
        return rate

    def nb_mean(self, x, w=None, s=None, covariates=None, n_samples: int | None = None):
        """s_i μ(z_i, c_i)_j, the Poisson rate / NB mean before any zero-inflation,
        ndarray n_cells × n_genes (equals :meth:`predict` except for ZINB)."""
        data, _ = self._data(x, w, s, covariates)
        return self._rates(data, n_samples)

    def normalized_expression(self, x, covariates=None, batch=None, library_size=None,
                              n_samples: int = 25, w=None):
        """Posterior mean of the expression profile ρ_i = μ_i / Σ_j μ_ij, ndarray
        n_cells × n_genes, rows summing to one (or to ``library_size``).

        Averaged over ``n_samples`` draws z ~ q(z | x) (seeded). ``batch`` sets
        the batch covariate of every cell to one batch (scvi-tools'
        ``transform_batch``: expression with the batch effect removed): a category
        name of the model's ``batch_key`` (fitted through ``scnotes.tl``) or the
        index of a column of the batch one-hot block (the first ``n_batches``
        covariate columns). For LDVAE ρ is the decoder's softmax itself.

        Raises
        ------
        ValueError : ``batch`` given but the model has no batch covariate, or an
            unknown batch name / index.
        """
        n = x.shape[0]
        if batch is not None:
            col = self._batch_column(batch)
            covariates = self._covariates(covariates, n).copy()
            covariates[:, :self.n_batches] = 0.0
            covariates[:, col] = 1.0
        data, _ = self._data(x, w, None, covariates, need_s=False)
        m = self.module

        def fn(x, w, s, c, g):
            mean, scale = m.encode(x)
            log_mu = m.decode(m.sample(mean, scale, int(n_samples), g), c).double()
            return torch.softmax(log_mu, dim=-1).mean(0)
        rho = self._evaluate(data, fn)
        return rho if library_size is None else rho * float(library_size)

    def _batch_column(self, batch):
        if self.n_batches == 0:
            raise ValueError("batch given but the model has no batch covariate "
                             "(fit it with batch_key=... through scnotes.tl, or n_batches > 0)")
        if isinstance(batch, (int, np.integer)):
            if not 0 <= batch < self.n_batches:
                raise ValueError(f"batch index {batch} out of range [0, {self.n_batches})")
            return int(batch)
        reg = self.covariate_registry_ or []
        if not reg:
            raise ValueError("a batch name needs the category registry of a model fitted through "
                             "scnotes.tl; pass the batch's column index instead")
        key, cats = reg[0]
        if str(batch) not in [str(c) for c in cats]:
            raise ValueError(f"unknown {key} {batch!r}; the model knows {list(cats)}")
        return [str(c) for c in cats].index(str(batch))

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

    def reconstruction_error(self, x, w=None, s=None, covariates=None, n_samples: int = 1,
                             seed: int | None = None):
        """Per-cell −E_q[Σ_j log p(x_ij | z_i)] (nats), ndarray (n_cells,), eval mode."""
        data, _ = self._data(x, w, s, covariates)
        return -self._evaluate(data, lambda x, w, s, c, g: self.module.loss_terms(
            x, w, s, c, int(n_samples), g).reconstruction, seed)

    def iwae(self, x, w=None, s=None, covariates=None, n_samples: int = 100,
             seed: int | None = None):
        """Per-cell IWAE bound with ``n_samples`` importance samples, ndarray (n_cells,)."""
        data, _ = self._data(x, w, s, covariates)
        return self._evaluate(data, lambda x, w, s, c, g: self.module.iwae(
            x, w, s, c, int(n_samples), g), seed)

    def marginal_ll(self, x, w=None, s=None, covariates=None, n_samples: int = 1000,
                    chunk: int = 100, seed: int | None = None):
        """Importance-sampled log p(x_i) per cell (nats), ndarray (n_cells,).

        log (1/S) Σ_s p(x_i, z⁽ˢ⁾)/q(z⁽ˢ⁾ | x_i) with S = ``n_samples`` draws from
        the encoder (the IWAE bound, Burda et al. 2016; scvi-tools'
        ``get_marginal_ll``), drawn in chunks of ``chunk`` so memory stays at
        chunk × cells × genes. A lower bound on log p(x_i) in expectation that
        rises to it as S grows. With an observed library it is log p(x | s), as
        scvi-tools computes with ``use_observed_lib_size``.
        """
        data, _ = self._data(x, w, s, covariates)
        m = self.module
        n_samples = int(n_samples)

        def fn(x, w, s, c, g):
            parts, left = [], n_samples
            while left > 0:
                k = min(chunk, left)
                parts.append(m.iwae_log_weights(x, w, s, c, k, g).double())
                left -= k
            return torch.logsumexp(torch.cat(parts), dim=0) - math.log(n_samples)
        return self._evaluate(data, fn, seed, batch_size=max(16, 2048 // max(1, chunk // 10)))

    # --- persistence ----------------------------------------------------------
    def save(self, path):
        """Write the model to ``path`` (exactly that file; the one scnotes format, see
        :mod:`scnotes._persist`): ``get_params()``, weights, fitted state, training record,
        the genes it was fitted on (``var_names_``) and its covariate category registry."""
        from .._persist import save_model

        save_model(self, path)

    def _get_state(self):
        return dict(module=self.module.state_dict(), s_mode=self._s_mode, s_value=self._s_value,
                    n_train=getattr(self, "_n_train", None), history=self.history_,
                    covariate_names=getattr(self, "covariate_names_", None),
                    fit_time=getattr(self, "fit_time_", None), extra=self._extra_state())

    @classmethod
    def _from_state(cls, params, state, device="cpu"):
        model = cls(**dict(params, device=device))
        model.module.load_state_dict(state["module"])
        model._s_mode, model._s_value, model._n_train = state["s_mode"], state["s_value"], state["n_train"]
        model.history_ = state["history"]
        if model.history_ is not None:
            model.n_epochs_ = len(model.history_)  # one history row per epoch run
        if state.get("covariate_names") is not None:
            model.covariate_names_ = list(state["covariate_names"])
        if state.get("fit_time") is not None:
            model.fit_time_ = state["fit_time"]
        model._load_extra(state.get("extra") or {})
        return model

    def _extra_state(self):
        return {}

    def _load_extra(self, extra):
        pass

    @classmethod
    def _load_legacy(cls, state, device="cpu"):
        """The format written before :mod:`scnotes._persist` (a torch pickle of ``cls``,
        ``init``, ``module``, ``fitted``)."""
        import pandas as pd

        model = cls(**state["init"], device=device)
        model.module.load_state_dict({k: v.to(model.device) for k, v in state["module"].items()})
        f = state["fitted"]
        model._s_mode, model._s_value, model._n_train = f["s_mode"], f["s_value"], f["n_train"]
        model.var_names_ = None if f["var_names"] is None else np.asarray(f["var_names"], dtype=object)
        model.covariate_registry_ = f["registry"]
        model.history_ = None if f["history"] is None else pd.DataFrame(f["history"])
        if model.history_ is not None:
            model.n_epochs_ = len(model.history_)
        model._load_extra(f.get("extra", {}))
        return model


def _covariate_layout(registry, n_covariates: int, n_batches: int):
    """(registry, one-hot column names ``"key=category"``) checked against the model's
    ``n_covariates`` / ``n_batches`` columns; (None, None) without a registry."""
    if registry is None:
        return None, None
    registry = [(key, list(cats)) for key, cats in registry]
    n_columns = sum(len(cats) for _, cats in registry)
    if n_columns != n_covariates:
        raise ValueError(f"covariate_registry has {n_columns} categories in all but the model has "
                         f"n_covariates={n_covariates} one-hot columns")
    if n_batches and len(registry[0][1]) != n_batches:
        raise ValueError(f"the registry's first key ({registry[0][0]!r}, the batch) has "
                         f"{len(registry[0][1])} categories but the model has n_batches={n_batches}")
    return registry, [f"{key}={cat}" for key, cats in registry for cat in cats]


def epochs_for(n_cells: int, batch_size: int | None, min_steps: int = 2000, cap: int = 400) -> int:
    """Training length that adapts to the data size.

    scvi-tools' heuristic, min(round(20,000 / n_cells · 400), 400) epochs (so
    large data get fewer passes), raised so that training takes at least
    ``min_steps`` optimiser steps (a 600-cell file at batch 128 has 5 steps per
    epoch: a fixed epoch count tuned on 60,000 cells would leave it untrained).
    """
    steps = 1 if batch_size is None else max(1, math.ceil(n_cells / batch_size))
    return int(max(min(round(20000 / max(n_cells, 1) * cap), cap), math.ceil(min_steps / steps)))


def _fork_devices(device):
    """Devices whose RNG :func:`torch.random.fork_rng` must save for ``device``."""
    return [device.index or 0] if device.type == "cuda" else []


def _split(n: int, train_size: float, rng: np.random.Generator):
    """Random train / validation split of range(n), as scvi-tools: ⌈train_size · n⌉
    training cells. ``train_size=1`` draws nothing (so fits without validation
    shuffle exactly as before)."""
    if train_size >= 1:
        return np.arange(n), np.arange(0)
    n_train = int(math.ceil(train_size * n))
    perm = rng.permutation(n)
    return np.sort(perm[:n_train]), np.sort(perm[n_train:])




def _preset(cls, likelihood: str) -> str:
    """``likelihood`` checked against a preset's own: a preset fixes it."""
    if likelihood != cls._preset_likelihood:
        raise ValueError(f"{cls.__name__} is the {cls._preset_likelihood!r} preset of CountVAE; for "
                         f"likelihood={likelihood!r} use CountVAE(likelihood={likelihood!r})")
    return likelihood


class PVAE(CountVAE):
    """Poisson VAE, :class:`CountVAE` with ``likelihood="poisson"``:
    x_ij ~ Poisson(s_i μ(z_i, c_i)_j), z_i ~ N(0, I). Parameters as :class:`CountVAE`."""

    _preset_likelihood = "poisson"

    def __init__(self, input_dim: int, n_latent: int = 10, *args, likelihood: str = "poisson", **kwargs):
        super().__init__(input_dim, n_latent, *args, likelihood=_preset(type(self), likelihood), **kwargs)


class NBVAE(CountVAE):
    """Negative binomial VAE, :class:`CountVAE` with ``likelihood="nb"``:
    x_ij ~ Poisson(s_i μ_ij u_ij), u_ij ~ Gamma(θ_j, θ_j). ``theta_``: fitted θ."""

    _preset_likelihood = "nb"

    def __init__(self, input_dim: int, n_latent: int = 10, *args, likelihood: str = "nb", **kwargs):
        super().__init__(input_dim, n_latent, *args, likelihood=_preset(type(self), likelihood), **kwargs)


class ZINBVAE(CountVAE):
    """Zero-inflated NB VAE, :class:`CountVAE` with ``likelihood="zinb"``:
    u_ij ~ π_j δ_0 + (1 − π_j) Gamma(θ_j, θ_j). ``logodds_``: fitted log(π / (1 − π));
    ``pi_``: dropout probability; ``theta_``: θ."""

    _preset_likelihood = "zinb"

    def __init__(self, input_dim: int, n_latent: int = 10, *args, likelihood: str = "zinb", **kwargs):
        super().__init__(input_dim, n_latent, *args, likelihood=_preset(type(self), likelihood), **kwargs)


def _observed_totals(x, w):
    """Σ_j x_ij over observed entries (w_ij > 0), shape (n,); dense, sparse or backed."""
    return row_sums(x, w)
