"""scnotes.mnn's study helpers (the chapter mnn_topics): Harmony and BBKNN as the chapter calls
them, and the discussion's numbers and words read from the score and pair tables."""
import numpy as np
import pandas as pd
import pytest

from scnotes import metrics, mnn


def _shifted(n=150, d=10, shift=3.0, seed=0):
    """Two batches of the same three clusters, the second moved by ``shift`` along one axis."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 6, size=(3, d))
    lab = np.tile(np.arange(3), 2 * n // 3)
    batch = np.repeat(["a", "b"], n)
    x = centres[lab] + rng.normal(0, 1, size=(2 * n, d))
    x[batch == "b", 0] += shift
    return x, batch, lab


def test_harmony_embedding_mixes_a_shifted_batch_and_is_seeded():
    pytest.importorskip("harmonypy")
    x, batch, _ = _shifted()
    z, rounds = mnn.harmony_embedding(x, batch, seed=0)
    assert z.shape == x.shape and rounds >= 1
    assert metrics.ilisi_score(batch, x=z) > metrics.ilisi_score(batch, x=x) + 0.1
    z2, rounds2 = mnn.harmony_embedding(x, batch, seed=0)
    np.testing.assert_array_equal(z, z2)
    assert rounds2 == rounds
    # a tighter tolerance never stops sooner
    assert mnn.harmony_embedding(x, batch, seed=0, epsilon_harmony=1e-6)[1] >= rounds
    with pytest.raises(ValueError, match="one label per cell"):
        mnn.harmony_embedding(x, batch[:-1])


def test_bbknn_graph_takes_neighbours_from_every_batch_and_leaves_adata_alone():
    pytest.importorskip("bbknn")
    import anndata as ad

    x, batch, _ = _shifted(shift=20.0)
    a = ad.AnnData(X=x.astype(np.float32), obs=pd.DataFrame({"batch": pd.Categorical(batch)},
                                                            index=[f"c{i}" for i in range(len(batch))]))
    a.obsm["X_pca"] = x
    dist, conn = mnn.bbknn_graph(a, "batch", use_rep="X_pca", neighbors_within_batch=3)
    assert dist.shape == conn.shape == (a.n_obs, a.n_obs) and not a.obsp.keys()
    d = dist.tocsr()
    other = (batch[:, None] != batch[None, :])
    # batches 20 SD apart: a plain kNN graph would stay within a batch; BBKNN's reaches across
    crossing = np.array([other[i, d.indices[d.indptr[i]:d.indptr[i + 1]]].any() for i in range(a.n_obs)])
    assert crossing.all()
    with pytest.raises(KeyError, match="use_rep"):
        mnn.bbknn_graph(a, "batch", use_rep="X_nothing")
    with pytest.raises(KeyError, match="batch_key"):
        mnn.bbknn_graph(a, "nothing")


METHODS = ["Uncorrected", "MNN (counts)", "MNN (PCs)", "Topics", "MNN (topics)", "Harmony", "BBKNN"]


def _scores(dataset="d1"):
    mix = [0.10, 0.60, 0.80, 0.20, 0.45, 0.15, 0.90]
    lab = [0.90, 0.85, 0.88, 0.70, 0.65, 0.91, np.nan]
    ilisi = [0.05, 0.50, 0.70, 0.10, 0.30, 0.12, 0.85]
    df = pd.DataFrame({"dataset": dataset, "method": METHODS, "ilisi": ilisi, "kbet": mix, "clisi": lab,
                       "ari": lab, "nmi": lab, "batch mixing": mix, "label conservation": lab})
    return df.set_index(["dataset", "method"])


def _pairs(dataset="d1"):
    return pd.DataFrame({"dataset": dataset, "space": ["counts", "PCs", "topics"],
                         "pairs with same label": [0.99, 0.97, 0.60],
                         "corrected cells in a pair": [0.40, 0.50, 0.10]}).set_index(["dataset", "space"])


def test_method_story_reads_the_tables():
    k = pd.Series({10: 0.6, 20: 0.5})
    s = mnn.method_story(_scores().loc["d1"], _pairs().loc["d1"], k)
    assert s["best"] == "BBKNN" and s["best_mix"] == 0.90 and np.isnan(s["best_lab"])
    assert s["best_mnn"] == "MNN (PCs)" and s["best_mnn_mix"] == 0.80 and s["best_mnn_lab"] == 0.88
    assert (s["unc_mix"], s["unc_lab"], s["harmony_mix"]) == (0.10, 0.90, 0.15)
    assert (s["harmony_ilisi"], s["harmony_unc"]) == (0.12, 0.05)
    assert s["worst_space"] == "topics" and s["worst_same"] == pytest.approx(60.0)
    assert s["topics_lift"] == pytest.approx(0.20)
    assert (s["harmony-word"], s["topics-word"], s["k-word"]) == ("barely moves", "raises", "mixes better")
    # without labels there is no worst space; without the neighbour table no k word
    s = mnn.method_story(_scores().loc["d1"], _pairs().loc["d1"].assign(**{"pairs with same label": np.nan}))
    assert s["worst_space"] == "none" and np.isnan(s["worst_same"]) and s["k-word"] == "n/a"


@pytest.mark.parametrize("lift, word", [(0.11, "raises"), (0.09, "barely changes"), (-0.04, "barely changes"),
                                        (-0.06, "lowers")])
def test_method_story_topics_word_thresholds(lift, word):
    sc = _scores().loc["d1"].copy()
    sc.loc["MNN (topics)", "ilisi"] = sc.loc["Topics", "ilisi"] + lift
    assert mnn.method_story(sc)["topics-word"] == word


def test_method_story_of_a_dataset_not_run_has_every_key():
    full = mnn.method_story(_scores().loc["d1"], _pairs().loc["d1"], pd.Series({10: 0.6, 20: 0.5}))
    empty = mnn.method_story(None)
    assert set(empty) == set(full)
    for key, v in empty.items():
        assert v == "n/a" if key in mnn.STORY_WORDS else np.isnan(v)


def test_discussion_numbers_match_the_tables_and_fill_nan_for_a_missing_set():
    scores, pairs = _scores(), _pairs()
    k = pd.Series({("d1", 10): 0.6, ("d1", 20): 0.5})
    out = mnn.discussion_numbers(scores, pairs, k, {"main": "d1", "other": "d2"},
                                 {"Uncorrected": "unc", "MNN (topics)": "mnn_topics"})
    assert out["main-unc-ilisi"] == 0.05 and out["main-mnn_topics-batch_mixing"] == 0.45
    assert out["main-pairs-pcs-same"] == pytest.approx(97.0) and out["main-pairs-topics-inpair"] == pytest.approx(10.0)
    assert out["main-same-min"] == pytest.approx(60.0) and out["main-same-max"] == pytest.approx(99.0)
    assert out["main-inpair-min"] == pytest.approx(10.0) and out["main-inpair-max"] == pytest.approx(50.0)
    assert (out["main-k10"], out["main-k20"]) == (0.6, 0.5)
    other = {key: v for key, v in out.items() if key.startswith("other-")}
    assert len(other) == len(out) // 2 and all(np.isnan(v) for v in other.values())
