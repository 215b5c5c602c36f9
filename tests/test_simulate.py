import numpy as np
import pytest
import scipy.sparse as sp

from scnotes.simulate import binomial_thin, random_mask, simulate_low_rank


def test_reproduces_seed_draws():
    # The seed page's exact NumPy calls.
    np.random.seed(0)
    l = np.random.lognormal(sigma=.5, size=(500, 3))
    f = np.random.lognormal(sigma=.5, size=(100, 3))
    mu = l @ f.T
    u = np.random.gamma(shape=.1, scale=10, size=(500, 100))
    x = np.random.poisson(lam=mu * u)
    x_val = np.random.poisson(lam=mu * u)
    s = simulate_low_rank(seed=0)
    np.testing.assert_array_equal(s.x, x)
    np.testing.assert_array_equal(s.x_val, x_val)
    np.testing.assert_allclose(s.mu, mu)


def test_gamma_noise_has_mean_one():
    s = simulate_low_rank(n_cells=2000, n_genes=50, gamma_shape=2.0, seed=1)
    ratio = s.lam / s.mu
    assert abs(ratio.mean() - 1) < 0.02
    assert abs(ratio.var() - 0.5) < 0.05  # Var Gamma(a, 1/a) = 1/a


@pytest.mark.parametrize("sparse", [False, True])
def test_binomial_thin_preserves_total_and_halves_mean(sparse):
    rng = np.random.default_rng(0)
    x = rng.poisson(20, size=(300, 40)).astype(float)
    xin = sp.csr_matrix(x) if sparse else x
    a, b = binomial_thin(xin, p=0.3, seed=2)
    if sparse:
        a, b = a.toarray(), b.toarray()
    np.testing.assert_array_equal(a + b, x)
    assert abs(a.mean() / x.mean() - 0.3) < 0.01
    # thinned parts of Poisson counts are uncorrelated (independent Poissons)
    assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < 0.02


def test_thin_is_seeded_and_checks_p():
    x = np.random.default_rng(0).poisson(5, size=(10, 5))
    np.testing.assert_array_equal(binomial_thin(x, seed=3)[0], binomial_thin(x, seed=3)[0])
    with pytest.raises(ValueError, match="p must be"):
        binomial_thin(x, p=1.0)


def test_random_mask_fraction():
    w = random_mask((1000, 100), frac_missing=0.1, seed=0)
    assert set(np.unique(w)) == {0.0, 1.0}
    assert abs(1 - w.mean() - 0.1) < 0.01
