"""The calibration chapter: follows the book's rules, executes end to end at small sizes (R
references skipped or live), reruns on foreign files with only its documented parameters, and
refuses a misspelt parameter by name."""
import numpy as np
import pandas as pd
import pytest
from _chapter_checks import check_executed, check_source, text_outputs

from scnotes import glmm

# Small sizes: every experiment runs, on a few genes and cells.
SMALL = {"n_splits": 1, "null_genes": 5, "null_max_cells": 600, "pos_max_cells": 600, "sim_genes": 20,
         "sim_cells": 30, "nb_epochs": 30, "glmmtmb_genes": 0, "glmmtmb_sim_genes": 0, "min_cells": 3}


def _run(tmp_path, params, name):
    from scnotes.cli import run_chapter

    out = run_chapter("glmm_calibration", params, output=tmp_path / name)
    glued = check_executed(out, "glmm_calibration")
    return glued, text_outputs(out)


def test_calibration_chapter_source_follows_the_book_rules():
    check_source("glmm_calibration")


@pytest.mark.slow  # papermill kernel start-up and five small fits per experiment
def test_calibration_chapter_runs_small_without_r(tmp_path, have_data):
    glued, text = _run(tmp_path, {**SMALL, "use_r": False}, "cal.ipynb")
    assert "NB GLMM VEB" in text and "Wilcoxon (cells)" in text and "power" in text
    assert "pseudobulk edgeR" not in text
    assert "NaN" not in text  # tables print "–" where a value does not apply


@pytest.mark.slow
@pytest.mark.needs_r
@pytest.mark.skipif(not (glmm.r_package_available("edgeR") and glmm.r_package_available("DESeq2")
                         and glmm.r_package_available("glmmTMB")),
                    reason="R with edgeR, DESeq2 and glmmTMB not found: " + glmm.R_INSTALL_HINTS["edgeR"])
def test_calibration_chapter_runs_small_with_r(tmp_path, have_data):
    glued, text = _run(tmp_path, {**SMALL, "glmmtmb_genes": 1, "glmmtmb_sim_genes": 2}, "cal_r.ipynb")
    assert "pseudobulk edgeR" in text and "pseudobulk DESeq2" in text and "glmmTMB NB" in text
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


def test_calibration_chapter_reruns_without_positive_control(tmp_path):
    null_path = _foreign_null(tmp_path / "ctrl.h5ad", n_donors=4, n_types=2, per=25, n_genes=12)
    params = {**SMALL, "null_dataset": str(null_path), "pos_dataset": None, "layer": "raw",
              "donor_key": "patient", "cell_type_key": "celltype", "use_r": False}
    glued, text = _run(tmp_path, params, "nopos.ipynb")
    assert "positive control skipped" in text
    assert glued["last_exp"].strip("'") == "power simulation"


def test_calibration_chapter_misspelt_parameter_names_it():
    from scnotes.cli import run_chapter

    with pytest.raises(ValueError, match="unknown parameter 'nb_epoch'.*did you mean 'nb_epochs'"):
        run_chapter("glmm_calibration", {"nb_epoch": 3})


def test_calibration_chapter_missing_key_names_the_parameter(tmp_path):
    import papermill

    from scnotes.cli import run_chapter

    path = _foreign_null(tmp_path / "ctrl.h5ad", n_donors=4, n_types=2, per=10, n_genes=8)
    params = {**SMALL, "null_dataset": str(path), "pos_dataset": None, "layer": "raw", "donor_key": "donor",
              "cell_type_key": "celltype", "use_r": False}
    with pytest.raises(papermill.PapermillExecutionError, match="donor_key"):
        run_chapter("glmm_calibration", params, output=tmp_path / "missing.ipynb")
