"""Judging a mapping against a de novo fit (scnotes/tl/_map_eval.py): the seeded split, the
shared genes, the held-out ELBO against a direct computation, the label table against counting
by hand, and the program agreement on fits with a known relation."""
import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from types import SimpleNamespace

import scnotes

torch.set_num_threads(1)


def _adata(n=240, p=30, seed=0):
    rng = np.random.default_rng(seed)
    lam = rng.gamma(2.0, 2.0, size=(1, p)) * rng.gamma(5.0, 0.2, size=(n, 1))
    x = rng.poisson(lam).astype(np.float32)
    obs = pd.DataFrame({"batch": pd.Categorical(np.where(np.arange(n) % 2, "b1", "b0"))},
                       index=[f"c{i}" for i in range(n)])
    a = ad.AnnData(sp.csr_matrix(x), obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(p)]))
    a.layers["counts"] = a.X.copy()
    return a


@pytest.fixture(scope="module")
def fitted():
    a = _adata()
    model = scnotes.tl.pvae(a[:180].copy(), n_latent=2, layer="counts", batch_key="batch", max_epochs=3,
                            batch_size=64, hidden_dim=8)
    return model, a[180:].copy()


# --- heldout_split ----------------------------------------------------------------------------
def test_heldout_split_partitions_the_cells_reproducibly_without_touching_global_rng():
    a = _adata(n=2000)
    state = np.random.get_state()[1].copy()
    m, h = scnotes.tl.heldout_split(a, 0.2, seed=3)
    assert np.array_equal(np.random.get_state()[1], state)
    assert set(m.obs_names).isdisjoint(h.obs_names) and m.n_obs + h.n_obs == a.n_obs
    assert list(m.obs_names) == [c for c in a.obs_names if c not in set(h.obs_names)]  # order kept
    assert abs(h.n_obs - 400) <= 5 * np.sqrt(2000 * 0.2 * 0.8)  # Binomial(2000, 0.2)
    m2, h2 = scnotes.tl.heldout_split(a, 0.2, seed=3)
    assert list(h2.obs_names) == list(h.obs_names)
    assert scnotes.tl.heldout_split(a, 0.0)[1].n_obs == 0
    with pytest.raises(ValueError, match="fraction"):
        scnotes.tl.heldout_split(a, 1.0)


# --- shared_genes -----------------------------------------------------------------------------
def test_shared_genes_are_the_models_detected_genes_in_the_models_order():
    a = _adata(n=20, p=6)
    x = a.layers["counts"].toarray()
    x[:, 2] = 0  # g2 measured but never detected
    a.layers["counts"] = sp.csr_matrix(x)
    model = SimpleNamespace(var_names_=np.array(["g5", "gX", "g2", "g0", "g3"], dtype=object))
    expected = [g for g in model.var_names_ if g in set(a.var_names) and x[:, list(a.var_names).index(g)].sum() > 0]
    assert scnotes.tl.shared_genes(model, a, layer="counts") == expected == ["g5", "g0", "g3"]
    with pytest.raises(KeyError, match="umi"):
        scnotes.tl.shared_genes(model, a, layer="umi")
    with pytest.raises(ValueError, match="no gene names"):
        scnotes.tl.shared_genes(SimpleNamespace(var_names_=None), a)


# --- heldout_elbo -----------------------------------------------------------------------------
def test_heldout_elbo_is_the_mean_elbo_of_the_held_out_cells(fitted):
    model, held = fitted
    c = np.eye(2)[held.obs["batch"].cat.codes.to_numpy()]  # one-hot by the registry [b0, b1]
    direct = model.elbo(held.layers["counts"].toarray(), covariates=c, n_samples=4).mean()
    got = scnotes.tl.heldout_elbo(model, held, layer="counts", batch_key="batch", n_samples=4)
    assert got == pytest.approx(direct, rel=1e-6)
    assert got < 0


def test_heldout_elbo_ignores_gene_order_and_cells_without_counts(fitted):
    model, held = fitted
    genes = list(held.var_names[::-1][:20])  # a subset, reversed: the model's order is restored
    base = scnotes.tl.heldout_elbo(model, held, genes, layer="counts", batch_key="batch", n_samples=4)
    shuffled = held[:, np.random.default_rng(1).permutation(held.n_vars)].copy()
    assert scnotes.tl.heldout_elbo(model, shuffled, genes, layer="counts", batch_key="batch",
                                   n_samples=4) == pytest.approx(base, rel=1e-6)
    x = held.layers["counts"].toarray()
    x[:3, held.var_names.get_indexer(genes)] = 0  # three cells lose every scored count
    emptied = held.copy()
    emptied.layers["counts"] = sp.csr_matrix(x)
    kept = scnotes.tl.heldout_elbo(model, emptied[3:].copy(), genes, layer="counts", batch_key="batch", n_samples=4)
    assert scnotes.tl.heldout_elbo(model, emptied, genes, layer="counts", batch_key="batch",
                                   n_samples=4) == pytest.approx(kept, rel=1e-6)
    with pytest.raises(KeyError, match="gZ"):
        scnotes.tl.heldout_elbo(model, held, ["g0", "gZ"], layer="counts", batch_key="batch")
    with pytest.raises(ValueError, match="no held-out cell"):
        scnotes.tl.heldout_elbo(model, emptied[:3].copy(), genes, layer="counts", batch_key="batch")


# --- label_table ------------------------------------------------------------------------------
def test_label_table_counts_cells_as_by_hand_and_keeps_category_order():
    rng = np.random.default_rng(0)
    truth = rng.choice(["T", "B", "NK"], 300)
    called = pd.Series(pd.Categorical(rng.choice(["10", "2", "0"], 300), categories=["0", "2", "10", "7"]))
    tab = scnotes.tl.label_table(truth, called)
    assert list(tab.index) == ["B", "NK", "T"] and list(tab.columns) == ["0", "2", "10"]  # "7" never called
    for t in tab.index:
        for c in tab.columns:
            assert tab.loc[t, c] == np.sum((truth == t) & (called.to_numpy() == c))
    frac = scnotes.tl.label_table(truth, called, normalize=True)
    np.testing.assert_allclose(frac.sum(axis=1), 1.0)
    np.testing.assert_allclose(frac.to_numpy(), tab.to_numpy() / tab.to_numpy().sum(1, keepdims=True))
    with pytest.raises(ValueError, match="labels"):
        scnotes.tl.label_table(truth[:-1], called)


# --- program_agreement ------------------------------------------------------------------------
def _programs(n_genes=80, n_cells=400, k=3, seed=0):
    rng = np.random.default_rng(seed)
    cols = [f"Z_{i}" for i in range(k)]
    genes = [f"g{j}" for j in range(n_genes)]
    return (pd.DataFrame(rng.normal(size=(n_genes, k)), index=genes, columns=cols),
            rng.normal(size=(n_cells, k)), rng)


def test_program_agreement_recovers_a_permuted_sign_flipped_shifted_copy():
    l_a, z_a, _ = _programs()
    perm, signs = np.array([2, 0, 1]), np.array([1.0, -1.0, -1.0])
    # b's factor j is a's factor perm[j], sign-flipped, shifted by a constant over genes
    l_b = pd.DataFrame(l_a.to_numpy()[:, perm] * signs + np.array([5.0, -2.0, 0.5]), index=l_a.index,
                       columns=l_a.columns)
    z_b = z_a[:, perm] * signs
    pairs, summary = scnotes.tl.program_agreement(l_a, l_b, z_a, z_b)
    for j, i in enumerate(perm):
        assert pairs.loc[f"Z_{i}", "de novo program"] == f"Z_{j}"
    np.testing.assert_allclose(pairs["loadings r"], 1.0)
    np.testing.assert_allclose(pairs["activities r"], 1.0)  # oriented by the loadings' sign
    assert summary["Procrustes agreement"] == pytest.approx(1.0)
    assert summary["pairs with activities r >= 0.7"] == 3


def test_program_agreement_procrustes_is_rotation_free_and_near_zero_for_shuffled_cells():
    l_a, z_a, rng = _programs()
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    _, rotated = scnotes.tl.program_agreement(l_a, l_a, z_a, 2.5 * z_a @ q)
    assert rotated["Procrustes agreement"] == pytest.approx(1.0)
    _, shuffled = scnotes.tl.program_agreement(l_a, l_a, z_a, z_a[rng.permutation(len(z_a))])
    assert 0.0 <= shuffled["Procrustes agreement"] <= 0.1  # 3 columns, 400 cells: chance is ~k/n
    # centring over a subset of genes: only those genes' loadings matter
    genes = list(l_a.index[:40])
    l_b = l_a.copy()
    l_b.iloc[40:] = rng.normal(size=(40, 3))
    pairs, _ = scnotes.tl.program_agreement(l_a, l_b, z_a, z_a, genes=genes)
    np.testing.assert_allclose(pairs["loadings r"], 1.0)
    with pytest.raises(ValueError, match="one shape"):
        scnotes.tl.program_agreement(l_a, l_a, z_a, z_a[:10])
