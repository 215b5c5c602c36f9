"""One tidy table for every method: cell-group effects and condition contrasts per gene.

Two kinds of inference fill the table, and the columns say which:

* ``inference="wald"`` (lme4, glmmTMB: maximum-likelihood fits with a sampling
  covariance): ``estimate`` is the MLE, ``sd`` its standard error, ``z`` the Wald
  statistic and ``p`` its two-sided normal p-value.
* ``inference="posterior"`` (VEB, NUTS): ``estimate`` is the posterior mean, ``sd``
  the posterior sd, ``lfsr`` the local false sign rate
  ``min(P(effect ≥ 0 | y), P(effect ≤ 0 | y))`` under the (Gaussian) posterior
  (Stephens 2017, Biostatistics 18:275). A posterior has no p-value; ``p`` is filled
  only where the caller states a test (``df``: the statistic posterior mean /
  posterior sd referred to Student's t with ``df`` degrees of freedom, see
  :class:`scnotes.glmm.NBGLMMVEB`), else NaN. ``legacy_wald=True`` keeps the older
  ``z = mean / sd`` and ``p = 2 Φ(−|z|)`` (= 2 lfsr) of the Poisson VEB for the GLMM
  chapter.

``q`` is the Benjamini–Hochberg adjustment of ``p`` over every contrast of the
table (all genes and cell types of one method together; Benjamini & Hochberg 1995).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

__all__ = ["tidy_effects", "TIDY_COLUMNS", "bh_qvalues"]

TIDY_COLUMNS = ["gene", "kind", "term", "cell_type", "condition", "estimate", "sd", "lower", "upper",
                "z", "p", "lfsr", "q", "sigma_u", "method", "inference"]


def bh_qvalues(p) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values (q-values) of ``p`` (1-d); NaN entries stay NaN
    and do not count towards the number of tests."""
    p = np.asarray(p, dtype=float).ravel()
    q = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    if ok.size:
        order = ok[np.argsort(p[ok], kind="stable")]
        m = order.size
        adj = p[order] * m / np.arange(1, m + 1)
        q[order] = np.minimum(np.minimum.accumulate(adj[::-1])[::-1], 1.0)
    return q


def tidy_effects(data, estimate, cov=None, sd=None, method: str = "", sigma_u=None,
                 level: float = 0.95, inference: str = "wald", df=None,
                 legacy_wald: bool = False) -> pd.DataFrame:
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
    inference : {"wald", "posterior"}
        What ``estimate`` / ``sd`` are (see the module notes).
    df : dict cell type → degrees of freedom, or float, optional
        Posterior inference only: the stated contrast test (t reference); without it ``p`` is NaN.
    legacy_wald : bool
        Posterior inference only: fill ``z``/``p`` the older way (normal, = 2 lfsr).

    Returns
    -------
    DataFrame with columns :data:`TIDY_COLUMNS`. ``kind`` is ``"group"``
    (term = cell group) or ``"contrast"`` (term = ``"<cell type>: <cond> - <ref>"``,
    the log fold change of the condition vs the reference within a cell type);
    ``z``/``p`` are the Wald statistic and two-sided normal p-value of
    ``estimate = 0`` (for group effects z/p are NaN), ``lfsr`` and ``q`` as in the
    module notes, ``inference`` says which kind of numbers the row holds.
    """
    if inference not in ("wald", "posterior"):
        raise ValueError(f"inference must be 'wald' or 'posterior', got {inference!r}")
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
                         est[j, g], gsd[j, g], np.nan, np.nan, np.nan, su[j]))
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
                    lfsr = stats.norm.sf(abs(z)) if (inference == "posterior" and np.isfinite(z)) else np.nan
                    if inference == "wald" or legacy_wald:
                        zz, pp = z, (2 * stats.norm.sf(abs(z)) if np.isfinite(z) else np.nan)
                    else:
                        d = df.get(ct, np.nan) if isinstance(df, dict) else (np.nan if df is None else df)
                        zz = np.nan
                        pp = 2 * stats.t.sf(abs(z), d) if (np.isfinite(z) and np.isfinite(d)) else np.nan
                    rows.append((gene, "contrast", f"{ct}: {cond}", ct, cond, e[j], s, zz, pp, lfsr, su[j]))
    out = pd.DataFrame(rows, columns=["gene", "kind", "term", "cell_type", "condition", "estimate",
                                      "sd", "z", "p", "lfsr", "sigma_u"])
    out["lower"] = out["estimate"] - q * out["sd"]
    out["upper"] = out["estimate"] + q * out["sd"]
    out["q"] = bh_qvalues(out["p"].where(out["kind"] == "contrast"))
    out["method"] = method
    out["inference"] = inference
    return out[TIDY_COLUMNS]
