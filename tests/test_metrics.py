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
    idx, dist = metrics.knn_graph(x, k=30)
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
    knn = metrics.knn_graph(x, k=60)
    assert abs(metrics.kbet_acceptance(b, knn=knn, labels=lab) - per) < 0.1
    from sklearn.neighbors import kneighbors_graph

    g = kneighbors_graph(x, 30, mode="distance")
    assert abs(metrics.kbet_acceptance(b, graph=g, labels=lab) - per) < 0.1
    # Batches apart within each type: rejected under both.
    x2 = x + np.c_[b * 8.0, np.zeros((2000, 4))]
    assert metrics.kbet_acceptance(b, x=x2, labels=lab) < 0.05
