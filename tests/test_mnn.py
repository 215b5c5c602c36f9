"""Tests of scnotes.mnn: brute-force references, known shifts, invariances, bad input."""
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import scnotes.mnn as mnn


# ---------------------------------------------------------------- references
def ref_correction_vectors(data1, data2, mnn1, mnn2, s2):
    """NumPy transcription of the brute-force REF in batchelor's test
    "Batch vectors are correctly calculated" (full distance matrix, per-pair
    kernel divided by pair count × MNN density, rows normalised)."""
    d2 = ((data2[:, None, :] - data2[None, :, :]) ** 2).sum(-1)
    w = np.exp(-d2 / s2)
    umnn = np.unique(mnn2)
    dens = w[:, umnn].sum(axis=1)                       # per cell of data2
    npair = np.bincount(mnn2, minlength=data2.shape[0])
    with np.errstate(divide="ignore", invalid="ignore"):
        kernel = (w / (npair * dens)[:, None]).T[:, mnn2]  # (n2, n_pairs)
    kernel = kernel / kernel.sum(axis=1, keepdims=True)
    vect = data1[mnn1] - data2[mnn2]
    return kernel @ vect


def ref_shift_variance(data1, data2, cell_vect, sigma):
    """Loop transcription of batchelor's REF for "Variance shift adjustment"."""
    scaling = np.zeros(data2.shape[0])
    for cell in range(data2.shape[0]):
        v = cell_vect[cell]
        l2 = np.sqrt((v ** 2).sum())
        u = v / l2
        coords2 = data2 @ u
        coords1 = data1 @ u
        dd2 = data2[cell] - data2
        dd2 = dd2 - np.outer(dd2 @ u, u)
        w2 = np.exp(-(dd2 ** 2).sum(1) / sigma)
        dd1 = data2[cell] - data1
        dd1 = dd1 - np.outer(dd1 @ u, u)
        w1 = np.exp(-(dd1 ** 2).sum(1) / sigma)
        rank2 = np.empty(len(coords2), int)
        rank2[np.argsort(coords2, kind="stable")] = np.arange(len(coords2))
        prob2 = w2[rank2 <= rank2[cell]].sum() / w2.sum()
        ord1 = np.argsort(coords1, kind="stable")
        ecdf1 = np.cumsum(w1[ord1]) / w1.sum()
        quan1 = coords1[ord1[np.min(np.flatnonzero(ecdf1 >= prob2))]]
        scaling[cell] = (quan1 - coords2[cell]) / l2
    return scaling


def clusters(n, d=30, n_clusters=4, shift=None, seed=0, noise=0.3, centers_seed=42):
    c = np.random.default_rng(centers_seed).normal(size=(n_clusters, d)) * 2.0
    rng = np.random.default_rng(seed)
    lab = rng.integers(0, n_clusters, n)
    x = c[lab] + rng.normal(size=(n, d)) * noise
    if shift is not None:
        x = x + shift
    return x, lab


# ---------------------------------------------------------------- smoothing
@pytest.mark.parametrize("case", ["vanilla", "multi", "many", "sigma"])
def test_correction_vectors_match_batchelor_reference(case):
    rng = np.random.default_rng(10003)
    data1 = rng.normal(scale=0.1, size=(400, 25))
    data2 = rng.normal(scale=0.1, size=(1000, 25))
    mnn1, mnn2, s2 = np.arange(10), np.arange(29, 19, -1), 0.1
    if case == "multi":
        mnn1 = np.r_[10, 11, 12, mnn1]
        mnn2 = np.r_[29, 29, 29, mnn2]
    elif case == "many":
        mnn1, mnn2 = np.arange(200), np.arange(499, 299, -1)
    elif case == "sigma":
        s2 = 0.5
    ref = ref_correction_vectors(data1, data2, mnn1, mnn2, s2)
    got = mnn.compute_correction_vectors(data1, data2, mnn1, mnn2, sigma=s2, chunk_size=128)
    np.testing.assert_allclose(got, ref, atol=1e-6, rtol=0)
    # Sparse input gives the same numbers.
    got_sp = mnn.compute_correction_vectors(sp.csr_matrix(data1), sp.csr_matrix(data2), mnn1, mnn2,
                                            sigma=s2)
    np.testing.assert_allclose(got_sp, ref, atol=1e-6, rtol=0)


def test_truncated_kernel_is_close_to_full_kernel():
    x1, _ = clusters(600, seed=1)
    x2, _ = clusters(600, seed=2, shift=0.5)
    x1n, _ = mnn.cosine_normalize(x1)
    x2n, _ = mnn.cosine_normalize(x2)
    f, s = mnn.find_mutual_nn(x1n, x2n, 20)
    full = mnn.compute_correction_vectors(x1n, x2n, f, s, sigma=0.1)
    trunc = mnn.compute_correction_vectors(x1n, x2n, f, s, sigma=0.1, n_neighbors=100)
    assert np.abs(full - trunc).max() < 1e-3 * np.abs(full).max() + 1e-6


def test_shift_variance_matches_batchelor_reference():
    rng = np.random.default_rng(100032)
    data1 = rng.normal(scale=0.1, size=(400, 25))
    data2 = rng.normal(scale=0.1, size=(300, 25))
    corvect = rng.uniform(size=(300, 25))
    for sigma in (1.0, 0.1):
        ref = ref_shift_variance(data1, data2, corvect, sigma)
        got = mnn.shift_variance_scaling(data1, data2, corvect, sigma=sigma, chunk_size=64)
        np.testing.assert_allclose(got, ref, atol=1e-8)


def test_cosine_normalize_sparse_and_dense_agree():
    x = sp.random(50, 20, density=0.3, random_state=0, format="csr")
    xs, l2s = mnn.cosine_normalize(x)
    xd, l2d = mnn.cosine_normalize(x.toarray())
    assert sp.issparse(xs)
    np.testing.assert_allclose(xs.toarray(), xd)
    nz = l2d > 1e-8
    np.testing.assert_allclose(np.linalg.norm(xd[nz], axis=1), 1.0)


# ---------------------------------------------------------------- pairs
@pytest.mark.parametrize("n1, n2, k1, k2", [(200, 250, 10, 10), (250, 200, 10, 10),
                                             (250, 200, 7, 12), (200, 250, 12, 7)])
def test_mutual_pairs_are_mutual_and_complete(n1, n2, k1, k2):
    # The two-pass search (full pass from the smaller batch, reverse pass only
    # from the cells it returned) gives exactly the pairs of a full search in
    # both directions, whichever batch is smaller and for unequal k.
    x1, _ = clusters(n1, seed=1)
    x2, _ = clusters(n2, seed=2)
    f, s = mnn.find_mutual_nn(x1, x2, k1, k2)
    d = ((x1[:, None] - x2[None]) ** 2).sum(-1)
    nn12 = np.argsort(d, axis=1)[:, :k2]
    nn21 = np.argsort(d, axis=0)[:k1].T
    brute = sorted((i, j) for i in range(n1) for j in nn12[i] if i in nn21[j])
    assert list(zip(f.tolist(), s.tolist())) == brute  # same pairs, same order
    assert mnn.pair_recall((f, s), (f, s)) == 1.0


# Not marked slow although pynndescent's numba compilation takes ~30-90 s in a
# fresh environment: this is the recall guarantee of the approximate backend.
def test_pynndescent_recall_of_exact_pairs():
    # A few thousand cells, 50 dims, 12 populations, a batch shift.
    x1, _ = clusters(1500, d=50, n_clusters=12, seed=1, noise=0.6)
    x2, _ = clusters(1500, d=50, n_clusters=12, seed=2, noise=0.6, shift=0.3)
    exact = mnn.find_mutual_nn(x1, x2, 20, backend="exact")
    approx = mnn.find_mutual_nn(x1, x2, 20, backend="pynndescent", seed=0)
    assert len(exact[0]) > 1000
    assert mnn.pair_recall(approx, exact) >= 0.95


def test_float32_full_kernel_matches_batchelor_reference():
    # The approximate path's single-precision kernel is the same formula as the reference.
    rng = np.random.default_rng(7)
    data1 = rng.normal(scale=0.1, size=(400, 25))
    data2 = rng.normal(scale=0.1, size=(1000, 25))
    mnn1, mnn2 = np.arange(200), np.arange(499, 299, -1)
    ref = ref_correction_vectors(data1, data2, mnn1, mnn2, 0.1)
    for d1, d2 in ((data1, data2), (sp.csr_matrix(data1), sp.csr_matrix(data2))):
        got = mnn.compute_correction_vectors(d1, d2, mnn1, mnn2, sigma=0.1, dtype=np.float32)
        np.testing.assert_allclose(got, ref, atol=1e-5 * np.abs(ref).max(), rtol=0)


@pytest.mark.slow  # numba compilation of pynndescent and of the re-ranking kernel
def test_projected_pynndescent_reranks_exactly_and_recalls_exact_pairs():
    # > 200 sparse features: search in a PCA projection, exact re-ranking in full space.
    rng = np.random.default_rng(3)
    centers = rng.gamma(0.3, 1.0, size=(6, 400)) * (rng.random((6, 400)) < 0.3)
    lab1, lab2 = rng.integers(0, 6, 1500), rng.integers(0, 6, 1200)
    x1 = np.log1p(rng.poisson(centers[lab1] * 3))
    x2 = np.log1p(rng.poisson(centers[lab2] * 3 + 0.05))
    x1, x2 = (mnn.cosine_normalize(sp.csr_matrix(x))[0] for x in (x1, x2))
    idx, dist = mnn.knn_query(x2, x1, 20, backend="pynndescent")
    # Returned distances are the exact full-space distances of the returned cells, sorted.
    full = np.sqrt(np.maximum(((x1.toarray()[:, None, :] - x2.toarray()[idx]) ** 2).sum(-1), 0))
    np.testing.assert_allclose(dist, full, atol=1e-9)
    assert np.all(np.diff(dist, axis=1) >= -1e-12)
    exact = mnn.find_mutual_nn(x1, x2, 20, backend="exact")
    approx = mnn.find_mutual_nn(x1, x2, 20, backend="pynndescent")
    assert len(exact[0]) > 1000
    assert mnn.pair_recall(approx, exact) >= 0.95
    res = mnn.mnn_correct(sp.vstack([x1, x2]), np.r_[np.zeros(1500), np.ones(1200)],
                          backend="pynndescent", var_adj=False)
    assert np.isfinite(res.corrected).all()


# ---------------------------------------------------------------- correction
def test_known_shift_is_removed_in_expression_space():
    shift = np.zeros(30)
    shift[:3] = 1.5
    x1, l1 = clusters(300, seed=1)
    x2, l2 = clusters(400, seed=2, shift=shift)
    x = np.vstack([x1, x2])
    b = np.r_[["a"] * 300, ["b"] * 400]
    gaps = {}
    for var_adj in (False, True):
        res = mnn.mnn_correct(x, b, cos_norm_in=False, cos_norm_out=False, sigma=10.0, var_adj=var_adj)
        c = res.corrected
        np.testing.assert_array_equal(c[:300], x1)  # the reference batch is untouched
        # Per population, the gap between batch means shrinks from |shift| to a fraction of it.
        gaps[var_adj] = np.array([np.linalg.norm(c[:300][l1 == k].mean(0) - c[300:][l2 == k].mean(0))
                                  for k in range(4)]) / np.linalg.norm(shift)
    assert gaps[False].max() < 0.25
    # MNN pairs sit on the facing surfaces of the two clouds ("kissing"), so the
    # raw vectors undershoot; the variance adjustment closes most of the rest.
    assert gaps[True].max() < 0.12 and gaps[True].mean() < gaps[False].mean()


def test_known_shift_is_removed_in_embedding_space():
    shift = np.zeros(10)
    shift[0] = 3.0
    x1, l1 = clusters(300, d=10, seed=1)
    x2, l2 = clusters(400, d=10, seed=2, shift=shift)
    res = mnn.fastmnn_correct(np.vstack([x1, x2]), np.r_[np.zeros(300), np.ones(400)])
    cor = res.corrected
    # fastMNN centres the reference too, so compare cluster means across batches.
    for c in range(4):
        m1 = cor[:300][l1 == c].mean(0)
        m2 = cor[300:][l2 == c].mean(0)
        assert np.linalg.norm(m1 - m2) < 0.1 * np.linalg.norm(shift)
    unc = np.linalg.norm(x1[l1 == 0].mean(0) - x2[l2 == 0].mean(0))
    assert unc > 2.5


def _mean_nn_distance(x):
    from sklearn.neighbors import NearestNeighbors

    d, _ = NearestNeighbors(n_neighbors=2).fit(x).kneighbors(x)
    return d[:, 1].mean()


def test_identical_batches_give_near_zero_correction():
    x1, _ = clusters(300, seed=3)
    x = np.vstack([x1, x1])
    b = np.r_[np.zeros(300), np.ones(300)]
    xn, _ = mnn.cosine_normalize(x1)
    scale = _mean_nn_distance(xn)
    # Each cell pairs with itself *and* its neighbours, so the averaged pair
    # vectors are small local mean-shift vectors, not exactly zero; after
    # smoothing they must be tiny next to the nearest-neighbour spacing.
    for var_adj in (False, True):
        res = mnn.mnn_correct(x, b, var_adj=var_adj)
        shift = np.linalg.norm(res.corrected[300:] - xn, axis=1)
        assert shift.mean() < 0.05 * scale
    np.testing.assert_allclose(res.corrected[:300], xn)
    emb = mnn.fastmnn_correct(x, b)
    d = np.linalg.norm(emb.corrected[300:] - emb.corrected[:300], axis=1)
    assert d.mean() < 0.2 * _mean_nn_distance(x1)
    # (Centring along the batch vector moves both copies alike, even when that
    # vector is tiny: it flattens one direction, as fastMNN does; so only the
    # difference between the two copies is compared.)


def test_sparse_input_matches_dense_and_is_not_densified(monkeypatch):
    rng = np.random.default_rng(0)
    x = sp.random(400, 60, density=0.3, random_state=1, format="csr")
    x.data = np.log1p(rng.poisson(5, size=x.data.size).astype(float) + 1)
    b = np.r_[np.zeros(200), np.ones(200)]
    dense = mnn.mnn_correct(x.toarray(), b)
    calls = []
    orig = sp.csr_matrix.toarray

    def spy(self, *a, **kw):
        calls.append(self.shape)
        return orig(self, *a, **kw)

    monkeypatch.setattr(sp.csr_matrix, "toarray", spy)
    sparse = mnn.mnn_correct(x, b)
    np.testing.assert_allclose(sparse.corrected, dense.corrected, atol=1e-10)
    # Only per-batch output blocks or kernel chunks are made dense, never all cells × genes.
    assert all(s[0] < 400 for s in calls)


def test_three_batches_merge_order_and_pairs():
    x1, _ = clusters(200, seed=1)
    x2, _ = clusters(250, seed=2, shift=0.4)
    x3, _ = clusters(150, seed=3, shift=-0.4)
    x = np.vstack([x1, x2, x3])
    b = pd.Categorical(np.r_[["A"] * 200, ["B"] * 250, ["C"] * 150])
    res = mnn.mnn_correct(x, b, merge_order=["C", "A", "B"])
    assert res.merge_order == ["C", "A", "B"]
    assert res.steps[0].left == ["C"] and res.steps[0].right == ["A"]
    assert res.steps[1].left == ["C", "A"] and res.steps[1].right == ["B"]
    bv = np.asarray(b)
    st = res.steps[1]
    assert set(bv[st.left_cells]) <= {"A", "C"} and set(bv[st.right_cells]) == {"B"}
    # Reference batch unchanged (up to cosine normalisation).
    xn, _ = mnn.cosine_normalize(x3)
    np.testing.assert_allclose(res.corrected[450:], xn)
    with pytest.raises(ValueError, match="merge_order"):
        mnn.mnn_correct(x, b, merge_order=["A", "B"])


def test_auto_merge_joins_best_connected_batches_first():
    # B and C share all four populations; A holds only one of them.
    xa, la = clusters(300, seed=1)
    xa = xa[la == 0]
    xb, _ = clusters(300, seed=2)
    xc, _ = clusters(300, seed=3)
    x = np.vstack([xa, xb, xc])
    b = np.r_[["A"] * len(xa), ["B"] * 300, ["C"] * 300]
    res = mnn.fastmnn_correct(x, b, auto_merge=True)
    assert sorted(res.steps[0].left + res.steps[0].right) == ["B", "C"]
    assert res.steps[1].right == ["A"]


def test_tricube_and_centring_closed_forms():
    d = np.array([[0.0, 1.0, 2.0, 10.0]])
    w = mnn.tricube_weights(d, ndist=3.0)  # h = 3 × d[:, 1] = 3
    raw = np.array([1.0, (1 - (1 / 3) ** 3) ** 3, (1 - (2 / 3) ** 3) ** 3, 0.0])
    np.testing.assert_allclose(w[0], raw / raw.sum())
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 5))
    v = rng.normal(size=5)
    c = mnn.center_along_batch_vector(x, v)
    u = v / np.linalg.norm(v)
    np.testing.assert_allclose(c @ u, np.full(50, (x @ u).mean()))
    # Orthogonal part untouched.
    np.testing.assert_allclose(c - np.outer(c @ u, u), x - np.outer(x @ u, u), atol=1e-12)


# ---------------------------------------------------------------- bad input
def test_bad_input_raises_clear_errors():
    x1, _ = clusters(100, seed=1)
    x = np.vstack([x1, x1 + 0.1])
    b = np.r_[np.zeros(100), np.ones(100)]
    with pytest.raises(ValueError, match="at least two batches"):
        mnn.mnn_correct(x, np.zeros(200))
    with pytest.raises(ValueError, match="fewer cells than n_neighbors"):
        mnn.mnn_correct(x, np.r_[np.zeros(190), np.ones(10)])
    with pytest.raises(ValueError, match="fewer cells than n_neighbors"):
        mnn.fastmnn_correct(x, np.r_[np.zeros(190), np.ones(10)])
    bad = x.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        mnn.mnn_correct(bad, b)
    with pytest.raises(ValueError, match="NaN"):
        mnn.fastmnn_correct(bad, b)
    with pytest.raises(ValueError, match="labels"):
        mnn.mnn_correct(x, b[:50])
    with pytest.raises(ValueError, match="missing"):
        mnn.mnn_correct(x, np.r_[[None] * 5, b[5:]])
    with pytest.raises(ValueError, match="backend"):
        mnn.mnn_correct(x, b, backend="annoy")


# ---------------------------------------------------------------- names and randomness
def test_n_neighbors_is_the_name_and_k_an_alias():
    x1, _ = clusters(150, seed=1)
    x2, _ = clusters(150, seed=2, shift=0.3)
    x, b = np.vstack([x1, x2]), np.r_[np.zeros(150), np.ones(150)]
    for f in (mnn.mnn_correct, mnn.fastmnn_correct):
        new = f(x, b, n_neighbors=10)
        old = f(x, b, k=10)
        np.testing.assert_array_equal(new.corrected, old.corrected)
        np.testing.assert_array_equal(new.pairs.to_numpy(), old.pairs.to_numpy())
        # Fewer neighbours, fewer pairs: the value is really used.
        assert len(f(x, b).pairs) > len(new.pairs)
        with pytest.raises(ValueError, match="not both"):
            f(x, b, n_neighbors=10, k=15)
        with pytest.raises(ValueError, match="n_neighbors must be a positive integer"):
            f(x, b, n_neighbors=0)
    idx, _ = mnn.knn_query(x1, x2, k=5)
    np.testing.assert_array_equal(idx, mnn.knn_query(x1, x2, n_neighbors=5)[0])


def _global_states():
    import random

    return np.random.get_state()[1].copy(), random.getstate()


def test_global_rng_is_untouched_and_same_seed_same_numbers():
    import anndata as ad
    import random

    import scnotes.tl as tl

    x1, _ = clusters(200, d=20, seed=1)
    x2, _ = clusters(200, d=20, seed=2, shift=0.3)
    x, b = np.vstack([x1, x2]), np.r_[["p"] * 200, ["q"] * 200]
    np.random.seed(123)
    random.seed(123)
    before = _global_states()
    runs = [mnn.fastmnn_correct(x, b, backend="pynndescent", seed=s) for s in (0, 0, 1)]
    exact = mnn.mnn_correct(x, b, cos_norm_in=False, cos_norm_out=False, sigma=10.0)
    a = ad.AnnData(X=x.astype(np.float32))
    a.obs["batch"] = pd.Categorical(b)
    tl.mnn(a, "batch", seed=0)
    after = _global_states()
    np.testing.assert_array_equal(before[0], after[0])
    assert before[1] == after[1]
    np.testing.assert_array_equal(runs[0].corrected, runs[1].corrected)
    np.testing.assert_array_equal(runs[0].pairs.to_numpy(), runs[1].pairs.to_numpy())
    assert np.isfinite(exact.corrected).all()


# ---------------------------------------------------------------- AnnData front
def _toy_adata(n=150, d=30, shift=0.3):
    import anndata as ad

    x1, l1 = clusters(n, d=d, seed=1)
    x2, l2 = clusters(n, d=d, seed=2, shift=shift)
    a = ad.AnnData(X=np.vstack([x1, x2]).astype(np.float32))
    a.obs_names = [f"c{i}" for i in range(2 * n)]
    a.obs["batch"] = pd.Categorical(np.r_[["p"] * n, ["q"] * n])
    a.obs["label"] = pd.Categorical(np.r_[l1, l2].astype(str))
    a.obsm["X_pca"] = a.X[:, :10].copy()
    return a


def test_tl_mnn_stores_the_estimators_outputs():
    import scnotes.tl as tl

    a = _toy_adata()
    res = tl.mnn(a, batch_key="batch", n_neighbors=15)
    ref = mnn.mnn_correct(a.X, a.obs["batch"].to_numpy(), n_neighbors=15)
    assert isinstance(res, mnn.MNNResult)
    np.testing.assert_array_equal(a.layers["mnn"], ref.corrected)
    np.testing.assert_array_equal(res.corrected, ref.corrected)
    pairs = a.obsp["mnn_pairs"].tocoo()
    stored = sorted(zip(pairs.row.tolist(), pairs.col.tolist()))
    assert stored == sorted(zip(ref.pairs["left"].tolist(), ref.pairs["right"].tolist()))
    assert set(pairs.data.tolist()) == {1}  # one merge step
    rec = a.uns["mnn"]
    assert rec["params"]["n_neighbors"] == 15 and rec["params"]["method"] == "mnn_correct"
    assert rec["params"]["batch_key"] == "batch" and rec["params"]["layer"] is None  # the call, None included
    assert rec["n_pairs"].tolist() == [len(ref.pairs)] and rec["merge_order"] == ["p", "q"]
    table = res.pair_table(a.obs_names, a.obs["batch"])
    assert table["left"].str.startswith("c").all() and (table["left_batch"] == "p").all()
    # Embedding mode: obsm, fastMNN on the representation.
    res2 = tl.mnn(a, batch_key="batch", use_rep="X_pca", k=15)
    ref2 = mnn.fastmnn_correct(a.obsm["X_pca"], a.obs["batch"].to_numpy(), n_neighbors=15)
    np.testing.assert_array_equal(a.obsm["X_pca_mnn"], ref2.corrected)
    assert a.uns["X_pca_mnn"]["params"]["n_neighbors"] == 15 and len(res2.pairs) == len(ref2.pairs)


def test_to_adata_writes_the_fronts_record_itself():
    """MNNResult.to_adata records through tl._front.record: the same record as tl.mnn's, so the
    front does not patch it afterwards; params keep None and drop what write_h5ad cannot store."""
    import scnotes.tl as tl

    a, b = _toy_adata(), _toy_adata()
    res = mnn.fastmnn_correct(a.obsm["X_pca"], a.obs["batch"].to_numpy(), n_neighbors=15)
    res.to_adata(a, "X_direct", params={"n_neighbors": 15, "layer": None, "weights": np.ones(3)})
    rec = a.uns["X_direct"]
    assert rec["model"] == "MNNResult" and rec["slot"] == "obsm"
    assert rec["params"] == {"n_neighbors": 15, "layer": None}
    assert rec["n_pairs"].tolist() == [len(res.pairs)] and rec["merge_order"] == ["p", "q"]
    tl.mnn(b, "batch", use_rep="X_pca", n_neighbors=15, key_added="X_direct")
    assert set(b.uns["X_direct"]) == set(rec) and b.uns["X_direct"]["model"] == rec["model"]
    np.testing.assert_array_equal(b.uns["X_direct"]["n_pairs"], rec["n_pairs"])
    res.to_adata(a, "X_bare")  # no params: an empty record of the call, the result still readable
    assert a.uns["X_bare"]["params"] == {}
    np.testing.assert_array_equal(mnn.MNNResult.from_adata(a, "X_bare").corrected, res.corrected)
    with pytest.raises(ValueError, match="slot"):
        res.to_adata(a, "X_bad", slot="varm")


def test_tl_mnn_copy_leaves_the_input_unchanged():
    import scnotes.tl as tl

    a = _toy_adata()
    x0 = a.X.copy()
    keys0 = (set(a.layers.keys()), set(a.obsm.keys()), set(a.obsp.keys()), set(a.uns.keys()))
    out, res = tl.mnn(a, batch_key="batch", copy=True)
    assert out is not a
    np.testing.assert_array_equal(a.X, x0)
    assert (set(a.layers.keys()), set(a.obsm.keys()), set(a.obsp.keys()), set(a.uns.keys())) == keys0
    np.testing.assert_array_equal(out.layers["mnn"], res.corrected)
    assert "mnn" in out.uns and "mnn_pairs" in out.obsp


def test_mnn_result_saved_with_the_anndata(tmp_path):
    import anndata as ad

    import scnotes.tl as tl

    a = _toy_adata()
    a.obs["batch3"] = pd.Categorical(np.r_[["p"] * 100, ["q"] * 100, ["r"] * 100])
    res = tl.mnn(a, batch_key="batch3", use_rep="X_pca", key_added="X_fast", merge_order=["r", "p", "q"])
    a.write_h5ad(tmp_path / "a.h5ad")
    back = mnn.MNNResult.from_adata(ad.read_h5ad(tmp_path / "a.h5ad"), "X_fast")
    np.testing.assert_array_equal(back.corrected, res.corrected)
    assert back.merge_order == ["r", "p", "q"] == res.merge_order
    assert back.batches == ["p", "q", "r"]
    for st, st0 in zip(back.steps, res.steps):
        assert (st.left, st.right) == (st0.left, st0.right)
        assert sorted(zip(st.left_cells, st.right_cells)) == sorted(zip(st0.left_cells, st0.right_cells))
    assert a.uns["X_fast"]["params"]["merge_order"] == ["r", "p", "q"]
    with pytest.raises(KeyError, match="no MNN result"):
        mnn.MNNResult.from_adata(a, "nothing")


def test_tl_mnn_bad_input():
    import scnotes.tl as tl

    a = _toy_adata()
    with pytest.raises(KeyError, match="nope"):
        tl.mnn(a, batch_key="nope")
    with pytest.raises(KeyError, match="X_umap"):
        tl.mnn(a, batch_key="batch", use_rep="X_umap")
    with pytest.raises(KeyError, match="counts"):
        tl.mnn(a, batch_key="batch", layer="counts")
    with pytest.raises(ValueError, match="not both"):
        tl.mnn(a, batch_key="batch", n_neighbors=10, k=12)
    a.obs["one"] = "x"
    with pytest.raises(ValueError, match="at least two batches"):
        tl.mnn(a, batch_key="one")
    from scnotes.tl import _mnn
    assert _mnn.__all__ == ["mnn"]


# ---------------------------------------------------------------- chapter helpers
def test_pair_summary_by_hand():
    batch = np.array(["a", "a", "a", "b", "b", "b", "b"])
    labels = np.array(["x", "y", "x", "x", "y", "y", "x"])
    # pairs (left, right): (0, 3) x-x, (0, 6) x-x, (1, 5) y-y, (2, 5) x-y; cell 4 of b unpaired
    step = mnn.MergeStep(["a"], ["b"], np.array([0, 0, 1, 2]), np.array([3, 6, 5, 5]))
    res = mnn.MNNResult(np.zeros((7, 2)), [step], ["a", "b"])
    s = mnn.pair_summary(res, batch, labels)
    assert s["pairs"] == 4
    assert s["corrected cells in a pair"] == 0.75
    assert s["pairs with same label"] == 0.75
    assert np.isnan(mnn.pair_summary(res, batch)["pairs with same label"])


def test_score_methods_is_tidy_and_uses_the_scib_clustering():
    import scnotes.metrics as metrics

    shift = np.zeros(10)
    shift[0] = 3.0
    a = _toy_adata(n=120, d=10, shift=shift)
    a.obsm["X_shifted"] = a.X.copy()
    a.obsm["X_fixed"] = mnn.fastmnn_correct(a.X, a.obs["batch"].to_numpy()).corrected
    df = mnn.score_methods(a, "batch", "label", embeddings={"raw": "X_shifted", "MNN": "X_fixed"})
    assert df["method"].tolist() == ["raw", "MNN"]
    assert {"ilisi", "kbet", "clisi", "silhouette", "ari", "nmi", "resolution", "batch mixing",
            "label conservation"} <= set(df.columns)
    assert df.set_index("method").loc["MNN", "ilisi"] > df.set_index("method").loc["raw", "ilisi"] + 0.3
    cl = metrics.leiden_clustering(a.obs["label"].astype(str).to_numpy(), x=a.obsm["X_fixed"])
    assert df.loc[1, "ari"] == pytest.approx(cl["ari"]) and df.loc[1, "nmi"] == pytest.approx(cl["nmi"])
    np.testing.assert_allclose(df["batch mixing"], df[["ilisi", "kbet"]].mean(axis=1))
    nolab = mnn.score_methods(a, "batch", None, embeddings={"raw": "X_shifted"})
    assert nolab[["clisi", "ari", "nmi", "label conservation"]].isna().all().all()
    with pytest.raises(KeyError, match="nope"):
        mnn.score_methods(a, "nope", embeddings={"raw": "X_shifted"})


@pytest.mark.slow  # pynndescent's numba compilation
def test_compare_backends_reports_recall_and_times():
    x1, _ = clusters(400, d=20, n_clusters=6, seed=1, noise=0.5)
    x2, _ = clusters(300, d=20, n_clusters=6, seed=2, noise=0.5, shift=0.2)
    x = np.vstack([x1, x2])
    b = np.r_[["p"] * 400, ["q"] * 300]
    df = mnn.compare_backends(x, b, n_neighbors=10, sizes=[300, 10_000], cos_norm=False)
    assert df["cells"].tolist() == [300, 700]
    assert (df["recall"] > 0.9).all() and (df["exact pairs"] > 0).all()
    exact = mnn.find_mutual_nn(x1, x2, 10)
    assert df.loc[1, "exact pairs"] == len(exact[0])
    assert df.attrs["warm-up s"] >= 0


def test_the_chapter_sets_load_curated(have_data):
    from scnotes import datasets

    a = datasets.load("cellbench_3cl_celseq2_dropseq", curated=True)
    assert (a.obs["demuxlet_cls"] == "SNG").all() and a.n_obs == 450
    with pytest.warns(DeprecationWarning, match="scnotes.datasets.load"):
        old = mnn.load_data("cellbench_3cl_celseq2_dropseq")  # the older name, same cells
    assert list(old.obs_names) == list(a.obs_names) and (old.X != a.X).nnz == 0
    p = datasets.load("pbmc_joined")
    assert set(p.obs["batch"]) == {"zheng2017_10xv1", "pbmc4k_10xv2"}
    assert set(p.obs["label"]) == {"B", "NK", "CD4 T", "CD8 T", "Monocyte"}
    assert p.obs["label"].notna().all() and not p.var_names.duplicated().any()
    x = p.X
    assert np.all(x.data == np.round(x.data))


# ---------------------------------------------------------------- atlas-scale path (issue 16)
def ref_shift_variance_log(data1, data2, cell_vect, sigma):
    """Loop reference of batchelor's variance shift in log space (its C++ uses logspace_add)."""
    from scipy.special import logsumexp

    scaling = np.zeros(data2.shape[0])
    for cell in range(data2.shape[0]):
        v = cell_vect[cell]
        l2 = np.sqrt((v ** 2).sum())
        u = v / l2
        coords2, coords1 = data2 @ u, data1 @ u
        dd2 = data2[cell] - data2
        dd2 = dd2 - np.outer(dd2 @ u, u)
        lw2 = -(dd2 ** 2).sum(1) / sigma
        dd1 = data2[cell] - data1
        dd1 = dd1 - np.outer(dd1 @ u, u)
        lw1 = -(dd1 ** 2).sum(1) / sigma
        rank2 = np.empty(len(coords2), int)
        rank2[np.argsort(coords2, kind="stable")] = np.arange(len(coords2))
        lp2 = logsumexp(lw2[rank2 <= rank2[cell]]) - logsumexp(lw2)
        ord1 = np.argsort(coords1, kind="stable")
        lecdf = np.array([logsumexp(lw1[ord1[:i + 1]]) for i in range(len(ord1))]) - logsumexp(lw1)
        quan1 = coords1[ord1[np.min(np.flatnonzero(lecdf >= lp2))]]
        scaling[cell] = (quan1 - coords2[cell]) / l2
    return scaling


def test_shift_variance_in_the_underflow_regime_matches_log_space_reference():
    # Log-expression scale (no cosine normalisation): every orthogonal squared
    # distance is far above 745·sigma, so exp(-d/sigma) underflows to 0 for all
    # cells but the query itself; a linear-space ECDF would be NaN there.
    rng = np.random.default_rng(7)
    data1 = rng.normal(loc=3.0, scale=4.0, size=(120, 40))
    data2 = rng.normal(loc=2.0, scale=4.0, size=(90, 40))
    corvect = rng.normal(size=(90, 40))
    sigma = 0.1
    for c in range(90):                     # orthogonal squared distances: the regime of the issue
        u = corvect[c] / np.linalg.norm(corvect[c])
        for other in (data1, np.delete(data2, c, axis=0)):
            dd = data2[c] - other
            dd -= np.outer(dd @ u, u)
            assert ((dd ** 2).sum(1) / sigma).min() > 745
    ref = ref_shift_variance_log(data1, data2, corvect, sigma)
    assert np.all(np.isfinite(ref))
    got = mnn.shift_variance_scaling(data1, data2, corvect, sigma=sigma, chunk_size=32)
    np.testing.assert_allclose(got, ref, atol=1e-8)
    assert np.mean(got > 1) > 0.1           # the adjustment is not silently switched off


def test_variance_adjustment_refuses_large_batches_and_names_the_alternative():
    x, _ = clusters(200, d=10)
    b = np.r_[np.zeros(100), np.ones(100)]
    with pytest.raises(ValueError, match="var_adj=False.*fastmnn_correct"):
        mnn.mnn_correct(x, b, max_cell_pairs=100 * 99)
    with pytest.raises(ValueError, match="max_cell_pairs"):
        mnn.shift_variance_scaling(x[:100], x[100:], x[100:], max_cell_pairs=10)
    mnn.mnn_correct(x, b, max_cell_pairs=100 * 100)  # at the limit: runs


def test_auto_merge_searches_each_pair_of_groups_once(monkeypatch):
    import scnotes.mnn._merge as merge

    x, lab = clusters(5 * 150, d=10, n_clusters=3, seed=3)
    b = np.repeat(np.arange(5), 150)
    x = x + np.repeat(np.random.default_rng(0).normal(size=(5, 10)), 150, axis=0)
    calls = []
    real = merge.find_mutual_nn

    def counting(d1, d2, *args, **kwargs):
        key = tuple(sorted([(d1.shape[0], round(float(np.asarray(d1).sum()), 6)),
                            (d2.shape[0], round(float(np.asarray(d2).sum()), 6))]))
        calls.append(key)
        return real(d1, d2, *args, **kwargs)

    monkeypatch.setattr(merge, "find_mutual_nn", counting)
    for f in (mnn.fastmnn_correct, lambda *a, **kw: mnn.mnn_correct(*a, var_adj=False, **kw)):
        calls.clear()
        res = f(x, b, auto_merge=True)
        assert len(calls) == len(set(calls))            # no pair of groups searched twice
        assert len(calls) == 10 + 3 + 2 + 1             # C(5,2), then the merged group × the rest
        assert len(res.steps) == 4
    # Same pairs as searching the chosen pair afresh (no stale or flipped pairs).
    monkeypatch.setattr(merge, "find_mutual_nn", real)
    st = res.steps[0]
    lc = np.flatnonzero(np.isin(b, st.left))
    rc = np.flatnonzero(np.isin(b, st.right))
    xn = mnn.cosine_normalize(x)[0]
    f1, s1 = mnn.find_mutual_nn(xn[lc], xn[rc], 20)
    np.testing.assert_array_equal(lc[f1], st.left_cells)
    np.testing.assert_array_equal(rc[s1], st.right_cells)


def test_float32_embedding_stays_float32_and_matches_float64():
    x1, _ = clusters(300, d=20, seed=1)
    x2, _ = clusters(300, d=20, seed=2, shift=1.5)
    x = np.vstack([x1, x2])
    b = np.r_[np.zeros(300), np.ones(300)]
    r32 = mnn.fastmnn_correct(x.astype(np.float32), b)
    r64 = mnn.fastmnn_correct(x, b)
    assert r32.corrected.dtype == np.float32 and r64.corrected.dtype == np.float64
    np.testing.assert_allclose(r32.corrected, r64.corrected, atol=1e-4)
    with pytest.raises(ValueError, match="n_candidates"):
        mnn.knn_query(x1, x2, 20, backend="pynndescent", n_candidates=5)


def test_faiss_backend_recalls_exact_pairs_across_a_strong_shift():
    pytest.importorskip("faiss")
    import importlib.util
    import pathlib

    spec = importlib.util.spec_from_file_location(
        "bench_mnn", pathlib.Path(__file__).parents[1] / "benchmarks" / "bench_mnn.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    # The benchmark's simulation: 50 dims, 10 types, batches apart by a strong shift.
    x, b, lab = bench.simulate_embedding(20000, 2, seed=3)
    d1, d2 = x[b == 0], x[b == 1]
    exact = mnn.find_mutual_nn(d1, d2, 20)
    approx = mnn.find_mutual_nn(d1, d2, 20, backend="faiss", seed=0)
    assert len(exact[0]) > 500
    assert mnn.pair_recall(approx, exact) >= 0.95
    # Fewer candidates: a lower recall (the parameter is what trades it).
    low = mnn.find_mutual_nn(d1, d2, 20, backend="faiss", n_candidates=128)
    assert mnn.pair_recall(low, exact) < mnn.pair_recall(approx, exact)
    # The whole correction: float32 throughout, pairs as label-pure as the exact ones,
    # batches brought together.
    res = mnn.fastmnn_correct(x, b, backend="faiss")
    assert res.corrected.dtype == np.float32
    st = res.steps[0]
    l1, l2 = lab[b == 0], lab[b == 1]
    pure_exact = np.mean(l1[exact[0]] == l2[exact[1]])
    assert np.mean(lab[st.left_cells] == lab[st.right_cells]) > pure_exact - 0.02
    def gap(z):  # batch difference within cell types (compositions differ by batch)
        return np.mean([np.linalg.norm(z[(b == 0) & (lab == t)].mean(0) - z[(b == 1) & (lab == t)].mean(0))
                        for t in np.unique(lab)])
    assert gap(res.corrected) < 0.35 * gap(x)  # the exact backend: 0.31 here
    # Wide sparse rows: projected candidates re-ranked exactly, as with pynndescent.
    xs = sp.random(600, 300, density=0.2, random_state=1, format="csr")
    e2 = mnn.find_mutual_nn(xs[:300], xs[300:], 10)
    a2 = mnn.find_mutual_nn(xs[:300], xs[300:], 10, backend="faiss")
    assert mnn.pair_recall(a2, e2) >= 0.95


def _bench_module():
    import importlib.util
    import pathlib

    spec = importlib.util.spec_from_file_location(
        "bench_mnn", pathlib.Path(__file__).parents[1] / "benchmarks" / "bench_mnn.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_faiss_default_candidates_follow_the_reference_size():
    from scnotes.mnn._neighbors import IVF_CANDIDATES, IVF_FRACTION, default_candidates

    assert default_candidates(20, 50, backend="faiss", n_ref=1000) == IVF_CANDIDATES
    big = 500_000
    assert default_candidates(20, 50, backend="faiss", n_ref=big) == int(np.ceil(IVF_FRACTION * big))
    assert default_candidates(20, 50, 300, backend="faiss", n_ref=big) == 300   # given: kept
    assert default_candidates(20, 50) == 40                                     # pynndescent: 2 k


def test_sampled_pair_recall_equals_the_full_recall_when_every_cell_is_sampled():
    pytest.importorskip("faiss")
    bench = _bench_module()
    x, b, _ = bench.simulate_embedding(4000, 2, seed=5)
    d1, d2 = x[b == 0], x[b == 1]
    exact = mnn.find_mutual_nn(d1, d2, 20)
    approx = mnn.find_mutual_nn(d1, d2, 20, backend="faiss", n_candidates=64)
    full = mnn.pair_recall(approx, exact)
    assert full < 1.0                                    # a search that misses some pairs
    rec, n_pairs = bench.sampled_pair_recall(d1, d2, approx, n_sample=d1.shape[0])
    assert n_pairs == len(exact[0])
    assert rec == pytest.approx(full)


def test_faiss_search_returns_exact_distances_and_ignores_query_order():
    """Codes only rank candidates: returned distances are the true ones, and the
    internal reordering of queries (by nearest list) does not change any result."""
    pytest.importorskip("faiss")
    bench = _bench_module()
    x, b, _ = bench.simulate_embedding(30000, 2, seed=7)
    ref, query = x[b == 0], x[b == 1][:3000]
    idx, dist = mnn.knn_query(ref, query, 15, backend="faiss", seed=0)
    true = np.linalg.norm(query[:, None, :] - ref[idx], axis=2)
    np.testing.assert_allclose(dist, true, rtol=1e-4, atol=1e-4)
    assert np.all(np.diff(dist, axis=1) >= -1e-5)                 # nearest first
    perm = np.random.default_rng(0).permutation(len(query))
    i2, d2 = mnn.knn_query(ref, query[perm], 15, backend="faiss", seed=0)
    np.testing.assert_array_equal(i2, idx[perm])
    # Scanning every row is the exact search.
    ie, de = mnn.knn_query(ref, query, 15)
    ia, da = mnn.knn_query(ref, query, 15, backend="faiss", n_candidates=len(ref))
    np.testing.assert_allclose(da, de, rtol=1e-4)   # float32 vs float64: near-ties may swap
    assert np.mean(ia == ie) > 0.99
    # Against the exact neighbours, the default scan keeps nearly all of them.
    assert np.mean([len(set(a) & set(e)) / 15 for a, e in zip(idx, ie)]) >= 0.95


def test_faiss_long_scans_rank_by_codes_and_return_exact_distances():
    """Scans of at least IVF_PQ_ABOVE rows take the coded path (PQ fast-scan, exact re-ranking)."""
    pytest.importorskip("faiss")
    from scnotes.mnn._neighbors import IVF_PQ_ABOVE, _faiss_index

    bench = _bench_module()
    x, b, _ = bench.simulate_embedding(130000, 2, seed=11)
    ref, query = x[b == 0], x[b == 1][:2000]
    assert _faiss_index(ref[:1000], IVF_PQ_ABOVE // 2, 0)[2] is False   # short scan: full rows
    n_cand = IVF_PQ_ABOVE
    assert _faiss_index(ref, n_cand, 0)[2] is True
    idx, dist = mnn.knn_query(ref, query, 20, backend="faiss", n_candidates=n_cand)
    np.testing.assert_allclose(dist, np.linalg.norm(query[:, None, :] - ref[idx], axis=2),
                               rtol=1e-4, atol=1e-4)
    ie, _ = mnn.knn_query(ref, query, 20)
    assert np.mean([len(set(a) & set(e)) / 20 for a, e in zip(idx, ie)]) >= 0.9
