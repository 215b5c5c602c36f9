"""The chapter mnn_topics executes end to end with small parameters."""
import nbformat
import pytest

import scnotes.cli


@pytest.mark.slow  # ~40-60 s: UMAP/numba start-up plus ten integration methods
def test_mnn_topics_chapter_runs_small(tmp_path, have_data):
    out = scnotes.cli.run_chapter(
        "mnn_topics",
        {"datasets": ["cellbench_3cl_celseq2_dropseq"], "max_cells": 300, "n_hvg": 300,
         "nmf_iter": 10, "vae_steps": 20, "n_topics": 4},
        output=tmp_path / "mnn_topics.ipynb")
    nb = nbformat.read(out, as_version=4)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
    text = "".join(o.get("data", {}).get("text/plain", "") for c in nb.cells
                   if c.cell_type == "code" for o in c.get("outputs", []))
    assert "MNN (topics)" in text and "BBKNN" in text


@pytest.mark.slow
def test_mnn_topics_chapter_runs_without_labels(tmp_path, have_data):
    import anndata as ad

    import scnotes.datasets as ds

    a = ds.load("cellbench_3cl_celseq2_dropseq")
    a = a[:300].copy()
    del a.obs["cell_line"]
    path = tmp_path / "nolabel.h5ad"
    a.write_h5ad(path)
    assert isinstance(ad.read_h5ad(path), ad.AnnData)
    out = scnotes.cli.run_chapter(
        "mnn_topics",
        {"dataset": str(path), "batch_key": "batch", "label_key": None, "n_hvg": 300,
         "nmf_iter": 10, "vae_steps": 20, "n_topics": 4},
        output=tmp_path / "nolabel.ipynb")
    nb = nbformat.read(out, as_version=4)
    streams = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                      for o in c.get("outputs", []))
    assert "label-conservation metrics" in streams
