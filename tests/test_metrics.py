"""Tests of scnotes.metrics on configurations with known answers."""
import numpy as np
import pytest
import scipy.sparse as sp

from scnotes import metrics


def blobs(n_per=150, n_clusters=3, d=5, sep=20.0, seed=0):
    rng = np.random.default_rng(seed)
    lab = np.repeat(np.arange(n_clusters), n_per)
    centers = rng.normal(size=(n_clusters, d)) * sep
    return centers[lab] + rng.normal(size=(len(lab), d)), lab


def test_lisi_extremes():
    x, lab = blobs()
    rng = np.random.default_rng(1)
    mixed = rng.integers(0, 3, len(lab))     # labels independent of position
    v_mixed = np.median(metrics.lisi(mixed, x=x))
    v_pure = np.median(metrics.lisi(lab, x=x))
    assert 2.6 < v_mixed <= 3.0             # ≈ number of categories
    assert v_pure == pytest.approx(1.0, abs=1e-6)
    assert metrics.ilisi_score(mixed, x=x) > 0.8
    assert metrics.ilisi_score(lab, x=x) < 0.01
    assert metrics.clisi_score(lab, x=x) == pytest.approx(1.0, abs=1e-6)


def test_lisi_closed_form_on_equidistant_points():
    # 31 vertices of a regular simplex: all neighbours equidistant, so the
    # kernel is uniform and LISI = 1 / Σ (label share among the 30 others)².
    x = np.eye(31)
    lab = np.r_[np.zeros(16), np.ones(15)]
    v = metrics.lisi(lab, x=x, perplexity=10)
    np.testing.assert_allclose(v[:16], 2.0)
    np.testing.assert_allclose(v[16:], 1 / ((16 / 30) ** 2 + (14 / 30) ** 2))


def test_kbet_and_silhouette_and_ari():
    x, lab = blobs()
    rng = np.random.default_rng(2)
    mixed = rng.integers(0, 2, len(lab))
    assert metrics.kbet_acceptance(mixed, x=x) > 0.85
    assert metrics.kbet_acceptance(lab, x=x) < 0.05
    assert metrics.silhouette_label(x, lab) > 0.9
    assert metrics.silhouette_label(x, mixed) == pytest.approx(0.5, abs=0.05)
    with pytest.warns(DeprecationWarning, match="leiden_clustering"):
        assert metrics.leiden_ari(lab, x=x) == pytest.approx(1.0)


def test_graph_input_and_missing_labels():
    x, lab = blobs(n_per=80)
    from sklearn.neighbors import kneighbors_graph

    g = kneighbors_graph(x, 30, mode="distance")
    conn = kneighbors_graph(x, 15, mode="connectivity")
    conn = sp.csr_matrix(((conn + conn.T) > 0).astype(float))
    s = metrics.score_integration(lab, labels=lab, graph=g, connectivities=conn)
    assert s["ilisi"] < 0.05 and s["clisi"] > 0.95 and np.isnan(s["silhouette"])
    assert s["ari"] == pytest.approx(1.0)
    s2 = metrics.score_integration(lab, labels=None, x=x)
    assert np.isnan(s2["clisi"]) and np.isnan(s2["ari"]) and 0 <= s2["kbet"] <= 1
    with pytest.raises(ValueError):
        metrics.score_integration(lab)
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        metrics.lisi(lab, x=bad)


def test_lisi_matches_harmonypy_compute_lisi():
    # harmonypy 2.x (compiled) leaves the query cell out and uses 3 × perplexity
    # other cells, as scnotes does; 0.0.10's Python version used one fewer.
    harmonypy = pytest.importorskip("harmonypy")
    if int(harmonypy.__version__.split(".")[0]) < 2:
        pytest.skip("harmonypy >= 2 is the reference")
    import pandas as pd
    from harmonypy.lisi import compute_lisi

    x, lab = blobs(n_per=200, sep=2.0)
    b = np.random.default_rng(3).integers(0, 3, len(lab))
    ref = compute_lisi(x, pd.DataFrame({"b": b.astype(str), "l": lab.astype(str)}), ["b", "l"],
                       perplexity=10)
    np.testing.assert_allclose(metrics.lisi(b, x=x, perplexity=10), ref[:, 0], atol=1e-3)
    np.testing.assert_allclose(metrics.lisi(lab, x=x, perplexity=10), ref[:, 1], atol=1e-3)


def test_lisi_perplexity_is_set_per_cell():
    # One cell that reaches only 5 cells (graph input, -1 padded) must not
    # change the calibration of every other cell.
    x, lab = blobs(n_per=100, sep=2.0)
    b = np.random.default_rng(4).integers(0, 2, len(lab))
    idx, dist = metrics.knn_graph(x, n_neighbors=30)
    full = metrics.lisi(b, knn=(idx, dist), perplexity=10)
    idx2, dist2 = idx.copy(), dist.copy()
    idx2[0, 5:], dist2[0, 5:] = -1, np.inf
    part = metrics.lisi(b, knn=(idx2, dist2), perplexity=10)
    np.testing.assert_allclose(part[1:], full[1:], rtol=1e-9)
    assert 1.0 <= part[0] <= 2.0


def test_kbet_per_label_accepts_mixed_batches_of_different_composition():
    # Two well-separated types; batch 0 is 80 % type A, batch 1 is 80 % type B;
    # within each type the batches are perfectly mixed (same distribution).
    rng = np.random.default_rng(5)
    lab = np.r_[np.zeros(800), np.ones(200), np.zeros(200), np.ones(800)].astype(int)
    b = np.r_[np.zeros(1000), np.ones(1000)].astype(int)
    x = np.array([[0.0] * 5, [30.0] * 5])[lab] + rng.normal(size=(2000, 5))
    glob = metrics.kbet_acceptance(b, x=x)
    per = metrics.kbet_acceptance(b, x=x, labels=lab)
    assert glob < 0.3 and per > 0.85
    # The same from precomputed neighbours and from a distance graph.
    knn = metrics.knn_graph(x, n_neighbors=60)
    assert abs(metrics.kbet_acceptance(b, knn=knn, labels=lab) - per) < 0.1
    from sklearn.neighbors import kneighbors_graph

    g = kneighbors_graph(x, 30, mode="distance")
    assert abs(metrics.kbet_acceptance(b, graph=g, labels=lab) - per) < 0.1
    # Batches apart within each type: rejected under both.
    x2 = x + np.c_[b * 8.0, np.zeros((2000, 4))]
    assert metrics.kbet_acceptance(b, x=x2, labels=lab) < 0.05


def batched_blobs(seed=6):
    """Three types (100, 80, 60 cells) with batch shares that differ by type, batches
    mixed within each type; plus a fixed clustering that merges two types."""
    rng = np.random.default_rng(seed)
    lab = np.repeat([0, 1, 2], [100, 80, 60])
    b = (rng.random(lab.size) < np.array([0.8, 0.5, 0.2])[lab]).astype(int)
    x = np.array([[0.0] * 4, [12.0] * 4, [-12.0, 12.0, -12.0, 12.0]])[lab] + rng.normal(size=(lab.size, 4))
    return x, lab, b, np.minimum(lab, 1)


def test_score_embedding_is_the_individual_scores():
    x, lab, b, cl = batched_blobs()
    s = metrics.score_embedding(x, lab, b, clusters=cl, n_clusters=4, seed=2)
    ld = metrics.leiden_clustering(lab, x=x, seed=2)
    km = metrics.kmeans_ari(lab, x, seed=2)
    knn = metrics.knn_graph(x, n_neighbors=90)
    fixed = metrics.cluster_scores(lab, cl)
    expected = {"leiden_ari": ld["ari"], "leiden_nmi": ld["nmi"], "leiden_resolution": ld["resolution"],
                "leiden_n_clusters": ld["n_clusters"], "kmeans_ari": km["ari"], "kmeans_nmi": km["nmi"],
                "asw_label": metrics.silhouette_label(x, lab), "clisi": metrics.clisi_score(lab, knn=knn),
                "ilisi": metrics.ilisi_score(b, knn=knn), "asw_batch": metrics.silhouette_batch(x, b, lab),
                "kbet": metrics.kbet_acceptance(b, x=x, labels=lab, seed=2),
                "cluster_ari": fixed["ari"], "cluster_nmi": fixed["nmi"], **metrics.occupancy(cl, 4)}
    assert set(s) == set(expected)
    for k, v in expected.items():
        assert s[k] == pytest.approx(v, rel=1e-12), k
    # Known truth: separated types, batches mixed within types, one empty fixed cluster.
    assert s["leiden_ari"] == 1.0 and s["kmeans_ari"] == 1.0 and s["clisi"] > 0.99
    assert s["kbet"] > 0.8 and s["asw_batch"] > 0.9 and s["n_used"] == 2 and s["max_fraction"] == 140 / 240
    # kBET per label forgives the different compositions; against the global mix it does not.
    assert metrics.score_embedding(x, None, b)["kbet"] < s["kbet"] - 0.3


def test_score_embedding_graph_input_missing_parts_and_errors():
    x, lab, b, _ = batched_blobs()
    from sklearn.neighbors import kneighbors_graph

    g = kneighbors_graph(x, 30, mode="distance")
    conn = kneighbors_graph(x, 15, mode="connectivity")
    conn = sp.csr_matrix(((conn + conn.T) > 0).astype(float))
    s = metrics.score_embedding(labels=lab, batch=b, graph=g, connectivities=conn)
    assert s["leiden_ari"] == 1.0 and s["clisi"] > 0.99
    assert all(np.isnan(s[k]) for k in ("kmeans_ari", "asw_label", "asw_batch", "cluster_ari", "n_used"))
    nolab = metrics.score_embedding(x, batch=b, skip=("asw_batch",))
    assert np.isnan(nolab["leiden_ari"]) and np.isnan(nolab["clisi"]) and 0 <= nolab["kbet"] <= 1
    with pytest.raises(ValueError, match="not both"):
        metrics.score_embedding(labels=lab)
    with pytest.raises(ValueError, match=r"shape \(n_cells, d\)"):
        metrics.score_embedding(lab)  # labels passed where the embedding goes
    with pytest.raises(ValueError, match="not both"):
        metrics.score_embedding(x, lab, graph=g)
    with pytest.raises(ValueError, match="connectivities"):
        metrics.score_embedding(labels=lab, graph=g)
    with pytest.raises(ValueError, match="unknown scores"):
        metrics.score_embedding(x, lab, skip=("leiden",))
    with pytest.raises(ValueError, match="labels for"):
        metrics.score_embedding(x, lab[:-1])


def test_the_three_fronts_report_score_embedding():
    import anndata as ad
    import pandas as pd

    import scnotes
    from scnotes import mnn

    x, lab, b, cl = batched_blobs()
    a = ad.AnnData(np.zeros((lab.size, 2), dtype=np.float32))
    a.obs["t"], a.obs["b"] = pd.Categorical(lab.astype(str)), pd.Categorical(b.astype(str))
    a.obs["cl"] = pd.Categorical(cl.astype(str), categories=["0", "1", "2"])
    a.obsm["X_e"] = x
    s = metrics.score_embedding(x, lab.astype(str), b.astype(str), clusters=a.obs["cl"], seed=1)
    cs = scnotes.tl.clustering_scores(a, "X_e", "t", "b", cluster_key="cl", seed=1)
    assert cs == {k: s[k] for k in cs} and "clisi" not in cs and cs["n_used"] == 2
    row = mnn.score_methods(a, "b", "t", embeddings={"e": "X_e"}, seed=1).iloc[0]
    for col, key in (("ilisi", "ilisi"), ("kbet", "kbet"), ("clisi", "clisi"), ("silhouette", "asw_label"),
                     ("ari", "leiden_ari"), ("nmi", "leiden_nmi"), ("resolution", "leiden_resolution")):
        assert row[col] == s[key], col
    si = metrics.score_integration(b.astype(str), labels=lab.astype(str), x=x, seed=1)
    assert si == {"ilisi": s["ilisi"], "kbet": s["kbet"], "clisi": s["clisi"], "silhouette": s["asw_label"],
                  "ari": s["leiden_ari"]}


def test_silhouette_batch_skips_labels_without_a_silhouette():
    # A label whose cells each come from a different batch has no batch silhouette (scIB skips it).
    x, lab, b, _ = batched_blobs()
    x2 = np.r_[x, [[50.0] * 4, [51.0] * 4]]
    lab2, b2 = np.r_[lab, [7, 7]], np.r_[b, [0, 1]]
    assert metrics.silhouette_batch(x2, b2, lab2) == pytest.approx(metrics.silhouette_batch(x, b, lab), rel=1e-12)


def test_loglik_agree_with_scipy_stats():
    from scipy import stats

    rng = np.random.default_rng(7)
    x = rng.poisson(2.0, size=(30, 12))
    mu = rng.gamma(2.0, 1.0, size=(30, 12))
    mu[0, :3], x[0, :3] = 0.0, [0, 0, 0]  # a zero mean at a zero count scores 0
    mask = rng.random(x.shape) < 0.4
    ref = stats.poisson.logpmf(x, mu)
    assert metrics.poisson_loglik(x, mu) == pytest.approx(ref.mean(), rel=1e-12)
    assert metrics.poisson_loglik(x, mu, mask=mask, per="total") == pytest.approx(ref[mask].sum(), rel=1e-12)
    np.testing.assert_allclose(metrics.poisson_loglik(sp.csr_matrix(x), mu, per="cell"), ref.sum(axis=1),
                               rtol=1e-12)
    floored = stats.poisson.logpmf(x, np.maximum(mu, 0.5)).mean()
    assert metrics.poisson_loglik(x, mu, floor=0.5) == pytest.approx(floored, rel=1e-12)
    x1 = x.copy()
    x1[0, 0] = 1
    assert metrics.poisson_loglik(x1, mu) == -np.inf
    theta = rng.gamma(3.0, 1.0, size=12)
    nb = stats.nbinom.logpmf(x, theta, theta / (theta + mu))
    assert metrics.nb_loglik(x, mu, theta, per="total") == pytest.approx(nb.sum(), rel=1e-10)
    for f, args in ((metrics.poisson_loglik, ()), (metrics.nb_loglik, (theta,))):
        with pytest.raises(ValueError, match="non-negative"):
            f(x, -mu, *args)
        with pytest.raises(ValueError, match="shape"):
            f(x, mu[:, :-1], *args)


def test_n_neighbors_is_the_name_and_k_the_older_one():
    """knn_graph / kbet_acceptance take n_neighbors (score_embedding kbet_n_neighbors); the older k /
    kbet_k give the same numbers with a DeprecationWarning attributed to scnotes.metrics (so it
    never shows on an executed page); both given with different values is an error."""
    import warnings

    x, lab, b, _ = batched_blobs()
    idx, dist = metrics.knn_graph(x, n_neighbors=7)
    d = np.linalg.norm(x[:, None] - x[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    np.testing.assert_allclose(dist, np.sort(d, axis=1)[:, :7], rtol=1e-12)  # brute force
    calls = [
        (lambda: metrics.knn_graph(x, k=7)[1], lambda: dist),
        (lambda: metrics.kbet_acceptance(b, x=x, labels=lab, k=12),
         lambda: metrics.kbet_acceptance(b, x=x, labels=lab, n_neighbors=12)),
        (lambda: metrics.score_embedding(x, lab, b, kbet_k=12, skip=("kmeans",), resolutions=(1.0,))["kbet"],
         lambda: metrics.score_embedding(x, lab, b, kbet_n_neighbors=12, skip=("kmeans",),
                                         resolutions=(1.0,))["kbet"]),
    ]
    for old, new in calls:
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            got = old()
        dep = [m for m in w if issubclass(m.category, DeprecationWarning)]
        assert len(dep) == 1 and "renamed" in str(dep[0].message)
        assert dep[0].filename.endswith("metrics.py")
        np.testing.assert_array_equal(got, new())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new names never warn
        metrics.kbet_acceptance(b, x=x, n_neighbors=12)
    with pytest.raises(TypeError, match="n_neighbors=5.*k=7"), pytest.warns(DeprecationWarning):
        metrics.knn_graph(x, n_neighbors=5, k=7)
    with pytest.raises(TypeError, match="kbet_n_neighbors"), pytest.warns(DeprecationWarning):
        metrics.score_embedding(x, lab, b, kbet_n_neighbors=10, kbet_k=12)
