"""AnnData fronts for the count VAEs: ``pvae``, ``nbvae``, ``zinbvae``.

Each reads raw counts from ``adata.X`` or ``adata.layers[layer]`` (sparse stays
sparse), one-hot encodes the ``obs`` columns named by ``batch_key`` and
``covariate_keys`` as decoder covariates, fits the model, writes the latent
means E_q[z] to ``adata.obsm[key_added]`` (n_cells × latent_dim) and returns
the fitted model (not stored in ``adata``).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .._checks import check_obs_key, counts_from_adata

__all__ = ["pvae", "nbvae", "zinbvae", "ldvae", "check_genes", "encode_covariates", "model_inputs"]


def covariate_registry(adata, batch_key=None, covariate_keys=None):
    """[(key, categories), ...] for the categorical ``obs`` columns that become
    decoder covariates, the batch first. Raises KeyError / ValueError as
    :func:`scnotes._checks.check_obs_key` (missing column, missing values)."""
    keys = ([batch_key] if batch_key is not None else []) + list(covariate_keys or [])
    return [(key, [str(c) for c in check_obs_key(adata, key).cat.categories]) for key in keys]


def encode_covariates(adata, registry):
    """One-hot covariates of ``adata`` laid out by ``registry`` (categories matched
    by name, so a new AnnData with other or reordered levels maps to the columns
    the model was fitted with): ndarray n_cells × Σ levels, or None if empty.

    Raises
    ------
    KeyError : a registry key is not an ``obs`` column.
    ValueError : a cell has a category the model was not fitted with, or a missing value.
    """
    blocks = []
    for key, cats in registry or []:
        col = check_obs_key(adata, key).astype(str)
        unknown = sorted(set(col) - set(cats))
        if unknown:
            raise ValueError(f"adata.obs[{key!r}] has categories the model was not fitted with: "
                             f"{unknown[:5]}; the model knows {cats}")
        codes = pd.Categorical(col, categories=cats).codes
        blocks.append((codes[:, None] == np.arange(len(cats))).astype(np.float64))
    return np.hstack(blocks) if blocks else None


def check_genes(model, adata):
    """Raise ValueError unless ``adata.var_names`` are the genes ``model`` was
    fitted on, in the same order (the message names the first difference)."""
    ref = getattr(model, "var_names_", None)
    if ref is None:
        return
    new = np.asarray(adata.var_names, dtype=object)
    if len(new) != len(ref):
        raise ValueError(f"adata has {len(new)} genes but the model was fitted on {len(ref)}; "
                         "subset adata to model.var_names_ (same order)")
    diff = np.flatnonzero(new != np.asarray(ref, dtype=object))
    if diff.size:
        k = diff[0]
        raise ValueError(f"adata.var_names differ from the model's genes (position {k}: "
                         f"{new[k]!r} vs {ref[k]!r}); use adata[:, model.var_names_]")


def model_inputs(model, adata, layer=None):
    """(counts, covariates) of a new ``adata`` for a model fitted through
    ``scnotes.tl``: genes checked (:func:`check_genes`), covariates encoded by
    the model's registry (:func:`encode_covariates`)."""
    check_genes(model, adata)
    return counts_from_adata(adata, layer), encode_covariates(adata, model.covariate_registry_)


def record(adata, key_added, params, model):
    """Store a ``tl`` call's parameters in ``adata.uns[key_added]`` (scanpy style)."""
    adata.uns[key_added] = {"params": {k: v for k, v in params.items() if v is not None},
                            "model": type(model).__name__}


def fit_front(cls, adata, *, layer, batch_key, covariate_keys, key_added, size_factor_key,
              model_kwargs, fit_kwargs, copy=False, n_latent=None, params=None):
    """Shared body of the VAE fronts: read counts and covariates, fit, store the
    latent in ``obsm[key_added]`` and the parameters in ``uns[key_added]``.
    Returns ``(adata, model, x, s, c)``."""
    if copy:
        adata = adata.copy()
    x = counts_from_adata(adata, layer)
    registry = covariate_registry(adata, batch_key, covariate_keys)
    c = encode_covariates(adata, registry)
    n_cov = 0 if c is None else c.shape[1]
    n_batches = len(registry[0][1]) if batch_key is not None else 0
    s = None
    if size_factor_key is not None:
        if size_factor_key not in adata.obs.columns:
            raise KeyError(f"obs key {size_factor_key!r} not found in adata.obs; "
                           f"available columns: {list(adata.obs.columns)}")
        s = adata.obs[size_factor_key].to_numpy(dtype=np.float64)
    kw = dict(model_kwargs or {})
    if n_latent is not None:
        kw["n_latent"] = n_latent
    model = cls(x.shape[1], n_covariates=n_cov, n_batches=n_batches, **kw)
    model.var_names_ = np.asarray(adata.var_names, dtype=object)
    model.covariate_registry_ = registry
    model.covariate_names_ = [f"{k}={v}" for k, cats in registry for v in cats]
    model.fit(x, s=s, covariates=c, **fit_kwargs)
    adata.obsm[key_added] = model.latent(x, s=s, covariates=c)
    record(adata, key_added, dict(params or {}, layer=layer, batch_key=batch_key,
                                  covariate_keys=covariate_keys, size_factor_key=size_factor_key,
                                  **{k: v for k, v in fit_kwargs.items() if np.isscalar(v)},
                                  **{k: v for k, v in kw.items() if np.isscalar(v)}), model)
    return adata, model, x, s, c


def _fit(cls, adata, latent_dim, layer, batch_key, covariate_keys, key_added,
         size_factor_key, model_kwargs, fit_kwargs, copy=False):
    adata, model, *_ = fit_front(cls, adata, layer=layer, batch_key=batch_key,
                                 covariate_keys=covariate_keys, key_added=key_added,
                                 size_factor_key=size_factor_key, model_kwargs=model_kwargs,
                                 fit_kwargs=fit_kwargs, copy=copy, n_latent=latent_dim)
    return (adata, model) if copy else model


_DOC = """Fit a {name} to the counts of ``adata`` and store its latent means.

    Parameters
    ----------
    adata : AnnData, n_cells × n_genes raw counts in ``X`` or ``layers[layer]``
    latent_dim : int, dimension of z
    layer : str or None, layer holding the counts (None: ``adata.X``)
    batch_key : str or None, ``obs`` column one-hot encoded as decoder covariates
    covariate_keys : list of str or None, further categorical ``obs`` columns (one-hot)
    key_added : str, ``obsm`` key for the latent means (default ``"{key}"``)
    size_factor_key : str or None, ``obs`` column of positive size factors
        (None: total counts per cell)
    copy : bool, work on a copy of ``adata`` and return ``(adata_copy, model)``
    model_kwargs : dict, passed to :class:`scnotes.vae.{name}` (``hidden_dim``,
        ``seed``, ``device``{extra})
    **fit_kwargs : passed to ``fit`` (``lr``, ``max_epochs``, ``batch_size``,
        ``n_samples``, ``objective``, ``progress``, ...)

    Returns
    -------
    scnotes.vae.{name}
        The fitted model (``(adata, model)`` with ``copy=True``); ``covariate_names_``
        lists the one-hot columns, ``covariate_registry_`` the categories per key,
        ``var_names_`` the genes. Writes ``adata.obsm[key_added]`` (n_cells ×
        latent_dim) and the call's parameters to ``adata.uns[key_added]``.

    Raises
    ------
    KeyError : a named ``obs`` column or layer is missing (the message names it).
    ValueError : invalid counts or covariates (see :mod:`scnotes._checks`).
    """


def pvae(adata, latent_dim: int = 10, layer=None, batch_key=None, covariate_keys=None,
         key_added: str = "X_pvae", size_factor_key=None, model_kwargs=None, copy: bool = False,
         **fit_kwargs):
    from ..vae import PVAE
    return _fit(PVAE, adata, latent_dim, layer, batch_key, covariate_keys, key_added,
                size_factor_key, model_kwargs, fit_kwargs, copy)


def nbvae(adata, latent_dim: int = 10, layer=None, batch_key=None, covariate_keys=None,
          key_added: str = "X_nbvae", size_factor_key=None, model_kwargs=None, copy: bool = False,
          **fit_kwargs):
    from ..vae import NBVAE
    return _fit(NBVAE, adata, latent_dim, layer, batch_key, covariate_keys, key_added,
                size_factor_key, model_kwargs, fit_kwargs, copy)


def zinbvae(adata, latent_dim: int = 10, layer=None, batch_key=None, covariate_keys=None,
            key_added: str = "X_zinbvae", size_factor_key=None, model_kwargs=None, copy: bool = False,
            **fit_kwargs):
    from ..vae import ZINBVAE
    return _fit(ZINBVAE, adata, latent_dim, layer, batch_key, covariate_keys, key_added,
                size_factor_key, model_kwargs, fit_kwargs, copy)


pvae.__doc__ = _DOC.format(name="PVAE", key="X_pvae", extra="")
nbvae.__doc__ = _DOC.format(name="NBVAE", key="X_nbvae", extra=", ``theta_by_gene``")
zinbvae.__doc__ = _DOC.format(name="ZINBVAE", key="X_zinbvae",
                              extra=", ``theta_by_gene``, ``logodds_by_gene``")


def ldvae(adata, n_latent: int = 10, layer="counts", batch_key=None, covariate_keys=None,
          key_added: str = "X_ldvae", varm_key: str | None = None, size_factor_key=None,
          model_kwargs=None, copy: bool = False, **fit_kwargs):
    """Fit an :class:`~scnotes.vae.LDVAE` to the counts of ``adata``; store latent and loadings.

    Parameters
    ----------
    adata : AnnData, n_cells × n_genes raw counts in ``layers[layer]`` (default
        ``"counts"``; ``layer=None`` reads ``X``)
    n_latent : int, number of latent factors (gene programs)
    batch_key : str or None, ``obs`` column whose one-hot enters the decoder
        (per-batch gene offsets; with ``library="latent"`` also the library prior)
    covariate_keys : list of str or None, further categorical ``obs`` columns
    key_added : str, ``obsm`` key of the latent means (n_cells × n_latent)
    varm_key : str or None, ``varm`` key of the loadings (n_genes × n_latent;
        default: ``key_added`` without its ``X_`` prefix, e.g. ``"ldvae"``)
    size_factor_key : str or None, ``obs`` column of library sizes (None: totals)
    model_kwargs : dict, passed to :class:`scnotes.vae.LDVAE` (``likelihood``,
        ``decoder_batch_norm``, ``library``, ``latent_distribution``, ``seed``, ...)
    copy : bool, work on a copy of ``adata`` and return ``(adata_copy, model)``
    **fit_kwargs : passed to :meth:`LDVAE.fit` (``max_epochs``, ``lr``,
        ``batch_size``, ``train_size``, ``early_stopping``, ``optimizer``, ...)

    Returns
    -------
    scnotes.vae.LDVAE
        The fitted model. Writes ``obsm[key_added]``, ``varm[varm_key]`` (the
        folded loadings, :meth:`LDVAE.get_loadings`, not centred) and
        ``uns[key_added]`` (parameters).

    Raises
    ------
    KeyError : a named ``obs`` column or layer is missing.
    ValueError : invalid counts, ``n_latent`` < 1, cells or genes with no counts.
    """
    from ..vae import LDVAE

    if int(n_latent) != n_latent or n_latent < 1:
        raise ValueError(f"n_latent must be a positive integer, got {n_latent!r}")
    fit_kwargs.setdefault("optimizer", "adam")
    fit_kwargs.setdefault("lr", 5e-3)
    fit_kwargs.setdefault("batch_size", 128)
    fit_kwargs.setdefault("train_size", 0.9)
    fit_kwargs.setdefault("n_samples", 1)
    fit_kwargs.setdefault("max_epochs", 250)
    adata, model, *_ = fit_front(LDVAE, adata, layer=layer, batch_key=batch_key,
                                 covariate_keys=covariate_keys, key_added=key_added,
                                 size_factor_key=size_factor_key, model_kwargs=model_kwargs,
                                 fit_kwargs=fit_kwargs, copy=copy, n_latent=n_latent,
                                 params=dict(n_latent=n_latent))
    vk = varm_key or (key_added[2:] if key_added.startswith("X_") else key_added)
    adata.varm[vk] = model.get_loadings().to_numpy()
    adata.uns[key_added]["varm_key"] = vk
    return (adata, model) if copy else model
