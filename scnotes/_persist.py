"""One on-disk format for every scnotes estimator: :func:`save_model` / :func:`load_model`.

Every family's ``save(path)`` / ``Class.load(path)`` goes through here. The file is a
``torch.save`` of one dict::

    format          "scnotes-model"
    format_version  1  (FORMAT_VERSION)
    class           public name of the class, e.g. "scnotes.vae.LDVAE" (one registry: _CLASSES)
    cls             its short name, "LDVAE" (for readers that only peek)
    params          model.get_params()  (the __init__ arguments; ``device`` is replaced at load)
    state           model._get_state()  (weights, fitted arrays and attributes, training record)
    var_names_, covariate_registry_   the genes and covariate categories (None where absent)
    scnotes_version scnotes.__version__ of the writer

Safety. Everything in the file is stored as tensors and plain Python values (NumPy arrays,
DataFrames and torch dtypes are encoded as tagged dicts, see :func:`_encode`), so the
current format is read with ``torch.load(weights_only=True)``: reading a file can never run
code, whoever wrote it. Files of the older per-family formats (torch pickles of the VAEs and
GLMM VEBs; the NMF ``.npz`` + JSON) still load through their family's ``_load_legacy``; a
legacy torch file is unpickled in full only after its pickle's globals (listed without
unpickling, :func:`torch.serialization.get_unsafe_globals_in_checkpoint`) were all found in
:data:`_LEGACY_GLOBALS`, the NumPy / pandas names the old writers produced.

Version rule: bump :data:`FORMAT_VERSION` on any change an older reader would misread, and
keep a reader for every older version (the committed fixtures in ``tests/fixtures/models``
and ``tests/fixtures/legacy`` must keep loading).
"""
from __future__ import annotations

import importlib
import inspect
import pickle

import numpy as np

__all__ = ["save_model", "load_model", "FORMAT", "FORMAT_VERSION"]

FORMAT = "scnotes-model"
FORMAT_VERSION = 1

#: The one registry of loadable classes: public name → (module, attribute).
_CLASSES = {
    "scnotes.vae.CountVAE": ("scnotes.vae._model", "CountVAE"),
    "scnotes.vae.PVAE": ("scnotes.vae._model", "PVAE"),
    "scnotes.vae.NBVAE": ("scnotes.vae._model", "NBVAE"),
    "scnotes.vae.ZINBVAE": ("scnotes.vae._model", "ZINBVAE"),
    "scnotes.vae.LDVAE": ("scnotes.vae._ldvae", "LDVAE"),
    "scnotes.vae.GMVAE": ("scnotes.vae._gmvae", "GMVAE"),
    "scnotes.nmf.PoissonNMF": ("scnotes.nmf._poisson", "PoissonNMF"),
    "scnotes.nmf.NBMF": ("scnotes.nmf._nb", "NBMF"),
    "scnotes.glmm.PoissonGLMMVEB": ("scnotes.glmm._veb", "PoissonGLMMVEB"),
    "scnotes.glmm.NBGLMMVEB": ("scnotes.glmm._nb", "NBGLMMVEB"),
}

#: Globals the old per-family torch writers put in their pickles (NumPy arrays, pandas frames).
_LEGACY_GLOBALS = frozenset({
    "numpy._core.multiarray._reconstruct", "numpy.core.multiarray._reconstruct", "numpy.ndarray",
    "numpy.dtype", "numpy._core.multiarray.scalar", "numpy.core.multiarray.scalar",
    "builtins.bytes", "builtins.slice", "builtins.object",
    "pandas.core.frame.DataFrame", "pandas.core.internals.managers.BlockManager",
    "pandas._libs.internals._unpickle_block", "pandas.core.indexes.base._new_Index",
    "pandas.core.indexes.range.RangeIndex", "pandas.core.indexes.base.Index",
}) | {f"numpy.dtypes.{n}DType" for n in ("Float64", "Float32", "Int64", "Int32", "Bool", "Object",
                                          "Str", "UInt8", "Int8")}


# --- the class registry --------------------------------------------------------------------
def _resolve(name):
    """The class registered under ``name`` (public or short name), or None."""
    if name is None:
        return None
    key = name if name in _CLASSES else next((k for k in _CLASSES if k.rsplit(".", 1)[1] == name), None)
    if key is None:
        return None
    module, attr = _CLASSES[key]
    return getattr(importlib.import_module(module), attr)


def class_name(cls) -> str:
    """Public registry name of ``cls``; TypeError if it is not a loadable scnotes class."""
    for key in _CLASSES:
        if _resolve(key) is cls:
            return key
    raise TypeError(f"{cls.__name__} is not a registered scnotes model class "
                    f"(one of {', '.join(k.rsplit('.', 1)[1] for k in _CLASSES)})")


# --- encoding: only tensors and plain values reach the file ---------------------------------
def _encode(v):
    import pandas as pd
    import torch

    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, torch.Tensor):
        return v.detach().cpu()
    if isinstance(v, np.ndarray):
        if v.dtype.kind in "biufc":
            return {"__ndarray__": torch.from_numpy(np.ascontiguousarray(v).copy())}
        return {"__ndarray__": _encode(v.tolist()), "dtype": v.dtype.str, "shape": list(v.shape)}
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, torch.dtype):
        return {"__dtype__": str(v).replace("torch.", "")}
    if isinstance(v, torch.device):
        return str(v)
    if isinstance(v, pd.DataFrame):
        idx = v.index
        plain = isinstance(idx, pd.RangeIndex) and idx.start == 0 and idx.step == 1
        return {"__dataframe__": [str(c) for c in v.columns],
                "data": [_encode(v[c].to_numpy()) for c in v.columns],
                "index": None if plain else _encode(idx.to_numpy()), "index_name": idx.name}
    if isinstance(v, dict):
        return {_encode(k): _encode(x) for k, x in v.items()}
    if isinstance(v, tuple):
        return tuple(_encode(x) for x in v)
    if isinstance(v, list):
        return [_encode(x) for x in v]
    raise TypeError(f"cannot save a value of type {type(v).__name__} in a scnotes model file")


def _decode(v):
    import pandas as pd
    import torch

    if isinstance(v, dict):
        if "__ndarray__" in v:
            a = v["__ndarray__"]
            if isinstance(a, torch.Tensor):
                return a.numpy()
            out = np.empty(len(a), dtype=object) if v["dtype"] == "|O" else None
            if out is not None and len(v["shape"]) == 1:
                out[:] = [_decode(x) for x in a]
                return out
            return np.asarray(_decode(a), dtype=np.dtype(v["dtype"])).reshape(v["shape"])
        if "__dtype__" in v:
            return getattr(torch, v["__dtype__"])
        if "__dataframe__" in v:
            index = None if v["index"] is None else pd.Index(_decode(v["index"]), name=v["index_name"])
            data = {c: _decode(a) for c, a in zip(v["__dataframe__"], v["data"])}
            return pd.DataFrame(data, columns=v["__dataframe__"], index=index)
        return {_decode(k): _decode(x) for k, x in v.items()}
    if isinstance(v, tuple):
        return tuple(_decode(x) for x in v)
    if isinstance(v, list):
        return [_decode(x) for x in v]
    return v


# --- save / load -------------------------------------------------------------------------
def save_model(model, path):
    """Write ``model`` to ``path`` (exactly that file) in the current format."""
    import torch

    from . import __version__

    params = dict(model.get_params())
    params.pop("device", None)  # chosen at load time
    names = getattr(model, "var_names_", None)
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION,
               "class": class_name(type(model)), "cls": type(model).__name__,
               "params": params, "state": model._get_state(),
               "var_names_": None if names is None else [str(g) for g in names],
               "covariate_registry_": getattr(model, "covariate_registry_", None),
               "scnotes_version": __version__}
    torch.save(_encode(payload), path)


def _not_a_model(path, why=""):
    return ValueError(f"{path} is not a model file written by scnotes save(){why}")


def _read(path):
    """("current" | "legacy", payload dict) or ("nmf", (meta, arrays)); ValueError otherwise."""
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # Not the current format: an old torch writer's pickle, or not ours at all.
        from torch.serialization import get_unsafe_globals_in_checkpoint

        try:
            found = get_unsafe_globals_in_checkpoint(path)
        except Exception as e:  # noqa: BLE001 (not a torch file at all)
            raise _not_a_model(path) from e
        foreign = sorted(set(found) - _LEGACY_GLOBALS)
        if foreign:
            raise _not_a_model(path, f" (its pickle references {', '.join(foreign[:3])})") from None
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise
    except Exception:  # noqa: BLE001 (not a torch file: the NMF .npz format, or not ours)
        return "nmf", _read_nmf(path)
    if not isinstance(obj, dict):
        raise _not_a_model(path)
    if "format" in obj:
        if obj["format"] != FORMAT:
            raise _not_a_model(path, f" (format {obj['format']!r})")
        return "current", obj
    if "cls" in obj:
        return "legacy", obj
    raise _not_a_model(path)


def _read_nmf(path):
    """The NMF family's older ``.npz`` + JSON format (no pickles)."""
    import json

    try:
        with np.load(path, allow_pickle=False) as z:
            if "__meta__" not in z.files:
                raise _not_a_model(path)
            meta = json.loads(str(z["__meta__"]))
            arrays = {k: z[k] for k in z.files if k != "__meta__"}
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001 (any unreadable file gets the same message)
        raise _not_a_model(path) from e
    return meta, arrays


def _check_class(path, name, expected_class):
    target = _resolve(name)
    if target is None or (expected_class is not None and not issubclass(target, expected_class)):
        want = expected_class.__name__ if expected_class is not None else "registered scnotes model class"
        raise TypeError(f"{path} holds a {name}, not a {want}")
    return target


def load_model(path, expected_class=None, device="cpu"):
    """Read a model written by any scnotes ``save`` (this format or an older one).

    Parameters
    ----------
    path : file written by ``save``.
    expected_class : class or None; the file's class must be it or a subclass.
    device : torch device for the torch families (ignored by NMF).

    Raises
    ------
    ValueError : not a scnotes model file; written by a newer scnotes (a higher format version).
    TypeError : the file holds another class than ``expected_class`` (the message names both).
    """
    kind, payload = _read(path)
    if kind == "nmf":
        meta, arrays = payload
        target = _check_class(path, meta.get("cls"), expected_class)
        return target._load_legacy(meta, arrays, device=device)
    if kind == "legacy":
        target = _check_class(path, payload.get("cls"), expected_class)
        return target._load_legacy(payload, device=device)
    version = payload.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(f"{path} was written by a newer scnotes (format version {version}, "
                         f"scnotes {payload.get('scnotes_version')}); this one reads versions "
                         f"<= {FORMAT_VERSION}: upgrade scnotes")
    target = _check_class(path, payload["class"], expected_class)
    data = _decode(payload)
    model = target._from_state(data["params"], data["state"], device=device)
    names = data["var_names_"]  # every fitted estimator has var_names_ (None: fitted on an array)
    model.var_names_ = None if names is None else np.asarray(names, dtype=object)
    if data["covariate_registry_"] is not None or hasattr(model, "covariate_registry_"):
        model.covariate_registry_ = data["covariate_registry_"]
    return model


# --- get_params / repr -----------------------------------------------------------------
def _same(a, b) -> bool:
    try:
        if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
            return bool(np.array_equal(np.asarray(a), np.asarray(b)))
        return bool(a == b)
    except (TypeError, ValueError):
        return False


def params_repr(model) -> str:
    """``Class(arg=value, ...)`` with the ``get_params()`` that differ from ``__init__``'s
    defaults (arguments without a default are always shown)."""
    sig = {}
    for c in reversed(type(model).__mro__):  # a subclass's own default wins (NBVAE's **kwargs: PVAE's)
        if "__init__" in vars(c) and c is not object:
            sig.update({k: p for k, p in inspect.signature(c.__init__).parameters.items()
                        if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)})
    shown = []
    for k, v in model.get_params().items():
        p = sig.get(k)
        if p is None or p.default is inspect.Parameter.empty or not _same(v, p.default):
            shown.append(f"{k}={v!r}")
    return f"{type(model).__name__}({', '.join(shown)})"


class Persistent:
    """What every saved estimator shares: ``repr`` from ``get_params()`` (:func:`params_repr`) and
    ``Class.load(path, device="cpu")`` through :func:`load_model`. A family supplies ``get_params``,
    ``save`` (with its own "not fitted" check), ``_get_state`` / ``_from_state`` and ``_load_legacy``."""

    def __repr__(self):
        return params_repr(self)

    @classmethod
    def load(cls, path, device: str = "cpu"):
        """Read a model written by ``save`` (this format or the family's older one); returns the
        fitted estimator (torch families on ``device``; ignored by NMF).

        Raises
        ------
        TypeError : the file holds another model class (the message names both).
        ValueError : not a scnotes model file, or one written by a newer scnotes.
        """
        return load_model(path, expected_class=cls, device=device)
