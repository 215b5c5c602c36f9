"""VAEs trained from an AnnData opened with backed="r": rows read from disk per minibatch."""
import anndata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import scnotes
from scnotes.simulate import simulate_low_rank
from scnotes.vae import LDVAE, PVAE


@pytest.fixture(scope="module")
def h5ad(tmp_path_factory):
    s = simulate_low_rank(n_cells=300, n_genes=30, rank=2, gamma_shape=2.0, seed=2)
    x = s.x[s.x.sum(1) > 0].astype(np.float32)
    x = x[:, x.sum(0) > 0]
    obs = pd.DataFrame({"batch": pd.Categorical(np.where(np.arange(len(x)) % 2, "a", "b"))},
                       index=[f"c{i}" for i in range(len(x))])
    path = tmp_path_factory.mktemp("backed") / "counts.h5ad"
    anndata.AnnData(sp.csr_matrix(x), obs=obs).write_h5ad(path)
    return path, x


KW = dict(max_epochs=4, batch_size=64, n_samples=2, progress=False, train_size=0.8)


def test_backed_fit_equals_in_memory_fit(h5ad):
    path, x = h5ad
    backed = anndata.read_h5ad(path, backed="r")
    a = PVAE(x.shape[1], n_latent=2, hidden_dim=16, seed=0).fit(sp.csr_matrix(x), **KW)
    b = PVAE(x.shape[1], n_latent=2, hidden_dim=16, seed=0).fit(backed.X, **KW)
    # Same cells in every minibatch; only their order within a minibatch differs.
    np.testing.assert_allclose(a.history_["loss"], b.history_["loss"], rtol=1e-5)
    np.testing.assert_allclose(a.latent(x), b.latent(backed.X), rtol=1e-4, atol=1e-5)
    backed.file.close()


def test_tl_front_on_a_backed_anndata(h5ad):
    path, x = h5ad
    backed = anndata.read_h5ad(path, backed="r")
    m = scnotes.tl.ldvae(backed, n_latent=2, layer=None, batch_key="batch", max_epochs=2, progress=False)
    assert backed.obsm["X_ldvae"].shape == (len(x), 2)
    assert isinstance(m, LDVAE)
    backed.file.close()


def test_backed_checks(h5ad, tmp_path):
    path, x = h5ad
    bad = x.copy(); bad[5, 3] = 0.5
    p = tmp_path / "bad.h5ad"
    anndata.AnnData(sp.csr_matrix(bad)).write_h5ad(p)
    with pytest.raises(ValueError, match="non-integer"):
        PVAE(x.shape[1]).fit(anndata.read_h5ad(p, backed="r").X, max_epochs=1, progress=False)
    p = tmp_path / "csc.h5ad"
    anndata.AnnData(sp.csc_matrix(x)).write_h5ad(p)
    with pytest.raises(ValueError, match="CSR"):
        PVAE(x.shape[1]).fit(anndata.read_h5ad(p, backed="r").X, max_epochs=1, progress=False)
