"""pl only draws: the matched effect table is computed (and checked here) by
scnotes.glmm.effects_vs_reference, the plots draw what they are given, missing keys are named."""
import anndata as ad
import matplotlib
import numpy as np
import pandas as pd
import pytest
from scipy import stats

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from scnotes import glmm, pl  # noqa: E402
from scnotes._record import slot_keys  # noqa: E402


def _tidy(rows):
    return pd.DataFrame(rows, columns=["gene", "term", "kind", "estimate", "sd"])


@pytest.fixture
def tables():
    rng = np.random.default_rng(3)
    genes, terms = ["g1", "g2", "g3"], ["B", "T", "NK"]
    ref = _tidy([(g, t, "group", rng.normal(), rng.uniform(0.1, 1)) for g in genes for t in terms]
                + [(g, "stim", "contrast", rng.normal(), 0.5) for g in genes])
    # the method's table: other order, one term the reference lacks, one it has that this lacks
    rows = [(g, t, "group", rng.normal(), rng.uniform(0.1, 1)) for g in genes[::-1] for t in terms
            if (g, t) != ("g2", "NK")]
    tab = _tidy(rows + [("g9", "B", "group", 0.0, 1.0), ("g1", "stim", "contrast", 1.0, 0.2)])
    return tab, ref


def _by_hand(tab, ref, kind, level):
    z = stats.norm.ppf((1 + level) / 2)
    out = []
    for _, r in tab[tab.kind == kind].iterrows():
        hit = ref[(ref.kind == kind) & (ref.gene == r.gene) & (ref.term == r.term)]
        if len(hit):
            h = hit.iloc[0]
            out.append((r.gene, r.term, r.estimate, r.sd, z * r.sd, h.estimate, h.sd, z * h.sd))
    return pd.DataFrame(out, columns=["gene", "term", "estimate", "sd", "half_width",
                                      "estimate_ref", "sd_ref", "half_width_ref"])


@pytest.mark.parametrize("kind, level", [("group", 0.95), ("group", 0.5), ("contrast", 0.9)])
def test_effects_vs_reference_matches_a_hand_merge(tables, kind, level):
    tab, ref = tables
    got = glmm.effects_vs_reference(tab, ref, kind=kind, level=level)
    want = _by_hand(tab, ref, kind, level)
    assert len(got) == (8 if kind == "group" else 1)  # 9 pairs less (g2, NK); g9 unmatched
    pd.testing.assert_frame_equal(got.reset_index(drop=True), want)


def test_effects_vs_reference_errors(tables):
    tab, ref = tables
    with pytest.raises(KeyError, match="reference lacks.*'sd'"):
        glmm.effects_vs_reference(tab, ref.drop(columns="sd"))
    with pytest.raises(ValueError, match="level"):
        glmm.effects_vs_reference(tab, ref, level=1.0)
    with pytest.raises(ValueError, match="share no"):
        glmm.effects_vs_reference(tab.assign(gene="other"), ref)


def test_plot_draws_the_matched_table(tables):
    tab, ref = tables
    matched = glmm.effects_vs_reference(tab, ref)
    _, ax = plt.subplots()
    pl.effects_vs_reference(matched, what="sd", ax=ax)
    x, y = ax.collections[0].get_offsets().T
    assert np.array_equal(x, matched.sd_ref) and np.array_equal(y, matched.sd)
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("reference sd", "sd")
    _, ax = plt.subplots()
    pl.effects_vs_reference(matched, ax=ax, xlabel="lme4", ylabel="VEB")
    line = ax.lines[0]  # the errorbar's points
    assert np.array_equal(line.get_xdata(), matched.estimate_ref)
    assert np.array_equal(line.get_ydata(), matched.estimate)
    # y error bars span estimate ± half_width
    segs = [c for c in ax.collections if len(c.get_segments()) == len(matched)]
    spans = sorted(np.ptp([p[1] for p in s]) for s in segs[1].get_segments())
    assert np.allclose(spans, sorted(2 * matched.half_width))
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("lme4", "VEB")
    plt.close("all")


def test_plot_given_two_tables_draws_what_the_library_matched(tables):
    tab, ref = tables
    _, (a, b) = plt.subplots(1, 2)
    pl.effects_vs_reference(tab, ref, what="sd", ax=a, kind="contrast")
    pl.effects_vs_reference(glmm.effects_vs_reference(tab, ref, kind="contrast"), what="sd", ax=b)
    assert np.array_equal(a.collections[0].get_offsets(), b.collections[0].get_offsets())
    with pytest.raises(ValueError, match="what"):
        pl.effects_vs_reference(tab, ref, what="z")
    with pytest.raises(KeyError, match="half_width"):
        pl.effects_vs_reference(glmm.effects_vs_reference(tab, ref).drop(columns="half_width"))
    plt.close("all")


def _adata(n=40):
    rng = np.random.default_rng(0)
    a = ad.AnnData(np.ones((n, 3)), obs=pd.DataFrame({"label": rng.choice(["a", "b"], n),
                                                    "score": rng.normal(size=n)},
                                                   index=[f"c{i}" for i in range(n)]))
    a.obsm["X_umap"] = rng.normal(size=(n, 2))
    a.obsm["X_topics"] = rng.dirichlet(np.ones(3), size=n)
    return a


@pytest.mark.parametrize("color", ["label", "score"])
def test_embedding_draws_every_cell_labelled_by_the_slot(color):
    a = _adata()
    ax = pl.embedding(a, "X_umap", color)
    assert len(ax.collections[0].get_offsets()) == a.n_obs
    assert ax.get_xlabel() == f"{slot_keys('X_umap')['base'].upper()} 1" == "UMAP 1"
    plt.close("all")


def test_missing_keys_are_named():
    a = _adata()
    with pytest.raises(KeyError, match="obsm key 'X_nope'.*X_umap"):
        pl.embedding(a, "X_nope", "label")
    with pytest.raises(KeyError, match="obs key 'nope'.*label"):
        pl.embedding(a, "X_umap", "nope")
    with pytest.raises(KeyError, match="obsm key 'X_nope'"):
        pl.structure_plot(a, basis="X_nope")
    with pytest.raises(KeyError, match="obs key 'nope'"):
        pl.structure_plot(a, groupby="nope")
    plt.close("all")


def test_slot_keys_live_below_tl_and_tl_reexports_them():
    from scnotes.tl import _front

    assert _front.slot_keys is slot_keys
    k = slot_keys("X_ldvae", varm="{base}", proba="{key}_proba")
    assert k == dict(uns="X_ldvae", obsm="X_ldvae", base="ldvae", varm="ldvae", proba="X_ldvae_proba")
    assert slot_keys("latent")["base"] == "latent"


def test_table_plots_name_the_missing_columns():
    history = pd.DataFrame({"epoch": [0, 1], "loss": [2.0, 1.0]})
    ax = pl.training_curves(history)
    assert np.array_equal(ax.lines[0].get_ydata(), [2.0, 1.0])
    with pytest.raises(KeyError, match="training_curves.*'validation_loss'"):
        pl.training_curves(history, columns=["loss", "validation_loss"])
    table = pd.DataFrame({"estimate": [1.0, -1.0, 0.5], "p": [1e-3, 0.5, np.nan]})
    ax = pl.volcano(table)
    assert sum(len(c.get_offsets()) for c in ax.collections) == 2  # the row without p is left out
    with pytest.raises(KeyError, match="volcano.*'lfsr'"):
        pl.volcano(table, p="lfsr")
    plt.close("all")


def test_effects_across_seeds_draws_each_fit_minus_the_reference():
    est = np.array([[1.0, 2.0, 3.0], [1.5, 2.5, 2.0]])
    ref, se = np.array([1.0, 2.0, 2.5]), np.array([0.1, 0.2, 0.3])
    ax = pl.effects_across_seeds(est, ref, se, ["B", "T", "NK"], seed=4, ref_label="lme4", ylabel="VEB − ref",
                                 title="t")
    dots = ax.collections[:3]
    for g, c in enumerate(dots):  # one column of dots per group, at the group ± jitter, y = fit − reference
        xy = c.get_offsets()
        assert np.allclose(xy[:, 1], est[:, g] - ref[g]) and np.all(np.abs(xy[:, 0] - g) < 0.5)
    jitter = np.concatenate([c.get_offsets()[:, 0] for c in dots])
    again = pl.effects_across_seeds(est, ref, se, ["B", "T", "NK"], seed=4)
    assert np.array_equal(jitter, np.concatenate([c.get_offsets()[:, 0] for c in again.collections[:3]]))
    bars = ax.containers[0].lines[2][0].get_segments()  # the ±1 SE bars, centred on 0
    assert np.allclose([s[:, 1] for s in bars], np.column_stack([-se, se]))
    assert [t.get_text() for t in ax.get_xticklabels()] == ["B", "T", "NK"]
    assert ax.get_ylabel() == "VEB − ref" and ax.get_title() == "t"
    assert ax.get_legend().get_texts()[0].get_text() == "±1 lme4 SE"
    with pytest.raises(ValueError, match="3 groups but reference 2"):
        pl.effects_across_seeds(est, ref[:2], se, ["B", "T", "NK"])
    with pytest.raises(ValueError, match="n_fits, n_groups"):
        pl.effects_across_seeds(est[0], ref, se, ["B", "T", "NK"])
    plt.close("all")


def test_correlation_matrix_draws_the_matrix_on_a_fixed_scale():
    cov = np.array([[2.0, -0.8], [-0.8, 1.0]])
    corr = cov / np.sqrt(np.outer(np.diag(cov), np.diag(cov)))
    ax = pl.correlation_matrix(corr, title="q", xlabel="b | u", ylabel="b | u")
    im = ax.get_images()[0]
    assert np.array_equal(im.get_array(), corr) and im.get_clim() == (-1, 1)
    assert ax.get_title() == "q" and ax.get_xlabel() == "b | u" and len(ax.figure.axes) == 2  # + colour bar
    with pytest.raises(ValueError, match="not a covariance"):
        pl.correlation_matrix(cov)
    with pytest.raises(ValueError, match="square"):
        pl.correlation_matrix(np.zeros((2, 3)))
    plt.close("all")


def test_scales_vs_reference_draws_the_points_and_the_identity_from_zero():
    values, ref = np.array([0.2, 0.5, np.nan]), np.array([0.3, 0.4, 0.1])
    ax = pl.scales_vs_reference(values, ref, xlabel="lme4 sigma_u", ylabel="VEB sigma_u", title="donor sd")
    assert np.allclose(ax.collections[0].get_offsets(), np.column_stack([ref, values]), equal_nan=True)
    line = ax.lines[0]
    assert np.allclose(line.get_xdata(), [0, 0.5 * 1.05]) and np.allclose(line.get_ydata(), line.get_xdata())
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == ("lme4 sigma_u", "VEB sigma_u", "donor sd")
    with pytest.raises(ValueError, match="3 values but 2"):
        pl.scales_vs_reference(values, ref[:2])
    with pytest.raises(ValueError, match="non-negative"):
        pl.scales_vs_reference(-values, ref)
    plt.close("all")


def test_volcano_grid_draws_one_volcano_per_group():
    rng = np.random.default_rng(0)
    con = pd.DataFrame({"gene": [f"g{i}" for i in range(12)], "cell_type": ["B", "T", "NK"] * 4,
                        "estimate": rng.normal(size=12), "lfsr": rng.uniform(0, 1, 12)})
    fig = pl.volcano_grid(con, groups=["T", "B", "NK"], p="lfsr", label="gene", xlabel="log fold change",
                          ncols=2)
    shown = [a for a in fig.axes if a.get_visible()]
    assert [a.get_title() for a in shown] == ["T", "B", "NK"] and len(fig.axes) == 4  # 2 × 2, one hidden
    for a, g in zip(shown, ["T", "B", "NK"]):
        part = con[con.cell_type == g]
        xs = np.concatenate([c.get_offsets()[:, 0] for c in a.collections])
        assert np.allclose(np.sort(xs), np.sort(part.estimate)) and a.get_xlabel() == "log fold change"
    assert [a.get_title() for a in pl.volcano_grid(con, p="lfsr").axes] == ["B", "T", "NK"]
    with pytest.raises(KeyError, match="volcano_grid.*'p'"):
        pl.volcano_grid(con)
    with pytest.raises(ValueError, match="no group"):
        pl.volcano_grid(con, p="lfsr", groups=[])
    plt.close("all")
