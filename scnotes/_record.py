"""The one record of a call in ``adata.uns[key_added]`` (scanpy's ``uns[key]["params"]``).

It lives below every package (beside ``_checks``) so that the ``tl`` fronts and a family's
own ``to_adata`` (MNN) write records of one shape without a family importing ``tl``; the one
derivation of slot names from ``key_added`` (:func:`slot_keys`) lives here for the same reason
(``pl`` reads the slots the fronts wrote).
"""
from __future__ import annotations

import numpy as np

__all__ = ["record", "slot_keys"]


def _plain(v):
    """A value ``write_h5ad`` can store in ``uns`` (Python scalars, str, lists / dicts of them),
    or ``_SKIP``."""
    if isinstance(v, np.generic):
        return v.item()
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (list, tuple)) and all(isinstance(e, (bool, int, float, str, np.generic)) for e in v):
        return [e.item() if isinstance(e, np.generic) else e for e in v]
    if isinstance(v, dict):
        d = {str(k): _plain(e) for k, e in v.items()}
        return {k: e for k, e in d.items() if e is not _SKIP and e is not None}
    return _SKIP


_SKIP = object()


def record(adata, key_added: str, params: dict, model=None, **results):
    """Store one front call in ``adata.uns[key_added]``: ``params`` (the call's named arguments
    that ``write_h5ad`` can store, None included; objects such as arrays left out), ``model`` (the
    estimator's class name) and each of ``results`` (e.g. ``results=table``, ``slots=…``)
    under its own key. Replaces an earlier record under the same key. Returns the record."""
    clean = {k: _plain(v) for k, v in params.items()}
    rec = {"params": {k: v for k, v in clean.items() if v is not _SKIP}}
    if model is not None:
        rec["model"] = type(model).__name__
    rec.update(results)
    adata.uns[key_added] = rec
    return rec


def slot_keys(key_added: str, **derived) -> dict:
    """Slot names of one front call, all derived from ``key_added`` (scanpy's ``_embedding_keys``).

    Always ``uns`` and ``obsm`` (= ``key_added``) and ``base`` (``key_added`` without a leading
    ``"X_"``); each ``derived`` template is formatted with ``key`` (= ``key_added``) and ``base``,
    e.g. ``slot_keys("X_gmvae", cluster="{base}_cluster", proba="{key}_proba")`` →
    ``cluster="gmvae_cluster"``, ``proba="X_gmvae_proba"``.
    """
    base = key_added[2:] if key_added.startswith("X_") else key_added
    out = dict(uns=key_added, obsm=key_added, base=base)
    out.update({name: t.format(key=key_added, base=base) for name, t in derived.items()})
    return out
