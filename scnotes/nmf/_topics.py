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
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["TopicModel", "poisson_to_topics", "topics_to_poisson"]


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
