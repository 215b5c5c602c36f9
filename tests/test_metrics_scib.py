"""scnotes.metrics.score_embedding against scib-metrics 0.5.10 (the scverse reference) on one shared input.

Where the definitions match, the values must agree to rounding (scib-metrics runs in JAX
float32); where they differ by definition (LISI's neighbour lists, kBET's per-label
neighbours, the Leiden resolution grid), the test feeds both the same neighbours or
asserts the documented relation (see ``score_embedding``'s docstring).
"""
import numpy as np
import pytest

from scnotes import metrics

sm = pytest.importorskip("scib_metrics")
from scib_metrics.nearest_neighbors import NeighborsResults

SCIB_RESOLUTIONS = [2 * i / 10 for i in range(1, 11)]  # nmi_ari_cluster_labels_leiden's grid


def simulate(shift=0.7, seed=0):
    """Three labels of 100 cells (equal sizes: one JAX compilation for all of them), two
    batches whose share differs by label, batch shifted by ``shift`` within labels; and a
    rare label of two cells from two batches, which scIB's batch ASW must skip."""
    rng = np.random.default_rng(seed)
    lab = np.r_[np.repeat([0, 1, 2], 100), [3, 3]]
    b = np.r_[(rng.random(300) < np.repeat([0.8, 0.5, 0.2], 100)).astype(int), [0, 1]]
    centers = rng.normal(size=(4, 8)) * 2.5
    x = centers[lab] + rng.normal(size=(lab.size, 8)) + shift * b[:, None]
    return x, lab.astype(str), np.array(["b0", "b1"])[b]


def with_self(idx, dist):
    """scib-metrics' neighbour lists start with the cell itself."""
    n = idx.shape[0]
    return NeighborsResults(indices=np.c_[np.arange(n), idx], distances=np.c_[np.zeros(n), dist])


@pytest.fixture(scope="module")
def data():
    x, lab, b = simulate()
    return x, lab, b, metrics.score_embedding(x, lab, b, seed=0)


def test_silhouettes_match(data):
    x, lab, b, s = data
    assert s["asw_label"] == pytest.approx(float(sm.silhouette_label(x, lab)), abs=1e-5)
    assert s["asw_batch"] == pytest.approx(float(sm.silhouette_batch(x, lab, b)), abs=1e-5)
    assert 0.1 < s["asw_batch"] < 0.99  # a case where the rescaling and the skip rule matter


def test_lisi_matches_on_the_same_neighbours(data):
    # scib-metrics drops the cell from its own list: given the cell plus our 90 other
    # cells it sees exactly our neighbourhoods.
    x, lab, b, s = data
    nr = with_self(*metrics.knn_graph(x, n_neighbors=90))
    np.testing.assert_allclose(metrics.lisi(b, x=x), sm.lisi_knn(nr, b, perplexity=30), atol=1e-3)
    assert s["ilisi"] == pytest.approx(float(sm.ilisi_knn(nr, b, perplexity=30)), abs=1e-4)
    assert s["clisi"] == pytest.approx(float(sm.clisi_knn(nr, lab, perplexity=30)), abs=1e-4)
    assert 0.1 < s["ilisi"] < 0.9


def test_kbet_statistic_matches_globally_and_per_label(data):
    x, lab, b, s = data
    n = len(b)
    # Global: the cell and its 24 nearest, Pearson chi-square against the global mix.
    acc = sm.kbet(with_self(*metrics.knn_graph(x, n_neighbors=24)), b)[0]
    ours = metrics.kbet_acceptance(b, x=x, n_neighbors=25, n_sample=None)
    assert ours == pytest.approx(float(acc), abs=1.5 / n)  # float32 p-values may flip a borderline cell
    # Per label, on the neighbours score_embedding uses (exact, within the label): the mean
    # of scib-metrics' kbet over labels of >= 10 cells and two batches.
    per = []
    for c in np.unique(lab):
        sel = lab == c
        if sel.sum() >= 10 and len(np.unique(b[sel])) == 2:
            per.append(float(sm.kbet(with_self(*metrics.knn_graph(x[sel], n_neighbors=24)), b[sel])[0]))
    ours = metrics.kbet_acceptance(b, x=x, labels=lab, n_neighbors=25, n_sample=None)
    assert ours == pytest.approx(np.mean(per), abs=1.5 / n)
    assert s["kbet"] == pytest.approx(ours, abs=0.02)  # score_embedding samples ≤ 1,000 cells per label
    assert s["kbet"] > float(acc) + 0.1  # per label forgives the different compositions


def test_leiden_matches_on_scib_grid_and_ours_is_a_superset(data):
    x, lab, _, s = data
    ref = sm.nmi_ari_cluster_labels_leiden(with_self(*metrics.knn_graph(x, n_neighbors=14)), lab, seed=3)
    ours = metrics.leiden_clustering(lab, x=x, resolutions=SCIB_RESOLUTIONS, seed=3)
    assert ours["nmi"] == pytest.approx(float(ref["nmi"]), abs=1e-9)
    assert ours["ari"] == pytest.approx(float(ref["ari"]), abs=1e-9)
    # The same graph as scanpy's (UMAP connectivities of the 15 nearest, the cell included).
    g = metrics._leiden_graph(x, None, 15, 0).obsp["connectivities"]
    ref_g = with_self(*metrics.knn_graph(x, n_neighbors=14)).knn_graph_connectivities
    assert abs(g - ref_g).max() < 1e-5
    # Our default grid (0.1, …, 2.0) contains scib-metrics' (0.2, …, 2.0): NMI at least as high.
    assert metrics.leiden_clustering(lab, x=x, seed=3)["nmi"] >= ours["nmi"] - 1e-12
    assert s["leiden_nmi"] < 1.0  # the rare label cannot be found: a case that is not trivial


def test_kmeans_agrees_on_separated_labels(data):
    # scib-metrics has its own (JAX) k-means; on separated labels both find them.
    x, lab, _, s = data
    ref = sm.nmi_ari_cluster_labels_kmeans(x, lab)
    assert s["kmeans_ari"] == pytest.approx(float(ref["ari"]), abs=0.05)
    assert s["kmeans_nmi"] == pytest.approx(float(ref["nmi"]), abs=0.05)


@pytest.mark.slow
def test_kbet_per_label_gives_scib_metrics_verdict():
    # scib-metrics' kbet_per_label searches diffusion-map neighbours with its own k0 per
    # label; ours exact Euclidean within the label, k = 25: the verdicts agree.
    for shift, lo, hi in ((0.0, 0.6, 1.0), (6.0, 0.0, 0.1)):
        x, lab, b = simulate(shift=shift, seed=1)
        ref = float(sm.kbet_per_label(with_self(*metrics.knn_graph(x, n_neighbors=24)), b, lab))
        ours = metrics.score_embedding(x, lab, b, skip=("kmeans", "asw_label", "asw_batch"))["kbet"]
        assert lo <= ours <= hi and lo <= ref <= hi
        assert abs(ours - ref) < 0.2
