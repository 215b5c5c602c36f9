"""Preparing a reader's AnnData for a chapter: validate, clean, subset, in one call.

:func:`prepare` is the first data cell of every chapter. It checks everything a
chapter needs (counts in the named layer, the ``obs`` keys, enough levels) and
stops with *one* message naming every problem and the parameter that fixes it,
so a rerun on a foreign ``.h5ad`` fails early and clearly or not at all.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ._checks import check_counts, check_genes, check_layer, check_obs_columns

__all__ = ["prepare", "title_for", "configure_threads", "looks_like_read_counts", "PrepareError"]


class PrepareError(ValueError):
    """Raised by :func:`prepare`; the message lists every problem found."""


def title_for(dataset, title: str | None = None) -> str:
    """A short name for titles and tables: ``title`` if given, else the registered
    name, else the file's stem (never a full path)."""
    if title:
        return str(title)
    return Path(str(dataset)).stem if str(dataset).endswith(".h5ad") else str(dataset)


def _available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))  # a container's or taskset's share, not the host's
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _positive_int(value, what: str) -> int:
    try:
        n = int(str(value).strip())
    except (TypeError, ValueError):
        n = 0
    if n < 1 or isinstance(value, bool) or (isinstance(value, float) and value != n):
        raise ValueError(f"{what} must be a positive whole number of threads, got {value!r}")
    return n


def configure_threads(n: int | None = None) -> int:
    """The one thread policy of every chapter: set how many threads compute, return it.

    The count is ``n`` if given (a chapter's ``n_threads`` parameter, ``-p n_threads 2``),
    else ``OMP_NUM_THREADS`` if set, else half the CPUs this process may use, at least 1.
    Why half: on a shared 2-core machine one thread is the fastest choice (issue 27,
    NBVAE, 30 epochs beside two busy processes: 5.9 s with 1 thread, 9.6 s with 2);
    the small networks and matrices of the chapters gain little from a second thread,
    and a busy second core makes every synchronisation wait. On a larger machine half
    its CPUs leaves the rest to whatever else runs there.

    What is set: torch's intra-op threads; the BLAS / OpenMP pools already loaded
    (numpy, scipy, scikit-learn, faiss, through ``threadpoolctl``); numba's threads
    (at most its ``NUMBA_NUM_THREADS``); and
    ``OMP_NUM_THREADS`` for processes the chapter starts (R through ``Rscript``, DDP
    workers).

    Parameters
    ----------
    n : int, optional
        Number of threads; ``None`` for the policy above.

    Returns
    -------
    int
        The number of threads set.

    Raises
    ------
    ValueError
        ``n`` or ``OMP_NUM_THREADS`` is not a positive whole number (the message names
        which).
    """
    import torch

    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if n is not None:
        n = _positive_int(n, "configure_threads(n)")
    elif env:
        n = _positive_int(env, "the environment variable OMP_NUM_THREADS")
    else:
        n = max(1, _available_cpus() // 2)
    os.environ["OMP_NUM_THREADS"] = str(n)
    # Order matters: numba's first set_num_threads starts its OpenMP layer, which sets
    # the process's OpenMP pool (torch's too) to NUMBA_NUM_THREADS; the pools are set after.
    try:
        # Imported now rather than capped through NUMBA_NUM_THREADS, which would bar a
        # later, larger configure_threads; scanpy and pynndescent load numba anyway.
        import numba

        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    except ImportError:  # pragma: no cover - numba comes with scanpy
        pass
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=n)  # stays in force: the returned guard is not used to restore
    except ImportError:  # pragma: no cover - scikit-learn depends on threadpoolctl
        pass
    torch.set_num_threads(n)
    return n


def looks_like_read_counts(x, min_ones: float = 0.2) -> tuple[bool, float]:
    """(flag, statistic): the share of non-zero entries equal to 1.

    UMI counts are dominated by ones (measured on the shared 10x and CEL-seq2
    sets: 0.38–0.62 of non-zero entries); read counts from plate protocols
    rarely are. Below ``min_ones`` the counts probably are reads, which the
    count models here (built for UMIs) misfit.
    """
    v = x.data if sp.issparse(x) else np.asarray(x)[np.asarray(x) != 0]
    if v.size == 0:
        return False, float("nan")
    frac = float(np.mean(v == 1))
    return frac < min_ones, frac


def _counts_problem(x, where: str) -> str | None:
    """What is wrong with ``x`` as raw counts (:func:`scnotes._checks.check_counts`'s message), or
    None. Empty cells and genes are allowed: :func:`prepare` drops them."""
    try:
        check_counts(x, name=where, allow_empty_cells=True, allow_empty_genes=True)
    except (TypeError, ValueError) as e:
        return f"{e} (parameter `layer`)"
    return None


def prepare(adata, *, layer: str | None = None, keys=(), optional_keys=(), min_levels=None,
            drop_unlabelled: bool = True, max_cells: int | None = None, n_top_genes: int | None = None,
            genes=None, seed: int = 0, verbose: bool = True):
    """Validate and prepare ``adata`` for a chapter; returns a new AnnData (the input
    is never modified or written).

    Parameters
    ----------
    adata : AnnData, n_cells × n_genes, raw counts in ``X`` or ``layers[layer]``
    layer : str or None, where the counts are (parameter ``layer``)
    keys : dict or sequence, ``obs`` columns the chapter needs: a dict maps each
        column to the chapter parameter that names it (for the error message)
    optional_keys : same, for keys given as None-able parameters (skipped when None)
    min_levels : dict column → minimum number of distinct values
    drop_unlabelled : drop cells with a missing value in any key (the count is
        printed); False: such cells are an error
    max_cells : keep a random subset of this many cells (seeded)
    n_top_genes : keep this many seurat_v3 highly variable genes, computed on counts
    genes : list of gene names (``var_names``) to keep instead, in that order
    seed : random seed of the subsample

    Returns
    -------
    AnnData with counts (float32 CSR) in ``X`` and ``layers["counts"]``, keys as
    categorical ``obs`` columns, ``obs["total_counts"]`` (from the file's totals
    column if present, else computed from *all* genes of the file before any gene
    subsetting: the library-size offset of the count models) and
    ``uns["prepare"]`` recording what was done.

    Raises
    ------
    PrepareError (a ValueError) listing every problem: missing layer, counts that
    are not raw counts, missing ``obs`` keys (with the columns available),
    too few levels, missing labels with ``drop_unlabelled=False``, unknown genes.
    """
    import anndata as ad

    need, opt = _key_map(keys), _key_map(optional_keys)
    allk = {**need, **opt}
    x, present, miss = _validated(adata, layer, allk, genes, drop_unlabelled)
    obs = adata.obs.copy()
    counts = sp.csr_matrix(x, dtype=np.float32)
    record = {"layer": layer, "n_cells_in": int(adata.n_obs), "n_genes_in": int(adata.n_vars)}
    record["totals"] = _add_totals(obs, counts)
    idx = _kept_cells(miss, present, max_cells, seed, record, verbose)
    out = ad.AnnData(X=counts[idx], obs=obs.iloc[idx].copy(), var=adata.var.copy())
    for col in present:
        out.obs[col] = pd.Categorical(out.obs[col].astype(str))
    _check_levels(out.obs, min_levels, allk)
    # Cells and genes without counts carry no information and break size factors.
    out = _drop_empty(out, 1, record, "dropped_empty_cells")
    if genes is not None:
        out = out[:, list(genes)].copy()
    out = _drop_empty(out, 0, record, "dropped_empty_genes")
    if n_top_genes is not None and genes is None and n_top_genes < out.n_vars:
        out = _highly_variable(out, int(n_top_genes), record)
        # HVG selection can leave cells with no counts in the kept genes.
        out = _drop_empty(out, 1, record, "dropped_empty_cells_after_hvg")
    out.layers["counts"] = out.X.copy()
    record["fraction_of_ones"] = _warn_if_read_counts(out.X)
    record.update(n_cells=int(out.n_obs), n_genes=int(out.n_vars))
    out.uns["prepare"] = record
    if verbose:
        print(f"prepare: {out.n_obs} cells × {out.n_vars} genes; totals {record['totals']}")
    return out


def _key_map(keys) -> dict:
    """``keys`` / ``optional_keys`` of :func:`prepare` as {column: parameter or None}, None columns left out."""
    if keys is None:
        return {}
    if isinstance(keys, dict):
        return {c: p for c, p in keys.items() if c is not None}
    return {c: None for c in keys if c is not None}


def _problem(check, *args, **kwargs):
    """The message of the KeyError ``check`` raises, or None: one message style for every missing key."""
    try:
        check(*args, **kwargs)
    except KeyError as e:
        return e.args[0]
    return None


def _validated(adata, layer, keys: dict, genes, drop_unlabelled):
    """(counts, the key columns present, cells with a missing label) or a :class:`PrepareError`
    listing every problem: layer, counts, ``obs`` columns, genes, missing labels."""
    problems = [_problem(check_layer, adata, layer)]
    x = None if problems[0] else check_layer(adata, layer)
    if problems[0] is None and x is None:
        problems.append("adata.X is empty (parameter `layer`: name the counts layer)")
    elif x is not None:
        problems.append(_counts_problem(x, "adata.X" if layer is None else f"adata.layers[{layer!r}]"))
    problems += [_problem(check_obs_columns, adata, {c: p}) for c, p in keys.items()]
    if genes is not None:
        problems.append(_problem(check_genes, adata, list(genes)))
    present = [c for c in keys if c in adata.obs.columns]
    miss = (adata.obs[present].isna().any(axis=1).to_numpy() if present
            else np.zeros(adata.n_obs, dtype=bool))
    if miss.any() and not drop_unlabelled:
        problems.append(f"{int(miss.sum())} cell(s) have missing values in {present} "
                        "(parameter `drop_unlabelled=True` drops them)")
    problems = [p for p in problems if p]
    if problems:
        raise PrepareError("cannot run on this AnnData:\n  - " + "\n  - ".join(problems))
    return x, present, miss


def _add_totals(obs, counts) -> str:
    """Put each cell's library size in ``obs["total_counts"]`` (the file's own column when it is
    complete, else the sum over all genes of the file); returns where it came from."""
    if "total_counts" in obs.columns and np.all(np.isfinite(obs["total_counts"].to_numpy(dtype=float))):
        return "obs['total_counts'] of the file"
    obs["total_counts"] = np.asarray(counts.sum(axis=1), dtype=np.float64).ravel()
    return f"computed from the counts of all {counts.shape[1]} genes in the file"


def _kept_cells(miss, present, max_cells, seed, record, verbose):
    """Indices of the labelled cells, a seeded random ``max_cells`` of them (sorted) if fewer asked."""
    if miss.any():
        record["dropped_unlabelled"] = int(miss.sum())
        if verbose:
            print(f"prepare: dropped {int(miss.sum())} cell(s) with missing values in {present}")
    idx = np.flatnonzero(~miss)
    if max_cells is not None and len(idx) > max_cells:
        idx = np.sort(np.random.default_rng(seed).choice(idx, size=int(max_cells), replace=False))
        record["subsampled_to"] = int(max_cells)
    return idx


def _check_levels(obs, min_levels, keys: dict):
    """A :class:`PrepareError` for a column with fewer distinct values than ``min_levels[column]``."""
    for col, n_min in (min_levels or {}).items():
        if col in obs.columns and obs[col].nunique() < n_min:
            param = keys.get(col)
            raise PrepareError(f"cannot run on this AnnData:\n  - obs column {col!r}"
                               f"{f' (parameter `{param}`)' if param else ''} has "
                               f"{obs[col].nunique()} level(s) after cleaning; at least {n_min} needed")


def _drop_empty(out, axis: int, record, what: str):
    """``out`` without its all-zero cells (``axis=1``: row sums) or genes (``axis=0``), their
    number recorded under ``what``."""
    tot = np.asarray(out.X.sum(axis=axis)).ravel()
    if not np.any(tot == 0):
        return out
    record[what] = int((tot == 0).sum())
    return out[tot > 0].copy() if axis == 1 else out[:, tot > 0].copy()


def _highly_variable(out, n_top_genes: int, record):
    """``out`` restricted to its ``n_top_genes`` seurat_v3 highly variable genes (on counts)."""
    import scanpy as sc

    # seurat_v3's loess fit can be singular on small or very sparse data
    # (scanpy's own advice is a wider span); widen it until the fit works.
    for span in (0.3, 0.5, 1.0):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                sc.pp.highly_variable_genes(out, n_top_genes=n_top_genes, flavor="seurat_v3", span=span)
            break
        except ValueError:
            if span == 1.0:
                raise
    record["hvg_span"] = span
    record["n_top_genes"] = n_top_genes
    return out[:, out.var["highly_variable"].to_numpy()].copy()


def _warn_if_read_counts(x) -> float:
    """The share of non-zero counts equal to 1, with a UserWarning when they look like read counts."""
    reads, frac = looks_like_read_counts(x)
    if reads:
        warnings.warn(f"only {frac:.2f} of the non-zero counts are 1 (UMI data: typically 0.3–0.6); "
                      "these look like read counts, and the count models here assume UMIs", UserWarning,
                      stacklevel=3)
    return frac
