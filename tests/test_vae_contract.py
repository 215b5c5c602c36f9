"""One contract for the VAE family (issue 24): ``likelihood=`` on the general estimator with
PVAE / NBVAE / ZINBVAE as its presets, ``theta_`` / ``logodds_`` in one place, and one set of
training defaults per model whatever the entry point (``LDVAE().fit()`` and ``tl.ldvae``)."""
import inspect

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import scnotes
from scnotes.vae import GMVAE, LDVAE, NBVAE, PVAE, ZINBVAE, CountVAE

PRESETS = {"poisson": PVAE, "nb": NBVAE, "zinb": ZINBVAE}
SMALL = dict(n_latent=2, hidden_dim=8, seed=2)
FIT = dict(max_epochs=3, batch_size=16, progress=False)


@pytest.fixture(scope="module")
def x():
    rng = np.random.default_rng(0)
    lam = rng.gamma(2.0, 1.0, (60, 1)) * rng.gamma(2.0, 1.0, (1, 9))
    x = rng.poisson(lam + 0.3).astype(np.float64)
    x[:, 0] += 1  # no empty cell
    return x


@pytest.mark.parametrize("likelihood", sorted(PRESETS))
def test_likelihood_argument_equals_its_preset(x, likelihood):
    general = CountVAE(x.shape[1], likelihood=likelihood, **SMALL).fit(x, **FIT)
    preset = PRESETS[likelihood](x.shape[1], **SMALL).fit(x, **FIT)
    pd.testing.assert_frame_equal(general.history_, preset.history_)
    np.testing.assert_array_equal(general.latent(x), preset.latent(x))
    np.testing.assert_array_equal(general.predict(x), preset.predict(x))
    assert general.get_params() == preset.get_params()
    assert general.get_params()["likelihood"] == likelihood == preset.likelihood
    if likelihood != "poisson":
        np.testing.assert_array_equal(general.theta_, preset.theta_)


def test_a_preset_fixes_its_likelihood():
    assert PVAE(5).likelihood == "poisson" and NBVAE(5).likelihood == "nb" and ZINBVAE(5).likelihood == "zinb"
    assert ZINBVAE(5, likelihood="zinb").likelihood == "zinb"
    with pytest.raises(ValueError, match="preset of CountVAE"):
        PVAE(5, likelihood="nb")
    with pytest.raises(ValueError, match="likelihood must be one of"):
        CountVAE(5, likelihood="gaussian")
    assert issubclass(PVAE, CountVAE) and issubclass(LDVAE, CountVAE) and issubclass(GMVAE, CountVAE)
    # The general class shows its likelihood only when it is not the default ("nb").
    assert repr(CountVAE(5)) == "CountVAE(input_dim=5)"
    assert repr(CountVAE(5, likelihood="poisson")) == "CountVAE(input_dim=5, likelihood='poisson')"


@pytest.mark.parametrize("cls,kw", [(CountVAE, {}), (LDVAE, {}), (GMVAE, dict(n_clusters=2))])
def test_theta_and_logodds_exist_exactly_for_their_likelihoods(cls, kw):
    for lik in ("poisson", "nb", "zinb"):
        m = cls(6, likelihood=lik, **kw)
        assert m.likelihood == lik and m.get_params()["likelihood"] == lik
        if lik == "poisson":
            with pytest.raises(AttributeError, match="theta_"):
                m.theta_
            assert "theta_by_gene" not in m.get_params()
        else:
            # θ = exp(log θ) of the module's one parameter, per gene by default.
            np.testing.assert_array_equal(m.theta_, np.exp(m.module.log_inv_disp.detach().numpy()))
            assert m.theta_.shape == (6,)
        if lik == "zinb":
            assert m.logodds_.shape == (6,)
            np.testing.assert_allclose(m.pi_, 1 / (1 + np.exp(-m.logodds_)))
        else:
            with pytest.raises(AttributeError, match="logodds_"):
                m.logodds_
    shared = cls(6, likelihood="nb", theta_by_gene=False, **kw)
    assert shared.theta_.shape == (1,) and shared.get_params()["theta_by_gene"] is False
    older = cls(6, likelihood="nb", disp_by_gene=False, **kw)  # the older name
    assert older.theta_.shape == (1,)


def test_count_vae_with_a_likelihood_saves_and_loads(x, tmp_path):
    m = CountVAE(x.shape[1], likelihood="zinb", theta_by_gene=False, **SMALL).fit(x, **FIT)
    m.save(tmp_path / "m.pt")
    back = CountVAE.load(tmp_path / "m.pt")
    assert type(back) is CountVAE and back.get_params() == m.get_params()
    np.testing.assert_array_equal(back.latent(x), m.latent(x))
    np.testing.assert_array_equal(back.theta_, m.theta_)
    with pytest.raises(TypeError):
        ZINBVAE.load(tmp_path / "m.pt")  # a preset is another class


def test_ldvae_defaults_are_the_estimators_whatever_the_entry_point(x):
    p = inspect.signature(LDVAE.fit).parameters
    defaults = {k: p[k].default for k in ("optimizer", "lr", "batch_size", "train_size", "n_samples", "max_epochs")}
    assert defaults == dict(optimizer="adam", lr=5e-3, batch_size=128, train_size=0.9, n_samples=1, max_epochs=250)
    a = ad.AnnData(sp.csr_matrix(x), obs=pd.DataFrame(index=[f"c{i}" for i in range(len(x))]))
    front = scnotes.tl.ldvae(a, n_latent=2, hidden_dim=8, seed=2, max_epochs=3)
    direct = LDVAE(x.shape[1], **SMALL).fit(x, max_epochs=3, progress=False)
    pd.testing.assert_frame_equal(front.history_, direct.history_)
    np.testing.assert_array_equal(a.obsm["X_ldvae"], direct.latent(x))
    assert len(direct.validation_indices_) == 6  # 90 % of 60 cells trained, the rest validated
    # The old full-batch RMSprop settings give another model: the defaults did change.
    old = LDVAE(x.shape[1], **SMALL).fit(x, max_epochs=3, optimizer="rmsprop", lr=1e-2, batch_size=None,
                                         train_size=1.0, n_samples=10, progress=False)
    assert not np.allclose(old.latent(x), direct.latent(x))
