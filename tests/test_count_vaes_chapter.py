"""count_vaes executes end to end at small sizes, follows the book's rules, and refuses a misspelt parameter."""
import pytest

from _chapter_checks import check_executed, check_rendered, check_source, text_outputs
from scnotes.cli import run_chapter

SMALL = {"n_cells": 60, "n_genes": 20, "latent_dims": [2, 3], "max_epochs": 5, "n_seeds": 2,
         "nmf_ranks": [1, 2], "iwae_samples": 5, "nmf_max_epochs": 20}


def test_count_vaes_source_rules():
    check_source("count_vaes")


def test_count_vaes_chapter_runs_small(tmp_path):
    out = run_chapter("count_vaes", SMALL, output=tmp_path / "count_vaes.ipynb")
    glued = check_executed(out)
    text = text_outputs(out)
    assert "seed protocol" in text and "train → replicate" in text
    # the spread is computed from the run: one row per model seed
    assert glued["n_seeds"] == "2"
    assert glued["zinb_move"].strip("'") in {"up", "down", "nowhere"}
    check_rendered(out)  # a small-parameter rerun: no nan, n/a, 0 cells or unfilled glue in its report


def test_count_vaes_misspelt_parameter_is_named():
    with pytest.raises(ValueError, match="max_epoch.*did you mean 'max_epochs'"):
        run_chapter("count_vaes", {"max_epoch": 3})
