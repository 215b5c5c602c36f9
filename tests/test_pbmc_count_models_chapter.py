"""pbmc_count_models: small run on the book's data, a rerun on a foreign AnnData, and the
errors a reader gets for a misspelt parameter or a missing obs key."""
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from _chapter_checks import check_executed, check_source, text_outputs
from scnotes.cli import run_chapter

SMALL = {"max_cells": 300, "min_cell_frac": 0.2, "latent_dims": [2, 3], "nmf_ranks": [2, 3], "n_steps": 6,
         "nmf_max_epochs": 10, "scd_rank": 3, "n_topics": 3, "umap_dim": 3}


def foreign_h5ad(path, n_types=25, per_type=12, n_genes=300, n_missing=5, seed=0):
    """A file unlike ours: counts in layers["umi"] (X holds log-normalised values), labels in
    obs["annot"] with 25 categories (more than a 20-colour palette) and a few missing, no
    totals column, no gene-symbol column, 300 cells."""
    import anndata as ad

    rng = np.random.default_rng(seed)
    codes = np.repeat(np.arange(n_types), per_type)
    profiles = rng.gamma(0.4, 1.0, (n_types, n_genes))
    profiles /= profiles.sum(axis=1, keepdims=True)
    lib = rng.lognormal(np.log(900), 0.4, codes.size)
    mu = lib[:, None] * profiles[codes]
    counts = sp.csr_matrix(rng.poisson(rng.gamma(4.0, mu / 4.0)).astype(np.float32))
    labels = pd.Series([f"type {c:02d}" for c in codes], dtype=object)
    labels.iloc[rng.choice(codes.size, n_missing, replace=False)] = None
    obs = pd.DataFrame({"annot": labels.to_numpy(), "sample_id": "s1"},
                       index=[f"bc{i:04d}" for i in range(codes.size)])
    norm = counts.multiply(1e4 / np.asarray(counts.sum(axis=1))).log1p().tocsr()
    a = ad.AnnData(X=norm, obs=obs, var=pd.DataFrame(index=[f"GENE{j}" for j in range(n_genes)]),
                   layers={"umi": counts})
    a.write_h5ad(path)
    return path


def test_pbmc_source_rules():
    check_source("pbmc_count_models")


def test_pbmc_chapter_runs_small(tmp_path, have_data):
    out = run_chapter("pbmc_count_models", SMALL, output=tmp_path / "pbmc.ipynb")
    glued = check_executed(out)
    text = text_outputs(out)
    assert "ZINBVAE (NB mean)" in text and "maximum likelihood (SCD)" in text
    assert float(glued["rp_share_distinct"]) <= float(glued["rp_share_raw"])


def test_pbmc_chapter_reruns_on_foreign_data(tmp_path):
    path = foreign_h5ad(tmp_path / "foreign.h5ad")
    params = {"dataset": str(path), "layer": "umi", "label_key": "annot", "n_top_genes": 150,
              "min_cell_frac": 0.05, "latent_dims": [2], "nmf_ranks": [3], "n_steps": 20,
              "nmf_max_epochs": 10, "scd_rank": 3, "n_topics": 3, "umap_dim": 2}
    out = run_chapter("pbmc_count_models", params, output=tmp_path / "foreign.ipynb")
    glued = check_executed(out)
    text = text_outputs(out)
    assert "prepare: dropped 5 cell(s)" in text
    assert "foreign: 295 cells" in text  # the title is the file stem, not the path
    # training length adapts: 295 cells at batch 128 are 3 minibatches an epoch
    assert glued["n_epochs"] == str(-(-20 // 3))
    assert int(glued["n_labels"]) == 25


def test_pbmc_misspelt_parameter_is_named():
    with pytest.raises(ValueError, match="lable_key.*did you mean 'label_key'"):
        run_chapter("pbmc_count_models", {"lable_key": "annot"})


def test_pbmc_missing_key_names_the_parameter(tmp_path):
    path = foreign_h5ad(tmp_path / "foreign.h5ad")
    with pytest.raises(Exception) as err:
        run_chapter("pbmc_count_models", {"dataset": str(path), "layer": "umi", "label_key": "celltype"},
                    output=tmp_path / "missing.ipynb")
    msg = str(err.value)
    assert "celltype" in msg and "label_key" in msg
