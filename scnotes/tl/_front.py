"""The AnnData contract of every ``scnotes.tl`` front, in one place.

A front is its estimator plus the slots it writes; everything else is here
(scanpy's ``uns[key]["params"]`` way, scvi-tools' ``setup_anndata`` idea in light form):

- **the shared keywords**, taken by name by every front they apply to, with one default
  each (:data:`SHARED`): ``n_latent`` (VAEs) / ``n_components`` (NMF), ``max_epochs``,
  ``batch_size``, ``seed``, ``device``, ``progress``. ``max_epochs=None`` /
  ``batch_size=None`` mean "the family's own default" (stated in each front's docstring:
  epochs needed differ by model), ``progress=None`` means ``scnotes.settings.progress``;
- **reading AnnData** (:func:`setup`): counts from ``X`` or ``layers[layer]`` validated by
  :mod:`scnotes._checks` (non-integer, negative or NaN counts, unknown layer → a clear error),
  size factors from ``obs[size_factor_key]``, the categorical covariates (batch first) as a
  registry of categories and their one-hot encoding, the genes, all handed to the estimator's
  ``fit`` (:meth:`Inputs.fit_data`), which keeps them as its fitted state (``var_names_``,
  ``covariate_registry_``); the counts are validated once per front call; and for a
  fitted model the gene check (:func:`check_genes`, :func:`model_inputs`);
- **one slot-key helper** (:func:`slot_keys`) deriving every slot name from ``key_added``;
- **one recorder** (:func:`record`): ``adata.uns[key_added] = {"params": …, "model": …, **results}``;
- **the copy / return protocol** (:func:`begin`, :func:`finish`): the front returns the fitted
  model; with ``copy=True`` it works on a copy and returns ``(adata_copy, model)``, the input
  unchanged;
- **older names** accepted for one release with a ``DeprecationWarning`` (:func:`renamed`,
  :func:`lift_model_kwargs`).
"""
from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .._checks import check_obs_columns, check_obs_key, counts_from_adata
from .._record import record, slot_keys  # noqa: F401  (below tl, so families and pl use them too)
from .._settings import resolve_progress

__all__ = ["SHARED", "Inputs", "setup", "covariate_registry", "encode_covariates", "check_genes",
           "model_inputs", "slot_keys", "record", "begin", "finish", "renamed", "lift_model_kwargs",
           "route_kwargs", "resolve_progress"]

#: The keywords every front takes by name, with their one default.
SHARED = dict(n_latent=10, n_components=10, max_epochs=None, batch_size=None, seed=0, device="cpu",
              progress=None)


# --- reading AnnData ------------------------------------------------------------------------
def covariate_registry(adata, batch_key=None, covariate_keys=None):
    """[(key, categories), ...] for the categorical ``obs`` columns that become
    decoder covariates, the batch first. Raises KeyError / ValueError as
    :func:`scnotes._checks.check_obs_key` (missing column, missing values)."""
    keys = ([batch_key] if batch_key is not None else []) + list(covariate_keys or [])
    return [(key, [str(c) for c in check_obs_key(adata, key).cat.categories]) for key in keys]


def encode_covariates(adata, registry):
    """One-hot covariates of ``adata`` laid out by ``registry`` (categories matched
    by name, so a new AnnData with other or reordered levels maps to the columns
    the model was fitted with): ndarray n_cells × Σ levels, or None if empty.

    Raises
    ------
    KeyError : a registry key is not an ``obs`` column.
    ValueError : a cell has a category the model was not fitted with, or a missing value.
    """
    blocks = []
    for key, cats in registry or []:
        col = check_obs_key(adata, key).astype(str)
        unknown = sorted(set(col) - set(cats))
        if unknown:
            raise ValueError(f"adata.obs[{key!r}] has categories the model was not fitted with: "
                             f"{unknown[:5]}; the model knows {cats}")
        codes = pd.Categorical(col, categories=cats).codes
        blocks.append((codes[:, None] == np.arange(len(cats))).astype(np.float64))
    return np.hstack(blocks) if blocks else None


def read_size_factors(adata, size_factor_key):
    """``obs[size_factor_key]`` as float64 (n_cells,), or None (the model uses total counts).

    Raises KeyError (missing column) or ValueError (a value that is not a positive, finite number).
    """
    if size_factor_key is None:
        return None
    check_obs_columns(adata, size_factor_key, "size_factor_key")
    s = pd.to_numeric(adata.obs[size_factor_key], errors="coerce").to_numpy(dtype=np.float64)
    bad = ~(np.isfinite(s) & (s > 0))
    if bad.any():
        raise ValueError(f"adata.obs[{size_factor_key!r}] (parameter `size_factor_key`) has {int(bad.sum())} "
                         "value(s) that are not positive finite numbers (size factors must be > 0)")
    return s


@dataclass
class Inputs:
    """What a front reads from ``adata`` (:func:`setup`)."""

    x: object                 # counts, cells × genes, validated (sparse stays sparse)
    s: np.ndarray | None      # size factors or None (total counts)
    covariates: np.ndarray | None  # one-hot, cells × Σ levels
    registry: list            # [(obs key, [categories…]), …], the batch first
    n_batches: int            # levels of batch_key (0 without)
    var_names: np.ndarray     # genes

    @property
    def n_covariates(self) -> int:
        return 0 if self.covariates is None else self.covariates.shape[1]

    def fit_data(self) -> dict:
        """The keywords of a VAE's ``fit`` that carry the data: size factors, covariates, the
        genes and the covariate registry (the model keeps them as ``var_names_`` /
        ``covariate_registry_`` for save / map / predict), and ``_checked=True``: the counts
        were validated by :func:`setup`, so ``fit`` does not scan them again."""
        return dict(s=self.s, covariates=self.covariates, var_names=self.var_names,
                    covariate_registry=self.registry, _checked=True)


def setup(adata, layer=None, batch_key=None, covariate_keys=None, size_factor_key=None) -> Inputs:
    """Read the counts, size factors and covariates of ``adata`` once, validated.

    Raises
    ------
    KeyError : unknown ``layer`` or ``obs`` column (the message names it and lists the choices).
    ValueError : counts that are not non-negative integers (or NaN), bad size factors, a
        covariate column with missing values (see :mod:`scnotes._checks`).
    """
    x = counts_from_adata(adata, layer, dtype=None)  # a VAE trains in float32: no float64 copy
    registry = covariate_registry(adata, batch_key, covariate_keys)
    return Inputs(x=x, s=read_size_factors(adata, size_factor_key),
                  covariates=encode_covariates(adata, registry), registry=registry,
                  n_batches=len(registry[0][1]) if batch_key is not None else 0,
                  var_names=np.asarray(adata.var_names, dtype=object))


def check_genes(model, adata):
    """Raise ValueError unless ``adata.var_names`` are the genes ``model`` was
    fitted on, in the same order (the message names the first difference)."""
    ref = getattr(model, "var_names_", None)
    if ref is None:
        return
    new = np.asarray(adata.var_names, dtype=object)
    if len(new) != len(ref):
        raise ValueError(f"adata has {len(new)} genes but the model was fitted on {len(ref)}; "
                         "subset adata to model.var_names_ (same order)")
    diff = np.flatnonzero(new != np.asarray(ref, dtype=object))
    if diff.size:
        k = diff[0]
        raise ValueError(f"adata.var_names differ from the model's genes (position {k}: "
                         f"{new[k]!r} vs {ref[k]!r}); use adata[:, model.var_names_]")


def model_inputs(model, adata, layer=None):
    """(counts, covariates) of a new ``adata`` for a model fitted through
    ``scnotes.tl``: genes checked (:func:`check_genes`), covariates encoded by
    the model's registry (:func:`encode_covariates`)."""
    check_genes(model, adata)
    return counts_from_adata(adata, layer, dtype=None), encode_covariates(adata, getattr(model, "covariate_registry_", None))


# --- slots and records ----------------------------------------------------------------------
def begin(adata, copy: bool):
    """The AnnData a front writes to: a copy with ``copy=True`` (the input is left unchanged)."""
    return adata.copy() if copy else adata


def finish(adata, model, copy: bool):
    """What every front returns: the fitted model, or ``(adata_copy, model)`` with ``copy=True``."""
    return (adata, model) if copy else model


# --- keywords -------------------------------------------------------------------------------
def _caller_stacklevel() -> int:
    """The ``stacklevel`` of the deprecation warnings: the front's own frame, not the caller's.

    Python shows a DeprecationWarning by default only when it is attributed to ``__main__``; a
    chapter's cells run in ``__main__``, and a warning there lands on the executed page (stderr).
    Attributed to ``scnotes.tl`` it stays out of pages and is seen by pytest and ``-W error``.
    (Every chapter now uses the new names; pointing the warning at the caller would make a reader's
    own notebook show it, at the cost of a page that slips back to an old name showing it too.)"""
    return 2


def renamed(kwargs: dict, old: str, new: str, value, default, front: str):
    """Accept ``old`` (in ``kwargs``) as the older name of ``new`` for one release, with a
    DeprecationWarning; returns the value to use. Both given → TypeError."""
    if old not in kwargs:
        return value
    old_value = kwargs.pop(old)
    warnings.warn(f"scnotes.tl.{front}: `{old}` is the older name of `{new}`; pass {new}={old_value!r} "
                  "(the old name goes in the next release)", DeprecationWarning, stacklevel=_caller_stacklevel())
    if value != default and value != old_value:
        raise TypeError(f"scnotes.tl.{front}: got both {new}={value!r} and its older name {old}={old_value!r}")
    return old_value


def lift_model_kwargs(model_kwargs, shared: dict, front: str) -> dict:
    """The older ``model_kwargs=dict(...)`` of the VAE fronts: its entries become keywords of the
    front (the shared ones, e.g. ``seed``, ``device``, replace the defaults in ``shared``), with
    one DeprecationWarning. Returns the remaining estimator keywords."""
    if not model_kwargs:
        return {}
    kw = dict(model_kwargs)
    warnings.warn(f"scnotes.tl.{front}: model_kwargs is deprecated; pass its entries as keywords "
                  f"({', '.join(f'{k}=' for k in kw)})", DeprecationWarning, stacklevel=_caller_stacklevel())
    for name in list(kw):
        if name in shared:
            if shared[name] != SHARED.get(name, shared[name]) and shared[name] != kw[name]:
                raise TypeError(f"scnotes.tl.{front}: {name} given twice ({shared[name]!r} and "
                                f"model_kwargs[{name!r}]={kw[name]!r})")
            shared[name] = kw.pop(name)
    return kw


def _named_parameters(func) -> set:
    return {n for n, p in inspect.signature(func).parameters.items()
            if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and n != "self"}


def route_kwargs(cls, kwargs: dict):
    """Split a front's ``**kwargs`` between the estimator's constructor and its ``fit``: a name
    that ``cls.fit`` (or a base class's ``fit``) takes goes to ``fit``, every other one to the
    constructor (which raises TypeError for an unknown one). Returns ``(init_kw, fit_kw)``."""
    fit_names = set()
    for klass in cls.__mro__:
        if "fit" in vars(klass):
            fit_names |= _named_parameters(vars(klass)["fit"])
    # the data and what the front passes itself (fit_data) are never a user's keyword
    fit_names = {n for n in fit_names if not n.startswith("_")} - {"x", "w", "s", "covariates", "var_names",
                                                                    "covariate_registry"}
    init_kw = {k: v for k, v in kwargs.items() if k not in fit_names}
    fit_kw = {k: v for k, v in kwargs.items() if k in fit_names}
    return init_kw, fit_kw


def fit_default(cls, name: str):
    """The default of ``name`` in ``cls.fit`` (what ``max_epochs=None`` / ``batch_size=None``
    of a front leave in force), or None."""
    p = inspect.signature(cls.fit).parameters.get(name)
    return None if p is None or p.default is inspect.Parameter.empty else p.default
