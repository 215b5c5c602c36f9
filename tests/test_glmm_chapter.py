"""The GLMM chapter: executes end to end at small sizes, reruns on a foreign AnnData with only
its documented parameters, and refuses a misspelt parameter or a missing key by name."""
import json

import numpy as np
import pandas as pd
import pytest

from scnotes import glmm

# Small sizes: a full run of the chapter's code in well under a minute on 2 cores.
SMALL = {"n_seeds": 2, "n_replicates": 8, "minibatch_max_epochs": 1, "max_epochs": 150,
         "nuts_num_samples": 20, "nuts_warmup": 20, "nuts_chains": 2, "nuts_max_tree_depth": 4,
         "n_top_genes": 6}


# The book's data sets and facts about them: never in the prose of a rerun on another file.
BOOK_ONLY = ["kang2018_ifnb_3donors_100genes", "smillie2019_celltype_counts", "Kang et al", "IFN-β",
             "With 30 subjects", "pre-selected", "book's file"]

def _outputs(path):
    nb = json.loads(path.read_text())
    errors = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    text = "".join("".join(o.get("text", "")) + json.dumps(o.get("data", {}))
                   for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", []))
    stderr = "".join("".join(o.get("text", "")) for c in nb["cells"] if c["cell_type"] == "code"
                     for o in c.get("outputs", []) if o.get("name") == "stderr")
    return errors, text, stderr


def test_glmm_chapter_runs_small(tmp_path, have_data):
    from scnotes.cli import run_chapter

    out = run_chapter("glmm", {**SMALL, "use_lme4": False}, output=tmp_path / "glmm.ipynb")
    errors, text, stderr = _outputs(out)
    assert not errors
    assert "stand-in for lme4" in text and "VEB full-rank (batched)" in text
    assert "30 subjects" in text  # the second dataset's section ran on the book's data
    assert not stderr.strip(), stderr[:500]


@pytest.mark.slow  # R start-ups and lme4 on every cell of the main gene
@pytest.mark.needs_r
@pytest.mark.skipif(not glmm.lme4_available(), reason="R with lme4 not found: " + glmm.INSTALL_HINT)
def test_glmm_chapter_runs_small_with_lme4(tmp_path, have_data):
    from scnotes.cli import run_chapter

    out = run_chapter("glmm", dict(SMALL), output=tmp_path / "glmm_r.ipynb")
    errors, text, _ = _outputs(out)
    assert not errors
    assert "lme4" in text and "1.1-" in text  # the closing cell lists lme4's version


def foreign_adata(n_cells=420, n_genes=40, n_types=22, n_donors=4, seed=0):
    """A Kang-like ctrl/stim file unlike the book's: other column names, counts in a layer
    (X holds log-normalised values), no totals column, a few missing labels, more cell
    types than a 20-colour palette."""
    import anndata as ad
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    types = [f"type_{k:02d}" for k in range(n_types)]
    ct = np.array([types[k % n_types] for k in range(n_cells)])
    cond = np.where(np.arange(n_cells) // n_types % 2 == 0, "untreated", "IFN")
    donor = rng.choice([f"P{k}" for k in range(n_donors)], n_cells)
    base = rng.normal(-7.5, 1.0, size=n_genes)  # UMI-like: most non-zero counts are 1
    type_eff = rng.normal(0, 0.5, size=(n_types, n_genes))
    stim_eff = np.where(np.arange(n_genes) < 5, 2.0, 0.0)
    u = rng.normal(0, 0.3, size=(n_donors, n_genes))
    lib = rng.integers(800, 3000, n_cells)
    eta = (base + type_eff[np.searchsorted(types, ct)] + (cond == "IFN")[:, None] * stim_eff
           + u[np.searchsorted(sorted(set(donor)), donor)])
    counts = rng.poisson(lib[:, None] * np.exp(eta)).astype(np.float32)
    obs = pd.DataFrame({"celltype": ct, "stim": cond, "patient": donor},
                       index=[f"cell{i}" for i in range(n_cells)])
    obs.loc[obs.index[:3], "celltype"] = np.nan
    obs.loc[obs.index[3:5], "patient"] = np.nan
    x = sp.csr_matrix(counts)
    lognorm = sp.csr_matrix(np.log1p(counts / np.maximum(counts.sum(1, keepdims=True), 1) * 1e4))
    a = ad.AnnData(X=lognorm, obs=obs, var=pd.DataFrame(index=[f"G{j}" for j in range(n_genes)]))
    a.layers["raw"] = x
    return a


FOREIGN = {"layer": "raw", "donor_key": "patient", "condition_key": "stim", "cell_type_key": "celltype",
           "reference": "untreated", "main_gene": None, "use_lme4": False}


def test_glmm_chapter_reruns_on_foreign_data(tmp_path):
    from scnotes.cli import run_chapter

    path = tmp_path / "kang_like.h5ad"
    foreign_adata().write_h5ad(path)
    out = run_chapter("glmm", {**SMALL, **FOREIGN, "dataset": str(path)}, output=tmp_path / "foreign.ipynb")
    errors, text, stderr = _outputs(out)
    assert not errors
    assert "dropped 5 cell(s)" in text            # missing labels dropped, count printed
    assert "computed from the counts of all 40 genes" in text  # totals computed from the file
    assert "skipped" in text                       # the second dataset is off on a rerun
    assert "kang_like" in text and str(tmp_path) not in text.replace(str(path), "")  # title = file stem
    assert "IFN - untreated" in text               # contrasts against the named reference
    assert "stand-in for lme4" in text
    assert not stderr.strip(), stderr[:500]
    from _chapter_checks import check_rendered

    # every sentence filled from this run (no nan, n/a, 0 cells, unfilled glue), none about the book's data
    check_rendered(out, book_only=BOOK_ONLY)


def test_glmm_chapter_misspelt_parameter_names_it():
    from scnotes.cli import run_chapter

    with pytest.raises(ValueError, match="unknown parameter 'donor_kye'.*did you mean 'donor_key'"):
        run_chapter("glmm", {"donor_kye": "patient"})


def test_glmm_chapter_missing_key_names_the_parameter(tmp_path):
    import papermill

    from scnotes.cli import run_chapter

    path = tmp_path / "kang_like.h5ad"
    foreign_adata(n_cells=100, n_genes=10).write_h5ad(path)
    params = {**SMALL, **FOREIGN, "dataset": str(path), "donor_key": "donor"}
    with pytest.raises(papermill.PapermillExecutionError, match="donor_key"):
        run_chapter("glmm", params, output=tmp_path / "missing.ipynb")


def _calls(src: str, name: str) -> list[str]:
    """The argument text of every call ``name(...)`` in ``src`` (balanced parentheses)."""
    out, start = [], 0
    while (i := src.find(name + "(", start)) >= 0:
        depth, j = 0, i + len(name)
        for j in range(i + len(name), len(src)):
            depth += {"(": 1, ")": -1}.get(src[j], 0)
            if depth == 0:
                break
        out.append(src[i + len(name) + 1:j])
        start = j
    return out


def test_glmm_chapter_names_the_method_of_every_fit():
    """scnotes.tl.glmm's default method may change (to the NB GLMM): every call in the Poisson GLMM
    chapter names its method, directly or through a dict defined with one."""
    import re

    from _chapter_checks import code_cells

    src = "\n".join(code_cells("glmm"))
    with_method = set(re.findall(r"^\s*(\w+)\s*=\s*dict\(\s*method=", src, flags=re.M))
    calls = _calls(src, "scnotes.tl.glmm")
    assert len(calls) >= 8
    for args in calls:
        unpacked = set(re.findall(r"\*\*(\w+)", args))
        assert "method=" in args or unpacked & with_method, f"scnotes.tl.glmm call without method=: {args[:120]}"


def test_glmm_chapter_prose_points_to_the_nb_glmm_for_testing():
    """The Poisson GLMM is not presented as a calibrated DE test (review N6): the prose says what its
    numbers are for and sends DE testing to the NB GLMM and the calibration chapter."""
    from _chapter_checks import markdown_cells

    md = "\n".join(markdown_cells("glmm"))
    assert "which is calibrated" not in md and "calibrated significance" not in md
    assert "(glmm_calibration.md)" in md and 'method="nb"' in md
    assert "2\\,\\mathrm{lfsr}" in md  # its p is twice the lfsr, not a test
