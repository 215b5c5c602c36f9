"""The calibration chapter: executes end to end at small sizes (R references skipped or live),
and refuses a misspelt parameter by name."""
import json

import pytest

from scnotes import glmm

# Small sizes: every experiment runs, on a few genes and cells.
SMALL = {"n_splits": 1, "null_genes": 5, "null_max_cells": 600, "pos_max_cells": 600, "sim_genes": 20,
         "sim_cells": 30, "nb_epochs": 30, "glmmtmb_genes": 0, "min_cells": 3}


def _run(tmp_path, params, name):
    from scnotes.cli import run_chapter

    out = run_chapter("glmm_calibration", params, output=tmp_path / name)
    nb = json.loads(out.read_text())
    outputs = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]
    errors = [o for o in outputs if o.get("output_type") == "error"]
    text = "".join("".join(o.get("text", "")) + json.dumps(o.get("data", {})) for o in outputs)
    return errors, text


@pytest.mark.slow  # papermill kernel start-up and five small fits per experiment
def test_calibration_chapter_runs_small_without_r(tmp_path, have_data):
    errors, text = _run(tmp_path, {**SMALL, "use_r": False}, "cal.ipynb")
    assert not errors
    assert "NB GLMM VEB" in text and "Wilcoxon (cells)" in text and "power" in text


@pytest.mark.slow
@pytest.mark.needs_r
@pytest.mark.skipif(not (glmm.r_package_available("edgeR") and glmm.r_package_available("DESeq2")),
                    reason="R with edgeR and DESeq2 not found: " + glmm.R_INSTALL_HINTS["edgeR"])
def test_calibration_chapter_runs_small_with_r(tmp_path, have_data):
    errors, text = _run(tmp_path, {**SMALL, "glmmtmb_genes": 1}, "cal_r.ipynb")
    assert not errors
    assert "pseudobulk edgeR" in text and "pseudobulk DESeq2" in text and "glmmTMB NB" in text


def test_calibration_chapter_misspelt_parameter_names_it():
    from scnotes.cli import run_chapter

    with pytest.raises(ValueError, match="unknown parameter 'nb_epoch'.*did you mean 'nb_epochs'"):
        run_chapter("glmm_calibration", {"nb_epoch": 3})
