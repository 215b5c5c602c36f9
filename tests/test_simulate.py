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


def test_reproduces_the_seed_imputation_draws_and_mask():
    # The seed page's imputation example: a = 1 / Var(mu), then the mask from the same stream.
    np.random.seed(0)
    l = np.random.lognormal(sigma=.5, size=(500, 3))
    f = np.random.lognormal(sigma=.5, size=(100, 3))
    mu = l @ f.T
    u = np.random.gamma(shape=1 / mu.var(), scale=mu.var(), size=(500, 100))
    x = np.random.poisson(lam=mu * u)
    w = np.random.uniform(size=x.shape) < 0.9
    s = simulate_low_rank(gamma_shape="inverse_var", replicate=False, frac_missing=0.1, seed=0)
    np.testing.assert_array_equal(s.x, x)
    np.testing.assert_array_equal(s.w, w.astype(float))
    assert s.gamma_shape == pytest.approx(1 / mu.var())
    assert simulate_low_rank(seed=0).w is None
    with pytest.raises(ValueError, match="frac_missing"):
        simulate_low_rank(frac_missing=1.0)


def test_split_entries_partitions_the_observed_entries():
    from scnotes.simulate import split_entries

    w = random_mask((400, 50), frac_missing=0.1, seed=1)
    tr, va = split_entries(w, frac=0.2, seed=2)
    np.testing.assert_array_equal(tr + va, w)
    assert np.all(va[w == 0] == 0)
    assert abs(va.sum() / w.sum() - 0.2) < 0.01
    np.testing.assert_array_equal(split_entries(w, 0.2, seed=2)[1], va)
    with pytest.raises(ValueError, match="frac"):
        split_entries(w, frac=0)
    with pytest.raises(ValueError, match="0"):
        split_entries(w * 0.5, frac=0.1)


def test_simulation_leaves_the_global_random_state_alone():
    from scnotes.simulate import split_entries

    np.random.seed(7)
    state = np.random.get_state()
    simulate_low_rank(n_cells=50, n_genes=10, frac_missing=0.1, seed=3)
    binomial_thin(np.ones((5, 5)), seed=1)
    split_entries(random_mask((5, 5), seed=2), 0.5, seed=3)
    after = np.random.get_state()
    assert np.array_equal(state[1], after[1]) and state[2:] == after[2:]
