"""Empirical-Bayes steps that the NB GLMM shares across genes (numpy / scipy only).

- :func:`fit_f_dist`, :func:`squeeze_var`: limma's scaled inverse-χ² prior on gene-wise
  variances and the moderated (posterior) variances (Smyth 2004; Phipson et al. 2016)
- :func:`dispersion_trend`: a robust trend of log inverse dispersion on log mean, the
  N(trend, τ²) prior on log θ_j
- :func:`ash_normal`, :func:`t_matched_sd`: adaptive shrinkage of contrast estimates with a
  normal likelihood (Stephens 2017), and the standard error that makes that normal
  likelihood give a Student-t test's p-value

Every function takes one value per gene (1-d arrays, ``n_genes``) and treats non-finite
entries as missing: they do not enter what is estimated across genes.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import linalg, optimize, special, stats

__all__ = ["ash_normal", "dispersion_trend", "fit_f_dist", "squeeze_var", "t_matched_sd"]


# --------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------
def _vector(name, x) -> np.ndarray:
    a = np.asarray(x, dtype=float)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-d (one value per gene); got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name} is empty: pass at least one gene")
    return a


def _per_gene(name, x, n) -> np.ndarray:
    """A scalar or a length-``n`` vector, returned as a float array of shape ``(n,)``."""
    a = np.asarray(x, dtype=float)
    if a.ndim == 0:
        return np.full(n, float(a))
    if a.shape != (n,):
        raise ValueError(f"{name} must be a scalar or have one value per gene ({n}); got shape {a.shape}")
    return a


# --------------------------------------------------------------------------------------
# Special functions and the F distribution (with d2 = ∞ as the scaled χ² it tends to)
# --------------------------------------------------------------------------------------
def _trigamma(x):
    return special.polygamma(1, x)


def _trigamma_inverse(x: float) -> float:
    """y with trigamma(y) = x, for x > 0: limma's ``trigammaInverse`` (Newton's method on
    1/trigamma, which is nearly linear, from y = 0.5 + 1/x; Smyth 2004, appendix)."""
    if x > 1e7:
        return 1.0 / math.sqrt(x)
    if x < 1e-6:
        return 1.0 / x
    y = 0.5 + 1.0 / x
    for _ in range(50):
        tri = _trigamma(y)
        dif = tri * (1.0 - tri / x) / special.polygamma(2, y)
        y += dif
        if -dif / y < 1e-8:
            break
    return float(y)


def _f_dist(d1, d2):
    """Frozen F(d1, d2); for d2 = ∞ the limit χ²_{d1}/d1, which scipy's ``f`` returns NaN for."""
    if np.isinf(d2):
        d1 = np.asarray(d1, dtype=float)
        return stats.chi2(d1, scale=1.0 / d1)
    return stats.f(d1, d2)


# Gauss–Legendre nodes on [0, 1], as statmod::gauss.quad.prob(128, "uniform") in limma.
_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(128)
_GL_NODES = (_GL_NODES + 1.0) / 2.0
_GL_WEIGHTS = _GL_WEIGHTS / 2.0


def _winsorized_log_f_moments(d1: float, d2: float, tail_p) -> tuple[float, float]:
    """Mean and variance of log F, F ~ F(d1, d2), winsorised at its ``tail_p[0]`` and
    ``1 − tail_p[1]`` quantiles (limma's ``winsorizedMoments``).

    The integral over the central part is taken on u = F / (1 + F), which maps (0, ∞) to
    (0, 1) and makes the 128-node Gauss–Legendre rule accurate for every d2, ∞ included."""
    dist = _f_dist(d1, d2)
    fq = dist.ppf([tail_p[0], 1.0 - tail_p[1]])
    zq = np.log(fq)
    q = fq / (1.0 + fq)
    nodes = q[0] + (q[1] - q[0]) * _GL_NODES
    fnodes = nodes / (1.0 - nodes)
    znodes = np.log(fnodes)
    dens = dist.pdf(fnodes) / (1.0 - nodes) ** 2
    width = q[1] - q[0]
    tail_p = np.asarray(tail_p, dtype=float)
    m = width * np.sum(_GL_WEIGHTS * dens * znodes) + np.sum(zq * tail_p)
    v = width * np.sum(_GL_WEIGHTS * dens * (znodes - m) ** 2) + np.sum((zq - m) ** 2 * tail_p)
    return float(m), float(v)


# --------------------------------------------------------------------------------------
# Natural cubic spline trend (the basis spans the same space as R's splines::ns)
# --------------------------------------------------------------------------------------
def _spline_df(n_ok: int, covariate_ok: np.ndarray) -> int:
    """limma's number of spline df for a trended prior: 1 + [n ≥ 3] + [n ≥ 6] + [n ≥ 30]
    (so 4 from 30 genes on), at most the number of distinct covariate values."""
    k = 1 + (n_ok >= 3) + (n_ok >= 6) + (n_ok >= 30)
    return int(min(k, np.unique(covariate_ok).size))


def _ns_knots(covariate_ok: np.ndarray, df: int) -> np.ndarray:
    """Knots of ``splines::ns(x, df, intercept=TRUE)``: the boundary knots at the range and
    df − 2 interior knots at equally spaced quantiles (R's type-7 quantile = numpy's default).
    Knots that coincide (heavily tied covariates) are merged: ns would give them a higher
    multiplicity, the truncated-power basis a division by zero."""
    return np.unique(np.quantile(covariate_ok, np.linspace(0.0, 1.0, df)))


def _ns_basis(x: np.ndarray, knots: np.ndarray) -> np.ndarray:
    """Natural cubic spline basis with ``knots`` (boundary knots first and last), shape
    ``(len(x), len(knots))``: 1, x and the truncated-power functions N_{k+2} = d_k − d_{K−1}
    of Hastie, Tibshirani & Friedman (2009), *Elements of Statistical Learning*, eq. 5.4–5.5.

    It spans the same space as R's ``ns(…, intercept=TRUE)`` with these knots (cubic
    between knots, linear beyond the boundary knots), so least-squares fitted values and
    extrapolations are the same as limma's. x is rescaled to [0, 1] first: the cubes of a
    covariate such as log mean expression would otherwise make the basis ill-conditioned."""
    lo, hi = knots[0], knots[-1]
    t = (np.asarray(x, dtype=float) - lo) / (hi - lo)
    k = (knots - lo) / (hi - lo)
    cols = [np.ones_like(t), t]

    def d(j):
        return (np.maximum(t - k[j], 0.0) ** 3 - np.maximum(t - k[-1], 0.0) ** 3) / (k[-1] - k[j])

    d_last = d(len(k) - 2)
    for j in range(len(k) - 2):
        cols.append(d(j) - d_last)
    return np.column_stack(cols)


def _lstsq_trend(y, basis_ok, basis_all, weights=None):
    """Least-squares fit of y on a basis: (fitted at the fitted genes, fitted at every gene,
    rank). ``weights`` are observation weights (robustness iterations)."""
    if weights is None:
        coef, _, rank, _ = np.linalg.lstsq(basis_ok, y, rcond=None)
    else:
        w = np.sqrt(weights)
        coef, _, _, _ = np.linalg.lstsq(basis_ok * w[:, None], y * w, rcond=None)
        rank = np.linalg.matrix_rank(basis_ok)
    return basis_ok @ coef, basis_all @ coef, int(rank)


def _robust_trend(z, basis_ok, basis_all, n_iter=3):
    """Natural-spline trend of z with ``n_iter`` bisquare reweightings on residuals scaled
    by 6 × their median absolute value, the robustness iterations of lowess (Cleveland 1979,
    JASA 74:829), which limma's robust path gets from ``loessFit(span=0.4)``: a few
    outlying genes must not bend the trend they are judged against."""
    fit_ok, fit_all, _ = _lstsq_trend(z, basis_ok, basis_all)
    for _ in range(n_iter):
        r = z - fit_ok
        s = 6.0 * np.median(np.abs(r))
        if s <= 0:
            break
        w = np.clip(1.0 - (r / s) ** 2, 0.0, None) ** 2
        if np.count_nonzero(w) < basis_ok.shape[1] + 1:
            break
        fit_ok, fit_all, _ = _lstsq_trend(z, basis_ok, basis_all, weights=w)
    return fit_ok, fit_all


# --------------------------------------------------------------------------------------
# fit_f_dist
# --------------------------------------------------------------------------------------
def _clean_covariate(covariate, n):
    cov = _per_gene("covariate", covariate, n)
    if np.isnan(cov).any():
        raise ValueError("covariate has NaN values: give every gene a covariate value (e.g. its log mean)")
    fin = np.isfinite(cov)
    if not fin.all():
        # limma's rule: ±∞ just beyond the finite range, so that they sit at the ends of the trend.
        if fin.any():
            lo, hi = cov[fin].min(), cov[fin].max()
            cov = np.where(cov == -np.inf, lo - 1.0, np.where(cov == np.inf, hi + 1.0, cov))
        else:
            cov = np.sign(cov)
    return cov


def _floor_variances(x):
    """limma's treatment of zero variances: log(0) would make the moments infinite, so
    every variance is floored at 1e-5 × the median (the median set to 1 when more than
    half are zero)."""
    x = np.maximum(x, 0.0)
    m = float(np.median(x))
    if m == 0:
        warnings.warn("more than half of the variances are exactly zero: the prior is unreliable",
                      RuntimeWarning, stacklevel=3)
        m = 1.0
    elif (x == 0).any():
        warnings.warn("zero variances were offset away from zero (to 1e-5 × the median)",
                      RuntimeWarning, stacklevel=3)
    return np.maximum(x, 1e-5 * m)


def _fit_f_dist_moments(x, d, cov_ok, cov_all):
    """Method-of-moments fit on the usable genes (limma's ``fitFDist``): returns
    (d0, s0² scalar or per gene of ``cov_all``)."""
    n_ok = x.size
    trended = cov_ok is not None
    if trended:
        sdf = _spline_df(n_ok, cov_ok)
        if sdf < 2:
            d0, s0 = _fit_f_dist_moments(x, d, None, None)
            return d0, np.full(cov_all.size, s0)
    x = _floor_variances(x)
    e = np.log(x) - special.digamma(d / 2.0) + np.log(d / 2.0)
    if trended:
        knots = _ns_knots(cov_ok, sdf)
        fitted_ok, emean, rank = _lstsq_trend(e, _ns_basis(cov_ok, knots), _ns_basis(cov_all, knots))
        evar = float(np.sum((e - fitted_ok) ** 2) / (n_ok - rank))
    else:
        emean = float(np.mean(e))
        evar = float(np.var(e, ddof=1))
    evar -= float(np.mean(_trigamma(d / 2.0)))
    if evar > 0:
        d0 = 2.0 * _trigamma_inverse(evar)
        s0 = np.exp(emean + special.digamma(d0 / 2.0) - np.log(d0 / 2.0))
    else:
        # No variance left beyond χ² sampling noise: the σ²_j are (trend-)constant.
        d0 = np.inf
        s0 = np.exp(emean) if trended else float(np.mean(x))
    return float(d0), (float(s0) if np.ndim(s0) == 0 else s0)


def _map_to_max_df(x, d, s_prior, d0):
    """limma's handling of unequal df in the robust fit: move each variance with d_j < max d
    to the F(max d, d0) quantile of its own F(d_j, d0) tail probability (upper or lower,
    whichever is smaller, in logs), so that all variances share one df."""
    dmax = float(d.max())
    i = d < dmax - 1e-14
    if not i.any():
        return x, dmax
    s = s_prior if np.ndim(s_prior) == 0 else s_prior[i]
    f = x[i] / s
    own = _f_dist(d[i], d0)
    log_up, log_lo = own.logsf(f), own.logcdf(f)
    up = log_up < log_lo
    target = _f_dist(dmax, d0)
    f_new = np.empty_like(f)
    # exp(log p) underflows below ≈ −745; such variances are extreme either way.
    f_new[up] = target.isf(np.exp(np.maximum(log_up[up], -700.0)))
    f_new[~up] = target.ppf(np.exp(np.maximum(log_lo[~up], -700.0)))
    # scipy's quantile overflows to inf (or 0) this far out; such a variance is an outlier either way
    # and keeps its own value (measured: φ = 50 on 4.5 df against d0 = 192 gave inf, and the robust
    # trend's least squares then failed)
    bad = ~np.isfinite(f_new) | (f_new <= 0)
    f_new[bad] = f[bad]
    x = x.copy()
    x[i] = f_new * s
    return x, dmax


def _fit_f_dist_robust(x, d, cov_ok, cov_all, tail_p):
    """limma's ``fitFDistRobustly`` (Phipson et al. 2016) on the usable genes:
    (d0, s0²)."""
    n = x.size
    if n <= 2 or all(p < 1.0 / n for p in tail_p):
        return _fit_f_dist_moments(x, d, cov_ok, cov_all)
    m = float(np.median(x))
    if m <= 0:
        raise ValueError("more than half of the variances are <= 0: a robust prior cannot be estimated")
    x0 = np.maximum(x, 1e-12 * m)
    d0_plain, s0_plain = _fit_f_dist_moments(x0, d, cov_ok, cov_ok)
    x, d1 = x0, float(d[0])
    if np.unique(d).size > 1:
        x, d1 = _map_to_max_df(x0, d, s0_plain, d0_plain)
    z = np.log(x)
    sdf = 1 if cov_ok is None else _spline_df(n, cov_ok)
    if sdf < 2:
        # limma's robust centre: the mean trimmed by the upper winsorising fraction at each end.
        ztrend_ok = ztrend_all = float(stats.trim_mean(z, tail_p[1]))
    else:
        knots = _ns_knots(cov_ok, sdf)
        ztrend_ok, ztrend_all = _robust_trend(z, _ns_basis(cov_ok, knots), _ns_basis(cov_all, knots))
    zresid = z - ztrend_ok
    lo, hi = np.quantile(zresid, [tail_p[0], 1.0 - tail_p[1]])
    zw = np.clip(zresid, lo, hi)
    zw_mean = float(np.mean(zw))
    zw_var = float(np.var(zw, ddof=1))

    def scale(d0):
        mom_mean, _ = _winsorized_log_f_moments(d1, d0, tail_p)
        s = np.exp(ztrend_all + zw_mean - mom_mean)
        return float(s) if np.ndim(s) == 0 else s

    # u = d0 / (1 + d0) puts d0 ∈ (0, ∞] on (0, 1] for the root finder.
    def excess(u):
        d0 = np.inf if u >= 1.0 else u / (1.0 - u)
        return math.log(zw_var / _winsorized_log_f_moments(d1, d0, tail_p)[1])

    f_inf = excess(1.0)
    if f_inf <= 0:
        return np.inf, scale(np.inf)
    if np.isinf(d0_plain):
        return d0_plain, (s0_plain if cov_ok is None else _fit_f_dist_moments(x0, d, cov_ok, cov_all)[1])
    u_plain = d0_plain / (1.0 + d0_plain)
    if excess(u_plain) >= 0:
        d0 = d0_plain
    else:
        u = optimize.brentq(excess, u_plain, 1.0, xtol=1e-8)
        d0 = u / (1.0 - u)
    return float(d0), scale(d0)


def fit_f_dist(s2, df, covariate=None, robust=False, *, winsor_tail_p=(0.05, 0.1)):
    """Empirical-Bayes prior on gene-wise variances: limma's ``fitFDist`` (and, with
    ``robust=True``, ``fitFDistRobustly``).

    Model (Smyth 2004, Stat Appl Genet Mol Biol 3:3)::

        s2_j | σ²_j ~ σ²_j χ²_{d_j} / d_j,      σ²_j ~ s0² d0 / χ²_{d0}

    so s2_j / s0² ~ F(d_j, d0). Estimated by moments of
    ``e_j = log s2_j − ψ(d_j/2) + log(d_j/2)`` (section 6.2):
    ``mean(e) = log s0² − ψ(d0/2) + log(d0/2)`` and
    ``var(e) − mean(ψ'(d_j/2)) = ψ'(d0/2)`` (ψ digamma, ψ' trigamma), solved for d0 by
    Newton's method on ψ'; d0 = ∞ when the left side is ≤ 0 (then s0² is the mean of s2,
    or exp of the trend with a covariate).

    Parameters
    ----------
    s2 : array (n_genes,)
        Gene-wise variance estimates (any positive unit; s0² comes back in the same unit).
        Genes with a non-finite or negative s2, or with a non-finite or non-positive df, are
        left out of the fit. Zeros are floored at 1e-5 × the median s2 (with a warning),
        as limma does.
    df : float or array (n_genes,)
        Residual degrees of freedom d_j of each s2_j.
    covariate : array (n_genes,), optional
        Trended prior (limma's ``trend=TRUE``): the mean of e is replaced by a least-squares
        natural cubic spline in the covariate (e.g. log mean expression) with limma's
        number of df, 1 + [n ≥ 3] + [n ≥ 6] + [n ≥ 30] (4 from 30 usable genes), interior
        knots at equally spaced quantiles, the intercept included: the same fit as limma's
        ``splines::ns`` design. The variance of e is then the residual variance of that fit.
        ±∞ covariates are moved just outside the finite range; NaN raises.
    robust : bool
        Phipson, Lee, Majewski, Alexander & Smyth (2016), Ann Appl Stat 10:946, limma's
        ``fitFDistRobustly``: log s2 minus its trend (a mean trimmed by ``winsor_tail_p[1]``
        at each end, or with a covariate a natural-spline trend with 3 bisquare robustness
        iterations, where limma uses ``loessFit(span=0.4)``) is winsorised at its
        ``winsor_tail_p[0]`` and ``1 − winsor_tail_p[1]`` sample quantiles; d0 solves
        "winsorised variance = that of log F(d, d0) winsorised at its own quantiles" (a
        1-d root find between the non-robust d0 and ∞; the F moments by 128-node
        Gauss–Legendre quadrature), then s0² matches the winsorised means. With unequal
        df, each s2_j is first moved to the F(max d, d0) quantile of its own tail
        probability under the non-robust fit (limma's rule), and d = max d. Not done: the
        per-gene reduced prior df for outlier genes (limma's ``df2.shrunk``); the single
        robust d0 is returned.
    winsor_tail_p : (float, float)
        Lower and upper winsorising fractions of the robust fit (limma's default
        ``c(0.05, 0.1)``).

    Returns
    -------
    df_prior : float
        d0 (``np.inf`` when the variances show no spread beyond χ² sampling; 0 when only
        one gene is usable, as limma).
    scale_prior : float, or array (n_genes,) with a covariate
        s0², at every gene's covariate value (genes left out of the fit included).

    Raises
    ------
    ValueError
        Shapes disagree, no gene is usable, the covariate has NaN, winsor_tail_p is not in
        [0, 0.5), or (robust) more than half of the variances are ≤ 0.
    """
    s2 = _vector("s2", s2)
    n = s2.size
    d = _per_gene("df", df, n)
    cov = None if covariate is None else _clean_covariate(covariate, n)
    tail_p = tuple(float(p) for p in np.broadcast_to(np.asarray(winsor_tail_p, dtype=float), (2,)))
    if not all(0.0 <= p < 0.5 for p in tail_p):
        raise ValueError(f"winsor_tail_p must be two fractions in [0, 0.5); got {winsor_tail_p!r}")
    ok = np.isfinite(s2) & (s2 > -1e-15) & np.isfinite(d) & (d > 1e-15)
    n_ok = int(ok.sum())
    if n_ok == 0:
        raise ValueError("no gene has a finite s2 >= 0 with a finite df > 0: nothing to fit a prior to")
    if n_ok == 1:
        s0 = float(s2[ok][0])
        return 0.0, (s0 if cov is None else np.full(n, s0))
    x, dd = s2[ok], d[ok]
    cov_ok = None if cov is None else cov[ok]
    fit = _fit_f_dist_robust if robust else _fit_f_dist_moments
    d0, s0 = fit(x, dd, cov_ok, cov, tail_p) if robust else fit(x, dd, cov_ok, cov)
    if cov is not None and np.ndim(s0) == 0:
        s0 = np.full(n, s0)  # a covariate with too few distinct values: a flat "trend"
    return d0, s0


def squeeze_var(s2, df, df_prior, scale_prior) -> np.ndarray:
    """Moderated (posterior) variances, limma's ``squeezeVar`` given a fitted prior:
    ``s̃²_j = (d0 s0² + d_j s2_j) / (d0 + d_j)`` (Smyth 2004), the posterior mean of
    1/σ²_j inverted under the model of :func:`fit_f_dist`.

    Parameters
    ----------
    s2 : array (n_genes,)
        Gene-wise variances.
    df : float or array (n_genes,)
        Their degrees of freedom d_j ≥ 0 (a gene with d_j = 0 gets s0²).
    df_prior, scale_prior : float or array (n_genes,)
        d0 ≥ 0 (``np.inf`` allowed) and s0² from :func:`fit_f_dist`.

    Returns
    -------
    array (n_genes,): s0² where d0 = ∞, s2 where d0 = 0 (NaN where also d_j = 0).

    Raises
    ------
    ValueError
        Shapes disagree, or a df / df_prior is negative or NaN.
    """
    s2 = _vector("s2", s2)
    n = s2.size
    d = _per_gene("df", df, n)
    d0 = _per_gene("df_prior", df_prior, n)
    s0 = _per_gene("scale_prior", scale_prior, n)
    if np.isnan(d).any() or (d < 0).any():
        raise ValueError("df must be >= 0 and not NaN")
    if np.isnan(d0).any() or (d0 < 0).any():
        raise ValueError("df_prior must be >= 0 and not NaN (np.inf for no spread)")
    inf = np.isinf(d0)
    with np.errstate(invalid="ignore", divide="ignore"):
        # A gene without residual df carries no information, whatever its s2 (NaN included).
        ds2 = np.where(d == 0, 0.0, d * s2)
        post = (np.where(inf, 0.0, d0) * s0 + ds2) / (np.where(inf, 1.0, d0) + d)
    return np.where(inf, s0, post)


# --------------------------------------------------------------------------------------
# Mean–dispersion trend
# --------------------------------------------------------------------------------------
def dispersion_trend(log_mean, log_theta, n_bins=None):
    """Robust trend of log inverse dispersion on log mean, and the spread around it.

    The NB GLMM's prior on θ_j is ``log θ_j ~ N(trend_j, τ²)``, the empirical-Bayes
    shrinkage of dispersions towards a mean–dispersion trend of edgeR (McCarthy, Chen &
    Smyth 2012, Nucleic Acids Res 40:4288, trended dispersion) and DESeq2 (Love, Huber &
    Anders 2014, Genome Biol 15:550, Methods, dispersion prior), here on log θ
    (θ = 1/dispersion) and with medians, so that genes with an unidentified θ (θ → ∞ when
    a gene looks Poisson) do not drag the trend.

    Genes are sorted by log mean and split into ``n_bins`` bins of equal count; the trend
    is the linear interpolation of (median log mean, median log θ) of the bins, constant
    beyond the first and last bin medians. ``tau2 = (1.4826 · MAD(log θ − trend))²`` (the
    normal-consistent MAD), floored at 1e-4.

    Parameters
    ----------
    log_mean : array (n_genes,)
        Log mean expression per gene (natural log, any offset, e.g. log of the mean
        count per cell).
    log_theta : array (n_genes,)
        Natural log of the gene-wise inverse dispersion estimates.
    n_bins : int, optional
        Default: one bin per 50 usable genes, between 1 and 20.

    Returns
    -------
    trend : array (n_genes,)
        Trend of log θ at each gene's log mean (every gene with a finite log mean, also
        those with a non-finite log θ; ±∞ log mean gets the end values; NaN gives NaN).
    tau2 : float
        Variance of log θ about the trend (log scale, squared).

    Raises
    ------
    ValueError
        Shapes disagree, no gene has both values finite, or n_bins < 1.
    """
    x = _vector("log_mean", log_mean)
    y = _per_gene("log_theta", log_theta, x.size)
    ok = np.isfinite(x) & np.isfinite(y)
    n_ok = int(ok.sum())
    if n_ok == 0:
        raise ValueError("no gene has a finite log_mean and log_theta: nothing to fit a trend to")
    if n_bins is None:
        n_bins = int(np.clip(round(n_ok / 50), 1, 20))
    elif int(n_bins) != n_bins or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer; got {n_bins!r}")
    n_bins = min(int(n_bins), n_ok)
    xo, yo = x[ok], y[ok]
    chunks = np.array_split(np.argsort(xo, kind="stable"), n_bins)
    cx = np.array([np.median(xo[c]) for c in chunks])
    cy = np.array([np.median(yo[c]) for c in chunks])
    # Ties in log mean can give two bins the same centre; np.interp needs increasing knots.
    ux, inv = np.unique(cx, return_inverse=True)
    uy = np.bincount(inv, weights=cy) / np.bincount(inv)
    trend = np.interp(x, ux, uy)
    trend[np.isnan(x)] = np.nan
    r = yo - trend[ok]
    mad = 1.4826 * float(np.median(np.abs(r - np.median(r))))
    return trend, max(mad * mad, 1e-4)


# --------------------------------------------------------------------------------------
# Adaptive shrinkage
# --------------------------------------------------------------------------------------
def t_matched_sd(estimate, t_stat, df, sd=None):
    """Standard error that gives a normal test the p-value of a Student-t test.

    ``sd_eff = |β̂| / Φ⁻¹(1 − p/2)`` with ``p = 2 P(t_df > |T|)``, so that
    ``2 Φ(−|β̂| / sd_eff) = p``: with sd_eff the normal likelihood of :func:`ash_normal`
    carries the t test's tail (the "p-value-matched" standard error; Stephens 2017 uses
    the t likelihood itself, ashr's ``df`` argument). Equivalently
    ``sd_eff = sd · |T| / Φ⁻¹(1 − p/2)`` with ``sd = β̂ / T``; the ratio tends to 1 as
    df → ∞ (``df = np.inf`` gives sd exactly) and to φ(0) / f_{t,df}(0) as T → 0, which is
    used for |T| < 1e-8 (where p/2 rounds to 1/2). Where P(t_df > |T|) underflows
    (a z beyond ≈ 37), its log is the Mills-ratio asymptote
    ``log f_t(T) − log((df + 1)|T| / (df + T²))``.

    Parameters
    ----------
    estimate : array
        Effect estimates β̂ (any unit; sd_eff has the same unit).
    t_stat : array
        Their t statistics T = β̂ / sd (same shape, or broadcastable).
    df : float or array
        Degrees of freedom of the t test, > 0 (``np.inf`` allowed).
    sd : array, optional
        The standard errors themselves; needed where ``t_stat == 0`` (there β̂ / T is 0/0).
        Without it such genes get NaN.

    Returns
    -------
    array (broadcast shape; a float for scalar inputs): sd_eff ≥ sd for finite df (t tails
    are heavier). NaN where any input is NaN.

    Raises
    ------
    ValueError
        A df is ≤ 0.
    """
    b, t, d = np.broadcast_arrays(*(np.asarray(a, dtype=float) for a in (estimate, t_stat, df)))
    if (d <= 0).any():
        raise ValueError("df must be > 0 (np.inf for a normal test)")
    with np.errstate(invalid="ignore", divide="ignore"):
        s = b / t if sd is None else np.broadcast_to(np.asarray(sd, dtype=float), b.shape)
        s = np.abs(s)
        at = np.abs(t)
        ratio = np.full(b.shape, np.nan)
        fin = np.isfinite(at) & ~np.isnan(d)
        normal = fin & np.isinf(d)
        ratio[normal] = 1.0
        small = fin & ~normal & (at < 1e-8)
        ratio[small] = stats.norm.pdf(0.0) / stats.t.pdf(0.0, d[small])
        big = fin & ~normal & ~small
        tb, db = at[big], d[big]
        log_sf = stats.t.logsf(tb, db)
        under = ~np.isfinite(log_sf)
        if under.any():
            tu, du = tb[under], db[under]
            log_sf[under] = stats.t.logpdf(tu, du) - np.log((du + 1.0) * tu / (du + tu * tu))
        ratio[big] = tb / -special.ndtri_exp(log_sf)
        out = np.array(s * ratio, dtype=float)
    out[np.isnan(b) | np.isnan(t) | np.isnan(d)] = np.nan
    return out if out.ndim else float(out)


_SQRT2 = math.sqrt(2.0)


def _ash_grid(b, s, mult=_SQRT2):
    """ashr's default grid of prior sds (``autoselect.mixsd``; Stephens 2017):
    from σ_min = min(sd)/10 up to σ_max = 2·sqrt(max(β̂² − sd²)) (8·σ_min when no β̂² exceeds
    its sd²) by factors of ``mult`` = √2, i.e. σ_max · mult^(−K…0), with the point mass 0
    first."""
    smin = float(np.min(s)) / 10.0
    excess = b * b - s * s
    smax = 2.0 * math.sqrt(float(np.max(excess))) if (excess > 0).any() else 8.0 * smin
    if smax <= smin:
        smax = 8.0 * smin
    k = math.ceil(math.log2(smax / smin) / math.log2(mult))
    return np.concatenate([[0.0], smax * mult ** np.arange(-k, 1, dtype=float)])


def _component_loglik(b, s, grid):
    """log N(β̂_j; 0, σ_k² + sd_j²), shape (n, K): the marginal likelihood of each mixture
    component (the normal prior convolved with the normal likelihood)."""
    v = grid[None, :] ** 2 + s[:, None] ** 2
    return -0.5 * (np.log(2.0 * np.pi * v) + b[:, None] ** 2 / v)


def _ash_mix_weights(loglik, prior, max_iter, tol):
    """Mixture weights π maximising ``Σ_j log Σ_k π_k L_jk + Σ_k (α_k − 1) log π_k`` over the
    simplex (ashr's Dirichlet "nullbiased" penalty; Stephens 2017), by
    mix-SQP (Kim, Carbonetto, Stephens & Anitescu 2020, J Comput Graph Stat 29:261), the
    solver ashr uses.

    EM is no use here: it crawls along the ridge where the point mass and the smallest
    σ_k explain the null genes almost equally well (after 500 iterations π_0 is still
    far from its optimum on 90 % null data). mix-SQP treats the penalty as α_k − 1
    pseudo-observations of component k and drops the simplex constraint: minimising
    ``−Σ_j w_j log (A x)_j + (Σ_j w_j) Σ_k x_k`` over x ≥ 0 has its minimum on the simplex.
    Each iteration solves the quadratic model with x ≥ 0 exactly (as non-negative least
    squares after a Cholesky factorisation of the Hessian; K is a few dozen) and
    backtracks along the step (Armijo).

    Returns (π, posterior component weights (n, K), n_iter, converged): converged when a
    step moves no π_k by more than ``tol`` or stops decreasing the objective."""
    n, k = loglik.shape
    lik = np.exp(loglik - loglik.max(axis=1, keepdims=True))
    extra = prior - 1.0
    pseudo = extra > 0
    a = np.vstack([lik, np.eye(k)[pseudo]])
    w = np.concatenate([np.ones(n), extra[pseudo]])
    total_w = float(w.sum())

    def objective(x):
        ax = a @ x
        if (ax <= 0).any():
            return np.inf
        return float(-np.sum(w * np.log(ax)) + total_w * x.sum())

    x = np.full(k, 1.0 / k)
    f = objective(x)
    converged = False
    it = 0
    for it in range(1, max_iter + 1):
        ax = a @ x
        g = total_w - a.T @ (w / ax)
        h = (a * (w / ax ** 2)[:, None]).T @ a
        # A ridge keeps the Cholesky factor defined when grid components are nearly collinear.
        h[np.diag_indices(k)] += 1e-10 * np.trace(h) / k + 1e-300
        r = np.linalg.cholesky(h).T
        c = linalg.solve_triangular(r.T, h @ x - g, lower=True)
        y, _ = optimize.nnls(r, c, maxiter=50 * k)
        d = y - x
        slope = float(g @ d)
        step = 1.0
        while True:
            cand = x + step * d
            f_cand = objective(cand)
            if f_cand <= f + 1e-4 * step * slope or step < 1e-10:
                break
            step /= 2.0
        moved = float(np.max(np.abs(step * d)))
        gain = f - f_cand
        if f_cand <= f:
            x, f = np.maximum(cand, 0.0), f_cand
        if moved < tol or gain <= 1e-12 * (1.0 + abs(f)):
            converged = True
            break
    pi = x / x.sum()
    post = lik * pi
    post /= post.sum(axis=1, keepdims=True)
    return pi, post, it, converged


def ash_normal(estimate, sd, mixcompdist="normal", grid=None, null_weight=10.0, max_iter=500, tol=1e-8):
    """Adaptive shrinkage of effect estimates with a normal likelihood (Stephens 2017,
    Biostatistics 18:275, "ash").

    Model: ``β̂_j ~ N(β_j, sd_j²)``, ``β_j ~ g = π_0 δ_0 + Σ_k π_k N(0, σ_k²)``, a unimodal
    prior at 0 on a fixed grid of σ_k. π maximises the penalised likelihood (mix-SQP; Dirichlet
    penalty ``null_weight`` on π_0, ashr's ``nullweight``: it favours the null so that
    lfsr errs conservative); each gene's posterior is then a mixture of the point mass and
    normals, ``N(β̂ σ_k²/(σ_k² + sd²), σ_k² sd²/(σ_k² + sd²))``.

    ``lfsr_j = min(P(β_j ≥ 0 | data), P(β_j ≤ 0 | data))``, the point mass counted on
    both sides (ashr's definition): the probability of getting the sign wrong
    when declaring the more likely sign.

    For a Student-t test feed ``sd = t_matched_sd(estimate, t, df)`` (see
    :func:`t_matched_sd`).

    Parameters
    ----------
    estimate, sd : array (n_genes,)
        Estimates β̂_j and their standard errors (> 0; same unit). Genes where either is
        non-finite get NaN outputs and do not enter the fit of g.
    mixcompdist : "normal"
        Mixture components; ashr's "uniform" / "halfuniform" are not implemented.
    grid : array, optional
        Prior sds σ_k (≥ 0); 0, the point mass, is added first if missing. Default: ashr's
        (:func:`_ash_grid`): σ_max · √2^(−K…0) from σ_min = min(sd)/10 to
        σ_max = 2·sqrt(max(β̂² − sd²)).
    null_weight : float
        Dirichlet parameter α_0 ≥ 1 of π_0 (the other components get 1: no penalty).
    max_iter, tol : int, float
        The solver for π stops after ``max_iter`` iterations or when a step moves no π_k by
        more than ``tol``.

    Returns
    -------
    dict with
        ``lfsr``, ``lfdr`` (P(β_j = 0 | data)), ``posterior_mean``, ``posterior_sd``:
        arrays (n_genes,); ``pi``, ``grid``: arrays (n_components,), grid[0] = 0 the point
        mass; ``loglik``: the (unpenalised) log marginal likelihood Σ_j log Σ_k π_k
        N(β̂_j; 0, σ_k² + sd_j²) of the fitted genes; ``n_iter``, ``converged``.

    Raises
    ------
    ValueError
        Shapes disagree, mixcompdist is not "normal", a finite sd is ≤ 0, no gene is
        usable, the grid has negative or non-finite values, or null_weight < 1.
    """
    if mixcompdist != "normal":
        raise ValueError(f"mixcompdist={mixcompdist!r} is not implemented; use 'normal'")
    b = _vector("estimate", estimate)
    s = _per_gene("sd", sd, b.size)
    if not null_weight >= 1.0:
        raise ValueError(f"null_weight must be >= 1 (1: no penalty on the null); got {null_weight!r}")
    ok = np.isfinite(b) & np.isfinite(s)
    if (s[ok] <= 0).any():
        raise ValueError("sd must be > 0 where finite (a zero standard error has no normal likelihood)")
    if not ok.any():
        raise ValueError("no gene has a finite estimate and sd: nothing to fit")
    bo, so = b[ok], s[ok]
    if grid is None:
        grid = _ash_grid(bo, so)
    else:
        grid = np.sort(np.asarray(grid, dtype=float).ravel())
        if grid.size == 0 or not np.isfinite(grid).all() or (grid < 0).any():
            raise ValueError("grid must hold finite prior sds >= 0")
        if grid[0] > 0:
            grid = np.concatenate([[0.0], grid])
        grid = np.unique(grid)
    prior = np.ones(grid.size)
    prior[0] = null_weight
    loglik = _component_loglik(bo, so, grid)
    pi, w, n_iter, converged = _ash_mix_weights(loglik, prior, max_iter, tol)

    g2, s2 = grid[None, 1:] ** 2, so[:, None] ** 2
    shrink = g2 / (g2 + s2)
    m_k = bo[:, None] * shrink
    v_k = shrink * s2
    neg_k = stats.norm.cdf(-m_k / np.sqrt(v_k))
    wk = w[:, 1:]
    pm = np.sum(wk * m_k, axis=1)
    second = np.sum(wk * (v_k + m_k ** 2), axis=1)
    zero = w[:, 0]
    neg = np.sum(wk * neg_k, axis=1)
    lfsr = np.minimum(1.0 - neg, neg + zero)

    def full(v):
        out = np.full(b.size, np.nan)
        out[ok] = v
        return out

    row_max = np.max(loglik, axis=1)
    total = float(np.sum(row_max + np.log(np.exp(loglik - row_max[:, None]) @ pi)))
    return {"lfsr": full(np.clip(lfsr, 0.0, 1.0)), "lfdr": full(zero), "posterior_mean": full(pm),
            "posterior_sd": full(np.sqrt(np.maximum(second - pm ** 2, 0.0))), "pi": pi, "grid": grid,
            "loglik": total, "n_iter": n_iter, "converged": converged}
