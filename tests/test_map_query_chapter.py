"""The reference-mapping chapter executes end to end at small sizes (every section, the book's
data), reruns on a reader's own query file, and follows the book's rules."""
import anndata as ad
import pytest

from _chapter_checks import check_executed, check_rendered, check_source, text_outputs
from scnotes.cli import run_chapter

SMALL = {"max_cells": 300, "max_cells_gmvae": 300, "n_top_genes": 150, "n_latent": 3, "n_clusters": 3,
         "max_epochs": 2, "pretrain_epochs": 1, "map_epochs": 2, "elbo_samples": 2}


def test_map_query_source_rules():
    check_source("map_query")


def test_map_query_chapter_runs_small(tmp_path, have_data):
    out = run_chapter("map_query", SMALL, output=tmp_path / "map_query.ipynb")
    glued = check_executed(out)  # no errors, no stderr, every glue key the prose uses is glued
    for fig in ("fig_mq_programs", "fig_mq_marks", "fig_mq_clusters", "fig_mq_transfer", "fig_mq_cost"):
        assert fig in glued
    assert int(glued["n_sections"]) == 3 and int(glued["ld_k"]) == 3
    for key in ("cb_acc", "gm_acc", "cb_unknown", "un_unknown_new", "ld_procrustes", "gm_ari_map", "gm_nmi_new"):
        assert 0 <= float(glued[key]) <= 1, key
    assert -1 <= float(glued["ld_r_act_median"]) <= 1
    assert glued["gm_ari_word"].strip("'") in {"higher", "lower", "equal"}
    assert glued["gap_word"].strip("'") in {"within", "outside"}
    assert glued["ratio_word"].strip("'") in {"met", "not met"}
    assert int(glued["ld_n_missing"]) > 0  # the two PBMC files' gene annotations differ
    text = text_outputs(out)
    assert "held-out ELBO, mapped" in text and "1244" in text and "Drop-seq" in text


def test_map_query_chapter_reruns_on_a_readers_query(tmp_path, have_data):
    """Only documented parameters: the reader's file (counts in another layer, labels and two
    batches under other obs names, log-normalised X, symbols as var_names), the other sections switched off."""
    import scnotes

    q = scnotes.datasets.load("pbmc4k_10x_soupx")
    q = q[:400].copy()
    counts = q.layers["counts"].tocsr()
    q.layers = {"umi": counts}
    q.X = counts.multiply(1e4 / counts.sum(axis=1)).log1p().tocsr()  # X: log-normalised, not counts
    q.var = q.var[[]]  # no gene-symbol column: the names are the symbols
    q.obs = q.obs.rename(columns={"annotation": "annot"})[["annot"]]
    q.obs["sample"] = ["s1" if i % 2 else "s2" for i in range(q.n_obs)]
    path = tmp_path / "my_cells.h5ad"
    ad.AnnData(X=q.X, obs=q.obs, var=q.var, layers=q.layers).write_h5ad(path)
    params = dict(SMALL, query=str(path), query_layer="umi", query_label_key="annot", query_batch_key="sample",
                  gmvae_dataset=None, transfer_dataset=None)
    out = run_chapter("map_query", params, output=tmp_path / "mine.ipynb")
    glued = check_executed(out)
    text = text_outputs(out)
    assert "my_cells" in text and "section skipped" in text
    assert int(glued["n_sections"]) == 1 and int(glued["ld_n_labels"]) >= 5
    # the reader's report: every value filled, no nan / n/a / 0 cells, nothing about the book's own
    # query or the sections switched off (the reference is the book's, by the reader's choice)
    check_rendered(out, book_only=["pbmc4k_10x_soupx", "SoupX", "kang2018_ctrl_8donors",
                                   "cellbench_3cl_celseq2_dropseq", "CEL-seq2"])


def test_map_query_misspelt_parameter_is_named():
    with pytest.raises(ValueError, match="map_epoch.*did you mean 'map_epochs'"):
        run_chapter("map_query", {"map_epoch": 3})
