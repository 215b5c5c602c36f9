"""The contract of every ``scnotes.tl`` front (DEVELOPING.md, "The contract every model family
follows"; ``scnotes/tl/_front.py``): the shared keywords by name with one default, the call in
``uns[key_added]["params"]``, ``copy=True`` leaving the input alone, the returned model's outputs
equal to the slots, ``tl.glmm`` returning its model; older names still accepted with a warning."""
import inspect
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import scnotes
import scnotes.tl as tl
from scnotes.tl._front import SHARED

# The shared keywords that apply to each front (MNN trains nothing: only the seed of its search).
TRAINED = ("max_epochs", "batch_size", "seed", "device", "progress")
FRONTS = {
    "pvae": ("n_latent",) + TRAINED, "nbvae": ("n_latent",) + TRAINED, "zinbvae": ("n_latent",) + TRAINED,
    "ldvae": ("n_latent",) + TRAINED, "gmvae": ("n_latent",) + TRAINED,
    "nmf": ("n_components", "max_epochs", "seed", "progress"),
    "glmm": TRAINED, "mnn": ("seed",),
}
VAE = dict(hidden_dim=8, max_epochs=2, n_samples=1)


@pytest.mark.parametrize("front", sorted(FRONTS))
def test_shared_keywords_by_name_with_one_default(front):
    params = inspect.signature(getattr(tl, front)).parameters
    for name in FRONTS[front]:
        assert name in params, f"tl.{front} lacks the keyword {name}"
        assert params[name].default == SHARED[name], (front, name, params[name].default)
    assert params["copy"].default is False
    assert "latent_dim" not in params and "return_model" not in params or front == "glmm"


@pytest.mark.parametrize("front", ["pvae", "nbvae", "zinbvae", "ldvae", "gmvae"])
def test_vae_fronts_share_one_signature_order(front):
    params = list(inspect.signature(getattr(tl, front)).parameters.values())
    first = "n_clusters" if front == "gmvae" else "n_latent"
    assert [p.name for p in params[:7]] == ["adata", first, "layer", "batch_key", "covariate_keys",
                                            "size_factor_key", "key_added"]
    assert params[1].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    assert all(p.kind in (p.KEYWORD_ONLY, p.VAR_KEYWORD) for p in params[2:]), front
    assert all(p.default is None for p in params[2:6]), front  # layer=None: adata.X, as every front
    assert params[6].default == "X_" + front


def test_settings_progress_is_off_when_not_interactive(monkeypatch):
    monkeypatch.delenv("SCNOTES_PROGRESS", raising=False)
    monkeypatch.setenv("CI", "1")
    assert scnotes.settings.progress is False  # a CI log / pytest: no bars
    monkeypatch.setenv("SCNOTES_PROGRESS", "1")
    assert scnotes.settings.progress is True
    try:
        scnotes.settings.progress = False
        assert scnotes.settings.progress is False
        with pytest.raises(TypeError):
            scnotes.settings.progress = "yes"
    finally:
        scnotes.settings.progress = None
    from scnotes._settings import resolve_progress
    assert resolve_progress(True) is True and resolve_progress(None) is True  # the env says on


@pytest.fixture(scope="module")
def counts():
    rng = np.random.default_rng(0)
    n, p = 48, 12
    lam = rng.gamma(2.0, 1.0, size=(n, 1)) * rng.gamma(2.0, 1.0, size=(1, p))
    x = rng.poisson(lam + 0.5).astype(np.float32)
    x[:, 0] += 1  # no empty gene
    obs = pd.DataFrame({"batch": pd.Categorical(np.where(np.arange(n) % 2, "b", "a"))},
                       index=[f"c{i}" for i in range(n)])
    a = ad.AnnData(X=sp.csr_matrix(x), obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(p)]))
    a.layers["counts"] = a.X.copy()
    return a


def _same(a, b):
    assert a.uns.keys() == b.uns.keys() and a.obsm.keys() == b.obsm.keys()
    assert a.varm.keys() == b.varm.keys() and a.layers.keys() == b.layers.keys()
    x, y = (m.toarray() if sp.issparse(m) else np.asarray(m) for m in (a.X, b.X))
    assert a.obs.equals(b.obs) and np.array_equal(x, y)


@pytest.mark.parametrize("front", ["pvae", "nbvae", "zinbvae", "ldvae", "gmvae"])
def test_vae_fronts(counts, front):
    kw = dict(n_latent=2, batch_key="batch", seed=3, layer="counts", **VAE)
    if front == "gmvae":
        kw.update(n_clusters=2, pretrain_epochs=1, batch_size=16)
    before = counts.copy()
    out, model = getattr(tl, front)(counts, key_added="X_k", copy=True, **kw)
    _same(counts, before)  # copy=True left the input unchanged
    rec = out.uns["X_k"]
    assert rec["model"] == type(model).__name__
    for k in ("n_latent", "seed", "max_epochs", "batch_key", "layer", "hidden_dim"):
        assert rec["params"][k] == kw[k], k
    assert model.seed == 3 and model.n_latent == 2
    assert list(model.var_names_) == list(counts.var_names)
    x = counts.layers["counts"]
    np.testing.assert_allclose(out.obsm["X_k"], model.latent(x, covariates=tl.model_inputs(model, counts)[1]))
    if front == "ldvae":
        np.testing.assert_allclose(out.varm[rec["varm_key"]], model.get_loadings().to_numpy())
    if front == "gmvae":
        assert out.obs[rec["cluster_key"]].cat.categories.tolist() == ["0", "1"]


def test_vae_older_names_warn_and_give_the_same_fit(counts):
    a1, a2 = counts.copy(), counts.copy()
    m1 = tl.pvae(a1, n_latent=2, seed=1, hidden_dim=8, max_epochs=2)
    with pytest.warns(DeprecationWarning, match="latent_dim"):
        with pytest.warns(DeprecationWarning, match="model_kwargs"):
            m2 = tl.pvae(a2, latent_dim=2, model_kwargs=dict(seed=1, hidden_dim=8), max_epochs=2)
    np.testing.assert_array_equal(a1.obsm["X_pvae"], a2.obsm["X_pvae"])
    assert m2.seed == 1 and a2.uns["X_pvae"]["params"] == a1.uns["X_pvae"]["params"]
    with pytest.raises(TypeError, match="n_latent"):
        tl.pvae(counts.copy(), n_latent=3, latent_dim=2, max_epochs=1)


def test_fronts_refuse_bad_counts_by_name(counts):
    a = counts.copy()
    a.layers["bad"] = a.layers["counts"].copy()
    a.layers["bad"].data[0] = 0.5
    with pytest.raises(ValueError, match="integer"):
        tl.pvae(a, layer="bad", max_epochs=1)
    with pytest.raises(KeyError, match="nope"):
        tl.nmf(a, layer="nope")
    a.obs["s"] = 0.0
    with pytest.raises(ValueError, match="size_factor"):
        tl.nbvae(a, size_factor_key="s", max_epochs=1)


def test_nmf_front(counts):
    before = counts.copy()
    out, model = tl.nmf(counts, n_components=2, layer="counts", max_epochs=5, seed=2, copy=True)
    _same(counts, before)
    rec = out.uns["X_nmf"]
    assert rec["params"]["n_components"] == 2 and rec["params"]["max_epochs"] == 5 and rec["params"]["seed"] == 2
    assert rec["model"] == "PoissonNMF"
    np.testing.assert_array_equal(out.obsm["X_nmf"], model.L_)
    np.testing.assert_array_equal(out.varm["nmf"], model.F_)
    np.testing.assert_allclose(out.obsm["X_topics"], model.topics().proportions)
    with pytest.warns(DeprecationWarning, match="max_iter"):
        tl.nmf(counts.copy(), n_components=2, max_iter=3)


def test_mnn_front(counts):
    a = counts.copy()
    a.X = np.log1p(a.layers["counts"].toarray())
    before = a.copy()
    out, res = tl.mnn(a, "batch", n_neighbors=5, seed=4, copy=True)
    _same(a, before)
    rec = out.uns["mnn"]
    assert rec["params"]["n_neighbors"] == 5 and rec["params"]["seed"] == 4 and rec["model"] == "MNNResult"
    np.testing.assert_array_equal(out.layers["mnn"], res.corrected)
    back = scnotes.mnn.MNNResult.from_adata(out, "mnn")
    np.testing.assert_array_equal(back.corrected, res.corrected)


def test_glmm_returns_its_model_and_its_table_is_the_record():
    from scnotes import glmm

    a = glmm.simulate_nb_glmm(n_donors=3, n_cells=15, n_genes=4, n_cell_types=1, seed=1)
    before = a.copy()
    out, model = tl.glmm(a, condition_key="condition", reference="ctrl", method="nb",
                         size_factor_key="total_counts", max_epochs=5, seed=2, copy=True)
    assert "glmm" not in a.uns and a.obs.equals(before.obs)
    assert isinstance(model, glmm.NBGLMMVEB)
    rec = out.uns["glmm"]
    assert rec["params"]["max_epochs"] == 5 and rec["params"]["seed"] == 2 and rec["params"]["method"] == "nb"
    assert rec["model"] == "NBGLMMVEB"
    pd.testing.assert_frame_equal(model.summary(), rec["results"])
    with pytest.warns(DeprecationWarning, match="return_model"):
        m = tl.glmm(a, condition_key="condition", reference="ctrl", method="nb",
                    size_factor_key="total_counts", max_epochs=5, seed=2, return_model=True)
    assert isinstance(m, glmm.NBGLMMVEB)
    pd.testing.assert_frame_equal(m.summary(), rec["results"])
    with pytest.raises(ValueError, match="batch_size"):
        tl.glmm(a, condition_key="condition", method="nb", batch_size=8)


def test_volcano_default_columns_draw_a_glmm_table():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tab = pd.DataFrame({"gene": list("abcd"), "kind": ["group", "contrast", "contrast", "contrast"],
                        "estimate": [1.0, 0.5, -2.0, 0.1], "p": [np.nan, 0.2, 1e-5, 0.9]})
    ax = scnotes.pl.volcano(tab, label="gene")  # p= left out: the tidy table's "p"
    assert ax.get_ylabel() == "−log10 p"
    assert sum(len(c.get_offsets()) for c in ax.collections) == 3  # the group row (no p) left out
    with pytest.raises(KeyError, match="p_value"):
        scnotes.pl.volcano(tab, p="p_value")
    plt.close("all")


def test_no_family_metric_or_plot_module_imports_tl():
    """Layering: tl (the fronts) sits above the families, metrics and pl; nothing below it
    imports it (a family's record goes through scnotes._record, score names live in metrics)."""
    import pathlib
    import re

    root = pathlib.Path(scnotes.__file__).parent
    pattern = re.compile(r"^\s*(from\s+(\.\.|scnotes\.)tl\b|from\s+\.\.\s+import\s+.*\btl\b|import\s+scnotes\.tl\b)",
                         re.M)
    offenders = [str(p.relative_to(root)) for p in root.rglob("*.py")
                 if p.parts[len(root.parts)] not in ("tl", "cli.py", "_render.py")
                 and pattern.search(p.read_text())]
    assert offenders == []


def test_vae_owns_its_fitted_state_from_fit(counts, tmp_path):
    """The genes and covariate categories are the estimator's own fitted state, set by ``fit``
    (review E6/A6): a fit on arrays with ``var_names`` / ``covariate_registry`` is the front's fit."""
    from scnotes.vae import NBVAE

    a = counts.copy()
    front = tl.nbvae(a, n_latent=2, batch_key="batch", seed=1, **VAE)
    x, c = a.X, tl.model_inputs(front, a)[1]
    reg = [("batch", ["a", "b"])]
    m = NBVAE(x.shape[1], n_latent=2, n_covariates=2, n_batches=2, seed=1, hidden_dim=8)
    m.fit(x, covariates=c, var_names=a.var_names, covariate_registry=reg, max_epochs=2, n_samples=1)
    assert list(m.var_names_) == list(a.var_names) and m.covariate_registry_ == reg
    assert m.covariate_names_ == ["batch=a", "batch=b"] == front.covariate_names_
    np.testing.assert_array_equal(m.latent(x, covariates=c), a.obsm["X_nbvae"])  # the front's fit, nothing more
    m.save(tmp_path / "m.pt")
    back = NBVAE.load(tmp_path / "m.pt")
    assert list(back.var_names_) == list(a.var_names) and back.covariate_registry_ == reg
    assert back.covariate_names_ == m.covariate_names_
    m.fit(x, covariates=c, max_epochs=1, n_samples=1)  # a refit on arrays: the genes are unknown again
    assert m.var_names_ is None and m.covariate_registry_ is None and m.covariate_names_ is None
    with pytest.raises(ValueError, match="var_names"):
        m.fit(x, covariates=c, var_names=a.var_names[:-1], max_epochs=1)
    with pytest.raises(ValueError, match="n_covariates=2"):
        m.fit(x, covariates=c, covariate_registry=[("batch", ["a", "b", "c"])], max_epochs=1)
    with pytest.raises(ValueError, match="n_batches=2"):  # the batch block comes first
        NBVAE(x.shape[1], n_covariates=3, n_batches=2).fit(
            x, covariates=np.c_[c, np.ones(len(c))], covariate_registry=[("k", ["u"]), ("batch", ["a", "b"])],
            max_epochs=1)


@pytest.mark.parametrize("front", ["pvae", "gmvae"])
def test_a_front_validates_the_counts_once(counts, front, monkeypatch):
    """setup validates; fit, latent (and GMVAE's predict_proba) trust it (review S1-5). A direct
    call still validates: bad counts raise from the estimator."""
    import scnotes._checks as checks
    import scnotes.vae._model as model_module
    from scnotes.vae import PVAE

    calls = []
    real = checks.check_counts

    def counting(*args, **kw):
        calls.append(kw.get("name"))
        return real(*args, **kw)

    monkeypatch.setattr(checks, "check_counts", counting)
    monkeypatch.setattr(model_module, "check_counts", counting)
    kw = dict(n_clusters=2, pretrain_epochs=0, batch_size=16) if front == "gmvae" else {}
    getattr(tl, front)(counts.copy(), n_latent=2, **VAE, **kw)
    # neither fit nor the outputs the front writes (latent; GMVAE's predict_proba) check again
    assert calls == ["adata.X"]
    bad = counts.X.toarray()
    bad[0, 0] = 0.5
    with pytest.raises(ValueError, match="integer"):
        PVAE(bad.shape[1], hidden_dim=8).fit(bad, max_epochs=1)
    m = getattr(tl, front)(counts.copy(), n_latent=2, **VAE, **kw)
    outputs = [m.latent] + ([m.predict_proba, m.latent_w] if front == "gmvae" else [])
    for output in outputs:  # a direct call validates
        with pytest.raises(ValueError, match="integer"):
            output(bad)


def test_nmf_project_follows_the_front_contract(counts):
    """tl.nmf_project writes its slots, records the call and returns the model (review T3)."""
    model = tl.nmf(counts.copy(), n_components=2, max_epochs=5, seed=2)
    new = counts[:20].copy()
    before = new.copy()
    out, same = tl.nmf_project(new, model, key_added="X_proj", max_epochs=7, copy=True)
    _same(new, before)  # copy=True left the input unchanged
    assert same is model
    np.testing.assert_allclose(out.obsm["X_proj"], model.transform(new.X, max_epochs=7))
    rec = out.uns["X_proj"]
    assert rec["model"] == "PoissonNMF" and rec["params"]["projected"] and rec["params"]["max_epochs"] == 7
    assert rec["slots"]["obsm"] == ["X_proj", "X_proj_topics"] and rec["slots"]["obs"] == ["proj_topics_scale"]
    np.testing.assert_allclose(out.obsm["X_proj_topics"].sum(1), 1)
    assert tl.nmf_project(new, model, key_added="X_proj", topics=False) is model
    assert list(new.obsm) == ["X_proj"] and new.uns["X_proj"]["slots"]["obs"] == []


def test_nmf_loglik_names_say_what_they_are():
    """scnotes.nmf's factor log-likelihoods no longer share metrics' names (review N11); the
    older names still work, with a DeprecationWarning, and equal metrics' total on L Fᵀ."""
    import scnotes.nmf as nmf
    from scnotes import metrics

    rng = np.random.default_rng(1)
    L, F = rng.gamma(1.0, 1.0, (6, 2)), rng.gamma(1.0, 1.0, (5, 2))
    x = rng.poisson(L @ F.T).astype(float)
    total = nmf.poisson_nmf_loglik(x, L, F)
    assert total == pytest.approx(metrics.poisson_loglik(x, L @ F.T, per="total"), rel=1e-12)
    assert nmf.nbmf_loglik(x, L, F, 2.0) == pytest.approx(metrics.nb_loglik(x, L @ F.T, 2.0, per="total"),
                                                          rel=1e-10)
    for old, new in (("poisson_loglik", "poisson_nmf_loglik"), ("nb_loglik", "nbmf_loglik")):
        with pytest.warns(DeprecationWarning, match=new):
            assert getattr(nmf, old) is getattr(nmf, new)
        assert old not in nmf.__all__
    with pytest.raises(AttributeError):
        getattr(nmf, "no_such_name")


def test_nmf_owns_its_genes_through_fit():
    """PoissonNMF / NBMF set var_names_ from fit(..., var_names=); the front's model equals an
    array fit given the same names; a wrong length is refused."""
    from scnotes.nmf import NBMF, PoissonNMF

    rng = np.random.default_rng(0)
    x = rng.poisson(2.0, size=(40, 12)).astype(float)
    names = [f"g{j}" for j in range(12)]
    for cls in (PoissonNMF, NBMF):
        m = cls(2, max_epochs=3, seed=0).fit(x, var_names=names)
        assert list(m.var_names_) == names
        assert cls(2, max_epochs=3, seed=0).fit(x).var_names_ is None
        with pytest.raises(ValueError, match="var_names"):
            cls(2, max_epochs=3, seed=0).fit(x, var_names=names[:5])
    a = ad.AnnData(X=x.copy())
    a.var_names = names
    front = scnotes.tl.nmf(a, n_components=2, max_epochs=3, seed=0)
    direct = PoissonNMF(2, max_epochs=3, seed=0).fit(x, var_names=names)
    np.testing.assert_array_equal(front.L_, direct.L_)
    assert list(front.var_names_) == names
