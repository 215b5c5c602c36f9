"""Each VAE argument is validated in one place (review D3): the module checks what it owns,
and the estimators (which build their module in ``__init__``) raise the same error at
construction; the estimator keeps only the checks its module does not make."""
import math
import re

import numpy as np
import pytest
import torch

from scnotes.vae import GMVAE, LDVAE, CountVAEModule
from scnotes.gmvae import GMVAEModule

P, K = 12, 3  # genes, latent dimension


def _raised_in(excinfo, cls) -> bool:
    """Whether the error was raised while ``cls.__init__`` ran (its frame is on the traceback)."""
    return any(e.frame.code.name == "__init__" and type(e.locals.get("self")) is cls
               for e in excinfo.traceback)


def _names(excinfo, name, value):
    msg = str(excinfo.value)
    return name in msg and re.search(re.escape(repr(value)), msg) is not None


# --- LDVAE: latent_distribution and library, checked by CountVAEModule only ----------------
LDVAE_MODULE_ARGS = [("latent_distribution", "gaussian"), ("library", "learned")]


@pytest.mark.parametrize("name, bad", LDVAE_MODULE_ARGS)
def test_ldvae_module_argument_raises_in_module_and_estimator(name, bad):
    with pytest.raises(ValueError) as direct:
        CountVAEModule(P, K, 8, likelihood="nb", **{name: bad})
    with pytest.raises(ValueError) as est:
        LDVAE(P, n_latent=K, hidden_dim=8, **{name: bad})
    assert _names(direct, name, bad) and _names(est, name, bad)
    assert str(direct.value) == str(est.value)  # the one message
    # the estimator's error comes from the module it builds, not from a check of its own
    assert _raised_in(est, CountVAEModule)


@pytest.mark.parametrize("name, bad", [("n_layers", 0), ("n_layers", 1.5), ("dropout", 1.0),
                                       ("dropout", -0.1)])
def test_ldvae_keeps_the_checks_its_module_does_not_make(name, bad):
    with pytest.raises(ValueError) as est:
        LDVAE(P, n_latent=K, hidden_dim=8, **{name: bad})
    assert _names(est, name, bad)
    assert not _raised_in(est, CountVAEModule)  # raised before any module is built


# --- GMVAE: the mixture's arguments, checked by GMVAEModule only ----------------------------
GMVAE_MODULE_ARGS = [
    ("n_clusters", 0), ("n_clusters", -2), ("n_clusters", 2.5), ("n_clusters", True),
    ("w_dim", 0), ("w_dim", 1.5), ("prior_hidden_dim", 0), ("prior_hidden_dim", False),
    ("free_bits", -1.0), ("free_bits", math.nan), ("free_bits", math.inf), ("free_bits", "one"),
    ("free_bits_mode", "epoch"), ("conditional_prior", "mc"),
]


@pytest.mark.parametrize("name, bad", GMVAE_MODULE_ARGS)
def test_gmvae_module_argument_raises_in_module_and_estimator(name, bad):
    kw = {"n_clusters": 2, "w_dim": 2, "hidden_dim": 8, name: bad}
    with pytest.raises(ValueError) as direct:
        GMVAEModule(P, K, **kw)
    with pytest.raises(ValueError) as est:
        GMVAE(P, n_latent=K, **kw)
    assert _names(direct, name, bad) and _names(est, name, bad)
    assert str(direct.value) == str(est.value)
    assert _raised_in(est, GMVAEModule)


@pytest.mark.parametrize("name, bad", [("n_layers", 0), ("dropout", 1.0), ("dropout", -0.5)])
def test_gmvae_keeps_the_checks_its_module_does_not_make(name, bad):
    with pytest.raises(ValueError) as est:
        GMVAE(P, n_clusters=2, n_latent=K, hidden_dim=8, **{name: bad})
    assert _names(est, name, bad)
    assert not _raised_in(est, GMVAEModule)


# --- valid construction ----------------------------------------------------------------------
def _state_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _seeded(seed, build):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def test_gmvae_estimator_builds_the_module_built_directly():
    kw = {"n_clusters": np.int64(3), "w_dim": 2.0, "prior_hidden_dim": np.int32(6), "free_bits": 1,
          "free_bits_mode": "cell", "conditional_prior": "sampled"}
    m = GMVAE(P, n_latent=K, hidden_dim=8, likelihood="zinb", seed=4, **kw)
    direct = _seeded(4, lambda: GMVAEModule(P, K, hidden_dim=8, likelihood="zinb", **kw))
    assert _state_equal(m.module, direct)
    # the estimator keeps the validated values (plain int / float), which save() writes
    for name, value, typ in (("n_clusters", 3, int), ("w_dim", 2, int), ("prior_hidden_dim", 6, int),
                             ("free_bits", 1.0, float)):
        assert getattr(m, name) == value and type(getattr(m, name)) is typ
        assert m._init_kwargs()[name] == value and type(m._init_kwargs()[name]) is typ
    assert GMVAE(P, n_clusters=1, free_bits=0).prior_hidden_dim is None


def test_ldvae_valid_arguments_reach_its_module():
    m = LDVAE(P, n_latent=K, hidden_dim=8, latent_distribution="ln", library="latent",
              n_covariates=2, n_batches=2)
    assert (m.module.latent_distribution, m.module.library, m.module.n_batches) == ("ln", "latent", 2)
    assert hasattr(m.module, "library_encoder")


def test_valid_construction_fits_reproducibly():
    rng = np.random.default_rng(0)
    x = rng.poisson(3.0, (40, P)).astype(float)

    def fit(cls, **kw):
        m = cls(P, n_latent=2, hidden_dim=8, seed=1, **kw).fit(x, max_epochs=2, batch_size=20,
                                                                progress=False)
        return m.latent(x), m.history_.to_numpy(dtype=float)

    for cls, kw in ((LDVAE, {"library": "latent"}), (GMVAE, {"n_clusters": 2, "free_bits": 0.1})):
        (z1, h1), (z2, h2) = fit(cls, **kw), fit(cls, **kw)
        assert np.isfinite(h1).all() and np.array_equal(z1, z2) and np.array_equal(h1, h2)
