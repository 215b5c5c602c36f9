"""The LDVAE chapter executes end to end at small sizes, quietly, with scvi-tools side by side,
and follows the book's rules."""
import pytest

from _chapter_checks import check_executed, check_source, text_outputs
from scnotes.cli import run_chapter

# The book's data sets and facts about them: never in the prose of a rerun on another file.
BOOK_ONLY = ["pbmc_facs_zheng2017", "pbmc4k_10x_soupx", "zheng2017", "SoupX", "3,874", "FACS", "CD4+"]

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
    # the settings the Methods paragraph states are this run's, not the defaults
    assert int(glued["max_epochs"]) == 2 and int(glued["n_genes"]) <= 150
    assert 0 <= float(glued["cc_min"]) <= float(glued["cc_median"]) <= 1


def test_ldvae_chapter_reruns_on_foreign_data(tmp_path):
    """Only documented parameters: counts in a layer, other obs names, no totals column, missing
    labels, 25 categories, no gene-symbol column, no second data set, no scvi-tools."""
    from _chapter_checks import check_rendered, foreign_h5ad

    path = foreign_h5ad(tmp_path / "foreign.h5ad")
    params = {"dataset": str(path), "layer": "umi", "label_key": "annot", "gene_symbol_key": None,
              "n_top_genes": 150, "n_latent": 3, "max_epochs": 3, "mll_samples": 10, "run_scvi": False,
              "second_dataset": None}
    out = run_chapter("ldvae", params, output=tmp_path / "foreign.ipynb")
    glued = check_executed(out)
    text = text_outputs(out)
    assert "dropped 5 cell(s)" in text and "foreign" in text
    assert int(glued["n_latent"]) == 3 and int(glued["max_epochs"]) == 3 and int(glued["n_genes"]) <= 150
    assert 0 <= float(glued["ld_ari_fixed"]) <= 1
    # every sentence filled from this run (no nan, n/a, 0 cells, unfilled glue), none about the book's data
    check_rendered(out, book_only=BOOK_ONLY)


def test_ldvae_misspelt_parameter_is_named():
    with pytest.raises(ValueError, match="max_epoch.*did you mean 'max_epochs'"):
        run_chapter("ldvae", {"max_epoch": 3})
