"""tl.glmm's obs keys (review N9): ``group_key`` is the cell group of a fit without a condition,
``cell_type_key`` the cell type of cell type × condition groups; ``group_key`` with a condition is
the older spelling (DeprecationWarning, attributed to scnotes); keys that disagree raise; the
record holds the keys as resolved."""
import warnings

import numpy as np
import pandas as pd
import pytest

from scnotes import tl

FIT = dict(donor_key="patient", layer="umi", size_factor_key="libsize", max_epochs=30)


def _adata(n_cells=400, n_genes=3, seed=3):
    """Two cell types × ctrl/stim, five donors, Poisson counts with donor effects in ``layers["umi"]``."""
    import anndata as ad
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    ct = rng.choice(["T", "B"], n_cells)
    stim = rng.choice(["ctrl", "stim"], n_cells)
    donor = rng.integers(0, 5, n_cells)
    lib = rng.integers(500, 2000, n_cells).astype(float)
    eta = (-5 + 0.5 * (ct == "T")[:, None] + 0.8 * (stim == "stim")[:, None]
           + rng.normal(0, 0.3, (5, n_genes))[donor])
    x = rng.poisson(lib[:, None] * np.exp(eta)).astype(np.float32)
    obs = pd.DataFrame({"ct": ct, "stim": stim, "patient": [f"P{d}" for d in donor], "libsize": lib},
                       index=[f"c{i}" for i in range(n_cells)])
    a = ad.AnnData(X=sp.csr_matrix(np.zeros_like(x)), obs=obs,
                   var=pd.DataFrame(index=[f"g{j}" for j in range(n_genes)]))
    a.layers["umi"] = sp.csr_matrix(x)
    return a


def _no_warning(call):
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        return call()


def test_cell_type_key_gives_the_table_of_the_older_spelling():
    a = _adata()
    new = _no_warning(lambda: tl.glmm(a, ["g0", "g1"], cell_type_key="ct", condition_key="stim", **FIT))
    new_params = dict(a.uns["glmm"]["params"])
    with pytest.warns(DeprecationWarning, match="cell_type_key='ct'") as rec:
        old = tl.glmm(a, ["g0", "g1"], group_key="ct", condition_key="stim", **FIT)
    # attributed to scnotes (never to the caller's cell, so never on an executed page)
    assert all(w.filename.endswith("scnotes/tl/_glmm.py") for w in rec)
    pd.testing.assert_frame_equal(new.summary(), old.summary())
    assert set(new.summary().query("kind == 'contrast'").cell_type) == set(a.obs.ct)
    assert new_params == dict(a.uns["glmm"]["params"])
    with pytest.warns(DeprecationWarning):  # the positional third argument is group_key too
        pos = tl.glmm(a, ["g0", "g1"], "ct", "patient", condition_key="stim",
                      **{k: v for k, v in FIT.items() if k != "donor_key"})
    pd.testing.assert_frame_equal(new.summary(), pos.summary())


def test_group_key_without_condition_is_the_cell_group_and_does_not_warn():
    a = _adata()
    a.obs["grp"] = a.obs.ct.astype(str) + "/" + a.obs.stim.astype(str)
    model = _no_warning(lambda: tl.glmm(a, ["g0"], "grp", "patient", layer="umi", size_factor_key="libsize",
                                        max_epochs=30))
    tab = model.summary()
    assert set(tab.kind) == {"group"} and set(tab.term) == set(a.obs.grp)
    p = a.uns["glmm"]["params"]
    assert p["group_key"] == "grp" and p["cell_type_key"] is None and p["condition_key"] is None


def test_params_record_the_resolved_keys_and_the_defaults():
    a = _adata().copy()
    a.obs = a.obs.rename(columns={"ct": "cell_type"})
    tl.glmm(a, ["g0"], condition_key="stim", **FIT)  # no key given: the cell type is "cell_type"
    p = a.uns["glmm"]["params"]
    assert (p["group_key"], p["cell_type_key"], p["donor_key"], p["condition_key"]) == (
        None, "cell_type", "patient", "stim")
    tl.glmm(a, ["g0"], **FIT)  # without a condition the cell group defaults to "cell_type"
    p = a.uns["glmm"]["params"]
    assert (p["group_key"], p["cell_type_key"], p["condition_key"]) == ("cell_type", None, None)


def test_inconsistent_keys_raise():
    a = _adata()
    a.obs["ct2"] = a.obs.ct
    with pytest.raises(ValueError, match="group_key='ct' and cell_type_key='ct2' disagree"):
        tl.glmm(a, ["g0"], group_key="ct", cell_type_key="ct2", condition_key="stim", **FIT)
    with pytest.raises(ValueError, match="needs condition_key.*group_key='ct'"):
        tl.glmm(a, ["g0"], cell_type_key="ct", **FIT)
    with pytest.warns(DeprecationWarning):  # the same column under both names: the older spelling only
        tl.glmm(a, ["g0"], group_key="ct", cell_type_key="ct", condition_key="stim", **FIT)
    assert a.uns["glmm"]["params"]["cell_type_key"] == "ct"


def test_a_missing_cell_type_column_names_cell_type_key():
    a = _adata()
    with pytest.raises(KeyError, match="cell_type_key"):
        tl.glmm(a, ["g0"], cell_type_key="celltype", condition_key="stim", **FIT)
    with pytest.raises(KeyError, match="group_key"):
        tl.glmm(a, ["g0"], group_key="celltype", **FIT)
