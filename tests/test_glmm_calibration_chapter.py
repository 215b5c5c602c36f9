"""The calibration chapter: follows the book's rules, executes end to end at small sizes (R
references skipped or live), reruns on foreign files with only its documented parameters, and
refuses a misspelt parameter by name; the figures it draws (``scnotes.pl``'s DE plots) draw the
evaluation tables of ``scnotes.glmm``."""
import numpy as np
import pandas as pd
import pytest
from _chapter_checks import (
    check_executed,
    check_rendered,
    check_source,
    report_prose,
    text_outputs,
)

from scnotes import glmm

# Small sizes: every experiment runs, on a few genes and cells.
BOOK_ONLY = ["kang2018_ctrl_8donors", "kang2018_ifnb_3donors_100genes", "Kang et al", "eight donors"]

SMALL = {"n_splits": 1, "power_b_splits": 1, "null_n_types": 3, "null_genes": 20, "null_max_cells": 600, "pos_max_cells": 600,
         "sim_genes": 30, "sim_cells": 20, "max_epochs": 30, "glmmtmb_genes": 0, "glmmtmb_sim_genes": 0,
         "min_cells": 3}
NB, WILC = "NB GLMM", "Wilcoxon (cells)"


def _run(tmp_path, params, name):
    from scnotes.cli import run_chapter

    out = run_chapter("glmm_calibration", params, output=tmp_path / name)
    glued = check_executed(out, "glmm_calibration")
    return glued, text_outputs(out)


def test_calibration_chapter_source_follows_the_book_rules():
    check_source("glmm_calibration")


@pytest.mark.slow  # papermill kernel start-up and two NB GLMM fits per experiment
def test_calibration_chapter_runs_small_without_r(tmp_path, have_data):
    glued, text = _run(tmp_path, {**SMALL, "use_r": False}, "cal.ipynb")
    assert NB in text and "NB GLMM, per-gene variances" in text and WILC in text and "Poisson GLMM" in text
    assert "pseudobulk edgeR" not in text and "glmmTMB" not in text
    assert "NaN" not in text  # tables print "–" where a value does not apply
    # every null is scored per cell type: the real nulls' three cell types, the simulations' three
    assert glued["n_null_types"] == "3" and glued["null_designs"].strip("'") == "4 vs 4 and 3 vs 3"
    assert glued["d_sw"].strip("'") == "0.05, 0.15, 0.35" and "type2" in glued["pa_type_power"]
    assert int(glued["n_checks"]) == 2 * 3 + 1 + 3 + 1  # null A: 2 designs × 3 types; C; D: 3 types; E
    assert glued["pos_ifn_absent"].strip("'") == "IFI6, MX1"


@pytest.mark.slow
@pytest.mark.needs_r
@pytest.mark.skipif(not (glmm.r_package_available("edgeR") and glmm.r_package_available("DESeq2")
                         and glmm.r_package_available("glmmTMB")),
                    reason="R with edgeR, DESeq2 and glmmTMB not found: " + glmm.R_INSTALL_HINTS["edgeR"])
def test_calibration_chapter_runs_small_with_r(tmp_path, have_data):
    glued, text = _run(tmp_path, {**SMALL, "glmmtmb_genes": 1, "glmmtmb_sim_genes": 2}, "cal_r.ipynb")
    for name in ("pseudobulk edgeR", "pseudobulk DESeq2", "pseudobulk limma-voom", "pseudobulk glmGamPoi",
                 "glmmTMB (NB, Wald)"):
        assert name in text, name
    assert "of its 2 tests" in glued["c_tmb"]  # glmmTMB on the first two genes of null C
    assert glued["tmb_per_gene"] != "'n/a'"
    assert glued["pos_ifn_absent"].strip("'") == "IFI6, MX1"  # asked for, not among the file's 100 genes


def _foreign_null(path, n_donors=6, n_types=3, per=40, n_genes=30, seed=0):
    """A control-only file unlike the book's: counts in layers["raw"] (X log-normalised),
    obs "patient" / "celltype", no totals column, a few missing labels."""
    import anndata as ad
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    rows = [(f"P{d}", f"type {c}") for d in range(n_donors) for c in range(n_types) for _ in range(per)]
    obs = pd.DataFrame(rows, columns=["patient", "celltype"], dtype=object)
    obs.index = [f"bc{i}" for i in range(len(obs))]
    base = rng.normal(-7.0, 0.8, (n_types, n_genes))  # UMI-like: most non-zero counts are 1
    u = rng.normal(0, 0.3, (n_donors, n_genes))
    d = obs["patient"].str[1:].astype(int).to_numpy()
    c = obs["celltype"].str[-1].astype(int).to_numpy()
    lib = rng.integers(800, 3000, len(obs))
    mu = lib[:, None] * np.exp(base[c] + u[d])
    counts = rng.poisson(rng.gamma(3.0, mu / 3.0)).astype(np.float32)
    obs.loc[obs.index[:2], "celltype"] = None
    obs.loc[obs.index[2:4], "patient"] = None
    x = sp.csr_matrix(counts)
    norm = sp.csr_matrix(np.log1p(counts / np.maximum(counts.sum(1, keepdims=True), 1) * 1e4))
    a = ad.AnnData(X=norm, obs=obs, var=pd.DataFrame(index=[f"G{j}" for j in range(n_genes)]),
                   layers={"raw": x})
    a.write_h5ad(path)
    return path


def test_calibration_chapter_reruns_on_foreign_files(tmp_path):
    """A control-only file and a ctrl/stim file (the GLMM chapter's foreign file) with other column
    names, counts in a layer, no totals column and missing labels; R references off for speed."""
    from test_glmm_chapter import foreign_adata

    null_path = _foreign_null(tmp_path / "my_controls.h5ad")
    pos_path = tmp_path / "my_stim.h5ad"
    foreign_adata(n_cells=240, n_genes=20, n_types=4).write_h5ad(pos_path)
    params = {**SMALL, "null_dataset": str(null_path), "pos_dataset": str(pos_path), "layer": "raw",
              "donor_key": "patient", "cell_type_key": "celltype", "condition_key": "stim",
              "reference": "untreated", "ifn_genes": "G0,G1,G2,NOT_A_GENE", "use_r": False}
    glued, text = _run(tmp_path, params, "foreign.ipynb")
    assert "dropped 4 cell(s)" in text and "dropped 5 cell(s)" in text  # missing labels, counts printed
    assert glued["n_null_donors"] == "6" and glued["n_null_types"] == "3"
    assert glued["pos_ifn_absent"].strip("'") == "NOT_A_GENE"
    prose = " ".join(report_prose(check_rendered(tmp_path / "foreign.ipynb", book_only=BOOK_ONLY)).split())
    # the design table and the positive control name the reader's files; glmmTMB did not run
    assert "my_controls.h5ad" in prose and "my_stim.h5ad" in prose
    assert "NOT_A_GENE are not among the file" in prose and "did not run on a positive control" in prose


def test_calibration_chapter_reruns_without_positive_control(tmp_path):
    null_path = _foreign_null(tmp_path / "ctrl.h5ad", n_donors=4, n_types=2, per=25, n_genes=12)
    params = {**SMALL, "null_dataset": str(null_path), "pos_dataset": None, "layer": "raw",
              "donor_key": "patient", "cell_type_key": "celltype", "use_r": False}
    glued, text = _run(tmp_path, params, "nopos.ipynb")
    assert "positive control skipped" in text
    assert glued["n_null_donors"] == "4" and glued["null_designs"].strip("'") == "2 vs 2"  # no 3 vs 3 of 4 donors
    assert "pos_cells" not in glued  # the skipped positive control glues no values ...
    prose = " ".join(report_prose(check_rendered(tmp_path / "nopos.ipynb", book_only=BOOK_ONLY)).split())
    # ... and its paragraphs are left out: no share called, no timing, the table's row says skipped
    assert "positive control is skipped" in prose
    assert "largest cell types with enough cells in both conditions" not in prose and "genes at once" not in prose


def test_calibration_chapter_misspelt_parameter_names_it():
    from scnotes.cli import run_chapter

    with pytest.raises(ValueError, match="unknown parameter 'max_epoch'.*did you mean 'max_epochs'"):
        run_chapter("glmm_calibration", {"max_epoch": 3})


def test_calibration_chapter_missing_key_names_the_parameter(tmp_path):
    import papermill

    from scnotes.cli import run_chapter

    path = _foreign_null(tmp_path / "ctrl.h5ad", n_donors=4, n_types=2, per=10, n_genes=8)
    params = {**SMALL, "null_dataset": str(path), "pos_dataset": None, "layer": "raw", "donor_key": "donor",
              "cell_type_key": "celltype", "use_r": False}
    with pytest.raises(papermill.PapermillExecutionError, match="donor_key"):
        run_chapter("glmm_calibration", params, output=tmp_path / "missing.ipynb")


def _de_tables(seed=0):
    """Two methods' tidy tables on a small null plus DE design (the columns the evaluations read)."""
    rng = np.random.default_rng(seed)
    rows = []
    for method, scale in (("calibrated", 1.0), ("too narrow", 0.5)):
        for ct in ("A", "B"):
            est = rng.normal(0, 1, 60)
            est[:10] += 4.0  # the first ten genes are DE
            sd = np.full(60, scale)
            t = est / sd
            from scipy import stats

            p = 2 * stats.t.sf(np.abs(t), 8)
            rows.append(pd.DataFrame({"gene": [f"g{j}" for j in range(60)], "kind": "contrast", "cell_type": ct,
                                      "estimate": est, "sd": sd, "lower": est - 2.3 * sd, "upper": est + 2.3 * sd,
                                      "df": 8.0, "p": p, "lfsr": p / 2, "q": glmm.bh_qvalues(p), "method": method}))
    return pd.concat(rows, ignore_index=True)


def test_de_plots_draw_the_evaluation_tables():
    """scnotes.pl's DE figures take the tables of scnotes.glmm's evaluation functions as they come."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import scnotes

    tab = _de_tables()
    truth = pd.Series(np.r_[np.full(10, 1.0), np.zeros(50)], index=[f"g{j}" for j in range(60)])
    null = tab[~tab.gene.isin(truth.index[:10])]
    cal = glmm.null_calibration(null)
    fig, axes = plt.subplots(1, 6)
    ax = scnotes.pl.null_calibration_dots(cal, band=(0.02, 0.08), ax=axes[0], title="null")
    assert ax is axes[0] and [t.get_text() for t in ax.get_yticklabels()] == ["too narrow", "calibrated"]
    pts = {m: glmm.qq_points(d.estimate / d.sd, d.df) for m, d in null.groupby("method")}
    assert scnotes.pl.qq_panel(pts, ax=axes[1]) is axes[1]
    assert len(axes[1].lines) == 3  # two methods and the diagonal
    scnotes.pl.qq_panel({m: glmm.p_qq_points(d.p) for m, d in null.groupby("method")}, ax=axes[2])
    curves, summary = glmm.roc_pr(tab, truth)
    for ax, kind in ((axes[3], "roc"), (axes[4], "pr")):
        scnotes.pl.roc_pr_curves(curves, kind, summary=summary, ax=ax)
        assert {t.get_text().split(" (")[0] for t in ax.get_legend().get_texts()} == {"calibrated", "too narrow"}
    pf = glmm.power_fdr(tab, truth, by="cell_type")
    scnotes.pl.power_fdr_points(pf, fdr=0.05, ax=axes[5])
    assert len([ln for ln in axes[5].lines if ln.get_marker() == "o"]) == 2  # one point per method, "all" rows
    with pytest.raises(ValueError, match="curve"):
        scnotes.pl.roc_pr_curves(curves, "auc")
    with pytest.raises(KeyError, match="share_x"):
        scnotes.pl.null_calibration_dots(cal, metric="share_x")
    plt.close("all")
