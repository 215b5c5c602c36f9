"""The GMVAE chapter's experiment in the library: epochs sized to the data, the PCA + Leiden
and fixed-resolution Leiden baselines, the sweep over K, its summary and its figure."""
import math

import matplotlib
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from sklearn.metrics import adjusted_rand_score
from test_gmvae import simulate_mixture

import scnotes

matplotlib.use("Agg")
torch.set_num_threads(1)


def _counts_adata(n_cells=300, n_genes=60, n_clusters=3, n_batches=2, seed=0):
    a = simulate_mixture(n_cells=n_cells, n_genes=n_genes, n_clusters=n_clusters, n_batches=n_batches,
                         n_markers=12, fold=6.0, seed=seed)
    a.X = sp.csr_matrix(a.X)
    a.layers["counts"] = a.X.copy()
    return a


# --- epochs sized to the data ------------------------------------------------------------
def test_gmvae_epochs_keep_the_book_and_give_a_small_file_its_steps():
    assert scnotes.tl.gmvae_epochs(2000) == (20, 10)  # the book's subsample: 1,800 training cells
    for n in (150, 300, 600, 1000, 1999):
        ep, pre = scnotes.tl.gmvae_epochs(n)
        steps = math.ceil(math.ceil(0.9 * n) / 128)  # minibatches of 128 per epoch
        assert ep * steps >= 300 and pre * steps >= 150
        assert ep * steps < 300 + steps and pre * steps < 150 + steps or (ep, pre) == (20, 10)
    big = scnotes.tl.gmvae_epochs(100_000)
    assert big[0] < 20 and big[1] < 10  # scvi-tools' rule: fewer passes over many cells
    assert scnotes.tl.gmvae_epochs(600, max_epochs=3, pretrain_epochs=0) == (3, 0)  # given values kept
    with pytest.raises(ValueError, match="n_cells"):
        scnotes.tl.gmvae_epochs(0)
    with pytest.raises(ValueError, match="train_size"):
        scnotes.tl.gmvae_epochs(100, train_size=0)
    for bad in (dict(max_epochs=0), dict(max_epochs=2.5), dict(max_epochs="20"), dict(pretrain_epochs=-1)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            scnotes.tl.gmvae_epochs(100, **bad)


# --- baselines ---------------------------------------------------------------------------
def test_pca_leiden_matches_a_brute_force_pca_and_recovers_clusters():
    a = _counts_adata(n_cells=400, n_batches=1)
    before = a.layers["counts"].copy()
    clusters = scnotes.tl.pca_leiden(a, n_comps=10, resolution=0.3, seed=0)
    assert (a.layers["counts"] != before).nnz == 0  # normalised on a copy
    # PCA of log(1 + 10^4 y / total) by SVD, component by component up to sign
    y = before.toarray().astype(np.float64)
    z = np.log1p(1e4 * y / y.sum(1, keepdims=True))
    u, d, _ = np.linalg.svd(z - z.mean(0), full_matrices=False)
    pcs = u[:, :3] * d[:3]
    got = np.asarray(a.obsm["X_pca"], dtype=np.float64)[:, :3]
    assert a.obsm["X_pca"].shape == (a.n_obs, 10)
    np.testing.assert_allclose(np.abs(got), np.abs(pcs), rtol=1e-3, atol=1e-3)
    assert clusters.equals(a.obs["pca_leiden"])
    assert adjusted_rand_score(a.obs["cluster"], clusters) > 0.9
    again = a.copy()
    scnotes.tl.pca_leiden(again, n_comps=10, resolution=0.3, seed=0)
    assert again.obs["pca_leiden"].equals(a.obs["pca_leiden"])  # seeded


def test_leiden_fixed_more_resolution_more_clusters_and_errors():
    a = _counts_adata(n_cells=300, n_batches=1)
    scnotes.tl.pca_leiden(a, n_comps=10, seed=0)
    n = [scnotes.tl.leiden_fixed(a, "X_pca", key_added=f"r{r}", resolution=r).nunique() for r in (0.1, 3.0)]
    assert n[0] < n[1]
    with pytest.raises(KeyError, match="X_nothing"):
        scnotes.tl.leiden_fixed(a, "X_nothing")
    with pytest.raises(ValueError, match="resolution"):
        scnotes.tl.leiden_fixed(a, "X_pca", resolution=0)
    with pytest.raises(KeyError, match="umi"):
        scnotes.tl.pca_leiden(a, layer="umi")


# --- the sweep ---------------------------------------------------------------------------
SMALL_FIT = dict(max_epochs=2, pretrain_epochs=1, resolutions=[0.5, 1.0])


@pytest.fixture(scope="module")
def swept():
    a = _counts_adata(n_cells=240, n_genes=40, seed=1)
    res, models = scnotes.tl.gmvae_sweep(a, "cluster", "batch", n_clusters_grid=[1, 3], model_seeds=[0, 1],
                                         **SMALL_FIT)
    return a, res, models


def test_gmvae_sweep_rows_scores_and_models(swept):
    a, res, models = swept
    assert list(res["method"]) == ["GMVAE"] * 4 + ["NBVAE + batch"] * 2 + ["PCA"]
    gm = res[res["method"] == "GMVAE"]
    assert list(gm["K"]) == [1, 1, 3, 3] and list(gm["seed"]) == [0, 1, 0, 1]
    assert (gm["max_epochs"] == 2).all() and (gm["pretrain_epochs"] == 1).all()
    assert (gm["n_used"] <= gm["K"]).all() and (gm["n_used"] >= 1).all()
    assert gm["max_fraction"].between(0, 1).all() and (gm.loc[gm["K"] == 1, "max_fraction"] == 1).all()
    for col in ("kmeans_ari", "leiden_nmi", "asw_label", "asw_batch", "ilisi", "kbet"):
        assert res[col].between(-1, 1).all(), col
    assert np.isfinite(res.loc[res["method"] != "PCA", "neg_elbo"]).all()
    assert res.loc[res["method"] == "PCA", "neg_elbo"].isna().all()  # PCA has no likelihood
    assert sorted(models) == [1, 3]
    model, emb, clusters = models[3]
    assert emb.shape == (a.n_obs, 10) and len(clusters) == a.n_obs and model.n_clusters == 3
    assert {"X_gmvae", "X_nbvae", "X_pca"} <= set(a.obsm) and {"gmvae_cluster", "pca_leiden"} <= set(a.obs)


def test_gmvae_sweep_is_reproducible_and_held_out_elbo(swept):
    a, res, models = swept
    b = a.copy()
    res2, _ = scnotes.tl.gmvae_sweep(b, "cluster", "batch", n_clusters_grid=[3], model_seeds=[0], baselines=False,
                                     **SMALL_FIT)
    first = res[(res["method"] == "GMVAE") & (res["K"] == 3) & (res["seed"] == 0)]
    cols = [c for c in res2.columns if c != "seconds"]
    pd.testing.assert_frame_equal(res2[cols].reset_index(drop=True), first[cols].reset_index(drop=True),
                                  check_dtype=False)
    model = models[3][0]
    value = scnotes.tl.held_out_neg_elbo(model, a)
    assert value == pytest.approx(float(first["neg_elbo"].iloc[0])) and value > 0
    held = a[model.validation_indices_]
    by_hand = -model.elbo(held.layers["counts"], covariates=np.eye(2)[held.obs["batch"].cat.codes], n_samples=10)
    assert value == pytest.approx(float(by_hand.mean()))


def test_held_out_elbo_and_sweep_errors():
    a = _counts_adata(n_cells=120, n_genes=30, seed=2)
    model = scnotes.tl.gmvae(a, n_clusters=2, layer="counts", max_epochs=1, pretrain_epochs=0, train_size=1.0)
    with pytest.raises(ValueError, match="held-out"):
        scnotes.tl.held_out_neg_elbo(model, a)
    with pytest.raises(ValueError, match="n_clusters_grid"):
        scnotes.tl.gmvae_sweep(a, "cluster", n_clusters_grid=[])
    with pytest.raises(KeyError, match="cell_type"):
        scnotes.tl.gmvae_sweep(a, "cell_type")


# --- summary and figure ------------------------------------------------------------------
def _table():
    rng = np.random.default_rng(0)
    rows = [dict(method="GMVAE", K=k, seed=s, kmeans_ari=rng.uniform(), neg_elbo=rng.uniform(300, 400),
                 n_used=float(k)) for k in (1, 10, 5) for s in (0, 1, 2)]
    rows += [dict(method="NBVAE + batch", seed=s, kmeans_ari=rng.uniform(), neg_elbo=rng.uniform(300, 400))
             for s in (0, 1, 2)]
    rows.append(dict(method="PCA", seed=0, kmeans_ari=0.4, asw_batch=np.nan))
    return pd.DataFrame(rows)


def test_summary_is_the_mean_and_sd_over_seeds():
    res = _table()
    tab = scnotes.tl.gmvae_sweep_summary(res)
    assert list(tab.index.get_level_values(0)) == ["GMVAE"] * 3 + ["NBVAE + batch", "PCA"]
    assert list(tab.index.get_level_values(1)[:3]) == [1, 10, 5]  # order of the grid
    assert list(dict.fromkeys(tab.columns.get_level_values(0))) == ["kmeans_ari", "n_used", "neg_elbo"]
    for (method, k), row in tab.iterrows():
        sel = res[(res["method"] == method) & ((res["K"] == k) if not pd.isna(k) else res["K"].isna())]
        for col in ("kmeans_ari", "neg_elbo"):
            vals = sel[col].dropna().to_numpy()
            if len(vals) == 0:
                assert np.isnan(row[(col, "mean")])
                continue
            assert row[(col, "mean")] == pytest.approx(vals.mean())
            sd = row[(col, "std")]
            assert np.isnan(sd) if len(vals) == 1 else sd == pytest.approx(vals.std(ddof=1))
    assert scnotes.tl.sweep_mean(res, "kmeans_ari", k=10) == pytest.approx(tab.loc[("GMVAE", 10), ("kmeans_ari", "mean")])
    assert scnotes.tl.sweep_mean(res, "kmeans_ari", "PCA") == 0.4
    assert np.isnan(scnotes.tl.sweep_mean(res, "kmeans_ari", "scVI"))
    with pytest.raises(KeyError, match="ilisi"):
        scnotes.tl.sweep_mean(res, "ilisi")
    with pytest.raises(KeyError, match="method"):
        scnotes.tl.gmvae_sweep_summary(res.drop(columns="method"))


def test_sweep_figure_draws_the_summary():
    tab = scnotes.tl.gmvae_sweep_summary(_table())
    axes = scnotes.pl.gmvae_sweep(tab, title="toy")
    assert len(axes) == 2  # no batch scores: label conservation and held-out fit only
    label_ax, elbo_ax = axes
    assert label_ax.get_title() == "toy:\nlabel conservation" and label_ax.get_xlabel() == "number of components K"
    assert [t.get_text() for t in label_ax.get_xticklabels()] == ["1", "10", "5"]
    assert len(label_ax.lines) >= 2  # NBVAE and PCA means of the k-means ARI as horizontal lines
    hlines = [ln for ln in elbo_ax.lines if len(set(np.asarray(ln.get_ydata(), dtype=float))) == 1
              and len(ln.get_ydata()) == 2]
    nb = tab.xs("NBVAE + batch", level=0)[("neg_elbo", "mean")].iloc[0]
    assert [ln.get_ydata()[0] for ln in hlines] == [pytest.approx(nb)]  # PCA has no ELBO: no line
    assert "lower is better" in elbo_ax.get_ylabel()
    with pytest.raises(KeyError, match="GMVAE"):
        scnotes.pl.gmvae_sweep(tab.drop(index="GMVAE", level=0))
    with pytest.raises(ValueError, match="axes"):
        scnotes.pl.gmvae_sweep(tab, axes=[label_ax])
