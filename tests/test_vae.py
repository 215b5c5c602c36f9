"""Count VAEs: bounds, masks, size factors, seeds, sparse input, minibatches, AnnData front."""
import numpy as np
import pytest
import scipy.sparse as sp
import scipy.stats as st
import torch

import scnotes
from scnotes.simulate import binomial_thin, random_mask, simulate_low_rank
from scnotes.vae import NBVAE, PVAE, ZINBVAE
from scnotes.vae._data import batch_indices

torch.set_num_threads(1)

FAST = dict(progress=False, lr=1e-2, n_samples=2)


@pytest.fixture(scope="module")
def sim():
    s = simulate_low_rank(n_cells=120, n_genes=30, rank=2, gamma_shape=2.0, seed=1)
    keep = s.x.sum(1) > 0
    return s.x[keep].astype(float), s.x_val[keep].astype(float)


def small(cls=PVAE, p=30, **kw):
    kw.setdefault("latent_dim", 3)
    kw.setdefault("hidden_dim", 16)
    return cls(p, **kw)


# --- bounds ------------------------------------------------------------------
@pytest.mark.parametrize("cls", [PVAE, NBVAE, ZINBVAE])
def test_iwae_one_sample_equals_elbo_same_draw(sim, cls):
    x, _ = sim
    m = small(cls).fit(x, max_epochs=5, **FAST)
    iw = m.iwae(x, n_samples=1, seed=7)
    el = m.elbo(x, n_samples=1, analytic_kl=False, seed=7)
    np.testing.assert_allclose(iw, el, rtol=1e-5, atol=1e-3)
    # The analytic-KL ELBO is the expectation of the same one-draw quantity.
    draws = np.mean([m.iwae(x, n_samples=1, seed=k).sum() for k in range(40)])
    analytic = m.elbo(x, n_samples=200).sum()
    assert abs(draws - analytic) < 0.01 * abs(analytic)


def test_iwae_grows_with_samples(sim):
    x, _ = sim
    m = small().fit(x, max_epochs=30, **FAST)
    b = [np.mean([m.iwae(x, n_samples=k, seed=r).mean() for r in range(5)]) for k in (1, 10, 100)]
    assert b[0] < b[1] < b[2]
    # ... and the IWAE bound sits above the ELBO on average.
    assert m.elbo(x, n_samples=50).mean() < b[2]


def test_kl_is_the_correct_gaussian_kl(sim):
    x, _ = sim
    m = small().fit(x, max_epochs=2, **FAST)
    xt = torch.as_tensor(x, dtype=torch.float32)
    m.module.eval()
    with torch.no_grad():
        mean, scale = m.module.encode(xt)
        ours = scnotes.likelihoods.normal_kl(mean, scale).sum(-1)
        ref = torch.distributions.kl_divergence(
            torch.distributions.Normal(mean, scale), torch.distributions.Normal(0.0, 1.0)).sum(-1)
    np.testing.assert_allclose(ours.numpy(), ref.numpy(), rtol=1e-5, atol=1e-5)
    assert scale.min() >= 1e-4  # the floor


# --- masks -------------------------------------------------------------------
@pytest.mark.parametrize("cls", [PVAE, ZINBVAE])
def test_masked_values_do_not_change_the_loss(sim, cls):
    x, _ = sim
    w = random_mask(x.shape, 0.2, seed=0)
    x2 = x.copy()
    x2[w == 0] = np.random.default_rng(0).integers(0, 1000, size=int((w == 0).sum()))
    m1 = small(cls).fit(x, w=w, max_epochs=5, **FAST)
    m2 = small(cls).fit(x2, w=w, max_epochs=5, **FAST)
    np.testing.assert_array_equal(m1.history_["loss"].to_numpy(), m2.history_["loss"].to_numpy())
    np.testing.assert_array_equal(m1.elbo(x, w=w), m2.elbo(x2, w=w))
    np.testing.assert_array_equal(m1.latent(x, w=w), m2.latent(x2, w=w))
    # ... whereas without the mask the change matters.
    assert not np.allclose(m1.elbo(x, w=w), m1.elbo(x2))


def test_masked_entries_denoise_to_prior_mean(sim):
    x, _ = sim
    w = random_mask(x.shape, 0.2, seed=1)
    m = small(NBVAE).fit(x, w=w, max_epochs=5, **FAST)
    d, mu = m.denoise(x, w=w), m.predict(x, w=w)
    np.testing.assert_allclose(d[w == 0], mu[w == 0], rtol=1e-6)
    th = m.theta_
    np.testing.assert_allclose(d[w == 1], ((x + th) / (th / mu + 1))[w == 1], rtol=1e-4)


def test_sparse_mask_equals_dense_mask(sim):
    x, _ = sim
    w = random_mask(x.shape, 0.2, seed=2)
    a = small().fit(x, w=w, max_epochs=3, **FAST)
    b = small().fit(x, w=sp.csr_matrix(w), max_epochs=3, **FAST)
    np.testing.assert_array_equal(a.history_["loss"].to_numpy(), b.history_["loss"].to_numpy())


# --- denoising ---------------------------------------------------------------
def test_denoise_formulas(sim):
    x, _ = sim
    p = small().fit(x, max_epochs=5, **FAST)
    np.testing.assert_allclose(p.denoise(x), p.predict(x))
    z = small(ZINBVAE).fit(x, max_epochs=5, **FAST)
    d, mu, th, pi = z.denoise(x), z.nb_mean(x), z.theta_, z.pi_
    # predict is the model's expected count, (1 − π) s μ, not the NB mean.
    np.testing.assert_allclose(z.predict(x), (1 - pi) * mu, rtol=1e-10)
    nb = (x + th) / (th / mu + 1)
    pos = x > 0
    np.testing.assert_allclose(d[pos], nb[pos], rtol=1e-4)
    p0 = st.nbinom(n=th, p=th / (th + mu)).pmf(0)
    post = (1 - pi) * p0 / (pi + (1 - pi) * p0)  # posterior, not prior, non-dropout probability
    np.testing.assert_allclose(d[~pos], (post * nb)[~pos], rtol=1e-3)


def test_eval_mode_deterministic_and_restored(sim):
    x, _ = sim
    m = small().fit(x, max_epochs=5, **FAST)
    assert m.module.training
    a = m.predict(x)
    assert m.module.training
    np.testing.assert_array_equal(a, m.predict(x))
    # BatchNorm in eval mode: a cell's prediction does not depend on its batch-mates.
    np.testing.assert_allclose(m.predict(x[:7]), a[:7], rtol=1e-5)
    mc = m.predict(x, n_samples=50)
    assert mc.shape == a.shape and np.all(mc > 0)


# --- held-out accuracy -------------------------------------------------------
def test_pvae_beats_rank0_on_thinned_counts():
    # sigma = 1 gives cell-to-cell structure well beyond a rank-0 (size factor × gene mean) fit.
    s = simulate_low_rank(n_cells=300, n_genes=50, rank=3, gamma_shape=5.0, sigma=1.0, seed=3)
    x = s.x[s.x.sum(1) > 0]
    train, test = binomial_thin(x, 0.5, seed=0)
    keep = train.sum(1) > 0
    train, test = train[keep], test[keep]
    m = PVAE(50, latent_dim=3, hidden_dim=32, seed=0).fit(train, max_epochs=200, progress=False)
    pred = m.predict(train)  # E[train]; thinning at p = 0.5 makes it E[test] too
    base = np.outer(train.sum(1), train.sum(0) / train.sum())
    ll_vae = st.poisson(pred).logpmf(test).mean()
    ll_base = st.poisson(base).logpmf(test).mean()
    # Measured: oracle (true rank-3 mean) −2.22, rank 0 −2.53, PVAE ≈ −2.25.
    assert ll_vae > ll_base + 0.15, (ll_vae, ll_base)


# --- inputs ------------------------------------------------------------------
def test_bad_inputs_raise(sim):
    x, _ = sim
    m = small(n_covariates=2)
    c = np.zeros((x.shape[0], 2))
    bad = x.copy(); bad[0, 0] = -1
    with pytest.raises(ValueError, match="negative"):
        m.fit(bad, covariates=c, max_epochs=1, progress=False)
    bad = x.copy(); bad[0, 0] = 0.5
    with pytest.raises(ValueError, match="non-integer"):
        m.fit(bad, covariates=c, max_epochs=1, progress=False)
    bad = x.copy(); bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        m.fit(bad, covariates=c, max_epochs=1, progress=False)
    bad = x.copy(); bad[3] = 0
    with pytest.raises(ValueError, match="size factor"):
        m.fit(bad, covariates=c, max_epochs=1, progress=False)
    with pytest.raises(ValueError, match="mask"):
        m.fit(x, w=np.ones((x.shape[0], 3)), covariates=c, max_epochs=1, progress=False)
    with pytest.raises(ValueError, match="covariates"):
        m.fit(x, covariates=np.zeros((x.shape[0], 3)), max_epochs=1, progress=False)
    with pytest.raises(ValueError, match="covariates"):
        m.fit(x, max_epochs=1, progress=False)
    with pytest.raises(ValueError, match="input_dim"):
        m.fit(x[:, :5], covariates=c, max_epochs=1, progress=False)
    with pytest.raises(ValueError, match="size factors"):
        m.fit(x, s=np.ones(3), covariates=c, max_epochs=1, progress=False)
    with pytest.raises(ValueError, match="objective"):
        m.fit(x, covariates=c, objective="foo", max_epochs=1, progress=False)
    with pytest.raises(RuntimeError, match="not fitted"):
        small().predict(x)
    # An empty cell is fine when size factors are given.
    ok = x.copy(); ok[3] = 0
    small().fit(ok, s=1, max_epochs=1, progress=False)


def test_size_factor_conventions(sim):
    x, _ = sim
    m = small().fit(x, s=1, max_epochs=3, **FAST)
    np.testing.assert_allclose(m.predict(x), m.predict(x, s=np.ones(len(x))))
    tot = small().fit(x, max_epochs=3, **FAST)
    pr = tot.predict(x)
    np.testing.assert_allclose(tot.predict(x, s=2 * x.sum(1)), 2 * pr, rtol=1e-5)
    arr = small().fit(x, s=np.full(len(x), 3.0), max_epochs=3, **FAST)
    with pytest.raises(ValueError, match="pass s"):
        arr.predict(x)
    arr.latent(x)  # the encoder needs no size factors


def test_covariates_enter_the_decoder(sim):
    x, _ = sim
    c = np.eye(2)[np.arange(len(x)) % 2]
    m = small(n_covariates=2).fit(x, covariates=c, max_epochs=20, **FAST)
    a = m.predict(x, covariates=c)
    b = m.predict(x, covariates=c[:, ::-1])
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(m.latent(x, covariates=c), m.latent(x, covariates=c[:, ::-1]))


def test_decoder_without_batch_norm_is_scmodes_decoder_and_round_trips(sim, tmp_path):
    x, _ = sim
    m = small(decoder_batch_norm=False).fit(x, max_epochs=20, **FAST)
    kinds = [type(layer).__name__ for layer in m.module.decoder.net]
    assert kinds == ["Linear", "ReLU", "Linear", "ReLU"]
    assert any(isinstance(layer, torch.nn.BatchNorm1d) for layer in m.module.encoder.net)
    # Without BatchNorm the decoder is the same function in train and eval mode.
    z = torch.randn(5, m.n_latent)
    m.module.decoder.train()
    a = m.module.decoder(z)
    m.module.decoder.eval()
    torch.testing.assert_close(a, m.module.decoder(z))
    m.save(tmp_path / "m")
    back = type(m).load(tmp_path / "m")
    assert not any(isinstance(layer, torch.nn.BatchNorm1d) for layer in back.module.decoder.net)
    np.testing.assert_allclose(back.predict(x), m.predict(x), rtol=1e-6)


def test_decoder_log_mean_stays_finite_where_softplus_underflows():
    from scnotes.vae import MLPDecoder

    dec = MLPDecoder(2, 3, 4)
    with torch.no_grad():
        dec.out.weight.zero_()
        dec.out.bias.copy_(torch.tensor([-200.0, -20.0, 5.0]))
    a = torch.zeros(6, 2, requires_grad=True)
    log_mu = dec(a)
    assert torch.isfinite(log_mu).all()
    # Above the float32 floor log softplus(a) ≈ a for very negative a, and exact otherwise.
    torch.testing.assert_close(log_mu[0, 1], torch.tensor(-20.0), atol=1e-5, rtol=0)
    torch.testing.assert_close(log_mu[0, 2], torch.log(torch.nn.functional.softplus(torch.tensor(5.0))))
    (torch.tensor([1.0, 1.0, 1.0]) * log_mu).sum().backward()
    assert torch.isfinite(dec.out.bias.grad).all()


# --- reproducibility, sparse, minibatches ------------------------------------
def test_same_seed_same_result_and_different_seed_differs(sim):
    x, _ = sim
    a = small(seed=5).fit(x, max_epochs=10, batch_size=32, **FAST)
    b = small(seed=5).fit(x, max_epochs=10, batch_size=32, **FAST)
    c = small(seed=6).fit(x, max_epochs=10, batch_size=32, **FAST)
    np.testing.assert_array_equal(a.history_["loss"].to_numpy(), b.history_["loss"].to_numpy())
    np.testing.assert_array_equal(a.latent(x), b.latent(x))
    assert not np.array_equal(a.history_["loss"].to_numpy(), c.history_["loss"].to_numpy())
    # Refitting restarts from the seeded initialisation.
    np.testing.assert_array_equal(a.fit(x, max_epochs=10, batch_size=32, **FAST).history_["loss"].to_numpy(), b.history_["loss"].to_numpy())
    # The caller's global torch RNG is not consumed by initialisation.
    torch.manual_seed(0); r1 = torch.rand(1)
    torch.manual_seed(0); small(seed=9); r2 = torch.rand(1)
    assert r1 == r2


@pytest.mark.parametrize("batch_size", [None, 32])
def test_sparse_equals_dense(sim, batch_size):
    x, _ = sim
    a = small(NBVAE).fit(x, max_epochs=5, batch_size=batch_size, **FAST)
    b = small(NBVAE).fit(sp.csr_matrix(x), max_epochs=5, batch_size=batch_size, **FAST)
    np.testing.assert_allclose(a.history_["loss"].to_numpy(), b.history_["loss"].to_numpy(), rtol=1e-6)
    np.testing.assert_allclose(a.latent(x), b.latent(sp.csr_matrix(x)), rtol=1e-5, atol=1e-6)


def test_batch_indices_partition():
    rng = np.random.default_rng(0)
    pieces = batch_indices(101, 25, rng)
    assert [len(p) for p in pieces] == [25, 25, 25, 26]  # a lone last cell is merged
    assert np.array_equal(np.sort(np.concatenate(pieces)), np.arange(101))
    assert len(batch_indices(10, None, rng)) == 1


def test_minibatch_training_reduces_loss_at_full_data_scale(sim):
    x, _ = sim
    m = small().fit(x, max_epochs=40, batch_size=25, **FAST)
    assert m.trace_[-1] < 0.7 * m.trace_[0]
    # The trace is the full-data negative ELBO (N/B rescaling), so it matches an
    # eval-mode evaluation of the whole data set to within the optimisation drift.
    final = -m.elbo(x, n_samples=20).sum()
    assert abs(m.trace_[-1] - final) < 0.15 * final


def test_iwae_objective_and_shared_parameters(sim):
    x, _ = sim
    m = small(ZINBVAE, disp_by_gene=False, logodds_by_gene=False).fit(
        x, max_epochs=20, objective="iwae", **FAST)
    assert np.all(np.isfinite(m.history_["loss"].to_numpy())) and m.history_["loss"].to_numpy()[-1] < m.history_["loss"].to_numpy()[0]
    assert m.theta_.shape == (1,) and m.logodds_.shape == (1,)
    assert small(NBVAE).theta_.shape == (30,)


def test_torch_and_float_inputs(sim):
    x, _ = sim
    a = small().fit(torch.tensor(x, dtype=torch.float32), max_epochs=3, **FAST)
    b = small().fit(x.astype(np.int64), max_epochs=3, **FAST)
    np.testing.assert_array_equal(a.history_["loss"].to_numpy(), b.history_["loss"].to_numpy())


# --- AnnData front -----------------------------------------------------------
def test_tl_pvae_writes_obsm(sim):
    import anndata
    import pandas as pd

    x, _ = sim
    ad = anndata.AnnData(sp.csr_matrix(x), obs=pd.DataFrame(
        {"batch": np.where(np.arange(len(x)) % 3 == 0, "a", "b")}, index=[f"c{i}" for i in range(len(x))]))
    m = scnotes.tl.pvae(ad, n_latent=3, batch_key="batch", hidden_dim=16, max_epochs=3)
    assert ad.obsm["X_pvae"].shape == (len(x), 3)
    assert m.n_covariates == 2 and m.covariate_names_ == ["batch=a", "batch=b"]
    m = scnotes.tl.nbvae(ad, n_latent=2, hidden_dim=16, max_epochs=2)
    assert ad.obsm["X_nbvae"].shape == (len(x), 2)
    scnotes.tl.zinbvae(ad, n_latent=2, hidden_dim=16, max_epochs=2)
    assert "X_zinbvae" in ad.obsm
    with pytest.raises(KeyError, match="donor"):
        scnotes.tl.pvae(ad, batch_key="donor", max_epochs=1)
    with pytest.raises(KeyError, match="sf"):
        scnotes.tl.pvae(ad, size_factor_key="sf", max_epochs=1, progress=False)


# --- the training record: LossTerms and the plan (scnotes.vae._train, _plan) -----------
def test_loss_terms_from_elbo_weights_the_kl_and_orders_the_record():
    import dataclasses

    from scnotes.vae._train import LossTerms

    rec, kz, kl_lib = torch.tensor([-10.0, -12.0]), torch.tensor([1.0, 2.0]), torch.tensor([0.5, 0.25])
    t = LossTerms.from_elbo(rec, {"kl_z": kz, "kl_library": kl_lib})
    torch.testing.assert_close(t.extra["elbo"], rec - kz - kl_lib)
    torch.testing.assert_close(t.loss, -(rec - kz - kl_lib))  # weight 1: the loss is −ELBO
    half = LossTerms.from_elbo(rec, {"kl_z": kz, "kl_library": kl_lib}, kl_weight=0.5)
    torch.testing.assert_close(half.loss, -(rec - 0.5 * (kz + kl_lib)))
    torch.testing.assert_close(half.extra["elbo"], t.extra["elbo"])  # the logged bound is not warmed up
    assert list(t.columns()) == ["elbo", "kl_library", "kl_z", "reconstruction", "loss"]
    with pytest.raises(TypeError):  # fields are read by name, not as dictionary keys
        t["kl_z"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.loss = rec


@pytest.mark.parametrize("cls, kw", [(PVAE, {}), (NBVAE, dict(library="latent")), (PVAE, dict(iwae=True))])
def test_history_columns_are_the_training_terms_columns(sim, cls, kw):
    x, _ = sim
    iwae = kw.pop("iwae", False)
    m = small(cls, seed=2, **kw)
    fit = dict(FAST, objective="iwae") if iwae else FAST
    m.fit(x, max_epochs=2, batch_size=32, train_size=0.8, **fit)
    xt = torch.as_tensor(x[:8], dtype=torch.float32)
    t = m.module.training_terms(xt, None, xt.sum(1), None, 1, torch.Generator().manual_seed(0),
                                objective=fit.get("objective", "elbo"))
    cols = list(t.columns())
    assert cols[-1] == "loss" and ("kl_library" in cols) == ("library" in kw) and ("iwae" in cols) == iwae
    assert list(m.history_.columns) == ["epoch", "kl_weight", *cols, *(f"validation_{c}" for c in cols)]


def test_record_is_the_mean_of_the_first_steps_terms(sim):
    # Full batch, one epoch: the record's row is the per-cell mean of the terms the plan
    # got at the seeded initial weights, with the fit's own seeded draws.
    x, _ = sim
    m = small(PVAE, seed=3)
    xt = torch.as_tensor(x, dtype=torch.float32)
    m.module.train()
    with torch.no_grad():
        t = m.module.training_terms(xt, None, xt.sum(1), None, 2, torch.Generator().manual_seed(3))
    row = small(PVAE, seed=3).fit(x, max_epochs=1, batch_size=None, **FAST).history_.iloc[0]
    for name, v in t.columns().items():
        assert row[name] == pytest.approx(float(v.double().mean()), rel=1e-5), name
    assert row["loss"] == pytest.approx(-row["elbo"], rel=1e-12)  # no warm-up: loss = −ELBO


def test_gmvae_pretraining_record_names_the_count_vae_kl_on_x():
    from scnotes.vae._gmvae import GMVAEModule
    from scnotes.vae._module import CountVAEModule

    y = torch.as_tensor(np.random.default_rng(6).poisson(3.0, (12, 20)), dtype=torch.float32)
    m = GMVAEModule(20, 3, 3, w_dim=2, hidden_dim=8)
    m.eval()
    base = CountVAEModule.loss_terms(m, y, None, y.sum(1), None, 1, torch.Generator().manual_seed(0))
    m.pretraining = True
    t = m.training_terms(y, None, y.sum(1), None, 1, torch.Generator().manual_seed(0), kl_weight=0.25)
    assert list(t.kl) == ["kl_x"] and list(base.kl) == ["kl_z"]  # the count VAE's record is left alone
    torch.testing.assert_close(t.kl["kl_x"], base.kl["kl_z"])
    torch.testing.assert_close(t.extra["elbo"], base.extra["elbo"])
    torch.testing.assert_close(t.loss, -(t.reconstruction - 0.25 * t.kl["kl_x"]))


def test_importing_scnotes_vae_does_not_load_lightning():
    import subprocess
    import sys

    code = "import sys, scnotes.vae; print(any(m.split('.')[0] == 'lightning' for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("likelihood", ["poisson", "nb", "zinb"])
def test_log_lik_in_row_pieces_equals_one_call(likelihood):
    """Without autograd the log-likelihood runs in pieces of rows (less peak memory); every
    row's value must be exactly the one-call value, with and without a mask and sampled library."""
    from scnotes.vae._module import _EVAL_ROWS, CountVAEModule

    torch.manual_seed(0)
    n = 2 * _EVAL_ROWS + 37
    m = CountVAEModule(50, 3, likelihood=likelihood)
    x = torch.poisson(torch.full((n, 50), 2.0))
    w = (torch.rand(n, 50) > 0.2).float()
    s = torch.rand(n) + 0.5
    log_mu = torch.randn(2, n, 50) * 0.3
    log_s = torch.randn(2, n) * 0.1
    for args in ((x, None, s, log_mu), (x, w, s, log_mu), (x, w, s, log_mu, log_s)):
        whole = m.log_lik(*args).detach()  # grad on: one call
        with torch.no_grad():
            pieces = m.log_lik(*args)
        assert pieces.shape == whole.shape == (2, n)
        assert torch.equal(pieces, whole)


def test_softmax_decoder_gives_a_profile_and_round_trips(tmp_path):
    """decoder_output="softmax": μ sums to one over genes for every cell and draw (s μ are the
    expected counts with total-count size factors); decoder_layers sets the hidden layers;
    both survive save → load; a bad value is refused by name."""
    rng = np.random.default_rng(0)
    x = rng.poisson(rng.gamma(2.0, 1.0, size=(200, 30))).astype(float)
    x[x.sum(1) == 0, 0] = 1
    m = NBVAE(30, n_latent=2, seed=0, decoder_output="softmax", decoder_layers=1)
    n_linear = sum(isinstance(l, torch.nn.Linear) for l in m.module.decoder.net)
    assert n_linear == 1
    m.fit(x, max_epochs=3, batch_size=64, progress=False)
    with torch.no_grad():
        z = torch.randn(3, 5, 2)
        mu = torch.exp(m.module.decode(z, None))
    np.testing.assert_allclose(mu.sum(-1).numpy(), 1.0, rtol=1e-5)
    path = tmp_path / "softmax.pt"
    m.save(path)
    m2 = NBVAE.load(path)
    assert m2.get_params()["decoder_output"] == "softmax" and m2.get_params()["decoder_layers"] == 1
    np.testing.assert_array_equal(m2.latent(x), m.latent(x))
    np.testing.assert_array_equal(m2.elbo(x), m.elbo(x))
    with pytest.raises(ValueError, match="decoder output"):
        NBVAE(30, decoder_output="exp")
