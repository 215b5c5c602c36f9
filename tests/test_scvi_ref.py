"""scvi-tools' LinearSCVI beside an LDVAE (scnotes.tl.linear_scvi) and the held-out scores
of a scnotes VAE (scnotes.tl.held_out_scores): the split is the one given, the numbers are
reproducible, the caller's data and global random state are left alone, and the errors."""
import random
import sys

import anndata as ad
import numpy as np
import pytest
import torch

import scnotes

torch.set_num_threads(1)


def _counts(n=160, p=30, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 2))
    a = z @ rng.normal(size=(2, p)) + rng.normal(size=p)
    rho = np.exp(a) / np.exp(a).sum(1, keepdims=True)
    x = rng.poisson(rho * rng.lognormal(np.log(800), 0.3, n)[:, None]).astype(np.float32)
    adata = ad.AnnData(x.copy(), layers={"counts": x})
    adata.obs["batch"] = np.where(np.arange(n) % 2 == 0, "b0", "b1")
    return adata


@pytest.fixture(scope="module")
def fitted():
    adata = _counts()
    model = scnotes.tl.ldvae(adata, n_latent=2, batch_key="batch", max_epochs=3, batch_size=64, seed=0)
    return adata, model


def test_held_out_scores_are_the_models_scores_on_its_validation_cells(fitted):
    adata, model = fitted
    out = scnotes.tl.held_out_scores(model, adata, layer="counts", mll_samples=20)
    val = model.validation_indices_
    x = adata.layers["counts"][val]
    onehot = np.eye(2)[(adata.obs["batch"].to_numpy()[val] == "b1").astype(int)]
    assert out["elbo"] == pytest.approx(model.elbo(x, covariates=onehot).mean(), rel=1e-12)
    assert out["marginal_ll"] == pytest.approx(model.marginal_ll(x, covariates=onehot, n_samples=20).mean(),
                                               rel=1e-12)
    # the wrong batch for every cell scores differently: the covariates are used
    assert model.elbo(x, covariates=onehot[:, ::-1]).mean() != pytest.approx(out["elbo"], rel=1e-6)


def test_held_out_scores_errors(fitted):
    adata, model = fitted
    with pytest.raises(ValueError, match="mll_samples"):
        scnotes.tl.held_out_scores(model, adata, layer="counts", mll_samples=0)
    with pytest.raises(KeyError, match="layer 'raw'"):
        scnotes.tl.held_out_scores(model, adata, layer="raw")
    whole = scnotes.tl.ldvae(_counts(n=60), n_latent=2, max_epochs=1, train_size=1.0)
    with pytest.raises(ValueError, match="no validation cells"):
        scnotes.tl.held_out_scores(whole, _counts(n=60), layer="counts")


def test_linear_scvi_without_scvi_tools_says_how_to_install(fitted, monkeypatch):
    adata, model = fitted
    monkeypatch.setitem(sys.modules, "scvi", None)  # import scvi now raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'scnotes\[book\]'"):
        scnotes.tl.linear_scvi(adata, model.train_indices_, model.validation_indices_, layer="counts")


def test_linear_scvi_checks_its_input(fitted):
    adata, model = fitted
    tr, va = model.train_indices_, model.validation_indices_
    with pytest.raises(ValueError, match="library"):
        scnotes.tl.linear_scvi(adata, tr, va, layer="counts", library="learned")
    with pytest.raises(ValueError, match="overlap"):
        scnotes.tl.linear_scvi(adata, tr, np.r_[va, tr[:1]], layer="counts")
    with pytest.raises(ValueError, match=r"\[0, 160\)"):
        scnotes.tl.linear_scvi(adata, tr, np.r_[va, 500], layer="counts")
    with pytest.raises(KeyError, match="batch_key"):
        scnotes.tl.linear_scvi(adata, tr, va, layer="counts", batch_key="donor")


def test_linear_scvi_fits_on_the_given_split_reproducibly(fitted):
    pytest.importorskip("scvi")
    adata, model = fitted
    tr, va = model.train_indices_, model.validation_indices_
    before = adata.copy()
    np.random.seed(123)
    torch.manual_seed(123)
    random.seed(123)
    states = (np.random.get_state()[1].copy(), torch.get_rng_state().clone(), random.getstate())
    kw = dict(layer="counts", batch_key="batch", n_latent=2, max_epochs=2, batch_size=64, mll_samples=30, seed=3)
    b, v, scores = scnotes.tl.linear_scvi(adata, tr, va, **kw)
    # the caller's global random state and AnnData are as they were
    np.testing.assert_array_equal(np.random.get_state()[1], states[0])
    assert torch.equal(torch.get_rng_state(), states[1]) and random.getstate() == states[2]
    assert list(adata.uns.keys()) == list(before.uns.keys()) and "X_scvi" not in adata.obsm
    assert b.obsm["X_scvi"].shape == (adata.n_obs, 2)
    # scvi-tools trained on exactly the cells it was given
    np.testing.assert_array_equal(np.sort(v.train_indices), np.sort(tr))
    np.testing.assert_array_equal(np.sort(v.validation_indices), np.sort(va))
    assert set(scores) == {"seconds_per_epoch", "elbo", "marginal_ll"}
    assert np.isfinite(scores["elbo"]) and scores["elbo"] < 0
    # importance sampling tightens the one-sample bound, up to Monte Carlo noise
    assert scores["marginal_ll"] >= scores["elbo"] - 1.0
    _, _, again = scnotes.tl.linear_scvi(adata, tr, va, **kw)
    assert (again["elbo"], again["marginal_ll"]) == (scores["elbo"], scores["marginal_ll"])
    _, _, other = scnotes.tl.linear_scvi(adata, tr, va, **dict(kw, seed=4))
    assert other["marginal_ll"] != scores["marginal_ll"]
