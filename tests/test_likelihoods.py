"""Count log-pmfs against scipy, limits, and the Gaussian log-density and KLs against
torch.distributions."""
import numpy as np
import pytest
import scipy.stats as st
import torch

from scnotes.likelihoods import (nb_log_pmf, nb_log_pmf_zero, normal_kl, normal_log_pdf, poisson_log_lik_rows,
                                 poisson_log_pmf, zinb_log_pmf, zinb_nonzero_posterior)

D = torch.float64


def t(a):
    return torch.as_tensor(np.asarray(a, dtype=np.float64), dtype=D)


X = np.array([0, 1, 2, 5, 17, 100, 1000])
MU = np.array([0.01, 0.5, 1.0, 3.0, 20.0, 80.0, 1200.0])


def test_poisson_matches_scipy():
    got = poisson_log_pmf(t(X[:, None]), t(MU[None, :])).numpy()
    ref = st.poisson(MU[None, :]).logpmf(X[:, None])
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-10)
    # x = 0 at rate 0 has probability 1.
    assert poisson_log_pmf(t(0.0), t(0.0)).item() == 0.0


def test_poisson_row_sums_match_scipy_over_monte_carlo_draws():
    # S × B × p log rates against B × p counts: the per-row sum, log x! counted once per draw.
    rng = np.random.default_rng(0)
    x = rng.poisson(3.0, (4, 7)).astype(float)
    log_rate = rng.normal(1.0, 1.0, (3, 4, 7))
    got = poisson_log_lik_rows(t(x), t(log_rate)).numpy()
    ref = st.poisson(np.exp(log_rate)).logpmf(x[None]).sum(-1)
    assert got.shape == (3, 4)
    np.testing.assert_allclose(got, ref, rtol=1e-10)


@pytest.mark.parametrize("theta", [1e-2, 0.3, 1.0, 7.5, 100.0, 1e4])
def test_nb_matches_scipy(theta):
    xx, mm = np.meshgrid(X, MU, indexing="ij")
    got = nb_log_pmf(t(xx), t(mm), t(theta)).numpy()
    ref = st.nbinom(n=theta, p=theta / (theta + mm)).logpmf(xx)
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-9)


def test_nb_broadcasts_and_differentiates():
    x = t(X[:, None])
    mu = t(MU[None, :]).requires_grad_(True)
    theta = t([2.0]).requires_grad_(True)
    out = nb_log_pmf(x, mu, theta)
    assert out.shape == (len(X), len(MU))
    out.sum().backward()
    assert torch.all(torch.isfinite(mu.grad)) and torch.isfinite(theta.grad).all()
    # d/dμ log NB = x/μ − (x + θ)/(θ + μ): check the closed form.
    expect = (x / mu - (x + theta) / (theta + mu)).sum(0)
    np.testing.assert_allclose(mu.grad.numpy().ravel(), expect.detach().numpy().ravel(), rtol=1e-9)


@pytest.mark.parametrize("theta", [1e6, 1e8, 1e12, 1e20])
def test_nb_large_theta_approaches_poisson(theta):
    xx, mm = np.meshgrid(X, MU, indexing="ij")
    nb = nb_log_pmf(t(xx), t(mm), t(theta)).numpy()
    po = st.poisson(mm).logpmf(xx)
    assert np.all(np.isfinite(nb))
    # The gap is O((x − μ)²/θ); no cancellation noise on top of it.
    bound = ((xx - mm) ** 2 + xx + mm) / theta + 1e-10
    assert np.all(np.abs(nb - po) <= 2 * bound)


def test_nb_large_theta_continuous_across_switch():
    # The series/lgamma switch sits at θ = 1e3 (x + 1): values on both sides agree
    # with a smooth function of θ (finite differences stay tiny).
    x, mu = t(50.0), t(40.0)
    thetas = t(np.linspace(1e3 * 51 * 0.99, 1e3 * 51 * 1.01, 41))
    v = nb_log_pmf(x, mu, thetas).numpy()
    assert np.max(np.abs(np.diff(v, 2))) < 1e-9


def test_large_counts_accurate():
    x = np.array([1e4, 2.5e4, 9e3])
    mu = np.array([1.1e4, 2.4e4, 1e4])
    for theta in (0.5, 50.0, 1e5):
        got = nb_log_pmf(t(x), t(mu), t(theta)).numpy()
        ref = st.nbinom(n=theta, p=theta / (theta + mu)).logpmf(x)
        assert np.all(np.isfinite(got))
        np.testing.assert_allclose(got, ref, rtol=1e-10)
    # Reference value at θ = 1e8 from a 50-digit mpmath evaluation of the lgamma form.
    got = nb_log_pmf(t(1e4), t(1e4), t(1e8)).item()
    assert abs(got - (-5.524167050026344)) < 1e-6
    np.testing.assert_allclose(poisson_log_pmf(t(x), t(mu)).numpy(), st.poisson(mu).logpmf(x), rtol=1e-12)


def test_zinb_matches_mixture_and_reduces_to_nb():
    xx, mm = np.meshgrid(X, MU, indexing="ij")
    theta, eta = 2.5, 0.7
    pi = 1 / (1 + np.exp(-eta))
    got = zinb_log_pmf(t(xx), t(mm), t(theta), t(eta)).numpy()
    nb = st.nbinom(n=theta, p=theta / (theta + mm))
    ref = np.where(xx == 0, np.logaddexp(np.log(pi), np.log1p(-pi) + nb.logpmf(0)),
                   np.log1p(-pi) + nb.logpmf(xx))
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-12)
    # Zero dropout: η = −inf equals the NB exactly; very negative η to precision.
    base = nb_log_pmf(t(xx), t(mm), t(theta)).numpy()
    np.testing.assert_array_equal(zinb_log_pmf(t(xx), t(mm), t(theta), t(-np.inf)).numpy(), base)
    np.testing.assert_allclose(zinb_log_pmf(t(xx), t(mm), t(theta), t(-50.0)).numpy(), base, atol=1e-12)


def test_zinb_gradient_finite_at_extremes():
    mu = t([0.3, 5.0]).requires_grad_(True)
    eta = t([-30.0, 30.0]).requires_grad_(True)
    out = zinb_log_pmf(t([0.0, 3.0]), mu, t(1.0), eta)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(mu.grad).all() and torch.isfinite(eta.grad).all()


def test_zinb_nonzero_posterior_is_bayes_rule():
    mm = np.array([0.2, 1.0, 10.0])
    theta, eta = 1.5, -0.3
    pi = 1 / (1 + np.exp(-eta))
    p0 = st.nbinom(n=theta, p=theta / (theta + mm)).pmf(0)
    got = zinb_nonzero_posterior(t(np.zeros(3)), t(mm), t(theta), t(eta)).numpy()
    np.testing.assert_allclose(got, (1 - pi) * p0 / (pi + (1 - pi) * p0), rtol=1e-12)
    assert np.all(zinb_nonzero_posterior(t(np.ones(3)), t(mm), t(theta), t(eta)).numpy() == 1)


def test_normal_kl_matches_torch():
    g = torch.Generator().manual_seed(0)
    m = torch.randn(7, 4, generator=g, dtype=D)
    s = torch.rand(7, 4, generator=g, dtype=D) * 3 + 1e-3
    ref = torch.distributions.kl_divergence(torch.distributions.Normal(m, s),
                                            torch.distributions.Normal(torch.zeros_like(m), torch.ones_like(s)))
    np.testing.assert_allclose(normal_kl(m, s).numpy(), ref.numpy(), rtol=1e-12, atol=1e-14)
    assert normal_kl(t(0.0), t(1.0)).item() == 0.0


def _gaussians(seed=0, shape=(7, 4)):
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(shape, generator=g, dtype=D) * 2
    s = torch.rand(shape, generator=g, dtype=D) * 3 + 1e-3
    return m, s


def test_normal_kl_between_two_gaussians_matches_torch():
    (m1, s1), (m2, s2) = _gaussians(1), _gaussians(2)
    N = torch.distributions.Normal
    np.testing.assert_allclose(normal_kl(m1, s1, m2, s2).numpy(),
                               torch.distributions.kl_divergence(N(m1, s1), N(m2, s2)).numpy(), rtol=1e-12, atol=1e-13)
    # KL(q ‖ q) = 0; a prior of N(0, 1) given explicitly equals the default; a missing
    # prior_scale is 1 and a missing prior_mean 0 (broadcast against the K axis).
    np.testing.assert_allclose(normal_kl(m1, s1, m1, s1).numpy(), 0.0, atol=1e-13)
    np.testing.assert_allclose(normal_kl(m1, s1, t(0.0), t(1.0)).numpy(), normal_kl(m1, s1).numpy(), rtol=1e-12)
    np.testing.assert_allclose(normal_kl(m1, s1, prior_mean=m2).numpy(),
                               torch.distributions.kl_divergence(N(m1, s1), N(m2, 1.0)).numpy(), rtol=1e-12)
    np.testing.assert_allclose(normal_kl(m1, s1, prior_scale=s2).numpy(),
                               torch.distributions.kl_divergence(N(m1, s1), N(0.0, s2)).numpy(), rtol=1e-12)
    # Mixture components: q of shape B × 1 × d against K priors B × K × d.
    mk, sk = _gaussians(3, (7, 3, 4))
    np.testing.assert_allclose(normal_kl(m1[:, None], s1[:, None], mk, sk).numpy(),
                               torch.distributions.kl_divergence(N(m1[:, None], s1[:, None]), N(mk, sk)).numpy(),
                               rtol=1e-12, atol=1e-13)


def test_normal_log_pdf_matches_torch_and_integrates_to_one():
    m, s = _gaussians(4)
    x = torch.randn(7, 4, generator=torch.Generator().manual_seed(5), dtype=D) * 3
    np.testing.assert_allclose(normal_log_pdf(x, m, s).numpy(),
                               torch.distributions.Normal(m, s).log_prob(x).numpy(), rtol=1e-12, atol=1e-12)
    grid = torch.linspace(-12, 14, 20001, dtype=D)
    dens = torch.exp(normal_log_pdf(grid, t(1.0), t(1.7)))
    assert torch.trapezoid(dens, grid).item() == pytest.approx(1.0, abs=1e-9)


def test_theta_keyword_and_its_deprecated_older_name():
    xx, mm = np.meshgrid(X, MU, indexing="ij")
    x, mu, th, eta = t(xx), t(mm), t(2.5), t(-1.0)
    ref = nb_log_pmf(x, mu, theta=th)
    torch.testing.assert_close(ref, nb_log_pmf(x, mu, th), rtol=0, atol=0)
    for fn, args, kw in [(nb_log_pmf, (x, mu), {}), (nb_log_pmf_zero, (mu,), {}),
                         (zinb_log_pmf, (x, mu), dict(logodds=eta)),
                         (zinb_nonzero_posterior, (x, mu), dict(logodds=eta))]:
        with pytest.warns(DeprecationWarning, match="theta"):
            old = fn(*args, inv_disp=th, **kw)
        torch.testing.assert_close(old, fn(*args, theta=th, **kw), rtol=0, atol=0)
        with pytest.raises(TypeError, match="theta only"):
            fn(*args, theta=th, inv_disp=th, **kw)


@pytest.mark.parametrize("theta", [3e3, 2e4, 1e5])
@pytest.mark.parametrize("x", [5.0, 20.0, 100.0])
def test_nb_dispersion_gradient_in_float32_matches_mpmath(theta, x):
    # Near-Poisson genes: the float32 gradient in log θ must still carry the signal.
    import mpmath

    mpmath.mp.dps = 50
    mu = 1.1 * x

    def logpmf(lt):
        th = mpmath.exp(lt)
        return (mpmath.loggamma(x + th) - mpmath.loggamma(th) - mpmath.loggamma(x + 1)
                + th * mpmath.log(th / (th + mu)) + x * mpmath.log(mu / (th + mu)))
    ref = float(mpmath.diff(logpmf, mpmath.log(theta)))
    lt = torch.tensor(np.log(theta), dtype=torch.float32, requires_grad=True)
    v = nb_log_pmf(torch.tensor(x), torch.tensor(mu), torch.exp(lt))
    v.backward()
    assert v.dtype == torch.float32
    assert abs(lt.grad.item() - ref) < 1e-3 * abs(ref) + 1e-9, (lt.grad.item(), ref)


def test_log_gamma_ratio_on_nonzeros_equals_the_dense_evaluation():
    """A(x, θ) is evaluated only where x > 0 (A(0, θ) = 0); value and gradient in θ
    must equal the evaluation on every entry, for per-gene and shared θ."""
    from scnotes.likelihoods import _log_gamma_ratio64, _log_gamma_ratio64_dense

    g = torch.Generator().manual_seed(0)
    x = torch.poisson(torch.rand(50, 30, generator=g, dtype=torch.float64) * 2, generator=g)
    assert (x == 0).any() and (x > 0).any()
    for shape in [(30,), (1,)]:
        t1 = (torch.rand(shape, generator=g, dtype=torch.float64) * 1e4 + 0.1).requires_grad_()
        t2 = t1.detach().clone().requires_grad_()
        a1 = _log_gamma_ratio64(x, t1)
        a2 = _log_gamma_ratio64_dense(*torch.broadcast_tensors(x, t2))
        assert a1.shape == x.shape
        torch.testing.assert_close(a1, a2, rtol=0, atol=1e-12)
        (a1 * x.sin()).sum().backward()
        (a2 * x.sin()).sum().backward()
        torch.testing.assert_close(t1.grad, t2.grad, rtol=1e-12, atol=1e-12)
