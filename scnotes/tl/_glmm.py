"""AnnData front for the Poisson GLMM (differential expression with donor effects).

:func:`glmm` fits, for each gene, ``y_i ~ Poisson(s_i exp(b_{g(i)} + u_{d(i)}))``
with cell-group fixed effects ``b``, donor random effects ``u ~ N(0, σ_u²)`` and
the cell's library size ``s_i`` as offset (see :mod:`scnotes.glmm`), by
variational empirical Bayes (``"veb"``), NUTS (``"nuts"``) or lme4 (``"lme4"``),
and returns the fitted model, whose ``summary()`` is one tidy table for every method
(also stored in ``adata.uns[key_added]["results"]``). ``method="nb"`` fits the
negative-binomial GLMM (:class:`scnotes.glmm.NBGLMMVEB`: per-gene dispersion shrunk to a
mean trend, a random effect per sample (donor × cell type × condition) whose variance is
moderated across genes per cell type, Satterthwaite t tests), the test to use for DE between
conditions, and ``"glmmtmb"`` its R reference.

:func:`pseudobulk` (the same function as :func:`scnotes.glmm.pseudobulk`) sums
counts per donor × cell type × condition for edgeR / DESeq2
(:func:`scnotes.glmm.fit_edger`, :func:`scnotes.glmm.fit_deseq2`).
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from .._checks import check_genes, check_layer, check_obs_columns
from ..glmm import pseudobulk  # noqa: F401  (re-exported: scnotes.tl.pseudobulk)
from ._front import _caller_stacklevel, begin, finish, record, resolve_progress

__all__ = ["glmm", "pseudobulk", "expressed_genes", "NUTSFits"]

_METHODS = ("veb", "nuts", "lme4", "nb", "glmmtmb")
_EPOCHS = ("veb", "nb")  # the methods trained by passes over the data


class NUTSFits(dict):
    """What ``scnotes.tl.glmm(method="nuts")`` returns: gene → :class:`scnotes.glmm.NUTSResult`
    (a dict, one NUTS fit per gene), with :meth:`summary` as every other fitted GLMM."""

    def summary(self, level: float = 0.95) -> pd.DataFrame:
        """The genes' tidy tables (:meth:`scnotes.glmm.NUTSResult.summary`) stacked."""
        return pd.concat([m.summary(level=level) for m in self.values()], ignore_index=True)


def expressed_genes(adata, layer=None, min_cells: int = 10, min_frac: float = 0.01, n_top_genes=None):
    """Genes a DE test can say something about: detected (count > 0) in at least ``min_cells`` cells
    and in at least ``min_frac`` of the cells; with ``n_top_genes``, only that many of them with the
    highest mean count. Returns a list of names in ``adata.var_names`` order (top genes: by mean)."""
    x = adata.X if layer is None else adata.layers[layer]
    detected = np.asarray((x > 0).sum(axis=0)).ravel()
    ok = (detected >= int(min_cells)) & (detected >= float(min_frac) * adata.n_obs)
    idx = np.flatnonzero(ok)
    if n_top_genes is not None:
        mean = np.asarray(x.mean(axis=0)).ravel()
        idx = idx[np.argsort(-mean[idx], kind="stable")[: int(n_top_genes)]]
    return [str(adata.var_names[i]) for i in idx]


def glmm(adata, genes=None, group_key: str | None = None, donor_key: str = "donor", *,
         cell_type_key: str | None = None, condition_key: str | None = None, reference: str | None = None,
         layer: str | None = None, size_factor_key: str | None = None, method: str = "veb", covariate_keys=None,
         n_top_genes: int | None = None,
         min_gene_cells: int = 10, min_gene_frac: float = 0.01,
         min_cells: int = 1, level: float = 0.95, key_added: str = "glmm", max_epochs: int | str | None = None,
         batch_size: int | None = None, seed: int = 0, device: str = "cpu", progress: bool | None = None,
         copy: bool = False, return_model: bool | None = None, verbose: bool = True, **kwargs):
    """Poisson or NB GLMM per gene with donor random effects: the fitted model, whose ``summary()``
    is the tidy table of effects and contrasts.

    Parameters
    ----------
    adata : AnnData, n_cells × n_genes raw counts in ``X`` or ``layers[layer]``
    genes : str, list of str or None
        Genes to test. ``None``: every gene detected in at least ``min_gene_cells`` cells and in at
        least ``min_gene_frac`` of the cells (:func:`expressed_genes`; the NB GLMM fits them all in
        one batch), or the ``n_top_genes`` of those with the highest mean count.
    group_key : str or None
        Without ``condition_key``: ``obs`` column of the cell group, the fixed effect (None:
        ``"cell_type"``). With ``condition_key`` the cell type is ``cell_type_key``; ``group_key``
        there is its older spelling (DeprecationWarning).
    donor_key : str
        ``obs`` column of the donor (random effect; at least 2 donors).
    cell_type_key : str or None
        With ``condition_key``: ``obs`` column of the cell type (None: ``"cell_type"``); the cell
        groups (fixed effects) are then cell type × condition, as in
        :func:`scnotes.glmm.glmm_data`. Needs ``condition_key``.
    condition_key : str, optional
        ``obs`` column of the condition. The table then also holds, per cell type,
        the contrast (log fold change) of each condition against ``reference``
        (default: the first level).
    layer : str or None
        Layer with the counts (None: ``adata.X``).
    size_factor_key : str or None
        ``obs`` column of per-cell library sizes (the offset is their log). None:
        totals computed from the counts of every gene in ``adata`` — the library
        size only if ``adata`` holds all genes; after subsetting genes pass the
        totals of the full file (``scnotes.pp.prepare`` stores them in
        ``obs["total_counts"]``).
    method : {"veb", "nuts", "lme4", "nb", "glmmtmb"}
        ``"veb"``: :class:`scnotes.glmm.PoissonGLMMVEB`, by default the full-rank
        guide with the exact expected log-likelihood on the sufficient statistics,
        all genes in one batched optimisation (kwargs: ``guide``, ``max_epochs``,
        ``lr``, ``batch_size``, ``prior``, …). ``"nuts"``: :func:`scnotes.glmm.fit_nuts`
        per gene (kwargs: ``num_samples``, ``warmup_steps``, ``num_chains``,
        ``prior``). ``"lme4"``: :func:`scnotes.glmm.fit_lme4` (R; kwargs
        ``aggregate`` (default True: the per (group, donor) sums, same estimates),
        ``nAGQ``). ``"nb"``: :class:`scnotes.glmm.NBGLMMVEB`, the NB GLMM with a
        sample effect (kwargs ``sample_effect``, ``max_epochs``, ``moderate``, ``trend``,
        ``robust``, …); its contrasts carry posterior mean / sd, the Satterthwaite ``df``, the
        t test and interval stated in :class:`scnotes.glmm.NBGLMMVEB`'s notes (``p``), BH ``q``
        and the adaptive-shrinkage ``lfsr``. ``"glmmtmb"``:
        :func:`scnotes.glmm.fit_glmmtmb` (R; kwarg ``sample_effect``, default True).
    covariate_keys : list of str, optional
        ``obs`` columns of sample-level covariates (sex, batch, age; constant within a donor ×
        cell group) adjusted for as fixed effects (methods ``"nb"``; see
        :func:`scnotes.glmm.glmm_data`).
    n_top_genes, min_gene_cells, min_gene_frac
        The gene filter used when ``genes`` is None (see above).
    min_cells : int
        With ``condition_key``: cell types with fewer cells than this in some
        condition are dropped (printed and recorded), since a cell group without
        cells has no likelihood; with ``method="nb"`` also those whose condition
        contrast has no sample-level residual df (too few donors; see
        :func:`scnotes.glmm.complete_cell_types`).
    level : float
        Coverage of the intervals ``lower``, ``upper``.
    key_added : str
        ``adata.uns[key_added]`` receives ``{"params": …, "model": class name, "results": table}``;
        ``params`` holds the keys as resolved: ``group_key`` (None with a condition),
        ``cell_type_key`` (None without), ``donor_key``, ``condition_key``.
    max_epochs : int, "auto" or None
        Passes over the data (methods ``"veb"``, ``"nb"``; None: the estimator's default,
        "auto" for VEB, 300 for the NB GLMM's stage 1).
    batch_size : int or None
        Cells per minibatch (method ``"veb"``; None: full batch).
    seed, device, progress
        Random seed (VEB, NB, NUTS), torch device (VEB, NB) and progress bar (VEB, NB, NUTS;
        None: ``scnotes.settings.progress``, on only in an interactive session).
    verbose : bool
        Print one line naming the cell types dropped for too few cells or donors (as
        ``scnotes.pp.prepare`` does); they are recorded in ``uns[key_added]["params"]
        ["dropped_cell_types"]`` either way.
    copy : bool
        Work on a copy of ``adata`` (the input is left unchanged) and return ``(adata_copy, model)``.
    return_model : bool
        Deprecated and unneeded: the model is always returned.

    Returns
    -------
    The fitted model: :class:`~scnotes.glmm.PoissonGLMMVEB` (``"veb"``),
    :class:`~scnotes.glmm.NBGLMMVEB` (``"nb"``), :class:`~scnotes.glmm.Lme4Result`,
    the glmmTMB result, or :class:`NUTSFits` (gene → :class:`~scnotes.glmm.NUTSResult`);
    ``(adata_copy, model)`` with ``copy=True``. ``model.summary()`` (at ``level`` 0.95; pass
    ``level`` for another) is the tidy table stored in ``adata.uns[key_added]["results"]``,
    columns :data:`scnotes.glmm.TIDY_COLUMNS`: ``gene``, ``kind``
    ("group": a cell-group effect b, log rate per unit of library size;
    "contrast": condition − reference within a cell type, a log fold change),
    ``term``, ``cell_type``, ``condition``, ``estimate``, ``sd`` (posterior sd for
    VEB/NUTS, standard error for lme4), ``lower``, ``upper``, ``z``, ``p`` (Wald,
    contrasts only), ``sigma_u`` (donor sd of the gene), ``method``.

    Raises
    ------
    ValueError : unknown ``method``; missing labels, zero totals, a single donor
        (see :func:`scnotes.glmm.glmm_data`); no cell type left after ``min_cells``;
        ``cell_type_key`` without ``condition_key``; ``group_key`` and ``cell_type_key`` naming
        different columns.
    KeyError : a gene, layer or ``obs`` key that is not in ``adata``.
    RuntimeError : ``method="lme4"`` without R / lme4 (the message says how to install).
    """
    _check_arguments(method, max_epochs, batch_size, covariate_keys, return_model)
    group_key, cell_type_key = _group_keys(group_key, cell_type_key, condition_key)
    progress = resolve_progress(progress)
    adata = begin(adata, copy)
    check_layer(adata, layer)
    check_obs_columns(adata, {group_key: "group_key", cell_type_key: "cell_type_key", donor_key: "donor_key",
                              condition_key: "condition_key", size_factor_key: "size_factor_key"})
    genes, gene_filter = _select_genes(adata, genes, layer, min_gene_cells, min_gene_frac, n_top_genes)
    total, totals_from = _library_sizes(adata, layer, size_factor_key)
    keep, dropped_types = _testable_cells(adata.obs, cell_type_key, donor_key, condition_key, min_cells, method,
                                          verbose)
    data = _model_data(adata[keep], genes, layer, total[keep], group_key, cell_type_key, donor_key,
                       condition_key, reference, covariate_keys)
    data.keys["size_factor_key"] = size_factor_key
    model, table = _fit(method, data, level, max_epochs, batch_size, seed, device, progress, kwargs)
    params = dict(genes=list(genes), group_key=group_key, cell_type_key=cell_type_key, donor_key=donor_key,
                  condition_key=condition_key, reference=reference, layer=layer, size_factor_key=size_factor_key, method=method,
                  min_cells=min_cells, level=level, max_epochs=max_epochs, batch_size=batch_size, seed=seed,
                  device=str(device) if method in _EPOCHS else None, totals=totals_from,
                  dropped_cell_types=dropped_types, covariate_keys=covariate_keys, gene_filter=gene_filter,
                  **{k: v for k, v in kwargs.items() if np.isscalar(v)})
    record(adata, key_added, params, model, results=table)
    return finish(adata, model, copy)


def _check_arguments(method, max_epochs, batch_size, covariate_keys, return_model):
    """Refuse an unknown method and keywords that the chosen method does not use."""
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    if return_model is not None:
        warnings.warn("scnotes.tl.glmm: return_model is deprecated and unneeded: the fitted model is "
                      "always returned (its table: model.summary(), or adata.uns[key_added]['results'])",
                      DeprecationWarning, stacklevel=_caller_stacklevel())
    if max_epochs is not None and method not in _EPOCHS:
        raise ValueError(f"max_epochs applies to methods {_EPOCHS}, not {method!r}")
    if batch_size is not None and method != "veb":
        raise ValueError(f"batch_size applies to method 'veb' only, not {method!r}")
    if covariate_keys is not None and method != "nb":
        raise ValueError(f"covariate_keys is supported by method='nb' only, not {method!r}")


def _group_keys(group_key, cell_type_key, condition_key):
    """(``group_key``, ``cell_type_key``) as the model uses them: the cell group without a
    condition (``cell_type_key`` None), the cell type with one (``group_key`` None); the default
    column is ``"cell_type"`` either way. ``group_key`` with a condition is the older spelling of
    ``cell_type_key`` (DeprecationWarning, attributed to scnotes as every older name)."""
    if condition_key is None:
        if cell_type_key is not None:
            raise ValueError(f"scnotes.tl.glmm: cell_type_key={cell_type_key!r} names the cell type of "
                             "cell type × condition groups and needs condition_key; without a condition "
                             f"pass the cell group as group_key={cell_type_key!r}")
        return ("cell_type" if group_key is None else group_key), None
    if group_key is None:
        return None, ("cell_type" if cell_type_key is None else cell_type_key)
    if cell_type_key is not None and cell_type_key != group_key:
        raise ValueError(f"scnotes.tl.glmm: group_key={group_key!r} and cell_type_key={cell_type_key!r} "
                         "disagree; with condition_key the cell type is cell_type_key alone (drop group_key)")
    warnings.warn(f"scnotes.tl.glmm: with condition_key the cell type is cell_type_key; pass "
                  f"cell_type_key={group_key!r} instead of group_key (group_key is the cell group of a "
                  "fit without a condition; this spelling goes in the next release)",
                  DeprecationWarning, stacklevel=_caller_stacklevel())
    return None, group_key


def _select_genes(adata, genes, layer, min_gene_cells, min_gene_frac, n_top_genes):
    """(genes to test as a list of str, the gene filter's settings or None when ``genes`` was given)."""
    if genes is not None:
        return check_genes(adata, genes), None
    genes = expressed_genes(adata, layer, min_gene_cells, min_gene_frac, n_top_genes)
    if not genes:
        raise ValueError(f"no gene is detected in >= {min_gene_cells} cells and >= {min_gene_frac:.0%} of the "
                         "cells (parameters `min_gene_cells`, `min_gene_frac`)")
    return genes, dict(min_gene_cells=min_gene_cells, min_gene_frac=min_gene_frac, n_top_genes=n_top_genes)


def _library_sizes(adata, layer, size_factor_key):
    """(per-cell library sizes (n_cells,), where they came from), before any cell is dropped: the
    ``obs`` column, or the totals over every gene of ``adata`` (not only the tested ones)."""
    if size_factor_key is not None:
        total = pd.to_numeric(adata.obs[size_factor_key], errors="coerce").to_numpy(dtype=float)
        return total, f"obs[{size_factor_key!r}]"
    x = adata.X if layer is None else adata.layers[layer]
    total = np.asarray(x.sum(axis=1), dtype=float).ravel()
    return total, f"computed from the counts of all {adata.n_vars} genes of adata"


def _testable_cells(obs, cell_type_key, donor_key, condition_key, min_cells, method, verbose):
    """(cells of the cell types kept (bool, n_cells), the dropped cell types): with a condition,
    those with too few cells in some condition (NB: or too few donors) are dropped."""
    keep = np.ones(len(obs), dtype=bool)
    if condition_key is None or (min_cells <= 0 and method != "nb"):
        return keep, []
    from ..glmm import complete_cell_types

    keep, dropped = complete_cell_types(obs, cell_type_key, condition_key, max(min_cells, 1),
                                        donor_key=donor_key if method == "nb" else None)
    if dropped and verbose:
        why = " or too few donors for a sample-level test" if method == "nb" else ""
        print(f"tl.glmm: dropped {len(dropped)} cell type(s) with fewer than {min_cells} cell(s) "
              f"in some condition{why} ({int((~keep).sum())} cells): {dropped[:10]}")
    if not keep.any():
        raise ValueError(f"no cell type has at least {min_cells} cell(s) in every condition of "
                         f"{condition_key!r} (parameter `min_cells`)")
    return keep, dropped


def _model_data(sub, genes, layer, total, group_key, cell_type_key, donor_key, condition_key, reference,
                covariate_keys):
    """The GLMM's data (:func:`scnotes.glmm.glmm_data`) of the kept cells ``sub`` and the ``genes``,
    with the levels left without cells removed: groups ``group_key``, or cell type × condition."""
    from ..glmm import glmm_data

    obs = sub.obs.copy()
    for key in (group_key, cell_type_key, condition_key, donor_key):
        if key is not None and isinstance(obs[key].dtype, pd.CategoricalDtype):
            obs[key] = obs[key].cat.remove_unused_categories()
    gsub = sub[:, genes]
    counts = gsub.X if layer is None else gsub.layers[layer]
    ct_kw = (dict(cell_type_key=cell_type_key, condition_key=condition_key, reference=reference)
             if condition_key is not None else dict(group_key=group_key))
    return glmm_data(obs, counts, donor_key=donor_key, total=total, genes=genes,
                     covariate_keys=covariate_keys, **ct_kw)


def _fit(method, data, level, max_epochs, batch_size, seed, device, progress, kwargs):
    """(fitted model, its tidy table at ``level``) of one method; each method's own defaults."""
    from .. import glmm as G

    epochs = {} if max_epochs is None else dict(max_epochs=max_epochs)
    if method == "veb":
        kw = dict(guide="full", expectation="analytic", batch_size=batch_size, lr=0.05)
        kw.update(kwargs, **epochs)
        model = G.PoissonGLMMVEB(seed=seed, device=device, progress=progress, **kw).fit(data)
        return model, model.summary(level=level, method=f"VEB ({model.guide})")
    if method == "nb":
        model = G.NBGLMMVEB(seed=seed, device=device, progress=progress, **kwargs, **epochs).fit(data)
    elif method == "glmmtmb":
        model = G.fit_glmmtmb(data, **kwargs)
    elif method == "lme4":
        model = G.fit_lme4(data, **{"aggregate": True, **kwargs})
    else:
        kw = {"prior": "shared", **kwargs}
        model = NUTSFits({g: G.fit_nuts(data, gene=g, seed=seed, progress=progress, **kw) for g in data.genes})
    return model, model.summary(level=level)
