"""Poisson NMF ⇄ multinomial topic model (Carbonetto et al. 2021, fastTopics).

A Poisson NMF x_ij ~ Poisson((L Fᵀ)_ij) and the topic model
x_i ~ Multinomial(t_i, Σ_k p_ik f_k) with s_i ~ Poisson-distributed total
describe the same mean, written as

    L Fᵀ = diag(s) · P · Tᵀ,

with P (n_cells × k) the topic *proportions* (rows sum to 1), T
(n_genes × k) the *topics* (columns sum to 1: each is a distribution over
genes) and s (n_cells,) the cell's expected total count. The forward map
(fastTopics' ``poisson2multinom``) is

    u = colsums(F);  T = F / u;  L' = L · u;  s = rowsums(L');  P = L' / s,

and the inverse is L = diag(s) P, F = T. The factorisation L D, F D⁻¹ has
the same mean for every positive diagonal D, so the forward map forgets D:
the inverse returns the representative whose F has unit column sums, and
``poisson_to_topics(topics_to_poisson(P, T, s)) == (P, T, s)`` exactly (up
to rounding).

:func:`topic_lfc` / :func:`distinctive_genes` rank the genes of each topic by
how much more frequent they are there than in every other topic (fastTopics'
least-extreme log-fold change), the ranking that names cell programmes
instead of the genes all topics share.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["TopicModel", "poisson_to_topics", "topics_to_poisson", "topic_lfc", "distinctive_genes"]


class TopicModel(NamedTuple):
    """Topic form of a Poisson NMF (see module docstring).

    proportions : (n_cells, k), rows sum to 1.
    topics : (n_genes, k), columns sum to 1.
    scale : (n_cells,), s_i = Σ_j (L Fᵀ)_ij, in counts.
    """

    proportions: np.ndarray
    topics: np.ndarray
    scale: np.ndarray


def _nonneg_matrix(a, name):
    a = np.array(a, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-d matrix, got shape {a.shape}")
    if not np.all(np.isfinite(a)) or np.any(a < 0):
        raise ValueError(f"{name} must be finite and nonnegative")
    return a


def poisson_to_topics(L, F) -> TopicModel:
    """Convert Poisson NMF factors to the multinomial topic form.

    Parameters
    ----------
    L : array (n_cells, k), nonnegative loadings.
    F : array (n_genes, k), nonnegative factors.

    Returns
    -------
    TopicModel
        ``(proportions, topics, scale)`` with ``L @ F.T == scale[:, None] *
        proportions @ topics.T``. A factor whose column of F is all zero
        contributes nothing to the mean; its topic is set to the uniform
        distribution 1 / n_genes and its proportions to 0. A cell with
        zero mean everywhere gets scale 0 and uniform proportions 1 / k.

    Raises
    ------
    ValueError
        If L or F are not 2-d, finite and nonnegative, or their k differ.
    """
    L = _nonneg_matrix(L, "L")
    F = _nonneg_matrix(F, "F")
    if L.shape[1] != F.shape[1]:
        raise ValueError(f"L has {L.shape[1]} columns but F has {F.shape[1]}")
    u = F.sum(axis=0)
    dead = u <= 0
    u_safe = np.where(dead, 1.0, u)
    topics = F / u_safe
    topics[:, dead] = 1.0 / F.shape[0]
    Lu = L * np.where(dead, 0.0, u)
    s = Lu.sum(axis=1)
    empty = s <= 0
    prop = Lu / np.where(empty, 1.0, s)[:, None]
    prop[empty] = 1.0 / L.shape[1]
    return TopicModel(prop, topics, s)


def topics_to_poisson(proportions, topics, scale):
    """Inverse of :func:`poisson_to_topics`: ``L = diag(scale) · proportions``, ``F = topics``.

    Parameters
    ----------
    proportions : array (n_cells, k), rows on the simplex.
    topics : array (n_genes, k), columns on the simplex.
    scale : array (n_cells,), nonnegative expected totals (counts).

    Returns
    -------
    (L, F) : arrays (n_cells, k) and (n_genes, k) with
        ``L @ F.T == scale[:, None] * proportions @ topics.T``.

    Raises
    ------
    ValueError
        On negative/non-finite input, mismatched shapes, or rows of
        ``proportions`` / columns of ``topics`` that do not sum to 1
        (relative tolerance 1e-6).
    """
    P = _nonneg_matrix(proportions, "proportions")
    T = _nonneg_matrix(topics, "topics")
    s = np.asarray(scale, dtype=np.float64).ravel()
    if P.shape[1] != T.shape[1]:
        raise ValueError(f"proportions have {P.shape[1]} topics but topics have {T.shape[1]}")
    if s.shape[0] != P.shape[0]:
        raise ValueError(f"scale has length {s.shape[0]} but proportions have {P.shape[0]} rows")
    if not np.all(np.isfinite(s)) or np.any(s < 0):
        raise ValueError("scale must be finite and nonnegative")
    if not np.allclose(P.sum(axis=1), 1.0, rtol=1e-6, atol=0):
        raise ValueError("rows of proportions must sum to 1")
    if not np.allclose(T.sum(axis=0), 1.0, rtol=1e-6, atol=0):
        raise ValueError("columns of topics must sum to 1")
    return s[:, None] * P, T.copy()


def topic_lfc(topics, pseudocount: float | None = None) -> np.ndarray:
    """Least-extreme log2 fold change of every gene in every topic against the other topics.

    For topic k and gene j, with f the topic frequencies (``topics``, columns on
    the simplex) plus ``pseudocount``, the fold changes against the other
    topics are log2(f_jk / f_jl), l ≠ k. The least-extreme LFC is the one
    closest to zero when all have the same sign, else 0: a gene scores high in
    topic k only if it is more frequent there than in *every* other topic.
    This is fastTopics' default distinctiveness statistic (``de_analysis``,
    ``lfc.stat = "le"``; Carbonetto et al. 2021), computed here on the fitted
    topics directly, without fastTopics' Poisson-model estimates and shrinkage.

    Parameters
    ----------
    topics : array (n_genes, k), nonnegative; columns sum to 1.
    pseudocount : float, default 1 / (10 · n_genes)
        Added to every frequency, so genes absent from a topic give finite LFCs.

    Returns
    -------
    ndarray (n_genes, k), log2 scale; all zeros when k = 1.

    Raises
    ------
    ValueError : ``topics`` not a finite nonnegative matrix, or a negative pseudocount.
    """
    T = _nonneg_matrix(topics, "topics")
    n_genes, k = T.shape
    eps = 1.0 / (10.0 * n_genes) if pseudocount is None else float(pseudocount)
    if not eps >= 0:
        raise ValueError(f"pseudocount must be nonnegative, got {pseudocount!r}")
    out = np.zeros_like(T)
    if k == 1:
        return out
    with np.errstate(divide="ignore", invalid="ignore"):
        lt = np.log2(T + eps)
    for j in range(k):
        d = lt[:, [j]] - np.delete(lt, j, axis=1)
        lo, hi = d.min(axis=1), d.max(axis=1)
        out[:, j] = np.where(lo > 0, lo, np.where(hi < 0, hi, 0.0))
    return out


def distinctive_genes(topics, genes=None, n: int = 10, min_frequency: float | None = None,
                      pseudocount: float | None = None, lfc=None):
    """The ``n`` most distinctive genes of each topic, as a tidy table.

    Genes are ranked by :func:`topic_lfc` (least-extreme log2 fold change against
    every other topic, fastTopics' statistic), among the genes whose frequency
    in the topic is at least ``min_frequency`` (default 1 / n_genes, the uniform
    frequency), so that rare genes with large but noisy ratios do not lead.
    Ranking by raw frequency instead returns the genes every topic shares
    (ribosomal proteins in UMI data).

    Parameters
    ----------
    topics : array (n_genes, k), columns on the simplex.
    genes : sequence of n_genes names (default ``"0", "1", …``).
    n : genes per topic.
    min_frequency, pseudocount : floats, see above and :func:`topic_lfc`.
    lfc : precomputed :func:`topic_lfc` (n_genes, k), optional.

    Returns
    -------
    pandas.DataFrame with columns ``topic`` (1-based), ``rank`` (1 = most
    distinctive), ``gene``, ``lfc`` (log2) and ``frequency``; fewer than ``n``
    rows for a topic where fewer genes pass ``min_frequency`` with LFC > 0.
    """
    import pandas as pd

    T = _nonneg_matrix(topics, "topics")
    n_genes, k = T.shape
    names = np.asarray([str(i) for i in range(n_genes)] if genes is None else list(genes), dtype=object)
    if names.shape[0] != n_genes:
        raise ValueError(f"{names.shape[0]} gene names for {n_genes} genes")
    L = topic_lfc(T, pseudocount) if lfc is None else np.asarray(lfc, dtype=np.float64)
    if L.shape != T.shape:
        raise ValueError(f"lfc has shape {L.shape} but topics have shape {T.shape}")
    fmin = 1.0 / n_genes if min_frequency is None else float(min_frequency)
    rows = []
    for j in range(k):
        ok = np.flatnonzero((T[:, j] >= fmin) & (L[:, j] > 0))
        order = ok[np.argsort(-L[ok, j], kind="stable")][:int(n)]
        rows += [(j + 1, r + 1, names[g], float(L[g, j]), float(T[g, j])) for r, g in enumerate(order)]
    return pd.DataFrame(rows, columns=["topic", "rank", "gene", "lfc", "frequency"])
