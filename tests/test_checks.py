import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from scnotes._checks import (check_counts, check_genes, check_key, check_layer, check_mask, check_obs_columns,
                             check_obs_key, check_obsm_key, counts_from_adata, key_error, size_factors)


def test_good_counts_dense_and_sparse():
    x = np.array([[0, 1, 2], [3, 0, 1]])
    assert isinstance(check_counts(x), np.ndarray)
    xs = check_counts(sp.csr_matrix(x))
    assert sp.issparse(xs)
    np.testing.assert_array_equal(size_factors(xs), [3, 4])


@pytest.mark.parametrize("bad, msg", [
    (np.array([[0, -1.0], [1, 1]]), "negative"),
    (np.array([[0, 1.5], [1, 1]]), "non-integer"),
    (np.array([[0, np.nan], [1, 1]]), "NaN"),
    (np.array([[0, np.inf], [1, 1]]), "NaN or infinite"),
    (np.array([[0, 0], [1, 1]]), "all-zero cells"),
    (np.array([[0, 1], [0, 1]]), "all-zero genes"),
    (np.zeros((0, 3)), "empty"),
])
def test_bad_counts(bad, msg):
    with pytest.raises(ValueError, match=msg):
        check_counts(bad)
    if bad.size:
        with pytest.raises(ValueError, match=msg):
            check_counts(sp.csr_matrix(bad))


def test_bad_counts_type():
    with pytest.raises(TypeError):
        check_counts(np.array([1, 2, 3]))
    with pytest.raises(TypeError):
        check_counts(np.array([["a", "b"]]))


def test_mask():
    assert check_mask(None, (2, 2)) is None
    with pytest.raises(ValueError, match="shape"):
        check_mask(np.ones((2, 3)), (2, 2))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        check_mask(np.full((2, 2), 2.0), (2, 2))


def test_obs_key_and_layer():
    adata = ad.AnnData(sp.csr_matrix(np.array([[1.0, 2], [3, 4]])),
                       obs=pd.DataFrame({"batch": ["a", "b"]}, index=["c1", "c2"]))
    assert list(check_obs_key(adata, "batch").cat.categories) == ["a", "b"]
    with pytest.raises(KeyError, match="'donor' not found"):
        check_obs_key(adata, "donor")
    with pytest.raises(ValueError, match="at least 3"):
        check_obs_key(adata, "batch", min_levels=3)
    with pytest.raises(KeyError, match="layer 'counts'"):
        counts_from_adata(adata, layer="counts")
    assert sp.issparse(counts_from_adata(adata))


def _keyed_adata():
    a = ad.AnnData(sp.csr_matrix(np.array([[1.0, 2], [3, 4]])),
                   obs=pd.DataFrame({"batch": ["a", "b"], "donor": ["d1", np.nan]}, index=["c1", "c2"]),
                   var=pd.DataFrame(index=["g1", "g2"]))
    a.layers["umi"] = a.X.copy()
    a.obsm["X_pca"] = np.zeros((2, 3))
    return a


def _message(excinfo):
    return excinfo.value.args[0]


def test_one_message_style_for_every_missing_key():
    """Each helper's KeyError names the key, where it looked, the parameter and what is there."""
    a = _keyed_adata()
    with pytest.raises(KeyError) as e:
        check_obs_columns(a, {"batch": "batch_key", "sample": "donor_key"})
    assert _message(e) == ("obs key 'sample' not found in adata.obs (parameter `donor_key`); "
                           "available: ['batch', 'donor']")
    with pytest.raises(KeyError) as e:
        check_obs_key(a.obs, "cell", param="label_key")  # an obs DataFrame itself
    assert _message(e) == "obs key 'cell' not found in obs (parameter `label_key`); available: ['batch', 'donor']"
    with pytest.raises(KeyError) as e:
        check_layer(a, "counts")
    assert _message(e) == ("layer 'counts' not found in adata.layers (parameter `layer`); available: ['umi'] "
                           "(None: adata.X)")
    with pytest.raises(KeyError) as e:
        check_obsm_key(a, "X_umap", param="use_rep")
    assert _message(e) == "obsm key 'X_umap' not found in adata.obsm (parameter `use_rep`); available: ['X_pca']"
    with pytest.raises(KeyError) as e:
        check_key(a, "obs", "nope")
    assert _message(e) == "obs key 'nope' not found in adata.obs; available: ['batch', 'donor']"
    with pytest.raises(KeyError) as e:
        check_genes(a, ["g2", "x", "y"])
    assert _message(e) == "2 gene(s) not found in adata.var_names (parameter `genes`): ['x', 'y']"
    assert isinstance(key_error("obs key", "k", "obs", []), KeyError)


def test_key_helpers_return_what_is_there():
    a = _keyed_adata()
    assert check_obs_columns(a, {"batch": "batch_key", None: "label_key"}) == ["batch"]  # None: not given
    assert check_obs_columns(a.obs, ["batch", "donor"]) == ["batch", "donor"]
    assert check_obs_columns(a, "donor") == ["donor"]  # presence only: missing values are allowed
    assert check_layer(a, None) is a.X and check_layer(a, "umi") is a.layers["umi"]
    assert check_genes(a, "g2") == ["g2"] and check_genes(a, np.array(["g1", "g2"])) == ["g1", "g2"]
    assert check_obsm_key(a, "X_pca").shape == (2, 3)
    s = check_obs_key(a.obs, "batch")
    assert list(s.index) == ["c1", "c2"] and list(s.cat.categories) == ["a", "b"]
    with pytest.raises(ValueError, match="1 missing values"):
        check_obs_key(a, "donor")


def _check_adata():
    rng = np.random.default_rng(0)
    a = ad.AnnData(sp.csr_matrix(rng.poisson(3.0, (12, 4)).astype(float) + 1),
                   obs=pd.DataFrame({"batch": list("ab") * 6, "condition": list("xy") * 6,
                                     "cell_type": ["t"] * 12}, index=[f"c{i}" for i in range(12)]),
                   var=pd.DataFrame(index=[f"g{j}" for j in range(4)]))
    a.layers["counts"] = a.X.copy()
    a.obsm["X_pca"] = rng.normal(size=(12, 2))
    return a


def test_the_fronts_name_a_missing_key_in_the_one_message():
    """Review V1: every function's missing key raises KeyError through scnotes._checks, naming the
    key, where it was looked for, the parameter (where the function has one) and what is there."""
    from types import SimpleNamespace

    from scnotes import glmm, mnn, tl
    from scnotes.glmm._rrefs import _pb_plan
    from scnotes.tl._front import read_size_factors

    a = _check_adata()
    model = SimpleNamespace(var_names_=np.asarray(a.var_names, dtype=object))
    cases = [
        (lambda: read_size_factors(a, "sf"), ["'sf'", "adata.obs", "`size_factor_key`", "'batch'"]),
        (lambda: tl.leiden_fixed(a, use_rep="X_nope"), ["'X_nope'", "adata.obsm", "`use_rep`", "'X_pca'"]),
        (lambda: tl.pca_leiden(a, layer="raw"), ["'raw'", "adata.layers", "`layer`", "'counts'"]),
        (lambda: tl.shared_genes(model, a, layer="raw"), ["'raw'", "adata.layers", "`layer`"]),
        (lambda: tl.heldout_elbo(model, a, genes=["g0", "gZ"]), ["'gZ'", "adata.var_names", "`genes`"]),
        (lambda: tl.transfer_labels(a, a, "label"), ["'label'", "adata_reference.obs", "`label_key`"]),
        (lambda: tl.transfer_labels(a, a, "batch", use_rep="X_z"), ["'X_z'", "adata_query.obsm",
                                                                   "`use_rep`", "'X_pca'"]),
        (lambda: glmm.thin_de(a, ["gZ"], 1.0, np.arange(12) < 6), ["'gZ'", "`de_genes`"]),
        (lambda: glmm.thin_de(a, ["g0"], 1.0, np.arange(12) < 6, layer="raw"), ["'raw'", "`layer`"]),
        (lambda: glmm.wilcoxon_de(a, cell_type_key="ct"), ["'ct'", "adata.obs", "`cell_type_key`"]),
        (lambda: glmm.wilcoxon_de(a, layer="raw"), ["'raw'", "`layer`", "'counts'"]),
        (lambda: _pb_plan(a, "condition", "donor", "cell_type", None, None), ["'donor'", "pb.obs",
                                                                               "`donor_key`"]),
        (lambda: _pb_plan(a, "condition", "batch", "cell_type", None, ["age"]),
         ["covariate 'age'", "`covariate_keys`", "'cell_type'"]),
        (lambda: mnn.bbknn_graph(a, "donor"), ["'donor'", "adata.obs", "`batch_key`", "'batch'"]),
        (lambda: mnn.bbknn_graph(a, "batch", use_rep="X_z"), ["'X_z'", "adata.obsm", "`use_rep`"]),
    ]
    for call, parts in cases:
        with pytest.raises(KeyError) as e:
            call()
        for part in parts:
            assert part in _message(e), (part, _message(e))


def test_check_counts_dtype_none_keeps_float32_without_a_copy():
    """dtype=None (the VAEs' path) returns float32 counts as they are (a 10⁶-cell CSR is not
    copied to float64); integers become float64; the default still gives float64."""
    x = sp.random(50, 20, density=0.3, format="csr", dtype=np.float32, random_state=0)
    x.data = np.ceil(x.data * 5)
    kept = check_counts(x, allow_empty_cells=True, allow_empty_genes=True, dtype=None)
    assert kept.dtype == np.float32 and np.shares_memory(kept.data, x.data)
    assert check_counts(x, allow_empty_cells=True, allow_empty_genes=True).dtype == np.float64
    dense = check_counts(np.arange(12).reshape(3, 4) + 1, dtype=None)
    assert dense.dtype == np.float64
    d32 = np.ones((3, 4), dtype=np.float32)
    assert check_counts(d32, dtype=None) is d32


def test_vae_fit_on_float32_counts_equals_float64():
    """The same counts as float32 or float64 CSR give bit-identical fits (training is float32)."""
    from scnotes.vae import NBVAE

    rng = np.random.default_rng(1)
    x = rng.negative_binomial(2, 0.4, size=(120, 15)).astype(np.float64)
    x[x.sum(1) == 0, 0] = 1
    out = []
    for dt in (np.float32, np.float64):
        m = NBVAE(15, n_latent=2, seed=0).fit(sp.csr_matrix(x.astype(dt)), max_epochs=2, batch_size=32,
                                              progress=False)
        out.append((m.latent(sp.csr_matrix(x.astype(dt))), m.history_["loss"].to_numpy()))
    np.testing.assert_array_equal(out[0][0], out[1][0])
    np.testing.assert_array_equal(out[0][1], out[1][1])
