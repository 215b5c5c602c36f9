"""Reference mapping for every scnotes VAE: put new cells, from new batches, onto a
model trained elsewhere (scArches architecture surgery; Lotfollahi et al. 2022,
Nat Biotechnol 40:121), and transfer the reference's labels to them by nearest
neighbours in the shared latent space.

``map_query`` matches the query's genes to the model's by name, extends the
model's covariate layout with the query's new categories (:mod:`scnotes.vae._surgery`),
trains only those new columns on the query (reference weights frozen, bit for
bit) and writes the query's latent, LDVAE loadings or GMVAE clusters to the
query AnnData. ``transfer_labels`` reads the latent of query and reference and
calls a label, an uncertainty and an "unknown" per query cell.
"""
from __future__ import annotations

import os
import time
from types import SimpleNamespace

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from .._checks import check_counts, check_obs_key, is_backed, key_error, row_sums
from ._front import encode_covariates, record, slot_keys

__all__ = ["map_query", "transfer_labels", "query_inputs", "MIN_GENE_OVERLAP"]

#: Default smallest share of the model's genes the query must measure. Below half,
#: the encoder sees a mostly zero-filled input it was never trained on.
MIN_GENE_OVERLAP = 0.5

_FAMILY_KEYS = {"PVAE": "X_pvae", "NBVAE": "X_nbvae", "ZINBVAE": "X_zinbvae", "LDVAE": "X_ldvae",
                "GMVAE": "X_gmvae"}
_CHUNK = 20000


# --- inputs ----------------------------------------------------------------------------
def _vae_classes():
    """The VAE families (public classes) and the estimator base they share
    (:class:`scnotes.vae.CountVAE`: PVAE / NBVAE / ZINBVAE are its presets, LDVAE and
    GMVAE its variants). A saved file is checked against the base before its contents
    are decoded."""
    from ..vae import GMVAE, LDVAE, CountVAE

    return (CountVAE, LDVAE, GMVAE), CountVAE


def _default_key(model) -> str:
    """The ``obsm`` key a family's front writes (a general CountVAE: its likelihood's preset's)."""
    name = type(model).__name__
    if name in _FAMILY_KEYS:
        return _FAMILY_KEYS[name]
    return {"poisson": "X_pvae", "nb": "X_nbvae", "zinb": "X_zinbvae"}.get(model.likelihood, "X_countvae")


def _resolve_model(model):
    """The estimator itself, or one loaded from a path written by its ``save``."""
    families, base = _vae_classes()
    if isinstance(model, (str, os.PathLike)):
        # the one reader of saved models: checks the format before anything is unpickled
        # (ValueError: not a scnotes model file / a newer format; TypeError: another class)
        from .._persist import load_model

        model = load_model(model, expected_class=base)
    if not isinstance(model, families):
        raise TypeError(f"model must be a fitted {', '.join(['CountVAE', *_FAMILY_KEYS])} (or the path of one "
                        f"saved with .save), got {type(model).__name__}")
    if model._s_mode is None:
        raise ValueError("the model is not fitted; fit it (e.g. scnotes.tl.ldvae) before mapping")
    if model.covariate_registry_ is None or model.var_names_ is None:
        raise ValueError(f"this {type(model).__name__} has no covariate registry / gene names: it was "
                         "fitted on arrays, not through scnotes.tl. Refit it with scnotes.tl."
                         f"{_default_key(model)[2:]}(adata, batch_key=...) so that genes and batches "
                         "can be matched by name")
    return model


def _query_counts(adata, layer):
    """The query's raw counts (``X`` or ``layers[layer]``), checked, never densified.

    Genes without counts are allowed: a small query, a held-out subset or one that lacks
    some of the reference's cell types has them, and they are data (zeros) for the
    likelihood, not an input error; unlike a fit, mapping estimates nothing per gene."""
    if layer is None:
        x, name = adata.X, "adata_query.X"
    else:
        if layer not in adata.layers:
            raise key_error("layer", layer, "adata_query.layers", adata.layers.keys(), "layer",
                            " (None: adata_query.X)")
        x, name = adata.layers[layer], f"adata_query.layers[{layer!r}]"
    return check_counts(x, name=name, allow_empty_genes=True)


def _match_genes(adata, genes, layer, min_gene_overlap):
    """Counts of ``adata`` laid out on the model's ``genes``: ``(x, w, report)``.

    ``x`` n_cells × n_model_genes (dense, CSR, or the backed matrix itself when the genes
    already agree), ``w`` None or the mask (0 on the model genes the query lacks).
    """
    q = pd.Index(np.asarray(adata.var_names, dtype=object).astype(str))
    if q.has_duplicates:
        dup = q[q.duplicated()][:5].tolist()
        raise ValueError(f"adata_query.var_names has duplicates (e.g. {dup}); genes are matched by "
                         "name: call adata_query.var_names_make_unique() or drop them")
    genes = pd.Index(np.asarray(genes, dtype=object).astype(str))
    pos = q.get_indexer(genes)
    present = pos >= 0
    n_shared, p = int(present.sum()), len(genes)
    report = dict(n_genes_model=p, n_shared=n_shared, n_missing=p - n_shared,
                  n_extra=len(q) - n_shared)
    if n_shared == 0:
        raise ValueError(f"the query shares no gene with the model ({p} genes, e.g. "
                         f"{genes[:3].tolist()}; the query has e.g. {q[:3].tolist()}); check that both "
                         "use the same gene identifiers (symbols vs Ensembl IDs)")
    if n_shared / p < min_gene_overlap:
        raise ValueError(f"the query measures {n_shared} of the model's {p} genes "
                         f"({n_shared / p:.0%}), below min_gene_overlap={min_gene_overlap:.0%}: the "
                         "encoder would see a mostly zero-filled input. Map onto a model fitted on "
                         "genes the query measures, or lower min_gene_overlap knowingly")
    x = _query_counts(adata, layer)
    if n_shared == p and len(q) == p and np.array_equal(pos, np.arange(p)):
        return x, None, report
    src = pos[present]
    # Injection of the shared genes into the model's order: one sparse product keeps
    # sparse input sparse and reorders without a dense copy.
    inject = sp.csr_matrix((np.ones(n_shared), (np.arange(n_shared), np.flatnonzero(present))),
                           shape=(n_shared, p))
    if is_backed(x):
        parts = []
        for start in range(0, x.shape[0], _CHUNK):
            part = x[start:min(x.shape[0], start + _CHUNK)]
            parts.append(sp.csr_matrix(part)[:, src] @ inject)
        out = sp.vstack(parts, format="csr")
    elif sp.issparse(x):
        out = (sp.csr_matrix(x)[:, src] @ inject).tocsr()
    else:
        x = np.asarray(x)
        out = np.zeros((x.shape[0], p), dtype=x.dtype)
        out[:, present] = x[:, src]
    w = None
    if report["n_missing"]:
        # One gene mask for every cell; dense because CountData serves mask rows by index.
        w = np.broadcast_to(present.astype(np.float64), (x.shape[0], p))
    return out, w, report


def _query_obs(adata, model, batch_key):
    """``obs`` columns of the query under the model's registry keys (the batch read from
    ``batch_key`` when given), as strings."""
    reg = model.covariate_registry_
    has_batch = model.n_batches > 0
    if batch_key is not None and not has_batch:
        raise ValueError(f"batch_key={batch_key!r} given but the model has no batch covariate "
                         f"(registry: {[k for k, _ in reg]}); map without batch_key")
    cols = {}
    for i, (key, _) in enumerate(reg):
        src = batch_key if (i == 0 and has_batch and batch_key is not None) else key
        if src not in adata.obs.columns:
            is_batch = i == 0 and has_batch
            hint = ("; the model's batch key: pass batch_key=<the query's batch column>" if is_batch
                    else "; the model's covariate key: the query needs every covariate the model was "
                    "fitted with")
            param = "batch_key" if is_batch and batch_key is not None else None
            raise key_error("obs key", src, "adata_query.obs", adata.obs.columns, param, hint)
        col = check_obs_key(adata, src)
        cols[key] = pd.Categorical(col.astype(str),
                                   categories=[str(c) for c in col.cat.categories])
    return pd.DataFrame(cols, index=adata.obs_names)


def _covariates(obs, registry):
    return encode_covariates(SimpleNamespace(obs=obs, obs_names=obs.index), registry)


def _size_factors(adata, model, size_factor_key):
    """Size factors for the query by the reference's convention (None: total counts)."""
    if size_factor_key is not None:
        if size_factor_key not in adata.obs.columns:
            raise key_error("obs key", size_factor_key, "adata_query.obs", adata.obs.columns,
                            "size_factor_key")
        return adata.obs[size_factor_key].to_numpy(dtype=np.float64)
    if model._s_mode == "scalar":
        return model._s_value
    if model._s_mode == "array":
        raise ValueError("the model was fitted with per-cell size factors (size_factor_key); pass "
                         "size_factor_key=<the query's column> to map the query")
    return None


def _missing_gene_library(q, x, w, c):
    """Size factors when the query lacks some of the model's genes: s_i = (counts of cell i
    over the genes it has) / (share of the decoder's profile on those genes at its latent).

    Why: the total of a cell counts only the measured genes, while μ spreads the expected
    count over all of the model's genes; plain totals would put every rate too low by the
    share of the missing genes."""
    present = torch.as_tensor(np.asarray(w[0]) > 0, device=q.device)
    data, _ = q._data(x, w, None, c, need_s=False, checked=True)  # size factors 1: only the profile is read
    m = q.module

    def share(x_, w_, s_, c_, g):
        mu = torch.exp(m.decode(m.encode(x_)[0], c_).double())
        return (mu * present).sum(-1) / mu.sum(-1)
    f = np.clip(q._evaluate(data, share), 1e-3, 1.0)
    tot = row_sums(x, w)
    if np.any(tot <= 0):
        bad = np.flatnonzero(tot <= 0)
        raise ValueError(f"{bad.size} query cell(s) have no counts on the model's genes (e.g. "
                         f"{bad[0]}); remove them before mapping")
    return tot / f


def query_inputs(model, adata_query, layer=None, batch_key=None, size_factor_key=None,
                 min_gene_overlap: float = MIN_GENE_OVERLAP):
    """The arrays a mapped (query) model takes for ``adata_query``: ``(x, w, s, covariates)``.

    For evaluating a model returned by :func:`map_query` on its query, e.g.
    ``model.elbo(x, w=w, s=s, covariates=covariates)``: genes matched by name as in
    :func:`map_query` (x n_cells × n_model_genes counts, reordered; w the mask,
    None when no model gene is missing; s the size factors, None for total counts),
    covariates one-hot by the model's registry (n_cells × n_covariates, or None).

    Raises
    ------
    ValueError, KeyError, TypeError : as :func:`map_query`; and a category the model
        does not know (map the query first).
    """
    model = _resolve_model(model)
    x, w, _ = _match_genes(adata_query, model.var_names_, layer, min_gene_overlap)
    obs = _query_obs(adata_query, model, batch_key)
    c = _covariates(obs, model.covariate_registry_)
    s = _size_factors(adata_query, model, size_factor_key)
    if s is None and w is not None and getattr(model.module, "library", "observed") == "observed":
        s = _missing_gene_library(model, x, w, c)
    return x, w, s, c


# --- mapping ---------------------------------------------------------------------------
def map_query(adata_query, model, *, layer=None, batch_key=None, max_epochs: int = 50,
              lr: float = 1e-2, batch_size: int | None = 128, n_samples: int = 1,
              train_encoder_first_layer: bool = False,
              min_gene_overlap: float = MIN_GENE_OVERLAP, size_factor_key=None, seed: int = 0,
              key_added: str | None = None, varm_key: str | None = None,
              cluster_key: str | None = None, proba_samples: int = 20, progress: bool = False,
              copy: bool = False):
    """Map query cells onto a fitted scnotes VAE by architecture surgery (scArches).

    Works for every VAE family fitted through ``scnotes.tl`` (PVAE, NBVAE, ZINBVAE,
    LDVAE, GMVAE). Steps:

    1. **Genes by name.** The query's genes are matched to the model's
       (``model.var_names_``): model genes the query lacks are filled with zeros and
       masked out of the likelihood (weight 0; the size factor is corrected for them,
       see below), query genes the model lacks are dropped. Both counts are reported
       in ``uns[key_added]["genes"]``.
    2. **Categories by name.** Each covariate key of the model (batch first) is read
       from the query (the batch from ``obs[batch_key]``, default the model's own
       batch key); known categories map to the reference's columns, new ones get
       new columns (surgery, :mod:`scnotes.vae._surgery`).
    3. **Training on the query** of the new columns only (and, with
       ``train_encoder_first_layer``, the encoder's first layer), by the ELBO with
       Adam, every reference weight and BatchNorm statistic frozen; skipped when the
       query brings no new category (then the query model is a copy of the reference).
    4. **Outputs** on ``adata_query`` (below).

    Because every scnotes encoder sees counts only (not the batch), the query latent is
    the frozen reference encoder applied to the query's matched counts (unless the
    encoder's first layer is trained); surgery gives the decoder the new batches'
    offsets, which the query's likelihood, ELBO and expected counts need.

    Parameters
    ----------
    adata_query : AnnData, n_cells × n_genes raw counts in ``X`` or ``layers[layer]``
        (dense, sparse or backed); its genes need not be the model's.
    model : a fitted PVAE / NBVAE / ZINBVAE / LDVAE / GMVAE from ``scnotes.tl``, or
        the path of one written by its ``save``. It is not modified.
    layer : str or None, layer holding the counts (None: ``X``)
    batch_key : str or None, the query's ``obs`` column of batches (None: the column
        named as the model's batch key)
    max_epochs : int, passes over the query cells training the new columns (50)
    lr : float, Adam learning rate (1e-2: only a few parameters move)
    batch_size : int or None, cells per minibatch (None: full batch)
    n_samples : int, Monte Carlo draws of z per cell and step
    train_encoder_first_layer : bool, also train the encoder's first linear layer
        (False: every reference weight frozen)
    min_gene_overlap : float in (0, 1], smallest share of the model's genes the query
        must measure (default :data:`MIN_GENE_OVERLAP` = 0.5)
    size_factor_key : str or None, ``obs`` column of size factors, needed only for a
        model fitted with per-cell size factors. Otherwise the model's convention:
        totals over the measured genes, divided (when model genes are missing) by the
        share of the decoder's expected profile on the measured genes at the cell's
        latent, so that rates stay on the scale the model was fitted on.
    seed : int, seeds the query model (draws, minibatch order, dropout); the caller's
        global numpy / torch / random state is not touched.
    key_added : str or None, ``obsm`` key of the query latent (default the family's
        ``tl`` key: ``"X_pvae"``, ``"X_nbvae"``, ``"X_zinbvae"``, ``"X_ldvae"``,
        ``"X_gmvae"``, so that query and reference share it for :func:`transfer_labels`)
    varm_key : str or None, LDVAE only: ``varm`` key of the reference loadings on the
        query's genes (default ``key_added`` without ``X_``)
    cluster_key : str or None, GMVAE only: ``obs`` key of the argmax cluster (default
        as :func:`scnotes.tl.gmvae`)
    proba_samples : int, GMVAE only: Monte Carlo draws for the cluster probabilities
    progress : bool, progress bar while training
    copy : bool, work on a copy and return ``(adata_copy, query_model)``

    Returns
    -------
    The query model, of the reference's class (``(adata, model)`` with ``copy=True``):
    the reference's weights, the covariate registry extended by the query's new
    categories, ``history_`` the query training record (nats per cell, as ``fit``).
    It is saved and loaded like any model of its family (``save`` / ``Class.load``).

    Writes to ``adata_query``:

    * ``obsm[key_added]``: E_q[z] (n_cells × n_latent); for LDVAE these are the
      activities of its gene programs (what the loadings multiply), for GMVAE the
      embedding E_q[x];
    * LDVAE: ``varm[varm_key]`` (n_query_genes × n_latent), the reference loadings
      (:meth:`LDVAE.get_loadings`, not centred) on the query's genes, NaN for query
      genes the model lacks;
    * GMVAE: ``obsm[key_added + "_proba"]`` (n_cells × n_clusters, E_q[p(z | x, w)])
      and ``obs[cluster_key]`` (categorical argmax, categories ``"0"`` … ``"K-1"``);
    * ``uns[key_added]``: ``params`` (the call), ``model`` (class), ``genes``
      (``n_genes_model``, ``n_shared``, ``n_missing``, ``n_extra``),
      ``new_categories`` (key → categories added), ``n_epochs``.

    Raises
    ------
    TypeError : ``model`` is not one of the five families, or a saved file of another
        model.
    ValueError : the model was not fitted through ``scnotes.tl`` (no covariate
        registry or gene names); no shared gene, or fewer than ``min_gene_overlap``;
        duplicated query genes; invalid counts; a query cell without counts on the
        model's genes; ``batch_key`` for a model without batches; missing values in a
        covariate column; a model fitted with per-cell size factors without
        ``size_factor_key``.
    KeyError : ``layer``, the batch / a covariate column or ``size_factor_key`` missing.

    Source: Lotfollahi et al. 2022, Nat Biotechnol 40:121 (scArches: architecture
    surgery, frozen reference, new condition weights trained on the query).
    """
    from ..vae import extend_registry, fit_lightning, freeze_for_query, query_model, unfreeze

    ref = _resolve_model(model)
    name = type(ref).__name__
    for nm, v in (("max_epochs", max_epochs), ("n_samples", n_samples), ("proba_samples", proba_samples)):
        if isinstance(v, bool) or int(v) != v or v < (0 if nm == "max_epochs" else 1):
            raise ValueError(f"{nm} must be a {'non-negative' if nm == 'max_epochs' else 'positive'} "
                             f"integer, got {v!r}")
    if not 0 < min_gene_overlap <= 1:
        raise ValueError(f"min_gene_overlap must lie in (0, 1], got {min_gene_overlap!r}")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr!r}")
    if copy:
        adata_query = adata_query.copy()
    key_added = key_added or _default_key(ref)

    x, w, genes = _match_genes(adata_query, ref.var_names_, layer, min_gene_overlap)
    obs = _query_obs(adata_query, ref, batch_key)
    new_reg, added = extend_registry(ref.covariate_registry_,
                                     {k: list(obs[k].cat.categories) for k in obs.columns})
    c = _covariates(obs, new_reg)
    lib_stats = None
    if getattr(ref.module, "library", "observed") == "latent" and ref.n_batches and added:
        log_s = np.log(np.maximum(row_sums(x, w), 1.0))
        cats = new_reg[0][1]
        lib_stats = {}
        for j in range(ref.n_batches, len(cats)):
            v = log_s[c[:, j] > 0]
            lib_stats[j] = (v.mean(), max(v.var() if len(v) > 1 else log_s.var(), 1e-4))
    q, _, new_cols = query_model(ref, new_reg, seed, lib_stats)
    s = _size_factors(adata_query, ref, size_factor_key)
    if s is None and w is not None and getattr(ref.module, "library", "observed") == "observed":
        s = _missing_gene_library(q, x, w, c)
    data, _ = q._data(x, w, s, c, checked=True)  # _match_genes checked the counts once
    if data.n < 2:
        raise ValueError("need at least 2 query cells")

    train = (len(new_cols) > 0 or train_encoder_first_layer) and max_epochs > 0
    t0 = time.perf_counter()
    if train:
        gen = torch.Generator(device=q.device)
        gen.manual_seed(int(seed))
        freeze_for_query(q, new_cols, train_encoder_first_layer)
        try:
            # Dropout draws from torch's global RNG: seeded inside a fork, caller untouched.
            with torch.random.fork_rng(devices=[q.device.index or 0] if q.device.type == "cuda" else []):
                torch.manual_seed(int(seed))
                q.history_, q.best_epoch_ = fit_lightning(
                    q.module, data, lr=lr, n_samples=int(n_samples), max_epochs=int(max_epochs),
                    batch_size=batch_size, objective="elbo", optimizer="adam", generator=gen,
                    rng=np.random.default_rng(int(seed)), progress=progress, desc=f"map_query {name}",
                    train_idx=np.arange(data.n))
        finally:
            unfreeze(q)
    else:
        q.history_ = pd.DataFrame(columns=["epoch", "loss"])
    q.fit_time_ = time.perf_counter() - t0
    q.n_epochs_ = len(q.history_)
    q._n_train = data.n
    if name == "GMVAE":
        q.pretrain_history_ = None

    adata_query.obsm[key_added] = q.latent(x, covariates=c, w=w)
    params = dict(layer=layer, batch_key=batch_key, max_epochs=max_epochs, lr=lr, batch_size=batch_size,
                  n_samples=n_samples, train_encoder_first_layer=train_encoder_first_layer,
                  min_gene_overlap=min_gene_overlap, size_factor_key=size_factor_key, seed=seed)
    record(adata_query, key_added, params, q)
    extra = {}
    if name == "LDVAE":
        vk = varm_key or slot_keys(key_added, varm="{base}")["varm"]  # as tl.ldvae
        load = q.get_loadings().reindex(pd.Index(np.asarray(adata_query.var_names).astype(str)))
        adata_query.varm[vk] = load.to_numpy()
        extra["varm_key"] = vk
    if name == "GMVAE":
        from ._gmvae import _slot_names

        ck, pk = _slot_names(key_added, cluster_key)
        proba = q.predict_proba(x, covariates=c, w=w, n_samples=int(proba_samples))
        adata_query.obsm[pk] = proba
        adata_query.obs[ck] = pd.Categorical([str(v) for v in proba.argmax(axis=1)],
                                             categories=[str(v) for v in range(q.n_clusters)])
        extra.update(cluster_key=ck, proba_key=pk)
    adata_query.uns[key_added].update(genes=genes, new_categories={k: list(v) for k, v in added.items()},
                                      n_epochs=int(q.n_epochs_), **extra)
    return (adata_query, q) if copy else q


# --- label transfer ----------------------------------------------------------------------
def _latent(adata, key, name):
    """``adata.obsm[key]`` as a float64 cells × dimensions array, finite and not empty."""
    z = np.asarray(adata.obsm[key])
    label = f"{name}.obsm[{key!r}]"
    if z.dtype == object or not np.issubdtype(z.dtype, np.number) or z.ndim != 2:
        raise TypeError(f"{label} must be a numeric cells × dimensions matrix, got dtype {z.dtype}, "
                        f"shape {z.shape}")
    if z.size == 0:
        raise ValueError(f"{label} is empty (shape {z.shape})")
    z = z.astype(np.float64, copy=False)
    if not np.all(np.isfinite(z)):
        raise ValueError(f"{label} contains NaN or infinite values")
    return z


def transfer_labels(adata_query, adata_reference, label_key: str, *, use_rep: str | None = None,
                    n_neighbors: int = 15, key_added: str | None = None,
                    unknown_label: str = "unknown", distance_quantile: float | None = 0.99,
                    max_uncertainty: float | None = None, backend: str = "auto", seed: int = 0):
    """Transfer reference labels to query cells by k nearest neighbours in a shared latent.

    Each query cell takes the majority label of its ``n_neighbors`` nearest reference cells
    (Euclidean, in ``obsm[use_rep]`` of both; ties go to the label listed first), with

    * **uncertainty** = 1 − (share of the neighbours voting for that label), in
      [0, 1 − 1/n_labels] (scArches' kNN transfer, uniform weights);
    * **distance** = mean distance to those neighbours;
    * **unknown** (the stated rule): the cell's distance exceeds the ``distance_quantile``
      quantile of the same statistic over the reference cells (each one's mean distance to
      its ``n_neighbors`` nearest *other* reference cells). Such a cell lies farther from
      the reference than all but 1 − ``distance_quantile`` of the reference lies from
      itself, so it is far from every reference label (a cell type the reference lacks,
      or a failed mapping). Optionally also unknown when uncertainty > ``max_uncertainty``.
      In-distribution query cells are called unknown at a rate of about
      1 − ``distance_quantile``.

    Parameters
    ----------
    adata_query, adata_reference : AnnData with the same latent in ``obsm[use_rep]``
        (n_cells × n_latent; the query's from :func:`map_query`, the reference's from the
        model's ``tl`` front or ``model.latent``)
    label_key : str, ``obs`` column of reference labels (no missing values)
    use_rep : str or None, the ``obsm`` key (None: the one ``X_…`` key both share; of
        several, the one recorded in the query's ``uns`` by :func:`map_query`, e.g.
        ``X_gmvae`` beside ``X_gmvae_proba``)
    n_neighbors : int, k (15, scanpy's default)
    key_added : str or None, ``obs`` key of the calls (default ``label_key + "_transferred"``);
        also ``key_added + "_uncertainty"``, ``key_added + "_distance"`` and
        ``uns[key_added]`` (params, the distance threshold, the unknown count)
    unknown_label : str, the label of unknown calls
    distance_quantile : float in (0, 1] or None (no distance rule)
    max_uncertainty : float or None (no uncertainty rule)
    backend : "auto" (exact below 50,000 reference cells, else pynndescent), "exact"
        (scikit-learn), "pynndescent" or "faiss" (:func:`scnotes.mnn.knn_query`)
    seed : int, random state of the approximate index

    Returns
    -------
    pandas.DataFrame indexed by the query's ``obs_names``: ``label`` (categorical, the
    reference labels plus ``unknown_label``), ``predicted`` (the majority label before the
    unknown rule), ``uncertainty``, ``distance``, ``unknown`` (bool). The same columns are
    written to ``adata_query.obs``.

    Raises
    ------
    KeyError : ``label_key`` not in the reference's ``obs``; ``use_rep`` missing.
    ValueError : missing labels in the reference; latents of different widths or with
        NaN; no common ``obsm`` key to choose; ``n_neighbors`` not below the reference
        size; ``unknown_label`` already a reference label; bad quantile / threshold.

    Source: Lotfollahi et al. 2022, Nat Biotechnol 40:121 (scArches' kNN label transfer
    and its uncertainty).
    """
    from ..mnn import knn_query, resolve_n_neighbors

    if label_key not in adata_reference.obs.columns:
        raise key_error("obs key", label_key, "adata_reference.obs", adata_reference.obs.columns,
                        "label_key")
    col = adata_reference.obs[label_key]
    if col.isna().any():
        raise ValueError(f"adata_reference.obs[{label_key!r}] has {int(col.isna().sum())} missing "
                         "labels; drop those cells first (adata_reference[adata_reference.obs"
                         f"[{label_key!r}].notna()])")
    labels = check_obs_key(adata_reference, label_key)
    cats = [str(c) for c in labels.cat.categories]
    if unknown_label in cats:
        raise ValueError(f"unknown_label={unknown_label!r} is a reference label; choose another")
    if use_rep is None:
        common = sorted(k for k in set(adata_query.obsm.keys()) & set(adata_reference.obsm.keys())
                        if k.startswith("X_"))
        if len(common) > 1:
            # A GMVAE also writes X_gmvae_proba: the latent is the key map_query (or a tl
            # front) recorded in the query's uns.
            recorded = [k for k in common if k in adata_query.uns]
            common = recorded if len(recorded) == 1 else common
        if len(common) != 1:
            raise ValueError(f"use_rep=None needs exactly one X_… obsm key shared by query and "
                             f"reference, found {common}; pass use_rep=")
        use_rep = common[0]
    for nm, a in (("adata_query", adata_query), ("adata_reference", adata_reference)):
        if use_rep not in a.obsm:
            raise key_error("obsm key", use_rep, f"{nm}.obsm", a.obsm.keys(), "use_rep")
    zr = _latent(adata_reference, use_rep, "adata_reference")
    zq = _latent(adata_query, use_rep, "adata_query")
    if zr.shape[1] != zq.shape[1]:
        raise ValueError(f"obsm[{use_rep!r}] has {zq.shape[1]} columns in the query but "
                         f"{zr.shape[1]} in the reference: not the same latent space")
    k = resolve_n_neighbors(n_neighbors)
    if k >= zr.shape[0]:
        raise ValueError(f"n_neighbors={k} must be below the number of reference cells ({zr.shape[0]})")
    if distance_quantile is not None and not 0 < distance_quantile <= 1:
        raise ValueError(f"distance_quantile must lie in (0, 1] or be None, got {distance_quantile!r}")
    if max_uncertainty is not None and not 0 <= max_uncertainty <= 1:
        raise ValueError(f"max_uncertainty must lie in [0, 1] or be None, got {max_uncertainty!r}")
    if backend == "auto":
        backend = "exact" if zr.shape[0] <= 50000 else "pynndescent"
    key_added = key_added or f"{label_key}_transferred"

    codes = labels.cat.codes.to_numpy()
    idx, dist = knn_query(zr, zq, k, backend=backend, seed=seed)
    votes = np.zeros((zq.shape[0], len(cats)))
    np.add.at(votes, (np.repeat(np.arange(zq.shape[0]), k), codes[idx].ravel()), 1.0)
    best = votes.argmax(1)
    uncertainty = 1.0 - votes[np.arange(len(best)), best] / k
    distance = dist.mean(1)
    unknown = np.zeros(len(best), dtype=bool)
    threshold = None
    if distance_quantile is not None:
        # k + 1 neighbours of each reference cell among the reference: the first is itself.
        _, dref = knn_query(zr, zr, k + 1, backend=backend, seed=seed)
        threshold = float(np.quantile(dref[:, 1:].mean(1), distance_quantile))
        unknown |= distance > threshold
    if max_uncertainty is not None:
        unknown |= uncertainty > max_uncertainty
    predicted = pd.Categorical.from_codes(best, categories=cats)
    call = np.where(unknown, unknown_label, np.asarray(predicted, dtype=object))
    out = pd.DataFrame({"label": pd.Categorical(call, categories=cats + [unknown_label]),
                        "predicted": predicted, "uncertainty": uncertainty, "distance": distance,
                        "unknown": unknown}, index=adata_query.obs_names)
    adata_query.obs[key_added] = out["label"].values
    adata_query.obs[key_added + "_uncertainty"] = uncertainty
    adata_query.obs[key_added + "_distance"] = distance
    adata_query.uns[key_added] = {
        "params": {k_: v for k_, v in dict(label_key=label_key, use_rep=use_rep, n_neighbors=k,
                                           unknown_label=unknown_label,
                                           distance_quantile=distance_quantile,
                                           max_uncertainty=max_uncertainty, backend=backend,
                                           seed=seed).items() if v is not None},
        "n_unknown": int(unknown.sum())}
    if threshold is not None:
        adata_query.uns[key_added]["distance_threshold"] = threshold
    return out
