import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from scnotes._checks import check_counts, check_mask, check_obs_key, counts_from_adata, size_factors


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
