"""Poisson GLMM: design validation, LMM closed forms, VEB (ELBO, recovery), NUTS, lme4."""
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import optimize, stats

from scnotes import glmm

needs_r = pytest.mark.skipif(not glmm.lme4_available(),
                             reason="R with lme4 not found (Rscript); " + glmm.INSTALL_HINT)


def simulate(n_cells=3000, n_types=2, n_donors=8, n_genes=1, sigma_u=0.4, seed=0):
    """Cells over cell type × condition groups and donors with known b, u, σ_u."""
    rng = np.random.default_rng(seed)
    obs = pd.DataFrame({
        "cell_type": rng.choice([f"t{k}" for k in range(n_types)], n_cells),
        "condition": rng.choice(["ctrl", "stim"], n_cells),
        "donor": rng.choice([f"d{k}" for k in range(n_donors)], n_cells),
        "total": rng.integers(500, 5000, n_cells),
    })
    G = 2 * n_types
    b = rng.normal(-7.0, 1.0, size=(n_genes, G))
    u = rng.normal(0, sigma_u, size=(n_genes, n_donors))
    tmp = glmm.glmm_data(obs, np.ones((n_cells, 1)), donor_key="donor", total_key="total",
                         cell_type_key="cell_type", condition_key="condition")
    eta = b[:, tmp.group] + u[:, tmp.donor]
    y = rng.poisson(obs["total"].to_numpy() * np.exp(eta)).T
    data = glmm.glmm_data(obs, y, donor_key="donor", total_key="total", cell_type_key="cell_type",
                          condition_key="condition")
    return data, b, u


# ----------------------------------------------------------------- design and bad inputs
def _obs(n=40):
    rng = np.random.default_rng(1)
    return pd.DataFrame({"g": rng.choice(["a", "b"], n), "donor": rng.choice(["x", "y", "z"], n),
                         "total": rng.integers(100, 1000, n).astype(float)})


def test_sufficient_stats_reproduce_counts():
    data, _, _ = simulate(n_cells=500, n_genes=3)
    st = data.stats()
    assert st.Y.shape == (3, data.n_groups, data.n_donors)
    assert np.allclose(st.Y.sum((1, 2)), data.counts.sum(0))
    assert np.isclose(st.S.sum(), data.total.sum())
    assert st.n.sum() == data.n_cells
    assert data.group_table.loc[data.groups[1], "condition"] == "stim"


@pytest.mark.parametrize("case, err, match", [
    ("zero_total", ValueError, "zero, negative"),
    ("nan_total", ValueError, "missing"),
    ("empty_group", ValueError, "no cells"),
    ("one_donor", ValueError, "at least 2 donors"),
    ("non_integer", ValueError, "non-integer"),
    ("missing_key", KeyError, "not found"),
])
def test_bad_inputs_raise(case, err, match):
    obs = _obs()
    y = np.arange(len(obs)) % 5
    kw = dict(donor_key="donor", total_key="total", group_key="g")
    if case == "zero_total":
        obs.loc[obs.index[3], "total"] = 0
    elif case == "nan_total":
        obs.loc[obs.index[3], "total"] = np.nan
    elif case == "empty_group":
        obs["g"] = pd.Categorical(obs["g"], categories=["a", "b", "c"])
    elif case == "one_donor":
        obs["donor"] = "x"
    elif case == "non_integer":
        y = y + 0.5
    elif case == "missing_key":
        kw["donor_key"] = "patient"
    with pytest.raises(err, match=match):
        glmm.glmm_data(obs, y, **kw)


def test_empty_cell_type_condition_combination_raises():
    obs = _obs()
    obs["ct"] = "T"
    obs["cond"] = "ctrl"
    obs.loc[obs.index[:5], "ct"] = "B"
    obs.loc[obs.index[5:], "cond"] = np.where(np.arange(len(obs) - 5) % 2, "ctrl", "stim")
    with pytest.raises(ValueError, match="no cells"):
        glmm.glmm_data(obs, np.ones(len(obs)), donor_key="donor", total_key="total",
                       cell_type_key="ct", condition_key="cond")


# ----------------------------------------------------------------- LMM closed forms
def _lmm_problem(seed=0, n=60, p=3, q=4):
    rng = np.random.default_rng(seed)
    X = np.eye(p)[rng.integers(0, p, n)]
    Z = np.eye(q)[rng.integers(0, q, n)]
    y = X @ rng.normal(size=p) + Z @ rng.normal(scale=0.7, size=q) + rng.normal(scale=0.5, size=n)
    return y, X, Z


def test_gls_matches_direct_minimisation():
    y, X, Z = _lmm_problem()
    s2, su2 = 0.3, 1.7
    b, cov = glmm.gls_fixed_effects(y, X, Z, s2, su2)
    nll = lambda bb: -glmm.lmm_marginal_loglik(y, X, Z, bb, s2, su2)  # noqa: E731
    res = optimize.minimize(nll, np.zeros(X.shape[1]), method="BFGS", options={"gtol": 1e-10})
    assert np.allclose(b, res.x, atol=1e-5)
    # covariance = inverse Hessian of the negative log-likelihood (quadratic in b)
    V = s2 * (np.eye(len(y)) + su2 * Z @ Z.T)
    assert np.allclose(cov, np.linalg.inv(X.T @ np.linalg.solve(V, X)))
    # and the likelihood itself agrees with a dense multivariate normal
    assert np.isclose(glmm.lmm_marginal_loglik(y, X, Z, b, s2, su2),
                      stats.multivariate_normal(X @ b, V).logpdf(y))


def test_random_effects_posterior_matches_brute_force_conditioning():
    y, X, Z = _lmm_problem(seed=2)
    s2, su2 = 0.4, 0.8
    b = np.array([0.1, -0.3, 0.5])
    m, C = glmm.random_effects_posterior(y, X, Z, b, s2, su2)
    # joint Gaussian of (y, u), then condition on y, with dense n × n matrices
    Su = s2 * su2 * np.eye(Z.shape[1])
    Syy = Z @ Su @ Z.T + s2 * np.eye(len(y))
    Suy = Su @ Z.T
    assert np.allclose(m, Suy @ np.linalg.solve(Syy, y - X @ b))
    assert np.allclose(C, Su - Suy @ np.linalg.solve(Syy, Suy.T))
    # the seed's K-form, corrected, is the law of Zu: mean σ_u² K H⁻¹ (y − Xb) (no 1/σ²),
    # covariance σ² σ_u² K H⁻¹ (the seed's σ_u² K (I − H⁻¹) is not it)
    K = Z @ Z.T
    H = np.eye(len(y)) + su2 * K
    assert np.allclose(Z @ m, su2 * K @ np.linalg.solve(H, y - X @ b))
    assert np.allclose(Z @ C @ Z.T, s2 * su2 * K @ np.linalg.inv(H))
    assert not np.allclose(Z @ C @ Z.T, su2 * K @ (np.eye(len(y)) - np.linalg.inv(H)))


def test_fit_lmm_maximises_the_likelihood():
    y, X, Z = _lmm_problem(seed=3, n=200)
    fit = glmm.fit_lmm(y, X, Z)

    def nll(th):
        return -glmm.lmm_marginal_loglik(y, X, Z, th[:3], np.exp(th[3]), np.exp(th[4]))

    res = optimize.minimize(nll, np.r_[np.zeros(3), 0.0, 0.0], method="Nelder-Mead",
                            options={"xatol": 1e-9, "fatol": 1e-10, "maxiter": 20000, "maxfev": 20000})
    assert fit["loglik"] >= -res.fun - 1e-6
    assert np.allclose(fit["b"], res.x[:3], atol=1e-3)
    assert np.isclose(fit["sigma2"], np.exp(res.x[3]), rtol=1e-3)


# ----------------------------------------------------------------- VEB objective
@pytest.mark.parametrize("guide", ["factorised", "full", "lowrank"])
def test_minibatch_elbo_is_unbiased_for_full_elbo(guide):
    data, _, _ = simulate(n_cells=600, n_genes=2, seed=4)
    m = glmm.PoissonGLMMVEB(guide=guide, expectation="analytic").init(data)
    # move away from the initialisation so q has correlations and unequal variances
    with torch.no_grad():
        for v in m._p.values():
            v.add_(0.05 * torch.randn(v.shape, generator=torch.Generator().manual_seed(0), dtype=v.dtype))
    full = m.elbo(data)
    # per-cell evaluation of all cells = sufficient-statistic evaluation
    assert np.allclose(m.elbo(data, cells=np.arange(data.n_cells)), full, rtol=1e-10)
    # the average over the minibatches of a random partition is exactly the full ELBO
    perm = np.random.default_rng(0).permutation(data.n_cells)
    parts = np.split(perm, 6)
    assert np.allclose(np.mean([m.elbo(data, cells=c) for c in parts], 0), full, rtol=1e-10)
    # and random minibatches with Monte Carlo expectations are unbiased within their standard error
    rng = np.random.default_rng(1)
    gen = torch.Generator().manual_seed(1)
    est = np.array([m.elbo(data, cells=rng.choice(data.n_cells, 50, replace=False), expectation="mc",
                           generator=gen) for _ in range(3000)])
    se = est.std(0) / np.sqrt(len(est))
    assert np.all(np.abs(est.mean(0) - full) < 4 * se)


def test_seed_objective_overweights_kl():
    data, _, _ = simulate(n_cells=1500, n_donors=6, seed=5)
    kw = dict(guide="factorised", batch_size=100, n_epochs=15, lr=0.05, seed=0)
    good = glmm.PoissonGLMMVEB(**kw).fit(data)
    bad = glmm.PoissonGLMMVEB(seed_objective=True, **kw).fit(data)
    # the correctly scaled objective reaches a higher full ELBO
    assert good.elbo(data, expectation="analytic")[0] > bad.elbo(data, expectation="analytic")[0]


# ----------------------------------------------------------------- VEB recovery
def test_veb_recovers_truth_at_expected_rate():
    data, b, u = simulate(n_cells=4000, n_types=3, n_donors=10, n_genes=20, sigma_u=0.4, seed=6)
    m = glmm.PoissonGLMMVEB(guide="full", expectation="analytic", n_epochs=1500, lr=0.05).fit(data)
    zb = np.abs(m.b_mean_ - b) / m.b_sd_
    zu = np.abs(m.u_mean_ - u) / m.u_sd_
    cover_b = np.mean(zb < 1.96)
    cover_u = np.mean(zu < 1.96)
    # 120 fixed and 200 random effects: 95% intervals should cover about 95% of them
    assert 0.85 <= cover_b <= 1.0, cover_b
    assert 0.85 <= cover_u <= 1.0, cover_u
    # σ_u from 10 donors: right order of magnitude per gene, close on average over genes
    assert 0.25 < np.median(m.sigma_u_) < 0.6
    # contrasts: the tidy table's stim - ctrl estimate is the difference of group effects
    df = m.summary()
    c = df[(df.kind == "contrast") & (df.gene == data.genes[0])].iloc[0]
    assert np.isclose(c.estimate, m.b_mean_[0, 1] - m.b_mean_[0, 0])
    assert np.isclose(c.sd ** 2, m.b_cov_[0, 0, 0] + m.b_cov_[0, 1, 1] - 2 * m.b_cov_[0, 0, 1])


def test_minibatch_veb_agrees_with_full_batch():
    data, b, _ = simulate(n_cells=3000, n_donors=8, seed=7)
    full = glmm.PoissonGLMMVEB(guide="full", expectation="analytic").fit(data)
    mb = glmm.PoissonGLMMVEB(guide="full", batch_size=256, n_epochs=30, lr=0.05).fit(data)
    assert np.all(np.abs(mb.b_mean_ - full.b_mean_) < full.b_sd_)


def test_factorised_guide_understates_sd_of_confounded_shift():
    data, _, _ = simulate(n_cells=3000, n_donors=4, seed=8)
    fac = glmm.PoissonGLMMVEB(guide="factorised", expectation="analytic").fit(data)
    full = glmm.PoissonGLMMVEB(guide="full", expectation="analytic").fit(data)
    assert np.all(fac.b_sd_ < full.b_sd_)
    assert np.allclose(fac.b_mean_, full.b_mean_, atol=3 * full.b_sd_.max())


def test_batched_fit_matches_single_gene_fits():
    data, _, _ = simulate(n_cells=1000, n_genes=3, seed=9)
    df = glmm.fit_genes(data, n_epochs=800)
    assert list(df.columns) == glmm.TIDY_COLUMNS
    assert set(df.kind) == {"group", "contrast"}
    one = glmm.PoissonGLMMVEB(guide="full", expectation="analytic", n_epochs=800, lr=0.1).fit(data.subset_genes(1))
    got = df[(df.gene == data.genes[1]) & (df.kind == "group")].estimate.to_numpy()
    # genes are independent and Adam is elementwise: the batched trajectory is the single-gene one
    assert np.allclose(got, one.b_mean_[0], atol=1e-5)


# ----------------------------------------------------------------- NUTS
def test_nuts_reports_rhat_ess_and_tracks_truth():
    data, b, u = simulate(n_cells=1500, n_types=1, n_donors=6, sigma_u=0.5, seed=10)
    r = glmm.fit_nuts(data, num_samples=100, warmup_steps=100, num_chains=2, prior="shared")
    d = r.diagnostics
    assert {"r_hat", "ess", "mean", "sd"} <= set(d.columns)
    assert len(d) == data.n_groups + data.n_donors + 2
    assert np.all(np.isfinite(d.r_hat)) and d.r_hat.max() < 1.1
    lo, hi = np.quantile(r.b.reshape(-1, data.n_groups), [0.005, 0.995], axis=0)
    assert np.all((lo < b[0]) & (b[0] < hi))
    assert r.summary().kind.tolist().count("contrast") == 1


@pytest.mark.slow
def test_nuts_recovers_truth_at_expected_rate():
    # The common shift (mean donor effect) is one draw per data set, so coverage is counted on
    # what each data set identifies separately: group contrasts b_g - b_0, centred donor
    # effects u_d - mean(u), and σ_u.
    hits, n = 0, 0
    for s in range(5):
        data, b, u = simulate(n_cells=1500, n_types=2, n_donors=8, sigma_u=0.4, seed=20 + s)
        r = glmm.fit_nuts(data, num_samples=200, warmup_steps=200, num_chains=2, prior="shared", seed=s)
        assert r.diagnostics.r_hat.max() < 1.05
        bd = r.b.reshape(-1, data.n_groups)
        ud = r.u.reshape(-1, data.n_donors)
        draws = np.concatenate([bd[:, 1:] - bd[:, :1], ud - ud.mean(1, keepdims=True),
                                r.sigma_u.reshape(-1, 1)], 1)
        truth = np.r_[b[0, 1:] - b[0, 0], u[0] - u[0].mean(), 0.4]
        lo, hi = np.quantile(draws, [0.025, 0.975], axis=0)
        hits += np.sum((lo < truth) & (truth < hi))
        n += truth.size
    assert hits / n >= 0.85, hits / n


# ----------------------------------------------------------------- lme4
def test_lme4_missing_says_how_to_install(monkeypatch):
    import scnotes.glmm._lme4 as L

    data, _, _ = simulate(n_cells=100)
    monkeypatch.setattr(L.shutil, "which", lambda *_: None)
    with pytest.raises(RuntimeError, match="apt-get install r-base-core r-cran-lme4"):
        glmm.fit_lme4(data)


@pytest.mark.needs_r
@needs_r
def test_veb_agrees_with_lme4_on_simulated_data():
    data, b, _ = simulate(n_cells=2000, n_types=2, n_donors=8, n_genes=2, seed=11)
    ref = glmm.fit_lme4(data)
    agg = glmm.fit_lme4(data, aggregate=True)
    assert np.allclose(agg.b, ref.b, atol=1e-3)
    assert np.allclose(agg.sigma_u, ref.sigma_u, rtol=1e-2, atol=1e-3)
    m = glmm.PoissonGLMMVEB(guide="full", expectation="analytic").fit(data)
    assert glmm.agreement(m.b_mean_, ref.b, ref.b_se) >= 0.95
    assert np.all(np.abs(np.log(m.b_sd_ / ref.b_se)) < np.log(1.5))
    tidy = ref.summary()
    assert list(tidy.columns) == glmm.TIDY_COLUMNS
    assert np.all(np.isfinite(ref.u_mode)) and np.all(ref.u_sd > 0)
