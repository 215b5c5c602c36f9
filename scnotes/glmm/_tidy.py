"""One tidy table for every method: cell-group effects and condition contrasts per gene."""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

__all__ = ["tidy_effects", "TIDY_COLUMNS"]

TIDY_COLUMNS = ["gene", "kind", "term", "cell_type", "condition", "estimate", "sd", "lower", "upper",
                "z", "p", "sigma_u", "method"]


def tidy_effects(data, estimate, cov=None, sd=None, method: str = "", sigma_u=None,
                 level: float = 0.95) -> pd.DataFrame:
    """Tidy DataFrame of fixed effects and within-cell-type contrasts.

    Parameters
    ----------
    data : GLMMData
        Supplies gene, group, cell-type and condition names.
    estimate : array (n_genes, n_groups)
        Cell-group effects b (log rate per unit of total count).
    cov : array (n_genes, n_groups, n_groups), optional
        Posterior covariance / sampling covariance of b. Without it, ``sd``
        (n_genes, n_groups) is used and contrasts assume independent groups.
    sigma_u : array (n_genes,), optional
        Donor standard deviation per gene (repeated on each row).
    level : float
        Coverage of the Gaussian interval ``estimate ± z_{(1+level)/2} sd``.

    Returns
    -------
    DataFrame with columns :data:`TIDY_COLUMNS`. ``kind`` is ``"group"``
    (term = cell group) or ``"contrast"`` (term = ``"<cell type>: <cond> - <ref>"``,
    the log fold change of the condition vs the reference within a cell type);
    ``z``/``p`` are the Wald statistic and two-sided normal p-value of
    ``estimate = 0`` (for group effects z/p are NaN).
    """
    est = np.asarray(estimate, dtype=float).reshape(data.n_genes, data.n_groups)
    if cov is None:
        if sd is None:
            raise ValueError("give cov or sd")
        sdv = np.asarray(sd, dtype=float).reshape(est.shape)
        cov = np.einsum("jg,gh->jgh", sdv ** 2, np.eye(data.n_groups))
    cov = np.asarray(cov, dtype=float).reshape(data.n_genes, data.n_groups, data.n_groups)
    su = np.full(data.n_genes, np.nan) if sigma_u is None else np.asarray(sigma_u, float).ravel()
    q = stats.norm.ppf(0.5 + level / 2)
    rows = []
    tab = data.group_table
    gsd = np.sqrt(np.clip(np.diagonal(cov, axis1=1, axis2=2), 0, None))
    for j, gene in enumerate(data.genes):
        for g, name in enumerate(data.groups):
            rows.append((gene, "group", name, tab["cell_type"].iloc[g], tab["condition"].iloc[g],
                         est[j, g], gsd[j, g], np.nan, np.nan, su[j]))
    if tab["cell_type"].notna().all():
        for ct in pd.unique(tab["cell_type"]):
            idx = np.flatnonzero((tab["cell_type"] == ct).to_numpy())
            ref = idx[0]
            for k in idx[1:]:
                c = np.zeros(data.n_groups)
                c[k], c[ref] = 1.0, -1.0
                e = est @ c
                v = np.einsum("g,jgh,h->j", c, cov, c)
                for j, gene in enumerate(data.genes):
                    cond = f"{tab['condition'].iloc[k]} - {tab['condition'].iloc[ref]}"
                    s = float(np.sqrt(max(v[j], 0.0)))
                    z = e[j] / s if s > 0 else np.nan
                    rows.append((gene, "contrast", f"{ct}: {cond}", ct, cond, e[j], s, z,
                                 2 * stats.norm.sf(abs(z)) if np.isfinite(z) else np.nan, su[j]))
    df = pd.DataFrame(rows, columns=["gene", "kind", "term", "cell_type", "condition", "estimate",
                                     "sd", "z", "p", "sigma_u"])
    df["lower"] = df["estimate"] - q * df["sd"]
    df["upper"] = df["estimate"] + q * df["sd"]
    df["method"] = method
    return df[TIDY_COLUMNS]
