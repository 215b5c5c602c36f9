"""pbmc_count_models: small run on the book's data, a rerun on a foreign AnnData, and the
errors a reader gets for a misspelt parameter or a missing obs key."""
import pytest

from _chapter_checks import check_misspelt_parameter, check_source, foreign_h5ad, run_checked
from scnotes.cli import run_chapter

SMALL = {"max_cells": 300, "min_cell_frac": 0.2, "n_latent_grid": [2, 3], "nmf_ranks": [2, 3], "min_steps": 6,
         "nmf_max_epochs": 10, "scd_rank": 3, "n_topics": 3, "umap_dim": 3}


# The book's data set and facts about it: never in the prose of a rerun on another file.
BOOK_ONLY = ["pbmc_facs_zheng2017", "FACS", "3,874", "curated in fastTopics", "Departures from the earlier version"]

def test_pbmc_source_rules():
    check_source("pbmc_count_models")


def test_pbmc_chapter_runs_small(tmp_path, have_data):
    glued = run_checked("pbmc_count_models", SMALL, tmp_path, rendered=False,
                        expect_text=["ZINBVAE (NB mean)", "maximum likelihood (SCD)"])
    assert float(glued["rp_share_distinct"]) <= float(glued["rp_share_raw"])


def test_pbmc_chapter_reruns_on_foreign_data(tmp_path):
    path = foreign_h5ad(tmp_path / "foreign.h5ad")
    params = {"dataset": str(path), "layer": "umi", "label_key": "annot", "n_top_genes": 150,
              "min_cell_frac": 0.05, "n_latent_grid": [2], "nmf_ranks": [3], "min_steps": 20,
              "nmf_max_epochs": 10, "scd_rank": 3, "n_topics": 3, "umap_dim": 2}
    # the title is the file stem, not the path; every sentence of the report filled from this run
    # (no nan, n/a, 0 cells, unfilled glue), none about the book's data
    glued = run_checked("pbmc_count_models", params, tmp_path, book_only=BOOK_ONLY,
                        expect_text=["prepare: dropped 5 cell(s)", "foreign: 295 cells"])
    # training length adapts: 295 cells at batch 128 are 3 minibatches an epoch, whole epochs
    assert glued["n_epochs"] == str(-(-20 // 3))
    assert glued["n_steps"] == str(3 * -(-20 // 3))
    assert glued["min_cell_frac"] == "0.05"  # the Methods state this run's settings
    assert int(glued["n_labels"]) == 25


def test_pbmc_misspelt_parameter_is_named():
    check_misspelt_parameter("pbmc_count_models", "lable_key", "label_key", "annot")
    check_misspelt_parameter("pbmc_count_models", "n_steps", "min_steps", 20)


def test_pbmc_missing_key_names_the_parameter(tmp_path):
    path = foreign_h5ad(tmp_path / "foreign.h5ad")
    with pytest.raises(Exception) as err:
        run_chapter("pbmc_count_models", {"dataset": str(path), "layer": "umi", "label_key": "celltype"},
                    output=tmp_path / "missing.ipynb")
    msg = str(err.value)
    assert "celltype" in msg and "label_key" in msg
