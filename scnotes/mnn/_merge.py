"""Batch bookkeeping shared by both MNN corrections: validation and merge order.

Merging follows batchelor (Lun et al.): batches are merged one step at a time;
at each step a "left" set (the reference, already merged) and a "right" set
(corrected towards it) are combined. The order is either given (a linear
order: first batch is the reference, each next one is merged into everything
before it) or automatic: at every step the two current groups with the most
MNN pairs are merged, the larger one acting as the reference (batchelor's
``auto.merge=TRUE``, which merges the best-connected sets first).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ._neighbors import find_mutual_nn

__all__ = ["check_batches", "stack_rows", "run_merges", "MergeStep"]


def check_batches(batch, n_cells: int, k: int):  # k: the neighbour count (n_neighbors)
    """Validate per-cell batch labels; return (categories, codes).

    Parameters
    ----------
    batch : array-like, shape (n_cells,)
        Batch label of each cell. Categorical order (if any) is kept,
        otherwise labels are sorted.
    n_cells : int
        Number of cells of the data the labels belong to.
    k : int
        Number of neighbours (``n_neighbors`` of the corrections); each batch
        needs at least that many cells.

    Raises
    ------
    ValueError
        If lengths differ, labels are missing, there is only one batch, or a
        batch has fewer than ``k`` cells.
    """
    if batch is None:
        raise ValueError("batch labels are required (one label per cell)")
    b = pd.Series(np.asarray(batch) if not isinstance(batch, (pd.Series, pd.Categorical)) else batch)
    if len(b) != n_cells:
        raise ValueError(f"batch has {len(b)} labels but the data have {n_cells} cells")
    if b.isna().any():
        raise ValueError(f"batch has {int(b.isna().sum())} missing labels")
    cat = pd.Categorical(b)
    cat = cat.remove_unused_categories()
    categories = list(cat.categories)
    if len(categories) < 2:
        raise ValueError(f"MNN correction needs at least two batches; found {len(categories)} "
                         f"({categories})")
    counts = np.bincount(cat.codes, minlength=len(categories))
    small = [(c, int(n)) for c, n in zip(categories, counts) if n < k]
    if small:
        raise ValueError(f"batches with fewer cells than n_neighbors = {k}: {small}; lower "
                         "n_neighbors or drop them")
    return categories, np.asarray(cat.codes, dtype=np.int64)


def stack_rows(blocks):
    """Row-stack dense/sparse blocks; stays sparse only if every block is sparse."""
    if all(sp.issparse(b) for b in blocks):
        return sp.vstack(blocks, format="csr")
    return np.vstack([b.toarray() if sp.issparse(b) else np.asarray(b) for b in blocks])


@dataclass
class MergeStep:
    """One merge: batches on each side and its MNN pairs (indices of the original cells)."""

    left: list
    right: list
    left_cells: np.ndarray = field(repr=False)
    right_cells: np.ndarray = field(repr=False)

    @property
    def n_pairs(self) -> int:
        return int(len(self.left_cells))


def _resolve_order(merge_order, categories):
    if merge_order is None:
        return list(range(len(categories)))
    order = []
    for m in merge_order:
        if m in categories:
            order.append(categories.index(m))
        elif isinstance(m, (int, np.integer)) and 0 <= int(m) < len(categories):
            order.append(int(m))
        else:
            raise ValueError(f"merge_order entry {m!r} is not a batch ({categories})")
    if sorted(order) != list(range(len(categories))):
        raise ValueError(f"merge_order must list every batch exactly once; got {list(merge_order)} "
                         f"for batches {categories}")
    return order


def run_merges(blocks, cells, categories, step, merge_order=None, auto_merge=False,
               k=20, backend="exact", seed=0, n_jobs=1, n_candidates=None):
    """Drive the merge steps.

    Parameters
    ----------
    blocks : list of tuples
        Per batch, a tuple of row-aligned matrices; element 0 is the one in
        which neighbours are searched.
    cells : list of ndarray
        Per batch, the original row indices of its cells.
    step : callable
        ``step(left_tuple, right_tuple, (first, second)) -> (left_tuple, right_tuple)``
        gets both sides (stacked) and their MNN pairs and returns the updated data.
    n_candidates
        As :func:`scnotes.mnn.find_mutual_nn`.

    Returns
    -------
    blocks : list of tuples
        Corrected per-batch blocks (same order as the input).
    steps : list of MergeStep

    Every pair of groups is searched for MNN pairs at most once per step, and
    only once in all: with ``auto_merge`` the pairs of two groups that a step
    leaves unchanged are kept for the next step (only the new merged group is
    searched against the others), and the chosen pair's search is the one the
    step corrects with. With B batches that is B(B−1)/2 + (B−2)(B−1)/2
    searches instead of B(B²−1)/6 + B − 1 (batchelor searches every pair of
    groups again at each step).
    """
    blocks = list(blocks)
    if auto_merge:
        if merge_order is not None:
            raise ValueError("give either merge_order or auto_merge=True, not both")
        groups = [[b] for b in range(len(blocks))]
    else:
        order = _resolve_order(merge_order, categories)
        groups = [[order[0]]] + [[b] for b in order[1:]]

    def stacked(group, j):
        return stack_rows([blocks[b][j] for b in group])

    def search(g1, g2):
        return find_mutual_nn(stacked(g1, 0), stacked(g2, 0), k, k, backend=backend, seed=seed,
                              n_jobs=n_jobs, n_candidates=n_candidates)

    found = {}  # (tuple(group a), tuple(group c)) -> pairs (rows of a, rows of c)
    steps = []
    while len(groups) > 1:
        if auto_merge:
            best = None
            for a in range(len(groups)):
                for c in range(a + 1, len(groups)):
                    key = (tuple(groups[a]), tuple(groups[c]))
                    if key not in found:
                        found[key] = search(groups[a], groups[c])
                    n_pairs = len(found[key][0])
                    if best is None or n_pairs > best[0]:
                        best = (n_pairs, a, c)
            _, a, c = best
            f, s = found[(tuple(groups[a]), tuple(groups[c]))]
            size = [sum(len(cells[b]) for b in groups[g]) for g in (a, c)]
            if size[0] >= size[1]:
                li, ri, first, second = a, c, f, s
            else:  # the larger side is the reference: flip the pairs, sorted by the new first
                o = np.lexsort((f, s))
                li, ri, first, second = c, a, s[o], f[o]
            found = {key: v for key, v in found.items()
                     if not set(key[0] + key[1]) & set(groups[a] + groups[c])}
        else:
            li, ri = 0, 1
            first, second = search(groups[0], groups[1])
        lg, rg = groups[li], groups[ri]
        n_parts = len(blocks[lg[0]])
        left = tuple(stacked(lg, j) for j in range(n_parts))
        right = tuple(stacked(rg, j) for j in range(n_parts))
        left, right = step(left, right, (first, second))
        for group, data in ((lg, left), (rg, right)):
            offs = np.cumsum([0] + [len(cells[b]) for b in group])
            for i, b in enumerate(group):
                blocks[b] = tuple(d[offs[i]:offs[i + 1]] for d in data)
        del left, right
        lcells = np.concatenate([cells[b] for b in lg])
        rcells = np.concatenate([cells[b] for b in rg])
        steps.append(MergeStep([categories[b] for b in lg], [categories[b] for b in rg],
                               lcells[first], rcells[second]))
        merged = lg + rg
        groups = [g for i, g in enumerate(groups) if i not in (li, ri)]
        groups.insert(0, merged)
    return blocks, steps
