"""The GLMM chapter executes end-to-end with small parameters (without R)."""
import json


def test_glmm_chapter_runs_small(tmp_path, have_data):
    from scnotes.cli import run_chapter

    out = run_chapter("glmm", {"genes": ["ISG15", "MX2"], "n_batched_genes": 8, "n_seeds": 2,
                               "nuts_num_samples": 30, "nuts_warmup": 30, "nuts_chains": 2,
                               "veb_epochs": 2, "full_epochs": 200, "use_lme4": False},
                      output=tmp_path / "glmm.ipynb")
    nb = json.loads(out.read_text())
    text = "".join("".join(o.get("text", "")) + json.dumps(o.get("data", {}))
                   for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", []))
    assert "lme4 skipped" in text
    assert "batched VEB" in text
