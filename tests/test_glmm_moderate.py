"""Shared empirical-Bayes steps of the NB GLMM (scnotes.glmm._moderate): recovery on
simulated data, closed forms, and agreement with limma run live."""
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import integrate, stats

from scnotes.glmm._moderate import ash_normal, dispersion_trend, fit_f_dist, squeeze_var, t_matched_sd
from scnotes.glmm._rscript import r_package_available, run_r_script

LIMMA_HINT = ("R package limma is not installed; install it with apt-get install r-bioc-limma "
              "(Debian/Ubuntu) or BiocManager::install(\"limma\") in R")


def simulate_s2(rng, n, d, d0, s0, outlier_frac=0.0, outlier_mult=20.0):
    """s2_j = σ²_j χ²_d / d with σ²_j = s0² d0 / χ²_{d0} (d, s0 scalars or per gene); a fraction of
    genes gets σ² × outlier_mult."""
    sigma2 = s0 * d0 / rng.chisquare(d0, n)
    if outlier_frac:
        sigma2 = np.where(rng.random(n) < outlier_frac, sigma2 * outlier_mult, sigma2)
    return sigma2 * rng.chisquare(d, n) / d


# ---------------------------------------------------------------------------- fit_f_dist
def test_fit_f_dist_recovers_prior():
    rng = np.random.default_rng(0)
    s2 = simulate_s2(rng, 5000, 3, 5.0, 0.02)
    d0, s0 = fit_f_dist(s2, 3)
    assert abs(d0 / 5.0 - 1) < 0.25
    assert abs(s0 / 0.02 - 1) < 0.10
    # per-gene df: the moments use each gene's own d_j
    d = rng.choice([2.0, 3.0, 6.0], 5000)
    s2 = simulate_s2(rng, 5000, d, 5.0, 0.02)
    d0, s0 = fit_f_dist(s2, d)
    assert abs(d0 / 5.0 - 1) < 0.25
    assert abs(s0 / 0.02 - 1) < 0.10


def test_fit_f_dist_no_spread_gives_infinite_df():
    # identical variances: no spread at all, d0 = ∞ and s0² the common value
    d0, s0 = fit_f_dist(np.full(100, 0.3), 4)
    assert d0 == np.inf and s0 == pytest.approx(0.3)
    # pure χ² scatter around a constant: d0 is ∞ or, by sampling noise in var(e), large
    for seed in range(5):
        rng = np.random.default_rng(seed)
        d0, s0 = fit_f_dist(0.02 * rng.chisquare(3, 5000) / 3, 3)
        assert d0 > 30
        assert abs(s0 / 0.02 - 1) < 0.05


def test_fit_f_dist_ignores_unusable_genes_and_floors_zeros():
    rng = np.random.default_rng(1)
    s2 = simulate_s2(rng, 500, 4, 6.0, 0.1)
    df = np.full(500, 4.0)
    bad_s2, bad_df = s2.copy(), df.copy()
    bad_s2[:5] = np.nan
    bad_s2[5:8] = np.inf
    bad_df[8:12] = 0.0
    keep = np.ones(500, bool)
    keep[:12] = False
    assert fit_f_dist(bad_s2, bad_df) == pytest.approx(fit_f_dist(s2[keep], df[keep]), rel=1e-12)
    zero = s2.copy()
    zero[:3] = 0.0
    with pytest.warns(RuntimeWarning, match="zero"):
        d0_zero, _ = fit_f_dist(zero, 4)
    floored = zero.copy()
    floored[:3] = 1e-5 * np.median(zero)
    assert d0_zero == pytest.approx(fit_f_dist(floored, 4)[0], rel=1e-12)


def test_fit_f_dist_trend_recovers_scale_on_covariate():
    rng = np.random.default_rng(2)
    n = 4000
    x = rng.uniform(0, 4, n)
    true = 0.05 * np.exp(-0.8 * x)
    s2 = simulate_s2(rng, n, 4, 8.0, true)
    d0, s0 = fit_f_dist(s2, 4, covariate=x)
    assert s0.shape == (n,)
    assert abs(d0 / 8.0 - 1) < 0.25
    central = (x > 0.2) & (x < 3.8)
    assert np.max(np.abs(np.log(s0[central] / true[central]))) < 0.1
    # without the covariate one constant cannot follow a 25-fold trend
    d0_flat, s0_flat = fit_f_dist(s2, 4)
    assert np.max(np.abs(np.log(s0_flat / true))) > 1.0
    assert d0_flat < 0.5 * d0


def test_fit_f_dist_robust_resists_outlier_genes():
    rng = np.random.default_rng(3)
    d, d0_true = 10, 20.0
    s2 = simulate_s2(rng, 5000, d, d0_true, 0.02, outlier_frac=0.05)
    d0_plain, _ = fit_f_dist(s2, d)
    d0_rob, s0_rob = fit_f_dist(s2, d, robust=True)
    # The plain moments see the outliers as spread; winsorising bounds their influence,
    # but (as limma's fitFDistRobustly, which this matches) does not remove it all.
    assert d0_plain < 0.35 * d0_true
    assert 0.5 * d0_true < d0_rob < 1.25 * d0_true
    assert d0_rob > 2 * d0_plain
    assert abs(s0_rob / 0.02 - 1) < 0.10
    # on clean data the robust fit agrees with the truth (and the plain fit)
    clean = simulate_s2(rng, 5000, d, d0_true, 0.02)
    d0_clean, s0_clean = fit_f_dist(clean, d, robust=True)
    assert abs(d0_clean / d0_true - 1) < 0.25
    assert abs(s0_clean / 0.02 - 1) < 0.05


def test_fit_f_dist_errors():
    with pytest.raises(ValueError, match="1-d"):
        fit_f_dist(np.ones((3, 2)), 2)
    with pytest.raises(ValueError, match="one value per gene"):
        fit_f_dist(np.ones(5), np.ones(4))
    with pytest.raises(ValueError, match="no gene"):
        fit_f_dist(np.full(4, np.nan), 3)
    with pytest.raises(ValueError, match="NaN"):
        fit_f_dist(np.ones(4), 3, covariate=[1, 2, np.nan, 3])
    with pytest.raises(ValueError, match="winsor"):
        fit_f_dist(np.ones(40), 3, robust=True, winsor_tail_p=(0.05, 0.6))


# ---------------------------------------------------------------------------- squeeze_var
def test_squeeze_var_closed_form_and_limits():
    s2 = np.array([0.1, 1.0, 4.0])
    df = np.array([2.0, 5.0, 10.0])
    np.testing.assert_allclose(squeeze_var(s2, df, 3.0, 0.5), (3.0 * 0.5 + df * s2) / (3.0 + df), rtol=1e-14)
    np.testing.assert_allclose(squeeze_var(s2, df, 0.0, 0.5), s2, rtol=1e-14)
    np.testing.assert_allclose(squeeze_var(s2, df, np.inf, 0.5), 0.5)
    # per-gene prior scale and a per-gene df_prior with an infinite entry
    np.testing.assert_allclose(squeeze_var(s2, df, np.array([1.0, np.inf, 0.0]), np.array([1.0, 2.0, 3.0])),
                               [(1.0 + 0.2) / 3.0, 2.0, 4.0], rtol=1e-14)
    # a gene without residual df gets the prior, whatever its s2
    assert squeeze_var(np.array([np.nan]), 0.0, 4.0, 0.7)[0] == pytest.approx(0.7)
    with pytest.raises(ValueError, match="df_prior"):
        squeeze_var(s2, df, np.nan, 0.5)


# ---------------------------------------------------------------------------- limma live
LIMMA_SCRIPT = r"""
suppressMessages(library(limma))
dir <- commandArgs(trailingOnly = TRUE)[1]
x <- read.csv(file.path(dir, "in.csv"))
s2 <- x$s2
fits <- list(const = fitFDist(s2, 3), vec = fitFDist(s2, x$d), trend = fitFDist(s2, x$d, covariate = x$cov),
             rob = fitFDistRobustly(s2, 3), robvec = fitFDistRobustly(s2, x$d),
             robtrend = fitFDistRobustly(s2, x$d, covariate = x$cov))
write.csv(data.frame(name = names(fits), df2 = sapply(fits, function(f) f$df2),
                     scale = sapply(fits, function(f) f$scale[1])),
          file.path(dir, "fits.csv"), row.names = FALSE)
sq <- squeezeVar(s2, x$d)
sqt <- squeezeVar(s2, x$d, covariate = x$cov)
write.csv(data.frame(trend_scale = fits$trend$scale, robtrend_scale = fits$robtrend$scale,
                     var_post = sq$var.post, var_post_trend = sqt$var.post),
          file.path(dir, "genes.csv"), row.names = FALSE)
"""


@pytest.fixture(scope="module")
def limma_case():
    rng = np.random.default_rng(11)
    n = 2000
    cov = rng.normal(2.0, 1.0, n)
    d = rng.choice([2.0, 3.0, 5.0], n)
    s2 = simulate_s2(rng, n, d, 6.0, 0.05 * np.exp(-0.5 * cov), outlier_frac=0.05)
    s2[:3] = 0.0  # zeros: floored as limma does
    s2[5] = np.nan  # left out of the fit
    tmp, path = run_r_script(LIMMA_SCRIPT, "limma", {"in.csv": pd.DataFrame({"s2": s2, "d": d, "cov": cov})},
                             LIMMA_HINT, timeout=120)
    with tmp:
        fits = pd.read_csv(path / "fits.csv").set_index("name")
        genes = pd.read_csv(path / "genes.csv")
    return s2, d, cov, fits, genes


@pytest.mark.skipif(not r_package_available("limma"), reason=LIMMA_HINT)
def test_fit_f_dist_matches_limma(limma_case):
    s2, d, cov, fits, genes = limma_case
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ours = {"const": fit_f_dist(s2, 3), "vec": fit_f_dist(s2, d), "trend": fit_f_dist(s2, d, covariate=cov),
                "rob": fit_f_dist(s2, 3, robust=True), "robvec": fit_f_dist(s2, d, robust=True),
                "robtrend": fit_f_dist(s2, d, covariate=cov, robust=True)}
        post = squeeze_var(s2, d, *ours["vec"])
        post_trend = squeeze_var(s2, d, *ours["trend"])
    # the same method: the same numbers
    for name in ["const", "vec", "trend", "rob", "robvec"]:
        d0, s0 = ours[name]
        assert d0 == pytest.approx(fits.loc[name, "df2"], rel=1e-7), name
        assert np.ravel(s0)[0] == pytest.approx(fits.loc[name, "scale"], rel=1e-7), name
    np.testing.assert_allclose(ours["trend"][1], genes["trend_scale"], rtol=1e-7)
    ok = np.isfinite(s2)
    np.testing.assert_allclose(post[ok], genes["var_post"][ok], rtol=1e-7)
    np.testing.assert_allclose(post_trend[ok], genes["var_post_trend"][ok], rtol=1e-7)
    # robust with a covariate: limma's trend of log s2 is loessFit(span = 0.4), ours a
    # natural spline with bisquare reweighting, so only close
    d0, s0 = ours["robtrend"]
    assert d0 == pytest.approx(fits.loc["robtrend", "df2"], rel=0.05)
    assert np.median(np.abs(np.log(s0 / genes["robtrend_scale"]))) < 0.1


# ---------------------------------------------------------------------------- dispersion trend
def test_dispersion_trend_recovers_monotone_trend():
    rng = np.random.default_rng(4)
    n = 3000
    log_mean = rng.uniform(-3, 3, n)
    true = 1.0 + 1.5 * np.tanh(log_mean)
    log_theta = true + rng.normal(0, 0.4, n)
    log_theta[:30] = np.inf  # Poisson-looking genes: ignored in the fit, still get a trend
    log_mean[30:40] = np.nan
    trend, tau2 = dispersion_trend(log_mean, log_theta)
    fin = np.isfinite(log_mean)
    assert np.isnan(trend[~fin]).all() and np.isfinite(trend[fin]).all()
    assert np.quantile(np.abs(trend[fin] - true[fin]), 0.9) < 0.1
    assert np.max(np.abs(trend[fin] - true[fin])) < 0.25
    assert 0.8 * 0.16 < tau2 < 1.2 * 0.16
    # monotone truth, monotone fit (bin medians of a monotone trend)
    order = np.argsort(log_mean[fin])
    assert (np.diff(trend[fin][order]) >= -0.05).all()
    # no spread: tau2 floored
    assert dispersion_trend(log_mean[fin], true[fin])[1] == pytest.approx(1e-4, abs=1e-3)
    with pytest.raises(ValueError, match="no gene"):
        dispersion_trend([np.nan], [1.0])


# ---------------------------------------------------------------------------- ash
def _sim_sparse(seed, n=5000):
    rng = np.random.default_rng(seed)
    beta = np.where(rng.random(n) < 0.9, 0.0, rng.normal(0, 2, n))
    return beta, beta + rng.normal(size=n)


def test_ash_normal_calibration_on_sparse_effects():
    beta, bhat = _sim_sparse(5)
    res = ash_normal(bhat, np.ones_like(bhat))
    assert res["converged"]
    assert 0.8 <= res["pi"][0] <= 0.97
    assert res["grid"][0] == 0 and res["pi"].sum() == pytest.approx(1.0)
    sig = res["lfsr"] < 0.05
    assert sig.sum() > 20
    wrong = np.sign(res["posterior_mean"][sig]) != np.sign(beta[sig])  # a null counts as wrong
    assert wrong.mean() <= 0.08
    assert (np.abs(res["posterior_mean"]) <= np.abs(bhat) + 1e-12).all()
    # the local rates average to the rate over the declared set (up to noise)
    assert res["lfsr"][sig].mean() < 0.05


def test_ash_normal_pure_null():
    rng = np.random.default_rng(6)
    bhat = rng.normal(size=3000)
    res = ash_normal(bhat, np.ones_like(bhat))
    assert np.mean(res["lfsr"] < 0.05) < 0.02
    assert res["pi"][0] > 0.9


def test_ash_normal_posterior_matches_numeric_integration():
    beta, bhat = _sim_sparse(7, n=2000)
    sd = np.random.default_rng(8).uniform(0.5, 1.5, bhat.size)
    bhat = beta + (bhat - beta) * sd
    res = ash_normal(bhat, sd)
    pi, grid = res["pi"], res["grid"]

    def prior_density(b):  # the continuous part of g
        return sum(p * stats.norm.pdf(b, 0, s) for p, s in zip(pi[1:], grid[1:]))

    def moments(j):
        """Posterior mass below 0, at 0, above 0 and the first two moments of β_j given g."""
        def joint(b, power=0):
            return b ** power * prior_density(b) * stats.norm.pdf(bhat[j], b, sd[j])

        lim = abs(bhat[j]) + 12 * sd[j]
        pts = [0.0, bhat[j]]
        atom = pi[0] * stats.norm.pdf(bhat[j], 0.0, sd[j])
        neg = integrate.quad(joint, -lim, 0, points=pts[1:] if bhat[j] < 0 else None, limit=200)[0]
        pos = integrate.quad(joint, 0, lim, points=pts[1:] if bhat[j] > 0 else None, limit=200)[0]
        m1 = integrate.quad(joint, -lim, lim, args=(1,), points=pts, limit=200)[0]
        m2 = integrate.quad(joint, -lim, lim, args=(2,), points=pts, limit=200)[0]
        z = atom + neg + pos
        return neg / z, atom / z, pos / z, m1 / z, m2 / z

    for j in [int(np.argmax(np.abs(bhat))), int(np.argmin(np.abs(bhat))), 17]:
        neg, atom, pos, mean, second = moments(j)
        assert res["posterior_mean"][j] == pytest.approx(mean, abs=1e-6)
        assert res["posterior_sd"][j] == pytest.approx(np.sqrt(second - mean ** 2), abs=1e-6)
        assert res["lfdr"][j] == pytest.approx(atom, abs=1e-7)
        assert res["lfsr"][j] == pytest.approx(min(pos + atom, neg + atom), abs=1e-6)


def test_ash_normal_missing_and_errors():
    _, bhat = _sim_sparse(9, n=1000)
    sd = np.ones_like(bhat)
    full = ash_normal(bhat, sd)
    bhat2, sd2 = bhat.copy(), sd.copy()
    bhat2[[3, 4]] = np.nan
    sd2[7] = np.inf
    part = ash_normal(bhat2, sd2)
    for key in ["lfsr", "posterior_mean", "posterior_sd", "lfdr"]:
        assert np.isnan(part[key][[3, 4, 7]]).all()
        assert np.isfinite(np.delete(part[key], [3, 4, 7])).all()
    keep = np.setdiff1d(np.arange(1000), [3, 4, 7])
    ref = ash_normal(bhat[keep], sd[keep])
    np.testing.assert_allclose(part["pi"], ref["pi"], atol=1e-10)
    np.testing.assert_allclose(part["lfsr"][keep], ref["lfsr"], atol=1e-10)
    assert part["loglik"] == pytest.approx(ref["loglik"])
    assert full["loglik"] < 0
    with pytest.raises(ValueError, match="sd must be > 0"):
        ash_normal(bhat, np.zeros_like(bhat))
    with pytest.raises(ValueError, match="mixcompdist"):
        ash_normal(bhat, sd, mixcompdist="uniform")
    with pytest.raises(ValueError, match="null_weight"):
        ash_normal(bhat, sd, null_weight=0.5)
    # a user grid without 0 gets the point mass first
    assert ash_normal(bhat, sd, grid=[0.5, 1.0, 2.0])["grid"].tolist() == [0.0, 0.5, 1.0, 2.0]


# ---------------------------------------------------------------------------- t_matched_sd
def test_t_matched_sd_gives_the_t_test_p_value():
    rng = np.random.default_rng(10)
    est = rng.normal(0, 2, 200)
    sd = rng.uniform(0.2, 2.0, 200)
    t = est / sd
    for df in [1.0, 3.0, 10.0, 200.0]:
        sd_eff = t_matched_sd(est, t, df)
        np.testing.assert_allclose(2 * stats.norm.sf(np.abs(est) / sd_eff), 2 * stats.t.sf(np.abs(t), df),
                                   rtol=1e-8, atol=1e-300)
        assert (sd_eff >= sd * (1 - 1e-12)).all()  # t tails are heavier
    # per-gene df, broadcast
    dfs = rng.uniform(2, 30, 200)
    sd_eff = t_matched_sd(est, t, dfs)
    np.testing.assert_allclose(stats.norm.sf(np.abs(est) / sd_eff), stats.t.sf(np.abs(t), dfs), rtol=1e-8)


def test_t_matched_sd_limits():
    # df → ∞: the original sd
    np.testing.assert_allclose(t_matched_sd([1.0, -3.0], [2.0, -1.5], np.inf), [0.5, 2.0], rtol=1e-15)
    np.testing.assert_allclose(t_matched_sd([1.0, -3.0], [2.0, -1.5], 1e8), [0.5, 2.0], rtol=1e-6)
    # T → 0: the limit φ(0)/f_t(0) times sd, continuous with small T
    df = 4.0
    ratio0 = stats.norm.pdf(0) / stats.t.pdf(0, df)
    assert t_matched_sd(0.0, 0.0, df, sd=2.0) == pytest.approx(2.0 * ratio0, rel=1e-12)
    assert t_matched_sd(2e-6, 1e-6, df) == pytest.approx(2.0 * ratio0, rel=1e-6)
    assert np.isnan(t_matched_sd(0.0, 0.0, df))  # sd unidentified without `sd`
    # far tail where the t tail probability underflows: still finite and close to sd
    sd_eff = t_matched_sd(100.0, 50.0, 1e6)
    assert 2.0 < sd_eff < 2.0 * 1.002
    assert np.isnan(t_matched_sd(np.nan, 1.0, 3.0))
    with pytest.raises(ValueError, match="df"):
        t_matched_sd(1.0, 1.0, 0.0)


def test_fit_f_dist_robust_survives_an_extreme_variance_with_unequal_df():
    """A variance 50× the others on 4.5 df among variances on 3.9–5.5 df: mapping it to the largest
    df overflowed scipy's F quantile to inf and the robust trend's least squares failed (found on a
    simulated null); the fit must stay finite and the bulk's prior must not move much."""
    rng = np.random.default_rng(0)
    d = rng.uniform(3.9, 5.5, 200)
    s2 = rng.chisquare(d) / d
    cov = rng.normal(size=200)
    base = fit_f_dist(s2, d, covariate=cov, robust=True)
    s2[0], d[0] = 50.0, 4.5
    d0, s0 = fit_f_dist(s2, d, covariate=cov, robust=True)
    assert np.all(np.isfinite(s0)) and d0 > 0
    assert np.median(np.abs(np.log(s0 / base[1]))) < 0.2
