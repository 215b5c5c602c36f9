"""The linearly decoded VAE (LDVAE; Svensson et al. 2020, Bioinformatics 36:3418).

The count VAE with one part swapped: the decoder is linear,

    ρ_i = softmax_genes(W z_i + B c_i [+ b]),   x_ij ~ NB(ℓ_i ρ_ij, θ_j)

(Poisson and ZINB as options), so each column of W is a gene program: the
genes whose share of a cell's counts moves with one latent dimension.
Encoder, likelihoods, size factors (ℓ_i = total counts by default), masks,
minibatches, validation split and the training loop are those of
:mod:`scnotes.vae`.

Departures from scvi-tools' ``LinearSCVI`` (each measured in the LDVAE chapter):
the library is observed (total counts) by default, where scvi-tools learns a
log-normal library per batch (``library="latent"`` here does the same); the
encoder scale is softplus + 1e-4 rather than √(exp(·) + 1e-4); no KL warm-up
unless asked (``kl_warmup_epochs``).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from ._model import CountVAE
from ._module import CountVAEModule, LinearDecoder

__all__ = ["LDVAE"]


class LDVAE(CountVAE):
    """Linearly decoded VAE with interpretable gene loadings.

    Parameters
    ----------
    input_dim : int, number of genes p
    n_latent : int, K latent dimensions = gene programs (default 10)
    hidden_dim : int, width of the encoder's hidden layers (128, scvi-tools)
    n_layers : int, encoder hidden layers (1, scvi-tools)
    dropout : float, encoder dropout (0.1, scvi-tools)
    likelihood : "nb" (default), "poisson" or "zinb"
    decoder_batch_norm : bool, True: scvi-tools' decoder, BatchNorm on W [z, c]
        and no bias; False: plain a = W [z, c] + b, whose loadings are W itself
    latent_distribution : "normal" or "ln" (logistic normal, softmax(z) decoded)
    library : "observed" (ℓ_i given, total counts by default) or "latent"
        (log ℓ_i ~ N(m_b, v_b) per batch, fitted as in scvi-tools)
    n_covariates, n_batches : covariate columns fed to the decoder (batch one-hot
        first, ``n_batches`` columns); they enter linearly (per-batch gene offsets)
    encoder_input : "log1p" (default, scvi-tools) or "raw"
    theta_by_gene, logodds_by_gene : per-gene θ / dropout log-odds (NB / ZINB)
    seed, device : as the other VAEs

    Fitted attributes as :class:`~scnotes.vae.CountVAE` (``theta_`` for NB / ZINB,
    ``logodds_`` for ZINB). :meth:`fit` trains with scvi-tools' LinearSCVI tutorial
    settings (Adam, lr 5e-3, batches of 128, 90 % of the cells, 250 epochs), the same
    through ``LDVAE().fit()`` and :func:`scnotes.tl.ldvae`.

    Raises
    ------
    ValueError : at construction, naming the argument and its value: ``n_layers`` not a
        positive integer, ``dropout`` outside [0, 1) (checked here); a size not a positive
        integer, an unknown ``likelihood`` or ``encoder_input``, ``n_batches`` outside
        [0, n_covariates] (:class:`~scnotes.vae.CountVAE`); an unknown
        ``latent_distribution`` or ``library`` (:class:`~scnotes.vae.CountVAEModule`).
    """

    def __init__(self, input_dim: int, n_latent: int = 10, hidden_dim: int = 128,
                 n_layers: int = 1, dropout: float = 0.1, likelihood: str = "nb",
                 decoder_batch_norm: bool = True, latent_distribution: str = "normal",
                 library: str = "observed", n_covariates: int = 0, n_batches: int = 0,
                 encoder_input: str = "log1p", seed: int = 0, device="cpu", **lik_kwargs):
        # latent_distribution, library, likelihood, encoder_input and n_batches are
        # validated where they are used, by CountVAE and the CountVAEModule that
        # _build() makes below; the module does not check the encoder's n_layers and
        # dropout, so they are checked here.
        if int(n_layers) != n_layers or n_layers < 1:
            raise ValueError(f"n_layers must be a positive integer, got {n_layers!r}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout!r}")
        self.n_layers, self.dropout = int(n_layers), float(dropout)
        self.decoder_batch_norm = bool(decoder_batch_norm)
        self.latent_distribution, self.library = latent_distribution, library
        super().__init__(input_dim, n_latent, hidden_dim, n_covariates=n_covariates, seed=seed,
                         device=device, encoder_input=encoder_input, n_batches=n_batches,
                         likelihood=likelihood, **lik_kwargs)

    def _init_kwargs(self):
        return dict(super()._init_kwargs(), n_layers=self.n_layers, dropout=self.dropout,
                    decoder_batch_norm=self.decoder_batch_norm,
                    latent_distribution=self.latent_distribution, library=self.library)

    def _make_module(self):
        dec = LinearDecoder(self.n_latent, self.n_covariates, self.input_dim, self.decoder_batch_norm)
        return CountVAEModule(self.input_dim, self.n_latent, self.hidden_dim, self.n_covariates,
                              self.likelihood, encoder_input=self.encoder_input,
                              n_layers=self.n_layers, dropout=self.dropout, decoder=dec,
                              latent_distribution=self.latent_distribution, library=self.library,
                              n_batches=self.n_batches, **self._lik_params(), **self._module_kwargs)

    def fit(self, x, w=None, s=None, covariates=None, lr: float = 5e-3, n_samples: int = 1,
            max_epochs: int = 250, batch_size: int | None = 128, optimizer: str = "adam",
            train_size: float = 0.9, **kwargs):
        """Fit as :meth:`scnotes.vae.CountVAE.fit` (same arguments and errors); returns ``self``.

        The LDVAE's own defaults, those of scvi-tools' LinearSCVI tutorial: Adam with
        lr 5e-3, minibatches of 128, 90 % of the cells for training (the rest scored
        every epoch, ``validation_…``), one draw of z per cell and step, 250 epochs.
        """
        return super().fit(x, w, s, covariates, lr=lr, n_samples=n_samples, max_epochs=max_epochs,
                           batch_size=batch_size, optimizer=optimizer, train_size=train_size, **kwargs)

    def get_loadings(self, centre: bool = False) -> pd.DataFrame:
        """Gene loadings, DataFrame n_genes × n_latent, columns ``Z_0 … Z_{K−1}``.

        Column k holds the effect of z_k on the decoder's pre-softmax output a:
        with BatchNorm, the BatchNorm scale γ / √(running_var + ε) is folded into
        W as scvi-tools does (so a = loadings · z + a per-gene constant in eval
        mode); without it the loadings are W itself. Covariate (batch) columns
        are dropped. Rows are named by ``var_names_`` when the model was fitted
        through ``scnotes.tl``.

        Softmax over genes is unchanged when the same constant is added to every
        gene's loading, so each factor is defined only up to such a shift:
        ``centre=True`` subtracts each column's mean over genes, which makes
        factors comparable and is what to rank genes by.
        """
        with torch.no_grad():
            w = self.module.decoder.loadings().detach().cpu().numpy().astype(np.float64)
        if centre:
            w = w - w.mean(axis=0, keepdims=True)
        index = (pd.Index(self.var_names_, name="gene") if self.var_names_ is not None
                 else pd.RangeIndex(self.input_dim, name="gene"))
        return pd.DataFrame(w, index=index, columns=[f"Z_{k}" for k in range(self.n_latent)])

    def top_genes(self, n: int = 5) -> pd.DataFrame:
        """The ``n`` genes with the largest and the smallest centred loading of each
        factor: DataFrame with columns factor, direction ("+"/"−"), rank, gene, loading."""
        load = self.get_loadings(centre=True)
        rows = []
        for f in load.columns:
            col = load[f].sort_values()
            for direction, genes in (("+", col.index[::-1][:n]), ("-", col.index[:n])):
                for r, g in enumerate(genes):
                    rows.append(dict(factor=f, direction=direction, rank=r + 1, gene=g,
                                     loading=float(load.at[g, f])))
        return pd.DataFrame(rows)
