"""Python references for differential expression: PyDESeq2 on pseudobulk sums, Wilcoxon on cells.

* :func:`fit_pydeseq2`: per cell type, PyDESeq2 0.5 (Muzellec et al. 2023, Bioinformatics
  39:btad547), the Python port of DESeq2, on the pseudobulk sums with the design matrix of the R
  references (:func:`scnotes.glmm._rrefs._pb_plan`: ``~ donor + covariates + condition`` when
  paired, else ``~ covariates + condition``) and the size factors fixed to ``lib / geomean(lib)``
  (``lib`` = summed per-cell totals, as :func:`scnotes.glmm.fit_deseq2`):
  ``DeseqDataSet(counts=Y, metadata=obs, design=X, refit_cooks=True, n_cpus=1, quiet=True)``,
  ``deseq2()`` with its size-factor step replaced by the fixed ones,
  ``DeseqStats(dds, contrast=<unit vector of the condition column>, cooks_filter=False,
  independent_filter=False).summary()``; Wald test. PyDESeq2 is imported lazily
  (:func:`pydeseq2_available`); ``pip install pydeseq2``.
* :func:`wilcoxon_de`: per cell type, scanpy's ``sc.tl.rank_genes_groups(method="wilcoxon")``
  (Wilcoxon rank-sum with the normal approximation, no tie correction: scanpy's defaults) on
  ``sc.pp.normalize_total(target_sum=1e4)`` + ``sc.pp.log1p`` of the counts: the naive test that
  treats cells as replicates (Squair et al. 2021, Nat Commun 12:5692; Zimmerman et al. 2021,
  Nat Commun 12:738), anti-conservative when donors or samples vary.

Both return the tidy table of the R references (:func:`scnotes.glmm._rrefs.tidy_columns`:
:data:`scnotes.glmm.TIDY_COLUMNS` with ``df``), contrast rows only, ``estimate`` on the
natural-log scale, ``q`` Benjamini–Hochberg over every row.
"""
from __future__ import annotations

import time
import warnings

import numpy as np
import pandas as pd

from .._checks import check_genes, check_layer, check_obs_columns
from ._rrefs import _pb_plan, _pb_table, tidy_columns
from ._tidy import bh_qvalues

__all__ = ["fit_pydeseq2", "pydeseq2_available", "wilcoxon_de", "PYDESEQ2_INSTALL_HINT"]

PYDESEQ2_INSTALL_HINT = ("PyDESeq2 is not installed; `pip install pydeseq2` (the version pinned in "
                         "constraints.txt: `pip install -c constraints.txt pydeseq2`, or the book/dev extras)")


def pydeseq2_available() -> bool:
    """Whether ``pydeseq2`` can be imported."""
    try:
        import pydeseq2  # noqa: F401
    except ImportError:
        return False
    return True


def _import_pydeseq2():
    try:
        from pydeseq2.dds import DeseqDataSet
        from pydeseq2.default_inference import DefaultInference
        from pydeseq2.ds import DeseqStats
    except ImportError as e:
        raise RuntimeError(PYDESEQ2_INSTALL_HINT) from e
    return DeseqDataSet, DeseqStats, DefaultInference


def _fixed_size_factors(sf: np.ndarray):
    """A replacement for ``DeseqDataSet.fit_size_factors`` that sets the given size factors and
    what PyDESeq2 0.5 derives from them (``obs["size_factors"]``, ``layers["normed_counts"]``,
    ``var["_normed_means"]``); ``deseq2()`` calls it in place of median-of-ratios."""
    def fit_size_factors(self, fit_type=None, control_genes=None):
        self.obs["size_factors"] = sf
        self.layers["normed_counts"] = np.asarray(self.X, dtype=float) / sf[:, None]
        self.var["_normed_means"] = self.layers["normed_counts"].mean(axis=0)
    return fit_size_factors


def fit_pydeseq2(pb, condition_key: str = "condition", donor_key: str = "donor", cell_type_key: str = "cell_type",
                 reference: str | None = None, covariate_keys: list | None = None,
                 level: float = 0.95) -> pd.DataFrame:
    """PyDESeq2 Wald test of the condition on pseudobulk sums, per cell type.

    The design, library sizes and filtering are those of :func:`scnotes.glmm.fit_deseq2` (same
    design matrix; size factors ``lib / geomean(lib)`` set in place of PyDESeq2's median-of-ratios;
    genes with no count in a cell type not tested; ``cooks_filter=False, independent_filter=False``;
    Cook's outlier replacement as DESeq2's default, i.e. only with ≥ 7 replicates), so it should
    agree with R DESeq2 up to PyDESeq2's own numerics (its dispersion-trend fit and priors).

    Parameters
    ----------
    pb : AnnData, samples × genes summed counts from :func:`scnotes.glmm.pseudobulk` (``obs``:
        the three keys and ``total_counts``).
    reference : the reference condition (default: the first category).
    covariate_keys : sample-level obs columns of ``pb`` added as fixed effects (as :func:`scnotes.glmm.fit_edger`).
    level : coverage of the normal interval ``estimate ± z sd``.

    Returns
    -------
    Tidy DataFrame (TIDY_COLUMNS with ``df``), contrast rows: ``estimate`` = log2FoldChange · ln 2,
    ``sd`` = lfcSE · ln 2, ``z`` the Wald statistic, ``p`` its p-value, ``q`` BH over every row, ``df``
    NaN, ``method`` "pseudobulk PyDESeq2", ``inference`` "wald". ``attrs``: ``loop_seconds`` (the
    per-cell-type fits), ``wall_seconds``, ``notes`` (covariates dropped, cell types not tested,
    PyDESeq2's warnings), ``designs``, ``size_factors`` (cell type → the size factors PyDESeq2 used,
    read back from its ``obs["size_factors"]``).

    Raises
    ------
    RuntimeError : pydeseq2 not installed (the message says ``pip install pydeseq2``).
    ValueError : not two conditions.
    """
    DeseqDataSet, DeseqStats, DefaultInference = _import_pydeseq2()
    import types

    t0 = time.perf_counter()
    samples, counts, reference, other, plans, notes = _pb_plan(pb, condition_key, donor_key, cell_type_key,
                                                               reference, covariate_keys)
    lib = samples["lib_size"].to_numpy(float)
    rows, used_sf = [], {}
    t1 = time.perf_counter()
    for k, pl in enumerate(plans):
        if not pl.testable:
            continue
        y = counts[pl.rows]
        keep = np.flatnonzero(y.sum(axis=0) > 0)
        sf = lib[pl.rows] / np.exp(np.mean(np.log(lib[pl.rows])))
        X = pl.design
        cdf = pd.DataFrame(y[:, keep], index=X.index, columns=[f"g{j}" for j in keep])
        meta = pd.DataFrame({"condition": X["condition"].to_numpy()}, index=X.index)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                dds = DeseqDataSet(counts=cdf, metadata=meta, design=X, refit_cooks=True,
                                   inference=DefaultInference(n_cpus=1), quiet=True)
                dds.fit_size_factors = types.MethodType(_fixed_size_factors(sf), dds)
                dds.deseq2()
                contrast = np.zeros(X.shape[1])
                contrast[-1] = 1.0
                ds = DeseqStats(dds, contrast=contrast, cooks_filter=False, independent_filter=False,
                                inference=DefaultInference(n_cpus=1), quiet=True)
                ds.summary()
            used = np.asarray(dds.obs["size_factors"], dtype=float)
            if not np.allclose(used, sf, rtol=1e-12):
                raise RuntimeError("PyDESeq2 did not use the size factors given (its fit_size_factors "
                                   "changed; check the pinned version)")
            used_sf[pl.cell_type] = used
            msgs = sorted({str(w.message).replace("\n", " ") for w in caught
                           if not issubclass(w.category, (DeprecationWarning, FutureWarning))})
            notes.extend(f"{pl.cell_type}: {m}" for m in msgs)
            r = ds.results_df
            rows.append(pd.DataFrame({"plan": k, "gene": keep,
                                      "logfc": r["log2FoldChange"].to_numpy(float) * np.log(2),
                                      "se": r["lfcSE"].to_numpy(float) * np.log(2),
                                      "p": r["pvalue"].to_numpy(float), "df": np.nan}))
        except RuntimeError:
            raise
        except Exception as e:  # noqa: BLE001 — one cell type failing leaves NaN rows, as in R
            notes.append(f"{pl.cell_type}: error: {type(e).__name__}: {e}")
    loop = time.perf_counter() - t1
    res = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(
        {"plan": [], "gene": [], "logfc": [], "se": [], "p": [], "df": []})
    out = _pb_table(pb, plans, res, reference, other, level, "pseudobulk PyDESeq2", "wald", False)
    out.attrs["loop_seconds"] = loop
    out.attrs["wall_seconds"] = time.perf_counter() - t0
    out.attrs["notes"] = notes
    out.attrs["designs"] = {pl.cell_type: list(pl.design.columns) for pl in plans}
    out.attrs["size_factors"] = used_sf
    return out


def wilcoxon_de(adata, condition_key: str = "condition", cell_type_key: str = "cell_type",
                reference: str | None = None, layer: str | None = None, genes=None) -> pd.DataFrame:
    """Wilcoxon rank-sum test per gene and cell type with cells as replicates (scanpy).

    Per cell type: the counts (``X`` or ``layers[layer]``) copied into a new AnnData,
    ``sc.pp.normalize_total(target_sum=1e4)`` (over every gene of ``adata``: pass ``adata[:, genes]``
    to normalise over a panel, as the GLMM calibration chapter does), ``sc.pp.log1p``,
    ``sc.tl.rank_genes_groups(condition_key, groups=[other], reference=reference,
    method="wilcoxon")``. ``adata`` itself is never modified. This is the naive test
    (Squair et al. 2021): it ignores donors and samples, so under donor-to-donor or
    sample-to-sample variation its p-values are far too small.

    Parameters
    ----------
    adata : AnnData, cells × genes raw counts.
    reference : the reference condition (default: the first category, else the first in sort order).
    layer : layer with the raw counts (None: ``X``).
    genes : genes to report (default all; the normalisation uses all genes of ``adata``).

    Returns
    -------
    Tidy DataFrame (TIDY_COLUMNS with ``df``), contrast rows, genes in the order of ``adata``:
    ``estimate`` = scanpy's ``logfoldchanges`` · ln 2, i.e. ``ln[(expm1(m_other) + 1e-9) /
    (expm1(m_ref) + 1e-9)]`` with ``m`` the mean of the log1p-normalised values of a condition's
    cells (a back-transformed log-scale mean, which exaggerates fold changes of noisy genes; not a
    model's rate ratio), ``z`` scanpy's
    score (the normal approximation of the rank-sum statistic), ``p`` its two-sided p-value, ``q`` BH
    over every row; ``sd``, ``df`` NaN; ``method`` "Wilcoxon (cells)", ``inference`` "rank-sum".
    ``attrs``: ``wall_seconds``, ``notes`` (cell types with one condition, not tested).

    Raises
    ------
    KeyError : a key, layer or gene missing. ValueError : not two conditions.
    """
    import anndata as ad
    import scanpy as sc

    t0 = time.perf_counter()
    check_obs_columns(adata, {condition_key: "condition_key", cell_type_key: "cell_type_key"})
    x = check_layer(adata, layer)
    cond = adata.obs[condition_key].astype(str).to_numpy()
    conds = list(pd.unique(cond))
    if len(conds) != 2:
        raise ValueError(f"wilcoxon_de compares two conditions; {condition_key!r} has {conds}")
    if reference is None:
        col = adata.obs[condition_key]
        reference = (list(col.cat.categories) if hasattr(col, "cat") else sorted(conds))[0]
    reference = str(reference)
    if reference not in conds:
        raise ValueError(f"reference {reference!r} is not a condition of {condition_key!r}: {conds}")
    other = next(c for c in conds if c != reference)
    names = adata.var_names.astype(str)
    if genes is None:
        report = np.arange(adata.n_vars)
    else:
        report = names.get_indexer(check_genes(adata, genes))
    ctype = adata.obs[cell_type_key].astype(str).to_numpy()
    cname = f"{other} - {reference}"
    frames, notes = [], []
    for ct in pd.unique(ctype):
        idx = np.flatnonzero(ctype == ct)
        present = set(cond[idx])
        if present != {reference, other}:
            notes.append(f"{ct}: one condition only; not tested")
            continue
        sub = ad.AnnData(X=x[idx].copy(),
                         obs=pd.DataFrame({"cond": pd.Categorical(cond[idx], categories=[reference, other])},
                                          index=adata.obs_names[idx].astype(str)),
                         var=pd.DataFrame(index=names))
        sc.pp.normalize_total(sub, target_sum=1e4)
        sc.pp.log1p(sub)
        sc.tl.rank_genes_groups(sub, "cond", groups=[other], reference=reference, method="wilcoxon")
        r = sc.get.rank_genes_groups_df(sub, group=other).set_index("names").reindex(names[report])
        frames.append(pd.DataFrame({"gene": names[report], "cell_type": ct,
                                    "estimate": r["logfoldchanges"].to_numpy(float) * np.log(2),
                                    "z": r["scores"].to_numpy(float), "p": r["pvals"].to_numpy(float)}))
    r = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        {"gene": [], "cell_type": [], "estimate": [], "z": [], "p": []})
    out = pd.DataFrame({"gene": r["gene"].astype(str), "kind": "contrast",
                        "term": r["cell_type"].astype(str) + f": {cname}", "cell_type": r["cell_type"].astype(str),
                        "condition": cname, "estimate": r["estimate"].to_numpy(float), "sd": np.nan,
                        "lower": np.nan, "upper": np.nan, "df": np.nan, "z": r["z"].to_numpy(float),
                        "p": r["p"].to_numpy(float), "lfsr": np.nan})
    out["q"] = bh_qvalues(out["p"])
    out["sigma_u"] = np.nan
    out["method"] = "Wilcoxon (cells)"
    out["inference"] = "rank-sum"
    out = out[tidy_columns()].reset_index(drop=True)
    out.attrs["wall_seconds"] = time.perf_counter() - t0
    out.attrs["loop_seconds"] = out.attrs["wall_seconds"]
    out.attrs["notes"] = notes
    return out
