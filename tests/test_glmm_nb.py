"""NB GLMM (VEB), pseudobulk sums, BH q-values, and the live R references (glmmTMB, edgeR, DESeq2)."""
import numpy as np
import pandas as pd
import pytest
from scipy import sparse, stats

from scnotes import glmm
import scnotes.tl


def _hint(pkg):
    return f"R package {pkg} not found (Rscript); install: {glmm.R_INSTALL_HINTS[pkg]}"


needs_glmmtmb = pytest.mark.skipif(not glmm.r_package_available("glmmTMB"), reason=_hint("glmmTMB"))
needs_pseudobulk_r = pytest.mark.skipif(
    not (glmm.r_package_available("edgeR") and glmm.r_package_available("DESeq2")),
    reason=_hint("edgeR") + "; " + _hint("DESeq2"))


def _data(a):
    return glmm.glmm_data_from_adata(a, donor_key="donor", size_factor_key="total_counts", cell_type_key="cell_type",
                                     condition_key="condition")


# ----------------------------------------------------------------- pseudobulk and q-values
@pytest.mark.parametrize("as_sparse", [True, False])
def test_pseudobulk_sums_equal_groupby(as_sparse):
    a = glmm.simulate_nb_glmm(n_donors=3, n_cells=20, n_genes=7, n_cell_types=2, seed=3)
    if not as_sparse:
        a.X = a.X.toarray()
    pb = scnotes.tl.pseudobulk(a, layer=None)
    assert sparse.issparse(pb.X) == as_sparse
    dense = a.X.toarray() if sparse.issparse(a.X) else a.X
    ref = pd.DataFrame(dense, columns=a.var_names).groupby(
        [a.obs["donor"].astype(str).values, a.obs["cell_type"].astype(str).values,
         a.obs["condition"].astype(str).values]).sum()
    got = pb.X.toarray() if sparse.issparse(pb.X) else pb.X
    for k, name in enumerate(pb.obs_names):
        np.testing.assert_allclose(got[k], ref.loc[tuple(name.split("|"))].to_numpy())
    tot = a.obs.groupby(["donor", "cell_type", "condition"], observed=True)["total_counts"].sum()
    for name, row in pb.obs.iterrows():
        assert row["total_counts"] == pytest.approx(tot.loc[tuple(name.split("|"))])
    assert pb.obs["n_cells"].sum() == a.n_obs
    assert glmm.pseudobulk is scnotes.tl.pseudobulk


def test_pseudobulk_errors():
    a = glmm.simulate_nb_glmm(n_donors=2, n_cells=5, n_genes=3, seed=0)
    with pytest.raises(KeyError, match="nope"):
        glmm.pseudobulk(a, donor_key="nope")
    with pytest.raises(ValueError, match="min_cells"):
        glmm.pseudobulk(a, min_cells=10_000)


def test_bh_qvalues_match_scipy():
    p = np.random.default_rng(0).uniform(size=50) ** 2
    p[[3, 7]] = np.nan
    q = glmm.bh_qvalues(p)
    ok = np.isfinite(p)
    np.testing.assert_allclose(q[ok], stats.false_discovery_control(p[ok], method="bh"))
    assert np.isnan(q[~ok]).all()


# ----------------------------------------------------------------- NB GLMM VEB
def test_nb_glmm_input_errors():
    a = glmm.simulate_nb_glmm(n_donors=2, n_cells=5, n_genes=2, seed=0)
    with pytest.raises(ValueError, match="sample_effect"):
        glmm.NBGLMMVEB(sample_effect="donor")
    with pytest.raises(ValueError, match="theta"):
        glmm.NBGLMMVEB(theta=-1.0)
    obs = a.obs.assign(grp=a.obs["condition"].astype(str))
    d = glmm.glmm_data(obs, a.X, donor_key="donor", size_factor_key="total_counts", group_key="grp")
    with pytest.raises(ValueError, match="cell type × condition"):
        glmm.NBGLMMVEB(sample_effect="condition", max_epochs=2).fit(d)
    with pytest.raises(TypeError, match="GLMMData"):
        glmm.NBGLMMVEB().fit(a)
    # each donor in one condition only, 2 donors: no sample-level residual df to test with
    keep = ((a.obs["donor"] == "d0") & (a.obs["condition"] == "ctrl")) | (
        (a.obs["donor"] == "d1") & (a.obs["condition"] == "stim"))
    with pytest.raises(ValueError, match="residual degrees of freedom"):
        glmm.NBGLMMVEB(max_epochs=2).fit(_data(a[keep.to_numpy()].copy()))


def test_nb_glmm_groups_only_keeps_stage_one_variances():
    """A design of cell groups only (group_key, no cell types) has no per-cell-type dispersion to
    moderate: the default fit is the moderate=False fit (stage 1's variances, θ still shrunk), not a
    crash, and it reports no contrast."""
    a = glmm.simulate_nb_glmm(n_donors=4, n_cells=8, n_genes=4, seed=3)
    obs = a.obs.assign(grp=a.obs["condition"].astype(str))
    d = glmm.glmm_data(obs, a.X, donor_key="donor", size_factor_key="total_counts", group_key="grp")
    m = glmm.NBGLMMVEB(max_epochs=15, moderated_epochs=5).fit(d)
    off = glmm.NBGLMMVEB(max_epochs=15, moderated_epochs=5, moderate=False).fit(d)
    assert not m.moderated_ and m.contrast_df_ == {}
    assert list(m.history_["stage"].unique()) == ["per gene", "moderated"]  # θ's shrinkage still runs
    for k in ("b_mean_", "b_cov_", "sigma_w_", "theta_", "elbo_"):
        np.testing.assert_array_equal(getattr(m, k), getattr(off, k))
    np.testing.assert_array_equal(m.sigma_w_, m.sigma_w_raw_)
    assert (m.summary()["kind"] == "group").all()


@pytest.mark.slow
def test_nb_theta_infinite_matches_poisson_glmm():
    """θ → ∞: the NB GLMM without a sample effect and with the Poisson VEB's shared prior is the
    Poisson GLMM VEB — the same ELBO per gene at the optimum and the same contrasts — and the NB
    quadrature path at θ = 1e7 agrees with the exact Poisson expectation at θ = ∞."""
    a = glmm.simulate_nb_glmm(n_donors=4, n_cells=60, n_genes=6, theta=np.inf, sigma_w=0.0,
                              mean_range=(0.5, 5.0), seed=2)
    d = _data(a)
    pois = glmm.PoissonGLMMVEB(guide="full", expectation="analytic", max_epochs=1500, lr=0.05).fit(d)
    kw = dict(sample_effect=None, prior_b="shared", max_epochs=1000)
    inf = glmm.NBGLMMVEB(theta=np.inf, **kw).fit(d)
    big = glmm.NBGLMMVEB(theta=1e7, **kw).fit(d)
    c = np.array([-1.0, 1.0])  # the contrast stim − ctrl
    for m in (inf, big):
        np.testing.assert_allclose(m.elbo_, pois.elbo(d), atol=0.05)
        np.testing.assert_allclose(m.b_mean_ @ c, pois.b_mean_ @ c, atol=0.01)
        np.testing.assert_allclose(m.sigma_u_[:, 0], pois.sigma_u_, rtol=0.05, atol=0.01)
    np.testing.assert_allclose(big.elbo_, inf.elbo_, atol=1e-3)
    np.testing.assert_allclose(big.b_mean_, inf.b_mean_, atol=1e-3)


def test_nb_glmm_recovers_theta_effects_and_sigma_u():
    """On NB-GLMM simulations: θ near the truth, 95% contrast intervals cover at ≈ the nominal
    rate, σ_u's median near the truth (8 donors)."""
    J = 80
    rng = np.random.default_rng(5)
    lfc = rng.normal(0, 0.5, J)
    a = glmm.simulate_nb_glmm(n_donors=8, n_cells=40, n_genes=J, sigma_u=0.4, sigma_w=0.1, theta=3.0,
                              mean_range=(0.5, 5.0), log_fold_change=lfc, seed=7)
    m = glmm.NBGLMMVEB().fit(_data(a))
    assert np.median(np.abs(np.log(m.theta_ / 3.0))) < 0.15
    tab = m.summary()
    con = tab[tab.kind == "contrast"].set_index("gene").loc[a.var_names]
    cover = np.mean((con["lower"] <= lfc) & (lfc <= con["upper"]))
    assert 0.85 <= cover <= 1.0 - 1.0 / J, cover  # not too narrow, and not so wide that every one covers
    assert np.corrcoef(con["estimate"], lfc)[0, 1] > 0.9
    assert 0.3 < np.median(m.sigma_u_) < 0.5
    assert {"lfsr", "q", "theta", "sigma_w"} <= set(tab.columns)
    assert tab.loc[tab.kind == "contrast", "z"].isna().all()  # a posterior has no Wald z
    assert m.sample_df_ == {"type0": 7.0}  # paired design: n_donors − 1
    assert (con["df"] >= 7.0).all()  # Satterthwaite ν: at least the sample-level df


def _contrasts(m):
    tab = m.summary()
    return tab[tab.kind == "contrast"].reset_index(drop=True)


def test_paired_null_calibrated_in_each_cell_type_with_unequal_sigma_w():
    """Paired null, 3 donors, two cell types whose donor × condition sd differ sevenfold (0.05 and
    0.35): in EACH cell type the share of p < 0.05 lies in a two-sided band around 5 % and T = mean/sd
    has sd near 1 (one σ_w pooled over cell types gave 23 % in the noisy type and < 1 % in the quiet
    one); lfsr < 0.05 on few null genes; intervals cover 0 near 95 %."""
    a = glmm.simulate_nb_glmm(n_donors=3, n_cells=40, n_genes=150, n_cell_types=2, sigma_w=(0.05, 0.35),
                              theta=2.0, seed=1)
    m = glmm.NBGLMMVEB(max_epochs=200).fit(_data(a))
    c = _contrasts(m)
    cal = glmm.null_calibration(c.assign(method="nb")).set_index("cell_type")
    for ct in ("type0", "type1"):
        assert 0.01 <= cal.loc[ct, "share_p"] <= 0.10, cal
        assert 0.75 <= cal.loc[ct, "sd_t"] <= 1.25, cal
        assert cal.loc[ct, "share_lfsr"] <= 0.06, cal
        assert 0.90 <= cal.loc[ct, "coverage"] <= 0.99, cal
    # per cell type, not pooled: the noisy cell type's sample-level scatter is estimated as larger
    assert np.median(m.sigma_w_[:, 1]) > 1.5 * np.median(m.sigma_w_[:, 0]), np.median(m.sigma_w_, 0)


def test_power_at_fdr_against_a_threshold():
    """4 paired donors, 10 % of genes DE at |lfc| = 0.7: the moderated NB GLMM finds most of them at
    BH 5 % with few false calls; without moderation (3 df per gene) it finds far fewer."""
    J = 150
    rng = np.random.default_rng(2)
    is_de = np.arange(J) < 15
    lfc = np.where(is_de, 0.7 * rng.choice([-1.0, 1.0], J), 0.0)
    a = glmm.simulate_nb_glmm(n_donors=4, n_cells=80, n_genes=J, sigma_u=0.3, sigma_w=0.15, theta=2.0,
                              log_fold_change=lfc, seed=3)
    truth = pd.Series(lfc, index=a.var_names)
    d = _data(a)
    res = {}
    for name, kw in {"moderated": {}, "per gene": dict(moderate=False, shrink_theta=False)}.items():
        res[name] = glmm.power_fdr(_contrasts(glmm.NBGLMMVEB(max_epochs=200, **kw).fit(d)).assign(method=name),
                                   truth).set_index("method")
    assert res["moderated"].loc["moderated", "power"] >= 0.6, res
    assert res["moderated"].loc["moderated", "fdr_observed"] <= 0.15, res
    assert res["per gene"].loc["per gene", "power"] < res["moderated"].loc["moderated", "power"], res


@pytest.mark.slow
def test_paired_null_nb_calibrated_poisson_not():
    """The issue's paired null: 4 donors × (150 ctrl + 150 stim) cells, donor sd 0.3, donor ×
    condition sd 0.15, θ = 2, 200 genes, no condition effect: the NB GLMM's share of p < 0.05 in a
    two-sided band, the Poisson GLMM (no sample effect) far above it."""
    a = glmm.simulate_nb_glmm(n_donors=4, n_cells=150, n_genes=200, sigma_u=0.3, sigma_w=0.15, theta=2.0,
                              seed=11)
    d = _data(a)
    nb = glmm.NBGLMMVEB().fit(d).summary()
    pois = glmm.PoissonGLMMVEB(guide="full", expectation="analytic").fit(d).summary()
    p_nb = nb.loc[nb.kind == "contrast", "p"].to_numpy()
    p_pois = pois.loc[pois.kind == "contrast", "p"].to_numpy()
    assert len(p_nb) >= 200
    assert 0.02 <= np.mean(p_nb < 0.05) <= 0.08, np.mean(p_nb < 0.05)
    assert np.mean(p_pois < 0.05) > 0.15, np.mean(p_pois < 0.05)


def test_satterthwaite_shares_match_brute_force_derivatives():
    """V_k = ‖(Σc)_k‖²/σ_k² is σ_k² ∂V/∂σ_k² for Σ = (H + P(σ))⁻¹: checked by finite differences of
    cᵀ(H + P(σ))⁻¹c on a fitted model's covariance, and ν = V²/Σ V_k²/d_k against the same."""
    a = glmm.simulate_nb_glmm(n_donors=3, n_cells=15, n_genes=3, n_cell_types=2, seed=4)
    d = _data(a)
    m = glmm.NBGLMMVEB(max_epochs=30, moderate=False, shrink_theta=False).fit(d)
    G, K = d.n_groups, m.w_mean_.shape[1]
    Du = m.u_mean_.shape[1]  # donor × cell type units
    ucls = m.u_units_["class"].map({c: i for i, c in enumerate(m.u_classes_)}).to_numpy()
    cls = np.array([m.w_classes_.index(c) for c in m.samples_["class"]])
    for j in range(d.n_genes):
        su2, sw2 = m.sigma_u_[j] ** 2, m.sigma_w_[j] ** 2
        s2 = np.concatenate([su2, sw2])
        members = [G + np.flatnonzero(ucls == k) for k in range(len(su2))] + [
            G + Du + np.flatnonzero(cls == k) for k in range(len(sw2))]

        def prior_prec(s2):
            return np.concatenate([np.full(G, 1 / m.prior_sd_b ** 2), 1 / s2[:len(su2)][ucls], 1 / s2[len(su2):][cls]])

        H = np.linalg.inv(m.cov_[j]) - np.diag(prior_prec(s2))
        c = np.zeros(G + Du + K)
        c[1], c[0] = 1.0, -1.0  # type0: stim − ctrl

        def V(s2):
            return c @ np.linalg.solve(H + np.diag(prior_prec(s2)), c)

        comps = [(idx, np.array([v])) for idx, v in zip(members, s2)]
        v0, shares = glmm.contrast_variance_shares(m.cov_[j:j + 1], c, comps)
        assert v0[0] == pytest.approx(V(s2), rel=1e-8)
        eps = 1e-6
        brute = []
        for k in range(len(s2)):
            up, dn = s2.copy(), s2.copy()
            up[k] *= 1 + eps
            dn[k] *= 1 - eps
            brute.append(s2[k] * (V(up) - V(dn)) / (2 * eps * s2[k]))
        # central differences of V lose ~1e-12 of V's 1e-2 to rounding: shares below that are checked absolutely
        np.testing.assert_allclose(shares[0], brute, rtol=1e-4, atol=1e-9 * v0[0])
        df = np.full(len(s2), 2.0)
        nu = glmm.satterthwaite_df(v0, shares, df)
        assert nu[0] == pytest.approx(v0[0] ** 2 / np.sum(np.array(brute) ** 2 / df), rel=1e-3)


def test_sample_dispersion_df_is_the_residual_df_of_a_paired_design():
    """One cell type, 4 paired donors: φ's df T²/(2I) lies between the paired design's n_donors − 1 = 3
    (donor effects known to be free: exact in a balanced Gaussian design) and the 8 samples less the
    2 condition means = 6 (no donor effect), and φ averages about 1 on a null whose sample sd is the
    same for every gene."""
    a = glmm.simulate_nb_glmm(n_donors=4, n_cells=60, n_genes=60, sigma_u=0.5, sigma_w=0.2, theta=5.0,
                              mean_range=(1.0, 5.0), seed=12)
    m = glmm.NBGLMMVEB(max_epochs=150).fit(_data(a))
    assert 3.0 <= np.min(m.dispersion_df_) and np.max(m.dispersion_df_) <= 6.0, m.dispersion_df_
    assert 0.7 <= np.mean(m.dispersion_raw_) <= 1.4, np.mean(m.dispersion_raw_)


def test_nb_glmm_save_load_round_trip(tmp_path):
    a = glmm.simulate_nb_glmm(n_donors=3, n_cells=15, n_genes=6, n_cell_types=2, seed=5)
    m = glmm.NBGLMMVEB(max_epochs=20).fit(_data(a))
    m.save(tmp_path / "nb.pt")
    back = glmm.NBGLMMVEB.load(tmp_path / "nb.pt")
    pd.testing.assert_frame_equal(back.summary(), m.summary())
    assert back.prior_df_w_ == m.prior_df_w_ and back.covariate_registry_ == m.covariate_registry_
    with pytest.raises(TypeError, match="NBGLMMVEB"):
        glmm.PoissonGLMMVEB.load(tmp_path / "nb.pt")


def test_sample_level_covariate_is_adjusted_for():
    """Donors split between conditions with a donor-level covariate (sex) that shifts expression:
    with covariate_keys its per-gene effect is recovered, and it must be constant per sample."""
    J = 40
    a = glmm.simulate_nb_glmm(n_donors=8, n_cells=30, n_genes=J, paired=False, sigma_u=0.1, sigma_w=0.05,
                              mean_range=(1.0, 5.0), sample_covariate={"name": "sex", "effect": 0.6}, seed=6)
    d = glmm.glmm_data_from_adata(a, donor_key="donor", size_factor_key="total_counts", cell_type_key="cell_type",
                                  condition_key="condition", covariate_keys=["sex"])
    assert d.covariate_names == ["sex[1]"]
    m = glmm.NBGLMMVEB(max_epochs=150).fit(d)
    assert np.corrcoef(m.gamma_mean_[:, 0], a.var["sex_effect"])[0, 1] > 0.9
    obs = a.obs.assign(noise=np.random.default_rng(0).normal(size=a.n_obs))
    with pytest.raises(ValueError, match="varies within"):
        glmm.glmm_data(obs, a.X, donor_key="donor", size_factor_key="total_counts", cell_type_key="cell_type",
                       condition_key="condition", covariate_keys=["noise"])
    with pytest.raises(KeyError, match="nope"):
        glmm.glmm_data(obs, a.X, donor_key="donor", size_factor_key="total_counts", cell_type_key="cell_type",
                       condition_key="condition", covariate_keys=["nope"])


def test_tl_glmm_tests_every_expressed_gene_and_drops_untestable_cell_types(capsys):
    a = glmm.simulate_nb_glmm(n_donors=3, n_cells=20, n_genes=12, n_cell_types=2, mean_range=(0.5, 3.0), seed=7)
    x = a.X.toarray()
    x[:, 0] = 0  # one gene never detected: filtered out
    a.X = sparse.csr_matrix(x)
    # type1 from donor d0 in ctrl and d1 in stim only: no sample-level df, dropped with a message
    drop = (a.obs["cell_type"] == "type1") & ~(((a.obs["donor"] == "d0") & (a.obs["condition"] == "ctrl"))
                                               | ((a.obs["donor"] == "d1") & (a.obs["condition"] == "stim")))
    a = a[~drop.to_numpy()].copy()
    m = scnotes.tl.glmm(a, condition_key="condition", reference="ctrl", method="nb",
                        size_factor_key="total_counts", max_epochs=20)
    tab = m.summary()
    assert "type1" in capsys.readouterr().out
    assert set(tab["gene"]) == set(a.var_names[1:])
    assert set(tab.loc[tab.kind == "contrast", "cell_type"]) == {"type0"}
    assert tab["df"].notna().any()
    pd.testing.assert_frame_equal(a.uns["glmm"]["results"], m.summary())


# ----------------------------------------------------------------- R references
def test_missing_r_gives_install_hint(monkeypatch):
    monkeypatch.setenv("RSCRIPT", "/nonexistent/Rscript")
    a = glmm.simulate_nb_glmm(n_donors=2, n_cells=5, n_genes=2, seed=0)
    with pytest.raises(RuntimeError, match="apt-get install r-cran-glmmtmb"):
        glmm.fit_glmmtmb(_data(a))
    with pytest.raises(RuntimeError, match="r-bioc-edger"):
        glmm.fit_edger(glmm.pseudobulk(a))
    assert not glmm.r_package_available("glmmTMB")


@pytest.mark.slow
@needs_glmmtmb
def test_nb_glmm_agrees_with_glmmtmb():
    """Fixed effects of the NB GLMM VEB within one glmmTMB standard error (same model)."""
    a = glmm.simulate_nb_glmm(n_donors=4, n_cells=50, n_genes=5, sigma_u=0.3, sigma_w=0.15, theta=2.0,
                              mean_range=(0.5, 5.0), seed=4)
    d = _data(a)
    m = glmm.NBGLMMVEB().fit(d)
    ref = glmm.fit_glmmtmb(d)
    ok = np.isfinite(ref.b)
    assert ok.mean() > 0.9
    assert glmm.agreement(m.b_mean_, ref.b, ref.b_se) >= 0.9
    np.testing.assert_allclose(np.median(m.theta_ / ref.theta), 1.0, atol=0.15)


@pytest.mark.slow
@needs_pseudobulk_r
def test_pseudobulk_edger_deseq2_null_and_signal():
    rng = np.random.default_rng(1)
    lfc = np.where(np.arange(60) < 10, 1.5, 0.0) * rng.choice([-1, 1], 60)
    a = glmm.simulate_nb_glmm(n_donors=4, n_cells=60, n_genes=60, sigma_u=0.3, sigma_w=0.15, theta=2.0,
                              mean_range=(0.5, 5.0), log_fold_change=lfc, seed=9)
    pb = glmm.pseudobulk(a)
    for fit in (glmm.fit_edger, glmm.fit_deseq2):
        tab = fit(pb).set_index("gene").loc[a.var_names]
        assert tab["p"].notna().all()
        assert (tab["q"].iloc[:10] < 0.05).mean() >= 0.8          # the DE genes are found
        assert (tab["p"].iloc[10:] < 0.05).mean() <= 0.15        # nulls are not
        assert np.corrcoef(tab["estimate"].iloc[:10], lfc[:10])[0, 1] > 0.9


def test_nb_expected_loglik_is_the_quadrature_of_the_library_pmf():
    """The VEB's expected NB log-likelihood (block sums, A(y, θ) on non-zero counts, one softplus
    quadrature per cell) equals Gauss–Hermite quadrature of scnotes.likelihoods.nb_log_pmf at
    every node, in value and in its gradients, from θ = 0.5 to θ = 1e6."""
    import math

    import torch

    from scnotes.glmm._nb_lik import ExpectedNBLogLik as _ExpectedNBLogLik
    from scnotes.likelihoods import nb_log_pmf

    rng = np.random.default_rng(0)
    J, N, B, Q = 4, 60, 5, 7
    y = torch.as_tensor(rng.negative_binomial(2, 0.3, size=(J, N)).astype(float))
    logs = torch.as_tensor(rng.normal(0.0, 0.3, N))
    cblock = torch.as_tensor(rng.integers(0, B, N))
    m = torch.as_tensor(rng.normal(0.5, 1.0, (J, B)), dtype=torch.float64).requires_grad_(True)
    v = torch.as_tensor(rng.uniform(1e-4, 0.5, (J, B)), dtype=torch.float64).requires_grad_(True)
    log_th = torch.log(torch.tensor([[0.5], [3.0], [200.0], [1e6]], dtype=torch.float64)).requires_grad_(True)
    got = _ExpectedNBLogLik(y, logs, cblock, B, Q)(m, v, log_th)
    xq, wq = np.polynomial.hermite.hermgauss(Q)
    ref = sum(w / math.sqrt(math.pi) * nb_log_pmf(
        y, torch.exp(logs + m[:, cblock] + torch.sqrt(v[:, cblock]) * x * math.sqrt(2.0)), torch.exp(log_th)).sum(1)
        for x, w in zip(xq, wq))
    np.testing.assert_allclose(got.detach().numpy(), ref.detach().numpy(), rtol=1e-10, atol=1e-8)
    g_got = torch.autograd.grad(got.sum(), (m, v, log_th))
    g_ref = torch.autograd.grad(ref.sum(), (m, v, log_th))
    for a, b in zip(g_got, g_ref):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-8, atol=1e-8)


def test_nb_sample_level_degrees_of_freedom():
    """σ_w is one per gene and cell type, so its df are the cell type's own: paired, n_donors − 1;
    donors nested in conditions, n_donors − 2 per cell type; a donor × condition sample effect
    shared by the cell types: the paired t test's n_donors − 1 on the donor × condition samples."""
    paired = _data(glmm.simulate_nb_glmm(n_donors=3, n_cells=5, n_genes=3, n_cell_types=4, seed=0))
    m = glmm.NBGLMMVEB(sample_effect="group", max_epochs=1).fit(paired)
    assert m.sample_df_ == {f"type{c}": 2.0 for c in range(4)} and m.donor_df_ == 2.0
    assert glmm.NBGLMMVEB(sample_effect="condition", max_epochs=1).fit(paired).sample_df_ == {"all": 2.0}
    nested = _data(glmm.simulate_nb_glmm(n_donors=6, n_cells=5, n_genes=3, n_cell_types=2, paired=False, seed=0))
    m = glmm.NBGLMMVEB(sample_effect="group", max_epochs=1).fit(nested)
    assert m.sample_df_ == {"type0": 4.0, "type1": 4.0} and m.paired_ == {"type0": False, "type1": False}


# ----------------------------------------------------------------- NUTS with a prior on θ
def _nuts_data(seed=1, n_cells=40):
    a = glmm.simulate_nb_glmm(n_donors=4, n_cells=n_cells, n_genes=2, theta=2.0, sigma_u=0.3, sigma_w=0.15,
                              mean_range=(2.0, 3.0), log_fold_change=[0.0, 0.5], seed=seed)
    return _data(a)


def test_nb_nuts_shapes_labels_errors_and_reproducibility():
    import torch

    d = _nuts_data(n_cells=10)
    kw = dict(gene=1, num_samples=4, warmup_steps=5, max_tree_depth=3)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    r = glmm.fit_nb_nuts(d, seed=2, **kw)
    assert torch.rand(1) == before  # the caller's global RNG is untouched
    assert r.b.shape == (2, 4, 2) and r.u.shape == (2, 4, 4) and r.w.shape == (2, 4, 8)
    assert r.theta.shape == (2, 4) and (r.theta > 0).all()
    assert {"theta", "sigma_u", "sigma_w", "b[type0|stim]"} <= set(r.diagnostics.index)
    assert any(k.startswith("w[d3/") and k.endswith("stim]") for k in r.diagnostics.index)
    np.testing.assert_array_equal(glmm.fit_nb_nuts(d, seed=2, **kw).theta, r.theta)
    with pytest.raises(ValueError, match="num_chains"):
        glmm.fit_nb_nuts(d, num_chains=1)
    with pytest.raises(ValueError, match="prior"):
        glmm.fit_nb_nuts(d, theta_prior_sd=0)
    with pytest.raises(TypeError, match="GLMMData"):
        glmm.fit_nb_nuts(np.zeros((3, 3)))


@pytest.mark.slow
def test_nb_nuts_recovers_theta_and_the_contrast_and_agrees_with_veb():
    d = _nuts_data(seed=1, n_cells=60)
    r = glmm.fit_nb_nuts(d, gene=1, num_samples=200, warmup_steps=200, seed=0)
    assert r.diagnostics["r_hat"].max() < 1.1
    lo, hi = np.quantile(r.theta, [0.005, 0.995])
    assert lo < 2.0 < hi  # true θ
    c = r.contrast("type0|stim", "type0|ctrl", level=0.99)
    assert c["lower"] < 0.5 < c["upper"]  # true log fold change
    veb = glmm.NBGLMMVEB(sample_effect="group").fit(d.subset_genes(1)).summary()
    v = veb[veb["kind"] == "contrast"].iloc[0]
    assert abs(v["estimate"] - c["mean"]) < 2 * c["sd"]  # the two inferences of one model agree
    assert abs(float(veb["theta"].iloc[0]) - np.median(r.theta)) < 0.25 * np.median(r.theta)


def test_newton_updates_reach_the_lbfgs_optimum_and_never_lower_the_elbo():
    """The default Newton-type optimiser (Σ⁻¹ = Λ + Aᵀ diag(h) A, natural-gradient steps, Fisher
    scoring of the variances) reaches the optimum that L-BFGS on the full-rank Cholesky
    parameterisation reaches, in far fewer passes; with the variances fixed (stage 2) every
    gene's ELBO never falls from one step to the next."""
    a = glmm.simulate_nb_glmm(n_donors=3, n_cells=30, n_genes=12, n_cell_types=2, sigma_w=(0.1, 0.3), seed=11)
    d = _data(a)
    kw = dict(moderate=False, shrink_theta=False)
    ref = glmm.NBGLMMVEB(optimizer="lbfgs", max_epochs=3000, **kw).fit(d)
    new = glmm.NBGLMMVEB(**kw).fit(d)
    # ELBO per gene (nats): the Newton fit is at least as high (up to the reference's own tolerance)
    assert np.all(new.elbo_ >= ref.elbo_ - 0.05), new.elbo_ - ref.elbo_
    assert np.median(np.abs(new.elbo_ - ref.elbo_)) < 0.02
    np.testing.assert_allclose(new.b_mean_, ref.b_mean_, atol=0.03)
    np.testing.assert_allclose(new.b_sd_, ref.b_sd_, rtol=0.1, atol=0.01)
    finite = ref.theta_ < 100  # beyond, the likelihood is flat in θ (near-Poisson gene)
    assert finite.sum() >= 8
    np.testing.assert_allclose(np.log(new.theta_[finite]), np.log(ref.theta_[finite]), atol=0.1)
    assert len(new.history_) < 0.2 * len(ref.history_)
    mod = glmm.NBGLMMVEB(shrink_theta=False).fit(d)  # the recorded ELBO leaves out θ's prior
    e = mod.history_.loc[mod.history_["stage"] == "moderated", "elbo"].to_numpy()
    assert np.all(np.diff(e) >= -1e-8 * np.abs(e[:-1])), np.diff(e)
