"""Reading a reference's gene programs on mapped query cells: which programs mark which of
the query's labels, and which genes those programs raise (the map_query chapter's table,
drawn by :func:`scnotes.pl.program_marks`)."""
from __future__ import annotations

import pandas as pd

__all__ = ["program_marks"]


def _label_series(labels, n_cells: int) -> pd.Series:
    """``labels`` as a categorical Series (a categorical keeps its order, others are sorted)."""
    lab = labels if isinstance(labels, pd.Series) else pd.Series(labels)
    if len(lab) != n_cells:
        raise ValueError(f"labels has {len(lab)} entries but activities {n_cells} cells")
    return lab.astype("category")


def _strongest(marks: pd.DataFrame, n: int) -> list[str]:
    """Per label, the ``n`` programs of largest |mark|, with their signed marks."""
    return [", ".join(f"{p} ({row[p]:+.1f})" for p in row.abs().nlargest(n).index) for _, row in marks.iterrows()]


def program_marks(activities, labels, loadings: pd.DataFrame, n_programs: int = 2, n_genes: int = 6):
    """Which gene programs mark which label: ``(marks, table)``.

    With :math:`\\bar z_\\ell - \\bar z` the mean activities of label :math:`\\ell`'s cells minus
    the mean over all cells, ``marks`` is that departure in standard deviations over the cells
    (labels × programs); under a decoder whose log expression is linear in the activities
    (LDVAE: :math:`\\log \\text{share}_j = w_j^\\top z + \\text{const}`), gene :math:`j`'s log
    share of a cell's counts moves by :math:`w_j^\\top(\\bar z_\\ell - \\bar z)` for the label's
    mean cell, and the genes it raises most are ranked by that. A shift of a program's loadings
    (the same for every gene) moves every gene alike and does not change the ranking.

    Parameters
    ----------
    activities : n_cells × k program activities (e.g. a mapped query's ``obsm["X_ldvae"]``),
        columns in the order of ``loadings``' columns
    labels : one label per cell (a categorical keeps its category order; others are sorted);
        cells with a missing label are left out
    loadings : n_genes × k DataFrame (genes as index, programs as columns), e.g. the
        reference's centred loadings over the genes to rank
    n_programs, n_genes : programs and genes named per label in ``table``

    Returns
    -------
    marks : labels × programs DataFrame (standard deviations over the cells)
    table : per label (index as ``marks``): ``"cells"`` (its cell count), ``"programs that move
        most (sd)"`` (the ``n_programs`` of largest |mark|, signed, one decimal) and ``"genes
        they raise most"`` (the ``n_genes`` top genes)

    Raises
    ------
    ValueError : ``activities`` is not cells × k with k the loadings' programs, or ``labels``
        has another length.
    """
    act = pd.DataFrame(activities)
    if act.ndim != 2 or act.shape[1] != loadings.shape[1]:
        raise ValueError(f"activities must be cells × {loadings.shape[1]} programs (the loadings' columns), "
                         f"got shape {act.shape}")
    act.columns = loadings.columns
    lab = _label_series(labels, len(act))
    dev = act.groupby(lab.values, observed=True).mean() - act.mean()  # label × program
    marks = dev / act.std()
    raised = dev @ loadings.T  # label × gene: change of the log share of counts
    table = pd.DataFrame({"cells": lab.value_counts().reindex(marks.index).to_numpy(),
                          "programs that move most (sd)": _strongest(marks, n_programs),
                          "genes they raise most": [", ".join(raised.loc[i].nlargest(n_genes).index)
                                                    for i in marks.index]},
                         index=marks.index)
    return marks, table
