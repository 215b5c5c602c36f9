"""The chapter mnn_topics: executes at small parameters, reruns on a foreign AnnData,
refuses a misspelt parameter and a missing key, and keeps typed numbers out of its prose."""
import re

import nbformat
import numpy as np
import pandas as pd
import pytest

import scnotes.cli

CHAPTER = scnotes.cli.book_dir() / "mnn_topics.md"
# The book's data sets and facts about them: never in the prose of a rerun on another file.
BOOK_ONLY = ["cellbench_3cl_celseq2_dropseq", "pbmc_joined", "cellbench_5cl_celseq2_plates", "pbmc_facs_zheng2017",
             "pbmc4k_10x_soupx", "CellBench", "CEL-seq2", "protocol effect", "three cell lines", "first version",
             "Earlier versions", "Tian et al"]

SMALL = {"max_cells": 300, "n_top_genes": 300, "nmf_max_epochs": 10, "max_epochs": 20,
         "n_topics": 4, "compare_search": False, "second_dataset": None}


def _outputs(nb):
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]


def _check_clean(nb):
    outs = _outputs(nb)
    errors = [o for o in outs if o.get("output_type") == "error"]
    assert not errors, errors[0].get("evalue")
    stderr = [o["text"] for o in outs if o.get("output_type") == "stream" and o.get("name") == "stderr"]
    assert not stderr, stderr  # no progress bars, INFO logs or warnings on the page
    return "".join(o.get("data", {}).get("text/plain", "") for o in outs)


def _glued(nb):
    return {o["metadata"]["scrapbook"]["name"] for o in _outputs(nb)
            if "scrapbook" in o.get("metadata", {})}


@pytest.mark.slow  # ~40-60 s: UMAP/numba start-up plus ten integration methods
def test_mnn_topics_chapter_runs_small(tmp_path, have_data):
    out = scnotes.cli.run_chapter("mnn_topics", SMALL, output=tmp_path / "mnn_topics.ipynb")
    nb = nbformat.read(out, as_version=4)
    text = _check_clean(nb)
    assert "MNN (topics)" in text and "BBKNN" in text and "nmi" in text
    glued = _glued(nb)
    assert {"fig_before", "fig_scores", "fig_after", "fig_pvae", "before_text"} <= glued
    # The discussion's glue keys exist even when the comparison datasets are off.
    keys = set(re.findall(r"\{glue:text\}`([^`:]+)", CHAPTER.read_text()))
    assert keys - glued <= {k for k in keys if k.startswith("search_")}


def _foreign(path, n_types=25, per=8, seed=0):
    """A few hundred cells unlike ours: batch 'tech', 25 'celltype' levels, counts in
    layers['raw'] (X holds log values), no totals column, a few labels missing."""
    import anndata as ad
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    n_genes = 400
    profiles = rng.gamma(0.4, 2.0, size=(n_types, n_genes))
    batch_effect = rng.lognormal(0.0, 0.6, size=(2, n_genes))
    types = np.tile(np.repeat(np.arange(n_types), per), 2)
    tech = np.repeat(["plateA", "dropB"], n_types * per)
    depth = rng.lognormal(0.0, 0.3, size=types.size)[:, None]
    mu = profiles[types] * batch_effect[(tech == "dropB").astype(int)] * depth
    counts = sp.csr_matrix(rng.poisson(mu).astype(np.float32))
    a = ad.AnnData(X=sp.csr_matrix(np.log1p(counts.toarray())),
                   obs=pd.DataFrame({"tech": tech, "celltype": [f"type_{t:02d}" for t in types]},
                                    index=[f"bc{i}" for i in range(types.size)]),
                   var=pd.DataFrame(index=[f"g{j}" for j in range(n_genes)]))
    a.layers["raw"] = counts
    a.obs.loc[a.obs_names[[3, 50, 220]], "celltype"] = np.nan
    a.write_h5ad(path)
    return a


def test_mnn_topics_report_of_a_foreign_rerun_is_clean(tmp_path):
    """Issue 27's check in CI: the reader's report (search comparison off, for time) has every
    value filled, no nan / n/a / 0 cells, and nothing about the book's data sets."""
    from _chapter_checks import check_rendered

    path = tmp_path / "other_lab.h5ad"
    _foreign(path)
    out = scnotes.cli.run_chapter(
        "mnn_topics", {"dataset": str(path), "layer": "raw", "batch_key": "tech", "label_key": "celltype",
                       "n_top_genes": 200, "nmf_max_epochs": 10, "max_epochs": 20, "n_topics": 4,
                       "n_neighbors": 10, "compare_search": False},
        output=tmp_path / "foreign.ipynb")
    check_rendered(out, book_only=BOOK_ONLY)


@pytest.mark.slow  # ~60-90 s: the same, plus numba's compilation of pynndescent
def test_mnn_topics_chapter_reruns_on_foreign_data(tmp_path):
    path = tmp_path / "other_lab.h5ad"
    _foreign(path)
    out = scnotes.cli.run_chapter(
        "mnn_topics", {"dataset": str(path), "layer": "raw", "batch_key": "tech", "label_key": "celltype",
                       "n_top_genes": 200, "nmf_max_epochs": 10, "max_epochs": 20, "n_topics": 4,
                       "n_neighbors": 10},
        output=tmp_path / "foreign.ipynb")
    nb = nbformat.read(out, as_version=4)
    text = _check_clean(nb)
    streams = "".join(o.get("text", "") for o in _outputs(nb) if o.get("output_type") == "stream")
    assert "dropped 3 cell(s)" in streams           # drop_unlabelled, with the count printed
    assert "other_lab" in text and str(path) not in text  # the file stem names it, not the path
    assert "pbmc_joined" not in text                 # the comparison datasets are off on a rerun
    assert "recall" in text                          # the search comparison ran on the reader's data
    from _chapter_checks import check_rendered

    # every sentence filled from this run (no nan, n/a, 0 cells, unfilled glue), none about the book's data
    check_rendered(out, book_only=BOOK_ONLY)


def test_mnn_topics_chapter_refuses_bad_parameters(tmp_path):
    with pytest.raises(ValueError, match="n_neighbour.*n_neighbors"):
        scnotes.cli.run_chapter("mnn_topics", {"n_neighbour": 10}, output=tmp_path / "x.ipynb")


@pytest.mark.slow
def test_mnn_topics_chapter_names_a_missing_key(tmp_path):
    import papermill

    path = tmp_path / "other_lab.h5ad"
    _foreign(path)
    with pytest.raises(papermill.PapermillExecutionError, match="label_key"):
        scnotes.cli.run_chapter("mnn_topics", {"dataset": str(path), "layer": "raw", "batch_key": "tech",
                                               "label_key": "cell_type"}, output=tmp_path / "x.ipynb")


def test_mnn_topics_prose_has_no_typed_numbers_and_no_private_imports():
    import jupytext

    nb = jupytext.read(CHAPTER)
    assert "scnotes._" not in CHAPTER.read_text()
    for cell in nb.cells:
        if cell.cell_type != "markdown":
            continue
        text = re.sub(r"\$\$.*?\$\$|\$[^$]*\$|`[^`]*`", " ", cell.source, flags=re.S)
        found = re.findall(r"(?<![\w.])\d+\.\d+(?![\w.])", text)
        assert not found, f"typed decimal numbers {found} in: {cell.source[:80]}"
    params = scnotes.cli.describe_parameters("mnn_topics")
    names = [p.name for p in params]
    for std in ("dataset", "layer", "batch_key", "label_key", "drop_unlabelled", "max_cells", "n_top_genes",
                "seed", "title", "second_dataset", "n_neighbors"):
        assert std in names
    assert {p.name for p in params if p.required} == {"batch_key", "label_key"}
    assert all(p.description for p in params)
    # a time in a description only with the conditions it was measured under (issue 27)
    assert not [p.name for p in params if re.search(r"\d\s*(s|sec|min|minutes?)\b", p.description)
                and "measured" not in p.description]
    assert "max_epochs" in names and "vae_max_epochs" not in names  # the contract's name (issue 24)
