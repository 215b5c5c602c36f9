"""GLMMDesign and GLMMData: one definition of the design's sizes, agreeing with the arrays."""
import numpy as np
import pytest

from scnotes import glmm


def _data(**kw):
    a = glmm.simulate_nb_glmm(n_donors=3, n_cells=6, n_genes=5, n_cell_types=2, seed=4, **kw)
    return glmm.glmm_data_from_adata(a, donor_key="donor", size_factor_key="total_counts",
                                     cell_type_key="cell_type", condition_key="condition")


def _check_sizes(d, data):
    """The sizes of a design ``d`` (GLMMData or GLMMDesign) against the arrays of ``data``."""
    st = data.stats()
    assert (d.n_genes, d.n_groups, d.n_donors) == st.Y.shape
    assert d.n_genes == data.counts.shape[1] == len(data.genes)
    assert d.n_groups == data.X().shape[1] == len(d.group_table) == data.group.max() + 1
    assert d.n_donors == data.Z().shape[1] == data.donor.max() + 1


def test_sizes_agree_with_arrays_for_data_and_design():
    data = _data()
    assert (data.n_cells, data.n_genes, data.n_groups, data.n_donors) == (3 * 2 * 2 * 6, 5, 4, 3)  # donors × conditions × cell types × cells
    _check_sizes(data, data)
    _check_sizes(data.design(), data)
    _check_sizes(glmm.GLMMDesign.from_dict(data.design().to_dict()), data)
    sub = data.subset_genes([4, 1])
    _check_sizes(sub, sub)
    _check_sizes(sub.design(), sub)
    assert sub.n_genes == 2 and sub.naive_estimates().shape == (2, data.n_groups)


def test_fitted_design_sizes_agree_with_the_fit():
    data = _data()
    m = glmm.NBGLMMVEB(max_epochs=2, moderated_epochs=1).fit(data)
    assert m.b_mean_.shape == (m.design_.n_genes, m.design_.n_groups) == (data.n_genes, data.n_groups)


def test_sizes_defined_once():
    for name in ("n_genes", "n_groups", "n_donors"):
        assert getattr(glmm.GLMMData, name) is getattr(glmm.GLMMDesign, name)


def test_counts_must_match_gene_names():
    data = _data()
    with pytest.raises(ValueError, match="one column per gene"):
        glmm.GLMMData(data.counts[:, :3], data.total, data.group, data.donor, data.groups, data.donors,
                      data.genes, data.group_table)
    with pytest.raises(ValueError, match="n_cells × n_genes"):
        glmm.GLMMData(data.counts[:, 0], data.total, data.group, data.donor, data.groups, data.donors,
                      data.genes[:1], data.group_table)
    ok = glmm.GLMMData(np.zeros((data.n_cells, 2)), data.total, data.group, data.donor, data.groups, data.donors,
                       ["a", "b"], data.group_table)
    assert ok.n_genes == 2


def test_from_adata_refuses_group_key_with_a_named_condition():
    """A cell-group design has no condition: naming one beside group_key must raise, not be dropped."""
    import anndata as ad
    import numpy as np
    import pandas as pd
    import pytest

    rng = np.random.default_rng(0)
    obs = pd.DataFrame({"donor": np.repeat(["d0", "d1", "d2", "d3"], 10), "grp": np.tile(["a", "b"], 20),
                        "stim": np.tile(["ctrl", "ctrl", "stim", "stim"], 10)})
    a = ad.AnnData(rng.poisson(3.0, (40, 3)).astype(np.float32), obs=obs)
    a.obs["total_counts"] = np.asarray(a.X.sum(1)).ravel() + 10
    d = glmm.glmm_data_from_adata(a, donor_key="donor", size_factor_key="total_counts", group_key="grp")
    assert d.n_groups == 2
    with pytest.raises(ValueError, match="condition_key='stim'"):
        glmm.glmm_data_from_adata(a, donor_key="donor", size_factor_key="total_counts", group_key="grp",
                                  condition_key="stim")
