"""The LDVAE chapter executes end to end at small sizes, quietly, with scvi-tools side by side,
and follows the book's rules."""
import pytest

from _chapter_checks import check_executed, check_source, text_outputs
from scnotes.cli import run_chapter

SMALL = {"max_cells": 400, "n_top_genes": 150, "max_epochs": 2, "mll_samples": 10}


def test_ldvae_source_rules():
    check_source("ldvae")


def test_ldvae_chapter_runs_small(tmp_path, have_data):
    pytest.importorskip("scvi")  # the book extra; the library itself never imports it
    out = run_chapter("ldvae", SMALL, output=tmp_path / "ldvae.ipynb")
    glued = check_executed(out)  # no errors, no stderr, every glue key the prose uses is glued
    text = text_outputs(out)
    assert "held-out marginal LL" in text and "scvi-tools" in text and "pbmc4k_10x_soupx" in text
    for key in ("mll_word", "elbo_word", "mll_word2"):
        assert glued[key].strip("'") in {"higher", "lower", "equal"}
    assert glued["speed_word"].strip("'") in {"faster", "slower", "equal"}
    # importance sampling tightens the one-sample bound (the chapter asserts it too)
    assert float(glued["gap_mll_elbo"]) > -1.0
    assert 0 <= float(glued["r_mean"]) <= 1
