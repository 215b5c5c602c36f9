"""scnotes.tl.fit_many: parallel fits equal the fits of a plain loop, inputs stay unfitted, bad calls are named."""
import numpy as np
import pytest

import scnotes
from scnotes.nmf import PoissonNMF
from scnotes.vae import PVAE


@pytest.fixture(scope="module")
def counts():
    rng = np.random.default_rng(0)
    mu = rng.gamma(1.0, 1.0, (40, 2)) @ rng.gamma(1.0, 1.0, (2, 12))
    return rng.poisson(mu).astype(float)


def _nmfs():
    return [PoissonNMF(n_components=k, method="mu", max_epochs=15, seed=s) for k, s in ((1, 0), (2, 0), (2, 1))]


def test_parallel_fits_equal_a_loop_and_leave_the_inputs_unfitted(counts):
    w = (np.random.default_rng(1).uniform(size=counts.shape) < 0.8).astype(float)
    loop = [m.fit(counts, w=w).predict() for m in _nmfs()]
    unfitted = _nmfs()
    fitted = scnotes.tl.fit_many(unfitted, counts, n_jobs=2, w=w)
    assert len(fitted) == 3
    for got, want in zip(fitted, loop):  # order kept, every number identical
        np.testing.assert_array_equal(got.predict(), want)
    # different seeds give different fits, so the equality above is not vacuous
    assert not np.array_equal(fitted[1].predict(), fitted[2].predict())
    assert all(not hasattr(m, "L_") for m in unfitted)


def test_per_model_fit_arguments_override_shared_ones(counts):
    ones = np.ones(counts.shape[0])
    models = [PVAE(counts.shape[1], n_latent=2, hidden_dim=8, seed=0) for _ in range(2)]
    fitted = scnotes.tl.fit_many(models, counts, fit_kwargs=[{}, {"max_epochs": 3}], n_jobs=1,
                                 s=ones, max_epochs=1, n_samples=1)  # in process: no worker start-up
    assert [len(m.history_) for m in fitted] == [1, 3]
    assert all(m.history_ is None for m in models)
    one = PVAE(counts.shape[1], n_latent=2, hidden_dim=8, seed=0).fit(counts, s=ones, max_epochs=3, n_samples=1)
    np.testing.assert_allclose(fitted[1].predict(counts, s=ones), one.predict(counts, s=ones), rtol=0, atol=0)


def test_in_process_fit_also_leaves_the_input_unfitted(counts):
    (m,) = scnotes.tl.fit_many([PoissonNMF(n_components=1, max_epochs=5)], counts, n_jobs=1)
    assert m.predict().shape == counts.shape
    assert scnotes.tl.fit_many([], counts) == []


@pytest.mark.parametrize("call, match", [
    (lambda x: scnotes.tl.fit_many(_nmfs(), x, fit_kwargs=[{}]), "one dict per model: 3 models, got 1"),
    (lambda x: scnotes.tl.fit_many(_nmfs(), x, n_jobs=0), "n_jobs must be a positive integer"),
    (lambda x: scnotes.tl.fit_many(_nmfs(), x, n_threads=1.5), "n_threads must be a positive integer"),
    (lambda x: scnotes.tl.fit_many([PoissonNMF(), "PVAE"], x), r"models \[1\] have no fit method"),
])
def test_bad_calls_name_the_problem(counts, call, match):
    with pytest.raises(ValueError, match=match):
        call(counts)
