"""Live DE references (scnotes.glmm._rrefs, scnotes.glmm._pyrefs): limma-voom and glmGamPoi (R),
PyDESeq2, the cells-as-replicates Wilcoxon, and the covariates of every pseudobulk reference.

Small simulations (4 donors, 30 cells per donor × condition × cell type, 60 genes, 2 cell types)
from the NB GLMM, summed per sample; each test runs in seconds on one core."""
import sys

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from scnotes import glmm
from scnotes.glmm import _pyrefs, _rrefs

LN2 = np.log(2.0)


def _hint(pkg):
    return f"R package {pkg} not found (Rscript); install: {_rrefs.R_INSTALL_HINTS[pkg]}"


def _needs(pkg):
    return pytest.mark.skipif(not glmm.r_package_available(pkg), reason=_hint(pkg))


needs_edger, needs_deseq2 = _needs("edgeR"), _needs("DESeq2")
needs_limma, needs_glmgampoi = _needs("limma"), _needs("glmGamPoi")
needs_pydeseq2 = pytest.mark.skipif(not _pyrefs.pydeseq2_available(), reason=_pyrefs.PYDESEQ2_INSTALL_HINT)

N_GENES, N_DE = 60, 8
# genes 0..7: true log fold change ±1.5 (natural log) in both cell types, the rest null
LFC = np.where(np.arange(N_GENES) < N_DE, 1.5, 0.0) * np.where(np.arange(N_GENES) % 2 == 0, 1.0, -1.0)


@pytest.fixture(scope="module")
def sim():
    a = glmm.simulate_nb_glmm(n_donors=4, n_cells=30, n_genes=N_GENES, n_cell_types=2, mean_range=(1.0, 5.0),
                              log_fold_change=LFC, seed=11)
    return a, glmm.pseudobulk(a)


def _batch(pb):
    """A sample-level covariate, not aliased with donor or condition: b2 for three donor × condition samples."""
    key = pb.obs["donor"].astype(str) + "|" + pb.obs["condition"].astype(str)
    return np.where(key.isin(["d0|ctrl", "d1|stim", "d2|stim"]), "b2", "b1")


def _check_table(tab, n_cell_types=2):
    assert list(tab.columns) == _rrefs.tidy_columns()
    assert len(tab) == N_GENES * n_cell_types and (tab["kind"] == "contrast").all()
    assert tab["p"].between(0, 1).all()
    np.testing.assert_allclose(tab["q"], glmm.bh_qvalues(tab["p"]))
    assert tab["method"].nunique() == 1 and tab["inference"].nunique() == 1
    for k in ("loop_seconds", "wall_seconds", "notes"):
        assert k in tab.attrs


def _check_signal(tab, a):
    """Natural-log scale and power: every DE gene's sign; its estimate within ±0.5 of the truth
    in root mean square, at most 0.75 for each (with 4 donors an estimate's sd is about 0.17, so
    ±0.5 for each of 16 estimates is a 3-sd bound that some seeds break); the median ratio
    estimate / truth near 1 (log2 would give 1.44, a doubled ln 2 0.69); DE p below null p (AUC)."""
    truth = LFC[a.var_names.get_indexer(tab["gene"])]
    de = truth != 0
    est = tab["estimate"].to_numpy()
    assert (np.sign(est[de]) == np.sign(truth[de])).all()
    err = np.abs(est[de] - truth[de])
    assert np.sqrt(np.mean(err ** 2)) < 0.5 and err.max() < 0.75, err
    assert 0.85 < np.median(est[de] / truth[de]) < 1.15, np.median(est[de] / truth[de])
    p = tab["p"].to_numpy()
    auc = (p[de][:, None] < p[~de][None, :]).mean()
    assert auc > 0.8, auc
    return auc


# ----------------------------------------------------------------- no R, no pydeseq2
def test_tidy_columns_have_df_once_after_upper():
    cols = _rrefs.tidy_columns()
    assert cols.count("df") == 1 and cols.index("df") == cols.index("upper") + 1
    assert set(glmm.TIDY_COLUMNS) <= set(cols)


def test_pseudobulk_design_plan_and_covariates(sim):
    """One design per cell type: donor dummies only when paired (and not blocked); a covariate
    constant within donor is dropped in a paired design (note) but kept under limma's donor block;
    a covariate aliased with the condition is dropped; a sample-level one is kept."""
    pb = sim[1]
    pb = pb.copy()
    pb.obs["sex"] = pb.obs["donor"].map({"d0": "F", "d1": "M", "d2": "F", "d3": "M"}).astype(str)
    pb.obs["batch"] = _batch(pb)
    pb.obs["age"] = pb.obs["donor"].map({"d0": 30.0, "d1": 41.0, "d2": 52.0, "d3": 63.0}).astype(float)
    pb.obs["cond_copy"] = pb.obs["condition"].astype(str)
    _, counts, ref, other, plans, notes = _rrefs._pb_plan(
        pb, "condition", "donor", "cell_type", None, ["sex", "batch", "age", "cond_copy"])
    assert (ref, other) == ("ctrl", "stim") and counts.shape == pb.shape
    assert [p.cell_type for p in plans] == ["type0", "type1"]
    for p in plans:
        assert list(p.design.columns) == ["Intercept", "donor1", "donor2", "donor3", "cov1_0", "condition"]
        np.testing.assert_array_equal(p.design["condition"], (pb.obs["condition"].iloc[p.rows] == "stim"))
        assert p.testable and not p.block
    assert sum("'sex' aliased with donor" in n for n in notes) == 2
    assert sum("'age' aliased with donor" in n for n in notes) == 2
    assert sum("'cond_copy' aliased with the condition" in n for n in notes) == 2
    # limma's donor block: no donor columns, donor-level covariates estimable; a relabelled copy of
    # sex is aliased with sex and dropped
    pb.obs["sex_copy"] = pb.obs["sex"].map({"F": "female", "M": "male"})
    *_, plans_b, notes_b = _rrefs._pb_plan(pb, "condition", "donor", "cell_type", None,
                                           ["sex", "age", "sex_copy"], block=True)
    assert list(plans_b[0].design.columns) == ["Intercept", "cov0_0", "cov1_0", "condition"] and plans_b[0].block
    assert sum("'sex_copy' aliased with the condition, donor or earlier covariates" in n for n in notes_b) == 2
    # unpaired: no donor term
    u = glmm.pseudobulk(glmm.simulate_nb_glmm(n_donors=4, n_cells=5, n_genes=3, paired=False, seed=0))
    *_, plans_u, _ = _rrefs._pb_plan(u, "condition", "donor", "cell_type", None, None, block=True)
    assert list(plans_u[0].design.columns) == ["Intercept", "condition"] and not plans_u[0].block
    with pytest.raises(KeyError, match="covariate 'nope'"):
        _rrefs._pb_plan(pb, "condition", "donor", "cell_type", None, ["nope"])


def test_missing_r_packages_give_install_hints(monkeypatch, sim):
    monkeypatch.setenv("RSCRIPT", "/nonexistent/Rscript")
    with pytest.raises(RuntimeError, match="r-bioc-limma"):
        _rrefs.fit_limma_voom(sim[1])
    with pytest.raises(RuntimeError, match="r-bioc-glmgampoi"):
        _rrefs.fit_glmgampoi(sim[1])
    with pytest.raises(ValueError, match="block"):
        _rrefs.fit_limma_voom(sim[1], block="random")


def test_missing_pydeseq2_says_pip_install(monkeypatch, sim):
    for mod in ("pydeseq2", "pydeseq2.dds", "pydeseq2.ds", "pydeseq2.default_inference"):
        monkeypatch.setitem(sys.modules, mod, None)
    assert not _pyrefs.pydeseq2_available()
    with pytest.raises(RuntimeError, match="pip install pydeseq2"):
        _pyrefs.fit_pydeseq2(sim[1])


# ----------------------------------------------------------------- R references
@needs_limma
@pytest.mark.parametrize("block", ["fixed", "donor"])
def test_limma_voom_recovers_signal_on_natural_log_scale(sim, block):
    a, pb = sim
    tab = _rrefs.fit_limma_voom(pb, block=block)
    _check_table(tab)
    _check_signal(tab, a)
    assert tab["inference"].iloc[0] == "moderated t"
    assert (np.isfinite(tab["df"]) & (tab["df"] > 0)).all()
    # t interval and moderated t: z = estimate / sd, half-width = t_df quantile · sd
    np.testing.assert_allclose(tab["z"], tab["estimate"] / tab["sd"])
    np.testing.assert_allclose((tab["upper"] - tab["lower"]) / 2, stats.t.ppf(0.975, tab["df"]) * tab["sd"])
    np.testing.assert_allclose(tab["p"], 2 * stats.t.sf(np.abs(tab["z"]), tab["df"]), rtol=1e-6)
    if block == "donor":
        assert tab["method"].iloc[0].endswith("(donor block)")
        assert set(tab.attrs["correlation"]) == {"type0", "type1"}
        assert all(-1 < r < 1 for r in tab.attrs["correlation"].values())
        assert "donor1" not in tab.attrs["designs"]["type0"]
    else:
        assert "donor1" in tab.attrs["designs"]["type0"]


@needs_glmgampoi
def test_glmgampoi_recovers_signal_on_natural_log_scale(sim):
    a, pb = sim
    tab = _rrefs.fit_glmgampoi(pb)
    _check_table(tab)
    _check_signal(tab, a)
    assert tab["inference"].iloc[0] == "quasi-likelihood F"
    assert (np.isfinite(tab["df"]) & (tab["df"] > 0)).all()
    assert tab["sd"].isna().all()


@needs_edger
def test_edger_reports_ql_df_and_accepts_covariates():
    """edgeR's df is the QL F test's df.total; a noise covariate barely moves the estimates; a
    donor-level covariate in a paired design is dropped with a note, leaving the fit unchanged."""
    a = glmm.simulate_nb_glmm(n_donors=8, n_cells=20, n_genes=N_GENES, n_cell_types=1, mean_range=(1.0, 5.0),
                              log_fold_change=LFC, seed=3)
    pb = glmm.pseudobulk(a)
    rng = np.random.default_rng(0)
    pb.obs["noise"] = rng.normal(size=pb.n_obs)
    pb.obs["sex"] = pb.obs["donor"].map({f"d{k}": "FM"[k % 2] for k in range(8)}).astype(str)
    base = _rrefs.fit_edger(pb)
    _check_table(base, n_cell_types=1)
    assert (np.isfinite(base["df"]) & (base["df"] > 0)).all()
    cov = _rrefs.fit_edger(pb, covariate_keys=["noise", "sex"])
    assert cov.attrs["designs"]["type0"][-2:] == ["cov0_0", "condition"]
    assert any("'sex' aliased with donor" in n for n in cov.attrs["notes"])
    assert np.corrcoef(base["estimate"], cov["estimate"])[0, 1] > 0.98
    same = _rrefs.fit_edger(pb, covariate_keys=["sex"])
    np.testing.assert_allclose(same["p"], base["p"], rtol=1e-10)


@pytest.mark.parametrize("fit", [pytest.param(_rrefs.fit_limma_voom, marks=needs_limma, id="limma"),
                                 pytest.param(_rrefs.fit_glmgampoi, marks=needs_glmgampoi, id="glmGamPoi")])
def test_noise_covariate_barely_changes_the_estimates(fit):
    a = glmm.simulate_nb_glmm(n_donors=8, n_cells=20, n_genes=N_GENES, n_cell_types=1, mean_range=(1.0, 5.0),
                              log_fold_change=LFC, seed=4)
    pb = glmm.pseudobulk(a)
    pb.obs["batch"] = np.random.default_rng(1).choice(["b1", "b2"], pb.n_obs)
    base, cov = fit(pb), fit(pb, covariate_keys=["batch"])
    assert "cov0_0" in cov.attrs["designs"]["type0"]
    assert np.corrcoef(base["estimate"], cov["estimate"])[0, 1] > 0.98
    assert stats.spearmanr(base["p"], cov["p"])[0] > 0.8


# ----------------------------------------------------------------- PyDESeq2
@needs_pydeseq2
def test_pydeseq2_recovers_signal_and_uses_the_library_sizes(sim):
    """Natural-log scale and power; the size factors PyDESeq2 used are lib / geomean(lib), and
    doubling the library sizes of the stim samples shifts every log fold change by −ln 2."""
    a, pb = sim
    tab = _pyrefs.fit_pydeseq2(pb)
    _check_table(tab)
    _check_signal(tab, a)
    assert tab["df"].isna().all() and tab["inference"].iloc[0] == "wald"
    lib = pb.obs["total_counts"].to_numpy(float)
    for ct, sf in tab.attrs["size_factors"].items():
        m = (pb.obs["cell_type"] == ct).to_numpy()
        np.testing.assert_allclose(sf, lib[m] / np.exp(np.log(lib[m]).mean()), rtol=1e-12)
    pb2 = pb.copy()
    pb2.obs["total_counts"] = lib * np.where(pb.obs["condition"] == "stim", 2.0, 1.0)
    shift = _pyrefs.fit_pydeseq2(pb2)["estimate"] - tab["estimate"]
    assert abs(np.median(shift) + LN2) < 0.02, np.median(shift)


@needs_pydeseq2
@needs_deseq2
def test_pydeseq2_agrees_with_r_deseq2(sim):
    pb = sim[1]
    py, r = _pyrefs.fit_pydeseq2(pb), _rrefs.fit_deseq2(pb)
    assert (py["gene"].to_numpy() == r["gene"].to_numpy()).all()
    assert np.corrcoef(py["estimate"], r["estimate"])[0, 1] > 0.99
    assert stats.spearmanr(py["p"], r["p"])[0] > 0.95
    assert r["df"].isna().all()


@needs_pydeseq2
@needs_deseq2
def test_deseq2_and_pydeseq2_take_the_same_covariates(sim):
    pb = sim[1]
    pb = pb.copy()
    pb.obs["batch"] = _batch(pb)
    py = _pyrefs.fit_pydeseq2(pb, covariate_keys=["batch"])
    r = _rrefs.fit_deseq2(pb, covariate_keys=["batch"])
    assert py.attrs["designs"] == r.attrs["designs"] and "cov0_0" in r.attrs["designs"]["type0"]
    assert np.corrcoef(py["estimate"], r["estimate"])[0, 1] > 0.99
    assert stats.spearmanr(py["p"], r["p"])[0] > 0.95


# ----------------------------------------------------------------- Wilcoxon on cells
def test_wilcoxon_leaves_input_alone_and_is_anticonservative_under_a_paired_null():
    """Paired null with large sample-to-sample variation (σ_w = 0.5): treating cells as replicates
    calls many null genes (Squair et al. 2021)."""
    a = glmm.simulate_nb_glmm(n_donors=4, n_cells=30, n_genes=N_GENES, n_cell_types=2, sigma_w=0.5,
                              mean_range=(1.0, 5.0), seed=5)
    before_x, before_c = a.X.copy(), a.layers["counts"].copy()
    before_obs, before_uns = a.obs.copy(), set(a.uns)
    tab = _pyrefs.wilcoxon_de(a, layer="counts")
    assert (a.X != before_x).nnz == 0 and (a.layers["counts"] != before_c).nnz == 0
    pd.testing.assert_frame_equal(a.obs, before_obs)
    assert set(a.uns) == before_uns and "log1p" not in a.uns
    _check_table(tab)
    assert tab["method"].iloc[0] == "Wilcoxon (cells)" and tab["df"].isna().all()
    share = np.mean(tab["p"] < 0.05)
    assert share > 0.1, share
    # genes= reports a subset, normalised over all genes
    sub = _pyrefs.wilcoxon_de(a, layer="counts", genes=list(a.var_names[:5]))
    assert len(sub) == 10
    pd.testing.assert_frame_equal(sub.reset_index(drop=True)[["gene", "cell_type", "estimate", "p"]],
                                  tab[tab["gene"].isin(a.var_names[:5])].reset_index(drop=True)[
                                      ["gene", "cell_type", "estimate", "p"]])


def test_wilcoxon_finds_the_signal_in_its_own_units(sim):
    a, _ = sim
    tab = _pyrefs.wilcoxon_de(a, layer="counts")
    truth = LFC[a.var_names.get_indexer(tab["gene"])]
    de = truth != 0
    assert (np.sign(tab["estimate"].to_numpy()[de]) == np.sign(truth[de])).all()
    assert (tab["p"].to_numpy()[de] < 1e-3).all()
