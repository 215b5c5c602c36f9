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

__all__ = ["tidy_effects", "TIDY_COLUMNS", "bh_qvalues", "contrast_terms"]

TIDY_COLUMNS = ["gene", "kind", "term", "cell_type", "condition", "estimate", "sd", "lower", "upper",
                "df", "z", "p", "lfsr", "q", "sigma_u", "method", "inference"]


def _t_tail_and_quantile(t, df, level):
    """Upper tail P(T > |t|) and the ``level`` interval's half-width factor under Student's t
    with per-test ``df`` (infinite df: the normal; NaN df: the normal, for the lfsr of a
    posterior without a stated test)."""
    nu = np.where(np.isfinite(df), df, np.inf)
    normal = ~np.isfinite(nu)
    safe = np.where(normal, 1.0, nu)
    tail = np.where(normal, stats.norm.sf(np.abs(t)), stats.t.sf(np.abs(t), safe))
    half = np.where(normal, stats.norm.ppf(0.5 + level / 2), stats.t.ppf(0.5 + level / 2, safe))
    return tail, half


def contrast_terms(data):
    """The within-cell-type condition contrasts of a design (each condition against the
    reference, the first condition of the cell type): a list of ``(term, cell type,
    "<cond> - <ref>", reference group index, group index)``; empty without cell types."""
    tab = data.group_table
    out = []
    if not tab["cell_type"].notna().all():
        return out
    for ct in pd.unique(tab["cell_type"]):
        idx = np.flatnonzero((tab["cell_type"] == ct).to_numpy())
        ref = int(idx[0])
        for k in idx[1:]:
            cond = f"{tab['condition'].iloc[k]} - {tab['condition'].iloc[ref]}"
            out.append((f"{ct}: {cond}", ct, cond, ref, int(k)))
    return out


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
    J = data.n_genes
    su = np.full(J, np.nan) if sigma_u is None else np.asarray(sigma_u, float).ravel()
    tab = data.group_table
    genes = np.asarray(data.genes, dtype=object)
    gsd = np.sqrt(np.clip(np.diagonal(cov, axis1=1, axis2=2), 0, None))
    zq = stats.norm.ppf(0.5 + level / 2)
    frames = [pd.DataFrame({
        "gene": np.repeat(genes, data.n_groups), "kind": "group", "term": np.tile(data.groups, J),
        "cell_type": np.tile(tab["cell_type"].to_numpy(), J), "condition": np.tile(tab["condition"].to_numpy(), J),
        "estimate": est.ravel(), "sd": gsd.ravel(), "df": np.nan, "z": np.nan, "p": np.nan, "lfsr": np.nan,
        "sigma_u": np.repeat(su, data.n_groups)})]
    frames[0]["lower"] = frames[0]["estimate"] - zq * frames[0]["sd"]
    frames[0]["upper"] = frames[0]["estimate"] + zq * frames[0]["sd"]
    for term, ct, cond, ref, k in contrast_terms(data):
        c = np.zeros(data.n_groups)
        c[k], c[ref] = 1.0, -1.0
        e = est @ c
        s = np.sqrt(np.clip(np.einsum("g,jgh,h->j", c, cov, c), 0.0, None))
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(s > 0, e / s, np.nan)
        if inference == "wald" or legacy_wald:
            tail = stats.norm.sf(np.abs(t))
            zz, pp, dfc, half = t, 2 * tail, np.full(J, np.nan), zq
            lfsr = tail if inference == "posterior" else np.full(J, np.nan)
        else:
            d = df.get(term, df.get(ct, np.nan)) if isinstance(df, dict) else (np.nan if df is None else df)
            dfc = np.broadcast_to(np.asarray(d, dtype=float), (J,)).astype(float)
            tail, half = _t_tail_and_quantile(t, dfc, level)
            zz = np.full(J, np.nan)
            pp = np.where(np.isnan(dfc), np.nan, 2 * tail)
            lfsr = tail
        frames.append(pd.DataFrame({
            "gene": genes, "kind": "contrast", "term": term, "cell_type": ct, "condition": cond, "estimate": e,
            "sd": s, "lower": e - half * s, "upper": e + half * s, "df": dfc, "z": zz, "p": pp, "lfsr": lfsr,
            "sigma_u": su}))
    out = pd.concat(frames, ignore_index=True)
    out["q"] = bh_qvalues(out["p"].where(out["kind"] == "contrast"))
    out["method"] = method
    out["inference"] = inference
    return out[TIDY_COLUMNS]
