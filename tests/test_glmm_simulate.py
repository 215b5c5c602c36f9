"""Simulations (scnotes.glmm._simulate) and evaluation functions (scnotes.glmm._evaluate)."""
import hashlib

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from scnotes.glmm._evaluate import null_calibration, p_qq_points, power_fdr, qq_points, roc_pr
from scnotes.glmm._simulate import (paired_fake_conditions, simulate_nb_glmm, split_donor_designs, split_donors,
                                    thin_de)


def _checksum(a):
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(a.X.toarray().astype(np.int64)).tobytes())
    for c in ("donor", "condition", "cell_type", "sample_id"):
        h.update("|".join(a.obs[c].astype(str)).encode())
    return h.hexdigest()


# sha256 of the counts and the obs labels drawn by the earlier scnotes.glmm._nb.simulate_nb_glmm
# (numpy 2.4.6); the new function must draw the same for the old arguments.
OLD_DRAWS = [
    (dict(n_donors=3, n_cells=20, n_genes=7, n_cell_types=2, seed=3),
     "119c3fb1af80c6411b1b1e427bdf90b82cad24d72d61674819a1d15724ad7d3d", 1340),
    (dict(n_donors=4, n_cells=10, n_genes=5, paired=False, theta=np.inf, seed=1),
     "ac9fd1ad3497e29433250a688f90e98fe8a6affbae98799d8856de26e5a3e253", 787),
]


@pytest.mark.parametrize("kw,digest,total", OLD_DRAWS)
def test_simulate_reproduces_old_draws(kw, digest, total):
    a = simulate_nb_glmm(**kw)
    assert int(a.X.sum()) == total
    assert _checksum(a) == digest
    assert (a.X != a.layers["counts"]).nnz == 0
    from scnotes.glmm import _nb
    old = getattr(_nb, "simulate_nb_glmm", None)
    if old is not None and old is not simulate_nb_glmm:  # while the old function exists
        b = old(**kw)
        assert (a.X != b.X).nnz == 0
        pd.testing.assert_frame_equal(a.obs, b.obs)
        pd.testing.assert_frame_equal(a.var, b.var)


def _log_ratios(a):
    """log(stim / ctrl) of the library-size-normalised pseudobulk, per donor × cell type × gene."""
    x = a.X.toarray()
    out = {}
    for ct in a.obs["cell_type"].cat.categories:
        rows = []
        for d in a.obs["donor"].cat.categories:
            pb = []
            for cond in ("ctrl", "stim"):
                m = ((a.obs["cell_type"] == ct) & (a.obs["donor"] == d) & (a.obs["condition"] == cond)).to_numpy()
                pb.append(x[m].sum(0) / a.obs["total_counts"].to_numpy()[m].sum())
            rows.append(np.log(pb[1] / pb[0]))
        out[ct] = np.array(rows)  # donors × genes
    return out


def test_sigma_w_per_cell_type_sets_the_sample_spread():
    sw = (0.05, 0.15, 0.35)
    a = simulate_nb_glmm(n_donors=8, n_cells=100, n_genes=150, n_cell_types=3, sigma_u=0.3, sigma_w=sw,
                         theta=np.inf, mean_range=(20, 50), seed=4)
    assert a.uns["simulation"]["sigma_w"] == list(sw)
    lr = _log_ratios(a)
    # Var over donors of log(stim/ctrl) = 2 σ_w² (+ tiny Poisson noise at these counts; u cancels)
    est = [np.sqrt(np.mean(np.var(lr[f"type{c}"], axis=0, ddof=1)) / 2) for c in range(3)]
    assert est[0] < est[1] < est[2], est
    for e, s in zip(est, sw):
        assert 0.8 * s < e < 1.25 * s, (est, sw)
    # the recorded true sample effects have the same per-type sd
    w = a.varm["sample_effect"]
    for c, s in enumerate(sw):
        cols = [k for k in w.columns if k.endswith(f"|type{c}")]
        assert 0.85 * s < np.std(w[cols].to_numpy()) < 1.15 * s


def test_sample_covariate():
    kw = dict(n_donors=8, n_cells=60, n_genes=120, sigma_u=0.1, sigma_w=0.05, theta=np.inf, mean_range=(10, 30),
              seed=7)
    plain = simulate_nb_glmm(**kw)
    a = simulate_nb_glmm(**kw, sample_covariate={"name": "sex", "effect": 0.5})
    per_donor = a.obs.groupby("donor", observed=True)["sex"].first().astype(int)
    assert per_donor.sum() == 4 and list(per_donor) == [0, 1] * 4
    assert "sex" not in plain.obs and "sex_effect" not in plain.var
    # the covariate has its own stream: base means and donor effects are unchanged
    np.testing.assert_array_equal(a.var["base_mean"], plain.var["base_mean"])
    np.testing.assert_array_equal(a.varm["donor_effect"], plain.varm["donor_effect"])
    # its effect shows in the counts: log ratio of covariate-1 to covariate-0 donors ≈ γ_j
    x = a.X.toarray()
    s = a.obs["total_counts"].to_numpy()
    one = (a.obs["sex"].astype(int) == 1).to_numpy()
    lr = np.log(x[one].sum(0) / s[one].sum()) - np.log(x[~one].sum(0) / s[~one].sum())
    g = a.var["sex_effect"].to_numpy()
    assert 0.3 < np.std(g) < 0.7
    assert np.corrcoef(lr, g)[0, 1] > 0.9
    slope = np.polyfit(g, lr, 1)[0]
    assert 0.8 < slope < 1.2, slope
    assert a.uns["simulation"]["sample_covariate"]["donors_with_1"] == ["d1", "d3", "d5", "d7"]


def test_unpaired_with_new_arguments():
    a = simulate_nb_glmm(n_donors=6, n_cells=10, n_genes=5, n_cell_types=2, sigma_w=(0.1, 0.2), paired=False,
                         sample_covariate={"name": "batch2", "effect": 0.3}, seed=0)
    per = a.obs.groupby("donor", observed=True)["condition"].nunique()
    assert (per == 1).all()
    assert a.obs.groupby(["donor", "cell_type"], observed=True).size().eq(20).all()
    # the covariate is as balanced between the conditions as 3 donors each allow (1 vs 2 donors)
    tab = a.obs.groupby("donor", observed=True)[["condition", "batch2"]].first()
    per_cond = tab.groupby("condition", observed=True)["batch2"].apply(lambda v: v.astype(int).sum())
    assert sorted(per_cond) == [1, 2]
    np.testing.assert_array_equal(a.X.data, np.round(a.X.data))


def test_simulate_errors():
    with pytest.raises(ValueError, match="one per cell type"):
        simulate_nb_glmm(n_cell_types=2, sigma_w=(0.1, 0.2, 0.3))
    with pytest.raises(ValueError, match=">= 0"):
        simulate_nb_glmm(n_cell_types=2, sigma_w=(0.1, -0.2))
    with pytest.raises(ValueError, match="sample_covariate"):
        simulate_nb_glmm(sample_covariate={"name": "sex"})
    with pytest.raises(ValueError, match="new obs column"):
        simulate_nb_glmm(sample_covariate={"name": "donor", "effect": 0.1})
    with pytest.raises(ValueError, match="n_donors"):
        simulate_nb_glmm(n_donors=3, paired=False)


# ---------------------------------------------------------------------------------- thinning

def _null_adata(sparse=True, n=400, seed=0):
    import anndata as ad

    rng = np.random.default_rng(seed)
    lam = np.array([200.0, 150.0, 3.0, 0.5, 80.0, 50.0])
    x = rng.poisson(lam, size=(n, lam.size)).astype(np.float32)
    obs = pd.DataFrame({"donor": pd.Categorical(np.repeat([f"d{k}" for k in range(8)], n // 8))},
                       index=[f"c{i}" for i in range(n)])
    var = pd.DataFrame(index=[f"g{j}" for j in range(lam.size)])
    a = ad.AnnData(sp.csr_matrix(x) if sparse else x, obs=obs, var=var)
    a.layers["counts"] = a.X.copy()
    return a


def test_thin_de_expectation_and_unchanged_genes():
    a = _null_adata()
    before = a.copy()
    mask = (np.arange(a.n_obs) % 2 == 0)
    lfc = np.array([-0.7, 0.7, -1.0])
    out = thin_de(a, ["g0", "g1", "g2"], lfc, mask, layer="counts", seed=3)
    # input untouched
    assert (a.X != before.X).nnz == 0 and (a.layers["counts"] != before.layers["counts"]).nnz == 0
    assert list(a.var.columns) == [] and "thin_de" not in a.uns
    x0, x1 = before.layers["counts"].toarray(), out.layers["counts"].toarray()
    assert sp.issparse(out.X) and out.X.dtype == np.float32
    assert (out.X != out.layers["counts"]).nnz == 0
    np.testing.assert_array_equal(x1, np.round(x1))
    # E[thinned] = exp(−|lfc|) · original, in the thinned cells only (large counts: within 3 %)
    for j, (l, thinned) in enumerate(zip(lfc, (mask, ~mask, mask))):
        if j < 2:
            ratio = x1[thinned, j].sum() / x0[thinned, j].sum()
            assert abs(ratio / np.exp(-abs(l)) - 1) < 0.03, (j, ratio)
        np.testing.assert_array_equal(x1[~thinned, j], x0[~thinned, j])
        assert np.all(x1[:, j] <= x0[:, j])
    # non-DE genes bit for bit
    np.testing.assert_array_equal(x1[:, 3:], x0[:, 3:])
    np.testing.assert_array_equal(out.var["true_lfc"], [-0.7, 0.7, -1.0, 0, 0, 0])
    np.testing.assert_array_equal(out.var["is_de"], [True, True, True, False, False, False])
    # library sizes: the real (unthinned) totals
    np.testing.assert_allclose(out.obs["total_counts"], x0.sum(1))


def test_thin_de_sign_convention():
    a = _null_adata(n=800, seed=1)
    mask = np.arange(a.n_obs) < 400
    x0 = a.X.toarray()
    out = thin_de(a, ["g0", "g1"], [0.5, -0.5], mask, seed=0)
    x1 = out.X.toarray()

    def lr(x, j):  # log mean in the masked group over the rest
        return np.log(x[mask, j].mean() / x[~mask, j].mean())

    assert abs((lr(x1, 0) - lr(x0, 0)) - 0.5) < 0.03  # lfc > 0: masked group up
    assert abs((lr(x1, 1) - lr(x0, 1)) + 0.5) < 0.03  # lfc < 0: masked group down


def test_thin_de_dense_equals_sparse_and_is_reproducible():
    ds, dd = _null_adata(sparse=True), _null_adata(sparse=False)
    mask = np.arange(ds.n_obs) % 3 == 0
    a = thin_de(ds, ["g2", "g4"], [0.4, -0.3], mask, seed=5)
    b = thin_de(dd, ["g2", "g4"], [0.4, -0.3], mask, seed=5)
    c = thin_de(ds, ["g2", "g4"], [0.4, -0.3], mask, seed=5)
    d = thin_de(ds, ["g2", "g4"], [0.4, -0.3], mask, seed=6)
    assert isinstance(b.X, np.ndarray) and b.X.dtype == np.float32
    np.testing.assert_array_equal(a.X.toarray(), b.X)
    assert (a.X != c.X).nnz == 0 and (a.X != d.X).nnz > 0
    assert not np.any(a.X.data == 0)  # explicit zeros removed


def test_thin_de_errors():
    a = _null_adata()
    mask = np.arange(a.n_obs) % 2 == 0
    with pytest.raises(KeyError, match="nope"):
        thin_de(a, ["g0", "nope"], 0.5, mask)
    with pytest.raises(ValueError, match="one entry per cell"):
        thin_de(a, ["g0"], 0.5, mask[:-1])
    with pytest.raises(TypeError, match="boolean"):
        thin_de(a, ["g0"], 0.5, mask.astype(int))
    with pytest.raises(ValueError, match="mark some cells"):
        thin_de(a, ["g0"], 0.5, np.ones(a.n_obs, bool))
    with pytest.raises(ValueError, match="one value per DE gene"):
        thin_de(a, ["g0", "g1"], [0.5, 0.2, 0.1], mask)
    b = a.copy()
    b.X = b.X * 0.5
    with pytest.raises(ValueError, match="non-integer"):
        thin_de(b, ["g0"], 0.5, mask)
    with pytest.raises(KeyError, match="layer"):
        thin_de(a, ["g0"], 0.5, mask, layer="raw")


# ---------------------------------------------------------------------------------- fake conditions

def test_split_donor_designs_distinct_and_reproducible():
    donors = [f"d{k}" for k in range(8)]
    all44 = split_donor_designs(donors, None, 4, seed=0)
    assert len(all44) == 35
    keys = {frozenset([frozenset(a), frozenset(b)]) for a, b in all44}
    assert len(keys) == 35  # no identical or mirror-image splits
    for a, b in all44:
        assert len(a) == len(b) == 4 and not set(a) & set(b)
    s33 = split_donor_designs(donors, 50, 3, seed=1)
    assert len({frozenset([frozenset(a), frozenset(b)]) for a, b in s33}) == 50
    assert all(len(a) == len(b) == 3 and not set(a) & set(b) for a, b in s33)
    assert split_donor_designs(donors, 10, 3, seed=1) == split_donor_designs(donors[::-1], 10, 3, seed=1)
    assert split_donor_designs(donors, 10, 3, seed=1) != split_donor_designs(donors, 10, 3, seed=2)
    with pytest.raises(ValueError, match="only 35 distinct"):
        split_donor_designs(donors, 36, 4)
    with pytest.raises(ValueError, match="n_per_group"):
        split_donor_designs(donors, 1, 5)
    with pytest.raises(ValueError, match="duplicates"):
        split_donor_designs(donors + ["d0"], 1)


def test_split_donors_and_paired_fake_conditions():
    a = simulate_nb_glmm(n_donors=8, n_cells=7, n_genes=3, n_cell_types=2, seed=0)
    a.obs["condition"] = a.obs["condition"].astype(str)
    s = split_donors(a, "donor", seed=3, condition_key="fake", labels=("A", "B"))
    assert list(s.obs["fake"].cat.categories) == ["A", "B"] and s.n_obs == a.n_obs
    per = s.obs.groupby("donor", observed=True)["fake"].agg(lambda v: set(v))
    assert all(len(v) == 1 for v in per) and sorted(s.obs.groupby("fake", observed=True)["donor"].nunique()) == [4, 4]
    assert split_donors(a, "donor", seed=3).obs["condition"].equals(split_donors(a, "donor", seed=3).obs["condition"])
    s3 = split_donors(a, "donor", n_per_group=3, seed=0)
    assert s3.obs["donor"].nunique() == 6
    design = split_donor_designs(a.obs["donor"].unique(), 1, 3, seed=0)[0]
    assert sorted(s3.obs.loc[s3.obs["condition"] == "ctrl", "donor"].astype(str).unique()) == sorted(design[0])
    assert "fake" not in a.obs  # input untouched

    p = paired_fake_conditions(a, "donor", seed=0, cell_type_key="cell_type", condition_key="fake")
    sizes = p.obs.groupby(["donor", "cell_type", "fake"], observed=True).size().unstack()
    assert sizes.shape[1] == 2 and ((sizes["ctrl"] - sizes["stim"]).abs() <= 1).all()
    q = paired_fake_conditions(a, "donor", seed=1, condition_key="fake")
    assert (q.obs.groupby("donor", observed=True)["fake"].nunique() == 2).all()
    assert not q.obs["fake"].equals(p.obs["fake"])


def test_global_numpy_state_untouched():
    np.random.seed(123)
    state = np.random.get_state()
    a = simulate_nb_glmm(n_donors=4, n_cells=5, n_genes=4, sample_covariate={"name": "sex", "effect": 0.2}, seed=1)
    thin_de(a, ["gene0"], 0.5, (a.obs["condition"] == "stim").to_numpy(), seed=1)
    split_donor_designs(["a", "b", "c", "d"], 2, 1, seed=0)
    split_donors(a, "donor", seed=0)
    paired_fake_conditions(a, "donor", seed=0)
    after = np.random.get_state()
    assert state[0] == after[0] and np.array_equal(state[1], after[1]) and state[2:] == after[2:]


# ---------------------------------------------------------------------------------- evaluation

def test_null_calibration_uniform_p():
    rng = np.random.default_rng(0)
    n = 20000
    est = rng.normal(size=n)
    t = pd.DataFrame({"gene": np.arange(n).astype(str), "kind": "contrast", "cell_type": "T",
                      "estimate": est, "sd": 1.0, "lower": est - 1.96, "upper": est + 1.96,
                      "p": rng.uniform(size=n), "lfsr": np.nan, "q": 1.0, "method": "m"})
    r = null_calibration(t)
    assert list(r["cell_type"]) == ["T", "all"]
    row = r.iloc[1]
    assert abs(row["share_p"] - 0.05) < 0.006
    assert abs(row["coverage"] - 0.95) < 0.006
    assert abs(row["sd_t"] - 1) < 0.02
    assert np.isnan(row["share_lfsr"]) and np.isnan(row["median_df"]) and row["share_called"] == 0


def test_null_calibration_hand_made():
    t = pd.DataFrame({
        "gene": ["a", "b", "c", "d", "a", "b"],
        "kind": ["contrast"] * 4 + ["group", "contrast"],
        "cell_type": ["T", "T", "B", "B", "T", "B"],
        "estimate": [1.0, -2.0, 0.5, 3.0, 9.0, 0.0],
        "sd": [1.0, 1.0, 0.5, 1.0, 1.0, 1.0],
        "lower": [-1.0, -4.0, 0.1, 1.0, 7.0, -1.0],
        "upper": [3.0, 0.5, 0.9, 5.0, 11.0, 1.0],
        "p": [0.5, 0.01, 0.04, 0.001, np.nan, np.nan],
        "lfsr": [0.2, 0.01, 0.2, 0.001, np.nan, 0.5],
        "q": [0.5, 0.02, 0.08, 0.004, np.nan, np.nan],
        "df": [3.0, 3.0, 5.0, 5.0, np.nan, 7.0],
        "method": "nb"})
    wil = pd.DataFrame({"gene": ["a", "b"], "cell_type": ["T", "T"], "estimate": [0.1, 0.2],
                        "p": [0.01, 0.9], "q": [0.02, 0.9], "method": "wilcoxon"})
    r = null_calibration(pd.concat([t, wil], ignore_index=True)).set_index(["method", "cell_type"])
    T, B, A = r.loc[("nb", "T")], r.loc[("nb", "B")], r.loc[("nb", "all")]
    assert T["n_tests"] == 2 and B["n_tests"] == 3 and A["n_tests"] == 5  # the group row is left out
    assert T["share_p"] == 0.5 and B["share_p"] == 1.0 and A["share_p"] == 0.75  # NaN p not counted
    assert T["share_lfsr"] == 0.5 and B["share_lfsr"] == pytest.approx(1 / 3)
    assert T["coverage"] == 1.0 and B["coverage"] == pytest.approx(1 / 3) and A["coverage"] == 0.6
    assert T["sd_t"] == pytest.approx(np.std([1.0, -2.0], ddof=1))
    assert A["sd_t"] == pytest.approx(np.std([1.0, -2.0, 1.0, 3.0, 0.0], ddof=1))
    assert T["median_df"] == 3.0 and B["median_df"] == 5.0 and A["median_df"] == 5.0
    assert T["n_called"] == 1 and B["n_called"] == 1 and A["share_called"] == 0.5
    w = r.loc[("wilcoxon", "T")]
    assert w["share_p"] == 0.5 and w["share_called"] == 0.5
    assert np.isnan(w["coverage"]) and np.isnan(w["sd_t"]) and np.isnan(w["share_lfsr"])
    assert list(null_calibration(t, by=None)["method"]) == ["nb"]
    with pytest.raises(ValueError, match=r"\['p'\]"):
        null_calibration(t.drop(columns="p"))
    with pytest.raises(ValueError, match="cell_type"):
        null_calibration(t.drop(columns="cell_type"))


def test_power_fdr_hand_made():
    truth = pd.Series([1.0, -1.0, 0.5, 0.0, 0.0, 0.0], index=[f"g{j}" for j in range(6)])
    genes = list(truth.index)
    a = pd.DataFrame({"gene": genes, "kind": "contrast", "cell_type": "T", "method": "A",
                      "estimate": [1.0, 0.3, 0.4, 0.1, 0.0, 0.0], "p": [0.001, 0.001, 0.1, 0.001, 0.5, 0.01],
                      "q": [0.01, 0.01, 0.2, 0.01, 0.5, 0.9]})
    b = a.assign(method="B", q=1.0)
    r = power_fdr(pd.concat([a, b]), truth, fdr=0.05).set_index("method")
    ra = r.loc["A"]
    assert (ra["n_tests"], ra["n_de"], ra["n_called"], ra["n_true_pos"], ra["n_false_pos"]) == (6, 3, 3, 2, 1)
    assert ra["power"] == pytest.approx(2 / 3) and ra["fdr_observed"] == pytest.approx(1 / 3)
    assert ra["n_sign_errors"] == 1 and ra["share_sign_errors"] == pytest.approx(1 / 3)
    assert ra["null_share_p"] == pytest.approx(2 / 3)
    assert r.loc["B", "power"] == 0 and r.loc["B", "fdr_observed"] == 0 and r.loc["B", "n_called"] == 0
    # per-cell-type truth: g0 DE only in T
    a2 = pd.concat([a, a.assign(cell_type="B")], ignore_index=True)
    tr = pd.DataFrame({"gene": genes * 2, "cell_type": ["T"] * 6 + ["B"] * 6,
                       "true_lfc": list(truth) + [0.0] * 6})
    r2 = power_fdr(a2, tr, by="cell_type").set_index("cell_type")
    assert r2.loc["B", "n_de"] == 0 and np.isnan(r2.loc["B", "power"]) and r2.loc["B", "fdr_observed"] == 1.0
    assert r2.loc["all", "n_de"] == 3 and r2.loc["all", "fdr_observed"] == pytest.approx(4 / 6)
    with pytest.raises(ValueError, match="no true value"):
        power_fdr(a, truth.iloc[:5])
    with pytest.raises(ValueError, match=r"\['q'\]"):
        power_fdr(a.drop(columns="q"), truth)


def test_roc_pr():
    truth = pd.Series([1.0] * 5 + [0.0] * 15, index=[f"g{j}" for j in range(20)])
    p = np.r_[np.linspace(1e-4, 1e-2, 5), np.linspace(0.05, 1, 15)]
    good = pd.DataFrame({"gene": truth.index, "p": p, "method": "good"})
    bad = pd.DataFrame({"gene": truth.index, "p": p[::-1], "method": "bad"})
    nan = good.assign(method="untested_de", p=np.r_[[np.nan] * 5, p[5:]])
    curves, summary = roc_pr(pd.concat([good, bad, nan], ignore_index=True), truth)
    s = summary.set_index("method")
    assert s.loc["good", "auroc"] == 1.0 and s.loc["good", "average_precision"] == 1.0
    assert s.loc["bad", "auroc"] == 0.0
    assert s.loc["untested_de", "auroc"] == 0.0  # NaN p ranked last
    roc = curves[(curves.method == "good") & (curves.curve == "roc")]
    assert roc["x"].iloc[0] == 0 and roc["y"].iloc[-1] == 1 and roc["x"].is_monotonic_increasing
    pr = curves[(curves.method == "good") & (curves.curve == "pr")]
    assert set(pr.columns) == {"method", "curve", "x", "y", "threshold"} and len(pr) > 1


def test_qq_points_t_draws_on_the_diagonal():
    rng = np.random.default_rng(0)
    df = np.repeat([3.0, 10.0, np.inf], 2000)
    t = np.where(np.isfinite(df), rng.standard_t(np.where(np.isfinite(df), df, 1.0)), rng.normal(size=df.size))
    q = qq_points(t, df)
    assert len(q) == df.size and q["observed"].is_monotonic_increasing
    inner = q["expected"].abs() < 2.5
    assert np.max(np.abs(q["observed"] - q["expected"])[inner]) < 0.12
    assert np.all((q["lower"] < q["expected"]) & (q["expected"] < q["upper"]))
    # the band is a pointwise 95 % band: each order statistic of normal draws falls in it 95 % of the time
    band = qq_points(np.zeros(40))
    z = np.sort(rng.normal(size=(2000, 40)), axis=1)
    inside = ((z >= band["lower"].to_numpy()) & (z <= band["upper"].to_numpy())).mean(0)
    assert np.all(np.abs(inside - 0.95) < 0.025), inside
    # ignoring the df puts t_3 tails off the diagonal
    naive = qq_points(t[:2000])
    assert naive["observed"].iloc[-1] > 1.5 * naive["expected"].iloc[-1]
    # far tails stay finite; NaN statistics dropped
    far = qq_points([40.0, -40.0, np.nan], df=[3.0, 3.0, 3.0])
    assert len(far) == 2 and np.all(np.isfinite(far["observed"])) and far["observed"].iloc[1] > 3
    with pytest.raises(ValueError, match="one value per statistic"):
        qq_points([1.0, 2.0], df=[3.0])
    u = p_qq_points(rng.uniform(size=5000))
    assert np.max(np.abs(u["observed"] - u["expected"])[u["expected"] < 2.5]) < 0.1
