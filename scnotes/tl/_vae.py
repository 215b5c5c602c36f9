"""AnnData fronts for the count VAEs: ``pvae``, ``nbvae``, ``zinbvae``.

Each reads raw counts from ``adata.X`` or ``adata.layers[layer]`` (sparse stays
sparse), one-hot encodes the ``obs`` columns named by ``batch_key`` and
``covariate_keys`` as decoder covariates, fits the model, writes the latent
means E_q[z] to ``adata.obsm[key_added]`` (n_cells × latent_dim) and returns
the fitted model (not stored in ``adata``).
"""
from __future__ import annotations

import numpy as np

from .._checks import check_obs_key, counts_from_adata

__all__ = ["pvae", "nbvae", "zinbvae"]


def _covariates(adata, batch_key, covariate_keys):
    keys = ([batch_key] if batch_key is not None else []) + list(covariate_keys or [])
    blocks, names = [], []
    for key in keys:
        col = check_obs_key(adata, key)
        cats = col.cat.categories
        blocks.append((col.cat.codes.to_numpy()[:, None] == np.arange(len(cats))).astype(np.float64))
        names += [f"{key}={c}" for c in cats]
    if not blocks:
        return None, []
    return np.hstack(blocks), names


def _fit(cls, adata, latent_dim, layer, batch_key, covariate_keys, key_added,
         size_factor_key, model_kwargs, fit_kwargs):
    x = counts_from_adata(adata, layer)
    c, names = _covariates(adata, batch_key, covariate_keys)
    s = None
    if size_factor_key is not None:
        if size_factor_key not in adata.obs.columns:
            raise KeyError(f"obs key {size_factor_key!r} not found in adata.obs; "
                           f"available columns: {list(adata.obs.columns)}")
        s = adata.obs[size_factor_key].to_numpy(dtype=np.float64)
    model = cls(x.shape[1], latent_dim, n_covariates=len(names), **(model_kwargs or {}))
    model.fit(x, s=s, covariates=c, **fit_kwargs)
    model.covariate_names_ = names
    adata.obsm[key_added] = model.latent(x, s=s, covariates=c)
    return model


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
    model_kwargs : dict, passed to :class:`scnotes.vae.{name}` (``hidden_dim``,
        ``seed``, ``device``{extra})
    **fit_kwargs : passed to ``fit`` (``lr``, ``max_epochs``, ``batch_size``,
        ``n_samples``, ``objective``, ``progress``, ...)

    Returns
    -------
    scnotes.vae.{name}
        The fitted model; ``covariate_names_`` lists the one-hot columns.
        Writes ``adata.obsm[key_added]`` (n_cells × latent_dim).

    Raises
    ------
    KeyError : a named ``obs`` column or layer is missing (the message names it).
    ValueError : invalid counts or covariates (see :mod:`scnotes._checks`).
    """


def pvae(adata, latent_dim: int = 10, layer=None, batch_key=None, covariate_keys=None,
         key_added: str = "X_pvae", size_factor_key=None, model_kwargs=None, **fit_kwargs):
    from ..vae import PVAE
    return _fit(PVAE, adata, latent_dim, layer, batch_key, covariate_keys, key_added,
                size_factor_key, model_kwargs, fit_kwargs)


def nbvae(adata, latent_dim: int = 10, layer=None, batch_key=None, covariate_keys=None,
          key_added: str = "X_nbvae", size_factor_key=None, model_kwargs=None, **fit_kwargs):
    from ..vae import NBVAE
    return _fit(NBVAE, adata, latent_dim, layer, batch_key, covariate_keys, key_added,
                size_factor_key, model_kwargs, fit_kwargs)


def zinbvae(adata, latent_dim: int = 10, layer=None, batch_key=None, covariate_keys=None,
            key_added: str = "X_zinbvae", size_factor_key=None, model_kwargs=None, **fit_kwargs):
    from ..vae import ZINBVAE
    return _fit(ZINBVAE, adata, latent_dim, layer, batch_key, covariate_keys, key_added,
                size_factor_key, model_kwargs, fit_kwargs)


pvae.__doc__ = _DOC.format(name="PVAE", key="X_pvae", extra="")
nbvae.__doc__ = _DOC.format(name="NBVAE", key="X_nbvae", extra=", ``disp_by_gene``")
zinbvae.__doc__ = _DOC.format(name="ZINBVAE", key="X_zinbvae",
                              extra=", ``disp_by_gene``, ``logodds_by_gene``")
