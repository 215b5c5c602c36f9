"""Input validation shared by every model: one clear error per kind of bad input.

All public fitting functions call these before touching the data, so a user
gets an error that names the problem (negative counts, NaN, an empty cell,
a mask of the wrong shape, a missing ``obs`` column) instead of a silent
wrong answer deep inside an optimiser.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

__all__ = [
    "check_counts",
    "check_mask",
    "check_obs_key",
    "counts_from_adata",
    "size_factors",
]


def _values(x):
    """The stored values of a dense or sparse matrix, without densifying."""
    return x.data if sp.issparse(x) else np.asarray(x)


def check_counts(x, name: str = "X", allow_empty_cells: bool = False,
                 allow_empty_genes: bool = False):
    """Validate a cells × genes matrix of UMI counts.

    Parameters
    ----------
    x : array-like or scipy.sparse matrix, shape (n_cells, n_genes)
        Raw counts. Torch tensors are accepted and moved to NumPy.
    name : str
        Name used in error messages (e.g. ``"adata.layers['counts']"``).
    allow_empty_cells, allow_empty_genes : bool
        Whether all-zero rows / columns are allowed. Size factors and
        per-gene parameters are undefined for them, so the default refuses.

    Returns
    -------
    numpy.ndarray (float64) or scipy.sparse.csr_matrix (float64)
        The same counts; sparse input stays sparse (never densified).

    Raises
    ------
    TypeError
        If ``x`` is not two-dimensional numeric data.
    ValueError
        If ``x`` has NaN/inf, negative or non-integer values, or all-zero
        cells/genes (unless allowed), or is empty.
    """
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    if sp.issparse(x):
        x = sp.csr_matrix(x, dtype=np.float64)
    else:
        x = np.asarray(x)
        if x.dtype == object or not np.issubdtype(x.dtype, np.number):
            raise TypeError(f"{name} must be numeric counts, got dtype {x.dtype}")
        x = x.astype(np.float64, copy=False)
    if x.ndim != 2:
        raise TypeError(f"{name} must be a 2-d cells × genes matrix, got shape {x.shape}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {x.shape})")
    v = _values(x)
    if not np.all(np.isfinite(v)):
        raise ValueError(f"{name} contains NaN or infinite values; counts must be finite")
    if np.any(v < 0):
        raise ValueError(f"{name} contains negative values; expected raw UMI counts")
    if np.any(v != np.round(v)):
        raise ValueError(
            f"{name} contains non-integer values; expected raw UMI counts "
            "(pass the raw counts layer, not normalised or log data)")
    if not allow_empty_cells:
        n_empty = int(np.sum(np.asarray(x.sum(axis=1)).ravel() == 0))
        if n_empty:
            raise ValueError(
                f"{name} has {n_empty} all-zero cells (rows); remove them first, "
                "e.g. sc.pp.filter_cells(adata, min_counts=1)")
    if not allow_empty_genes:
        n_empty = int(np.sum(np.asarray(x.sum(axis=0)).ravel() == 0))
        if n_empty:
            raise ValueError(
                f"{name} has {n_empty} all-zero genes (columns); remove them first, "
                "e.g. sc.pp.filter_genes(adata, min_counts=1)")
    return x


def check_mask(w, shape, name: str = "w"):
    """Validate a missing-data mask/weight matrix of the given shape.

    ``w[i, j] = 1`` marks an observed entry, ``0`` a missing one; values in
    between are weights. Returns float64 ndarray or CSR matrix, or ``None``
    when ``w`` is None.

    Raises
    ------
    ValueError
        If the shape differs from ``shape``, or values are NaN, negative or > 1.
    """
    if w is None:
        return None
    if hasattr(w, "detach"):
        w = w.detach().cpu().numpy()
    w = sp.csr_matrix(w, dtype=np.float64) if sp.issparse(w) else np.asarray(w, dtype=np.float64)
    if tuple(w.shape) != tuple(shape):
        raise ValueError(f"mask {name} has shape {tuple(w.shape)} but the counts have shape {tuple(shape)}")
    v = _values(w)
    if not np.all(np.isfinite(v)) or np.any(v < 0) or np.any(v > 1):
        raise ValueError(f"mask {name} must hold weights in [0, 1] (1 = observed, 0 = missing)")
    return w


def check_obs_key(adata, key: str, min_levels: int = 1):
    """Return ``adata.obs[key]`` as a categorical Series, or raise KeyError naming the key.

    Raises
    ------
    KeyError
        If ``key`` is not an ``obs`` column (the message lists the columns).
    ValueError
        If the column has missing values or fewer than ``min_levels`` levels.
    """
    import pandas as pd

    if key not in adata.obs.columns:
        raise KeyError(f"obs key {key!r} not found in adata.obs; available columns: "
                       f"{list(adata.obs.columns)}")
    col = adata.obs[key]
    if col.isna().any():
        raise ValueError(f"adata.obs[{key!r}] has {int(col.isna().sum())} missing values")
    col = col.astype("category")
    col = col.cat.remove_unused_categories()
    if len(col.cat.categories) < min_levels:
        raise ValueError(f"adata.obs[{key!r}] has {len(col.cat.categories)} level(s); "
                         f"at least {min_levels} needed")
    return pd.Series(col.values, index=adata.obs_names, name=key)


def counts_from_adata(adata, layer: str | None = None):
    """The raw counts of ``adata`` (``X`` or ``layers[layer]``), validated, never copied densely.

    Raises
    ------
    KeyError
        If ``layer`` is given and missing.
    ValueError
        As :func:`check_counts`.
    """
    if layer is None:
        x, name = adata.X, "adata.X"
    else:
        if layer not in adata.layers:
            raise KeyError(f"layer {layer!r} not found in adata.layers; available: {list(adata.layers.keys())}")
        x, name = adata.layers[layer], f"adata.layers[{layer!r}]"
    return check_counts(x, name=name)


def size_factors(x):
    """Library size (total counts) of each cell, shape (n_cells,), for dense or sparse counts."""
    return np.asarray(x.sum(axis=1), dtype=np.float64).ravel()
