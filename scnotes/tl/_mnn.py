"""AnnData front for MNN batch correction (scanpy style)."""
from __future__ import annotations

from .._checks import check_layer, check_obs_key, check_obsm_key
from ._front import begin, finish

__all__ = ["mnn"]


def mnn(adata, batch_key: str, use_rep: str | None = None, layer: str | None = None,
        key_added: str | None = None, method: str | None = None, n_neighbors: int | None = None,
        backend: str = "exact", merge_order=None, auto_merge: bool = False, seed: int = 0,
        copy: bool = False, k: int | None = None, **kwargs):
    """MNN batch correction of ``adata``; returns the correction result.

    Two modes, chosen by ``use_rep``:

    - ``use_rep=None``: expression space, :func:`scnotes.mnn.mnn_correct`
      (batchelor ``mnnCorrect``) on ``adata.X`` or ``adata.layers[layer]``,
      which should hold log-expression values (e.g. after
      ``sc.pp.normalize_total`` + ``sc.pp.log1p``, on highly variable genes).
      The corrected, cosine-normalised values (n_cells × n_genes, dense) go
      to ``adata.layers[key_added]`` (default ``"mnn"``).
    - ``use_rep="X_pca"`` (or any ``obsm`` key: topic proportions, a VAE
      latent): embedding space, :func:`scnotes.mnn.fastmnn_correct`; the
      corrected embedding goes to ``adata.obsm[key_added]`` (default
      ``use_rep + "_mnn"``).

    In both modes the MNN pairs go to ``adata.obsp[key_added + "_pairs"]``
    (entry (left cell, right cell) = merge step + 1) and the parameters, the
    merge order and the pairs per step to ``adata.uns[key_added]``
    (:meth:`scnotes.mnn.MNNResult.to_adata`). A correction is data, not a
    fitted model (nothing in it applies to new cells), so it is saved with the
    AnnData (``write_h5ad``) and read back with
    :meth:`scnotes.mnn.MNNResult.from_adata`.

    Parameters
    ----------
    adata : anndata.AnnData
    batch_key : str
        ``obs`` column with the batch of each cell.
    use_rep, layer, key_added
        As above.
    method : {"mnn_correct", "fastmnn"}, optional
        Override the mode chosen from ``use_rep``.
    n_neighbors : int
        Neighbours for the MNN pairs (default 20, batchelor's ``k``; ``k`` is
        accepted as an alias).
    backend, merge_order, auto_merge, seed
        Passed to the correction; ``**kwargs`` too (e.g. ``sigma``,
        ``var_adj``, ``cos_norm_out`` for ``mnn_correct``; ``ndist``,
        ``cos_norm`` for ``fastmnn``; ``n_candidates`` for an approximate
        backend). ``backend``: ``"exact"``, ``"pynndescent"`` or ``"faiss"``
        (inverted-file search, the fast one for an embedding of 10^5-10^6
        cells; see :func:`scnotes.mnn.knn_query`). ``seed`` seeds the approximate search
        only; the caller's global random state is never touched.
    copy : bool
        Work on a copy of ``adata`` and return ``(adata_copy, result)``; the
        input is left unchanged.

    Returns
    -------
    scnotes.mnn.MNNResult
        ``corrected`` (the values stored), ``steps`` (merge steps with their
        pairs as cell indices), ``pairs`` / ``pair_table(adata.obs_names)``
        (a DataFrame). ``(adata, result)`` with ``copy=True``.

    Raises
    ------
    KeyError
        Missing ``batch_key``, ``use_rep`` or ``layer`` (the message lists what exists).
    ValueError
        One batch only, a batch smaller than ``n_neighbors``, NaN values, no
        MNN pairs, both ``n_neighbors`` and ``k`` with different values.
    """
    from ..mnn import fastmnn_correct, mnn_correct, resolve_n_neighbors

    n_neighbors = resolve_n_neighbors(n_neighbors, k)
    batch = check_obs_key(adata, batch_key, min_levels=1, param="batch_key")
    if method is None:
        method = "mnn_correct" if use_rep is None else "fastmnn"
    if method not in ("mnn_correct", "fastmnn"):
        raise ValueError(f"method must be 'mnn_correct' or 'fastmnn', got {method!r}")
    x = check_obsm_key(adata, use_rep, param="use_rep") if use_rep is not None else check_layer(adata, layer)
    common = dict(n_neighbors=n_neighbors, backend=backend, merge_order=merge_order,
                  auto_merge=auto_merge, seed=seed)
    if method == "mnn_correct":
        res = mnn_correct(x, batch.values, **common, **kwargs)
    else:
        res = fastmnn_correct(x, batch.values, **common, **kwargs)
    adata = begin(adata, copy)
    if key_added is None:
        key_added = "mnn" if use_rep is None else f"{use_rep}_mnn"
    slot = "layers" if (use_rep is None and method == "mnn_correct") else "obsm"
    params = {"method": method, "batch_key": batch_key, "use_rep": use_rep, "layer": layer,
              "n_neighbors": n_neighbors, "backend": backend, "auto_merge": auto_merge, "seed": seed,
              "merge_order": None if merge_order is None else [str(b) for b in merge_order], **kwargs}
    res.to_adata(adata, key_added, slot=slot, params=params)
    return finish(adata, res, copy)
