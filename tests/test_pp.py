"""scnotes.pp.prepare: one message naming every problem; totals, unlabelled cells, subsets."""
import warnings

import anndata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import scnotes


def _adata(n=300, p=60, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.poisson(rng.gamma(0.5, 2.0, (n, p))).astype(np.float32)
    x[:, 0] += 1  # no empty cells
    obs = pd.DataFrame({"ct": rng.choice(list("abc"), n), "donor": rng.choice(["d1", "d2"], n)},
                       index=[f"c{i}" for i in range(n)])
    a = anndata.AnnData(sp.csr_matrix(x), obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(p)]))
    a.layers["umi"] = a.X.copy()
    a.X = sp.csr_matrix(np.log1p(x))  # log-normalised X, counts in a layer: a common layout
    return a


def test_one_message_names_every_problem():
    a = _adata()
    with pytest.raises(scnotes.pp.PrepareError) as e:
        scnotes.pp.prepare(a, layer="counts", keys={"cell_type": "label_key", "sample": "donor_key"},
                           genes=["g1", "nope"])
    msg = str(e.value)
    for piece in ("layer 'counts' not found", "`layer`", "'cell_type'", "`label_key`", "'sample'",
                  "`donor_key`", "`genes`"):
        assert piece in msg, (piece, msg)
    with pytest.raises(scnotes.pp.PrepareError, match="non-integer"):
        scnotes.pp.prepare(a, keys={"ct": "label_key"})  # X holds log-normalised values


def test_totals_from_all_genes_and_unlabelled_cells_dropped(capsys):
    a = _adata()
    a.obs.loc[a.obs_names[:7], "ct"] = np.nan
    before = a.copy()
    out = scnotes.pp.prepare(a, layer="umi", keys={"ct": "label_key"}, n_top_genes=20)
    assert "dropped 7 cell(s)" in capsys.readouterr().out
    assert out.n_obs == 293 and out.n_vars == 20
    full = np.asarray(a.layers["umi"].sum(1)).ravel()[7:]
    np.testing.assert_allclose(out.obs["total_counts"], full)  # all 60 genes, not the 20 kept
    assert "all 60 genes" in out.uns["prepare"]["totals"]
    np.testing.assert_array_equal(out.layers["counts"].toarray(), out.X.toarray())
    # the input is untouched
    assert np.array_equal(a.obs["ct"].isna(), before.obs["ct"].isna()) and "total_counts" not in a.obs
    with pytest.raises(scnotes.pp.PrepareError, match="drop_unlabelled"):
        scnotes.pp.prepare(a, layer="umi", keys={"ct": "label_key"}, drop_unlabelled=False)


def test_subsample_is_seeded_and_levels_checked():
    a = _adata()
    x1 = scnotes.pp.prepare(a, layer="umi", max_cells=50, seed=3, verbose=False)
    x2 = scnotes.pp.prepare(a, layer="umi", max_cells=50, seed=3, verbose=False)
    assert list(x1.obs_names) == list(x2.obs_names) and x1.n_obs == 50
    with pytest.raises(scnotes.pp.PrepareError, match="at least 3"):
        scnotes.pp.prepare(a, layer="umi", keys={"donor": "donor_key"}, min_levels={"donor": 3},
                           verbose=False)


def test_read_counts_warning():
    a = _adata()
    a.layers["reads"] = a.layers["umi"] * 37  # no ones left: looks like read counts
    with pytest.warns(UserWarning, match="read counts"):
        scnotes.pp.prepare(a, layer="reads", verbose=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scnotes.pp.prepare(a, layer="umi", verbose=False)


def test_title_and_threads(monkeypatch):
    assert scnotes.pp.title_for("/data/deep/my_study.h5ad") == "my_study"
    assert scnotes.pp.title_for("pbmc_facs_zheng2017") == "pbmc_facs_zheng2017"
    assert scnotes.pp.title_for("x.h5ad", title="Mine") == "Mine"
    import torch
    old = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    try:
        assert scnotes.pp.configure_threads() == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("bad", [np.nan, -1.0, 0.5])
def test_counts_problems_are_check_counts_messages(bad):
    """prepare reports bad counts with the words of scnotes._checks.check_counts (one validator)."""
    from scnotes._checks import check_counts

    a = _adata()
    x = a.layers["umi"].toarray()
    x[3, 4] = bad
    a.layers["bad"] = sp.csr_matrix(x)
    with pytest.raises(ValueError) as direct:
        check_counts(a.layers["bad"], name="adata.layers['bad']")
    with pytest.raises(scnotes.pp.PrepareError) as e:
        scnotes.pp.prepare(a, layer="bad", keys={"nope": "label_key"}, verbose=False)
    msg = str(e.value)
    assert str(direct.value) in msg and "`layer`" in msg
    assert "obs key 'nope' not found in adata.obs (parameter `label_key`)" in msg  # still every problem


def test_empty_cells_and_genes_are_dropped_not_refused():
    a = _adata()
    x = a.layers["umi"].toarray()
    x[:5] = 0
    x[:, 7] = 0
    a.layers["umi"] = sp.csr_matrix(x)
    out = scnotes.pp.prepare(a, layer="umi", verbose=False)
    assert out.n_obs == a.n_obs - 5 and "g7" not in out.var_names and out.n_vars == a.n_vars - 1
    assert out.uns["prepare"]["dropped_empty_cells"] == 5 and out.uns["prepare"]["dropped_empty_genes"] == 1
