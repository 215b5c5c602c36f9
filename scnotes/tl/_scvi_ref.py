"""scvi-tools' ``LinearSCVI`` as a reference beside scnotes' LDVAE: fitted on the same
genes, the same training and validation cells and the same settings, and scored on the
same held-out cells by the same two numbers (held-out ELBO and importance-sampled
marginal log-likelihood, nats per cell; higher is better).

scvi-tools is an optional dependency (the ``book`` extra): it is imported only when
:func:`linear_scvi` runs, and a clear ImportError says how to install it.
"""
from __future__ import annotations

import contextlib
import random
import time

import numpy as np
import torch

from .._checks import check_layer, check_obs_columns
from .._settings import resolve_progress
from ._front import encode_covariates

__all__ = ["linear_scvi", "held_out_scores", "SCVI_INSTALL_HINT"]

SCVI_INSTALL_HINT = ("scnotes.tl.linear_scvi needs scvi-tools (the book extra): "
                     "pip install 'scnotes[book]' (or pip install scvi-tools)")

_LIBRARIES = ("observed", "latent")


def _import_scvi():
    try:
        import scvi
    except ImportError as e:
        raise ImportError(SCVI_INSTALL_HINT) from e
    return scvi


@contextlib.contextmanager
def _global_rng_kept(cpu_only: bool):
    """scvi-tools seeds the global torch / numpy / ``random`` generators
    (``scvi.settings.seed``) and draws from them while training and scoring; this puts
    the caller's states back afterwards."""
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        with torch.random.fork_rng(devices=[] if cpu_only else None):
            yield
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)


def _validation_cells(model):
    val = getattr(model, "validation_indices_", None)
    if val is None or len(val) == 0:
        raise ValueError("the model has no validation cells: fit it with train_size < 1 "
                         "(scnotes.tl.ldvae's default keeps 10 % of the cells for validation)")
    return np.asarray(val)


def held_out_scores(model, adata, layer: str | None = None, mll_samples: int = 1000) -> dict:
    """Held-out ELBO and marginal log-likelihood of a fitted scnotes VAE on its own
    validation cells (``model.validation_indices_``), in nats per cell (means over those
    cells; higher is better).

    ``adata`` is the AnnData the model was fitted on (same cells, same order); counts
    from ``layers[layer]`` (``None``: ``X``). The ELBO is ``model.elbo`` (one draw, the
    model's seed); the marginal log-likelihood ``model.marginal_ll`` with
    ``mll_samples`` importance samples (Burda et al. 2016, eq. 8), a lower bound in
    expectation that tightens as ``mll_samples`` grows.

    Why not ``tl.model_inputs``: its input check refuses genes without counts among the
    validation cells, which a small validation set often has.

    Returns ``{"elbo": float, "marginal_ll": float}``. Raises ValueError when the model
    has no validation cells or ``mll_samples < 1``; KeyError for a missing layer.
    """
    if int(mll_samples) < 1:
        raise ValueError(f"mll_samples must be >= 1, got {mll_samples!r}")
    val = _validation_cells(model)
    counts = check_layer(adata, layer)
    x_val = counts[val]
    c_val = encode_covariates(adata[val], model.covariate_registry_)
    return {"elbo": float(model.elbo(x_val, covariates=c_val).mean()),
            "marginal_ll": float(model.marginal_ll(x_val, covariates=c_val, n_samples=int(mll_samples)).mean())}


def _check_split(adata, train_indices, validation_indices):
    train, val = np.asarray(train_indices, dtype=int), np.asarray(validation_indices, dtype=int)
    if train.size == 0 or val.size == 0:
        raise ValueError("train_indices and validation_indices must both hold cells")
    both = np.concatenate([train, val])
    if both.min() < 0 or both.max() >= adata.n_obs:
        raise ValueError(f"split indices must lie in [0, {adata.n_obs}) (cells of adata)")
    if np.unique(both).size != both.size:
        raise ValueError("train_indices and validation_indices overlap or repeat a cell")
    return train, val


def linear_scvi(adata, train_indices, validation_indices, *, layer: str | None = None,
                batch_key: str | None = None, n_latent: int = 10, max_epochs: int = 250,
                lr: float = 5e-3, batch_size: int = 128, library: str = "observed",
                mll_samples: int = 1000, seed: int = 0, accelerator: str = "cpu",
                progress: bool | None = None, key_added: str = "X_scvi"):
    """Fit scvi-tools' ``LinearSCVI`` (Svensson et al. 2020) on scnotes' split and
    settings, and score it on the validation cells as :func:`held_out_scores` scores
    an LDVAE.

    What is made equal to scnotes' LDVAE (the LDVAE chapter's Methods table): the
    cells (``train_indices``, ``validation_indices``, passed as scvi-tools'
    ``external_indexing``; typically ``model.train_indices_`` and
    ``model.validation_indices_`` of a scnotes fit), ``n_latent``, ``max_epochs``,
    ``batch_size``, Adam with ``lr``, no weight decay and ``eps=1e-8``, no KL warm-up,
    validation every epoch, and the library model: ``"observed"`` (totals,
    ``use_observed_lib_size=True``: the score is log p(x | ℓ)) or ``"latent"``
    (scvi-tools' learned log-normal library: log p(x)). A last minibatch of one cell is
    dropped (BatchNorm cannot train on it).

    ``adata`` (cells × genes raw counts in ``layers[layer]``, ``None``: ``X``) is not
    changed: scvi-tools registers a copy. Randomness: ``scvi.settings.seed = seed``
    (scvi-tools' own way, which also sets its cuDNN flags), inside a block that gives the
    caller's global torch, numpy and ``random`` states back afterwards; same seed and data
    give the same numbers on the same machine.

    Returns ``(adata_copy, model, scores)``: the registered copy with the latent means in
    ``obsm[key_added]`` (n_cells × n_latent), the fitted ``LinearSCVI``, and
    ``{"seconds_per_epoch", "elbo", "marginal_ll"}`` (wall seconds of ``train`` per
    epoch, validation included; held-out ELBO and marginal log-likelihood with
    ``mll_samples`` importance samples, nats per validation cell, each cell's value
    averaged: scvi-tools' ``return_mean=True`` would average minibatch means).

    Raises ImportError (scvi-tools missing), ValueError (unknown ``library``, an empty,
    overlapping or out-of-range split, ``mll_samples < 1``), KeyError (missing layer or
    ``batch_key``).
    """
    if library not in _LIBRARIES:
        raise ValueError(f"library must be one of {_LIBRARIES}, got {library!r}")
    if int(mll_samples) < 1:
        raise ValueError(f"mll_samples must be >= 1, got {mll_samples!r}")
    check_layer(adata, layer)
    check_obs_columns(adata, {batch_key: "batch_key"})
    train, val = _check_split(adata, train_indices, validation_indices)
    scvi = _import_scvi()
    split = dict(external_indexing=[train, val, np.array([], dtype=int)])
    if len(train) % batch_size == 1:
        split["drop_last"] = True
    with _global_rng_kept(cpu_only=accelerator == "cpu"):
        scvi.settings.seed = seed
        b = adata.copy()
        scvi.model.LinearSCVI.setup_anndata(b, layer=layer, batch_key=batch_key)
        v = scvi.model.LinearSCVI(b, n_latent=n_latent, use_observed_lib_size=(library == "observed"))
        t0 = time.perf_counter()
        v.train(max_epochs=max_epochs, batch_size=batch_size, accelerator=accelerator, devices=1,
                check_val_every_n_epoch=1, enable_progress_bar=resolve_progress(progress),
                datasplitter_kwargs=split,
                plan_kwargs=dict(lr=lr, n_epochs_kl_warmup=None, weight_decay=0.0, eps=1e-8))
        seconds = (time.perf_counter() - t0) / max_epochs
        b.obsm[key_added] = v.get_latent_representation()
        mll = v.get_marginal_ll(b, indices=val, n_mc_samples=int(mll_samples), return_mean=False,
                                n_mc_samples_per_pass=min(100, int(mll_samples)))
        elbo = float(v.get_elbo(b, indices=val))
    return b, v, {"seconds_per_epoch": seconds, "elbo": elbo, "marginal_ll": float(mll.mean())}
