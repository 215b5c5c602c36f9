"""Poisson NMF (MU, extrapolated SCD), weights, NBMF and the topic form: known truths and invariances."""
import numpy as np
import pytest
import scipy.sparse as sp
import scipy.stats as st

from scnotes.nmf import (NBMF, PoissonNMF, nbmf, nbmf_loglik, poisson_nmf, poisson_nmf_loglik,
                         poisson_to_topics, topics_to_poisson)


def _low_rank(n=300, p=100, k=3, seed=0, scale=3.0):
    rng = np.random.default_rng(seed)
    L = rng.gamma(0.5, scale, size=(n, k))
    F = rng.gamma(0.5, 2.0, size=(p, k))
    mu = L @ F.T
    x = rng.poisson(mu)
    keep = x.sum(axis=1) > 0
    return x[keep].astype(float), mu[keep]


@pytest.fixture(scope="module")
def lowrank():
    return _low_rank()


# --------------------------------------------------------------- likelihoods
def test_poisson_loglik_matches_scipy_dense_sparse_and_masked():
    x, mu = _low_rank(60, 20, 2, seed=3)
    rng = np.random.default_rng(1)
    L, F = rng.uniform(0.1, 1, (60, 2)), rng.uniform(0.1, 1, (20, 2))
    x = x[:60]
    L = L[:x.shape[0]]
    ref = st.poisson.logpmf(x, L @ F.T)
    w = rng.uniform(size=x.shape) * (rng.uniform(size=x.shape) < 0.8)
    assert poisson_nmf_loglik(x, L, F) == pytest.approx(ref.sum(), rel=1e-12)
    assert poisson_nmf_loglik(sp.csr_matrix(x), L, F) == pytest.approx(ref.sum(), rel=1e-12)
    assert poisson_nmf_loglik(x, L, F, w=w) == pytest.approx((w * ref).sum(), rel=1e-12)


def test_nb_loglik_matches_scipy():
    x, mu = _low_rank(40, 15, 2, seed=4)
    rng = np.random.default_rng(2)
    L, F = rng.uniform(0.1, 1, (x.shape[0], 2)), rng.uniform(0.1, 1, (15, 2))
    m = L @ F.T
    for theta in (0.3, np.linspace(0.5, 3, 15)):
        ref = st.nbinom.logpmf(x, theta, theta / (theta + m)).sum()
        assert nbmf_loglik(x, L, F, theta) == pytest.approx(ref, rel=1e-10)


# ------------------------------------------------------------ Poisson NMF
@pytest.mark.parametrize("method", ["mu", "scd"])
def test_rank1_reaches_closed_form_mle(method):
    rng = np.random.default_rng(0)
    x = rng.poisson(rng.gamma(2.0, 1.0, (80, 1)) @ rng.gamma(2.0, 1.0, (1, 40))).astype(float)
    m = PoissonNMF(1, method=method, max_iter=300, tol=0, seed=1).fit(x)
    mle = np.outer(x.sum(1), x.sum(0)) / x.sum()
    np.testing.assert_allclose(m.mean_, mle, rtol=1e-6, atol=1e-10)
    assert m.loglik_ == pytest.approx(st.poisson.logpmf(x, mle).sum(), rel=1e-10)


@pytest.mark.parametrize("kw", [dict(method="mu"), dict(method="scd", extrapolate=False),
                                dict(method="scd", extrapolate=False, n_inner=1)])
def test_history_is_nondecreasing(lowrank, kw):
    x, _ = lowrank
    m = PoissonNMF(3, max_iter=60, tol=0, **kw).fit(x)  # max_iter: the older name, kept as an alias
    tr = m.history_
    d = np.diff(np.r_[m.loglik_init_, tr["loglik"].to_numpy()])  # from the start on
    assert np.all(d >= -1e-9 * abs(tr["loglik"].iloc[-1]))
    assert np.all(np.diff(tr["time"].to_numpy()) >= 0)


def test_scd_beats_mu_and_recovers_mean(lowrank):
    x, mu = lowrank
    ref = PoissonNMF(3, method="mu", max_iter=400, tol=0, seed=2).fit(x)
    fast = PoissonNMF(3, method="scd", max_iter=400, tol=0, seed=2).fit(x)
    target = ref.loglik_ - 1e-7 * abs(ref.loglik_)
    h = fast.history_
    hit = h.loc[h["loglik"] >= target, "epoch"] + 1  # sweeps done
    assert len(hit) > 0, "SCD never reached the MU log-likelihood"
    assert hit.iloc[0] < 0.25 * ref.n_epochs_
    assert fast.loglik_ >= target
    rel = np.linalg.norm(fast.mean_ - mu) / np.linalg.norm(mu)
    assert rel < 0.1


def _dense_mu_reference(x, L, F, n_iter):
    """Multiplicative updates written out in dense NumPy (Lee & Seung 2001), independent of the kernels."""
    L, F = L.copy(), F.copy()
    for _ in range(n_iter):
        L *= ((x / (L @ F.T)) @ F) / F.sum(axis=0)
        F *= ((x / (L @ F.T)).T @ L) / L.sum(axis=0)
    return L, F


@pytest.mark.parametrize("fmt", ["dense", "csr", "csc"])
def test_mu_matches_an_independent_dense_reference(lowrank, fmt):
    # The kernels work on the nonzeros of a CSR matrix (dense input is converted), so the
    # reference must be separate code: full dense multiplicative updates.
    x, _ = lowrank
    rng = np.random.default_rng(5)
    L0, F0 = rng.uniform(0.5, 1.5, (x.shape[0], 3)), rng.uniform(0.5, 1.5, (x.shape[1], 3))
    xin = {"dense": x, "csr": sp.csr_matrix(x), "csc": sp.csc_matrix(x)}[fmt]
    m = PoissonNMF(3, method="mu", init=(L0, F0), max_epochs=25, tol=0).fit(xin)
    L, F = _dense_mu_reference(x, L0, F0, 25)
    np.testing.assert_allclose(m.L_, L, rtol=1e-9)
    np.testing.assert_allclose(m.F_, F, rtol=1e-9)
    assert m.loglik_ == pytest.approx(st.poisson.logpmf(x, L @ F.T).sum(), rel=1e-10)


@pytest.mark.parametrize("kw, iters, rtol", [(dict(method="mu"), 40, 1e-6),
                                             (dict(method="scd"), 300, 1e-4)])
def test_full_mask_equals_no_mask(lowrank, kw, iters, rtol):
    # The masked path computes the linear term as W F instead of colsums(F):
    # same numbers up to rounding. SCD's branch decisions can amplify rounding
    # along the way, so it is compared at convergence.
    x, _ = lowrank
    x = x[:150, :60]
    a = PoissonNMF(3, max_iter=iters, tol=0, seed=5, **kw).fit(x)
    b = PoissonNMF(3, max_iter=iters, tol=0, seed=5, **kw).fit(x, w=sp.csr_matrix(np.ones_like(x)))
    np.testing.assert_allclose(a.mean_, b.mean_, rtol=rtol)
    assert a.loglik_ == pytest.approx(b.loglik_, rel=1e-10)


@pytest.mark.parametrize("method", ["mu", "scd"])
def test_masked_entries_are_ignored(lowrank, method):
    x, _ = lowrank
    rng = np.random.default_rng(7)
    w = (rng.uniform(size=x.shape) < 0.85).astype(float)
    x2 = x + 7.0 * (1 - w)
    a = PoissonNMF(3, method=method, max_iter=40, seed=1).fit(x, w=w)
    b = PoissonNMF(3, method=method, max_iter=40, seed=1).fit(x2, w=w)
    np.testing.assert_allclose(a.L_, b.L_, rtol=1e-9)
    np.testing.assert_allclose(a.F_, b.F_, rtol=1e-9)
    assert a.loglik_ == pytest.approx(b.loglik_, rel=1e-12)
    # the weighted log-likelihood only counts observed entries
    assert a.loglik_ == pytest.approx(poisson_nmf_loglik(x, a.L_, a.F_, w=w), rel=1e-9)


def test_fractional_weights_match_replicated_data():
    # w = 1/2 on every entry of 2x (stacked twice) equals w = 1 on x once:
    # the weighted objective is the same function of (L, F) up to row duplication.
    x, _ = _low_rank(100, 40, 2, seed=8)
    a = PoissonNMF(2, method="scd", max_iter=200, tol=0, seed=0).fit(x)
    b = PoissonNMF(2, method="scd", max_iter=200, tol=0, seed=0).fit(
        np.vstack([x, x]), w=np.full((2 * x.shape[0], x.shape[1]), 0.5))
    assert b.loglik_ == pytest.approx(a.loglik_, rel=1e-6)


def test_same_seed_same_fit_and_different_seed_differs(lowrank):
    x, _ = lowrank
    a = PoissonNMF(3, max_iter=20, seed=11).fit(x)
    b = PoissonNMF(3, max_iter=20, seed=11).fit(x)
    c = PoissonNMF(3, max_iter=20, seed=12).fit(x)
    np.testing.assert_array_equal(a.L_, b.L_)
    np.testing.assert_array_equal(a.history_["loglik"], b.history_["loglik"])
    assert not np.array_equal(a.L_, c.L_)


def test_fit_does_not_depend_on_thread_count(lowrank, monkeypatch):
    numba = pytest.importorskip("numba")
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs 2 numba threads")
    from scnotes.nmf import _kernels

    x, _ = lowrank
    monkeypatch.setattr(_kernels, "_PARALLEL_MIN_NNZ", 0)
    fits = []
    for threads in (1, 2):
        old = numba.get_num_threads()
        numba.set_num_threads(threads)
        try:
            fits.append(PoissonNMF(3, max_iter=15, tol=0, seed=4).fit(x))
        finally:
            numba.set_num_threads(old)
    np.testing.assert_array_equal(fits[0].L_, fits[1].L_)
    np.testing.assert_array_equal(fits[0].history_["loglik"], fits[1].history_["loglik"])


def test_custom_init_and_functional_shortcut(lowrank):
    x, _ = lowrank
    rng = np.random.default_rng(0)
    L0, F0 = rng.uniform(0.5, 1, (x.shape[0], 3)), rng.uniform(0.5, 1, (x.shape[1], 3))
    m = poisson_nmf(x, 3, init=(L0, F0), max_iter=0)
    np.testing.assert_array_equal(m.L_, L0)
    assert m.loglik_ == pytest.approx(st.poisson.logpmf(x, L0 @ F0.T).sum(), rel=1e-10)


def test_mu_matches_or_beats_sklearn_from_same_init():
    sk = pytest.importorskip("sklearn.decomposition")
    x, _ = _low_rank(150, 60, 3, seed=9)
    rng = np.random.default_rng(1)
    L0, F0 = rng.uniform(0.5, 1.5, (x.shape[0], 3)), rng.uniform(0.5, 1.5, (x.shape[1], 3))
    ref = sk.NMF(3, solver="mu", beta_loss="kullback-leibler", init="custom",
                 max_iter=200, tol=0)
    W = ref.fit_transform(x, W=L0.copy(), H=F0.T.copy())
    ll_sk = poisson_nmf_loglik(x, W, ref.components_.T)
    ours = PoissonNMF(3, method="mu", init=(L0, F0), max_iter=200, tol=0).fit(x)
    assert ours.loglik_ >= ll_sk - 1e-9 * abs(ll_sk)
    fast = PoissonNMF(3, method="scd", init=(L0, F0), max_iter=200, tol=0).fit(x)
    assert fast.loglik_ >= ll_sk


@pytest.mark.parametrize("bad, err", [
    (lambda x: -x, "negative"),
    (lambda x: x + 0.5, "non-integer"),
    (lambda x: np.where(x > 3, np.nan, x), "NaN"),
])
def test_bad_counts_raise(lowrank, bad, err):
    x, _ = lowrank
    with pytest.raises(ValueError, match=err):
        PoissonNMF(2).fit(bad(x))


def test_bad_arguments_raise(lowrank):
    x, _ = lowrank
    with pytest.raises(ValueError, match="shape"):
        PoissonNMF(2).fit(x, w=np.ones((3, 3)))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        PoissonNMF(2).fit(x, w=2 * np.ones_like(x))
    with pytest.raises(ValueError, match="n_components"):
        PoissonNMF(0).fit(x)
    with pytest.raises(ValueError, match="method"):
        PoissonNMF(2, method="als").fit(x)
    with pytest.raises(ValueError, match="shapes"):
        PoissonNMF(2, init=(np.ones((3, 2)), np.ones((x.shape[1], 2)))).fit(x)
    with pytest.raises(ValueError, match="nonnegative"):
        PoissonNMF(2, init=(-np.ones((x.shape[0], 2)), np.ones((x.shape[1], 2)))).fit(x)
    with pytest.raises(RuntimeError, match="not fitted"):
        PoissonNMF(2).topics()


# ------------------------------------------------------------------ topics
def test_topic_conversion_round_trips():
    rng = np.random.default_rng(0)
    L, F = rng.gamma(0.5, 1, (50, 4)), rng.gamma(0.5, 1, (30, 4))
    P, T, s = poisson_to_topics(L, F)
    np.testing.assert_allclose(P.sum(1), 1, rtol=1e-12)
    np.testing.assert_allclose(T.sum(0), 1, rtol=1e-12)
    np.testing.assert_allclose(s, (L @ F.T).sum(1), rtol=1e-12)
    np.testing.assert_allclose(s[:, None] * P @ T.T, L @ F.T, rtol=1e-12)
    L2, F2 = topics_to_poisson(P, T, s)
    np.testing.assert_allclose(L2 @ F2.T, L @ F.T, rtol=1e-12)
    # (L2, F2) is in the image of the inverse, so forward then inverse gives it back
    L3, F3 = topics_to_poisson(*poisson_to_topics(L2, F2))
    np.testing.assert_allclose(L3, L2, rtol=1e-12)
    np.testing.assert_allclose(F3, F2, rtol=1e-12)
    P4, T4, s4 = poisson_to_topics(*topics_to_poisson(P, T, s))
    np.testing.assert_allclose(P4, P, rtol=1e-12)
    np.testing.assert_allclose(T4, T, rtol=1e-12)
    np.testing.assert_allclose(s4, s, rtol=1e-12)


def test_topic_conversion_edge_cases_and_errors():
    L = np.array([[1.0, 0.0], [0.0, 0.0]])
    F = np.array([[2.0, 0.0], [1.0, 0.0]])
    P, T, s = poisson_to_topics(L, F)
    np.testing.assert_allclose(T[:, 1], 0.5)        # dead factor: uniform topic
    np.testing.assert_allclose(P[1], 0.5)           # empty cell: uniform proportions
    assert s[1] == 0
    with pytest.raises(ValueError, match="sum to 1"):
        topics_to_poisson(np.ones((2, 2)), T, s)
    with pytest.raises(ValueError, match="columns"):
        poisson_to_topics(np.ones((2, 3)), F)


def test_fitted_topics_reproduce_mean(lowrank):
    x, _ = lowrank
    m = PoissonNMF(3, max_iter=200, tol=0).fit(sp.csr_matrix(x))
    P, T, s = m.topics()
    np.testing.assert_allclose(s[:, None] * P @ T.T, m.mean_, rtol=1e-10)
    # at the MLE the fitted row totals equal the observed ones
    np.testing.assert_allclose(s, x.sum(1), rtol=1e-6)


# -------------------------------------------------------------------- NBMF
@pytest.fixture(scope="module")
def nbdata():
    rng = np.random.default_rng(0)
    n, p, theta = 2000, 50, 2.0
    L = rng.gamma(1.0, 3.0, (n, 2))
    F = rng.gamma(1.0, 2.0, (p, 2))
    mu = L @ F.T
    u = rng.gamma(theta, 1 / theta, (n, p))
    x = rng.poisson(mu * u).astype(float)
    return x, mu, theta


def test_nbmf_recovers_inverse_dispersion(nbdata):
    x, mu, theta = nbdata
    m = NBMF(2, inv_disp=0.5, max_iter=150, seed=0).fit(x)
    assert m.inv_disp_.shape == (1,)
    assert abs(m.inv_disp_[0] - theta) / theta < 0.2
    d = np.diff(m.history_["loglik"].to_numpy())
    assert np.all(d >= -1e-9 * abs(m.loglik_))
    assert m.loglik_ == pytest.approx(nbmf_loglik(x, m.L_, m.F_, m.inv_disp_), rel=1e-10)
    # NB fits these data better than Poisson NMF of the same rank
    pois = PoissonNMF(2, max_iter=100).fit(x)
    assert m.loglik_ > pois.loglik_


def test_nbmf_per_gene_fixed_and_masked(nbdata):
    x, _, theta = nbdata
    x = x[:400]
    m = nbmf(x, 2, inv_disp=1.0, inv_disp_by_gene=True, max_iter=40)
    assert m.inv_disp_.shape == (x.shape[1],)
    assert 0.5 * theta < np.median(m.inv_disp_) < 2 * theta
    f = NBMF(2, inv_disp=0.7, fix_inv_disp=True, method="mu", max_iter=20).fit(x)
    np.testing.assert_array_equal(f.inv_disp_, [0.7])
    assert np.all(np.diff(f.history_["loglik"].to_numpy()) >= -1e-9 * abs(f.loglik_))
    rng = np.random.default_rng(3)
    w = (rng.uniform(size=x.shape) < 0.9).astype(float)
    a = NBMF(2, max_iter=15).fit(x, w=w)
    b = NBMF(2, max_iter=15).fit(x + 5 * (1 - w), w=w)
    np.testing.assert_allclose(a.mean_, b.mean_, rtol=1e-9)
    np.testing.assert_allclose(a.inv_disp_, b.inv_disp_, rtol=1e-9)
    with pytest.raises(ValueError, match="positive"):
        NBMF(2, inv_disp=-1).fit(x)
    with pytest.raises(ValueError, match="shape"):
        NBMF(2).fit(x, w=np.ones((2, 2)))


def test_nbmf_masked_overfit_stays_finite_and_monotone():
    # Rank well above the truth drives loadings to exact zeros; masked entries
    # with x > 0 and zero mean must not turn the masked log-likelihood into NaN.
    from scnotes.simulate import simulate_low_rank

    sim = simulate_low_rank(200, 60, 3, gamma_shape="inverse_var", replicate=False, seed=0)
    rng = np.random.default_rng(0)
    w = (rng.uniform(size=sim.x.shape) < 0.9).astype(float)
    m = NBMF(12, inv_disp=0.1, max_iter=150, seed=0).fit(sim.x, w=w)
    assert np.isfinite(m.loglik_)
    assert m.loglik_ == pytest.approx(nbmf_loglik(sim.x, m.L_, m.F_, m.inv_disp_, w=w), rel=1e-10)
    d = np.diff(m.history_["loglik"].to_numpy())
    assert np.all(d >= -1e-9 * abs(m.loglik_))


# ------------------------------------------------------------ AnnData front
def test_tl_nmf_writes_slots():
    ad = pytest.importorskip("anndata")
    import scnotes.tl as tl

    x, _ = _low_rank(120, 50, 3, seed=2)
    adata = ad.AnnData(sp.csr_matrix(x))
    est = tl.nmf(adata, n_components=3, max_iter=30)
    assert adata.obsm["X_nmf"].shape == (x.shape[0], 3)
    assert adata.varm["nmf"].shape == (50, 3)
    np.testing.assert_allclose(adata.obsm["X_topics"].sum(1), 1)
    np.testing.assert_allclose(adata.varm["topics"].sum(0), 1)
    np.testing.assert_allclose(adata.obs["topic_scale"], est.mean_.sum(1))
    assert adata.uns["X_nmf"]["loglik"] == est.loglik_
    np.testing.assert_array_equal(est.predict(), est.mean_)
    copied, est2 = tl.nmf(adata, n_components=3, max_iter=30, copy=True)
    np.testing.assert_array_equal(copied.obsm["X_nmf"], adata.obsm["X_nmf"])
    adata.layers["counts"] = adata.X.copy()
    adata.X = adata.X * 0.5
    tl.nmf(adata, 2, layer="counts", key_added="X_nmf2", max_iter=5)
    assert "X_topics2" in adata.obsm and "topics2" in adata.varm and "topics2_scale" in adata.obs
    with pytest.raises(ValueError, match="non-integer"):
        tl.nmf(adata, 2)
    with pytest.raises(KeyError, match="nope"):
        tl.nmf(adata, 2, layer="nope")


# ------------------------------------------------------- the family contract
def test_history_is_one_row_per_sweep_in_stated_units(lowrank):
    x, _ = lowrank
    m = PoissonNMF(3, method="mu", max_epochs=12, tol=0, seed=1).fit(x)
    h = m.history_
    assert list(h.columns) == ["epoch", "loss", "loglik", "time", "beta"]
    assert list(h["epoch"]) == list(range(12))  # one row per sweep; the start is not a row
    np.testing.assert_allclose(h["loss"], -h["loglik"] / x.shape[0])
    assert h["loglik"].iloc[-1] == m.loglik_ and m.n_epochs_ == 12
    # ℓ at the start, recomputed from the same seeded start (zero sweeps)
    start = PoissonNMF(3, method="mu", max_epochs=0, seed=1).fit(x)
    assert len(start.history_) == 0 and start.n_epochs_ == 0
    assert m.loglik_init_ == start.loglik_init_ == start.loglik_
    assert start.loglik_ == pytest.approx(poisson_nmf_loglik(x, start.L_, start.F_), rel=1e-12)
    # the older record is the same numbers under the older names, with a DeprecationWarning
    with pytest.warns(DeprecationWarning, match="older name of `history_`"):
        tr = m.trace_
    np.testing.assert_array_equal(tr["iter"], h["epoch"] + 1)
    np.testing.assert_array_equal(tr["loglik"], h["loglik"])
    with pytest.warns(DeprecationWarning, match="older name of `n_epochs_`"):
        assert m.n_iter_ == 12
    nb = NBMF(2, max_epochs=5, tol=0).fit(x)
    assert list(nb.history_.columns) == ["epoch", "loss", "loglik", "time", "theta"]
    with pytest.warns(DeprecationWarning):
        assert list(nb.trace_.columns) == ["iter", "loglik", "time", "inv_disp"]
    np.testing.assert_allclose(nb.history_["theta"].iloc[-1], nb.theta_.mean())


def test_older_names_are_aliases(lowrank):
    x, _ = lowrank
    a = PoissonNMF(2, max_iter=7, tol=0, seed=3)
    assert a.max_epochs == 7 and a.max_iter == 7 and a.get_params()["max_epochs"] == 7
    b = PoissonNMF(2, max_epochs=7, tol=0, seed=3)
    np.testing.assert_array_equal(a.fit(x).L_, b.fit(x).L_)
    old = NBMF(2, inv_disp=0.7, fix_inv_disp=True, inv_disp_by_gene=True, max_iter=4).fit(x)
    new = NBMF(2, theta=0.7, fix_theta=True, theta_by_gene=True, max_epochs=4).fit(x)
    assert old.theta == 0.7 and old.fix_theta and old.theta_by_gene and old.max_epochs == 4
    assert old.inv_disp == 0.7 and old.fix_inv_disp and old.inv_disp_by_gene
    np.testing.assert_array_equal(old.theta_, new.theta_)
    np.testing.assert_array_equal(old.inv_disp_, old.theta_)
    np.testing.assert_array_equal(old.L_, new.L_)
    assert nbmf_loglik(x, old.L_, old.F_, inv_disp=old.theta_) == nbmf_loglik(x, old.L_, old.F_, old.theta_)


def test_nb_loglik_is_the_shared_likelihood_with_masks():
    # NBMF's log-likelihood (histogram form) equals scnotes.metrics.nb_loglik (the torch
    # log-pmf on every entry) and scipy, with and without a 0/1 mask.
    from scnotes.metrics import nb_loglik as metrics_nb

    x, _ = _low_rank(80, 30, 2, seed=6)
    rng = np.random.default_rng(4)
    L, F = rng.uniform(0.1, 1, (x.shape[0], 2)), rng.uniform(0.1, 1, (30, 2))
    w = (rng.uniform(size=x.shape) < 0.8).astype(float)
    for theta in (0.2, 50.0, 2e5, np.linspace(0.5, 3e4, 30)):
        ref = st.nbinom.logpmf(x, theta, theta / (theta + L @ F.T))
        assert nbmf_loglik(x, L, F, theta) == pytest.approx(ref.sum(), rel=1e-10)
        assert nbmf_loglik(x, L, F, theta, w=w) == pytest.approx((w * ref).sum(), rel=1e-10)
        assert nbmf_loglik(x, L, F, theta, w=w) == pytest.approx(
            metrics_nb(x, L @ F.T, theta, mask=w > 0, per="total"), rel=1e-10)


def test_nbmf_on_poisson_data_drives_theta_large():
    # Near-Poisson counts: the θ step must keep finding ascent (the large-θ numerics of
    # scnotes.likelihoods), ending far above the overdispersed start.
    rng = np.random.default_rng(1)
    x = rng.poisson(rng.gamma(2.0, 1.0, (400, 2)) @ rng.gamma(2.0, 1.0, (2, 30))).astype(float)
    m = NBMF(2, theta=1.0, max_epochs=60, seed=0).fit(x)
    assert m.theta_[0] > 50
    assert np.all(np.diff(m.history_["loglik"].to_numpy()) >= -1e-9 * abs(m.loglik_))


def test_fits_leave_the_global_random_state_alone(lowrank):
    torch = pytest.importorskip("torch")
    x, _ = lowrank
    np.random.seed(123)
    torch.manual_seed(123)
    np_state, torch_state = np.random.get_state(), torch.get_rng_state()
    a = PoissonNMF(3, max_epochs=5, seed=9).fit(x)
    NBMF(2, max_epochs=3, seed=9).fit(x)
    PoissonNMF(3, method="mu", max_epochs=5, seed=9).fit(x)
    after_np, after_torch = np.random.get_state(), torch.get_rng_state()
    assert np_state[0] == after_np[0] and np.array_equal(np_state[1], after_np[1]) and np_state[2:] == after_np[2:]
    assert torch.equal(torch_state, after_torch)
    # and the fit does not depend on the global state
    np.random.seed(0)
    torch.manual_seed(0)
    np.testing.assert_array_equal(PoissonNMF(3, max_epochs=5, seed=9).fit(x).L_, a.L_)


def test_progress_bar_is_optional(lowrank, capsys):
    x, _ = lowrank
    a = PoissonNMF(2, max_epochs=3, progress=True).fit(x)
    b = PoissonNMF(2, max_epochs=3).fit(x)
    np.testing.assert_array_equal(a.L_, b.L_)
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("cls, kw", [
    (PoissonNMF, dict(method="scd", max_epochs=15)),
    (PoissonNMF, dict(method="mu", max_epochs=5, tol=0)),
    (NBMF, dict(theta=np.linspace(0.5, 2, 100), theta_by_gene=True, max_epochs=4)),
])
def test_save_load_round_trip(lowrank, tmp_path, cls, kw):
    x, _ = lowrank
    m = cls(3, seed=2, **kw).fit(x)
    m.var_names_ = np.array([f"g{j}" for j in range(x.shape[1])], dtype=object)
    path = tmp_path / "model.nmf"
    m.save(path)
    assert path.exists()  # exactly the path given (no .npz appended)
    r = cls.load(path)
    assert type(r) is cls
    np.testing.assert_array_equal(r.L_, m.L_)
    np.testing.assert_array_equal(r.F_, m.F_)
    np.testing.assert_array_equal(r.predict(), m.predict())
    pd = pytest.importorskip("pandas")
    pd.testing.assert_frame_equal(r.history_, m.history_)
    assert list(r.var_names_) == list(m.var_names_)
    assert (r.loglik_, r.n_epochs_, r.converged_, r.loglik_init_) == (m.loglik_, m.n_epochs_, m.converged_,
                                                                       m.loglik_init_)
    for name, value in m.get_params().items():
        np.testing.assert_array_equal(np.asarray(r.get_params()[name]), np.asarray(value))
    if cls is NBMF:
        np.testing.assert_array_equal(r.theta_, m.theta_)
    # refitting the loaded model gives the same fit (hyperparameters restored)
    np.testing.assert_array_equal(r.fit(x).L_, cls(3, seed=2, **kw).fit(x).L_)


def test_save_load_given_init_and_errors(lowrank, tmp_path):
    x, _ = lowrank
    rng = np.random.default_rng(0)
    init = (rng.uniform(0.5, 1, (x.shape[0], 2)), rng.uniform(0.5, 1, (x.shape[1], 2)))
    m = PoissonNMF(2, init=init, max_epochs=3).fit(x)
    m.save(tmp_path / "a")
    r = PoissonNMF.load(tmp_path / "a")
    np.testing.assert_array_equal(r.init[0], init[0])
    assert r.var_names_ is None
    NBMF(2, max_epochs=2).fit(x).save(tmp_path / "b")
    with pytest.raises(TypeError, match="NBMF"):
        PoissonNMF.load(tmp_path / "b")
    np.savez(tmp_path / "c.npz", a=np.ones(2))
    with pytest.raises(ValueError, match="not a model"):
        PoissonNMF.load(tmp_path / "c.npz")
    with pytest.raises(RuntimeError, match="not fitted"):
        PoissonNMF(2).save(tmp_path / "d")


def test_numba_layer_does_not_slow_torch():
    # With numba's default OpenMP layer, torch ran 10-30x slower after an NMF fit in the
    # same process; scnotes.nmf picks the "workqueue" layer unless the user chose one.
    import os
    import subprocess
    import sys

    code = ("import numba, numpy as np; import scnotes.nmf._kernels as k; k._PARALLEL_MIN_NNZ = 0; "
            "from scnotes.nmf import PoissonNMF; "
            "PoissonNMF(2, max_epochs=2).fit(np.random.default_rng(0).poisson(2, (50, 20))); "
            "print(numba.threading_layer())")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_THREADING_LAYER"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "workqueue"


# ------------------------------------------------------------ distinctiveness
def test_topic_lfc_is_least_extreme_and_ranks_specific_genes():
    from scnotes.nmf import distinctive_genes, topic_lfc

    T = np.array([[0.50, 0.10, 0.10],    # gene 0: specific to topic 1
                  [0.30, 0.30, 0.28],    # gene 1: shared by all (a "ribosomal" gene)
                  [0.10, 0.40, 0.02],    # gene 2: topic 2 over both others
                  [0.10, 0.20, 0.60]])   # gene 3: topic 3
    L = topic_lfc(T, pseudocount=0)
    assert L[0, 0] == pytest.approx(np.log2(5))                  # min over the other topics
    assert L[2, 1] == pytest.approx(np.log2(0.40 / 0.10))
    assert L[1, 0] == 0 and L[1, 2] < 0                            # mixed signs → 0; below all → max
    assert L[1, 2] == pytest.approx(np.log2(0.28 / 0.30))
    tab = distinctive_genes(T, ["a", "b", "c", "d"], n=2, pseudocount=0)
    assert list(tab.columns) == ["topic", "rank", "gene", "lfc", "frequency"]
    assert tab.query("topic == 1 and rank == 1")["gene"].item() == "a"
    assert tab.query("topic == 2 and rank == 1")["gene"].item() == "c"
    assert "b" not in set(tab["gene"])                              # the shared gene never leads
    # min_frequency drops rare genes even with large ratios
    rare = np.array([[0.001, 1e-9], [0.999, 1 - 1e-9 - 0.0]])
    rare = rare / rare.sum(0)
    assert "0" not in set(distinctive_genes(rare, n=1, min_frequency=0.01)["gene"])
    assert np.all(topic_lfc(np.array([[0.3], [0.7]])) == 0)


def test_tl_nmf_contract():
    ad = pytest.importorskip("anndata")
    import scnotes.tl as tl

    x, _ = _low_rank(120, 50, 3, seed=2)
    adata = ad.AnnData(sp.csr_matrix(x))
    adata.var_names = [f"g{j}" for j in range(50)]
    before = adata.copy()
    copied, est = tl.nmf(adata, n_components=3, max_epochs=30, seed=4, copy=True)
    # copy=True: input untouched, (copy, model) returned
    assert set(adata.obsm.keys()) == set(before.obsm.keys()) and "X_nmf" not in adata.uns
    # stored values are the estimator's own outputs
    np.testing.assert_array_equal(copied.obsm["X_nmf"], est.L_)
    np.testing.assert_array_equal(copied.varm["nmf"], est.F_)
    P, T, s = est.topics()
    np.testing.assert_array_equal(copied.obsm["X_topics"], P)
    np.testing.assert_array_equal(copied.varm["topics"], T)
    np.testing.assert_array_equal(copied.obs["topic_scale"], s)
    from scnotes.nmf import topic_lfc
    np.testing.assert_array_equal(copied.varm["topics_lfc"], topic_lfc(T))
    u = copied.uns["X_nmf"]
    assert u["params"]["n_components"] == 3 and u["params"]["max_epochs"] == 30 and u["params"]["seed"] == 4
    assert u["params"]["method"] == "scd" and u["params"]["layer"] is None
    assert u["loglik"] == est.loglik_ and u["n_epochs"] == est.n_epochs_ == len(u["history"])
    assert u["slots"]["obsm"] == ["X_nmf", "X_topics"]
    assert list(est.var_names_) == list(adata.var_names)
    # same seed, same numbers; copy=False writes in place and returns the model
    est2 = tl.nmf(adata, n_components=3, max_epochs=30, seed=4)
    np.testing.assert_array_equal(adata.obsm["X_nmf"], est.L_)
    assert isinstance(est2, type(est))
    genes = tl.topic_genes(adata, n=5)
    assert set(genes["topic"]) <= {1, 2, 3} and genes["gene"].str.startswith("g").all()
    with pytest.raises(KeyError, match="run scnotes.tl.nmf"):
        tl.topic_genes(adata, key="nope")
    # what tl writes survives an h5ad round trip
    import tempfile, os
    with tempfile.TemporaryDirectory() as d:
        adata.write_h5ad(os.path.join(d, "a.h5ad"))
        back = ad.read_h5ad(os.path.join(d, "a.h5ad"))
    np.testing.assert_array_equal(back.obsm["X_topics"], adata.obsm["X_topics"])


def test_transform_recovers_loadings_and_tl_project_checks_genes(lowrank):
    ad = pytest.importorskip("anndata")
    import scnotes.tl as tl

    x, _ = lowrank
    m = PoissonNMF(3, method="mu", max_epochs=300, tol=0, seed=0).fit(x)
    # with F fixed at the fit, EM on L from the transform's start reaches the fitted L's likelihood
    L = m.transform(x, max_epochs=500, tol=0)
    assert poisson_nmf_loglik(x, L, m.F_) >= m.loglik_ - 1e-6 * abs(m.loglik_)
    with pytest.raises(ValueError, match="genes"):
        m.transform(x[:, :10])
    adata = ad.AnnData(sp.csr_matrix(x))
    adata.var_names = [f"g{j}" for j in range(x.shape[1])]
    est = tl.nmf(adata, 3, max_epochs=20)
    new = adata[:40].copy()
    assert tl.nmf_project(new, est, key_added="X_proj") is est  # every front returns its model
    assert new.obsm["X_proj"].shape == (40, 3) and "X_proj_topics" in new.obsm
    np.testing.assert_allclose(new.obsm["X_proj_topics"].sum(1), 1)
    shuffled = new[:, list(new.var_names[::-1])].copy()
    with pytest.raises(ValueError, match="position 0"):
        tl.nmf_project(shuffled, est)


def test_metrics_zinb_loglik_matches_scipy_mixture():
    from scnotes.metrics import zinb_loglik

    rng = np.random.default_rng(3)
    x = rng.poisson(2.0, (30, 6)).astype(float)
    x[rng.uniform(size=x.shape) < 0.3] = 0
    mu = rng.uniform(0.5, 4, x.shape)
    theta, pi = np.linspace(0.5, 5, 6), np.linspace(0.05, 0.5, 6)
    nb = st.nbinom.pmf(x, theta, theta / (theta + mu))
    ref = np.log(np.where(x == 0, pi + (1 - pi) * nb, (1 - pi) * nb))
    assert zinb_loglik(x, mu, theta, np.log(pi / (1 - pi)), per="total") == pytest.approx(ref.sum(), rel=1e-10)
    mask = rng.uniform(size=x.shape) < 0.5
    np.testing.assert_allclose(zinb_loglik(x, mu, theta, np.log(pi / (1 - pi)), mask=mask, per="cell"),
                               np.where(mask, ref, 0).sum(1), rtol=1e-10)


def test_structure_plot_draws_what_tl_nmf_stored():
    ad = pytest.importorskip("anndata")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import scnotes.pl as pl
    import scnotes.tl as tl

    x, _ = _low_rank(60, 30, 3, seed=1)
    adata = ad.AnnData(sp.csr_matrix(x))
    adata.obs["group"] = pd_categories = np.array([f"c{i % 25}" for i in range(x.shape[0])])  # 25 > 20 colours
    tl.nmf(adata, 3, max_epochs=10)
    ax = pl.structure_plot(adata, groupby="group", title="t")
    assert len(ax.containers) == 3                      # one bar stack per topic
    assert len(ax.get_xticklabels()) == len(set(pd_categories))
    heights = np.sum([[r.get_height() for r in c] for c in ax.containers], axis=0)
    np.testing.assert_allclose(heights, 1.0)            # each cell's proportions stack to one
    with pytest.raises(KeyError, match="X_nope"):
        pl.structure_plot(adata, basis="X_nope")
    with pytest.raises(KeyError, match="nope"):
        pl.structure_plot(adata, groupby="nope")
    plt.close("all")
