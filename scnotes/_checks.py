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
    "is_backed",
    "row_sums",
    "check_mask",
    "check_obs_key",
    "check_obs_columns",
    "check_layer",
    "check_key",
    "check_obsm_key",
    "check_genes",
    "check_var_names",
    "key_error",
    "counts_from_adata",
    "size_factors",
]


def _values(x):
    """The stored values of a dense or sparse matrix, without densifying."""
    return x.data if sp.issparse(x) else np.asarray(x)


_VALUE_CHUNK = 1 << 22  # values per check: temporaries of a few MB, not copies of the data


def _float_dtype(have, want):
    """``want``, or with ``want=None`` the input's own float32 / float64 (float64 otherwise)."""
    if want is not None:
        return want
    return have if have in (np.float32, np.float64) else np.float64


def _check_values(v, name):
    """Finite, non-negative, integer, checked in chunks so that a 10⁸-value matrix
    gets no full-size temporaries (``np.round`` alone would copy it)."""
    for i in range(0, v.size, _VALUE_CHUNK):
        c = v[i:i + _VALUE_CHUNK]
        if not np.all(np.isfinite(c)):
            raise ValueError(f"{name} contains NaN or infinite values; counts must be finite")
        if np.any(c < 0):
            raise ValueError(f"{name} contains negative values; expected raw UMI counts")
        if np.any(c != np.round(c)):
            raise ValueError(
                f"{name} contains non-integer values; expected raw UMI counts "
                "(pass the raw counts layer, not normalised or log data)")


def is_backed(x) -> bool:
    """True for a matrix that lives on disk: the ``X`` of an AnnData opened with
    ``backed="r"`` (an anndata CSR/CSC dataset) or an h5py dataset."""
    try:
        from anndata.abc import CSCDataset, CSRDataset
    except ImportError:  # older anndata
        CSRDataset = CSCDataset = ()
    import h5py

    return isinstance(x, (CSRDataset, CSCDataset, h5py.Dataset))


_CHUNK = 20000


def _check_backed(x, name, allow_empty_cells, allow_empty_genes):
    """Validate a backed matrix chunk by chunk (never loads it whole); returns it."""
    fmt = getattr(x, "format", None)
    if fmt != "csr":
        kind = "CSC" if fmt == "csc" else "dense"
        raise ValueError(
            f"{name} is a backed {kind} matrix; training reads rows, so it must be CSR on disk "
            "(rewrite it: adata = anndata.read_h5ad(path); adata.X = scipy.sparse.csr_matrix(adata.X); "
            "adata.write_h5ad(new_path))")
    n, p = x.shape
    if n == 0 or p == 0:
        raise ValueError(f"{name} is empty (shape {(n, p)})")
    cell_empty, gene_tot = 0, np.zeros(p)
    for start in range(0, n, _CHUNK):
        part = x[start:min(n, start + _CHUNK)]
        _check_values(part.data, f"{name} (rows {start}–{start + part.shape[0] - 1})")
        cell_empty += int(np.sum(np.asarray(part.sum(axis=1)).ravel() == 0))
        gene_tot += np.asarray(part.sum(axis=0)).ravel()
    if cell_empty and not allow_empty_cells:
        raise ValueError(f"{name} has {cell_empty} all-zero cells (rows); remove them first")
    if np.any(gene_tot == 0) and not allow_empty_genes:
        raise ValueError(f"{name} has {int(np.sum(gene_tot == 0))} all-zero genes (columns); "
                         "remove them first")
    return x


def row_sums(x, mask=None) -> np.ndarray:
    """Σ_j x_ij (over entries with mask > 0 if a mask is given), shape (n_cells,);
    dense, sparse or backed (read in chunks)."""
    if is_backed(x):
        n = x.shape[0]
        out = np.empty(n)
        for start in range(0, n, _CHUNK):
            stop = min(n, start + _CHUNK)
            part = x[start:stop]
            if mask is not None:
                m = mask[start:stop]
                part = part.multiply(m > 0) if sp.issparse(part) else part * (np.asarray(m) > 0)
            out[start:stop] = np.asarray(part.sum(axis=1)).ravel()
        return out
    if mask is None:
        return np.asarray(x.sum(axis=1), dtype=np.float64).ravel()
    if sp.issparse(mask):
        tot = (mask > 0).astype(np.float64).multiply(x)
    elif sp.issparse(x):
        tot = x.multiply(np.asarray(mask) > 0)
    else:
        tot = x * (np.asarray(mask) > 0)
    return np.asarray(tot.sum(axis=1), dtype=np.float64).ravel()


def check_counts(x, name: str = "X", allow_empty_cells: bool = False,
                 allow_empty_genes: bool = False, dtype=np.float64):
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
    dtype : numpy float dtype or None
        The returned dtype (float64). None keeps float32 / float64 input as it is (integers
        become float64): the VAEs train in float32 anyway, and converting a 10⁶-cell float32
        CSR to float64 copied its 2 GB of values (the peak memory of a fit from memory).

    Returns
    -------
    numpy.ndarray or scipy.sparse.csr_matrix of ``dtype``
        The same counts; sparse input stays sparse (never densified). A backed
        matrix (``anndata.read_h5ad(path, backed="r").X``) is checked in chunks
        of rows and returned as it is, still on disk.

    Raises
    ------
    TypeError
        If ``x`` is not two-dimensional numeric data.
    ValueError
        If ``x`` has NaN/inf, negative or non-integer values, or all-zero
        cells/genes (unless allowed), or is empty; or is a backed matrix that
        is not CSR.
    """
    if is_backed(x):
        return _check_backed(x, name, allow_empty_cells, allow_empty_genes)
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    if sp.issparse(x):
        x = sp.csr_matrix(x, dtype=_float_dtype(x.dtype, dtype))
    else:
        x = np.asarray(x)
        if x.dtype == object or not np.issubdtype(x.dtype, np.number):
            raise TypeError(f"{name} must be numeric counts, got dtype {x.dtype}")
        x = x.astype(_float_dtype(x.dtype, dtype), copy=False)
    if x.ndim != 2:
        raise TypeError(f"{name} must be a 2-d cells × genes matrix, got shape {x.shape}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {x.shape})")
    _check_values(_values(x).reshape(-1), name)
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


def key_error(kind: str, key, where: str, available, param: str | None = None, hint: str = "") -> KeyError:
    """The one message of a missing key: ``KeyError("<kind> 'key' not found in <where> (parameter
    `param`); available: [...]<hint>")``, naming the key, where it was looked for, the parameter
    that named it (when given) and what is there. Returned, not raised, so that a caller that
    collects every problem (``scnotes.pp.prepare``) can use its message."""
    named = f" (parameter `{param}`)" if param else ""
    return KeyError(f"{kind} {key!r} not found in {where}{named}; available: {list(available)}{hint}")


def _obs_frame(adata):
    """(obs DataFrame, its name in messages) of an AnnData or of an ``obs`` DataFrame itself."""
    import pandas as pd

    if isinstance(adata, pd.DataFrame):
        return adata, "obs"
    return adata.obs, "adata.obs"


def check_obs_columns(adata, keys, param: str | None = None) -> list[str]:
    """Check that ``obs`` columns exist; return the keys checked (None entries skipped).

    Parameters
    ----------
    adata : AnnData or pandas.DataFrame (an ``obs`` table itself)
    keys : str, sequence of str, or dict mapping each column to the parameter that named it
        (for the message; e.g. ``{group_key: "group_key", donor_key: "donor_key"}``)
    param : str, optional
        The parameter named in the message for a str or sequence ``keys``.

    Raises
    ------
    KeyError
        The first column that is missing, with the parameter and the columns available
        (:func:`key_error`).
    """
    obs, where = _obs_frame(adata)
    if isinstance(keys, str):
        keys = [keys]
    named = keys if isinstance(keys, dict) else {k: param for k in keys}
    for key, p in named.items():
        if key is not None and key not in obs.columns:
            raise key_error("obs key", key, where, obs.columns, p)
    return [k for k in named if k is not None]


def check_obs_key(adata, key: str, min_levels: int = 1, param: str | None = None):
    """Return ``obs[key]`` as a categorical Series (index: the cells), or raise naming the key.

    ``adata`` is an AnnData or its ``obs`` DataFrame; ``param`` names the parameter that gave
    ``key`` in the message.

    Raises
    ------
    KeyError
        If ``key`` is not an ``obs`` column (the message lists the columns).
    ValueError
        If the column has missing values or fewer than ``min_levels`` levels.
    """
    import pandas as pd

    check_obs_columns(adata, key, param)
    obs, _ = _obs_frame(adata)
    col = obs[key]
    if col.isna().any():
        raise ValueError(f"adata.obs[{key!r}] has {int(col.isna().sum())} missing values")
    col = col.astype("category")
    col = col.cat.remove_unused_categories()
    if len(col.cat.categories) < min_levels:
        raise ValueError(f"adata.obs[{key!r}] has {len(col.cat.categories)} level(s); "
                         f"at least {min_levels} needed")
    return pd.Series(col.values, index=obs.index, name=key)


def check_layer(adata, layer: str | None, param: str | None = "layer"):
    """The cells × genes matrix of ``layers[layer]`` (``X`` when ``layer`` is None), not validated
    (:func:`counts_from_adata` also checks the counts).

    Raises
    ------
    KeyError
        ``layer`` is not in ``adata.layers`` (the message lists the layers and says that None
        reads ``X``).
    """
    if layer is None:
        return adata.X
    if layer not in adata.layers:
        raise key_error("layer", layer, "adata.layers", adata.layers.keys(), param, " (None: adata.X)")
    return adata.layers[layer]


def check_genes(adata, genes, param: str | None = "genes") -> list[str]:
    """``genes`` (a name or a list of ``var_names``) as a list of str, every one checked.

    Raises
    ------
    KeyError
        Genes not in ``adata.var_names``: their number and the first ten, with the parameter.
    """
    genes = [genes] if isinstance(genes, str) else [str(g) for g in genes]
    missing = [g for g in genes if g not in adata.var_names]
    if missing:
        named = f" (parameter `{param}`)" if param else ""
        raise KeyError(f"{len(missing)} gene(s) not found in adata.var_names{named}: {missing[:10]}")
    return genes


def counts_from_adata(adata, layer: str | None = None, dtype=np.float64):
    """The raw counts of ``adata`` (``X`` or ``layers[layer]``), validated, never copied densely
    (``dtype``: as :func:`check_counts`; None keeps float32 counts as they are).

    Raises
    ------
    KeyError
        If ``layer`` is given and missing (:func:`check_layer`).
    ValueError
        As :func:`check_counts`.
    """
    x = check_layer(adata, layer)
    return check_counts(x, name="adata.X" if layer is None else f"adata.layers[{layer!r}]", dtype=dtype)


def size_factors(x):
    """Library size (total counts) of each cell, shape (n_cells,), for dense or sparse counts."""
    return np.asarray(x.sum(axis=1), dtype=np.float64).ravel()


def check_key(adata, slot: str, key: str, param: str | None = None):
    """``getattr(adata, slot)[key]`` as stored (any dtype, missing values allowed), for a slot
    of AnnData's mappings (``obs`` columns, ``obsm``, ``obsp``, ``varm``, ``layers``, ``uns``);
    ``param`` names the parameter that gave ``key`` in the message.

    Raises
    ------
    KeyError
        If ``key`` is not in ``adata.<slot>`` (the message names the key and lists the ones there;
        :func:`key_error`).
    """
    store = getattr(adata, slot)
    keys = list(store.columns) if slot in ("obs", "var") else list(store.keys())
    if key not in keys:
        raise key_error(f"{slot} key", key, f"adata.{slot}", keys, param)
    return store[key]


def check_obsm_key(adata, key: str, param: str | None = None):
    """``adata.obsm[key]`` as a 2-d ndarray (n_cells × n_dims), e.g. an embedding to draw.

    Raises
    ------
    KeyError
        If ``key`` is not in ``adata.obsm`` (the message lists the keys there).
    ValueError
        If the entry is not two-dimensional.
    """
    x = np.asarray(check_key(adata, "obsm", key, param))
    if x.ndim != 2:
        raise ValueError(f"adata.obsm[{key!r}] has shape {x.shape}; expected n_cells × n_dims")
    return x


def check_var_names(var_names, n_genes: int):
    """``var_names`` (the genes a model is fitted on, one per column of its counts) as an object
    array of ``n_genes`` names; ``None`` stays ``None`` (an array fit without gene names).

    Raises ValueError when it is not one name per gene."""
    if var_names is None:
        return None
    names = np.asarray(var_names, dtype=object)
    if names.ndim != 1 or len(names) != n_genes:
        raise ValueError(f"var_names must name the {n_genes} genes (columns of x), got shape {names.shape}")
    return names
