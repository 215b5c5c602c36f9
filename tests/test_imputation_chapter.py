"""imputation executes end to end at small sizes, follows the book's rules, and refuses a misspelt parameter."""
from _chapter_checks import check_misspelt_parameter, check_source, run_checked

SMALL = {"n_cells": 60, "n_genes": 20, "ranks": [1, 2, 3], "max_epochs_grid": [3, 6], "mc_samples": 5,
         "nmf_max_epochs": 20}


def test_imputation_source_rules():
    check_source("imputation")


def test_imputation_chapter_runs_small(tmp_path):
    # chosen on validation, test scored once; the reachable oracle is the true mean
    glued = run_checked("imputation", SMALL, tmp_path, expect_text=["validation", "true μ (reachable)"])
    assert int(glued["rank_WNMF"]) in SMALL["ranks"]
    assert int(glued["epochs_PVAE"]) in SMALL["max_epochs_grid"]
    assert int(glued["longest_epochs"]) == max(SMALL["max_epochs_grid"])


def test_imputation_misspelt_parameter_is_named():
    check_misspelt_parameter("imputation", "rnaks", "ranks", [1, 2])
    check_misspelt_parameter("imputation", "latent_dim", "n_latent", 3)
