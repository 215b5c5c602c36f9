"""Minibatches of counts, masks, size factors and covariates for the count VAEs.

Dense input is held once as a float32 tensor on the model's device and
indexed there. A backed AnnData's ``X`` (``anndata.read_h5ad(path, backed="r")``)
stays on disk: each minibatch's rows are read from the file, so memory does not
grow with the number of cells. Scipy sparse input stays CSR in host memory; only the rows of
one minibatch are densified (``x[idx].toarray()``), so training never builds
a dense n_cells × n_genes copy (except with ``batch_size=None``, where the
single full batch *is* the whole matrix). Both paths give bit-identical
float32 minibatches, so dense and sparse input train identically.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

__all__ = ["CountData", "batch_indices"]


def batch_indices(n: int, batch_size: int | None, rng: np.random.Generator | None):
    """Split range(n) into minibatch index arrays.

    ``batch_size=None`` (or ≥ n) gives one full batch in the original order.
    Otherwise the cells are permuted with ``rng`` (None: no shuffling) and
    cut into consecutive pieces, each sorted; a last piece of a single cell is merged into
    the one before, because BatchNorm cannot normalise a batch of one.
    """
    if batch_size is None or batch_size >= n:
        return [np.arange(n)]
    if batch_size < 2:
        raise ValueError(f"batch_size must be at least 2 (BatchNorm), got {batch_size}")
    order = rng.permutation(n) if rng is not None else np.arange(n)
    # Each minibatch in increasing row order: CSR row gathers are faster, and a
    # backed file (read in increasing order) gets the same minibatches, the same
    # Monte Carlo draws per cell and so the same fit as the data in memory.
    pieces = [np.sort(order[i:i + batch_size]) for i in range(0, n, batch_size)]
    if len(pieces) > 1 and len(pieces[-1]) == 1:
        pieces[-2] = np.concatenate([pieces[-2], pieces[-1]])
        pieces.pop()
    return pieces


def _is_all_rows(idx: np.ndarray, n: int) -> bool:
    """idx is 0, 1, …, n − 1 (checked without an ``np.arange(n)`` copy)."""
    idx = np.asarray(idx)
    return (len(idx) == n and n > 0 and idx[0] == 0 and idx[-1] == n - 1
            and bool(np.all(idx[1:] > idx[:-1])))


class _Rows:
    """Row access to one n × m matrix (dense → device tensor, sparse → CSR on host,
    backed → CSR on disk, each minibatch's rows read from the file)."""

    def __init__(self, a, device):
        from .._checks import is_backed

        self.device = device
        self.backed = a if is_backed(a) else None
        if self.backed is not None:
            self.sparse = self.dense = None
        elif sp.issparse(a):
            self.sparse = sp.csr_matrix(a, dtype=np.float32)
            self.dense = None
        else:
            self.sparse = None
            self.dense = torch.as_tensor(np.asarray(a, dtype=np.float32), device=device)

    def __call__(self, idx: np.ndarray) -> torch.Tensor:
        if self.backed is not None:
            # h5py reads rows only at increasing indices; CountData.get sorts them.
            part = self.backed[idx]
            part = part.toarray() if sp.issparse(part) else np.asarray(part)
            return torch.as_tensor(part.astype(np.float32, copy=False), device=self.device)
        if self.dense is not None:
            if _is_all_rows(idx, self.dense.shape[0]):
                return self.dense
            return self.dense[torch.as_tensor(idx, device=self.device)]
        return torch.as_tensor(self.sparse[idx].toarray(), device=self.device)


class CountData:
    """Counts ``x`` (n × p), optional mask ``w`` (n × p), size factors ``s`` (n,),
    optional covariates (n × c), served as float32 tensors on ``device``.

    Inputs must already be validated (see :mod:`scnotes.vae._model`).
    ``get(idx)`` returns ``(x, w, s, c)`` for the rows ``idx``; ``w`` and ``c``
    are None when absent. Masked entries of ``x`` are zero-filled here, so
    neither the encoder nor the likelihood ever sees their values.
    """

    def __init__(self, x, s, w=None, covariates=None, device="cpu"):
        self.n = x.shape[0]
        self.device = torch.device(device)
        self._x = _Rows(x, self.device)
        self._w = None if w is None else _Rows(w, self.device)
        self._s = torch.as_tensor(np.asarray(s, dtype=np.float32), device=self.device)
        self._c = (None if covariates is None
                   else torch.as_tensor(np.asarray(covariates, dtype=np.float32), device=self.device))
        self._cache = None
        self._subset_cache = {}  # full batches of the training / validation subsets

    def get(self, idx: np.ndarray):
        if self._x.backed is not None:
            # Rows of a file are read in increasing order; a minibatch is a set of
            # cells, so sorting it changes no bound (only the summation order).
            idx = np.sort(idx)
        full = _is_all_rows(idx, self.n)
        if full and self._cache is not None:
            return self._cache
        hit = self._subset_cache.get(id(idx))
        if hit is not None and hit[0] is idx:
            return hit[1]
        x = self._x(idx)
        w = None if self._w is None else self._w(idx)
        if w is not None:
            x = torch.where(w > 0, x, torch.zeros_like(x))
        if full:
            s, c = self._s, self._c
        else:
            t = torch.as_tensor(idx, device=self.device)
            s = self._s[t]
            c = None if self._c is None else self._c[t]
        out = (x, w, s, c)
        if full:
            # Full-batch training reuses the same (densified) batch every epoch.
            self._cache = out
        return out

    def batches(self, batch_size: int | None, rng: np.random.Generator | None):
        """Yield ``(idx, (x, w, s, c))`` for one pass over the data."""
        for idx in batch_indices(self.n, batch_size, rng):
            yield idx, self.get(idx)

    def index_batches(self, subset: np.ndarray, batch_size: int | None,
                      rng: np.random.Generator | None = None):
        """Minibatch index arrays over the rows ``subset`` (see :func:`batch_indices`).

        A full batch of a proper subset (``batch_size=None``) is the same array
        object every epoch and its tensors are kept, like the full data's.
        """
        if _is_all_rows(subset, self.n):
            return batch_indices(self.n, batch_size, rng)
        pieces = batch_indices(len(subset), batch_size, rng)
        if len(pieces) == 1:
            for key, _ in self._subset_cache.values():
                if np.array_equal(key, subset):
                    return [key]
            key = np.array(subset)
            self._subset_cache[id(key)] = (key, self.get(key))
            return [key]
        return [subset[p] for p in pieces]
