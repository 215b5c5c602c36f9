"""One tidy effect table matched term by term to a reference fit's (the table that
:func:`scnotes.pl.effects_vs_reference` draws)."""
from __future__ import annotations

import pandas as pd
from scipy import stats

__all__ = ["effects_vs_reference"]

_NEEDED = ("gene", "term", "kind", "estimate", "sd")


def _check_table(t: pd.DataFrame, name: str):
    miss = [c for c in _NEEDED if c not in t.columns]
    if miss:
        raise KeyError(f"{name} lacks column(s) {miss}; it has {list(t.columns)}")


def effects_vs_reference(table: pd.DataFrame, reference: pd.DataFrame, kind: str = "group",
                         level: float = 0.95) -> pd.DataFrame:
    """The ``kind`` rows of ``table`` matched to those of ``reference`` by (``gene``, ``term``),
    each estimate with its Gaussian ``level`` interval half-width.

    Parameters
    ----------
    table, reference : tidy effect tables (:data:`scnotes.glmm.TIDY_COLUMNS`, e.g.
        ``scnotes.tl.glmm(...).summary()`` of a method and of a reference such as lme4); only
        ``gene``, ``term``, ``kind``, ``estimate`` and ``sd`` (log scale) are read
    kind : "group" (cell-group effects) or "contrast"
    level : coverage of the interval ``estimate ± z sd``, z = Φ⁻¹(1/2 + level/2)

    Returns
    -------
    DataFrame, one row per shared (gene, term) in ``table``'s order: ``gene``, ``term``,
    ``estimate``, ``sd``, ``half_width`` (z · sd) of ``table`` and the same of ``reference``
    with the suffix ``_ref``. Non-finite values are kept (the caller decides what to draw).

    Raises
    ------
    KeyError : a needed column is missing from either table.
    ValueError : ``level`` not in (0, 1), or the tables share no (gene, term) row of ``kind``.
    """
    _check_table(table, "table")
    _check_table(reference, "reference")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level!r}")
    cols = ["gene", "term", "estimate", "sd"]
    m = table.loc[table["kind"] == kind, cols].merge(reference.loc[reference["kind"] == kind, cols],
                                                     on=["gene", "term"], suffixes=("", "_ref"))
    if m.empty:
        raise ValueError(f"the two tables share no (gene, term) rows of kind {kind!r}")
    z = stats.norm.ppf(0.5 + level / 2)
    m["half_width"] = z * m["sd"].astype(float)
    m["half_width_ref"] = z * m["sd_ref"].astype(float)
    return m[["gene", "term", "estimate", "sd", "half_width", "estimate_ref", "sd_ref", "half_width_ref"]]
