"""Pseudobulk: counts summed per sample (donor × cell type × condition), the input of edgeR / DESeq2."""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import sparse

from .._checks import check_counts, check_layer, check_obs_columns
from .._record import record
from ._design import _UNSET, _size_factor_key

__all__ = ["pseudobulk"]


def pseudobulk(adata, donor_key: str = "donor", cell_type_key: str | None = "cell_type",
               condition_key: str | None = "condition", layer: str | None = None,
               size_factor_key: str | None = "total_counts", min_cells: int = 1, total_key=_UNSET):
    """Sum the counts of every (donor, cell type, condition) sample.

    Parameters
    ----------
    adata : AnnData, n_cells × n_genes raw counts in ``X`` or ``layers[layer]`` (dense or sparse;
        sparse stays sparse: the sums are one sparse indicator product)
    donor_key, cell_type_key, condition_key : ``obs`` columns; a key set to None is left out of the
        sample definition (e.g. ``cell_type_key=None``: one pseudobulk per donor × condition)
    size_factor_key : ``obs`` column of per-cell library sizes summed into ``obs["total_counts"]`` of
        the result; None (or a missing column) sums the counts of every gene of ``adata`` instead.
        ``total_key`` is its older name (DeprecationWarning).
    min_cells : samples with fewer cells are dropped

    Returns
    -------
    AnnData, n_samples × n_genes (float64 sums, CSR if the input was sparse), ``obs`` with the keys
    (categorical), ``n_cells`` and ``total_counts``, indexed ``"<donor>|<cell type>|<condition>"``;
    ``var`` copied from ``adata``; ``uns["pseudobulk"]``: how it was made (``params``: the keys,
    ``layer``, ``size_factor_key``, ``min_cells``; ``totals``: where the library sizes came from;
    ``n_cells_in``; ``n_samples_dropped``: samples with fewer than ``min_cells`` cells).

    Raises
    ------
    KeyError : a key or the layer is missing. ValueError : no key given, missing labels, counts
    that are not non-negative integers, no sample with ``min_cells`` cells.
    """
    import anndata as ad

    keys = [k for k in (donor_key, cell_type_key, condition_key) if k is not None]
    if not keys:
        raise ValueError("give at least one of donor_key, cell_type_key, condition_key")
    check_obs_columns(adata, {donor_key: "donor_key", cell_type_key: "cell_type_key",
                              condition_key: "condition_key"})
    for k in keys:
        if adata.obs[k].isna().any():
            raise ValueError(f"obs[{k!r}] has {int(adata.obs[k].isna().sum())} missing labels; drop those cells")
    x = check_counts(check_layer(adata, layer), name="counts", allow_empty_cells=True, allow_empty_genes=True)
    labels = adata.obs[keys].astype(str).agg("|".join, axis=1).to_numpy()
    codes, uniq = pd.factorize(labels, sort=True)
    n = len(uniq)
    sums = _sample_sums(x, codes, n)
    size_factor_key = _size_factor_key(size_factor_key, total_key, "pseudobulk")
    tot, totals_from = _library_sizes(adata, x, size_factor_key)
    first = np.zeros(n, dtype=int)
    first[codes[::-1]] = np.arange(len(codes))[::-1]
    obs = adata.obs.iloc[first][keys].copy()
    for k in keys:
        obs[k] = pd.Categorical(obs[k].astype(str))
    obs["n_cells"] = np.bincount(codes, minlength=n)
    obs["total_counts"] = np.bincount(codes, weights=tot, minlength=n)
    obs.index = pd.Index(list(uniq), name="sample")
    keep = obs["n_cells"].to_numpy() >= int(min_cells)
    if not keep.any():
        raise ValueError(f"no sample has at least {min_cells} cells (parameter `min_cells`)")
    out = ad.AnnData(sums[keep], obs=obs[keep], var=adata.var.copy())
    for k in keys:
        out.obs[k] = out.obs[k].cat.remove_unused_categories()
    params = dict(donor_key=donor_key, cell_type_key=cell_type_key, condition_key=condition_key, layer=layer,
                  size_factor_key=size_factor_key, min_cells=min_cells)
    record(out, "pseudobulk", params, totals=totals_from, n_cells_in=int(adata.n_obs),
           n_samples_dropped=int((~keep).sum()))
    return out


def _sample_sums(x, codes, n: int):
    """Counts summed over the cells of each of the ``n`` samples (``codes``: each cell's sample), as
    one indicator product; float64, CSR when ``x`` is sparse."""
    ind = sparse.csr_matrix((np.ones(len(codes)), (codes, np.arange(len(codes)))), shape=(n, len(codes)))
    sums = ind @ (x if sparse.issparse(x) else np.asarray(x, dtype=float))
    return sparse.csr_matrix(sums, dtype=np.float64) if sparse.issparse(x) else np.asarray(sums, dtype=np.float64)


def _library_sizes(adata, x, size_factor_key):
    """(each cell's library size (n_cells,), where it came from): ``obs[size_factor_key]`` when that
    column exists, else the sum of the counts ``x`` over every gene of ``adata``."""
    if size_factor_key is not None and size_factor_key in adata.obs.columns:
        return (pd.to_numeric(adata.obs[size_factor_key], errors="coerce").to_numpy(float),
                f"obs[{size_factor_key!r}] summed per sample")
    return (np.asarray(x.sum(axis=1), dtype=float).ravel(),
            f"computed from the counts of all {adata.n_vars} genes of adata, summed per sample")
