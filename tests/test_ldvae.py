"""LDVAE and the VAE-family features it brought: folded loadings, recovery of a known
linear-softmax model, marginal likelihood, validation split, early stopping,
normalised expression, save/load, seeds and the AnnData front."""
import anndata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

import scnotes
from scnotes.vae import LDVAE, NBVAE, PVAE, ZINBVAE

torch.set_num_threads(1)


def linear_softmax_nb(n=1500, p=300, k=3, theta=20.0, seed=0, n_batches=1):
    """Counts from ρ_i = softmax(W z_i + b + batch offset), x ~ NB(ℓ_i ρ_i, θ)."""
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 1.0, (p, k))
    b = rng.normal(0, 1.0, p)
    z = rng.normal(size=(n, k))
    batch = rng.integers(0, n_batches, n)
    offs = rng.normal(0, 0.7, (n_batches, p))
    a = z @ w.T + b + offs[batch]
    rho = np.exp(a - a.max(1, keepdims=True))
    rho /= rho.sum(1, keepdims=True)
    lib = rng.lognormal(np.log(2000), 0.3, n)
    mu = lib[:, None] * rho
    x = rng.poisson(rng.gamma(theta, mu / theta))
    return x.astype(float), w, z, batch


@pytest.fixture(scope="module")
def small():
    x, w, z, _ = linear_softmax_nb(n=200, p=40, k=2, seed=1)
    keep = x.sum(0) > 0
    return x[:, keep]


FAST = dict(progress=False, max_epochs=3, batch_size=64, optimizer="adam", lr=5e-3, n_samples=1)


def test_folded_loadings_reproduce_the_pre_softmax_output(small):
    x = small
    m = LDVAE(x.shape[1], n_latent=4, n_covariates=2, n_batches=2, seed=0).fit(
        x, covariates=np.eye(2)[np.arange(len(x)) % 2], **FAST)
    dec = m.module.decoder
    dec.eval()
    load = m.get_loadings().to_numpy()
    assert load.shape == (x.shape[1], 4)
    with torch.no_grad():
        z = torch.randn(50, 4, dtype=torch.float32, generator=torch.Generator().manual_seed(0))
        c = torch.zeros(50, 2); c[:, 0] = 1
        a = dec.bn(dec.linear(torch.cat([z, c], 1))).double().numpy()
        a0 = dec.bn(dec.linear(torch.cat([torch.zeros(1, 4), c[:1]], 1))).double().numpy()
    # Up to a per-gene constant (the value at z = 0), a is loadings · z.
    np.testing.assert_allclose(a - a0, z.double().numpy() @ load.T, atol=1e-5)
    plain = LDVAE(x.shape[1], n_latent=4, decoder_batch_norm=False, seed=0).fit(x, **FAST)
    np.testing.assert_array_equal(plain.get_loadings().to_numpy(),
                                  plain.module.decoder.linear.weight.detach().double().numpy())
    centred = plain.get_loadings(centre=True).to_numpy()
    np.testing.assert_allclose(centred.mean(0), 0, atol=1e-12)


def test_loadings_recover_the_true_column_space():
    x, w, _, _ = linear_softmax_nb(n=1500, p=300, k=3, seed=0)
    m = LDVAE(300, n_latent=3, seed=0).fit(x, progress=False, max_epochs=60, batch_size=128,
                                          optimizer="adam", lr=5e-3, n_samples=1)
    est = m.get_loadings(centre=True).to_numpy()
    cc = scnotes.tl.principal_cosines(est, w).min()
    # Measured 0.99 (60 epochs); a random 3-dimensional subspace gives ≈ 0.1.
    assert cc >= 0.9, cc
    rand = np.random.default_rng(99).normal(size=est.shape)
    assert scnotes.tl.principal_cosines(rand, w).min() < 0.5


@pytest.mark.parametrize("cls,kw", [(LDVAE, {}), (LDVAE, dict(library="latent")), (NBVAE, {})])
def test_marginal_ll_above_elbo_and_not_decreasing(small, cls, kw):
    x = small
    m = cls(x.shape[1], n_latent=3, seed=0, **kw).fit(x, **dict(FAST, max_epochs=10))
    el = m.elbo(x, n_samples=50).mean()
    lls = [np.mean([m.marginal_ll(x[:50], n_samples=s, seed=r).mean() for r in range(3)])
           for s in (1, 10, 200)]
    assert lls[0] <= lls[1] + 0.05 and lls[1] <= lls[2] + 0.05, lls
    assert m.marginal_ll(x, n_samples=200).mean() > el


def test_validation_split_and_early_stopping(small):
    x = small
    m = LDVAE(x.shape[1], n_latent=3, seed=0).fit(
        x, progress=False, max_epochs=400, batch_size=64, optimizer="adam", lr=2e-2, n_samples=1,
        train_size=0.8, early_stopping=True, patience=5)
    h = m.history_
    assert {"loss", "elbo", "reconstruction", "kl_z", "validation_loss", "validation_elbo"} <= set(h.columns)
    assert len(m.train_indices_) == int(np.ceil(0.8 * len(x)))
    assert not set(m.train_indices_) & set(m.validation_indices_)
    assert m.n_epochs_ < 400  # it stopped
    best = int(h["validation_loss"].idxmin())
    assert m.best_epoch_ == best
    # It ran `patience` epochs past the best and then restored the best weights.
    assert m.n_epochs_ - 1 - best == 5
    xv = x[m.validation_indices_]
    val_now = -m.elbo(xv, n_samples=1, seed=0).mean()
    assert abs(val_now - h["validation_loss"].min()) < 0.05 * abs(h["validation_loss"].min())
    with pytest.raises(ValueError, match="validation"):
        LDVAE(x.shape[1], seed=0).fit(x, early_stopping=True, train_size=1.0, **FAST)


def test_validation_loss_is_eval_mode_elbo(small):
    x = small
    m = PVAE(x.shape[1], n_latent=2, hidden_dim=16, seed=0).fit(
        x, progress=False, max_epochs=4, batch_size=None, train_size=0.7, n_samples=2)
    xv = x[m.validation_indices_]
    # Logged at the end of the last epoch with the final weights (no early stopping).
    logged = m.history_["validation_elbo"].iloc[-1]
    assert abs(m.elbo(xv, n_samples=200).mean() - logged) < 0.02 * abs(logged)


@pytest.mark.parametrize("cls", [PVAE, NBVAE, ZINBVAE, LDVAE])
def test_normalized_expression(small, cls):
    x = small
    c = np.eye(2)[np.arange(len(x)) % 2]
    m = cls(x.shape[1], n_latent=2, n_covariates=2, n_batches=2, seed=0).fit(
        x, covariates=c, **dict(FAST, max_epochs=10))
    rho = m.normalized_expression(x, covariates=c, n_samples=5)
    assert rho.shape == x.shape
    np.testing.assert_allclose(rho.sum(1), 1, rtol=1e-6)
    np.testing.assert_allclose(m.normalized_expression(x, covariates=c, n_samples=5, library_size=1e4),
                               1e4 * rho, rtol=1e-6)
    # Setting every cell to batch 0 changes exactly the cells of batch 1.
    r0 = m.normalized_expression(x, covariates=c, batch=0, n_samples=5)
    b0 = c[:, 0] == 1
    np.testing.assert_allclose(r0[b0], rho[b0], rtol=1e-6)
    assert not np.allclose(r0[~b0], rho[~b0])
    with pytest.raises(ValueError, match="out of range"):
        m.normalized_expression(x, covariates=c, batch=5)


def test_same_seed_same_numbers_and_global_rng_untouched(small):
    x = small
    torch.manual_seed(123); np.random.seed(123)
    a = LDVAE(x.shape[1], n_latent=3, seed=4).fit(x, train_size=0.8, **FAST)
    after_torch, after_np = torch.rand(1), np.random.rand()
    torch.manual_seed(123); np.random.seed(123)
    ref_torch, ref_np = torch.rand(1), np.random.rand()
    assert after_torch == ref_torch and after_np == ref_np
    b = LDVAE(x.shape[1], n_latent=3, seed=4).fit(x, train_size=0.8, **FAST)
    pd.testing.assert_frame_equal(a.history_, b.history_)
    np.testing.assert_array_equal(a.latent(x), b.latent(x))
    np.testing.assert_array_equal(a.marginal_ll(x, n_samples=5), b.marginal_ll(x, n_samples=5))
    c = LDVAE(x.shape[1], n_latent=3, seed=5).fit(x, train_size=0.8, **FAST)
    assert not np.array_equal(a.latent(x), c.latent(x))


@pytest.mark.parametrize("kw", [dict(likelihood="nb"), dict(likelihood="zinb", library="latent"),
                                dict(likelihood="poisson", latent_distribution="ln")])
def test_save_load_roundtrip(small, tmp_path, kw):
    x = small
    m = LDVAE(x.shape[1], n_latent=3, seed=0, **kw).fit(x, train_size=0.9, **FAST)
    m.save(tmp_path / "m.pt")
    m2 = LDVAE.load(tmp_path / "m.pt")
    np.testing.assert_array_equal(m.latent(x), m2.latent(x))
    np.testing.assert_array_equal(m.predict(x), m2.predict(x))
    np.testing.assert_array_equal(m.get_loadings(), m2.get_loadings())
    pd.testing.assert_frame_equal(m.history_, m2.history_)
    with pytest.raises(TypeError, match="LDVAE"):
        PVAE.load(tmp_path / "m.pt")


def _adata(x, batches=("a", "b")):
    obs = pd.DataFrame({"batch": pd.Categorical(np.asarray(batches)[np.arange(len(x)) % len(batches)])},
                       index=[f"c{i}" for i in range(len(x))])
    var = pd.DataFrame(index=[f"g{j}" for j in range(x.shape[1])])
    ad = anndata.AnnData(sp.csr_matrix(x), obs=obs, var=var)
    ad.layers["counts"] = ad.X.copy()
    return ad


def test_tl_ldvae_front(small, tmp_path):
    x = small
    ad = _adata(x)
    before = ad.copy()
    ad2, m = scnotes.tl.ldvae(ad, n_latent=3, batch_key="batch", copy=True, max_epochs=3, progress=False)
    assert "X_ldvae" not in ad.obsm and ad.uns == before.uns  # copy=True leaves the input alone
    np.testing.assert_array_equal(ad2.obsm["X_ldvae"], m.latent(x, covariates=np.eye(2)[np.arange(len(x)) % 2]))
    np.testing.assert_array_equal(ad2.varm["ldvae"], m.get_loadings().to_numpy())
    assert list(m.get_loadings().index) == list(ad.var_names)
    assert ad2.uns["X_ldvae"]["params"]["n_latent"] == 3
    assert ad2.uns["X_ldvae"]["params"]["batch_key"] == "batch"
    # Batch names map by name, so a new AnnData with one batch still encodes to the right column.
    r = m.normalized_expression(x, covariates=np.eye(2)[np.arange(len(x)) % 2], batch="b", n_samples=3)
    assert r.shape == x.shape
    new = _adata(x[:10], batches=("b",))
    xs, cs = scnotes.tl.model_inputs(m, new)
    np.testing.assert_array_equal(cs, np.tile([0.0, 1.0], (10, 1)))
    # Save / load keeps the genes and the registry; reordered genes are refused.
    m.save(tmp_path / "ld.pt")
    m2 = LDVAE.load(tmp_path / "ld.pt")
    xs2, cs2 = scnotes.tl.model_inputs(m2, new)
    np.testing.assert_array_equal(m2.latent(xs2, covariates=cs2), m.latent(xs, covariates=cs))
    with pytest.raises(ValueError, match="var_names differ"):
        scnotes.tl.model_inputs(m2, new[:, ::-1])
    unknown = _adata(x[:4], batches=("zz",))
    with pytest.raises(ValueError, match="not fitted with"):
        scnotes.tl.model_inputs(m2, unknown)


def test_tl_ldvae_bad_input(small):
    x = small
    ad = _adata(x)
    with pytest.raises(KeyError, match="donor"):
        scnotes.tl.ldvae(ad, batch_key="donor", max_epochs=1, progress=False)
    with pytest.raises(ValueError, match="n_latent"):
        scnotes.tl.ldvae(ad, n_latent=0, max_epochs=1, progress=False)
    bad = ad.copy(); bad.layers["counts"] = sp.csr_matrix(x + 0.5)
    with pytest.raises(ValueError, match="non-integer"):
        scnotes.tl.ldvae(bad, layer="counts", max_epochs=1, progress=False)
    empty = x.copy(); empty[:, 0] = 0
    with pytest.raises(ValueError, match="gene"):
        scnotes.tl.ldvae(_adata(empty), max_epochs=1, progress=False)
    with pytest.raises(KeyError, match="layer"):
        scnotes.tl.ldvae(ad, layer="raw", max_epochs=1, progress=False)
    with pytest.raises(ValueError, match="likelihood"):
        LDVAE(10, likelihood="gaussian")
