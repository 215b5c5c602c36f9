"""count_vaes executes end to end at small sizes, follows the book's rules, and refuses a misspelt parameter."""
from _chapter_checks import check_misspelt_parameter, check_source, run_checked

SMALL = {"n_cells": 60, "n_genes": 20, "n_latent_grid": [2, 3], "max_epochs": 5, "n_seeds": 2,
         "nmf_ranks": [1, 2], "iwae_samples": 5, "nmf_max_epochs": 20}


def test_count_vaes_source_rules():
    check_source("count_vaes")


def test_count_vaes_chapter_runs_small(tmp_path):
    glued = run_checked("count_vaes", SMALL, tmp_path, expect_text=["seed protocol", "train → replicate"])
    # the spread is computed from the run: one row per model seed
    assert glued["n_seeds"] == "2"
    assert glued["zinb_move"].strip("'") in {"up", "down", "nowhere"}
    # the Methods state this run's settings, not the seed page's
    assert (glued["n_cells"], glued["first_epochs"]) == ("60", "5")


def test_count_vaes_misspelt_parameter_is_named():
    check_misspelt_parameter("count_vaes", "max_epoch", "max_epochs", 3)
    check_misspelt_parameter("count_vaes", "latent_dims", "n_latent_grid", [2])
