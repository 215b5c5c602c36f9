"""Measures that separate GLMM fits: posterior sd against a reference standard error,
and interval coverage on data simulated from a fit (known truth).

"Share of estimates within one reference SE" (:func:`scnotes.glmm.agreement`)
cannot tell an overconfident fit from a calibrated one: an estimate with a
tiny sd, or a huge one, can sit next to the reference point. Two measures that
can:

* :func:`compare_to_reference`: the ratio of each method's posterior sd to the
  reference's standard error (1 = same uncertainty), alongside the agreement
  of the point estimates.
* :func:`simulate_from_fit` + :func:`calibration_table`: a parametric
  bootstrap. Keep the design (cells, groups, donors, totals), draw new donor
  effects ``u ~ N(0, σ_u²)`` and counts ``y_i ~ Poisson(s_i exp(b_g + u_d))``
  from a fitted (b, σ_u), refit, and count how often each method's 95%
  interval covers the true value (nominal: 95%), for the cell-group effects
  (whose truth includes the common shift that only the donor prior pins) and
  for the within-cell-type contrasts (which do not depend on it).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from ._design import GLMMData
from ._tidy import tidy_effects

__all__ = ["simulate_from_fit", "interval_coverage", "calibration_table", "compare_to_reference"]


def simulate_from_fit(data: GLMMData, b, sigma_u: float, n_replicates: int = 100, seed: int = 0):
    """Parametric-bootstrap replicates of one gene's GLMM on ``data``'s design.

    Parameters
    ----------
    data : GLMMData
        Supplies the cells' groups, donors and totals (its counts are not used).
    b : array (n_groups,)
        True cell-group effects (log rate per unit of total), e.g. lme4's estimates.
    sigma_u : float
        True donor sd; each replicate draws its own donor effects.
    n_replicates : int
        Replicates, returned as the "genes" ``rep0, rep1, …`` of one GLMMData so
        that a batched fit handles them at once.
    seed : int
        Seeds a ``numpy.random.default_rng`` (global state untouched).

    Returns
    -------
    (GLMMData, b_true (n_replicates, n_groups), u_true (n_replicates, n_donors))

    Raises
    ------
    ValueError : wrong length of ``b``, negative ``sigma_u``, ``n_replicates < 1``.
    """
    b = np.asarray(b, dtype=float).ravel()
    if b.size != data.n_groups or not np.all(np.isfinite(b)):
        raise ValueError(f"b must hold {data.n_groups} finite cell-group effects, got shape {b.shape}")
    if not (np.isfinite(sigma_u) and sigma_u >= 0):
        raise ValueError(f"sigma_u must be a non-negative number, got {sigma_u!r}")
    if int(n_replicates) < 1:
        raise ValueError(f"n_replicates must be >= 1, got {n_replicates!r}")
    rng = np.random.default_rng(seed)
    R = int(n_replicates)
    u = rng.normal(0.0, sigma_u, size=(R, data.n_donors))
    b_true = np.tile(b, (R, 1))
    rate = data.total[:, None] * np.exp(b[data.group][:, None] + u[:, data.donor].T)  # (cells, R)
    y = rng.poisson(rate).astype(float)
    names = [f"rep{r}" for r in range(R)]
    # A replicate with no counts at all has no likelihood information; give it one count
    # in the cell with the largest rate (rare: only for genes with tiny rates).
    empty = np.flatnonzero(y.sum(0) == 0)
    if empty.size:
        y[np.argmax(rate[:, empty], axis=0), empty] = 1.0
    sim = GLMMData(y, data.total.copy(), data.group.copy(), data.donor.copy(), list(data.groups),
                   list(data.donors), names, data.group_table.copy(), keys=dict(data.keys))
    return sim, b_true, u


def interval_coverage(estimate, sd, truth, level: float = 0.95) -> float:
    """Share of finite entries whose interval ``estimate ± z sd`` covers ``truth``
    (z the normal quantile of ``level``)."""
    e, s, t = (np.asarray(a, dtype=float) for a in (estimate, sd, truth))
    ok = np.isfinite(e) & np.isfinite(s) & np.isfinite(t)
    if not ok.any():
        return float("nan")
    z = stats.norm.ppf(0.5 + level / 2)
    return float(np.mean(np.abs(e[ok] - t[ok]) <= z * s[ok]))


def calibration_table(results: dict, design, b_true, level: float = 0.95) -> pd.DataFrame:
    """Coverage and error of several fits of the same simulated replicates.

    Parameters
    ----------
    results : dict name → tidy DataFrame
        Each a summary (``scnotes.glmm.TIDY_COLUMNS``) of a fit of the replicates.
    design : GLMMData or GLMMDesign of the replicates (genes = replicates)
    b_true : array (n_replicates, n_groups), the true effects
    level : nominal coverage of the intervals

    Returns
    -------
    Tidy DataFrame, one row per (method, kind): ``method``, ``kind`` ("group" or
    "contrast"), ``n`` (estimates), ``coverage`` (share of intervals covering the
    truth), ``z_sd`` (sd of (estimate − truth) / sd: 1 when the stated sds are
    right, > 1 when they are too small), ``rmse`` (root mean squared error,
    log scale) and ``median_sd`` (median stated sd).
    """
    truth = tidy_effects(design, b_true, sd=np.zeros_like(np.asarray(b_true, float)))
    truth = truth[["gene", "term", "estimate"]].rename(columns={"estimate": "truth"})
    rows = []
    for name, tab in results.items():
        m = tab.merge(truth, on=["gene", "term"], how="inner")
        for kind, part in m.groupby("kind", sort=False):
            err = (part["estimate"] - part["truth"]).to_numpy(float)
            sd = part["sd"].to_numpy(float)
            ok = np.isfinite(err) & np.isfinite(sd) & (sd > 0)
            rows.append({"method": name, "kind": kind, "n": int(ok.sum()),
                         "coverage": interval_coverage(part["estimate"], part["sd"], part["truth"], level),
                         "z_sd": float(np.std(err[ok] / sd[ok])) if ok.any() else np.nan,
                         "rmse": float(np.sqrt(np.mean(err[ok] ** 2))) if ok.any() else np.nan,
                         "median_sd": float(np.median(sd[ok])) if ok.any() else np.nan})
    return pd.DataFrame(rows)


def compare_to_reference(results: dict, reference: pd.DataFrame, kind: str = "group") -> pd.DataFrame:
    """Each method's estimates and sds against a reference fit (lme4) on the same data.

    Parameters
    ----------
    results : dict name → tidy DataFrame (``scnotes.glmm.TIDY_COLUMNS``)
    reference : tidy DataFrame of the reference
    kind : "group" (cell-group effects) or "contrast"

    Returns
    -------
    Tidy DataFrame, one row per method: ``method``, ``n``, ``within_1_se`` (share of
    estimates within one reference SE: a weak measure, see the module notes),
    ``median_abs_diff_se`` (median |estimate − reference| / reference SE),
    ``sd_ratio_median``, ``sd_ratio_min``, ``sd_ratio_max`` (posterior sd over the
    reference SE: 1 = the same uncertainty, < 1 overconfident relative to it).
    """
    ref = reference[reference["kind"] == kind][["gene", "term", "estimate", "sd"]]
    ref = ref.rename(columns={"estimate": "ref_estimate", "sd": "ref_sd"})
    rows = []
    for name, tab in results.items():
        m = tab[tab["kind"] == kind].merge(ref, on=["gene", "term"], how="inner")
        ok = np.isfinite(m["estimate"]) & np.isfinite(m["ref_estimate"]) & (m["ref_sd"] > 0) & np.isfinite(m["sd"])
        m = m[ok]
        d = (m["estimate"] - m["ref_estimate"]).abs() / m["ref_sd"]
        r = m["sd"] / m["ref_sd"]
        rows.append({"method": name, "n": int(len(m)),
                     "within_1_se": float(np.mean(d <= 1)) if len(m) else np.nan,
                     "median_abs_diff_se": float(np.median(d)) if len(m) else np.nan,
                     "sd_ratio_median": float(np.median(r)) if len(m) else np.nan,
                     "sd_ratio_min": float(np.min(r)) if len(m) else np.nan,
                     "sd_ratio_max": float(np.max(r)) if len(m) else np.nan})
    return pd.DataFrame(rows)
