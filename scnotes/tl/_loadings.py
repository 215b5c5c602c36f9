"""Comparing the gene loadings of two linear factor models (two LDVAE fits, an LDVAE and
scvi-tools' LinearSCVI, NMF and a topic model): factor by factor, and subspace against
subspace.

A loading matrix is genes × factors (``n_genes × k``), as ``LDVAE.get_loadings()`` and
scvi-tools' ``get_loadings()`` return it: a DataFrame indexed by gene name, or an array
whose rows are the same genes in the same order. Two fits of one model agree only up to
what the model cannot see: the order and signs of the factors, a rotation of the latent
space that the prior ignores and, for a softmax decoder, a constant shift of each factor
across genes. :func:`loading_agreement` pairs factors (order and sign free);
:func:`principal_cosines` compares the spanned subspaces (any rotation free).

Why here and not in :mod:`scnotes.metrics`: these read fitted models' loadings, as the
LDVAE front's slots do, and take no cells; a re-export from ``metrics`` can follow when
the one-scorer-per-question work there (issue 24) is settled.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["principal_cosines", "loading_correlations", "loading_agreement"]


def _as_frame(loadings, which: str) -> pd.DataFrame:
    """``loadings`` as a float64 DataFrame (genes × factors), checked finite and 2-D."""
    if isinstance(loadings, pd.DataFrame):
        frame = loadings.astype(np.float64)
    else:
        arr = np.asarray(loadings, dtype=np.float64)
        if arr.ndim != 2:
            raise ValueError(f"{which} must be a genes × factors matrix (2-D), got shape {arr.shape}")
        frame = pd.DataFrame(arr, columns=[f"Z_{k}" for k in range(arr.shape[1])])
    if frame.shape[0] < 2 or frame.shape[1] < 1:
        raise ValueError(f"{which} needs at least 2 genes and 1 factor, got shape {frame.shape}")
    if not np.isfinite(frame.to_numpy()).all():
        raise ValueError(f"{which} has NaN or infinite loadings")
    return frame


def _aligned(loadings1, loadings2):
    """Both loading matrices on the genes of ``loadings1``, in its order: by name when both
    are DataFrames, else by position (then the gene counts must agree)."""
    l1, l2 = _as_frame(loadings1, "loadings1"), _as_frame(loadings2, "loadings2")
    if isinstance(loadings1, pd.DataFrame) and isinstance(loadings2, pd.DataFrame):
        missing = l1.index.difference(l2.index)
        if len(missing):
            raise ValueError(f"loadings2 lacks {len(missing)} gene(s) of loadings1, e.g. "
                             f"{list(missing[:5])}; compare fits on the same genes")
        return l1, l2.loc[l1.index]
    if l1.shape[0] != l2.shape[0]:
        raise ValueError(f"loadings1 has {l1.shape[0]} genes and loadings2 {l2.shape[0]}; pass "
                         "DataFrames indexed by gene name to match them by name")
    return l1, l2.set_axis(l1.index, axis=0)


def principal_cosines(loadings1, loadings2, centre: bool = True) -> np.ndarray:
    """Cosines of the principal angles between the subspaces spanned by the columns of
    two loading matrices (``n_genes × k1`` and ``n_genes × k2``), largest first.

    With ``centre=True`` (default) each column is first centred over genes, so the
    cosines are the canonical correlations of the two sets of factors over genes
    (Hotelling 1936) and ignore each factor's constant shift, which a softmax decoder
    cannot identify. 1 means a direction shared by both subspaces, 0 a direction of one
    orthogonal to the other; the values do not change when the columns of either matrix
    are rotated, rescaled or reordered. Computed by :func:`scipy.linalg.subspace_angles`
    (Björck & Golub 1973, Math Comp 27:579, with Knyazev & Argentati's sine formula for
    small angles).

    Genes are matched by name when both inputs are DataFrames (``loadings2`` may hold
    more genes), else by position. Returns an array of length ``min(rank1, rank2)``
    (usually ``min(k1, k2)``), values in [0, 1].

    Raises ValueError: not 2-D, fewer than 2 genes, NaN/inf, genes of ``loadings1``
    missing from ``loadings2``, or a matrix whose (centred) columns are all zero.
    """
    from scipy.linalg import subspace_angles

    l1, l2 = _aligned(loadings1, loadings2)
    a, b = l1.to_numpy(), l2.to_numpy()
    if centre:
        a, b = a - a.mean(0), b - b.mean(0)
    for name, m in (("loadings1", a), ("loadings2", b)):
        if not np.any(m):
            raise ValueError(f"{name} spans no subspace (all columns zero{' after centring' if centre else ''})")
    return np.sort(np.clip(np.cos(subspace_angles(a, b)), 0.0, 1.0))[::-1]


def loading_correlations(loadings1, loadings2) -> pd.DataFrame:
    """Pearson correlation over genes between every factor of ``loadings1`` (rows, ``k1``)
    and every factor of ``loadings2`` (columns, ``k2``): a ``k1 × k2`` DataFrame.

    Correlation, unlike a dot product, ignores each factor's constant shift and scale.
    Genes are matched as in :func:`principal_cosines`. Raises ValueError as it does, and
    for a factor that is constant over genes (no correlation defined).
    """
    l1, l2 = _aligned(loadings1, loadings2)
    for name, frame in (("loadings1", l1), ("loadings2", l2)):
        flat = frame.columns[np.ptp(frame.to_numpy(), axis=0) == 0]
        if len(flat):
            raise ValueError(f"{name} has factor(s) constant over genes: {list(flat)}")
    k = l1.shape[1]
    r = np.corrcoef(l1.to_numpy().T, l2.to_numpy().T)[:k, k:]
    return pd.DataFrame(r, index=l1.columns, columns=l2.columns)


def loading_agreement(loadings1, loadings2, names=("1", "2")) -> pd.DataFrame:
    """The factors of two fits paired one to one, and how well each pair agrees.

    Pairs maximise the summed ``|r|`` (:func:`loading_correlations`) by the Hungarian
    algorithm (:func:`scipy.optimize.linear_sum_assignment`): factors are unordered and
    their signs arbitrary, so a pair is judged by ``|r|``. With ``k1 != k2`` only
    ``min(k1, k2)`` pairs are formed.

    Returns a DataFrame, one row per pair in the order of ``loadings1``'s factors, with
    columns ``"<names[0]> factor"``, ``"<names[1]> factor"``, ``"r"`` (signed) and
    ``"|r|"``. Raises ValueError as :func:`loading_correlations`, or for two equal names.
    """
    from scipy.optimize import linear_sum_assignment

    if len(names) != 2 or names[0] == names[1]:
        raise ValueError(f"names must be two different labels for the two fits, got {names!r}")
    r = loading_correlations(loadings1, loadings2)
    rows, cols = linear_sum_assignment(-np.abs(r.to_numpy()))
    picked = r.to_numpy()[rows, cols]
    return pd.DataFrame({f"{names[0]} factor": r.index[rows], f"{names[1]} factor": r.columns[cols],
                         "r": picked, "|r|": np.abs(picked)})
