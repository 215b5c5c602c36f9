"""The GMVAE chapter executes end to end with small parameters (both data sets)."""
import json

from scnotes.cli import run_chapter

# The book's data sets and facts about them: never in the prose of a rerun on another file.
BOOK_ONLY = ["kang2018_ctrl_8donors", "pbmc_facs_zheng2017", "Kang", "8 donors", "eight donors", "genotype",
             "two labelled PBMC", "FACS-sorted populations"]

SMALL = {"max_cells": 300, "n_top_genes": 100, "n_clusters_grid": [1, 3], "n_seeds": 1, "max_epochs": 2,
         "pretrain_epochs": 1, "focus_k": 3, "leiden_resolutions": [0.5, 1.0]}


def test_gmvae_chapter_runs_small(tmp_path, have_data):
    out = run_chapter("gmvae", SMALL, output=tmp_path / "gmvae.ipynb")
    nb = json.loads(out.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code and all(c.get("execution_count") for c in code if "".join(c["source"]).strip())
    outputs = [o for c in code for o in c.get("outputs", [])]
    assert not any(o["output_type"] == "error" for o in outputs)
    assert not any(o["output_type"] == "stream" and o["name"] == "stderr" for o in outputs)
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 5  # sweep x2, UMAP x2, curves
    glued = {o["metadata"]["scrapbook"]["name"] for o in outputs if "scrapbook" in o.get("metadata", {})}
    assert {"main_best_own_ari", "main_km_gm", "lam_d_ari", "z_best_own", "main_epochs", "wall_minutes"} <= glued


def test_gmvae_chapter_reruns_on_foreign_data(tmp_path):
    """Only documented parameters: counts in a layer, batches in obs["tech"], labels in
    obs["annot"] (25 levels, a few missing), no totals column, no second data set."""
    from _chapter_checks import check_executed, check_rendered, foreign_h5ad, text_outputs

    path = foreign_h5ad(tmp_path / "foreign.h5ad", n_batches=2)
    params = dict(SMALL, dataset=str(path), layer="umi", batch_key="tech", label_key="annot",
                  max_cells=None, second_dataset=None)
    out = run_chapter("gmvae", params, output=tmp_path / "foreign.ipynb")
    glued = check_executed(out)
    text = text_outputs(out)
    assert "dropped 5 cell(s)" in text and "second_dataset is None" in text
    assert int(glued["n_batches"]) == 2 and int(glued["n_labels"]) == 25
    assert int(glued["main_epochs"]) == SMALL["max_epochs"] and int(glued["main_pretrain"]) == SMALL["pretrain_epochs"]
    # every sentence filled from this run (no nan, n/a, 0 cells, unfilled glue), none about the book's data
    check_rendered(out, book_only=BOOK_ONLY)


def test_gmvae_missing_key_names_the_parameter(tmp_path):
    import pytest

    from _chapter_checks import foreign_h5ad

    path = foreign_h5ad(tmp_path / "foreign.h5ad", n_batches=2)
    with pytest.raises(Exception) as err:
        run_chapter("gmvae", dict(SMALL, dataset=str(path), layer="umi", batch_key="batch", label_key="annot",
                                  second_dataset=None), output=tmp_path / "missing.ipynb")
    assert "batch" in str(err.value) and "batch_key" in str(err.value)
