"""The count-model chapters execute end to end under papermill with small parameters."""
import json

import pytest

from scnotes.cli import run_chapter


def _outputs(path):
    nb = json.loads(path.read_text())
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


def _assert_executed(path):
    cells = _outputs(path)
    assert cells and all(c.get("execution_count") for c in cells if "".join(c["source"]).strip())
    for c in cells:
        assert not any(o.get("output_type") == "error" for o in c.get("outputs", []))


def test_count_vaes_chapter(tmp_path):
    out = run_chapter("count_vaes", {"n_cells": 60, "n_genes": 20, "latent_dims": [2], "max_epochs": 5,
                                     "nmf_ranks": [1, 2], "iwae_samples": 5, "nmf_max_iter": 20}, output=tmp_path / "a.ipynb")
    _assert_executed(out)


def test_imputation_chapter(tmp_path):
    out = run_chapter("imputation", {"n_cells": 60, "n_genes": 20, "ranks": [1, 2, 3], "max_epochs": 5,
                                     "mc_samples": 5, "nmf_max_iter": 20}, output=tmp_path / "b.ipynb")
    _assert_executed(out)


def test_pbmc_chapter(tmp_path, have_data):
    out = run_chapter("pbmc_count_models", {"max_cells": 300, "min_cell_frac": 0.2, "latent_dims": [2, 3],
                                            "nmf_ranks": [2, 3], "max_epochs": 2, "nmf_max_iter": 10,
                                            "umap_dim": 3}, output=tmp_path / "c.ipynb")
    _assert_executed(out)
