"""One training record in every family (DEVELOPING.md, "training record"): ``history_`` is a
DataFrame with one row per pass over the data, ``epoch`` counted from 0, ``loss`` and one named
column per loss term; ``n_epochs_`` is the passes run (``len(history_)``); the older records
(``trace_``, ``elbo_history_``, ``n_iter_``) are deprecated aliases giving the same numbers; and
models saved before this layout load into it."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from scnotes import glmm
from scnotes.nmf import NBMF, PoissonNMF
from scnotes.vae import GMVAE, LDVAE, PVAE

FIX = Path(__file__).parent / "fixtures"
N_CELLS, N_GENES = 40, 12


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(0).poisson(2.0, size=(N_CELLS, N_GENES)).astype(float)


@pytest.fixture(scope="module")
def glmm_data():
    a = glmm.simulate_nb_glmm(n_donors=3, n_cells=15, n_genes=6, n_cell_types=2, seed=5)
    return glmm.glmm_data_from_adata(a, donor_key="donor", size_factor_key="total_counts",
                                     cell_type_key="cell_type", condition_key="condition")


def _fit(name, x, data):
    torch.set_num_threads(1)
    vae = dict(n_latent=2, hidden_dim=8, seed=1)
    if name == "PVAE":  # the whole data trains, so trace_ is the loss times N_CELLS
        return PVAE(N_GENES, **vae).fit(x, max_epochs=4, train_size=1.0, progress=False)
    if name == "LDVAE":
        return LDVAE(N_GENES, **vae).fit(x, max_epochs=4, batch_size=16, progress=False)
    if name == "GMVAE":
        return GMVAE(N_GENES, n_clusters=2, **vae).fit(x, max_epochs=4, pretrain_epochs=1, progress=False)
    if name == "PoissonNMF":
        return PoissonNMF(2, max_epochs=6, tol=0, seed=1).fit(x)
    if name == "NBMF":
        return NBMF(2, max_epochs=6, tol=0, seed=1).fit(x)
    if name == "PoissonGLMMVEB":
        return glmm.PoissonGLMMVEB(guide="full", expectation="analytic", max_epochs=7, seed=2).fit(data)
    return glmm.NBGLMMVEB(max_epochs=10).fit(data)


FAMILIES = ["PVAE", "LDVAE", "GMVAE", "PoissonNMF", "NBMF", "PoissonGLMMVEB", "NBGLMMVEB"]
VAES = ("PVAE", "LDVAE", "GMVAE")
def _loaded(names):
    return list(names)


@pytest.fixture(scope="module")
def fitted(x, glmm_data):
    return {name: _fit(name, x, glmm_data) for name in FAMILIES}


def _kl_terms(h):
    return [c for c in h.columns if c.startswith("kl") and c != "kl_weight"]


def _check_record(h, n_epochs):
    assert isinstance(h, pd.DataFrame)
    assert len(h) == n_epochs >= 1
    np.testing.assert_array_equal(h["epoch"].to_numpy(), np.arange(n_epochs))  # from 0, no gaps
    assert np.issubdtype(h["epoch"].dtype, np.integer)
    assert "loss" in h and np.all(np.isfinite(h["loss"].to_numpy(float)))


@pytest.mark.parametrize("name", FAMILIES)
def test_history_is_one_row_per_pass_from_epoch_0(fitted, name):
    m = fitted[name]
    _check_record(m.history_, m.n_epochs_)
    h = m.history_
    if "elbo" in h:  # the ELBO's terms are named columns: reconstruction and the kl_* terms
        assert len(_kl_terms(h)) >= 1 and (h[_kl_terms(h)] >= -1e-8).all().all()  # a KL is ≥ 0
        if name != "GMVAE":  # they add up (GMVAE's analytic kl_x does only in expectation)
            kl = h[_kl_terms(h)].sum(axis=1)
            np.testing.assert_allclose(h["elbo"], h["reconstruction"] - kl, rtol=1e-5, atol=1e-6)
    else:  # NMF: the loss is −ℓ per cell, ℓ the recorded log-likelihood
        np.testing.assert_allclose(h["loss"], -h["loglik"] / N_CELLS)
        assert h["loglik"].iloc[-1] == m.loglik_


@pytest.mark.parametrize("name", ["PVAE", "LDVAE", "GMVAE", "PoissonNMF", "NBMF", "PoissonGLMMVEB"])
def test_n_epochs_is_the_asked_length_without_early_stop(fitted, name):
    asked = {"PVAE": 4, "LDVAE": 4, "GMVAE": 4, "PoissonNMF": 6, "NBMF": 6, "PoissonGLMMVEB": 7}[name]
    assert fitted[name].n_epochs_ == asked


def test_nb_glmm_counts_the_passes_of_both_stages(fitted, glmm_data):
    """The NB GLMM's two stages are one record: epoch runs on across them, and n_epochs_ is what
    ran (its Newton steps stop when every gene converged), not max_epochs."""
    h = fitted["NBGLMMVEB"].history_
    assert list(h["stage"].unique()) == ["per gene", "moderated"]
    first = (h["stage"] == "per gene").to_numpy()
    assert first[:first.sum()].all()  # stage 1's rows come first, then the epochs run on
    stopped = glmm.NBGLMMVEB(max_epochs=200, moderate=False, shrink_theta=False, tol=1.0).fit(glmm_data)
    assert (stopped.history_["stage"] == "per gene").all()
    assert stopped.n_epochs_ == len(stopped.history_) < 200


def test_the_older_records_are_deprecated_aliases_of_the_same_numbers(fitted):
    pvae = fitted["PVAE"]
    with pytest.warns(DeprecationWarning, match="trace_"):
        trace = pvae.trace_
    np.testing.assert_allclose(trace, pvae.history_["loss"].to_numpy() * N_CELLS, rtol=1e-12)
    for name in ("PoissonNMF", "NBMF"):
        m = fitted[name]
        with pytest.warns(DeprecationWarning, match="older name of `history_`"):
            tr = m.trace_
        np.testing.assert_array_equal(tr["iter"], m.history_["epoch"] + 1)  # sweeps done
        np.testing.assert_array_equal(tr["loglik"], m.history_["loglik"])
        np.testing.assert_array_equal(tr["time"], m.history_["time"])
        with pytest.warns(DeprecationWarning, match="older name of `n_epochs_`"):
            assert m.n_iter_ == m.n_epochs_
    veb = fitted["PoissonGLMMVEB"]
    with pytest.warns(DeprecationWarning, match="elbo_history_"):
        per_gene = veb.elbo_history_
    assert per_gene.shape == (veb.n_epochs_, len(veb.var_names_))
    np.testing.assert_allclose(per_gene.sum(axis=1), veb.history_["elbo"], rtol=1e-10)


@pytest.mark.parametrize("name", _loaded(FAMILIES))
def test_save_load_keeps_the_record(fitted, name, tmp_path):
    m = fitted[name]
    m.save(tmp_path / "m")
    back = type(m).load(tmp_path / "m")
    pd.testing.assert_frame_equal(back.history_, m.history_)
    assert back.n_epochs_ == m.n_epochs_


@pytest.mark.parametrize("where", ["models", "legacy"])
@pytest.mark.parametrize("name", _loaded(FAMILIES))
def test_models_saved_in_the_older_layout_load_into_this_one(name, where):
    """The committed fixtures were saved with the start as the NMF's row 0 and the NB GLMM's
    epochs restarting at stage 2 (and n_epochs_ = max_epochs): mapped on load, keys unchanged."""
    cls = {"PVAE": PVAE, "LDVAE": LDVAE, "GMVAE": GMVAE, "PoissonNMF": PoissonNMF, "NBMF": NBMF,
           "PoissonGLMMVEB": glmm.PoissonGLMMVEB, "NBGLMMVEB": glmm.NBGLMMVEB}[name]
    ext = ".nmf" if where == "legacy" and name in ("PoissonNMF", "NBMF") else ".pt"
    m = cls.load(FIX / where / f"{name}{ext}")
    _check_record(m.history_, m.n_epochs_)
    if name in ("PoissonNMF", "NBMF"):  # fitted with max_epochs=5, tol > 0 not reached
        assert m.n_epochs_ == 5 and m.loglik_init_ < m.history_["loglik"].iloc[0]
        assert m.history_["loglik"].iloc[-1] == m.loglik_
