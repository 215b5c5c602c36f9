"""Evaluation of DE tables against a known truth: null calibration, power and FDR, ROC / PR, QQ.

Pure pandas / numpy (scikit-learn for the ROC and PR curves) on tidy tables: one row per
test, with the columns of :data:`scnotes.glmm.TIDY_COLUMNS` (``gene``, ``kind``,
``cell_type``, ``estimate``, ``sd``, ``lower``, ``upper``, ``p``, ``lfsr``, ``q``,
``method``; optionally ``df``). Only ``"contrast"`` rows are tests; a table without a
``kind`` column (e.g. a Wilcoxon table), or a row whose ``kind`` is missing (such a table
concatenated with tidy ones), is taken as a contrast. Several methods' tables may be
concatenated: every result is per ``method`` (a table without a
``method`` column is one method named ``""``). Columns a method does not fill (NaN, or
absent) give NaN in the results, never an error.

* :func:`null_calibration`: under a null (every true effect 0), the share of p < α,
  of lfsr < level, interval coverage of 0, the sd of T = estimate / sd, calls.
* :func:`calibration_band`, :func:`split_se`, :func:`calibration_check`,
  :func:`calibration_verdict`: the band a calibrated share of p < α lies in (binomial,
  widened by the splits' cluster-robust scatter), and each share against it.
* :func:`power_fdr`: with known DE genes, power, observed FDR, sign errors.
* :func:`roc_pr`: ROC and precision–recall curves and their areas, ranking by p.
* :func:`qq_points`, :func:`p_qq_points`: the points of QQ plots, for ``scnotes.pl``.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import special, stats

__all__ = ["null_calibration", "calibration_band", "split_se", "calibration_check", "calibration_verdict",
           "power_fdr", "roc_pr", "qq_points", "p_qq_points"]


def _require(table, cols, func):
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"{func} needs a pandas DataFrame (a tidy DE table), got {type(table).__name__}")
    missing = [c for c in cols if c not in table.columns]
    if missing:
        raise ValueError(f"{func}: the table lacks column(s) {missing}; it has {list(table.columns)}")


def _tests(table):
    """The contrast rows, with a ``method`` column."""
    t = table[(table["kind"] == "contrast") | table["kind"].isna()] if "kind" in table.columns else table
    t = t.copy()
    if "method" not in t.columns:
        t["method"] = ""
    return t


def _col(t, name):
    return t[name].to_numpy(dtype=float) if name in t.columns else np.full(len(t), np.nan)


def _share(mask, ok):
    return float(np.mean(mask[ok])) if ok.any() else np.nan


def _by_list(by):
    if by is None:
        return []
    return [by] if isinstance(by, str) else list(by)


def _groups(t, by):
    """(method, by values, part) for each group, then (method, "all"…, part) per method."""
    out = []
    for m, pm in t.groupby("method", sort=False):
        if by:
            for key, part in pm.groupby(by, sort=False, observed=True, dropna=False):
                key = key if isinstance(key, tuple) else (key,)
                out.append((m, key, part))
            out.append((m, ("all",) * len(by), pm))
        else:
            out.append((m, (), pm))
    return out


def null_calibration(table: pd.DataFrame, by="cell_type", alpha: float = 0.05, lfsr_level: float = 0.05,
                     level_truth: float = 0.0, fdr: float | None = None) -> pd.DataFrame:
    """Calibration of the tests of a null table (every true effect equal to ``level_truth``).

    Parameters
    ----------
    table : DataFrame
        Tidy DE table(s), one or several methods concatenated (see the module notes);
        needs ``p`` and the ``by`` columns; ``sd``, ``lower``, ``upper``, ``lfsr``, ``q``,
        ``df``, ``estimate`` are used where present.
    by : str, list of str or None
        Group the tests by these columns within each method (default per cell type);
        every method also gets a row over all its tests, with ``"all"`` in the ``by``
        columns. None: one row per method.
    alpha : float
        Nominal level of a test (share of p < alpha should be alpha).
    lfsr_level : float
        Threshold of the local false sign rate.
    level_truth : float
        The true value of every effect (0 for a null), for the coverage.
    fdr : float, optional
        FDR level of a call (q < fdr); default ``alpha``.

    Returns
    -------
    DataFrame, one row per method × group (then per method "all"), columns:

    - ``method`` and the ``by`` columns;
    - ``n_tests``: contrast rows;
    - ``share_p``: share of p < alpha among rows with a finite p (nominal: alpha);
    - ``share_lfsr``: share of lfsr < lfsr_level among rows with a finite lfsr (a
      calibrated posterior gives at most about lfsr_level / 2 under the null, and ~0 when
      the prior puts its mass at 0);
    - ``coverage``: share of intervals [lower, upper] that contain ``level_truth``
      (nominal: the intervals' level, 0.95 in the tidy tables);
    - ``sd_t``: sd (ddof = 1) of T = estimate / sd over rows with finite T (1 for a
      standard normal, √(df / (df − 2)) for Student's t with df > 2);
    - ``median_df``: median of ``df`` (NaN without a ``df`` column);
    - ``n_called``, ``share_called``: rows with q < fdr, and their share among rows with
      a finite q (nominal under the null: about 0).

    Attributes ``alpha``, ``lfsr_level``, ``fdr`` and ``level_truth`` are kept in ``.attrs``.

    Raises
    ------
    TypeError : ``table`` not a DataFrame.
    ValueError : missing columns (named), no contrast rows.
    """
    by = _by_list(by)
    _require(table, ["p"] + by, "null_calibration")
    fdr = alpha if fdr is None else fdr
    t = _tests(table)
    if t.empty:
        raise ValueError("null_calibration: the table has no contrast rows")
    rows = []
    for m, key, part in _groups(t, by):
        p, lf, q = _col(part, "p"), _col(part, "lfsr"), _col(part, "q")
        lo, hi = _col(part, "lower"), _col(part, "upper")
        est, sd, df = _col(part, "estimate"), _col(part, "sd"), _col(part, "df")
        ok_ci = np.isfinite(lo) & np.isfinite(hi)
        with np.errstate(divide="ignore", invalid="ignore"):
            tt = est / sd
        ok_t = np.isfinite(tt) & (sd > 0)
        row = {"method": m}
        row.update(dict(zip(by, key)))
        row.update({
            "n_tests": int(len(part)),
            "share_p": _share(p < alpha, np.isfinite(p)),
            "share_lfsr": _share(lf < lfsr_level, np.isfinite(lf)),
            "coverage": _share((lo <= level_truth) & (level_truth <= hi), ok_ci),
            "sd_t": float(np.std(tt[ok_t], ddof=1)) if ok_t.sum() > 1 else np.nan,
            "median_df": float(np.median(df[np.isfinite(df)])) if np.isfinite(df).any() else np.nan,
            "n_called": int(np.sum(q < fdr)),
            "share_called": _share(q < fdr, np.isfinite(q)),
        })
        rows.append(row)
    out = pd.DataFrame(rows)
    out.attrs.update(alpha=alpha, lfsr_level=lfsr_level, fdr=fdr, level_truth=level_truth)
    return out


def calibration_band(n, se_split=None, alpha: float = 0.05, floor=(0.02, 0.08), n_se: float = 3.0):
    """Bounds that a calibrated test's share of p < ``alpha`` among ``n`` null tests should lie in.

    The rule: the fixed band ``floor`` (default [0.02, 0.08], for alpha = 0.05), widened to
    alpha ± ``n_se`` standard errors wherever that is wider, the standard error being the
    larger of the binomial one, √(alpha (1 − alpha) / n) (independent tests), and
    ``se_split``, a cluster-robust error measured from independent replicates of the design
    (:func:`split_se`; tests that share donors are not independent, so a real null's share
    scatters from one donor split to the next far more than binomially). The lower bound is
    clipped at 0, the upper at 1. With ``n_se`` = 3 a share of independent tests falls
    outside with probability about 0.003 (normal approximation of the binomial; exactly
    ``scipy.stats.binom`` in the tests); the cluster-robust error is the standard error of a
    mean of cluster means (Cameron & Miller 2015, "A practitioner's guide to cluster-robust
    inference", J. Human Resources 50: 317–372).

    Parameters
    ----------
    n : int or array
        Null tests behind each share (≥ 1), e.g. ``null_calibration(...)["n_tests"]``.
    se_split : None, float or array (broadcast with ``n``)
        Cluster-robust standard error of each share (≥ 0; NaN or None: none measured,
        the binomial error alone).
    alpha : float in (0, 1)
        Nominal level (the share expected under the null).
    floor : (float, float)
        The narrowest band: the lower bound is never above ``floor[0]``, the upper never
        below ``floor[1]``.
    n_se : float
        Half-width of the band in standard errors (> 0).

    Returns
    -------
    (lower, upper) : two floats, or two arrays of the broadcast shape.

    Raises
    ------
    ValueError : n < 1 or not finite, negative ``se_split``, alpha outside (0, 1),
        ``floor`` not a pair with floor[0] ≤ floor[1], n_se ≤ 0.
    """
    n = np.asarray(n, dtype=float)
    if np.any(~np.isfinite(n)) or np.any(n < 1):
        raise ValueError(f"calibration_band: n (the number of tests) must be finite and >= 1, got {n}")
    if not 0 < alpha < 1:
        raise ValueError(f"calibration_band: alpha must lie in (0, 1), got {alpha}")
    if len(floor) != 2 or floor[0] > floor[1]:
        raise ValueError(f"calibration_band: floor must be a pair (lower, upper) with lower <= upper, got {floor}")
    if not n_se > 0:
        raise ValueError(f"calibration_band: n_se must be > 0, got {n_se}")
    se = np.sqrt(alpha * (1 - alpha) / n)
    if se_split is not None:
        s = np.asarray(se_split, dtype=float)
        if np.any(s < 0):
            raise ValueError("calibration_band: se_split must be >= 0 (a standard error)")
        se = np.maximum(se, np.nan_to_num(s, nan=0.0))  # NaN: no replicate scatter measured
    half = n_se * se
    lower = np.maximum(np.minimum(floor[0], alpha - half), 0.0)
    upper = np.minimum(np.maximum(floor[1], alpha + half), 1.0)
    return lower, upper


def split_se(table: pd.DataFrame, by="cell_type", alpha: float = 0.05, split_key: str = "split") -> pd.DataFrame:
    """Cluster-robust standard error of a share of p < ``alpha`` pooled over replicate splits.

    A real null is built by splitting the donors at random between two fake conditions,
    several times (``split_key`` numbers the splits). The tests of one split share its
    donors, so they are one cluster: the share pooled over k splits of equal size is the
    mean of the k splits' shares, and its standard error is their sd (ddof = 1) over √k,
    the standard error of a mean of independent cluster means (Cameron & Miller 2015).
    Per split, the share counts the tests with a finite p, as :func:`null_calibration`.

    Parameters
    ----------
    table : DataFrame
        Tidy DE table(s) of the splits concatenated (see the module notes), with ``p``,
        ``split_key`` and the ``by`` columns.
    by : str, list of str or None
        Groups within each method, as the ``by`` of :func:`null_calibration` (a split
        is never a group).
    alpha : float
        Level of the share.
    split_key : str
        Column numbering the splits.

    Returns
    -------
    DataFrame, one row per method × group: ``method``, the ``by`` columns, ``se_split``
    (0 for a group seen in one split only: no scatter measured) and ``n_splits``.
    Merge it onto :func:`null_calibration`'s rows on ``["method", *by]``.

    Raises
    ------
    TypeError : ``table`` not a DataFrame.
    ValueError : missing columns (named), no contrast rows, ``split_key`` among ``by``.
    """
    by = _by_list(by)
    _require(table, ["p", split_key] + by, "split_se")
    if split_key in by:
        raise ValueError(f"split_se: {split_key!r} is the split column; it cannot also group the tests (by)")
    t = _tests(table)
    t = t[np.isfinite(_col(t, "p"))]
    if t.empty:
        raise ValueError("split_se: the table has no contrast rows with a finite p")
    keys = ["method"] + by
    per = t.assign(hit=t["p"] < alpha).groupby(keys + [split_key], observed=True).hit.mean()
    g = per.groupby(level=list(range(len(keys))), observed=True)
    out = pd.DataFrame({"se_split": (g.std(ddof=1) / np.sqrt(g.size())).fillna(0.0), "n_splits": g.size()})
    return out.reset_index()


def calibration_check(cal: pd.DataFrame, alpha: float = 0.05, **band_kw) -> pd.DataFrame:
    """Each share of p < ``alpha`` of a :func:`null_calibration` table against its band.

    Parameters
    ----------
    cal : DataFrame
        Rows of :func:`null_calibration` (``n_tests``, ``share_p``; ``se_split`` from
        :func:`split_se` where measured, NaN or absent otherwise).
    alpha : float
        Nominal level of the shares.
    **band_kw
        ``floor``, ``n_se`` of :func:`calibration_band`.

    Returns
    -------
    A copy of ``cal`` with ``band_lower``, ``band_upper`` (:func:`calibration_band`) and
    ``position``: ``"below"``, ``"inside"`` or ``"above"`` the band (bounds included in
    the band), ``"no p"`` where the share is NaN.

    Raises
    ------
    TypeError, ValueError : ``cal`` not a DataFrame, columns missing (named); as
        :func:`calibration_band`.
    """
    _require(cal, ["n_tests", "share_p"], "calibration_check")
    out = cal.copy()
    se = out["se_split"].to_numpy(dtype=float) if "se_split" in out.columns else None
    lo, hi = calibration_band(out["n_tests"].to_numpy(dtype=float), se, alpha=alpha, **band_kw)
    share = out["share_p"].to_numpy(dtype=float)
    out["band_lower"], out["band_upper"] = lo, hi
    out["position"] = np.select([np.isnan(share), share < lo, share > hi], ["no p", "below", "above"], "inside")
    return out


def calibration_verdict(cal: pd.DataFrame, by="cell_type", alpha: float = 0.05, **band_kw) -> str:
    """The words a report uses for one method's null calibration, from :func:`calibration_check`.

    ``"inside its band in every cell type"`` when every share of p < ``alpha`` is inside
    its band (:func:`calibration_band`), else ``"outside its band in "`` and the groups
    outside, each as its ``by`` values and its share to three decimals, e.g.
    ``"outside its band in 4 vs 4 B cells (0.112)"``. Rows over all tests (``"all"`` in
    every ``by`` column) and rows without a share are left out.

    Parameters
    ----------
    cal : DataFrame
        One method's rows of :func:`null_calibration` (with ``se_split`` where measured).
    by : str or list of str
        The group columns named in the words.
    alpha, **band_kw : as :func:`calibration_check`.

    Raises
    ------
    ValueError : ``by`` empty or columns missing (named).
    """
    by = _by_list(by)
    if not by:
        raise ValueError("calibration_verdict: by must name at least one group column")
    _require(cal, by, "calibration_verdict")
    chk = calibration_check(cal, alpha=alpha, **band_kw)
    overall = (chk[by].astype(str) == "all").all(axis=1)
    out = chk[~overall & chk["position"].isin(["below", "above"])]
    if out.empty:
        return "inside its band in every cell type"
    return "outside its band in " + ", ".join(
        f"{' '.join(str(r[c]) for c in by)} ({r['share_p']:.3f})" for _, r in out.iterrows())


def _with_truth(table, truth, func):
    """The contrast rows with a ``true_lfc`` column (ValueError for rows without a truth)."""
    t = _tests(table)
    if isinstance(truth, pd.Series):
        tr = truth.astype(float)
        if tr.index.has_duplicates:
            raise ValueError(f"{func}: truth has duplicate genes in its index")
        t["true_lfc"] = t["gene"].map(tr).to_numpy(dtype=float)
        missing = t.loc[t["true_lfc"].isna(), "gene"]
    elif isinstance(truth, pd.DataFrame):
        need = [c for c in ("gene", "cell_type", "true_lfc") if c not in truth.columns]
        if need:
            raise ValueError(f"{func}: a truth DataFrame needs columns gene, cell_type, true_lfc; lacks {need}")
        _require(table, ["cell_type"], func)
        tr = truth[["gene", "cell_type", "true_lfc"]].copy()
        tr["gene"], tr["cell_type"] = tr["gene"].astype(str), tr["cell_type"].astype(str)
        if tr.duplicated(["gene", "cell_type"]).any():
            raise ValueError(f"{func}: truth has duplicate (gene, cell_type) rows")
        key = pd.MultiIndex.from_arrays([t["gene"].astype(str), t["cell_type"].astype(str)])
        lookup = tr.set_index(["gene", "cell_type"])["true_lfc"].astype(float)
        t["true_lfc"] = lookup.reindex(key).to_numpy()
        missing = t.loc[t["true_lfc"].isna(), "gene"]
    else:
        raise TypeError(f"{func}: truth must be a Series gene → true lfc or a DataFrame "
                        f"(gene, cell_type, true_lfc), got {type(truth).__name__}")
    if len(missing):
        raise ValueError(f"{func}: {len(missing)} test(s) have no true value in truth, e.g. "
                         f"{list(pd.unique(missing))[:5]}")
    if t.empty:
        raise ValueError(f"{func}: the table has no contrast rows")
    return t


def power_fdr(table: pd.DataFrame, truth, fdr: float = 0.05, by=None, alpha: float = 0.05) -> pd.DataFrame:
    """Power, observed FDR and sign errors of each method's calls, against known effects.

    Parameters
    ----------
    table : DataFrame
        Tidy DE table(s) (see the module notes); needs ``gene``, ``q``, ``estimate``
        (``p`` for ``null_share_p``, ``cell_type`` with a per-cell-type truth or ``by``).
    truth : Series or DataFrame
        Series: gene → true log fold change (natural log), the same in every cell type
        (e.g. ``adata.var["true_lfc"]`` of :func:`scnotes.glmm.thin_de`); or a DataFrame
        with columns ``gene``, ``cell_type``, ``true_lfc``. A test is DE when its true
        lfc ≠ 0. Every test of the table must have a truth (ValueError otherwise).
    fdr : float
        A test is called when q < fdr (NaN q: not called).
    by : str, list of str or None
        Also group by these columns (e.g. ``"cell_type"``); None: per method only.
    alpha : float
        Level of ``null_share_p``.

    Returns
    -------
    DataFrame, one row per method × group (then per method over all its tests, ``"all"``
    in the ``by`` columns), or per method without ``by``; columns ``method``, the ``by``
    columns and

    - ``n_tests``; ``n_de``: tests with true lfc ≠ 0 (a DE gene a method did not test
      does not count: compare methods on the same tests);
    - ``n_called``; ``n_true_pos``: called DE tests (whatever the sign);
      ``n_false_pos``: called null tests;
    - ``power`` = n_true_pos / n_de (NaN without DE tests);
    - ``fdr_observed`` = n_false_pos / max(n_called, 1) (0 without calls);
    - ``n_sign_errors``: called DE tests whose estimate has the opposite sign of the
      truth; ``share_sign_errors`` = n_sign_errors / max(n_called, 1);
    - ``null_share_p``: share of p < alpha among the null tests with a finite p.

    Raises
    ------
    TypeError : ``table`` not a DataFrame, ``truth`` of another type.
    ValueError : missing columns (named), tests without a truth, duplicate truths.
    """
    by = _by_list(by)
    _require(table, ["gene", "q", "estimate"] + by, "power_fdr")
    t = _with_truth(table, truth, "power_fdr")
    rows = []
    for m, key, part in _groups(t, by):
        tl = part["true_lfc"].to_numpy(float)
        de = tl != 0
        called = _col(part, "q") < fdr
        est, p = _col(part, "estimate"), _col(part, "p")
        tp = int(np.sum(called & de))
        fp = int(np.sum(called & ~de))
        nc = int(called.sum())
        sign_err = int(np.sum(called & de & (np.sign(est) != np.sign(tl))))
        row = {"method": m}
        row.update(dict(zip(by, key)))
        row.update({"n_tests": int(len(part)), "n_de": int(de.sum()), "n_called": nc, "n_true_pos": tp,
                    "n_false_pos": fp, "power": tp / de.sum() if de.any() else np.nan,
                    "fdr_observed": fp / max(nc, 1), "n_sign_errors": sign_err,
                    "share_sign_errors": sign_err / max(nc, 1),
                    "null_share_p": _share(p < alpha, np.isfinite(p) & ~de)})
        rows.append(row)
    out = pd.DataFrame(rows)
    out.attrs.update(fdr=fdr, alpha=alpha)
    return out


def roc_pr(table: pd.DataFrame, truth, score: str = "p"):
    """ROC and precision–recall curves of each method, ranking its tests by ``score``.

    A smaller score is more significant (p, q, lfsr); untested rows (NaN score) are
    ranked last, tied. The positives are the DE tests (true lfc ≠ 0, whatever the sign).
    The curves, AUROC and average precision are scikit-learn's (``roc_curve``,
    ``precision_recall_curve``, ``roc_auc_score``, ``average_precision_score``) on
    −score.

    Parameters
    ----------
    table : DataFrame
        Tidy DE table(s); needs ``gene`` and ``score`` (and ``cell_type`` with a
        per-cell-type truth).
    truth : Series or DataFrame
        As :func:`power_fdr`.
    score : str
        Column to rank by.

    Returns
    -------
    (curves, summary)
        ``curves``: tidy DataFrame, columns ``method``, ``curve`` (``"roc"`` or
        ``"pr"``), ``x`` (false positive rate / recall), ``y`` (true positive rate /
        precision), ``threshold`` (the score at which the point is reached: a test is
        called when score ≤ threshold; NaN for PR's last point, ±inf at ROC's first).
        ``summary``: one row per method, ``method``, ``n_tests``, ``n_de``, ``auroc``,
        ``average_precision`` (NaN where a method has only DE or only null tests).

    Raises
    ------
    TypeError, ValueError : as :func:`power_fdr`.
    """
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

    _require(table, ["gene", score], "roc_pr")
    t = _with_truth(table, truth, "roc_pr")
    curves, summary = [], []
    for m, part in t.groupby("method", sort=False):
        y = (part["true_lfc"].to_numpy(float) != 0).astype(int)
        s = part[score].to_numpy(float)
        fin = np.isfinite(s)
        worst = (s[fin].max() + 1.0) if fin.any() else 1.0
        s = np.where(fin, s, worst)
        row = {"method": m, "n_tests": int(len(part)), "n_de": int(y.sum()), "auroc": np.nan,
               "average_precision": np.nan}
        if 0 < y.sum() < len(y):
            fpr, tpr, thr = roc_curve(y, -s)
            prec, rec, thr_pr = precision_recall_curve(y, -s)
            curves.append(pd.DataFrame({"method": m, "curve": "roc", "x": fpr, "y": tpr, "threshold": -thr}))
            curves.append(pd.DataFrame({"method": m, "curve": "pr", "x": rec, "y": prec,
                                        "threshold": np.r_[-thr_pr, np.nan]}))
            row["auroc"] = float(roc_auc_score(y, -s))
            row["average_precision"] = float(average_precision_score(y, -s))
        summary.append(row)
    cols = ["method", "curve", "x", "y", "threshold"]
    curves = pd.concat(curves, ignore_index=True) if curves else pd.DataFrame(columns=cols)
    return curves[cols], pd.DataFrame(summary)


def qq_points(t_stat, df=None, level: float = 0.95) -> pd.DataFrame:
    """Points of a normal-scale QQ plot of test statistics against Student's t (or a normal).

    Each T_i is sent through its own reference distribution, z_i = Φ⁻¹(F_t(T_i; df_i))
    (the probability integral transform, then the normal quantile), so tests with
    different degrees of freedom can share one plot: if every T_i ~ t_{df_i}, the z_i are
    standard normal. The tails are computed in log space (``t.logcdf`` / ``t.logsf`` and
    ``scipy.special.ndtri_exp``), so |T| of 40 stays finite. The sorted z are plotted
    against the normal quantiles Φ⁻¹((i − 0.5) / n).

    Parameters
    ----------
    t_stat : array (n,)
        Statistics, e.g. estimate / sd of the contrast rows. Non-finite entries are
        dropped (with their df).
    df : None, float or array (n,)
        Degrees of freedom (> 0; ``inf`` or None: standard normal reference).
    level : float
        Pointwise coverage of the band of the order statistics (Beta quantiles of a
        uniform sample, mapped by Φ⁻¹).

    Returns
    -------
    DataFrame, one row per finite statistic, sorted: ``expected`` (normal quantile),
    ``observed`` (z, sorted), ``lower``, ``upper`` (the pointwise band around the
    diagonal at ``expected``). The diagonal observed = expected is calibration.

    Raises
    ------
    ValueError : ``df`` of another length than ``t_stat``, or df ≤ 0 / NaN.
    """
    t = np.asarray(t_stat, dtype=float).ravel()
    if df is None:
        d = np.full(t.shape, np.inf)
    else:
        d = np.asarray(df, dtype=float)
        d = np.full(t.shape, float(d)) if d.ndim == 0 else d.ravel()
        if d.shape != t.shape:
            raise ValueError(f"df must be a number or one value per statistic ({t.size}), got {d.size}")
    ok = np.isfinite(t)
    t, d = t[ok], d[ok]
    if np.any(np.isnan(d)) or np.any(d <= 0):
        raise ValueError("df must be > 0 (inf for a normal reference)")
    z = t.copy()
    fin = np.isfinite(d)
    if fin.any():
        tf, df_ = t[fin], d[fin]
        neg = tf <= 0
        zf = np.empty_like(tf)
        zf[neg] = special.ndtri_exp(stats.t.logcdf(tf[neg], df_[neg]))
        zf[~neg] = -special.ndtri_exp(stats.t.logsf(tf[~neg], df_[~neg]))
        z[fin] = zf
    n = z.size
    i = np.arange(1, n + 1)
    a = (1 - level) / 2
    return pd.DataFrame({"expected": stats.norm.ppf((i - 0.5) / n) if n else np.empty(0),
                         "observed": np.sort(z),
                         "lower": stats.norm.ppf(stats.beta.ppf(a, i, n + 1 - i)) if n else np.empty(0),
                         "upper": stats.norm.ppf(stats.beta.ppf(1 - a, i, n + 1 - i)) if n else np.empty(0)})


def p_qq_points(p, level: float = 0.95) -> pd.DataFrame:
    """Points of the usual −log10 p QQ plot against the uniform.

    Parameters
    ----------
    p : array (n,) of p-values in [0, 1]; NaN dropped (p = 0 is clipped to 1e-300).
    level : pointwise coverage of the band (Beta order statistics).

    Returns
    -------
    DataFrame sorted by significance: ``expected`` = −log10((i − 0.5) / n), ``observed``
    = −log10 p_(i), ``lower``, ``upper`` (the band at ``expected``).

    Raises
    ------
    ValueError : p outside [0, 1].
    """
    p = np.asarray(p, dtype=float).ravel()
    p = p[np.isfinite(p)]
    if np.any((p < 0) | (p > 1)):
        raise ValueError("p-values must lie in [0, 1]")
    n = p.size
    i = np.arange(1, n + 1)
    a = (1 - level) / 2
    return pd.DataFrame({"expected": -np.log10((i - 0.5) / n),
                         "observed": -np.log10(np.clip(np.sort(p), 1e-300, 1)),
                         "lower": -np.log10(stats.beta.ppf(1 - a, i, n + 1 - i)),
                         "upper": -np.log10(stats.beta.ppf(a, i, n + 1 - i))})
