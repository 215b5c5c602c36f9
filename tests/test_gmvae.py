"""GMVAE: prior layout, Bayes' rule, KL terms, K = 1 reduction, free bits, recovery of
simulated clusters across batches, seeds, persistence, AnnData front, bad input."""
import math

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import scipy.stats as st
import torch
import torch.nn.functional as F
from sklearn.metrics import adjusted_rand_score

import scnotes
from scnotes.vae import GMVAE, NBVAE
from scnotes.vae._gmvae import GMVAEModule

torch.set_num_threads(1)

FAST = dict(progress=False, lr=3e-3)


def simulate_mixture(n_cells=1500, n_genes=120, n_clusters=5, n_batches=2, n_markers=15, fold=4.0,
                     batch_sd=0.5, theta=5.0, depth=600, likelihood="nb", seed=0):
    """Counts from a mixture: y_ij ~ NB(s_i ρ_{z_i j} b_{β_i j}, θ) (or Poisson), clusters z_i
    uniform over ``n_clusters`` profiles ρ_k (``n_markers`` genes up ``fold``-fold each),
    batches β_i uniform with a multiplicative gene-wise effect log b ~ N(0, batch_sd²),
    size factors s_i = depth × LogNormal(0, 0.3²). Returns AnnData with obs cluster, batch."""
    rng = np.random.default_rng(seed)
    base = rng.lognormal(0, 1, n_genes)
    logfc = np.zeros((n_clusters, n_genes))
    for k in range(n_clusters):
        logfc[k, rng.choice(n_genes, n_markers, replace=False)] = np.log(fold)
    rho = base * np.exp(logfc)
    rho /= rho.sum(1, keepdims=True)
    bfac = np.exp(rng.normal(0, batch_sd, (n_batches, n_genes)))
    z = rng.integers(n_clusters, size=n_cells)
    b = rng.integers(n_batches, size=n_cells)
    mu = depth * rng.lognormal(0, 0.3, n_cells)[:, None] * rho[z] * bfac[b]
    if likelihood == "nb":
        mu = mu * rng.gamma(theta, 1 / theta, mu.shape)
    x = rng.poisson(mu).astype(np.float32)
    keep = x.sum(1) > 0
    obs = pd.DataFrame({"cluster": pd.Categorical(z.astype(str)), "batch": pd.Categorical([f"b{v}" for v in b])},
                       index=[f"c{i}" for i in range(n_cells)])
    return ad.AnnData(x[keep], obs=obs[keep])


@pytest.fixture(scope="module")
def small_counts():
    a = simulate_mixture(n_cells=200, n_genes=30, n_clusters=3, seed=3)
    return np.asarray(a.X, dtype=np.float64), np.eye(2)[a.obs["batch"].cat.codes.to_numpy()]


@pytest.fixture(scope="module")
def fitted(small_counts):
    x, c = small_counts
    return GMVAE(x.shape[1], n_clusters=3, n_latent=4, w_dim=3, hidden_dim=32, n_covariates=2,
                 seed=0).fit(x, covariates=c, max_epochs=4, pretrain_epochs=2, **FAST)


def _module(k=3, d=4, dw=5, p=20, seed=0, **kw):
    torch.manual_seed(seed)
    m = GMVAEModule(p, d, k, w_dim=dw, hidden_dim=16, **kw).double()
    m.eval()
    return m


# --- the prior network: each cell's components come from its own w ------------------
def test_prior_params_equal_a_loop_over_k_on_one_cell():
    k, d, dw = 3, 4, 5
    m = _module(k, d, dw)
    w = torch.randn(2, 6, dw, dtype=torch.float64)  # S × B × d_w
    mean, scale = m.prior_params(w)
    assert mean.shape == scale.shape == (2, 6, k, d)
    W, b = m.prior_out.weight, m.prior_out.bias
    with torch.no_grad():
        for s_, i in [(0, 0), (1, 4), (0, 5)]:
            h = m.prior_net(w[s_, i:i + 1])[0]  # that cell alone
            for j in range(k):
                rows = slice(2 * d * j, 2 * d * j + d)
                srows = slice(2 * d * j + d, 2 * d * (j + 1))
                torch.testing.assert_close(mean[s_, i, j], W[rows] @ h + b[rows])
                torch.testing.assert_close(scale[s_, i, j], F.softplus(W[srows] @ h + b[srows]) + 1e-4)
        # The reference's reshape (M, B, 2Kd) -> (K, M, B, 2d) mixes cells: it fails this check.
        out = m.prior_out(m.prior_net(w))
        wrong = out.reshape(k, 2, 6, 2 * d)[..., :d]  # its "mean of component j, draw s, cell i"
        h = m.prior_net(w[0, 1:2])[0]
        assert not torch.allclose(wrong[1, 0, 1], W[2 * d:3 * d] @ h + b[2 * d:3 * d])


def test_cluster_posterior_is_bayes_rule_for_two_components():
    m = _module(k=2, d=3, dw=2)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(7, 3, generator=gen, dtype=torch.float64)
    w = torch.randn(7, 2, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        p = torch.exp(m.cluster_log_posterior(x, w)).numpy()
        mean, scale = (t.numpy() for t in m.prior_params(w))
    np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-12)
    dens = np.stack([st.norm.pdf(x.numpy(), mean[:, j], scale[:, j]).prod(1) for j in range(2)], 1)
    by_hand = 0.5 * dens[:, 0] / (0.5 * dens[:, 0] + 0.5 * dens[:, 1])
    np.testing.assert_allclose(p[:, 0], by_hand, rtol=1e-9)


def test_conditional_prior_matches_monte_carlo_and_kl_z_is_nonnegative():
    m = _module(k=4, d=3, dw=2, p=15)
    y = torch.as_tensor(np.random.default_rng(0).poisson(3.0, (5, 15)), dtype=torch.float64)
    s = y.sum(1)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        d = m.draws(y, 1, gen)
        t = m.terms_from_draws(y, None, s, None, d)
        pz = torch.exp(d["log_pz"])[0]  # B × K, the weights of this draw
        q = torch.distributions.Normal(d["mean_x"], d["scale_x"])
        xs = q.sample((200_000,))  # fresh draws of x for the KL integral
        log_q = q.log_prob(xs).sum(-1)
        log_p = torch.distributions.Normal(d["prior_mean"][0], d["prior_scale"][0]).log_prob(
            xs[:, :, None, :]).sum(-1)
        mc = (pz * (log_q[..., None] - log_p)).sum(-1).mean(0)
        exact = (pz * torch.distributions.kl_divergence(
            torch.distributions.Normal(d["mean_x"][:, None, :], d["scale_x"][:, None, :]),
            torch.distributions.Normal(d["prior_mean"][0], d["prior_scale"][0])).sum(-1)).sum(-1)
    torch.testing.assert_close(t.kl["kl_x"], exact)
    torch.testing.assert_close(t.kl["kl_x"], mc, rtol=0.02, atol=0.02)
    assert torch.all(t.kl["kl_z"] >= 0) and torch.all(t.kl["kl_z"] <= math.log(4) + 1e-12)
    # By hand: Σ_k p_k log(p_k K).
    torch.testing.assert_close(t.kl["kl_z"], (pz * torch.log(pz * 4)).sum(-1))


def test_sampled_conditional_prior_terms_sum_to_the_elbo_draw_by_draw():
    m = _module(k=3, conditional_prior="sampled")
    y = torch.as_tensor(np.random.default_rng(1).poisson(2.0, (6, 20)), dtype=torch.float64)
    with torch.no_grad():
        t = m.terms_from_draws(y, None, y.sum(1), None, m.draws(y, 3, torch.Generator().manual_seed(0)))
    torch.testing.assert_close(t.reconstruction - t.kl["kl_w"] - t.kl["kl_x"] - t.kl["kl_z"], t.extra["elbo"])


def test_k1_is_a_vae_with_a_learned_gaussian_prior():
    m = _module(k=1, d=3, dw=2, p=12, likelihood="nb")
    y = torch.as_tensor(np.random.default_rng(2).poisson(4.0, (8, 12)), dtype=torch.float64)
    s = y.sum(1)
    with torch.no_grad():
        d = m.draws(y, 5, torch.Generator().manual_seed(3))
        t = m.terms_from_draws(y, None, s, None, d)
        N = torch.distributions.Normal
        mu = s[:, None] * torch.exp(m.decode(d["x"]))
        theta = m.theta
        rec = torch.distributions.NegativeBinomial(total_count=theta, probs=mu / (mu + theta)).log_prob(y).sum(-1).mean(0)
        kl_w = torch.distributions.kl_divergence(N(d["mean_w"], d["scale_w"]), N(0.0, 1.0)).sum(-1)
        pm, ps = d["prior_mean"][:, :, 0], d["prior_scale"][:, :, 0]  # the one component
        kl_x = torch.distributions.kl_divergence(N(d["mean_x"], d["scale_x"]), N(pm, ps)).sum(-1).mean(0)
        sampled = (N(d["mean_x"], d["scale_x"]).log_prob(d["x"]) - N(pm, ps).log_prob(d["x"])).sum(-1).mean(0)
    np.testing.assert_array_equal(torch.exp(d["log_pz"]).numpy(), 1.0)
    np.testing.assert_allclose(t.kl["kl_z"].numpy(), 0.0, atol=1e-12)
    torch.testing.assert_close(t.reconstruction, rec)
    torch.testing.assert_close(t.kl["kl_w"], kl_w)
    torch.testing.assert_close(t.kl["kl_x"], kl_x)
    # The bound itself: the VAE ELBO with prior N(μ(w), σ(w)²), w ~ q(w | y).
    torch.testing.assert_close(t.extra["elbo"], rec - kl_w - sampled)
    # ... and in expectation the analytic decomposition is the same bound (exact for K = 1).
    with torch.no_grad():
        big = m.terms_from_draws(y, None, s, None, m.draws(y, 4000, torch.Generator().manual_seed(4)))
    np.testing.assert_allclose((big.reconstruction - big.kl["kl_w"] - big.kl["kl_x"]).numpy(),
                               big.extra["elbo"].numpy(), rtol=2e-3)


def test_elbo_below_marginal_likelihood(fitted, small_counts):
    x, c = small_counts
    el = fitted.elbo(x, covariates=c, n_samples=20)
    ml = fitted.marginal_ll(x, covariates=c, n_samples=300)
    assert np.all(np.isfinite(el)) and el.mean() < ml.mean()


# --- free bits ----------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["batch", "cell"])
def test_free_bits_threshold(mode):
    y = torch.as_tensor(np.random.default_rng(4).poisson(3.0, (10, 20)), dtype=torch.float64)
    s = y.sum(1)

    def terms(lam):
        m = _module(k=3, free_bits=lam, free_bits_mode=mode)
        return m.training_terms(y, None, s, None, 1, torch.Generator().manual_seed(0))

    t0 = terms(0.0)
    rest = t0.reconstruction - t0.kl["kl_w"] - t0.kl["kl_x"]
    torch.testing.assert_close((-t0.loss), rest - t0.kl["kl_z"])
    kz = t0.kl["kl_z"]
    lam = float(kz.detach().median())
    t = terms(lam)
    torch.testing.assert_close(t.extra["elbo"], t0.extra["elbo"])  # the logged bound never sees λ
    if mode == "cell":
        torch.testing.assert_close((-t.loss), rest - torch.clamp(kz, min=lam))
    else:  # on the minibatch mean: all cells keep kl_z, or all carry λ
        expect = rest - (kz if kz.mean() >= lam else torch.full_like(kz, lam))
        torch.testing.assert_close((-t.loss), expect)
        big = terms(10.0)  # above log K: the z prior gives no gradient at all
        torch.testing.assert_close((-big.loss), rest - 10.0)


def test_free_bits_batch_mode_drops_the_gradient():
    y = torch.as_tensor(np.random.default_rng(5).poisson(3.0, (10, 20)), dtype=torch.float32)
    m = GMVAEModule(20, 3, 3, w_dim=2, hidden_dim=8, free_bits=5.0)  # 5 > log 3
    m.eval()
    t = m.training_terms(y, None, y.sum(1), None, 1, torch.Generator().manual_seed(0))
    (-t.loss).sum().backward(retain_graph=True)
    g1 = m.prior_out.weight.grad.clone()
    m.zero_grad()
    (t.reconstruction - t.kl["kl_w"] - t.kl["kl_x"]).sum().backward()
    torch.testing.assert_close(g1, m.prior_out.weight.grad)


# --- recovery on simulated mixtures ---------------------------------------------------
def _recovery(a, k, batch_key, **fit):
    m = scnotes.tl.gmvae(a, n_clusters=k, batch_key=batch_key, progress=False, **fit)
    cl = a.obs["gmvae_cluster"]
    return m, adjusted_rand_score(a.obs["cluster"], cl), adjusted_rand_score(a.obs["batch"], cl)


def test_recovers_clusters_across_batches_small():
    a = simulate_mixture(n_cells=1200, n_genes=100, n_clusters=5, seed=0)
    m, ari, ari_batch = _recovery(a, 5, "batch", max_epochs=20, pretrain_epochs=10, lr=3e-3)
    assert ari >= 0.9
    assert ari_batch < 0.05
    assert {"loss", "elbo", "reconstruction", "kl_w", "kl_x", "kl_z"} <= set(m.history_.columns)


@pytest.mark.slow
@pytest.mark.parametrize("likelihood", ["nb", "poisson"])
def test_recovers_clusters_across_batches(likelihood):
    a = simulate_mixture(n_cells=3000, n_genes=200, n_clusters=6, likelihood=likelihood, seed=1)
    _, ari, ari_batch = _recovery(a, 6, "batch", max_epochs=20, pretrain_epochs=10, lr=3e-3,
                                  likelihood=likelihood)
    assert ari >= 0.9
    assert ari_batch < 0.05
    # Without the covariate the batch must live in x, and the clusters split by it.
    _, ari_nc, ari_batch_nc = _recovery(a, 6, None, max_epochs=20, pretrain_epochs=10, lr=3e-3,
                                        likelihood=likelihood)
    assert ari_batch_nc > ari_batch + 0.1


# --- estimator behaviour ------------------------------------------------------------
def test_outputs_and_shapes(fitted, small_counts):
    x, c = small_counts
    p = fitted.predict_proba(x)
    assert p.shape == (len(x), 3)
    np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-10)
    np.testing.assert_array_equal(fitted.predict(x), p.argmax(1))
    assert fitted.latent(x).shape == (len(x), 4) and fitted.latent_w(x).shape == (len(x), 3)
    mu = fitted.expected_counts(x, covariates=c)
    mod = fitted.module.eval()
    with torch.no_grad():  # s_i μ(E_q[x_i], c_i): the count VAEs' predict
        xt, ct = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(c, dtype=torch.float32)
        by_hand = x.sum(1)[:, None] * torch.exp(mod.decode(mod.encode(xt)[0], ct)).double().numpy()
    np.testing.assert_allclose(mu, by_hand, rtol=1e-5)
    # eval mode: the embedding does not depend on the other cells of the call; the
    # probabilities are seeded, so a second call repeats them exactly
    np.testing.assert_allclose(fitted.latent(x[:9]), fitted.latent(x)[:9], rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(fitted.predict_proba(x), p)
    assert not np.array_equal(fitted.predict_proba(x, seed=1), p)
    assert set(fitted.pretrain_history_.columns) >= {"loss", "reconstruction", "kl_x"}
    assert len(fitted.pretrain_history_) == 2 and len(fitted.history_) == 4
    assert np.all(fitted.history_["kl_z"] >= 0)


def test_sparse_equals_dense(small_counts):
    x, c = small_counts
    kw = dict(covariates=c, max_epochs=2, pretrain_epochs=1, **FAST)
    a = GMVAE(x.shape[1], n_clusters=2, hidden_dim=16, n_covariates=2).fit(x, **kw)
    b = GMVAE(x.shape[1], n_clusters=2, hidden_dim=16, n_covariates=2).fit(sp.csr_matrix(x), **kw)
    pd.testing.assert_frame_equal(a.history_, b.history_)
    np.testing.assert_array_equal(a.predict_proba(x), b.predict_proba(sp.csr_matrix(x)))


def test_same_seed_same_numbers_and_global_rng_untouched(small_counts):
    x, c = small_counts
    kw = dict(covariates=c, max_epochs=3, pretrain_epochs=1, train_size=0.8, **FAST)
    torch.manual_seed(123)
    np.random.seed(123)
    t_state, n_state = torch.get_rng_state(), np.random.get_state()
    a = GMVAE(x.shape[1], n_clusters=3, hidden_dim=16, n_covariates=2, dropout=0.1, seed=7).fit(x, **kw)
    pa = a.predict_proba(x)
    assert torch.equal(torch.get_rng_state(), t_state)
    assert np.array_equal(np.random.get_state()[1], n_state[1])
    b = GMVAE(x.shape[1], n_clusters=3, hidden_dim=16, n_covariates=2, dropout=0.1, seed=7).fit(x, **kw)
    pd.testing.assert_frame_equal(a.history_, b.history_)
    np.testing.assert_array_equal(pa, b.predict_proba(x))
    np.testing.assert_array_equal(a.latent(x), b.latent(x))
    np.testing.assert_array_equal(a.elbo(x, covariates=c), b.elbo(x, covariates=c))
    assert {"validation_elbo", "validation_kl_z"} <= set(a.history_.columns)
    other = GMVAE(x.shape[1], n_clusters=3, hidden_dim=16, n_covariates=2, dropout=0.1, seed=8).fit(x, **kw)
    assert not np.array_equal(pa, other.predict_proba(x))


def test_save_load_roundtrip(fitted, small_counts, tmp_path):
    x, c = small_counts
    fitted.save(tmp_path / "m.pt")
    back = GMVAE.load(tmp_path / "m.pt")
    assert back.n_clusters == 3 and back.w_dim == 3 and back.free_bits == fitted.free_bits
    np.testing.assert_array_equal(back.latent(x), fitted.latent(x))
    np.testing.assert_array_equal(back.predict_proba(x), fitted.predict_proba(x))
    np.testing.assert_array_equal(back.elbo(x, covariates=c), fitted.elbo(x, covariates=c))
    pd.testing.assert_frame_equal(back.history_, fitted.history_)
    with pytest.raises(TypeError):
        NBVAE.load(tmp_path / "m.pt")


# --- AnnData front --------------------------------------------------------------------
def test_tl_gmvae_writes_slots_and_maps_new_data():
    a = simulate_mixture(n_cells=150, n_genes=25, n_clusters=3, seed=4)
    a2, m = scnotes.tl.gmvae(a, n_clusters=4, batch_key="batch", max_epochs=2, pretrain_epochs=1,
                             copy=True, hidden_dim=16)
    assert "X_gmvae" not in a.obsm  # copy=True left the input alone
    assert a2.obsm["X_gmvae"].shape == (a2.n_obs, 10)
    p = a2.obsm["X_gmvae_proba"]
    assert p.shape == (a2.n_obs, 4)
    np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-10)
    cl = a2.obs["gmvae_cluster"]
    assert isinstance(cl.dtype, pd.CategoricalDtype) and list(cl.cat.categories) == ["0", "1", "2", "3"]
    np.testing.assert_array_equal(cl.astype(int).to_numpy(), p.argmax(1))
    assert a2.uns["X_gmvae"]["params"]["n_clusters"] == 4 and a2.uns["X_gmvae"]["cluster_key"] == "gmvae_cluster"
    x, c = scnotes.tl.model_inputs(m, a2[:20].copy())
    np.testing.assert_allclose(m.latent(x, covariates=c), a2.obsm["X_gmvae"][:20], rtol=1e-5, atol=1e-6)


def test_clustering_scores():
    rng = np.random.default_rng(0)
    lab = np.repeat(["a", "b", "c"], 40)
    emb = rng.normal(size=(120, 3)) + 6 * (pd.Categorical(lab).codes[:, None] == np.arange(3))
    a = ad.AnnData(np.zeros((120, 1)), obs=pd.DataFrame({"cell_type": lab, "batch": ["x", "y"] * 60,
                                                         "cl": pd.Categorical(pd.Categorical(lab).codes.astype(str),
                                                                              categories=list("0123"))},
                                                        index=[str(i) for i in range(120)]))
    a.obsm["X_e"] = emb
    s = scnotes.tl.clustering_scores(a, "X_e", "cell_type", batch_key="batch", cluster_key="cl",
                                     resolutions=(0.5, 1.0))
    assert s["kmeans_ari"] == pytest.approx(1.0) and s["cluster_ari"] == pytest.approx(1.0)
    assert s["leiden_nmi"] > 0.9 and s["asw_label"] > 0.8 and s["asw_batch"] > 0.8
    assert 0.5 < s["kbet"] <= 1 and s["ilisi"] > 0.5  # batches assigned at random: mixed
    assert s["n_used"] == 3 and s["max_fraction"] == pytest.approx(1 / 3)  # the empty 4th cluster counted
    with pytest.raises(KeyError, match="X_missing"):
        scnotes.tl.clustering_scores(a, "X_missing", "cell_type")


# --- bad input ------------------------------------------------------------------------
def test_bad_input_raises(small_counts):
    x, c = small_counts
    for k in (0, -2, 2.5, True):
        with pytest.raises(ValueError, match="n_clusters"):
            GMVAE(x.shape[1], n_clusters=k)
    with pytest.raises(ValueError, match="free_bits"):
        GMVAE(x.shape[1], free_bits=-1.0)
    with pytest.raises(ValueError, match="free_bits_mode"):
        GMVAE(x.shape[1], free_bits_mode="epoch")
    with pytest.raises(ValueError, match="conditional_prior"):
        GMVAE(x.shape[1], conditional_prior="mc")
    with pytest.raises(ValueError, match="likelihood"):
        GMVAE(x.shape[1], likelihood="gaussian")
    m = GMVAE(x.shape[1], n_clusters=2, hidden_dim=8)
    with pytest.raises(ValueError, match="non-integer"):
        m.fit(x + 0.5, max_epochs=1, progress=False)
    with pytest.raises(ValueError, match="pretrain_epochs"):
        m.fit(x, max_epochs=1, pretrain_epochs=-1, progress=False)
    with pytest.raises(ValueError, match="n_clusters"):
        GMVAE(x.shape[1], n_clusters=10, hidden_dim=8).fit(x[:5], max_epochs=1, progress=False)
    with pytest.raises(RuntimeError, match="not fitted"):
        m.predict_proba(x)
    a = ad.AnnData(x.astype(np.float32), obs=pd.DataFrame({"donor": ["a", "b"] * (len(x) // 2)},
                                                           index=[str(i) for i in range(len(x))]))
    with pytest.raises(KeyError, match="batch"):
        scnotes.tl.gmvae(a, n_clusters=2, batch_key="batch", max_epochs=1, progress=False)
    with pytest.raises(ValueError, match="n_clusters"):
        scnotes.tl.gmvae(a, n_clusters=0)
    a.X = a.X * 0.5
    with pytest.raises(ValueError, match="non-integer"):
        scnotes.tl.gmvae(a, n_clusters=2, max_epochs=1, progress=False)
