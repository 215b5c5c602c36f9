"""The LDVAE chapter's comparisons (scnotes.tl._ldvae_study) and figures (scnotes.pl._ldvae):
each against a brute-force or closed-form computation, a known truth or the error it raises."""
import anndata
import matplotlib
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

import scnotes

matplotlib.use("Agg")
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def labelled():
    """200 cells of two types with different gene programs, raw counts in layers['counts']."""
    rng = np.random.default_rng(3)
    n, p = 200, 30
    types = np.repeat(["a", "b"], n // 2)
    rates = np.where((types == "a")[:, None], np.r_[np.full(15, 8.0), np.full(15, 1.0)],
                     np.r_[np.full(15, 1.0), np.full(15, 8.0)])
    x = rng.poisson(rates).astype(np.float32)
    a = anndata.AnnData(X=sp.csr_matrix(x), obs=pd.DataFrame({"type": types}, index=[f"c{i}" for i in range(n)]),
                        var=pd.DataFrame(index=[f"g{j}" for j in range(p)]))
    a.layers["counts"] = a.X.copy()
    return a


def test_leiden_scores_are_the_two_protocols(labelled):
    z = np.asarray(labelled.X.todense())[:, :6]
    got = scnotes.tl.leiden_scores(z, labelled.obs["type"], seed=1)
    fixed = scnotes.metrics.leiden_clustering(labelled.obs["type"], x=z, n_neighbors=20, resolutions=(0.8,), seed=1)
    best = scnotes.metrics.leiden_clustering(labelled.obs["type"], x=z, seed=1)
    assert got == {"ARI (res. 0.8)": fixed["ari"], "NMI (res. 0.8)": fixed["nmi"],
                   "ARI (scIB)": best["ari"], "NMI (scIB)": best["nmi"]}
    assert set(scnotes.tl.leiden_scores(z, labelled.obs["type"], resolution=1.5)) >= {"ARI (res. 1.5)"}


SMALL = {"layer": "counts", "n_latent": 2, "max_epochs": 3, "batch_size": 64, "mll_samples": 5, "seed": 2}


def test_ldvae_vs_scvi_scnotes_row_is_the_separate_calls(labelled):
    a = labelled.copy()
    model, vmodel, bdata, table = scnotes.tl.ldvae_vs_scvi(a, a.obs["type"], run_scvi=False, **SMALL)
    assert vmodel is None and bdata is None and list(table.index) == ["scnotes"] and table.index.name == "tool"
    assert list(table.columns) == ["s/epoch", "held-out ELBO", "held-out marginal LL", "ARI (res. 0.8)",
                                   "NMI (res. 0.8)", "ARI (scIB)", "NMI (scIB)"]
    # the same fit and scores by hand (same seed, same numbers)
    b = labelled.copy()
    m = scnotes.tl.ldvae(b, layer="counts", n_latent=2, max_epochs=3, batch_size=64, seed=2)
    np.testing.assert_array_equal(a.obsm["X_ldvae"], b.obsm["X_ldvae"])
    held = scnotes.tl.held_out_scores(m, b, layer="counts", mll_samples=5)
    row = table.loc["scnotes"]
    assert row["held-out ELBO"] == held["elbo"] and row["held-out marginal LL"] == held["marginal_ll"]
    assert row[["ARI (res. 0.8)", "NMI (res. 0.8)", "ARI (scIB)", "NMI (scIB)"]].to_dict() == \
        scnotes.tl.leiden_scores(b.obsm["X_ldvae"], b.obs["type"], seed=2)
    assert row["s/epoch"] > 0 and model.n_epochs_ == 3


def test_ldvae_vs_scvi_matches_the_loadings_of_both_tools(labelled):
    pytest.importorskip("scvi")  # the book extra
    a = labelled.copy()
    model, vmodel, bdata, table = scnotes.tl.ldvae_vs_scvi(a, a.obs["type"], **SMALL)
    assert list(table.index) == ["scnotes", "scvi-tools"] and "X_scvi" in bdata.obsm
    r = scnotes.tl.loading_agreement(model.get_loadings(), vmodel.get_loadings())["|r|"].mean()
    assert (table["mean matched |r|"] == r).all() and 0 <= r <= 1
    assert table.loc["scvi-tools", "ARI (scIB)"] == scnotes.tl.leiden_scores(
        bdata.obsm["X_scvi"], a.obs["type"], seed=2)["ARI (scIB)"]


def test_scvi_training_record():
    h = {"elbo_train": pd.DataFrame({"elbo_train": [5.0, 4.0, 3.5]}),
         "elbo_validation": pd.DataFrame({"elbo_validation": [6.0, 5.0, 4.8]})}
    rec = scnotes.tl.scvi_training_record(h)
    assert rec["epoch"].tolist() == [0, 1, 2]
    assert rec["loss"].tolist() == [5.0, 4.0, 3.5] and rec["validation_loss"].tolist() == [6.0, 5.0, 4.8]
    with pytest.raises(KeyError, match="elbo_validation.*check_val_every_n_epoch"):
        scnotes.tl.scvi_training_record({"elbo_train": h["elbo_train"]})


def test_standardised_label_means_by_brute_force():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(50, 3))
    lab = rng.choice(["x", "y", "w"], 50)
    got = scnotes.tl.standardised_label_means(z, lab, factors=["Z_0", "Z_1", "Z_2"])
    assert list(got.index) == ["w", "x", "y"] and list(got.columns) == ["Z_0", "Z_1", "Z_2"]
    for g in got.index:
        for j in range(3):
            want = (z[lab == g, j].mean() - z[:, j].mean()) / z[:, j].std(ddof=1)
            assert got.loc[g, f"Z_{j}"] == pytest.approx(want, rel=1e-12)
    with pytest.raises(ValueError, match="one entry per cell"):
        scnotes.tl.standardised_label_means(z, lab[:-1])


def test_marker_factors_pick_the_largest_departure_and_its_side():
    standardised = pd.DataFrame({"Z_0": [2.0, -0.5], "Z_1": [-0.1, -3.0]}, index=["B", "NK"])
    top = pd.DataFrame({"factor": ["Z_0", "Z_0", "Z_1", "Z_1", "Z_1"], "direction": ["+", "-", "+", "-", "-"],
                        "gene": ["CD79A", "LYZ", "GZMB", "NKG7", "GNLY"]})
    m = scnotes.tl.marker_factors(standardised, top)
    assert m.loc["B"].tolist() == ["Z_0", "+", 2.0, "CD79A"]
    assert m.loc["NK"].tolist() == ["Z_1", "-", -3.0, "NKG7, GNLY"]
    with pytest.raises(KeyError, match="direction"):
        scnotes.tl.marker_factors(standardised, top.drop(columns="direction"))


def test_loading_scales_closed_form_and_shift_invariance():
    assert scnotes.tl.loading_scale([-1.0, -2.0, -0.5], [3.0, 1.0, 2.0]) == {
        "median over factors of min loading": -1.0, "median over factors of max loading": 2.0,
        "largest |loading|": 3.0}
    rng = np.random.default_rng(1)
    w = pd.DataFrame(rng.normal(size=(40, 4)), columns=[f"Z_{k}" for k in range(4)])
    shifted = w + np.array([5.0, -3.0, 0.5, 2.0])  # a shift per factor: the softmax cannot see it
    t = scnotes.tl.loading_scales({"w": w, "s": shifted}, extremes={"page": ([-1.0], [1.0])})
    assert list(t.index) == ["page", "w, raw", "w, centred", "s, raw", "s, centred"]
    pd.testing.assert_series_equal(t.loc["w, centred"], t.loc["s, centred"], check_names=False, rtol=1e-12)
    assert t.loc["s, raw", "largest |loading|"] != pytest.approx(t.loc["w, raw", "largest |loading|"])
    assert t.loc["w, raw", "median over factors of max loading"] == np.median(w.max().to_numpy())


def test_label_recovery_by_brute_force():
    rng = np.random.default_rng(2)
    lab = rng.choice(list("abcd"), 300)
    cl = np.where(rng.random(300) < 0.7, lab, rng.choice(list("pqrs"), 300))
    got = scnotes.tl.label_recovery(cl, lab)
    assert got.is_monotonic_increasing
    for g in set(lab):
        hits = 0
        for i in np.flatnonzero(lab == g):
            members = lab[cl == cl[i]]
            values, counts = np.unique(members, return_counts=True)
            hits += values[np.argmax(counts)] == g
        assert got[g] == pytest.approx(hits / (lab == g).sum())
    assert scnotes.tl.label_recovery(lab, lab).eq(1.0).all()  # clusters equal to labels recover everything
    with pytest.raises(ValueError, match="one entry per cell"):
        scnotes.tl.label_recovery(cl[:-1], lab)


# ---------------------------------------------------------------- figures (only draw what they are given)
def test_latent_pairs_draws_the_given_coordinates():
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(0)
    z = rng.normal(size=(60, 5))
    lab = pd.Series(rng.choice(["T", "B", "NK"], 60)).astype("category")
    fig = scnotes.pl.latent_pairs(z, lab, title="t", legend_title="cell type")
    axes = fig.axes
    order = np.random.default_rng(0).permutation(60)
    pairs = [(0, 1), (2, 3), (4, 4)]  # five dimensions: the last against itself
    for ax, (i, j) in zip(axes, pairs):
        np.testing.assert_array_equal(ax.collections[0].get_offsets(), np.c_[z[order, i], z[order, j]])
        assert (ax.get_xlabel(), ax.get_ylabel()) == (f"Z_{i}", f"Z_{j}")
    legend = axes[3].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["B", "NK", "T"] and legend.get_title().get_text() == "cell type"
    assert fig.get_suptitle() == "t"
    plt.close(fig)
    with pytest.raises(ValueError, match="n_latent >= 2"):
        scnotes.pl.latent_pairs(z[:, :1], lab)
    with pytest.raises(ValueError, match="one entry per cell"):
        scnotes.pl.latent_pairs(z, lab[:-1])


def test_training_curves_by_model_draws_each_record():
    import matplotlib.pyplot as plt

    h1 = pd.DataFrame({"epoch": range(6), "loss": np.arange(6.0), "validation_loss": np.arange(6.0) + 1})
    h2 = pd.DataFrame({"epoch": range(6), "loss": np.arange(6.0) * 2, "validation_loss": np.arange(6.0) * 3})
    ax = scnotes.pl.training_curves_by_model({"one": h1, "two": h2}, skip=2, ylabel="−ELBO", title="curves")
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    assert set(lines) == {"one loss", "one validation_loss", "two loss", "two validation_loss"}
    np.testing.assert_array_equal(lines["two validation_loss"].get_ydata(), h2["validation_loss"].to_numpy()[2:])
    np.testing.assert_array_equal(lines["one loss"].get_xdata(), np.arange(2, 6))
    assert ax.get_ylabel() == "−ELBO" and ax.get_xlabel() == "epoch" and ax.get_title() == "curves"
    plt.close(ax.figure)
    with pytest.raises(ValueError, match="empty"):
        scnotes.pl.training_curves_by_model({})
    with pytest.raises(KeyError, match="validation_loss"):
        scnotes.pl.training_curves_by_model({"one": h1.drop(columns="validation_loss")})
