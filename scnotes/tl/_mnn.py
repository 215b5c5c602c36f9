"""AnnData front for MNN batch correction (scanpy style)."""
from __future__ import annotations

import numpy as np

from .._checks import check_obs_key

__all__ = ["mnn"]


def mnn(adata, batch_key: str, use_rep: str | None = None, layer: str | None = None,
        key_added: str | None = None, method: str | None = None, k: int = 20,
        backend: str = "exact", merge_order=None, auto_merge: bool = False, seed: int = 0,
        **kwargs):
    """MNN batch correction of ``adata``, in place; returns the MNN pairs.

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

    Parameters
    ----------
    adata : anndata.AnnData
    batch_key : str
        ``obs`` column with the batch of each cell.
    use_rep, layer, key_added
        As above.
    method : {"mnn_correct", "fastmnn"}, optional
        Override the mode chosen from ``use_rep``.
    k, backend, merge_order, auto_merge, seed
        Passed to the correction; ``**kwargs`` too (e.g. ``sigma``,
        ``var_adj``, ``cos_norm_out`` for ``mnn_correct``; ``ndist``,
        ``cos_norm`` for ``fastmnn``).

    Returns
    -------
    pandas.DataFrame
        One row per MNN pair: ``step`` (merge step), ``left`` and ``right``
        (obs names of the paired cells), ``left_batch``/``right_batch``.
        ``adata.uns[key_added]`` records the parameters, merge order and
        number of pairs per step.

    Raises
    ------
    KeyError
        Missing ``batch_key``, ``use_rep`` or ``layer``.
    ValueError
        One batch only, a batch smaller than ``k``, NaN values, no MNN pairs.
    """
    from ..mnn import fastmnn_correct, mnn_correct

    batch = check_obs_key(adata, batch_key, min_levels=1)
    if method is None:
        method = "mnn_correct" if use_rep is None else "fastmnn"
    if method not in ("mnn_correct", "fastmnn"):
        raise ValueError(f"method must be 'mnn_correct' or 'fastmnn', got {method!r}")
    if use_rep is not None:
        if use_rep not in adata.obsm:
            raise KeyError(f"use_rep {use_rep!r} not found in adata.obsm; available: {list(adata.obsm.keys())}")
        x = np.asarray(adata.obsm[use_rep])
    elif layer is not None:
        if layer not in adata.layers:
            raise KeyError(f"layer {layer!r} not found in adata.layers; available: {list(adata.layers.keys())}")
        x = adata.layers[layer]
    else:
        x = adata.X
    common = dict(k=k, backend=backend, merge_order=merge_order, auto_merge=auto_merge, seed=seed)
    if method == "mnn_correct":
        res = mnn_correct(x, batch.values, **common, **kwargs)
    else:
        res = fastmnn_correct(x, batch.values, **common, **kwargs)
    if key_added is None:
        key_added = "mnn" if use_rep is None else f"{use_rep}_mnn"
    if use_rep is None and method == "mnn_correct":
        adata.layers[key_added] = res.corrected
    else:
        adata.obsm[key_added] = res.corrected
    pairs = res.pairs
    names = np.asarray(adata.obs_names)
    codes = batch.values
    pairs["left_batch"] = np.asarray(codes)[pairs["left"].to_numpy()]
    pairs["right_batch"] = np.asarray(codes)[pairs["right"].to_numpy()]
    pairs["left"] = names[pairs["left"].to_numpy()]
    pairs["right"] = names[pairs["right"].to_numpy()]
    adata.uns[key_added] = {
        "params": {"method": method, "batch_key": batch_key, "use_rep": use_rep or "",
                   "layer": layer or "", "k": k, "backend": backend,
                   **{kk: v for kk, v in kwargs.items() if isinstance(v, (int, float, str, bool))}},
        "merge_order": [str(b) for b in res.merge_order],
        "n_pairs": np.array([st.n_pairs for st in res.steps]),
    }
    return pairs
