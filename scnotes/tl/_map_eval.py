"""Judging a reference mapping against a de novo fit on the same query cells.

What the map_query chapter and ``benchmarks/bench_map_query.py`` compute on every query:
a seeded split into mapping and held-out cells (:func:`heldout_split`), the reference
genes the mapping cells detect (:func:`shared_genes`: the de novo model's genes, and the
genes both models are scored on), the held-out ELBO of any mapped or de novo VAE on those
genes (:func:`heldout_elbo`), the table of true against transferred labels or clusters
(:func:`label_table`), and the agreement of two LDVAE fits' gene programs
(:func:`program_agreement`).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .._checks import check_genes, check_layer, row_sums
from ._map import MIN_GENE_OVERLAP, query_inputs

__all__ = ["heldout_split", "shared_genes", "heldout_elbo", "label_table", "program_agreement"]


def heldout_split(adata, fraction: float = 0.2, seed: int = 0):
    """``(mapping cells, held-out cells)``: two AnnData copies that partition ``adata``'s cells.

    Each cell is held out independently with probability ``fraction`` (a seeded
    ``numpy.random.default_rng(seed)`` draw per cell, so the held-out share is ``fraction``
    on average, not exactly), the order of cells kept in both parts. The caller's global
    random state is not touched.

    Raises ValueError: ``fraction`` outside [0, 1).
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"fraction must lie in [0, 1), got {fraction!r}")
    held = np.random.default_rng(seed).random(adata.n_obs) < fraction
    return adata[~held].copy(), adata[held].copy()


def shared_genes(model, adata, layer: str | None = None) -> list[str]:
    """The model's genes (``model.var_names_``) that ``adata`` measures with at least one count
    in ``X`` or ``layers[layer]`` (n_cells × n_genes raw counts), in the model's order.

    Why: a de novo model fitted on these genes and the mapped reference (which masks the
    others out of its likelihood) can be scored on the same counts with :func:`heldout_elbo`.

    Raises ValueError: the model has no gene names (fitted on arrays, not through
    ``scnotes.tl``); KeyError: ``layer`` missing.
    """
    if getattr(model, "var_names_", None) is None:
        raise ValueError(f"this {type(model).__name__} has no gene names (var_names_): fit it through "
                         "scnotes.tl so that genes can be matched by name")
    check_layer(adata, layer)
    have = set(adata.var_names)
    genes = [g for g in model.var_names_ if g in have]
    sub = adata[:, genes]
    totals = np.asarray((sub.X if layer is None else sub.layers[layer]).sum(axis=0)).ravel()
    return [g for g, n in zip(genes, totals) if n > 0]


def heldout_elbo(model, adata, genes=None, *, layer: str | None = None, batch_key: str | None = None,
                 size_factor_key: str | None = None, n_samples: int = 10,
                 min_gene_overlap: float = MIN_GENE_OVERLAP) -> float:
    """Mean ELBO (nats per cell; higher is better) of a fitted VAE on cells it did not see.

    ``adata``: n_cells × n_genes raw counts (``X`` or ``layers[layer]``), the held-out
    cells. ``genes``: score only these genes (None: all of ``adata``'s); the model's other
    genes are masked out of the likelihood, the size factors corrected for them, as
    :func:`scnotes.tl.query_inputs` does for a query lacking genes. Cells without a count
    on ``genes`` are left out (their size factor is undefined). The model may be a mapped
    one (:func:`scnotes.tl.map_query`, whose covariate registry knows the query's batch)
    or one fitted on the query; batches are read from ``obs[batch_key]``. Each cell's ELBO
    averages ``n_samples`` draws of z, seeded by the model's seed.

    Source: the evidence lower bound of Kingma & Welling 2014 (ICLR), per cell as
    ``model.elbo``.

    Raises
    ------
    KeyError : a gene of ``genes`` not in ``adata``; ``layer`` / ``batch_key`` missing.
    ValueError : no cell with a count on ``genes``; as :func:`scnotes.tl.query_inputs`.
    """
    if genes is not None:
        adata = adata[:, check_genes(adata, genes)]
    keep = row_sums(check_layer(adata, layer)) > 0
    if not keep.any():
        raise ValueError("no held-out cell has a count on the scored genes")
    cells = adata[keep].copy()
    x, w, s, c = query_inputs(model, cells, layer=layer, batch_key=batch_key,
                              size_factor_key=size_factor_key, min_gene_overlap=min_gene_overlap)
    return float(model.elbo(x, w=w, s=s, covariates=c, n_samples=n_samples).mean())


def label_table(truth, called, normalize: bool = False,
                names=("true label", "transferred label")) -> pd.DataFrame:
    """Cells counted by true label (rows) and called label or cluster (columns).

    ``truth``, ``called``: one label per cell (same length). Rows and columns hold the
    labels that occur, in the order of their categories when the input is categorical
    (e.g. GMVAE clusters "0" … "K-1", or transferred labels with "unknown" last), else
    sorted. ``normalize=True``: each row divided by its total (the share of a true label's
    cells given each call). Row and column axes are named by ``names``.

    Raises ValueError: lengths differ.
    """
    if len(truth) != len(called):
        raise ValueError(f"truth has {len(truth)} labels but called {len(called)}")
    tab = pd.crosstab(pd.Series(np.asarray(truth), name=names[0]),
                      pd.Series(np.asarray(called), name=names[1]))
    tab = tab.reindex(index=_order(truth, tab.index), columns=_order(called, tab.columns))
    return tab.div(tab.sum(axis=1), axis=0) if normalize else tab


def _order(values, present):
    """``present`` labels in the categorical order of ``values``, else as given (sorted)."""
    if not isinstance(getattr(values, "dtype", None), pd.CategoricalDtype):
        return list(present)
    cats = values.cat.categories if isinstance(values, pd.Series) else values.categories
    return [c for c in cats if c in set(present)]


def _centred(loadings, genes):
    l_ = loadings if genes is None else loadings.loc[list(genes)]
    return l_ - l_.mean()


def program_agreement(loadings_a, loadings_b, activities_a, activities_b, genes=None,
                      good: float = 0.7, names=("reference program", "de novo program")):
    """How well the gene programs of two LDVAE fits agree: ``(pairs, summary)``.

    ``loadings_*``: DataFrames n_genes × k indexed by gene (``LDVAE.get_loadings()``),
    centred over ``genes`` (None: all of ``loadings_a``'s), since a softmax decoder does
    not identify a shift per factor; ``activities_*``: n_cells × k latent means of the
    same cells (``obsm["X_ldvae"]``), rows in the same order. Factors of b are matched one
    to one to those of a by the Hungarian algorithm on the absolute Pearson correlation of
    their loadings (:func:`scnotes.tl.loading_agreement`), and each pair is oriented by
    that correlation's sign.

    Returns ``pairs``: one row per factor of a (index ``names[0]``), its match
    ``names[1]``, ``"loadings r"`` (|r| of the loadings over genes) and ``"activities r"``
    (Pearson r of the oriented activities over cells); ``summary``: the medians of both,
    the number of pairs with activities r ≥ ``good`` and the Procrustes agreement of the
    two activity matrices, 1 − the disparity of :func:`scipy.spatial.procrustes` (1 when
    one is a rotation, reflection and scaling of the other, near 0 for unrelated ones;
    Gower 1975, Psychometrika 40:33).

    Raises ValueError: activities of different shapes or not as wide as the loadings; as
    :func:`scnotes.tl.loading_agreement`.
    """
    from scipy.spatial import procrustes

    from ._loadings import loading_agreement

    act_a, act_b = np.asarray(activities_a, dtype=np.float64), np.asarray(activities_b, dtype=np.float64)
    if act_a.shape != act_b.shape or act_a.ndim != 2:
        raise ValueError(f"activities must be two cells × factors matrices of one shape, got "
                         f"{act_a.shape} and {act_b.shape}")
    if act_a.shape[1] != loadings_a.shape[1] or act_b.shape[1] != loadings_b.shape[1]:
        raise ValueError(f"activities have {act_a.shape[1]} columns, loadings {loadings_a.shape[1]} and "
                         f"{loadings_b.shape[1]} factors: not the same fits")
    l_a = _centred(loadings_a, genes if genes is not None else loadings_a.index)
    l_b = _centred(loadings_b, l_a.index)
    m = loading_agreement(l_a, l_b, names=("a", "b"))
    i, j = l_a.columns.get_indexer(m["a factor"]), l_b.columns.get_indexer(m["b factor"])
    sign = np.sign(m["r"].to_numpy())
    r_act = [np.corrcoef(act_a[:, i_], s_ * act_b[:, j_])[0, 1] for i_, j_, s_ in zip(i, j, sign)]
    pairs = pd.DataFrame({names[0]: m["a factor"].to_numpy(), names[1]: m["b factor"].to_numpy(),
                          "loadings r": m["|r|"].to_numpy(), "activities r": r_act}).set_index(names[0])
    summary = {"median loadings |r|": pairs["loadings r"].median(),
               "median activities r": pairs["activities r"].median(),
               f"pairs with activities r >= {good}": int((pairs["activities r"] >= good).sum()),
               "Procrustes agreement": 1 - procrustes(act_a, act_b)[2]}
    return pairs, summary
