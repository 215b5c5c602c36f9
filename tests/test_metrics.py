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
