"""AnnData fronts for the count VAEs: ``pvae``, ``nbvae``, ``zinbvae``, ``ldvae``.

Each is its estimator (:mod:`scnotes.vae`) plus the slots it writes; reading the
AnnData, the shared keywords, the record in ``uns`` and the copy protocol are
:mod:`scnotes.tl._front`'s. Each reads raw counts from ``adata.X`` or
``adata.layers[layer]`` (sparse stays sparse), one-hot encodes the ``obs`` columns
named by ``batch_key`` and ``covariate_keys`` as decoder covariates, fits the model,
writes the latent means E_q[z] to ``adata.obsm[key_added]`` (n_cells × n_latent) and
returns the fitted model (not stored in ``adata``).
"""
from __future__ import annotations


from ._front import (SHARED, begin, check_genes, encode_covariates, finish, fit_default,  # noqa: F401
                     lift_model_kwargs, model_inputs, record, renamed, resolve_progress, route_kwargs,
                     setup, slot_keys)
from ._front import covariate_registry  # noqa: F401  (older import path)

__all__ = ["pvae", "nbvae", "zinbvae", "ldvae", "check_genes", "encode_covariates", "model_inputs"]


def fit_vae(cls, adata, *, front, n_latent, max_epochs, batch_size, seed, device, progress, layer,
            batch_key, covariate_keys, size_factor_key, key_added, copy, model_kwargs, kwargs,
            params=None):
    """Shared body of the VAE fronts: read ``adata`` (:func:`~scnotes.tl._front.setup`), build
    ``cls`` with the shared keywords and the constructor's ``kwargs``, fit with the ``fit``
    ones (every other training argument keeps ``cls.fit``'s own default: one set of defaults
    per model, whatever the entry point), store the latent in ``obsm[key_added]`` and the call in
    ``uns[key_added]``. Returns ``(adata, model, inputs)``."""
    kwargs = dict(kwargs)
    n_latent = renamed(kwargs, "latent_dim", "n_latent", n_latent, SHARED["n_latent"], front)
    shared = dict(n_latent=n_latent, seed=seed, device=device)
    init_kw = lift_model_kwargs(model_kwargs, shared, front)
    i_kw, f_kw = route_kwargs(cls, kwargs)
    init_kw.update(i_kw)
    fit_kw = dict(f_kw)
    if max_epochs is not None:
        fit_kw["max_epochs"] = max_epochs
    if batch_size is not None:
        fit_kw["batch_size"] = batch_size
    adata = begin(adata, copy)
    inputs = setup(adata, layer, batch_key, covariate_keys, size_factor_key)
    model = cls(inputs.x.shape[1], n_covariates=inputs.n_covariates, n_batches=inputs.n_batches,
                **shared, **init_kw)
    model.fit(inputs.x, **inputs.fit_data(), progress=resolve_progress(progress), **fit_kw)
    # setup() validated the counts; the model's own outputs need not check them again
    adata.obsm[key_added] = model.latent(inputs.x, s=inputs.s, covariates=inputs.covariates, _checked=True)
    used = {k: fit_kw.get(k, fit_default(cls, k)) for k in ("max_epochs", "batch_size")}
    record(adata, key_added, dict(params or {}, **shared, **used, layer=layer, batch_key=batch_key,
                                  covariate_keys=covariate_keys, size_factor_key=size_factor_key,
                                  **init_kw, **{k: v for k, v in fit_kw.items() if k not in used}),
           model)
    return adata, model, inputs


_SHARED_DOC = """n_latent : int, dimension of the latent space (``latent_dim``: older name, deprecated)
    max_epochs : int or None, passes over the cells (None: {epochs})
    batch_size : int or None, cells per minibatch (None: {batch})
    seed : int, seeds every draw (initialisation, minibatches, dropout); the caller's
        global random state is untouched
    device : str, torch device ("cpu", "cuda", ...)
    progress : bool or None, progress bar (None: ``scnotes.settings.progress``, on only in
        an interactive session)
    copy : bool, work on a copy of ``adata`` (the input is left unchanged) and return
        ``(adata_copy, model)``"""

_DOC = """Fit a {name} to the counts of ``adata`` and store its latent means.

    Parameters
    ----------
    adata : AnnData, n_cells × n_genes raw counts in ``X`` or ``layers[layer]``
    layer : str or None, layer holding the counts (None: ``adata.X``)
    batch_key : str or None, ``obs`` column one-hot encoded as decoder covariates
    covariate_keys : list of str or None, further categorical ``obs`` columns (one-hot)
    size_factor_key : str or None, ``obs`` column of positive size factors
        (None: total counts per cell)
    key_added : str, ``obsm`` key for the latent means (default ``"{key}"``)
    {shared}
    **kwargs : keywords of :class:`scnotes.vae.{name}` (``hidden_dim``, ``encoder_input``{extra})
        and of its ``fit`` (``lr``, ``n_samples``, ``objective``, ``optimizer``, ``train_size``,
        ``early_stopping``, ...), each sent where it belongs. ``model_kwargs=dict(...)`` is the
        older, deprecated way to pass the constructor's.

    Returns
    -------
    scnotes.vae.{name}
        The fitted model (``(adata, model)`` with ``copy=True``); ``covariate_names_``
        lists the one-hot columns, ``covariate_registry_`` the categories per key,
        ``var_names_`` the genes. Writes ``adata.obsm[key_added]`` (n_cells ×
        n_latent) and the call's parameters to ``adata.uns[key_added]["params"]``.

    Raises
    ------
    KeyError : a named ``obs`` column or layer is missing (the message names it).
    ValueError : invalid counts, size factors or covariates (see :mod:`scnotes._checks`).
    TypeError : an unknown keyword, or a keyword given under its new and its old name.
    """

_VAE_SHARED = _SHARED_DOC.format(epochs="``fit``'s default, 100", batch="full batch, one step per epoch")


def _count_vae(cls, front, adata, n_latent, layer, batch_key, covariate_keys, key_added, size_factor_key,
               max_epochs, batch_size, seed, device, progress, copy, model_kwargs, kwargs):
    adata, model, _ = fit_vae(cls, adata, front=front, n_latent=n_latent, max_epochs=max_epochs,
                              batch_size=batch_size, seed=seed, device=device, progress=progress,
                              layer=layer, batch_key=batch_key, covariate_keys=covariate_keys,
                              size_factor_key=size_factor_key, key_added=key_added, copy=copy,
                              model_kwargs=model_kwargs, kwargs=kwargs)
    return finish(adata, model, copy)


def pvae(adata, n_latent: int = 10, *, layer=None, batch_key=None, covariate_keys=None,
         size_factor_key=None, key_added: str = "X_pvae", max_epochs: int | None = None,
         batch_size: int | None = None, seed: int = 0, device: str = "cpu", progress: bool | None = None,
         copy: bool = False, model_kwargs=None, **kwargs):
    from ..vae import PVAE
    return _count_vae(PVAE, "pvae", adata, n_latent, layer, batch_key, covariate_keys, key_added,
                      size_factor_key, max_epochs, batch_size, seed, device, progress, copy, model_kwargs,
                      kwargs)


def nbvae(adata, n_latent: int = 10, *, layer=None, batch_key=None, covariate_keys=None,
          size_factor_key=None, key_added: str = "X_nbvae", max_epochs: int | None = None,
          batch_size: int | None = None, seed: int = 0, device: str = "cpu", progress: bool | None = None,
          copy: bool = False, model_kwargs=None, **kwargs):
    from ..vae import NBVAE
    return _count_vae(NBVAE, "nbvae", adata, n_latent, layer, batch_key, covariate_keys, key_added,
                      size_factor_key, max_epochs, batch_size, seed, device, progress, copy, model_kwargs,
                      kwargs)


def zinbvae(adata, n_latent: int = 10, *, layer=None, batch_key=None, covariate_keys=None,
            size_factor_key=None, key_added: str = "X_zinbvae", max_epochs: int | None = None,
            batch_size: int | None = None, seed: int = 0, device: str = "cpu", progress: bool | None = None,
            copy: bool = False, model_kwargs=None, **kwargs):
    from ..vae import ZINBVAE
    return _count_vae(ZINBVAE, "zinbvae", adata, n_latent, layer, batch_key, covariate_keys, key_added,
                      size_factor_key, max_epochs, batch_size, seed, device, progress, copy, model_kwargs,
                      kwargs)


pvae.__doc__ = _DOC.format(name="PVAE", key="X_pvae", extra="", shared=_VAE_SHARED)
nbvae.__doc__ = _DOC.format(name="NBVAE", key="X_nbvae", extra=", ``theta_by_gene``", shared=_VAE_SHARED)
zinbvae.__doc__ = _DOC.format(name="ZINBVAE", key="X_zinbvae",
                              extra=", ``theta_by_gene``, ``logodds_by_gene``", shared=_VAE_SHARED)


def ldvae(adata, n_latent: int = 10, *, layer=None, batch_key=None, covariate_keys=None,
          size_factor_key=None, key_added: str = "X_ldvae", varm_key: str | None = None,
          max_epochs: int | None = None, batch_size: int | None = None, seed: int = 0, device: str = "cpu",
          progress: bool | None = None, copy: bool = False, model_kwargs=None, **kwargs):
    """Fit an :class:`~scnotes.vae.LDVAE` to the counts of ``adata``; store latent and loadings.

    Parameters
    ----------
    adata : AnnData, n_cells × n_genes raw counts in ``X`` or ``layers[layer]``
    layer : str or None, layer holding the counts (None: ``adata.X``, as every front)
    batch_key : str or None, ``obs`` column whose one-hot enters the decoder
        (per-batch gene offsets; with ``library="latent"`` also the library prior)
    covariate_keys : list of str or None, further categorical ``obs`` columns
    size_factor_key : str or None, ``obs`` column of library sizes (None: totals)
    key_added : str, ``obsm`` key of the latent means (n_cells × n_latent)
    varm_key : str or None, ``varm`` key of the loadings (n_genes × n_latent;
        default: ``key_added`` without its ``X_`` prefix, e.g. ``"ldvae"``)
    {shared}
    **kwargs : keywords of :class:`scnotes.vae.LDVAE` (``likelihood``, ``decoder_batch_norm``,
        ``library``, ``latent_distribution``, ...) and of :meth:`LDVAE.fit` (``lr``,
        ``train_size``, ``early_stopping``, ``optimizer``, ...); unless told otherwise the
        model trains with :meth:`LDVAE.fit`'s own defaults (Adam, lr 5e-3, batches of 128,
        90 % of the cells, one draw, 250 epochs), the same as ``LDVAE().fit()``.
        ``model_kwargs=dict(...)``: older, deprecated.

    Returns
    -------
    scnotes.vae.LDVAE
        The fitted model (``(adata, model)`` with ``copy=True``). Writes ``obsm[key_added]``,
        ``varm[varm_key]`` (the folded loadings, :meth:`LDVAE.get_loadings`, not centred) and
        ``uns[key_added]`` (``params``, ``varm_key``).

    Raises
    ------
    KeyError : a named ``obs`` column or layer is missing.
    ValueError : invalid counts, ``n_latent`` < 1, cells or genes with no counts.
    """
    from ..vae import LDVAE

    if int(n_latent) != n_latent or n_latent < 1:
        raise ValueError(f"n_latent must be a positive integer, got {n_latent!r}")
    adata, model, _ = fit_vae(LDVAE, adata, front="ldvae", n_latent=n_latent, max_epochs=max_epochs,
                              batch_size=batch_size, seed=seed, device=device, progress=progress,
                              layer=layer, batch_key=batch_key, covariate_keys=covariate_keys,
                              size_factor_key=size_factor_key, key_added=key_added, copy=copy,
                              model_kwargs=model_kwargs, kwargs=kwargs)
    keys = slot_keys(key_added, varm="{base}")
    vk = varm_key or keys["varm"]
    adata.varm[vk] = model.get_loadings().to_numpy()
    adata.uns[key_added]["varm_key"] = vk
    return finish(adata, model, copy)


ldvae.__doc__ = ldvae.__doc__.format(shared=_SHARED_DOC.format(
    epochs="250, ``LDVAE.fit``'s default", batch="128, ``LDVAE.fit``'s default"))
